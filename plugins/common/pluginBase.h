/*
 * The IPluginV3 boilerplate every evad plugin shares, written once:
 *
 *   PluginV3Base<Derived>  the plugin: the core, build and runtime capabilities in one object
 *                          (getCapabilityInterface), name / version / namespace, getNbOutputs,
 *                          clone (a copy of Derived: its parameters and records travel with it),
 *                          attachToContext, onShapeChange and the field collection that
 *                          getFieldsToSerialize hands TensorRT. An op writes only its own
 *                          logic: configurePlugin, getOutputDataTypes, getOutputShapes,
 *                          supportsFormatCombination, enqueue (getWorkspaceSize when it needs
 *                          one) and serializedFields.
 *   PluginCreatorBase      the IPluginCreatorV3One: name / version / namespace, getFieldNames
 *                          and createPlugin's guard (no exception crosses the API); an op writes
 *                          only create(), which reads its fields through readContractFields.
 *
 * TensorRT OSS shares its creators' namespace handling the same way (plugin/common: a base
 * creator) but writes each IPluginV3's capability plumbing out per plugin; here two ops already
 * repeated it to the line, so it lives in one place. Everything is inline: the plugin objects
 * compile each op's .cpp on its own (pluginCommon.h likewise).
 */
#ifndef EVAD_PLUGIN_BASE_H
#define EVAD_PLUGIN_BASE_H

#include "NvInferRuntime.h"
#include "pluginCommon.h"

#include <cstdint>
#include <exception>
#include <utility>
#include <vector>

namespace evad
{
namespace plugin
{

/*!
 * Base of an evad IPluginV3 (CRTP: Derived is the op's plugin class, copy-constructible, its
 * copy being the clone TensorRT asks for).
 *
 * The serialized fields point into Derived's parameters, so they are built when
 * getFieldsToSerialize is called (serializedFields) and never copied: a clone builds its own,
 * over its own parameters.
 */
template <typename Derived>
class PluginV3Base : public nvinfer1::IPluginV3,
                     public nvinfer1::IPluginV3OneCore,
                     public nvinfer1::IPluginV3OneBuild,
                     public nvinfer1::IPluginV3OneRuntime
{
public:
    ~PluginV3Base() override = default;
    PluginV3Base& operator=(PluginV3Base const&) = delete;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override
    {
        switch (type)
        {
        case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
        case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
        case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
        }
        return nullptr;
    }

    nvinfer1::IPluginV3* clone() noexcept override
    {
        try
        {
            return new Derived(static_cast<Derived const&>(*this));
        }
        catch (std::exception const& e)
        {
            logError(mName, "clone", e.what());
        }
        return nullptr;
    }

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override { return mName; }
    char const* getPluginVersion() const noexcept override { return kVERSION; }
    char const* getPluginNamespace() const noexcept override { return kNAMESPACE; }

    // IPluginV3OneBuild
    int32_t getNbOutputs() const noexcept override { return mNbOutputs; }

    // IPluginV3OneRuntime
    //! Nothing is cached per shape: enqueue reads the shapes from its tensor descriptors.
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* /*in*/, int32_t /*nbInputs*/,
        nvinfer1::PluginTensorDesc const* /*out*/, int32_t /*nbOutputs*/) noexcept override
    {
        return 0;
    }

    //! The evad plugins hold no per-context resource (no cuBLAS handle, no scratch of their own):
    //! each execution context gets a plain clone.
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* /*context*/) noexcept override
    {
        return clone();
    }

    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override
    {
        try
        {
            // Built now, not at construction: a field may be a record made after it (the
            // workspace size of KeyframeTopKPrune, known once the build has configured it).
            mFields = serializedFields();
        }
        catch (std::exception const& e)
        {
            logError(mName, "getFieldsToSerialize", e.what());
        }
        mFieldCollection.nbFields = static_cast<int32_t>(mFields.size());
        mFieldCollection.fields = mFields.data();
        return &mFieldCollection;
    }

protected:
    //! name: the op's contract name (static storage); nbInputs / nbOutputs: its tensor counts.
    PluginV3Base(char const* name, int32_t nbInputs, int32_t nbOutputs) noexcept
        : mName(name)
        , mNbInputs(nbInputs)
        , mNbOutputs(nbOutputs)
    {
    }

    //! The copy behind clone: name and counts; the field collection is not copied (it points
    //! into the source's parameters) but rebuilt by the copy's getFieldsToSerialize.
    PluginV3Base(PluginV3Base const& other) noexcept
        : nvinfer1::IPluginV3(other)
        , nvinfer1::IPluginV3OneCore(other)
        , nvinfer1::IPluginV3OneBuild(other)
        , nvinfer1::IPluginV3OneRuntime(other)
        , mName(other.mName)
        , mNbInputs(other.mNbInputs)
        , mNbOutputs(other.mNbOutputs)
    {
    }

    //! Whether TensorRT passed the op's tensor counts (every build-time call checks them first).
    bool ioCounts(int32_t nbInputs, int32_t nbOutputs) const noexcept
    {
        return nbInputs == mNbInputs && nbOutputs == mNbOutputs;
    }

    //! supportsFormatCombination's common half: pos names a tensor and it is linear (the only
    //! format the evad kernels read). The op then decides the type.
    static bool linearAt(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept
    {
        return pos >= 0 && pos < nbInputs + nbOutputs && inOut[pos].desc.format == nvinfer1::TensorFormat::kLINEAR;
    }

    //! enqueue's ending: 0 when the kernel launch returned cudaSuccess, else one stderr line
    //! with CUDA's text and -1 (TensorRT then fails the inference).
    int32_t launchStatus(int err) const noexcept
    {
        if (err != 0)
        {
            logError(mName, "enqueue", cudaGetErrorString(static_cast<cudaError_t>(err)));
            return -1;
        }
        return 0;
    }

private:
    //! The fields getFieldsToSerialize writes, pointing into this object's parameters: the
    //! creator's fields (contractField over each parameter, in contract order) and any record of
    //! the op's own. A deserialized plugin is recreated by createPlugin from exactly these.
    virtual std::vector<nvinfer1::PluginField> serializedFields() const = 0;

    char const* mName;
    int32_t mNbInputs;
    int32_t mNbOutputs;
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

/*!
 * Base of an evad plugin creator: one object per op, static lifetime (getCreators, the static
 * registrars), never copied.
 */
class PluginCreatorBase : public nvinfer1::IPluginCreatorV3One
{
public:
    ~PluginCreatorBase() override = default;
    PluginCreatorBase(PluginCreatorBase const&) = delete;
    PluginCreatorBase& operator=(PluginCreatorBase const&) = delete;

    char const* getPluginName() const noexcept override { return mName; }
    char const* getPluginVersion() const noexcept override { return kVERSION; }
    char const* getPluginNamespace() const noexcept override { return kNAMESPACE; }
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override { return &mFieldCollection; }

    //! create() behind the API's guard: a refused collection is one stderr line
    //! "[evad plugin] <op>::createPlugin: evad::<op>: <problems>" and nullptr, never a throw.
    nvinfer1::IPluginV3* createPlugin(char const* /*name*/, nvinfer1::PluginFieldCollection const* fc,
        nvinfer1::TensorRTPhase /*phase*/) noexcept final
    {
        try
        {
            return create(fc);
        }
        catch (std::exception const& e)
        {
            logError(mName, "createPlugin", e.what());
        }
        return nullptr;
    }

protected:
    //! name: the op's contract name (static storage); fieldNames: its getFieldNames
    //! (contractFieldNames of the op's contract fields).
    PluginCreatorBase(char const* name, std::vector<nvinfer1::PluginField> fieldNames)
        : mName(name)
        , mFields(std::move(fieldNames))
    {
        mFieldCollection.nbFields = static_cast<int32_t>(mFields.size());
        mFieldCollection.fields = mFields.data();
    }

private:
    //! The plugin for a collection (the build's ONNX attributes, or a serialized plugin's
    //! getFieldsToSerialize); throws std::exception naming every problem of a refused one.
    virtual nvinfer1::IPluginV3* create(nvinfer1::PluginFieldCollection const* fc) const = 0;

    char const* mName;
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

} // namespace plugin
} // namespace evad

#endif // EVAD_PLUGIN_BASE_H
