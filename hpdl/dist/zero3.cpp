// Zero3: units of a Sequential, each gathered around its checkpointed forward
// and its recompute, released in between; the gradients ride on ZeRO-2's
// owner buckets; checkpoints gather to one rank.
#include "hpdl/dist/zero3.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <unordered_map>

#include "hpdl/autograd/node.h"
#include "hpdl/dist/pages.h"
#include "hpdl/ops/checkpoint.h"

namespace hpdl::dist {

namespace {

// Released parameters all point at this: no data, zero bytes. The TensorImpl keeps its shape,
// strides and dtype (and its autograd meta: .grad and DataParallel's hooks), so every handle to
// it stays valid; only reading the data is wrong until the next gather.
const std::shared_ptr<Storage>& no_storage() {
  static const auto s = std::make_shared<Storage>(nullptr, 0, kCPU);
  return s;
}

// Gathered parameters start 64 bytes apart (a cache line, an AVX-512 vector), as the CPU
// allocator aligns them.
int64_t aligned16(int64_t numel) { return (numel + 15) / 16 * 16; }

}  // namespace

struct Zero3::Unit {
  std::vector<std::string> names;     // the modules' dotted names
  std::vector<nn::ModulePtr> modules;
  std::vector<size_t> params;         // indices into params_, in the modules' order
  std::vector<size_t> remote;         // the non-owned ones, grouped by owner
  std::vector<int64_t> offset;        // per remote parameter: its first element in `flat`
  int64_t numel = 0;                  // elements its non-owned parameters take in `flat`
  int index = 0;                      // its place in the chain
  Tensor flat;                        // the gathered non-owned parameters: the shared buffer, or pages of their own
  int64_t base = 0;                   // where in `flat` they start (the back half of the buffer: not 0)
  int half = -1;                      // the buffer's front (0) or back (1) it occupies; -1: none
  std::shared_ptr<Work> pending;      // its broadcasts, queued and not yet waited for
  bool gathered = false;              // mapped (its broadcasts may still be in flight: see pending)
};

Zero3::Zero3(std::shared_ptr<nn::Module> model, ShardedOptimizer& opt, DataParallel& dp, Zero3Options options)
    : model_(std::move(model)), opt_(opt), dp_(dp), comm_(dp.comm()), options_(options) {
  HPDL_CHECK(model_ != nullptr, "Zero3: no model given");
  HPDL_CHECK(dp_.shards_gradients(), "Zero3: the DataParallel does not shard gradients; build it with "
             "DataParallelOptions::grad_owners = opt.owners_of(model.parameters()) (ZeRO-3's gradients go to their "
             "owners through ZeRO-2's buckets)");
  for (auto& [name, p] : model_->named_parameters()) param_names_.push_back(name), params_.push_back(p);
  owners_ = opt_.owners_of(params_);  // throws naming a parameter the optimizer does not have
  HPDL_CHECK(dp_.grad_owners() == owners_, "Zero3: the DataParallel's grad_owners differ from the optimizer's "
             "partition; build it with DataParallelOptions::grad_owners = opt.owners_of(model.parameters())");
  std::unordered_map<const TensorImpl*, size_t> index;
  for (size_t i = 0; i < params_.size(); ++i) {
    HPDL_CHECK(index.emplace(params_[i].impl_ptr().get(), i).second, "Zero3: parameter '{}' is registered twice in "
               "the model (also as '{}'): a shared (tied) parameter would be gathered by two units; ZeRO-3 needs "
               "every parameter in exactly one unit (untie it, or use train.zero_stage = 2)", param_names_[i],
               param_names_[index.at(params_[i].impl_ptr().get())]);
    HPDL_CHECK(params_[i].dtype() == DType::f32 && params_[i].device().is_cpu() && params_[i].is_contiguous() &&
               params_[i].offset() == 0, "Zero3: parameter '{}' is {}; ZeRO-3 shards contiguous float32 CPU "
               "parameters", param_names_[i], params_[i].str());
  }

  // Units: a new one at each module with parameters; parameter-free modules join the one before.
  std::vector<std::pair<std::string, nn::ModulePtr>> leaves;
  if (const auto* seq = dynamic_cast<const nn::Sequential*>(model_.get())) {
    leaves = seq->leaves();
  } else if (auto* layers = dynamic_cast<nn::Stageable*>(model_.get())) {
    for (int64_t i = 0; i < layers->num_layers(); ++i)
      leaves.emplace_back(fmt::format("layer {}", i), layers->make_stage(i, i + 1));
  } else {
    HPDL_FAIL("Zero3: a {} is not a sequence of layers (an nn::Sequential, a vit or another nn::Stageable), so its "
              "parameters cannot be gathered unit by unit", model_->type_name());
  }
  HPDL_CHECK(!leaves.empty(), "Zero3: the model has no layers");
  std::vector<int> unit_of(params_.size(), -1);
  for (auto& [name, m] : leaves) {
    const auto ps = m->parameters();
    if (units_.empty() || (!ps.empty() && !units_.back()->params.empty())) units_.push_back(std::make_unique<Unit>());
    Unit& u = *units_.back();
    u.names.push_back(name);
    u.modules.push_back(m);
    const int ui = static_cast<int>(units_.size()) - 1;
    for (const Tensor& p : ps) {
      auto it = index.find(p.impl_ptr().get());
      HPDL_CHECK(it != index.end(), "Zero3: module '{}' uses a parameter ({}) that is not registered in the model",
                 name, p.str());
      const size_t i = it->second;
      if (unit_of[i] == ui) continue;  // used twice inside one unit
      HPDL_CHECK(unit_of[i] < 0, "Zero3: parameter '{}' is used by two units (modules '{}' and '{}'); ZeRO-3 gathers "
                 "a parameter for one unit at a time, so a shared parameter is not supported (untie it, or use "
                 "train.zero_stage = 2)", param_names_[i], units_[static_cast<size_t>(unit_of[i])]->names.front(),
                 name);
      unit_of[i] = ui;
      u.params.push_back(i);
    }
  }
  for (size_t i = 0; i < params_.size(); ++i)
    HPDL_CHECK(unit_of[i] >= 0, "Zero3: parameter '{}' belongs to no unit (it is registered on a Sequential itself, "
               "not on one of its layers); ZeRO-3 needs every parameter inside a layer of the chain", param_names_[i]);

  const int me = comm_.rank();
  for (auto& up : units_) {
    Unit& u = *up;
    u.index = static_cast<int>(&up - units_.data());
    for (int r = 0; r < comm_.size(); ++r)
      for (size_t i : u.params)
        if (owners_[i] == r && r != me) {
          u.remote.push_back(i);
          u.offset.push_back(u.numel);
          u.numel += aligned16(params_[i].numel());
        }
    buffer_numel_ = std::max(buffer_numel_, u.numel);
  }
  // Prefetch holds two neighbouring units at once (front and back of the buffer).
  if (options_.prefetch)
    for (size_t i = 0; i + 1 < units_.size(); ++i)
      buffer_numel_ = std::max(buffer_numel_, units_[i]->numel + units_[i + 1]->numel);
  for (size_t i = 0; i < params_.size(); ++i)
    if (owners_[i] == me) owned_bytes_ += static_cast<int64_t>(params_[i].nbytes());
  opt_.set_broadcast_after_step(false);
  train(model_->is_training());
  // At rest: only the owned parameters keep their data.
  for (auto& up : units_) {
    up->gathered = true;
    gathered_bytes_ += up->numel * 4;
    release(*up);
  }
  peak_bytes_ = parameter_bytes();
}

Zero3::~Zero3() { opt_.set_broadcast_after_step(true); }

bool Zero3::released(const Tensor& p) { return p.numel() > 0 && (!p.storage() || p.storage()->nbytes() == 0); }

std::vector<std::string> Zero3::unit_modules(int i) const {
  HPDL_CHECK(i >= 0 && i < num_units(), "Zero3::unit_modules: unit {} out of range ({} units)", i, num_units());
  return units_[static_cast<size_t>(i)]->names;
}

void Zero3::issue(Unit& u) {
  if (u.gathered) return;
  NoGradGuard no_grad;
  if (!u.remote.empty()) {
    // Units use the shared buffer, mapped once and reused: fresh pages per gather cost a page fault
    // per 4 KiB inside the broadcast, measured 6-10x slower than receiving into memory already mapped.
    // Without prefetch one unit at a time uses its front. With prefetch even units take the front and
    // odd ones the back, so a unit and its neighbour (the one gathered ahead) fit side by side. A unit
    // whose place is taken, or that would overlap the other half's unit, gets pages of its own
    // (unshard() holds every unit at once).
    const int h = options_.prefetch ? u.index % 2 : 0;
    const Unit* other = buffer_user_[1 - h];
    if (buffer_user_[h] == nullptr && (other == nullptr || other->numel + u.numel <= buffer_numel_)) {
      if (!buffer_.defined()) buffer_ = zero_pages_f32(buffer_numel_);
      buffer_user_[h] = &u;
      u.half = h;
      u.flat = buffer_;
      u.base = h == 0 ? 0 : buffer_numel_ - u.numel;
    } else {
      u.half = -1;
      u.flat = zero_pages_f32(u.numel);
      u.base = 0;
    }
    for (size_t k = 0; k < u.remote.size(); ++k) {
      TensorImpl& im = params_[u.remote[k]].impl();
      im.storage = u.flat.storage();
      im.offset = u.base + u.offset[k];
    }
  }
  u.gathered = true;
  gathered_bytes_ += u.numel * 4;
  peak_bytes_ = std::max(peak_bytes_, parameter_bytes());
  if (comm_.size() == 1 || u.params.empty()) return;
  // One broadcast per owner of something in the unit: at the owner its parameters' own memory, at
  // the others their places in `flat` (an MPI datatype over the regions, no staging copy). On the
  // communication thread, after the collectives queued before it (gradient reduces, the gather
  // ahead of it): every rank queues the same ones in the same order, so they pair up. Nothing
  // touches these bytes until wait(u): the owner's parameters change only in the optimizer step,
  // after the backward has waited for every gather it queued.
  auto regions = std::make_shared<std::vector<std::vector<std::pair<void*, int64_t>>>>(
      static_cast<size_t>(comm_.size()));
  for (size_t i : u.params)
    (*regions)[static_cast<size_t>(owners_[i])].emplace_back(params_[i].raw_data(),
                                                             static_cast<int64_t>(params_[i].nbytes()));
  u.pending = comm_.enqueue([this, regions] {
    for (int r = 0; r < comm_.size(); ++r)
      if (!(*regions)[static_cast<size_t>(r)].empty()) comm_.broadcast_regions((*regions)[static_cast<size_t>(r)], r);
  });
}

void Zero3::wait(Unit& u) {
  if (!u.pending) return;
  std::shared_ptr<Work> w = std::move(u.pending);
  u.pending.reset();
  const auto t0 = std::chrono::steady_clock::now();
  w->wait();
  wait_us_ += std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0).count();
}

void Zero3::gather(Unit& u) {
  issue(u);
  wait(u);
}

void Zero3::release(Unit& u) {
  wait(u);  // never drop memory a broadcast still writes into
  if (!u.gathered || unsharded_) return;
  for (size_t i : u.remote) {
    TensorImpl& im = params_[i].impl();
    im.storage = no_storage();
    im.offset = 0;
  }
  if (u.half >= 0 && buffer_user_[u.half] == &u) buffer_user_[u.half] = nullptr;
  u.half = -1;
  u.flat = Tensor();  // own pages go back to the kernel once the recomputed graph lets go of them
  u.gathered = false;
  gathered_bytes_ -= u.numel * 4;
}

void Zero3::settle() {
  for (auto& u : units_) {
    if (unsharded_) wait(*u);
    else release(*u);
  }
}

Tensor Zero3::run(const Unit& u, const Tensor& x) const {
  Tensor y = x;
  for (const nn::ModulePtr& m : u.modules) y = m->forward(y);
  return y;
}

Tensor Zero3::forward(const Tensor& x) {
  // What a previous forward or backward left gathered (the last unit kept for a backward that did
  // not come, a prefetch whose unit's backward did not run): every rank reaches this point with the
  // same units left, so releasing them here is the same everywhere (and queues nothing).
  settle();
  const int n = num_units();
  const bool prefetch = options_.prefetch;
  const bool keep_last = prefetch && grad_enabled();
  Tensor h = x;
  for (int i = 0; i < n; ++i) {
    // Forward (no graph) and eval: gather (queued ahead by the unit before, with prefetch), queue the
    // next unit's gather, run, release. The recompute in backward (the checkpoint node's backward,
    // run in reverse unit order) finds its unit queued by the node after it, queues the unit before,
    // and keeps its own until the node's backward is done (after_backward), as its graph reads the
    // parameters.
    h = checkpoint(
        [this, i, n, prefetch, keep_last](const std::vector<Tensor>& in) {
          Unit& u = *units_[static_cast<size_t>(i)];
          const bool recompute = checkpoint_recomputing();
          if (!unsharded_) ++(u.gathered ? prefetched_ : waited_);
          issue(u);
          if (prefetch) {
            const int ahead = recompute ? i - 1 : i + 1;
            if (ahead >= 0 && ahead < n) issue(*units_[static_cast<size_t>(ahead)]);
          }
          wait(u);
          Tensor y = run(u, in[0]);
          if (!recompute && !(keep_last && i == n - 1)) release(u);
          return std::vector<Tensor>{y};
        },
        {h}, [this, i] { release(*units_[static_cast<size_t>(i)]); })[0];
  }
  return h;
}

std::map<std::string, Tensor> Zero3::full_state_dict(int root) {
  HPDL_CHECK(root >= 0 && root < comm_.size(), "Zero3::full_state_dict: root {} outside [0, {})", root, comm_.size());
  NoGradGuard no_grad;
  const int me = comm_.rank();
  // Each owner but the root packs its parameters' bytes, in the model's order.
  std::vector<char> mine;
  if (me != root)
    for (size_t i = 0; i < params_.size(); ++i)
      if (owners_[i] == me) {
        const char* p = static_cast<const char*>(params_[i].raw_data());
        mine.insert(mine.end(), p, p + params_[i].nbytes());
      }
  std::vector<std::vector<char>> all;
  comm_.enqueue([&] { all = comm_.gather_bytes(mine, root); })->wait();
  std::vector<char>().swap(mine);
  std::map<std::string, Tensor> out;
  if (me != root) return out;
  std::vector<size_t> at(all.size(), 0);
  for (size_t i = 0; i < params_.size(); ++i) {
    const int r = owners_[i];
    if (r == root) {
      out.emplace(param_names_[i], params_[i]);
      continue;
    }
    auto& from = all[static_cast<size_t>(r)];
    const size_t n = params_[i].nbytes();
    HPDL_CHECK(at[static_cast<size_t>(r)] + n <= from.size(), "Zero3::full_state_dict: rank {} sent {} bytes, too "
               "few for its parameter '{}' (the ranks disagree on the partition)", r, from.size(), param_names_[i]);
    Tensor t = Tensor::empty(params_[i].shape(), params_[i].dtype());
    std::memcpy(t.raw_data(), from.data() + at[static_cast<size_t>(r)], n);
    at[static_cast<size_t>(r)] += n;
    out.emplace(param_names_[i], t);
  }
  for (size_t r = 0; r < all.size(); ++r)
    HPDL_CHECK(at[r] == all[r].size(), "Zero3::full_state_dict: rank {} sent {} bytes, its parameters take {} (the "
               "ranks disagree on the partition)", r, all[r].size(), at[r]);
  for (auto& [name, b] : model_->named_buffers()) out.emplace(name, b);
  return out;
}

void Zero3::load_full_state_dict(const std::map<std::string, Tensor>& state, bool strict) {
  std::map<std::string, Tensor> keep;
  std::map<std::string, bool> known;
  for (size_t i = 0; i < params_.size(); ++i) {
    const std::string& name = param_names_[i];
    known[name] = true;
    auto it = state.find(name);
    if (it == state.end()) {
      HPDL_CHECK(!strict, "Zero3::load_full_state_dict: missing key '{}' (pass strict=false to skip)", name);
      continue;
    }
    HPDL_CHECK(it->second.defined() && it->second.shape() == params_[i].shape(), "Zero3::load_full_state_dict: "
               "'{}' is {} in the state dict, the model's is {}", name,
               it->second.defined() ? shape_str(it->second.shape()) : "undefined", shape_str(params_[i].shape()));
    if (owners_[i] == comm_.rank() || !released(params_[i])) keep.emplace(name, it->second);
  }
  for (auto& [name, b] : model_->named_buffers()) {
    known[name] = true;
    auto it = state.find(name);
    HPDL_CHECK(it != state.end() || !strict, "Zero3::load_full_state_dict: missing key '{}' (pass strict=false to "
               "skip)", name);
    if (it != state.end()) keep.emplace(name, it->second);
  }
  if (strict)
    for (const auto& [name, _] : state)
      HPDL_CHECK(known.count(name), "Zero3::load_full_state_dict: unexpected key '{}' (not a parameter or buffer of "
                 "this model; pass strict=false to ignore)", name);
  model_->load_state_dict(keep, /*strict=*/false);
}

void Zero3::unshard() {
  settle();
  for (auto& u : units_) gather(*u);
  unsharded_ = true;
}

void Zero3::reshard() {
  unsharded_ = false;
  for (auto& u : units_) release(*u);
}

int64_t Zero3::buffer_bytes() const { return buffer_.defined() ? buffer_numel_ * 4 : 0; }

}  // namespace hpdl::dist
