/*
 * Registration of the evad plugin creators: exactly one path per build.
 *
 * Default: TensorRT's IPluginRegistry::loadLibrary (Python: registry.load_library) asks the
 * library for its creators through the exported `getCreators` and hands it a logger finder
 * through `setLoggerFinder`; this is how evad.plugins loads the library, and it needs no link
 * against libnvinfer.
 *
 * EVAD_STATIC_REGISTRATION (CMake -DEVAD_STATIC_REGISTRATION=ON, links libnvinfer): the creators
 * register themselves when the library is loaded (dlopen), under the namespace "evad"
 * explicitly, and the library exports neither getCreators nor getPluginCreators, so a
 * loadLibrary of it cannot register them a second time. TensorRT's REGISTER_TENSORRT_PLUGIN is
 * not used: its PluginRegistrar registers under the empty namespace, while the creators (and the
 * ONNX parser's plugin_namespace) say "evad". The registrar also refuses to call into a
 * libnvinfer of another major version than the headers it was compiled with (IPluginRegistry's
 * virtual table differs between TensorRT 10 and 11: 11 dropped the deprecated IPluginCreator
 * methods), with one stderr line instead of a call through the wrong slot.
 */
#include "keyframeTopkPrunePlugin.h"
#include "pluginCommon.h"
#include "roiAlign3dPlugin.h"

#include "NvInferRuntime.h"
#include "NvInferVersion.h"

#include <exception>
#include <string>

using namespace nvinfer1;

#ifdef EVAD_STATIC_REGISTRATION

namespace evad
{
namespace plugin
{
namespace
{
//! Registers one creator at load time under kNAMESPACE ("evad"), as REGISTER_TENSORRT_PLUGIN would
//! under "".
template <typename T>
class NamespacedRegistrar
{
public:
    NamespacedRegistrar() noexcept
    {
        char const* const where = "evad static registration";
        try
        {
            int32_t const major = getInferLibMajorVersion();
            if (major != NV_TENSORRT_MAJOR)
            {
                std::string const msg = std::string("not registering ") + mCreator.getPluginName()
                    + ": built against TensorRT " + std::to_string(NV_TENSORRT_MAJOR)
                    + " headers, loaded with libnvinfer of TensorRT " + std::to_string(major);
                logError(where, msg.c_str());
                return;
            }
            IPluginRegistry* registry = getPluginRegistry();
            if (registry == nullptr || !registry->registerCreator(mCreator, kNAMESPACE))
            {
                std::string const msg = std::string("TensorRT refused ") + kNAMESPACE + "::" + mCreator.getPluginName();
                logError(where, msg.c_str());
            }
        }
        catch (std::exception const& e)
        {
            logError(where, e.what());
        }
    }

private:
    T mCreator{};
};

NamespacedRegistrar<RoIAlign3DPluginCreator> const gRoIAlign3DRegistrar{};
NamespacedRegistrar<KeyframeTopKPrunePluginCreator> const gKeyframeTopKPruneRegistrar{};
} // namespace
} // namespace plugin
} // namespace evad

#else // loadLibrary entry points

extern "C"
{

//! The library's creators (static lifetime), for IPluginRegistry::loadLibrary.
__attribute__((visibility("default"))) IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static evad::plugin::RoIAlign3DPluginCreator roiAlign3d;
    static evad::plugin::KeyframeTopKPrunePluginCreator keyframeTopkPrune;
    static IPluginCreatorInterface* const creators[] = {&roiAlign3d, &keyframeTopkPrune};
    nbCreators = 2;
    return creators;
}

//! Logger hand-off from loadLibrary; the plugins report errors on stderr (pluginCommon.h).
__attribute__((visibility("default"))) void setLoggerFinder(ILoggerFinder* /*finder*/) {}

} // extern "C"

#endif // EVAD_STATIC_REGISTRATION
