// LSTM and GRU stacks on the CPU (the rnn_* methods of Backend; equations,
// gate order and weight layout at RnnParams in backend/backend.h).
//   ReferenceBackend: plain loops, one (batch row, hidden unit) at a time, dot
//     products in double; the oracle, float32 and float64.
//   OneDnnBackend: the same recurrences as GEMMs through dnnl_sgemm (row-major):
//     one GEMM projects the inputs of all T timesteps, one per step does the
//     recurrent part; the gate nonlinearities are fused loops over [N, G*H].
//     float32 (under CpuComputeScope(bf16) the GEMMs read bfloat16 operands:
//     bf16_gemm); float64 goes to the reference.
// Both share the reserve layout below, so forward of one and backward of the
// other would agree; tests compare them op by op.
#include <dnnl.h>

#include <algorithm>
#include <cstdint>
#include <cmath>
#include <map>
#include <memory>
#include <mutex>
#include <oneapi/dnnl/dnnl.hpp>
#include <tuple>
#include <vector>

#include "hpdl/backend/compute_scope.h"
#include "hpdl/backend/cpu/fast_math.h"
#include "hpdl/backend/cpu/onednn.h"
#include "hpdl/backend/cpu/reference.h"

namespace hpdl::cpu {
namespace {

// The reserve, in elements of the data type, layer after layer:
//   Y_l   [T, N, D*H]   the layer's output (the next layer's input)
//   then per direction d:
//     act [T, N, 4H]    LSTM: i, f, g, o after their nonlinearity;
//                       GRU: r, z, n after theirs, then hn = W_hn h + b_hn (the n gate's recurrent part)
//     c   [T, N, H]     LSTM only: the cell state after step t
//     dgx [T, N, G*H]   written by backward_data: d loss / d (input-side pre-activations)
//     dgh [T, N, G*H]   GRU only: d loss / d (recurrent-side pre-activations); for LSTM it equals dgx
struct Layout {
  int64_t T, N, H, D, G;
  bool lstm;
  explicit Layout(const RnnParams& p)
      : T(p.seq_len), N(p.batch), H(p.hidden_size), D(p.dirs()), G(p.gates()), lstm(p.mode == RnnMode::lstm) {}
  int64_t y_size() const { return T * N * D * H; }
  int64_t act_size() const { return T * N * 4 * H; }
  int64_t c_size() const { return lstm ? T * N * H : 0; }
  int64_t dg_size() const { return T * N * G * H; }
  int64_t dir_size() const { return act_size() + c_size() + dg_size() + (lstm ? 0 : dg_size()); }
  int64_t layer_size() const { return y_size() + D * dir_size(); }
  int64_t total(int64_t L) const { return L * layer_size(); }

  template <typename T_>
  T_* y(T_* r, int64_t l) const { return r + l * layer_size(); }
  template <typename T_>
  T_* act(T_* r, int64_t l, int64_t d) const { return r + l * layer_size() + y_size() + d * dir_size(); }
  template <typename T_>
  T_* c(T_* r, int64_t l, int64_t d) const { return act(r, l, d) + act_size(); }
  template <typename T_>
  T_* dgx(T_* r, int64_t l, int64_t d) const { return c(r, l, d) + c_size(); }
  template <typename T_>
  T_* dgh(T_* r, int64_t l, int64_t d) const { return lstm ? dgx(r, l, d) : dgx(r, l, d) + dg_size(); }

  // Timestep processed at position s of direction d, and the one processed before t (-1: none).
  int64_t step(int64_t d, int64_t s) const { return d == 0 ? s : T - 1 - s; }
  int64_t prev(int64_t d, int64_t t) const { return d == 0 ? t - 1 : (t + 1 < T ? t + 1 : -1); }
};

double sigmoid(double v) { return 1.0 / (1.0 + std::exp(-v)); }

// The fast path's gate nonlinearities, with exp inline (fast_math.h): tanh(x) =
// 1 - 2 / (e^{2x} + 1) has absolute error ~1e-7 (the comparison against the
// reference allows 2e-5 of the largest value).
inline float exp_fast(float x) { return exp_clamped(x); }
inline float sigmoidf(float v) { return 1.0f / (1.0f + exp_fast(-v)); }
inline float tanhf_fast(float v) { return 1.0f - 2.0f / (exp_fast(2.0f * v) + 1.0f); }

template <typename T>
T* ptr(const Tensor& t) {
  return t.defined() ? static_cast<T*>(t.raw_data()) : nullptr;
}

// Pointers to one (layer, direction)'s weights.
template <typename T>
struct CellWeights {
  const T *w_ih, *w_hh, *b_ih, *b_hh;
  CellWeights(const std::vector<Tensor>& w, int64_t l, int64_t d, int64_t D) {
    const int64_t k = 4 * (l * D + d);
    w_ih = ptr<T>(w[k]), w_hh = ptr<T>(w[k + 1]), b_ih = ptr<T>(w[k + 2]), b_hh = ptr<T>(w[k + 3]);
  }
};

// The hidden (and cell) state the step at time t started from: the initial state or the
// output of the step processed before it. Row n of it is at the returned pointer + n * stride.
template <typename T>
const T* h_before(const Layout& L, const T* y_l, const T* hx0, int64_t d, int64_t t, int64_t& stride) {
  const int64_t tp = L.prev(d, t);
  if (tp < 0) {
    stride = L.H;
    return hx0;
  }
  stride = L.D * L.H;
  return y_l + tp * L.N * L.D * L.H + d * L.H;
}

template <typename T>
const T* c_before(const Layout& L, const T* c_ld, const T* cx0, int64_t d, int64_t t) {
  const int64_t tp = L.prev(d, t);
  return tp < 0 ? cx0 : c_ld + tp * L.N * L.H;
}

// ------------------------------------------------------------------ reference

// Reference loops fork threads only for enough multiply-adds: a parallel region per time step on a
// tiny sequence costs more than its work (gradchecks ran 100x slower on a loaded 2-core machine).
constexpr int64_t kRefParallelWork = 1 << 15;

template <typename T>
void ref_forward(const RnnParams& p, const Tensor& x, const Tensor& hx, const Tensor& cx,
                 const std::vector<Tensor>& w, const Tensor& y, const Tensor& hy, const Tensor& cy,
                 const Tensor& reserve) {
  const Layout Lo(p);
  const int64_t T_ = Lo.T, N = Lo.N, H = Lo.H, D = Lo.D, G = Lo.G;
  T* r = ptr<T>(reserve);
  for (int64_t l = 0; l < p.num_layers; ++l) {
    const int64_t in = p.layer_input(l);
    const T* xin = l == 0 ? ptr<T>(x) : Lo.y(r, l - 1);
    T* yl = Lo.y(r, l);
    for (int64_t d = 0; d < D; ++d) {
      CellWeights<T> cw(w, l, d, D);
      const T* h0 = ptr<T>(hx) + (l * D + d) * N * H;
      const T* c0 = Lo.lstm ? ptr<T>(cx) + (l * D + d) * N * H : nullptr;
      T* act = Lo.act(r, l, d);
      T* cs = Lo.c(r, l, d);
      for (int64_t s = 0; s < T_; ++s) {
        const int64_t t = Lo.step(d, s);
        int64_t hs;
        const T* hp = h_before(Lo, yl, h0, d, t, hs);
        const T* cp = Lo.lstm ? c_before(Lo, cs, c0, d, t) : nullptr;
#pragma omp parallel for collapse(2) schedule(static) if (N * H * (in + H) >= kRefParallelWork)
        for (int64_t n = 0; n < N; ++n) {
          for (int64_t j = 0; j < H; ++j) {
            const T* xv = xin + (t * N + n) * in;
            const T* hv = hp + n * hs;
            // pre-activations of the G gates of unit j: input side and recurrent side
            double ax[4], ah[4];
            for (int64_t k = 0; k < G; ++k) {
              const int64_t row = k * H + j;
              double sx = cw.b_ih[row], sh = cw.b_hh[row];
              for (int64_t i = 0; i < in; ++i) sx += static_cast<double>(cw.w_ih[row * in + i]) * xv[i];
              for (int64_t m = 0; m < H; ++m) sh += static_cast<double>(cw.w_hh[row * H + m]) * hv[m];
              ax[k] = sx, ah[k] = sh;
            }
            T* a = act + (t * N + n) * 4 * H;
            double h_new;
            if (Lo.lstm) {
              const double gi = sigmoid(ax[0] + ah[0]), gf = sigmoid(ax[1] + ah[1]);
              const double gg = std::tanh(ax[2] + ah[2]), go = sigmoid(ax[3] + ah[3]);
              const double c_new = gf * cp[n * H + j] + gi * gg;
              h_new = go * std::tanh(c_new);
              a[j] = static_cast<T>(gi), a[H + j] = static_cast<T>(gf), a[2 * H + j] = static_cast<T>(gg),
              a[3 * H + j] = static_cast<T>(go);
              cs[(t * N + n) * H + j] = static_cast<T>(c_new);
            } else {
              const double gr = sigmoid(ax[0] + ah[0]), gz = sigmoid(ax[1] + ah[1]);
              const double gn = std::tanh(ax[2] + gr * ah[2]);
              h_new = (1 - gz) * gn + gz * hv[j];
              a[j] = static_cast<T>(gr), a[H + j] = static_cast<T>(gz), a[2 * H + j] = static_cast<T>(gn),
              a[3 * H + j] = static_cast<T>(ah[2]);
            }
            yl[(t * N + n) * D * H + d * H + j] = static_cast<T>(h_new);
          }
        }
      }
    }
  }
  // Outputs: the last layer's Y, and the final states of every (layer, direction).
  std::copy_n(Lo.y(r, p.num_layers - 1), Lo.y_size(), ptr<T>(y));
  for (int64_t l = 0; l < p.num_layers; ++l)
    for (int64_t d = 0; d < D; ++d) {
      const int64_t t_last = Lo.step(d, T_ - 1);
      for (int64_t n = 0; n < N; ++n)
        for (int64_t j = 0; j < H; ++j) {
          ptr<T>(hy)[((l * D + d) * N + n) * H + j] = Lo.y(r, l)[(t_last * N + n) * D * H + d * H + j];
          if (Lo.lstm) ptr<T>(cy)[((l * D + d) * N + n) * H + j] = Lo.c(r, l, d)[(t_last * N + n) * H + j];
        }
    }
}

// Backward through one step of one cell, for one (n, j): from dh (total gradient reaching
// h_t) and dc (reaching c_t from step t+1) to the pre-activation gradients, and dc for c_{t-1}.
// Returns the part of d h_{t-1} that does not go through W_hh (GRU: dh * z; LSTM: 0).
template <typename T>
double cell_backward(bool lstm, const T* a, int64_t H, int64_t j, double c_t, double c_prev, double h_prev,
                     double dh, double& dc, double* dgx, double* dgh) {
  if (lstm) {
    const double gi = a[j], gf = a[H + j], gg = a[2 * H + j], go = a[3 * H + j];
    const double tc = std::tanh(c_t);
    const double dct = dc + dh * go * (1 - tc * tc);
    dgx[0] = dct * gg * gi * (1 - gi);        // d a_i
    dgx[1] = dct * c_prev * gf * (1 - gf);    // d a_f
    dgx[2] = dct * gi * (1 - gg * gg);        // d a_g
    dgx[3] = dh * tc * go * (1 - go);         // d a_o
    for (int k = 0; k < 4; ++k) dgh[k] = dgx[k];
    dc = dct * gf;
    return 0;
  }
  const double gr = a[j], gz = a[H + j], gn = a[2 * H + j], hn = a[3 * H + j];
  const double dan = dh * (1 - gz) * (1 - gn * gn);
  dgx[0] = dan * hn * gr * (1 - gr);     // d a_r (both sides)
  dgx[1] = dh * (h_prev - gn) * gz * (1 - gz);  // d a_z
  dgx[2] = dan;                          // d (W_in x + b_in)
  dgh[0] = dgx[0], dgh[1] = dgx[1];
  dgh[2] = dan * gr;                     // d (W_hn h + b_hn)
  return dh * gz;
}

template <typename T>
void ref_backward_data(const RnnParams& p, const Tensor& hx, const Tensor& cx, const std::vector<Tensor>& w,
                       const Tensor& dy, const Tensor& dhy, const Tensor& dcy, const Tensor& reserve,
                       const Tensor& dx, const Tensor& dhx, const Tensor& dcx) {
  const Layout Lo(p);
  const int64_t T_ = Lo.T, N = Lo.N, H = Lo.H, D = Lo.D, G = Lo.G;
  T* r = ptr<T>(reserve);
  // Gradient reaching the current layer's output Y_l [T, N, D*H], in double.
  std::vector<double> dY(ptr<T>(dy), ptr<T>(dy) + Lo.y_size());
  for (int64_t l = p.num_layers - 1; l >= 0; --l) {
    const int64_t in = p.layer_input(l);
    std::vector<double> dIn(T_ * N * in, 0.0);
    const T* yl = Lo.y(r, l);
    for (int64_t d = 0; d < D; ++d) {
      CellWeights<T> cw(w, l, d, D);
      const int64_t sd = (l * D + d) * N * H;
      const T* h0 = ptr<T>(hx) + sd;
      const T* c0 = Lo.lstm ? ptr<T>(cx) + sd : nullptr;
      const T* act = Lo.act(r, l, d);
      const T* cs = Lo.c(r, l, d);
      T* dgx = Lo.dgx(r, l, d);
      T* dgh = Lo.dgh(r, l, d);
      std::vector<double> dh(ptr<T>(dhy) + sd, ptr<T>(dhy) + sd + N * H), dc(N * H, 0.0);
      if (Lo.lstm) dc.assign(ptr<T>(dcy) + sd, ptr<T>(dcy) + sd + N * H);
      for (int64_t s = T_ - 1; s >= 0; --s) {
        const int64_t t = Lo.step(d, s);
        int64_t hs;
        const T* hp = h_before(Lo, yl, h0, d, t, hs);
        const T* cp = Lo.lstm ? c_before(Lo, cs, c0, d, t) : nullptr;
        std::vector<double> dh_prev(N * H, 0.0);
        for (int64_t n = 0; n < N; ++n) {
          for (int64_t j = 0; j < H; ++j) {
            const double dht = dh[n * H + j] + dY[(t * N + n) * D * H + d * H + j];
            double gx[4], gh[4];
            const double direct =
                cell_backward(Lo.lstm, act + (t * N + n) * 4 * H, H, j, Lo.lstm ? cs[(t * N + n) * H + j] : 0,
                              Lo.lstm ? cp[n * H + j] : 0, hp[n * hs + j], dht, dc[n * H + j], gx, gh);
            dh_prev[n * H + j] += direct;
            for (int64_t k = 0; k < G; ++k) {
              dgx[(t * N + n) * G * H + k * H + j] = static_cast<T>(gx[k]);
              dgh[(t * N + n) * G * H + k * H + j] = static_cast<T>(gh[k]);
            }
          }
        }
        // Through the weights: d h_{t-1} += dgh_t W_hh, d in_t += dgx_t W_ih (read back in T for
        // one rounding, as the fast path sees the stored values).
        for (int64_t n = 0; n < N; ++n) {
          const T* gxr = dgx + (t * N + n) * G * H;
          const T* ghr = dgh + (t * N + n) * G * H;
          for (int64_t row = 0; row < G * H; ++row) {
            for (int64_t m = 0; m < H; ++m) dh_prev[n * H + m] += static_cast<double>(ghr[row]) * cw.w_hh[row * H + m];
            for (int64_t i = 0; i < in; ++i)
              dIn[(t * N + n) * in + i] += static_cast<double>(gxr[row]) * cw.w_ih[row * in + i];
          }
        }
        dh = std::move(dh_prev);
      }
      std::copy(dh.begin(), dh.end(), ptr<T>(dhx) + sd);
      if (Lo.lstm) std::copy(dc.begin(), dc.end(), ptr<T>(dcx) + sd);
    }
    if (l == 0)
      std::copy(dIn.begin(), dIn.end(), ptr<T>(dx));
    else
      dY = std::move(dIn);
  }
}

template <typename T>
void ref_backward_weights(const RnnParams& p, const Tensor& x, const Tensor& hx, const Tensor& reserve,
                          const std::vector<Tensor>& dw) {
  const Layout Lo(p);
  const int64_t T_ = Lo.T, N = Lo.N, H = Lo.H, D = Lo.D, G = Lo.G;
  T* r = ptr<T>(reserve);
  for (int64_t l = 0; l < p.num_layers; ++l) {
    const int64_t in = p.layer_input(l);
    const T* xin = l == 0 ? ptr<T>(x) : Lo.y(r, l - 1);
    const T* yl = Lo.y(r, l);
    for (int64_t d = 0; d < D; ++d) {
      const int64_t k4 = 4 * (l * D + d);
      T *dw_ih = ptr<T>(dw[k4]), *dw_hh = ptr<T>(dw[k4 + 1]), *db_ih = ptr<T>(dw[k4 + 2]), *db_hh = ptr<T>(dw[k4 + 3]);
      const T* h0 = ptr<T>(hx) + (l * D + d) * N * H;
      const T* dgx = Lo.dgx(r, l, d);
      const T* dgh = Lo.dgh(r, l, d);
#pragma omp parallel for schedule(static) if (G * H * T_ * N * (in + H) >= kRefParallelWork)
      for (int64_t row = 0; row < G * H; ++row) {
        std::vector<double> si(in, 0.0), sh(H, 0.0);
        double bi = 0, bh = 0;
        for (int64_t t = 0; t < T_; ++t) {
          int64_t hs;
          const T* hp = h_before(Lo, yl, h0, d, t, hs);
          for (int64_t n = 0; n < N; ++n) {
            const double gx = dgx[(t * N + n) * G * H + row], gh = dgh[(t * N + n) * G * H + row];
            for (int64_t i = 0; i < in; ++i) si[i] += gx * xin[(t * N + n) * in + i];
            for (int64_t m = 0; m < H; ++m) sh[m] += gh * hp[n * hs + m];
            bi += gx, bh += gh;
          }
        }
        for (int64_t i = 0; i < in; ++i) dw_ih[row * in + i] = static_cast<T>(si[i]);
        for (int64_t m = 0; m < H; ++m) dw_hh[row * H + m] = static_cast<T>(sh[m]);
        db_ih[row] = static_cast<T>(bi), db_hh[row] = static_cast<T>(bh);
      }
    }
  }
}

void check_rnn_dtype(const char* backend, DType t) {
  HPDL_CHECK(t == DType::f32 || t == DType::f64, "{} backend: rnn supports float32 and float64, got {}", backend,
             dtype_name(t));
}

// ------------------------------------------------------------------ GEMM path (float32)

// The gate loops of one step go parallel (over batch rows) only from this many
// units: below it the loop takes microseconds and a parallel region per step costs
// more, badly so when the cores are shared.
constexpr int64_t kParallelUnits = 1 << 16;

// CPU bf16 (CpuComputeScope, design decision 71): C [M, N] = op(A) op(B) + beta * C with A and B
// rounded to bfloat16 (reordered from float32 in their own strides) and float32 accumulation, by a
// oneDNN matmul primitive (oneDNN 2.6 has no public bfloat16 GEMM), cached per shape and strides.
// B16, when given, is B already rounded to bfloat16 in B's own strides (bf16_rounded): the
// recurrent weight, rounded once per call instead of at every timestep.
void bf16_gemm(char ta, char tb, int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B,
               int64_t ldb, float beta, float* C, int64_t ldc, const uint16_t* B16) {
  using dnnl::memory;
  using dt = memory::data_type;
  static const bool ok = onednn_bf16_supported();
  HPDL_CHECK(ok, "rnn: bfloat16 compute on the CPU needs AVX512_BF16 or AMX; this CPU's oneDNN ISA is {}: train "
             "in fp32 (train.precision = \"fp32\")", onednn_isa());
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  static std::mutex mu;
  using Key = std::tuple<int64_t, int64_t, int64_t, char, char, int64_t, int64_t, int64_t, bool>;
  static std::map<Key, std::pair<dnnl::matmul::primitive_desc, dnnl::matmul>> cache;
  const memory::dims as = ta == 'N' ? memory::dims{lda, 1} : memory::dims{1, lda};
  const memory::dims bs = tb == 'N' ? memory::dims{ldb, 1} : memory::dims{1, ldb};
  const memory::desc a32({M, K}, dt::f32, as), b32({K, N}, dt::f32, bs), a16({M, K}, dt::bf16, as),
      b16({K, N}, dt::bf16, bs), c32({M, N}, dt::f32, memory::dims{ldc, 1});
  std::pair<dnnl::matmul::primitive_desc, dnnl::matmul> e;
  {
    std::lock_guard<std::mutex> lock(mu);
    const Key key{M, N, K, ta, tb, lda, ldb, ldc, beta != 0.0f};
    auto it = cache.find(key);
    if (it == cache.end()) {
      dnnl::primitive_attr attr;
      if (beta != 0.0f) {
        dnnl::post_ops po;
        po.append_sum(beta);
        attr.set_post_ops(po);
      }
      dnnl::matmul::primitive_desc pd;
      try {
        pd = dnnl::matmul::primitive_desc(dnnl::matmul::desc(a16, b16, c32), attr, engine);
      } catch (const dnnl::error& err) {
        HPDL_FAIL("rnn: oneDNN cannot create the bfloat16 matmul {}x{}x{} on this CPU (ISA {}): {}", M, N, K,
                  onednn_isa(), err.what());
      }
      it = cache.emplace(key, std::make_pair(pd, dnnl::matmul(pd))).first;
    }
    e = it->second;
  }
  dnnl::stream s(engine);
  std::unique_ptr<uint16_t[]> abuf(new uint16_t[a16.get_size() / 2]), bbuf(B16 ? nullptr : new uint16_t[b16.get_size() / 2]);
  memory am32(a32, engine, const_cast<float*>(A)), bm32(b32, engine, const_cast<float*>(B));
  memory am(a16, engine, abuf.get()), cm(c32, engine, C);
  memory bm(b16, engine, B16 ? const_cast<uint16_t*>(B16) : bbuf.get());
  dnnl::reorder(am32, am).execute(s, am32, am);
  if (!B16) dnnl::reorder(bm32, bm).execute(s, bm32, bm);
  e.second.execute(s, {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_DST, cm}});
  s.wait();
}

// The n floats at p rounded to bfloat16 as bf16_gemm's reorder rounds them, when this call computes
// in bfloat16 (CpuComputeScope); empty otherwise. A weight read at every timestep (W_hh) is rounded
// once per call: the same bits as rounding it per GEMM.
std::vector<uint16_t> bf16_rounded(const float* p, int64_t n) {
  if (cpu_compute_dtype() != DType::bf16 || n == 0) return {};
  using dnnl::memory;
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  std::vector<uint16_t> out(static_cast<size_t>(n));
  memory src({{n}, memory::data_type::f32, memory::format_tag::a}, engine, const_cast<float*>(p));
  memory dst({{n}, memory::data_type::bf16, memory::format_tag::a}, engine, out.data());
  dnnl::stream s(engine);
  dnnl::reorder(src, dst).execute(s, src, dst);
  s.wait();
  return out;
}

// Row-major C [M, N] = alpha * op(A) op(B) + beta * C through oneDNN's sgemm (bfloat16 operands
// under CpuComputeScope(bf16): bf16_gemm, with B16 the pre-rounded B when not empty).
void sgemm(char ta, char tb, int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B,
           int64_t ldb, float beta, float* C, int64_t ldc, const std::vector<uint16_t>& B16 = {}) {
  if (M == 0 || N == 0) return;
  if (K > 0 && cpu_compute_dtype() == DType::bf16)
    return bf16_gemm(ta, tb, M, N, K, A, lda, B, ldb, beta, C, ldc, B16.empty() ? nullptr : B16.data());
  dnnl_status_t st = dnnl_sgemm(ta, tb, M, N, K, 1.0f, A, lda, B, ldb, beta, C, ldc);
  HPDL_CHECK(st == dnnl_success, "rnn: dnnl_sgemm({}x{}x{}) failed with status {}", M, N, K, static_cast<int>(st));
}

void fast_forward(const RnnParams& p, const Tensor& x, const Tensor& hx, const Tensor& cx,
                  const std::vector<Tensor>& w, const Tensor& y, const Tensor& hy, const Tensor& cy,
                  const Tensor& reserve) {
  const Layout Lo(p);
  const int64_t T_ = Lo.T, N = Lo.N, H = Lo.H, D = Lo.D, G = Lo.G, GH = G * H;
  float* r = ptr<float>(reserve);
  std::vector<float> gx(T_ * N * GH), gh(N * GH);
  for (int64_t l = 0; l < p.num_layers; ++l) {
    const int64_t in = p.layer_input(l);
    const float* xin = l == 0 ? ptr<float>(x) : Lo.y(r, l - 1);
    float* yl = Lo.y(r, l);
    for (int64_t d = 0; d < D; ++d) {
      CellWeights<float> cw(w, l, d, D);
      const float* h0 = ptr<float>(hx) + (l * D + d) * N * H;
      const float* c0 = Lo.lstm ? ptr<float>(cx) + (l * D + d) * N * H : nullptr;
      float* act = Lo.act(r, l, d);
      float* cs = Lo.c(r, l, d);
      // Input projection of all timesteps: gx [T*N, G*H] = in [T*N, in] @ W_ih^T, plus b_ih.
      sgemm('N', 'T', T_ * N, GH, in, xin, in, cw.w_ih, in, 0.0f, gx.data(), GH);
      const std::vector<uint16_t> whh16 = bf16_rounded(cw.w_hh, GH * H);
      for (int64_t s = 0; s < T_; ++s) {
        const int64_t t = Lo.step(d, s);
        int64_t hs;
        const float* hp = h_before(Lo, yl, h0, d, t, hs);
        const float* cp = Lo.lstm ? c_before(Lo, cs, c0, d, t) : nullptr;
        // Recurrent part: gh [N, G*H] = h_prev [N, H] @ W_hh^T.
        sgemm('N', 'T', N, GH, H, hp, hs, cw.w_hh, H, 0.0f, gh.data(), GH, whh16);
#pragma omp parallel for schedule(static) if (N * H >= kParallelUnits)
        for (int64_t n = 0; n < N; ++n) {
          const float* ax = gx.data() + (t * N + n) * GH;
          const float* ah = gh.data() + n * GH;
          float* a = act + (t * N + n) * 4 * H;
          float* yo = yl + (t * N + n) * D * H + d * H;
          const float *bi = cw.b_ih, *bh = cw.b_hh;
          if (Lo.lstm) {
            float* co = cs + (t * N + n) * H;
            const float* cpr = cp + n * H;
#pragma omp simd
            for (int64_t j = 0; j < H; ++j) {
              const float gi = sigmoidf(ax[j] + ah[j] + bi[j] + bh[j]);
              const float gf = sigmoidf(ax[H + j] + ah[H + j] + bi[H + j] + bh[H + j]);
              const float gg = tanhf_fast(ax[2 * H + j] + ah[2 * H + j] + bi[2 * H + j] + bh[2 * H + j]);
              const float go = sigmoidf(ax[3 * H + j] + ah[3 * H + j] + bi[3 * H + j] + bh[3 * H + j]);
              const float c_new = gf * cpr[j] + gi * gg;
              a[j] = gi, a[H + j] = gf, a[2 * H + j] = gg, a[3 * H + j] = go;
              co[j] = c_new;
              yo[j] = go * tanhf_fast(c_new);
            }
          } else {
            const float* hpr = hp + n * hs;
#pragma omp simd
            for (int64_t j = 0; j < H; ++j) {
              const float gr = sigmoidf(ax[j] + ah[j] + bi[j] + bh[j]);
              const float gz = sigmoidf(ax[H + j] + ah[H + j] + bi[H + j] + bh[H + j]);
              const float hn = ah[2 * H + j] + bh[2 * H + j];
              const float gn = tanhf_fast(ax[2 * H + j] + bi[2 * H + j] + gr * hn);
              a[j] = gr, a[H + j] = gz, a[2 * H + j] = gn, a[3 * H + j] = hn;
              yo[j] = (1 - gz) * gn + gz * hpr[j];
            }
          }
        }
      }
    }
  }
  std::copy_n(Lo.y(r, p.num_layers - 1), Lo.y_size(), ptr<float>(y));
  for (int64_t l = 0; l < p.num_layers; ++l)
    for (int64_t d = 0; d < D; ++d) {
      const int64_t t_last = Lo.step(d, T_ - 1);
      for (int64_t n = 0; n < N; ++n) {
        std::copy_n(Lo.y(r, l) + (t_last * N + n) * D * H + d * H, H, ptr<float>(hy) + ((l * D + d) * N + n) * H);
        if (Lo.lstm) std::copy_n(Lo.c(r, l, d) + (t_last * N + n) * H, H, ptr<float>(cy) + ((l * D + d) * N + n) * H);
      }
    }
}

void fast_backward_data(const RnnParams& p, const Tensor& hx, const Tensor& cx, const std::vector<Tensor>& w,
                        const Tensor& dy, const Tensor& dhy, const Tensor& dcy, const Tensor& reserve,
                        const Tensor& dx, const Tensor& dhx, const Tensor& dcx) {
  const Layout Lo(p);
  const int64_t T_ = Lo.T, N = Lo.N, H = Lo.H, D = Lo.D, G = Lo.G, GH = G * H;
  float* r = ptr<float>(reserve);
  std::vector<float> dY(ptr<float>(dy), ptr<float>(dy) + Lo.y_size()), dIn, dh(N * H), dc(N * H), dh_prev(N * H);
  for (int64_t l = p.num_layers - 1; l >= 0; --l) {
    const int64_t in = p.layer_input(l);
    float* din = l == 0 ? ptr<float>(dx) : (dIn.assign(T_ * N * in, 0.0f), dIn.data());
    const float* yl = Lo.y(r, l);
    for (int64_t d = 0; d < D; ++d) {
      CellWeights<float> cw(w, l, d, D);
      const int64_t sd = (l * D + d) * N * H;
      const float* h0 = ptr<float>(hx) + sd;
      const float* c0 = Lo.lstm ? ptr<float>(cx) + sd : nullptr;
      const float* act = Lo.act(r, l, d);
      const float* cs = Lo.c(r, l, d);
      float* dgx = Lo.dgx(r, l, d);
      float* dgh = Lo.dgh(r, l, d);
      const std::vector<uint16_t> whh16 = bf16_rounded(cw.w_hh, GH * H);
      std::copy_n(ptr<float>(dhy) + sd, N * H, dh.data());
      if (Lo.lstm) std::copy_n(ptr<float>(dcy) + sd, N * H, dc.data());
      for (int64_t s = T_ - 1; s >= 0; --s) {
        const int64_t t = Lo.step(d, s);
        int64_t hs;
        const float* hp = h_before(Lo, yl, h0, d, t, hs);
        const float* cp = Lo.lstm ? c_before(Lo, cs, c0, d, t) : nullptr;
#pragma omp parallel for schedule(static) if (N * H >= kParallelUnits)
        for (int64_t n = 0; n < N; ++n) {
          const float* a = act + (t * N + n) * 4 * H;
          const float* dyr = dY.data() + (t * N + n) * D * H + d * H;
          float* gxr = dgx + (t * N + n) * GH;
          float* dcr = dc.data() + n * H;
          float* dpr = dh_prev.data() + n * H;
          const float* dhr = dh.data() + n * H;
          if (Lo.lstm) {
            const float* cr = cs + (t * N + n) * H;
            const float* cpr = cp + n * H;
#pragma omp simd
            for (int64_t j = 0; j < H; ++j) {
              const float gi = a[j], gf = a[H + j], gg = a[2 * H + j], go = a[3 * H + j];
              const float dht = dhr[j] + dyr[j];
              const float tc = tanhf_fast(cr[j]);
              const float dct = dcr[j] + dht * go * (1 - tc * tc);
              gxr[j] = dct * gg * gi * (1 - gi);
              gxr[H + j] = dct * cpr[j] * gf * (1 - gf);
              gxr[2 * H + j] = dct * gi * (1 - gg * gg);
              gxr[3 * H + j] = dht * tc * go * (1 - go);
              dcr[j] = dct * gf;
            }
          } else {
            float* ghr = dgh + (t * N + n) * GH;
            const float* hpr = hp + n * hs;
#pragma omp simd
            for (int64_t j = 0; j < H; ++j) {
              const float gr = a[j], gz = a[H + j], gn = a[2 * H + j], hn = a[3 * H + j];
              const float dht = dhr[j] + dyr[j];
              const float dan = dht * (1 - gz) * (1 - gn * gn);
              const float dar = dan * hn * gr * (1 - gr);
              const float daz = dht * (hpr[j] - gn) * gz * (1 - gz);
              gxr[j] = dar, gxr[H + j] = daz, gxr[2 * H + j] = dan;
              ghr[j] = dar, ghr[H + j] = daz, ghr[2 * H + j] = dan * gr;
              dpr[j] = dht * gz;  // the direct path h_{t-1} -> h_t
            }
          }
        }
        // d h_{t-1} [N, H] (+)= dgh_t [N, G*H] @ W_hh [G*H, H]
        sgemm('N', 'N', N, H, GH, dgh + t * N * GH, GH, cw.w_hh, H, Lo.lstm ? 0.0f : 1.0f, dh_prev.data(), H, whh16);
        std::swap(dh, dh_prev);
      }
      // d in [T*N, in] (+)= dgx [T*N, G*H] @ W_ih [G*H, in]; directions add into one buffer.
      sgemm('N', 'N', T_ * N, in, GH, dgx, GH, cw.w_ih, in, d == 0 ? 0.0f : 1.0f, din, in);
      std::copy_n(dh.data(), N * H, ptr<float>(dhx) + sd);
      if (Lo.lstm) std::copy_n(dc.data(), N * H, ptr<float>(dcx) + sd);
    }
    if (l > 0) std::swap(dY, dIn);
  }
}

void fast_backward_weights(const RnnParams& p, const Tensor& x, const Tensor& hx, const Tensor& reserve,
                           const std::vector<Tensor>& dw) {
  const Layout Lo(p);
  const int64_t T_ = Lo.T, N = Lo.N, H = Lo.H, D = Lo.D, G = Lo.G, GH = G * H;
  float* r = ptr<float>(reserve);
  for (int64_t l = 0; l < p.num_layers; ++l) {
    const int64_t in = p.layer_input(l);
    const float* xin = l == 0 ? ptr<float>(x) : Lo.y(r, l - 1);
    const float* yl = Lo.y(r, l);
    for (int64_t d = 0; d < D; ++d) {
      const int64_t k4 = 4 * (l * D + d);
      float *dw_ih = ptr<float>(dw[k4]), *dw_hh = ptr<float>(dw[k4 + 1]);
      float *db_ih = ptr<float>(dw[k4 + 2]), *db_hh = ptr<float>(dw[k4 + 3]);
      const float* h0 = ptr<float>(hx) + (l * D + d) * N * H;
      const float* dgx = Lo.dgx(r, l, d);
      const float* dgh = Lo.dgh(r, l, d);
      // dW_ih [G*H, in] = dgx^T [G*H, T*N] @ in [T*N, in]
      sgemm('T', 'N', GH, in, T_ * N, dgx, GH, xin, in, 0.0f, dw_ih, in);
      // dW_hh [G*H, H] = sum_t dgh_t^T @ h_before(t): the steps whose h_before is a Y_l row form
      // one strided matrix (forward: t = 1..T-1 read Y_l[t-1]; reverse: t = 0..T-2 read Y_l[t+1]),
      // the first processed step reads h0.
      const int64_t t_first = Lo.step(d, 0);
      const float* dg_rows = dgh + (d == 0 ? N * GH : 0);
      const float* y_rows = yl + (d == 0 ? 0 : N * D * H) + d * H;
      sgemm('T', 'N', GH, H, (T_ - 1) * N, dg_rows, GH, y_rows, D * H, 0.0f, dw_hh, H);
      sgemm('T', 'N', GH, H, N, dgh + t_first * N * GH, GH, h0, H, T_ > 1 ? 1.0f : 0.0f, dw_hh, H);
      std::vector<double> bi(GH, 0.0), bh(GH, 0.0);
      for (int64_t row = 0; row < T_ * N; ++row)
        for (int64_t k = 0; k < GH; ++k) bi[k] += dgx[row * GH + k], bh[k] += dgh[row * GH + k];
      for (int64_t k = 0; k < GH; ++k) db_ih[k] = static_cast<float>(bi[k]), db_hh[k] = static_cast<float>(bh[k]);
    }
  }
}

}  // namespace

// ------------------------------------------------------------------ ReferenceBackend

int64_t ReferenceBackend::rnn_reserve_size(const RnnParams& p, const Tensor&) { return Layout(p).total(p.num_layers); }

void ReferenceBackend::rnn_forward_train(const RnnParams& p, const Tensor& x, const Tensor& hx, const Tensor& cx,
                                         const std::vector<Tensor>& weights, const Tensor& y, const Tensor& hy,
                                         const Tensor& cy, const Tensor& reserve) {
  check_rnn_dtype(name(), x.dtype());
  if (x.dtype() == DType::f64)
    ref_forward<double>(p, x, hx, cx, weights, y, hy, cy, reserve);
  else
    ref_forward<float>(p, x, hx, cx, weights, y, hy, cy, reserve);
}

void ReferenceBackend::rnn_backward_data(const RnnParams& p, const Tensor&, const Tensor& hx, const Tensor& cx,
                                         const std::vector<Tensor>& weights, const Tensor&, const Tensor& dy,
                                         const Tensor& dhy, const Tensor& dcy, const Tensor& reserve,
                                         const Tensor& dx, const Tensor& dhx, const Tensor& dcx) {
  check_rnn_dtype(name(), dy.dtype());
  if (dy.dtype() == DType::f64)
    ref_backward_data<double>(p, hx, cx, weights, dy, dhy, dcy, reserve, dx, dhx, dcx);
  else
    ref_backward_data<float>(p, hx, cx, weights, dy, dhy, dcy, reserve, dx, dhx, dcx);
}

void ReferenceBackend::rnn_backward_weights(const RnnParams& p, const Tensor& x, const Tensor& hx,
                                            const std::vector<Tensor>&, const Tensor&, const Tensor& reserve,
                                            const std::vector<Tensor>& dweights) {
  check_rnn_dtype(name(), x.dtype());
  if (x.dtype() == DType::f64)
    ref_backward_weights<double>(p, x, hx, reserve, dweights);
  else
    ref_backward_weights<float>(p, x, hx, reserve, dweights);
}

// ------------------------------------------------------------------ OneDnnBackend

int64_t OneDnnBackend::rnn_reserve_size(const RnnParams& p, const Tensor& x) {
  return ReferenceBackend::rnn_reserve_size(p, x);
}

void OneDnnBackend::rnn_forward_train(const RnnParams& p, const Tensor& x, const Tensor& hx, const Tensor& cx,
                                      const std::vector<Tensor>& weights, const Tensor& y, const Tensor& hy,
                                      const Tensor& cy, const Tensor& reserve) {
  if (x.dtype() != DType::f32) return ReferenceBackend::rnn_forward_train(p, x, hx, cx, weights, y, hy, cy, reserve);
  fast_forward(p, x, hx, cx, weights, y, hy, cy, reserve);
}

void OneDnnBackend::rnn_backward_data(const RnnParams& p, const Tensor& x, const Tensor& hx, const Tensor& cx,
                                      const std::vector<Tensor>& weights, const Tensor& y, const Tensor& dy,
                                      const Tensor& dhy, const Tensor& dcy, const Tensor& reserve, const Tensor& dx,
                                      const Tensor& dhx, const Tensor& dcx) {
  if (dy.dtype() != DType::f32)
    return ReferenceBackend::rnn_backward_data(p, x, hx, cx, weights, y, dy, dhy, dcy, reserve, dx, dhx, dcx);
  fast_backward_data(p, hx, cx, weights, dy, dhy, dcy, reserve, dx, dhx, dcx);
}

void OneDnnBackend::rnn_backward_weights(const RnnParams& p, const Tensor& x, const Tensor& hx,
                                         const std::vector<Tensor>& weights, const Tensor& y, const Tensor& reserve,
                                         const std::vector<Tensor>& dweights) {
  if (x.dtype() != DType::f32)
    return ReferenceBackend::rnn_backward_weights(p, x, hx, weights, y, reserve, dweights);
  fast_backward_weights(p, x, hx, reserve, dweights);
}

}  // namespace hpdl::cpu
