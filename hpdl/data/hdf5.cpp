// HDF5 dataset reader over the serial HDF5 C library. HDF5 reports failures on
// its own error stack and, by default, prints that stack to stderr; here the
// printing is switched off around every call (and restored afterwards) and the
// innermost HDF5 message becomes part of one hpdl::Error that names the file and
// the dataset. Reads go row block by row block along axis 0, straight into the
// caller's buffer; HDF5 converts byte order and dtype on the way (its own
// conversion buffer is small), so a dataset is never held twice.
#include <hdf5.h>

#include <algorithm>
#include <mutex>
#include <new>
#include <string_view>

#include "hpdl/core/error.h"
#include "hpdl/data/readers.h"

namespace hpdl::data {
namespace {

// The serial HDF5 library is not thread-safe; hpdl's calls into it take turns.
std::mutex& hdf5_mutex() {
  static std::mutex m;
  return m;
}

// Switches HDF5's automatic error printing off for a scope and restores the
// previous handler, so a host program that wants HDF5's printout keeps it.
class QuietErrors {
 public:
  QuietErrors() {
    H5Eget_auto2(H5E_DEFAULT, &func_, &data_);
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  }
  ~QuietErrors() { H5Eset_auto2(H5E_DEFAULT, func_, data_); }
  QuietErrors(const QuietErrors&) = delete;
  QuietErrors& operator=(const QuietErrors&) = delete;

 private:
  H5E_auto2_t func_ = nullptr;
  void* data_ = nullptr;
};

// The innermost message on HDF5's error stack (the cause rather than the API
// call that reported it), e.g. "truncated file: eof = 1024, ...", or "".
std::string hdf5_cause() {
  std::string cause;
  H5Ewalk2(
      H5E_DEFAULT, H5E_WALK_DOWNWARD,
      [](unsigned, const H5E_error2_t* e, void* out) -> herr_t {
        if (e->desc != nullptr && e->desc[0] != '\0') *static_cast<std::string*>(out) = e->desc;
        return 0;
      },
      &cause);
  H5Eclear2(H5E_DEFAULT);
  return cause.empty() ? "" : " (HDF5: " + cause + ")";
}

// An HDF5 identifier closed by the matching H5?close when the scope ends.
class Handle {
 public:
  using Close = herr_t (*)(hid_t);
  Handle(hid_t id, Close close) : id_(id), close_(close) {}
  ~Handle() {
    if (id_ >= 0) close_(id_);
  }
  Handle(Handle&& o) noexcept : id_(o.id_), close_(o.close_) { o.id_ = -1; }
  Handle& operator=(Handle&& o) noexcept {
    if (this != &o) {
      if (id_ >= 0) close_(id_);
      id_ = o.id_, close_ = o.close_, o.id_ = -1;
    }
    return *this;
  }
  hid_t get() const { return id_; }
  bool ok() const { return id_ >= 0; }

 private:
  hid_t id_;
  Close close_;
};

// The dataset names with a leading "/" dropped, as listed and as given in configs.
std::string display_name(std::string_view name) {
  while (!name.empty() && name.front() == '/') name.remove_prefix(1);
  return std::string(name);
}

struct VisitState {
  std::vector<std::string> datasets, groups, unreadable;
};

// Every dataset (and group) reachable through hard links below `file`, sorted.
VisitState visit_objects(hid_t file) {
  VisitState st;
  H5Lvisit(
      file, H5_INDEX_NAME, H5_ITER_INC,
      [](hid_t group, const char* name, const H5L_info_t* info, void* data) -> herr_t {
        if (info->type != H5L_TYPE_HARD) return 0;  // soft and external links may dangle
        auto& s = *static_cast<VisitState*>(data);
        Handle obj(H5Oopen(group, name, H5P_DEFAULT), H5Oclose);
        if (!obj.ok()) {
          s.unreadable.emplace_back(name);
          return 0;
        }
        const H5I_type_t t = H5Iget_type(obj.get());
        if (t == H5I_DATASET) s.datasets.emplace_back(name);
        else if (t == H5I_GROUP) s.groups.emplace_back(name);
        return 0;
      },
      &st);
  H5Eclear2(H5E_DEFAULT);
  std::sort(st.datasets.begin(), st.datasets.end());
  std::sort(st.groups.begin(), st.groups.end());
  return st;
}

std::string join_list(const std::vector<std::string>& names, size_t limit = 20) {
  if (names.empty()) return "none";
  std::string s;
  for (size_t i = 0; i < names.size() && i < limit; ++i) s += (i ? ", " : "") + names[i];
  if (names.size() > limit) s += fmt::format(", ... ({} more)", names.size() - limit);
  return s;
}

// An open file; checks existence and the HDF5 signature first so that the
// common mistakes get their own message.
Handle open_file(const std::filesystem::path& path) {
  const std::string f = path.string();
  std::error_code ec;
  HPDL_CHECK(std::filesystem::exists(path, ec), "{}: no such file (data.path of an hdf5 dataset)", f);
  HPDL_CHECK(std::filesystem::is_regular_file(path, ec), "{}: not a regular file (an HDF5 file was expected)", f);
  const htri_t is = H5Fis_hdf5(f.c_str());
  if (is == 0) {
    H5Eclear2(H5E_DEFAULT);
    HPDL_FAIL("{}: not an HDF5 file (no HDF5 signature; is it .npy, .nc (netCDF-3) or compressed?)", f);
  }
  HPDL_CHECK(is > 0, "{}: cannot read the file{}", f, hdf5_cause());
  Handle fapl(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
#if H5_VERSION_GE(1, 12, 1) || (H5_VERSION_GE(1, 10, 7) && !H5_VERSION_GE(1, 12, 0))
  // Read-only opens take a shared lock; parallel file systems without flock
  // (some Lustre mounts) refuse it, which must not stop a reader.
  if (fapl.ok()) H5Pset_file_locking(fapl.get(), true, true);
#endif
  Handle file(H5Fopen(f.c_str(), H5F_ACC_RDONLY, fapl.ok() ? fapl.get() : H5P_DEFAULT), H5Fclose);
  if (!file.ok()) HPDL_FAIL("{}: cannot open the HDF5 file: truncated or corrupt{}", f, hdf5_cause());
  return file;
}

Handle open_dataset_in(hid_t file, const std::filesystem::path& path, const std::string& name) {
  const std::string f = path.string();
  HPDL_CHECK(!display_name(name).empty(), "{}: no dataset name given (e.g. data.hdf5_x = \"train/images\")", f);
  Handle ds(H5Dopen2(file, name.c_str(), H5P_DEFAULT), H5Dclose);
  if (ds.ok()) return ds;
  const std::string cause = hdf5_cause();
  VisitState st = visit_objects(file);
  const std::string want = display_name(name);
  if (std::find(st.groups.begin(), st.groups.end(), want) != st.groups.end()) {
    std::vector<std::string> inside;
    for (auto& d : st.datasets)
      if (d.rfind(want + "/", 0) == 0) inside.push_back(d);
    HPDL_FAIL("{}: '{}' is a group, not a dataset; datasets in it: {}", f, want, join_list(inside));
  }
  if (std::find(st.datasets.begin(), st.datasets.end(), want) != st.datasets.end() ||
      std::find(st.unreadable.begin(), st.unreadable.end(), want) != st.unreadable.end())
    HPDL_FAIL("{}: dataset '{}' cannot be opened: truncated or corrupt object header{}", f, want, cause);
  HPDL_FAIL("{}: no dataset '{}'; the file holds {}{}", f, want,
            st.datasets.empty() ? "no datasets" : "datasets " + join_list(st.datasets),
            st.datasets.empty() ? "" : " (h5ls -r FILE, from hdf5-tools, lists them)");
}

// The hpdl dtype of an HDF5 datatype, or a message saying why there is none.
DType dtype_of(hid_t type, const std::string& where) {
  const H5T_class_t cls = H5Tget_class(type);
  const size_t size = H5Tget_size(type);
  if (cls == H5T_FLOAT && size == 4) return DType::f32;
  if (cls == H5T_FLOAT && size == 8) return DType::f64;
  if (cls == H5T_INTEGER) {
    const bool is_signed = H5Tget_sign(type) == H5T_SGN_2;
    if (!is_signed && size == 1) return DType::u8;
    if (is_signed && size == 4) return DType::i32;
    if (is_signed && size == 8) return DType::i64;
    HPDL_FAIL("{}: the {}-bit {} integer type is not supported (hpdl reads float32, float64, uint8, int32, "
              "int64; convert, e.g. in h5py: f.create_dataset(name, data=arr.astype('int32')))",
              where, size * 8, is_signed ? "signed" : "unsigned");
  }
  const char* kind = cls == H5T_FLOAT      ? "floating-point"
                     : cls == H5T_STRING   ? "string"
                     : cls == H5T_COMPOUND ? "compound"
                     : cls == H5T_ENUM     ? "enum"
                     : cls == H5T_ARRAY    ? "array"
                     : cls == H5T_VLEN     ? "variable-length"
                     : cls == H5T_OPAQUE   ? "opaque"
                                           : "non-numeric";
  HPDL_FAIL("{}: the {} type ({} bytes) is not supported (hpdl reads float32, float64, uint8, int32, int64)", where,
            kind, size);
}

hid_t native_type(DType t) {
  switch (t) {
    case DType::f32: return H5T_NATIVE_FLOAT;
    case DType::f64: return H5T_NATIVE_DOUBLE;
    case DType::u8: return H5T_NATIVE_UINT8;
    case DType::i32: return H5T_NATIVE_INT32;
    case DType::i64: return H5T_NATIVE_INT64;
    default: HPDL_FAIL("read_hdf5: dtype {} cannot be read from HDF5 (f32, f64, u8, i32, i64)", dtype_name(t));
  }
}

// One open dataset with its dtype and shape.
struct Opened {
  Handle file{-1, H5Fclose}, ds{-1, H5Dclose}, space{-1, H5Sclose};
  Hdf5DatasetInfo info;
  std::string where;  // "FILE: dataset 'NAME'"
};

void open_checked(Opened& o, const std::filesystem::path& path, const std::string& name) {
  o.file = open_file(path);
  o.ds = open_dataset_in(o.file.get(), path, name);
  o.where = fmt::format("{}: dataset '{}'", path.string(), display_name(name));
  Handle type(H5Dget_type(o.ds.get()), H5Tclose);
  HPDL_CHECK(type.ok(), "{}: cannot read the datatype{}", o.where, hdf5_cause());
  o.info.dtype = dtype_of(type.get(), o.where);
  o.space = Handle(H5Dget_space(o.ds.get()), H5Sclose);
  HPDL_CHECK(o.space.ok(), "{}: cannot read the dataspace{}", o.where, hdf5_cause());
  const H5S_class_t cls = H5Sget_simple_extent_type(o.space.get());
  HPDL_CHECK(cls == H5S_SIMPLE || cls == H5S_SCALAR, "{}: has a null dataspace (no values)", o.where);
  const int rank = H5Sget_simple_extent_ndims(o.space.get());
  HPDL_CHECK(rank >= 0, "{}: cannot read the dimensions{}", o.where, hdf5_cause());
  std::vector<hsize_t> dims(static_cast<size_t>(rank));
  if (rank > 0) H5Sget_simple_extent_dims(o.space.get(), dims.data(), nullptr);
  o.info.shape.assign(dims.begin(), dims.end());
  // The byte count must fit: a corrupt header can claim absurd dimensions.
  long double bytes = dtype_size(o.info.dtype);
  for (hsize_t d : dims) bytes *= static_cast<long double>(d);
  HPDL_CHECK(bytes < 0x1p62L, "{}: shape {} is too large to read", o.where, shape_str(o.info.shape));
}

// Reads the whole dataset converted to `as` into dst, row block by row block.
void read_opened(Opened& o, DType as, void* dst, size_t dst_bytes, size_t block_bytes) {
  const hid_t mem_type = native_type(as);
  const size_t need = static_cast<size_t>(numel_of(o.info.shape)) * dtype_size(as);
  HPDL_CHECK(dst_bytes == need, "{}: read_hdf5_into got a buffer of {} bytes, shape {} as {} needs {}", o.where,
             dst_bytes, shape_str(o.info.shape), dtype_name(as), need);
  if (need == 0) return;
  auto* out = static_cast<uint8_t*>(dst);
  const Shape& shape = o.info.shape;
  if (shape.empty()) {  // a scalar
    HPDL_CHECK(H5Dread(o.ds.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, out) >= 0,
               "{}: read failed: truncated or corrupt file{}", o.where, hdf5_cause());
    return;
  }
  // Whole rows of axis 0, about block_bytes at a time.
  const size_t row_bytes = need / static_cast<size_t>(shape[0]);
  const hsize_t rows_per_block = std::max<hsize_t>(1, block_bytes / row_bytes);
  std::vector<hsize_t> start(shape.size(), 0), count(shape.begin(), shape.end());
  const hsize_t n = static_cast<hsize_t>(shape[0]);
  for (hsize_t r0 = 0; r0 < n; r0 += rows_per_block) {
    start[0] = r0;
    count[0] = std::min(rows_per_block, n - r0);
    HPDL_CHECK(H5Sselect_hyperslab(o.space.get(), H5S_SELECT_SET, start.data(), nullptr, count.data(), nullptr) >= 0,
               "{}: cannot select rows [{}, {}){}", o.where, r0, r0 + count[0], hdf5_cause());
    Handle mem(H5Screate_simple(static_cast<int>(count.size()), count.data(), nullptr), H5Sclose);
    HPDL_CHECK(mem.ok(), "{}: cannot describe rows [{}, {}) in memory{}", o.where, r0, r0 + count[0], hdf5_cause());
    HPDL_CHECK(H5Dread(o.ds.get(), mem_type, mem.get(), o.space.get(), H5P_DEFAULT, out + r0 * row_bytes) >= 0,
               "{}: reading rows [{}, {}) failed: truncated or corrupt file{}", o.where, r0, r0 + count[0],
               hdf5_cause());
  }
}

}  // namespace

Hdf5DatasetInfo hdf5_dataset_info(const std::filesystem::path& path, const std::string& dataset) {
  std::lock_guard<std::mutex> lock(hdf5_mutex());
  QuietErrors quiet;
  Opened o;
  open_checked(o, path, dataset);
  return o.info;
}

std::vector<std::string> list_hdf5_datasets(const std::filesystem::path& path) {
  std::lock_guard<std::mutex> lock(hdf5_mutex());
  QuietErrors quiet;
  Handle file = open_file(path);
  return visit_objects(file.get()).datasets;
}

void read_hdf5_into(const std::filesystem::path& path, const std::string& dataset, DType as, void* dst,
                    size_t dst_bytes, size_t block_bytes) {
  std::lock_guard<std::mutex> lock(hdf5_mutex());
  QuietErrors quiet;
  Opened o;
  open_checked(o, path, dataset);
  read_opened(o, as, dst, dst_bytes, block_bytes);
}

std::string hdf5_version() {
  unsigned major = 0, minor = 0, release = 0;
  std::lock_guard<std::mutex> lock(hdf5_mutex());
  H5get_libversion(&major, &minor, &release);
  return fmt::format("{}.{}.{}", major, minor, release);
}

RawArray read_hdf5(const std::filesystem::path& path, const std::string& dataset) {
  std::lock_guard<std::mutex> lock(hdf5_mutex());
  QuietErrors quiet;
  Opened o;
  open_checked(o, path, dataset);
  RawArray out;
  out.dtype = o.info.dtype;
  out.shape = o.info.shape;
  const size_t bytes = static_cast<size_t>(out.numel()) * dtype_size(out.dtype);
  try {
    out.bytes.resize(bytes);
  } catch (const std::bad_alloc&) {
    HPDL_FAIL("{}: shape {} of {} needs {:.1f} GiB, more than this process can allocate", o.where,
              shape_str(out.shape), dtype_name(out.dtype), static_cast<double>(bytes) / (1 << 30));
  }
  read_opened(o, out.dtype, out.bytes.data(), out.bytes.size(), size_t{64} << 20);
  return out;
}

}  // namespace hpdl::data
