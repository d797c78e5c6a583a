// The Vision Transformer: patches -> tokens -> encoder -> class-token head.
#include "hpdl/nn/models/vit.h"

#include <cmath>

#include "hpdl/nn/init.h"
#include "hpdl/ops/elementwise.h"
#include "hpdl/ops/shape.h"

namespace hpdl::nn::models {

VisionTransformer::VisionTransformer(const VitOptions& o) : options(o) {
  HPDL_CHECK(o.in_channels > 0 && o.num_classes > 0 && o.height > 0 && o.width > 0,
             "vit: in_channels ({}), num_classes ({}) and image size ({}x{}) must be > 0", o.in_channels,
             o.num_classes, o.height, o.width);
  HPDL_CHECK(o.patch_size > 0, "vit: model.patch_size must be > 0, got {}", o.patch_size);
  HPDL_CHECK(o.height % o.patch_size == 0 && o.width % o.patch_size == 0,
             "vit: image size {}x{} is not divisible by model.patch_size = {} (pick a divisor of both, e.g. 4 or 7 "
             "for 28x28)",
             o.height, o.width, o.patch_size);
  HPDL_CHECK(o.dim > 0 && o.heads > 0 && o.depth > 0, "vit: model.dim ({}), model.heads ({}) and model.depth ({}) must "
             "be > 0", o.dim, o.heads, o.depth);
  HPDL_CHECK(o.dim % o.heads == 0, "vit: model.dim = {} is not divisible by model.heads = {}", o.dim, o.heads);
  const int64_t ff = std::llround(static_cast<double>(o.dim) * o.mlp_ratio);
  HPDL_CHECK(o.mlp_ratio > 0 && ff > 0, "vit: model.mlp_ratio must give a positive feed-forward width, got {} * {}",
             o.dim, o.mlp_ratio);
  HPDL_CHECK(o.dropout >= 0 && o.dropout < 1, "vit: dropout must be in [0, 1), got {}", o.dropout);
  num_patches = (o.height / o.patch_size) * (o.width / o.patch_size);
  Generator gen(o.seed);
  patch_embed = register_module(
      "patch_embed", std::make_shared<Conv2d>(o.in_channels, o.dim, Conv2dOptions::k(o.patch_size).s(o.patch_size), gen));
  cls_token = register_parameter("cls_token", Tensor::randn({1, 1, o.dim}, gen, 0.0, 0.02));
  pos_embed = register_parameter("pos_embed", Tensor::randn({1, 1 + num_patches, o.dim}, gen, 0.0, 0.02));
  blocks = register_module("blocks", std::make_shared<Sequential>());
  for (int64_t i = 0; i < o.depth; ++i) {
    TransformerEncoderLayerOptions lo;
    lo.dim_feedforward = ff;
    lo.dropout = o.dropout;
    lo.activation = "gelu";
    lo.norm_first = true;
    lo.seed = o.seed + 1000 + 10 * static_cast<uint64_t>(i);
    blocks->push_back(std::make_shared<TransformerEncoderLayer>(o.dim, o.heads, lo, gen));
  }
  norm = register_module("norm", std::make_shared<LayerNorm>(o.dim, 1e-6));
  head = register_module("head", std::make_shared<Linear>(o.dim, o.num_classes, true, gen));
}

Tensor VisionTransformer::forward(const Tensor& x) {
  const auto& o = options;
  HPDL_CHECK(x.ndim() == 4 && x.dim(1) == o.in_channels && x.dim(2) == o.height && x.dim(3) == o.width,
             "vit: input {} must be [N, {}, {}, {}]", shape_str(x.shape()), o.in_channels, o.height, o.width);
  const int64_t N = x.dim(0);
  // patches [N, E, H/P, W/P] -> tokens [N, L, E]
  Tensor tokens = patch_embed->forward(x).flatten(2).transpose(1, 2);
  // [N, 1 + L, E]: the class token first, then the patches, plus positions.
  Tensor h = add(cat({cls_token.expand({N, 1, o.dim}), tokens}, 1), pos_embed);
  h = blocks->forward(h);
  // The class token's final state [N, E] -> logits [N, classes].
  return head->forward(norm->forward(h.select(1, 0)));
}

ModulePtr vit(const VitOptions& options) { return std::make_shared<VisionTransformer>(options); }

}  // namespace hpdl::nn::models
