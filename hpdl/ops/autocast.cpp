#include "hpdl/ops/autocast.h"

#include <atomic>

#include "hpdl/autograd/node.h"
#include "hpdl/backend/backend.h"

namespace hpdl {
namespace {
thread_local DType g_autocast = DType::f32;
std::atomic<bool> g_channels_last{true};
std::atomic<bool> g_cpu_channels_last{false};
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

Tensor autocast_cast(const Tensor& t) {
  if (!autocast_applies(t)) return t;
  if (t.ndim() != 4 || !g_channels_last || t.is_channels_last()) return t.to(g_autocast);
  // Cast and transpose in one copy; the gradient comes back row-major in t's dtype.
  Tensor out = Tensor::empty_channels_last(t.shape(), g_autocast, t.device());
  out.copy_(t);
  if (needs_grad({&t})) {
    const DType from = t.dtype();
    record("autocast_cast", {t}, {&out}, [from](const std::vector<Tensor>& g) {
      return std::vector<Tensor>{g[0].to(from).contiguous()};
    });
  }
  return out;
}

void set_autocast_channels_last(bool on) { g_channels_last = on; }
bool autocast_channels_last() { return g_channels_last; }

void set_cpu_channels_last(bool on) { g_cpu_channels_last = on; }
bool cpu_channels_last() { return g_cpu_channels_last && backend_for(kCPU).reads_channels_last(); }

}  // namespace hpdl
