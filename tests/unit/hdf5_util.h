// Writing HDF5 test files with the HDF5 C API, independently of hpdl's reader:
// a file handle that closes itself and one call that writes a dataset (groups
// on the way are created), optionally chunked, deflated and checksummed.
#pragma once

#include <hdf5.h>

#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

namespace hpdl::test {

struct DatasetLayout {
  std::vector<hsize_t> chunk;  // empty: contiguous
  int deflate = 0;             // 1..9: gzip level (needs chunk)
  bool fletcher32 = false;     // per-chunk checksum (needs chunk)
};

class H5Writer {
 public:
  explicit H5Writer(const std::filesystem::path& path)
      : file_(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT)) {
    if (file_ < 0) throw std::runtime_error("H5Fcreate failed: " + path.string());
  }
  ~H5Writer() { close(); }
  H5Writer(const H5Writer&) = delete;
  H5Writer& operator=(const H5Writer&) = delete;
  void close() {
    if (file_ >= 0) H5Fclose(file_);
    file_ = -1;
  }
  hid_t id() const { return file_; }

  // Writes `data` (memory type mem_type) as dataset `name` of file type file_type and dims `dims` (empty: scalar);
  // data == nullptr creates the dataset without writing (an empty one, or one left at the fill value).
  void write(const std::string& name, hid_t file_type, hid_t mem_type, const std::vector<hsize_t>& dims,
             const void* data, const DatasetLayout& layout = {}) {
    hid_t space = dims.empty() ? H5Screate(H5S_SCALAR)
                               : H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr);
    hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
    H5Pset_create_intermediate_group(lcpl, 1);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    if (!layout.chunk.empty()) H5Pset_chunk(dcpl, static_cast<int>(layout.chunk.size()), layout.chunk.data());
    if (layout.fletcher32) H5Pset_fletcher32(dcpl);
    if (layout.deflate > 0) H5Pset_deflate(dcpl, static_cast<unsigned>(layout.deflate));
    hid_t ds = H5Dcreate2(file_, name.c_str(), file_type, space, lcpl, dcpl, H5P_DEFAULT);
    const bool ok = ds >= 0 && (data == nullptr || H5Dwrite(ds, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) >= 0);
    if (ds >= 0) H5Dclose(ds);
    H5Pclose(dcpl);
    H5Pclose(lcpl);
    H5Sclose(space);
    if (!ok) throw std::runtime_error("writing HDF5 dataset " + name + " failed");
  }

  template <typename T>
  void write(const std::string& name, hid_t file_type, hid_t mem_type, const std::vector<hsize_t>& dims,
             const std::vector<T>& data, const DatasetLayout& layout = {}) {
    write(name, file_type, mem_type, dims, static_cast<const void*>(data.data()), layout);
  }

 private:
  hid_t file_;
};

}  // namespace hpdl::test
