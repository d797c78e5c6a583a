// Readers: the real Fashion-MNIST idx files (a missing package is a failure,
// not a skip: CI installs dataset-fashion-mnist), idx header checks, .npy and
// CSV round trips and their errors, PNG round trip.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <fstream>

#include "hpdl/core/error.h"
#include "hpdl/data/dataset.h"
#include "hpdl/data/readers.h"
#include "tests/unit/test_util.h"

namespace fs = std::filesystem;
using namespace hpdl::test;
using namespace hpdl;
using namespace hpdl::data;

namespace {

}  // namespace

TEST(Idx, FashionMnistTrainAndTest) {
  const fs::path dir = kFashionMnistDir;
  ASSERT_TRUE(fs::exists(dir / "train-images-idx3-ubyte.gz"))
      << dir << " is missing: install the Debian package dataset-fashion-mnist (scripts/setup.sh does)";
  auto train = load_mnist_idx(dir, true);
  auto test = load_mnist_idx(dir, false);
  EXPECT_EQ(train->size(), 60000);
  EXPECT_EQ(test->size(), 10000);
  EXPECT_EQ(train->sample_shape(), (Shape{1, 28, 28}));
  std::vector<int64_t> counts(10, 0);
  for (int64_t l : train->labels()) {
    ASSERT_GE(l, 0);
    ASSERT_LE(l, 9);
    ++counts[static_cast<size_t>(l)];
  }
  for (int64_t c : counts) EXPECT_EQ(c, 6000);  // Fashion-MNIST is balanced
  std::vector<float> img(28 * 28);
  train->get(0, img.data());
  float lo = 1, hi = 0;
  for (float v : img) lo = std::min(lo, v), hi = std::max(hi, v);
  EXPECT_GE(lo, 0.0f);
  EXPECT_LE(hi, 1.0f);
  EXPECT_GT(hi, 0.5f);  // a real image, not zeros
}

TEST(Idx, MissingFileNamesThePackage) {
  std::string err = error_of([] { read_idx("/usr/share/datasets/fashion-mnist/nonexistent-idx3-ubyte.gz"); });
  EXPECT_NE(err.find("nonexistent-idx3-ubyte.gz"), std::string::npos) << err;
  EXPECT_NE(err.find("dataset-fashion-mnist"), std::string::npos) << err;
  EXPECT_NE(err.find("scripts/setup.sh"), std::string::npos) << err;
}

TEST(Idx, PlainFileAndHeaderChecks) {
  fs::path d = temp_dir("idx");
  // 2 x 3 unsigned bytes, plain (not gzipped).
  std::string ok("\x00\x00\x08\x02\x00\x00\x00\x02\x00\x00\x00\x03\x01\x02\x03\x04\x05\x06", 18);
  write_text(d / "ok-idx2", ok);
  RawArray a = read_idx(d / "ok-idx2");
  EXPECT_EQ(a.shape, (Shape{2, 3}));
  EXPECT_EQ(a.bytes[5], 6);
  write_text(d / "short", ok.substr(0, 15));
  EXPECT_NE(error_of([&] { read_idx(d / "short"); }).find("truncated"), std::string::npos);
  write_text(d / "long", ok + "x");
  EXPECT_NE(error_of([&] { read_idx(d / "long"); }).find("trailing"), std::string::npos);
  std::string bad = ok;
  bad[0] = 1;
  write_text(d / "magic", bad);
  EXPECT_NE(error_of([&] { read_idx(d / "magic"); }).find("not an idx file"), std::string::npos);
  // gzip of the same bytes (gzip is detected by content, not by name).
  ASSERT_EQ(std::system(("gzip -c " + (d / "ok-idx2").string() + " > " + (d / "ok.gz").string()).c_str()), 0);
  EXPECT_EQ(read_idx(d / "ok.gz").bytes, a.bytes);
  fs::remove_all(d);
}

TEST(Npy, RoundTripDtypesAndShapes) {
  fs::path d = temp_dir("npy");
  std::vector<float> f{1.5f, -2, 3, 4, 5, 6};
  write_npy(d / "f.npy", DType::f32, {2, 3}, f.data());
  RawArray r = read_npy(d / "f.npy");
  EXPECT_EQ(r.dtype, DType::f32);
  EXPECT_EQ(r.shape, (Shape{2, 3}));
  EXPECT_EQ(std::memcmp(r.bytes.data(), f.data(), 24), 0);
  std::vector<int64_t> l{7, 8, 9};
  write_npy(d / "l.npy", DType::i64, {3}, l.data());
  r = read_npy(d / "l.npy");
  EXPECT_EQ(r.shape, (Shape{3}));
  EXPECT_EQ(r.dtype, DType::i64);
  std::vector<uint8_t> u{1, 2, 3, 4};
  write_npy(d / "u.npy", DType::u8, {1, 2, 2}, u.data());
  EXPECT_EQ(read_npy(d / "u.npy").bytes, u);
  std::vector<double> s{3.25};
  write_npy(d / "s.npy", DType::f64, {}, s.data());
  EXPECT_EQ(read_npy(d / "s.npy").shape, Shape{});
  // Header is a multiple of 64 bytes, as NumPy requires.
  EXPECT_EQ((fs::file_size(d / "f.npy") - 24) % 64, 0u);
  fs::remove_all(d);
}

TEST(Npy, FortranOrderAndUnsupportedDtypesAreErrors) {
  fs::path d = temp_dir("npybad");
  auto make = [&](const std::string& dict, size_t data) {
    std::string h = dict;
    h.append((64 - (10 + h.size() + 1) % 64) % 64, ' ');
    h += '\n';
    std::string s = "\x93NUMPY";
    s += '\x01';
    s += '\x00';
    s += static_cast<char>(h.size() & 0xff);
    s += static_cast<char>(h.size() >> 8);
    write_text(d / "x.npy", s + h + std::string(data, '\0'));
  };
  make("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }", 16);
  std::string err = error_of([&] { read_npy(d / "x.npy"); });
  EXPECT_NE(err.find("Fortran"), std::string::npos) << err;
  EXPECT_NE(err.find("x.npy"), std::string::npos) << err;
  make("{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }", 8);
  EXPECT_NE(error_of([&] { read_npy(d / "x.npy"); }).find(">f4"), std::string::npos);
  make("{'descr': '<c8', 'fortran_order': False, 'shape': (2,), }", 16);
  EXPECT_NE(error_of([&] { read_npy(d / "x.npy"); }).find("<c8"), std::string::npos);
  make("{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }", 8);
  EXPECT_NE(error_of([&] { read_npy(d / "x.npy"); }).find("truncated"), std::string::npos);
  fs::remove_all(d);
}

TEST(Csv, HeaderDetectionLabelColumnAndErrors) {
  fs::path d = temp_dir("csv");
  write_text(d / "a.csv", "x,y,label\n1.5,2,0\n-3,4e1,2\n\n");
  CsvTable t = read_csv(d / "a.csv");
  EXPECT_EQ(t.rows, 2);
  EXPECT_EQ(t.cols, 2);
  EXPECT_EQ(t.column_names, (std::vector<std::string>{"x", "y"}));
  EXPECT_EQ(t.features, (std::vector<float>{1.5f, 2, -3, 40}));
  EXPECT_EQ(t.labels, (std::vector<int64_t>{0, 2}));
  write_text(d / "b.csv", "3,1,2\n4,5,6\n");
  CsvOptions o;
  o.label_column = 0;
  t = read_csv(d / "b.csv", o);
  EXPECT_EQ(t.rows, 2);
  EXPECT_EQ(t.labels, (std::vector<int64_t>{3, 4}));
  EXPECT_EQ(t.features, (std::vector<float>{1, 2, 5, 6}));
  write_text(d / "c.csv", "1,2,0\n1,oops,1\n");
  std::string err = error_of([&] { read_csv(d / "c.csv"); });
  EXPECT_NE(err.find("c.csv:2"), std::string::npos) << err;
  EXPECT_NE(err.find("oops"), std::string::npos) << err;
  write_text(d / "e.csv", "1,2,0\n1,2\n");
  EXPECT_NE(error_of([&] { read_csv(d / "e.csv"); }).find("e.csv:2"), std::string::npos);
  fs::remove_all(d);
}

TEST(Png, RoundTripGrayAndRgb) {
  fs::path d = temp_dir("png");
  Image g{1, 2, 3, {0, 10, 20, 30, 40, 255}};
  write_png(d / "g.png", g);
  Image r = read_png(d / "g.png");
  EXPECT_EQ(r.channels, 1);
  EXPECT_EQ(r.height, 2);
  EXPECT_EQ(r.width, 3);
  EXPECT_EQ(r.pixels, g.pixels);
  Image c{3, 1, 2, {1, 2, 3, 4, 5, 6}};  // planar: R = {1,2}, G = {3,4}, B = {5,6}
  write_png(d / "c.png", c);
  EXPECT_EQ(read_png(d / "c.png").pixels, c.pixels);
  EXPECT_EQ(read_png(d / "c.png", 1).channels, 1);
  write_text(d / "bad.png", "not a png");
  EXPECT_NE(error_of([&] { read_png(d / "bad.png"); }).find("bad.png"), std::string::npos);
  fs::remove_all(d);
}

TEST(OpenDataset, NpyAndCsvDirectories) {
  fs::path d = temp_dir("open");
  std::vector<uint8_t> x(3 * 2 * 2);
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<uint8_t>(i * 20);
  std::vector<int64_t> y{2, 0, 1};
  write_npy(d / "train_x.npy", DType::u8, {3, 2, 2}, x.data());
  write_npy(d / "train_y.npy", DType::i64, {3}, y.data());
  auto ds = open_dataset("npy", d, true);
  EXPECT_EQ(ds->size(), 3);
  EXPECT_EQ(ds->sample_shape(), (Shape{1, 2, 2}));
  float s[4];
  EXPECT_EQ(ds->get(2, s), 1);
  EXPECT_FLOAT_EQ(s[0], 160.0f / 255.0f);
  write_text(d / "test.csv", "a,b,label\n1,2,1\n3,4,0\n");
  auto cs = open_dataset("csv", d, false);
  EXPECT_EQ(cs->sample_shape(), (Shape{1, 1, 2})) << "feature rows are one-channel samples, as for npy and HDF5";
  EXPECT_EQ(cs->get(1, s), 0);
  EXPECT_EQ(s[1], 4.0f);
  std::vector<float> feats{0.5f, 1.5f, 2.5f, 3.5f, 4.5f, 5.5f};
  write_npy(d / "train_x.npy", DType::f32, {2, 3}, feats.data());
  write_npy(d / "train_y.npy", DType::i64, {2}, y.data());
  auto fs_ = open_dataset("npy", d, true);
  EXPECT_EQ(fs_->sample_shape(), (Shape{1, 1, 3}));
  EXPECT_EQ(fs_->get(1, s), 0);
  EXPECT_EQ(s[2], 5.5f);
  std::string err = error_of([&] { open_dataset("npy", d, false); });
  EXPECT_NE(err.find("test_x.npy"), std::string::npos) << err;
  EXPECT_NE(error_of([&] { open_dataset("cifar", d, true); }).find("known: fashion-mnist"), std::string::npos);
  fs::remove_all(d);
}
