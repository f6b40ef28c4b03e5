/*
 * Registration of the evad plugin creators.
 *
 * TensorRT's IPluginRegistry::loadLibrary (Python: registry.load_library) asks a plugin library
 * for its creators through the exported `getCreators` and hands it a logger finder through
 * `setLoggerFinder`; this is how evad.plugins loads the library, and it needs no link against
 * libnvinfer. Applications that link libnvinfer and load the library themselves can instead
 * build with EVAD_STATIC_REGISTRATION, which registers the creators at load time through
 * REGISTER_TENSORRT_PLUGIN (do not combine the two: a creator is registered once).
 */
#include "keyframeTopkPrunePlugin.h"
#include "roiAlign3dPlugin.h"

#include "NvInferRuntime.h"

using namespace nvinfer1;

#ifdef EVAD_STATIC_REGISTRATION
namespace evad
{
namespace plugin
{
REGISTER_TENSORRT_PLUGIN(RoIAlign3DPluginCreator);
REGISTER_TENSORRT_PLUGIN(KeyframeTopKPrunePluginCreator);
} // namespace plugin
} // namespace evad
#endif

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
