// Tests of libhpdl_intercept.so with unmodified programs: cat, ls and python3
// scripts (tests/integration/store/read_tree.py, mmap_numpy.py) and a probe of
// mmap and dup (posix_probe.cpp) must see the same bytes and names through the
// mount as in the original folder, and writes must fail with EROFS.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "hpdl/store/reader.h"
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

// A version 1.0 .npy file of n float32 values i * 0.5 - 7.
std::string npy_f32(int n) {
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + std::to_string(n) + ",), }";
  while ((10 + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  std::string out("\x93NUMPY\x01\x00", 8);
  out += char(header.size() & 0xff);
  out += char(header.size() >> 8);
  out += header;
  for (int i = 0; i < n; ++i) {
    float v = float(i) * 0.5f - 7.f;
    out.append(reinterpret_cast<const char*>(&v), sizeof v);
  }
  return out;
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
    put("arr.npy", npy_f32(3000));
    hpdl::store::PackOptions o;
    o.compression = hpdl::store::parse_compression(GetParam());
    o.partition_bytes = 64 << 10;  // several partitions
    o.align_min_bytes = 1 << 20;   // numbers.txt (1.2 MB) is aligned, so maps of it are in place
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

TEST_P(InterceptTest, MmapDupAndRealpathOfStoreFiles) {
  int st = -1;
  // numbers.txt is aligned in its partition when stored uncompressed: mapped in place.
  const char* how = std::string(GetParam()) == "none" ? " in_place" : " copy";
  std::string out = run(env_ + HPDL_POSIX_PROBE " " + src_.string() + " /hpdl/mnt" + how + " 2>&1", &st);
  EXPECT_EQ(st, 0) << out;
  EXPECT_NE(out.find("posix_probe: OK"), std::string::npos) << out;
}

// Tools that walk from the root one component at a time (readlink -f, realpath -e,
// Python's Path.resolve(strict=True)) must see the folders above the mount (/hpdl,
// which does not exist here) and reach the mount's files; ls lists the way there.
TEST_P(InterceptTest, CanonicalPathsResolveThroughTheMount) {
  int st = -1;
  EXPECT_EQ(run(env_ + "readlink -f /hpdl/mnt/a/../a/c/deep.bin", &st), "/hpdl/mnt/a/c/deep.bin\n");
  EXPECT_EQ(st, 0);
  EXPECT_EQ(run(env_ + "realpath -e /hpdl/mnt/z/y/./x", &st), "/hpdl/mnt/z/y/x\n");
  EXPECT_EQ(st, 0);
  run(env_ + "realpath -e /hpdl/mnt/a/nothing 2>/dev/null", &st);
  EXPECT_NE(st, 0);
  EXPECT_EQ(run(env_ + "/usr/bin/python3 -c \"import pathlib; print(pathlib.Path('/hpdl/mnt/a/../numbers.txt')"
                       ".resolve(strict=True))\" 2>&1",
                &st),
            "/hpdl/mnt/numbers.txt\n");
  EXPECT_EQ(st, 0);
  // Listing /hpdl shows the way to the mount, as the stat of it says it is a folder.
  EXPECT_EQ(run(env_ + "ls /hpdl", &st), "mnt\n");
  EXPECT_EQ(st, 0);
  std::string long_listing = run(env_ + "ls -la /hpdl /hpdl/mnt/a 2>&1", &st);
  EXPECT_EQ(st, 0) << long_listing;
  EXPECT_EQ(long_listing.find("No such"), std::string::npos) << long_listing;
  EXPECT_EQ(run(env_ + "stat -c %F /hpdl/.. /hpdl/mnt/../mnt/a/b.txt"), "directory\nregular file\n");
  EXPECT_EQ(run(env_ + "/usr/bin/python3 -c \"import os; print(os.listdir('/hpdl'), os.path.isdir('/hpdl'))\" 2>&1"),
            "['mnt'] True\n");
}

// Walks from a folder above the mount (which does not exist: /hpdl for /hpdl/mnt) reach the
// store: find (fts: openat of /hpdl, fdopendir, fstatat and openat relative to it) and Python's
// os.fwalk (directory fds) list what a walk from the mount lists, under /hpdl/mnt.
TEST_P(InterceptTest, WalksFromAboveTheMountReachIt) {
  int st = -1;
  const std::string from_mount = run(env_ + "find /hpdl/mnt -type f | sort", &st);
  ASSERT_EQ(st, 0);
  ASSERT_NE(from_mount.find("/hpdl/mnt/a/c/deep.bin"), std::string::npos) << from_mount;
  std::string out = run(env_ + "find /hpdl -type f 2>&1 | sort", &st);
  EXPECT_EQ(st, 0) << out;
  EXPECT_EQ(out, from_mount);
  out = run(env_ + "find /hpdl -maxdepth 1 2>&1", &st);
  EXPECT_EQ(st, 0) << out;
  EXPECT_EQ(out, "/hpdl\n/hpdl/mnt\n");
  out = run(env_ + "/usr/bin/python3 -c \"import os; print(sorted(os.path.join(d, f) for d, _, fs, _ in "
                   "os.fwalk('/hpdl') for f in fs))\" 2>&1", &st);
  EXPECT_EQ(st, 0) << out;
  EXPECT_NE(out.find("'/hpdl/mnt/a/c/deep.bin'"), std::string::npos) << out;
  // The folder above opens read-only only, as a folder: writing to it, or reading it, fails.
  out = run(env_ + "/usr/bin/python3 -c \"import os\nfd = os.open('/hpdl', os.O_RDONLY | os.O_DIRECTORY)\n"
                   "print(os.listdir(fd), os.fstat(fd).st_mode & 0o170000 == 0o040000)\ntry:\n  os.read(fd, 1)\n"
                   "except IsADirectoryError:\n  print('EISDIR')\ntry:\n  os.open('/hpdl', os.O_WRONLY)\n"
                   "except IsADirectoryError:\n  print('EISDIR')\n\" 2>&1", &st);
  EXPECT_EQ(st, 0) << out;
  EXPECT_EQ(out, "['mnt'] True\nEISDIR\nEISDIR\n");
}

TEST_P(InterceptTest, NumpyAndPythonMmapReadTheSameValues) {
  int st = -1;
  std::string out = run(env_ + "/usr/bin/python3 " HPDL_STORE_TEST_DIR "/mmap_numpy.py " + src_.string() +
                            " /hpdl/mnt 2>&1",
                        &st);
  if (WIFEXITED(st) && WEXITSTATUS(st) == 77) GTEST_SKIP() << "python3-numpy not installed";
  EXPECT_EQ(st, 0) << out;
  EXPECT_NE(out.find("mmap_numpy: OK"), std::string::npos) << out;
}

TEST_P(InterceptTest, WritesToTheMountFailWithEROFS) {
  std::string out = run(env_ + "sh -c 'echo x > /hpdl/mnt/new.txt; mkdir /hpdl/mnt/d; rm /hpdl/mnt/a/b.txt' 2>&1");
  EXPECT_NE(out.find("Read-only file system"), std::string::npos) << out;
  EXPECT_EQ(out.find("No such"), std::string::npos) << out;
}

TEST_P(InterceptTest, CorruptEntryGivesEIOAndNamesTheFile) {
  // Flip a byte of numbers.txt's stored bytes: reads must fail, not return wrong bytes.
  {
    auto r = hpdl::store::Reader::open(dir_ / "store");
    const auto& e = r.entry(*r.find("numbers.txt"));
    std::fstream f(dir_ / "store" / hpdl::store::partition_name(e.partition),
                   std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(std::streamoff(hpdl::store::kHeaderSize + e.offset + 6));
    f.put('\x7f');
  }
  int st = -1;
  std::string out = run(env_ + "cat /hpdl/mnt/numbers.txt 2>&1 >/dev/null", &st);
  EXPECT_NE(st, 0);
  EXPECT_NE(out.find("numbers.txt"), std::string::npos) << out;
  // A map of it fails too (EIO from mmap), instead of handing out wrong bytes.
  out = run(env_ + "/usr/bin/python3 -c \"import mmap; f = open('/hpdl/mnt/numbers.txt', 'rb'); "
                   "mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)\" 2>&1",
            &st);
  EXPECT_NE(st, 0);
  EXPECT_NE(out.find("Input/output error"), std::string::npos) << out;
}

INSTANTIATE_TEST_SUITE_P(Compression, InterceptTest, ::testing::Values("none", "zstd"));

TEST(InterceptPassthrough, OtherPathsAreUntouched) {
  int st = -1;
  std::string out = run("HPDL_STORE=/nonexistent/store LD_PRELOAD=" HPDL_INTERCEPT_LIB " cat /etc/hostname 2>/dev/null", &st);
  EXPECT_EQ(out, slurp("/etc/hostname"));
  EXPECT_EQ(st, 0);
}

}  // namespace
