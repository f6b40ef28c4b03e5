/*
 * evad::RoIAlign3D plugin glue: shapes, types, formats, fields. The maths is in the kernel
 * (evad_roi_align_3d, roiAlign3dKernel.cu); nothing here touches tensor data. Field names,
 * order, types and valid ranges come from the contract header (evadOpContract.h). The kernel
 * needs no workspace: getWorkspaceSize stays TensorRT's default of 0 bytes.
 */
#include "roiAlign3dPlugin.h"

#include "roiAlign3dKernel.h"

#include <vector>

using namespace nvinfer1;

namespace evad
{
namespace plugin
{
namespace
{
constexpr char const* kNAME = contract::kRoIAlign3DName;
constexpr contract::FieldSpec const* kFIELDS = contract::kRoIAlign3DFields;
constexpr int32_t kNB_FIELDS = contract::kRoIAlign3DNbFields;

//! RoIAlign3DParams' members, in the contract's field order.
enum Field : int32_t
{
    kOUTPUT_HEIGHT = 0,
    kOUTPUT_WIDTH = 1,
    kSPATIAL_SCALE = 2,
    kSAMPLING_RATIO = 3,
    kALIGNED = 4
};
static_assert(kNB_FIELDS == 5, "RoIAlign3DParams has one member per contract field");
static_assert(fieldIs(kFIELDS[kOUTPUT_HEIGHT], "output_height", contract::FieldKind::kInt), "contract order");
static_assert(fieldIs(kFIELDS[kOUTPUT_WIDTH], "output_width", contract::FieldKind::kInt), "contract order");
static_assert(fieldIs(kFIELDS[kSPATIAL_SCALE], "spatial_scale", contract::FieldKind::kFloat), "contract order");
static_assert(fieldIs(kFIELDS[kSAMPLING_RATIO], "sampling_ratio", contract::FieldKind::kInt), "contract order");
static_assert(fieldIs(kFIELDS[kALIGNED], "aligned", contract::FieldKind::kInt), "contract order");

constexpr int32_t kIN_FEATURES = 0;
constexpr int32_t kIN_ROIS = 1;
constexpr int32_t kNB_INPUTS = 2;
constexpr int32_t kNB_OUTPUTS = 1;
} // namespace

RoIAlign3DPlugin::RoIAlign3DPlugin(RoIAlign3DParams const& params)
    : PluginV3Base(kNAME, kNB_INPUTS, kNB_OUTPUTS)
    , mParams(params)
{
}

std::vector<PluginField> RoIAlign3DPlugin::serializedFields() const
{
    return {contractField(kFIELDS[kOUTPUT_HEIGHT], &mParams.outputHeight),
        contractField(kFIELDS[kOUTPUT_WIDTH], &mParams.outputWidth),
        contractField(kFIELDS[kSPATIAL_SCALE], &mParams.spatialScale),
        contractField(kFIELDS[kSAMPLING_RATIO], &mParams.samplingRatio),
        contractField(kFIELDS[kALIGNED], &mParams.aligned)};
}

int32_t RoIAlign3DPlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    if (!ioCounts(nbInputs, nbOutputs) || in[kIN_FEATURES].desc.dims.nbDims != 5 || in[kIN_ROIS].desc.dims.nbDims != 2)
    {
        logError("RoIAlign3D::configurePlugin", "expects features (B, C, T, H, W) and rois (R, 5)");
        return -1;
    }
    return 0;
}

int32_t RoIAlign3DPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (!ioCounts(nbInputs, nbOutputs))
    {
        return -1;
    }
    outputTypes[0] = inputTypes[kIN_FEATURES];
    return 0;
}

int32_t RoIAlign3DPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
    int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& exprBuilder) noexcept
{
    if (!ioCounts(nbInputs, nbOutputs) || inputs[kIN_FEATURES].nbDims != 5 || inputs[kIN_ROIS].nbDims != 2)
    {
        logError("RoIAlign3D::getOutputShapes", "expects features (B, C, T, H, W) and rois (R, 5)");
        return -1;
    }
    // (R, C, T, output_height, output_width)
    outputs[0].nbDims = 5;
    outputs[0].d[0] = inputs[kIN_ROIS].d[0];
    outputs[0].d[1] = inputs[kIN_FEATURES].d[1];
    outputs[0].d[2] = inputs[kIN_FEATURES].d[2];
    outputs[0].d[3] = exprBuilder.constant(mParams.outputHeight);
    outputs[0].d[4] = exprBuilder.constant(mParams.outputWidth);
    return 0;
}

bool RoIAlign3DPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (!linearAt(pos, inOut, nbInputs, nbOutputs))
    {
        return false;
    }
    // features in fp32/fp16/bf16; rois and output in the same type.
    if (pos == kIN_FEATURES)
    {
        return kernelType(inOut[pos].desc.type) >= 0;
    }
    return inOut[pos].desc.type == inOut[kIN_FEATURES].desc.type;
}

int32_t RoIAlign3DPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
    void const* const* inputs, void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept
{
    Dims const& f = inputDesc[kIN_FEATURES].dims;
    int32_t const type = kernelType(inputDesc[kIN_FEATURES].type);
    int const err = evad_roi_align_3d(type, inputs[kIN_FEATURES], inputs[kIN_ROIS], outputs[0], f.d[0], f.d[1],
        f.d[2], f.d[3], f.d[4], inputDesc[kIN_ROIS].dims.d[0], mParams.outputHeight, mParams.outputWidth,
        mParams.spatialScale, mParams.samplingRatio, mParams.aligned, stream);
    return launchStatus(err);
}

// ------------------------------------------------------------------------------------------------

RoIAlign3DPluginCreator::RoIAlign3DPluginCreator()
    : PluginCreatorBase(kNAME, contractFieldNames(kFIELDS, kNB_FIELDS))
{
}

IPluginV3* RoIAlign3DPluginCreator::create(PluginFieldCollection const* fc) const
{
    // Every field is required and checked against the contract (a missing or out-of-range
    // one is an error, not a silent default); fields outside the contract are ignored.
    std::vector<FieldValue> const v = readContractFields(kNAME, kFIELDS, kNB_FIELDS, fc);
    RoIAlign3DParams p;
    p.outputHeight = static_cast<int32_t>(v[kOUTPUT_HEIGHT].asInt);
    p.outputWidth = static_cast<int32_t>(v[kOUTPUT_WIDTH].asInt);
    p.spatialScale = static_cast<float>(v[kSPATIAL_SCALE].asFloat);
    p.samplingRatio = static_cast<int32_t>(v[kSAMPLING_RATIO].asInt);
    p.aligned = static_cast<int32_t>(v[kALIGNED].asInt);
    return new RoIAlign3DPlugin(p);
}

} // namespace plugin
} // namespace evad
