/*
 * C ABI of the KeyframeTopKPrune CUDA kernels (keyframeTopkPruneKernel.cu; exported by
 * libevad_kernels.so and libevad_plugins.so). Conventions: ../common/evadKernels.h.
 */
#ifndef EVAD_KEYFRAME_TOPK_PRUNE_KERNEL_H
#define EVAD_KEYFRAME_TOPK_PRUNE_KERNEL_H

#include "evadKernels.h"

#ifdef __cplusplus
extern "C"
{
#endif

/*!
 * Workspace bytes of evad_keyframe_topk_prune for batch b, heads, n tokens, m = N - S
 * non-keyframe tokens, into *bytes. Queries CUB's temporary storage (needs a current CUDA
 * device). Returns a cudaError_t: CUB's or CUDA's error when the query fails (no device, ...),
 * cudaErrorInvalidValue for negative or overflowing sizes; *bytes is written only on success.
 */
int evad_keyframe_topk_prune_workspace_query(int64_t b, int64_t heads, int64_t n, int64_t m, size_t* bytes);

/*!
 * The same size, or 0 when the query fails (0 is never a valid size: the layout always holds
 * the segment offsets). Prefer evad_keyframe_topk_prune_workspace_query, which says why.
 */
size_t evad_keyframe_topk_prune_workspace_size(int64_t b, int64_t heads, int64_t n, int64_t m);

/*!
 * KeyframeTopKPrune: q, k (B, heads, N, d) and x_nonkey (B, M, C) in `dtype` (EvadDataType),
 * idx (B, M) int64; writes x_kept (B, K, C) and idx_kept (B, K) with
 * K = ceil(keepNum * N / keepDen) - (N - M), in descending order of importance; on equal
 * importance the lower position in x_nonkey first (the contract's stable descending order).
 * No N x N buffer. `workspaceSize` is the size of the caller's allocation at `workspace`; the
 * call computes the size it needs for these shapes (checked queries) and returns
 * cudaErrorInvalidValue, launching nothing, when the workspace is null or smaller.
 */
int evad_keyframe_topk_prune(int dtype, void const* q, void const* k, void const* xNonkey,
    int64_t const* idx, void* xKept, int64_t* idxKept, int64_t b, int64_t heads, int64_t n,
    int32_t d, int64_t m, int64_t channels, int64_t keepNum, int64_t keepDen, float keyframeWeight,
    void* workspace, size_t workspaceSize, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif // EVAD_KEYFRAME_TOPK_PRUNE_KERNEL_H
