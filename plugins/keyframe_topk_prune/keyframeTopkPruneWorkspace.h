/*
 * Host-side sizing of the KeyframeTopKPrune kernels, with no CUDA include, so that the CPU check
 * library (../common/evadKernelsCpu.cpp) and the C++ self-test prove it on machines without a
 * GPU:
 *   - the workspace layout and its checked size (workspaceLayout): CUB's temporary-storage query
 *     is passed in as a function, every failure of it (or a size overflow) is an error, never a
 *     smaller size;
 *   - the check of a given workspace against the needed one (checkWorkspace);
 *   - the launch geometry of the two importance passes (passGrid): gridDim.y is capped at 65535,
 *     and the kernels loop over the (batch, head) pairs with a stride of gridDim.y.
 * Return values are cudaError_t numbers (0 = cudaSuccess) so that the kernels' C ABI can pass
 * them on; the three used here are spelled out below (values of the CUDA runtime's enum).
 */
#ifndef EVAD_KEYFRAME_TOPK_PRUNE_WORKSPACE_H
#define EVAD_KEYFRAME_TOPK_PRUNE_WORKSPACE_H

#include <cstddef>
#include <cstdint>

namespace evad
{
namespace kfp
{

constexpr int kSuccess = 0;           //!< cudaSuccess
constexpr int kInvalidValue = 1;      //!< cudaErrorInvalidValue
constexpr int kWarpsPerBlock = 8;     //!< warps (rows or columns) per block of the two passes
constexpr uint32_t kMaxGridY = 65535; //!< CUDA's limit on gridDim.y (and z)
constexpr int64_t kMaxGridX = 2147483647;

//! CUB's temporary storage of the segmented sort of b rows of m scores: writes `bytes`, returns a
//! cudaError_t value. The CUDA build passes the real CUB query; tests pass stand-ins.
using SortBytesQuery = int (*)(int64_t b, int64_t m, size_t* bytes);

inline size_t alignUp(size_t x)
{
    return (x + 255) & ~static_cast<size_t>(255);
}

//! Offsets (bytes) of the workspace's parts; `total` includes CUB's temporary storage.
struct Layout
{
    size_t lse, colSum, score, scoreSorted, pos, posSorted, offsets, cubTemp, cubBytes, total;
};

namespace detail
{
//! a * b * c * elem (bytes, 256-aligned) or false when it does not fit size_t.
inline bool bytesOf(int64_t a, int64_t b, int64_t c, size_t elem, size_t& out)
{
    if (a < 0 || b < 0 || c < 0)
    {
        return false;
    }
    size_t const limit = static_cast<size_t>(-1) / 4; // head room for the sums and alignUp
    size_t n = elem;
    int64_t const dims[3] = {a, b, c};
    for (int64_t v : dims)
    {
        if (v != 0 && n > limit / static_cast<size_t>(v))
        {
            return false;
        }
        n *= static_cast<size_t>(v);
    }
    out = alignUp(n);
    return true;
}
} // namespace detail

/*!
 * The workspace layout for batch b, heads, n tokens and m non-keyframe tokens: row statistics
 * (b heads n fp32), column sums (b heads m fp32), scores and sorted scores (b m fp32), positions
 * and sorted positions (b m int32), segment offsets (b + 1 int32), then CUB's temporary storage
 * as `query` reports it. Returns kSuccess, kInvalidValue (negative sizes, b m >= 2^31, a size
 * that overflows) or the query's own error; `out` is written only on success, so a failed query
 * can never turn into a too-small size.
 */
inline int workspaceLayout(int64_t b, int64_t heads, int64_t n, int64_t m, SortBytesQuery query, Layout& out)
{
    if (query == nullptr || b < 0 || heads < 0 || n < 0 || m < 0 || b * m >= (int64_t{1} << 31))
    {
        return kInvalidValue;
    }
    size_t cubBytes = 0;
    int const err = query(b, m, &cubBytes);
    if (err != kSuccess)
    {
        return err;
    }
    Layout l{};
    size_t part[7];
    if (!detail::bytesOf(b, heads, n, sizeof(float), part[0]) || !detail::bytesOf(b, heads, m, sizeof(float), part[1])
        || !detail::bytesOf(b, m, 1, sizeof(float), part[2]) || !detail::bytesOf(b, m, 1, sizeof(float), part[3])
        || !detail::bytesOf(b, m, 1, sizeof(int32_t), part[4]) || !detail::bytesOf(b, m, 1, sizeof(int32_t), part[5])
        || !detail::bytesOf(b + 1, 1, 1, sizeof(int32_t), part[6]) || cubBytes > static_cast<size_t>(-1) / 4)
    {
        return kInvalidValue;
    }
    size_t* const at[7] = {&l.lse, &l.colSum, &l.score, &l.scoreSorted, &l.pos, &l.posSorted, &l.offsets};
    size_t offset = 0;
    for (int i = 0; i < 7; ++i)
    {
        *at[i] = offset;
        if (part[i] > static_cast<size_t>(-1) / 8 - offset)
        {
            return kInvalidValue;
        }
        offset += part[i];
    }
    l.cubTemp = offset;
    l.cubBytes = cubBytes;
    if (alignUp(cubBytes) > static_cast<size_t>(-1) / 2 - offset)
    {
        return kInvalidValue;
    }
    l.total = offset + alignUp(cubBytes);
    out = l;
    return kSuccess;
}

//! The workspace bytes of workspaceLayout, or its error (`bytes` untouched then).
inline int workspaceBytes(int64_t b, int64_t heads, int64_t n, int64_t m, SortBytesQuery query, size_t* bytes)
{
    Layout l{};
    int const err = workspaceLayout(b, heads, n, m, query, l);
    if (err == kSuccess && bytes != nullptr)
    {
        *bytes = l.total;
    }
    return bytes == nullptr ? kInvalidValue : err;
}

//! Whether a workspace of `given` bytes at `workspace` holds the `needed` bytes: kSuccess, or
//! kInvalidValue for a null workspace or one too small (the kernels then launch nothing).
inline int checkWorkspace(void const* workspace, size_t given, size_t needed)
{
    return workspace != nullptr && given >= needed ? kSuccess : kInvalidValue;
}

//! Grid of one importance pass: x = ceil(items / kWarpsPerBlock) blocks of rows (pass 1) or
//! columns (pass 2), y = min(b * heads, 65535); the kernels visit (batch, head) pairs
//! blockIdx.y, blockIdx.y + gridDim.y, ... < b * heads. ok = false when x exceeds CUDA's limit
//! or there is nothing to launch.
struct Grid
{
    uint32_t x;
    uint32_t y;
    bool ok;
};

inline Grid passGrid(int64_t items, int64_t batchHeads)
{
    Grid g{0, 0, false};
    if (items < 1 || batchHeads < 1)
    {
        return g;
    }
    int64_t const blocks = (items + kWarpsPerBlock - 1) / kWarpsPerBlock;
    if (blocks > kMaxGridX)
    {
        return g;
    }
    g.x = static_cast<uint32_t>(blocks);
    g.y = static_cast<uint32_t>(batchHeads < static_cast<int64_t>(kMaxGridY) ? batchHeads : kMaxGridY);
    g.ok = true;
    return g;
}

} // namespace kfp
} // namespace evad

#endif // EVAD_KEYFRAME_TOPK_PRUNE_WORKSPACE_H
