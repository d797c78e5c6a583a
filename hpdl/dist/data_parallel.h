// DataParallel: synchronous data-parallel training over a Communicator.
// Every rank holds a full replica; rank 0's initial weights are broadcast;
// gradients live in a few flat buckets (default 25 MB, parameters in reverse
// registration order, which is roughly the order backward produces them).
// A bucket is all-reduced on the communication thread as soon as its last
// gradient has been accumulated and the buckets before it are launched (one
// order on every rank), while backward still runs on the compute threads;
// finish() waits for all buckets and divides by the world size.
// No per-parameter messages. Optional bfloat16 on the wire halves the bytes.
//
// GPU ranks (parameters on a cuda device): the buckets live on the device and
// are all-reduced by an NcclCommunicator (given, or created from `comm`) on
// its communication stream, launched from the same hook, ordered after the
// gradient kernels already queued and overlapped with the rest of backward;
// finish() makes the compute stream wait for them without blocking the host
// (NCCL's avg divides by the world size). MPI carries nothing per step then.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "hpdl/dist/communicator.h"
#include "hpdl/dist/nccl.h"
#include "hpdl/nn/module.h"

namespace hpdl::dist {

struct DataParallelOptions {
  int64_t bucket_bytes = 25ll << 20;
  // A model smaller than min_buckets * bucket_bytes is split into about this
  // many buckets anyway (at least 64 KiB each): one bucket would only start
  // after the whole backward and hide nothing (ResNet-20 is 1.1 MB).
  int min_buckets = 8;
  bool bf16_wire = false;  // compress gradients to bfloat16 for the allreduce
  // After each step, floating-point buffers (batch norm running statistics)
  // are broadcast from rank 0 in one message, as PyTorch DDP's
  // broadcast_buffers: with per-rank batch norm every replica then holds
  // rank 0's statistics. Synchronized batch norm keeps them identical anyway.
  bool broadcast_buffers = true;
  // ZeRO stage 2 (Rajbhandari et al. 2020): the owner rank of each parameter,
  // in model.parameters() order (ShardedOptimizer::owners_of gives it); empty:
  // plain data parallel. Each bucket then holds parameters of one owner and is
  // reduced to that owner (MPI_Reduce) instead of all-reduced; after finish()
  // only owned parameters have a .grad (the global mean), the others none. A
  // bucket of another owner exists only from its first gradient until its
  // reduce is done, so a rank holds ~1/world of the gradients plus the
  // buckets in flight. CPU ranks only; no bf16_wire, no set_accumulating(true).
  std::vector<int> grad_owners;
  // PowerSGD (dist/powersgd.h; Vogels et al. 2019) with rank r > 0: in each
  // bucket the weight matrices travel as rank-r factors P and Q (two
  // allreduces per bucket, on the communication thread as usual), the rest
  // whole; each rank keeps the error the compression made and adds it to
  // its next gradients. From step powersgd_start_step on (finish() calls,
  // counted from set_step); plain allreduce before. CPU ranks; not with
  // bf16_wire or grad_owners. powersgd_state() / load_powersgd_state()
  // carry Q and the ranks' mean error through a checkpoint.
  int powersgd_rank = 0;
  int64_t powersgd_start_step = 0;
  uint64_t powersgd_seed = 0x5067534744ull;
};

// One timed span of an allreduce, for the trace (steady-clock microseconds).
// On GPU ranks it marks the host-side launch only (begin == end): the
// collective itself runs later on the communication stream.
struct BucketSpan {
  int bucket = 0;
  int64_t begin_us = 0, end_us = 0;
  int64_t bytes = 0;
};

class DataParallel {
 public:
  // Parameters on a cuda device: creates an NcclCommunicator over `comm` (collective).
  DataParallel(nn::Module& model, Communicator& comm, DataParallelOptions options = {});
  // GPU ranks with a communicator of the caller's (it must outlive this object).
  DataParallel(nn::Module& model, Communicator& comm, NcclCommunicator& nccl, DataParallelOptions options = {});
  ~DataParallel();
  DataParallel(const DataParallel&) = delete;
  DataParallel& operator=(const DataParallel&) = delete;

  // Zeroes every bucket (the parameters' .grad are views into them); call
  // before each forward instead of model.zero_grad().
  void zero_grad();
  // As zero_grad() but keeping the gradients: a parameter whose .grad was
  // replaced (an optimizer's zero_grad(set_to_none), set_grad) gets its
  // bucket view back holding that gradient, or zeros for none. For owners of
  // a DataParallel (dist::Pipeline) whose callers zero the gradients their
  // own way. Not with sharded gradients (ZeRO-2).
  void adopt_grads();
  // Launches buckets that did not fill (parameters unused this step), waits
  // for every allreduce and averages. After it, .grad holds the global mean
  // (and, with broadcast_buffers, every rank holds rank 0's buffers).
  void finish();
  // Gradient accumulation (several micro-batches per optimizer step, as
  // PyTorch DDP's no_sync): while on, backward adds into the buckets and
  // launches nothing; turning it off re-arms the hooks, so the next backward
  // (the group's last micro-batch) all-reduces the accumulated sums as usual.
  // Call zero_grad() once before the group's first micro-batch; finish() while
  // accumulating is an error.
  void set_accumulating(bool on);
  bool accumulating() const { return accumulating_; }
  // Local SGD's averaging point (train.local_sgd_steps): replaces every
  // parameter, every float32 buffer (batch norm running statistics) and each
  // tensor of `extra` (float32, contiguous, on this device: e.g. optimizer
  // momentum) by its mean over the ranks, packed into one flat float32 buffer
  // and all-reduced in one message. Afterwards every rank holds bitwise the
  // same values (one reduction result, scaled the same way everywhere).
  // Collective: every rank calls it with the same tensor shapes, in order.
  // Throws naming the tensor when one of `extra` is not float32 on this device.
  void average_state(const std::vector<Tensor>& extra = {});
  // Model-synchronization traffic of this process so far: gradient bucket
  // allreduces plus average_state() calls, and their bytes on the wire (the
  // bucket or flat buffer sent; not the small metric/stat reductions).
  int64_t sync_allreduces() const { return sync_allreduces_.load(); }
  int64_t sync_allreduce_bytes() const { return sync_allreduce_bytes_.load(); }
  // Broadcasts the floating-point buffers from `root` in one message.
  void broadcast_buffers(int root = 0);
  // Broadcasts parameters and buffers from `root` (done once at construction).
  void broadcast_state(int root = 0);

  // Bytes of gradient buckets allocated on this rank now, and the most at any
  // moment since the last zero_grad() (plain data parallel: the whole model's
  // gradients, always; ZeRO-2: owned buckets plus those in flight).
  int64_t grad_bytes() const { return grad_bytes_.load(); }
  int64_t peak_grad_bytes() const { return peak_grad_bytes_.load(); }
  bool shards_gradients() const { return !options_.grad_owners.empty(); }
  const std::vector<int>& grad_owners() const { return options_.grad_owners; }

  // PowerSGD: the step finish() will count next (resume sets it), and the
  // gradient elements sent per step once compressing against all of them.
  void set_step(int64_t step) { steps_ = step; }
  int64_t powersgd_wire_elements() const;
  int64_t powersgd_compressed_matrices() const;
  // PowerSGD state for a checkpoint, by parameter name: "q.<name>" (the
  // warm-start factor) and "error.<name>" (the ranks' mean error, in the
  // parameter's shape). Collective (one allreduce of the errors); call it
  // between steps. Empty without PowerSGD.
  std::map<std::string, Tensor> powersgd_state();
  // Restores it: every rank takes Q and mean error x (saved_ranks / ranks),
  // which keeps the ranks' sum of errors, all the next step depends on.
  // Entries it does not find leave that matrix's state fresh; returns how
  // many matrices were restored, or -1 (nothing restored) when a saved Q
  // has another size (a checkpoint of another powersgd_rank).
  int64_t load_powersgd_state(const std::map<std::string, Tensor>& state, int saved_ranks);

  int num_buckets() const { return static_cast<int>(buckets_.size()); }
  // Buckets whose allreduce was launched during backward (by the last
  // gradient's hook) rather than by finish(), in the last step.
  int launched_during_backward() const;
  std::vector<int64_t> bucket_sizes() const;  // elements per bucket
  // Spans of the allreduces of the last step (for the Chrome trace).
  std::vector<BucketSpan> last_spans() const;
  Communicator& comm() { return comm_; }
  // The GPU communicator, or nullptr on CPU ranks.
  NcclCommunicator* nccl() { return nccl_; }
  Device device() const { return device_; }

 private:
  struct Bucket;
  void on_grad_ready(int bucket, int slot);
  void rearm(Bucket& b);  // no gradient ready, nothing launched
  void reset_buckets(bool keep_values);
  void launch(int bucket);
  void materialize(Bucket& b);  // ZeRO-2: a non-owned bucket's storage, gradients moved in
  void release(Bucket& b);      // ZeRO-2: drops a non-owned bucket's storage and .grad views
  void setup();
  // Replaces each tensor (float32, contiguous, on this device) by its mean
  // over the ranks, all in one message; returns their elements. Collective.
  int64_t mean_over_ranks(std::vector<Tensor>& parts);

  nn::Module& model_;
  Communicator& comm_;
  DataParallelOptions options_;
  std::unique_ptr<NcclCommunicator> owned_nccl_;
  NcclCommunicator* nccl_ = nullptr;
  Device device_ = kCPU;
  std::vector<std::unique_ptr<Bucket>> buckets_;
  std::vector<std::vector<std::string>> bucket_names_;  // per bucket: its parameters' names, in slot order
  std::mutex order_mu_;  // buckets launch in index order: next_launch_ and the buckets' `full`
  int next_launch_ = 0;
  bool accumulating_ = false;
  std::atomic<int64_t> sync_allreduces_{0}, sync_allreduce_bytes_{0};
  std::atomic<int64_t> grad_bytes_{0}, peak_grad_bytes_{0};
  int64_t steps_ = 0;
};

}  // namespace hpdl::dist
