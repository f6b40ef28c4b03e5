/*
 * C ABI conventions of the evad CUDA kernels (libevad_kernels.so): raw device pointers, sizes, a
 * stream. No TensorRT include: the plugins call these, and so can torch through ctypes.
 * Every function returns a cudaError_t value (0 = success) and allocates nothing: the caller
 * passes the workspace sized by the matching *_workspace_size function.
 *
 * Each op declares its functions next to its kernel: ../roi_align_3d/roiAlign3dKernel.h,
 * ../keyframe_topk_prune/keyframeTopkPruneKernel.h.
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

#ifdef __cplusplus
}
#endif

#endif // EVAD_KERNELS_H
