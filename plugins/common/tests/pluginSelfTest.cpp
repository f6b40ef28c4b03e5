/*
 * CPU self-test of libevad_plugins.so's plugin logic, without TensorRT's runtime or a GPU:
 * dlopen the library, take its creators through getCreators (what loadLibrary calls), and check
 * each op against the contract header (evadOpContract.h, generated from evad/op_contracts.py):
 * getFieldNames (names, order, types), creation from the contract's defaults, the field types
 * accepted (int fields kINT8/16/32/64, float fields kFLOAT32/64; fields outside the contract
 * ignored), refusal of each bad field (missing, wrong type or length, out of range or choices,
 * not 32-bit, not finite, the LessEqual relation) with one stderr line in the contract's words,
 * clone, the serialization round trip, output types, format/type support; for KeyframeTopKPrune
 * the workspace (testWorkspace: a failed size query is loud, the size is recorded and serialized,
 * enqueue refuses a workspace smaller than its shapes need).
 * Prints one line per check; exit code = number of failures. Built and run by
 * tests/test_plugins.py::test_cpp_plugin_self_test.
 */
#include "NvInferRuntime.h"
#include "evadOpContract.h"
#include "loadCreators.h"

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <dlfcn.h>
#include <functional>
#include <limits>
#include <string>
#include <unistd.h>
#include <vector>

using namespace nvinfer1;
namespace contract = evad::contract;

namespace
{
int gFailures = 0;

void check(bool ok, std::string const& what)
{
    std::printf("%s %s\n", ok ? "PASS" : "FAIL", what.c_str());
    gFailures += ok ? 0 : 1;
}

PluginFieldType contractType(contract::FieldSpec const& spec)
{
    return spec.kind == contract::FieldKind::kInt ? PluginFieldType::kINT32 : PluginFieldType::kFLOAT32;
}

char const* typeName(PluginFieldType t)
{
    switch (t)
    {
    case PluginFieldType::kINT8: return "INT8";
    case PluginFieldType::kINT16: return "INT16";
    case PluginFieldType::kINT32: return "INT32";
    case PluginFieldType::kINT64: return "INT64";
    case PluginFieldType::kFLOAT32: return "FLOAT32";
    case PluginFieldType::kFLOAT64: return "FLOAT64";
    case PluginFieldType::kCHAR: return "CHAR";
    default: return "other";
    }
}

//! One field with its own storage (a PluginField does not own its data).
struct Value
{
    std::string name;
    PluginFieldType type{PluginFieldType::kINT32};
    int32_t length{1};
    std::vector<char> bytes; //!< empty: a null data pointer
    std::string text;        //!< for the case description
};

template <typename T>
void store(Value& v, T x, int32_t length)
{
    v.bytes.resize(sizeof(T) * static_cast<size_t>(length));
    for (int32_t i = 0; i < length; ++i)
    {
        std::memcpy(v.bytes.data() + sizeof(T) * i, &x, sizeof(T));
    }
}

//! A field of `type` holding `x` (converted to the type), `length` times.
Value makeValue(std::string const& name, double x, PluginFieldType type, int32_t length = 1)
{
    Value v;
    v.name = name;
    v.type = type;
    v.length = length;
    switch (type)
    {
    case PluginFieldType::kINT8: store(v, static_cast<int8_t>(x), length); break;
    case PluginFieldType::kINT16: store(v, static_cast<int16_t>(x), length); break;
    case PluginFieldType::kINT32: store(v, static_cast<int32_t>(x), length); break;
    case PluginFieldType::kINT64: store(v, static_cast<int64_t>(x), length); break;
    case PluginFieldType::kFLOAT32: store(v, static_cast<float>(x), length); break;
    case PluginFieldType::kFLOAT64: store(v, x, length); break;
    case PluginFieldType::kCHAR: store(v, 'x', length); break;
    default: break;
    }
    char buf[64];
    std::snprintf(buf, sizeof(buf), "%.17g", x);
    v.text = name + " = " + buf + " (" + typeName(type) + (length != 1 ? " x" + std::to_string(length) : "") + ")";
    return v;
}

//! A field collection over owned values.
struct Collection
{
    std::vector<Value> values;
    std::vector<PluginField> fields;
    PluginFieldCollection fc{};

    PluginFieldCollection const* get()
    {
        fields.clear();
        for (Value const& v : values)
        {
            fields.emplace_back(v.name.c_str(), v.bytes.empty() ? nullptr : v.bytes.data(), v.type, v.length);
        }
        fc.nbFields = static_cast<int32_t>(fields.size());
        fc.fields = fields.data();
        return &fc;
    }

    Value& operator[](std::string const& name)
    {
        for (Value& v : values)
        {
            if (v.name == name)
            {
                return v;
            }
        }
        values.push_back(Value{});
        return values.back();
    }

    void erase(std::string const& name)
    {
        for (size_t i = 0; i < values.size(); ++i)
        {
            if (values[i].name == name)
            {
                values.erase(values.begin() + static_cast<std::ptrdiff_t>(i));
                return;
            }
        }
    }
};

//! One op as the contract header defines it, plus what the self-test needs of its tensors.
struct OpSpec
{
    char const* name;
    contract::FieldSpec const* fields;
    int32_t nbFields;
    int32_t const* lessEqual; //!< nullptr: no relation
    int32_t nbInputs;
    std::vector<DataType> goodTypes;
    std::vector<DataType> wantOutputTypes;
};

//! The contract's defaults, each in its plugin type (INT32 / FLOAT32).
Collection defaults(OpSpec const& op)
{
    Collection c;
    for (int32_t i = 0; i < op.nbFields; ++i)
    {
        c.values.push_back(makeValue(op.fields[i].name, op.fields[i].defaultValue, contractType(op.fields[i])));
    }
    return c;
}

//! A plugin from the contract's defaults, for the checks named by `purpose` ("plugin": "the
//! plugin checks"); nullptr, with one FAIL line, when the creator refuses the defaults.
IPluginV3* createForChecks(IPluginCreatorV3One* creator, OpSpec const& op, char const* purpose)
{
    Collection good = defaults(op);
    IPluginV3* plugin = creator->createPlugin(op.name, good.get(), TensorRTPhase::kBUILD);
    if (plugin == nullptr)
    {
        check(false, std::string(op.name) + " created (for the " + purpose + " checks)");
    }
    return plugin;
}

//! What `fn` writes to stderr (fd 2; the plugins report through fprintf(stderr)).
std::string captureStderr(std::function<void()> const& fn)
{
    std::fflush(stderr);
    FILE* tmp = std::tmpfile();
    int const saved = dup(2);
    dup2(fileno(tmp), 2);
    fn();
    std::fflush(stderr);
    dup2(saved, 2);
    close(saved);
    std::rewind(tmp);
    std::string text;
    char buf[512];
    size_t n = 0;
    while ((n = std::fread(buf, 1, sizeof(buf), tmp)) > 0)
    {
        text.append(buf, n);
    }
    std::fclose(tmp);
    return text;
}

//! Field values, as bytes, from a collection (for comparing serialized plugins).
std::vector<std::string> fieldBytes(PluginFieldCollection const* fc)
{
    std::vector<std::string> out;
    for (int32_t i = 0; i < fc->nbFields; ++i)
    {
        PluginField const& f = fc->fields[i];
        size_t const size = (f.type == PluginFieldType::kFLOAT32 || f.type == PluginFieldType::kINT32) ? 4
            : f.type == PluginFieldType::kINT64                                                     ? 8
                                                                                                    : 0;
        out.push_back(std::string(f.name) + "=" + std::string(static_cast<char const*>(f.data), size * f.length));
    }
    return out;
}

std::vector<std::string> serialized(IPluginV3* plugin)
{
    auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    return fieldBytes(runtime->getFieldsToSerialize());
}

//! createPlugin accepts `c`, and the plugin serializes as `want` (the defaults' plugin).
void expectAccepted(IPluginCreatorV3One* creator, std::string const& op, Collection& c, std::string const& what,
    std::vector<std::string> const& want)
{
    IPluginV3* plugin = creator->createPlugin(op.c_str(), c.get(), TensorRTPhase::kBUILD);
    check(plugin != nullptr && serialized(plugin) == want, op + " accepts " + what);
    delete plugin;
}

//! createPlugin refuses `c`: nullptr and one stderr line "[evad plugin] <op>::createPlugin:
//! evad::<op>: ..." (the Python ContractError's text after the prefix).
void expectRefused(IPluginCreatorV3One* creator, std::string const& op, Collection& c, std::string const& what)
{
    IPluginV3* plugin = nullptr;
    std::string const err
        = captureStderr([&] { plugin = creator->createPlugin(op.c_str(), c.get(), TensorRTPhase::kBUILD); });
    std::string const prefix = "[evad plugin] " + op + "::createPlugin: evad::" + op + ": ";
    bool const oneLine = err.size() > prefix.size() && err.compare(0, prefix.size(), prefix) == 0
        && err.find('\n') == err.size() - 1;
    std::string const msg = err.empty() ? std::string("(no message)") : err.substr(0, err.size() - 1);
    check(plugin == nullptr && oneLine, op + " refuses " + what + " | " + msg);
    delete plugin;
}

void testFields(IPluginCreatorV3One* creator, OpSpec const& op)
{
    std::string const name = op.name;
    PluginFieldCollection const* names = creator->getFieldNames();
    bool same = names != nullptr && names->nbFields == op.nbFields;
    for (int32_t i = 0; same && i < op.nbFields; ++i)
    {
        same = std::strcmp(names->fields[i].name, op.fields[i].name) == 0
            && names->fields[i].type == contractType(op.fields[i]) && names->fields[i].length == 1;
    }
    check(same, name + " getFieldNames = the contract's names, order and types");

    Collection good = defaults(op);
    IPluginV3* plugin = creator->createPlugin(name.c_str(), good.get(), TensorRTPhase::kBUILD);
    check(plugin != nullptr, name + " created from the contract's defaults");
    if (plugin == nullptr)
    {
        return;
    }
    std::vector<std::string> const want = serialized(plugin);
    delete plugin;

    // Accepted: fields outside the contract (what the ONNX parser adds), every int and float type.
    {
        Collection c = defaults(op);
        c.values.push_back(makeValue("plugin_version", 0, PluginFieldType::kCHAR));
        c.values.push_back(makeValue("plugin_namespace", 0, PluginFieldType::kCHAR, 4));
        expectAccepted(creator, name, c, "fields outside the contract (ignored)", want);
    }
    for (int32_t i = 0; i < op.nbFields; ++i)
    {
        contract::FieldSpec const& f = op.fields[i];
        bool const isInt = f.kind == contract::FieldKind::kInt;
        std::vector<PluginFieldType> const ok = isInt
            ? std::vector<PluginFieldType>{PluginFieldType::kINT8, PluginFieldType::kINT16, PluginFieldType::kINT64}
            : std::vector<PluginFieldType>{PluginFieldType::kFLOAT64};
        for (PluginFieldType t : ok)
        {
            Collection c = defaults(op);
            c[f.name] = makeValue(f.name, f.defaultValue, t);
            expectAccepted(creator, name, c, c[f.name].text, want);
        }
    }

    // Refused: each bad field.
    for (int32_t i = 0; i < op.nbFields; ++i)
    {
        contract::FieldSpec const& f = op.fields[i];
        bool const isInt = f.kind == contract::FieldKind::kInt;
        std::vector<Value> bad;
        bad.push_back(makeValue(f.name, f.defaultValue, isInt ? PluginFieldType::kFLOAT32 : PluginFieldType::kINT32));
        bad.push_back(makeValue(f.name, f.defaultValue, contractType(f), 2));
        bad.push_back(makeValue(f.name, 0, PluginFieldType::kCHAR));
        Value null = makeValue(f.name, f.defaultValue, contractType(f));
        null.bytes.clear();
        null.text = std::string(f.name) + " with no data";
        bad.push_back(null);
        if (isInt)
        {
            bad.push_back(makeValue(f.name, 2147483648.0, PluginFieldType::kINT64));
        }
        else
        {
            bad.push_back(makeValue(f.name, std::numeric_limits<double>::quiet_NaN(), PluginFieldType::kFLOAT32));
            bad.push_back(makeValue(f.name, std::numeric_limits<double>::infinity(), PluginFieldType::kFLOAT64));
            bad.push_back(makeValue(f.name, 1e300, PluginFieldType::kFLOAT64)); // inf as float32
        }
        if (f.hasMinimum)
        {
            double const below = f.exclusiveMinimum ? f.minimum : f.minimum - 1.0;
            bad.push_back(makeValue(f.name, below, contractType(f)));
            bad.push_back(makeValue(f.name, below - 1.0, contractType(f)));
        }
        if (f.nbChoices > 0)
        {
            int32_t lo = f.choices[0];
            int32_t hi = f.choices[0];
            for (int32_t j = 1; j < f.nbChoices; ++j)
            {
                lo = f.choices[j] < lo ? f.choices[j] : lo;
                hi = f.choices[j] > hi ? f.choices[j] : hi;
            }
            bad.push_back(makeValue(f.name, lo - 1.0, contractType(f)));
            bad.push_back(makeValue(f.name, hi + 1.0, contractType(f)));
        }
        for (Value const& v : bad)
        {
            Collection c = defaults(op);
            c[f.name] = v;
            expectRefused(creator, name, c, v.text);
        }
        Collection missing = defaults(op);
        missing.erase(f.name);
        expectRefused(creator, name, missing, std::string("a missing ") + f.name);
    }
    {
        Collection none;
        expectRefused(creator, name, none, "an empty collection");
    }
    if (op.lessEqual != nullptr)
    {
        contract::FieldSpec const& a = op.fields[op.lessEqual[0]];
        contract::FieldSpec const& b = op.fields[op.lessEqual[1]];
        Collection c = defaults(op);
        c[a.name] = makeValue(a.name, b.defaultValue + 1.0, contractType(a));
        expectRefused(creator, name, c, std::string(a.name) + " > " + b.name);
        c[a.name] = makeValue(a.name, b.defaultValue, contractType(a));
        IPluginV3* equal = creator->createPlugin(name.c_str(), c.get(), TensorRTPhase::kBUILD);
        check(equal != nullptr, name + " accepts " + a.name + " == " + b.name);
        delete equal;
    }
}

DynamicPluginTensorDesc desc(DataType t)
{
    DynamicPluginTensorDesc d{};
    d.desc.type = t;
    d.desc.format = TensorFormat::kLINEAR;
    return d;
}

void testPlugin(IPluginCreatorV3One* creator, OpSpec const& op)
{
    std::string const name = op.name;
    IPluginV3* plugin = createForChecks(creator, op, "plugin");
    if (plugin == nullptr)
    {
        return;
    }
    auto* core = static_cast<IPluginV3OneCore*>(plugin->getCapabilityInterface(PluginCapabilityType::kCORE));
    auto* build = static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
    auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    check(core && build && runtime, name + " has core, build and runtime capabilities");
    check(std::strcmp(core->getPluginName(), name.c_str()) == 0, name + " plugin name");
    check(std::strcmp(core->getPluginVersion(), contract::kPluginVersion) == 0, name + " plugin version");
    check(std::strcmp(core->getPluginNamespace(), contract::kNamespace) == 0, name + " plugin namespace");

    IPluginV3* clone = plugin->clone();
    check(clone != nullptr, name + " clone");
    std::vector<std::string> const original = serialized(plugin);
    check(clone != nullptr && serialized(clone) == original, name + " clone keeps the fields");
    IPluginV3* again = creator->createPlugin(name.c_str(), runtime->getFieldsToSerialize(), TensorRTPhase::kRUNTIME);
    check(again != nullptr, name + " recreated from its serialized fields");
    check(again != nullptr && serialized(again) == original, name + " serialization round trip");

    int32_t const nbOutputs = build->getNbOutputs();
    check(nbOutputs == static_cast<int32_t>(op.wantOutputTypes.size()), name + " output count");
    for (DataType floatType : {DataType::kFLOAT, DataType::kHALF, DataType::kBF16})
    {
        std::vector<DataType> in = op.goodTypes;
        for (auto& t : in)
        {
            t = t == DataType::kFLOAT ? floatType : t;
        }
        std::vector<DataType> out(nbOutputs);
        build->getOutputDataTypes(out.data(), nbOutputs, in.data(), op.nbInputs);
        bool typesOk = true;
        std::vector<DynamicPluginTensorDesc> io;
        for (auto t : in)
        {
            io.push_back(desc(t));
        }
        for (int32_t o = 0; o < nbOutputs; ++o)
        {
            DataType const want = op.wantOutputTypes[o] == DataType::kFLOAT ? floatType : op.wantOutputTypes[o];
            typesOk = typesOk && out[o] == want;
            io.push_back(desc(out[o]));
        }
        std::string const ft = std::to_string(static_cast<int>(floatType));
        check(typesOk, name + " output types for float type " + ft);
        bool supported = true;
        for (int32_t pos = 0; pos < op.nbInputs + nbOutputs; ++pos)
        {
            supported = supported && build->supportsFormatCombination(pos, io.data(), op.nbInputs, nbOutputs);
        }
        check(supported, name + " supports its types, float type " + ft);
    }
    // An int32 float input, and a mixed float type, are refused.
    std::vector<DynamicPluginTensorDesc> bad;
    for (auto t : op.goodTypes)
    {
        bad.push_back(desc(t));
    }
    bad[0].desc.type = DataType::kINT32;
    check(!build->supportsFormatCombination(0, bad.data(), op.nbInputs, nbOutputs), name + " refuses int32 data");
    bad[0].desc.type = DataType::kFLOAT;
    bad[1].desc.type = DataType::kHALF;
    check(!build->supportsFormatCombination(1, bad.data(), op.nbInputs, nbOutputs), name + " refuses mixed float types");
    bad[1].desc.type = DataType::kFLOAT;
    bad[0].desc.format = TensorFormat::kCHW32;
    check(!build->supportsFormatCombination(0, bad.data(), op.nbInputs, nbOutputs), name + " refuses non-linear formats");
    delete again;
    delete clone;
    delete plugin;
}
//! The library's evad_keyframe_topk_prune_workspace_query (keyframeTopkPruneKernel.h).
using WorkspaceQuery = int (*)(int64_t, int64_t, int64_t, int64_t, size_t*);

//! CUDA devices visible to the library's CUDA runtime (its dependency: dlsym searches it): 0
//! when there is none, no driver, or no runtime.
int cudaDevices(void* lib)
{
    using GetDeviceCount = int (*)(int*);
    auto fn = reinterpret_cast<GetDeviceCount>(dlsym(lib, "cudaGetDeviceCount"));
    int n = 0;
    return fn != nullptr && fn(&n) == 0 ? n : 0;
}

Dims makeDims(std::vector<int64_t> const& d)
{
    Dims out{};
    out.nbDims = static_cast<int32_t>(d.size());
    for (size_t i = 0; i < d.size(); ++i)
    {
        out.d[i] = d[i];
    }
    return out;
}

//! Exactly one stderr line starting with `prefix`.
bool oneLine(std::string const& err, std::string const& prefix)
{
    return err.size() > prefix.size() && err.compare(0, prefix.size(), prefix) == 0 && err.find('\n') == err.size() - 1;
}

std::string firstLine(std::string const& err)
{
    return err.empty() ? std::string("(no message)") : err.substr(0, err.find('\n'));
}

//! The serialized workspace record of a plugin (-1: none).
int64_t serializedWorkspace(IPluginV3* plugin)
{
    auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    PluginFieldCollection const* fc = runtime->getFieldsToSerialize();
    for (int32_t i = 0; i < fc->nbFields; ++i)
    {
        if (std::strcmp(fc->fields[i].name, "workspace_bytes") == 0 && fc->fields[i].type == PluginFieldType::kINT64)
        {
            return *static_cast<int64_t const*>(fc->fields[i].data);
        }
    }
    return -1;
}

/*!
 * KeyframeTopKPrune's workspace: the size getWorkspaceSize returns comes from a checked query (a
 * failed query is an error in configurePlugin and getWorkspaceSize, never a smaller size), it is
 * recorded and serialized, and enqueue refuses shapes that need more than the workspace TensorRT
 * gave, with one stderr line and without launching anything. Without a CUDA device (CI) the query
 * fails for real (CUB asks the device for its PTX version): the error paths. With one, the sizes
 * and a serialized record too small for the shapes.
 */
void testWorkspace(IPluginCreatorV3One* creator, OpSpec const& op, WorkspaceQuery query, bool device)
{
    std::string const name = op.name;
    check(query != nullptr, "evad_keyframe_topk_prune_workspace_query exported");
    // q, k (B=2, H=2, N=16, d=8), x_nonkey (2, M=8, C=4), idx (2, 8); K = ceil(0.7 * 16) - 8 = 4.
    // The profile maximum doubles B.
    std::vector<std::vector<int64_t>> const shapes = {{2, 2, 16, 8}, {2, 2, 16, 8}, {2, 8, 4}, {2, 8}, {2, 4, 4}, {2, 4}};
    std::vector<DataType> const types
        = {DataType::kFLOAT, DataType::kFLOAT, DataType::kFLOAT, DataType::kINT64, DataType::kFLOAT, DataType::kINT64};
    std::vector<DynamicPluginTensorDesc> dyn(6);
    std::vector<PluginTensorDesc> actual(6);
    for (size_t i = 0; i < 6; ++i)
    {
        std::vector<int64_t> big = shapes[i];
        big[0] *= 2;
        dyn[i].desc.dims = makeDims(shapes[i]);
        dyn[i].desc.type = types[i];
        dyn[i].desc.format = TensorFormat::kLINEAR;
        dyn[i].min = makeDims(shapes[i]);
        dyn[i].opt = makeDims(shapes[i]);
        dyn[i].max = makeDims(big);
        actual[i] = dyn[i].desc;
    }
    size_t atMax = 0;
    size_t atActual = 0;
    bool const sized = query != nullptr && query(4, 2, 16, 8, &atMax) == 0 && query(2, 2, 16, 8, &atActual) == 0;
    std::printf("INFO %s\n",
        device ? "a CUDA device: checking the sizes and a too-small record"
               : "no CUDA device (the size query fails for real): checking that every failure is loud");
    if (device)
    {
        check(sized, name + " the workspace size query works on a CUDA device");
    }
    else
    {
        check(query == nullptr || query(4, 2, 16, 8, &atMax) != 0, name + " the size query reports its failure");
    }

    IPluginV3* plugin = createForChecks(creator, op, "workspace");
    if (plugin == nullptr)
    {
        return;
    }
    auto* build = static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
    check(serializedWorkspace(plugin) == -1, name + " has no workspace record before it is configured");
    int32_t rc = 0;
    std::string err = captureStderr([&] { rc = build->configurePlugin(dyn.data(), 4, dyn.data() + 4, 2); });
    size_t ws = 0;
    std::string err2 = captureStderr([&] { ws = build->getWorkspaceSize(dyn.data(), 4, dyn.data() + 4, 2); });
    if (device)
    {
        check(rc == 0 && err.empty(), name + " configurePlugin sizes the workspace | " + firstLine(err));
        check(ws == atMax && err2.empty(), name + " getWorkspaceSize = the checked query at the profile maximum");
        check(atMax > atActual, name + " the profile maximum needs more than the actual shapes");
        check(serializedWorkspace(plugin) == static_cast<int64_t>(atMax), name + " serializes its workspace record");
        IPluginV3* clone = plugin->clone();
        check(clone != nullptr && serializedWorkspace(clone) == static_cast<int64_t>(atMax), name + " clone keeps the workspace record");
        delete clone;
    }
    else
    {
        std::string const where = "[evad plugin] " + name + "::";
        check(rc != 0 && oneLine(err, where + "configurePlugin: the workspace size query failed ("),
            name + " configurePlugin fails loudly when the size query fails | " + firstLine(err));
        check(ws == 0 && oneLine(err2, where + "getWorkspaceSize: the workspace size query failed ("),
            name + " getWorkspaceSize gives no size (0, one line) when the size query fails | " + firstLine(err2));
        check(serializedWorkspace(plugin) == 0, name + " a failed getWorkspaceSize records 0 (every enqueue fails)");
    }
    delete plugin;

    // A serialized plugin whose record (1 byte) is smaller than what its shapes need: enqueue must
    // refuse before launching anything (the pointers below are never dereferenced).
    Collection small = defaults(op);
    small.values.push_back(makeValue("workspace_bytes", 1.0, PluginFieldType::kINT64));
    IPluginV3* runtimePlugin = creator->createPlugin(name.c_str(), small.get(), TensorRTPhase::kRUNTIME);
    check(runtimePlugin != nullptr && serializedWorkspace(runtimePlugin) == 1, name + " reads its serialized workspace record");
    if (runtimePlugin == nullptr)
    {
        return;
    }
    auto* runtime
        = static_cast<IPluginV3OneRuntime*>(runtimePlugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    alignas(16) char dummy[64] = {};
    void const* ins[4] = {dummy, dummy, dummy, dummy};
    void* outs[2] = {dummy, dummy};
    err = captureStderr([&] { rc = runtime->enqueue(actual.data(), actual.data() + 4, ins, outs, dummy, nullptr); });
    std::string const where = "[evad plugin] " + name + "::enqueue: ";
    std::string const want = device
        ? where + "these shapes need a workspace of " + std::to_string(atActual) + " bytes, TensorRT gave 1 (getWorkspaceSize)"
        : where + "the workspace size query failed (";
    check(rc != 0 && oneLine(err, want), name + " enqueue rejects a workspace smaller than its shapes need | " + firstLine(err));
    err = captureStderr([&] { rc = runtime->enqueue(actual.data(), actual.data() + 4, ins, outs, nullptr, nullptr); });
    check(rc != 0 && oneLine(err, where), name + " enqueue rejects a null workspace | " + firstLine(err));
    delete runtimePlugin;
}
} // namespace

int main(int argc, char** argv)
{
    if (argc != 2)
    {
        std::fprintf(stderr, "usage: %s libevad_plugins.so\n", argv[0]);
        return 100;
    }
    int32_t n = 0;
    void* lib = nullptr;
    IPluginCreatorInterface* const* creators = evad::test::loadCreators(argv[1], n, &lib);
    check(creators != nullptr, "the library loads and exports getCreators");
    if (creators == nullptr)
    {
        return gFailures;
    }
    std::vector<OpSpec> const ops = {
        {contract::kRoIAlign3DName, contract::kRoIAlign3DFields, contract::kRoIAlign3DNbFields, nullptr, 2,
            {DataType::kFLOAT, DataType::kFLOAT}, {DataType::kFLOAT}},
        {contract::kKeyframeTopKPruneName, contract::kKeyframeTopKPruneFields, contract::kKeyframeTopKPruneNbFields,
            contract::kKeyframeTopKPruneLessEqual, 4,
            {DataType::kFLOAT, DataType::kFLOAT, DataType::kFLOAT, DataType::kINT64},
            {DataType::kFLOAT, DataType::kINT64}},
    };
    check(n == static_cast<int32_t>(ops.size()), "one creator per contract op");
    std::vector<bool> seen(ops.size(), false);
    for (int32_t c = 0; c < n; ++c)
    {
        auto* creator = static_cast<IPluginCreatorV3One*>(creators[c]);
        check(std::strcmp(creator->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") == 0, "creator is IPluginCreatorV3One");
        std::string const name = creator->getPluginName();
        check(std::strcmp(creator->getPluginVersion(), contract::kPluginVersion) == 0, name + " creator version");
        check(std::strcmp(creator->getPluginNamespace(), contract::kNamespace) == 0, name + " creator namespace");
        bool known = false;
        for (size_t i = 0; i < ops.size(); ++i)
        {
            if (name == ops[i].name)
            {
                known = seen[i] = true;
                testFields(creator, ops[i]);
                testPlugin(creator, ops[i]);
                if (name == contract::kKeyframeTopKPruneName)
                {
                    testWorkspace(creator, ops[i],
                        reinterpret_cast<WorkspaceQuery>(dlsym(lib, "evad_keyframe_topk_prune_workspace_query")),
                        cudaDevices(lib) > 0);
                }
            }
        }
        check(known, "creator " + name + " is a contract op");
    }
    for (size_t i = 0; i < ops.size(); ++i)
    {
        check(seen[i], std::string(ops[i].name) + " has a creator");
    }
    std::printf("%d failure(s)\n", gFailures);
    return gFailures;
}
