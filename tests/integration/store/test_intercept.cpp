// Tests of libhpdl_intercept.so with unmodified programs: cat, ls and a python3
// script (tests/integration/store/read_tree.py) must see the same bytes and names
// through the mount as in the original folder, and writes must fail with EROFS.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "hpdl/store/writer.h"

namespace fs = std::filesystem;

namespace {

std::string run(const std::string& cmd, int* status = nullptr) {
  std::string out;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) return out;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  int rc = ::pclose(p);
  if (status) *status = rc;
  return out;
}

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

class InterceptTest : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "hpdl_icpt_XXXXXX").string();
    dir_ = ::mkdtemp(tmpl.data());
    src_ = dir_ / "src";
    auto put = [&](const fs::path& rel, const std::string& s) {
      fs::create_directories((src_ / rel).parent_path());
      std::ofstream(src_ / rel, std::ios::binary) << s;
    };
    put("a/b.txt", "the bytes of a/b.txt\nsecond line\n");
    put("a/c/deep.bin", std::string("\x00\x01\xfe\xff", 4));
    put("empty.txt", "");
    std::string big;
    for (int i = 0; i < 200000; ++i) big += std::to_string(i) + "\n";
    put("numbers.txt", big);
    put("z/y/x/w.txt", "w");
    hpdl::store::PackOptions o;
    o.compression = hpdl::store::parse_compression(GetParam());
    o.partition_bytes = 64 << 10;  // several partitions
    hpdl::store::pack(src_, dir_ / "store", o);
    env_ = "HPDL_STORE=" + (dir_ / "store").string() + " HPDL_MOUNT=/hpdl/mnt LD_PRELOAD=" HPDL_INTERCEPT_LIB " ";
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_, src_;
  std::string env_;
};

TEST_P(InterceptTest, CatReadsTheSameBytes) {
  int st = -1;
  EXPECT_EQ(run(env_ + "cat /hpdl/mnt/a/b.txt", &st), slurp(src_ / "a/b.txt"));
  EXPECT_EQ(st, 0);
  EXPECT_EQ(run(env_ + "cat /hpdl/mnt/numbers.txt", &st), slurp(src_ / "numbers.txt"));
  EXPECT_EQ(run(env_ + "cat /hpdl/mnt/a/c/deep.bin", &st), slurp(src_ / "a/c/deep.bin"));
  EXPECT_EQ(run(env_ + "cat /hpdl/mnt/empty.txt", &st), "");
  EXPECT_EQ(st, 0);
  run(env_ + "cat /hpdl/mnt/missing.txt 2>/dev/null", &st);
  EXPECT_NE(st, 0);
}

TEST_P(InterceptTest, LsListsTheSameNames) {
  EXPECT_EQ(run(env_ + "ls /hpdl/mnt"), run("ls " + src_.string()));
  EXPECT_EQ(run(env_ + "ls /hpdl/mnt/a"), run("ls " + src_.string() + "/a"));
  EXPECT_EQ(run(env_ + "ls -R /hpdl/mnt | sed 's#/hpdl/mnt##'"), run("ls -R " + src_.string() + " | sed 's#" + src_.string() + "##'"));
  std::string long_listing = run(env_ + "ls -l /hpdl/mnt/a 2>&1");
  EXPECT_NE(long_listing.find("b.txt"), std::string::npos) << long_listing;
  EXPECT_EQ(long_listing.find("No such file"), std::string::npos) << long_listing;
}

TEST_P(InterceptTest, Python3ReadsListsAndGetsEROFS) {
  int st = -1;
  std::string out = run(env_ + "/usr/bin/python3 " HPDL_STORE_TEST_DIR "/read_tree.py " + src_.string() +
                            " /hpdl/mnt 2>&1",
                        &st);
  EXPECT_EQ(st, 0) << out;
  EXPECT_NE(out.find("read_tree: OK"), std::string::npos) << out;
}

TEST_P(InterceptTest, PyTorchDataLoaderWithWorkersReadsTheSameBytes) {
  int st = -1;
  std::string out = run(env_ + "/usr/bin/python3 " HPDL_STORE_TEST_DIR "/torch_loader.py " + src_.string() +
                            " /hpdl/mnt 2>&1",
                        &st);
  if (WIFEXITED(st) && WEXITSTATUS(st) == 77) GTEST_SKIP() << "python3-torch not installed";
  EXPECT_EQ(st, 0) << out;
  EXPECT_NE(out.find("torch_loader: OK"), std::string::npos) << out;
}

TEST_P(InterceptTest, WritesToTheMountFailWithEROFS) {
  std::string out = run(env_ + "sh -c 'echo x > /hpdl/mnt/new.txt; mkdir /hpdl/mnt/d; rm /hpdl/mnt/a/b.txt' 2>&1");
  EXPECT_NE(out.find("Read-only file system"), std::string::npos) << out;
  EXPECT_EQ(out.find("No such"), std::string::npos) << out;
}

TEST_P(InterceptTest, CorruptEntryGivesEIOAndNamesTheFile) {
  // Flip a byte of every partition's data: reads must fail, not return wrong bytes.
  for (auto& de : fs::directory_iterator(dir_ / "store")) {
    if (de.path().extension() != ".hpdp" || fs::file_size(de.path()) <= 80) continue;
    std::fstream f(de.path(), std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(70);
    f.put('\x7f');
  }
  int st = -1;
  std::string out = run(env_ + "cat /hpdl/mnt/numbers.txt 2>&1 >/dev/null", &st);
  EXPECT_NE(st, 0);
  EXPECT_NE(out.find("numbers.txt"), std::string::npos) << out;
}

INSTANTIATE_TEST_SUITE_P(Compression, InterceptTest, ::testing::Values("none", "zstd"));

TEST(InterceptPassthrough, OtherPathsAreUntouched) {
  int st = -1;
  std::string out = run("HPDL_STORE=/nonexistent/store LD_PRELOAD=" HPDL_INTERCEPT_LIB " cat /etc/hostname 2>/dev/null", &st);
  EXPECT_EQ(out, slurp("/etc/hostname"));
  EXPECT_EQ(st, 0);
}

}  // namespace
