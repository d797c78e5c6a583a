// `hpdl pack` of an HDF5 file (store::pack): each split's samples become one
// entry per row in the dataset's own type, labelled from the split's labels
// dataset, with a meta.json; a float split without labels is packed too; bad
// labels and files without samples are refused naming the dataset. Training
// from such a store is checked end to end in cli.hdf5_predict_explain_pack.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "hpdl/core/error.h"
#include "hpdl/store/reader.h"
#include "hpdl/store/writer.h"
#include "tests/unit/hdf5_util.h"
#include "tests/unit/test_util.h"

namespace fs = std::filesystem;
using namespace hpdl;
using namespace hpdl::store;

namespace {

std::string text_of(const std::vector<std::byte>& b) {
  return std::string(reinterpret_cast<const char*>(b.data()), b.size());
}

TEST(StoreHdf5, SplitsBecomeLabelledEntriesInTheirOwnType) {
  const fs::path d = test::temp_dir("store_hdf5");
  const fs::path file = d / "mixed.h5";
  const std::vector<float> feats{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14};  // [5, 3]
  const std::vector<uint8_t> pixels{1, 2, 3, 4, 5, 6, 7, 8};                           // [2, 2, 2]
  const std::vector<int32_t> labels{7, 3};
  {
    test::H5Writer w(file);
    w.write("train/images", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, {5, 3}, feats);
    w.write("test/images", H5T_STD_U8LE, H5T_NATIVE_UINT8, {2, 2, 2}, pixels);
    w.write("test/labels", H5T_STD_I32BE, H5T_NATIVE_INT32, {2}, labels);
  }
  PackStats st = pack(file, d / "store", {});
  EXPECT_EQ(st.entries, 5u + 2u + 2u);  // samples and one meta.json per split
  Reader r = Reader::open(d / "store");
  EXPECT_EQ(text_of(r.read("train/meta.json")),
            "{\"count\":5,\"shape\":[3],\"dtype\":\"float32\",\"labels\":false}\n");
  EXPECT_EQ(text_of(r.read("test/meta.json")), "{\"count\":2,\"shape\":[2,2],\"dtype\":\"uint8\",\"labels\":true}\n");
  const auto row = r.read("train/00003.bin");
  ASSERT_EQ(row.size(), 3 * sizeof(float));
  float v[3];
  std::memcpy(v, row.data(), sizeof v);
  EXPECT_EQ(v[0], 9.0f);
  EXPECT_EQ(v[2], 11.0f);
  EXPECT_EQ(r.entry(*r.find("train/00003.bin")).label, kNoLabel);
  const auto& e = r.entry(*r.find("test/00001.bin"));
  EXPECT_EQ(e.label, 3);
  EXPECT_EQ(text_of(r.read("test/00001.bin")), std::string("\x05\x06\x07\x08"));
}

TEST(StoreHdf5, BadLabelsAndMissingSamplesAreNamed) {
  const fs::path d = test::temp_dir("store_hdf5_bad");
  const std::vector<uint8_t> pixels(3 * 4, 9);
  {
    test::H5Writer w(d / "neg.h5");
    w.write("train/images", H5T_STD_U8LE, H5T_NATIVE_UINT8, {3, 4}, pixels);
    w.write("train/labels", H5T_STD_I64LE, H5T_NATIVE_INT64, {3}, std::vector<int64_t>{0, -3, 1});
  }
  std::string err = test::error_of([&] { pack(d / "neg.h5", d / "s1", {}); });
  EXPECT_NE(err.find("label 1 of 'train/labels' is -3"), std::string::npos) << err;
  {
    test::H5Writer w(d / "short.h5");
    w.write("train/images", H5T_STD_U8LE, H5T_NATIVE_UINT8, {3, 4}, pixels);
    w.write("train/labels", H5T_STD_I64LE, H5T_NATIVE_INT64, {2}, std::vector<int64_t>{0, 1});
  }
  err = test::error_of([&] { pack(d / "short.h5", d / "s2", {}); });
  EXPECT_NE(err.find("labels 'train/labels' are [2]"), std::string::npos) << err;
  PackOptions o;
  o.hdf5.train_x = "x";
  o.hdf5.test_x = "x_test";
  err = test::error_of([&] { pack(d / "short.h5", d / "s3", o); });
  EXPECT_NE(err.find("neither 'x' nor 'x_test'"), std::string::npos) << err;
  EXPECT_NE(err.find("train/images, train/labels"), std::string::npos) << err;
  EXPECT_FALSE(fs::exists(d / "s3" / "index.hpdi")) << "a failed pack left an index";
}

}  // namespace
