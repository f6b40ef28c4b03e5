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
 * values are the positions 0 .. M-1 in order. Workspace layout: see layout().
 */
#include "keyframeTopkPruneKernel.h"
#include "evadMath.h"

#include <cub/device/device_segmented_radix_sort.cuh>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace
{

constexpr int32_t kWarp = 32;
constexpr int32_t kWarpsPerBlock = 8;

size_t alignUp(size_t x)
{
    return (x + 255) & ~static_cast<size_t>(255);
}

//! Offsets (bytes) of the workspace's parts; `total` includes CUB's temporary storage.
struct Layout
{
    size_t lse, colSum, score, scoreSorted, pos, posSorted, offsets, cubTemp, cubBytes, total;
};

Layout layout(int64_t b, int64_t heads, int64_t n, int64_t m, size_t cubBytes)
{
    Layout l{};
    size_t at = 0;
    l.lse = at;
    at += alignUp(sizeof(float) * b * heads * n);
    l.colSum = at;
    at += alignUp(sizeof(float) * b * heads * m);
    l.score = at;
    at += alignUp(sizeof(float) * b * m);
    l.scoreSorted = at;
    at += alignUp(sizeof(float) * b * m);
    l.pos = at;
    at += alignUp(sizeof(int32_t) * b * m);
    l.posSorted = at;
    at += alignUp(sizeof(int32_t) * b * m);
    l.offsets = at;
    at += alignUp(sizeof(int32_t) * (b + 1));
    l.cubTemp = at;
    l.cubBytes = cubBytes;
    l.total = at + alignUp(cubBytes);
    return l;
}

size_t cubSortBytes(int64_t b, int64_t m)
{
    size_t bytes = 0;
    // A null temp pointer only asks for the size; no kernel is launched.
    cub::DeviceSegmentedRadixSort::SortPairsDescending(nullptr, bytes, static_cast<float const*>(nullptr),
        static_cast<float*>(nullptr), static_cast<int32_t const*>(nullptr), static_cast<int32_t*>(nullptr),
        static_cast<int>(b * m), static_cast<int>(b), static_cast<int32_t const*>(nullptr),
        static_cast<int32_t const*>(nullptr) + 1);
    return bytes;
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

//! Pass 1. grid (ceil(N / warps), B * heads); lse: (B * heads, N).
template <typename T>
__global__ void rowLseKernel(T const* __restrict__ q, T const* __restrict__ k, float* __restrict__ lse,
    int64_t n, int32_t d)
{
    int64_t const bh = blockIdx.y;
    int64_t const row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
    int32_t const lane = threadIdx.x % kWarp;
    if (row >= n)
    {
        return; // whole warp leaves together: row is warp-uniform
    }
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

//! Pass 2. grid (ceil(M / warps), B * heads); colSum: (B * heads, M).
template <typename T>
__global__ void columnSumKernel(T const* __restrict__ q, T const* __restrict__ k,
    float const* __restrict__ lse, float* __restrict__ colSum, int64_t n, int32_t d, int64_t s,
    float keyframeWeight)
{
    int64_t const m = n - s;
    int64_t const bh = blockIdx.y;
    int64_t const col = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
    int32_t const lane = threadIdx.x % kWarp;
    if (col >= m)
    {
        return;
    }
    T const* qh = q + bh * n * d;
    T const* kCol = k + (bh * n + s + col) * d;
    float v = evad::columnTile(qh, kCol, lse + bh * n, lane, n, kWarp, d, s, keyframeWeight);
    v = warpSum(v);
    if (lane == 0)
    {
        colSum[bh * m + col] = v;
    }
}

//! Pass 3 + sort inputs: score (B, M), positions 0..M-1 per row, segment offsets (B + 1).
__global__ void scoreKernel(float const* __restrict__ colSum, float* __restrict__ score,
    int32_t* __restrict__ pos, int32_t* __restrict__ offsets, int64_t b, int32_t heads, int64_t n,
    int64_t m)
{
    int64_t const e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (e <= b)
    {
        offsets[e] = static_cast<int32_t>(e * m);
    }
    if (e >= b * m)
    {
        return;
    }
    int64_t const bi = e / m;
    int64_t const j = e % m;
    score[e] = evad::headMean(colSum + bi * heads * m + j, heads, m, n);
    pos[e] = static_cast<int32_t>(j);
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
    Layout const l = layout(b, heads, n, m, cubSortBytes(b, m));
    if (workspace == nullptr || workspaceSize < l.total)
    {
        return cudaErrorInvalidValue;
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
    dim3 const rows(static_cast<unsigned>((n + kWarpsPerBlock - 1) / kWarpsPerBlock),
        static_cast<unsigned>(b * heads));
    rowLseKernel<T><<<rows, block, 0, stream>>>(q, k, lse, n, d);
    dim3 const cols(static_cast<unsigned>((m + kWarpsPerBlock - 1) / kWarpsPerBlock),
        static_cast<unsigned>(b * heads));
    columnSumKernel<T><<<cols, block, 0, stream>>>(q, k, lse, colSum, n, d, s, keyframeWeight);
    scoreKernel<<<gridFor(b * m + 1, 256), 256, 0, stream>>>(
        colSum, score, pos, offsets, b, static_cast<int32_t>(heads), n, m);
    size_t cubBytes = l.cubBytes;
    cudaError_t err = cub::DeviceSegmentedRadixSort::SortPairsDescending(base + l.cubTemp, cubBytes,
        score, scoreSorted, pos, posSorted, static_cast<int>(b * m), static_cast<int>(b), offsets,
        offsets + 1, 0, static_cast<int>(sizeof(float) * 8), stream);
    if (err != cudaSuccess)
    {
        return err;
    }
    gatherKernel<T><<<gridFor(b * kk * channels, 256), 256, 0, stream>>>(static_cast<T const*>(xv),
        idx, posSorted, static_cast<T*>(xKeptV), idxKept, b, m, kk, channels);
    return cudaGetLastError();
}

} // namespace

extern "C" size_t evad_keyframe_topk_prune_workspace_size(int64_t b, int64_t heads, int64_t n, int64_t m)
{
    return layout(b, heads, n, m, cubSortBytes(b, m)).total;
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
