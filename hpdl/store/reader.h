// Reader of a packed store: opens the index and memory-maps the partitions of a
// store directory (normally node-local, after `hpdl stage`), then serves reads by
// path or by entry number without touching any other file system. All reads are
// thread-safe. This is the API a StoreDataset builds on, and what the LD_PRELOAD shim uses.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "hpdl/store/format.h"

namespace hpdl::store {

// When entry checksums are verified.
enum class Verify {
  first_read,  // the first read of each entry checks its XXH3_64, later reads do not (default)
  always,      // every read of a whole entry checks it (partial reads of a large entry check it once)
  never,       // no content checks (headers and the index are still checked on open)
};

struct ReaderOptions {
  Verify verify = Verify::first_read;
  // Accept a store whose directory lacks some partitions (a node of a partitioned
  // staging); reading an entry of a missing partition throws, naming the partition.
  bool allow_missing_partitions = false;
};

// A file or folder of the store's tree, as listed by Reader::list_dir.
struct DirEntry {
  std::string name;  // one path component
  bool is_dir = false;
};

class Reader {
 public:
  // Opens `dir` (the folder holding index.hpdi and part-*.hpdp). Validates the index
  // fully and every partition's header and length; throws hpdl::Error naming the
  // file at fault (missing, truncated, corrupt header, wrong version).
  static Reader open(const std::filesystem::path& dir, ReaderOptions options = {});

  Reader(Reader&&) noexcept;
  Reader& operator=(Reader&&) noexcept;
  ~Reader();

  const std::filesystem::path& dir() const;
  size_t size() const;  // number of entries (files)
  const Entry& entry(size_t i) const;  // metadata of entry i (path, size, label, ...); i < size()

  // Entry number of `path` (relative, as stored: "a/b.txt"), or nullopt. A path that
  // is absolute or has "."/".." components is refused (nullopt), never resolved.
  std::optional<size_t> find(std::string_view path) const;

  // True for "" (the root) and every folder that holds at least one entry.
  bool is_dir(std::string_view path) const;
  // Immediate children of folder `path` ("" = root), sorted by name; nullopt if not a folder.
  std::optional<std::vector<DirEntry>> list_dir(std::string_view path) const;
  // Entry numbers of every entry whose path starts with `prefix` (e.g. "train/"), in path order.
  std::vector<size_t> list(std::string_view prefix) const;

  // Reads entry i whole into `out`, which must hold exactly entry(i).size bytes.
  // Verifies the checksum per the Verify mode; throws hpdl::Error naming the entry
  // and the partition file on a mismatch.
  void read(size_t i, std::span<std::byte> out) const;
  std::vector<std::byte> read(size_t i) const;
  std::vector<std::byte> read(std::string_view path) const;  // throws if absent

  // Reads up to out.size() bytes of entry i starting at `offset` (like pread); returns
  // the count (0 at or past the end). A compressed entry is decompressed whole for
  // each call; use read() or view() for whole-entry access.
  size_t read_at(size_t i, uint64_t offset, std::span<std::byte> out) const;

  // Zero-copy view of an uncompressed entry inside the mapped partition (verified as read()
  // does); throws for a compressed entry. Valid while the Reader lives.
  std::span<const std::byte> view(size_t i) const;

  // Checks every entry's checksum (all partitions); throws on the first mismatch.
  void verify_all() const;

 private:
  struct Impl;
  explicit Reader(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace hpdl::store
