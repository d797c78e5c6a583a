// Zero3: units of a Sequential, each gathered around its checkpointed forward
// and its recompute, released in between; the gradients ride on ZeRO-2's
// owner buckets; checkpoints gather to one rank.
#include "hpdl/dist/zero3.h"

#include <algorithm>
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

void leaves_of(const nn::Sequential& seq, const std::string& prefix,
               std::vector<std::pair<std::string, nn::ModulePtr>>& out) {
  for (const auto& [name, child] : seq.children()) {
    if (const auto* inner = dynamic_cast<const nn::Sequential*>(child.get()))
      leaves_of(*inner, prefix + name + ".", out);
    else
      out.emplace_back(prefix + name, child);
  }
}

}  // namespace

struct Zero3::Unit {
  std::vector<std::string> names;     // the modules' dotted names
  std::vector<nn::ModulePtr> modules;
  std::vector<size_t> params;         // indices into params_, in the modules' order
  std::vector<size_t> remote;         // the non-owned ones, grouped by owner
  std::vector<int64_t> offset;        // per remote parameter: its first element in `flat`
  int64_t numel = 0;                  // elements of `flat`
  Tensor flat;                        // the gathered non-owned parameters: the shared buffer, or pages of their own
  bool gathered = false;
};

Zero3::Zero3(std::shared_ptr<nn::Sequential> model, ShardedOptimizer& opt, DataParallel& dp)
    : model_(std::move(model)), opt_(opt), dp_(dp), comm_(dp.comm()) {
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
  leaves_of(*model_, "", leaves);
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
    for (int r = 0; r < comm_.size(); ++r)
      for (size_t i : u.params)
        if (owners_[i] == r && r != me) {
          u.remote.push_back(i);
          u.offset.push_back(u.numel);
          u.numel += aligned16(params_[i].numel());
        }
    max_unit_numel_ = std::max(max_unit_numel_, u.numel);
  }
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

void Zero3::gather(Unit& u) {
  if (u.gathered) return;
  NoGradGuard no_grad;
  if (!u.remote.empty()) {
    // One unit at a time (forward, and backward's recompute) uses the shared buffer, mapped once and
    // reused: fresh pages per gather cost a page fault per 4 KiB inside the broadcast, measured 6-10x
    // slower than receiving into memory already mapped. unshard() holds every unit at once, so the
    // others then get pages of their own.
    if (buffer_user_ == nullptr) {
      if (!buffer_.defined()) buffer_ = zero_pages_f32(max_unit_numel_);
      buffer_user_ = &u;
      u.flat = buffer_;
    } else {
      u.flat = zero_pages_f32(u.numel);
    }
    for (size_t k = 0; k < u.remote.size(); ++k) {
      TensorImpl& im = params_[u.remote[k]].impl();
      im.storage = u.flat.storage();
      im.offset = u.offset[k];
    }
  }
  u.gathered = true;
  gathered_bytes_ += u.numel * 4;
  peak_bytes_ = std::max(peak_bytes_, parameter_bytes());
  // One broadcast per owner of something in the unit: at the owner its parameters' own memory, at
  // the others their places in `flat` (an MPI datatype over the regions, no staging copy). On the
  // communication thread, after the gradient reduces queued before it: the collectives of every
  // rank come in one order.
  std::vector<std::vector<std::pair<void*, int64_t>>> regions(static_cast<size_t>(comm_.size()));
  for (size_t i : u.params)
    regions[static_cast<size_t>(owners_[i])].emplace_back(params_[i].raw_data(),
                                                          static_cast<int64_t>(params_[i].nbytes()));
  if (comm_.size() == 1 || u.params.empty()) return;
  comm_.enqueue([this, &regions] {
    for (int r = 0; r < comm_.size(); ++r)
      if (!regions[static_cast<size_t>(r)].empty()) comm_.broadcast_regions(regions[static_cast<size_t>(r)], r);
  })->wait();
}

void Zero3::release(Unit& u) {
  if (!u.gathered || unsharded_) return;
  for (size_t i : u.remote) {
    TensorImpl& im = params_[i].impl();
    im.storage = no_storage();
    im.offset = 0;
  }
  if (buffer_user_ == &u) buffer_user_ = nullptr;
  u.flat = Tensor();  // own pages go back to the kernel once the recomputed graph lets go of them
  u.gathered = false;
  gathered_bytes_ -= u.numel * 4;
}

Tensor Zero3::run(const Unit& u, const Tensor& x) const {
  Tensor y = x;
  for (const nn::ModulePtr& m : u.modules) y = m->forward(y);
  return y;
}

Tensor Zero3::forward(const Tensor& x) {
  Tensor h = x;
  for (auto& up : units_) {
    Unit* u = up.get();
    // Forward (no graph) and eval: gather, run, release. The recompute in backward gathers again
    // and keeps the unit until the node's backward is done (after_backward), as its graph reads
    // the parameters.
    h = checkpoint(
        [this, u](const std::vector<Tensor>& in) {
          gather(*u);
          Tensor y = run(*u, in[0]);
          if (!checkpoint_recomputing()) release(*u);
          return std::vector<Tensor>{y};
        },
        {h}, [this, u] { release(*u); })[0];
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
  for (auto& u : units_) gather(*u);
  unsharded_ = true;
}

void Zero3::reshard() {
  unsharded_ = false;
  for (auto& u : units_) release(*u);
}

int64_t Zero3::buffer_bytes() const { return buffer_.defined() ? max_unit_numel_ * 4 : 0; }

}  // namespace hpdl::dist
