/*
 * CPU build of the shared per-element maths (evadMath.h), fp32, for CI: the same functions the
 * CUDA kernels loop over, driven by plain loops here and checked against the torch reference
 * through ctypes (tests/test_kernels_cpu.py). Not a production path.
 */
#include "evadMath.h"
#include "keyframeTopkPruneWorkspace.h"

#include <algorithm>
#include <numeric>
#include <vector>

extern "C"
{

//! See evad_roi_align_3d (../roi_align_3d/roiAlign3dKernel.h); fp32 host pointers.
int evad_cpu_roi_align_3d(float const* features, float const* rois, float* output, int64_t b,
    int64_t c, int64_t t, int64_t h, int64_t w, int64_t r, int32_t outH, int32_t outW,
    float spatialScale, int32_t samplingRatio, int32_t aligned)
{
    if (samplingRatio < 1 || outH < 1 || outW < 1)
    {
        return 1;
    }
    for (int64_t ri = 0; ri < r; ++ri)
    {
        // As the CUDA kernel: a RoI with an invalid batch index (evad::roiBatchIndex) gives zeros.
        evad::RoiBox const box = evad::roiBox(rois + ri * 5, spatialScale, aligned != 0, b);
        for (int64_t ci = 0; ci < c; ++ci)
        {
            for (int64_t ti = 0; ti < t; ++ti)
            {
                float const* plane = box.batch < 0 ? features : features + ((box.batch * c + ci) * t + ti) * h * w;
                float* out = output + ((ri * c + ci) * t + ti) * outH * outW;
                for (int32_t ph = 0; ph < outH; ++ph)
                {
                    for (int32_t pw = 0; pw < outW; ++pw)
                    {
                        out[ph * outW + pw]
                            = evad::roiAlignBin(plane, h, w, box, outH, outW, ph, pw, samplingRatio);
                    }
                }
            }
        }
    }
    return 0;
}

//! Importance (B, M) of the non-keyframe tokens, by the kernels' two passes; the row pass is split
//! into `tiles` strided tiles merged with lseMerge and the column pass likewise, as the warps do.
void evad_cpu_importance(float const* q, float const* k, float* score, int64_t b, int64_t heads,
    int64_t n, int32_t d, int64_t m, float keyframeWeight, int32_t tiles)
{
    int64_t const s = n - m;
    std::vector<float> lse(n);
    std::vector<float> colSum(heads * m);
    for (int64_t bi = 0; bi < b; ++bi)
    {
        for (int64_t hi = 0; hi < heads; ++hi)
        {
            float const* qh = q + (bi * heads + hi) * n * d;
            float const* kh = k + (bi * heads + hi) * n * d;
            for (int64_t i = 0; i < n; ++i)
            {
                float mx = -INFINITY;
                float sum = 0.F;
                for (int32_t lane = 0; lane < tiles; ++lane)
                {
                    float m2 = -INFINITY;
                    float l2 = 0.F;
                    evad::rowLseTile(qh + i * d, kh, lane, n, tiles, d, m2, l2);
                    evad::lseMerge(mx, sum, m2, l2);
                }
                lse[i] = evad::lseValue(mx, sum);
            }
            for (int64_t j = 0; j < m; ++j)
            {
                float acc = 0.F;
                for (int32_t lane = 0; lane < tiles; ++lane)
                {
                    acc += evad::columnTile(qh, kh + (s + j) * d, lse.data(), lane, n, tiles, d, s,
                        keyframeWeight);
                }
                colSum[hi * m + j] = acc;
            }
        }
        for (int64_t j = 0; j < m; ++j)
        {
            score[bi * m + j] = evad::headMean(colSum.data() + j, static_cast<int32_t>(heads), m, n);
        }
    }
}

//! The whole op on the CPU: importance, the contract's order (descending importance, the lower
//! position first on equal importance: a stable descending sort, as CUB's radix sort), gather.
int evad_cpu_keyframe_topk_prune(float const* q, float const* k, float const* xNonkey,
    int64_t const* idx, float* xKept, int64_t* idxKept, int64_t b, int64_t heads, int64_t n,
    int32_t d, int64_t m, int64_t channels, int64_t keepNum, int64_t keepDen, float keyframeWeight)
{
    int64_t const kk = evad::prunedCount(n, n - m, keepNum, keepDen);
    if (kk < 1 || kk > m)
    {
        return 1;
    }
    std::vector<float> score(b * m);
    evad_cpu_importance(q, k, score.data(), b, heads, n, d, m, keyframeWeight, 32);
    std::vector<int64_t> order(m);
    for (int64_t bi = 0; bi < b; ++bi)
    {
        float const* sc = score.data() + bi * m;
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(), [sc](int64_t x, int64_t y) { return sc[x] > sc[y]; });
        for (int64_t r = 0; r < kk; ++r)
        {
            int64_t const p = order[r];
            std::copy_n(xNonkey + (bi * m + p) * channels, channels, xKept + (bi * kk + r) * channels);
            idxKept[bi * kk + r] = idx[bi * m + p];
        }
    }
    return 0;
}

//! evad::roiBatchIndex: the batch index of a RoI whose index field holds `value`, or -1.
int64_t evad_cpu_roi_batch_index(float value, int64_t b)
{
    return evad::roiBatchIndex(value, b);
}

namespace
{
// Stand-ins for CUB's temporary-storage query (evad::kfp::SortBytesQuery), set per call.
int gSortStatus = 0;
size_t gSortBytes = 0;

int fakeSortBytes(int64_t /*b*/, int64_t /*m*/, size_t* bytes)
{
    if (gSortStatus == 0)
    {
        *bytes = gSortBytes;
    }
    return gSortStatus;
}
} // namespace

//! evad::kfp::workspaceBytes with a stand-in CUB query that returns `sortStatus` (a cudaError_t
//! value) and, on success, `sortBytes`: how the kernels size their workspace, and that a failed
//! query is an error (the return value) and never a size. `bytes` is written only on success.
int evad_cpu_keyframe_topk_prune_workspace(
    int64_t b, int64_t heads, int64_t n, int64_t m, int sortStatus, size_t sortBytes, size_t* bytes)
{
    gSortStatus = sortStatus;
    gSortBytes = sortBytes;
    return evad::kfp::workspaceBytes(b, heads, n, m, fakeSortBytes, bytes);
}

//! evad::kfp::checkWorkspace: 0 when `given` bytes at `workspace` hold `needed`, else 1.
int evad_cpu_check_workspace(void const* workspace, size_t given, size_t needed)
{
    return evad::kfp::checkWorkspace(workspace, given, needed);
}

//! evad::kfp::passGrid: the grid of an importance pass over `items` rows or columns and
//! `batchHeads` (batch, head) pairs, as (x, y, ok).
void evad_cpu_pass_grid(int64_t items, int64_t batchHeads, uint32_t* x, uint32_t* y, int32_t* ok)
{
    evad::kfp::Grid const g = evad::kfp::passGrid(items, batchHeads);
    *x = g.x;
    *y = g.y;
    *ok = g.ok ? 1 : 0;
}

//! K for N tokens, S keyframe tokens and a keep rate keepNum / keepDen.
int64_t evad_cpu_pruned_count(int64_t n, int64_t s, int64_t keepNum, int64_t keepDen)
{
    return evad::prunedCount(n, s, keepNum, keepDen);
}

} // extern "C"
