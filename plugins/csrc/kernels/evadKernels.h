/*
 * C ABI of the evad CUDA kernels (libevad_kernels.so): raw device pointers, sizes, a stream.
 * No TensorRT include: the plugins call these, and so can torch through ctypes.
 * Every function returns a cudaError_t value (0 = success) and allocates nothing: the caller
 * passes the workspace sized by the matching *_workspace_size function.
 */
#ifndef EVAD_KERNELS_H
#define EVAD_KERNELS_H

#include <cuda_runtime_api.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C"
{
#endif

//! Element types of the float tensors.
enum EvadDataType
{
    EVAD_FLOAT32 = 0,
    EVAD_FLOAT16 = 1,
    EVAD_BFLOAT16 = 2
};

/*!
 * RoIAlign3D: output (R, C, T, outH, outW) from features (B, C, T, H, W) and rois (R, 5)
 * [batch, x1, y1, x2, y2] in input pixels; features, rois and output share `dtype`.
 * All RoIs and slices in one launch.
 */
int evad_roi_align_3d(int dtype, void const* features, void const* rois, void* output, int64_t b,
    int64_t c, int64_t t, int64_t h, int64_t w, int64_t r, int32_t outH, int32_t outW,
    float spatialScale, int32_t samplingRatio, int32_t aligned, cudaStream_t stream);

/*!
 * Workspace bytes of evad_keyframe_topk_prune for batch b, heads, n tokens, m = N - S
 * non-keyframe tokens. Queries CUB's temporary storage (needs a current CUDA device).
 */
size_t evad_keyframe_topk_prune_workspace_size(int64_t b, int64_t heads, int64_t n, int64_t m);

/*!
 * KeyframeTopKPrune: q, k (B, heads, N, d) and x_nonkey (B, M, C) in `dtype`, idx (B, M) int64;
 * writes x_kept (B, K, C) and idx_kept (B, K) with K = ceil(keepNum * N / keepDen) - (N - M),
 * in descending order of importance (ties: lower position first). No N x N buffer.
 */
int evad_keyframe_topk_prune(int dtype, void const* q, void const* k, void const* xNonkey,
    int64_t const* idx, void* xKept, int64_t* idxKept, int64_t b, int64_t heads, int64_t n,
    int32_t d, int64_t m, int64_t channels, int64_t keepNum, int64_t keepDen, float keyframeWeight,
    void* workspace, size_t workspaceSize, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif // EVAD_KERNELS_H
