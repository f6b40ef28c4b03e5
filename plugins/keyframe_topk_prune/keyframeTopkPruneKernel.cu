/*
 * KeyframeTopKPrune CUDA kernels. Importance in two passes over the keys per (batch, head), the
 * way flash attention computes a softmax, so no N x N buffer exists:
 *   1. one warp per query row: log-sum-exp of the row (evad::rowLseTile + evad::lseMerge);
 *   2. one warp per non-keyframe key column: keyframe-weighted sum over rows of
 *      exp(logit - lse) (evad::columnTile), per head;
 *   3. mean over heads (evad::headMean), fixed order, so results do not depend on scheduling.
 * Then CUB's segmented radix sort gives the order for any K <= N - S and any batch, and a gather
 * copies tokens and positions bit for bit. The sort follows the contract's tie order
 * (evad/op_contracts.py: descending importance, the lower position first on equal importance):
 * CUB's radix sorts are stable (DeviceSegmentedRadixSort shares DeviceRadixSort's
 * implementation, documented stable; descending inverts the keys and sorts ascending), and the
 * values are the positions 0 .. M-1 in order. Workspace layout and its checked size, and the
 * launch geometry: keyframeTopkPruneWorkspace.h (host code, proven on the CPU).
 */
#include "keyframeTopkPruneKernel.h"
#include "evadMath.h"
#include "keyframeTopkPruneWorkspace.h"

#include <cub/device/device_segmented_radix_sort.cuh>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace
{

constexpr int32_t kWarp = 32;
constexpr int32_t kWarpsPerBlock = evad::kfp::kWarpsPerBlock;

//! CUB's temporary storage for the segmented sort (evad::kfp::SortBytesQuery): CUB's own error
//! is returned (it asks the current device for its PTX version, so it fails without a device).
int cubSortBytes(int64_t b, int64_t m, size_t* bytes)
{
    // A null temp pointer only asks for the size; no kernel is launched.
    return static_cast<int>(cub::DeviceSegmentedRadixSort::SortPairsDescending(nullptr, *bytes,
        static_cast<float const*>(nullptr), static_cast<float*>(nullptr), static_cast<int32_t const*>(nullptr),
        static_cast<int32_t*>(nullptr), static_cast<int>(b * m), static_cast<int>(b),
        static_cast<int32_t const*>(nullptr), static_cast<int32_t const*>(nullptr) + 1));
}

__device__ __forceinline__ void warpMergeLse(float& m, float& l)
{
    for (int32_t o = kWarp / 2; o > 0; o /= 2)
    {
        float const m2 = __shfl_xor_sync(0xffffffffU, m, o);
        float const l2 = __shfl_xor_sync(0xffffffffU, l, o);
        evad::lseMerge(m, l, m2, l2);
    }
}

__device__ __forceinline__ float warpSum(float v)
{
    for (int32_t o = kWarp / 2; o > 0; o /= 2)
    {
        v += __shfl_xor_sync(0xffffffffU, v, o);
    }
    return v;
}

//! Pass 1. grid evad::kfp::passGrid(N, B * heads): blockIdx.x picks the rows, and the block
//! visits the (batch, head) pairs blockIdx.y, + gridDim.y, ... (gridDim.y <= 65535 whatever
//! B * heads is); lse: (B * heads, N).
template <typename T>
__global__ void rowLseKernel(T const* __restrict__ q, T const* __restrict__ k, float* __restrict__ lse,
    int64_t batchHeads, int64_t n, int32_t d)
{
    int64_t const row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
    int32_t const lane = threadIdx.x % kWarp;
    if (row >= n)
    {
        return; // whole warp leaves together: row is warp-uniform
    }
    for (int64_t bh = blockIdx.y; bh < batchHeads; bh += gridDim.y)
    {
        T const* qh = q + bh * n * d;
        T const* kh = k + bh * n * d;
        float mx = -INFINITY;
        float sum = 0.F;
        evad::rowLseTile(qh + row * d, kh, lane, n, kWarp, d, mx, sum);
        warpMergeLse(mx, sum);
        if (lane == 0)
        {
            lse[bh * n + row] = evad::lseValue(mx, sum);
        }
    }
}

//! Pass 2. grid evad::kfp::passGrid(M, B * heads), (batch, head) pairs as in pass 1;
//! colSum: (B * heads, M).
template <typename T>
__global__ void columnSumKernel(T const* __restrict__ q, T const* __restrict__ k,
    float const* __restrict__ lse, float* __restrict__ colSum, int64_t batchHeads, int64_t n, int32_t d,
    int64_t s, float keyframeWeight)
{
    int64_t const m = n - s;
    int64_t const col = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
    int32_t const lane = threadIdx.x % kWarp;
    if (col >= m)
    {
        return;
    }
    for (int64_t bh = blockIdx.y; bh < batchHeads; bh += gridDim.y)
    {
        T const* qh = q + bh * n * d;
        T const* kCol = k + (bh * n + s + col) * d;
        float v = evad::columnTile(qh, kCol, lse + bh * n, lane, n, kWarp, d, s, keyframeWeight);
        v = warpSum(v);
        if (lane == 0)
        {
            colSum[bh * m + col] = v;
        }
    }
}

//! Pass 3 + sort inputs, grid-stride: score (B, M), positions 0..M-1 per row, segment offsets
//! (B + 1).
__global__ void scoreKernel(float const* __restrict__ colSum, float* __restrict__ score,
    int32_t* __restrict__ pos, int32_t* __restrict__ offsets, int64_t b, int32_t heads, int64_t n,
    int64_t m)
{
    int64_t const total = (b * m > b + 1) ? b * m : b + 1;
    for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
         e += static_cast<int64_t>(gridDim.x) * blockDim.x)
    {
        if (e <= b)
        {
            offsets[e] = static_cast<int32_t>(e * m);
        }
        if (e < b * m)
        {
            int64_t const bi = e / m;
            int64_t const j = e % m;
            score[e] = evad::headMean(colSum + bi * heads * m + j, heads, m, n);
            pos[e] = static_cast<int32_t>(j);
        }
    }
}

//! Gather: x_kept (B, K, C), idx_kept (B, K) from the sorted positions (B, M).
template <typename T>
__global__ void gatherKernel(T const* __restrict__ xNonkey, int64_t const* __restrict__ idx,
    int32_t const* __restrict__ posSorted, T* __restrict__ xKept, int64_t* __restrict__ idxKept,
    int64_t b, int64_t m, int64_t kk, int64_t channels)
{
    int64_t const total = b * kk * channels;
    for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
         e += static_cast<int64_t>(gridDim.x) * blockDim.x)
    {
        int64_t const ch = e % channels;
        int64_t const r = (e / channels) % kk;
        int64_t const bi = e / (channels * kk);
        int64_t const p = posSorted[bi * m + r];
        xKept[e] = xNonkey[(bi * m + p) * channels + ch];
        if (ch == 0)
        {
            idxKept[bi * kk + r] = idx[bi * m + p];
        }
    }
}

unsigned gridFor(int64_t total, int32_t threads)
{
    int64_t const blocks = (total + threads - 1) / threads;
    return static_cast<unsigned>(blocks < 65536 ? (blocks > 0 ? blocks : 1) : 65536);
}

template <typename T>
cudaError_t run(void const* qv, void const* kv, void const* xv, int64_t const* idx, void* xKeptV,
    int64_t* idxKept, int64_t b, int64_t heads, int64_t n, int32_t d, int64_t m, int64_t channels,
    int64_t kk, float keyframeWeight, void* workspace, size_t workspaceSize, cudaStream_t stream)
{
    auto const* q = static_cast<T const*>(qv);
    auto const* k = static_cast<T const*>(kv);
    int64_t const s = n - m;
    // The size this call needs, every query checked; nothing is launched unless the workspace the
    // caller has (workspaceSize: what it allocated, not a recomputation) holds it.
    evad::kfp::Layout l{};
    int err = evad::kfp::workspaceLayout(b, heads, n, m, cubSortBytes, l);
    if (err != cudaSuccess)
    {
        return static_cast<cudaError_t>(err);
    }
    if (evad::kfp::checkWorkspace(workspace, workspaceSize, l.total) != cudaSuccess)
    {
        return cudaErrorInvalidValue;
    }
    evad::kfp::Grid const rows = evad::kfp::passGrid(n, b * heads);
    evad::kfp::Grid const cols = evad::kfp::passGrid(m, b * heads);
    if (!rows.ok || !cols.ok)
    {
        return cudaErrorInvalidConfiguration;
    }
    auto* base = static_cast<char*>(workspace);
    auto* lse = reinterpret_cast<float*>(base + l.lse);
    auto* colSum = reinterpret_cast<float*>(base + l.colSum);
    auto* score = reinterpret_cast<float*>(base + l.score);
    auto* scoreSorted = reinterpret_cast<float*>(base + l.scoreSorted);
    auto* pos = reinterpret_cast<int32_t*>(base + l.pos);
    auto* posSorted = reinterpret_cast<int32_t*>(base + l.posSorted);
    auto* offsets = reinterpret_cast<int32_t*>(base + l.offsets);

    dim3 const block(kWarp * kWarpsPerBlock);
    rowLseKernel<T><<<dim3(rows.x, rows.y), block, 0, stream>>>(q, k, lse, b * heads, n, d);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess)
    {
        return e;
    }
    columnSumKernel<T><<<dim3(cols.x, cols.y), block, 0, stream>>>(
        q, k, lse, colSum, b * heads, n, d, s, keyframeWeight);
    if ((e = cudaGetLastError()) != cudaSuccess)
    {
        return e;
    }
    scoreKernel<<<gridFor(b * m + 1, 256), 256, 0, stream>>>(
        colSum, score, pos, offsets, b, static_cast<int32_t>(heads), n, m);
    if ((e = cudaGetLastError()) != cudaSuccess)
    {
        return e;
    }
    size_t cubBytes = l.cubBytes;
    e = cub::DeviceSegmentedRadixSort::SortPairsDescending(base + l.cubTemp, cubBytes, score, scoreSorted, pos,
        posSorted, static_cast<int>(b * m), static_cast<int>(b), offsets, offsets + 1, 0,
        static_cast<int>(sizeof(float) * 8), stream);
    if (e != cudaSuccess)
    {
        return e;
    }
    gatherKernel<T><<<gridFor(b * kk * channels, 256), 256, 0, stream>>>(static_cast<T const*>(xv),
        idx, posSorted, static_cast<T*>(xKeptV), idxKept, b, m, kk, channels);
    return cudaGetLastError();
}

} // namespace

extern "C" int evad_keyframe_topk_prune_workspace_query(int64_t b, int64_t heads, int64_t n, int64_t m, size_t* bytes)
{
    return evad::kfp::workspaceBytes(b, heads, n, m, cubSortBytes, bytes);
}

extern "C" size_t evad_keyframe_topk_prune_workspace_size(int64_t b, int64_t heads, int64_t n, int64_t m)
{
    size_t bytes = 0;
    return evad::kfp::workspaceBytes(b, heads, n, m, cubSortBytes, &bytes) == cudaSuccess ? bytes : 0;
}

extern "C" int evad_keyframe_topk_prune(int dtype, void const* q, void const* k, void const* xNonkey,
    int64_t const* idx, void* xKept, int64_t* idxKept, int64_t b, int64_t heads, int64_t n, int32_t d,
    int64_t m, int64_t channels, int64_t keepNum, int64_t keepDen, float keyframeWeight,
    void* workspace, size_t workspaceSize, cudaStream_t stream)
{
    int64_t const kk = evad::prunedCount(n, n - m, keepNum, keepDen);
    if (kk < 1 || kk > m || m > n || keepDen < 1 || b * m >= (int64_t{1} << 31))
    {
        return cudaErrorInvalidValue;
    }
    if (b == 0)
    {
        return cudaSuccess;
    }
    switch (dtype)
    {
    case EVAD_FLOAT32:
        return run<float>(q, k, xNonkey, idx, xKept, idxKept, b, heads, n, d, m, channels, kk,
            keyframeWeight, workspace, workspaceSize, stream);
    case EVAD_FLOAT16:
        return run<__half>(q, k, xNonkey, idx, xKept, idxKept, b, heads, n, d, m, channels, kk,
            keyframeWeight, workspace, workspaceSize, stream);
    case EVAD_BFLOAT16:
        return run<__nv_bfloat16>(q, k, xNonkey, idx, xKept, idxKept, b, heads, n, d, m, channels,
            kk, keyframeWeight, workspace, workspaceSize, stream);
    default: return cudaErrorInvalidValue;
    }
}
