/*
 * CPU self-test of libevad_plugins.so's plugin logic, without TensorRT's runtime or a GPU:
 * dlopen the library, take its creators through getCreators (what loadLibrary calls), and for
 * each op check fields, creation, refusal of bad attributes, clone, the serialization round trip
 * (getFieldsToSerialize -> createPlugin -> equal fields), output types, format/type support.
 * Prints one line per check; exit code = number of failures. Built and run by
 * tests/test_plugins.py::test_cpp_plugin_self_test.
 */
#include "NvInferRuntime.h"

#include <cstdio>
#include <cstring>
#include <dlfcn.h>
#include <string>
#include <vector>

using namespace nvinfer1;

namespace
{
int gFailures = 0;

void check(bool ok, std::string const& what)
{
    std::printf("%s %s\n", ok ? "PASS" : "FAIL", what.c_str());
    gFailures += ok ? 0 : 1;
}

//! Field values, as bytes, from a collection (for comparing serialized plugins).
std::vector<std::string> fieldBytes(PluginFieldCollection const* fc)
{
    std::vector<std::string> out;
    for (int32_t i = 0; i < fc->nbFields; ++i)
    {
        PluginField const& f = fc->fields[i];
        size_t const size = (f.type == PluginFieldType::kFLOAT32 || f.type == PluginFieldType::kINT32) ? 4 : 0;
        out.push_back(std::string(f.name) + "=" + std::string(static_cast<char const*>(f.data), size * f.length));
    }
    return out;
}

DynamicPluginTensorDesc desc(DataType t)
{
    DynamicPluginTensorDesc d{};
    d.desc.type = t;
    d.desc.format = TensorFormat::kLINEAR;
    return d;
}

void testOp(IPluginCreatorV3One* creator, std::vector<PluginField> const& fields, int32_t nbInputs,
    std::vector<DataType> const& goodTypes, std::vector<DataType> const& wantOutputTypes)
{
    std::string const op = creator->getPluginName();
    check(std::strcmp(creator->getPluginVersion(), "1") == 0, op + " version 1");
    check(std::strcmp(creator->getPluginNamespace(), "evad") == 0, op + " namespace evad");
    PluginFieldCollection const* names = creator->getFieldNames();
    bool sameNames = names->nbFields == static_cast<int32_t>(fields.size());
    for (int32_t i = 0; sameNames && i < names->nbFields; ++i)
    {
        sameNames = std::strcmp(names->fields[i].name, fields[i].name) == 0 && names->fields[i].type == fields[i].type;
    }
    check(sameNames, op + " field names and types");

    PluginFieldCollection fc{static_cast<int32_t>(fields.size()), fields.data()};
    IPluginV3* plugin = creator->createPlugin(op.c_str(), &fc, TensorRTPhase::kBUILD);
    check(plugin != nullptr, op + " created from the design's attributes");
    if (plugin == nullptr)
    {
        return;
    }
    PluginFieldCollection partial{1, fields.data()};
    check(creator->createPlugin(op.c_str(), &partial, TensorRTPhase::kBUILD) == nullptr, op + " refuses a missing field");

    auto* core = static_cast<IPluginV3OneCore*>(plugin->getCapabilityInterface(PluginCapabilityType::kCORE));
    auto* build = static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
    auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    check(core && build && runtime, op + " has core, build and runtime capabilities");
    check(std::strcmp(core->getPluginName(), op.c_str()) == 0, op + " plugin name");

    IPluginV3* clone = plugin->clone();
    check(clone != nullptr, op + " clone");
    auto* cloneRuntime = static_cast<IPluginV3OneRuntime*>(clone->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    std::vector<std::string> const original = fieldBytes(runtime->getFieldsToSerialize());
    check(fieldBytes(cloneRuntime->getFieldsToSerialize()) == original, op + " clone keeps the fields");
    IPluginV3* again = creator->createPlugin(op.c_str(), runtime->getFieldsToSerialize(), TensorRTPhase::kRUNTIME);
    check(again != nullptr, op + " recreated from its serialized fields");
    if (again != nullptr)
    {
        auto* againRuntime = static_cast<IPluginV3OneRuntime*>(again->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
        check(fieldBytes(againRuntime->getFieldsToSerialize()) == original, op + " serialization round trip");
    }

    int32_t const nbOutputs = build->getNbOutputs();
    check(nbOutputs == static_cast<int32_t>(wantOutputTypes.size()), op + " output count");
    for (DataType floatType : {DataType::kFLOAT, DataType::kHALF, DataType::kBF16})
    {
        std::vector<DataType> in = goodTypes;
        for (auto& t : in)
        {
            t = t == DataType::kFLOAT ? floatType : t;
        }
        std::vector<DataType> out(nbOutputs);
        build->getOutputDataTypes(out.data(), nbOutputs, in.data(), nbInputs);
        bool typesOk = true;
        std::vector<DynamicPluginTensorDesc> io;
        for (auto t : in)
        {
            io.push_back(desc(t));
        }
        for (int32_t o = 0; o < nbOutputs; ++o)
        {
            DataType const want = wantOutputTypes[o] == DataType::kFLOAT ? floatType : wantOutputTypes[o];
            typesOk = typesOk && out[o] == want;
            io.push_back(desc(out[o]));
        }
        check(typesOk, op + " output types for float type " + std::to_string(static_cast<int>(floatType)));
        bool supported = true;
        for (int32_t pos = 0; pos < nbInputs + nbOutputs; ++pos)
        {
            supported = supported && build->supportsFormatCombination(pos, io.data(), nbInputs, nbOutputs);
        }
        check(supported, op + " supports its types, float type " + std::to_string(static_cast<int>(floatType)));
    }
    // An int32 float input, and a mixed float type, are refused.
    std::vector<DynamicPluginTensorDesc> bad;
    for (auto t : goodTypes)
    {
        bad.push_back(desc(t));
    }
    bad[0].desc.type = DataType::kINT32;
    check(!build->supportsFormatCombination(0, bad.data(), nbInputs, nbOutputs), op + " refuses int32 data");
    bad[0].desc.type = DataType::kFLOAT;
    bad[1].desc.type = DataType::kHALF;
    check(!build->supportsFormatCombination(1, bad.data(), nbInputs, nbOutputs), op + " refuses mixed float types");
    bad[1].desc.type = DataType::kFLOAT;
    bad[0].desc.format = TensorFormat::kCHW32;
    check(!build->supportsFormatCombination(0, bad.data(), nbInputs, nbOutputs), op + " refuses non-linear formats");
    delete again;
    delete clone;
    delete plugin;
}
} // namespace

int main(int argc, char** argv)
{
    if (argc != 2)
    {
        std::fprintf(stderr, "usage: %s libevad_plugins.so\n", argv[0]);
        return 100;
    }
    void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr)
    {
        std::fprintf(stderr, "dlopen: %s\n", dlerror());
        return 101;
    }
    using GetCreators = IPluginCreatorInterface* const* (*) (int32_t&);
    auto getCreators = reinterpret_cast<GetCreators>(dlsym(lib, "getCreators"));
    check(getCreators != nullptr, "getCreators exported");
    if (getCreators == nullptr)
    {
        return gFailures;
    }
    int32_t n = 0;
    IPluginCreatorInterface* const* creators = getCreators(n);
    check(n == 2, "two creators");
    int32_t i7 = 7, i2 = 2, i1 = 1, i10 = 10;
    float scale = 1.F / 16.F, w = 1.F;
    for (int32_t c = 0; c < n; ++c)
    {
        auto* creator = static_cast<IPluginCreatorV3One*>(creators[c]);
        check(std::strcmp(creator->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") == 0, "creator is IPluginCreatorV3One");
        std::string const name = creator->getPluginName();
        if (name == "RoIAlign3D")
        {
            testOp(creator,
                {PluginField("output_height", &i7, PluginFieldType::kINT32, 1),
                    PluginField("output_width", &i7, PluginFieldType::kINT32, 1),
                    PluginField("spatial_scale", &scale, PluginFieldType::kFLOAT32, 1),
                    PluginField("sampling_ratio", &i2, PluginFieldType::kINT32, 1),
                    PluginField("aligned", &i1, PluginFieldType::kINT32, 1)},
                2, {DataType::kFLOAT, DataType::kFLOAT}, {DataType::kFLOAT});
        }
        else if (name == "KeyframeTopKPrune")
        {
            testOp(creator,
                {PluginField("keep_num", &i7, PluginFieldType::kINT32, 1),
                    PluginField("keep_den", &i10, PluginFieldType::kINT32, 1),
                    PluginField("keyframe_weight", &w, PluginFieldType::kFLOAT32, 1)},
                4, {DataType::kFLOAT, DataType::kFLOAT, DataType::kFLOAT, DataType::kINT64},
                {DataType::kFLOAT, DataType::kINT64});
        }
        else
        {
            check(false, "unexpected creator " + name);
        }
    }
    std::printf("%d failure(s)\n", gFailures);
    return gFailures;
}
