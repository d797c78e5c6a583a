// DataParallel: synchronous data-parallel training over a Communicator.
// Every rank holds a full replica; rank 0's initial weights are broadcast;
// gradients live in a few flat buckets (default 25 MB, parameters in reverse
// registration order, which is roughly the order backward produces them).
// A bucket is all-reduced on the communication thread as soon as its last
// gradient has been accumulated, while backward still runs on the compute
// threads; finish() waits for all buckets and divides by the world size.
// No per-parameter messages. Optional bfloat16 on the wire halves the bytes.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <vector>

#include "hpdl/dist/communicator.h"
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
};

// One timed span of an allreduce, for the trace (steady-clock microseconds).
struct BucketSpan {
  int bucket = 0;
  int64_t begin_us = 0, end_us = 0;
  int64_t bytes = 0;
};

class DataParallel {
 public:
  DataParallel(nn::Module& model, Communicator& comm, DataParallelOptions options = {});
  ~DataParallel();
  DataParallel(const DataParallel&) = delete;
  DataParallel& operator=(const DataParallel&) = delete;

  // Zeroes every bucket (the parameters' .grad are views into them); call
  // before each forward instead of model.zero_grad().
  void zero_grad();
  // Launches buckets that did not fill (parameters unused this step), waits
  // for every allreduce and averages. After it, .grad holds the global mean
  // (and, with broadcast_buffers, every rank holds rank 0's buffers).
  void finish();
  // Broadcasts the floating-point buffers from `root` in one message.
  void broadcast_buffers(int root = 0);
  // Broadcasts parameters and buffers from `root` (done once at construction).
  void broadcast_state(int root = 0);

  int num_buckets() const { return static_cast<int>(buckets_.size()); }
  // Buckets whose allreduce was launched during backward (by the last
  // gradient's hook) rather than by finish(), in the last step.
  int launched_during_backward() const;
  std::vector<int64_t> bucket_sizes() const;  // elements per bucket
  // Spans of the allreduces of the last step (for the Chrome trace).
  std::vector<BucketSpan> last_spans() const;
  Communicator& comm() { return comm_; }

 private:
  struct Bucket;
  void on_grad_ready(int bucket, int slot);
  void launch(int bucket);

  nn::Module& model_;
  Communicator& comm_;
  DataParallelOptions options_;
  std::vector<std::unique_ptr<Bucket>> buckets_;
};

}  // namespace hpdl::dist
