// InMemoryDataset and the MNIST-family loader built on the idx reader.
#include "hpdl/data/dataset.h"

#include <algorithm>

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

}  // namespace hpdl::data
