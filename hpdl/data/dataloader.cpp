// DataLoader implementation. Work is cut into tasks of (batch, chunk of
// samples) numbered in epoch order; workers claim them in that order, but only
// for batches whose ring slot the caller has released, so at most ring size
// batches exist at once. Each sample is written to a fixed place of its batch,
// which is why the result does not depend on which thread wrote it.
#include "hpdl/data/dataloader.h"

#include <algorithm>
#include <chrono>

#include "hpdl/core/error.h"
#include "hpdl/core/threading.h"

namespace hpdl::data {

DataLoader::DataLoader(std::shared_ptr<const Dataset> dataset, std::shared_ptr<Sampler> sampler,
                       DataLoaderOptions options, Pipeline transforms)
    : dataset_(std::move(dataset)), sampler_(std::move(sampler)), opt_(std::move(options)),
      transforms_(std::move(transforms)) {
  HPDL_CHECK(dataset_ && sampler_, "DataLoader: dataset and sampler must be given");
  HPDL_CHECK(opt_.batch_size > 0, "DataLoader: batch_size must be > 0, got {} (data.batch_size)", opt_.batch_size);
  HPDL_CHECK(opt_.workers >= 0, "DataLoader: workers must be >= 0, got {} (data.workers)", opt_.workers);
  HPDL_CHECK(opt_.prefetch >= 1, "DataLoader: prefetch must be >= 1, got {} (data.prefetch)", opt_.prefetch);
  in_shape_ = dataset_->sample_shape();
  out_shape_ = transforms_.output_shape(in_shape_);
  scratch_numel_ = transforms_.scratch_numel(in_shape_);
  ring_.resize(static_cast<size_t>(opt_.prefetch + 1));
  for (int i = 0; i < opt_.workers; ++i) threads_.emplace_back([this] { worker_main(); });
}

DataLoader::~DataLoader() {
  {
    std::unique_lock lock(mu_);
    cancel_locked(lock);
    stop_ = true;
  }
  work_cv_.notify_all();
  for (auto& t : threads_) t.join();
}

Tensor DataLoader::allocate(const Shape& shape, DType dtype) const {
  return opt_.allocate ? opt_.allocate(shape, dtype) : Tensor::empty(shape, dtype);
}

int64_t DataLoader::batch_rows(int64_t batch) const {
  const int64_t n = static_cast<int64_t>(indices_.size());
  return std::min(opt_.batch_size, n - batch * opt_.batch_size);
}

// Stops handing out tasks and waits for the ones in flight (they are short: one chunk each).
void DataLoader::cancel_locked(std::unique_lock<std::mutex>& lock) {
  active_ = false;
  ++generation_;
  done_cv_.wait(lock, [&] { return in_flight_ == 0; });
}

void DataLoader::arm_slot(int64_t batch) {
  if (batch >= num_batches_) return;
  Slot& s = ring_[static_cast<size_t>(batch % static_cast<int64_t>(ring_.size()))];
  s.batch = batch;
  s.remaining = chunks_per_batch_;
  s.error = nullptr;
}

void DataLoader::start_epoch(uint64_t epoch, int64_t start_position) {
  std::unique_lock lock(mu_);
  cancel_locked(lock);
  sampler_->set_epoch(epoch);
  sampler_->set_start(start_position);
  epoch_ = epoch;
  start_ = start_position;
  indices_ = sampler_->indices();
  const int64_t n = static_cast<int64_t>(indices_.size());
  num_batches_ = opt_.drop_last ? n / opt_.batch_size : (n + opt_.batch_size - 1) / opt_.batch_size;
  // About two chunks per worker per batch: enough to balance, few enough to keep locking rare.
  const int64_t parts = std::max(1, 2 * opt_.workers);
  chunk_ = std::max<int64_t>(1, (opt_.batch_size + parts - 1) / parts);
  chunks_per_batch_ = (opt_.batch_size + chunk_ - 1) / chunk_;
  Shape img_shape{opt_.batch_size};
  img_shape.insert(img_shape.end(), out_shape_.begin(), out_shape_.end());
  for (auto& s : ring_) {
    if (!s.images.defined() || s.images.shape() != img_shape) {
      s.images = allocate(img_shape, DType::f32);
      const int64_t k = dataset_->target_size();
      s.labels = k > 0 ? allocate({opt_.batch_size, k}, DType::f32) : allocate({opt_.batch_size}, DType::i64);
    }
    s.batch = -1;
  }
  released_ = 0;
  returned_ = 0;
  next_task_ = 0;
  total_tasks_ = num_batches_ * chunks_per_batch_;
  for (int64_t b = 0; b < static_cast<int64_t>(ring_.size()); ++b) arm_slot(b);
  active_ = true;
  lock.unlock();
  work_cv_.notify_all();
}

void DataLoader::fill(int64_t batch, int64_t begin, int64_t end, std::vector<float>& a, std::vector<float>& b) {
  Slot& s = ring_[static_cast<size_t>(batch % static_cast<int64_t>(ring_.size()))];
  const int64_t out_numel = numel_of(out_shape_);
  float* images = s.images.data<float>();
  const int64_t k = dataset_->target_size();  // regression: k float targets per sample
  int64_t* labels = k > 0 ? nullptr : s.labels.data<int64_t>();
  float* targets = k > 0 ? s.labels.data<float>() : nullptr;
  if (static_cast<int64_t>(a.size()) < scratch_numel_) a.resize(static_cast<size_t>(scratch_numel_));
  if (static_cast<int64_t>(b.size()) < scratch_numel_) b.resize(static_cast<size_t>(scratch_numel_));
  for (int64_t row = begin; row < end; ++row) {
    const int64_t pos = batch * opt_.batch_size + row;
    const int64_t idx = indices_[static_cast<size_t>(pos)];
    try {
      if (targets) {
        dataset_->get(idx, a.data());
        dataset_->get_targets(idx, targets + k * row);
      } else {
        labels[row] = dataset_->get(idx, a.data());
      }
      transforms_.apply(a.data(), in_shape_, images + row * out_numel, a.data(), b.data(),
                        SampleKey{opt_.seed, epoch_, idx});
    } catch (const std::exception& e) {
      HPDL_FAIL("DataLoader: epoch {} batch {} sample {} of the epoch (dataset index {}): {}", epoch_, batch,
                start_ + pos, idx, e.what());
    }
  }
}

void DataLoader::worker_main() {
  adopt_num_threads();
  std::vector<float> a, b;  // this worker's scratch, reused for every sample
  std::unique_lock lock(mu_);
  while (true) {
    const int64_t ring = static_cast<int64_t>(ring_.size());
    work_cv_.wait(lock, [&] {
      return stop_ || (active_ && next_task_ < total_tasks_ && next_task_ / chunks_per_batch_ < released_ + ring);
    });
    if (stop_) return;
    const int64_t task = next_task_++;
    const uint64_t gen = generation_;
    const int64_t batch = task / chunks_per_batch_;
    const int64_t begin = (task % chunks_per_batch_) * chunk_;
    const int64_t end = std::min(begin + chunk_, batch_rows(batch));
    ++in_flight_;
    lock.unlock();
    std::exception_ptr err;
    try {
      if (begin < end) fill(batch, begin, end, a, b);
    } catch (...) {
      err = std::current_exception();
    }
    lock.lock();
    --in_flight_;
    if (gen == generation_) {
      Slot& s = ring_[static_cast<size_t>(batch % ring)];
      if (err && !s.error) s.error = err;
      --s.remaining;
    }
    done_cv_.notify_all();
  }
}

bool DataLoader::next(Batch& out) {
  out = Batch{};  // drop the caller's handles on the previous batch before checking its slot
  auto t0 = std::chrono::steady_clock::now();
  std::unique_lock lock(mu_);
  const int64_t ring = static_cast<int64_t>(ring_.size());
  // Release the batch handed out last time; if the caller kept its tensors, give the slot new buffers.
  if (returned_ > released_) {
    Slot& s = ring_[static_cast<size_t>(released_ % ring)];
    if (s.images.storage().use_count() > 1 || s.images.impl_ptr().use_count() > 1)
      s.images = allocate(s.images.shape(), DType::f32);
    if (s.labels.storage().use_count() > 1 || s.labels.impl_ptr().use_count() > 1)
      s.labels = allocate(s.labels.shape(), s.labels.dtype());
    arm_slot(released_ + ring);
    ++released_;
    lock.unlock();
    work_cv_.notify_all();
    lock.lock();
  }
  HPDL_CHECK(active_ || returned_ >= num_batches_,
             "DataLoader: next() called without start_epoch() (or after an error abandoned the epoch)");
  if (returned_ >= num_batches_) {
    active_ = false;
    last_wait_ = 0;
    return false;
  }
  const int64_t batch = returned_;
  Slot& s = ring_[static_cast<size_t>(batch % ring)];
  if (threads_.empty()) {
    // No workers: load the batch here.
    lock.unlock();
    try {
      fill(batch, 0, batch_rows(batch), sync_a_, sync_b_);
    } catch (...) {
      lock.lock();
      active_ = false;
      throw;
    }
    lock.lock();
    s.remaining = 0;
  } else {
    done_cv_.wait(lock, [&] { return s.remaining == 0; });
  }
  if (s.error) {
    std::exception_ptr err = s.error;
    cancel_locked(lock);
    std::rethrow_exception(err);
  }
  ++returned_;
  const int64_t rows = batch_rows(batch);
  Shape ishape = s.images.shape();
  ishape[0] = rows;
  out.images = make_view(s.images, ishape, s.images.strides(), s.images.offset());
  Shape lshape = s.labels.shape();
  lshape[0] = rows;
  out.labels = make_view(s.labels, lshape, s.labels.strides(), s.labels.offset());
  out.index = batch;
  last_wait_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  total_wait_ += last_wait_;
  return true;
}

int64_t DataLoader::position() const {
  return std::min<int64_t>(start_ + returned_ * opt_.batch_size, start_ + static_cast<int64_t>(indices_.size()));
}

}  // namespace hpdl::data
