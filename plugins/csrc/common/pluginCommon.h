/*
 * Helpers shared by the evad IPluginV3 plugins: the namespace and version every evad plugin
 * declares, attribute parsing from a PluginFieldCollection, and error reporting.
 */
#ifndef EVAD_PLUGIN_COMMON_H
#define EVAD_PLUGIN_COMMON_H

#include "NvInferRuntime.h"

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <stdexcept>
#include <string>

namespace evad
{
namespace plugin
{

//! Every evad plugin: namespace "evad" (the ONNX domain), version "1" (the op version).
constexpr char const* kNAMESPACE = "evad";
constexpr char const* kVERSION = "1";

//! Report an error through stderr: TensorRT's logger is not reachable from a plugin library
//! loaded without a logger finder, and a plugin must never throw across the API.
inline void logError(char const* where, char const* what) noexcept
{
    std::fprintf(stderr, "[evad plugin] %s: %s\n", where, what);
}

//! Read one scalar field as int64 (the ONNX parser passes INT attributes as kINT32; kINT64 and
//! kINT8/16 are accepted too). Throws std::invalid_argument on a wrong type or length.
inline int64_t readInt(nvinfer1::PluginField const& f)
{
    using nvinfer1::PluginFieldType;
    if (f.data == nullptr || f.length != 1)
    {
        throw std::invalid_argument(std::string("field ") + f.name + " must hold one value");
    }
    switch (f.type)
    {
    case PluginFieldType::kINT32: return *static_cast<int32_t const*>(f.data);
    case PluginFieldType::kINT64: return *static_cast<int64_t const*>(f.data);
    case PluginFieldType::kINT16: return *static_cast<int16_t const*>(f.data);
    case PluginFieldType::kINT8: return *static_cast<int8_t const*>(f.data);
    default: throw std::invalid_argument(std::string("field ") + f.name + " must be an integer");
    }
}

//! Read one scalar field as float (kFLOAT32 from the ONNX parser; kFLOAT64 accepted).
inline float readFloat(nvinfer1::PluginField const& f)
{
    using nvinfer1::PluginFieldType;
    if (f.data == nullptr || f.length != 1)
    {
        throw std::invalid_argument(std::string("field ") + f.name + " must hold one value");
    }
    switch (f.type)
    {
    case PluginFieldType::kFLOAT32: return *static_cast<float const*>(f.data);
    case PluginFieldType::kFLOAT64: return static_cast<float>(*static_cast<double const*>(f.data));
    default: throw std::invalid_argument(std::string("field ") + f.name + " must be a float");
    }
}

//! Find a field by name; nullptr when absent.
inline nvinfer1::PluginField const* findField(nvinfer1::PluginFieldCollection const* fc, char const* name)
{
    for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i)
    {
        if (fc->fields[i].name != nullptr && std::strcmp(fc->fields[i].name, name) == 0)
        {
            return &fc->fields[i];
        }
    }
    return nullptr;
}

//! Require a field: throws std::invalid_argument naming it when absent.
inline nvinfer1::PluginField const& requireField(nvinfer1::PluginFieldCollection const* fc, char const* name)
{
    nvinfer1::PluginField const* f = findField(fc, name);
    if (f == nullptr)
    {
        throw std::invalid_argument(std::string("missing field ") + name);
    }
    return *f;
}

//! The evad float types: fp32, fp16, bf16; and the kernel enum of a TensorRT type (-1: other).
inline int32_t kernelType(nvinfer1::DataType t) noexcept
{
    switch (t)
    {
    case nvinfer1::DataType::kFLOAT: return 0;
    case nvinfer1::DataType::kHALF: return 1;
    case nvinfer1::DataType::kBF16: return 2;
    default: return -1;
    }
}

} // namespace plugin
} // namespace evad

#endif // EVAD_PLUGIN_COMMON_H
