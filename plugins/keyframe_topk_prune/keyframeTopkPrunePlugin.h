/*
 * evad::KeyframeTopKPrune, version 1: IPluginV3 (core, build, runtime capabilities) and its
 * IPluginCreatorV3One. Contract: evad/op_contracts.py (fields: ../common/evadOpContract.h,
 * generated from it; prose: README.md). Kernels: keyframeTopkPruneKernel.cu (C ABI:
 * keyframeTopkPruneKernel.h).
 */
#ifndef EVAD_KEYFRAME_TOPK_PRUNE_PLUGIN_H
#define EVAD_KEYFRAME_TOPK_PRUNE_PLUGIN_H

#include "NvInferRuntime.h"

#include <string>
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

class KeyframeTopKPrunePlugin : public nvinfer1::IPluginV3,
                                public nvinfer1::IPluginV3OneCore,
                                public nvinfer1::IPluginV3OneBuild,
                                public nvinfer1::IPluginV3OneRuntime
{
public:
    explicit KeyframeTopKPrunePlugin(KeyframeTopKPruneParams const& params);
    ~KeyframeTopKPrunePlugin() override = default;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

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
    int32_t getNbOutputs() const noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

private:
    void initFields();
    //! Keep the largest workspace getWorkspaceSize/configurePlugin computed (const: TensorRT calls
    //! getWorkspaceSize on a const plugin).
    void recordWorkspace(size_t bytes) const noexcept;

    mutable KeyframeTopKPruneParams mParams;
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

class KeyframeTopKPrunePluginCreator : public nvinfer1::IPluginCreatorV3One
{
public:
    KeyframeTopKPrunePluginCreator();
    ~KeyframeTopKPrunePluginCreator() override = default;

    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;

private:
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

} // namespace plugin
} // namespace evad

#endif // EVAD_KEYFRAME_TOPK_PRUNE_PLUGIN_H
