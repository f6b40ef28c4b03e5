/*
 * C ABI of the RoIAlign3D CUDA kernel (roiAlign3dKernel.cu; exported by libevad_kernels.so and
 * libevad_plugins.so). Conventions: ../common/evadKernels.h.
 */
#ifndef EVAD_ROI_ALIGN_3D_KERNEL_H
#define EVAD_ROI_ALIGN_3D_KERNEL_H

#include "evadKernels.h"

#ifdef __cplusplus
extern "C"
{
#endif

/*!
 * RoIAlign3D: output (R, C, T, outH, outW) from features (B, C, T, H, W) and rois (R, 5)
 * [batch, x1, y1, x2, y2] in input pixels; features, rois and output share `dtype`
 * (EvadDataType). All RoIs and slices in one launch; no workspace. A RoI whose batch index is
 * not finite, not an integer value (not equal to its floor) or outside [0, b) gives zeros for
 * all its bins and reads no feature (the contract's edge-case rule; evad::roiBatchIndex).
 */
int evad_roi_align_3d(int dtype, void const* features, void const* rois, void* output, int64_t b,
    int64_t c, int64_t t, int64_t h, int64_t w, int64_t r, int32_t outH, int32_t outW,
    float spatialScale, int32_t samplingRatio, int32_t aligned, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif // EVAD_ROI_ALIGN_3D_KERNEL_H
