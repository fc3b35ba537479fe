// WeakCLIP co-attention TensorRT plugin (IPluginV3): validates shapes / types and maps TensorRT tensors to the
// launcher's params struct (coattn_kernel.cu).  Every noexcept entry point is guarded with try/catch.
// Weights arrive as ONE constant input (index 3), the blob of plugin_names.json "packed_weights" (engines/cuda_ops.py:
// pack_coattention_weights); TensorRT owns it and converts it to the chosen precision.
//
// Registration: a static registrar registers the creator when the library is loaded (ctypes.CDLL / trtexec
// --staticPlugins), or, built with WEAKCLIP_TRT_GET_CREATORS, getCreators() is exported for
// IPluginRegistry::loadLibrary / trtexec --dynamicPlugins; never both (loadLibrary fails on a registered creator).

#include "coattn_plugin.h"

#include "weakclip_plugin_names.h"

#include <cstdio>
#include <exception>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>

using namespace nvinfer1;

namespace weakclip {
namespace trt {
namespace {

constexpr char const* kAttrNames[] = {WEAKCLIP_PLUGIN_ATTRIBUTE_NAMES_INIT};
constexpr char const* kAttrTypes[] = {WEAKCLIP_PLUGIN_ATTRIBUTE_TYPES_INIT};
constexpr int32_t kNumAttrs = static_cast<int32_t>(sizeof(kAttrNames) / sizeof(kAttrNames[0]));
static_assert(kNumAttrs == WEAKCLIP_PLUGIN_NUM_ATTRIBUTES, "generated attribute table");

constexpr bool strEq(char const* a, char const* b) {
    while (*a != '\0' && *a == *b) {
        ++a;
        ++b;
    }
    return *a == *b;
}
template <size_t N>
constexpr int32_t indexOf(char const* const (&names)[N], char const* name) {
    for (size_t i = 0; i < N; ++i) {
        if (strEq(names[i], name)) return static_cast<int32_t>(i);
    }
    return -1;
}

// The attributes this plugin understands, in CoAttnConfig field order; all int but the last, the only optional one.
constexpr char const* kKnown[] = {"coattn_width", "coattn_heads", "coattn_layers", "coattn_mlp_ratio",
                                  "layer_norm_eps"};
constexpr int32_t kNumKnown = static_cast<int32_t>(sizeof(kKnown) / sizeof(kKnown[0]));
constexpr int32_t kLnEps = kNumKnown - 1;

constexpr bool attrsMatchJson() {
    for (int32_t k = 0; k < kNumKnown; ++k) {
        int32_t const i = indexOf(kAttrNames, kKnown[k]);
        if (i < 0 || !strEq(kAttrTypes[i], k == kLnEps ? "float" : "int")) return false;
    }
    return kNumAttrs == kNumKnown;
}
static_assert(attrsMatchJson(), "plugin_names.json attributes differ from the ones this plugin handles");

// Config field of known attribute `i` (int32_t, or float for layer_norm_eps).
void* attrField(CoAttnConfig& c, int32_t i) {
    void* const fields[kNumKnown] = {&c.width, &c.heads, &c.layers, &c.mlp_ratio, &c.ln_eps};
    return fields[i];
}

void logError(char const* where, char const* msg) noexcept {
    std::fprintf(stderr, "[%s::%s] %s: %s\n", WEAKCLIP_PLUGIN_NAMESPACE, WEAKCLIP_PLUGIN_OP_TYPE, where, msg);
}

#define WEAKCLIP_PLUGIN_GUARD_BEGIN try {
#define WEAKCLIP_PLUGIN_GUARD_END(where, failValue) \
    }                                                \
    catch (std::exception const& e) {                \
        logError(where, e.what());                   \
    }                                                \
    catch (...) {                                    \
        logError(where, "unknown exception");        \
    }                                                \
    return failValue;

void require(bool ok, std::string const& msg) {
    if (!ok) throw std::invalid_argument(msg);
}

bool supportedHeadDim(int32_t d) { return d == 16 || d == 32 || d == 64 || d == 128; }

void validateConfig(CoAttnConfig const& c) {
    require(c.width > 0 && c.heads > 0 && c.width % c.heads == 0,
            "coattn_width must be a positive multiple of coattn_heads");
    require(supportedHeadDim(c.width / c.heads), "head dim coattn_width / coattn_heads must be 16, 32, 64 or 128");
    require(c.layers >= 0, "coattn_layers must be >= 0");
    require(c.mlp_ratio >= 1, "coattn_mlp_ratio must be >= 1");
    require(c.ln_eps > 0.F, "layer_norm_eps must be > 0");
}

int64_t readInt(PluginField const& f) {
    switch (f.type) {
        case PluginFieldType::kINT32: return *static_cast<int32_t const*>(f.data);
        case PluginFieldType::kINT64: return *static_cast<int64_t const*>(f.data);
        case PluginFieldType::kINT16: return *static_cast<int16_t const*>(f.data);
        case PluginFieldType::kINT8: return *static_cast<int8_t const*>(f.data);
        default: throw std::invalid_argument(std::string("attribute ") + f.name + " must be an integer");
    }
}

float readFloat(PluginField const& f) {
    switch (f.type) {
        case PluginFieldType::kFLOAT32: return *static_cast<float const*>(f.data);
        case PluginFieldType::kFLOAT64: return static_cast<float>(*static_cast<double const*>(f.data));
        default: throw std::invalid_argument(std::string("attribute ") + f.name + " must be a float");
    }
}

int32_t toInt32(int64_t v, char const* what) {
    require(v >= 0 && v <= std::numeric_limits<int32_t>::max(), std::string(what) + " out of int32 range");
    return static_cast<int32_t>(v);
}

std::string dimsStr(Dims const& d) {
    std::string s = "(";
    for (int32_t i = 0; i < d.nbDims; ++i) s += (i ? ", " : "") + std::to_string(d.d[i]);
    return s + ")";
}

}  // namespace

CoAttnPlugin::CoAttnPlugin(CoAttnConfig const& config) : mConfig(config) { validateConfig(mConfig); }

IPluginCapability* CoAttnPlugin::getCapabilityInterface(PluginCapabilityType type) noexcept {
    WEAKCLIP_PLUGIN_GUARD_BEGIN
    switch (type) {
        case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
        case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
        case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
    }
    WEAKCLIP_PLUGIN_GUARD_END("getCapabilityInterface", nullptr)
}

IPluginV3* CoAttnPlugin::clone() noexcept {
    WEAKCLIP_PLUGIN_GUARD_BEGIN
    auto p = std::make_unique<CoAttnPlugin>(*this);
    p->mSerialFields.clear();
    p->mSerialFC = PluginFieldCollection{};
    return p.release();
    WEAKCLIP_PLUGIN_GUARD_END("clone", nullptr)
}

char const* CoAttnPlugin::getPluginName() const noexcept { return WEAKCLIP_PLUGIN_OP_TYPE; }
char const* CoAttnPlugin::getPluginVersion() const noexcept { return WEAKCLIP_PLUGIN_VERSION; }
char const* CoAttnPlugin::getPluginNamespace() const noexcept { return WEAKCLIP_PLUGIN_NAMESPACE; }

int32_t CoAttnPlugin::getNbOutputs() const noexcept { return kNbOutputs; }

int32_t CoAttnPlugin::getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes,
                                         int32_t nbInputs) const noexcept {
    WEAKCLIP_PLUGIN_GUARD_BEGIN
    require(nbInputs == kNbInputs && nbOutputs == kNbOutputs, "expects 4 inputs (g, dense, text, weights), 1 output");
    require(inputTypes[kDense] == DataType::kFLOAT || inputTypes[kDense] == DataType::kHALF,
            "dense must be float32 or float16");
    outputTypes[0] = inputTypes[kDense];
    return 0;
    WEAKCLIP_PLUGIN_GUARD_END("getOutputDataTypes", -1)
}

int32_t CoAttnPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
                                      int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs,
                                      IExprBuilder& /*exprBuilder*/) noexcept {
    WEAKCLIP_PLUGIN_GUARD_BEGIN
    require(nbInputs == kNbInputs && nbOutputs == kNbOutputs, "expects 4 inputs (g, dense, text, weights), 1 output");
    require(inputs[kG].nbDims == 2, "g must be (B, E)");
    require(inputs[kDense].nbDims == 4, "dense must be (B, E, h, w)");
    require(inputs[kText].nbDims == 2, "text must be (K, E)");
    require(inputs[kWeights].nbDims == 1, "weights must be 1-D (P)");
    outputs[0] = inputs[kDense];  // S (B, K, h, w): B, h, w from dense, K from text
    outputs[0].d[1] = inputs[kText].d[0];
    return 0;
    WEAKCLIP_PLUGIN_GUARD_END("getOutputShapes", -1)
}

bool CoAttnPlugin::supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                             int32_t nbOutputs) noexcept {
    WEAKCLIP_PLUGIN_GUARD_BEGIN
    if (nbInputs != kNbInputs || nbOutputs != kNbOutputs || pos < 0 || pos >= nbInputs + nbOutputs) return false;
    PluginTensorDesc const& d = inOut[pos].desc;
    if (d.format != TensorFormat::kLINEAR) return false;
    if (pos == 0) return d.type == DataType::kFLOAT || d.type == DataType::kHALF;
    return d.type == inOut[0].desc.type;  // one precision for every input and the output
    WEAKCLIP_PLUGIN_GUARD_END("supportsFormatCombination", false)
}

int64_t CoAttnPlugin::expectedWeightCount(int64_t embedDim, std::vector<int64_t>* offsets) const {
    int32_t const n = weakclip_coattn_num_weights(mConfig.layers);
    if (offsets != nullptr) offsets->clear();
    int64_t total = 0;
    for (int32_t i = 0; i < n; ++i) {
        if (offsets != nullptr) offsets->push_back(total);
        total += weakclip_coattn_weight_numel(i, mConfig.layers, static_cast<int32_t>(embedDim), mConfig.width,
                                              mConfig.width * mConfig.mlp_ratio);
    }
    return total;
}

int32_t CoAttnPlugin::configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs,
                                      DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept {
    WEAKCLIP_PLUGIN_GUARD_BEGIN
    require(nbInputs == kNbInputs && nbOutputs == kNbOutputs, "expects 4 inputs (g, dense, text, weights), 1 output");
    Dims const& g = in[kG].desc.dims;
    Dims const& dense = in[kDense].desc.dims;
    Dims const& text = in[kText].desc.dims;
    Dims const& w = in[kWeights].desc.dims;
    require(g.nbDims == 2 && dense.nbDims == 4 && text.nbDims == 2 && w.nbDims == 1 && out[0].desc.dims.nbDims == 4,
            "ranks must be g 2, dense 4, text 2, weights 1, score 4");
    // Build time: dims may be -1 (dynamic); check what is known.
    auto same = [](int64_t a, int64_t b) { return a < 0 || b < 0 || a == b; };
    require(same(g.d[0], dense.d[0]), "g and dense batch differ: " + dimsStr(g) + " vs " + dimsStr(dense));
    require(same(g.d[1], dense.d[1]) && same(text.d[1], dense.d[1]) && same(g.d[1], text.d[1]),
            "embed dims of g " + dimsStr(g) + ", dense " + dimsStr(dense) + ", text " + dimsStr(text) + " differ");
    int64_t const E = dense.d[1] >= 0 ? dense.d[1] : (g.d[1] >= 0 ? g.d[1] : text.d[1]);
    if (E >= 0 && w.d[0] >= 0) {
        require(w.d[0] == expectedWeightCount(E),
                "weights has " + std::to_string(w.d[0]) + " elements, expected " +
                    std::to_string(expectedWeightCount(E)) + " for E=" + std::to_string(E) +
                    " W=" + std::to_string(mConfig.width) + " L=" + std::to_string(mConfig.layers) +
                    " (pack with engines/cuda_ops.py: pack_coattention_weights)");
    }
    for (int32_t i = 1; i < kNbInputs; ++i) {
        require(in[i].desc.type == in[0].desc.type, "all inputs must share one precision");
    }
    return 0;
    WEAKCLIP_PLUGIN_GUARD_END("configurePlugin", -1)
}

template <typename Desc>
WeakclipCoAttnParams CoAttnPlugin::fillParams(Desc const* desc, Dims Desc::*dims, DataType type) const {
    Dims const& g = desc[kG].*dims;
    Dims const& dense = desc[kDense].*dims;
    Dims const& text = desc[kText].*dims;
    Dims const& w = desc[kWeights].*dims;
    require(g.nbDims == 2 && dense.nbDims == 4 && text.nbDims == 2 && w.nbDims == 1,
            "ranks must be g 2, dense 4, text 2, weights 1");
    int64_t const B = dense.d[0];
    int64_t const E = dense.d[1];
    require(B >= 1 && E >= 1 && dense.d[2] >= 1 && dense.d[3] >= 1 && text.d[0] >= 1, "empty dims " + dimsStr(dense));
    require(g.d[0] == B && g.d[1] == E, "g " + dimsStr(g) + " does not match dense " + dimsStr(dense));
    require(text.d[1] == E, "text " + dimsStr(text) + " does not match embed dim " + std::to_string(E));
    require(w.d[0] == expectedWeightCount(E), "weights has " + std::to_string(w.d[0]) + " elements, expected " +
                                                  std::to_string(expectedWeightCount(E)));
    require(type == DataType::kFLOAT || type == DataType::kHALF, "precision must be float32 or float16");
    WeakclipCoAttnParams p{};
    p.version = WEAKCLIP_COATTN_PARAMS_VERSION;
    p.dtype = type == DataType::kHALF ? WEAKCLIP_FP16 : WEAKCLIP_FP32;
    p.batch = toInt32(B, "batch");
    p.grid_h = toInt32(dense.d[2], "h");
    p.grid_w = toInt32(dense.d[3], "w");
    p.num_classes = toInt32(text.d[0], "K");
    p.embed_dim = toInt32(E, "E");
    p.width = mConfig.width;
    p.heads = mConfig.heads;
    p.layers = mConfig.layers;
    p.mlp_hidden = mConfig.width * mConfig.mlp_ratio;
    p.ln_eps = mConfig.ln_eps;
    return p;
}

size_t CoAttnPlugin::getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                                      DynamicPluginTensorDesc const* /*outputs*/, int32_t nbOutputs) const noexcept {
    WEAKCLIP_PLUGIN_GUARD_BEGIN
    require(nbInputs == kNbInputs && nbOutputs == kNbOutputs, "expects 4 inputs, 1 output");
    // The workspace grows with B, h*w and K: the max shape bounds it.
    WeakclipCoAttnParams const p = fillParams(inputs, &DynamicPluginTensorDesc::max, inputs[0].desc.type);
    size_t const bytes = weakclip_coattn_workspace_size(&p);
    require(bytes > 0, std::string("invalid dims: ") + weakclip_last_error());
    return bytes;
    WEAKCLIP_PLUGIN_GUARD_END("getWorkspaceSize", 0)
}

int32_t CoAttnPlugin::onShapeChange(PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out,
                                    int32_t nbOutputs) noexcept {
    WEAKCLIP_PLUGIN_GUARD_BEGIN
    require(nbInputs == kNbInputs && nbOutputs == kNbOutputs, "expects 4 inputs, 1 output");
    WeakclipCoAttnParams const p = fillParams(in, &PluginTensorDesc::dims, in[0].type);
    Dims const& s = out[0].dims;
    require(s.nbDims == 4 && s.d[0] == p.batch && s.d[1] == p.num_classes && s.d[2] == p.grid_h && s.d[3] == p.grid_w,
            "score shape " + dimsStr(s) + " is not (B, K, h, w)");
    if (mOffsetsEmbedDim != p.embed_dim) {
        expectedWeightCount(p.embed_dim, &mWeightOffsets);
        mWeightPtrs.assign(mWeightOffsets.size(), nullptr);
        mOffsetsEmbedDim = p.embed_dim;
    }
    return 0;
    WEAKCLIP_PLUGIN_GUARD_END("onShapeChange", -1)
}

int32_t CoAttnPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
                              void const* const* inputs, void* const* outputs, void* workspace,
                              cudaStream_t stream) noexcept {
    WEAKCLIP_PLUGIN_GUARD_BEGIN
    WeakclipCoAttnParams p = fillParams(inputDesc, &PluginTensorDesc::dims, inputDesc[0].type);
    require(mOffsetsEmbedDim == p.embed_dim, "enqueue before onShapeChange");
    size_t const elem = p.dtype == WEAKCLIP_FP16 ? 2 : 4;
    char const* base = static_cast<char const*>(inputs[kWeights]);
    for (size_t i = 0; i < mWeightOffsets.size(); ++i) {
        mWeightPtrs[i] = base + static_cast<size_t>(mWeightOffsets[i]) * elem;
    }
    p.global_emb = inputs[kG];
    p.dense = inputs[kDense];
    p.text = inputs[kText];
    p.weights = mWeightPtrs.data();
    p.num_weights = static_cast<int32_t>(mWeightPtrs.size());
    p.score = outputs[0];
    p.workspace = workspace;
    p.workspace_size = weakclip_coattn_workspace_size(&p);  // <= getWorkspaceSize(max dims), which TensorRT provides
    int32_t const status = weakclip_coattn_forward(&p, stream);
    require(status == 0, std::string("weakclip_coattn_forward: ") + weakclip_last_error());
    return 0;
    WEAKCLIP_PLUGIN_GUARD_END("enqueue", -1)
}

IPluginV3* CoAttnPlugin::attachToContext(IPluginResourceContext* /*context*/) noexcept {
    WEAKCLIP_PLUGIN_GUARD_BEGIN
    return clone();  // per-context copy: enqueue only touches this copy's pointer table
    WEAKCLIP_PLUGIN_GUARD_END("attachToContext", nullptr)
}

PluginFieldCollection const* CoAttnPlugin::getFieldsToSerialize() noexcept {
    WEAKCLIP_PLUGIN_GUARD_BEGIN
    mSerialFields.clear();
    for (char const* name : kAttrNames) {
        int32_t const k = indexOf(kKnown, name);
        PluginFieldType const t = k == kLnEps ? PluginFieldType::kFLOAT32 : PluginFieldType::kINT32;
        mSerialFields.emplace_back(name, attrField(mConfig, k), t, 1);
    }
    mSerialFC.nbFields = static_cast<int32_t>(mSerialFields.size());
    mSerialFC.fields = mSerialFields.data();
    return &mSerialFC;
    WEAKCLIP_PLUGIN_GUARD_END("getFieldsToSerialize", nullptr)
}

CoAttnPluginCreator::CoAttnPluginCreator() {
    for (int32_t i = 0; i < kNumAttrs; ++i) {
        PluginFieldType const t = strEq(kAttrTypes[i], "float") ? PluginFieldType::kFLOAT32 : PluginFieldType::kINT32;
        mFields.emplace_back(kAttrNames[i], nullptr, t, 1);
    }
    mFC.nbFields = static_cast<int32_t>(mFields.size());
    mFC.fields = mFields.data();
}

char const* CoAttnPluginCreator::getPluginName() const noexcept { return WEAKCLIP_PLUGIN_OP_TYPE; }
char const* CoAttnPluginCreator::getPluginVersion() const noexcept { return WEAKCLIP_PLUGIN_VERSION; }
char const* CoAttnPluginCreator::getPluginNamespace() const noexcept { return WEAKCLIP_PLUGIN_NAMESPACE; }
PluginFieldCollection const* CoAttnPluginCreator::getFieldNames() noexcept { return &mFC; }

IPluginV3* CoAttnPluginCreator::createPlugin(char const* /*name*/, PluginFieldCollection const* fc,
                                             TensorRTPhase /*phase*/) noexcept {
    WEAKCLIP_PLUGIN_GUARD_BEGIN
    require(fc != nullptr, "no plugin fields");
    CoAttnConfig c;
    bool seen[kNumKnown] = {};
    for (int32_t i = 0; i < fc->nbFields; ++i) {
        PluginField const& f = fc->fields[i];
        int32_t const k = f.name == nullptr ? -1 : indexOf(kKnown, f.name);
        if (k < 0) continue;  // e.g. plugin_version / plugin_namespace forwarded by a parser
        require(f.data != nullptr && f.length >= 1, std::string("attribute ") + f.name + " is empty");
        if (k == kLnEps) {
            *static_cast<float*>(attrField(c, k)) = readFloat(f);
        } else {
            *static_cast<int32_t*>(attrField(c, k)) = toInt32(readInt(f), kKnown[k]);
        }
        seen[k] = true;
    }
    require(seen[0] && seen[1] && seen[2] && seen[3],
            "missing attribute(s): coattn_width, coattn_heads, coattn_layers and coattn_mlp_ratio are required");
    return new CoAttnPlugin(c);  // validates the config (throws on error)
    WEAKCLIP_PLUGIN_GUARD_END("createPlugin", nullptr)
}

}  // namespace trt
}  // namespace weakclip

// Registration (see the top of the file).

#if defined(WEAKCLIP_TRT_GET_CREATORS)
extern "C" WEAKCLIP_API nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
    nbCreators = 1;
    static weakclip::trt::CoAttnPluginCreator sCreator;
    static nvinfer1::IPluginCreatorInterface* const kCreators[] = {&sCreator};
    return kCreators;
}
#else
namespace {
struct StaticRegistrar {
    weakclip::trt::CoAttnPluginCreator creator;
    StaticRegistrar() { getPluginRegistry()->registerCreator(creator, WEAKCLIP_PLUGIN_NAMESPACE); }
};
StaticRegistrar gWeakclipCoAttnRegistrar;
}  // namespace
#endif
