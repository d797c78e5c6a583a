// Reader implementation: the index is decoded once into memory, each partition is
// mapped read-only (MAP_SHARED, so ranks of one node share the page cache), and a
// per-entry atomic flag records that an entry's checksum has been verified.
// Folders are not stored; they are derived from the sorted entry paths.
#include "hpdl/store/reader.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <unordered_map>

#include "hpdl/core/error.h"

namespace hpdl::store {
namespace fs = std::filesystem;

namespace {

struct Mapping {
  std::string file;
  const std::byte* base = nullptr;  // start of the file; data begins at base + kHeaderSize
  size_t length = 0;
  bool present = false;
};

bool starts_with(std::string_view s, std::string_view prefix) {
  return s.size() >= prefix.size() && s.compare(0, prefix.size(), prefix) == 0;
}

}  // namespace

struct Reader::Impl {
  fs::path dir;
  ReaderOptions options;
  Index index;
  std::vector<Mapping> parts;
  std::unique_ptr<std::atomic<uint8_t>[]> verified;
  // Path -> entry number; a hash lookup is several times faster than a binary search
  // over 10^5+ heap-allocated strings (measured in bench/store).
  std::unordered_map<std::string_view, size_t> by_path;

  ~Impl() {
    for (Mapping& m : parts)
      if (m.present) ::munmap(const_cast<std::byte*>(m.base), m.length);
  }

  const std::byte* stored(size_t i) const {
    const Entry& e = index.entries[i];
    const Mapping& m = parts[e.partition];
    HPDL_CHECK(m.present, "store {}: entry '{}' lives in partition {} ({}), which is not on this node; "
               "stage with more replicas or --mode full", dir.string(), e.path, e.partition, m.file);
    return m.base + kHeaderSize + e.offset;
  }

  void check(size_t i, std::span<const std::byte> content) const {
    const Entry& e = index.entries[i];
    HPDL_CHECK(checksum(content) == e.checksum,
               "store: checksum mismatch for '{}' in {} (offset {}, {} bytes); the store is corrupt: re-stage it or "
               "re-run `hpdl pack`",
               e.path, parts[e.partition].file, kHeaderSize + e.offset, e.stored_size);
    verified[i].store(1, std::memory_order_release);
  }

  bool needs_check(size_t i, bool whole_read) const {
    if (options.verify == Verify::never) return false;
    if (options.verify == Verify::always && whole_read) return true;
    return verified[i].load(std::memory_order_acquire) == 0;
  }

  void decode(size_t i, std::span<std::byte> out) const {
    const Entry& e = index.entries[i];
    decompress(e.compression, {stored(i), e.stored_size}, out,
               fmt::format("'{}' in {}", e.path, parts[e.partition].file));
  }
};

Reader::Reader(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Reader::Reader(Reader&&) noexcept = default;
Reader& Reader::operator=(Reader&&) noexcept = default;
Reader::~Reader() = default;

Reader Reader::open(const fs::path& dir, ReaderOptions options) {
  auto impl = std::make_unique<Impl>();
  impl->dir = dir;
  impl->options = options;
  const fs::path index_path = dir / kIndexName;
  HPDL_CHECK(fs::exists(index_path), "store: no index {}; is {} a store made by `hpdl pack` (or staged by `hpdl stage`)?",
             index_path.string(), dir.string());
  impl->index = decode_index(read_file(index_path), index_path.string());
  const size_t n = impl->index.entries.size();
  impl->verified = std::make_unique<std::atomic<uint8_t>[]>(n);
  impl->by_path.reserve(n);
  for (size_t i = 0; i < n; ++i) impl->by_path.emplace(impl->index.entries[i].path, i);
  impl->parts.resize(impl->index.partitions.size());
  for (uint32_t p = 0; p < impl->parts.size(); ++p) {
    Mapping& m = impl->parts[p];
    m.file = (dir / partition_name(p)).string();
    int fd = ::open(m.file.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT && options.allow_missing_partitions) continue;
    HPDL_CHECK(fd >= 0, "store: cannot open partition {}: {}; re-stage the store", m.file, std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      int err = errno;
      ::close(fd);
      HPDL_FAIL("store: cannot stat partition {}: {}", m.file, std::strerror(err));
    }
    std::byte header[kHeaderSize] = {};
    ssize_t got = ::pread(fd, header, kHeaderSize, 0);
    try {
      check_partition_header({header, got > 0 ? size_t(got) : 0}, p, impl->index.partitions[p].data_size,
                             uint64_t(st.st_size), m.file);
    } catch (...) {
      ::close(fd);
      throw;
    }
    m.length = size_t(st.st_size);
    void* base = ::mmap(nullptr, m.length, PROT_READ, MAP_SHARED, fd, 0);
    int err = errno;
    ::close(fd);
    HPDL_CHECK(base != MAP_FAILED, "store: cannot map partition {}: {}", m.file, std::strerror(err));
    m.base = static_cast<const std::byte*>(base);
    m.present = true;
  }
  return Reader(std::move(impl));
}

const fs::path& Reader::dir() const { return impl_->dir; }
size_t Reader::size() const { return impl_->index.entries.size(); }
const Entry& Reader::entry(size_t i) const {
  HPDL_CHECK(i < size(), "store {}: entry {} out of range ({} entries)", impl_->dir.string(), i, size());
  return impl_->index.entries[i];
}

std::optional<size_t> Reader::find(std::string_view path) const {
  auto it = impl_->by_path.find(path);
  if (it == impl_->by_path.end()) return std::nullopt;  // stored paths are all valid, so ".." never matches
  return it->second;
}

bool Reader::is_dir(std::string_view path) const {
  if (path.empty()) return true;
  if (!entry_path_problem(path).empty()) return false;
  std::string prefix = std::string(path) + "/";
  const auto& es = impl_->index.entries;
  auto it = std::lower_bound(es.begin(), es.end(), prefix,
                             [](const Entry& e, const std::string& p) { return e.path < p; });
  return it != es.end() && starts_with(it->path, prefix);
}

std::vector<size_t> Reader::list(std::string_view prefix) const {
  const auto& es = impl_->index.entries;
  auto it = std::lower_bound(es.begin(), es.end(), prefix,
                             [](const Entry& e, std::string_view p) { return std::string_view(e.path) < p; });
  std::vector<size_t> out;
  for (; it != es.end() && starts_with(it->path, prefix); ++it) out.push_back(size_t(it - es.begin()));
  return out;
}

std::optional<std::vector<DirEntry>> Reader::list_dir(std::string_view path) const {
  if (!is_dir(path)) return std::nullopt;
  std::string prefix = path.empty() ? std::string() : std::string(path) + "/";
  const auto& es = impl_->index.entries;
  auto it = std::lower_bound(es.begin(), es.end(), prefix,
                             [](const Entry& e, const std::string& p) { return e.path < p; });
  std::vector<DirEntry> out;
  // Entries below one sub-folder are contiguous in path order, so comparing with
  // the last folder added is enough to list each folder once.
  std::string last_dir;
  for (; it != es.end() && starts_with(it->path, prefix); ++it) {
    std::string_view rest = std::string_view(it->path).substr(prefix.size());
    size_t slash = rest.find('/');
    if (slash == std::string_view::npos) {
      out.push_back({std::string(rest), false});
    } else if (rest.substr(0, slash) != last_dir) {
      last_dir = std::string(rest.substr(0, slash));
      out.push_back({last_dir, true});
    }
  }
  std::sort(out.begin(), out.end(), [](const DirEntry& a, const DirEntry& b) { return a.name < b.name; });
  return out;
}

void Reader::read(size_t i, std::span<std::byte> out) const {
  const Entry& e = entry(i);
  HPDL_CHECK(out.size() == e.size, "store: read of '{}' needs a {}-byte buffer, got {}", e.path, e.size, out.size());
  impl_->decode(i, out);
  if (impl_->needs_check(i, true)) impl_->check(i, out);
}

std::vector<std::byte> Reader::read(size_t i) const {
  std::vector<std::byte> out(entry(i).size);
  read(i, out);
  return out;
}

std::vector<std::byte> Reader::read(std::string_view path) const {
  auto i = find(path);
  HPDL_CHECK(i.has_value(), "store {}: no entry '{}'", impl_->dir.string(), path);
  return read(*i);
}

size_t Reader::read_at(size_t i, uint64_t offset, std::span<std::byte> out) const {
  const Entry& e = entry(i);
  if (offset >= e.size || out.empty()) return 0;
  const size_t n = size_t(std::min<uint64_t>(out.size(), e.size - offset));
  if (e.compression == Compression::none) {
    const std::byte* src = impl_->stored(i);
    if (impl_->needs_check(i, false)) impl_->check(i, {src, e.size});
    std::memcpy(out.data(), src + offset, n);
    return n;
  }
  std::vector<std::byte> whole(e.size);
  impl_->decode(i, whole);
  if (impl_->needs_check(i, false)) impl_->check(i, whole);
  std::memcpy(out.data(), whole.data() + offset, n);
  return n;
}

std::span<const std::byte> Reader::view(size_t i) const {
  const Entry& e = entry(i);
  HPDL_CHECK(e.compression == Compression::none, "store: '{}' is {}-compressed; use read() instead of view()", e.path,
             compression_name(e.compression));
  std::span<const std::byte> bytes{impl_->stored(i), e.size};
  if (impl_->needs_check(i, true)) impl_->check(i, bytes);
  return bytes;
}

void Reader::verify_all() const {
  std::vector<std::byte> buf;
  for (size_t i = 0; i < size(); ++i) {
    const Entry& e = impl_->index.entries[i];
    buf.resize(e.size);
    impl_->decode(i, buf);
    impl_->check(i, buf);
  }
}

}  // namespace hpdl::store
