/*
 * The plugin library's creators, taken as TensorRT's loadLibrary takes them: dlopen, then the
 * exported getCreators. Shared by the CPU test programs of this folder (pluginSelfTest.cpp,
 * outputShapesTest.cpp); the library stays loaded for the life of the test process.
 */
#pragma once

#include "NvInferRuntime.h"

#include <cstdint>
#include <cstdio>
#include <dlfcn.h>

namespace evad
{
namespace test
{
//! The creators of the library at \p path and their count in \p n; nullptr (said on stderr)
//! when the library does not load or exports no getCreators. \p handle, when given, receives
//! the dlopen handle (for the library's other symbols).
inline nvinfer1::IPluginCreatorInterface* const* loadCreators(
    char const* path, int32_t& n, void** handle = nullptr)
{
    n = 0;
    void* lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (handle != nullptr)
    {
        *handle = lib;
    }
    if (lib == nullptr)
    {
        std::fprintf(stderr, "dlopen: %s\n", dlerror());
        return nullptr;
    }
    using GetCreators = nvinfer1::IPluginCreatorInterface* const* (*) (int32_t&);
    auto getCreators = reinterpret_cast<GetCreators>(dlsym(lib, "getCreators"));
    if (getCreators == nullptr)
    {
        std::fprintf(stderr, "%s exports no getCreators\n", path);
        return nullptr;
    }
    return getCreators(n);
}
} // namespace test
} // namespace evad
