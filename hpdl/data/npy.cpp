// NumPy .npy reader/writer. Layout: "\x93NUMPY", major, minor, a header length
// (uint16 for v1, uint32 for v2/v3), then a Python dict literal
// {'descr': '<f4', 'fortran_order': False, 'shape': (N, C), } padded to 64 bytes.
// The dict is parsed by hand: it is a fixed, tiny grammar.
#include <cstring>
#include <string_view>

#include "hpdl/core/error.h"
#include "hpdl/data/readers.h"
#include "hpdl/io/file.h"

namespace hpdl::data {
namespace {

// The text after "'key':" in the header dict, leading spaces skipped.
std::string_view dict_value(std::string_view dict, const char* key, const std::string& f) {
  std::string k = std::string("'") + key + "'";
  size_t p = dict.find(k);
  HPDL_CHECK(p != std::string_view::npos, "{}: .npy header has no '{}' entry: {}", f, key, std::string(dict));
  p = dict.find(':', p + k.size());
  HPDL_CHECK(p != std::string_view::npos, "{}: malformed .npy header: {}", f, std::string(dict));
  ++p;
  while (p < dict.size() && dict[p] == ' ') ++p;
  return dict.substr(p);
}

}  // namespace

RawArray read_npy(const std::filesystem::path& path) {
  const std::string f = path.string();
  std::vector<uint8_t> b = io::read_file(path);
  HPDL_CHECK(b.size() >= 10 && std::memcmp(b.data(), "\x93NUMPY", 6) == 0,
             "{}: not a .npy file (missing the \\x93NUMPY magic)", f);
  const int major = b[6];
  HPDL_CHECK(major >= 1 && major <= 3, "{}: .npy format version {}.{} is not supported (1.0 to 3.0)", f, major, b[7]);
  size_t hlen, hstart;
  if (major == 1) {
    hlen = b[8] | (size_t{b[9]} << 8), hstart = 10;
  } else {
    HPDL_CHECK(b.size() >= 12, "{}: truncated .npy header", f);
    hlen = b[8] | (size_t{b[9]} << 8) | (size_t{b[10]} << 16) | (size_t{b[11]} << 24), hstart = 12;
  }
  HPDL_CHECK(hstart + hlen <= b.size(), "{}: .npy header length {} exceeds the file ({} bytes)", f, hlen, b.size());
  std::string_view dict(reinterpret_cast<const char*>(b.data()) + hstart, hlen);

  std::string_view descr = dict_value(dict, "descr", f);
  HPDL_CHECK(!descr.empty() && (descr[0] == '\'' || descr[0] == '"'), "{}: .npy descr is not a string", f);
  size_t q = descr.find(descr[0], 1);
  HPDL_CHECK(q != std::string_view::npos, "{}: unterminated .npy descr", f);
  const std::string d(descr.substr(1, q - 1));
  RawArray out;
  if (d == "<f4" || d == "=f4") out.dtype = DType::f32;
  else if (d == "<f8" || d == "=f8") out.dtype = DType::f64;
  else if (d == "|u1" || d == "<u1" || d == "=u1") out.dtype = DType::u8;
  else if (d == "<i8" || d == "=i8") out.dtype = DType::i64;
  else if (d == "<i4" || d == "=i4") out.dtype = DType::i32;
  else
    HPDL_FAIL("{}: .npy dtype '{}' is not supported (hpdl reads little-endian <f4, <f8, |u1, <i8, <i4; convert "
              "with arr.astype('<f4'))", f, d);

  std::string_view fo = dict_value(dict, "fortran_order", f);
  HPDL_CHECK(fo.substr(0, 5) == "False", "{}: .npy array is in Fortran order; save it C-ordered "
             "(np.save(path, np.ascontiguousarray(arr)))", f);

  std::string_view sh = dict_value(dict, "shape", f);
  HPDL_CHECK(!sh.empty() && sh[0] == '(', "{}: .npy shape is not a tuple", f);
  size_t close = sh.find(')');
  HPDL_CHECK(close != std::string_view::npos, "{}: unterminated .npy shape", f);
  std::string_view tup = sh.substr(1, close - 1);
  size_t i = 0;
  while (i < tup.size()) {
    while (i < tup.size() && (tup[i] == ' ' || tup[i] == ',')) ++i;
    if (i >= tup.size()) break;
    int64_t v = 0;
    bool any = false;
    while (i < tup.size() && tup[i] >= '0' && tup[i] <= '9') v = v * 10 + (tup[i++] - '0'), any = true;
    while (i < tup.size() && tup[i] == 'L') ++i;  // Python 2 longs
    HPDL_CHECK(any, "{}: bad .npy shape '({})'", f, std::string(tup));
    out.shape.push_back(v);
  }
  const size_t want = static_cast<size_t>(numel_of(out.shape)) * dtype_size(out.dtype);
  const size_t have = b.size() - hstart - hlen;
  HPDL_CHECK(have == want, "{}: .npy data is {} bytes but shape {} of {} needs {} (truncated or corrupt)", f, have,
             shape_str(out.shape), d, want);
  out.bytes.assign(b.begin() + static_cast<std::ptrdiff_t>(hstart + hlen), b.end());
  return out;
}

void write_npy(const std::filesystem::path& path, DType dtype, const Shape& shape, const void* data) {
  const char* descr = nullptr;
  switch (dtype) {
    case DType::f32: descr = "<f4"; break;
    case DType::f64: descr = "<f8"; break;
    case DType::u8: descr = "|u1"; break;
    case DType::i64: descr = "<i8"; break;
    case DType::i32: descr = "<i4"; break;
    default: HPDL_FAIL("{}: write_npy: dtype {} has no .npy equivalent here", path.string(), dtype_name(dtype));
  }
  // Python tuple syntax: "()", "(5,)", "(2, 3)".
  std::string tup;
  for (size_t i = 0; i < shape.size(); ++i) tup += fmt::format("{}{}", i ? ", " : "", shape[i]);
  if (shape.size() == 1) tup += ",";
  std::string dict = fmt::format("{{'descr': '{}', 'fortran_order': False, 'shape': ({}), }}", descr, tup);
  const size_t total = 10 + dict.size() + 1;  // magic+version+len, dict, '\n'
  dict.append((64 - total % 64) % 64, ' ');
  dict += '\n';
  std::string head = "\x93NUMPY";
  head += static_cast<char>(1);
  head += static_cast<char>(0);
  head += static_cast<char>(dict.size() & 0xff);
  head += static_cast<char>(dict.size() >> 8);
  const size_t n = static_cast<size_t>(numel_of(shape)) * dtype_size(dtype);
  io::write_file_atomic(path, [&](io::FileSink& s) {
    s.write(head);
    s.write(dict);
    if (n) s.write(data, n);
  });
}

}  // namespace hpdl::data
