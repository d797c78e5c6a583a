// OneDnnBackend: oneDNN primitives for the float32 hot paths, created once per
// shape and cached (creating a primitive JIT-compiles a kernel: far too slow
// to do per call). Tensors keep hpdl's plain layouts (NCHW activations, OIHW
// weights); convolutions let oneDNN pick blocked layouts (format_tag::any) and
// reorder into and out of them on every call. Weights are reordered on every
// call too: they change after every optimizer step, so a cached reorder would
// be stale. The buffers for reordered operands are taken per call from hpdl's
// CPU allocator and given back when the call returns: its size-keyed cache
// hands the same blocks to the next call of any layer of that size (no page
// faults per call), and memory is not held per shape (ResNet-50 on 224x224
// kept about 1.5 GB in per-shape buffers). Each entry has a mutex so two threads
// never run its primitive at once.
#include "hpdl/backend/cpu/onednn.h"

#include "hpdl/backend/compute_scope.h"
#include "hpdl/backend/cpu/adamw_rows.h"
#include "hpdl/backend/cpu/direct_conv.h"

#include "hpdl/core/threading.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <oneapi/dnnl/dnnl.hpp>
#include <string>
#include <tuple>
#include <unordered_map>

namespace hpdl::cpu {

using dnnl::memory;
using tag = memory::format_tag;
using dt = memory::data_type;
using Args = std::unordered_map<int, memory>;

namespace {

bool f32_dense(std::initializer_list<const Tensor*> ts) {
  for (const Tensor* t : ts)
    if (t->defined() && (t->dtype() != DType::f32 || !t->is_contiguous())) return false;
  return true;
}

memory::dims dims_of(const Shape& s) { return memory::dims(s.begin(), s.end()); }

// The common layout of a call's float32 activations: 0 all row-major, 1 all
// channels-last (NHWC strides; a tensor that is both, e.g. one channel, counts
// as either), -1 otherwise (another dtype, strided views, or mixed layouts).
int act_layout(std::initializer_list<const Tensor*> acts) {
  bool row_major = true, nhwc = true;
  for (const Tensor* t : acts) {
    if (!t->defined()) continue;
    if (t->dtype() != DType::f32) return -1;
    row_major = row_major && t->is_contiguous();
    nhwc = nhwc && t->is_channels_last();
  }
  return row_major ? 0 : nhwc ? 1 : -1;
}

// Whether any of the tensors is defined and not row-major (a call that must not
// reach a kernel assuming row-major: it runs on row-major copies instead).
bool any_strided(std::initializer_list<const Tensor*> ts) {
  for (const Tensor* t : ts)
    if (t->defined() && !t->is_contiguous()) return true;
  return false;
}
Tensor row_major(const Tensor& t) { return t.defined() ? t.contiguous() : t; }
Tensor row_major_like(const Tensor& t) {
  return t.defined() ? Tensor::empty(t.shape(), t.dtype(), t.device()) : t;
}
// out <- tmp where out is not row-major (tmp was its row-major stand-in).
void copy_back(Tensor out, const Tensor& tmp) {
  if (out.defined() && out.raw_data() != tmp.raw_data()) out.copy_(tmp);
}

// The call on row-major stand-ins of its strided activations: inputs copied, outputs
// computed into row-major buffers and copied back (a layout no kernel here reads).
template <size_t NI, size_t NO, typename F>
void via_row_major(const std::array<Tensor, NI>& ins, const std::array<Tensor, NO>& outs, F&& call) {
  std::array<Tensor, NI> ic;
  std::array<Tensor, NO> oc;
  for (size_t i = 0; i < NI; ++i) ic[i] = row_major(ins[i]);
  for (size_t o = 0; o < NO; ++o) oc[o] = outs[o].defined() && !outs[o].is_contiguous() ? row_major_like(outs[o]) : outs[o];
  call(ic, oc);
  for (size_t o = 0; o < NO; ++o) copy_back(outs[o], oc[o]);
}

// A plain row-major descriptor for any rank.
memory::desc plain_desc(const Shape& s) {
  Strides st = contiguous_strides(s);
  return memory::desc(dims_of(s), dt::f32, memory::dims(st.begin(), st.end()));
}

// bf16 operands for this call's convolution or matmul (CpuComputeScope), checked
// against the CPU once: oneDNN's bfloat16 kernels need AVX512_BF16 (or AMX).
bool bf16_operands() {
  if (cpu_compute_dtype() != DType::bf16) return false;
  static const bool ok = onednn_bf16_supported();
  HPDL_CHECK(ok, "bfloat16 compute on the CPU needs a CPU with AVX512_BF16 or AMX (oneDNN ISA avx512_core_bf16 "
             "or avx512_core_amx); this CPU's oneDNN ISA is {}: train in fp32 (train.precision = \"fp32\")",
             onednn_isa());
  return true;
}

// A primitive descriptor built by make(), a oneDNN failure turned into an hpdl::Error naming
// `what` and the ISA (bfloat16 kernels that this oneDNN or CPU does not have).
template <typename Make>
auto make_pd(const char* what, bool bf16, Make&& make) {
  try {
    return make();
  } catch (const dnnl::error& e) {
    HPDL_FAIL("oneDNN cannot create the {} primitive{} on this CPU (ISA {}): {}", what,
              bf16 ? " with bfloat16 operands" : "", onednn_isa(), e.what());
  }
}

std::string make_key(const char* name, std::initializer_list<int64_t> values) {
  std::string k = name;
  for (int64_t v : values) k += fmt::format(",{}", v);
  return k;
}

}  // namespace

struct OneDnnBackend::Impl {
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  std::mutex mu;
  // matmul primitives by (B, M, N, K, trans_a, trans_b, batch-broadcast flags, beta != 0, bf16 operands)
  std::map<std::tuple<int64_t, int64_t, int64_t, int64_t, bool, bool, bool, bool, bool, bool>,
           std::pair<dnnl::matmul::primitive_desc, dnnl::matmul>>
      matmuls;
  // Every other primitive: one entry per op and shape, never evicted.
  std::unordered_map<std::string, std::shared_ptr<void>> cache;

  // The entry for `key`, built by make(entry) on first use.
  template <typename E, typename Make>
  E& entry(const std::string& key, Make&& make) {
    std::lock_guard<std::mutex> lock(mu);
    auto it = cache.find(key);
    if (it == cache.end()) {
      auto e = std::make_shared<E>();
      make(*e);
      it = cache.emplace(key, std::static_pointer_cast<void>(e)).first;
    }
    return *static_cast<E*>(it->second.get());
  }

  memory wrap(const memory::desc& d, const Tensor& t) const { return memory(d, engine, t.raw_data()); }
  memory wrap(const memory::desc& d, void* p) const { return memory(d, engine, p); }

  // Reorder targets of one call, from the CPU allocator, returned to it when the call ends.
  class Scratch {
   public:
    Scratch() = default;
    Scratch(const Scratch&) = delete;
    Scratch& operator=(const Scratch&) = delete;
    ~Scratch() {
      for (auto [p, n] : blocks_) cpu_allocator().deallocate(p, n);
    }
    void* get(size_t n) {
      void* p = cpu_allocator().allocate(n);
      blocks_.emplace_back(p, n);
      return p;
    }

   private:
    std::vector<std::pair<void*, size_t>> blocks_;
  };

  // `user` in layout `want`: the user memory itself when the layouts agree,
  // else a reorder into a buffer from `scratch`.
  memory in_layout(const memory& user, const memory::desc& want, Scratch& scratch, dnnl::stream& s) const {
    if (user.get_desc() == want) return user;
    memory buf(want, engine, scratch.get(want.get_size()));
    dnnl::reorder(user, buf).execute(s, const_cast<memory&>(user), buf);
    return buf;
  }
  // Memory a primitive writes in layout `have`, to be copied to `user` afterwards by `out_to_user`.
  memory out_layout(const memory& user, const memory::desc& have, Scratch& scratch) const {
    if (user.get_desc() == have) return user;
    return memory(have, engine, scratch.get(have.get_size()));
  }
  static void out_to_user(const memory& result, const memory& user, dnnl::stream& s) {
    if (result.get(true) == user.get(true)) return;
    dnnl::reorder(result, user).execute(s, const_cast<memory&>(result), const_cast<memory&>(user));
  }
};

OneDnnBackend::OneDnnBackend() : impl_(new Impl) {}
OneDnnBackend::~OneDnnBackend() { delete impl_; }

bool OneDnnBackend::supports(OpKind op, DType dtype) const { return ReferenceBackend::supports(op, dtype); }

// ---------------------------------------------------------------- layout copies

// A float32 [N, C, H, W] copy between row-major and channels-last (a layout boundary: a
// flatten after NHWC layers, a first convolution's row-major output into NHWC layers, a
// row-major gradient arriving at an NHWC node) as a oneDNN reorder: JIT-compiled tiled
// transposes, where the reference copy walks one strided element at a time (design
// decision 75). Everything else is the reference copy.
namespace {
constexpr int64_t kReorderMin = 4096;  // below, the reference loop beats a primitive call
}  // namespace

void OneDnnBackend::copy(const Tensor& src, const Tensor& dst) {
  const bool transpose = src.dtype() == DType::f32 && dst.dtype() == DType::f32 && src.ndim() == 4 &&
                         src.shape() == dst.shape() && src.numel() >= kReorderMin &&
                         ((src.is_contiguous() && !dst.is_contiguous() && dst.is_channels_last()) ||
                          (dst.is_contiguous() && !src.is_contiguous() && src.is_channels_last()));
  if (!transpose) {
    ReferenceBackend::copy(src, dst);
    return;
  }
  using tag = memory::format_tag;
  const tag from = src.is_contiguous() ? tag::nchw : tag::nhwc, to = dst.is_contiguous() ? tag::nchw : tag::nhwc;
  const memory::desc sd(dims_of(src.shape()), memory::data_type::f32, from);
  const memory::desc dd(dims_of(dst.shape()), memory::data_type::f32, to);
  struct E {
    std::mutex mu;
    dnnl::reorder prim;
  };
  E& e = impl_->entry<E>(fmt::format("reorder {} {}", shape_str(src.shape()), from == tag::nchw ? "nchw>nhwc" : "nhwc>nchw"),
                         [&](E& e) { e.prim = dnnl::reorder(dnnl::reorder::primitive_desc(impl_->engine, sd, impl_->engine, dd)); });
  std::lock_guard<std::mutex> lock(e.mu);
  dnnl::stream s(impl_->engine);
  memory sm = impl_->wrap(sd, src), dm = impl_->wrap(dd, dst);
  e.prim.execute(s, sm, dm);
  s.wait();
}

// ---------------------------------------------------------------- eltwise

namespace {
// The oneDNN algorithm and (alpha, beta) for a unary op, when there is one:
// linear is alpha*x + beta, pow is alpha*x^beta.
bool eltwise_algo(UnaryOp op, double a, dnnl::algorithm& alg, float& alpha, float& beta) {
  using A = dnnl::algorithm;
  alpha = 0, beta = 0;
  switch (op) {
    case UnaryOp::relu: alg = A::eltwise_relu; return true;
    case UnaryOp::leaky_relu: alg = A::eltwise_relu, alpha = static_cast<float>(a); return true;
    case UnaryOp::tanh: alg = A::eltwise_tanh; return true;
    case UnaryOp::sigmoid: alg = A::eltwise_logistic; return true;
    case UnaryOp::exp: alg = A::eltwise_exp; return true;
    case UnaryOp::log: alg = A::eltwise_log; return true;
    case UnaryOp::sqrt: alg = A::eltwise_sqrt; return true;
    case UnaryOp::gelu: alg = A::eltwise_gelu_erf; return true;
    case UnaryOp::abs: alg = A::eltwise_abs; return true;
    case UnaryOp::square: alg = A::eltwise_square; return true;
    case UnaryOp::neg: alg = A::eltwise_linear, alpha = -1.f; return true;
    case UnaryOp::mul_scalar: alg = A::eltwise_linear, alpha = static_cast<float>(a); return true;
    case UnaryOp::add_scalar: alg = A::eltwise_linear, alpha = 1.f, beta = static_cast<float>(a); return true;
    default: return false;
  }
}
// Below this many elements the primitive call costs more than the plain loop.
constexpr int64_t kEltwiseMin = 4096;
}  // namespace

void OneDnnBackend::unary(UnaryOp op, const Tensor& x, const Tensor& out, double alpha) {
  dnnl::algorithm alg;
  float a, b;
  // Row-major, or both channels-last alike: one flat array either way.
  const bool flat = f32_dense({&x, &out}) || (act_layout({&x, &out}) == 1 && x.strides() == out.strides());
  if (!flat || x.numel() < kEltwiseMin || !eltwise_algo(op, alpha, alg, a, b)) {
    ReferenceBackend::unary(op, x, out, alpha);
    return;
  }
  struct E {
    std::mutex mu;
    dnnl::eltwise_forward prim;
    memory::desc md;
  };
  const int64_t n = x.numel();
  float av = a, bv = b;
  E& e = impl_->entry<E>(fmt::format("eltwise,{},{},{},{}", static_cast<int>(alg), n, av, bv), [&](E& e) {
    e.md = memory::desc({n}, dt::f32, tag::a);
    dnnl::eltwise_forward::primitive_desc pd(
        dnnl::eltwise_forward::desc(dnnl::prop_kind::forward_inference, alg, e.md, av, bv), impl_->engine);
    e.prim = dnnl::eltwise_forward(pd);
  });
  dnnl::stream s(impl_->engine);
  e.prim.execute(s, {{DNNL_ARG_SRC, impl_->wrap(e.md, x)}, {DNNL_ARG_DST, impl_->wrap(e.md, out)}});
  s.wait();
}

// ---------------------------------------------------------------- matmul

void OneDnnBackend::matmul(const Tensor& a, const Tensor& b, const Tensor& c, bool trans_a, bool trans_b,
                           double alpha, double beta) {
  if (!f32_dense({&a, &b, &c}) || alpha != 1.0) {
    ReferenceBackend::matmul(a, b, c, trans_a, trans_b, alpha, beta);
    return;
  }
  const int nd = c.ndim();
  const int64_t M = c.dim(-2), N = c.dim(-1), K = trans_a ? a.dim(-2) : a.dim(-1);
  const int64_t B = nd == 3 ? c.dim(0) : 1;
  const bool a_batched = a.ndim() == 3 && a.dim(0) > 1, b_batched = b.ndim() == 3 && b.dim(0) > 1;
  const bool bf16 = bf16_operands();
  auto key = std::make_tuple(B, M, N, K, trans_a, trans_b, a_batched, b_batched, beta != 0.0, bf16);
  dnnl::matmul prim;
  dnnl::matmul::primitive_desc pd;
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    auto it = impl_->matmuls.find(key);
    if (it == impl_->matmuls.end()) {
      // Always describe 3-D operands; a transposed operand is the same buffer with swapped strides.
      memory::dims ad = {a_batched ? B : 1, M, K}, bd = {b_batched ? B : 1, K, N}, cd = {B, M, N};
      memory::dims as = trans_a ? memory::dims{M * K, 1, M} : memory::dims{M * K, K, 1};
      memory::dims bs = trans_b ? memory::dims{K * N, 1, K} : memory::dims{K * N, N, 1};
      // bf16: a and b are read as bfloat16 (reordered from the float32 tensors per call), c stays float32.
      const dt in = bf16 ? dt::bf16 : dt::f32;
      memory::desc amd(ad, in, as), bmd(bd, in, bs), cmd(cd, dt::f32, tag::abc);
      dnnl::primitive_attr attr;
      if (beta != 0.0) {
        dnnl::post_ops po;
        po.append_sum(static_cast<float>(beta));
        attr.set_post_ops(po);
      }
      auto npd = make_pd("matmul", bf16, [&] {
        return dnnl::matmul::primitive_desc(dnnl::matmul::desc(amd, bmd, cmd), attr, impl_->engine);
      });
      it = impl_->matmuls.emplace(key, std::make_pair(npd, dnnl::matmul(npd))).first;
    }
    pd = it->second.first;
    prim = it->second.second;
  }
  dnnl::stream s(impl_->engine);
  Impl::Scratch scratch;
  memory am(pd.src_desc(), impl_->engine, a.raw_data()), bm(pd.weights_desc(), impl_->engine, b.raw_data()),
      cm(pd.dst_desc(), impl_->engine, c.raw_data());
  if (bf16) {  // the float32 operands, in the same strides, rounded to bfloat16
    auto f32_of = [](const memory::desc& d) {
      return memory::desc(d.dims(), dt::f32, memory::dims(d.data.format_desc.blocking.strides,
                                                          d.data.format_desc.blocking.strides + d.data.ndims));
    };
    am = impl_->in_layout(memory(f32_of(pd.src_desc()), impl_->engine, a.raw_data()), pd.src_desc(), scratch, s);
    bm = impl_->in_layout(memory(f32_of(pd.weights_desc()), impl_->engine, b.raw_data()), pd.weights_desc(), scratch,
                          s);
  }
  prim.execute(s, {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_DST, cm}});
  s.wait();
}

// ---------------------------------------------------------------- convolution

namespace {

// Everything oneDNN needs to describe one convolution in hpdl's plain layouts.
// With bf16 operands the tensors a primitive reads (src, weights, dst = diff_dst)
// are bfloat16 (`*_in`, reordered from float32 per call) and the ones it writes
// (dst, diff_src, diff_weights) float32 (`*_out`).
struct ConvGeom {
  memory::desc src, wei, bias, dst;  // user layouts: nchw, (g)oihw, x, nchw
  memory::desc src_in, wei_in, dst_in, src_out, wei_out, dst_out;
  memory::dims strides, dilates, pad_l, pad_r;
  bool ok = true;  // false: oneDNN cannot express it (negative right padding)

  // nhwc: the activations (x, y, dx, dy) are channels-last; the primitives then
  // run on NHWC directly (no reorders; design decision 75).
  ConvGeom(const Shape& xs, const Shape& ws, const Shape& ys, const Conv2dParams& p, bool bf16 = false,
           bool nhwc = false) {
    const int64_t G = p.groups, K = ws[0], Cg = ws[1], R = ws[2], S = ws[3];
    src = memory::desc(dims_of(xs), dt::f32, nhwc ? tag::nhwc : tag::nchw);
    dst = memory::desc(dims_of(ys), dt::f32, nhwc ? tag::nhwc : tag::nchw);
    bias = memory::desc({K}, dt::f32, tag::x);
    memory::dims wd = G == 1 ? memory::dims{K, Cg, R, S} : memory::dims{G, K / G, Cg, R, S};
    wei = memory::desc(wd, dt::f32, G == 1 ? tag::oihw : tag::goihw);
    // Activations: oneDNN chooses (blocked nChw16c kernels, paid for with a
    // reorder in and out per call). Measured with bench/e2e on 2 threads this is
    // 1.3x (LeNet-5) to 2x (ResNet-20) faster end to end than plain NCHW
    // kernels; HPDL_CONV_BLOCKED=0 forces plain NCHW.
    static const bool blocked = [] {
      const char* e = std::getenv("HPDL_CONV_BLOCKED");
      return !(e && e[0] == '0');
    }();
    const dt in = bf16 ? dt::bf16 : dt::f32;
    const tag act = nhwc ? tag::nhwc : blocked ? tag::any : tag::nchw;
    src_in = memory::desc(dims_of(xs), in, act);
    src_out = memory::desc(dims_of(xs), dt::f32, act);
    dst_in = memory::desc(dims_of(ys), in, act);
    dst_out = memory::desc(dims_of(ys), dt::f32, act);
    wei_in = memory::desc(wd, in, tag::any);
    wei_out = memory::desc(wd, dt::f32, tag::any);
    strides = {p.stride_h, p.stride_w};
    dilates = {p.dilation_h - 1, p.dilation_w - 1};  // oneDNN counts the gaps
    pad_l = {p.pad_h, p.pad_w};
    // Right padding that yields exactly hpdl's (floor) output size.
    int64_t pr_h = (ys[2] - 1) * p.stride_h + (R - 1) * p.dilation_h + 1 - xs[2] - p.pad_h;
    int64_t pr_w = (ys[3] - 1) * p.stride_w + (S - 1) * p.dilation_w + 1 - xs[3] - p.pad_w;
    pad_r = {pr_h, pr_w};
    ok = pr_h >= 0 && pr_w >= 0;
  }

  dnnl::convolution_forward::desc fwd_desc(bool with_bias) const {
    using namespace dnnl;
    if (with_bias)
      return convolution_forward::desc(prop_kind::forward_training, algorithm::convolution_direct, src_in, wei_in,
                                        bias, dst_out, strides, dilates, pad_l, pad_r);
    return convolution_forward::desc(prop_kind::forward_training, algorithm::convolution_direct, src_in, wei_in,
                                     dst_out, strides, dilates, pad_l, pad_r);
  }
};

std::string conv_key(const char* name, const Shape& xs, const Shape& ws, const Conv2dParams& p, bool bias,
                     bool bf16, bool nhwc) {
  return make_key(name, {xs[0], xs[1], xs[2], xs[3], ws[0], ws[1], ws[2], ws[3], p.stride_h, p.stride_w, p.pad_h,
                         p.pad_w, p.dilation_h, p.dilation_w, p.groups, bias, bf16, nhwc});
}

}  // namespace

namespace {
// HPDL_DIRECT_CONV=0 sends the few-input-channel convolutions to oneDNN too (for A/B timing).
const bool g_direct_conv = [] {
  const char* e = std::getenv("HPDL_DIRECT_CONV");
  return !(e && std::string(e) == "0");
}();
}  // namespace

bool OneDnnBackend::conv2d_channels_last(const Shape& x, const Shape& w, const Conv2dParams& /*p*/) const {
  // oneDNN's NHWC kernels vectorize over the input channels: with fewer than 8 they run mostly
  // empty vectors, and the row-major paths (the direct loops for one channel, the blocked
  // kernels) are faster. LeNet-5's second convolution (6 channels) lost 7-14% inference speed
  // in NHWC; ResNet-20's 16-64 channel layers gained (design decision 75).
  // One input channel is the same memory in either layout: with 16 or more filters an NHWC
  // output spares the next layer its copy (and its gradient the copy back), and oneDNN's NHWC
  // kernels beat the row-major direct loops plus those copies (DCGAN's 1 -> 64 discriminator
  // input layer, ResNet-20's 1 -> 16 stem on Fashion-MNIST); LeNet-5's 1 -> 6 stays row-major.
  return x[1] >= 8 || (x[1] == 1 && w[0] >= 16);
}

void OneDnnBackend::conv2d_forward(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& y,
                                   const Conv2dParams& p) {
  const Shape bs = bias.defined() ? bias.shape() : Shape();
  check_conv2d_kernel_shapes(x.shape(), w.shape(), y.shape(), bias.defined() ? &bs : nullptr, p, "conv2d_forward");
  const int lay = act_layout({&x, &y});
  const bool nhwc = lay == 1;
  if (lay == 0 && g_direct_conv && f32_dense({&x, &w, &bias, &y}) &&
      cpu::direct_conv_forward_preferred(x.shape(), w.shape(), p)) {
    cpu::direct_conv_forward(x, w, bias, y, p);
    return;
  }
  const bool ok = lay >= 0 && f32_dense({&w, &bias});
  const bool bf16 = ok && bf16_operands();
  ConvGeom geom(x.shape(), w.shape(), y.shape(), p, bf16, nhwc);
  if (!ok || !geom.ok) {
    if (any_strided({&x, &w, &bias, &y})) {  // on row-major copies (the reference reads row-major)
      Tensor yc = row_major_like(y);
      conv2d_forward(row_major(x), row_major(w), row_major(bias), yc, p);
      copy_back(y, yc);
      return;
    }
    ReferenceBackend::conv2d_forward(x, w, bias, y, p);
    return;
  }
  struct E {
    std::mutex mu;
    dnnl::convolution_forward::primitive_desc pd;
    dnnl::convolution_forward prim;
  };
  const bool has_bias = bias.defined();
  E& e = impl_->entry<E>(conv_key("conv_fwd", x.shape(), w.shape(), p, has_bias, bf16, nhwc), [&](E& e) {
    e.pd = make_pd("convolution forward", bf16, [&] {
      return dnnl::convolution_forward::primitive_desc(geom.fwd_desc(has_bias), impl_->engine);
    });
    e.prim = dnnl::convolution_forward(e.pd);
  });
  std::lock_guard<std::mutex> lock(e.mu);
  dnnl::stream s(impl_->engine);
  Impl::Scratch scratch;
  memory xu = impl_->wrap(geom.src, x), wu = impl_->wrap(geom.wei, w), yu = impl_->wrap(geom.dst, y);
  memory xm = impl_->in_layout(xu, e.pd.src_desc(), scratch, s);
  memory wm = impl_->in_layout(wu, e.pd.weights_desc(), scratch, s);
  memory ym = impl_->out_layout(yu, e.pd.dst_desc(), scratch);
  Args args{{DNNL_ARG_SRC, xm}, {DNNL_ARG_WEIGHTS, wm}, {DNNL_ARG_DST, ym}};
  if (has_bias) args[DNNL_ARG_BIAS] = impl_->wrap(geom.bias, bias);
  e.prim.execute(s, args);
  Impl::out_to_user(ym, yu, s);
  s.wait();
}

// dy in the backward primitives' layout, reordered once when both backward convolutions run
// (conv2d_backward): the buffer lives here until both have used it.
struct OneDnnBackend::SharedDy {
  memory::desc desc;
  memory mem;  // empty until the first primitive has reordered dy
  Impl::Scratch scratch;
};

void OneDnnBackend::conv2d_backward_data(const Tensor& dy, const Tensor& w, const Tensor& dx,
                                         const Conv2dParams& p) {
  conv_backward_data(dy, w, dx, p, nullptr);
}

void OneDnnBackend::conv2d_backward_weights(const Tensor& x, const Tensor& dy, const Tensor& dw, const Tensor& db,
                                            const Conv2dParams& p) {
  conv_backward_weights(x, dy, dw, db, p, nullptr);
}

void OneDnnBackend::conv2d_backward(const Tensor& x, const Tensor& w, const Tensor& dy, const Tensor& dx,
                                    const Tensor& dw, const Tensor& db, const Conv2dParams& p) {
  SharedDy shared;
  if (dx.defined()) conv_backward_data(dy, w, dx, p, &shared);
  if (dw.defined()) conv_backward_weights(x, dy, dw, db, p, &shared);
}

namespace {
// dy in layout `want`: the shared reorder when it has that layout, else a new one (kept in `shared`
// for the other backward convolution when there is one).
template <typename Impl, typename Shared>
memory dy_in_layout(const Impl& impl, const memory& dyu, const memory::desc& want, typename Impl::Scratch& scratch,
                    Shared* shared, dnnl::stream& s) {
  if (shared && shared->mem && shared->desc == want) return shared->mem;
  memory m = impl.in_layout(dyu, want, shared ? shared->scratch : scratch, s);
  if (shared && m.get_data_handle() != dyu.get_data_handle()) shared->desc = want, shared->mem = m;
  return m;
}
}  // namespace

void OneDnnBackend::conv_backward_data(const Tensor& dy, const Tensor& w, const Tensor& dx, const Conv2dParams& p,
                                       SharedDy* shared) {
  check_conv2d_kernel_shapes(dx.shape(), w.shape(), dy.shape(), nullptr, p, "conv2d_backward_data");
  const int lay = act_layout({&dy, &dx});
  const bool nhwc = lay == 1;
  if (lay == 0 && g_direct_conv && f32_dense({&dy, &w, &dx}) &&
      cpu::direct_conv_backward_data_preferred(dx.shape(), w.shape(), p)) {
    cpu::direct_conv_backward_data(dy, w, dx, p);
    return;
  }
  const bool ok = lay >= 0 && f32_dense({&w});
  const bool bf16 = ok && bf16_operands();
  ConvGeom geom(dx.shape(), w.shape(), dy.shape(), p, bf16, nhwc);
  if (!ok || !geom.ok) {
    if (any_strided({&dy, &w, &dx})) {
      Tensor dxc = row_major_like(dx);
      conv_backward_data(row_major(dy), row_major(w), dxc, p, nullptr);
      copy_back(dx, dxc);
      return;
    }
    ReferenceBackend::conv2d_backward_data(dy, w, dx, p);
    return;
  }
  struct E {
    std::mutex mu;
    dnnl::convolution_backward_data::primitive_desc pd;
    dnnl::convolution_backward_data prim;
  };
  E& e = impl_->entry<E>(conv_key("conv_bwd_data", dx.shape(), w.shape(), p, false, bf16, nhwc), [&](E& e) {
    e.pd = make_pd("convolution backward data", bf16, [&] {
      dnnl::convolution_forward::primitive_desc hint(geom.fwd_desc(false), impl_->engine);
      dnnl::convolution_backward_data::desc d(dnnl::algorithm::convolution_direct, geom.src_out, geom.wei_in,
                                              geom.dst_in, geom.strides, geom.dilates, geom.pad_l, geom.pad_r);
      return dnnl::convolution_backward_data::primitive_desc(d, impl_->engine, hint);
    });
    e.prim = dnnl::convolution_backward_data(e.pd);
  });
  std::lock_guard<std::mutex> lock(e.mu);
  dnnl::stream s(impl_->engine);
  Impl::Scratch scratch;
  memory dyu = impl_->wrap(geom.dst, dy), wu = impl_->wrap(geom.wei, w), dxu = impl_->wrap(geom.src, dx);
  memory dym = dy_in_layout(*impl_, dyu, e.pd.diff_dst_desc(), scratch, shared, s);
  memory wm = impl_->in_layout(wu, e.pd.weights_desc(), scratch, s);
  memory dxm = impl_->out_layout(dxu, e.pd.diff_src_desc(), scratch);
  e.prim.execute(s, {{DNNL_ARG_DIFF_DST, dym}, {DNNL_ARG_WEIGHTS, wm}, {DNNL_ARG_DIFF_SRC, dxm}});
  Impl::out_to_user(dxm, dxu, s);
  s.wait();
}

void OneDnnBackend::conv_backward_weights(const Tensor& x, const Tensor& dy, const Tensor& dw, const Tensor& db,
                                          const Conv2dParams& p, SharedDy* shared) {
  const Shape bs = db.defined() ? db.shape() : Shape();
  check_conv2d_kernel_shapes(x.shape(), dw.shape(), dy.shape(), db.defined() ? &bs : nullptr, p,
                             "conv2d_backward_weights");
  const int lay = act_layout({&x, &dy});
  const bool nhwc = lay == 1;
  if (lay == 0 && g_direct_conv && f32_dense({&x, &dy, &dw, &db}) &&
      cpu::direct_conv_backward_weights_preferred(x.shape(), dw.shape(), p)) {
    cpu::direct_conv_backward_weights(x, dy, dw, db, p);
    return;
  }
  const bool ok = lay >= 0 && f32_dense({&dw, &db});
  const bool bf16 = ok && bf16_operands();
  ConvGeom geom(x.shape(), dw.shape(), dy.shape(), p, bf16, nhwc);
  if (!ok || !geom.ok) {
    if (any_strided({&x, &dy, &dw, &db})) {
      Tensor dwc = row_major_like(dw), dbc = row_major_like(db);
      conv_backward_weights(row_major(x), row_major(dy), dwc, dbc, p, nullptr);
      copy_back(dw, dwc), copy_back(db, dbc);
      return;
    }
    ReferenceBackend::conv2d_backward_weights(x, dy, dw, db, p);
    return;
  }
  struct E {
    std::mutex mu;
    dnnl::convolution_backward_weights::primitive_desc pd;
    dnnl::convolution_backward_weights prim;
  };
  const bool has_bias = db.defined();
  E& e = impl_->entry<E>(conv_key("conv_bwd_weights", x.shape(), dw.shape(), p, has_bias, bf16, nhwc), [&](E& e) {
    using dnnl::convolution_backward_weights;
    e.pd = make_pd("convolution backward weights", bf16, [&] {
      dnnl::convolution_forward::primitive_desc hint(geom.fwd_desc(has_bias), impl_->engine);
      auto d = has_bias ? convolution_backward_weights::desc(dnnl::algorithm::convolution_direct, geom.src_in,
                                                             geom.wei_out, geom.bias, geom.dst_in, geom.strides,
                                                             geom.dilates, geom.pad_l, geom.pad_r)
                        : convolution_backward_weights::desc(dnnl::algorithm::convolution_direct, geom.src_in,
                                                             geom.wei_out, geom.dst_in, geom.strides, geom.dilates,
                                                             geom.pad_l, geom.pad_r);
      return convolution_backward_weights::primitive_desc(d, impl_->engine, hint);
    });
    e.prim = convolution_backward_weights(e.pd);
  });
  std::lock_guard<std::mutex> lock(e.mu);
  dnnl::stream s(impl_->engine);
  Impl::Scratch scratch;
  memory xu = impl_->wrap(geom.src, x), dyu = impl_->wrap(geom.dst, dy), dwu = impl_->wrap(geom.wei, dw);
  memory xm = impl_->in_layout(xu, e.pd.src_desc(), scratch, s);
  memory dym = dy_in_layout(*impl_, dyu, e.pd.diff_dst_desc(), scratch, shared, s);
  memory dwm = impl_->out_layout(dwu, e.pd.diff_weights_desc(), scratch);
  Args args{{DNNL_ARG_SRC, xm}, {DNNL_ARG_DIFF_DST, dym}, {DNNL_ARG_DIFF_WEIGHTS, dwm}};
  if (has_bias) args[DNNL_ARG_DIFF_BIAS] = impl_->wrap(geom.bias, db);
  e.prim.execute(s, args);
  Impl::out_to_user(dwm, dwu, s);
  s.wait();
}

// ---------------------------------------------------------------- pooling
// Plain NCHW in and out (oneDNN's pooling handles it directly). Max pooling's
// backward needs the forward's workspace (argmax positions); the interface
// hands backward x, so backward re-runs the forward with a workspace first:
// one cheap extra pass instead of keeping state between calls.

namespace {
struct PoolGeom {
  memory::desc src, dst;
  memory::dims strides, kernel, pad_l, pad_r;
  dnnl::algorithm alg;
  bool ok = true;
  PoolGeom(PoolKind kind, const Shape& xs, const Shape& ys, const Pool2dParams& p) {
    src = memory::desc(dims_of(xs), dt::f32, tag::nchw);
    dst = memory::desc(dims_of(ys), dt::f32, tag::nchw);
    strides = {p.stride_h, p.stride_w};
    kernel = {p.kernel_h, p.kernel_w};
    pad_l = {p.pad_h, p.pad_w};
    int64_t pr_h = (ys[2] - 1) * p.stride_h + p.kernel_h - xs[2] - p.pad_h;
    int64_t pr_w = (ys[3] - 1) * p.stride_w + p.kernel_w - xs[3] - p.pad_w;
    pad_r = {pr_h, pr_w};
    ok = pr_h >= 0 && pr_w >= 0;
    alg = kind == PoolKind::max ? dnnl::algorithm::pooling_max
          : p.count_include_pad ? dnnl::algorithm::pooling_avg_include_padding
                                : dnnl::algorithm::pooling_avg_exclude_padding;
  }
  dnnl::pooling_forward::desc fwd(dnnl::prop_kind pk) const {
    return dnnl::pooling_forward::desc(pk, alg, src, dst, strides, kernel, pad_l, pad_r);
  }
};
std::string pool_key(const char* name, PoolKind kind, const Shape& xs, const Pool2dParams& p) {
  return make_key(name, {static_cast<int64_t>(kind), xs[0], xs[1], xs[2], xs[3], p.kernel_h, p.kernel_w, p.stride_h,
                         p.stride_w, p.pad_h, p.pad_w, p.count_include_pad});
}

// Windows that tile the input (stride == kernel, no padding: LeNet's and VGG's
// 2x2/2, a global average) run hand-written loops instead: for plain NCHW on
// AVX2, oneDNN 2.6 has no JIT pooling and picks its scalar simple_nchw kernel,
// which took 26 ms per LeNet-5 pool1 forward (batch 128) against 0.5 ms here.
// The loops keep the reference's semantics: max ignores NaN like std::max from
// -inf, backward routes to the first maximum in row-major window order.
bool pool_tiles(const Pool2dParams& p) {
  return p.pad_h == 0 && p.pad_w == 0 && p.stride_h == p.kernel_h && p.stride_w == p.kernel_w;
}

void pool_tiled_forward(PoolKind kind, const Tensor& x, const Tensor& y, const Pool2dParams& p) {
  const int64_t NC = x.dim(0) * x.dim(1), H = x.dim(2), W = x.dim(3), P = y.dim(2), Q = y.dim(3);
  const int64_t kh = p.kernel_h, kw = p.kernel_w, Wu = Q * kw;  // columns past Wu are never read
  const float* X = x.data<float>();
  float* Y = y.data<float>();
  const bool is_max = kind == PoolKind::max;
  const float scale = 1.0f / static_cast<float>(kh * kw);
  // One output row at a time: fold its kh input rows column-wise (a vector loop), then each run of kw columns.
  parallel_for(NC * P, std::max<int64_t>(1, 32768 / (kh * W)), [&](int64_t b, int64_t e) {
    std::vector<float> col(static_cast<size_t>(Wu));
    float* c = col.data();
    for (int64_t r = b; r < e; ++r) {
      const float* x0 = X + ((r / P) * H + (r % P) * kh) * W;
      if (is_max) {
        for (int64_t w = 0; w < Wu; ++w) c[w] = -std::numeric_limits<float>::infinity();
        for (int64_t i = 0; i < kh; ++i) {
          const float* xi = x0 + i * W;
          for (int64_t w = 0; w < Wu; ++w) c[w] = c[w] < xi[w] ? xi[w] : c[w];
        }
      } else {
        for (int64_t w = 0; w < Wu; ++w) c[w] = x0[w];
        for (int64_t i = 1; i < kh; ++i) {
          const float* xi = x0 + i * W;
          for (int64_t w = 0; w < Wu; ++w) c[w] += xi[w];
        }
      }
      float* yr = Y + r * Q;
      if (is_max && kw == 2) {
        for (int64_t q = 0; q < Q; ++q) yr[q] = c[2 * q] < c[2 * q + 1] ? c[2 * q + 1] : c[2 * q];
      } else if (is_max) {
        for (int64_t q = 0; q < Q; ++q) {
          float m = c[q * kw];
          for (int64_t j = 1; j < kw; ++j) m = m < c[q * kw + j] ? c[q * kw + j] : m;
          yr[q] = m;
        }
      } else {
        for (int64_t q = 0; q < Q; ++q) {
          float s = 0;
          for (int64_t j = 0; j < kw; ++j) s += c[q * kw + j];
          yr[q] = s * scale;
        }
      }
    }
  });
}

void pool_tiled_backward(PoolKind kind, const Tensor& x, const Tensor& dy, const Tensor& dx, const Pool2dParams& p) {
  const int64_t NC = x.dim(0) * x.dim(1), H = x.dim(2), W = x.dim(3), P = dy.dim(2), Q = dy.dim(3);
  const int64_t kh = p.kernel_h, kw = p.kernel_w;
  const float* X = x.data<float>();
  const float* DY = dy.data<float>();
  float* DX = dx.data<float>();
  const float scale = 1.0f / static_cast<float>(kh * kw);
  // Windows do not overlap, so each band of kh input rows belongs to one output row: zero the band
  // (and, after the last output row, the rows no window reads), then write each window's share.
  parallel_for(NC * P, std::max<int64_t>(1, 32768 / (kh * W)), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const int64_t nc = r / P, pp = r % P;
      const int64_t row_end = pp == P - 1 ? H : (pp + 1) * kh;
      const float* x0 = X + (nc * H + pp * kh) * W;
      float* d0 = DX + (nc * H + pp * kh) * W;
      std::fill(d0, d0 + (row_end - pp * kh) * W, 0.0f);
      const float* dyr = DY + r * Q;
      if (kind == PoolKind::max) {
        for (int64_t q = 0; q < Q; ++q) {
          int64_t best = q * kw;
          float bv = x0[best];
          for (int64_t i = 0; i < kh; ++i)
            for (int64_t j = 0; j < kw; ++j) {
              const int64_t at = i * W + q * kw + j;
              if (x0[at] > bv) bv = x0[at], best = at;
            }
          d0[best] = dyr[q];
        }
      } else {
        for (int64_t i = 0; i < kh; ++i)
          for (int64_t q = 0; q < Q; ++q) {
            const float d = dyr[q] * scale;
            for (int64_t j = 0; j < kw; ++j) d0[i * W + q * kw + j] = d;
          }
      }
    }
  });
}

// Max pooling with overlapping or padded windows (ResNet's 3x3 stride-2 stem
// pool), hand-written for the same reason: oneDNN 2.6's scalar kernel took
// 77 ms forward and 106 ms backward (it reruns the forward for its argmax
// workspace) on ResNet-50's [8, 64, 112, 112] input here. Forward folds each
// output row's input rows column-wise (a vector loop), then takes each window's
// columns; backward scans each window in row-major order for the reference's
// first maximum and adds dy there, plane by plane in the reference's window
// order (overlapping windows add into the same dx element in the same order).
struct Windows {
  int64_t H, W, P, Q, kh, kw, sh, sw, ph, pw;
  // Rows [h0, h1) and columns [w0, w1) of window (pp, q), clipped to the input.
  void rows(int64_t pp, int64_t& h0, int64_t& h1) const {
    h0 = std::max<int64_t>(pp * sh - ph, 0), h1 = std::min(pp * sh - ph + kh, H);
  }
  void cols(int64_t q, int64_t& w0, int64_t& w1) const {
    w0 = std::max<int64_t>(q * sw - pw, 0), w1 = std::min(q * sw - pw + kw, W);
  }
  // f(pp, q, h0, h1, w0, w1) for every window in row-major order, skipping windows wholly in
  // the padding (they read nothing).
  template <typename F>
  void each(F&& f) const {
    for (int64_t pp = 0; pp < P; ++pp) {
      int64_t h0, h1;
      rows(pp, h0, h1);
      for (int64_t q = 0; q < Q; ++q) {
        int64_t w0, w1;
        cols(q, w0, w1);
        if (h0 < h1 && w0 < w1) f(pp, q, h0, h1, w0, w1);
      }
    }
  }
};
Windows windows_of(const Tensor& x, const Tensor& y, const Pool2dParams& p) {
  return {x.dim(2), x.dim(3), y.dim(2), y.dim(3), p.kernel_h, p.kernel_w, p.stride_h, p.stride_w, p.pad_h, p.pad_w};
}

void max_pool_windows_forward(const Tensor& x, const Tensor& y, const Pool2dParams& p) {
  const Windows g = windows_of(x, y, p);
  const int64_t NC = x.dim(0) * x.dim(1);
  const float* X = x.data<float>();
  float* Y = y.data<float>();
  constexpr float kLow = -std::numeric_limits<float>::infinity();
  parallel_for(NC * g.P, std::max<int64_t>(1, 32768 / (g.kh * g.W)), [&](int64_t b, int64_t e) {
    std::vector<float> col(static_cast<size_t>(g.W));
    float* c = col.data();
    for (int64_t r = b; r < e; ++r) {
      const int64_t nc = r / g.P, pp = r % g.P;
      int64_t h0, h1;
      g.rows(pp, h0, h1);
      std::fill(c, c + g.W, kLow);
      for (int64_t h = h0; h < h1; ++h) {
        const float* xh = X + (nc * g.H + h) * g.W;
#pragma omp simd
        for (int64_t w = 0; w < g.W; ++w) c[w] = c[w] < xh[w] ? xh[w] : c[w];
      }
      float* yr = Y + r * g.Q;
      for (int64_t q = 0; q < g.Q; ++q) {
        int64_t w0, w1;
        g.cols(q, w0, w1);
        float m = kLow;
        for (int64_t w = w0; w < w1; ++w) m = m < c[w] ? c[w] : m;
        yr[q] = m;
      }
    }
  });
}

void max_pool_windows_backward(const Tensor& x, const Tensor& dy, const Tensor& dx, const Pool2dParams& p) {
  const Windows g = windows_of(x, dy, p);
  const int64_t NC = x.dim(0) * x.dim(1), HW = g.H * g.W;
  const float* X = x.data<float>();
  const float* DY = dy.data<float>();
  float* DX = dx.data<float>();
  parallel_for(NC, 1, [&](int64_t b, int64_t e) {
    for (int64_t nc = b; nc < e; ++nc) {
      const float* xp = X + nc * HW;
      float* dp = DX + nc * HW;
      std::fill(dp, dp + HW, 0.0f);
      const float* dyp = DY + nc * g.P * g.Q;
      g.each([&](int64_t pp, int64_t q, int64_t h0, int64_t h1, int64_t w0, int64_t w1) {
        int64_t best = h0 * g.W + w0;
        float bv = xp[best];
        for (int64_t h = h0; h < h1; ++h)
          for (int64_t w = w0; w < w1; ++w)
            if (xp[h * g.W + w] > bv) bv = xp[h * g.W + w], best = h * g.W + w;
        dp[best] += dyp[pp * g.Q + q];
      });
    }
  });
}

// Pooling over channels-last x [N, C, H, W] (design decision 75): each window
// walks its input pixels in row-major order with the C channels as the vector
// loop, so max keeps the first maximum (NaN ignored, as above) and avg divides
// by the reference's count (kernel area, or the in-bounds pixels without
// count_include_pad).
float pool_divisor(const Windows& g, const Pool2dParams& p, int64_t h0, int64_t h1, int64_t w0, int64_t w1) {
  return static_cast<float>(p.count_include_pad ? g.kh * g.kw : (h1 - h0) * (w1 - w0));
}

void pool_nhwc_forward(PoolKind kind, const Tensor& x, const Tensor& y, const Pool2dParams& p) {
  const Windows g = windows_of(x, y, p);
  const int64_t N = x.dim(0), C = x.dim(1);
  const float* X = x.data<float>();
  float* Y = y.data<float>();
  constexpr float kLow = -std::numeric_limits<float>::infinity();
  parallel_for(N * g.P, 1, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const int64_t n = r / g.P, pp = r % g.P;
      int64_t h0, h1;
      g.rows(pp, h0, h1);
      for (int64_t q = 0; q < g.Q; ++q) {
        int64_t w0, w1;
        g.cols(q, w0, w1);
        float* yp = Y + ((n * g.P + pp) * g.Q + q) * C;
        std::fill(yp, yp + C, kind == PoolKind::max ? kLow : 0.0f);
        for (int64_t h = h0; h < h1; ++h)
          for (int64_t w = w0; w < w1; ++w) {
            const float* xp = X + ((n * g.H + h) * g.W + w) * C;
            if (kind == PoolKind::max) {
#pragma omp simd
              for (int64_t c = 0; c < C; ++c) yp[c] = yp[c] < xp[c] ? xp[c] : yp[c];
            } else {
#pragma omp simd
              for (int64_t c = 0; c < C; ++c) yp[c] += xp[c];
            }
          }
        if (kind == PoolKind::avg) {
          const float inv = 1.0f / pool_divisor(g, p, h0, h1, w0, w1);
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) yp[c] *= inv;
        }
      }
    }
  });
}

void pool_nhwc_backward(PoolKind kind, const Tensor& x, const Tensor& dy, const Tensor& dx, const Pool2dParams& p) {
  const Windows g = windows_of(x, dy, p);
  const int64_t N = x.dim(0), C = x.dim(1), HWC = g.H * g.W * C;
  const float* X = x.data<float>();
  const float* DY = dy.data<float>();
  float* DX = dx.data<float>();
  parallel_for(N, 1, [&](int64_t b, int64_t e) {  // windows of one image may overlap: one image per task
    std::vector<float> best_v(static_cast<size_t>(C));
    std::vector<int64_t> best_at(static_cast<size_t>(C));
    for (int64_t n = b; n < e; ++n) {
      const float* xn = X + n * HWC;
      float* dn = DX + n * HWC;
      std::fill(dn, dn + HWC, 0.0f);
      g.each([&](int64_t pp, int64_t q, int64_t h0, int64_t h1, int64_t w0, int64_t w1) {
        const float* dyp = DY + ((n * g.P + pp) * g.Q + q) * C;
        if (kind == PoolKind::avg) {
          const float inv = 1.0f / pool_divisor(g, p, h0, h1, w0, w1);
          for (int64_t h = h0; h < h1; ++h)
            for (int64_t w = w0; w < w1; ++w) {
              float* dp = dn + (h * g.W + w) * C;
#pragma omp simd
              for (int64_t c = 0; c < C; ++c) dp[c] += dyp[c] * inv;
            }
          return;
        }
        // The first maximum per channel, as selects (vector loops over the channels).
        float* bv = best_v.data();
        int64_t* bi = best_at.data();
        const int64_t first = (h0 * g.W + w0) * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) bv[c] = xn[first + c], bi[c] = first + c;
        for (int64_t h = h0; h < h1; ++h)
          for (int64_t w = w0; w < w1; ++w) {
            const int64_t at = (h * g.W + w) * C;
#pragma omp simd
            for (int64_t c = 0; c < C; ++c) {
              const float v = xn[at + c];
              const bool gt = v > bv[c];
              bv[c] = gt ? v : bv[c];
              bi[c] = gt ? at + c : bi[c];
            }
          }
        for (int64_t c = 0; c < C; ++c) dn[bi[c]] += dyp[c];
      });
    }
  });
}
}  // namespace

void OneDnnBackend::pool2d_forward(PoolKind kind, const Tensor& x, const Tensor& y, const Pool2dParams& p) {
  if (act_layout({&x, &y}) == 1) return pool_nhwc_forward(kind, x, y, p);
  if (any_strided({&x, &y}))
    return via_row_major<1, 1>({x}, {y}, [&](auto& i, auto& o) { pool2d_forward(kind, i[0], o[0], p); });
  if (f32_dense({&x, &y}) && pool_tiles(p)) {
    pool_tiled_forward(kind, x, y, p);
    return;
  }
  if (f32_dense({&x, &y}) && kind == PoolKind::max) {
    max_pool_windows_forward(x, y, p);
    return;
  }
  PoolGeom geom(kind, x.shape(), y.shape(), p);
  if (!f32_dense({&x, &y}) || !geom.ok) {
    ReferenceBackend::pool2d_forward(kind, x, y, p);
    return;
  }
  struct E {
    dnnl::pooling_forward prim;
  };
  E& e = impl_->entry<E>(pool_key("pool_fwd", kind, x.shape(), p), [&](E& e) {
    e.prim = dnnl::pooling_forward(
        dnnl::pooling_forward::primitive_desc(geom.fwd(dnnl::prop_kind::forward_inference), impl_->engine));
  });
  dnnl::stream s(impl_->engine);
  e.prim.execute(s, {{DNNL_ARG_SRC, impl_->wrap(geom.src, x)}, {DNNL_ARG_DST, impl_->wrap(geom.dst, y)}});
  s.wait();
}

void OneDnnBackend::pool2d_backward(PoolKind kind, const Tensor& x, const Tensor& y, const Tensor& dy,
                                    const Tensor& dx, const Pool2dParams& p) {
  if (act_layout({&x, &dy, &dx}) == 1) return pool_nhwc_backward(kind, x, dy, dx, p);
  if (any_strided({&x, &y, &dy, &dx}))
    return via_row_major<3, 1>({x, y, dy}, {dx}, [&](auto& i, auto& o) {
      pool2d_backward(kind, i[0], i[1], i[2], o[0], p);
    });
  if (f32_dense({&x, &dy, &dx}) && pool_tiles(p)) {
    pool_tiled_backward(kind, x, dy, dx, p);
    return;
  }
  if (f32_dense({&x, &dy, &dx}) && kind == PoolKind::max) {
    max_pool_windows_backward(x, dy, dx, p);
    return;
  }
  PoolGeom geom(kind, x.shape(), dy.shape(), p);
  if (!f32_dense({&x, &dy, &dx}) || !geom.ok) {
    ReferenceBackend::pool2d_backward(kind, x, y, dy, dx, p);
    return;
  }
  struct E {
    std::mutex mu;
    dnnl::pooling_forward fwd;
    dnnl::pooling_backward bwd;
    memory::desc ws;
  };
  E& e = impl_->entry<E>(pool_key("pool_bwd", kind, x.shape(), p), [&](E& e) {
    dnnl::pooling_forward::primitive_desc hint(geom.fwd(dnnl::prop_kind::forward_training), impl_->engine);
    dnnl::pooling_backward::desc d(geom.alg, geom.src, geom.dst, geom.strides, geom.kernel, geom.pad_l, geom.pad_r);
    dnnl::pooling_backward::primitive_desc pd(d, impl_->engine, hint);
    e.bwd = dnnl::pooling_backward(pd);
    if (kind == PoolKind::max) {
      e.fwd = dnnl::pooling_forward(hint);
      e.ws = hint.workspace_desc();
    }
  });
  std::lock_guard<std::mutex> lock(e.mu);
  dnnl::stream s(impl_->engine);
  Impl::Scratch scratch;
  Args args{{DNNL_ARG_DIFF_DST, impl_->wrap(geom.dst, dy)}, {DNNL_ARG_DIFF_SRC, impl_->wrap(geom.src, dx)}};
  if (kind == PoolKind::max) {  // the forward again, for its workspace (argmax positions)
    memory ws = impl_->wrap(e.ws, scratch.get(e.ws.get_size()));
    memory ydummy = impl_->wrap(geom.dst, scratch.get(geom.dst.get_size()));
    e.fwd.execute(s, {{DNNL_ARG_SRC, impl_->wrap(geom.src, x)}, {DNNL_ARG_DST, ydummy}, {DNNL_ARG_WORKSPACE, ws}});
    args[DNNL_ARG_WORKSPACE] = ws;
  }
  e.bwd.execute(s, args);
  s.wait();
}

// ---------------------------------------------------------------- batch normalization
// oneDNN keeps (mean, biased variance); hpdl's interface keeps (mean, invstd).
// invstd = 1/sqrt(var + eps) after the forward; var = 1/invstd^2 - eps before the backward.

namespace {
const dnnl::normalization_flags kScaleShift = dnnl::normalization_flags::use_scale | dnnl::normalization_flags::use_shift;

std::string shape_key(const char* name, const Shape& s, double eps) {
  std::string k = fmt::format("{},{}", name, eps);
  for (int64_t d : s) k += fmt::format(",{}", d);
  return k;
}

void invstd_from_var(const float* var, float* invstd, int64_t n, double eps) {
  for (int64_t i = 0; i < n; ++i) invstd[i] = static_cast<float>(1.0 / std::sqrt(static_cast<double>(var[i]) + eps));
}
void var_from_invstd(const float* invstd, float* var, int64_t n, double eps) {
  for (int64_t i = 0; i < n; ++i) {
    double s = invstd[i];
    var[i] = static_cast<float>(1.0 / (s * s) - eps);
  }
}
bool bn_shape_ok(const Tensor& x) { return x.ndim() >= 2 && x.ndim() <= 5 && x.numel() > 0; }

// Batch norm over plain NCHW planes, hand-written: oneDNN 2.6 normalizes plain
// layouts with its scalar ncsp_bnorm kernel on AVX2 (17 ms per forward of
// ResNet-20's [128, 16, 28, 28] against about 1 ms for these loops; its JIT
// kernels want blocked or channels-last data, which would cost two reorders).
// Planes of at least kBnPlaneMin elements only; [N, C] and tiny planes stay on oneDNN.
constexpr int64_t kBnPlaneMin = 16;
struct BnPlanes {
  int64_t outer = 1, C = 1, inner = 1;  // x viewed as [outer, C, inner]
  explicit BnPlanes(const Tensor& x) : C(x.dim(1)) {
    outer = x.dim(0);
    for (int d = 2; d < x.ndim(); ++d) inner *= x.dim(d);
  }
  bool ok() const { return inner >= kBnPlaneMin; }
  const float* plane(const float* base, int64_t o, int64_t c) const { return base + (o * C + c) * inner; }
  float* plane(float* base, int64_t o, int64_t c) const { return base + (o * C + c) * inner; }
};

// Mean and biased variance of channel c, in double across planes. Values are
// shifted by the channel's first element, so the one-pass sum of squares does
// not cancel when the mean is large against the spread.
void bn_channel_stats(const BnPlanes& sp, const float* X, int64_t c, double& mean, double& var) {
  const float k = sp.plane(X, 0, c)[0];
  double s1 = 0, s2 = 0;
  for (int64_t o = 0; o < sp.outer; ++o) {
    const float* xp = sp.plane(X, o, c);
    for (int64_t b = 0; b < sp.inner; b += 4096) {  // float partials over at most 4096 values
      const int64_t e = std::min(sp.inner, b + 4096);
      float a1 = 0, a2 = 0;
#pragma omp simd reduction(+ : a1, a2)
      for (int64_t i = b; i < e; ++i) {
        const float d = xp[i] - k;
        a1 += d;
        a2 += d * d;
      }
      s1 += a1, s2 += a2;
    }
  }
  const double M = static_cast<double>(sp.outer * sp.inner), m = s1 / M;
  mean = k + m;
  var = std::max(0.0, s2 / M - m * m);
}

// a * b + c, rounded once where the ISA has FMA, twice elsewhere: spelled out
// so that a masked and an unmasked loop round alike (left to itself, the
// compiler contracts a product into an FMA in one and not across a select).
inline float madd(float a, float b, float c) {
#ifdef __FMA__
  return std::fma(a, b, c);
#else
  return a * b + c;
#endif
}

// y = x * scale + shift per channel, then max(0, y) when `relu`; with a residual R,
// max(0, y + r) rounded as the add_relu binary op rounds it (a NaN sum gives 0 there).
void bn_apply(const BnPlanes& sp, const float* X, float* Y, int64_t c, float scale, float shift, bool relu,
              const float* R = nullptr) {
  for (int64_t o = 0; o < sp.outer; ++o) {
    const float* xp = sp.plane(X, o, c);
    float* yp = sp.plane(Y, o, c);
    if (R) {
      const float* rp = sp.plane(R, o, c);
#pragma omp simd
      for (int64_t i = 0; i < sp.inner; ++i) {
        const float v = madd(xp[i], scale, shift) + rp[i];
        yp[i] = v > 0.0f ? v : 0.0f;
      }
    } else if (relu) {
#pragma omp simd
      for (int64_t i = 0; i < sp.inner; ++i) yp[i] = std::max(madd(xp[i], scale, shift), 0.0f);
    } else {
#pragma omp simd
      for (int64_t i = 0; i < sp.inner; ++i) yp[i] = madd(xp[i], scale, shift);
    }
  }
}

void bn_forward_train(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& y,
                      const Tensor& save_mean, const Tensor& save_invstd, double eps, bool relu,
                      const Tensor& residual = Tensor()) {
  const BnPlanes sp(x);
  const float *X = x.data<float>(), *G = gamma.data<float>(), *B = beta.data<float>();
  const float* R = residual.defined() ? residual.data<float>() : nullptr;
  float *Y = y.data<float>(), *SM = save_mean.data<float>(), *SI = save_invstd.data<float>();
  parallel_for(sp.C, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t c = lo; c < hi; ++c) {
      double mean, var;
      bn_channel_stats(sp, X, c, mean, var);
      const double invstd = 1.0 / std::sqrt(var + eps), scale = G[c] * invstd;
      SM[c] = static_cast<float>(mean);
      SI[c] = static_cast<float>(invstd);
      bn_apply(sp, X, Y, c, static_cast<float>(scale), static_cast<float>(B[c] - mean * scale), relu, R);
    }
  });
}

// With xhat = (x - mean) invstd, g = dy (masked by y > 0 when kRelu):
// dbeta = sum g, dgamma = sum g xhat, dx = gamma invstd / M (M g - dbeta - xhat dgamma),
// applied as dx = a g + b x + c0 per channel. The sums run in explicit 8-float
// vectors (the mask a blend, never an if-converted conditional sum), the tail
// and the lanes in a fixed order, and dx is written with madd, so the fused and
// the unfused backward round alike: bitwise equal results.
using V8 = float __attribute__((vector_size(32)));  // GCC/Clang vector extension: one AVX register
inline V8 load8(const float* p) {
  V8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <bool kRelu>
void bn_backward(const Tensor& x, const Tensor& dy, const Tensor& y, const Tensor& gamma, const Tensor& save_mean,
                 const Tensor& save_invstd, const Tensor& dx, const Tensor& dgamma, const Tensor& dbeta) {
  constexpr int64_t kLanes = 8;
  const BnPlanes sp(x);
  const float *X = x.data<float>(), *DY = dy.data<float>(), *G = gamma.data<float>();
  const float* RY = kRelu ? y.data<float>() : nullptr;
  const float *SM = save_mean.data<float>(), *SI = save_invstd.data<float>();
  float* DX = dx.data<float>();
  const double M = static_cast<double>(sp.outer * sp.inner);
  parallel_for(sp.C, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t c = lo; c < hi; ++c) {
      const float mean = SM[c];
      double sg = 0, sgx = 0;  // sum g, sum g (x - mean)
      for (int64_t o = 0; o < sp.outer; ++o) {
        const float *xp = sp.plane(X, o, c), *gp = sp.plane(DY, o, c);
        const float* yp = kRelu ? sp.plane(RY, o, c) : nullptr;
        for (int64_t b = 0; b < sp.inner; b += 4096) {  // float partials over at most 4096 values
          const int64_t e = std::min(sp.inner, b + 4096);
          V8 v1 = {}, v2 = {};
          const V8 vmean = V8{} + mean;
          int64_t i = b;
          for (; i + kLanes <= e; i += kLanes) {
            V8 g = load8(gp + i);
            if constexpr (kRelu) g = load8(yp + i) > 0.0f ? g : V8{};
            v1 += g;
            v2 += g * (load8(xp + i) - vmean);
          }
          float a1[kLanes], a2[kLanes];
          std::memcpy(a1, &v1, sizeof a1), std::memcpy(a2, &v2, sizeof a2);
          for (int64_t l = 0; i < e; ++i, ++l) {
            const float g = kRelu ? (yp[i] > 0.0f ? gp[i] : 0.0f) : gp[i];
            a1[l] += g;
            a2[l] = madd(g, xp[i] - mean, a2[l]);
          }
          for (int64_t l = 0; l < kLanes; ++l) sg += a1[l], sgx += a2[l];
        }
      }
      const double invstd = SI[c], sgxhat = sgx * invstd, k = G[c] * invstd / M;
      if (dgamma.defined()) dgamma.data<float>()[c] = static_cast<float>(sgxhat);
      if (dbeta.defined()) dbeta.data<float>()[c] = static_cast<float>(sg);
      const float a = static_cast<float>(k * M), bx = static_cast<float>(-k * sgxhat * invstd);
      const float c0 = static_cast<float>(-k * sg + k * sgxhat * invstd * mean);
      for (int64_t o = 0; o < sp.outer; ++o) {
        const float *xp = sp.plane(X, o, c), *gp = sp.plane(DY, o, c);
        const float* yp = kRelu ? sp.plane(RY, o, c) : nullptr;
        float* dp = sp.plane(DX, o, c);
#pragma omp simd
        for (int64_t i = 0; i < sp.inner; ++i) {
          const float gv = gp[i];
          const float g = kRelu ? (yp[i] > 0.0f ? gv : 0.0f) : gv;
          dp[i] = madd(a, g, madd(bx, xp[i], c0));
        }
      }
    }
  });
}

// Batch norm over channels-last [N, C, H, W] (design decision 75): x is rows of
// C channels. Every pass walks groups of `rep` rows as one flat vector loop of
// L = rep C elements (at least 64 when C < 64) against per-channel constants
// tiled to length L, so a narrow layer (C = 16) still runs full-width vector
// loops. Per-channel sums go over fixed blocks of rows (float partials folded
// into double totals in block order), so the results do not depend on the
// thread count; the per-element formulas are the plane kernels' above.
struct BnRows {
  int64_t rows, C, rep, L, total;
  explicit BnRows(const Tensor& x)
      : rows(x.numel() / x.dim(1)), C(x.dim(1)), rep(std::max<int64_t>(1, 64 / C)), L(rep * C), total(rows * C) {}
  // v [C] repeated to length L.
  std::vector<float> tile(const std::vector<float>& v) const {
    std::vector<float> t(static_cast<size_t>(L));
    for (int64_t j = 0; j < L; ++j) t[j] = v[j % C];
    return t;
  }
  int64_t groups() const { return (rows + rep - 1) / rep; }
};

// s1[c], s2[c]: sums over all rows of what f(offset, n, a1, a2) adds into the tiled
// accumulators a1, a2 [L] for the n = (rows in the group) C elements at `offset`.
template <typename F>
void bn_rows_sums(const BnRows& sr, F&& f, std::vector<double>& s1, std::vector<double>& s2) {
  const int64_t C = sr.C, L = sr.L, per_block = sr.rep * std::max<int64_t>(1, 256 / sr.rep);
  const int64_t blocks = (sr.rows + per_block - 1) / per_block;
  std::vector<float> part(static_cast<size_t>(blocks * 2 * C), 0.0f);
  parallel_for(blocks, 1, [&](int64_t lo, int64_t hi) {
    std::vector<float> acc(static_cast<size_t>(2 * L));
    for (int64_t b = lo; b < hi; ++b) {
      std::fill(acc.begin(), acc.end(), 0.0f);
      const int64_t r_end = std::min(sr.rows, (b + 1) * per_block);
      for (int64_t r = b * per_block; r < r_end; r += sr.rep)
        f(r * C, std::min(sr.rep, r_end - r) * C, acc.data(), acc.data() + L);
      float *p1 = part.data() + b * 2 * C, *p2 = p1 + C;
      for (int64_t j = 0; j < L; ++j) p1[j % C] += acc[j], p2[j % C] += acc[L + j];
    }
  });
  s1.assign(C, 0.0), s2.assign(C, 0.0);
  for (int64_t b = 0; b < blocks; ++b) {
    const float *p1 = part.data() + b * 2 * C, *p2 = p1 + C;
    for (int64_t c = 0; c < C; ++c) s1[c] += p1[c], s2[c] += p2[c];
  }
}

// f(offset, n) over the row groups in parallel.
template <typename F>
void bn_rows_for(const BnRows& sr, F&& f) {
  parallel_for(sr.groups(), std::max<int64_t>(1, 4096 / sr.L), [&](int64_t lo, int64_t hi) {
    for (int64_t g = lo; g < hi; ++g) f(g * sr.L, std::min(sr.L, sr.total - g * sr.L));
  });
}

// y = x * scale[c] + shift[c], then the ReLU or the residual's add_relu (as bn_apply).
void bn_rows_apply(const BnRows& sr, const float* X, float* Y, const std::vector<float>& scale,
                   const std::vector<float>& shift, bool relu, const float* R) {
  const std::vector<float> st = sr.tile(scale), ht = sr.tile(shift);
  const float *sc = st.data(), *sh = ht.data();
  bn_rows_for(sr, [&](int64_t off, int64_t n) {
    const float* xp = X + off;
    float* yp = Y + off;
    if (R) {
      const float* rp = R + off;
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) {
        const float v = madd(xp[j], sc[j], sh[j]) + rp[j];
        yp[j] = v > 0.0f ? v : 0.0f;
      }
    } else if (relu) {
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) yp[j] = std::max(madd(xp[j], sc[j], sh[j]), 0.0f);
    } else {
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) yp[j] = madd(xp[j], sc[j], sh[j]);
    }
  });
}

void bn_nhwc_forward_train(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& y,
                           const Tensor& save_mean, const Tensor& save_invstd, double eps, bool relu,
                           const Tensor& residual) {
  const BnRows sr(x);
  const int64_t C = sr.C;
  const float *X = x.data<float>(), *G = gamma.data<float>(), *B = beta.data<float>();
  // Shifted by the first row (see bn_channel_stats).
  const std::vector<float> kt = sr.tile(std::vector<float>(X, X + C));
  const float* k = kt.data();
  std::vector<double> s1, s2;
  bn_rows_sums(
      sr,
      [&](int64_t off, int64_t n, float* a1, float* a2) {
        const float* xp = X + off;
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) {
          const float d = xp[j] - k[j];
          a1[j] += d;
          a2[j] += d * d;
        }
      },
      s1, s2);
  std::vector<float> scale(C), shift(C);
  float *SM = save_mean.data<float>(), *SI = save_invstd.data<float>();
  const double M = static_cast<double>(sr.rows);
  for (int64_t c = 0; c < C; ++c) {
    const double m = s1[c] / M, mean = k[c] + m, var = std::max(0.0, s2[c] / M - m * m);
    const double invstd = 1.0 / std::sqrt(var + eps), sc = G[c] * invstd;
    SM[c] = static_cast<float>(mean);
    SI[c] = static_cast<float>(invstd);
    scale[c] = static_cast<float>(sc);
    shift[c] = static_cast<float>(B[c] - mean * sc);
  }
  bn_rows_apply(sr, X, y.data<float>(), scale, shift, relu, residual.defined() ? residual.data<float>() : nullptr);
}

void bn_nhwc_infer(const Tensor& x, const Tensor& residual, const Tensor& gamma, const Tensor& beta,
                   const Tensor& mean, const Tensor& var, const Tensor& y, double eps, bool relu) {
  const BnRows sr(x);
  const float *G = gamma.data<float>(), *B = beta.data<float>(), *MU = mean.data<float>(), *V = var.data<float>();
  std::vector<float> scale(sr.C), shift(sr.C);
  for (int64_t c = 0; c < sr.C; ++c) {
    const double sc = G[c] / std::sqrt(static_cast<double>(V[c]) + eps);
    scale[c] = static_cast<float>(sc);
    shift[c] = static_cast<float>(B[c] - MU[c] * sc);
  }
  bn_rows_apply(sr, x.data<float>(), y.data<float>(), scale, shift, relu,
                residual.defined() ? residual.data<float>() : nullptr);
}

// The backward of bn_backward<kRelu> over rows: the same sums and dx = a g + b x + c0.
template <bool kRelu>
void bn_nhwc_backward(const Tensor& x, const Tensor& dy, const Tensor& y, const Tensor& gamma,
                      const Tensor& save_mean, const Tensor& save_invstd, const Tensor& dx, const Tensor& dgamma,
                      const Tensor& dbeta) {
  const BnRows sr(x);
  const int64_t C = sr.C;
  const float *X = x.data<float>(), *DY = dy.data<float>(), *G = gamma.data<float>();
  const float* RY = kRelu ? y.data<float>() : nullptr;
  const float *SM = save_mean.data<float>(), *SI = save_invstd.data<float>();
  const std::vector<float> mt = sr.tile(std::vector<float>(SM, SM + C));
  const float* mean_t = mt.data();
  std::vector<double> sg, sgx;  // sum g, sum g (x - mean)
  bn_rows_sums(
      sr,
      [&](int64_t off, int64_t n, float* a1, float* a2) {
        const float *xp = X + off, *gp = DY + off;
        const float* yp = kRelu ? RY + off : nullptr;
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) {
          const float g = kRelu ? (yp[j] > 0.0f ? gp[j] : 0.0f) : gp[j];
          a1[j] += g;
          a2[j] = madd(g, xp[j] - mean_t[j], a2[j]);
        }
      },
      sg, sgx);
  const double M = static_cast<double>(sr.rows);
  std::vector<float> a(C), bx(C), c0(C);
  for (int64_t c = 0; c < C; ++c) {
    const double invstd = SI[c], sgxhat = sgx[c] * invstd, k = G[c] * invstd / M, mean = SM[c];
    if (dgamma.defined()) dgamma.data<float>()[c] = static_cast<float>(sgxhat);
    if (dbeta.defined()) dbeta.data<float>()[c] = static_cast<float>(sg[c]);
    a[c] = static_cast<float>(k * M);
    bx[c] = static_cast<float>(-k * sgxhat * invstd);
    c0[c] = static_cast<float>(-k * sg[c] + k * sgxhat * invstd * mean);
  }
  const std::vector<float> at = sr.tile(a), bt = sr.tile(bx), ct = sr.tile(c0);
  const float *ap = at.data(), *bp = bt.data(), *cp = ct.data();
  float* DX = dx.data<float>();
  bn_rows_for(sr, [&](int64_t off, int64_t n) {
    const float *xp = X + off, *gp = DY + off;
    const float* yp = kRelu ? RY + off : nullptr;
    float* dp = DX + off;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      const float g = kRelu ? (yp[j] > 0.0f ? gp[j] : 0.0f) : gp[j];
      dp[j] = madd(ap[j], g, madd(bp[j], xp[j], cp[j]));
    }
  });
}

// A batch-norm call's activations all channels-last (and not all row-major), its
// statistics and parameters float32 row-major: the row kernels above apply.
bool bn_nhwc(std::initializer_list<const Tensor*> acts, std::initializer_list<const Tensor*> params,
             const Tensor& x) {
  return x.ndim() == 4 && x.numel() > 0 && act_layout(acts) == 1 && f32_dense(params);
}

}  // namespace

void OneDnnBackend::batchnorm_forward_train(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                            const Tensor& y, const Tensor& save_mean, const Tensor& save_invstd,
                                            double eps) {
  if (bn_nhwc({&x, &y}, {&gamma, &beta, &save_mean, &save_invstd}, x))
    return bn_nhwc_forward_train(x, gamma, beta, y, save_mean, save_invstd, eps, false, Tensor());
  if (any_strided({&x, &y}))
    return via_row_major<1, 1>({x}, {y}, [&](auto& i, auto& o) {
      batchnorm_forward_train(i[0], gamma, beta, o[0], save_mean, save_invstd, eps);
    });
  if (!f32_dense({&x, &gamma, &beta, &y, &save_mean, &save_invstd}) || !bn_shape_ok(x)) {
    ReferenceBackend::batchnorm_forward_train(x, gamma, beta, y, save_mean, save_invstd, eps);
    return;
  }
  if (BnPlanes(x).ok()) {
    bn_forward_train(x, gamma, beta, y, save_mean, save_invstd, eps, false);
    return;
  }
  struct E {
    std::mutex mu;
    memory::desc data, stat;
    dnnl::batch_normalization_forward prim;
    std::vector<float> var;
  };
  const int64_t C = x.dim(1);
  E& e = impl_->entry<E>(shape_key("bn_fwd_train", x.shape(), eps), [&](E& e) {
    e.data = plain_desc(x.shape());
    e.stat = memory::desc({C}, dt::f32, tag::x);
    dnnl::batch_normalization_forward::desc d(dnnl::prop_kind::forward_training, e.data, static_cast<float>(eps),
                                              kScaleShift);
    e.prim = dnnl::batch_normalization_forward(
        dnnl::batch_normalization_forward::primitive_desc(d, impl_->engine));
    e.var.resize(C);
  });
  std::lock_guard<std::mutex> lock(e.mu);
  dnnl::stream s(impl_->engine);
  e.prim.execute(s, {{DNNL_ARG_SRC, impl_->wrap(e.data, x)},
                     {DNNL_ARG_DST, impl_->wrap(e.data, y)},
                     {DNNL_ARG_SCALE, impl_->wrap(e.stat, gamma)},
                     {DNNL_ARG_SHIFT, impl_->wrap(e.stat, beta)},
                     {DNNL_ARG_MEAN, impl_->wrap(e.stat, save_mean)},
                     {DNNL_ARG_VARIANCE, impl_->wrap(e.stat, e.var.data())}});
  s.wait();
  invstd_from_var(e.var.data(), save_invstd.data<float>(), C, eps);
}

namespace {
// Inference over plain planes: y = x * scale + shift with the running statistics, then the ReLU or
// the residual's add_relu when asked (bn_apply).
void bn_infer(const Tensor& x, const Tensor& residual, const Tensor& gamma, const Tensor& beta, const Tensor& mean,
              const Tensor& var, const Tensor& y, double eps, bool relu) {
  const BnPlanes sp(x);
  const float *X = x.data<float>(), *G = gamma.data<float>(), *B = beta.data<float>();
  const float *MU = mean.data<float>(), *V = var.data<float>();
  const float* R = residual.defined() ? residual.data<float>() : nullptr;
  float* Y = y.data<float>();
  parallel_for(sp.C, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t c = lo; c < hi; ++c) {
      const double scale = G[c] / std::sqrt(static_cast<double>(V[c]) + eps);
      bn_apply(sp, X, Y, c, static_cast<float>(scale), static_cast<float>(B[c] - MU[c] * scale), relu, R);
    }
  });
}
}  // namespace

void OneDnnBackend::batchnorm_forward_infer_relu(const Tensor& x, const Tensor& residual, const Tensor& gamma,
                                                 const Tensor& beta, const Tensor& mean, const Tensor& var,
                                                 const Tensor& y, double eps) {
  if (bn_nhwc({&x, &residual, &y}, {&gamma, &beta, &mean, &var}, x) &&
      (!residual.defined() || residual.shape() == x.shape()))
    return bn_nhwc_infer(x, residual, gamma, beta, mean, var, y, eps, true);
  if (any_strided({&x, &residual, &y}))
    return via_row_major<2, 1>({x, residual}, {y}, [&](auto& i, auto& o) {
      batchnorm_forward_infer_relu(i[0], i[1], gamma, beta, mean, var, o[0], eps);
    });
  if (f32_dense({&x, &residual, &gamma, &beta, &mean, &var, &y}) && bn_shape_ok(x) && BnPlanes(x).ok() &&
      (!residual.defined() || residual.shape() == x.shape())) {
    bn_infer(x, residual, gamma, beta, mean, var, y, eps, true);
    return;
  }
  Backend::batchnorm_forward_infer_relu(x, residual, gamma, beta, mean, var, y, eps);
}

void OneDnnBackend::batchnorm_forward_infer(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                            const Tensor& mean, const Tensor& var, const Tensor& y, double eps) {
  if (bn_nhwc({&x, &y}, {&gamma, &beta, &mean, &var}, x))
    return bn_nhwc_infer(x, Tensor(), gamma, beta, mean, var, y, eps, false);
  if (any_strided({&x, &y}))
    return via_row_major<1, 1>({x}, {y}, [&](auto& i, auto& o) {
      batchnorm_forward_infer(i[0], gamma, beta, mean, var, o[0], eps);
    });
  if (!f32_dense({&x, &gamma, &beta, &mean, &var, &y}) || !bn_shape_ok(x)) {
    ReferenceBackend::batchnorm_forward_infer(x, gamma, beta, mean, var, y, eps);
    return;
  }
  if (BnPlanes(x).ok()) {
    bn_infer(x, Tensor(), gamma, beta, mean, var, y, eps, false);
    return;
  }
  struct E {
    memory::desc data, stat;
    dnnl::batch_normalization_forward prim;
  };
  E& e = impl_->entry<E>(shape_key("bn_fwd_infer", x.shape(), eps), [&](E& e) {
    e.data = plain_desc(x.shape());
    e.stat = memory::desc({x.dim(1)}, dt::f32, tag::x);
    dnnl::batch_normalization_forward::desc d(dnnl::prop_kind::forward_inference, e.data, static_cast<float>(eps),
                                              kScaleShift | dnnl::normalization_flags::use_global_stats);
    e.prim = dnnl::batch_normalization_forward(
        dnnl::batch_normalization_forward::primitive_desc(d, impl_->engine));
  });
  dnnl::stream s(impl_->engine);
  e.prim.execute(s, {{DNNL_ARG_SRC, impl_->wrap(e.data, x)},
                     {DNNL_ARG_DST, impl_->wrap(e.data, y)},
                     {DNNL_ARG_SCALE, impl_->wrap(e.stat, gamma)},
                     {DNNL_ARG_SHIFT, impl_->wrap(e.stat, beta)},
                     {DNNL_ARG_MEAN, impl_->wrap(e.stat, mean)},
                     {DNNL_ARG_VARIANCE, impl_->wrap(e.stat, var)}});
  s.wait();
}

void OneDnnBackend::batchnorm_backward(const Tensor& x, const Tensor& dy, const Tensor& gamma,
                                       const Tensor& save_mean, const Tensor& save_invstd, const Tensor& dx,
                                       const Tensor& dgamma, const Tensor& dbeta) {
  if (bn_nhwc({&x, &dy, &dx}, {&gamma, &save_mean, &save_invstd, &dgamma, &dbeta}, x))
    return bn_nhwc_backward<false>(x, dy, Tensor(), gamma, save_mean, save_invstd, dx, dgamma, dbeta);
  if (any_strided({&x, &dy, &dx}))
    return via_row_major<2, 1>({x, dy}, {dx}, [&](auto& i, auto& o) {
      batchnorm_backward(i[0], i[1], gamma, save_mean, save_invstd, o[0], dgamma, dbeta);
    });
  if (!f32_dense({&x, &dy, &gamma, &save_mean, &save_invstd, &dx, &dgamma, &dbeta}) || !bn_shape_ok(x)) {
    ReferenceBackend::batchnorm_backward(x, dy, gamma, save_mean, save_invstd, dx, dgamma, dbeta);
    return;
  }
  if (BnPlanes(x).ok()) {
    bn_backward<false>(x, dy, Tensor(), gamma, save_mean, save_invstd, dx, dgamma, dbeta);
    return;
  }
  struct E {
    std::mutex mu;
    memory::desc data, stat;
    dnnl::batch_normalization_backward prim;
    std::vector<float> var, dgamma, dbeta, shift;  // shift: oneDNN 2.6 wants it bound, never reads it
  };
  const int64_t C = x.dim(1);
  // eps only enters through var + eps = 1/invstd^2, so the key omits it and the
  // primitive gets eps = 0 with var + eps passed as the variance.
  E& e = impl_->entry<E>(shape_key("bn_bwd", x.shape(), 0), [&](E& e) {
    e.data = plain_desc(x.shape());
    e.stat = memory::desc({C}, dt::f32, tag::x);
    dnnl::batch_normalization_forward::primitive_desc hint(
        dnnl::batch_normalization_forward::desc(dnnl::prop_kind::forward_training, e.data, 0.f, kScaleShift),
        impl_->engine);
    dnnl::batch_normalization_backward::desc d(dnnl::prop_kind::backward, e.data, e.data, 0.f, kScaleShift);
    e.prim = dnnl::batch_normalization_backward(
        dnnl::batch_normalization_backward::primitive_desc(d, impl_->engine, hint));
    e.var.resize(C), e.dgamma.resize(C), e.dbeta.resize(C), e.shift.assign(C, 0.f);
  });
  std::lock_guard<std::mutex> lock(e.mu);
  var_from_invstd(save_invstd.data<float>(), e.var.data(), C, 0.0);
  dnnl::stream s(impl_->engine);
  e.prim.execute(s, {{DNNL_ARG_SRC, impl_->wrap(e.data, x)},
                     {DNNL_ARG_DIFF_DST, impl_->wrap(e.data, dy)},
                     {DNNL_ARG_SCALE, impl_->wrap(e.stat, gamma)},
                     {DNNL_ARG_SHIFT, impl_->wrap(e.stat, e.shift.data())},
                     {DNNL_ARG_MEAN, impl_->wrap(e.stat, save_mean)},
                     {DNNL_ARG_VARIANCE, impl_->wrap(e.stat, e.var.data())},
                     {DNNL_ARG_DIFF_SRC, impl_->wrap(e.data, dx)},
                     {DNNL_ARG_DIFF_SCALE, dgamma.defined() ? impl_->wrap(e.stat, dgamma)
                                                            : impl_->wrap(e.stat, e.dgamma.data())},
                     {DNNL_ARG_DIFF_SHIFT, dbeta.defined() ? impl_->wrap(e.stat, dbeta)
                                                           : impl_->wrap(e.stat, e.dbeta.data())}});
  s.wait();
}

void OneDnnBackend::batchnorm_relu_forward_train(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                                 const Tensor& y, const Tensor& save_mean, const Tensor& save_invstd,
                                                 double eps) {
  if (bn_nhwc({&x, &y}, {&gamma, &beta, &save_mean, &save_invstd}, x))
    return bn_nhwc_forward_train(x, gamma, beta, y, save_mean, save_invstd, eps, true, Tensor());
  if (any_strided({&x, &y}))
    return via_row_major<1, 1>({x}, {y}, [&](auto& i, auto& o) {
      batchnorm_relu_forward_train(i[0], gamma, beta, o[0], save_mean, save_invstd, eps);
    });
  if (f32_dense({&x, &gamma, &beta, &y, &save_mean, &save_invstd}) && bn_shape_ok(x) && BnPlanes(x).ok()) {
    bn_forward_train(x, gamma, beta, y, save_mean, save_invstd, eps, true);
    return;
  }
  Backend::batchnorm_relu_forward_train(x, gamma, beta, y, save_mean, save_invstd, eps);
}

void OneDnnBackend::batchnorm_add_relu_forward_train(const Tensor& x, const Tensor& residual, const Tensor& gamma,
                                                     const Tensor& beta, const Tensor& y, const Tensor& save_mean,
                                                     const Tensor& save_invstd, double eps) {
  if (bn_nhwc({&x, &residual, &y}, {&gamma, &beta, &save_mean, &save_invstd}, x) && residual.shape() == x.shape())
    return bn_nhwc_forward_train(x, gamma, beta, y, save_mean, save_invstd, eps, true, residual);
  if (any_strided({&x, &residual, &y}))
    return via_row_major<2, 1>({x, residual}, {y}, [&](auto& i, auto& o) {
      batchnorm_add_relu_forward_train(i[0], i[1], gamma, beta, o[0], save_mean, save_invstd, eps);
    });
  if (f32_dense({&x, &residual, &gamma, &beta, &y, &save_mean, &save_invstd}) && residual.shape() == x.shape() &&
      bn_shape_ok(x) && BnPlanes(x).ok()) {
    bn_forward_train(x, gamma, beta, y, save_mean, save_invstd, eps, true, residual);
    return;
  }
  Backend::batchnorm_add_relu_forward_train(x, residual, gamma, beta, y, save_mean, save_invstd, eps);
}

void OneDnnBackend::batchnorm_relu_backward(const Tensor& x, const Tensor& y, const Tensor& dy, const Tensor& gamma,
                                            const Tensor& beta, const Tensor& save_mean, const Tensor& save_invstd,
                                            const Tensor& dx, const Tensor& dgamma, const Tensor& dbeta) {
  if (bn_nhwc({&x, &y, &dy, &dx}, {&gamma, &save_mean, &save_invstd, &dgamma, &dbeta}, x))
    return bn_nhwc_backward<true>(x, dy, y, gamma, save_mean, save_invstd, dx, dgamma, dbeta);
  if (any_strided({&x, &y, &dy, &dx}))
    return via_row_major<3, 1>({x, y, dy}, {dx}, [&](auto& i, auto& o) {
      batchnorm_relu_backward(i[0], i[1], i[2], gamma, beta, save_mean, save_invstd, o[0], dgamma, dbeta);
    });
  if (f32_dense({&x, &y, &dy, &gamma, &save_mean, &save_invstd, &dx, &dgamma, &dbeta}) && bn_shape_ok(x) &&
      BnPlanes(x).ok()) {
    bn_backward<true>(x, dy, y, gamma, save_mean, save_invstd, dx, dgamma, dbeta);
    return;
  }
  Backend::batchnorm_relu_backward(x, y, dy, gamma, beta, save_mean, save_invstd, dx, dgamma, dbeta);
}

// ---------------------------------------------------------------- layer normalization

void OneDnnBackend::layernorm_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& y,
                                      const Tensor& save_mean, const Tensor& save_invstd, double eps) {
  if (!f32_dense({&x, &gamma, &beta, &y, &save_mean, &save_invstd}) || x.ndim() != 2 || x.numel() == 0) {
    ReferenceBackend::layernorm_forward(x, gamma, beta, y, save_mean, save_invstd, eps);
    return;
  }
  struct E {
    std::mutex mu;
    memory::desc data, stat, param;
    dnnl::layer_normalization_forward prim;
    std::vector<float> var;
  };
  const int64_t M = x.dim(0), D = x.dim(1);
  E& e = impl_->entry<E>(shape_key("ln_fwd", x.shape(), eps), [&](E& e) {
    e.data = memory::desc({M, D}, dt::f32, tag::ab);
    e.stat = memory::desc({M}, dt::f32, tag::a);
    e.param = memory::desc({D}, dt::f32, tag::a);
    dnnl::layer_normalization_forward::desc d(dnnl::prop_kind::forward_training, e.data, e.stat,
                                              static_cast<float>(eps), kScaleShift);
    e.prim = dnnl::layer_normalization_forward(
        dnnl::layer_normalization_forward::primitive_desc(d, impl_->engine));
    e.var.resize(M);
  });
  std::lock_guard<std::mutex> lock(e.mu);
  dnnl::stream s(impl_->engine);
  e.prim.execute(s, {{DNNL_ARG_SRC, impl_->wrap(e.data, x)},
                     {DNNL_ARG_DST, impl_->wrap(e.data, y)},
                     {DNNL_ARG_SCALE, impl_->wrap(e.param, gamma)},
                     {DNNL_ARG_SHIFT, impl_->wrap(e.param, beta)},
                     {DNNL_ARG_MEAN, impl_->wrap(e.stat, save_mean)},
                     {DNNL_ARG_VARIANCE, impl_->wrap(e.stat, e.var.data())}});
  s.wait();
  invstd_from_var(e.var.data(), save_invstd.data<float>(), M, eps);
}

void OneDnnBackend::layernorm_backward(const Tensor& x, const Tensor& dy, const Tensor& gamma,
                                       const Tensor& save_mean, const Tensor& save_invstd, const Tensor& dx,
                                       const Tensor& dgamma, const Tensor& dbeta) {
  if (!f32_dense({&x, &dy, &gamma, &save_mean, &save_invstd, &dx, &dgamma, &dbeta}) || x.ndim() != 2 ||
      x.numel() == 0) {
    ReferenceBackend::layernorm_backward(x, dy, gamma, save_mean, save_invstd, dx, dgamma, dbeta);
    return;
  }
  struct E {
    std::mutex mu;
    memory::desc data, stat, param;
    dnnl::layer_normalization_backward prim;
    std::vector<float> var, dgamma, dbeta, shift;  // shift: oneDNN 2.6 wants it bound, never reads it
  };
  const int64_t M = x.dim(0), D = x.dim(1);
  E& e = impl_->entry<E>(shape_key("ln_bwd", x.shape(), 0), [&](E& e) {
    e.data = memory::desc({M, D}, dt::f32, tag::ab);
    e.stat = memory::desc({M}, dt::f32, tag::a);
    e.param = memory::desc({D}, dt::f32, tag::a);
    dnnl::layer_normalization_forward::primitive_desc hint(
        dnnl::layer_normalization_forward::desc(dnnl::prop_kind::forward_training, e.data, e.stat, 0.f, kScaleShift),
        impl_->engine);
    dnnl::layer_normalization_backward::desc d(dnnl::prop_kind::backward, e.data, e.data, e.stat, 0.f, kScaleShift);
    e.prim = dnnl::layer_normalization_backward(
        dnnl::layer_normalization_backward::primitive_desc(d, impl_->engine, hint));
    e.var.resize(M), e.dgamma.resize(D), e.dbeta.resize(D), e.shift.assign(D, 0.f);
  });
  std::lock_guard<std::mutex> lock(e.mu);
  var_from_invstd(save_invstd.data<float>(), e.var.data(), M, 0.0);
  dnnl::stream s(impl_->engine);
  e.prim.execute(s, {{DNNL_ARG_SRC, impl_->wrap(e.data, x)},
                     {DNNL_ARG_DIFF_DST, impl_->wrap(e.data, dy)},
                     {DNNL_ARG_SCALE, impl_->wrap(e.param, gamma)},
                     {DNNL_ARG_SHIFT, impl_->wrap(e.param, e.shift.data())},
                     {DNNL_ARG_MEAN, impl_->wrap(e.stat, save_mean)},
                     {DNNL_ARG_VARIANCE, impl_->wrap(e.stat, e.var.data())},
                     {DNNL_ARG_DIFF_SRC, impl_->wrap(e.data, dx)},
                     {DNNL_ARG_DIFF_SCALE, dgamma.defined() ? impl_->wrap(e.param, dgamma)
                                                            : impl_->wrap(e.param, e.dgamma.data())},
                     {DNNL_ARG_DIFF_SHIFT, dbeta.defined() ? impl_->wrap(e.param, dbeta)
                                                           : impl_->wrap(e.param, e.dbeta.data())}});
  s.wait();
}

// ---------------------------------------------------------------- softmax

void OneDnnBackend::softmax_forward(const Tensor& x, const Tensor& y, int axis, bool log) {
  if (!f32_dense({&x, &y}) || x.numel() == 0) {
    ReferenceBackend::softmax_forward(x, y, axis, log);
    return;
  }
  struct E {
    memory::desc md;
    dnnl::softmax_v2_forward prim;
  };
  E& e = impl_->entry<E>(shape_key(log ? "logsoftmax_fwd" : "softmax_fwd", x.shape(), axis), [&](E& e) {
    e.md = plain_desc(x.shape());
    auto alg = log ? dnnl::algorithm::softmax_log : dnnl::algorithm::softmax_accurate;
    dnnl::softmax_v2_forward::desc d(dnnl::prop_kind::forward_training, alg, e.md, e.md, axis);
    e.prim = dnnl::softmax_v2_forward(dnnl::softmax_v2_forward::primitive_desc(d, impl_->engine));
  });
  dnnl::stream s(impl_->engine);
  e.prim.execute(s, {{DNNL_ARG_SRC, impl_->wrap(e.md, x)}, {DNNL_ARG_DST, impl_->wrap(e.md, y)}});
  s.wait();
}

void OneDnnBackend::softmax_backward(const Tensor& y, const Tensor& dy, const Tensor& dx, int axis, bool log) {
  if (!f32_dense({&y, &dy, &dx}) || y.numel() == 0) {
    ReferenceBackend::softmax_backward(y, dy, dx, axis, log);
    return;
  }
  struct E {
    memory::desc md;
    dnnl::softmax_v2_backward prim;
  };
  E& e = impl_->entry<E>(shape_key(log ? "logsoftmax_bwd" : "softmax_bwd", y.shape(), axis), [&](E& e) {
    e.md = plain_desc(y.shape());
    auto alg = log ? dnnl::algorithm::softmax_log : dnnl::algorithm::softmax_accurate;
    dnnl::softmax_v2_forward::primitive_desc hint(
        dnnl::softmax_v2_forward::desc(dnnl::prop_kind::forward_training, alg, e.md, e.md, axis), impl_->engine);
    dnnl::softmax_v2_backward::desc d(alg, e.md, e.md, e.md, axis);
    e.prim = dnnl::softmax_v2_backward(dnnl::softmax_v2_backward::primitive_desc(d, impl_->engine, hint));
  });
  dnnl::stream s(impl_->engine);
  e.prim.execute(s, {{DNNL_ARG_DST, impl_->wrap(e.md, y)},
                     {DNNL_ARG_DIFF_DST, impl_->wrap(e.md, dy)},
                     {DNNL_ARG_DIFF_SRC, impl_->wrap(e.md, dx)}});
  s.wait();
}

// ---------------------------------------------------------------- info

namespace {
// AdamW on float32 tensors in float32 vector loops (the reference computes each element in double):
//   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
//   p = p (1 - lr wd) - (lr scale / bc1) m / (sqrt(v) / sqrt(bc2) + eps),  bc_i = 1 - b_i^step
// the reference's formula with the bias corrections folded into two per-call constants.
void adamw_f32(const OptimizerUpdate& u, float* p, const float* g, float* m, float* v, int64_t n) {
  const double bc1 = 1 - std::pow(u.beta1, static_cast<double>(u.step));
  const double bc2 = 1 - std::pow(u.beta2, static_cast<double>(u.step));
  const float decay = static_cast<float>(1 - u.lr * u.weight_decay);
  const float b1 = static_cast<float>(u.beta1), c1 = static_cast<float>(1 - u.beta1);
  const float b2 = static_cast<float>(u.beta2), c2 = static_cast<float>(1 - u.beta2);
  const float step_size = static_cast<float>(u.lr * u.scale / bc1);
  const float inv_sqrt_bc2 = static_cast<float>(1 / std::sqrt(bc2)), eps = static_cast<float>(u.eps);
  parallel_for(n, 1 << 16, [&](int64_t b, int64_t e) {
    adamw_rows(p + b, g + b, m + b, v + b, e - b, b1, c1, b2, c2, decay, step_size, inv_sqrt_bc2, eps);
  });
}
}  // namespace

void OneDnnBackend::optimizer_update(const OptimizerUpdate& u, const Tensor& param, const Tensor& grad,
                                     const Tensor& buf1, const Tensor& buf2) {
  if (u.kind == OptimizerUpdate::Kind::adamw && f32_dense({&param, &grad, &buf1, &buf2}) && buf1.defined() &&
      buf2.defined()) {
    adamw_f32(u, param.data<float>(), grad.data<float>(), buf1.data<float>(), buf2.data<float>(), param.numel());
    return;
  }
  const bool steady_sgd = u.kind == OptimizerUpdate::Kind::sgd && param.dtype() == DType::f32 && buf1.defined() &&
                          u.momentum != 0 && u.step > 1 && !u.decoupled_decay;
  if (!steady_sgd) {
    ReferenceBackend::optimizer_update(u, param, grad, buf1, buf2);
    return;
  }
  // g' = g + wd p; m = mu m + (1 - dampening) g'; p -= lr (nesterov ? g' + mu m : m)
  float* p = param.data<float>();
  const float* g = grad.data<float>();
  float* m = buf1.data<float>();
  const float wd = static_cast<float>(u.weight_decay), mu = static_cast<float>(u.momentum);
  const float damp = static_cast<float>(1 - u.dampening), lr = static_cast<float>(u.lr * u.scale);
  const float nest = u.nesterov ? 1.0f : 0.0f;
  parallel_for(param.numel(), 1 << 16, [&](int64_t b, int64_t e) {
#pragma omp simd
    for (int64_t i = b; i < e; ++i) {
      const float gi = g[i] + wd * p[i];
      const float mi = mu * m[i] + damp * gi;
      m[i] = mi;
      p[i] -= lr * (nest * (gi + mu * mi) + (1.0f - nest) * mi);
    }
  });
}

std::string onednn_version() {
  const dnnl_version_t* v = dnnl_version();
  return fmt::format("{}.{}.{}", v->major, v->minor, v->patch);
}

std::string onednn_conv_impl(const Shape& xs, const Shape& ws, const Conv2dParams& p) {
  const Shape ys{xs[0], ws[0], Conv2dParams::out_size(xs[2], ws[2], p.stride_h, p.pad_h, p.dilation_h),
                 Conv2dParams::out_size(xs[3], ws[3], p.stride_w, p.pad_w, p.dilation_w)};
  const bool bf16 = bf16_operands();
  ConvGeom geom(xs, ws, ys, p, bf16);
  dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return make_pd("convolution forward", bf16, [&] {
           return dnnl::convolution_forward::primitive_desc(geom.fwd_desc(false), engine);
         }).impl_info_str();
}

std::string onednn_matmul_impl(int64_t M, int64_t N, int64_t K) {
  const bool bf16 = bf16_operands();
  const dt in = bf16 ? dt::bf16 : dt::f32;
  memory::desc amd({1, M, K}, in, tag::abc), bmd({1, K, N}, in, tag::abc), cmd({1, M, N}, dt::f32, tag::abc);
  dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return make_pd("matmul", bf16, [&] {
           return dnnl::matmul::primitive_desc(dnnl::matmul::desc(amd, bmd, cmd), engine);
         }).impl_info_str();
}

bool onednn_bf16_supported() {
  const auto isa = static_cast<unsigned>(dnnl::get_effective_cpu_isa());
  return (isa & dnnl_cpu_isa_avx512_core_bf16) == dnnl_cpu_isa_avx512_core_bf16;
}

std::string onednn_isa() {
  switch (dnnl::get_effective_cpu_isa()) {
    case dnnl::cpu_isa::sse41: return "sse41";
    case dnnl::cpu_isa::avx: return "avx";
    case dnnl::cpu_isa::avx2: return "avx2";
    case dnnl::cpu_isa::avx512_core: return "avx512_core";
    case dnnl::cpu_isa::avx512_core_vnni: return "avx512_core_vnni";
    case dnnl::cpu_isa::avx512_core_bf16: return "avx512_core_bf16";
    case dnnl::cpu_isa::avx512_core_amx: return "avx512_core_amx";
    default: return "other";
  }
}

}  // namespace hpdl::cpu

namespace hpdl {
Backend& cpu_backend() {
  static cpu::OneDnnBackend b;
  return b;
}
}  // namespace hpdl
