/*
 * RoIAlign3D CUDA kernel: one thread per output element (r, c, t, ph, pw), grid-stride, so every
 * RoI and slice runs in one launch. The maths is evad::roiAlignBin (evadMath.h), shared with the
 * CPU check library, and so is the batch-index rule (evad::roiBatchIndex): a RoI whose index is
 * not an integer in [0, B) gives zeros and reads nothing, so garbage RoIs (TensorRT's tactic
 * timing runs on uninitialised buffers) stay in bounds.
 */
#include "roiAlign3dKernel.h"
#include "evadMath.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace
{

template <typename T>
__global__ void roiAlign3dKernel(T const* __restrict__ features, T const* __restrict__ rois,
    T* __restrict__ output, int64_t b, int64_t c, int64_t t, int64_t h, int64_t w, int64_t total, int32_t outH,
    int32_t outW, float spatialScale, int32_t samplingRatio, bool aligned)
{
    for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
         e += static_cast<int64_t>(gridDim.x) * blockDim.x)
    {
        int32_t const pw = static_cast<int32_t>(e % outW);
        int32_t const ph = static_cast<int32_t>((e / outW) % outH);
        int64_t const ti = (e / (static_cast<int64_t>(outW) * outH)) % t;
        int64_t const ci = (e / (static_cast<int64_t>(outW) * outH * t)) % c;
        int64_t const ri = e / (static_cast<int64_t>(outW) * outH * t * c);
        evad::RoiBox const box = evad::roiBox(rois + ri * 5, spatialScale, aligned, b);
        if (box.batch < 0)
        {
            output[e] = static_cast<T>(0.F); // the contract: a RoI with an invalid batch index gives zeros
            continue;
        }
        T const* plane = features + ((box.batch * c + ci) * t + ti) * h * w;
        output[e] = static_cast<T>(
            evad::roiAlignBin(plane, h, w, box, outH, outW, ph, pw, samplingRatio));
    }
}

template <typename T>
cudaError_t launch(void const* features, void const* rois, void* output, int64_t b, int64_t c, int64_t t,
    int64_t h, int64_t w, int64_t total, int32_t outH, int32_t outW, float spatialScale,
    int32_t samplingRatio, bool aligned, cudaStream_t stream)
{
    constexpr int32_t kThreads = 256;
    // Cap the grid: the loop is grid-stride, and 2^16 blocks fill any current GPU.
    int64_t const blocks = (total + kThreads - 1) / kThreads;
    unsigned const grid = static_cast<unsigned>(blocks < 65536 ? blocks : 65536);
    roiAlign3dKernel<T><<<grid, kThreads, 0, stream>>>(static_cast<T const*>(features),
        static_cast<T const*>(rois), static_cast<T*>(output), b, c, t, h, w, total, outH, outW,
        spatialScale, samplingRatio, aligned);
    return cudaGetLastError();
}

} // namespace

extern "C" int evad_roi_align_3d(int dtype, void const* features, void const* rois, void* output,
    int64_t b, int64_t c, int64_t t, int64_t h, int64_t w, int64_t r, int32_t outH, int32_t outW,
    float spatialScale, int32_t samplingRatio, int32_t aligned, cudaStream_t stream)
{
    // b bounds the RoIs' batch indices: each thread checks its RoI's (evad::roiBatchIndex).
    int64_t const total = r * c * t * outH * outW;
    if (total == 0)
    {
        return cudaSuccess;
    }
    if (samplingRatio < 1 || outH < 1 || outW < 1 || h < 1 || w < 1 || b < 0)
    {
        return cudaErrorInvalidValue;
    }
    switch (dtype)
    {
    case EVAD_FLOAT32:
        return launch<float>(features, rois, output, b, c, t, h, w, total, outH, outW, spatialScale,
            samplingRatio, aligned != 0, stream);
    case EVAD_FLOAT16:
        return launch<__half>(features, rois, output, b, c, t, h, w, total, outH, outW, spatialScale,
            samplingRatio, aligned != 0, stream);
    case EVAD_BFLOAT16:
        return launch<__nv_bfloat16>(features, rois, output, b, c, t, h, w, total, outH, outW,
            spatialScale, samplingRatio, aligned != 0, stream);
    default: return cudaErrorInvalidValue;
    }
}
