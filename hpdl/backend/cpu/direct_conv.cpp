// Direct convolution for few input channels: see direct_conv.h.
#include "hpdl/backend/cpu/direct_conv.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "hpdl/core/threading.h"

namespace hpdl::cpu {
namespace {

using V8 = float __attribute__((vector_size(32)));  // GCC/Clang vector extension: one AVX register
constexpr int64_t kLanes = 8;

inline V8 load8(const float* p) {
  V8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// Output rows are computed 8 columns at a time over Qv = Q rounded up to 8; the input planes are
// copied into zero-padded planes of Hp = P + R - 1 rows and Wp = Qv + S - 1 columns, so every
// vector load is in bounds and padding needs no branches.
struct Geometry {
  int64_t N, C, H, W, K, R, S, P, Q, pad_h, pad_w, Qv, Hp, Wp;
  Geometry(const Shape& x, const Shape& w, const Conv2dParams& p)
      : N(x[0]), C(x[1]), H(x[2]), W(x[3]), K(w[0]), R(w[2]), S(w[3]),
        P(Conv2dParams::out_size(x[2], w[2], 1, p.pad_h, 1)), Q(Conv2dParams::out_size(x[3], w[3], 1, p.pad_w, 1)),
        pad_h(p.pad_h), pad_w(p.pad_w), Qv((Q + kLanes - 1) / kLanes * kLanes), Hp(P + R - 1), Wp(Qv + S - 1) {}
  int64_t plane() const { return Hp * Wp; }
};

// Image n's C channels into `xp` (C zero-padded planes).
void pad_image(const Geometry& g, const float* x, int64_t n, float* xp) {
  std::fill(xp, xp + g.C * g.plane(), 0.0f);
  for (int64_t c = 0; c < g.C; ++c)
    for (int64_t i = 0; i < g.H; ++i) {
      const int64_t row = i + g.pad_h;  // < Hp = H + 2 pad_h
      // Columns pad_w .. pad_w + W - 1 of the padded row (Wp >= W + 2 pad_w: all in bounds).
      std::memcpy(xp + c * g.plane() + row * g.Wp + g.pad_w, x + ((n * g.C + c) * g.H + i) * g.W,
                  static_cast<size_t>(g.W) * sizeof(float));
    }
}

// Forward, output channels k0 .. k0 + KB - 1 of one image, QB vectors of an output row at a time:
// each loaded input vector feeds KB accumulators and each loaded weight QB (KB * QB <= 12 of the 16
// AVX registers). Columns [q_begin, q_end) of the padded row, q_end - q_begin a multiple of 8 QB.
// wv[(c R + r) S + s][k]: the weights, broadcast to vectors.
template <int KB, int QB>
void forward_block(const Geometry& g, const float* xp, const V8* wv, const float* bias, int64_t k0, float* y,
                   int64_t q_begin, int64_t q_end) {
  for (int64_t p = 0; p < g.P; ++p)
    for (int64_t q = q_begin; q < q_end; q += QB * kLanes) {
      V8 acc[QB][KB];
      for (int j = 0; j < KB; ++j) {
        const V8 b0 = V8{} + (bias ? bias[k0 + j] : 0.0f);
        for (int u = 0; u < QB; ++u) acc[u][j] = b0;
      }
      for (int64_t c = 0; c < g.C; ++c)
        for (int64_t r = 0; r < g.R; ++r) {
          const float* row = xp + c * g.plane() + (p + r) * g.Wp + q;
          const V8* wr = wv + ((c * g.R + r) * g.S) * g.K + k0;
          for (int64_t s = 0; s < g.S; ++s) {
            V8 xv[QB];
            for (int u = 0; u < QB; ++u) xv[u] = load8(row + s + u * kLanes);
            for (int j = 0; j < KB; ++j) {
              const V8 wj = wr[s * g.K + j];
              for (int u = 0; u < QB; ++u) acc[u][j] += wj * xv[u];
            }
          }
        }
      for (int u = 0; u < QB; ++u) {
        const int64_t qu = q + u * kLanes;
        if (qu + kLanes <= g.Q) {
          for (int j = 0; j < KB; ++j) std::memcpy(y + ((k0 + j) * g.P + p) * g.Q + qu, &acc[u][j], sizeof(V8));
        } else {  // the row's tail (or padding past it)
          for (int j = 0; j < KB; ++j) {
            float* dst = y + ((k0 + j) * g.P + p) * g.Q + qu;
            for (int64_t l = 0; l < g.Q - qu; ++l) dst[l] = acc[u][j][l];
          }
        }
      }
    }
}

// KB output channels over a whole row: QB vectors at a time as far as they fit, then one.
template <int KB>
void forward_channels(const Geometry& g, const float* xp, const V8* wv, const float* bias, int64_t k0, float* y) {
  constexpr int QB = KB <= 3 ? 4 : KB <= 6 ? 2 : 1;
  const int64_t wide = g.Qv / (QB * kLanes) * (QB * kLanes);
  forward_block<KB, QB>(g, xp, wv, bias, k0, y, 0, wide);
  if constexpr (QB > 1) forward_block<KB, 1>(g, xp, wv, bias, k0, y, wide, g.Qv);
}

using ForwardBlock = void (*)(const Geometry&, const float*, const V8*, const float*, int64_t, float*);
constexpr ForwardBlock kForwardBlocks[9] = {nullptr,
                                            forward_channels<1>,
                                            forward_channels<2>,
                                            forward_channels<3>,
                                            forward_channels<4>,
                                            forward_channels<5>,
                                            forward_channels<6>,
                                            forward_channels<7>,
                                            forward_channels<8>};

// Backward weights of one image, filter width SW: for each (k, c, r) the SW sums over the output
// plane share each loaded dy vector. acc[((k C + c) R + r) SW + s] and accb[k] (db) are vector
// partial sums, added to by each image of a chunk in turn.
template <int SW>
void backward_image(const Geometry& g, const float* xp, const float* dyp, V8* acc, V8* accb) {
  for (int64_t k = 0; k < g.K; ++k) {
    const float* dk = dyp + k * g.P * g.Qv;
    for (int64_t c = 0; c < g.C; ++c)
      for (int64_t r = 0; r < g.R; ++r) {
        V8 a[SW];
        for (int s = 0; s < SW; ++s) a[s] = V8{};
        for (int64_t p = 0; p < g.P; ++p) {
          const float* drow = dk + p * g.Qv;
          const float* xrow = xp + c * g.plane() + (p + r) * g.Wp;
          for (int64_t q = 0; q < g.Qv; q += kLanes) {
            const V8 d = load8(drow + q);
            for (int s = 0; s < SW; ++s) a[s] += d * load8(xrow + q + s);
          }
        }
        V8* out = acc + ((k * g.C + c) * g.R + r) * SW;
        for (int s = 0; s < SW; ++s) out[s] += a[s];
      }
    if (accb) {
      V8 b = {};
      for (int64_t i = 0; i < g.P * g.Qv; i += kLanes) b += load8(dk + i);
      accb[k] += b;
    }
  }
}

using BackwardImage = void (*)(const Geometry&, const float*, const float*, V8*, V8*);
constexpr int kMaxFilter = 7;
constexpr BackwardImage kBackwardImages[kMaxFilter + 1] = {nullptr,
                                                           backward_image<1>,
                                                           backward_image<2>,
                                                           backward_image<3>,
                                                           backward_image<4>,
                                                           backward_image<5>,
                                                           backward_image<6>,
                                                           backward_image<7>};

float lane_sum(const V8& v) {
  float l[kLanes];
  std::memcpy(l, &v, sizeof l);
  float s = 0;
  for (int64_t i = 0; i < kLanes; ++i) s += l[i];
  return s;
}

}  // namespace

namespace {
bool stride1_applies(const Shape& x, const Shape& w, const Conv2dParams& p) {
  return p.groups == 1 && p.stride_h == 1 && p.stride_w == 1 && p.dilation_h == 1 && p.dilation_w == 1 &&
         x[1] >= 1 && x[1] <= 4 && w[1] == x[1] && w[2] >= 1 && w[2] <= kMaxFilter && w[3] >= 1 &&
         w[3] <= kMaxFilter && p.pad_h >= 0 && p.pad_h < w[2] && p.pad_w >= 0 && p.pad_w < w[3] &&
         Conv2dParams::out_size(x[2], w[2], 1, p.pad_h, 1) >= 1 && Conv2dParams::out_size(x[3], w[3], 1, p.pad_w, 1) >= 1;
}
bool is_strided(const Conv2dParams& p) { return p.stride_h > 1 || p.stride_w > 1; }
}  // namespace

bool direct_conv_applies(const Shape& x, const Shape& w, const Conv2dParams& p) {
  if (x.size() != 4 || w.size() != 4) return false;
  if (!is_strided(p)) return stride1_applies(x, w, p);
  // Strided: as the stride-1 convolution of the space-to-depth input (SpaceToDepth below).
  if (p.groups != 1 || p.dilation_h != 1 || p.dilation_w != 1 || w[1] != x[1] || p.pad_h < 0 || p.pad_w < 0 ||
      p.pad_h >= w[2] || p.pad_w >= w[3] || p.stride_h < 1 || p.stride_w < 1 ||
      x[1] * p.stride_h * p.stride_w > 4)
    return false;
  const int64_t P = Conv2dParams::out_size(x[2], w[2], p.stride_h, p.pad_h, 1);
  const int64_t Q = Conv2dParams::out_size(x[3], w[3], p.stride_w, p.pad_w, 1);
  const int64_t Rs = (w[2] + p.stride_h - 1) / p.stride_h, Ss = (w[3] + p.stride_w - 1) / p.stride_w;
  return P >= 1 && Q >= 1 && Rs <= kMaxFilter && Ss <= kMaxFilter;
}

// Strided: only the weight gradient (DCGAN's 1 -> 64, 4x4 stride 2 on 28x28, batch 64, one thread:
// 3.1-3.4 ms against oneDNN's 5.7-6.3; the forward 2.7-3.1 against 1.1-1.5 ms and the input gradient
// 3.0-3.8 against 0.75-1.5 ms stay on oneDNN).
bool direct_conv_forward_preferred(const Shape& x, const Shape& w, const Conv2dParams& p) {
  return direct_conv_applies(x, w, p) && x[1] == 1 && !is_strided(p);
}

bool direct_conv_backward_weights_preferred(const Shape& x, const Shape& w, const Conv2dParams& p) {
  return direct_conv_applies(x, w, p) && (x[1] == 1 || w[0] <= 16);
}

bool direct_conv_backward_data_preferred(const Shape& x, const Shape& w, const Conv2dParams& p) {
  return direct_conv_applies(x, w, p) && x[1] == 1 && !is_strided(p);
}

namespace {
// The forward loops for any number of input channels (direct_conv_applies limits what the backend
// sends them, the backward data sends K).
void forward_loops(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& y, const Conv2dParams& p) {
  const Geometry g(x.shape(), w.shape(), p);
  const float* X = x.data<float>();
  const float* Wt = w.data<float>();
  const float* B = bias.defined() ? bias.data<float>() : nullptr;
  float* Y = y.data<float>();
  const int64_t CRS = g.C * g.R * g.S;
  std::vector<V8> wv(static_cast<size_t>(CRS * g.K));
  for (int64_t k = 0; k < g.K; ++k)
    for (int64_t i = 0; i < CRS; ++i) wv[static_cast<size_t>(i * g.K + k)] = V8{} + Wt[k * CRS + i];
  parallel_for(g.N, 1, [&](int64_t lo, int64_t hi) {
    std::vector<float> xp(static_cast<size_t>(g.C * g.plane()));
    for (int64_t n = lo; n < hi; ++n) {
      pad_image(g, X, n, xp.data());
      float* yn = Y + n * g.K * g.P * g.Q;
      for (int64_t k0 = 0; k0 < g.K; k0 += 8)
        kForwardBlocks[std::min<int64_t>(8, g.K - k0)](g, xp.data(), wv.data(), B, k0, yn);
    }
  });
}
}  // namespace

namespace {
void backward_data_stride1(const Tensor& dy, const Tensor& w, const Tensor& dx, const Conv2dParams& p) {
  // dx[n, c, i, j] = sum_{k, r, s} dy[n, k, i + pad_h - r, j + pad_w - s] w[k, c, r, s]
  //               = conv(dy, wt)[n, c, i, j] with wt[c, k, r', s'] = w[k, c, R-1-r', S-1-s'] and
  //                 padding R-1-pad_h, S-1-pad_w.
  const int64_t K = w.dim(0), C = w.dim(1), R = w.dim(2), S = w.dim(3);
  Tensor wt = Tensor::empty({C, K, R, S});
  const float* W = w.data<float>();
  float* WT = wt.data<float>();
  for (int64_t k = 0; k < K; ++k)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t r = 0; r < R; ++r)
        for (int64_t s = 0; s < S; ++s)
          WT[((c * K + k) * R + (R - 1 - r)) * S + (S - 1 - s)] = W[((k * C + c) * R + r) * S + s];
  Conv2dParams pt;
  pt.pad_h = R - 1 - p.pad_h, pt.pad_w = S - 1 - p.pad_w;
  forward_loops(dy, wt, Tensor(), dx, pt);
}

void backward_weights_stride1(const Tensor& x, const Tensor& dy, const Tensor& dw, const Tensor& db,
                              const Conv2dParams& p) {
  const Geometry g(x.shape(), dw.shape(), p);
  const float* X = x.data<float>();
  const float* DY = dy.data<float>();
  const int64_t KCRS = g.K * g.C * g.R * g.S;
  // Fixed chunks of images, whatever the thread count; each has its own vector partial sums.
  const int64_t chunks = std::min<int64_t>(g.N, 16);
  std::vector<V8> acc(static_cast<size_t>(chunks * KCRS)), accb(static_cast<size_t>(chunks * g.K));
  const bool with_bias = db.defined();
  parallel_for(chunks, 1, [&](int64_t lo, int64_t hi) {
    std::vector<float> xp(static_cast<size_t>(g.C * g.plane()));
    std::vector<float> dyp(static_cast<size_t>(g.K * g.P * g.Qv), 0.0f);  // the tail columns stay 0
    for (int64_t ch = lo; ch < hi; ++ch) {
      V8* a = acc.data() + ch * KCRS;
      V8* b = with_bias ? accb.data() + ch * g.K : nullptr;
      std::fill(a, a + KCRS, V8{});
      if (b) std::fill(b, b + g.K, V8{});
      for (int64_t n = ch * g.N / chunks; n < (ch + 1) * g.N / chunks; ++n) {
        pad_image(g, X, n, xp.data());
        for (int64_t k = 0; k < g.K; ++k)
          for (int64_t i = 0; i < g.P; ++i) {
            const float* src = DY + ((n * g.K + k) * g.P + i) * g.Q;
            float* dst = dyp.data() + (k * g.P + i) * g.Qv;
            for (int64_t j = 0; j < g.Q; ++j) dst[j] = src[j];
          }
        kBackwardImages[g.S](g, xp.data(), dyp.data(), a, b);
      }
    }
  });
  // Chunks, then lanes, in a fixed order.
  float* DW = dw.data<float>();
  for (int64_t i = 0; i < KCRS; ++i) {
    float s = 0;
    for (int64_t ch = 0; ch < chunks; ++ch) s += lane_sum(acc[static_cast<size_t>(ch * KCRS + i)]);
    DW[i] = s;
  }
  if (with_bias) {
    float* DB = db.data<float>();
    for (int64_t k = 0; k < g.K; ++k) {
      float s = 0;
      for (int64_t ch = 0; ch < chunks; ++ch) s += lane_sum(accb[static_cast<size_t>(ch * g.K + k)]);
      DB[k] = s;
    }
  }
}

// A stride (sh, sw) convolution of x [N, C, H, W] with w [K, C, R, S] and padding (ph, pw) is the
// stride-1, unpadded convolution of the space-to-depth input xs [N, C sh sw, P + Rs - 1, Q + Ss - 1]
// with filters ws [K, C sh sw, Rs, Ss], Rs = ceil(R / sh), Ss = ceil(S / sw):
//   xs[n, (c sh + a) sw + b, i, j] = xpad[n, c, i sh + a, j sw + b]   (xpad: x padded with zeros)
//   ws[k, (c sh + a) sw + b, i, j] = w[k, c, i sh + a, j sw + b]      (0 where i sh + a >= R or j sw + b >= S)
// because y[n, k, p, q] = sum_{c, r, s} w[k, c, r, s] xpad[n, c, p sh + r, q sw + s] and every tap
// (r, s) is one (i sh + a, j sw + b). A 4x4 stride-2 filter on one channel becomes 2x2 on four, the
// same multiply-adds, with no channel padding (oneDNN pads 1 channel to 8 in its backward kernels).
// x -> xs copies each element of x at most once (rows and columns no window reaches are dropped),
// so its adjoint, dxs -> dx, is a copy back with zeros for the dropped ones.
struct SpaceToDepth {
  int64_t N, C, H, W, K, R, S, sh, sw, ph, pw, P, Q, Cs, Rs, Ss, Hs, Ws;
  SpaceToDepth(const Shape& x, const Shape& w, const Conv2dParams& p)
      : N(x[0]), C(x[1]), H(x[2]), W(x[3]), K(w[0]), R(w[2]), S(w[3]), sh(p.stride_h), sw(p.stride_w),
        ph(p.pad_h), pw(p.pad_w), P(Conv2dParams::out_size(H, R, sh, ph, 1)),
        Q(Conv2dParams::out_size(W, S, sw, pw, 1)), Cs(C * sh * sw), Rs((R + sh - 1) / sh), Ss((S + sw - 1) / sw),
        Hs(P + Rs - 1), Ws(Q + Ss - 1) {}
  Shape input_shape() const { return {N, Cs, Hs, Ws}; }
  Shape weight_shape() const { return {K, Cs, Rs, Ss}; }
  // Calls f(index in x or -1 for padding, index in xs) for every element of xs, image by image in parallel.
  template <typename F>
  void for_each_input(F&& f) const {
    parallel_for(N, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t n = lo; n < hi; ++n)
        for (int64_t c = 0; c < C; ++c)
          for (int64_t a = 0; a < sh; ++a)
            for (int64_t b = 0; b < sw; ++b) {
              const int64_t cs = (c * sh + a) * sw + b;
              for (int64_t i = 0; i < Hs; ++i) {
                const int64_t h = i * sh + a - ph;
                for (int64_t j = 0; j < Ws; ++j) {
                  const int64_t v = j * sw + b - pw;
                  const bool inside = h >= 0 && h < H && v >= 0 && v < W;
                  f(inside ? ((n * C + c) * H + h) * W + v : -1, ((n * Cs + cs) * Hs + i) * Ws + j);
                }
              }
            }
    });
  }
  Tensor input(const Tensor& x) const {
    Tensor xs = Tensor::empty(input_shape());
    const float* X = x.data<float>();
    float* XS = xs.data<float>();
    for_each_input([&](int64_t xi, int64_t si) { XS[si] = xi >= 0 ? X[xi] : 0.0f; });
    return xs;
  }
  void input_back(const Tensor& dxs, const Tensor& dx) const {
    const float* DXS = dxs.data<float>();
    float* DX = dx.data<float>();
    std::fill(DX, DX + dx.numel(), 0.0f);  // rows and columns no window reaches
    for_each_input([&](int64_t xi, int64_t si) {
      if (xi >= 0) DX[xi] = DXS[si];
    });
  }
  // Calls f(index in w or -1 for a tap past the filter, index in ws) for every element of ws.
  template <typename F>
  void for_each_weight(F&& f) const {
    for (int64_t k = 0; k < K; ++k)
      for (int64_t c = 0; c < C; ++c)
        for (int64_t a = 0; a < sh; ++a)
          for (int64_t b = 0; b < sw; ++b)
            for (int64_t i = 0; i < Rs; ++i)
              for (int64_t j = 0; j < Ss; ++j) {
                const int64_t r = i * sh + a, s = j * sw + b;
                f(r < R && s < S ? ((k * C + c) * R + r) * S + s : -1,
                  ((k * Cs + (c * sh + a) * sw + b) * Rs + i) * Ss + j);
              }
  }
  Tensor weights(const Tensor& w) const {
    Tensor ws = Tensor::empty(weight_shape());
    const float* Wt = w.data<float>();
    float* WS = ws.data<float>();
    for_each_weight([&](int64_t wi, int64_t si) { WS[si] = wi >= 0 ? Wt[wi] : 0.0f; });
    return ws;
  }
  void weights_back(const Tensor& dws, const Tensor& dw) const {
    const float* DWS = dws.data<float>();
    float* DW = dw.data<float>();
    for_each_weight([&](int64_t wi, int64_t si) {
      if (wi >= 0) DW[wi] = DWS[si];
    });
  }
};

}  // namespace

void direct_conv_forward(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& y,
                         const Conv2dParams& p) {
  if (!is_strided(p)) return forward_loops(x, w, bias, y, p);
  const SpaceToDepth sd(x.shape(), w.shape(), p);
  forward_loops(sd.input(x), sd.weights(w), bias, y, Conv2dParams{});
}

void direct_conv_backward_data(const Tensor& dy, const Tensor& w, const Tensor& dx, const Conv2dParams& p) {
  if (!is_strided(p)) return backward_data_stride1(dy, w, dx, p);
  const SpaceToDepth sd(dx.shape(), w.shape(), p);
  Tensor dxs = Tensor::empty(sd.input_shape());
  backward_data_stride1(dy, sd.weights(w), dxs, Conv2dParams{});
  sd.input_back(dxs, dx);
}

void direct_conv_backward_weights(const Tensor& x, const Tensor& dy, const Tensor& dw, const Tensor& db,
                                  const Conv2dParams& p) {
  if (!is_strided(p)) return backward_weights_stride1(x, dy, dw, db, p);
  const SpaceToDepth sd(x.shape(), dw.shape(), p);
  Tensor dws = Tensor::empty(sd.weight_shape());
  backward_weights_stride1(sd.input(x), dy, dws, db, Conv2dParams{});
  sd.weights_back(dws, dw);
}

}  // namespace hpdl::cpu
