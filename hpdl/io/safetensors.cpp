// safetensors: serialisation and the checks of load. The header is padded with
// spaces to a multiple of 8 bytes (as the reference implementation does) so the
// data section is aligned for zero-copy readers such as torch.frombuffer.
#include "hpdl/io/safetensors.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstring>
#include <vector>

#include "hpdl/io/file.h"

namespace hpdl::io {
namespace {

using json = nlohmann::json;
constexpr uint64_t kMaxHeader = 100ull << 20;  // the reference implementation's limit

struct Entry {
  std::string name;
  DType dtype;
  Shape shape;
  uint64_t begin, end;
};

struct Parsed {
  std::vector<Entry> entries;
  std::map<std::string, std::string> metadata;
  size_t data_start = 0;
};

uint64_t read_le64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// Parses and checks everything but the checksum.
Parsed parse(const std::filesystem::path& path, const std::vector<uint8_t>& bytes) {
  const std::string f = path.string();
  HPDL_CHECK(bytes.size() >= 8, "{}: not a safetensors file: {} bytes, shorter than the 8-byte header length "
             "(truncated?)", f, bytes.size());
  uint64_t n = read_le64(bytes.data());
  HPDL_CHECK(n <= kMaxHeader && n <= bytes.size() - 8,
             "{}: header length {} exceeds the file ({} bytes) or the 100 MiB limit (truncated or not safetensors)",
             f, n, bytes.size());
  json header;
  try {
    header = json::parse(bytes.begin() + 8, bytes.begin() + 8 + static_cast<std::ptrdiff_t>(n));
  } catch (const json::exception& e) {
    HPDL_FAIL("{}: header is not valid JSON: {}", f, e.what());
  }
  HPDL_CHECK(header.is_object(), "{}: header is not a JSON object", f);
  Parsed p;
  p.data_start = 8 + n;
  const uint64_t data_size = bytes.size() - p.data_start;
  for (auto& [name, v] : header.items()) {
    if (name == "__metadata__") {
      HPDL_CHECK(v.is_object(), "{}: __metadata__ is not an object", f);
      for (auto& [k, s] : v.items()) {
        HPDL_CHECK(s.is_string(), "{}: __metadata__ value of '{}' is not a string", f, k);
        p.metadata[k] = s.get<std::string>();
      }
      continue;
    }
    HPDL_CHECK(v.is_object() && v.contains("dtype") && v.contains("shape") && v.contains("data_offsets"),
               "{}: tensor '{}' needs dtype, shape and data_offsets", f, name);
    Entry e;
    e.name = name;
    HPDL_CHECK(v["dtype"].is_string(), "{}: tensor '{}': dtype is not a string", f, name);
    e.dtype = safetensors_dtype_from_name(v["dtype"].get<std::string>(), f + ": tensor '" + name + "'");
    HPDL_CHECK(v["shape"].is_array(), "{}: tensor '{}': shape is not an array", f, name);
    for (auto& d : v["shape"]) {
      HPDL_CHECK(d.is_number_unsigned(), "{}: tensor '{}': shape entries must be non-negative integers", f, name);
      e.shape.push_back(d.get<int64_t>());
    }
    auto& off = v["data_offsets"];
    HPDL_CHECK(off.is_array() && off.size() == 2 && off[0].is_number_unsigned() && off[1].is_number_unsigned(),
               "{}: tensor '{}': data_offsets must be [begin, end]", f, name);
    e.begin = off[0].get<uint64_t>(), e.end = off[1].get<uint64_t>();
    HPDL_CHECK(e.begin <= e.end && e.end <= data_size,
               "{}: tensor '{}': data_offsets [{}, {}] outside the data section of {} bytes (truncated file?)", f,
               name, e.begin, e.end, data_size);
    uint64_t want = static_cast<uint64_t>(numel_of(e.shape)) * dtype_size(e.dtype);
    HPDL_CHECK(e.end - e.begin == want, "{}: tensor '{}': {} bytes in data_offsets but shape {} of {} needs {}", f,
               name, e.end - e.begin, shape_str(e.shape), safetensors_dtype_name(e.dtype), want);
    p.entries.push_back(std::move(e));
  }
  // The tensors must tile [0, data_size) exactly: sorted by begin, each starting where the last ended.
  std::vector<const Entry*> order;
  for (auto& e : p.entries) order.push_back(&e);
  std::sort(order.begin(), order.end(), [](auto* a, auto* b) { return a->begin < b->begin || (a->begin == b->begin && a->end < b->end); });
  uint64_t pos = 0;
  for (auto* e : order) {
    HPDL_CHECK(e->begin == pos, "{}: tensor '{}' starts at byte {} of the data section, expected {} ({})", f,
               e->name, e->begin, pos, e->begin < pos ? "overlaps the previous tensor" : "a gap before it");
    pos = e->end;
  }
  HPDL_CHECK(pos == data_size, "{}: {} trailing bytes after the last tensor (file corrupt or wrongly sized)", f,
             data_size - pos);
  auto it = p.metadata.find(kSafetensorsChecksumKey);
  if (it != p.metadata.end()) {
    uint64_t got = xxh64(bytes.data() + p.data_start, data_size);
    HPDL_CHECK(hex64(got) == it->second,
               "{}: checksum mismatch: data section xxh64 is {}, header says {} (the file is corrupt; use an older "
               "checkpoint or re-create it)", f, hex64(got), it->second);
  }
  return p;
}

}  // namespace

const char* safetensors_dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "F32";
    case DType::f64: return "F64";
    case DType::bf16: return "BF16";
    case DType::i64: return "I64";
    case DType::i32: return "I32";
    case DType::u8: return "U8";
    case DType::f16: return "F16";
  }
  return "?";
}

DType safetensors_dtype_from_name(const std::string& name, const std::string& context) {
  if (name == "F32") return DType::f32;
  if (name == "F64") return DType::f64;
  if (name == "BF16") return DType::bf16;
  if (name == "F16") return DType::f16;
  if (name == "I64") return DType::i64;
  if (name == "I32") return DType::i32;
  if (name == "U8") return DType::u8;
  HPDL_FAIL("{}: dtype '{}' is not supported (hpdl reads F32, F64, BF16, F16, I64, I32, U8)", context, name);
}

SafetensorsWriteInfo save_safetensors(const std::filesystem::path& path, const std::map<std::string, Tensor>& tensors,
                          const std::map<std::string, std::string>& metadata) {
  const std::string f = path.string();
  std::vector<Tensor> cpu;
  json header = json::object();
  uint64_t pos = 0;
  Xxh64 hash;
  for (auto& [name, t] : tensors) {
    HPDL_CHECK(name != "__metadata__" && !name.empty(), "{}: invalid tensor name '{}'", f, name);
    HPDL_CHECK(t.defined(), "{}: tensor '{}' is undefined", f, name);
    Tensor c = t.device().is_cpu() ? t.contiguous() : t.to(kCPU).contiguous();
    header[name] = {{"dtype", safetensors_dtype_name(c.dtype())},
                    {"shape", c.shape()},
                    {"data_offsets", {pos, pos + c.nbytes()}}};
    pos += c.nbytes();
    if (c.nbytes()) hash.update(c.raw_data(), c.nbytes());
    cpu.push_back(c);
  }
  json meta = json::object();
  for (auto& [k, v] : metadata) meta[k] = v;
  const uint64_t checksum = hash.digest();
  meta[kSafetensorsChecksumKey] = hex64(checksum);
  header["__metadata__"] = meta;
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(static_cast<uint64_t>(text.size()) >> (8 * i));
  SafetensorsWriteInfo info;
  info.data_xxh64 = checksum;
  write_file_atomic(path, [&](FileSink& s) {
    Xxh64 whole;  // the whole file's checksum, computed from the bytes as they are written
    auto put = [&](const void* p, size_t n) {
      whole.update(p, n);
      s.write(p, n);
    };
    put(len, 8);
    put(text.data(), text.size());
    for (auto& c : cpu)
      if (c.nbytes()) put(c.raw_data(), c.nbytes());
    info.file_xxh64 = whole.digest();
    info.file_bytes = s.bytes_written();
  });
  return info;
}

SafetensorsFile load_safetensors(const std::filesystem::path& path) {
  std::vector<uint8_t> bytes = read_file(path);
  Parsed p = parse(path, bytes);
  SafetensorsFile out;
  out.metadata = std::move(p.metadata);
  for (auto& e : p.entries) {
    Tensor t = Tensor::empty(e.shape, e.dtype);
    if (e.end > e.begin) std::memcpy(t.raw_data(), bytes.data() + p.data_start + e.begin, e.end - e.begin);
    out.tensors.emplace(e.name, std::move(t));
  }
  return out;
}

std::map<std::string, std::string> verify_safetensors(const std::filesystem::path& path) {
  std::vector<uint8_t> bytes = read_file(path);
  return parse(path, bytes).metadata;
}

}  // namespace hpdl::io
