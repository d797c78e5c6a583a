// libFuzzer target for the store's parsers: the index decoder, the partition header
// check, the decompressors, and a whole Reader over a fuzzed index + partition pair.
// Built and run by bench/store/fuzz.sh (clang, -fsanitize=fuzzer,address,undefined).
// The first input byte picks the target; the rest is the file content.
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "hpdl/core/error.h"
#include "hpdl/store/reader.h"
#include "hpdl/store/writer.h"

namespace fs = std::filesystem;
using namespace hpdl::store;

namespace {

fs::path g_dir;  // scratch store folder on tmpfs

void write_bytes(const fs::path& p, const uint8_t* data, size_t n) {
  std::ofstream(p, std::ios::binary | std::ios::trunc).write(reinterpret_cast<const char*>(data), std::streamsize(n));
}

void write_seed(const fs::path& dir, const std::string& name, uint8_t mode, const std::vector<std::byte>& body) {
  std::ofstream out(dir / name, std::ios::binary);
  out.put(char(mode));
  out.write(reinterpret_cast<const char*>(body.data()), std::streamsize(body.size()));
}

// Seeds: a real small store's index, partition, and index+partition pair.
void make_seeds(const fs::path& dir) {
  fs::path tmp = g_dir / "seed";
  fs::create_directories(tmp / "src" / "a");
  std::ofstream(tmp / "src" / "a" / "b.txt") << "hello";
  std::ofstream(tmp / "src" / "c.txt") << std::string(300, 'c');
  std::ofstream(tmp / "src" / "e.txt");
  PackOptions o;
  o.compression = Compression::lz4;
  pack(tmp / "src", tmp / "store", o);
  auto index = read_file(tmp / "store" / kIndexName);
  auto part = read_file(tmp / "store" / partition_name(0));
  fs::create_directories(dir);
  write_seed(dir, "index", 0, index);
  write_seed(dir, "partition", 1, part);
  std::vector<std::byte> pair;
  uint32_t n = uint32_t(index.size());
  for (int i = 0; i < 4; ++i) pair.push_back(std::byte(n >> (8 * i)));
  pair.insert(pair.end(), index.begin(), index.end());
  pair.insert(pair.end(), part.begin(), part.end());
  write_seed(dir, "store", 2, pair);
  write_seed(dir, "index_fixed", 0x80, index);
  write_seed(dir, "store_fixed", 0x82, pair);
  fs::remove_all(tmp);
}

// Rewrites an index's body and header checksums so mutations get past them and
// reach the structural checks behind (chosen by the top bit of the first byte).
std::vector<uint8_t> fix_index_checksums(const uint8_t* p, size_t n) {
  std::vector<uint8_t> v(p, p + n);
  if (n < kHeaderSize) return v;
  uint64_t body = checksum({reinterpret_cast<const std::byte*>(v.data()) + kHeaderSize, n - kHeaderSize});
  std::memcpy(v.data() + 32, &body, 8);
  uint64_t head = checksum({reinterpret_cast<const std::byte*>(v.data()), 56});
  std::memcpy(v.data() + 56, &head, 8);
  return v;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  std::string tmpl = "/dev/shm/hpdl_fuzz_XXXXXX";
  if (!::mkdtemp(tmpl.data())) {
    tmpl = (fs::temp_directory_path() / "hpdl_fuzz_XXXXXX").string();
    ::mkdtemp(tmpl.data());
  }
  g_dir = tmpl;
  if (const char* seeds = std::getenv("HPDL_FUZZ_WRITE_SEEDS")) make_seeds(seeds);
  std::atexit([] { fs::remove_all(g_dir); });
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint8_t mode = data[0] % 4;
  const bool fix = data[0] & 0x80;
  std::span<const std::byte> body(reinterpret_cast<const std::byte*>(data + 1), size - 1);
  std::vector<uint8_t> fixed;
  if (fix && mode == 0) {
    fixed = fix_index_checksums(data + 1, size - 1);
    body = {reinterpret_cast<const std::byte*>(fixed.data()), fixed.size()};
  }
  try {
    if (mode == 0) {
      Index idx = decode_index(body, "fuzz");
      auto again = encode_index(idx);  // whatever decodes must re-encode identically
      if (again.size() != body.size() || !std::equal(again.begin(), again.end(), body.begin())) std::abort();
    } else if (mode == 1) {
      check_partition_header(body, 0, body.size() >= kHeaderSize ? body.size() - kHeaderSize : 0, body.size(),
                             "fuzz");
    } else if (mode == 2) {
      if (body.size() < 4) return 0;
      uint32_t n = uint32_t(body[0]) | uint32_t(body[1]) << 8 | uint32_t(body[2]) << 16 | uint32_t(body[3]) << 24;
      if (n > body.size() - 4) return 0;
      fixed = fix ? fix_index_checksums(data + 5, n) : std::vector<uint8_t>(data + 5, data + 5 + n);
      write_bytes(g_dir / kIndexName, fixed.data(), n);
      write_bytes(g_dir / partition_name(0), data + 5 + n, body.size() - 4 - n);
      fs::remove(g_dir / partition_name(1));
      Reader r = Reader::open(g_dir);
      for (size_t i = 0; i < r.size() && i < 64; ++i) {
        if (r.entry(i).size > (1u << 20)) continue;  // keep each run small
        try {
          r.read(i);
        } catch (const hpdl::Error&) {
        }
        r.list_dir("");
      }
    } else {
      // Decompressors with a claimed output size.
      if (body.size() < 3) return 0;
      size_t out_size = (size_t(body[1]) | size_t(body[2]) << 8) * 4;
      std::vector<std::byte> out(out_size);
      decompress(uint8_t(body[0]) % 2 ? Compression::zstd : Compression::lz4, body.subspan(3), out, "fuzz");
    }
  } catch (const hpdl::Error&) {
    // Rejected input is the expected outcome; crashes and sanitizer reports are the bugs.
  }
  return 0;
}
