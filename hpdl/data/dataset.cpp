// InMemoryDataset, the MNIST-family loader built on the idx reader, and the
// npy, csv and hdf5 dataset loaders.
#include "hpdl/data/dataset.h"

#include <algorithm>
#include <cstring>

#include "hpdl/core/error.h"
#include "hpdl/data/readers.h"

namespace hpdl::data {

InMemoryDataset::InMemoryDataset(Shape sample_shape, std::vector<uint8_t> images, std::vector<int64_t> labels)
    : sample_shape_(std::move(sample_shape)), u8_(std::move(images)), labels_(std::move(labels)) {
  HPDL_CHECK(static_cast<int64_t>(u8_.size()) == size() * numel_of(sample_shape_),
             "InMemoryDataset: {} image bytes for {} labels of shape {}", u8_.size(), labels_.size(),
             shape_str(sample_shape_));
}

InMemoryDataset::InMemoryDataset(Shape sample_shape, std::vector<float> images, std::vector<int64_t> labels)
    : sample_shape_(std::move(sample_shape)), f32_(std::move(images)), labels_(std::move(labels)) {
  HPDL_CHECK(static_cast<int64_t>(f32_.size()) == size() * numel_of(sample_shape_),
             "InMemoryDataset: {} image values for {} labels of shape {}", f32_.size(), labels_.size(),
             shape_str(sample_shape_));
}

SubsetDataset::SubsetDataset(std::shared_ptr<const Dataset> base, int64_t first, int64_t count)
    : base_(std::move(base)), first_(first), count_(count) {
  HPDL_CHECK(base_ != nullptr, "SubsetDataset: no base dataset");
  HPDL_CHECK(first >= 0 && count >= 0 && first + count <= base_->size(),
             "SubsetDataset: samples [{}, {}) are not within the base dataset's {}", first, first + count, base_->size());
}

int64_t SubsetDataset::get(int64_t i, float* out) const {
  HPDL_CHECK(i >= 0 && i < count_, "SubsetDataset: index {} out of range [0, {})", i, count_);
  return base_->get(first_ + i, out);
}

void Dataset::get_targets(int64_t, float*) const {
  HPDL_FAIL("this dataset has integer class labels, not float regression targets (use a classification loss, or "
            "float targets from npy, csv or hdf5)");
}

void SubsetDataset::get_targets(int64_t i, float* out) const {
  HPDL_CHECK(i >= 0 && i < count_, "SubsetDataset: index {} out of range [0, {})", i, count_);
  base_->get_targets(first_ + i, out);
}

void InMemoryDataset::set_targets(std::vector<float> targets, int64_t per_sample) {
  HPDL_CHECK(per_sample > 0 && static_cast<int64_t>(targets.size()) == size() * per_sample,
             "InMemoryDataset: {} target values for {} samples of {} targets each", targets.size(), size(), per_sample);
  targets_ = std::move(targets);
  target_size_ = per_sample;
}

void InMemoryDataset::get_targets(int64_t i, float* out) const {
  if (target_size_ == 0) return Dataset::get_targets(i, out);
  HPDL_CHECK(i >= 0 && i < size(), "InMemoryDataset: index {} out of range [0, {})", i, size());
  std::copy_n(targets_.data() + i * target_size_, target_size_, out);
}

int64_t InMemoryDataset::get(int64_t i, float* out) const {
  HPDL_CHECK(i >= 0 && i < size(), "InMemoryDataset: index {} out of range [0, {})", i, size());
  const int64_t n = numel_of(sample_shape_);
  if (!f32_.empty()) {
    std::copy_n(f32_.data() + i * n, n, out);
  } else {
    const uint8_t* src = u8_.data() + i * n;
    for (int64_t k = 0; k < n; ++k) out[k] = static_cast<float>(src[k]) * (1.0f / 255.0f);
  }
  return labels_[static_cast<size_t>(i)];
}

std::shared_ptr<InMemoryDataset> load_mnist_idx(const std::filesystem::path& dir, bool train) {
  const std::string prefix = train ? "train" : "t10k";
  auto pick = [&](const std::string& stem) {
    std::filesystem::path gz = dir / (stem + ".gz"), plain = dir / stem;
    std::error_code ec;
    return std::filesystem::exists(plain, ec) ? plain : gz;  // read_idx names the .gz when neither exists
  };
  std::filesystem::path img_path = pick(prefix + "-images-idx3-ubyte");
  std::filesystem::path lbl_path = pick(prefix + "-labels-idx1-ubyte");
  RawArray images = read_idx(img_path);
  RawArray labels = read_idx(lbl_path);
  HPDL_CHECK(images.shape.size() == 3, "{}: expected images of dims [N, H, W], got {}", img_path.string(),
             shape_str(images.shape));
  HPDL_CHECK(labels.shape.size() == 1 && labels.shape[0] == images.shape[0],
             "{}: {} labels for the {} images of {}", lbl_path.string(), shape_str(labels.shape), images.shape[0],
             img_path.string());
  std::vector<int64_t> lbl(labels.bytes.begin(), labels.bytes.end());
  for (size_t i = 0; i < lbl.size(); ++i)
    HPDL_CHECK(lbl[i] <= 9, "{}: label {} of sample {} is outside 0..9", lbl_path.string(), lbl[i], i);
  return std::make_shared<InMemoryDataset>(Shape{1, images.shape[1], images.shape[2]}, std::move(images.bytes),
                                           std::move(lbl));
}

namespace {

// Regression targets y [N] or [N, k] (float) as float32 values, refusing what does not fit: `what`
// names the file (and dataset), `targets` is the k the model's outputs ask for.
std::vector<float> float_targets(const std::string& what, DType dtype, const Shape& shape, int64_t n, int64_t targets) {
  HPDL_CHECK(dtype == DType::f32 || dtype == DType::f64, "{}: holds {} {} class labels, but a regression loss "
             "(train.loss = mse, l1 or huber) needs float targets (float32 or float64) of shape [N] or [N, k]; store "
             "them as floats, or train with train.loss = \"cross_entropy\"", what, dtype_name(dtype), shape_str(shape));
  const bool fits = shape.size() >= 1 && shape.size() <= 2 && shape[0] == n &&
                    (shape.size() == 1 ? targets == 1 : shape[1] == targets);
  HPDL_CHECK(fits, "{}: targets of shape {}, but the {} samples and the model's {} outputs (model.num_classes) ask "
             "for [{}, {}]{}", what, shape_str(shape), n, targets, n, targets, targets == 1 ? fmt::format(" or [{}]", n) : "");
  return std::vector<float>(static_cast<size_t>(n * targets));
}

std::shared_ptr<InMemoryDataset> open_npy(const std::filesystem::path& dir, bool train, int64_t targets) {
  const std::string split = train ? "train" : "test";
  const std::filesystem::path xp = dir / (split + "_x.npy"), yp = dir / (split + "_y.npy");
  RawArray x = read_npy(xp);
  RawArray y = read_npy(yp);
  HPDL_CHECK(x.shape.size() >= 2 && x.shape.size() <= 4, "{}: expected samples of dims [N, C, H, W], [N, H, W] or "
             "[N, D], got {}", xp.string(), shape_str(x.shape));
  const int64_t n = x.shape[0];
  std::vector<float> t;
  if (targets > 0) {
    t = float_targets(yp.string(), y.dtype, y.shape, n, targets);
    for (size_t i = 0; i < t.size(); ++i) {
      if (y.dtype == DType::f32) {
        std::memcpy(&t[i], y.bytes.data() + 4 * i, 4);
      } else {
        double d;
        std::memcpy(&d, y.bytes.data() + 8 * i, 8);
        t[i] = static_cast<float>(d);
      }
    }
  } else {
    HPDL_CHECK(y.shape == Shape{n}, "{}: expected {} labels of shape [{}], got {}", yp.string(), n, n,
               shape_str(y.shape));
  }
  Shape sample(x.shape.begin() + 1, x.shape.end());
  if (sample.size() == 2) sample.insert(sample.begin(), 1);
  if (sample.size() == 1) sample.insert(sample.begin(), {1, 1});  // features [D] -> [1, 1, D], as for HDF5 and CSV
  std::vector<int64_t> labels(static_cast<size_t>(n));
  for (int64_t i = 0; i < n && targets == 0; ++i) {
    int64_t v = 0;
    switch (y.dtype) {
      case DType::u8: v = y.bytes[static_cast<size_t>(i)]; break;
      case DType::i32: { int32_t t; std::memcpy(&t, y.bytes.data() + 4 * i, 4); v = t; break; }
      case DType::i64: std::memcpy(&v, y.bytes.data() + 8 * i, 8); break;
      default: HPDL_FAIL("{}: labels must be integers (|u1, <i4, <i8), got {}{}", yp.string(), dtype_name(y.dtype),
                         y.dtype == DType::f32 || y.dtype == DType::f64
                             ? " (float targets are for a regression loss: train.loss = mse, l1 or huber)" : "");
    }
    HPDL_CHECK(v >= 0, "{}: label {} of sample {} is negative", yp.string(), v, i);
    labels[static_cast<size_t>(i)] = v;
  }
  std::shared_ptr<InMemoryDataset> ds;
  if (x.dtype == DType::u8) {
    ds = std::make_shared<InMemoryDataset>(sample, std::move(x.bytes), std::move(labels));
    if (targets > 0) ds->set_targets(std::move(t), targets);
    return ds;
  }
  std::vector<float> f(static_cast<size_t>(x.numel()));
  if (x.dtype == DType::f32) {
    std::memcpy(f.data(), x.bytes.data(), x.bytes.size());
  } else if (x.dtype == DType::f64) {
    for (size_t i = 0; i < f.size(); ++i) {
      double d;
      std::memcpy(&d, x.bytes.data() + 8 * i, 8);
      f[i] = static_cast<float>(d);
    }
  } else {
    HPDL_FAIL("{}: samples must be |u1, <f4 or <f8, got {}", xp.string(), dtype_name(x.dtype));
  }
  ds = std::make_shared<InMemoryDataset>(sample, std::move(f), std::move(labels));
  if (targets > 0) ds->set_targets(std::move(t), targets);
  return ds;
}

}  // namespace

std::shared_ptr<InMemoryDataset> load_hdf5(const std::filesystem::path& file, const std::string& x_name,
                                           const std::string& y_name, int64_t targets) {
  const std::string f = file.string();
  const Hdf5DatasetInfo xi = hdf5_dataset_info(file, x_name);
  const Hdf5DatasetInfo yi = hdf5_dataset_info(file, y_name);
  HPDL_CHECK(xi.shape.size() >= 2 && xi.shape.size() <= 4, "{}: dataset '{}' has shape {}; expected samples of dims "
             "[N, C, H, W], [N, H, W] or [N, F]", f, x_name, shape_str(xi.shape));
  const int64_t n = xi.shape[0];
  std::vector<float> t;
  if (targets > 0) {
    t = float_targets(fmt::format("{}: dataset '{}'", f, y_name), yi.dtype, yi.shape, n, targets);
    read_hdf5_into(file, y_name, DType::f32, t.data(), t.size() * sizeof(float));
  }
  HPDL_CHECK(targets > 0 || yi.shape == Shape{n}, "{}: dataset '{}' has shape {}; expected {} labels of shape [{}] for the samples "
             "of '{}'", f, y_name, shape_str(yi.shape), n, n, x_name);
  HPDL_CHECK(targets > 0 || yi.dtype == DType::u8 || yi.dtype == DType::i32 || yi.dtype == DType::i64, "{}: dataset "
             "'{}' holds {} labels; class labels must be integers (uint8, int32, int64){}", f, y_name,
             dtype_name(yi.dtype), yi.dtype == DType::f32 || yi.dtype == DType::f64
                 ? " (float targets are for a regression loss: train.loss = mse, l1 or huber)" : "");
  HPDL_CHECK(xi.dtype == DType::u8 || xi.dtype == DType::f32 || xi.dtype == DType::f64, "{}: dataset '{}' holds {} "
             "samples; hpdl trains on uint8 (scaled to [0, 1]), float32 or float64", f, x_name, dtype_name(xi.dtype));
  Shape sample(xi.shape.begin() + 1, xi.shape.end());
  if (sample.size() == 1) sample.insert(sample.begin(), {1, 1});
  if (sample.size() == 2) sample.insert(sample.begin(), 1);

  std::vector<int64_t> labels(static_cast<size_t>(n));
  if (targets == 0) read_hdf5_into(file, y_name, DType::i64, labels.data(), labels.size() * sizeof(int64_t));
  for (int64_t i = 0; i < n; ++i)
    HPDL_CHECK(labels[static_cast<size_t>(i)] >= 0, "{}: dataset '{}': label {} of sample {} is negative", f, y_name,
               labels[static_cast<size_t>(i)], i);
  const size_t count = static_cast<size_t>(numel_of(xi.shape));
  if (xi.dtype == DType::u8) {
    std::vector<uint8_t> x(count);
    read_hdf5_into(file, x_name, DType::u8, x.data(), x.size());
    auto ds = std::make_shared<InMemoryDataset>(sample, std::move(x), std::move(labels));
    if (targets > 0) ds->set_targets(std::move(t), targets);
    return ds;
  }
  std::vector<float> x(count);
  read_hdf5_into(file, x_name, DType::f32, x.data(), x.size() * sizeof(float));
  auto ds = std::make_shared<InMemoryDataset>(sample, std::move(x), std::move(labels));
  if (targets > 0) ds->set_targets(std::move(t), targets);
  return ds;
}

std::shared_ptr<InMemoryDataset> open_dataset(const std::string& kind, const std::filesystem::path& path, bool train,
                                              const Hdf5Names& hdf5, int64_t targets) {
  HPDL_CHECK(targets == 0 || kind == "npy" || kind == "csv" || kind == "hdf5", "dataset '{}' has class labels only; "
             "regression (float targets) reads npy, csv or hdf5 (data.dataset)", kind);
  if (kind == "fashion-mnist") return load_mnist_idx(path.empty() ? std::filesystem::path(kFashionMnistDir) : path, train);
  if (kind == "mnist") {
    HPDL_CHECK(!path.empty(), "dataset 'mnist' needs data.path: the directory of the four MNIST idx files");
    return load_mnist_idx(path, train);
  }
  if (kind == "hdf5") {
    HPDL_CHECK(!path.empty(), "dataset 'hdf5' needs data.path: the HDF5 file (e.g. data.path = \"data.h5\")");
    return train ? load_hdf5(path, hdf5.train_x, hdf5.train_y, targets)
                 : load_hdf5(path, hdf5.test_x, hdf5.test_y, targets);
  }
  HPDL_CHECK(!path.empty(), "dataset '{}' needs data.path (a directory)", kind);
  if (kind == "npy") return open_npy(path, train, targets);
  if (kind == "csv") {
    const std::filesystem::path p = path / (train ? "train.csv" : "test.csv");
    if (targets > 0) {
      // Regression: every column is read as a float; the last `targets` columns are the targets.
      CsvOptions o;
      o.label_column = CsvOptions::kNoLabel;
      CsvTable t = read_csv(p, o);
      HPDL_CHECK(t.rows > 0, "{}: no data rows", p.string());
      HPDL_CHECK(t.cols > targets, "{}: {} columns, but the model's {} outputs (model.num_classes) take the last {} as "
                 "targets and leave no feature column", p.string(), t.cols, targets, targets);
      const int64_t d = t.cols - targets;
      std::vector<float> x(static_cast<size_t>(t.rows * d)), y(static_cast<size_t>(t.rows * targets));
      for (int64_t r = 0; r < t.rows; ++r) {
        std::copy_n(t.features.data() + r * t.cols, d, x.data() + r * d);
        std::copy_n(t.features.data() + r * t.cols + d, targets, y.data() + r * targets);
      }
      auto ds = std::make_shared<InMemoryDataset>(Shape{1, 1, d}, std::move(x), std::vector<int64_t>(t.rows));
      ds->set_targets(std::move(y), targets);
      return ds;
    }
    CsvTable t = read_csv(p);
    HPDL_CHECK(t.rows > 0, "{}: no data rows", p.string());
    // Feature rows are samples [1, 1, D]: one channel, so mlp and the normalization take them.
    return std::make_shared<InMemoryDataset>(Shape{1, 1, t.cols}, std::move(t.features), std::move(t.labels));
  }
  HPDL_FAIL("unknown dataset '{}' (known: fashion-mnist, mnist, npy, csv, hdf5; packed stores open through hpdl/store)", kind);
}

}  // namespace hpdl::data
