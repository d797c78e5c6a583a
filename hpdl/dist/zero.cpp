// ShardedOptimizer (ZeRO stage 1): the partition, the step with its parameter
// broadcast per owner, and the gather/scatter of the state for checkpoints.
#include "hpdl/dist/zero.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "hpdl/autograd/node.h"
#include "hpdl/ops/elementwise.h"

namespace hpdl::dist {

std::vector<int> partition_params(const std::vector<int64_t>& numels, int ranks) {
  HPDL_CHECK(ranks >= 1, "partition_params: need at least one rank, got {}", ranks);
  for (size_t i = 0; i < numels.size(); ++i)
    HPDL_CHECK(numels[i] >= 0, "partition_params: parameter {} has a negative element count {}", i, numels[i]);
  // Largest first (the classic LPT greedy: within 4/3 of the best balance), stable so equal sizes
  // keep their order and the result depends on nothing but the list.
  std::vector<size_t> order(numels.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return numels[a] > numels[b]; });
  std::vector<int64_t> load(static_cast<size_t>(ranks), 0);
  std::vector<int> owner(numels.size(), 0);
  for (size_t i : order) {
    const auto r = static_cast<size_t>(std::min_element(load.begin(), load.end()) - load.begin());  // lowest on ties
    owner[i] = static_cast<int>(r);
    load[r] += numels[i];
  }
  return owner;
}

namespace {

// A state dict as bytes, for the gather to the writing rank: per entry the key,
// the dtype, the shape and the raw data. Only ever read by the same build.
void put(std::vector<char>& out, const void* p, size_t n) {
  const char* c = static_cast<const char*>(p);
  out.insert(out.end(), c, c + n);
}

std::vector<char> pack_state(const std::map<std::string, Tensor>& state) {
  std::vector<char> out;
  for (const auto& [key, t0] : state) {
    const Tensor t = t0.contiguous();
    const auto klen = static_cast<uint32_t>(key.size());
    const auto dtype = static_cast<uint8_t>(t.dtype());
    const auto ndim = static_cast<uint8_t>(t.ndim());
    put(out, &klen, sizeof klen);
    put(out, key.data(), key.size());
    put(out, &dtype, 1);
    put(out, &ndim, 1);
    for (int64_t d : t.shape()) put(out, &d, sizeof d);
    put(out, t.raw_data(), t.nbytes());
  }
  return out;
}

void unpack_state(const std::vector<char>& in, int from, std::map<std::string, Tensor>& out) {
  size_t at = 0;
  auto get = [&](void* p, size_t n) {
    HPDL_CHECK(at + n <= in.size(), "ShardedOptimizer: the state gathered from rank {} is truncated at byte {}", from,
               at);
    std::memcpy(p, in.data() + at, n);
    at += n;
  };
  while (at < in.size()) {
    uint32_t klen = 0;
    get(&klen, sizeof klen);
    std::string key(klen, '\0');
    get(key.data(), klen);
    uint8_t dtype = 0, ndim = 0;
    get(&dtype, 1);
    get(&ndim, 1);
    Shape shape(ndim);
    for (auto& d : shape) get(&d, sizeof d);
    Tensor t = Tensor::empty(shape, static_cast<DType>(dtype));
    get(t.raw_data(), t.nbytes());
    HPDL_CHECK(out.emplace(key, t).second, "ShardedOptimizer: state key '{}' from rank {} was already gathered from "
               "another rank (the ranks disagree on the partition)", key, from);
  }
}

}  // namespace

ShardedOptimizer::ShardedOptimizer(std::vector<optim::ParamSpec> params, const Factory& make, Communicator& comm)
    : Optimizer(std::move(params), 0.0), comm_(comm) {
  const int n = comm_.size();
  std::vector<int64_t> numels;
  for (const auto& s : params_) {
    HPDL_CHECK(s.param.device().is_cpu() && s.param.is_contiguous(), "ShardedOptimizer: parameter '{}' is {}; sharded "
               "optimizer state needs contiguous CPU parameters (train.shard_optimizer is for CPU ranks)", s.name,
               s.param.str());
    numels.push_back(s.param.numel());
  }
  owners_ = partition_params(numels, n);
  owned_by_.assign(static_cast<size_t>(n), {});
  bytes_of_.assign(static_cast<size_t>(n), 0);
  for (size_t i = 0; i < params_.size(); ++i) {
    owned_by_[static_cast<size_t>(owners_[i])].push_back(i);
    bytes_of_[static_cast<size_t>(owners_[i])] += static_cast<int64_t>(params_[i].param.nbytes());
  }
  std::vector<optim::ParamSpec> mine;
  for (size_t i : owned()) mine.push_back(params_[i]);
  if (!mine.empty()) {
    local_ = make(std::move(mine));
    HPDL_CHECK(local_ != nullptr, "ShardedOptimizer: the factory returned no optimizer");
    name_ = local_->name();
    lr_ = local_->lr();
  } else {
    // Nothing owned here: build the optimizer over everything once (its state is created lazily, so
    // this allocates none) for its name and learning rate, and drop it.
    auto probe = make(params_);
    HPDL_CHECK(probe != nullptr, "ShardedOptimizer: the factory returned no optimizer");
    name_ = probe->name();
    lr_ = probe->lr();
  }
}

void ShardedOptimizer::step() {
  NoGradGuard no_grad;
  count_step();
  if (local_) {
    local_->set_lr(lr_);
    local_->step();
  }
  if (!broadcast_after_step_) return;  // ZeRO-3: the next forward gathers them
  // Each owner's parameters go to every rank in one broadcast (an MPI datatype over the tensors'
  // memory, so no staging copy and no buffer the size of a share): one message per rank that owns
  // something, not one per tensor. Raw bytes, so every replica ends bitwise equal to the owner.
  for (int r = 0; r < comm_.size(); ++r) {
    if (bytes_of_[static_cast<size_t>(r)] == 0) continue;
    std::vector<std::pair<void*, int64_t>> regions;
    for (size_t i : owned_by_[static_cast<size_t>(r)]) {
      regions.emplace_back(params_[i].param.raw_data(), static_cast<int64_t>(params_[i].param.nbytes()));
      if (r != comm_.rank()) params_[i].param.bump_version();  // received in place (the owner's step bumped its own)
    }
    comm_.broadcast_regions(regions, r);
  }
}

std::map<std::string, Tensor> ShardedOptimizer::state_dict() const {
  std::map<std::string, Tensor> mine;
  if (local_) mine = local_->state_dict();
  mine.erase("step");  // the wrapper's count, added once below
  std::vector<char> bytes = pack_state(mine);
  mine.clear();
  auto all = comm_.gather_bytes(bytes, 0);
  std::map<std::string, Tensor> out;
  if (comm_.rank() != 0) return out;
  for (size_t r = 0; r < all.size(); ++r) {
    unpack_state(all[r], static_cast<int>(r), out);
    std::vector<char>().swap(all[r]);
  }
  out.emplace("step", Tensor::scalar(static_cast<double>(steps_), DType::i64));
  return out;
}

void ShardedOptimizer::load_state_dict(const std::map<std::string, Tensor>& state) {
  std::map<std::string, size_t> index;
  for (size_t i = 0; i < params_.size(); ++i) index.emplace(params_[i].name, i);
  auto step = state.find("step");
  HPDL_CHECK(step != state.end() && step->second.defined() && step->second.numel() == 1,
             "{} (sharded): load_state_dict: missing or non-scalar key 'step'", name_);
  std::map<std::string, Tensor> mine{{"step", step->second}};
  for (const auto& [key, t] : state) {
    if (key == "step") continue;
    const auto dot = key.rfind('.');
    HPDL_CHECK(dot != std::string::npos, "{} (sharded): load_state_dict: unexpected key '{}' (expected "
               "'<param>.<buffer>')", name_, key);
    auto it = index.find(key.substr(0, dot));
    HPDL_CHECK(it != index.end(), "{} (sharded): load_state_dict: key '{}' names parameter '{}', which this optimizer "
               "does not have", name_, key, key.substr(0, dot));
    if (owners_[it->second] == comm_.rank()) mine.emplace(key, t);
  }
  if (local_) local_->load_state_dict(mine);
  steps_ = static_cast<int64_t>(step->second.item());
}

std::vector<int> ShardedOptimizer::owners_of(const std::vector<Tensor>& params) const {
  std::map<const void*, size_t> index;
  for (size_t i = 0; i < params_.size(); ++i) index.emplace(params_[i].param.impl_ptr().get(), i);
  std::vector<int> out;
  for (size_t k = 0; k < params.size(); ++k) {
    auto it = index.find(params[k].impl_ptr().get());
    HPDL_CHECK(it != index.end(), "ShardedOptimizer::owners_of: tensor {} ({}) is not one of this optimizer's {} "
               "parameters", k, params[k].str(), params_.size());
    out.push_back(owners_[it->second]);
  }
  return out;
}

double ShardedOptimizer::clip_grad_norm(double max_norm) {
  HPDL_CHECK(max_norm > 0, "clip_grad_norm (sharded): max_norm must be > 0, got {}", max_norm);
  NoGradGuard no_grad;
  // Per parameter, the owner's sum of squares; zeros elsewhere. Adding zeros is exact in any order,
  // so after the allreduce every rank holds the owners' values bit for bit.
  std::vector<Tensor> grads;
  std::vector<size_t> at;
  for (size_t i : owned())
    if (params_[i].param.grad().defined()) grads.push_back(params_[i].param.grad()), at.push_back(i);
  std::vector<double> sq(params_.size(), 0.0);
  const std::vector<double> mine = optim::sums_of_squares(grads);
  for (size_t k = 0; k < at.size(); ++k) sq[at[k]] = mine[k];
  comm_.allreduce(sq.data(), static_cast<int64_t>(sq.size()), DType::f64);
  double total_sq = 0;
  for (double v : sq) total_sq += v;  // parameter order, as optim::clip_grad_norm adds them
  const double total = std::sqrt(total_sq);
  HPDL_CHECK(std::isfinite(total), "clip_grad_norm (sharded): the gradient norm is not finite ({}); the loss has "
             "diverged (lower the learning rate or check the inputs)", total);
  const double coef = max_norm / (total + 1e-6);
  if (coef < 1)
    for (const Tensor& g0 : grads) {
      Tensor g = g0;
      g.copy_(mul(g, coef));
    }
  return total;
}

int64_t ShardedOptimizer::state_bytes() const { return local_ ? local_->state_bytes() : 0; }

}  // namespace hpdl::dist
