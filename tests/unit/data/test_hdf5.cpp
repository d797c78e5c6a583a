// The HDF5 reader: files written here with the HDF5 C API (several dtypes and
// ranks, big-endian storage, chunked + deflated) read back bit for bit; each
// error names the file and the dataset and leaves HDF5's own printout off;
// the hdf5 dataset loader; a Fashion-MNIST slice in HDF5 reads the same
// pixels as the idx files.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <numeric>

#include "hpdl/core/error.h"
#include "hpdl/data/dataset.h"
#include "hpdl/data/readers.h"
#include "tests/unit/hdf5_util.h"
#include "tests/unit/test_util.h"

namespace fs = std::filesystem;
using namespace hpdl;
using namespace hpdl::data;
using hpdl::test::DatasetLayout;
using hpdl::test::error_of;
using hpdl::test::H5Writer;

namespace {

template <typename T>
std::vector<T> iota_values(size_t n, double scale, double offset) {
  std::vector<T> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<T>(static_cast<double>(i) * scale + offset);
  return v;
}

template <typename T>
void expect_array(const RawArray& a, DType dtype, const Shape& shape, const std::vector<T>& want) {
  EXPECT_EQ(a.dtype, dtype);
  EXPECT_EQ(a.shape, shape);
  ASSERT_EQ(a.bytes.size(), want.size() * sizeof(T));
  EXPECT_EQ(std::memcmp(a.bytes.data(), want.data(), a.bytes.size()), 0);
}

// An error's text with stderr captured: HDF5 must not print its error stack.
template <typename F>
std::string quiet_error_of(F&& f) {
  testing::internal::CaptureStderr();
  std::string err = error_of(f);
  std::string printed = testing::internal::GetCapturedStderr();
  EXPECT_EQ(printed, "") << "HDF5 printed its error stack";
  return err;
}

void expect_has(const std::string& err, const std::string& part) {
  EXPECT_NE(err.find(part), std::string::npos) << "'" << part << "' is not in: " << err;
}

}  // namespace

TEST(Hdf5, RoundTripDtypesRanksAndLayouts) {
  const fs::path d = test::temp_dir("hdf5_roundtrip");
  const fs::path f = d / "mixed.h5";
  auto f32 = iota_values<float>(12, 0.25, -1.5);
  auto f64 = iota_values<double>(2 * 2 * 3, 1e-3, 1e9);
  auto u8 = iota_values<uint8_t>(5, 50, 3);
  auto i32 = iota_values<int32_t>(2 * 3 * 4 * 2, -7919, 12345);
  int64_t scalar = -(int64_t{1} << 40) - 17;
  auto f32be = iota_values<float>(6, -0.5, 3.0);
  auto big = iota_values<uint8_t>(100 * 7 * 9, 1, 0);  // wraps mod 256
  auto f64c = iota_values<double>(33 * 5, 0.1, -2.0);
  std::vector<int64_t> rank5(2 * 1 * 3 * 1 * 2);
  std::iota(rank5.begin(), rank5.end(), int64_t{-5});
  {
    H5Writer w(f);
    w.write("a/f32", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, {3, 4}, f32);
    w.write("a/b/f64", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, {2, 2, 3}, f64);
    w.write("u8", H5T_STD_U8LE, H5T_NATIVE_UINT8, {5}, u8);
    w.write("i32", H5T_STD_I32LE, H5T_NATIVE_INT32, {2, 3, 4, 2}, i32);
    w.write("scalar", H5T_STD_I64LE, H5T_NATIVE_INT64, {}, &scalar);
    w.write("big_endian", H5T_IEEE_F32BE, H5T_NATIVE_FLOAT, {2, 3}, f32be);
    w.write("rank5", H5T_STD_I64BE, H5T_NATIVE_INT64, {2, 1, 3, 1, 2}, rank5);
    ASSERT_GT(H5Zfilter_avail(H5Z_FILTER_DEFLATE), 0) << "libhdf5 without deflate";
    w.write("compressed/u8", H5T_STD_U8LE, H5T_NATIVE_UINT8, {100, 7, 9}, big, DatasetLayout{{16, 7, 9}, 6, false});
    w.write("compressed/f64", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, {33, 5}, f64c, DatasetLayout{{4, 5}, 1, true});
    w.write("empty", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, {0, 3}, static_cast<const void*>(nullptr));
  }
  expect_array(read_hdf5(f, "a/f32"), DType::f32, {3, 4}, f32);
  expect_array(read_hdf5(f, "/a/b/f64"), DType::f64, {2, 2, 3}, f64);
  expect_array(read_hdf5(f, "u8"), DType::u8, {5}, u8);
  expect_array(read_hdf5(f, "i32"), DType::i32, {2, 3, 4, 2}, i32);
  expect_array(read_hdf5(f, "scalar"), DType::i64, {}, std::vector<int64_t>{scalar});
  expect_array(read_hdf5(f, "big_endian"), DType::f32, {2, 3}, f32be);
  expect_array(read_hdf5(f, "rank5"), DType::i64, {2, 1, 3, 1, 2}, rank5);
  expect_array(read_hdf5(f, "compressed/u8"), DType::u8, {100, 7, 9}, big);
  expect_array(read_hdf5(f, "compressed/f64"), DType::f64, {33, 5}, f64c);
  expect_array(read_hdf5(f, "empty"), DType::f32, {0, 3}, std::vector<float>{});

  EXPECT_EQ(hdf5_version(), fmt::format("{}.{}.{}", H5_VERS_MAJOR, H5_VERS_MINOR, H5_VERS_RELEASE));
  const Hdf5DatasetInfo info = hdf5_dataset_info(f, "compressed/u8");
  EXPECT_EQ(info.dtype, DType::u8);
  EXPECT_EQ(info.shape, (Shape{100, 7, 9}));
  EXPECT_EQ(list_hdf5_datasets(f),
            (std::vector<std::string>{"a/b/f64", "a/f32", "big_endian", "compressed/f64", "compressed/u8", "empty",
                                      "i32", "rank5", "scalar", "u8"}));

  // Converted reads, in row blocks smaller than the dataset (one row, then 10 rows at a time).
  for (size_t block : {size_t{1}, size_t{10 * 5 * 4}}) {
    std::vector<float> conv(33 * 5);
    read_hdf5_into(f, "compressed/f64", DType::f32, conv.data(), conv.size() * sizeof(float), block);
    for (size_t i = 0; i < conv.size(); ++i) ASSERT_EQ(conv[i], static_cast<float>(f64c[i])) << "block " << block;
  }
  std::vector<int64_t> widened(100 * 7 * 9);
  read_hdf5_into(f, "compressed/u8", DType::i64, widened.data(), widened.size() * 8, 7 * 9 * 8 * 3);
  for (size_t i = 0; i < widened.size(); ++i) ASSERT_EQ(widened[i], big[i]);
  std::string err = quiet_error_of([&] { read_hdf5_into(f, "u8", DType::u8, widened.data(), 4); });
  expect_has(err, "needs 5");
}

TEST(Hdf5, MissingFileAndNotHdf5) {
  const fs::path d = test::temp_dir("hdf5_notfile");
  std::string err = quiet_error_of([&] { read_hdf5(d / "absent.h5", "x"); });
  expect_has(err, (d / "absent.h5").string());
  expect_has(err, "no such file");

  test::write_text(d / "text.h5", "this is not HDF5, just text that is long enough to hold a superblock.....\n");
  err = quiet_error_of([&] { read_hdf5(d / "text.h5", "x"); });
  expect_has(err, (d / "text.h5").string());
  expect_has(err, "not an HDF5 file");
}

TEST(Hdf5, MissingDatasetListsTheDatasetsThere) {
  const fs::path f = test::temp_dir("hdf5_missing") / "two.h5";
  std::vector<float> v(4, 1.0f);
  {
    H5Writer w(f);
    w.write("train/images", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, {4}, v);
    w.write("train/labels", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, {4}, v);
  }
  std::string err = quiet_error_of([&] { read_hdf5(f, "test/images"); });
  expect_has(err, f.string());
  expect_has(err, "no dataset 'test/images'");
  expect_has(err, "train/images, train/labels");

  err = quiet_error_of([&] { hdf5_dataset_info(f, "train"); });
  expect_has(err, f.string());
  expect_has(err, "'train' is a group");
  expect_has(err, "train/images, train/labels");

  err = quiet_error_of([&] { read_hdf5(f, "train/images/deeper"); });
  expect_has(err, "no dataset 'train/images/deeper'");
}

TEST(Hdf5, UnsupportedTypesNameFileAndDataset) {
  const fs::path f = test::temp_dir("hdf5_types") / "types.h5";
  std::vector<int16_t> i16{1, 2, 3};
  std::vector<uint32_t> u32{1, 2, 3};
  {
    H5Writer w(f);
    w.write("i16", H5T_STD_I16LE, H5T_NATIVE_INT16, {3}, i16);
    w.write("u32", H5T_STD_U32LE, H5T_NATIVE_UINT32, {3}, u32);
    hid_t str = H5Tcopy(H5T_C_S1);
    H5Tset_size(str, 4);
    w.write("text", str, str, {2}, static_cast<const void*>("abcdefgh"));
    H5Tclose(str);
  }
  std::string err = quiet_error_of([&] { read_hdf5(f, "i16"); });
  expect_has(err, f.string() + ": dataset 'i16'");
  expect_has(err, "16-bit signed integer type is not supported");
  err = quiet_error_of([&] { read_hdf5(f, "u32"); });
  expect_has(err, f.string() + ": dataset 'u32'");
  expect_has(err, "32-bit unsigned");
  err = quiet_error_of([&] { hdf5_dataset_info(f, "text"); });
  expect_has(err, f.string() + ": dataset 'text'");
  expect_has(err, "string type");
}

TEST(Hdf5, TruncatedAndCorruptFiles) {
  const fs::path d = test::temp_dir("hdf5_corrupt");
  const fs::path f = d / "good.h5";
  auto values = iota_values<double>(64 * 32, 0.5, 1.0);
  {
    H5Writer w(f);
    w.write("x", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, {64, 32}, values, DatasetLayout{{16, 32}, 4, true});
  }
  expect_array(read_hdf5(f, "x"), DType::f64, {64, 32}, values);
  const std::string bytes = test::read_text(f);

  // Truncated: the superblock's end-of-file address is past the end.
  test::write_text(d / "truncated.h5", bytes.substr(0, bytes.size() / 2));
  std::string err = quiet_error_of([&] { read_hdf5(d / "truncated.h5", "x"); });
  expect_has(err, (d / "truncated.h5").string());
  expect_has(err, "truncated or corrupt");

  // Corrupt: flip bytes inside the first chunk (deflated, fletcher32-checked); the header stays intact.
  haddr_t addr = 0;
  hsize_t size = 0;
  {
    hid_t file = H5Fopen(f.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    hid_t ds = H5Dopen2(file, "x", H5P_DEFAULT);
    hid_t space = H5Dget_space(ds);
    unsigned mask = 0;
    hsize_t offset[2];
    ASSERT_GE(H5Dget_chunk_info(ds, space, 0, offset, &mask, &addr, &size), 0);
    H5Sclose(space);
    H5Dclose(ds);
    H5Fclose(file);
  }
  ASSERT_GT(size, 8u);
  std::string bad = bytes;
  for (hsize_t k = size / 2; k < size / 2 + 4; ++k) bad[addr + k] = static_cast<char>(~bad[addr + k]);
  test::write_text(d / "corrupt.h5", bad);
  err = quiet_error_of([&] { read_hdf5(d / "corrupt.h5", "x"); });
  expect_has(err, (d / "corrupt.h5").string() + ": dataset 'x'");
  expect_has(err, "truncated or corrupt");
  expect_has(err, "(HDF5: ");

  // HDF5's own error printing is switched off only while hpdl reads: the host's setting is back.
  H5E_auto2_t func = nullptr;
  void* data = nullptr;
  H5Eget_auto2(H5E_DEFAULT, &func, &data);
  EXPECT_NE(func, nullptr);
}

TEST(Hdf5, DatasetLoaderShapesDtypesAndLabels) {
  const fs::path d = test::temp_dir("hdf5_loader");
  const fs::path f = d / "data.h5";
  auto img = iota_values<uint8_t>(6 * 4 * 5, 1, 0);
  auto chw = iota_values<double>(3 * 2 * 4 * 4, 0.01, -0.5);
  auto feat = iota_values<float>(5 * 7, 0.5, 0.0);
  std::vector<int32_t> y6{0, 1, 2, 3, 4, 5};
  std::vector<uint8_t> y3{2, 0, 1};
  std::vector<int64_t> y5{1, 1, 0, 0, 9};
  std::vector<float> yf{0, 1, 0};
  std::vector<int32_t> yneg{0, -1, 0};
  {
    H5Writer w(f);
    w.write("train/images", H5T_STD_U8LE, H5T_NATIVE_UINT8, {6, 4, 5}, img);
    w.write("train/labels", H5T_STD_I32LE, H5T_NATIVE_INT32, {6}, y6);
    w.write("test/images", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, {3, 2, 4, 4}, chw);
    w.write("test/labels", H5T_STD_U8LE, H5T_NATIVE_UINT8, {3}, y3);
    w.write("feat/x", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, {5, 7}, feat);
    w.write("feat/y", H5T_STD_I64LE, H5T_NATIVE_INT64, {5}, y5);
    w.write("bad/yf", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, {3}, yf);
    w.write("bad/yneg", H5T_STD_I32LE, H5T_NATIVE_INT32, {3}, yneg);
  }
  auto train = open_dataset("hdf5", f, true);  // the default names train/{images,labels}, test/{images,labels}
  ASSERT_EQ(train->size(), 6);
  EXPECT_EQ(train->sample_shape(), (Shape{1, 4, 5}));
  EXPECT_EQ(train->storage_dtype(), DType::u8);
  std::vector<float> s(20);
  EXPECT_EQ(train->get(3, s.data()), 3);
  for (size_t k = 0; k < 20; ++k) ASSERT_EQ(s[k], static_cast<float>(img[60 + k]) * (1.0f / 255.0f));

  auto test = open_dataset("hdf5", f, false);
  ASSERT_EQ(test->size(), 3);
  EXPECT_EQ(test->sample_shape(), (Shape{2, 4, 4}));
  std::vector<float> t(32);
  EXPECT_EQ(test->get(2, t.data()), 1);
  for (size_t k = 0; k < 32; ++k) ASSERT_EQ(t[k], static_cast<float>(chw[64 + k]));

  Hdf5Names names;
  names.train_x = "/feat/x", names.train_y = "feat/y";
  auto features = open_dataset("hdf5", f, true, names);
  EXPECT_EQ(features->sample_shape(), (Shape{1, 1, 7}));
  std::vector<float> fv(7);
  EXPECT_EQ(features->get(4, fv.data()), 9);
  for (size_t k = 0; k < 7; ++k) ASSERT_EQ(fv[k], feat[28 + k]);

  std::string err = quiet_error_of([&] { load_hdf5(f, "test/images", "bad/yf"); });
  expect_has(err, f.string());
  expect_has(err, "'bad/yf'");
  expect_has(err, "must be integers");
  err = quiet_error_of([&] { load_hdf5(f, "test/images", "bad/yneg"); });
  expect_has(err, "'bad/yneg': label -1 of sample 1 is negative");
  err = quiet_error_of([&] { load_hdf5(f, "train/images", "test/labels"); });
  expect_has(err, "'test/labels' has shape [3]; expected 6 labels");
  err = quiet_error_of([&] { load_hdf5(f, "train/labels", "train/labels"); });
  expect_has(err, "'train/labels' has shape [6]; expected samples");
  err = quiet_error_of([&] { load_hdf5(f, "train/images", "train/missing"); });
  expect_has(err, "no dataset 'train/missing'");
  err = error_of([&] { open_dataset("hdf5", "", true); });
  expect_has(err, "needs data.path");
}

// A slice of Fashion-MNIST written to HDF5 (chunked, deflated) reads back the same pixels and labels as the idx files.
TEST(Hdf5, FashionMnistSliceMatchesIdx) {
  const fs::path dir = kFashionMnistDir;
  ASSERT_TRUE(fs::exists(dir / "t10k-images-idx3-ubyte.gz"))
      << dir << " is missing: install the Debian package dataset-fashion-mnist (scripts/setup.sh does)";
  RawArray images = read_idx(dir / "t10k-images-idx3-ubyte.gz");
  RawArray labels = read_idx(dir / "t10k-labels-idx1-ubyte.gz");
  ASSERT_EQ(images.shape, (Shape{10000, 28, 28}));
  constexpr hsize_t n = 1000;
  const fs::path f = test::temp_dir("hdf5_fmnist") / "fmnist.h5";
  {
    H5Writer w(f);
    w.write("test/images", H5T_STD_U8LE, H5T_NATIVE_UINT8, {n, 28, 28}, images.bytes.data(),
            DatasetLayout{{128, 28, 28}, 4, false});
    w.write("test/labels", H5T_STD_U8LE, H5T_NATIVE_UINT8, {n}, labels.bytes.data());
  }
  RawArray back = read_hdf5(f, "test/images");
  EXPECT_EQ(back.dtype, DType::u8);
  EXPECT_EQ(back.shape, (Shape{n, 28, 28}));
  ASSERT_EQ(back.bytes.size(), n * 784);
  EXPECT_TRUE(std::equal(back.bytes.begin(), back.bytes.end(), images.bytes.begin()));

  auto from_idx = load_mnist_idx(dir, false);
  auto from_h5 = load_hdf5(f, "test/images", "test/labels");
  ASSERT_EQ(from_h5->size(), static_cast<int64_t>(n));
  EXPECT_EQ(from_h5->sample_shape(), from_idx->sample_shape());
  std::vector<float> a(784), b(784);
  for (int64_t i = 0; i < static_cast<int64_t>(n); ++i) {
    ASSERT_EQ(from_h5->get(i, a.data()), from_idx->get(i, b.data())) << "label of sample " << i;
    ASSERT_EQ(a, b) << "pixels of sample " << i;
  }
}
