/*
 * Helpers shared by the evad IPluginV3 plugins: the namespace and version every evad plugin
 * declares, the fields of an op as the contract defines them (names, order, types, valid
 * ranges: evadOpContract.h, generated from evad/op_contracts.py), reading and validating a
 * PluginFieldCollection against them, and error reporting.
 *
 * Validation speaks the words of the Python contract (evad.op_contracts.ContractError), so the
 * C++ and the Python creators refuse the same collections with the same one-line message:
 *   "evad::<op>: missing field <name>; <name> must be >= 1, not 0; ..."
 */
#ifndef EVAD_PLUGIN_COMMON_H
#define EVAD_PLUGIN_COMMON_H

#include "NvInferRuntime.h"
#include "evadOpContract.h"

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace evad
{
namespace plugin
{

//! Every evad plugin: namespace "evad" (the ONNX domain), version "1" (the op version).
constexpr char const* kNAMESPACE = contract::kNamespace;
constexpr char const* kVERSION = contract::kPluginVersion;

//! Report an error through stderr: TensorRT's logger is not reachable from a plugin library
//! loaded without a logger finder, and a plugin must never throw across the API.
inline void logError(char const* where, char const* what) noexcept
{
    std::fprintf(stderr, "[evad plugin] %s: %s\n", where, what);
}

//! logError where the place is an op's method: "[evad plugin] <op>::<method>: <what>".
inline void logError(char const* op, char const* method, char const* what) noexcept
{
    std::fprintf(stderr, "[evad plugin] %s::%s: %s\n", op, method, what);
}

// ------------------------------------------------------------------------------------------------
// The contract's fields
// ------------------------------------------------------------------------------------------------

//! The TensorRT type of a contract field: int fields are INT32, float fields FLOAT32 (what
//! getFieldNames declares and getFieldsToSerialize writes).
constexpr nvinfer1::PluginFieldType fieldType(contract::FieldKind kind) noexcept
{
    return kind == contract::FieldKind::kInt ? nvinfer1::PluginFieldType::kINT32
                                             : nvinfer1::PluginFieldType::kFLOAT32;
}

constexpr bool sameName(char const* a, char const* b) noexcept
{
    return *a == *b && (*a == '\0' || sameName(a + 1, b + 1));
}

//! Whether a contract field has this name and kind: a plugin binds its parameter struct to the
//! contract's field order with static_asserts on this, so a contract change that moves or
//! retypes a field fails the build instead of reading the wrong value.
constexpr bool fieldIs(contract::FieldSpec const& spec, char const* name, contract::FieldKind kind) noexcept
{
    return sameName(spec.name, name) && spec.kind == kind;
}

//! A creator's getFieldNames: the contract's names and types in order, no data.
inline std::vector<nvinfer1::PluginField> contractFieldNames(contract::FieldSpec const* specs, int32_t nbSpecs)
{
    std::vector<nvinfer1::PluginField> fields;
    for (int32_t i = 0; i < nbSpecs; ++i)
    {
        fields.emplace_back(specs[i].name, nullptr, fieldType(specs[i].kind), 1);
    }
    return fields;
}

//! One serialized field (getFieldsToSerialize): the contract's name and type over a plugin's
//! parameter (an int32_t for int fields, a float for float fields).
inline nvinfer1::PluginField contractField(contract::FieldSpec const& spec, void const* value) noexcept
{
    return nvinfer1::PluginField(spec.name, value, fieldType(spec.kind), 1);
}

//! A serialized plugin field outside the contract (a plugin's own record, e.g. the workspace
//! size of KeyframeTopKPrune): one INT64 value.
inline nvinfer1::PluginField int64Field(char const* name, int64_t const* value) noexcept
{
    return nvinfer1::PluginField(name, value, nvinfer1::PluginFieldType::kINT64, 1);
}

// ------------------------------------------------------------------------------------------------
// Reading and validating a PluginFieldCollection
// ------------------------------------------------------------------------------------------------

//! A float as Python's repr writes it (shortest round trip: 0.0625, 2.0, 1e-05, inf, nan), so
//! messages read the same as evad.op_contracts'.
inline std::string formatFloat(double v)
{
    if (std::isnan(v))
    {
        return "nan";
    }
    if (std::isinf(v))
    {
        return v > 0 ? "inf" : "-inf";
    }
    char buf[40];
    for (int32_t digits = 1; digits <= 17; ++digits)
    {
        std::snprintf(buf, sizeof(buf), "%.*e", digits - 1, v);
        if (std::strtod(buf, nullptr) == v)
        {
            break;
        }
    }
    std::string s(buf);
    std::string sign;
    if (s[0] == '-')
    {
        sign = "-";
        s.erase(0, 1);
    }
    size_t const e = s.find('e');
    int32_t const exp = std::atoi(s.c_str() + e + 1);
    std::string mant = s.substr(0, e);
    if (mant.size() > 1)
    {
        mant.erase(1, 1); // the decimal point: mant holds the significant digits
    }
    while (mant.size() > 1 && mant.back() == '0')
    {
        mant.pop_back();
    }
    int32_t const nd = static_cast<int32_t>(mant.size());
    if (exp < -4 || exp >= 16)
    {
        char tail[16];
        std::snprintf(tail, sizeof(tail), "e%c%02d", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
        return sign + mant.substr(0, 1) + (nd > 1 ? "." + mant.substr(1) : "") + tail;
    }
    if (exp < 0)
    {
        return sign + "0." + std::string(static_cast<size_t>(-exp - 1), '0') + mant;
    }
    if (nd <= exp + 1)
    {
        return sign + mant + std::string(static_cast<size_t>(exp + 1 - nd), '0') + ".0";
    }
    return sign + mant.substr(0, exp + 1) + "." + mant.substr(exp + 1);
}

//! TensorRT's name of a field type ("INT32"), as the Python bindings spell it.
inline char const* fieldTypeName(nvinfer1::PluginFieldType t) noexcept
{
    using nvinfer1::PluginFieldType;
    switch (t)
    {
    case PluginFieldType::kFLOAT16: return "FLOAT16";
    case PluginFieldType::kFLOAT32: return "FLOAT32";
    case PluginFieldType::kFLOAT64: return "FLOAT64";
    case PluginFieldType::kINT8: return "INT8";
    case PluginFieldType::kINT16: return "INT16";
    case PluginFieldType::kINT32: return "INT32";
    case PluginFieldType::kCHAR: return "CHAR";
    case PluginFieldType::kDIMS: return "DIMS";
    case PluginFieldType::kUNKNOWN: return "UNKNOWN";
    case PluginFieldType::kBF16: return "BF16";
    case PluginFieldType::kINT64: return "INT64";
    case PluginFieldType::kFP8: return "FP8";
    case PluginFieldType::kINT4: return "INT4";
    case PluginFieldType::kFP4: return "FP4";
    }
    return "UNKNOWN";
}

//! Find a field by name (the first of that name); nullptr when absent.
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

//! A plugin's own INT64 field (int64Field) from a collection: its value when it holds one
//! non-negative kINT64 value, else `absent` (missing or malformed: the record is just not known).
inline int64_t readInt64Field(nvinfer1::PluginFieldCollection const* fc, char const* name, int64_t absent) noexcept
{
    nvinfer1::PluginField const* f = findField(fc, name);
    if (f == nullptr || f->data == nullptr || f->length != 1 || f->type != nvinfer1::PluginFieldType::kINT64)
    {
        return absent;
    }
    int64_t const v = *static_cast<int64_t const*>(f->data);
    return v >= 0 ? v : absent;
}

//! One field's value as read: `asInt` for int fields, `asFloat` for float fields.
struct FieldValue
{
    int64_t asInt{0};
    double asFloat{0.0};
};

namespace detail
{
//! A field read by its contract kind. Int fields accept kINT8/16/32/64 data, float fields
//! kFLOAT32/64 (rounded to float, the plugins' storage); anything else leaves `unreadable`
//! describing what was given, which completes the contract's sentence ("must be an integer,
//! not <unreadable>").
struct ReadField
{
    FieldValue value;
    std::string unreadable;
};

inline ReadField readField(contract::FieldSpec const& spec, nvinfer1::PluginField const& f)
{
    using nvinfer1::PluginFieldType;
    ReadField r;
    if (f.data == nullptr || f.length != 1)
    {
        r.unreadable = std::to_string(f.data == nullptr ? 0 : f.length) + " values";
        return r;
    }
    bool const isInt = spec.kind == contract::FieldKind::kInt;
    switch (f.type)
    {
    case PluginFieldType::kINT8: r.value.asInt = *static_cast<int8_t const*>(f.data); break;
    case PluginFieldType::kINT16: r.value.asInt = *static_cast<int16_t const*>(f.data); break;
    case PluginFieldType::kINT32: r.value.asInt = *static_cast<int32_t const*>(f.data); break;
    case PluginFieldType::kINT64: r.value.asInt = *static_cast<int64_t const*>(f.data); break;
    case PluginFieldType::kFLOAT32: r.value.asFloat = *static_cast<float const*>(f.data); break;
    case PluginFieldType::kFLOAT64: r.value.asFloat = *static_cast<double const*>(f.data); break;
    default: r.unreadable = std::string("a field of type ") + fieldTypeName(f.type); return r;
    }
    bool const intData = f.type != PluginFieldType::kFLOAT32 && f.type != PluginFieldType::kFLOAT64;
    if (isInt && !intData)
    {
        r.unreadable = formatFloat(r.value.asFloat); // a float given for an int field
    }
    else if (!isInt && intData)
    {
        r.unreadable = std::string("a field of type ") + fieldTypeName(f.type);
    }
    else if (!isInt)
    {
        r.value.asFloat = static_cast<double>(static_cast<float>(r.value.asFloat));
    }
    return r;
}

inline std::string formatValue(contract::FieldSpec const& spec, FieldValue const& v)
{
    return spec.kind == contract::FieldKind::kInt ? std::to_string(v.asInt) : formatFloat(v.asFloat);
}

inline std::string formatBound(contract::FieldSpec const& spec, double bound)
{
    return spec.kind == contract::FieldKind::kInt ? std::to_string(static_cast<int64_t>(bound)) : formatFloat(bound);
}

//! evad.op_contracts.Field.problem: why a readable value breaks the contract ("" when it holds).
inline std::string valueProblem(contract::FieldSpec const& spec, FieldValue const& v)
{
    std::string const name = spec.name;
    bool const isInt = spec.kind == contract::FieldKind::kInt;
    double const x = isInt ? static_cast<double>(v.asInt) : v.asFloat;
    if (isInt && (v.asInt < INT32_MIN || v.asInt > INT32_MAX))
    {
        return name + " = " + std::to_string(v.asInt) + " does not fit a 32-bit plugin field";
    }
    if (!isInt && !std::isfinite(v.asFloat))
    {
        return name + " must be finite, not " + formatFloat(v.asFloat);
    }
    if (spec.nbChoices > 0)
    {
        bool found = false;
        std::string list;
        for (int32_t c = 0; c < spec.nbChoices; ++c)
        {
            found = found || x == static_cast<double>(spec.choices[c]);
            list += (c ? ", " : "") + std::to_string(spec.choices[c]);
        }
        if (!found)
        {
            return name + " must be one of " + list + ", not " + formatValue(spec, v);
        }
    }
    if (spec.hasMinimum && spec.exclusiveMinimum && !(x > spec.minimum))
    {
        return name + " must be > " + formatBound(spec, spec.minimum) + ", not " + formatValue(spec, v);
    }
    if (spec.hasMinimum && !spec.exclusiveMinimum && !(x >= spec.minimum))
    {
        return name + " must be >= " + formatBound(spec, spec.minimum) + ", not " + formatValue(spec, v);
    }
    return "";
}
} // namespace detail

/*!
 * The values of an op's fields, in contract order, read from a collection and validated as
 * evad.op_contracts.OpContract.validate does: every contract field is required; fields outside
 * the contract are ignored (the ONNX parser passes plugin_version and plugin_namespace along);
 * int fields must hold one kINT8/16/32/64 value that fits 32 bits, float fields one finite
 * kFLOAT32/64 value; then the ranges and choices; then, when nothing else is wrong, the
 * relation lessEqual[0] <= lessEqual[1] (indices into specs; nullptr: none).
 *
 * Throws std::invalid_argument("evad::<opName>: <problem>; <problem>...") naming every problem
 * in the order the Python contract lists them.
 */
inline std::vector<FieldValue> readContractFields(char const* opName, contract::FieldSpec const* specs,
    int32_t nbSpecs, nvinfer1::PluginFieldCollection const* fc, int32_t const* lessEqual = nullptr)
{
    std::vector<std::string> problems;
    std::vector<nvinfer1::PluginField const*> given(static_cast<size_t>(nbSpecs));
    for (int32_t i = 0; i < nbSpecs; ++i)
    {
        given[i] = findField(fc, specs[i].name);
        if (given[i] == nullptr)
        {
            problems.push_back(std::string("missing field ") + specs[i].name);
        }
    }
    std::vector<FieldValue> values(static_cast<size_t>(nbSpecs));
    for (int32_t i = 0; i < nbSpecs; ++i)
    {
        if (given[i] == nullptr)
        {
            continue;
        }
        detail::ReadField const r = detail::readField(specs[i], *given[i]);
        values[i] = r.value;
        if (!r.unreadable.empty())
        {
            bool const isInt = specs[i].kind == contract::FieldKind::kInt;
            problems.push_back(std::string(specs[i].name) + (isInt ? " must be an integer, not " : " must be a number, not ")
                + r.unreadable);
            continue;
        }
        std::string const p = detail::valueProblem(specs[i], r.value);
        if (!p.empty())
        {
            problems.push_back(p);
        }
    }
    if (problems.empty() && lessEqual != nullptr)
    {
        contract::FieldSpec const& a = specs[lessEqual[0]];
        contract::FieldSpec const& b = specs[lessEqual[1]];
        FieldValue const& va = values[lessEqual[0]];
        FieldValue const& vb = values[lessEqual[1]];
        double const xa = a.kind == contract::FieldKind::kInt ? static_cast<double>(va.asInt) : va.asFloat;
        double const xb = b.kind == contract::FieldKind::kInt ? static_cast<double>(vb.asInt) : vb.asFloat;
        if (!(xa <= xb))
        {
            problems.push_back(std::string(a.name) + " <= " + b.name + " required, got " + detail::formatValue(a, va)
                + " > " + detail::formatValue(b, vb));
        }
    }
    if (!problems.empty())
    {
        std::string msg = std::string(kNAMESPACE) + "::" + opName + ": ";
        for (size_t i = 0; i < problems.size(); ++i)
        {
            msg += (i ? "; " : "") + problems[i];
        }
        throw std::invalid_argument(msg);
    }
    return values;
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
