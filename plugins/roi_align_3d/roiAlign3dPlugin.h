/*
 * evad::RoIAlign3D, version 1: IPluginV3 (core, build, runtime capabilities) and its
 * IPluginCreatorV3One, on the shared bases of ../common/pluginBase.h (which write the capability
 * plumbing, clone, names and the field collections; this op writes its shapes, types, formats,
 * launch and fields). Contract: evad/op_contracts.py (fields: ../common/evadOpContract.h,
 * generated from it; prose: README.md). Kernel: roiAlign3dKernel.cu (C ABI: roiAlign3dKernel.h).
 */
#ifndef EVAD_ROI_ALIGN_3D_PLUGIN_H
#define EVAD_ROI_ALIGN_3D_PLUGIN_H

#include "NvInferRuntime.h"
#include "pluginBase.h"

#include <vector>

namespace evad
{
namespace plugin
{

//! Attributes of RoIAlign3D, in the contract's field order (contract::kRoIAlign3DFields; the
//! ONNX node's attributes). No defaults here: the creator requires every field.
struct RoIAlign3DParams
{
    int32_t outputHeight{};
    int32_t outputWidth{};
    float spatialScale{};
    int32_t samplingRatio{};
    int32_t aligned{};
};

class RoIAlign3DPlugin : public PluginV3Base<RoIAlign3DPlugin>
{
public:
    explicit RoIAlign3DPlugin(RoIAlign3DParams const& params);

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

    // IPluginV3OneRuntime
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;

private:
    std::vector<nvinfer1::PluginField> serializedFields() const override;

    RoIAlign3DParams mParams;
};

class RoIAlign3DPluginCreator : public PluginCreatorBase
{
public:
    RoIAlign3DPluginCreator();

private:
    nvinfer1::IPluginV3* create(nvinfer1::PluginFieldCollection const* fc) const override;
};

} // namespace plugin
} // namespace evad

#endif // EVAD_ROI_ALIGN_3D_PLUGIN_H
