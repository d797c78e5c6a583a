// PowerSGD (see powersgd.h). The two products with this rank's own M go
// through oneDNN's sgemm; what every rank must compute bit for bit alike
// (the orthogonalization of the summed P, and M_hat = P Q^T from the summed
// Q) is plain loops, so no thread count or kernel choice can make the
// replicas drift apart.
#include "hpdl/dist/powersgd.h"

#include <dnnl.h>

#include <algorithm>
#include <cmath>

#include "hpdl/core/error.h"
#include "hpdl/core/random.h"

namespace hpdl::dist {
namespace {

void gemm(char ta, char tb, int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb,
          float* C, int64_t ldc) {
  const dnnl_status_t st = dnnl_sgemm(ta, tb, M, N, K, 1.0f, A, lda, B, ldb, 0.0f, C, ldc);
  HPDL_CHECK(st == dnnl_success, "PowerSGD: dnnl_sgemm({}x{}x{}) failed with status {}", M, N, K,
             static_cast<int>(st));
}

}  // namespace

bool powersgd_compressible(const Shape& shape, int rank) {
  if (shape.size() < 2 || rank < 1) return false;
  const int64_t n = shape[0], m = numel_of(shape) / std::max<int64_t>(1, n);
  return (n + m) * rank < n * m;
}

void orthogonalize_columns(float* p, int64_t n, int64_t r) {
  for (int64_t k = 0; k < r; ++k) {
    double before = 0;
    for (int64_t a = 0; a < n; ++a) before += double(p[a * r + k]) * double(p[a * r + k]);
    for (int64_t j = 0; j < k; ++j) {
      double dot = 0;
      for (int64_t a = 0; a < n; ++a) dot += double(p[a * r + k]) * double(p[a * r + j]);
      for (int64_t a = 0; a < n; ++a) p[a * r + k] = static_cast<float>(double(p[a * r + k]) - dot * p[a * r + j]);
    }
    double norm = 0;
    for (int64_t a = 0; a < n; ++a) norm += double(p[a * r + k]) * double(p[a * r + k]);
    // Nothing independent left (a gradient of lower rank than r: what remains is rounding), or
    // nothing there at all: the column drops out rather than becoming amplified noise.
    const double inv = norm > 1e-10 * before && norm > 1e-60 ? 1.0 / std::sqrt(norm) : 0.0;
    for (int64_t a = 0; a < n; ++a) p[a * r + k] = static_cast<float>(double(p[a * r + k]) * inv);
  }
}

PowerSgd::PowerSgd(std::vector<Tensor> grads, int rank, uint64_t seed) : rank_(rank) {
  HPDL_CHECK(rank >= 1, "PowerSGD: rank {}; need at least 1", rank);
  Generator gen(seed);
  for (size_t i = 0; i < grads.size(); ++i) {
    Tensor& g = grads[i];
    HPDL_CHECK(g.defined() && g.dtype() == DType::f32 && g.device() == kCPU && g.is_contiguous(), "PowerSGD: "
               "gradient {} must be a contiguous float32 CPU tensor, got {}", i, g.defined() ? g.str() : "none");
    elements_ += g.numel();
    if (!powersgd_compressible(g.shape(), rank)) {
      plain_.push_back(g);
      wire_elements_ += g.numel();
      continue;
    }
    Mat mat;
    mat.grad = g;
    mat.index = static_cast<int64_t>(i);
    mat.n = g.shape()[0];
    mat.m = g.numel() / mat.n;
    mat.err.assign(static_cast<size_t>(g.numel()), 0.0f);
    const Tensor q = Tensor::randn({mat.m, rank}, gen);
    mat.q.assign(q.data<float>(), q.data<float>() + q.numel());
    wire_elements_ += (mat.n + mat.m) * rank;
    mats_.push_back(std::move(mat));
  }
}

int64_t PowerSgd::reduce(Communicator& comm) {
  const int64_t r = rank_;
  const float inv = 1.0f / static_cast<float>(comm.size());
  // Message 1: the plain gradients, then each P = (grad + err) Q.
  int64_t n1 = 0, n2 = 0;
  for (auto& t : plain_) n1 += t.numel();
  for (auto& mt : mats_) n1 += mt.n * r, n2 += mt.m * r;
  buf1_.resize(static_cast<size_t>(n1));
  buf2_.resize(static_cast<size_t>(n2));
  int64_t off = 0;
  for (auto& t : plain_) {
    std::copy(t.data<float>(), t.data<float>() + t.numel(), buf1_.data() + off);
    off += t.numel();
  }
  for (auto& mt : mats_) {
    const float* g = mt.grad.data<float>();
    float* M = mt.err.data();  // M = grad + err, kept in err until M_hat is known
    for (int64_t i = 0; i < mt.n * mt.m; ++i) M[i] += g[i];
    gemm('N', 'N', mt.n, r, mt.m, M, mt.m, mt.q.data(), r, buf1_.data() + off, r);
    off += mt.n * r;
  }
  if (n1 > 0) comm.allreduce(buf1_.data(), n1, DType::f32);
  off = 0;
  for (auto& t : plain_) {
    float* d = t.data<float>();
    for (int64_t i = 0; i < t.numel(); ++i) d[i] = buf1_[static_cast<size_t>(off + i)] * inv;
    off += t.numel();
  }
  // Message 2: each Q = M^T P, P orthogonalized (the same P on every rank).
  int64_t off2 = 0;
  for (auto& mt : mats_) {
    float* P = buf1_.data() + off;
    orthogonalize_columns(P, mt.n, r);
    gemm('T', 'N', mt.m, r, mt.n, mt.err.data(), mt.m, P, r, buf2_.data() + off2, r);
    off += mt.n * r;
    off2 += mt.m * r;
  }
  if (n2 > 0) comm.allreduce(buf2_.data(), n2, DType::f32);
  // M_hat = P Q^T / ranks: the gradient; what it misses stays in err.
  off = 0;
  for (auto& t : plain_) off += t.numel();
  off2 = 0;
  for (auto& mt : mats_) {
    const float* P = buf1_.data() + off;
    float* Q = buf2_.data() + off2;
    for (int64_t i = 0; i < mt.m * r; ++i) Q[i] *= inv;
    // Q^T [r, m], so each row of M_hat is r contiguous axpys (vectorized; the same order everywhere).
    qt_.resize(static_cast<size_t>(mt.m * r));
    for (int64_t b = 0; b < mt.m; ++b)
      for (int64_t k = 0; k < r; ++k) qt_[static_cast<size_t>(k * mt.m + b)] = Q[b * r + k];
    float* g = mt.grad.data<float>();
    float* M = mt.err.data();
    for (int64_t a = 0; a < mt.n; ++a) {
      float* ga = g + a * mt.m;
      float* Ma = M + a * mt.m;
      const float p0 = P[a * r];
      const float* q0 = qt_.data();
      for (int64_t b = 0; b < mt.m; ++b) ga[b] = p0 * q0[b];
      for (int64_t k = 1; k < r; ++k) {
        const float pk = P[a * r + k];
        const float* qk = qt_.data() + k * mt.m;
        for (int64_t b = 0; b < mt.m; ++b) ga[b] += pk * qk[b];
      }
      for (int64_t b = 0; b < mt.m; ++b) Ma[b] -= ga[b];
    }
    std::copy(Q, Q + mt.m * r, mt.q.begin());  // warm start
    off += mt.n * r;
    off2 += mt.m * r;
  }
  return (n1 + n2) * 4;
}

Tensor PowerSgd::q(size_t i) const {
  const Mat& mt = mats_.at(i);
  Tensor t = Tensor::empty({mt.m, static_cast<int64_t>(rank_)});
  std::copy(mt.q.begin(), mt.q.end(), t.data<float>());
  return t;
}

void PowerSgd::set_q(size_t i, const Tensor& q) {
  Mat& mt = mats_.at(i);
  HPDL_CHECK(q.numel() == mt.m * rank_ && q.dtype() == DType::f32, "PowerSGD: saved Q {} does not fit a [{}, {}] "
             "factor (another powersgd_rank?)", q.str(), mt.m, rank_);
  const Tensor c = q.contiguous();
  std::copy(c.data<float>(), c.data<float>() + c.numel(), mt.q.begin());
}

void PowerSgd::set_error(size_t i, const Tensor& err, float scale) {
  Mat& mt = mats_.at(i);
  HPDL_CHECK(err.numel() == mt.n * mt.m && err.dtype() == DType::f32, "PowerSGD: saved error {} does not fit a "
             "[{}, {}] gradient", err.str(), mt.n, mt.m);
  const Tensor c = err.contiguous();
  for (int64_t k = 0; k < c.numel(); ++k) mt.err[static_cast<size_t>(k)] = c.data<float>()[k] * scale;
}

}  // namespace hpdl::dist
