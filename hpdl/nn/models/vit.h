// A Vision Transformer classifier (Dosovitskiy et al. 2021, "An Image is Worth
// 16x16 Words"), sized for small images: non-overlapping P x P patches
// embedded by a convolution with kernel = stride = P, a learned class token,
// learned position embeddings, `depth` pre-norm encoder layers
// (nn::TransformerEncoderLayer with GELU), a final LayerNorm and a Linear head
// on the class token.
#pragma once

#include <memory>

#include "hpdl/nn/layers.h"
#include "hpdl/nn/transformer.h"

namespace hpdl::nn::models {

struct VitOptions {
  int64_t in_channels = 1, height = 28, width = 28, num_classes = 10;
  int64_t patch_size = 4;  // model.patch_size
  int64_t dim = 64;        // model.dim: the embedding width E
  int64_t depth = 4;       // model.depth: encoder layers
  int64_t heads = 4;       // model.heads: dim must be divisible by heads
  double mlp_ratio = 2.0;  // model.mlp_ratio: feed-forward width = round(dim * mlp_ratio)
  double dropout = 0.0;    // in attention, feed-forward and residual branches
  uint64_t seed = 0;
};

// x [N, C, H, W] -> logits [N, classes]. Submodules and parameters:
// patch_embed (Conv2d C -> E, P x P, stride P), cls_token [1, 1, E],
// pos_embed [1, 1 + (H/P)(W/P), E] (both N(0, 0.02^2)), blocks.{i}.* (encoder
// layers), norm, head. Throws at construction naming the model.* key when
// dim is not divisible by heads, the image is not divisible into patches, or
// a size is not positive.
class VisionTransformer : public Module {
 public:
  explicit VisionTransformer(const VitOptions& options);
  Tensor forward(const Tensor& x) override;
  std::string type_name() const override { return "VisionTransformer"; }

  std::shared_ptr<Conv2d> patch_embed;
  Tensor cls_token, pos_embed;
  std::shared_ptr<Sequential> blocks;
  std::shared_ptr<LayerNorm> norm;
  std::shared_ptr<Linear> head;
  VitOptions options;
  int64_t num_patches;
};

ModulePtr vit(const VitOptions& options);

}  // namespace hpdl::nn::models
