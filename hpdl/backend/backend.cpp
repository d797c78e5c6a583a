// Backend registry, names, and the scoped CPU backend override used by tests.
#include "hpdl/backend/backend.h"

#include "hpdl/backend/compute_scope.h"

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
                                "ge",  "lt",  "le",  "eq",  "relu_backward", "leaky_relu_backward", "add_relu"};
  return names[static_cast<int>(op)];
}

const char* reduce_name(ReduceOp op) {
  static const char* names[] = {"sum", "mean", "max", "min", "argmax", "sum_square"};
  return names[static_cast<int>(op)];
}

void check_conv2d_kernel_shapes(const Shape& x, const Shape& w, const Shape& y, const Shape* bias,
                                const Conv2dParams& p, const char* kernel) {
  HPDL_CHECK(p.stride_h >= 1 && p.stride_w >= 1 && p.dilation_h >= 1 && p.dilation_w >= 1 && p.pad_h >= 0 &&
                 p.pad_w >= 0 && p.groups >= 1,
             "{}: invalid parameters stride ({}, {}), padding ({}, {}), dilation ({}, {}), groups {}", kernel,
             p.stride_h, p.stride_w, p.pad_h, p.pad_w, p.dilation_h, p.dilation_w, p.groups);
  bool ok = x.size() == 4 && w.size() == 4 && y.size() == 4;
  for (const Shape* s : {&x, &w, &y})
    for (int64_t d : *s) ok = ok && d >= 0;
  ok = ok && w[1] * p.groups == x[1] && w[0] % p.groups == 0 && y[0] == x[0] && y[1] == w[0] &&
       y[2] == Conv2dParams::out_size(x[2], w[2], p.stride_h, p.pad_h, p.dilation_h) &&
       y[3] == Conv2dParams::out_size(x[3], w[3], p.stride_w, p.pad_w, p.dilation_w);
  if (bias) ok = ok && bias->size() == 1 && (*bias)[0] == w[0];
  HPDL_CHECK(ok,
             "{}: inconsistent shapes: input {}, weight {}, output {}{} with groups {}, stride ({}, {}), padding "
             "({}, {}), dilation ({}, {}) (conv2d checks its arguments; call it rather than the kernel)",
             kernel, shape_str(x), shape_str(w), shape_str(y), bias ? ", bias " + shape_str(*bias) : std::string(),
             p.groups, p.stride_h, p.stride_w, p.pad_h, p.pad_w, p.dilation_h, p.dilation_w);
}

void Backend::conv2d_backward(const Tensor& x, const Tensor& w, const Tensor& dy, const Tensor& dx, const Tensor& dw,
                              const Tensor& db, const Conv2dParams& p) {
  if (dx.defined()) conv2d_backward_data(dy, w, dx, p);
  if (dw.defined()) conv2d_backward_weights(x, dy, dw, db, p);
}

void Backend::batchnorm_relu_forward_train(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& y,
                                           const Tensor& save_mean, const Tensor& save_invstd, double eps) {
  batchnorm_forward_train(x, gamma, beta, y, save_mean, save_invstd, eps);
  unary(UnaryOp::relu, y, y, 0);
}

void Backend::batchnorm_relu_backward(const Tensor& x, const Tensor& y, const Tensor& dy, const Tensor& gamma,
                                      const Tensor& /*beta*/, const Tensor& save_mean, const Tensor& save_invstd,
                                      const Tensor& dx, const Tensor& dgamma, const Tensor& dbeta) {
  Tensor masked = make_view(Tensor::empty({dy.numel()}, dy.dtype(), dy.device()), dy.shape(), dy.strides(), 0);
  binary(BinaryOp::relu_grad, dy, y, masked, 0);
  batchnorm_backward(x, masked, gamma, save_mean, save_invstd, dx, dgamma, dbeta);
}

void Backend::batchnorm_add_relu_forward_train(const Tensor& x, const Tensor& residual, const Tensor& gamma,
                                               const Tensor& beta, const Tensor& y, const Tensor& save_mean,
                                               const Tensor& save_invstd, double eps) {
  batchnorm_forward_train(x, gamma, beta, y, save_mean, save_invstd, eps);
  binary(BinaryOp::add_relu, y, residual, y, 0);
}

void Backend::batchnorm_forward_infer_relu(const Tensor& x, const Tensor& residual, const Tensor& gamma,
                                           const Tensor& beta, const Tensor& mean, const Tensor& var, const Tensor& y,
                                           double eps) {
  batchnorm_forward_infer(x, gamma, beta, mean, var, y, eps);
  if (residual.defined())
    binary(BinaryOp::add_relu, y, residual, y, 0);
  else
    unary(UnaryOp::relu, y, y, 0);
}

void Backend::batchnorm_update_running(const Tensor& running_mean, const Tensor& running_var,
                                       const Tensor& save_mean, const Tensor& save_invstd, double momentum,
                                       double eps, int64_t M) {
  Tensor v = Tensor::empty(save_invstd.shape(), save_invstd.dtype(), save_invstd.device());
  unary(UnaryOp::square, save_invstd, v, 0);
  unary(UnaryOp::reciprocal, v, v, 0);
  unary(UnaryOp::add_scalar, v, v, -eps);
  unary(UnaryOp::mul_scalar, v, v, static_cast<double>(M) / static_cast<double>(M - 1));
  axpby(1.0 - momentum, running_mean, momentum, save_mean, running_mean);
  axpby(1.0 - momentum, running_var, momentum, v, running_var);
}

void Backend::increment(const Tensor& counter) {
  HPDL_CHECK(counter.dtype() == DType::i64 && counter.numel() == 1, "increment: the counter must be one int64, got {} {}",
             dtype_name(counter.dtype()), shape_str(counter.shape()));
  if (counter.device().is_cpu()) {
    counter.data<int64_t>()[0] += 1;
    return;
  }
  Tensor f = Tensor::empty(counter.shape(), DType::f64, counter.device());
  copy(counter, f);
  unary(UnaryOp::add_scalar, f, f, 1.0);
  copy(f, counter);
}

void Backend::optimizer_update_many(const OptimizerUpdate& u, const std::vector<UpdateSlot>& slots) {
  for (const UpdateSlot& s : slots) {
    OptimizerUpdate one = u;
    one.weight_decay = s.weight_decay;
    one.step = s.step;
    optimizer_update(one, s.param, s.grad, s.buf1, s.buf2);
  }
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

namespace {
thread_local DType t_cpu_compute = DType::f32;
}  // namespace

CpuComputeScope::CpuComputeScope(DType dtype, bool enabled) : previous_(t_cpu_compute) {
  HPDL_CHECK(dtype == DType::bf16 || dtype == DType::f32,
             "CpuComputeScope: CPU kernels compute in float32 or with bfloat16 operands, not {}", dtype_name(dtype));
  if (enabled) t_cpu_compute = dtype;
}
CpuComputeScope::~CpuComputeScope() { t_cpu_compute = previous_; }
DType cpu_compute_dtype() { return t_cpu_compute; }

}  // namespace hpdl

// ---- recurrent networks: a backend without them says so ----

namespace hpdl {
namespace {
[[noreturn]] void rnn_unsupported(const Backend& b, const char* method) {
  HPDL_FAIL("backend {} does not implement {} (LSTM/GRU); run the model on another device", b.name(), method);
}
}  // namespace

int64_t Backend::rnn_reserve_size(const RnnParams&, const Tensor&) { rnn_unsupported(*this, "rnn_reserve_size"); }

void Backend::rnn_forward_train(const RnnParams&, const Tensor&, const Tensor&, const Tensor&,
                                const std::vector<Tensor>&, const Tensor&, const Tensor&, const Tensor&,
                                const Tensor&) {
  rnn_unsupported(*this, "rnn_forward_train");
}

void Backend::rnn_backward_data(const RnnParams&, const Tensor&, const Tensor&, const Tensor&,
                                const std::vector<Tensor>&, const Tensor&, const Tensor&, const Tensor&,
                                const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&) {
  rnn_unsupported(*this, "rnn_backward_data");
}

void Backend::rnn_backward_weights(const RnnParams&, const Tensor&, const Tensor&, const std::vector<Tensor>&,
                                   const Tensor&, const Tensor&, const std::vector<Tensor>&) {
  rnn_unsupported(*this, "rnn_backward_weights");
}

}  // namespace hpdl
