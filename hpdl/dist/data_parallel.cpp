// DataParallel: flat gradient buckets all-reduced during backward (MPI on
// the communication thread for CPU ranks, NCCL on the communication stream
// for GPU ranks).
#include "hpdl/dist/data_parallel.h"

#include <algorithm>
#include <mutex>

#include "hpdl/autograd/node.h"
#include "hpdl/backend/backend.h"
#include "hpdl/dist/pages.h"
#include "hpdl/dist/powersgd.h"

namespace hpdl::dist {

namespace {
int64_t now_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

Device params_device(nn::Module& m) {
  auto params = m.parameters();
  return params.empty() ? kCPU : params.front().device();
}
}  // namespace

struct DataParallel::Bucket {
  Tensor flat;                  // float32 [numel], the gradients of its parameters (ZeRO-2: undefined when released)
  int64_t numel = 0;
  int owner = -1;               // ZeRO-2: the rank its gradients are reduced to; -1: all-reduced
  Tensor wire;                  // bfloat16 copy when compressing
  std::vector<Tensor> params;
  std::vector<bool> ready;
  int pending = 0;
  bool full = false;             // every gradient is in (guarded by DataParallel::order_mu_)
  bool launched = false;
  bool launched_by_hook = false;
  std::shared_ptr<Work> work;         // CPU ranks: the job on the communication thread
  std::shared_ptr<NcclWork> gpu_work;  // GPU ranks: the collective on the communication stream
  std::unique_ptr<PowerSgd> powersgd;  // options.powersgd_rank > 0: its parameters' compression
  BucketSpan span;
  std::mutex mu;
};

DataParallel::DataParallel(nn::Module& model, Communicator& comm, DataParallelOptions options)
    : model_(model), comm_(comm), options_(options), device_(params_device(model)) {
  if (device_.is_cuda()) {
    owned_nccl_ = std::make_unique<NcclCommunicator>(comm_, device_.index);
    nccl_ = owned_nccl_.get();
  }
  setup();
}

DataParallel::DataParallel(nn::Module& model, Communicator& comm, NcclCommunicator& nccl, DataParallelOptions options)
    : model_(model), comm_(comm), options_(options), nccl_(&nccl), device_(params_device(model)) {
  HPDL_CHECK(device_ == nccl.device(), "DataParallel: the parameters are on {} but the NCCL communicator on {}",
             device_.str(), nccl.device().str());
  HPDL_CHECK(nccl.size() == comm.size() && nccl.rank() == comm.rank(),
             "DataParallel: the NCCL communicator (rank {} of {}) does not match the MPI one (rank {} of {})",
             nccl.rank(), nccl.size(), comm.rank(), comm.size());
  setup();
}

void DataParallel::setup() {
  HPDL_CHECK(options_.bucket_bytes > 0, "DataParallel: bucket size must be positive, got {} bytes",
             options_.bucket_bytes);
  broadcast_state(0);
  auto params = model_.parameters();
  const bool zero2 = !options_.grad_owners.empty();
  if (zero2) {
    HPDL_CHECK(options_.grad_owners.size() == params.size(), "DataParallel: grad_owners names {} owners for a model "
               "of {} parameters", options_.grad_owners.size(), params.size());
    for (int r : options_.grad_owners)
      HPDL_CHECK(r >= 0 && r < comm_.size(), "DataParallel: grad_owners holds rank {}, outside [0, {})", r,
                 comm_.size());
    HPDL_CHECK(!device_.is_cuda(), "DataParallel: sharded gradients (ZeRO-2) need CPU ranks, the parameters are on "
               "{}; use train.zero_stage = 1 on GPU ranks", device_.str());
    HPDL_CHECK(!options_.bf16_wire, "DataParallel: sharded gradients (ZeRO-2) cannot be combined with bf16_wire "
               "(train.bf16_wire); set one of them off");
  }
  if (options_.powersgd_rank != 0) {
    HPDL_CHECK(options_.powersgd_rank > 0, "DataParallel: PowerSGD rank {}; need at least 1 (0: off)",
               options_.powersgd_rank);
    HPDL_CHECK(!device_.is_cuda() && !zero2 && !options_.bf16_wire, "DataParallel: PowerSGD (train.powersgd_rank) "
               "needs CPU ranks without sharded gradients (ZeRO-2) or bf16_wire");
  }
  // Reverse registration order: the last layers' gradients are ready first.
  std::vector<Tensor> order(params.rbegin(), params.rend());
  std::vector<std::string> order_names;  // parameters() is named_parameters() without the names
  for (auto& [name, p] : model_.named_parameters()) order_names.push_back(name);
  std::reverse(order_names.begin(), order_names.end());
  std::vector<int> order_owner(order.size(), -1);
  if (zero2)
    for (size_t i = 0; i < order.size(); ++i) order_owner[i] = options_.grad_owners[params.size() - 1 - i];
  int64_t total_bytes = 0;
  for (const Tensor& p : order) total_bytes += static_cast<int64_t>(p.nbytes());
  const int64_t limit = std::min<int64_t>(
      options_.bucket_bytes, std::max<int64_t>(64 << 10, total_bytes / std::max(1, options_.min_buckets)));
  // Plain: consecutive parameters (in backward order) up to `limit` bytes per bucket. ZeRO-2: the same,
  // but per owner: each owner has one open bucket that takes its parameters in backward order, so a
  // bucket is reduced to a single root; interleaved owners make its span of backward longer.
  std::vector<std::vector<Tensor>> groups;
  std::vector<std::vector<std::string>> group_names;
  std::vector<int> group_owner;
  std::vector<int64_t> group_bytes;
  std::vector<int> open(static_cast<size_t>(zero2 ? comm_.size() : 1), -1);  // per owner: its open group
  for (size_t i = 0; i < order.size(); ++i) {
    const Tensor& p = order[i];
    HPDL_CHECK(p.dtype() == DType::f32 && p.device() == device_, "DataParallel: parameters must be float32, all on "
               "one device ({}), got {}", device_.str(), p.str());
    const int64_t b = static_cast<int64_t>(p.nbytes());
    int& g = open[static_cast<size_t>(zero2 ? order_owner[i] : 0)];
    if (g < 0 || (!groups[static_cast<size_t>(g)].empty() && group_bytes[static_cast<size_t>(g)] + b > limit)) {
      g = static_cast<int>(groups.size());
      groups.emplace_back();
      group_names.emplace_back();
      group_owner.push_back(order_owner[i]);
      group_bytes.push_back(0);
    }
    groups[static_cast<size_t>(g)].push_back(p);
    group_names[static_cast<size_t>(g)].push_back(order_names[i]);
    group_bytes[static_cast<size_t>(g)] += b;
  }
  for (size_t gi = 0; gi < groups.size(); ++gi) {
    auto& g = groups[gi];
    auto bucket = std::make_unique<Bucket>();
    int64_t numel = 0;
    for (auto& p : g) numel += p.numel();
    bucket->numel = numel;
    bucket->owner = group_owner[gi];
    const bool keep = bucket->owner < 0 || bucket->owner == comm_.rank();
    if (keep) {
      bucket->flat = Tensor::zeros({numel}, DType::f32, device_);
      grad_bytes_ += numel * 4;
    }
    if (options_.bf16_wire) bucket->wire = Tensor::empty({numel}, DType::bf16, device_);
    bucket->span.bytes = numel * (options_.bf16_wire ? 2 : 4);
    int64_t off = 0;
    const int index = static_cast<int>(buckets_.size());
    for (size_t slot = 0; slot < g.size(); ++slot) {
      Tensor p = g[slot];
      // The parameter's gradient is a view into the bucket: accumulation writes there directly. A
      // ZeRO-2 bucket of another owner has no storage yet: the first gradient creates it.
      p.set_grad(keep ? make_view(bucket->flat, p.shape(), contiguous_strides(p.shape()), off) : Tensor());
      off += p.numel();
      p.autograd_meta().post_accumulate_hooks.push_back(
          [this, index, slot](Tensor&) { on_grad_ready(index, static_cast<int>(slot)); });
      bucket->params.push_back(p);
    }
    if (options_.powersgd_rank > 0) {
      std::vector<Tensor> views;
      int64_t o = 0;
      for (auto& p : g) {
        views.push_back(make_view(bucket->flat, p.shape(), contiguous_strides(p.shape()), o));
        o += p.numel();
      }
      bucket->powersgd = std::make_unique<PowerSgd>(std::move(views), options_.powersgd_rank,
                                                    options_.powersgd_seed + static_cast<uint64_t>(gi));
    }
    bucket->ready.assign(g.size(), false);
    bucket->pending = static_cast<int>(g.size());
    buckets_.push_back(std::move(bucket));
    bucket_names_.push_back(group_names[gi]);
  }
  peak_grad_bytes_ = grad_bytes_.load();
}

void DataParallel::materialize(Bucket& b) {
  NoGradGuard ng;
  b.flat = zero_pages_f32(b.numel);
  const int64_t now = grad_bytes_ += b.numel * 4;
  int64_t peak = peak_grad_bytes_.load();
  while (now > peak && !peak_grad_bytes_.compare_exchange_weak(peak, now)) {
  }
  int64_t off = 0;
  for (auto& p : b.params) {
    Tensor view = make_view(b.flat, p.shape(), contiguous_strides(p.shape()), off);
    if (p.grad().defined()) view.copy_(p.grad());  // accumulated before the bucket existed (its first one)
    p.set_grad(view);
    off += p.numel();
  }
}

void DataParallel::release(Bucket& b) {
  for (auto& p : b.params) p.set_grad(Tensor());
  if (b.flat.defined()) grad_bytes_ -= b.numel * 4;
  b.flat = Tensor();
}

DataParallel::~DataParallel() {
  for (auto& b : buckets_) {
    try {
      if (b->work) b->work->wait();
      if (b->gpu_work) b->gpu_work->wait();
    } catch (...) {  // the step's error was reported where it happened
    }
    b->gpu_work.reset();
  }
  // Detach the hooks and the bucket views so the model can live on alone.
  for (auto& b : buckets_)
    for (auto& p : b->params) {
      p.autograd_meta().post_accumulate_hooks.clear();
      p.set_grad(p.grad().defined() ? p.grad().clone() : Tensor());
    }
}

void DataParallel::broadcast_state(int root) {
  NoGradGuard ng;
  auto one = [&](Tensor t) {
    if (!t.device().is_cuda()) {
      comm_.broadcast(t, root);
    } else {
      HPDL_CHECK(nccl_ && t.device() == nccl_->device(), "DataParallel: state tensor on {} but the GPU "
                 "communicator is {}", t.device().str(), nccl_ ? nccl_->device().str() : "missing");
      if (t.is_contiguous()) {
        nccl_->broadcast(t, root);
      } else {
        Tensor c = t.contiguous();
        nccl_->broadcast(c, root);
        t.copy_(c);
      }
    }
  };
  for (auto& [name, t] : model_.named_parameters()) one(t);
  for (auto& [name, t] : model_.named_buffers()) one(t);
}

void DataParallel::zero_grad() { reset_buckets(false); }

void DataParallel::adopt_grads() { reset_buckets(true); }

void DataParallel::reset_buckets(bool keep_values) {
  NoGradGuard ng;
  for (auto& b : buckets_) {
    if (b->work) b->work->wait();
    b->work.reset();
    if (b->gpu_work) b->gpu_work->wait();  // stream order: the zeroing comes after the collective
    b->gpu_work.reset();
    if (b->owner >= 0 && b->owner != comm_.rank()) {  // ZeRO-2: not ours, no storage until backward
      HPDL_CHECK(!keep_values, "DataParallel::adopt_grads: sharded gradients (ZeRO-2) keep no gradients between "
                 "steps; call zero_grad()");
      release(*b);
      rearm(*b);
      continue;
    }
    rearm(*b);
    if (!keep_values) b->flat.zero_();
    // Restore the views if someone replaced a .grad (e.g. set_to_none): adopt_grads keeps what it
    // held (none reads as zeros), zero_grad drops it.
    int64_t off = 0;
    for (auto& p : b->params) {
      const Tensor g = p.grad();
      if (!g.defined() || g.storage() != b->flat.storage() || g.offset() != b->flat.offset() + off) {
        Tensor view = make_view(b->flat, p.shape(), contiguous_strides(p.shape()), off);
        if (keep_values) {
          if (g.defined()) view.copy_(g);
          else view.zero_();
        }
        p.set_grad(view);
      }
      off += p.numel();
    }
  }
  std::lock_guard<std::mutex> lock(order_mu_);
  next_launch_ = 0;
  peak_grad_bytes_ = grad_bytes_.load();
}

void DataParallel::rearm(Bucket& b) {
  std::lock_guard<std::mutex> lock(b.mu);
  std::fill(b.ready.begin(), b.ready.end(), false);
  b.pending = static_cast<int>(b.params.size());
  b.full = false;
  b.launched = false;
  b.launched_by_hook = false;
}

void DataParallel::set_accumulating(bool on) {
  if (on == accumulating_) return;
  HPDL_CHECK(!on || options_.grad_owners.empty(), "DataParallel: gradient accumulation (train.accumulate_steps, "
             "train.local_sgd_steps) cannot be combined with sharded gradients (ZeRO-2: a rank does not keep the "
             "gradients it does not own between micro-batches); use train.zero_stage = 1");
  accumulating_ = on;
  // Off: the accumulated micro-batches set ready flags that must not count for the last one.
  if (!on) {
    for (auto& b : buckets_) rearm(*b);
    std::lock_guard<std::mutex> lock(order_mu_);
    next_launch_ = 0;
  }
}

void DataParallel::on_grad_ready(int index, int slot) {
  if (accumulating_) return;  // the group's earlier micro-batches only add into the buckets
  Bucket& b = *buckets_[index];
  bool full = false;
  {
    std::lock_guard<std::mutex> lock(b.mu);
    if (b.owner >= 0 && !b.flat.defined()) materialize(b);  // ZeRO-2: the bucket's first gradient
    if (b.ready[slot]) return;  // a parameter used twice reports twice
    b.ready[slot] = true;
    full = --b.pending == 0;
  }
  if (!full) return;
  // Buckets go out in index order, whatever order backward fills them in: every rank then queues
  // its collectives in one order, even when the ranks' backward orders differ (a multithreaded
  // engine) or one rank launches the rest from finish() (a pipeline replica whose step failed).
  // A bucket filled early waits for the ones before it, as in PyTorch DDP.
  std::lock_guard<std::mutex> lock(order_mu_);
  b.full = true;
  const int n = static_cast<int>(buckets_.size());
  while (next_launch_ < n && buckets_[next_launch_]->full) {
    buckets_[next_launch_]->launched_by_hook = true;
    launch(next_launch_++);
  }
}

int DataParallel::launched_during_backward() const {
  int n = 0;
  for (auto& b : buckets_) n += b->launched_by_hook ? 1 : 0;
  return n;
}

void DataParallel::launch(int index) {
  Bucket& b = *buckets_[index];
  {
    std::lock_guard<std::mutex> lock(b.mu);
    if (b.launched) return;
    b.launched = true;
  }
  const double scale = 1.0 / comm_.size();
  Bucket* bp = &b;
  sync_allreduces_ += 1;
  sync_allreduce_bytes_ += b.span.bytes;
  const bool bf16 = options_.bf16_wire;
  bp->span.bucket = index;
  if (bp->owner >= 0) {
    // ZeRO-2: summed on the owner only, which averages; the others drop the bucket once it is sent.
    if (!bp->flat.defined()) materialize(*bp);  // no gradient this step: zeros take part in the sum
    b.work = comm_.enqueue([this, bp, scale] {
      bp->span.begin_us = now_us();
      comm_.reduce(bp->flat.raw_data(), bp->numel, DType::f32, bp->owner);
      if (bp->owner == comm_.rank())
        reference_backend().unary(UnaryOp::mul_scalar, bp->flat, bp->flat, scale);
      else
        release(*bp);
      bp->span.end_us = now_us();
    });
    return;
  }
  if (nccl_) {
    // Stream-ordered: the collective follows the gradient kernels queued so far; NCCL's avg divides.
    bp->span.begin_us = bp->span.end_us = now_us();
    if (bf16) {
      bp->wire.copy_(bp->flat);
      bp->gpu_work = nccl_->allreduce_async(bp->wire, NcclReduce::avg);
    } else {
      bp->gpu_work = nccl_->allreduce_async(bp->flat, NcclReduce::avg);
    }
    return;
  }
  if (bp->powersgd && steps_ >= options_.powersgd_start_step) {
    sync_allreduces_ += 1;  // two messages
    sync_allreduce_bytes_ += bp->powersgd->wire_elements() * 4 - b.span.bytes;
    b.work = comm_.enqueue([this, bp] {
      bp->span.begin_us = now_us();
      bp->powersgd->reduce(comm_);
      bp->span.end_us = now_us();
    });
    return;
  }
  b.work = comm_.enqueue([this, bp, scale, bf16] {
    bp->span.begin_us = now_us();
    if (bf16) {
      bp->wire.copy_(bp->flat);
      comm_.allreduce(bp->wire);
      bp->flat.copy_(bp->wire);
    } else {
      comm_.allreduce(bp->flat);
    }
    reference_backend().unary(UnaryOp::mul_scalar, bp->flat, bp->flat, scale);
    bp->span.end_us = now_us();
  });
}

void DataParallel::finish() {
  HPDL_CHECK(!accumulating_, "DataParallel::finish: still accumulating gradients; call set_accumulating(false) "
             "before the last micro-batch's backward");
  {
    std::lock_guard<std::mutex> lock(order_mu_);
    for (; next_launch_ < static_cast<int>(buckets_.size()); ++next_launch_) launch(next_launch_);
  }
  for (auto& b : buckets_) {
    if (b->gpu_work) {
      b->gpu_work->wait();  // the compute stream waits; the host does not
      if (options_.bf16_wire) b->flat.copy_(b->wire);
    } else {
      b->work->wait();
    }
  }
  if (options_.broadcast_buffers) broadcast_buffers(0);
  ++steps_;
}

int64_t DataParallel::powersgd_wire_elements() const {
  int64_t n = 0;
  for (auto& b : buckets_) n += b->powersgd ? b->powersgd->wire_elements() : b->numel;
  return n;
}

std::map<std::string, Tensor> DataParallel::powersgd_state() {
  std::map<std::string, Tensor> out;
  std::vector<Tensor> errors;
  for (size_t bi = 0; bi < buckets_.size(); ++bi) {
    auto& b = *buckets_[bi];
    if (!b.powersgd) continue;
    for (size_t i = 0; i < static_cast<size_t>(b.powersgd->compressed_count()); ++i) {
      const int64_t slot = b.powersgd->source_index(i);
      const std::string& name = bucket_names_[bi][static_cast<size_t>(slot)];
      out["q." + name] = b.powersgd->q(i);
      const auto& e = b.powersgd->error(i);
      Tensor t = Tensor::empty(b.params[static_cast<size_t>(slot)].shape());
      std::copy(e.begin(), e.end(), t.data<float>());
      out["error." + name] = t;
      errors.push_back(t);
    }
  }
  mean_over_ranks(errors);  // the tensors in `out`, in place
  return out;
}

int64_t DataParallel::load_powersgd_state(const std::map<std::string, Tensor>& state, int saved_ranks) {
  const float scale = static_cast<float>(saved_ranks) / static_cast<float>(comm_.size());
  // A saved Q of another size (another powersgd_rank): restore nothing.
  for (size_t bi = 0; bi < buckets_.size(); ++bi) {
    auto& b = *buckets_[bi];
    if (!b.powersgd) continue;
    for (size_t i = 0; i < static_cast<size_t>(b.powersgd->compressed_count()); ++i) {
      const auto q = state.find("q." + bucket_names_[bi][static_cast<size_t>(b.powersgd->source_index(i))]);
      if (q != state.end() && q->second.numel() != b.powersgd->q(i).numel()) return -1;
    }
  }
  int64_t restored = 0;
  for (size_t bi = 0; bi < buckets_.size(); ++bi) {
    auto& b = *buckets_[bi];
    if (!b.powersgd) continue;
    for (size_t i = 0; i < static_cast<size_t>(b.powersgd->compressed_count()); ++i) {
      const std::string& name = bucket_names_[bi][static_cast<size_t>(b.powersgd->source_index(i))];
      const auto q = state.find("q." + name), e = state.find("error." + name);
      if (q == state.end() || e == state.end()) continue;
      b.powersgd->set_q(i, q->second);
      b.powersgd->set_error(i, e->second, scale);
      ++restored;
    }
  }
  return restored;
}

int64_t DataParallel::powersgd_compressed_matrices() const {
  int64_t n = 0;
  for (auto& b : buckets_) n += b->powersgd ? b->powersgd->compressed_count() : 0;
  return n;
}

void DataParallel::broadcast_buffers(int root) {
  if (comm_.size() == 1) return;
  NoGradGuard ng;
  std::vector<Tensor> bufs;
  int64_t numel = 0;
  for (auto& [name, t] : model_.named_buffers())
    if (t.dtype() == DType::f32 && t.device() == device_ && t.is_contiguous()) bufs.push_back(t), numel += t.numel();
  if (numel == 0) return;
  // One message for all of them: a ResNet has dozens of small buffers.
  Tensor flat = Tensor::empty({numel}, DType::f32, device_);
  int64_t off = 0;
  for (auto& t : bufs) {
    flat.narrow(0, off, t.numel()).copy_(t.reshape({t.numel()}));
    off += t.numel();
  }
  if (nccl_)
    nccl_->broadcast(flat, root);
  else
    comm_.broadcast(flat, root);
  off = 0;
  for (auto& t : bufs) {
    t.copy_(flat.narrow(0, off, t.numel()));
    off += t.numel();
  }
}

void DataParallel::average_state(const std::vector<Tensor>& extra) {
  if (comm_.size() == 1) return;
  NoGradGuard ng;
  std::vector<Tensor> parts;
  for (auto& [name, p] : model_.named_parameters()) parts.push_back(p);
  for (auto& [name, t] : model_.named_buffers())
    if (t.dtype() == DType::f32 && t.device() == device_ && t.is_contiguous()) parts.push_back(t);
  for (size_t i = 0; i < extra.size(); ++i) {
    const Tensor& t = extra[i];
    HPDL_CHECK(t.defined() && t.dtype() == DType::f32 && t.device() == device_ && t.is_contiguous(),
               "DataParallel::average_state: extra tensor {} must be contiguous float32 on {}, got {}", i,
               device_.str(), t.defined() ? t.str() : std::string("an undefined tensor"));
    parts.push_back(t);
  }
  const int64_t numel = mean_over_ranks(parts);
  if (numel == 0) return;
  sync_allreduces_ += 1;
  sync_allreduce_bytes_ += numel * 4;
}

int64_t DataParallel::mean_over_ranks(std::vector<Tensor>& parts) {
  int64_t numel = 0;
  for (auto& t : parts) numel += t.numel();
  if (numel == 0) return 0;
  // Pack, sum over the ranks, scale by 1/world (the same operations on every rank: bitwise equal results), unpack.
  Tensor flat = Tensor::empty({numel}, DType::f32, device_);
  int64_t off = 0;
  for (auto& t : parts) {
    flat.narrow(0, off, t.numel()).copy_(t.reshape({t.numel()}));
    off += t.numel();
  }
  if (nccl_) {
    nccl_->allreduce(flat, NcclReduce::avg);  // stream-ordered: later kernels see the mean
  } else {
    comm_.allreduce(flat);
    reference_backend().unary(UnaryOp::mul_scalar, flat, flat, 1.0 / comm_.size());
  }
  off = 0;
  for (auto& t : parts) {
    t.copy_(flat.narrow(0, off, t.numel()).reshape(t.shape()));
    off += t.numel();
  }
  return numel;
}

std::vector<int64_t> DataParallel::bucket_sizes() const {
  std::vector<int64_t> out;
  for (auto& b : buckets_) out.push_back(b->numel);
  return out;
}

std::vector<BucketSpan> DataParallel::last_spans() const {
  std::vector<BucketSpan> out;
  for (auto& b : buckets_) out.push_back(b->span);
  return out;
}

}  // namespace hpdl::dist
