// The store writer: collects the input items, sorts them by path, streams them
// into partition files (each written to a temporary name, fsynced, renamed) and
// finally writes the index atomically. Appending reuses the same path: the old
// partitions stay untouched, new ones get the next ids, the merged index replaces the old.
#include "hpdl/store/writer.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <memory>

#include "hpdl/core/error.h"
#ifndef HPDL_STORE_LITE  // the light store library (cmake/store_targets.cmake) has no dataset readers
#include "hpdl/data/readers.h"
#endif
#include "hpdl/io/file.h"

namespace hpdl::store {
namespace fs = std::filesystem;

namespace {

// One file to pack: either a file on disk or bytes held in memory (dataset samples).
struct Item {
  std::string path;
  fs::path file;
  const std::byte* mem = nullptr;
  uint64_t size = 0;
  int32_t label = kNoLabel;
};

std::string join_prefix(const std::string& prefix, const std::string& path) {
  if (prefix.empty()) return path;
  std::string p = prefix;
  while (!p.empty() && p.back() == '/') p.pop_back();
  return p + "/" + path;
}

void add_item(std::vector<Item>& items, Item item, const PackOptions& options, const fs::path& origin) {
  item.path = join_prefix(options.prefix, item.path);
  std::string problem = entry_path_problem(item.path);
  HPDL_CHECK(problem.empty(), "hpdl pack: cannot store '{}' (from {}): {}; rename the file or fix --prefix",
             item.path, origin.string(), problem);
  items.push_back(std::move(item));
}

void collect_directory(const fs::path& src, const PackOptions& options, std::vector<Item>& items) {
  std::error_code ec;
  fs::recursive_directory_iterator it(src, fs::directory_options::none, ec);
  HPDL_CHECK(!ec, "hpdl pack: cannot list {}: {}", src.string(), ec.message());
  for (; it != fs::recursive_directory_iterator(); it.increment(ec)) {
    HPDL_CHECK(!ec, "hpdl pack: cannot list below {}: {}", src.string(), ec.message());
    const fs::directory_entry& de = *it;
    if (!de.is_regular_file()) continue;  // follows symlinks; skips devices, sockets, dirs
    Item item;
    item.path = fs::relative(de.path(), src).generic_string();
    item.file = de.path();
    item.size = de.file_size();
    add_item(items, std::move(item), options, de.path());
  }
}

// Reads a whole file, transparently gunzipping (gzread passes plain files through).
std::vector<std::byte> read_maybe_gz(const fs::path& path) {
  gzFile gz = gzopen(path.c_str(), "rb");
  HPDL_CHECK(gz, "hpdl pack: cannot open {}: {}", path.string(), std::strerror(errno));
  std::vector<std::byte> out;
  std::vector<std::byte> buf(1 << 20);
  for (;;) {
    int n = gzread(gz, buf.data(), static_cast<unsigned>(buf.size()));
    if (n < 0) {
      gzclose(gz);
      HPDL_FAIL("hpdl pack: {} is not a readable (gzip) file", path.string());
    }
    if (n == 0) break;
    out.insert(out.end(), buf.begin(), buf.begin() + n);
  }
  gzclose(gz);
  return out;
}

uint32_t be32(const std::byte* p) {
  return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | uint32_t(p[3]);
}

// Keeps the decoded dataset alive while its samples are packed.
struct Dataset {
  std::vector<std::byte> data;
  std::vector<std::byte> meta;
};

std::string idx_split(const fs::path& file) {
  std::string name = file.filename().string();
  if (name.rfind("train", 0) == 0) return "train";
  if (name.rfind("t10k", 0) == 0 || name.rfind("test", 0) == 0) return "test";
  std::string stem = name.substr(0, name.find('.'));
  return stem.empty() ? "data" : stem;
}

void collect_idx(const fs::path& src, const PackOptions& options, Dataset& ds, Dataset& labels_ds,
                 std::vector<Item>& items) {
  ds.data = read_maybe_gz(src);
  const std::byte* p = ds.data.data();
  HPDL_CHECK(ds.data.size() >= 4 && p[0] == std::byte{0} && p[1] == std::byte{0},
             "hpdl pack: {} is not an idx file (bad magic)", src.string());
  const uint8_t type = uint8_t(p[2]);
  const uint8_t rank = uint8_t(p[3]);
  HPDL_CHECK(type == 0x08 && rank >= 1 && ds.data.size() >= 4 + 4u * rank,
             "hpdl pack: {}: only uint8 idx files are supported (type 0x{:02x}, rank {})", src.string(), type, rank);
  std::vector<uint64_t> dims(rank);
  uint64_t sample = 1;
  for (int d = 0; d < rank; ++d) {
    dims[d] = be32(p + 4 + 4 * d);
    if (d > 0) sample *= dims[d];
  }
  const uint64_t header = 4 + 4 * rank;
  HPDL_CHECK(ds.data.size() - header == dims[0] * sample, "hpdl pack: {}: {} data bytes, header says {}x{}",
             src.string(), ds.data.size() - header, dims[0], sample);
  // The matching labels file: "...-images-idx3-ubyte[.gz]" -> "...-labels-idx1-ubyte[.gz]".
  std::vector<int32_t> labels;
  std::string name = src.filename().string();
  if (size_t at = name.find("images-idx3"); at != std::string::npos) {
    fs::path lab = src.parent_path() / (name.substr(0, at) + "labels-idx1" + name.substr(at + 11));
    if (fs::exists(lab)) {
      labels_ds.data = read_maybe_gz(lab);
      const std::byte* q = labels_ds.data.data();
      HPDL_CHECK(labels_ds.data.size() >= 8 && be32(q) == 0x801 && be32(q + 4) == dims[0] &&
                     labels_ds.data.size() == 8 + dims[0],
                 "hpdl pack: labels file {} does not match {} ({} samples)", lab.string(), src.string(), dims[0]);
      for (uint64_t i = 0; i < dims[0]; ++i) labels.push_back(int32_t(uint8_t(q[8 + i])));
    }
  }
  const std::string split = idx_split(src);
  const int width = std::max<int>(5, static_cast<int>(std::to_string(dims[0] ? dims[0] - 1 : 0).size()));
  for (uint64_t i = 0; i < dims[0]; ++i) {
    Item item;
    item.path = fmt::format("{}/{:0{}d}.bin", split, i, width);
    item.mem = p + header + i * sample;
    item.size = sample;
    item.label = labels.empty() ? kNoLabel : labels[i];
    add_item(items, std::move(item), options, src);
  }
  std::string shape;
  for (int d = 1; d < rank; ++d) shape += fmt::format("{}{}", d > 1 ? "," : "", dims[d]);
  std::string meta = fmt::format("{{\"count\":{},\"shape\":[{}],\"dtype\":\"uint8\",\"labels\":{}}}\n", dims[0],
                                 shape, labels.empty() ? "false" : "true");
  ds.meta.resize(meta.size());
  std::memcpy(ds.meta.data(), meta.data(), meta.size());
  Item m;
  m.path = split + "/meta.json";
  m.mem = ds.meta.data();
  m.size = ds.meta.size();
  add_item(items, std::move(m), options, src);
}

void collect_npy(const fs::path& src, const PackOptions& options, Dataset& ds, std::vector<Item>& items) {
  ds.data = read_file(src);
  const std::byte* p = ds.data.data();
  HPDL_CHECK(ds.data.size() >= 10 && std::memcmp(p, "\x93NUMPY", 6) == 0, "hpdl pack: {} is not a .npy file",
             src.string());
  const uint8_t major = uint8_t(p[6]);
  uint64_t hlen = 0, hstart = 0;
  if (major == 1) {
    hlen = uint64_t(uint8_t(p[8])) | (uint64_t(uint8_t(p[9])) << 8);
    hstart = 10;
  } else {
    HPDL_CHECK(ds.data.size() >= 12, "hpdl pack: {}: truncated .npy header", src.string());
    hlen = uint64_t(uint8_t(p[8])) | (uint64_t(uint8_t(p[9])) << 8) | (uint64_t(uint8_t(p[10])) << 16) |
           (uint64_t(uint8_t(p[11])) << 24);
    hstart = 12;
  }
  HPDL_CHECK(hstart + hlen <= ds.data.size(), "hpdl pack: {}: truncated .npy header", src.string());
  std::string header(reinterpret_cast<const char*>(p + hstart), hlen);
  HPDL_CHECK(header.find("'fortran_order': False") != std::string::npos,
             "hpdl pack: {}: Fortran-order arrays are not supported; save with np.ascontiguousarray", src.string());
  size_t d0 = header.find("'descr':");
  size_t q1 = header.find('\'', d0 + 8), q2 = header.find('\'', q1 + 1);
  HPDL_CHECK(d0 != std::string::npos && q2 != std::string::npos, "hpdl pack: {}: no descr in .npy header",
             src.string());
  std::string descr = header.substr(q1 + 1, q2 - q1 - 1);
  uint64_t itemsize = 0;
  for (char c : descr.substr(2)) {
    HPDL_CHECK(c >= '0' && c <= '9', "hpdl pack: {}: unsupported dtype '{}'", src.string(), descr);
    itemsize = itemsize * 10 + uint64_t(c - '0');
  }
  size_t s0 = header.find("'shape':"), l = header.find('(', s0), r = header.find(')', l);
  HPDL_CHECK(s0 != std::string::npos && l != std::string::npos && r != std::string::npos,
             "hpdl pack: {}: no shape in .npy header", src.string());
  std::vector<uint64_t> dims;
  std::string shape_str = header.substr(l + 1, r - l - 1);
  for (size_t at = 0; at < shape_str.size();) {
    while (at < shape_str.size() && (shape_str[at] == ' ' || shape_str[at] == ',')) ++at;
    if (at >= shape_str.size()) break;
    uint64_t v = 0;
    while (at < shape_str.size() && shape_str[at] >= '0' && shape_str[at] <= '9') v = v * 10 + (shape_str[at++] - '0');
    dims.push_back(v);
  }
  HPDL_CHECK(!dims.empty(), "hpdl pack: {}: a 0-d array has no samples to pack", src.string());
  uint64_t sample = itemsize;
  for (size_t d = 1; d < dims.size(); ++d) sample *= dims[d];
  const uint64_t start = hstart + hlen;
  HPDL_CHECK(ds.data.size() - start == dims[0] * sample, "hpdl pack: {}: data size does not match shape",
             src.string());
  const std::string stem = src.stem().string();
  const int width = std::max<int>(5, static_cast<int>(std::to_string(dims[0] ? dims[0] - 1 : 0).size()));
  for (uint64_t i = 0; i < dims[0]; ++i) {
    Item item;
    item.path = fmt::format("{}/{:0{}d}.bin", stem, i, width);
    item.mem = p + start + i * sample;
    item.size = sample;
    add_item(items, std::move(item), options, src);
  }
  std::string shape;
  for (size_t d = 1; d < dims.size(); ++d) shape += fmt::format("{}{}", d > 1 ? "," : "", dims[d]);
  std::string meta = fmt::format("{{\"count\":{},\"shape\":[{}],\"dtype\":\"{}\",\"labels\":false}}\n", dims[0],
                                 shape, descr);
  ds.meta.assign(reinterpret_cast<const std::byte*>(meta.data()),
                 reinterpret_cast<const std::byte*>(meta.data() + meta.size()));
  Item m;
  m.path = stem + "/meta.json";
  m.mem = ds.meta.data();
  m.size = ds.meta.size();
  add_item(items, std::move(m), options, src);
}

#ifndef HPDL_STORE_LITE
const char* hdf5_dtype_name(DType t) {
  switch (t) {
    case DType::u8: return "uint8";
    case DType::i32: return "int32";
    case DType::i64: return "int64";
    case DType::f32: return "float32";
    case DType::f64: return "float64";
    default: return nullptr;
  }
}

// One split of an HDF5 file: samples x (kept alive in ds) and optional labels y. Returns false when x is absent.
bool collect_hdf5_split(const fs::path& src, const std::vector<std::string>& present, const std::string& split,
                        const std::string& x_name, const std::string& y_name, const PackOptions& options,
                        Dataset& ds, std::vector<Item>& items) {
  auto has = [&](std::string name) {
    if (!name.empty() && name[0] == '/') name.erase(0, 1);
    return std::find(present.begin(), present.end(), name) != present.end();
  };
  if (!has(x_name)) return false;
  data::RawArray x = data::read_hdf5(src, x_name);
  const char* dtype = hdf5_dtype_name(x.dtype);
  HPDL_CHECK(dtype != nullptr, "hpdl pack: {}: dataset '{}' has type {}, which a store split cannot hold",
             src.string(), x_name, dtype_name(x.dtype));
  HPDL_CHECK(x.shape.size() >= 2, "hpdl pack: {}: dataset '{}' is {}; samples need [N, ...] with at least 2 axes",
             src.string(), x_name, shape_str(x.shape));
  const uint64_t n = static_cast<uint64_t>(x.shape[0]);
  const uint64_t sample = x.bytes.size() / std::max<uint64_t>(n, 1);
  std::vector<int32_t> labels;
  if (has(y_name)) {
    const auto info = data::hdf5_dataset_info(src, y_name);
    HPDL_CHECK(info.shape.size() == 1 && static_cast<uint64_t>(info.shape[0]) == n,
               "hpdl pack: {}: labels '{}' are {}, the samples '{}' need [{}]", src.string(), y_name,
               shape_str(info.shape), x_name, n);
    std::vector<int64_t> y(static_cast<size_t>(n));
    data::read_hdf5_into(src, y_name, DType::i64, y.data(), y.size() * sizeof(int64_t));
    for (uint64_t i = 0; i < n; ++i) {
      HPDL_CHECK(y[i] >= 0 && y[i] <= INT32_MAX, "hpdl pack: {}: label {} of '{}' is {}, outside [0, 2^31)",
                 src.string(), i, y_name, y[i]);
      labels.push_back(static_cast<int32_t>(y[i]));
    }
  }
  ds.data.assign(reinterpret_cast<const std::byte*>(x.bytes.data()),
                 reinterpret_cast<const std::byte*>(x.bytes.data() + x.bytes.size()));
  x.bytes = {};
  const int width = std::max<int>(5, static_cast<int>(std::to_string(n ? n - 1 : 0).size()));
  for (uint64_t i = 0; i < n; ++i) {
    Item item;
    item.path = fmt::format("{}/{:0{}d}.bin", split, i, width);
    item.mem = ds.data.data() + i * sample;
    item.size = sample;
    item.label = labels.empty() ? kNoLabel : labels[i];
    add_item(items, std::move(item), options, src);
  }
  std::string shape;
  for (size_t d = 1; d < x.shape.size(); ++d) shape += fmt::format("{}{}", d > 1 ? "," : "", x.shape[d]);
  const std::string meta = fmt::format("{{\"count\":{},\"shape\":[{}],\"dtype\":\"{}\",\"labels\":{}}}\n", n,
                                       shape, dtype, labels.empty() ? "false" : "true");
  ds.meta.assign(reinterpret_cast<const std::byte*>(meta.data()),
                 reinterpret_cast<const std::byte*>(meta.data() + meta.size()));
  Item m;
  m.path = split + "/meta.json";
  m.mem = ds.meta.data();
  m.size = ds.meta.size();
  add_item(items, std::move(m), options, src);
  return true;
}

void collect_hdf5(const fs::path& src, const PackOptions& options, Dataset& train, Dataset& test,
                  std::vector<Item>& items) {
  const std::vector<std::string> present = data::list_hdf5_datasets(src);
  const data::Hdf5Names& h = options.hdf5;
  const bool any_train = collect_hdf5_split(src, present, "train", h.train_x, h.train_y, options, train, items);
  const bool any_test = collect_hdf5_split(src, present, "test", h.test_x, h.test_y, options, test, items);
  if (any_train || any_test) return;
  std::string list;
  for (const auto& d : present) list += (list.empty() ? "" : ", ") + d;
  HPDL_FAIL("hpdl pack: {} has neither '{}' nor '{}' (it holds: {}); name the samples with --hdf5-x / --hdf5-test-x",
            src.string(), h.train_x, h.test_x, list.empty() ? "no datasets" : list);
}
#endif  // HPDL_STORE_LITE

// Writes one partition file under a temporary name; rename happens in finish().
class PartitionWriter {
 public:
  PartitionWriter(const fs::path& store, uint32_t id) : id_(id) {
    final_ = store / partition_name(id);
    tmp_ = final_.string() + ".tmp";
    fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    HPDL_CHECK(fd_ >= 0, "hpdl pack: cannot create {}: {}", tmp_.string(), std::strerror(errno));
    std::vector<std::byte> zero(kHeaderSize);
    write(zero);  // placeholder header, rewritten once the size is known
    size_ = 0;
    XXH3_64bits_reset(state_.get());
  }
  ~PartitionWriter() {
    if (fd_ >= 0) {
      ::close(fd_);
      ::unlink(tmp_.c_str());
    }
  }
  uint64_t size() const { return size_; }
  // Zero bytes up to the next kMapAlign boundary of the partition file (header included).
  void pad_for_mapping() {
    const uint64_t rem = (kHeaderSize + size_) % kMapAlign;
    if (rem != 0) append(std::vector<std::byte>(kMapAlign - rem));
  }
  void append(std::span<const std::byte> bytes) {
    write(bytes);
    XXH3_64bits_update(state_.get(), bytes.data(), bytes.size());
  }
  PartitionInfo finish() {
    std::vector<std::byte> header = encode_partition_header(id_, size_);
    HPDL_CHECK(::pwrite(fd_, header.data(), header.size(), 0) == static_cast<ssize_t>(header.size()),
               "hpdl pack: header write to {} failed: {}", tmp_.string(), std::strerror(errno));
    HPDL_CHECK(::fsync(fd_) == 0, "hpdl pack: fsync of {} failed: {}", tmp_.string(), std::strerror(errno));
    ::close(fd_);
    fd_ = -1;
    HPDL_CHECK(::rename(tmp_.c_str(), final_.c_str()) == 0, "hpdl pack: rename to {} failed: {}",
               final_.string(), std::strerror(errno));
    return {size_, XXH3_64bits_digest(state_.get())};
  }

 private:
  void write(std::span<const std::byte> bytes) {
    size_t done = 0;
    while (done < bytes.size()) {
      ssize_t n = ::write(fd_, bytes.data() + done, bytes.size() - done);
      if (n < 0 && errno == EINTR) continue;
      HPDL_CHECK(n > 0, "hpdl pack: write to {} failed: {}; is the disk full?", tmp_.string(), std::strerror(errno));
      done += static_cast<size_t>(n);
    }
    size_ += bytes.size();
  }
  struct StateFree {
    void operator()(XXH3_state_t* s) const { XXH3_freeState(s); }
  };
  uint32_t id_;
  fs::path final_, tmp_;
  int fd_ = -1;
  uint64_t size_ = 0;
  std::unique_ptr<XXH3_state_t, StateFree> state_{XXH3_createState()};
};

// Reads a source file in chunks: calls fn(chunk) for each, returns the XXH3_64 of the whole.
template <typename Fn>
uint64_t stream_file(const fs::path& file, uint64_t expected, Fn&& fn) {
  int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  HPDL_CHECK(fd >= 0, "hpdl pack: cannot open {}: {}", file.string(), std::strerror(errno));
  std::unique_ptr<XXH3_state_t, decltype(&XXH3_freeState)> st(XXH3_createState(), &XXH3_freeState);
  XXH3_64bits_reset(st.get());
  std::vector<std::byte> buf(std::min<uint64_t>(std::max<uint64_t>(expected, 1), 8u << 20));
  uint64_t total = 0;
  for (;;) {
    ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int err = errno;
      ::close(fd);
      HPDL_FAIL("hpdl pack: read of {} failed: {}", file.string(), std::strerror(err));
    }
    if (n == 0) break;
    XXH3_64bits_update(st.get(), buf.data(), size_t(n));
    fn(std::span<const std::byte>(buf.data(), size_t(n)));
    total += uint64_t(n);
  }
  ::close(fd);
  HPDL_CHECK(total == expected, "hpdl pack: {} changed size while packing ({} -> {} bytes)", file.string(), expected,
             total);
  return XXH3_64bits_digest(st.get());
}

}  // namespace

PackStats pack(const fs::path& src, const fs::path& store, const PackOptions& options) {
  std::error_code ec;
  HPDL_CHECK(fs::exists(src, ec), "hpdl pack: source {} does not exist", src.string());
  std::vector<Item> items;
  Dataset ds, labels_ds;
  const std::string name = src.filename().string();
  if (fs::is_directory(src)) {
    collect_directory(src, options, items);
  } else if (src.extension() == ".npy") {
    collect_npy(src, options, ds, items);
  } else if (src.extension() == ".h5" || src.extension() == ".hdf5" || src.extension() == ".he5") {
#ifdef HPDL_STORE_LITE
    HPDL_FAIL("hpdl pack: {} is an HDF5 file, which this light build of the store tools cannot read; use `hpdl pack`",
              src.string());
#else
    collect_hdf5(src, options, ds, labels_ds, items);
#endif
  } else if (name.find("idx") != std::string::npos) {
    collect_idx(src, options, ds, labels_ds, items);
  } else {
    HPDL_FAIL("hpdl pack: do not know how to pack {}; give a directory, an idx file, a .npy file or an HDF5 file "
              "(.h5)", src.string());
  }
  std::sort(items.begin(), items.end(), [](const Item& a, const Item& b) { return a.path < b.path; });
  for (size_t i = 1; i < items.size(); ++i)
    HPDL_CHECK(items[i - 1].path != items[i].path, "hpdl pack: two inputs map to '{}'", items[i].path);

  fs::create_directories(store, ec);
  HPDL_CHECK(!ec, "hpdl pack: cannot create store directory {}: {}", store.string(), ec.message());
  const fs::path index_path = store / kIndexName;
  Index index;
  if (fs::exists(index_path)) {
    HPDL_CHECK(options.append, "hpdl pack: {} already holds a store; pass --append to add to it, or remove it",
               store.string());
    index = decode_index(read_file(index_path), index_path.string());
  }
  std::vector<Entry> old = index.entries;
  for (const Item& item : items) {
    auto it = std::lower_bound(old.begin(), old.end(), item.path, [](const Entry& e, const std::string& p) {
      return e.path < p;
    });
    HPDL_CHECK(it == old.end() || it->path != item.path,
               "hpdl pack: '{}' is already in the store {}; use --prefix to append under another folder",
               item.path, store.string());
  }

  uint64_t total = 0;
  for (const Item& item : items) total += item.size;
  const uint64_t target = options.partition_count > 0
                              ? std::max<uint64_t>(1, (total + options.partition_count - 1) / options.partition_count)
                              : std::max<uint64_t>(1, options.partition_bytes);

  PackStats stats;
  std::unique_ptr<PartitionWriter> part;
  auto close_part = [&] {
    if (!part) return;
    index.partitions.push_back(part->finish());
    part.reset();
    ++stats.partitions;
  };
  std::vector<std::byte> raw, packed;
  std::vector<Entry> added;
  for (const Item& item : items) {
    // Start a new partition when this file would overflow the current one (by input size,
    // so the layout does not depend on how well a file compresses).
    if (part && part->size() > 0 && part->size() + item.size > target &&
        (options.partition_count == 0 || stats.partitions + 1 < options.partition_count))
      close_part();
    if (!part) part = std::make_unique<PartitionWriter>(store, static_cast<uint32_t>(index.partitions.size()));
    if (options.align_min_bytes > 0 && options.compression == Compression::none &&
        item.size >= options.align_min_bytes)
      part->pad_for_mapping();
    Entry e;
    e.path = item.path;
    e.partition = static_cast<uint32_t>(index.partitions.size());
    e.offset = part->size();
    e.size = item.size;
    e.label = item.label;
    std::span<const std::byte> bytes;
    if (item.mem) {
      bytes = {item.mem, item.size};
      e.checksum = checksum(bytes);
    } else if (options.compression == Compression::none) {
      e.checksum = stream_file(item.file, item.size, [&](std::span<const std::byte> c) { part->append(c); });
      e.stored_size = item.size;
    } else {
      raw.clear();
      e.checksum = stream_file(item.file, item.size,
                               [&](std::span<const std::byte> c) { raw.insert(raw.end(), c.begin(), c.end()); });
      bytes = raw;
    }
    if (item.mem || options.compression != Compression::none) {
      if (compress(options.compression, bytes, options.level, packed)) {
        e.compression = options.compression;
        bytes = packed;
      }
      part->append(bytes);
      e.stored_size = bytes.size();
    }
    stats.bytes_in += e.size;
    stats.bytes_stored += e.stored_size;
    added.push_back(std::move(e));
  }
  close_part();
  stats.entries = added.size();

  // Merge: both lists are sorted and disjoint.
  std::vector<Entry> merged;
  merged.reserve(old.size() + added.size());
  std::merge(std::make_move_iterator(old.begin()), std::make_move_iterator(old.end()),
             std::make_move_iterator(added.begin()), std::make_move_iterator(added.end()), std::back_inserter(merged),
             [](const Entry& a, const Entry& b) { return a.path < b.path; });
  index.entries = std::move(merged);
  const std::vector<std::byte> encoded = encode_index(index);
  io::write_file_atomic(index_path, encoded.data(), encoded.size());
  return stats;
}

}  // namespace hpdl::store
