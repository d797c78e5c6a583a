// Encoding and validation of the store's index and partition headers, plus the
// small shared helpers (checksums, compression, atomic file writes). All integers
// are little-endian; decode_index trusts nothing it reads (it is fuzzed).
#include "hpdl/store/format.h"

#include <fcntl.h>
#include <lz4.h>
#include <unistd.h>
#include <xxhash.h>
#include <zstd.h>

#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>

#include "hpdl/core/error.h"

namespace hpdl::store {

static_assert(std::endian::native == std::endian::little, "the store format is little-endian");

namespace {

template <typename T>
void put(std::byte* p, T v) {
  std::memcpy(p, &v, sizeof(T));
}
template <typename T>
T get(const std::byte* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

constexpr size_t kHeaderChecksumAt = 56;

// Reserved bytes must be zero, so a future version can give them a meaning.
bool all_zero(const std::byte* p, size_t n) {
  for (size_t i = 0; i < n; ++i)
    if (p[i] != std::byte{0}) return false;
  return true;
}

}  // namespace

const char* compression_name(Compression c) {
  switch (c) {
    case Compression::none: return "none";
    case Compression::lz4: return "lz4";
    case Compression::zstd: return "zstd";
  }
  return "unknown";
}

Compression parse_compression(std::string_view name) {
  if (name == "none") return Compression::none;
  if (name == "lz4") return Compression::lz4;
  if (name == "zstd") return Compression::zstd;
  HPDL_FAIL("store: unknown compression '{}'; use none, lz4 or zstd", name);
}

std::string partition_name(uint32_t id) { return fmt::format("part-{:05d}.hpdp", id); }

uint64_t checksum(std::span<const std::byte> bytes) { return XXH3_64bits(bytes.data(), bytes.size()); }

std::string entry_path_problem(std::string_view path) {
  if (path.empty()) return "empty path";
  if (path.size() > 4096) return "path longer than 4096 bytes";
  if (path.front() == '/') return "absolute path";
  if (path.find('\0') != std::string_view::npos) return "path contains a NUL byte";
  size_t start = 0;
  while (start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string_view::npos) end = path.size();
    std::string_view part = path.substr(start, end - start);
    if (part.empty()) return "empty path component (// or trailing /)";
    if (part == ".") return "'.' component";
    if (part == "..") return "'..' component escapes the store";
    start = end + 1;
  }
  return {};
}

std::vector<std::byte> encode_index(const Index& index) {
  uint64_t strings_size = 0;
  for (size_t i = 0; i < index.entries.size(); ++i) {
    const Entry& e = index.entries[i];
    std::string problem = entry_path_problem(e.path);
    HPDL_CHECK(problem.empty(), "store index: entry '{}': {}", e.path, problem);
    HPDL_CHECK(i == 0 || index.entries[i - 1].path < e.path,
               "store index: entries not strictly sorted at '{}' (duplicate path?)", e.path);
    HPDL_CHECK(e.partition < index.partitions.size(), "store index: entry '{}' names partition {} of {}",
               e.path, e.partition, index.partitions.size());
    strings_size += e.path.size();
  }
  const size_t body = index.partitions.size() * kPartitionRecordSize +
                      index.entries.size() * kEntryRecordSize + strings_size;
  std::vector<std::byte> out(kHeaderSize + body);
  std::byte* p = out.data() + kHeaderSize;
  for (const PartitionInfo& part : index.partitions) {
    put<uint64_t>(p, part.data_size);
    put<uint64_t>(p + 8, part.data_checksum);
    p += kPartitionRecordSize;
  }
  uint64_t path_offset = 0;
  for (const Entry& e : index.entries) {
    put<uint64_t>(p, e.offset);
    put<uint64_t>(p + 8, e.stored_size);
    put<uint64_t>(p + 16, e.size);
    put<uint64_t>(p + 24, e.checksum);
    put<uint64_t>(p + 32, path_offset);
    put<uint32_t>(p + 40, static_cast<uint32_t>(e.path.size()));
    put<uint32_t>(p + 44, e.partition);
    put<uint8_t>(p + 48, static_cast<uint8_t>(e.compression));
    put<int32_t>(p + 52, e.label);
    path_offset += e.path.size();
    p += kEntryRecordSize;
  }
  for (const Entry& e : index.entries) {
    std::memcpy(p, e.path.data(), e.path.size());
    p += e.path.size();
  }
  std::byte* h = out.data();
  std::memcpy(h, kIndexMagic, 8);
  put<uint32_t>(h + 8, kFormatVersion);
  put<uint32_t>(h + 12, static_cast<uint32_t>(index.partitions.size()));
  put<uint64_t>(h + 16, index.entries.size());
  put<uint64_t>(h + 24, strings_size);
  put<uint64_t>(h + 32, checksum({out.data() + kHeaderSize, body}));
  put<uint64_t>(h + kHeaderChecksumAt, checksum({h, kHeaderChecksumAt}));
  return out;
}

Index decode_index(std::span<const std::byte> bytes, const std::string& what) {
  const char* hint = "re-run `hpdl pack` or re-stage the store";
  HPDL_CHECK(bytes.size() >= kHeaderSize, "store index {}: truncated ({} bytes, header needs {}); {}", what,
             bytes.size(), kHeaderSize, hint);
  const std::byte* h = bytes.data();
  HPDL_CHECK(std::memcmp(h, kIndexMagic, 8) == 0, "store index {}: bad magic number, not an hpdl store index",
             what);
  HPDL_CHECK(get<uint64_t>(h + kHeaderChecksumAt) == checksum({h, kHeaderChecksumAt}),
             "store index {}: header checksum mismatch (corrupt); {}", what, hint);
  const uint32_t version = get<uint32_t>(h + 8);
  HPDL_CHECK(version == kFormatVersion, "store index {}: format version {} (this hpdl reads {})", what,
             version, kFormatVersion);
  HPDL_CHECK(all_zero(h + 40, 16), "store index {}: reserved header bytes are not zero (corrupt or newer format)",
             what);
  const uint64_t n_parts = get<uint32_t>(h + 12);
  const uint64_t n_entries = get<uint64_t>(h + 16);
  const uint64_t strings_size = get<uint64_t>(h + 24);
  const uint64_t body = bytes.size() - kHeaderSize;
  // Bound each count by the body size before multiplying, so nothing overflows.
  HPDL_CHECK(n_entries <= body / kEntryRecordSize && strings_size <= body &&
                 n_parts * kPartitionRecordSize + n_entries * kEntryRecordSize + strings_size == body,
             "store index {}: size {} does not match its header ({} partitions, {} entries, {} path bytes); "
             "truncated? {}",
             what, bytes.size(), n_parts, n_entries, strings_size, hint);
  HPDL_CHECK(get<uint64_t>(h + 32) == checksum(bytes.subspan(kHeaderSize)),
             "store index {}: body checksum mismatch (corrupt); {}", what, hint);

  Index index;
  const std::byte* p = bytes.data() + kHeaderSize;
  index.partitions.resize(n_parts);
  for (PartitionInfo& part : index.partitions) {
    part.data_size = get<uint64_t>(p);
    part.data_checksum = get<uint64_t>(p + 8);
    p += kPartitionRecordSize;
  }
  const std::byte* strings = p + n_entries * kEntryRecordSize;
  index.entries.resize(n_entries);
  uint64_t next_path = 0;
  for (uint64_t i = 0; i < n_entries; ++i, p += kEntryRecordSize) {
    Entry& e = index.entries[i];
    e.offset = get<uint64_t>(p);
    e.stored_size = get<uint64_t>(p + 8);
    e.size = get<uint64_t>(p + 16);
    e.checksum = get<uint64_t>(p + 24);
    const uint64_t path_offset = get<uint64_t>(p + 32);
    const uint32_t path_len = get<uint32_t>(p + 40);
    e.partition = get<uint32_t>(p + 44);
    const uint8_t comp = get<uint8_t>(p + 48);
    e.label = get<int32_t>(p + 52);
    HPDL_CHECK(all_zero(p + 49, 3), "store index {}: entry {} has non-zero reserved bytes", what, i);
    // Paths are stored back to back in entry order; anything else is corruption.
    HPDL_CHECK(path_offset == next_path && path_len <= strings_size - path_offset,
               "store index {}: entry {} has its path outside its place in the string table", what, i);
    next_path += path_len;
    e.path.assign(reinterpret_cast<const char*>(strings + path_offset), path_len);
    std::string problem = entry_path_problem(e.path);
    HPDL_CHECK(problem.empty(), "store index {}: entry {} '{}': {}", what, i, e.path, problem);
    HPDL_CHECK(i == 0 || index.entries[i - 1].path < e.path, "store index {}: entry '{}' out of order", what,
               e.path);
    HPDL_CHECK(comp <= 2, "store index {}: entry '{}' has unknown compression {}", what, e.path, comp);
    e.compression = static_cast<Compression>(comp);
    HPDL_CHECK(e.partition < n_parts, "store index {}: entry '{}' names partition {} of {}", what, e.path,
               e.partition, n_parts);
    const uint64_t psize = index.partitions[e.partition].data_size;
    HPDL_CHECK(e.offset <= psize && e.stored_size <= psize - e.offset,
               "store index {}: entry '{}' lies outside partition {} ({} + {} > {})", what, e.path, e.partition,
               e.offset, e.stored_size, psize);
    HPDL_CHECK(e.compression != Compression::none || e.stored_size == e.size,
               "store index {}: entry '{}' is uncompressed but sizes differ", what, e.path);
    // A compressed entry expands into memory; refuse absurd claims (corrupt index).
    HPDL_CHECK(e.size <= (uint64_t{1} << 40), "store index {}: entry '{}' claims {} bytes", what, e.path,
               e.size);
  }
  HPDL_CHECK(next_path == strings_size, "store index {}: {} unused bytes in the string table", what,
             strings_size - next_path);
  return index;
}

std::vector<std::byte> encode_partition_header(uint32_t id, uint64_t data_size) {
  std::vector<std::byte> h(kHeaderSize);
  std::memcpy(h.data(), kPartitionMagic, 8);
  put<uint32_t>(h.data() + 8, kFormatVersion);
  put<uint32_t>(h.data() + 12, id);
  put<uint64_t>(h.data() + 16, data_size);
  put<uint64_t>(h.data() + kHeaderChecksumAt, checksum({h.data(), kHeaderChecksumAt}));
  return h;
}

void check_partition_header(std::span<const std::byte> header, uint32_t expected_id,
                            uint64_t expected_data_size, uint64_t file_size, const std::string& what) {
  const char* hint = "re-stage the store or re-run `hpdl pack`";
  HPDL_CHECK(header.size() >= kHeaderSize && file_size >= kHeaderSize,
             "store partition {}: truncated ({} bytes, header needs {}); {}", what, file_size, kHeaderSize, hint);
  const std::byte* h = header.data();
  HPDL_CHECK(std::memcmp(h, kPartitionMagic, 8) == 0, "store partition {}: bad magic number", what);
  HPDL_CHECK(get<uint64_t>(h + kHeaderChecksumAt) == checksum({h, kHeaderChecksumAt}),
             "store partition {}: header checksum mismatch (corrupt); {}", what, hint);
  HPDL_CHECK(get<uint32_t>(h + 8) == kFormatVersion, "store partition {}: format version {} (this hpdl reads {})",
             what, get<uint32_t>(h + 8), kFormatVersion);
  HPDL_CHECK(get<uint32_t>(h + 12) == expected_id, "store partition {}: header says partition {}, expected {}",
             what, get<uint32_t>(h + 12), expected_id);
  HPDL_CHECK(all_zero(h + 24, 32), "store partition {}: reserved header bytes are not zero", what);
  const uint64_t data_size = get<uint64_t>(h + 16);
  HPDL_CHECK(data_size == expected_data_size, "store partition {}: holds {} data bytes, the index expects {}",
             what, data_size, expected_data_size);
  HPDL_CHECK(file_size - kHeaderSize == data_size,
             "store partition {}: file is {} bytes, expected {} (truncated or padded); {}", what, file_size,
             kHeaderSize + data_size, hint);
}

bool compress(Compression c, std::span<const std::byte> in, int level, std::vector<std::byte>& out) {
  if (c == Compression::none || in.empty()) return false;
  if (c == Compression::lz4) {
    if (in.size() > static_cast<size_t>(LZ4_MAX_INPUT_SIZE)) return false;
    out.resize(LZ4_compressBound(static_cast<int>(in.size())));
    int n = LZ4_compress_default(reinterpret_cast<const char*>(in.data()), reinterpret_cast<char*>(out.data()),
                                 static_cast<int>(in.size()), static_cast<int>(out.size()));
    if (n <= 0 || static_cast<size_t>(n) >= in.size()) return false;
    out.resize(n);
    return true;
  }
  out.resize(ZSTD_compressBound(in.size()));
  size_t n = ZSTD_compress(out.data(), out.size(), in.data(), in.size(), level);
  if (ZSTD_isError(n) || n >= in.size()) return false;
  out.resize(n);
  return true;
}

void decompress(Compression c, std::span<const std::byte> in, std::span<std::byte> out, const std::string& what) {
  if (c == Compression::lz4) {
    HPDL_CHECK(out.size() <= static_cast<size_t>(LZ4_MAX_INPUT_SIZE) && in.size() <= INT32_MAX,
               "store: {}: lz4 entry too large", what);
    int n = LZ4_decompress_safe(reinterpret_cast<const char*>(in.data()), reinterpret_cast<char*>(out.data()),
                                static_cast<int>(in.size()), static_cast<int>(out.size()));
    HPDL_CHECK(n >= 0 && static_cast<size_t>(n) == out.size(), "store: {}: corrupt lz4 data", what);
    return;
  }
  if (c == Compression::zstd) {
    size_t n = ZSTD_decompress(out.data(), out.size(), in.data(), in.size());
    HPDL_CHECK(!ZSTD_isError(n) && n == out.size(), "store: {}: corrupt zstd data", what);
    return;
  }
  HPDL_CHECK(in.size() == out.size(), "store: {}: size mismatch", what);
  if (!in.empty()) std::memcpy(out.data(), in.data(), in.size());  // an empty entry may have null data()
}

std::vector<std::byte> read_file(const std::filesystem::path& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  HPDL_CHECK(fd >= 0, "store: cannot open {}: {}", path.string(), std::strerror(errno));
  std::vector<std::byte> out;
  std::byte buf[1 << 16];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int err = errno;
      ::close(fd);
      HPDL_FAIL("store: read of {} failed: {}", path.string(), std::strerror(err));
    }
    if (n == 0) break;
    out.insert(out.end(), buf, buf + n);
  }
  ::close(fd);
  return out;
}

}  // namespace hpdl::store
