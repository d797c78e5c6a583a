// Where the zoo models cut their forward into checkpointed segments: at
// residual blocks and encoder layers where the model has them (a block's
// input is all it keeps), else into about sqrt(n) runs of plain layers.
#include <fmt/format.h>

#include <cmath>

#include "hpdl/nn/blocks.h"
#include "hpdl/nn/models/models.h"
#include "hpdl/nn/models/resnet50.h"
#include "hpdl/nn/transformer.h"

namespace hpdl::nn::models {

namespace {

bool is_block(const Module& m) {
  return dynamic_cast<const BasicBlock*>(&m) != nullptr || dynamic_cast<const Bottleneck*>(&m) != nullptr ||
         dynamic_cast<const TransformerEncoderLayer*>(&m) != nullptr;
}

}  // namespace

std::string enable_activation_checkpointing(Module& model) {
  int64_t blocks = 0;
  for (auto& [name, m] : model.named_modules()) {
    auto* seq = dynamic_cast<Sequential*>(m.get());
    if (seq == nullptr || seq->size() == 0) continue;
    bool all_blocks = true;
    for (const auto& [_, child] : seq->children()) all_blocks = all_blocks && is_block(*child);
    if (!all_blocks) continue;
    seq->set_checkpoint_chunk(1);
    blocks += static_cast<int64_t>(seq->size());
  }
  if (blocks > 0) return fmt::format("{} segments: each residual block or encoder layer", blocks);
  auto* top = dynamic_cast<Sequential*>(&model);
  HPDL_CHECK(top != nullptr && top->size() > 0, "activation checkpointing: a {} has neither residual blocks nor "
             "encoder layers nor a sequence of layers to cut into segments; set train.activation_checkpointing = "
             "false", model.type_name());
  const auto n = static_cast<int64_t>(top->size());
  const auto k = static_cast<int64_t>(std::ceil(std::sqrt(static_cast<double>(n))));
  top->set_checkpoint_chunk(k);
  return fmt::format("{} segments of up to {} of its {} layers", (n + k - 1) / k, k, n);
}

}  // namespace hpdl::nn::models
