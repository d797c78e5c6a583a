// A Vision Transformer classifier (Dosovitskiy et al. 2021, "An Image is Worth
// 16x16 Words"), sized for small images: non-overlapping P x P patches
// embedded by a convolution with kernel = stride = P, a learned class token,
// learned position embeddings, `depth` pre-norm encoder layers
// (nn::TransformerEncoderLayer with GELU), a final LayerNorm and a Linear head
// on the class token.
#pragma once

#include <memory>
#include <vector>

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
// Its layers for a pipeline (nn::Stageable) are depth + 2: the embedding
// (patch_embed, cls_token, pos_embed: images -> tokens [N, 1 + L, E]), each
// encoder layer (tokens -> tokens) and the head (norm, head: tokens -> logits);
// a stage is a VitStage.
class VisionTransformer : public Module, public Stageable {
 public:
  explicit VisionTransformer(const VitOptions& options);
  Tensor forward(const Tensor& x) override;
  std::string type_name() const override { return "VisionTransformer"; }
  int64_t num_layers() const override { return options.depth + 2; }
  int64_t layer_parameters(int64_t i) const override;
  std::shared_ptr<Module> make_stage(int64_t lo, int64_t hi) override;

  std::shared_ptr<Conv2d> patch_embed;
  Tensor cls_token, pos_embed;
  std::shared_ptr<Sequential> blocks;
  std::shared_ptr<LayerNorm> norm;
  std::shared_ptr<Linear> head;
  VitOptions options;
  int64_t num_patches;
};

// Layers [lo, hi) of a vit (see VisionTransformer) under the vit's names:
// patch_embed, cls_token and pos_embed when it holds the embedding (lo = 0),
// blocks.{i} for the encoder layers it holds (in a NamedSequential, which
// activation checkpointing cuts at each layer), norm and head when it holds
// the head. Its input is the images when it holds the embedding, else tokens
// [N, 1 + L, E]; its output the logits when it holds the head, else tokens.
// The modules and tensors are the vit's own (shared). Also the stage of a
// vit whose encoder layers were replaced (tensor parallelism): `blocks` are
// the layers to use, by index.
class VitStage : public Module {
 public:
  struct Parts {
    VitOptions options;
    std::shared_ptr<Conv2d> patch_embed;
    Tensor cls_token, pos_embed;
    std::vector<ModulePtr> blocks;  // all depth encoder layers
    std::shared_ptr<LayerNorm> norm;
    std::shared_ptr<Linear> head;
    // Parameters (elements) of layer i of depth + 2 (`who` names the model in errors).
    int64_t layer_parameters(const Module& who, int64_t i) const;
    // make_stage for the model `who` these parts are of: layers [lo, hi) in `who`'s train/eval mode.
    std::shared_ptr<Module> make_stage(const Module& who, int64_t lo, int64_t hi) const;
  };
  VitStage(const Parts& parts, int64_t lo, int64_t hi);
  Tensor forward(const Tensor& x) override;
  std::string type_name() const override { return "VitStage"; }
  bool has_embedding() const { return patch_embed != nullptr; }
  bool has_head() const { return head != nullptr; }

  std::shared_ptr<Conv2d> patch_embed;  // null without the embedding
  Tensor cls_token, pos_embed;
  std::shared_ptr<NamedSequential> blocks;  // null without encoder layers
  std::shared_ptr<LayerNorm> norm;          // null without the head
  std::shared_ptr<Linear> head;
  VitOptions options;
  int64_t lo = 0, hi = 0;
};

// The parts of a vit-shaped model (VisionTransformer, or the tensor-parallel
// one, with the same members), for its stages.
template <typename Vit>
VitStage::Parts vit_parts(const Vit& v) {
  VitStage::Parts p{v.options, v.patch_embed, v.cls_token, v.pos_embed, {}, v.norm, v.head};
  for (const auto& [_, m] : v.blocks->children()) p.blocks.push_back(m);
  return p;
}

// The shared steps of a vit's forward: images [N, C, H, W] -> tokens
// [N, 1 + L, E] (the class token first, then the patches, plus positions;
// throws naming `who` for an input of the wrong shape), and tokens -> logits
// (the final norm of the class token, then the head).
Tensor vit_embed(const char* who, const VitOptions& o, Conv2d& patch_embed, const Tensor& cls_token,
                 const Tensor& pos_embed, const Tensor& x);
Tensor vit_classify(LayerNorm& norm, Linear& head, const Tensor& tokens);

ModulePtr vit(const VitOptions& options);

}  // namespace hpdl::nn::models
