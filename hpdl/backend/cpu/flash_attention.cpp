// Fused attention: see flash_attention.h. The loops are written so GCC
// vectorizes the innermost one at -O3 -march=native: scores are computed for a
// block of keys at once from a transposed key block (kT [E, block], an axpy per
// feature), the value accumulation is an axpy over Ev, and float32 uses a
// polynomial exp made of plain arithmetic (libm's expf does not vectorize
// without -ffast-math).
#include "hpdl/backend/cpu/flash_attention.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <vector>

#include "hpdl/core/threading.h"

namespace hpdl::cpu {
namespace {

constexpr int64_t kBlockQ = 16;  // query rows per forward task
constexpr int64_t kBlockK = 64;  // keys per block (kT [E, 64] stays in L1 for E <= 64)

// exp(x) for x <= 0 (scores minus their row maximum): exp(x) = 2^n e^r with
// n = round(x / ln 2) and r = x - n ln 2 in [-ln2/2, ln2/2] (ln 2 split in a
// high and a low part, Cody and Waite 1980), e^r by its degree-6 Taylor
// polynomial (relative error below 2e-7). Below -87 the result is 0 (expf
// would give a denormal), so -inf gives 0.
inline float exp_poly(float x) {
  const float xc = std::min(std::max(x, -87.0f), 88.0f);
  const float fn = std::floor(xc * 1.44269504f + 0.5f);
  const float r = (xc - fn * 0.693359375f) + fn * 2.12194440e-4f;
  float p = 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const auto bits = static_cast<uint32_t>(static_cast<int32_t>(fn) + 127) << 23;
  const float y = p * std::bit_cast<float>(bits);
  return x < -87.0f ? 0.0f : y;
}
inline float exp_fast(float x) { return exp_poly(x); }
inline double exp_fast(double x) { return std::exp(x); }  // float64 is for tests: exact libm

template <typename F>
constexpr F kNegInf = -std::numeric_limits<F>::infinity();

// One thread's scratch for the forward: a transposed key block, the scores of
// one row against it, and the running max, sum and output accumulator of each
// row of the query block.
template <typename F>
struct ForwardScratch {
  std::vector<F> kT, s, m, l, acc;
  ForwardScratch(int64_t E, int64_t Ev)
      : kT(static_cast<size_t>(E * kBlockK)), s(kBlockK), m(kBlockQ), l(kBlockQ), acc(static_cast<size_t>(kBlockQ * Ev)) {}
};

// Query rows [t0, t1) of batch entry b.
template <typename F>
void forward_block(const FlashAttentionArgs& a, const F* q, const F* k, const F* v, F* out, F* lse, int64_t b,
                   int64_t t0, int64_t t1, ForwardScratch<F>& w) {
  const int64_t S = a.S, E = a.E, Ev = a.Ev, T = a.T;
  const F scale = static_cast<F>(a.scale);
  const uint8_t* kp = a.key_padding ? a.key_padding + (b / a.kp_group) * S : nullptr;
  std::fill(w.m.begin(), w.m.end(), kNegInf<F>);
  std::fill(w.l.begin(), w.l.end(), F(0));
  std::fill(w.acc.begin(), w.acc.end(), F(0));
  const F* kb = k + b * S * E;
  const F* vb = v + b * S * Ev;
  const int64_t s_end = a.causal ? std::min(S, t1) : S;  // later keys are masked for every row here
  F* s = w.s.data();
  for (int64_t j0 = 0; j0 < s_end; j0 += kBlockK) {
    const int64_t j1 = std::min(s_end, j0 + kBlockK);
    // kT [E, kBlockK] <- k[b, j0:j1, :]^T
    for (int64_t j = j0; j < j1; ++j)
      for (int64_t e = 0; e < E; ++e) w.kT[e * kBlockK + (j - j0)] = kb[j * E + e];
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = (a.causal ? std::min(j1, t + 1) : j1) - j0;
      if (n <= 0) continue;
      // s [n] = (q[t] * scale) . k[j0 + jj]
      const F* qt = q + (b * T + t) * E;
      std::fill(s, s + n, F(0));
      for (int64_t e = 0; e < E; ++e) {
        const F qe = qt[e] * scale;
        const F* kr = w.kT.data() + e * kBlockK;
        for (int64_t jj = 0; jj < n; ++jj) s[jj] += qe * kr[jj];
      }
      if (kp)
        for (int64_t jj = 0; jj < n; ++jj) s[jj] = kp[j0 + jj] ? kNegInf<F> : s[jj];
      F bm = kNegInf<F>;
      for (int64_t jj = 0; jj < n; ++jj) bm = std::max(bm, s[jj]);
      if (bm == kNegInf<F>) continue;  // every key of this block is masked for row t
      // Online softmax: rescale what was summed under the old maximum.
      const int64_t r = t - t0;
      const F mn = std::max(w.m[r], bm);
      const F corr = exp_fast(w.m[r] - mn);  // 0 on the first block that counts (m = -inf)
      for (int64_t jj = 0; jj < n; ++jj) s[jj] = exp_fast(s[jj] - mn);
      F sum = 0;
      for (int64_t jj = 0; jj < n; ++jj) sum += s[jj];
      w.l[r] = w.l[r] * corr + sum;
      w.m[r] = mn;
      F* acc = w.acc.data() + r * Ev;
      if (corr != F(1))
        for (int64_t c = 0; c < Ev; ++c) acc[c] *= corr;
      for (int64_t jj = 0; jj < n; ++jj) {
        const F p = s[jj];
        const F* vr = vb + (j0 + jj) * Ev;
        for (int64_t c = 0; c < Ev; ++c) acc[c] += p * vr[c];
      }
    }
  }
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t r = t - t0;
    F* o = out + (b * T + t) * Ev;
    const F* acc = w.acc.data() + r * Ev;
    if (w.l[r] == F(0)) {  // every key masked: NaN, as softmax over an all -inf row
      std::fill(o, o + Ev, std::numeric_limits<F>::quiet_NaN());
      lse[b * T + t] = kNegInf<F>;
      continue;
    }
    const F inv = F(1) / w.l[r];
    for (int64_t c = 0; c < Ev; ++c) o[c] = acc[c] * inv;
    lse[b * T + t] = w.m[r] + std::log(w.l[r]);
  }
}

// Batch entry b of the backward (FlashAttention-2, Algorithm 2, one query row
// at a time): with P = exp(S - lse) recomputed from the scores and
// D_t = sum_c dout[t, c] out[t, c] = sum_s P[t, s] dP[t, s],
//   dv[s] += P[t, s] dout[t]          dP[t, s] = dout[t] . v[s]
//   dS[t, s] = P[t, s] (dP[t, s] - D_t)
//   dq[t] = scale sum_s dS[t, s] k[s]  dk[s] += scale dS[t, s] q[t]
template <typename F>
void backward_entry(const FlashAttentionArgs& a, const F* q, const F* k, const F* v, const F* out, const F* dout,
                    const F* lse, F* dq, F* dk, F* dv, int64_t b, std::vector<F>& kT, std::vector<F>& vT,
                    std::vector<F>& p, std::vector<F>& ds) {
  const int64_t T = a.T, S = a.S, E = a.E, Ev = a.Ev;
  const F scale = static_cast<F>(a.scale);
  const uint8_t* kp = a.key_padding ? a.key_padding + (b / a.kp_group) * S : nullptr;
  const F *qb = q + b * T * E, *kb = k + b * S * E, *vb = v + b * S * Ev;
  const F *ob = out + b * T * Ev, *gb = dout + b * T * Ev, *lb = lse + b * T;
  F *dqb = dq + b * T * E, *dkb = dk + b * S * E, *dvb = dv + b * S * Ev;
  // kT [E, S], vT [Ev, S]: the scores and dP of one row are then axpys over s.
  for (int64_t j = 0; j < S; ++j) {
    for (int64_t e = 0; e < E; ++e) kT[e * S + j] = kb[j * E + e];
    for (int64_t c = 0; c < Ev; ++c) vT[c * S + j] = vb[j * Ev + c];
  }
  std::fill(dkb, dkb + S * E, F(0));
  std::fill(dvb, dvb + S * Ev, F(0));
  for (int64_t t = 0; t < T; ++t) {
    const int64_t n = a.causal ? t + 1 : S;
    const F* qt = qb + t * E;
    const F* gt = gb + t * Ev;
    F D = 0;
    for (int64_t c = 0; c < Ev; ++c) D += gt[c] * ob[t * Ev + c];
    // P[t, :n] from the scores and the saved log-sum-exp
    std::fill(p.begin(), p.begin() + n, F(0));
    for (int64_t e = 0; e < E; ++e) {
      const F qe = qt[e] * scale;
      const F* kr = kT.data() + e * S;
      for (int64_t j = 0; j < n; ++j) p[j] += qe * kr[j];
    }
    const F l = lb[t];
    if (l == kNegInf<F>) {
      std::fill(p.begin(), p.begin() + n, std::numeric_limits<F>::quiet_NaN());  // fully masked row
    } else {
      for (int64_t j = 0; j < n; ++j) p[j] = exp_fast(p[j] - l);
      if (kp)
        for (int64_t j = 0; j < n; ++j) p[j] = kp[j] ? F(0) : p[j];
    }
    // dS[t, :n] = P (dP - D), dP = dout[t] . v[:n]; scale folded in
    std::fill(ds.begin(), ds.begin() + n, F(0));
    for (int64_t c = 0; c < Ev; ++c) {
      const F gc = gt[c];
      const F* vr = vT.data() + c * S;
      for (int64_t j = 0; j < n; ++j) ds[j] += gc * vr[j];
    }
    for (int64_t j = 0; j < n; ++j) ds[j] = p[j] * (ds[j] - D) * scale;
    F* dqt = dqb + t * E;
    std::fill(dqt, dqt + E, F(0));
    for (int64_t j = 0; j < n; ++j) {
      const F pj = p[j], dsj = ds[j];
      F* dvr = dvb + j * Ev;
      for (int64_t c = 0; c < Ev; ++c) dvr[c] += pj * gt[c];
      F* dkr = dkb + j * E;
      const F* kr = kb + j * E;
      for (int64_t e = 0; e < E; ++e) {
        dkr[e] += dsj * qt[e];
        dqt[e] += dsj * kr[e];
      }
    }
  }
}

}  // namespace

template <typename F>
void flash_attention_forward(const FlashAttentionArgs& a, const F* q, const F* k, const F* v, F* out, F* lse) {
  const int64_t nqb = (a.T + kBlockQ - 1) / kBlockQ;
  // grain: fork only when there is more than a few blocks' work
  parallel_for(a.B * nqb, 2, [&](int64_t lo, int64_t hi) {
    ForwardScratch<F> w(a.E, a.Ev);
    for (int64_t task = lo; task < hi; ++task) {
      const int64_t b = task / nqb, t0 = (task % nqb) * kBlockQ;
      forward_block(a, q, k, v, out, lse, b, t0, std::min(a.T, t0 + kBlockQ), w);
    }
  });
}

template <typename F>
void flash_attention_backward(const FlashAttentionArgs& a, const F* q, const F* k, const F* v, const F* out,
                              const F* dout, const F* lse, F* dq, F* dk, F* dv) {
  // Batch entries own their dk and dv rows, so threads never write the same
  // element and the sums run in a fixed order (thread-count independent).
  parallel_for(a.B, 1, [&](int64_t lo, int64_t hi) {
    std::vector<F> kT(static_cast<size_t>(a.E * a.S)), vT(static_cast<size_t>(a.Ev * a.S)), p(a.S), ds(a.S);
    for (int64_t b = lo; b < hi; ++b) backward_entry(a, q, k, v, out, dout, lse, dq, dk, dv, b, kT, vT, p, ds);
  });
}

template void flash_attention_forward<float>(const FlashAttentionArgs&, const float*, const float*, const float*,
                                             float*, float*);
template void flash_attention_forward<double>(const FlashAttentionArgs&, const double*, const double*, const double*,
                                              double*, double*);
template void flash_attention_backward<float>(const FlashAttentionArgs&, const float*, const float*, const float*,
                                              const float*, const float*, const float*, float*, float*, float*);
template void flash_attention_backward<double>(const FlashAttentionArgs&, const double*, const double*,
                                               const double*, const double*, const double*, const double*, double*,
                                               double*, double*);

}  // namespace hpdl::cpu
