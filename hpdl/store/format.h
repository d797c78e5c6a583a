// On-disk format of the packed data store: one index file plus a few partition
// files in one directory (byte layout in docs/store.md). Every file starts with
// a 64-byte header carrying a magic number, the format version and an XXH3_64
// checksum of the header itself, so truncation and corruption are detected on
// open and reported with the file's path.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace hpdl::store {

inline constexpr char kIndexMagic[8] = {'H', 'P', 'D', 'L', 'I', 'D', 'X', '1'};
inline constexpr char kPartitionMagic[8] = {'H', 'P', 'D', 'L', 'P', 'R', 'T', '1'};
inline constexpr uint32_t kFormatVersion = 1;
inline constexpr size_t kHeaderSize = 64;
inline constexpr size_t kEntryRecordSize = 56;
inline constexpr size_t kPartitionRecordSize = 16;
inline constexpr int32_t kNoLabel = INT32_MIN;
inline constexpr const char* kIndexName = "index.hpdi";
// Large uncompressed files start at a multiple of this many bytes of their partition
// file (PackOptions::align_min_bytes), so the LD_PRELOAD shim can map them in place
// on any page size up to 64 KiB (x86-64 4 KiB; POWER and some ARM systems 64 KiB).
inline constexpr uint64_t kMapAlign = uint64_t{1} << 16;

enum class Compression : uint8_t { none = 0, lz4 = 1, zstd = 2 };

// "none", "lz4", "zstd"; parse_compression throws hpdl::Error on anything else.
const char* compression_name(Compression c);
Compression parse_compression(std::string_view name);

// Name of partition `id` inside a store directory: "part-00007.hpdp".
std::string partition_name(uint32_t id);

// One file of the store, as recorded in the index.
struct Entry {
  std::string path;        // relative, '/'-separated, normalized (see check_entry_path)
  uint32_t partition = 0;  // partition id
  uint64_t offset = 0;     // byte offset of the stored bytes inside the partition's data region
  uint64_t stored_size = 0;  // bytes in the partition (compressed size when compressed)
  uint64_t size = 0;         // bytes of the original file
  uint64_t checksum = 0;     // XXH3_64 of the original (uncompressed) bytes
  Compression compression = Compression::none;
  int32_t label = kNoLabel;  // class label for dataset samples (idx), kNoLabel for plain files
};

// One partition, as recorded in the index: its data size and XXH3_64 of its data.
struct PartitionInfo {
  uint64_t data_size = 0;
  uint64_t data_checksum = 0;
};

// The decoded index: entries sorted by path (strictly increasing, no duplicates).
struct Index {
  std::vector<PartitionInfo> partitions;
  std::vector<Entry> entries;
};

// Serializes an index (entries must already be sorted; throws otherwise).
std::vector<std::byte> encode_index(const Index& index);

// Parses and validates index bytes: magic, version, header and body checksums,
// record bounds against the partition sizes, path validity and sort order.
// `what` names the file in error messages. Throws hpdl::Error on any defect.
Index decode_index(std::span<const std::byte> bytes, const std::string& what);

// The 64-byte header of partition `id` holding `data_size` data bytes.
std::vector<std::byte> encode_partition_header(uint32_t id, uint64_t data_size);

// Validates a partition header (magic, version, checksum, id) and that the file
// is exactly kHeaderSize + expected_data_size bytes long (`file_size`).
void check_partition_header(std::span<const std::byte> header, uint32_t expected_id,
                            uint64_t expected_data_size, uint64_t file_size,
                            const std::string& what);

// Returns an empty string when `path` is an acceptable entry path, else the reason:
// relative, no empty / "." / ".." components, no leading or trailing '/', no NUL,
// at most 4096 bytes. Used by the writer (refuse to pack) and the reader (refuse to look up).
std::string entry_path_problem(std::string_view path);

// XXH3_64 of a byte range.
uint64_t checksum(std::span<const std::byte> bytes);

// Compresses `in` with `c`; returns false when compression would not save space.
bool compress(Compression c, std::span<const std::byte> in, int level, std::vector<std::byte>& out);
// Decompresses exactly out.size() bytes; throws hpdl::Error (naming `what`) on a malformed stream.
void decompress(Compression c, std::span<const std::byte> in, std::span<std::byte> out,
                const std::string& what);

// Reads a whole file; throws hpdl::Error naming the path when it cannot.
std::vector<std::byte> read_file(const std::filesystem::path& path);

}  // namespace hpdl::store
