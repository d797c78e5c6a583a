// Backend registry, names, and the scoped CPU backend override used by tests.
#include "hpdl/backend/backend.h"

#include "hpdl/backend/cpu/reference.h"

namespace hpdl {
namespace {

Backend* g_backends[2] = {nullptr, nullptr};
thread_local Backend* t_cpu_override = nullptr;

}  // namespace

const char* unary_name(UnaryOp op) {
  static const char* names[] = {"neg",  "exp",        "log",       "sqrt",       "rsqrt",      "tanh",  "sigmoid",
                                "relu", "leaky_relu", "gelu",      "abs",        "square",     "pow",   "reciprocal",
                                "add_scalar", "mul_scalar", "sign", "sin", "cos", "erf"};
  return names[static_cast<int>(op)];
}

const char* binary_name(BinaryOp op) {
  static const char* names[] = {"add", "sub", "mul", "div", "pow", "maximum", "minimum", "gt",
                                "ge",  "lt",  "le",  "eq",  "relu_backward", "leaky_relu_backward"};
  return names[static_cast<int>(op)];
}

const char* reduce_name(ReduceOp op) {
  static const char* names[] = {"sum", "mean", "max", "min", "argmax", "sum_square"};
  return names[static_cast<int>(op)];
}

Backend& reference_backend() {
  static cpu::ReferenceBackend b;
  return b;
}

void register_backend(DeviceType type, Backend* backend) { g_backends[static_cast<int>(type)] = backend; }

Backend& backend_for(Device device) {
  if (device.is_cpu()) return t_cpu_override ? *t_cpu_override : cpu_backend();
  Backend* b = g_backends[static_cast<int>(device.type)];
  HPDL_CHECK(b != nullptr, "no backend for device {}: this hpdl was built without CUDA (reconfigure with "
             "-DHPDL_CUDA=ON where /usr/local/cuda has nvcc, cuDNN and NCCL)", device.str());
  return *b;
}

ScopedCpuBackend::ScopedCpuBackend(Backend& b) : previous_(t_cpu_override) { t_cpu_override = &b; }
ScopedCpuBackend::~ScopedCpuBackend() { t_cpu_override = previous_; }

}  // namespace hpdl
