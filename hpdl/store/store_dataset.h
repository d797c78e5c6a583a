// StoreDataset: a data::Dataset over one split of a packed store, so that
// `hpdl train` reads samples from node-local partitions (data.store = "DIR")
// instead of opening one file per sample on the shared file system. The split
// is what `hpdl pack` made of an idx file: SPLIT/meta.json (count, shape,
// dtype) and SPLIT/NNNNN.bin entries carrying their labels in the index.
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "hpdl/data/dataset.h"
#include "hpdl/store/reader.h"

namespace hpdl::store {

class StoreDataset : public data::Dataset {
 public:
  // Opens `split` ("train" or "test") of the store in `dir`. Throws naming the
  // store and what is missing (no meta.json, entries without labels, wrong sizes).
  StoreDataset(std::shared_ptr<const Reader> reader, const std::string& split);
  int64_t size() const override { return static_cast<int64_t>(entries_.size()); }
  Shape sample_shape() const override { return shape_; }
  // uint8 pixels scaled to [0, 1], as the idx reader does.
  int64_t get(int64_t i, float* out) const override;

 private:
  std::shared_ptr<const Reader> reader_;
  std::vector<size_t> entries_;  // reader indices, in path order
  Shape shape_;
};

// Both splits of a store directory.
std::pair<std::shared_ptr<StoreDataset>, std::shared_ptr<StoreDataset>> open_store_datasets(
    const std::filesystem::path& dir);

}  // namespace hpdl::store
