// StoreDataset: samples straight from the memory-mapped partitions.
#include "hpdl/store/store_dataset.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "hpdl/core/error.h"

namespace hpdl::store {

StoreDataset::StoreDataset(std::shared_ptr<const Reader> reader, const std::string& split)
    : reader_(std::move(reader)) {
  const std::string where = fmt::format("store {} split '{}'", reader_->dir().string(), split);
  auto meta_index = reader_->find(split + "/meta.json");
  HPDL_CHECK(meta_index.has_value(), "{}: no {}/meta.json (pack an idx file with `hpdl pack FILE.idx -o STORE`)",
             where, split);
  auto bytes = reader_->read(*meta_index);
  nlohmann::json meta;
  try {
    meta = nlohmann::json::parse(reinterpret_cast<const char*>(bytes.data()),
                                 reinterpret_cast<const char*>(bytes.data()) + bytes.size());
  } catch (const std::exception& e) {
    HPDL_FAIL("{}: meta.json is not valid JSON: {}", where, e.what());
  }
  HPDL_CHECK(meta.value("dtype", "") == "uint8" && meta.value("labels", false), "{}: needs uint8 samples with labels",
             where);
  Shape s = meta.at("shape").get<Shape>();
  shape_ = s.size() == 2 ? Shape{1, s[0], s[1]} : s;
  HPDL_CHECK(shape_.size() == 3, "{}: sample shape {} is not [H, W] or [C, H, W]", where, shape_str(s));
  for (size_t i : reader_->list(split + "/")) {
    const Entry& e = reader_->entry(i);
    if (e.path.size() < 4 || e.path.compare(e.path.size() - 4, 4, ".bin") != 0) continue;
    HPDL_CHECK(e.label != kNoLabel, "{}: entry {} has no label", where, e.path);
    HPDL_CHECK(static_cast<int64_t>(e.size) == numel_of(shape_), "{}: entry {} has {} bytes, expected {}", where,
               e.path, e.size, numel_of(shape_));
    entries_.push_back(i);
  }
  std::sort(entries_.begin(), entries_.end(),
            [&](size_t a, size_t b) { return reader_->entry(a).path < reader_->entry(b).path; });
  HPDL_CHECK(static_cast<int64_t>(entries_.size()) == meta.value("count", int64_t{-1}),
             "{}: {} sample entries, meta.json says {}", where, entries_.size(), meta.value("count", int64_t{-1}));
}

int64_t StoreDataset::get(int64_t i, float* out) const {
  HPDL_CHECK(i >= 0 && i < size(), "StoreDataset: index {} out of range [0, {})", i, size());
  const size_t e = entries_[static_cast<size_t>(i)];
  const Entry& entry = reader_->entry(e);
  auto write = [&](const std::byte* p) {
    const float scale = 1.0f / 255.0f;
    for (uint64_t k = 0; k < entry.size; ++k) out[k] = static_cast<float>(static_cast<uint8_t>(p[k])) * scale;
  };
  if (entry.compression == Compression::none) {
    write(reader_->view(e).data());
  } else {
    auto bytes = reader_->read(e);
    write(bytes.data());
  }
  return entry.label;
}

std::pair<std::shared_ptr<StoreDataset>, std::shared_ptr<StoreDataset>> open_store_datasets(
    const std::filesystem::path& dir) {
  auto reader = std::make_shared<const Reader>(Reader::open(dir));
  return {std::make_shared<StoreDataset>(reader, "train"), std::make_shared<StoreDataset>(reader, "test")};
}

}  // namespace hpdl::store
