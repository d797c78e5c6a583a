// Reference kernels: the plain loops that define what every op computes.
// Templates over the element type (float, double); a dispatch helper maps a
// DType to the instantiation and names the op when the dtype is unsupported.
#include "hpdl/backend/cpu/reference.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "hpdl/backend/cpu/strided.h"
#include "hpdl/core/random.h"

namespace hpdl::cpu {
namespace {

template <typename F>
void dispatch_float(DType t, const char* op, F&& f) {
  switch (t) {
    case DType::f32: f(float{}); return;
    case DType::f64: f(double{}); return;
    default: HPDL_FAIL("{}: dtype {} not supported by the reference backend (use float32 or float64)", op, dtype_name(t));
  }
}

template <typename F>
void dispatch_all(DType t, F&& f) {
  switch (t) {
    case DType::f32: f(float{}); return;
    case DType::f64: f(double{}); return;
    case DType::bf16: f(bf16{}); return;
    case DType::i64: f(int64_t{}); return;
    case DType::i32: f(int32_t{}); return;
    case DType::u8: f(uint8_t{}); return;
    case DType::f16: f(f16{}); return;
  }
}

template <typename To, typename From>
inline To convert(From v) {
  if constexpr (std::is_same_v<To, From>) {
    return v;
  } else if constexpr (std::is_same_v<To, bf16> || std::is_same_v<To, f16>) {
    // via float: exact for every type except float64 (double rounding is a
    // negligible difference for a storage conversion)
    return To(static_cast<float>(convert<float>(v)));
  } else if constexpr (std::is_same_v<From, bf16> || std::is_same_v<From, f16>) {
    return static_cast<To>(static_cast<float>(v));
  } else {
    return static_cast<To>(v);
  }
}

template <typename T>
T* ptr(const Tensor& t) {
  return static_cast<T*>(t.raw_data());
}

// x viewed as [outer, axis, inner] around one axis of a contiguous tensor.
struct AxisSplit {
  int64_t outer = 1, n = 1, inner = 1;
  AxisSplit(const Shape& s, int axis) {
    for (int i = 0; i < axis; ++i) outer *= s[i];
    n = s[axis];
    for (size_t i = axis + 1; i < s.size(); ++i) inner *= s[i];
  }
};

template <typename T>
T unary_value(UnaryOp op, T x, T a) {
  switch (op) {
    case UnaryOp::neg: return -x;
    case UnaryOp::exp: return std::exp(x);
    case UnaryOp::log: return std::log(x);
    case UnaryOp::sqrt: return std::sqrt(x);
    case UnaryOp::rsqrt: return T(1) / std::sqrt(x);
    case UnaryOp::tanh: return std::tanh(x);
    case UnaryOp::sigmoid: return T(1) / (T(1) + std::exp(-x));
    case UnaryOp::relu: return x > T(0) ? x : T(0);
    case UnaryOp::leaky_relu: return x > T(0) ? x : a * x;
    case UnaryOp::gelu: return T(0.5) * x * (T(1) + std::erf(x * T(0.70710678118654752440)));
    case UnaryOp::abs: return std::abs(x);
    case UnaryOp::square: return x * x;
    case UnaryOp::pow_scalar: return std::pow(x, a);
    case UnaryOp::reciprocal: return T(1) / x;
    case UnaryOp::add_scalar: return x + a;
    case UnaryOp::mul_scalar: return x * a;
    case UnaryOp::sign: return T((x > T(0)) - (x < T(0)));
    case UnaryOp::sin: return std::sin(x);
    case UnaryOp::cos: return std::cos(x);
    case UnaryOp::erf: return std::erf(x);
  }
  return x;
}

template <typename T>
T binary_value(BinaryOp op, T a, T b, T alpha) {
  switch (op) {
    case BinaryOp::add: return a + b;
    case BinaryOp::sub: return a - b;
    case BinaryOp::mul: return a * b;
    case BinaryOp::div: return a / b;
    case BinaryOp::pow: return std::pow(a, b);
    case BinaryOp::maximum: return a > b ? a : b;
    case BinaryOp::minimum: return a < b ? a : b;
    case BinaryOp::gt: return T(a > b);
    case BinaryOp::ge: return T(a >= b);
    case BinaryOp::lt: return T(a < b);
    case BinaryOp::le: return T(a <= b);
    case BinaryOp::eq: return T(a == b);
    case BinaryOp::relu_grad: return b > T(0) ? a : T(0);
    case BinaryOp::leaky_relu_grad: return b > T(0) ? a : alpha * a;
    case BinaryOp::add_relu: return a + b > T(0) ? a + b : T(0);
  }
  return a;
}

}  // namespace

bool ReferenceBackend::supports(OpKind op, DType dtype) const {
  if (op == OpKind::fill || op == OpKind::copy) return true;
  return dtype == DType::f32 || dtype == DType::f64;
}

// ---------------------------------------------------------------- memory

void ReferenceBackend::fill(const Tensor& out, double value) {
  dispatch_all(out.dtype(), [&](auto tag) {
    using T = decltype(tag);
    T v = convert<T>(value);
    auto plan = make_plan<1>(out.shape(), {out.strides()});
    T* base = ptr<T>(out);
    for_each_row(plan, [&](auto off, int64_t n, auto is) {
      T* o = base + off[0];
      for (int64_t i = 0; i < n; ++i) o[i * is[0]] = v;
    });
  });
}

void ReferenceBackend::copy(const Tensor& src, const Tensor& dst) {
  HPDL_CHECK(src.numel() == dst.numel(), "copy: {} elements into {}", src.numel(), dst.numel());
  if (src.numel() == 0) return;
  // Same shapes copy view to view; different shapes (same numel) copy in row-major order.
  Tensor s = src, d = dst;
  if (src.shape() != dst.shape()) {
    s = src.is_contiguous() ? make_view(src, {src.numel()}, {1}, src.offset()) : src.contiguous();
    s = make_view(s, {s.numel()}, {1}, s.offset());
    HPDL_CHECK(dst.is_contiguous(), "copy: reshaping copy into a non-contiguous destination {}", dst.str());
    d = make_view(dst, {dst.numel()}, {1}, dst.offset());
  }
  dispatch_all(s.dtype(), [&](auto stag) {
    using S = decltype(stag);
    dispatch_all(d.dtype(), [&](auto dtag) {
      using D = decltype(dtag);
      auto plan = make_plan<2>(d.shape(), {d.strides(), s.strides()});
      D* db = ptr<D>(d);
      const S* sb = ptr<S>(s);
      for_each_row(plan, [&](auto off, int64_t n, auto is) {
        D* o = db + off[0];
        const S* in = sb + off[1];
        if (is[0] == 1 && is[1] == 1) {
          for (int64_t i = 0; i < n; ++i) o[i] = convert<D>(in[i]);
        } else {
          for (int64_t i = 0; i < n; ++i) o[i * is[0]] = convert<D>(in[i * is[1]]);
        }
      });
    });
  });
}

void ReferenceBackend::random_uniform(const Tensor& out, uint64_t seed, uint64_t offset, double low, double high) {
  HPDL_CHECK(out.is_contiguous(), "random_uniform: output must be contiguous");
  dispatch_float(out.dtype(), "random_uniform", [&](auto tag) {
    using T = decltype(tag);
    T* o = ptr<T>(out);
    parallel_for(out.numel(), 65536, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) o[i] = static_cast<T>(low + (high - low) * Generator::uniform(seed, offset + i));
    });
  });
}

void ReferenceBackend::random_normal(const Tensor& out, uint64_t seed, uint64_t offset, double mean,
                                     double stddev) {
  HPDL_CHECK(out.is_contiguous(), "random_normal: output must be contiguous");
  // Box-Muller on counters (2i, 2i+1): element i depends only on (seed, offset, i).
  dispatch_float(out.dtype(), "random_normal", [&](auto tag) {
    using T = decltype(tag);
    T* o = ptr<T>(out);
    parallel_for(out.numel(), 65536, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        double u1 = 1.0 - Generator::uniform(seed, offset + 2 * i);  // (0, 1]
        double u2 = Generator::uniform(seed, offset + 2 * i + 1);
        double z = std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
        o[i] = static_cast<T>(mean + stddev * z);
      }
    });
  });
}

// ---------------------------------------------------------------- elementwise

namespace {
// A dense row of the unary ops that are one arithmetic instruction, as plain loops the compiler
// vectorizes (the switch per element of unary_value keeps it scalar: scaling a 32 MB gradient
// bucket took 10-19 ms that way). The same operations, so the same results bit for bit.
template <typename T>
bool unary_row_fast(UnaryOp op, T* o, const T* in, int64_t n, T a) {
  switch (op) {
    case UnaryOp::mul_scalar: for (int64_t i = 0; i < n; ++i) o[i] = in[i] * a; return true;
    case UnaryOp::add_scalar: for (int64_t i = 0; i < n; ++i) o[i] = in[i] + a; return true;
    case UnaryOp::neg: for (int64_t i = 0; i < n; ++i) o[i] = -in[i]; return true;
    case UnaryOp::square: for (int64_t i = 0; i < n; ++i) o[i] = in[i] * in[i]; return true;
    case UnaryOp::relu: for (int64_t i = 0; i < n; ++i) o[i] = in[i] > T(0) ? in[i] : T(0); return true;
    default: return false;
  }
}
}  // namespace

void ReferenceBackend::unary(UnaryOp op, const Tensor& x, const Tensor& out, double alpha) {
  dispatch_float(x.dtype(), unary_name(op), [&](auto tag) {
    using T = decltype(tag);
    auto plan = make_plan<2>(out.shape(), {out.strides(), x.strides()});
    T* ob = ptr<T>(out);
    const T* xb = ptr<T>(x);
    const T a = static_cast<T>(alpha);
    for_each_row(plan, [&](auto off, int64_t n, auto is) {
      T* o = ob + off[0];
      const T* in = xb + off[1];
      if (is[0] == 1 && is[1] == 1 && unary_row_fast<T>(op, o, in, n, a)) return;
      for (int64_t i = 0; i < n; ++i) o[i * is[0]] = unary_value<T>(op, in[i * is[1]], a);
    });
  });
}

namespace {
// One row of a binary op whose operands have inner stride SA, SB in {0, 1} (0: one value broadcast
// along the row, as a bias or a scalar) and a unit-stride output, as plain loops the compiler
// vectorizes. Returns false for the ops left to the generic loop.
template <int SA, int SB, typename T>
bool binary_row_fast(BinaryOp op, T* o, const T* pa, const T* pb, int64_t n, T al) {
  switch (op) {
    case BinaryOp::add: for (int64_t i = 0; i < n; ++i) o[i] = pa[i * SA] + pb[i * SB]; return true;
    case BinaryOp::sub: for (int64_t i = 0; i < n; ++i) o[i] = pa[i * SA] - pb[i * SB]; return true;
    case BinaryOp::mul: for (int64_t i = 0; i < n; ++i) o[i] = pa[i * SA] * pb[i * SB]; return true;
    case BinaryOp::div: for (int64_t i = 0; i < n; ++i) o[i] = pa[i * SA] / pb[i * SB]; return true;
    case BinaryOp::relu_grad:
      for (int64_t i = 0; i < n; ++i) o[i] = pb[i * SB] > T(0) ? pa[i * SA] : T(0);
      return true;
    case BinaryOp::leaky_relu_grad:
      // Written so that GCC 12 vectorizes it: as `b > 0 ? a : alpha * a` (or with the select
      // of 1 and alpha inside the product) it keeps a branch per element ("control flow in
      // loop"), 25x slower on a LeakyReLU's random signs.
      for (int64_t i = 0; i < n; ++i) {
        T factor = al;
        if (pb[i * SB] > T(0)) factor = T(1);
        o[i] = pa[i * SA] * factor;
      }
      return true;
    case BinaryOp::add_relu:
      for (int64_t i = 0; i < n; ++i) o[i] = pa[i * SA] + pb[i * SB] > T(0) ? pa[i * SA] + pb[i * SB] : T(0);
      return true;
    default: return false;
  }
}
// A row of binary_row_fast's ops whose operands have any inner strides (at least one not 0 or 1):
// each strided operand is gathered into a stack buffer a chunk at a time. Returns false for the
// ops binary_row_fast leaves to the generic loop.
template <typename T>
bool binary_row_gathered(BinaryOp op, T* o, const T* pa, int64_t sa, const T* pb, int64_t sb, int64_t n, T al) {
  const bool a_strided = sa != 0 && sa != 1, b_strided = sb != 0 && sb != 1;
  if (!a_strided && !b_strided) return false;  // both broadcast along the row: the generic loop
  constexpr int64_t kChunk = 256;
  T ga[kChunk], gb[kChunk];
  for (int64_t s = 0; s < n; s += kChunk) {
    const int64_t m = std::min(kChunk, n - s);
    const T* qa = pa + s * sa;
    const T* qb = pb + s * sb;
    if (a_strided) {
      for (int64_t i = 0; i < m; ++i) ga[i] = qa[i * sa];
      qa = ga;
    }
    if (b_strided) {
      for (int64_t i = 0; i < m; ++i) gb[i] = qb[i * sb];
      qb = gb;
    }
    const bool a1 = a_strided || sa == 1, b1 = b_strided || sb == 1;
    const bool done = a1 && b1   ? binary_row_fast<1, 1>(op, o + s, qa, qb, m, al)
                      : a1       ? binary_row_fast<1, 0>(op, o + s, qa, qb, m, al)
                                 : binary_row_fast<0, 1>(op, o + s, qa, qb, m, al);
    if (!done) return false;  // the op decides, so only on the first chunk, before any write
  }
  return true;
}
}  // namespace

void ReferenceBackend::binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out, double alpha) {
  dispatch_float(out.dtype(), binary_name(op), [&](auto tag) {
    using T = decltype(tag);
    const Shape& s = out.shape();
    auto plan = make_plan<3>(s, {out.strides(), broadcast_strides(a.shape(), a.strides(), s),
                                 broadcast_strides(b.shape(), b.strides(), s)});
    T* ob = ptr<T>(out);
    const T* ab = ptr<T>(a);
    const T* bb = ptr<T>(b);
    const T al = static_cast<T>(alpha);
    for_each_row(plan, [&](auto off, int64_t n, auto is) {
      T* o = ob + off[0];
      const T* pa = ab + off[1];
      const T* pb = bb + off[2];
      // The hot cases: dense rows, and rows against a broadcast value (a conv bias [1, K, 1, 1]
      // added to [N, K, P, Q] has rows of P * Q against one bias value).
      if (is[0] == 1) {
        if (is[1] == 1 && is[2] == 1 && binary_row_fast<1, 1>(op, o, pa, pb, n, al)) return;
        if (is[1] == 1 && is[2] == 0 && binary_row_fast<1, 0>(op, o, pa, pb, n, al)) return;
        if (is[1] == 0 && is[2] == 1 && binary_row_fast<0, 1>(op, o, pa, pb, n, al)) return;
        // Operands in different layouts (a row-major gradient against a channels-last
        // activation): the strided operand gathered in chunks, then the vector loops.
        if (binary_row_gathered(op, o, pa, is[1], pb, is[2], n, al)) return;
      }
      for (int64_t i = 0; i < n; ++i) o[i * is[0]] = binary_value<T>(op, pa[i * is[1]], pb[i * is[2]], al);
    });
  });
}

void ReferenceBackend::axpby(double a, const Tensor& x, double b, const Tensor& y, const Tensor& out) {
  dispatch_float(out.dtype(), "axpby", [&](auto tag) {
    using T = decltype(tag);
    const T* px = ptr<T>(x);
    const T* py = ptr<T>(y);
    T* po = ptr<T>(out);
    const T ta = static_cast<T>(a), tb = static_cast<T>(b);
    parallel_for(out.numel(), 32768, [&](int64_t s, int64_t e) {
      for (int64_t i = s; i < e; ++i) po[i] = ta * px[i] + tb * py[i];
    });
  });
}

// ---------------------------------------------------------------- reductions

void ReferenceBackend::reduce(ReduceOp op, const Tensor& x, const std::vector<int>& axes, const Tensor& out) {
  // Fast path: a contiguous input reduced over its leading axes (a bias
  // gradient: sum over the batch) accumulates whole rows, with no transpose.
  if (x.is_contiguous() && !axes.empty() && (op == ReduceOp::sum || op == ReduceOp::mean) &&
      axes.back() == static_cast<int>(axes.size()) - 1 && static_cast<int>(axes.size()) < x.ndim()) {
    dispatch_float(x.dtype(), reduce_name(op), [&](auto tag) {
      using T = decltype(tag);
      int64_t R = 1;
      for (int a : axes) R *= x.shape()[a];
      const int64_t M = x.numel() / R;
      const T* in = ptr<T>(x);
      T* o = ptr<T>(out);
      const double scale = op == ReduceOp::mean ? 1.0 / static_cast<double>(R) : 1.0;
      parallel_for(M, 1024, [&](int64_t b, int64_t e) {
        std::vector<double> acc(static_cast<size_t>(e - b), 0.0);
        for (int64_t r = 0; r < R; ++r) {
          const T* row = in + r * M;
          for (int64_t j = b; j < e; ++j) acc[j - b] += row[j];
        }
        for (int64_t j = b; j < e; ++j) o[j] = static_cast<T>(acc[j - b] * scale);
      });
    });
    return;
  }
  dispatch_float(x.dtype(), reduce_name(op), [&](auto tag) {
    using T = decltype(tag);
    // Move the reduced axes last, make contiguous: every output is one row of length R.
    std::vector<int64_t> perm;
    int nd = x.ndim();
    for (int i = 0; i < nd; ++i)
      if (std::find(axes.begin(), axes.end(), i) == axes.end()) perm.push_back(i);
    int64_t R = 1;
    for (int ax : axes) {
      perm.push_back(ax);
      R *= x.shape()[ax];
    }
    Shape ps(nd);
    Strides pst(nd);
    for (int i = 0; i < nd; ++i) ps[i] = x.shape()[perm[i]], pst[i] = x.strides()[perm[i]];
    Tensor xp = make_view(x, ps, pst, x.offset());
    Tensor xc = Tensor::empty(ps, x.dtype());
    copy(xp, xc);
    const T* in = ptr<T>(xc);
    const int64_t M = out.numel();
    if (op == ReduceOp::argmax) {
      HPDL_CHECK(out.dtype() == DType::i64, "argmax: output must be int64");
      int64_t* o = ptr<int64_t>(out);
      parallel_for(M, 256, [&](int64_t b, int64_t e) {
        for (int64_t m = b; m < e; ++m) {
          const T* row = in + m * R;
          int64_t best = 0;
          for (int64_t r = 1; r < R; ++r)
            if (row[r] > row[best]) best = r;
          o[m] = best;
        }
      });
      return;
    }
    T* o = ptr<T>(out);
    parallel_for(M, 64, [&](int64_t b, int64_t e) {
      for (int64_t m = b; m < e; ++m) {
        const T* row = in + m * R;
        double acc;
        switch (op) {
          case ReduceOp::sum:
          case ReduceOp::mean:
            acc = 0;
            for (int64_t r = 0; r < R; ++r) acc += row[r];
            if (op == ReduceOp::mean) acc /= static_cast<double>(R);
            break;
          case ReduceOp::sum_square:
            acc = 0;
            for (int64_t r = 0; r < R; ++r) acc += static_cast<double>(row[r]) * row[r];
            break;
          case ReduceOp::max:
            acc = -std::numeric_limits<double>::infinity();
            for (int64_t r = 0; r < R; ++r) acc = std::max<double>(acc, row[r]);
            break;
          case ReduceOp::min:
            acc = std::numeric_limits<double>::infinity();
            for (int64_t r = 0; r < R; ++r) acc = std::min<double>(acc, row[r]);
            break;
          default: acc = 0;
        }
        o[m] = static_cast<T>(acc);
      }
    });
  });
}

// ---------------------------------------------------------------- matmul

void ReferenceBackend::matmul(const Tensor& a, const Tensor& b, const Tensor& c, bool trans_a, bool trans_b,
                              double alpha, double beta) {
  dispatch_float(c.dtype(), "matmul", [&](auto tag) {
    using T = decltype(tag);
    const int nd = c.ndim();
    const int64_t M = c.shape()[nd - 2], N = c.shape()[nd - 1];
    const int64_t K = trans_a ? a.shape()[a.ndim() - 2] : a.shape()[a.ndim() - 1];
    const int64_t B = nd == 3 ? c.shape()[0] : 1;
    const int64_t sa = (a.ndim() == 3 && a.shape()[0] > 1) ? M * K : 0;
    const int64_t sb = (b.ndim() == 3 && b.shape()[0] > 1) ? K * N : 0;
    const T* pa = ptr<T>(a);
    const T* pb = ptr<T>(b);
    T* pc = ptr<T>(c);
    parallel_for(B * M, 4, [&](int64_t lo, int64_t hi) {
      std::vector<double> acc(N);
      for (int64_t bm = lo; bm < hi; ++bm) {
        int64_t bi = bm / M, i = bm % M;
        const T* A = pa + bi * sa;
        const T* Bm = pb + bi * sb;
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int64_t k = 0; k < K; ++k) {
          double aik = trans_a ? A[k * M + i] : A[i * K + k];
          if (trans_b) {
            for (int64_t j = 0; j < N; ++j) acc[j] += aik * Bm[j * K + k];
          } else {
            const T* brow = Bm + k * N;
            for (int64_t j = 0; j < N; ++j) acc[j] += aik * brow[j];
          }
        }
        T* crow = pc + bi * M * N + i * N;
        for (int64_t j = 0; j < N; ++j)
          crow[j] = static_cast<T>(alpha * acc[j] + (beta == 0 ? 0.0 : beta * crow[j]));
      }
    });
  });
}

// ---------------------------------------------------------------- convolution
// y[n,k,p,q] = b[k] + sum_{c,r,s} x[n, g*Cg + c, p*sh - ph + r*dh, q*sw - pw + s*dw] * w[k, c, r, s]
// with g = k / Kg the group of output channel k.

void ReferenceBackend::conv2d_forward(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& y,
                                      const Conv2dParams& p) {
  const Shape bs = bias.defined() ? bias.shape() : Shape();
  check_conv2d_kernel_shapes(x.shape(), w.shape(), y.shape(), bias.defined() ? &bs : nullptr, p, "conv2d_forward");
  dispatch_float(x.dtype(), "conv2d", [&](auto tag) {
    using T = decltype(tag);
    Tensor xc = x.contiguous(), wc = w.contiguous();
    const int64_t N = x.shape()[0], C = x.shape()[1], H = x.shape()[2], W = x.shape()[3];
    const int64_t K = w.shape()[0], Cg = w.shape()[1], R = w.shape()[2], S = w.shape()[3];
    const int64_t P = y.shape()[2], Q = y.shape()[3], Kg = K / p.groups;
    const T* X = ptr<T>(xc);
    const T* Wt = ptr<T>(wc);
    const T* Bp = bias.defined() ? ptr<T>(bias.contiguous()) : nullptr;
    T* Y = ptr<T>(y);
    parallel_for(N * K, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t nk = lo; nk < hi; ++nk) {
        int64_t n = nk / K, k = nk % K, g = k / Kg;
        for (int64_t pp = 0; pp < P; ++pp)
          for (int64_t q = 0; q < Q; ++q) {
            double acc = Bp ? Bp[k] : 0.0;
            for (int64_t c = 0; c < Cg; ++c)
              for (int64_t r = 0; r < R; ++r) {
                int64_t h = pp * p.stride_h - p.pad_h + r * p.dilation_h;
                if (h < 0 || h >= H) continue;
                for (int64_t s = 0; s < S; ++s) {
                  int64_t ww = q * p.stride_w - p.pad_w + s * p.dilation_w;
                  if (ww < 0 || ww >= W) continue;
                  acc += static_cast<double>(X[((n * C + g * Cg + c) * H + h) * W + ww]) *
                         Wt[((k * Cg + c) * R + r) * S + s];
                }
              }
            Y[((n * K + k) * P + pp) * Q + q] = static_cast<T>(acc);
          }
      }
    });
  });
}

void ReferenceBackend::conv2d_backward_data(const Tensor& dy, const Tensor& w, const Tensor& dx,
                                            const Conv2dParams& p) {
  check_conv2d_kernel_shapes(dx.shape(), w.shape(), dy.shape(), nullptr, p, "conv2d_backward_data");
  dispatch_float(dy.dtype(), "conv2d_backward_data", [&](auto tag) {
    using T = decltype(tag);
    Tensor dyc = dy.contiguous(), wc = w.contiguous();
    const int64_t N = dx.shape()[0], C = dx.shape()[1], H = dx.shape()[2], W = dx.shape()[3];
    const int64_t K = w.shape()[0], Cg = w.shape()[1], R = w.shape()[2], S = w.shape()[3];
    const int64_t P = dy.shape()[2], Q = dy.shape()[3], Kg = K / p.groups;
    const T* DY = ptr<T>(dyc);
    const T* Wt = ptr<T>(wc);
    T* DX = ptr<T>(dx);
    // Each (n, channel) plane of dx is written by one thread: gather form.
    parallel_for(N * C, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t nc = lo; nc < hi; ++nc) {
        int64_t n = nc / C, ch = nc % C, g = ch / Cg, c = ch % Cg;
        T* plane = DX + nc * H * W;
        std::vector<double> acc(H * W, 0.0);
        for (int64_t kk = 0; kk < Kg; ++kk) {
          int64_t k = g * Kg + kk;
          for (int64_t pp = 0; pp < P; ++pp)
            for (int64_t q = 0; q < Q; ++q) {
              double d = DY[((n * K + k) * P + pp) * Q + q];
              for (int64_t r = 0; r < R; ++r) {
                int64_t h = pp * p.stride_h - p.pad_h + r * p.dilation_h;
                if (h < 0 || h >= H) continue;
                for (int64_t s = 0; s < S; ++s) {
                  int64_t ww = q * p.stride_w - p.pad_w + s * p.dilation_w;
                  if (ww < 0 || ww >= W) continue;
                  acc[h * W + ww] += d * Wt[((k * Cg + c) * R + r) * S + s];
                }
              }
            }
        }
        for (int64_t i = 0; i < H * W; ++i) plane[i] = static_cast<T>(acc[i]);
      }
    });
  });
}

void ReferenceBackend::conv2d_backward_weights(const Tensor& x, const Tensor& dy, const Tensor& dw,
                                               const Tensor& db, const Conv2dParams& p) {
  const Shape bs = db.defined() ? db.shape() : Shape();
  check_conv2d_kernel_shapes(x.shape(), dw.shape(), dy.shape(), db.defined() ? &bs : nullptr, p,
                             "conv2d_backward_weights");
  dispatch_float(x.dtype(), "conv2d_backward_weights", [&](auto tag) {
    using T = decltype(tag);
    Tensor xc = x.contiguous(), dyc = dy.contiguous();
    const int64_t N = x.shape()[0], C = x.shape()[1], H = x.shape()[2], W = x.shape()[3];
    const int64_t K = dw.shape()[0], Cg = dw.shape()[1], R = dw.shape()[2], S = dw.shape()[3];
    const int64_t P = dy.shape()[2], Q = dy.shape()[3], Kg = K / p.groups;
    const T* X = ptr<T>(xc);
    const T* DY = ptr<T>(dyc);
    T* DW = ptr<T>(dw);
    parallel_for(K, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t k = lo; k < hi; ++k) {
        int64_t g = k / Kg;
        for (int64_t c = 0; c < Cg; ++c)
          for (int64_t r = 0; r < R; ++r)
            for (int64_t s = 0; s < S; ++s) {
              double acc = 0;
              for (int64_t n = 0; n < N; ++n)
                for (int64_t pp = 0; pp < P; ++pp) {
                  int64_t h = pp * p.stride_h - p.pad_h + r * p.dilation_h;
                  if (h < 0 || h >= H) continue;
                  for (int64_t q = 0; q < Q; ++q) {
                    int64_t ww = q * p.stride_w - p.pad_w + s * p.dilation_w;
                    if (ww < 0 || ww >= W) continue;
                    acc += static_cast<double>(X[((n * C + g * Cg + c) * H + h) * W + ww]) *
                           DY[((n * K + k) * P + pp) * Q + q];
                  }
                }
              DW[((k * Cg + c) * R + r) * S + s] = static_cast<T>(acc);
            }
        if (db.defined()) {
          double acc = 0;
          for (int64_t n = 0; n < N; ++n)
            for (int64_t i = 0; i < P * Q; ++i) acc += DY[(n * K + k) * P * Q + i];
          ptr<T>(db)[k] = static_cast<T>(acc);
        }
      }
    });
  });
}

// ---------------------------------------------------------------- pooling

void ReferenceBackend::pool2d_forward(PoolKind kind, const Tensor& x, const Tensor& y, const Pool2dParams& p) {
  dispatch_float(x.dtype(), "pool2d", [&](auto tag) {
    using T = decltype(tag);
    Tensor xc = x.contiguous();
    const int64_t NC = x.shape()[0] * x.shape()[1], H = x.shape()[2], W = x.shape()[3];
    const int64_t P = y.shape()[2], Q = y.shape()[3];
    const T* X = ptr<T>(xc);
    T* Y = ptr<T>(y);
    parallel_for(NC, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t nc = lo; nc < hi; ++nc)
        for (int64_t pp = 0; pp < P; ++pp)
          for (int64_t q = 0; q < Q; ++q) {
            int64_t h0 = pp * p.stride_h - p.pad_h, w0 = q * p.stride_w - p.pad_w;
            double acc = kind == PoolKind::max ? -std::numeric_limits<double>::infinity() : 0.0;
            int64_t count = 0;
            for (int64_t h = h0; h < h0 + p.kernel_h; ++h)
              for (int64_t w = w0; w < w0 + p.kernel_w; ++w) {
                if (h < 0 || h >= H || w < 0 || w >= W) continue;
                double v = X[(nc * H + h) * W + w];
                acc = kind == PoolKind::max ? std::max(acc, v) : acc + v;
                ++count;
              }
            if (kind == PoolKind::avg) acc /= static_cast<double>(p.count_include_pad ? p.kernel_h * p.kernel_w : count);
            Y[(nc * P + pp) * Q + q] = static_cast<T>(acc);
          }
    });
  });
}

void ReferenceBackend::pool2d_backward(PoolKind kind, const Tensor& x, const Tensor& y, const Tensor& dy,
                                       const Tensor& dx, const Pool2dParams& p) {
  dispatch_float(x.dtype(), "pool2d_backward", [&](auto tag) {
    using T = decltype(tag);
    Tensor xc = x.contiguous(), dyc = dy.contiguous();
    const int64_t NC = x.shape()[0] * x.shape()[1], H = x.shape()[2], W = x.shape()[3];
    const int64_t P = dy.shape()[2], Q = dy.shape()[3];
    const T* X = ptr<T>(xc);
    const T* DY = ptr<T>(dyc);
    T* DX = ptr<T>(dx);
    parallel_for(NC, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t nc = lo; nc < hi; ++nc) {
        T* plane = DX + nc * H * W;
        std::fill(plane, plane + H * W, T(0));
        for (int64_t pp = 0; pp < P; ++pp)
          for (int64_t q = 0; q < Q; ++q) {
            int64_t h0 = pp * p.stride_h - p.pad_h, w0 = q * p.stride_w - p.pad_w;
            T d = DY[(nc * P + pp) * Q + q];
            if (kind == PoolKind::max) {
              int64_t best = -1;
              T bv = -std::numeric_limits<T>::infinity();
              for (int64_t h = h0; h < h0 + p.kernel_h; ++h)
                for (int64_t w = w0; w < w0 + p.kernel_w; ++w) {
                  if (h < 0 || h >= H || w < 0 || w >= W) continue;
                  T v = X[(nc * H + h) * W + w];
                  if (best < 0 || v > bv) bv = v, best = h * W + w;
                }
              if (best >= 0) plane[best] += d;
            } else {
              int64_t count = 0;
              for (int64_t h = h0; h < h0 + p.kernel_h; ++h)
                for (int64_t w = w0; w < w0 + p.kernel_w; ++w)
                  if (h >= 0 && h < H && w >= 0 && w < W) ++count;
              T scale = T(1) / T(p.count_include_pad ? p.kernel_h * p.kernel_w : count);
              for (int64_t h = h0; h < h0 + p.kernel_h; ++h)
                for (int64_t w = w0; w < w0 + p.kernel_w; ++w)
                  if (h >= 0 && h < H && w >= 0 && w < W) plane[h * W + w] += d * scale;
            }
          }
      }
    });
  });
}

// ---------------------------------------------------------------- normalization
// Batch norm, per channel c over the M = N*H*W values: mean, biased var,
// y = gamma * (x - mean) * invstd + beta. Backward (xhat = (x-mean)*invstd):
// dbeta = sum dy, dgamma = sum dy*xhat, dx = gamma*invstd/M * (M*dy - dbeta - xhat*dgamma).

void ReferenceBackend::batchnorm_forward_train(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                               const Tensor& y, const Tensor& save_mean,
                                               const Tensor& save_invstd, double eps) {
  dispatch_float(x.dtype(), "batchnorm", [&](auto tag) {
    using T = decltype(tag);
    Tensor xc = x.contiguous();
    AxisSplit sp(x.shape(), 1);
    const int64_t M = sp.outer * sp.inner;
    const T* X = ptr<T>(xc);
    T* Y = ptr<T>(y);
    const T* G = ptr<T>(gamma);
    const T* Bt = ptr<T>(beta);
    parallel_for(sp.n, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t c = lo; c < hi; ++c) {
        double sum = 0, sq = 0;
        for (int64_t o = 0; o < sp.outer; ++o)
          for (int64_t i = 0; i < sp.inner; ++i) sum += X[(o * sp.n + c) * sp.inner + i];
        double mean = sum / M;
        for (int64_t o = 0; o < sp.outer; ++o)
          for (int64_t i = 0; i < sp.inner; ++i) {
            double d = X[(o * sp.n + c) * sp.inner + i] - mean;
            sq += d * d;
          }
        double invstd = 1.0 / std::sqrt(sq / M + eps);
        ptr<T>(save_mean)[c] = static_cast<T>(mean);
        ptr<T>(save_invstd)[c] = static_cast<T>(invstd);
        for (int64_t o = 0; o < sp.outer; ++o)
          for (int64_t i = 0; i < sp.inner; ++i) {
            int64_t idx = (o * sp.n + c) * sp.inner + i;
            Y[idx] = static_cast<T>(G[c] * (X[idx] - mean) * invstd + Bt[c]);
          }
      }
    });
  });
}

void ReferenceBackend::batchnorm_forward_infer(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                               const Tensor& mean, const Tensor& var, const Tensor& y,
                                               double eps) {
  dispatch_float(x.dtype(), "batchnorm", [&](auto tag) {
    using T = decltype(tag);
    Tensor xc = x.contiguous();
    AxisSplit sp(x.shape(), 1);
    const T* X = ptr<T>(xc);
    T* Y = ptr<T>(y);
    parallel_for(sp.outer * sp.n, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t oc = lo; oc < hi; ++oc) {
        int64_t c = oc % sp.n;
        double invstd = 1.0 / std::sqrt(static_cast<double>(ptr<T>(var)[c]) + eps);
        double scale = ptr<T>(gamma)[c] * invstd;
        double shift = ptr<T>(beta)[c] - ptr<T>(mean)[c] * scale;
        for (int64_t i = 0; i < sp.inner; ++i) Y[oc * sp.inner + i] = static_cast<T>(X[oc * sp.inner + i] * scale + shift);
      }
    });
  });
}

void ReferenceBackend::batchnorm_backward(const Tensor& x, const Tensor& dy, const Tensor& gamma,
                                          const Tensor& save_mean, const Tensor& save_invstd, const Tensor& dx,
                                          const Tensor& dgamma, const Tensor& dbeta) {
  dispatch_float(x.dtype(), "batchnorm_backward", [&](auto tag) {
    using T = decltype(tag);
    Tensor xc = x.contiguous(), dyc = dy.contiguous();
    AxisSplit sp(x.shape(), 1);
    const double M = static_cast<double>(sp.outer * sp.inner);
    const T* X = ptr<T>(xc);
    const T* DY = ptr<T>(dyc);
    T* DX = ptr<T>(dx);
    parallel_for(sp.n, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t c = lo; c < hi; ++c) {
        double mean = ptr<T>(save_mean)[c], invstd = ptr<T>(save_invstd)[c];
        double sdy = 0, sdyx = 0;
        for (int64_t o = 0; o < sp.outer; ++o)
          for (int64_t i = 0; i < sp.inner; ++i) {
            int64_t idx = (o * sp.n + c) * sp.inner + i;
            sdy += DY[idx];
            sdyx += DY[idx] * (X[idx] - mean) * invstd;
          }
        if (dgamma.defined()) ptr<T>(dgamma)[c] = static_cast<T>(sdyx);
        if (dbeta.defined()) ptr<T>(dbeta)[c] = static_cast<T>(sdy);
        double k = ptr<T>(gamma)[c] * invstd / M;
        for (int64_t o = 0; o < sp.outer; ++o)
          for (int64_t i = 0; i < sp.inner; ++i) {
            int64_t idx = (o * sp.n + c) * sp.inner + i;
            double xhat = (X[idx] - mean) * invstd;
            DX[idx] = static_cast<T>(k * (M * DY[idx] - sdy - xhat * sdyx));
          }
      }
    });
  });
}

// Layer norm over the last axis D of each of M rows; same algebra as batch norm
// with the roles of rows and channels exchanged.
void ReferenceBackend::layernorm_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& y,
                                         const Tensor& save_mean, const Tensor& save_invstd, double eps) {
  dispatch_float(x.dtype(), "layernorm", [&](auto tag) {
    using T = decltype(tag);
    Tensor xc = x.contiguous();
    const int64_t D = x.shape().back(), M = x.numel() / D;
    const T* X = ptr<T>(xc);
    T* Y = ptr<T>(y);
    parallel_for(M, 16, [&](int64_t lo, int64_t hi) {
      for (int64_t m = lo; m < hi; ++m) {
        const T* row = X + m * D;
        double mean = 0, var = 0;
        for (int64_t d = 0; d < D; ++d) mean += row[d];
        mean /= D;
        for (int64_t d = 0; d < D; ++d) var += (row[d] - mean) * (row[d] - mean);
        double invstd = 1.0 / std::sqrt(var / D + eps);
        ptr<T>(save_mean)[m] = static_cast<T>(mean);
        ptr<T>(save_invstd)[m] = static_cast<T>(invstd);
        for (int64_t d = 0; d < D; ++d)
          Y[m * D + d] = static_cast<T>(ptr<T>(gamma)[d] * (row[d] - mean) * invstd + ptr<T>(beta)[d]);
      }
    });
  });
}

void ReferenceBackend::layernorm_backward(const Tensor& x, const Tensor& dy, const Tensor& gamma,
                                          const Tensor& save_mean, const Tensor& save_invstd, const Tensor& dx,
                                          const Tensor& dgamma, const Tensor& dbeta) {
  dispatch_float(x.dtype(), "layernorm_backward", [&](auto tag) {
    using T = decltype(tag);
    Tensor xc = x.contiguous(), dyc = dy.contiguous();
    const int64_t D = x.shape().back(), M = x.numel() / D;
    const T* X = ptr<T>(xc);
    const T* DY = ptr<T>(dyc);
    const T* G = ptr<T>(gamma);
    T* DX = ptr<T>(dx);
    // dxhat = dy * gamma; dx = invstd/D * (D*dxhat - sum(dxhat) - xhat*sum(dxhat*xhat))
    parallel_for(M, 16, [&](int64_t lo, int64_t hi) {
      for (int64_t m = lo; m < hi; ++m) {
        double mean = ptr<T>(save_mean)[m], invstd = ptr<T>(save_invstd)[m];
        double s1 = 0, s2 = 0;
        for (int64_t d = 0; d < D; ++d) {
          double g = DY[m * D + d] * G[d], xhat = (X[m * D + d] - mean) * invstd;
          s1 += g;
          s2 += g * xhat;
        }
        for (int64_t d = 0; d < D; ++d) {
          double g = DY[m * D + d] * G[d], xhat = (X[m * D + d] - mean) * invstd;
          DX[m * D + d] = static_cast<T>(invstd / D * (D * g - s1 - xhat * s2));
        }
      }
    });
    if (dgamma.defined() || dbeta.defined()) {
      for (int64_t d = 0; d < D; ++d) {
        double sg = 0, sb = 0;
        for (int64_t m = 0; m < M; ++m) {
          double xhat = (X[m * D + d] - ptr<T>(save_mean)[m]) * ptr<T>(save_invstd)[m];
          sg += DY[m * D + d] * xhat;
          sb += DY[m * D + d];
        }
        if (dgamma.defined()) ptr<T>(dgamma)[d] = static_cast<T>(sg);
        if (dbeta.defined()) ptr<T>(dbeta)[d] = static_cast<T>(sb);
      }
    }
  });
}

// ---------------------------------------------------------------- softmax
// softmax: y = exp(x - max) / sum; backward dx = y * (dy - sum(dy*y)).
// log_softmax: y = x - max - log(sum exp); backward dx = dy - exp(y) * sum(dy).

void ReferenceBackend::softmax_forward(const Tensor& x, const Tensor& y, int axis, bool log) {
  dispatch_float(x.dtype(), log ? "log_softmax" : "softmax", [&](auto tag) {
    using T = decltype(tag);
    Tensor xc = x.contiguous();
    AxisSplit sp(x.shape(), axis);
    const T* X = ptr<T>(xc);
    T* Y = ptr<T>(y);
    parallel_for(sp.outer * sp.inner, 16, [&](int64_t lo, int64_t hi) {
      for (int64_t oi = lo; oi < hi; ++oi) {
        int64_t o = oi / sp.inner, i = oi % sp.inner;
        auto at = [&](int64_t j) { return (o * sp.n + j) * sp.inner + i; };
        double mx = -std::numeric_limits<double>::infinity();
        for (int64_t j = 0; j < sp.n; ++j) mx = std::max<double>(mx, X[at(j)]);
        double sum = 0;
        for (int64_t j = 0; j < sp.n; ++j) sum += std::exp(X[at(j)] - mx);
        double lse = std::log(sum);
        for (int64_t j = 0; j < sp.n; ++j)
          Y[at(j)] = static_cast<T>(log ? X[at(j)] - mx - lse : std::exp(X[at(j)] - mx) / sum);
      }
    });
  });
}

void ReferenceBackend::softmax_backward(const Tensor& y, const Tensor& dy, const Tensor& dx, int axis, bool log) {
  dispatch_float(y.dtype(), log ? "log_softmax_backward" : "softmax_backward", [&](auto tag) {
    using T = decltype(tag);
    Tensor yc = y.contiguous(), dyc = dy.contiguous();
    AxisSplit sp(y.shape(), axis);
    const T* Y = ptr<T>(yc);
    const T* DY = ptr<T>(dyc);
    T* DX = ptr<T>(dx);
    parallel_for(sp.outer * sp.inner, 16, [&](int64_t lo, int64_t hi) {
      for (int64_t oi = lo; oi < hi; ++oi) {
        int64_t o = oi / sp.inner, i = oi % sp.inner;
        auto at = [&](int64_t j) { return (o * sp.n + j) * sp.inner + i; };
        double s = 0;
        for (int64_t j = 0; j < sp.n; ++j) s += log ? DY[at(j)] : DY[at(j)] * Y[at(j)];
        for (int64_t j = 0; j < sp.n; ++j)
          DX[at(j)] = static_cast<T>(log ? DY[at(j)] - std::exp(static_cast<double>(Y[at(j)])) * s
                                         : Y[at(j)] * (DY[at(j)] - s));
      }
    });
  });
}

// ---------------------------------------------------------------- indexing

void ReferenceBackend::index_select(const Tensor& x, int axis, const Tensor& index, const Tensor& out) {
  dispatch_float(x.dtype(), "index_select", [&](auto tag) {
    using T = decltype(tag);
    Tensor xc = x.contiguous(), ic = index.contiguous();
    AxisSplit sx(x.shape(), axis), so(out.shape(), axis);
    const T* X = ptr<T>(xc);
    const int64_t* I = ptr<int64_t>(ic);
    T* O = ptr<T>(out);
    for (int64_t j = 0; j < so.n; ++j)
      HPDL_CHECK(I[j] >= 0 && I[j] < sx.n, "index_select: index {} out of range [0, {}) at position {}", I[j], sx.n, j);
    parallel_for(so.outer * so.n, 16, [&](int64_t lo, int64_t hi) {
      for (int64_t oj = lo; oj < hi; ++oj) {
        int64_t o = oj / so.n, j = oj % so.n;
        std::copy_n(X + (o * sx.n + I[j]) * sx.inner, sx.inner, O + oj * so.inner);
      }
    });
  });
}

void ReferenceBackend::index_add(const Tensor& out, int axis, const Tensor& index, const Tensor& src) {
  dispatch_float(out.dtype(), "index_add", [&](auto tag) {
    using T = decltype(tag);
    Tensor sc = src.contiguous(), ic = index.contiguous();
    AxisSplit so(out.shape(), axis), ss(src.shape(), axis);
    const T* S = ptr<T>(sc);
    const int64_t* I = ptr<int64_t>(ic);
    T* O = ptr<T>(out);
    // Serial over the indexed axis: repeated indices add up without races.
    parallel_for(so.outer, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t o = lo; o < hi; ++o)
        for (int64_t j = 0; j < ss.n; ++j) {
          T* dst = O + (o * so.n + I[j]) * so.inner;
          const T* s = S + (o * ss.n + j) * ss.inner;
          for (int64_t i = 0; i < so.inner; ++i) dst[i] += s[i];
        }
    });
  });
}

void ReferenceBackend::gather_rows(const Tensor& x, const Tensor& index, const Tensor& out) {
  dispatch_float(x.dtype(), "gather_rows", [&](auto tag) {
    using T = decltype(tag);
    Tensor xc = x.contiguous(), ic = index.contiguous();
    const int64_t M = x.shape()[0], C = x.shape()[1];
    const T* X = ptr<T>(xc);
    const int64_t* I = ptr<int64_t>(ic);
    T* O = ptr<T>(out);
    for (int64_t m = 0; m < M; ++m) {
      HPDL_CHECK(I[m] < C, "gather_rows: class index {} >= number of classes {} in row {}", I[m], C, m);
      O[m] = I[m] < 0 ? T(0) : X[m * C + I[m]];
    }
  });
}

void ReferenceBackend::scatter_rows(const Tensor& src, const Tensor& index, const Tensor& out) {
  dispatch_float(out.dtype(), "scatter_rows", [&](auto tag) {
    using T = decltype(tag);
    Tensor sc = src.contiguous(), ic = index.contiguous();
    const int64_t M = out.shape()[0], C = out.shape()[1];
    const T* S = ptr<T>(sc);
    const int64_t* I = ptr<int64_t>(ic);
    T* O = ptr<T>(out);
    std::fill(O, O + M * C, T(0));
    for (int64_t m = 0; m < M; ++m)
      if (I[m] >= 0) O[m * C + I[m]] = S[m];
  });
}

// ---------------------------------------------------------------- optimizers
// SGD (PyTorch's convention): g' = g + wd*p; buf = momentum*buf + (1-dampening)*g';
// step = nesterov ? g' + momentum*buf : buf; p -= lr*scale*step.
// AdamW (Loshchilov & Hutter 2019): p -= lr*wd*p; m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2;
// p -= lr*scale * (m/(1-b1^t)) / (sqrt(v/(1-b2^t)) + eps).

void ReferenceBackend::optimizer_update(const OptimizerUpdate& u, const Tensor& param, const Tensor& grad,
                                        const Tensor& buf1, const Tensor& buf2) {
  dispatch_float(param.dtype(), "optimizer_update", [&](auto tag) {
    using T = decltype(tag);
    T* p = ptr<T>(param);
    const T* g = ptr<T>(grad);
    const int64_t n = param.numel();
    const double lr = u.lr * u.scale;
    if (u.kind == OptimizerUpdate::Kind::sgd) {
      T* m = buf1.defined() ? ptr<T>(buf1) : nullptr;
      const bool first = u.step <= 1;
      parallel_for(n, 32768, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) {
          double gi = g[i];
          if (u.decoupled_decay) {
            p[i] = static_cast<T>(p[i] - u.lr * u.weight_decay * p[i]);
          } else {
            gi += u.weight_decay * p[i];
          }
          double step = gi;
          if (m && u.momentum != 0) {
            double buf = first ? gi : u.momentum * m[i] + (1 - u.dampening) * gi;
            m[i] = static_cast<T>(buf);
            step = u.nesterov ? gi + u.momentum * buf : buf;
          }
          p[i] = static_cast<T>(p[i] - lr * step);
        }
      });
    } else {
      T* m = ptr<T>(buf1);
      T* v = ptr<T>(buf2);
      const double bc1 = 1 - std::pow(u.beta1, static_cast<double>(u.step));
      const double bc2 = 1 - std::pow(u.beta2, static_cast<double>(u.step));
      parallel_for(n, 32768, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) {
          double gi = g[i];
          double pi = p[i] * (1 - u.lr * u.weight_decay);
          double mi = u.beta1 * m[i] + (1 - u.beta1) * gi;
          double vi = u.beta2 * v[i] + (1 - u.beta2) * gi * gi;
          m[i] = static_cast<T>(mi);
          v[i] = static_cast<T>(vi);
          p[i] = static_cast<T>(pi - lr * (mi / bc1) / (std::sqrt(vi / bc2) + u.eps));
        }
      });
    }
  });
}

// ---------------------------------------------------------------- helpers

Strides broadcast_strides(const Shape& from, const Strides& s, const Shape& to) {
  Strides out(to.size(), 0);
  size_t lead = to.size() - from.size();
  for (size_t i = 0; i < from.size(); ++i) out[lead + i] = from[i] == 1 ? 0 : s[i];
  return out;
}

}  // namespace hpdl::cpu
