// The Vision Transformer: patches -> tokens -> encoder -> class-token head.
#include "hpdl/nn/models/vit.h"

#include <algorithm>
#include <cmath>
#include <string>

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

Tensor vit_embed(const char* who, const VitOptions& o, Conv2d& patch_embed, const Tensor& cls_token,
                 const Tensor& pos_embed, const Tensor& x) {
  HPDL_CHECK(x.ndim() == 4 && x.dim(1) == o.in_channels && x.dim(2) == o.height && x.dim(3) == o.width,
             "{}: input {} must be [N, {}, {}, {}]", who, shape_str(x.shape()), o.in_channels, o.height, o.width);
  const int64_t N = x.dim(0);
  // patches [N, E, H/P, W/P] -> tokens [N, L, E]
  Tensor tokens = patch_embed.forward(x).flatten(2).transpose(1, 2);
  // [N, 1 + L, E]: the class token first, then the patches, plus positions.
  return add(cat({cls_token.expand({N, 1, o.dim}), tokens}, 1), pos_embed);
}

// The class token's final state [N, E] -> logits [N, classes].
Tensor vit_classify(LayerNorm& norm, Linear& head, const Tensor& tokens) {
  return head.forward(norm.forward(tokens.select(1, 0)));
}

Tensor VisionTransformer::forward(const Tensor& x) {
  return vit_classify(*norm, *head, blocks->forward(vit_embed("vit", options, *patch_embed, cls_token, pos_embed, x)));
}

int64_t VisionTransformer::layer_parameters(int64_t i) const { return vit_parts(*this).layer_parameters(*this, i); }

std::shared_ptr<Module> VisionTransformer::make_stage(int64_t lo, int64_t hi) {
  return vit_parts(*this).make_stage(*this, lo, hi);
}

int64_t VitStage::Parts::layer_parameters(const Module& who, int64_t i) const {
  const int64_t layers = options.depth + 2;
  HPDL_CHECK(i >= 0 && i < layers, "{}: layer {} out of range ({} layers)", who.type_name(), i, layers);
  if (i == 0) return patch_embed->num_parameters() + cls_token.numel() + pos_embed.numel();
  if (i == layers - 1) return norm->num_parameters() + head->num_parameters();
  return blocks.at(static_cast<size_t>(i - 1))->num_parameters();
}

std::shared_ptr<Module> VitStage::Parts::make_stage(const Module& who, int64_t lo, int64_t hi) const {
  check_stage_range(who, lo, hi, options.depth + 2);
  auto stage = std::make_shared<VitStage>(*this, lo, hi);
  stage->train(who.is_training());
  return stage;
}

VitStage::VitStage(const Parts& p, int64_t lo_, int64_t hi_) : options(p.options), lo(lo_), hi(hi_) {
  const int64_t layers = options.depth + 2;
  check_stage_range(*this, lo, hi, layers);
  HPDL_CHECK(static_cast<int64_t>(p.blocks.size()) == options.depth, "VitStage: {} encoder layers for a vit of "
             "depth {}", p.blocks.size(), options.depth);
  // Registration order as VisionTransformer's, so named_parameters() lists a run of the vit's.
  if (lo == 0) {
    patch_embed = register_module("patch_embed", p.patch_embed);
    cls_token = register_parameter("cls_token", p.cls_token);
    pos_embed = register_parameter("pos_embed", p.pos_embed);
  }
  const int64_t first = std::max<int64_t>(lo, 1), last = std::min<int64_t>(hi, layers - 1);  // layers 1..depth
  if (first < last) {
    blocks = register_module("blocks", std::make_shared<NamedSequential>());
    for (int64_t i = first; i < last; ++i) blocks->add(std::to_string(i - 1), p.blocks[static_cast<size_t>(i - 1)]);
  }
  if (hi == layers) {
    norm = register_module("norm", p.norm);
    head = register_module("head", p.head);
  }
}

Tensor VitStage::forward(const Tensor& x) {
  Tensor h = x;
  if (has_embedding()) {
    h = vit_embed("vit", options, *patch_embed, cls_token, pos_embed, h);
  } else {
    HPDL_CHECK(h.ndim() == 3 && h.dim(2) == options.dim, "vit stage of layers {}..{}: input {} must be tokens [N, "
               "T, {}]", lo, hi - 1, shape_str(h.shape()), options.dim);
  }
  if (blocks) h = blocks->forward(h);
  return has_head() ? vit_classify(*norm, *head, h) : h;
}

ModulePtr vit(const VitOptions& options) { return std::make_shared<VisionTransformer>(options); }

}  // namespace hpdl::nn::models
