// DataLoader: turns (Dataset, Sampler, transforms) into batches of float32
// images [B, C, H, W] and int64 labels [B] (float32 targets [B, k] from a
// regression dataset, Dataset::target_size() = k). Worker threads decode and augment
// into a ring of reused batch buffers, `prefetch` batches ahead of the
// consumer. A batch's contents depend only on (dataset, sampler, seed, epoch),
// never on the number of workers or their timing.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "hpdl/core/tensor.h"
#include "hpdl/data/dataset.h"
#include "hpdl/data/sampler.h"
#include "hpdl/data/transforms.h"

namespace hpdl::data {

struct Batch {
  Tensor images;       // [B, C, H, W] float32 (the dataset's sample shape after transforms)
  Tensor labels;       // [B] int64 class labels, or [B, k] float32 regression targets
  int64_t index = 0;   // batch number within the epoch, counted from the epoch's first batch
  int64_t size() const { return labels.defined() ? labels.dim(0) : 0; }
};

struct DataLoaderOptions {
  int64_t batch_size = 64;
  bool drop_last = false;  // drop a final batch smaller than batch_size
  int workers = 2;         // decoding threads; 0 decodes in the caller's thread inside next()
  int prefetch = 2;        // batches prepared ahead of the one the caller holds (>= 1)
  uint64_t seed = 0;       // augmentation seed (the sampler has its own)
  // Allocates a batch buffer; the default is Tensor::empty on the CPU. A CUDA
  // build can pass page-locked (pinned) memory here for asynchronous copies.
  std::function<Tensor(const Shape&, DType)> allocate;
};

class DataLoader {
 public:
  DataLoader(std::shared_ptr<const Dataset> dataset, std::shared_ptr<Sampler> sampler, DataLoaderOptions options,
             Pipeline transforms = {});
  // Stops the workers (an unfinished epoch is abandoned) and joins them.
  ~DataLoader();
  DataLoader(const DataLoader&) = delete;
  DataLoader& operator=(const DataLoader&) = delete;

  // Begins `epoch` at sample `start_position` of this rank's epoch order (0,
  // or a checkpoint's position() to resume mid-epoch). Abandons an unfinished epoch.
  void start_epoch(uint64_t epoch, int64_t start_position = 0);
  // Fills `out` with the next batch and returns true, or returns false at the
  // end of the epoch. The tensors stay valid until the next call to next() or
  // start_epoch(); a slot whose tensors the caller still holds then is given
  // fresh buffers instead of being overwritten. An exception raised while
  // loading a batch is rethrown here as hpdl::Error naming the batch, the
  // sample position and dataset index, and the epoch is abandoned.
  bool next(Batch& out);

  // Batches in the current epoch (from its start position).
  int64_t num_batches() const { return num_batches_; }
  // Samples of the current epoch consumed so far, including the start position
  // and the batch last returned: what a checkpoint stores to resume.
  int64_t position() const;
  uint64_t epoch() const { return epoch_; }
  Shape sample_shape() const { return out_shape_; }
  // Seconds next() spent waiting for data: in its last call, and in total.
  double last_wait_seconds() const { return last_wait_; }
  double total_wait_seconds() const { return total_wait_; }
  const DataLoaderOptions& options() const { return opt_; }

 private:
  struct Slot {
    Tensor images, labels;
    int64_t batch = -1;      // batch being filled / ready in this slot
    int64_t remaining = 0;   // chunks still to be filled
    std::exception_ptr error;
  };
  void worker_main();
  void cancel_locked(std::unique_lock<std::mutex>& lock);
  void arm_slot(int64_t batch);  // prepares the slot of `batch` for filling (lock held)
  int64_t batch_rows(int64_t batch) const;
  void fill(int64_t batch, int64_t begin, int64_t end, std::vector<float>& a, std::vector<float>& b);
  Tensor allocate(const Shape& shape, DType dtype) const;

  std::shared_ptr<const Dataset> dataset_;
  std::shared_ptr<Sampler> sampler_;
  DataLoaderOptions opt_;
  Pipeline transforms_;
  Shape in_shape_, out_shape_;
  int64_t scratch_numel_ = 0;

  // Epoch state, written by start_epoch while no task is in flight.
  uint64_t epoch_ = 0;
  int64_t start_ = 0;
  std::vector<int64_t> indices_;
  int64_t num_batches_ = 0, chunk_ = 1, chunks_per_batch_ = 1;
  std::vector<Slot> ring_;

  // Shared with the workers, guarded by mu_.
  std::mutex mu_;
  std::condition_variable work_cv_, done_cv_;
  bool stop_ = false, active_ = false;
  uint64_t generation_ = 0;
  int64_t next_task_ = 0, total_tasks_ = 0;
  int64_t released_ = 0;  // batches [0, released_) are consumed; their slots may be refilled
  int in_flight_ = 0;
  int64_t returned_ = 0;  // batches handed to the caller this epoch

  std::vector<float> sync_a_, sync_b_;  // scratch of the caller's thread when workers == 0
  double last_wait_ = 0, total_wait_ = 0;
  std::vector<std::thread> threads_;
};

}  // namespace hpdl::data
