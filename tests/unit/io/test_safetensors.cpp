// safetensors round trips, corruption and truncation detection, the atomic
// writer's guarantee (a failed write never replaces a good file), and a check
// that the files load in PyTorch via a tiny json+struct+torch.frombuffer reader.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>

#include "hpdl/core/error.h"
#include "hpdl/io/file.h"
#include "hpdl/io/safetensors.h"
#include "tests/unit/test_util.h"

namespace fs = std::filesystem;
using namespace hpdl::test;
using namespace hpdl;

namespace {

std::map<std::string, Tensor> sample_tensors() {
  std::map<std::string, Tensor> m;
  m["layer.weight"] = Tensor::from_vector<float>({1.5f, -2, 3, 4, 5, 6}, {2, 3});
  m["layer.bias"] = Tensor::from_vector<double>({0.25, -0.5}, {2});
  m["step"] = Tensor::from_vector<int64_t>({42}, {1});
  m["bytes"] = Tensor::from_vector<uint8_t>({1, 2, 3}, {3});
  m["half"] = Tensor::from_vector<float>({1.0f, -3.0f}, {2}).to(DType::bf16);
  m["fp16"] = Tensor::from_vector<float>({0.5f, -65504.0f, 1e-7f, 3.14159f}, {2, 2}).to(DType::f16);
  m["empty"] = Tensor::zeros({0, 4});
  return m;
}

}  // namespace

TEST(Safetensors, RoundTripAllDtypes) {
  fs::path d = temp_dir("rt");
  auto in = sample_tensors();
  io::save_safetensors(d / "a.safetensors", in, {{"note", "hello"}});
  auto out = io::load_safetensors(d / "a.safetensors");
  ASSERT_EQ(out.tensors.size(), in.size());
  for (auto& [name, t] : in) {
    const Tensor& u = out.tensors.at(name);
    EXPECT_EQ(u.dtype(), t.dtype()) << name;
    EXPECT_EQ(u.shape(), t.shape()) << name;
    EXPECT_EQ(u.to_vector<double>(), t.to_vector<double>()) << name;
  }
  EXPECT_EQ(out.metadata.at("note"), "hello");
  EXPECT_EQ(out.metadata.at(io::kSafetensorsChecksumKey).size(), 16u);
  // Header length is a multiple of 8 so the data section is aligned.
  std::string bytes = read_text(d / "a.safetensors");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(bytes[static_cast<size_t>(i)]);
  EXPECT_EQ(n % 8, 0u);
  fs::remove_all(d);
}

// float16 is written as "F16" with the IEEE binary16 bits, little-endian.
TEST(Safetensors, Float16IsF16OnDisk) {
  fs::path d = temp_dir("f16");
  std::map<std::string, Tensor> m;
  m["h"] = Tensor::from_vector<float>({1.0f, -2.0f, 65504.0f}, {3}).to(DType::f16);
  io::save_safetensors(d / "h.safetensors", m);
  std::string bytes = read_text(d / "h.safetensors");
  EXPECT_NE(bytes.find("\"dtype\":\"F16\""), std::string::npos);
  // The data section ends with the three halves 0x3c00, 0xc000, 0x7bff.
  const std::string tail = bytes.substr(bytes.size() - 6);
  EXPECT_EQ(tail, std::string("\x00\x3c\x00\xc0\xff\x7b", 6));
  auto out = io::load_safetensors(d / "h.safetensors");
  EXPECT_EQ(out.tensors.at("h").dtype(), DType::f16);
  EXPECT_EQ(out.tensors.at("h").to_vector<float>(), (std::vector<float>{1.0f, -2.0f, 65504.0f}));
  fs::remove_all(d);
}

TEST(Safetensors, FlippedByteIsRefusedWithFileName) {
  fs::path d = temp_dir("flip");
  fs::path p = d / "m.safetensors";
  io::save_safetensors(p, sample_tensors());
  std::string bytes = read_text(p);
  bytes[bytes.size() - 5] ^= 0x40;  // inside the data section
  write_text(p, bytes);
  std::string err = error_of([&] { io::load_safetensors(p); });
  EXPECT_NE(err.find(p.string()), std::string::npos) << err;
  EXPECT_NE(err.find("checksum"), std::string::npos) << err;
  fs::remove_all(d);
}

TEST(Safetensors, TruncatedFileIsRefused) {
  fs::path d = temp_dir("trunc");
  fs::path p = d / "m.safetensors";
  io::save_safetensors(p, sample_tensors());
  std::string bytes = read_text(p);
  for (size_t keep : {bytes.size() - 1, bytes.size() / 2, size_t{20}, size_t{4}}) {
    write_text(p, bytes.substr(0, keep));
    std::string err = error_of([&] { io::load_safetensors(p); });
    EXPECT_NE(err.find(p.string()), std::string::npos) << "kept " << keep << ": " << err;
  }
  fs::remove_all(d);
}

TEST(Safetensors, OverlapAndBadSizesAreRefusedNamingTheTensor) {
  fs::path d = temp_dir("bad");
  fs::path p = d / "x.safetensors";
  auto write = [&](const std::string& header, size_t data) {
    std::string h = header;
    std::string s(8, '\0');
    for (int i = 0; i < 8; ++i) s[static_cast<size_t>(i)] = static_cast<char>((h.size() >> (8 * i)) & 0xff);
    write_text(p, s + h + std::string(data, '\0'));
  };
  write(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12);
  EXPECT_NE(error_of([&] { io::load_safetensors(p); }).find("overlaps"), std::string::npos);
  write(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8);
  std::string err = error_of([&] { io::load_safetensors(p); });
  EXPECT_NE(err.find("'a'"), std::string::npos) << err;
  write(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 12);
  EXPECT_NE(error_of([&] { io::load_safetensors(p); }).find("trailing"), std::string::npos);
  write(R"({"a":{"dtype":"C64","shape":[1],"data_offsets":[0,8]}})", 8);
  EXPECT_NE(error_of([&] { io::load_safetensors(p); }).find("C64"), std::string::npos);
  // A file without the hpdl checksum (e.g. from PyTorch) still loads.
  write(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 8);
  EXPECT_EQ(io::load_safetensors(p).tensors.at("a").numel(), 2);
  fs::remove_all(d);
}

TEST(AtomicWrite, FailingWriterKeepsTheGoodFile) {
  fs::path d = temp_dir("atomic");
  fs::path p = d / "state.bin";
  io::write_file_atomic(p, "good", 4);
  std::string err = error_of([&] {
    io::write_file_atomic(p, [](io::FileSink& s) {
      s.write("partial-", 8);
      throw std::runtime_error("simulated disk full");
    });
  });
  EXPECT_NE(err.find("simulated disk full"), std::string::npos) << err;
  EXPECT_NE(err.find(p.string()), std::string::npos) << err;
  EXPECT_EQ(read_text(p), "good");
  // No temporary is left behind.
  int files = 0;
  for (auto& e : fs::directory_iterator(d)) files += e.is_regular_file();
  EXPECT_EQ(files, 1);
  fs::remove_all(d);
}

TEST(AtomicWrite, MissingDirectoryIsAnErrorNamingThePath) {
  fs::path p = fs::temp_directory_path() / "hpdl_no_such_dir_xyz" / "f.bin";
  std::string err = error_of([&] { io::write_file_atomic(p, "x", 1); });
  EXPECT_NE(err.find(p.string()), std::string::npos) << err;
  EXPECT_FALSE(fs::exists(p));
}

TEST(AtomicWrite, ReadOnlyDirectoryKeepsTheGoodFile) {
  if (::geteuid() == 0) GTEST_SKIP() << "running as root: permissions do not stop root from writing";
  fs::path d = temp_dir("ro");
  fs::path p = d / "state.bin";
  io::write_file_atomic(p, "good", 4);
  fs::permissions(d, fs::perms::owner_read | fs::perms::owner_exec);
  std::string err = error_of([&] { io::write_file_atomic(p, "new!", 4); });
  fs::permissions(d, fs::perms::owner_all);
  EXPECT_NE(err.find(p.string()), std::string::npos) << err;
  EXPECT_EQ(read_text(p), "good");
  fs::remove_all(d);
}

// A minimal safetensors reader in Python (json + struct + torch.frombuffer): the
// file must load in PyTorch without hpdl. Skips, saying why, when torch is absent.
TEST(Safetensors, LoadsInPyTorch) {
  fs::path d = temp_dir("torch");
  fs::path p = d / "m.safetensors";
  std::map<std::string, Tensor> t;
  t["w"] = Tensor::from_vector<float>({1, 2, 3, 4, 5, 6}, {2, 3});
  t["i"] = Tensor::from_vector<int64_t>({7, -8}, {2});
  t["h"] = Tensor::from_vector<float>({1.5f, 2.5f, -1.0f}, {3}).to(DType::f16);
  io::save_safetensors(p, t);
  fs::path script = fs::path(HPDL_TEST_SOURCE_DIR) / "read_safetensors.py";
  std::string cmd = "/usr/bin/python3 " + script.string() + " " + p.string() + " > " + (d / "out.txt").string();
  const int rc = std::system(cmd.c_str());
  if (WIFEXITED(rc) && WEXITSTATUS(rc) == 77)
    GTEST_SKIP() << "/usr/bin/python3 cannot import torch (install python3-torch to run this interop check)";
  ASSERT_EQ(rc, 0) << cmd;
  EXPECT_EQ(read_text(d / "out.txt"), "h float16 [3] 3\ni int64 [2] -1\nw float32 [2, 3] 21\n");
  fs::remove_all(d);
}
