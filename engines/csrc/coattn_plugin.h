/*
 * WeakCLIP co-attention matching as a TensorRT IPluginV3 with its IPluginCreatorV3One; identity and attribute names
 * come from the generated weakclip_plugin_names.h (plugin_names.json).  I/O contract: README.md here; in short
 * g (B, E), dense (B, E, h, w), text (K, E), packed weights (P) -> score (B, K, h, w), all fp32 or all fp16, linear.
 */
#ifndef WEAKCLIP_COATTN_PLUGIN_H
#define WEAKCLIP_COATTN_PLUGIN_H

#include "NvInfer.h"
#include "coattn_kernel.h"

#include <cstdint>
#include <string>
#include <vector>

namespace weakclip {
namespace trt {

// Node attributes (= creator fields), see plugin_names.json "attribute_info".
struct CoAttnConfig {
    int32_t width{0};      // coattn_width W
    int32_t heads{0};      // coattn_heads
    int32_t layers{0};     // coattn_layers L
    int32_t mlp_ratio{0};  // coattn_mlp_ratio (MLP hidden = ratio * W)
    float ln_eps{1e-5F};   // layer_norm_eps
};

class CoAttnPlugin : public nvinfer1::IPluginV3,
                     public nvinfer1::IPluginV3OneCore,
                     public nvinfer1::IPluginV3OneBuild,
                     public nvinfer1::IPluginV3OneRuntime {
public:
    static constexpr int32_t kNbInputs = 4;
    static constexpr int32_t kNbOutputs = 1;
    enum Input : int32_t { kG = 0, kDense = 1, kText = 2, kWeights = 3 };

    explicit CoAttnPlugin(CoAttnConfig const& config);

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild
    int32_t getNbOutputs() const noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
                               nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
                            nvinfer1::DimsExprs const* shapeInputs, int32_t nbShapeInputs,
                            nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
                            nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                   int32_t nbOutputs) noexcept override;
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
                            nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                            nvinfer1::DynamicPluginTensorDesc const* outputs,
                            int32_t nbOutputs) const noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
                          nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
                    void const* const* inputs, void* const* outputs, void* workspace,
                    cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

private:
    // Params (dims and dtype only) from actual or max dims; `dims[i]` = input i dims. Throws on a mismatch.
    template <typename Desc>
    WeakclipCoAttnParams fillParams(Desc const* desc, nvinfer1::Dims Desc::*dims, nvinfer1::DataType type) const;
    // Elements in the packed weights; `offsets` (if given) receives each tensor's element offset.
    int64_t expectedWeightCount(int64_t embedDim, std::vector<int64_t>* offsets = nullptr) const;

    CoAttnConfig mConfig;
    // Element offsets of each packed tensor inside input 3, for the embed dim last seen by onShapeChange.
    std::vector<int64_t> mWeightOffsets;
    int64_t mOffsetsEmbedDim{-1};
    std::vector<void const*> mWeightPtrs;
    std::vector<nvinfer1::PluginField> mSerialFields;
    nvinfer1::PluginFieldCollection mSerialFC{};
};

class CoAttnPluginCreator : public nvinfer1::IPluginCreatorV3One {
public:
    CoAttnPluginCreator();

    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    nvinfer1::IPluginV3* createPlugin(char const* name, nvinfer1::PluginFieldCollection const* fc,
                                      nvinfer1::TensorRTPhase phase) noexcept override;

private:
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mFC{};
};

}  // namespace trt
}  // namespace weakclip

#endif  // WEAKCLIP_COATTN_PLUGIN_H
