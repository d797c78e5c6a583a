// File readers for datasets and prediction inputs: idx (MNIST, Fashion-MNIST;
// gzipped or plain), NumPy .npy, HDF5 datasets, numeric CSV, and PNG images. Each checks the
// format's own header (magic, dims, dtype) against the file size and throws
// hpdl::Error naming the file, with a hint when the fix is known.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "hpdl/core/dtype.h"
#include "hpdl/core/shape.h"

namespace hpdl::data {

// A dense, C-ordered array read from a file: raw little-endian bytes + dtype + shape.
struct RawArray {
  DType dtype = DType::u8;
  Shape shape;
  std::vector<uint8_t> bytes;  // numel(shape) * dtype_size(dtype)
  int64_t numel() const { return numel_of(shape); }
};

// ---- idx ----
// Reads an idx file (magic 0x0000 TT DD, big-endian dims); gzip is detected by
// its magic, not the name. Only unsigned-byte data (type 0x08) is accepted,
// which is what MNIST-family files hold. Checks the payload size exactly.
// A missing file under the Fashion-MNIST directory names the Debian package.
RawArray read_idx(const std::filesystem::path& path);

// The directory of Debian's dataset-fashion-mnist package.
inline constexpr const char* kFashionMnistDir = "/usr/share/datasets/fashion-mnist";

// ---- npy ----
// NumPy .npy, format versions 1.0, 2.0 and 3.0; dtypes <f4 <f8 |u1 <i8 <i4 (and
// '=' for native little-endian). Fortran order and other dtypes are refused.
RawArray read_npy(const std::filesystem::path& path);
// Writes a C-ordered .npy (version 1.0) atomically. dtype: f32, f64, u8, i64, i32.
void write_npy(const std::filesystem::path& path, DType dtype, const Shape& shape, const void* data);

// ---- hdf5 ----
// Datasets of an HDF5 file (the serial HDF5 C library). `dataset` is the path
// inside the file, "train/images" or "/train/images". Supported datatypes:
// float32, float64, uint8, int32, int64 (either byte order; HDF5 converts to
// little-endian native); any rank, a scalar has shape []. Chunked and
// compressed datasets read like contiguous ones (deflate is built into
// Debian's libhdf5). Every function throws hpdl::Error naming the file and the
// dataset for: a missing file, a file that is not HDF5, a truncated or corrupt
// file (with HDF5's innermost message; HDF5's own printout is silenced), a
// missing dataset (the message lists the datasets the file holds), a group
// given as a dataset, and an unsupported datatype. Calls are serialized (the
// serial library is not thread-safe).
struct Hdf5DatasetInfo {
  DType dtype = DType::u8;
  Shape shape;
};
// The dtype and shape of a dataset, without reading its values.
Hdf5DatasetInfo hdf5_dataset_info(const std::filesystem::path& path, const std::string& dataset);
// Reads a whole dataset in its own dtype.
RawArray read_hdf5(const std::filesystem::path& path, const std::string& dataset);
// Reads a whole dataset converted to `as` (f32, f64, u8, i32, i64; numeric
// conversion by HDF5, no scaling) into dst, which must hold exactly
// numel * dtype_size(as) bytes. Reads blocks of whole rows of axis 0, about
// block_bytes each (at least one row), straight into dst, so no second copy of
// the dataset is made.
void read_hdf5_into(const std::filesystem::path& path, const std::string& dataset, DType as, void* dst,
                    size_t dst_bytes, size_t block_bytes = size_t{64} << 20);
// The paths of all datasets in the file (hard links only), sorted, without a leading "/".
std::vector<std::string> list_hdf5_datasets(const std::filesystem::path& path);
// The version of the HDF5 library hpdl runs with, e.g. "1.10.8" (for `hpdl info`).
std::string hdf5_version();

// ---- csv ----
struct CsvOptions {
  static constexpr int kNoLabel = 1 << 30;
  // -1: detect (a first row with a non-numeric field is a header); 0: no; 1: yes.
  int header = -1;
  // Column holding the integer class label; negative counts from the end (-1:
  // the last column); kNoLabel when the file has none.
  int label_column = -1;
  char delimiter = ',';
};
struct CsvTable {
  std::vector<std::string> column_names;  // feature columns, from the header or "c0", "c1", ...
  int64_t rows = 0, cols = 0;             // cols counts feature columns
  std::vector<float> features;            // [rows, cols]
  std::vector<int64_t> labels;            // [rows], empty without a label column
};
// Reads a numeric CSV. Errors name the file, line and column of the bad field.
CsvTable read_csv(const std::filesystem::path& path, const CsvOptions& options = {});

// ---- png ----
struct Image {
  int64_t channels = 0, height = 0, width = 0;  // C = 1 (gray) or 3 (RGB)
  std::vector<uint8_t> pixels;                  // [C, H, W] (planar, as a tensor wants it)
};
// Reads a PNG as grayscale (gray or gray+alpha files) or RGB (any other colour
// type; alpha is composited onto black; 16-bit reduced to 8). `channels` forces
// 1 or 3; 0 keeps the file's.
Image read_png(const std::filesystem::path& path, int channels = 0);
// Writes an [C, H, W] uint8 image (C = 1 or 3) as PNG, atomically.
void write_png(const std::filesystem::path& path, const Image& image);

}  // namespace hpdl::data
