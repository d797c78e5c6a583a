// Atomic writes (temporary + fsync + rename + directory fsync), whole-file
// reads and the xxHash64 wrapper. POSIX calls are used directly because the
// iostreams cannot fsync, and an un-synced rename can surface as an empty file
// after a power loss on ext4/xfs/Lustre.
#include "hpdl/io/file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <cerrno>
#include <cstring>

#include "hpdl/core/error.h"

namespace hpdl::io {
namespace {

class FdSink : public FileSink {
 public:
  FdSink(int fd, const std::filesystem::path& shown) : fd_(fd), shown_(shown) {}
  void write(const void* data, size_t n) override {
    const char* p = static_cast<const char*>(data);
    while (n > 0) {
      ssize_t w = ::write(fd_, p, n);
      if (w < 0 && errno == EINTR) continue;
      HPDL_CHECK(w > 0, "{}: write failed after {} bytes: {} (check free space and quota on its file system)",
                 shown_.string(), written_, std::strerror(errno));
      p += w, n -= static_cast<size_t>(w), written_ += static_cast<uint64_t>(w);
    }
  }
  uint64_t bytes_written() const override { return written_; }

 private:
  int fd_;
  std::filesystem::path shown_;
  uint64_t written_ = 0;
};

void fsync_dir(const std::filesystem::path& dir) {
  int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) return;  // some file systems do not allow opening directories; the rename still happened
  ::fsync(fd);
  ::close(fd);
}

}  // namespace

void write_file_atomic(const std::filesystem::path& path, const std::function<void(FileSink&)>& writer) {
  std::filesystem::path tmp = path;
  tmp += ".tmp." + std::to_string(::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  HPDL_CHECK(fd >= 0, "{}: cannot create temporary file {}: {} (is the directory writable?)", path.string(),
             tmp.string(), std::strerror(errno));
  try {
    FdSink sink(fd, path);
    writer(sink);
    HPDL_CHECK(::fsync(fd) == 0, "{}: fsync failed: {}", path.string(), std::strerror(errno));
    int rc = ::close(fd);
    fd = -1;
    HPDL_CHECK(rc == 0, "{}: close failed: {}", path.string(), std::strerror(errno));
    HPDL_CHECK(::rename(tmp.c_str(), path.c_str()) == 0, "{}: rename from {} failed: {}", path.string(),
               tmp.string(), std::strerror(errno));
  } catch (const Error& e) {
    if (fd >= 0) ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  } catch (const std::exception& e) {
    if (fd >= 0) ::close(fd);
    ::unlink(tmp.c_str());
    HPDL_FAIL("{}: write failed, file left unchanged: {}", path.string(), e.what());
  }
  fsync_dir(path.parent_path());
}

void write_file_atomic(const std::filesystem::path& path, const void* data, size_t n) {
  write_file_atomic(path, [&](FileSink& s) { s.write(data, n); });
}

std::vector<uint8_t> read_file(const std::filesystem::path& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  HPDL_CHECK(fd >= 0, "{}: cannot open: {}", path.string(), std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    HPDL_FAIL("{}: cannot stat: {}", path.string(), std::strerror(errno));
  }
  std::vector<uint8_t> out(static_cast<size_t>(st.st_size));
  size_t got = 0;
  while (got < out.size()) {
    ssize_t r = ::read(fd, out.data() + got, out.size() - got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      int err = errno;
      ::close(fd);
      HPDL_FAIL("{}: read failed after {} of {} bytes: {}", path.string(), got, out.size(),
                r == 0 ? "unexpected end of file" : std::strerror(err));
    }
    got += static_cast<size_t>(r);
  }
  ::close(fd);
  return out;
}

uint64_t xxh64(const void* data, size_t n, uint64_t seed) { return XXH64(data, n, seed); }

Xxh64::Xxh64(uint64_t seed) : state_(XXH64_createState()) {
  HPDL_CHECK(state_ != nullptr, "xxh64: out of memory");
  XXH64_reset(static_cast<XXH64_state_t*>(state_), seed);
}
Xxh64::~Xxh64() { XXH64_freeState(static_cast<XXH64_state_t*>(state_)); }
void Xxh64::update(const void* data, size_t n) { XXH64_update(static_cast<XXH64_state_t*>(state_), data, n); }
uint64_t Xxh64::digest() const { return XXH64_digest(static_cast<XXH64_state_t*>(state_)); }

std::string hex64(uint64_t v) { return fmt::format("{:016x}", v); }

}  // namespace hpdl::io
