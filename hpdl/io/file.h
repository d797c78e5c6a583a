// Whole-file reading and atomic file writing. A write goes to "NAME.tmp.<pid>"
// in the same directory, is fsynced, renamed over NAME and the directory is
// fsynced, so a crash or a failed write (full disk, kill -9, an exception in
// the writer) leaves either the old file or the new one, never a torn file.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

namespace hpdl::io {

// Sink handed to the writer callback of write_file_atomic. write() throws
// hpdl::Error naming the file on a short write (ENOSPC, EIO, ...).
class FileSink {
 public:
  virtual ~FileSink() = default;
  virtual void write(const void* data, size_t n) = 0;
  void write(const std::string& s) { write(s.data(), s.size()); }
  virtual uint64_t bytes_written() const = 0;
};

// Writes `path` atomically: calls `writer` with a sink on a temporary file,
// then fsync + rename + directory fsync. If the writer throws or any system
// call fails, the temporary is removed, `path` is left untouched, and an
// hpdl::Error naming `path` (with the writer's message) is thrown.
void write_file_atomic(const std::filesystem::path& path, const std::function<void(FileSink&)>& writer);
void write_file_atomic(const std::filesystem::path& path, const void* data, size_t n);

// Reads a whole file; throws naming the file when it is missing or unreadable.
std::vector<uint8_t> read_file(const std::filesystem::path& path);

// xxHash64 of a byte range (the checksum of hpdl's file formats), seed 0.
uint64_t xxh64(const void* data, size_t n, uint64_t seed = 0);
// Incremental xxHash64 over a stream of chunks.
class Xxh64 {
 public:
  explicit Xxh64(uint64_t seed = 0);
  ~Xxh64();
  Xxh64(const Xxh64&) = delete;
  Xxh64& operator=(const Xxh64&) = delete;
  void update(const void* data, size_t n);
  uint64_t digest() const;

 private:
  void* state_;
};
// Formats a checksum the way hpdl writes it into metadata: 16 lower-case hex digits.
std::string hex64(uint64_t v);

}  // namespace hpdl::io
