/*
 * Per-element maths of the evad ops, shared by the CUDA kernels (nvcc) and the CPU check library
 * (g++). No CUDA-only include: under nvcc EVAD_HD is `__host__ __device__ __forceinline__`,
 * elsewhere `inline`, so CI proves these functions against the torch reference without a GPU.
 * Contracts: evad/op_contracts.py, described in ../roi_align_3d/README.md and
 * ../keyframe_topk_prune/README.md.
 *
 * Element types are read with static_cast<float> (cuda_fp16/cuda_bf16 types convert on both
 * sides under nvcc); every reduction accumulates in fp32 whatever the input type.
 */
#ifndef EVAD_MATH_H
#define EVAD_MATH_H

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define EVAD_HD __host__ __device__ __forceinline__
#else
#define EVAD_HD inline
#endif

namespace evad
{

// ------------------------------------------------------------------------------------------------
// KeyframeTopKPrune
// ------------------------------------------------------------------------------------------------

//! K = ceil(keep_num * N / keep_den) - S in integer arithmetic (the contract's definition).
EVAD_HD int64_t prunedCount(int64_t n, int64_t s, int64_t keepNum, int64_t keepDen)
{
    return (keepNum * n + keepDen - 1) / keepDen - s;
}

//! Dot product of two length-d rows, accumulated in fp32.
template <typename T>
EVAD_HD float dot(T const* a, T const* b, int32_t d)
{
    float acc = 0.F;
    for (int32_t c = 0; c < d; ++c)
    {
        acc += static_cast<float>(a[c]) * static_cast<float>(b[c]);
    }
    return acc;
}

//! Merge a partial (max, sum of exp(s - max)) pair into another: the online softmax update.
EVAD_HD void lseMerge(float& m, float& l, float m2, float l2)
{
    if (l2 == 0.F)
    {
        return; // empty partial: nothing seen (its max may be -inf)
    }
    if (m2 > m)
    {
        l = l * expf(m - m2) + l2;
        m = m2;
    }
    else
    {
        l += l2 * expf(m2 - m);
    }
}

//! One tile of pass 1: logits of query row `qRow` against keys j = j0, j0 + js, ... < j1, folded
//! into the running (m, l) = (row max, sum of exp(logit - m)). k: (N, d) keys of one head.
template <typename T>
EVAD_HD void rowLseTile(
    T const* qRow, T const* k, int64_t j0, int64_t j1, int64_t js, int32_t d, float& m, float& l)
{
    for (int64_t j = j0; j < j1; j += js)
    {
        lseMerge(m, l, dot(qRow, k + j * d, d), 1.F);
    }
}

//! log-sum-exp of a row from its (max, sum) pair.
EVAD_HD float lseValue(float m, float l)
{
    return m + logf(l);
}

//! One tile of pass 2: the keyframe-weighted sum over query rows i = i0, i0 + is, ... < i1 of
//! softmax(q k^T)[i, j] = exp(q_i . k_j - lse_i) for one key column kCol. q: (N, d) queries of one
//! head (already scaled by d^-0.5), lse: (N,) row log-sum-exp from pass 1; rows i < s get weight
//! keyframeWeight, the others 1.
template <typename T>
EVAD_HD float columnTile(T const* q, T const* kCol, float const* lse, int64_t i0, int64_t i1,
    int64_t is, int32_t d, int64_t s, float keyframeWeight)
{
    float acc = 0.F;
    for (int64_t i = i0; i < i1; i += is)
    {
        float const p = expf(dot(q + i * d, kCol, d) - lse[i]);
        acc += (i < s ? keyframeWeight : 1.F) * p;
    }
    return acc;
}

//! Importance of one non-keyframe token from its per-head column sums: mean_h(colsum_h / N).
//! colSum points at head 0; heads are `stride` floats apart.
EVAD_HD float headMean(float const* colSum, int32_t heads, int64_t stride, int64_t n)
{
    float acc = 0.F;
    float const invN = 1.F / static_cast<float>(n);
    for (int32_t h = 0; h < heads; ++h)
    {
        acc += colSum[h * stride] * invN;
    }
    return acc / static_cast<float>(heads);
}

// ------------------------------------------------------------------------------------------------
// RoIAlign3D
// ------------------------------------------------------------------------------------------------

//! The batch index of a RoI row, or -1 when the RoI is invalid: the contract's rule
//! (evad/op_contracts.py ROI_ALIGN_3D.edge_cases) is that the index, read as a float (the RoI
//! tensor's type converted to fp32), must be finite, an integer value (equal to its floor) and in
//! [0, batchSize); a RoI that breaks it gives zeros for all its bins and reads no feature. -0.0 is
//! 0. This is what keeps the kernels in bounds on any RoI data (TensorRT times tactics on
//! uninitialised buffers): without it a garbage index would read outside the feature map.
EVAD_HD int64_t roiBatchIndex(float value, int64_t batchSize)
{
    // Written so that NaN fails every comparison: !(NaN >= 0) is true.
    if (!(value >= 0.F) || !(value < static_cast<float>(batchSize)) || floorf(value) != value)
    {
        return -1;
    }
    return static_cast<int64_t>(value);
}

//! A RoI in feature pixels: batch index (-1: invalid RoI, all bins 0), top-left corner and extent.
struct RoiBox
{
    int64_t batch;
    float x1;
    float y1;
    float width;
    float height;
};

//! Scale/shift one RoI row [batch, x1, y1, x2, y2] (input pixels) into feature pixels, in the
//! torch reference's order of operations. Without `aligned` the box is forced to >= 1 x 1.
//! `batch` is roiBatchIndex(roi[0], batchSize): -1 for a RoI that must give zeros.
template <typename T>
EVAD_HD RoiBox roiBox(T const* roi, float spatialScale, bool aligned, int64_t batchSize)
{
    float const o = aligned ? 0.5F : 0.F;
    RoiBox b;
    b.batch = roiBatchIndex(static_cast<float>(roi[0]), batchSize);
    b.x1 = static_cast<float>(roi[1]) * spatialScale - o;
    b.y1 = static_cast<float>(roi[2]) * spatialScale - o;
    b.width = static_cast<float>(roi[3]) * spatialScale - o - b.x1;
    b.height = static_cast<float>(roi[4]) * spatialScale - o - b.y1;
    if (!aligned)
    {
        b.width = b.width < 1.F ? 1.F : b.width;
        b.height = b.height < 1.F ? 1.F : b.height;
    }
    return b;
}

//! Bilinear sample of one (H, W) plane at (y, x), feature pixels, with the contract's rule: a
//! point outside [-1, H] x [-1, W] gives 0; below 0 is clamped to 0; at or past the last
//! row/column both neighbours are that row/column. A NaN coordinate (from non-finite RoI
//! coordinates) counts as outside: it gives 0 and reads nothing.
template <typename T>
EVAD_HD float bilinear(T const* plane, int64_t height, int64_t width, float y, float x)
{
    // Negated "inside" test, so that NaN (which fails every comparison) is outside.
    if (!(y >= -1.F && y <= static_cast<float>(height) && x >= -1.F && x <= static_cast<float>(width)))
    {
        return 0.F;
    }
    y = y < 0.F ? 0.F : y;
    x = x < 0.F ? 0.F : x;
    int64_t yLow = static_cast<int64_t>(floorf(y));
    int64_t xLow = static_cast<int64_t>(floorf(x));
    int64_t yHigh = yLow + 1;
    int64_t xHigh = xLow + 1;
    float ly = y - static_cast<float>(yLow);
    float lx = x - static_cast<float>(xLow);
    if (yLow >= height - 1)
    {
        yLow = yHigh = height - 1;
        ly = 0.F;
    }
    if (xLow >= width - 1)
    {
        xLow = xHigh = width - 1;
        lx = 0.F;
    }
    float const hy = 1.F - ly;
    float const hx = 1.F - lx;
    float const v00 = static_cast<float>(plane[yLow * width + xLow]);
    float const v01 = static_cast<float>(plane[yLow * width + xHigh]);
    float const v10 = static_cast<float>(plane[yHigh * width + xLow]);
    float const v11 = static_cast<float>(plane[yHigh * width + xHigh]);
    return hy * (hx * v00 + lx * v01) + ly * (hx * v10 + lx * v11);
}

//! One output bin (ph, pw) of a RoI on one (H, W) plane: the mean of samplingRatio^2 bilinear
//! samples (zero-contributing samples still count in the mean). An invalid RoI (box.batch < 0)
//! gives 0 without touching `plane` (callers may pass any pointer for it).
template <typename T>
EVAD_HD float roiAlignBin(T const* plane, int64_t height, int64_t width, RoiBox const& box,
    int32_t outH, int32_t outW, int32_t ph, int32_t pw, int32_t samplingRatio)
{
    if (box.batch < 0)
    {
        return 0.F;
    }
    float const binH = box.height / static_cast<float>(outH);
    float const binW = box.width / static_cast<float>(outW);
    float const sr = static_cast<float>(samplingRatio);
    float acc = 0.F;
    for (int32_t iy = 0; iy < samplingRatio; ++iy)
    {
        float const y = box.y1 + static_cast<float>(ph) * binH + (static_cast<float>(iy) + 0.5F) * binH / sr;
        for (int32_t ix = 0; ix < samplingRatio; ++ix)
        {
            float const x
                = box.x1 + static_cast<float>(pw) * binW + (static_cast<float>(ix) + 0.5F) * binW / sr;
            acc += bilinear(plane, height, width, y, x);
        }
    }
    return acc / (sr * sr);
}

} // namespace evad

#endif // EVAD_MATH_H
