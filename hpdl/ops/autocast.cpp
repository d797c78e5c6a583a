#include "hpdl/ops/autocast.h"

namespace hpdl {
namespace {
thread_local DType g_autocast = DType::f32;
}  // namespace

AutocastScope::AutocastScope(DType dtype, bool enabled) : previous_(g_autocast) {
  HPDL_CHECK(dtype == DType::bf16 || dtype == DType::f32,
             "AutocastScope: dtype {} is not supported (bfloat16, or float32 to turn autocast off)",
             dtype_name(dtype));
  if (enabled) g_autocast = dtype;
}

AutocastScope::~AutocastScope() { g_autocast = previous_; }

DType autocast_dtype() { return g_autocast; }

bool autocast_applies(const Tensor& t) {
  return g_autocast != DType::f32 && t.defined() && t.dtype() == DType::f32 && t.device().is_cuda();
}

Tensor autocast_cast(const Tensor& t) { return autocast_applies(t) ? t.to(g_autocast) : t; }

}  // namespace hpdl
