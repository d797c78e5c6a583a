// safetensors reader and writer (https://github.com/huggingface/safetensors):
// an 8-byte little-endian header length N, N bytes of JSON
// {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}},
// then the raw little-endian tensor bytes. hpdl adds "hpdl.xxh64" (16 hex digits,
// xxHash64 of the data section) to __metadata__ and verifies it when present,
// so files from other tools load and a corrupted or truncated hpdl file is refused.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>

#include "hpdl/core/tensor.h"

namespace hpdl::io {

inline constexpr const char* kSafetensorsChecksumKey = "hpdl.xxh64";

struct SafetensorsFile {
  std::map<std::string, Tensor> tensors;  // contiguous CPU tensors
  std::map<std::string, std::string> metadata;
};

// What save_safetensors wrote: checksums of the data section (as in the
// header) and of the whole file, and the file size.
struct SafetensorsWriteInfo {
  uint64_t data_xxh64 = 0;
  uint64_t file_xxh64 = 0;
  uint64_t file_bytes = 0;
};

// Writes `tensors` (any device, any strides; copied to contiguous CPU) with
// `metadata` plus the hpdl.xxh64 checksum, atomically (see write_file_atomic).
// dtypes: F32, F64, BF16, I64, I32, U8. Tensors are laid out in name order.
// Throws naming the file and tensor.
SafetensorsWriteInfo save_safetensors(const std::filesystem::path& path, const std::map<std::string, Tensor>& tensors,
                          const std::map<std::string, std::string>& metadata = {});

// Reads and verifies a file: header length in range, valid JSON, every tensor's
// dtype known, data_offsets in range, sized as its shape says, and the tensors
// tiling the data section exactly (no gaps, no overlap); checksum if present.
// Throws hpdl::Error naming the file (and the tensor at fault).
SafetensorsFile load_safetensors(const std::filesystem::path& path);

// The same checks without building tensors; returns the metadata.
std::map<std::string, std::string> verify_safetensors(const std::filesystem::path& path);

// safetensors dtype strings ("F32", "BF16", ...) <-> hpdl dtypes; throws on unsupported ones.
const char* safetensors_dtype_name(DType t);
DType safetensors_dtype_from_name(const std::string& name, const std::string& context);

}  // namespace hpdl::io
