// Run under LD_PRELOAD=libhpdl_intercept.so by test_intercept.cpp: maps,
// duplicates and canonicalizes files of MOUNT and checks them against the same
// files in SRC (read without the mount, which the shim passes through). Prints "posix_probe: OK" and
// exits 0 when every check holds; otherwise prints each failed check and exits 1.
// HOW says how the shim must map MOUNT/numbers.txt: "in_place" (from the store's
// partition file, as /proc/self/maps shows) or "copy" (an anonymous mapping).
//   posix_probe SRC MOUNT in_place|copy
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdint>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

namespace {

int failures = 0;

void check(bool ok, const std::string& what) {
  if (!ok) {
    std::printf("FAILED: %s (errno %d: %s)\n", what.c_str(), errno, std::strerror(errno));
    ++failures;
  }
}

std::string slurp(const std::string& path) {
  std::string out;
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return out;
  char buf[65536];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof buf)) > 0) out.append(buf, size_t(n));
  ::close(fd);
  return out;
}

std::string read_n(int fd, size_t n) {
  std::string s(n, '\0');
  ssize_t got = ::read(fd, s.data(), n);
  s.resize(got > 0 ? size_t(got) : 0);
  return s;
}

// The file named in /proc/self/maps for the mapping holding `p` ("" when anonymous).
std::string mapped_file(const void* p) {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  const auto a = reinterpret_cast<uintptr_t>(p);
  while (std::getline(maps, line)) {
    uintptr_t lo = 0, hi = 0;
    if (std::sscanf(line.c_str(), "%lx-%lx", &lo, &hi) != 2 || a < lo || a >= hi) continue;
    const size_t slash = line.find('/');
    return slash == std::string::npos ? "" : line.substr(slash);
  }
  return "?";
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: posix_probe SRC MOUNT in_place|copy\n");
    return 2;
  }
  const std::string src = argv[1], mnt = argv[2], how = argv[3];
  const std::string want = slurp(src + "/numbers.txt");
  const size_t page = size_t(::sysconf(_SC_PAGESIZE));
  check(want.size() > 4 * page, "numbers.txt spans several pages");

  int fd = ::open((mnt + "/numbers.txt").c_str(), O_RDONLY);
  check(fd >= 0, "open the mount's numbers.txt");
  if (fd < 0) return 1;

  // The whole file, read-only and shared (what numpy.memmap and Python's mmap ask for).
  void* p = ::mmap(nullptr, want.size(), PROT_READ, MAP_SHARED, fd, 0);
  check(p != MAP_FAILED, "mmap whole file");
  if (p != MAP_FAILED) {
    check(std::memcmp(p, want.data(), want.size()) == 0, "whole-file map holds the file's bytes");
    const std::string from = mapped_file(p);
    if (how == "in_place")
      check(from.find(".hpdp") != std::string::npos, "mapped in place from a partition file, not from '" + from + "'");
    else
      check(from.empty(), "mapped as an anonymous copy, not from '" + from + "'");
    // Past the end, inside the last page: zeros, as a file mapping gives.
    const size_t tail = (want.size() + page - 1) / page * page;
    bool zeros = true;
    for (size_t i = want.size(); i < tail; ++i) zeros = zeros && static_cast<const char*>(p)[i] == 0;
    check(zeros, "bytes past the end of the file in its last page are zero");
    check(::munmap(p, want.size()) == 0, "munmap");
  }

  // A window at a page-aligned offset, and a private writable copy that changes nothing.
  p = ::mmap(nullptr, 3 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, off_t(2 * page));
  check(p != MAP_FAILED, "mmap 3 pages at offset 2 pages, private and writable");
  if (p != MAP_FAILED) {
    check(std::memcmp(p, want.data() + 2 * page, 3 * page) == 0, "the window holds bytes [2p, 5p)");
    std::memset(p, 'X', page);
    ::munmap(p, 3 * page);
    void* q = ::mmap(nullptr, page, PROT_READ, MAP_PRIVATE, fd, off_t(2 * page));
    check(q != MAP_FAILED && std::memcmp(q, want.data() + 2 * page, page) == 0,
          "writing a private map does not change the file");
    if (q != MAP_FAILED) ::munmap(q, page);
  }

  // A small file (never aligned in its partition): a copy, with zeros after its bytes.
  const std::string small = slurp(src + "/a/b.txt");
  int sfd = ::open((mnt + "/a/b.txt").c_str(), O_RDONLY);
  p = sfd >= 0 ? ::mmap(nullptr, page, PROT_READ, MAP_SHARED, sfd, 0) : MAP_FAILED;
  check(p != MAP_FAILED, "mmap a small file");
  if (p != MAP_FAILED) {
    check(std::memcmp(p, small.data(), small.size()) == 0 && static_cast<const char*>(p)[small.size()] == 0,
          "the small file's map holds its bytes, then zeros");
    check(mapped_file(p).empty(), "the small file's map is an anonymous copy");
    ::munmap(p, page);
  }
  if (sfd >= 0) ::close(sfd);

  // Refusals, with the errors a read-only file gives.
  errno = 0;
  check(::mmap(nullptr, page, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) == MAP_FAILED && errno == EACCES,
        "shared writable map of a read-only file fails with EACCES");
  errno = 0;
  check(::mmap(nullptr, page, PROT_READ, MAP_PRIVATE, fd, 100) == MAP_FAILED && errno == EINVAL,
        "unaligned offset fails with EINVAL");
  errno = 0;
  check(::mmap(nullptr, 0, PROT_READ, MAP_PRIVATE, fd, 0) == MAP_FAILED && errno == EINVAL,
        "zero length fails with EINVAL");
  int dirfd = ::open(mnt.c_str(), O_RDONLY | O_DIRECTORY);
  errno = 0;
  check(dirfd >= 0 && ::mmap(nullptr, page, PROT_READ, MAP_PRIVATE, dirfd, 0) == MAP_FAILED && errno == ENODEV,
        "mapping a folder fails with ENODEV");
  if (dirfd >= 0) ::close(dirfd);

  // dup shares the offset; the duplicate outlives the original.
  check(::lseek(fd, 0, SEEK_SET) == 0, "lseek to 0");
  int fd2 = ::dup(fd);
  check(fd2 >= 0 && fd2 != fd, "dup");
  check(read_n(fd, 7) == want.substr(0, 7), "read 7 bytes through the original");
  check(read_n(fd2, 5) == want.substr(7, 5), "the duplicate continues at the shared offset");
  check(::lseek(fd, 0, SEEK_CUR) == 12, "the original sees the duplicate's reads");
  check(::close(fd) == 0, "close the original");
  struct stat st {};
  check(::fstat(fd2, &st) == 0 && st.st_size == off_t(want.size()), "fstat the duplicate after closing the original");
  check(read_n(fd2, 4) == want.substr(12, 4), "read the duplicate after closing the original");
  p = ::mmap(nullptr, page, PROT_READ, MAP_SHARED, fd2, 0);
  check(p != MAP_FAILED && std::memcmp(p, want.data(), page) == 0, "map through the duplicate");
  if (p != MAP_FAILED) ::munmap(p, page);

  // fcntl(F_DUPFD_CLOEXEC) with a lowest number, and the flag it sets.
  int fd3 = ::fcntl(fd2, F_DUPFD_CLOEXEC, 200);
  check(fd3 >= 200, "fcntl F_DUPFD_CLOEXEC gives a number >= 200");
  check(::fcntl(fd3, F_GETFD) == FD_CLOEXEC, "the F_DUPFD_CLOEXEC copy is close-on-exec");
  check(read_n(fd3, 3) == want.substr(16, 3), "the fcntl copy shares the offset");

  // dup2 onto a real fd makes it a store file; dup2 of a real fd over a store fd makes it real again.
  int zero = ::open("/dev/zero", O_RDONLY);
  check(zero >= 0, "open /dev/zero");
  check(::dup2(fd3, zero) == zero, "dup2 a store fd onto /dev/zero's number");
  check(read_n(zero, 2) == want.substr(19, 2), "the dup2 target reads the store file");
  int zero2 = ::open("/dev/zero", O_RDONLY);
  check(::dup3(zero2, fd3, O_CLOEXEC) == fd3, "dup3 /dev/zero over a store fd");
  check(read_n(fd3, 3) == std::string(3, '\0'), "the store fd's number now reads /dev/zero");
  check(::dup2(fd2, fd2) == fd2, "dup2 onto itself");
  check(read_n(fd2, 2) == want.substr(21, 2), "dup2 onto itself keeps the store file");
  for (int f : {fd2, fd3, zero, zero2}) check(::close(f) == 0, "close " + std::to_string(f));
  check(::close(fd2) == -1 && errno == EBADF, "a closed store fd stays closed");

  // realpath (std::filesystem::canonical, readlink -f) and readlink of mount paths.
  char resolved[PATH_MAX];
  check(::realpath((mnt + "/a/./c/../b.txt").c_str(), resolved) && std::string(resolved) == mnt + "/a/b.txt",
        "realpath of a file with . and .. components");
  char* owned = ::realpath((mnt + "//a/c/").c_str(), nullptr);
  check(owned && std::string(owned) == mnt + "/a/c", "realpath of a folder, result allocated");
  std::free(owned);
  errno = 0;
  check(!::realpath((mnt + "/a/missing.txt").c_str(), resolved) && errno == ENOENT, "realpath of a missing file: ENOENT");
  std::error_code ec;
  check(std::filesystem::canonical(mnt + "/z/y/../y/x/w.txt", ec) == mnt + "/z/y/x/w.txt" && !ec,
        "std::filesystem::canonical");
  errno = 0;
  check(::readlink((mnt + "/a/b.txt").c_str(), resolved, sizeof resolved) == -1 && errno == EINVAL,
        "readlink of a store file: EINVAL (not a link)");
  errno = 0;
  check(::readlink((mnt + "/nope").c_str(), resolved, sizeof resolved) == -1 && errno == ENOENT,
        "readlink of a missing path: ENOENT");

  if (failures == 0) std::printf("posix_probe: OK\n");
  return failures == 0 ? 0 : 1;
}
