// Packing: turns a directory tree (any file format) or a dataset hpdl reads
// (idx, npy, HDF5) into a store directory of a few partition files plus one index.
// Output is deterministic: entries sorted by path, no timestamps, so packing the
// same input twice gives byte-identical stores.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

#include "hpdl/data/dataset.h"
#include "hpdl/store/format.h"

namespace hpdl::store {

struct PackOptions {
  // A new partition starts when the current one would exceed this many bytes
  // (a single larger file gets a partition of its own). Ignored when partition_count > 0.
  uint64_t partition_bytes = uint64_t{256} << 20;
  // When > 0: aim for this many partitions of about equal size (fewer if there are fewer files).
  uint32_t partition_count = 0;
  // Per-file compression; a file is stored uncompressed when compression does not shrink it.
  Compression compression = Compression::none;
  int level = 3;  // zstd level (lz4 ignores it)
  // Uncompressed files of at least this many bytes start on a kMapAlign boundary of
  // their partition file (zero padding before them, under 64 KiB each), so the
  // LD_PRELOAD shim maps them in place instead of copying (docs/store.md). 0 = never.
  // Ignored with compression.
  uint64_t align_min_bytes = uint64_t{4} << 20;
  // Add to an existing store: new partitions are written, the index is rewritten
  // atomically; a path already in the store is an error. Without it, an existing store is an error.
  bool append = false;
  // Store every packed path under this folder (e.g. "extra" -> "extra/a.txt"); empty for none.
  std::string prefix;
  // An HDF5 source: the datasets holding each split's samples and labels (the
  // config's data.hdf5_* keys and their defaults).
  data::Hdf5Names hdf5;
};

struct PackStats {
  uint64_t entries = 0;     // entries added by this call
  uint32_t partitions = 0;  // partitions written by this call
  uint64_t bytes_in = 0;    // original bytes added
  uint64_t bytes_stored = 0;  // bytes written into partitions
};

// Packs `src` into the store directory `store` (created if missing):
//  - a directory: every regular file below it (symlinks to files followed), path relative to src;
//  - an idx file (name contains "idx", optionally .gz): one entry per sample, "<split>/<i>.bin"
//    holding that sample's raw bytes, labelled from the matching labels-idx1 file when present,
//    plus "<split>/meta.json" ({"count","shape","dtype"}); split is "train" for train-*,
//    "test" for t10k-*, else the file's stem;
//  - a .npy file: one entry per index along axis 0, "<stem>/<i>.bin", raw C-order bytes, plus meta.json.
//  - an HDF5 file (.h5, .hdf5, .he5): for each split ("train", "test") whose samples dataset
//    (options.hdf5) exists, one entry per index along axis 0, "<split>/<i>.bin", raw C-order
//    bytes in the dataset's own type (uint8, int32, int64, float32, float64; little-endian),
//    labelled from the split's labels dataset when it exists ([N] integers in [0, 2^31)), plus
//    "<split>/meta.json" ({"count","shape","dtype","labels"}). uint8 samples with labels are
//    what StoreDataset (data.store) trains from. Throws when neither split's samples exist,
//    naming the datasets the file holds, and for labels of the wrong count or range.
// Throws hpdl::Error naming the offending file: unreadable input, a path that would
// escape the store, an existing store without `append`, a duplicate path with `append`.
PackStats pack(const std::filesystem::path& src, const std::filesystem::path& store, const PackOptions& options);

}  // namespace hpdl::store
