/*
 * evad::KeyframeTopKPrune plugin glue: shapes (K from N and N - S with dimension expressions),
 * types, formats, workspace, fields. The maths is in the kernels (evad_keyframe_topk_prune,
 * keyframeTopkPruneKernel.cu); nothing here touches tensor data. Field names, order, types,
 * valid ranges and the keep_num <= keep_den relation come from the contract header
 * (evadOpContract.h).
 */
#include "keyframeTopkPrunePlugin.h"

#include "keyframeTopkPruneKernel.h"

#include <exception>
#include <string>
#include <vector>

using namespace nvinfer1;

namespace evad
{
namespace plugin
{
namespace
{
constexpr char const* kNAME = contract::kKeyframeTopKPruneName;
constexpr contract::FieldSpec const* kFIELDS = contract::kKeyframeTopKPruneFields;
constexpr int32_t kNB_FIELDS = contract::kKeyframeTopKPruneNbFields;

//! KeyframeTopKPruneParams' members, in the contract's field order.
enum Field : int32_t
{
    kKEEP_NUM = 0,
    kKEEP_DEN = 1,
    kKEYFRAME_WEIGHT = 2
};
static_assert(kNB_FIELDS == 3, "KeyframeTopKPruneParams has one member per contract field");
static_assert(fieldIs(kFIELDS[kKEEP_NUM], "keep_num", contract::FieldKind::kInt), "contract order");
static_assert(fieldIs(kFIELDS[kKEEP_DEN], "keep_den", contract::FieldKind::kInt), "contract order");
static_assert(fieldIs(kFIELDS[kKEYFRAME_WEIGHT], "keyframe_weight", contract::FieldKind::kFloat), "contract order");

constexpr int32_t kIN_Q = 0;
constexpr int32_t kIN_K = 1;
constexpr int32_t kIN_X = 2;
constexpr int32_t kIN_IDX = 3;
constexpr int32_t kNB_INPUTS = 4;
constexpr int32_t kOUT_X = 4; // positions in inOut
constexpr int32_t kOUT_IDX = 5;
constexpr int32_t kNB_OUTPUTS = 2;

bool ranksOk(int32_t q, int32_t k, int32_t x, int32_t idx)
{
    return q == 4 && k == 4 && x == 3 && idx == 2;
}

//! The workspace the kernels need for q (B, H, N, d) and x_nonkey (B, M, C): every query checked.
//! Returns a cudaError_t value; `bytes` is written only on success.
int workspaceFor(Dims const& q, Dims const& x, size_t& bytes)
{
    if (q.nbDims != 4 || x.nbDims != 3)
    {
        return cudaErrorInvalidValue;
    }
    return evad_keyframe_topk_prune_workspace_query(q.d[0], q.d[1], q.d[2], x.d[1], &bytes);
}

//! One stderr line: the size query failed, with CUDA's name and text of the error.
void logQueryFailed(char const* where, int err) noexcept
{
    try
    {
        std::string const msg = std::string("the workspace size query failed (")
            + cudaGetErrorName(static_cast<cudaError_t>(err)) + ": " + cudaGetErrorString(static_cast<cudaError_t>(err))
            + ")";
        logError(where, msg.c_str());
    }
    catch (std::exception const&)
    {
        logError(where, "the workspace size query failed");
    }
}

//! One stderr line: the workspace TensorRT gave does not hold what these shapes need.
void logTooSmall(char const* where, size_t needed, void const* workspace, size_t given) noexcept
{
    try
    {
        std::string const msg = "these shapes need a workspace of " + std::to_string(needed) + " bytes, TensorRT gave "
            + (workspace == nullptr ? std::string("none") : std::to_string(given) + " (getWorkspaceSize)");
        logError(where, msg.c_str());
    }
    catch (std::exception const&)
    {
        logError(where, "the workspace TensorRT gave is smaller than these shapes need");
    }
}
} // namespace

KeyframeTopKPrunePlugin::KeyframeTopKPrunePlugin(KeyframeTopKPruneParams const& params)
    : PluginV3Base(kNAME, kNB_INPUTS, kNB_OUTPUTS)
    , mParams(params)
{
}

std::vector<PluginField> KeyframeTopKPrunePlugin::serializedFields() const
{
    std::vector<PluginField> fields{contractField(kFIELDS[kKEEP_NUM], &mParams.keepNum),
        contractField(kFIELDS[kKEEP_DEN], &mParams.keepDen),
        contractField(kFIELDS[kKEYFRAME_WEIGHT], &mParams.keyframeWeight)};
    if (mParams.workspaceBytes >= 0)
    {
        // Not a contract field: the plugin's record of the workspace TensorRT allocates for it, so
        // that a deserialized engine's enqueue checks against what it really gets.
        fields.push_back(int64Field(kWorkspaceBytesField, &mParams.workspaceBytes));
    }
    return fields;
}

void KeyframeTopKPrunePlugin::recordWorkspace(size_t bytes) const noexcept
{
    // Several profiles: TensorRT's allocation covers the largest.
    int64_t const b = static_cast<int64_t>(bytes);
    mParams.workspaceBytes = b > mParams.workspaceBytes ? b : mParams.workspaceBytes;
}

int32_t KeyframeTopKPrunePlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    if (!ioCounts(nbInputs, nbOutputs)
        || !ranksOk(in[kIN_Q].desc.dims.nbDims, in[kIN_K].desc.dims.nbDims, in[kIN_X].desc.dims.nbDims,
            in[kIN_IDX].desc.dims.nbDims))
    {
        logError("KeyframeTopKPrune::configurePlugin", "expects q, k (B, H, N, d), x_nonkey (B, N - S, C), idx (B, N - S)");
        return -1;
    }
    // The workspace at the profile's largest shapes (what getWorkspaceSize returns): a failed size
    // query stops the build here instead of becoming a too-small workspace.
    size_t bytes = 0;
    int const err = workspaceFor(in[kIN_Q].max, in[kIN_X].max, bytes);
    if (err != 0)
    {
        logQueryFailed("KeyframeTopKPrune::configurePlugin", err);
        return -1;
    }
    recordWorkspace(bytes);
    return 0;
}

int32_t KeyframeTopKPrunePlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (!ioCounts(nbInputs, nbOutputs))
    {
        return -1;
    }
    outputTypes[0] = inputTypes[kIN_X];
    outputTypes[1] = DataType::kINT64;
    return 0;
}

int32_t KeyframeTopKPrunePlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs,
    DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs,
    IExprBuilder& exprBuilder) noexcept
{
    if (!ioCounts(nbInputs, nbOutputs)
        || !ranksOk(inputs[kIN_Q].nbDims, inputs[kIN_K].nbDims, inputs[kIN_X].nbDims, inputs[kIN_IDX].nbDims))
    {
        logError("KeyframeTopKPrune::getOutputShapes", "expects q, k (B, H, N, d), x_nonkey (B, N - S, C), idx (B, N - S)");
        return -1;
    }
    // K = ceil(keep_num * N / keep_den) - S with S = N - M, i.e. ceil(keep_num * N / keep_den) - N + M:
    // a function of the input shapes only, in integer dimension expressions.
    IDimensionExpr const* n = inputs[kIN_Q].d[2];
    IDimensionExpr const* m = inputs[kIN_X].d[1];
    IDimensionExpr const* kept = exprBuilder.operation(DimensionOperation::kCEIL_DIV,
        *exprBuilder.operation(DimensionOperation::kPROD, *n, *exprBuilder.constant(mParams.keepNum)),
        *exprBuilder.constant(mParams.keepDen));
    IDimensionExpr const* kk = exprBuilder.operation(
        DimensionOperation::kSUM, *exprBuilder.operation(DimensionOperation::kSUB, *kept, *n), *m);
    outputs[0].nbDims = 3;
    outputs[0].d[0] = inputs[kIN_X].d[0];
    outputs[0].d[1] = kk;
    outputs[0].d[2] = inputs[kIN_X].d[2];
    outputs[1].nbDims = 2;
    outputs[1].d[0] = inputs[kIN_IDX].d[0];
    outputs[1].d[1] = kk;
    return 0;
}

bool KeyframeTopKPrunePlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (!linearAt(pos, inOut, nbInputs, nbOutputs))
    {
        return false;
    }
    DataType const t = inOut[pos].desc.type;
    switch (pos)
    {
    case kIN_Q: return kernelType(t) >= 0;                         // fp32, fp16, bf16
    case kIN_K:
    case kIN_X:
    case kOUT_X: return t == inOut[kIN_Q].desc.type;               // one float type for all
    case kIN_IDX:
    case kOUT_IDX: return t == DataType::kINT64;
    default: return false;
    }
}

size_t KeyframeTopKPrunePlugin::getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
    DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept
{
    // Sized for the profile's largest shapes: (B, H, N) row statistics, (B, H, M) column sums,
    // sort buffers and CUB's temporary storage. The size is recorded (and serialized): enqueue
    // compares the shapes' need with it, since TensorRT passes enqueue only the pointer.
    size_t bytes = 0;
    int const err = nbInputs == kNB_INPUTS ? workspaceFor(inputs[kIN_Q].max, inputs[kIN_X].max, bytes)
                                           : static_cast<int>(cudaErrorInvalidValue);
    if (err != 0)
    {
        // No size to give: 0, and a record of 0, so that every enqueue of this plugin fails.
        logQueryFailed("KeyframeTopKPrune::getWorkspaceSize", err);
        mParams.workspaceBytes = 0;
        return 0;
    }
    recordWorkspace(bytes);
    return bytes;
}

int32_t KeyframeTopKPrunePlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
    void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept
{
    char const* const where = "KeyframeTopKPrune::enqueue";
    Dims const& q = inputDesc[kIN_Q].dims;
    Dims const& x = inputDesc[kIN_X].dims;
    size_t needed = 0;
    int err = workspaceFor(q, x, needed);
    if (err != 0)
    {
        logQueryFailed(where, err);
        return -1;
    }
    // What TensorRT allocated: this plugin's record of getWorkspaceSize (kept by clone and in the
    // serialized fields). A plugin without one (an engine serialized before the record existed)
    // can only be given the size these shapes need, which TensorRT's allocation for the profile
    // maximum covers (the layout grows with every dimension).
    size_t const given = mParams.workspaceBytes >= 0 ? static_cast<size_t>(mParams.workspaceBytes) : needed;
    if (workspace == nullptr || given < needed)
    {
        logTooSmall(where, needed, workspace, given);
        return -1;
    }
    err = evad_keyframe_topk_prune(kernelType(inputDesc[kIN_Q].type), inputs[kIN_Q], inputs[kIN_K], inputs[kIN_X],
        static_cast<int64_t const*>(inputs[kIN_IDX]), outputs[0], static_cast<int64_t*>(outputs[1]), q.d[0], q.d[1],
        q.d[2], static_cast<int32_t>(q.d[3]), x.d[1], x.d[2], mParams.keepNum, mParams.keepDen,
        mParams.keyframeWeight, workspace, given, stream);
    return launchStatus(err);
}

// ------------------------------------------------------------------------------------------------

KeyframeTopKPrunePluginCreator::KeyframeTopKPrunePluginCreator()
    : PluginCreatorBase(kNAME, contractFieldNames(kFIELDS, kNB_FIELDS))
{
}

IPluginV3* KeyframeTopKPrunePluginCreator::create(PluginFieldCollection const* fc) const
{
    // Every field is required and checked against the contract, keep_num <= keep_den
    // included; fields outside the contract are ignored.
    std::vector<FieldValue> const v
        = readContractFields(kNAME, kFIELDS, kNB_FIELDS, fc, contract::kKeyframeTopKPruneLessEqual);
    KeyframeTopKPruneParams p;
    p.keepNum = static_cast<int32_t>(v[kKEEP_NUM].asInt);
    p.keepDen = static_cast<int32_t>(v[kKEEP_DEN].asInt);
    p.keyframeWeight = static_cast<float>(v[kKEYFRAME_WEIGHT].asFloat);
    // The workspace record of a serialized plugin (not a contract field; absent from ONNX).
    p.workspaceBytes = readInt64Field(fc, kWorkspaceBytesField, -1);
    return new KeyframeTopKPrunePlugin(p);
}

} // namespace plugin
} // namespace evad
