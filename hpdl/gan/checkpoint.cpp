// Checkpoint and restore of a GAN trainer's whole state (Dcgan, WganGp) in the classifier
// trainer's format (train::CheckpointManager: safetensors + JSON sidecar, atomic, verified).
// The options travel in the sidecar's config and must match on restore: a checkpoint is a
// point in one run, and a restore under other options would silently be another run.
#include <fmt/ranges.h>

#include <functional>
#include <string>
#include <vector>

#include "hpdl/core/error.h"
#include "hpdl/dist/communicator.h"
#include "hpdl/gan/dcgan.h"

namespace hpdl::gan::detail {
namespace {

// The sidecar's name for a module's own random generator ("g.NAME", "d.NAME").
void add_generators(nn::Module& m, const std::string& prefix, std::vector<train::GeneratorState>& out) {
  for (auto& [name, gen] : m.named_generators()) out.push_back({prefix + name, gen->seed(), gen->offset()});
}

const train::GeneratorState& rng_named(const train::CheckpointInfo& info, const std::string& name) {
  for (const auto& g : info.meta.rng)
    if (g.name == name) return g;
  HPDL_FAIL("{}: the checkpoint has no random generator state '{}'", info.sidecar_path.string(), name);
}

// Every option that differs between the checkpoint's config and this run's, with both values.
std::vector<std::string> option_differences(const nlohmann::json& saved, const nlohmann::json& mine) {
  std::vector<std::string> out;
  for (const auto& [key, value] : mine.items()) {
    auto it = saved.find(key);
    if (it == saved.end())
      out.push_back(fmt::format("{} (not in the checkpoint; {} here)", key, value.dump()));
    else if (*it != value)
      out.push_back(fmt::format("{} = {} in the checkpoint, {} here", key, it->dump(), value.dump()));
  }
  for (const auto& [key, value] : saved.items())
    if (!mine.contains(key)) out.push_back(fmt::format("{} = {} in the checkpoint, unknown here", key, value.dump()));
  return out;
}

// Runs `write` on rank 0 (every rank holds the same state) and tells the others whether it
// worked, so that a failed write stops every rank here instead of leaving them in the next
// collective. One rank: just runs it.
void on_writer(const Replicas& replicas, const train::CheckpointManager& checkpoints, const std::string& what,
               const std::function<void()>& write) {
  dist::Communicator* comm = replicas.comm();
  if (!comm || comm->size() == 1) return write();
  std::string error;
  if (comm->rank() == 0) {
    try {
      write();
    } catch (const std::exception& e) {
      error = e.what();
    }
  }
  int64_t failed = error.empty() ? 0 : 1;
  comm->broadcast_bytes(&failed, sizeof failed, 0);
  HPDL_CHECK(!failed, "{}", comm->rank() == 0 ? error : fmt::format("rank 0 failed to {} in {} (its error is in rank "
             "0's output)", what, checkpoints.dir().string()));
}

}  // namespace

train::CheckpointInfo save_gan_checkpoint(train::CheckpointManager& checkpoints, const GanState& s,
                                          train::AsyncCheckpointWriter* background) {
  train::CheckpointMeta meta;
  meta.step = s.steps;
  meta.sampler_position = s.batches.position();
  meta.config = s.options;
  meta.extra = {{"gan", s.kind}, {"world", s.replicas.world()}};
  meta.rng = {{"gan", s.rng.seed(), s.rng.offset()},
              {"sampler", s.batches.generator().seed(), s.batches.generator().offset()}};
  add_generators(s.g, "g.", meta.rng);
  add_generators(s.d, "d.", meta.rng);
  std::map<std::string, Tensor> tensors;
  auto add = [&](const std::map<std::string, Tensor>& m, const char* prefix) { tensors.merge(train::prefixed(m, prefix)); };
  add(s.g.state_dict(), "g.");
  add(s.d.state_dict(), "d.");
  add(s.g_opt.state_dict(), "g_optim.");
  add(s.d_opt.state_dict(), "d_optim.");
  if (s.g_ema) {
    add(s.g_ema->state_dict(), "g_ema.");
    meta.extra["g_ema_updates"] = s.g_ema->updates();
  }
  const std::vector<int64_t>& order = s.batches.order();
  if (!order.empty()) tensors["sampler.order"] = Tensor::from_vector(order, {static_cast<int64_t>(order.size())});
  train::CheckpointInfo info;
  info.meta = meta;
  // In the background: a snapshot now, the write on the writer's thread (an earlier write's error
  // surfaces here); the info then holds only meta, as on the ranks that do not write.
  on_writer(s.replicas, checkpoints, fmt::format("write the GAN checkpoint of step {}", meta.step), [&] {
    if (background)
      background->save(meta, tensors);
    else
      info = checkpoints.save(meta, tensors);
  });
  return info;
}

void wait_gan_checkpoints(train::CheckpointManager& checkpoints, train::AsyncCheckpointWriter& background,
                          const Replicas& replicas) {
  on_writer(replicas, checkpoints, "finish the GAN checkpoints written in the background",
            [&] { background.wait(); });
}

void load_gan_checkpoint(const train::CheckpointManager& checkpoints, const train::CheckpointInfo& info,
                         const GanState& s) {
  const std::string f = info.sidecar_path.string();
  const std::string kind = info.meta.extra.value("gan", "");
  HPDL_CHECK(!kind.empty(), "{}: not a GAN checkpoint (its sidecar has no extra.gan)", f);
  HPDL_CHECK(kind == s.kind, "{}: a {} checkpoint, and this is a {} run; resume with the GAN that wrote it", f, kind,
             s.kind);
  const std::vector<std::string> diffs = option_differences(info.meta.config, s.options);
  HPDL_CHECK(diffs.empty(),
             "{}: the checkpoint's {} options differ from this run's: {}; resume with the options it was written "
             "with, or start the new run in another directory", f, s.kind, fmt::join(diffs, "; "));
  const train::GeneratorState &rng = rng_named(info, "gan"), &sampler = rng_named(info, "sampler");
  HPDL_CHECK(!s.g_ema || info.meta.extra.contains("g_ema_updates"), "{}: the checkpoint has no g_ema_updates", f);

  std::map<std::string, Tensor> tensors = checkpoints.load(info);
  s.g.load_state_dict(train::with_prefix(tensors, "g."));
  s.d.load_state_dict(train::with_prefix(tensors, "d."));
  s.g_opt.load_state_dict(train::with_prefix(tensors, "g_optim."));
  s.d_opt.load_state_dict(train::with_prefix(tensors, "d_optim."));
  if (s.g_ema) s.g_ema->load_state_dict(train::with_prefix(tensors, "g_ema."), info.meta.extra.at("g_ema_updates").get<int64_t>());
  auto order = tensors.find("sampler.order");
  s.batches.restore(order == tensors.end() ? std::vector<int64_t>{} : order->second.to_vector<int64_t>(),
                    info.meta.sampler_position, sampler.seed, sampler.offset, f);
  s.rng.set_state(rng.seed, rng.offset);
  for (auto& [prefix, module] : {std::pair<std::string, nn::Module*>{"g.", &s.g}, {"d.", &s.d}})
    for (auto& [name, gen] : module->named_generators()) {
      const train::GeneratorState& saved = rng_named(info, prefix + name);
      gen->set_state(saved.seed, saved.offset);
    }
  s.steps = info.meta.step;
}

}  // namespace hpdl::gan::detail
