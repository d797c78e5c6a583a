// `hpdl pack SRC -o STORE`: packs a directory tree, an idx file, a .npy file or
// an HDF5 file (its train and test splits) into a store of a few partition files plus an index (see docs/store.md).
#include <CLI/CLI.hpp>

#include <cstdio>
#include <string>

#include "hpdl/core/error.h"
#include "hpdl/store/writer.h"

namespace hpdl::cli {

void register_pack(CLI::App& app);

namespace {

// "256M", "1G", "4096", "64k" -> bytes; `option` names the flag in errors.
uint64_t parse_size(const std::string& s, const char* option) {
  size_t used = 0;
  unsigned long long v = 0;
  try {
    v = std::stoull(s, &used);
  } catch (const std::exception&) {
    HPDL_FAIL("hpdl pack: {} '{}' is not a size; write e.g. 256M or 1G", option, s);
  }
  std::string unit = s.substr(used);
  uint64_t mult = 1;
  if (unit == "k" || unit == "K") mult = uint64_t{1} << 10;
  else if (unit == "m" || unit == "M") mult = uint64_t{1} << 20;
  else if (unit == "g" || unit == "G") mult = uint64_t{1} << 30;
  else HPDL_CHECK(unit.empty(), "hpdl pack: {} '{}': unknown unit '{}' (use K, M or G)", option, s, unit);
  return uint64_t(v) * mult;
}

}  // namespace

void register_pack(CLI::App& app) {
  struct Args {
    std::string src, out, size = "256M", align = "4M", compression = "none", prefix;
    uint32_t count = 0;
    int level = 3;
    bool append = false, quiet = false;
    data::Hdf5Names hdf5;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand("pack", "Pack a folder, idx, .npy or HDF5 dataset into a store (partitions + index)");
  cmd->add_option("src", args->src, "Folder tree, idx file (e.g. train-images-idx3-ubyte.gz), .npy file or HDF5 file (.h5)")
      ->required();
  cmd->add_option("-o,--output", args->out, "Store folder to write (created if missing)")->required();
  cmd->add_option("--partition-size", args->size, "Largest partition, e.g. 256M or 1G (default 256M)");
  cmd->add_option("--partitions", args->count, "Split into this many partitions of about equal size instead");
  cmd->add_option("--compression", args->compression, "Per-file compression: none, lz4 or zstd")
      ->check(CLI::IsMember({"none", "lz4", "zstd"}));
  cmd->add_option("--level", args->level, "zstd compression level (default 3)");
  cmd->add_option("--align-min", args->align,
                  "Uncompressed files at least this large start on a 64 KiB boundary, so the LD_PRELOAD shim maps "
                  "them in place (default 4M; 0 = never)");
  cmd->add_flag("--append", args->append, "Add to an existing store (new partitions, index rewritten atomically)");
  cmd->add_option("--prefix", args->prefix, "Store the packed paths under this folder of the store");
  cmd->add_flag("-q,--quiet", args->quiet, "Print nothing on success");
  cmd->add_option("--hdf5-x", args->hdf5.train_x, "HDF5: training samples dataset")->capture_default_str();
  cmd->add_option("--hdf5-y", args->hdf5.train_y, "HDF5: training labels dataset")->capture_default_str();
  cmd->add_option("--hdf5-test-x", args->hdf5.test_x, "HDF5: test samples dataset")->capture_default_str();
  cmd->add_option("--hdf5-test-y", args->hdf5.test_y, "HDF5: test labels dataset")->capture_default_str();
  cmd->callback([args] {
    store::PackOptions o;
    o.partition_bytes = parse_size(args->size, "--partition-size");
    o.align_min_bytes = parse_size(args->align, "--align-min");
    o.partition_count = args->count;
    o.compression = store::parse_compression(args->compression);
    o.level = args->level;
    o.append = args->append;
    o.prefix = args->prefix;
    o.hdf5 = args->hdf5;
    store::PackStats st = store::pack(args->src, args->out, o);
    if (!args->quiet)
      std::printf("hpdl pack: %llu files (%llu bytes, %llu stored) into %u new partition(s) of %s\n",
                  (unsigned long long)st.entries, (unsigned long long)st.bytes_in,
                  (unsigned long long)st.bytes_stored, st.partitions, args->out.c_str());
  });
}

}  // namespace hpdl::cli
