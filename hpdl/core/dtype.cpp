// DType and Device names.
#include "hpdl/core/dtype.h"

#include "hpdl/core/error.h"

namespace hpdl {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::f32: return 4;
    case DType::f64: return 8;
    case DType::bf16: return 2;
    case DType::i64: return 8;
    case DType::i32: return 4;
    case DType::u8: return 1;
    case DType::f16: return 2;
  }
  return 0;
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "float32";
    case DType::f64: return "float64";
    case DType::bf16: return "bfloat16";
    case DType::i64: return "int64";
    case DType::i32: return "int32";
    case DType::u8: return "uint8";
    case DType::f16: return "float16";
  }
  return "?";
}

DType dtype_from_name(const std::string& name) {
  for (DType t : {DType::f32, DType::f64, DType::bf16, DType::i64, DType::i32, DType::u8, DType::f16}) {
    if (name == dtype_name(t)) return t;
  }
  if (name == "float" || name == "fp32") return DType::f32;
  if (name == "double" || name == "fp64") return DType::f64;
  if (name == "bf16") return DType::bf16;
  if (name == "half" || name == "fp16" || name == "f16") return DType::f16;
  HPDL_FAIL("unknown dtype '{}' (expected float32, float64, bfloat16, float16, int64, int32 or uint8)", name);
}

std::string Device::str() const {
  return type == DeviceType::cpu ? std::string("cpu") : fmt::format("cuda:{}", index);
}

Device Device::parse(const std::string& s) {
  if (s == "cpu") return kCPU;
  if (s == "cuda") return Device{DeviceType::cuda, 0};
  if (s.rfind("cuda:", 0) == 0) {
    try {
      return Device{DeviceType::cuda, std::stoi(s.substr(5))};
    } catch (const std::exception&) {
    }
  }
  HPDL_FAIL("unknown device '{}' (expected cpu, cuda or cuda:N)", s);
}

}  // namespace hpdl
