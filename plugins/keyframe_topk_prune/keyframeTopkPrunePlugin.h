/*
 * evad::KeyframeTopKPrune, version 1: IPluginV3 (core, build, runtime capabilities) and its
 * IPluginCreatorV3One, on the shared bases of ../common/pluginBase.h (which write the capability
 * plumbing, clone, names and the field collections; this op writes its shapes, types, formats,
 * workspace, launch and fields). Contract: evad/op_contracts.py (fields: ../common/evadOpContract.h,
 * generated from it; prose: README.md). Kernels: keyframeTopkPruneKernel.cu (C ABI:
 * keyframeTopkPruneKernel.h).
 */
#ifndef EVAD_KEYFRAME_TOPK_PRUNE_PLUGIN_H
#define EVAD_KEYFRAME_TOPK_PRUNE_PLUGIN_H

#include "NvInferRuntime.h"
#include "pluginBase.h"

#include <cstddef>
#include <cstdint>
#include <vector>

namespace evad
{
namespace plugin
{

//! Attributes of KeyframeTopKPrune, in the contract's field order
//! (contract::kKeyframeTopKPruneFields; the ONNX node's attributes). No defaults here: the
//! creator requires every field.
//!
//! workspaceBytes is no attribute: the workspace TensorRT allocates for the plugin, i.e. what
//! getWorkspaceSize returned at the profile's largest shapes (-1: not known yet). configurePlugin
//! and getWorkspaceSize record it, clone keeps it, getFieldsToSerialize writes it (INT64 field
//! kWorkspaceBytesField), createPlugin reads it back; enqueue refuses shapes that need more.
struct KeyframeTopKPruneParams
{
    int32_t keepNum{};
    int32_t keepDen{};
    float keyframeWeight{};
    int64_t workspaceBytes{-1};
};

//! Name of the serialized workspace record (KeyframeTopKPruneParams::workspaceBytes).
constexpr char const* kWorkspaceBytesField = "workspace_bytes";

class KeyframeTopKPrunePlugin : public PluginV3Base<KeyframeTopKPrunePlugin>
{
public:
    explicit KeyframeTopKPrunePlugin(KeyframeTopKPruneParams const& params);

    // IPluginV3OneBuild
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
        nvinfer1::DimsExprs const* shapeInputs, int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs,
        int32_t nbOutputs, nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut,
        int32_t nbInputs, int32_t nbOutputs) noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;

    // IPluginV3OneRuntime
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;

private:
    //! The contract fields and, once there is one, the workspace record.
    std::vector<nvinfer1::PluginField> serializedFields() const override;
    //! Keep the largest workspace getWorkspaceSize/configurePlugin computed (const: TensorRT calls
    //! getWorkspaceSize on a const plugin).
    void recordWorkspace(size_t bytes) const noexcept;

    mutable KeyframeTopKPruneParams mParams;
};

class KeyframeTopKPrunePluginCreator : public PluginCreatorBase
{
public:
    KeyframeTopKPrunePluginCreator();

private:
    nvinfer1::IPluginV3* create(nvinfer1::PluginFieldCollection const* fc) const override;
};

} // namespace plugin
} // namespace evad

#endif // EVAD_KEYFRAME_TOPK_PRUNE_PLUGIN_H
