// idx reader (the format of LeCun's MNIST files, reused by Fashion-MNIST):
// bytes 0-1 zero, byte 2 the element type, byte 3 the number of dims, then one
// big-endian uint32 per dim, then the data. zlib's gzread reads gzip and plain
// files alike, so "train-images-idx3-ubyte" and "...ubyte.gz" both work.
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "hpdl/core/error.h"
#include "hpdl/data/readers.h"

namespace hpdl::data {
namespace {

std::string missing_hint(const std::filesystem::path& path) {
  if (path.string().find("fashion-mnist") != std::string::npos)
    return fmt::format(" (Fashion-MNIST is read from {}: install the Debian package dataset-fashion-mnist, "
                       "e.g. with scripts/setup.sh, or point data.path at a copy)",
                       kFashionMnistDir);
  return "";
}

// Owns a gzFile so every error path closes it.
struct Gz {
  gzFile f;
  ~Gz() { gzclose(f); }
};

}  // namespace

RawArray read_idx(const std::filesystem::path& path) {
  const std::string f = path.string();
  std::error_code ec;
  HPDL_CHECK(std::filesystem::is_regular_file(path, ec), "{}: no such idx file{}", f, missing_hint(path));
  Gz gz{gzopen(f.c_str(), "rb")};
  HPDL_CHECK(gz.f != nullptr, "{}: cannot open: {}", f, std::strerror(errno));
  gzbuffer(gz.f, 1 << 20);
  auto read_exact = [&](void* dst, size_t n, const char* what) {
    size_t got = 0;
    while (got < n) {
      unsigned chunk = static_cast<unsigned>(std::min<size_t>(n - got, size_t{1} << 30));
      int r = gzread(gz.f, static_cast<char*>(dst) + got, chunk);
      if (r <= 0) {
        int err = 0;
        std::string why = r < 0 ? std::string(gzerror(gz.f, &err)) : "unexpected end of file";
        HPDL_FAIL("{}: truncated or corrupt while reading the {} ({} of {} bytes): {}", f, what, got, n, why);
      }
      got += static_cast<size_t>(r);
    }
  };
  uint8_t magic[4];
  read_exact(magic, 4, "magic number");
  HPDL_CHECK(magic[0] == 0 && magic[1] == 0, "{}: not an idx file (magic {:02x}{:02x}{:02x}{:02x}, expected 0000TTDD)",
             f, magic[0], magic[1], magic[2], magic[3]);
  HPDL_CHECK(magic[2] == 0x08, "{}: idx element type 0x{:02x} is not supported (hpdl reads unsigned bytes, type 0x08)",
             f, magic[2]);
  const int nd = magic[3];
  HPDL_CHECK(nd >= 1 && nd <= 4, "{}: idx file declares {} dims; expected 1 (labels) to 4", f, nd);
  RawArray out;
  out.dtype = DType::u8;
  for (int i = 0; i < nd; ++i) {
    uint8_t b[4];
    read_exact(b, 4, "dimension sizes");
    out.shape.push_back((int64_t{b[0]} << 24) | (int64_t{b[1]} << 16) | (int64_t{b[2]} << 8) | b[3]);
  }
  const int64_t n = numel_of(out.shape);
  HPDL_CHECK(n <= (int64_t{1} << 36), "{}: idx dims {} are implausibly large (corrupt header)", f, shape_str(out.shape));
  out.bytes.resize(static_cast<size_t>(n));
  read_exact(out.bytes.data(), out.bytes.size(), "data");
  char extra;
  HPDL_CHECK(gzread(gz.f, &extra, 1) == 0, "{}: trailing bytes after the {} elements of dims {} (corrupt file)", f, n,
             shape_str(out.shape));
  return out;
}

}  // namespace hpdl::data
