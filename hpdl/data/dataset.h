// Dataset: indexed samples, each a float [C, H, W] image (or any fixed
// per-sample shape) plus an int64 label or, for regression, a fixed number of
// float targets, written into a caller's buffer so a loader decodes a whole
// epoch without a single per-sample allocation.
// get() must be safe to call from several threads at once.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "hpdl/core/dtype.h"
#include "hpdl/core/shape.h"
#include "hpdl/data/readers.h"  // kFashionMnistDir

namespace hpdl::data {

class Dataset {
 public:
  virtual ~Dataset() = default;
  virtual int64_t size() const = 0;
  // The shape of one sample, e.g. [C, H, W]; every sample has it.
  virtual Shape sample_shape() const = 0;
  int64_t sample_numel() const { return numel_of(sample_shape()); }
  // Writes sample i (0 <= i < size(), else throws) as float32 into out[0,
  // sample_numel()) and returns its label. Thread-safe.
  virtual int64_t get(int64_t i, float* out) const = 0;
  // Regression targets: how many float values each sample has (0, the default:
  // the dataset has integer class labels, which get() returns).
  virtual int64_t target_size() const { return 0; }
  // Writes sample i's target_size() float targets into out. Thread-safe.
  // Throws when the dataset has class labels instead.
  virtual void get_targets(int64_t i, float* out) const;
};

// Samples [first, first + count) of another dataset, without a copy.
class SubsetDataset : public Dataset {
 public:
  // Throws unless 0 <= first and first + count <= base->size().
  SubsetDataset(std::shared_ptr<const Dataset> base, int64_t first, int64_t count);
  int64_t size() const override { return count_; }
  Shape sample_shape() const override { return base_->sample_shape(); }
  int64_t get(int64_t i, float* out) const override;
  int64_t target_size() const override { return base_->target_size(); }
  void get_targets(int64_t i, float* out) const override;

 private:
  std::shared_ptr<const Dataset> base_;
  int64_t first_, count_;
};

// All samples in memory: uint8 pixels (scaled to [0, 1] on get, like
// torchvision's ToTensor) or float32 values (returned as they are).
class InMemoryDataset : public Dataset {
 public:
  // images: N * numel(sample_shape) values; labels: N.
  InMemoryDataset(Shape sample_shape, std::vector<uint8_t> images, std::vector<int64_t> labels);
  InMemoryDataset(Shape sample_shape, std::vector<float> images, std::vector<int64_t> labels);

  int64_t size() const override { return static_cast<int64_t>(labels_.size()); }
  Shape sample_shape() const override { return sample_shape_; }
  int64_t get(int64_t i, float* out) const override;
  DType storage_dtype() const { return u8_.empty() && !f32_.empty() ? DType::f32 : DType::u8; }
  const std::vector<int64_t>& labels() const { return labels_; }
  // Makes this a regression dataset: `per_sample` float targets for each of the
  // size() samples (targets holds size() * per_sample values, else throws).
  void set_targets(std::vector<float> targets, int64_t per_sample);
  int64_t target_size() const override { return target_size_; }
  void get_targets(int64_t i, float* out) const override;
  const std::vector<float>& targets() const { return targets_; }

 private:
  Shape sample_shape_;
  std::vector<uint8_t> u8_;
  std::vector<float> f32_;
  std::vector<int64_t> labels_;
  std::vector<float> targets_;  // [size(), target_size_] for regression
  int64_t target_size_ = 0;
};

// Fashion-MNIST (or MNIST) from the four idx files in `dir`
// ({train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]): samples [1, 28, 28],
// labels 0..9. Throws naming the file and, for the default directory, the
// Debian package dataset-fashion-mnist.
std::shared_ptr<InMemoryDataset> load_mnist_idx(const std::filesystem::path& dir, bool train);

// The datasets inside an HDF5 file that hold the samples (x) and labels (y) of
// each split (the config's data.hdf5_x, data.hdf5_y, data.hdf5_test_x, data.hdf5_test_y).
struct Hdf5Names {
  std::string train_x = "train/images", train_y = "train/labels";
  std::string test_x = "test/images", test_y = "test/labels";
};

// Samples and labels from two datasets of one HDF5 file. x: [N, C, H, W],
// [N, H, W] (C = 1) or features [N, F] (samples [1, 1, F], so that every model
// and the per-channel normalization take them); uint8 is kept as bytes and
// scaled to [0, 1] on get, float32 and float64 become float32 values as they
// are (HDF5 converts float64 block by block: no second full copy). y: [N],
// uint8, int32 or int64, each >= 0; with `targets` = k > 0 (regression) float32
// or float64 targets [N] (k = 1) or [N, k] instead. Throws naming the file and the dataset.
std::shared_ptr<InMemoryDataset> load_hdf5(const std::filesystem::path& file, const std::string& x_name,
                                           const std::string& y_name, int64_t targets = 0);

// Opens the train or test split of a dataset by kind (the config's data.dataset):
//   "fashion-mnist", "mnist": the idx files in `path` ("" = kFashionMnistDir for fashion-mnist);
//   "npy": path/{train,test}_x.npy ([N, C, H, W], [N, H, W] -> C = 1, or [N, D];
//          u8 scaled to [0, 1], f4/f8 as they are) and path/{train,test}_y.npy ([N], integer);
//   "csv": path/{train,test}.csv, numeric, label in the last column, samples [D];
//   "hdf5": the file `path`, datasets hdf5.{train,test}_{x,y} (load_hdf5).
// `targets` = k > 0 opens it for regression with k float targets per sample:
// npy and hdf5 y must then be float (f4/f8) of shape [N] (k = 1) or [N, k], and
// a csv file's last k columns are the targets. Integer labels with k > 0, float
// labels with k = 0, or another k are refused, naming the file, its dtype and shape.
// Throws naming the file, or the kind with the list of known kinds.
std::shared_ptr<InMemoryDataset> open_dataset(const std::string& kind, const std::filesystem::path& path, bool train,
                                              const Hdf5Names& hdf5 = {}, int64_t targets = 0);

}  // namespace hpdl::data
