// Fused attention: see flash_attention.h. The loops are written so GCC
// vectorizes the innermost one at -O3 -march=native: scores are computed for a
// block of keys at once from a transposed key block (kT [E, block], an axpy per
// feature), the value accumulation is an axpy over Ev, and float32 uses a
// polynomial exp made of plain arithmetic (libm's expf does not vectorize
// without -ffast-math).
#include "hpdl/backend/cpu/flash_attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "hpdl/backend/cpu/fast_math.h"
#include "hpdl/core/threading.h"

namespace hpdl::cpu {
namespace {

constexpr int64_t kBlockQ = 16;  // query rows per forward task
constexpr int64_t kBlockK = 64;  // keys per block (kT [E, 64] stays in L1 for E <= 64)

// exp of scores minus their row maximum (x <= 0), inline (fast_math.h); a
// masked score (-inf) gives exactly 0.
inline float exp_fast(float x) { return exp_underflow_zero(x); }
inline double exp_fast(double x) { return std::exp(x); }  // float64 is for tests: exact libm

template <typename F>
constexpr F kNegInf = -std::numeric_limits<F>::infinity();

// One thread's scratch for the forward: a transposed key block, and the
// running max, sum and output accumulator of each row of the query block.
template <typename F>
struct ForwardScratch {
  std::vector<F> kT, m, l, acc;
  ForwardScratch(int64_t E, int64_t Ev)
      : kT(static_cast<size_t>(E * kBlockK)), m(kBlockQ), l(kBlockQ), acc(static_cast<size_t>(kBlockQ * Ev)) {}
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
  for (int64_t j0 = 0; j0 < s_end; j0 += kBlockK) {
    const int64_t j1 = std::min(s_end, j0 + kBlockK);
    // kT [E, kBlockK] <- k[b, j0:j1, :]^T, zero past j1: every row loop below
    // runs the full, constant block width (unrolled, in registers).
    if (j1 - j0 < kBlockK) std::fill(w.kT.begin(), w.kT.end(), F(0));
    for (int64_t j = j0; j < j1; ++j)
      for (int64_t e = 0; e < E; ++e) w.kT[e * kBlockK + (j - j0)] = kb[j * E + e];
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = (a.causal ? std::min(j1, t + 1) : j1) - j0;  // keys j0 .. j0+n-1 count
      if (n <= 0) continue;
      // s [kBlockK] = (q[t] * scale) . k[j0 + jj]
      const F* qt = q + (b * T + t) * E;
      F s[kBlockK] = {};
      for (int64_t e = 0; e < E; ++e) {
        const F qe = qt[e] * scale;
        const F* kr = w.kT.data() + e * kBlockK;
        for (int64_t jj = 0; jj < kBlockK; ++jj) s[jj] += qe * kr[jj];
      }
      for (int64_t jj = 0; jj < kBlockK; ++jj) s[jj] = jj < n ? s[jj] : kNegInf<F>;
      if (kp)
        for (int64_t jj = 0; jj < n; ++jj) s[jj] = kp[j0 + jj] ? kNegInf<F> : s[jj];
      // Row maximum and sum over 8 lanes (independent chains; they vectorize).
      F lane[8];
      std::fill(lane, lane + 8, kNegInf<F>);
      for (int64_t jj = 0; jj < kBlockK; jj += 8)
        for (int l = 0; l < 8; ++l) lane[l] = std::max(lane[l], s[jj + l]);
      F bm = kNegInf<F>;
      for (int l = 0; l < 8; ++l) bm = std::max(bm, lane[l]);
      if (bm == kNegInf<F>) continue;  // every key of this block is masked for row t
      // Online softmax: rescale what was summed under the old maximum.
      const int64_t r = t - t0;
      const F mn = std::max(w.m[r], bm);
      const F corr = exp_fast(w.m[r] - mn);  // 0 on the first block that counts (m = -inf)
      for (int64_t jj = 0; jj < kBlockK; ++jj) s[jj] = exp_fast(s[jj] - mn);  // masked: 0
      std::fill(lane, lane + 8, F(0));
      for (int64_t jj = 0; jj < kBlockK; jj += 8)
        for (int l = 0; l < 8; ++l) lane[l] += s[jj + l];
      F sum = 0;
      for (int l = 0; l < 8; ++l) sum += lane[l];
      w.l[r] = w.l[r] * corr + sum;
      w.m[r] = mn;
      F* acc = w.acc.data() + r * Ev;
      if (corr != F(1))
        for (int64_t c = 0; c < Ev; ++c) acc[c] *= corr;
      // acc += p . v, four keys per pass: one read-modify-write of acc per four keys.
      int64_t jj = 0;
      for (; jj + 4 <= n; jj += 4) {
        const F p0 = s[jj], p1 = s[jj + 1], p2 = s[jj + 2], p3 = s[jj + 3];
        const F* v0 = vb + (j0 + jj) * Ev;
        for (int64_t c = 0; c < Ev; ++c) acc[c] += (p0 * v0[c] + p1 * v0[Ev + c]) + (p2 * v0[2 * Ev + c] + p3 * v0[3 * Ev + c]);
      }
      for (; jj < n; ++jj) {
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

// Scratch of one thread for the backward: k and v transposed and zero-padded
// to Sp = S rounded up to kBlockK columns, which keys count, and P and dS of
// one block of query rows.
template <typename F>
struct BackwardScratch {
  int64_t Sp;
  std::vector<F> kT, vT, P, dS;
  std::vector<uint8_t> keep;
  BackwardScratch(const FlashAttentionArgs& a)
      : Sp((a.S + kBlockK - 1) / kBlockK * kBlockK), kT(static_cast<size_t>(a.E * Sp)), vT(static_cast<size_t>(a.Ev * Sp)),
        P(static_cast<size_t>(kBlockQ * Sp)), dS(static_cast<size_t>(kBlockQ * Sp)), keep(static_cast<size_t>(Sp)) {}
};

// Batch entry b of the backward (FlashAttention-2, Algorithm 2), a block of
// query rows at a time: with P = exp(S - lse) recomputed from the scores and
// D_t = sum_c dout[t, c] out[t, c] = sum_s P[t, s] dP[t, s],
//   dP[t, s] = dout[t] . v[s]          dS[t, s] = P[t, s] (dP[t, s] - D_t)
//   dq[t] = scale sum_s dS[t, s] k[s]  dk[s] += scale sum_t dS[t, s] q[t]
//   dv[s] += sum_t P[t, s] dout[t]
// P and dS of the block ([kBlockQ, Sp], never [T, S]) feed the dk and dv sums,
// four query rows per read-modify-write of a dk or dv row.
template <typename F>
void backward_entry(const FlashAttentionArgs& a, const F* q, const F* k, const F* v, const F* out, const F* dout,
                    const F* lse, F* dq, F* dk, F* dv, int64_t b, BackwardScratch<F>& w) {
  const int64_t T = a.T, S = a.S, E = a.E, Ev = a.Ev, Sp = w.Sp;
  const F scale = static_cast<F>(a.scale);
  const uint8_t* kp = a.key_padding ? a.key_padding + (b / a.kp_group) * S : nullptr;
  const F *qb = q + b * T * E, *kb = k + b * S * E, *vb = v + b * S * Ev;
  const F *ob = out + b * T * Ev, *gb = dout + b * T * Ev, *lb = lse + b * T;
  F *dqb = dq + b * T * E, *dkb = dk + b * S * E, *dvb = dv + b * S * Ev;
  for (int64_t j = 0; j < Sp; ++j) w.keep[j] = j < S && !(kp && kp[j]);
  for (int64_t j = 0; j < S; ++j) {
    for (int64_t e = 0; e < E; ++e) w.kT[e * Sp + j] = kb[j * E + e];
    for (int64_t c = 0; c < Ev; ++c) w.vT[c * Sp + j] = vb[j * Ev + c];
  }
  for (int64_t j = S; j < Sp; ++j) {
    for (int64_t e = 0; e < E; ++e) w.kT[e * Sp + j] = 0;
    for (int64_t c = 0; c < Ev; ++c) w.vT[c * Sp + j] = 0;
  }
  std::fill(dkb, dkb + S * E, F(0));
  std::fill(dvb, dvb + S * Ev, F(0));
  for (int64_t t0 = 0; t0 < T; t0 += kBlockQ) {
    const int64_t t1 = std::min(T, t0 + kBlockQ);
    const int64_t nmax = a.causal ? std::min(S, t1) : S;  // keys any row of the block sees
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = a.causal ? t + 1 : S;
      const F* qt = qb + t * E;
      const F* gt = gb + t * Ev;
      F D = 0;
      for (int64_t c = 0; c < Ev; ++c) D += gt[c] * ob[t * Ev + c];
      const F l = lb[t];
      const bool all_masked = l == kNegInf<F>;  // NaN through its P, as the composed softmax
      F* pr = w.P.data() + (t - t0) * Sp;
      F* dr = w.dS.data() + (t - t0) * Sp;
      for (int64_t j0 = 0; j0 < nmax; j0 += kBlockK) {
        // scores and dP of keys j0 .. j0 + kBlockK in registers (constant width)
        F sc[kBlockK] = {}, dp[kBlockK] = {};
        for (int64_t e = 0; e < E; ++e) {
          const F qe = qt[e] * scale;
          const F* kr = w.kT.data() + e * Sp + j0;
          for (int64_t jj = 0; jj < kBlockK; ++jj) sc[jj] += qe * kr[jj];
        }
        for (int64_t c = 0; c < Ev; ++c) {
          const F gc = gt[c];
          const F* vr = w.vT.data() + c * Sp + j0;
          for (int64_t jj = 0; jj < kBlockK; ++jj) dp[jj] += gc * vr[jj];
        }
        const uint8_t* keep = w.keep.data() + j0;
        for (int64_t jj = 0; jj < kBlockK; ++jj) sc[jj] = exp_fast(sc[jj] - l);
        for (int64_t jj = 0; jj < kBlockK; ++jj) {
          const bool valid = keep[jj] && j0 + jj < n;
          const F pj = all_masked ? (j0 + jj < n ? std::numeric_limits<F>::quiet_NaN() : F(0)) : (valid ? sc[jj] : F(0));
          pr[j0 + jj] = pj;
          dr[j0 + jj] = pj * (dp[jj] - D) * scale;
        }
      }
      // dq[t] = sum_j dS[j] k[j], four keys per read-modify-write of the dq row
      F* dqt = dqb + t * E;
      std::fill(dqt, dqt + E, F(0));
      int64_t j = 0;
      for (; j + 4 <= nmax; j += 4) {
        const F d0 = dr[j], d1 = dr[j + 1], d2 = dr[j + 2], d3 = dr[j + 3];
        const F* k0 = kb + j * E;
        for (int64_t e = 0; e < E; ++e)
          dqt[e] += (d0 * k0[e] + d1 * k0[E + e]) + (d2 * k0[2 * E + e] + d3 * k0[3 * E + e]);
      }
      for (; j < nmax; ++j)
        for (int64_t e = 0; e < E; ++e) dqt[e] += dr[j] * kb[j * E + e];
    }
    // dv[j] += sum_t P[t, j] dout[t], dk[j] += sum_t dS[t, j] q[t], four rows at a time
    for (int64_t j = 0; j < nmax; ++j) {
      F* dvr = dvb + j * Ev;
      F* dkr = dkb + j * E;
      int64_t t = t0;
      for (; t + 4 <= t1; t += 4) {
        const int64_t r = t - t0;
        const F p0 = w.P[r * Sp + j], p1 = w.P[(r + 1) * Sp + j], p2 = w.P[(r + 2) * Sp + j], p3 = w.P[(r + 3) * Sp + j];
        const F s0 = w.dS[r * Sp + j], s1 = w.dS[(r + 1) * Sp + j], s2 = w.dS[(r + 2) * Sp + j],
                s3 = w.dS[(r + 3) * Sp + j];
        const F* g0 = gb + t * Ev;
        const F* q0 = qb + t * E;
        for (int64_t c = 0; c < Ev; ++c)
          dvr[c] += (p0 * g0[c] + p1 * g0[Ev + c]) + (p2 * g0[2 * Ev + c] + p3 * g0[3 * Ev + c]);
        for (int64_t e = 0; e < E; ++e)
          dkr[e] += (s0 * q0[e] + s1 * q0[E + e]) + (s2 * q0[2 * E + e] + s3 * q0[3 * E + e]);
      }
      for (; t < t1; ++t) {
        const int64_t r = t - t0;
        const F pj = w.P[r * Sp + j], sj = w.dS[r * Sp + j];
        for (int64_t c = 0; c < Ev; ++c) dvr[c] += pj * gb[t * Ev + c];
        for (int64_t e = 0; e < E; ++e) dkr[e] += sj * qb[t * E + e];
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
    BackwardScratch<F> w(a);
    for (int64_t b = lo; b < hi; ++b) backward_entry(a, q, k, v, out, dout, lse, dq, dk, dv, b, w);
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
