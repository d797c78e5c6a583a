// Every Backend method of the CUDA backend against the reference backend on
// the CPU: inputs are drawn on the host, copied to the GPU, run there into
// NaN-poisoned outputs, copied back and compared within float32 or float64
// tolerances. Without a GPU every test is skipped with "no CUDA device".
// To add a case: build host inputs, run the reference, run the GPU, expect_close.
#ifdef HPDL_HAVE_CUDA

#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <tuple>

#include "hpdl/backend/backend.h"
#include "hpdl/backend/cuda/cuda.h"
#include "hpdl/core/random.h"

namespace hpdl {
namespace {

const Device kGPU{DeviceType::cuda, 0};

Backend& ref() { return reference_backend(); }
Backend& gpu() { return backend_for(kGPU); }

Tensor up(const Tensor& h) {
  Tensor d = Tensor::empty(h.shape(), h.dtype(), kGPU);
  d.copy_(h);
  return d;
}
Tensor down(const Tensor& d) {
  Tensor h = Tensor::empty(d.shape(), d.dtype());
  h.copy_(d);
  return h;
}
Tensor randt(const Shape& s, uint64_t seed, DType t = DType::f32, double lo = -1, double hi = 1) {
  Generator g(seed);
  return Tensor::rand(s, g, lo, hi, t);
}
// Outputs start as NaN so an element the kernel never wrote fails the comparison.
Tensor poisoned(const Shape& s, DType t = DType::f32) { return Tensor::full(s, NAN, t, kGPU); }
Tensor host_out(const Shape& s, DType t = DType::f32) { return Tensor::full(s, NAN, t); }
Tensor undefined() { return Tensor(); }

double rtol_for(DType t) { return t == DType::f64 ? 1e-10 : 2e-5; }
double atol_for(DType t) { return t == DType::f64 ? 1e-12 : 2e-6; }

// |gpu - ref| <= atol + rtol * |ref| elementwise; prints the worst element.
void expect_close(const Tensor& on_gpu, const Tensor& reference, const std::string& what, double rtol = -1,
                  double atol = -1) {
  if (rtol < 0) rtol = rtol_for(reference.dtype());
  if (atol < 0) atol = atol_for(reference.dtype());
  ASSERT_EQ(on_gpu.shape(), reference.shape()) << what;
  std::vector<double> a = (on_gpu.device().is_cuda() ? down(on_gpu) : on_gpu).to_vector<double>();
  std::vector<double> b = reference.to_vector<double>();
  int64_t bad = 0, worst = -1;
  double worst_excess = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    double tol = atol + rtol * std::abs(b[i]);
    double err = std::abs(a[i] - b[i]);
    bool ok = err <= tol || (std::isinf(a[i]) && a[i] == b[i]);
    if (!ok) {
      ++bad;
      double excess = std::isnan(err) ? INFINITY : err / tol;
      if (worst < 0 || excess > worst_excess) worst = static_cast<int64_t>(i), worst_excess = excess;
    }
  }
  EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << a.size() << " elements differ; worst at " << worst
                    << ": gpu " << (worst >= 0 ? a[worst] : 0) << " vs reference " << (worst >= 0 ? b[worst] : 0);
}

class CudaBackendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!cuda::available()) GTEST_SKIP() << "no CUDA device";
  }
};

// ---------------------------------------------------------------- registry, allocator

TEST_F(CudaBackendTest, RegisteredAndHonestAboutDtypes) {
  EXPECT_STREQ(gpu().name(), "cuda");
  for (int op = 0; op <= static_cast<int>(OpKind::optimizer); ++op) {
    EXPECT_TRUE(gpu().supports(static_cast<OpKind>(op), DType::f32));
    EXPECT_TRUE(gpu().supports(static_cast<OpKind>(op), DType::f64));
  }
  EXPECT_TRUE(gpu().supports(OpKind::copy, DType::bf16));
  // bfloat16 where autocast keeps activations in it; float32 for the rest.
  for (OpKind k : {OpKind::unary, OpKind::binary, OpKind::reduce, OpKind::matmul, OpKind::conv2d, OpKind::pool2d,
                   OpKind::batchnorm})
    EXPECT_TRUE(gpu().supports(k, DType::bf16)) << static_cast<int>(k);
  for (OpKind k : {OpKind::layernorm, OpKind::softmax, OpKind::gather, OpKind::optimizer})
    EXPECT_FALSE(gpu().supports(k, DType::bf16)) << static_cast<int>(k);
  Tensor xi = Tensor::zeros({4}, DType::i64, kGPU);
  EXPECT_THROW(gpu().unary(UnaryOp::exp, xi, xi, 0), Error);
}

TEST_F(CudaBackendTest, CachingAllocatorReusesFreedBlocks) {
  { Tensor t = Tensor::empty({1000}, DType::f32, kGPU); }
  cuda::AllocatorStats before = cuda::allocator_stats();
  { Tensor t = Tensor::empty({1000}, DType::f32, kGPU); }
  cuda::AllocatorStats after = cuda::allocator_stats();
  EXPECT_EQ(after.device_mallocs, before.device_mallocs);
  EXPECT_GT(after.cache_hits, before.cache_hits);
  EXPECT_GT(after.cached_bytes, 0u);
}

// The peak of allocated bytes (torch.cuda.max_memory_allocated's counterpart): it keeps the high
// mark after the tensor is freed, and reset_peak_memory() lowers it to what is allocated now.
TEST_F(CudaBackendTest, PeakAllocatedBytesAndItsReset) {
  cuda::reset_peak_memory();
  const size_t base = cuda::allocator_stats().allocated_bytes;
  EXPECT_EQ(cuda::allocator_stats().peak_allocated_bytes, base);
  { Tensor t = Tensor::empty({16 << 20}, DType::f32, kGPU); }  // 64 MiB
  const cuda::AllocatorStats after = cuda::allocator_stats();
  EXPECT_EQ(after.allocated_bytes, base);
  EXPECT_GE(after.peak_allocated_bytes, base + (size_t{64} << 20));
  cuda::reset_peak_memory();
  EXPECT_EQ(cuda::allocator_stats().peak_allocated_bytes, base);
}

// Pinned host memory: an upload from it is queued without a stream synchronization and holds its
// source block until done, so the caller may drop the tensor at once and a new pinned tensor of the
// same size never gets a block that a queued copy still reads.
TEST_F(CudaBackendTest, PinnedUploadsAreAsynchronousAndHoldTheirSource) {
  const int64_t n = 4 << 20;  // 16 MiB: long enough a copy to be in flight when the host moves on
  Tensor h = cuda::pinned_empty({n}, DType::f32);
  EXPECT_TRUE(cuda::is_pinned(h));
  EXPECT_TRUE(h.device().is_cpu());
  EXPECT_FALSE(cuda::is_pinned(Tensor::empty({n})));
  float* p = h.data<float>();
  for (int64_t i = 0; i < n; ++i) p[i] = static_cast<float>(i % 1000);
  const cuda::PinnedStats before = cuda::pinned_stats();
  Tensor d = h.to(kGPU);
  EXPECT_EQ(cuda::pinned_stats().async_uploads, before.async_uploads + 1);
  h = Tensor();  // dropped while the copy may still run
  Tensor h2 = cuda::pinned_empty({n}, DType::f32);
  float* p2 = h2.data<float>();
  for (int64_t i = 0; i < n; ++i) p2[i] = -1.0f;  // would corrupt d if it were the held block
  Tensor back = d.to(kCPU);
  const float* b = back.data<float>();
  for (int64_t i = 0; i < n; ++i)
    ASSERT_EQ(b[i], static_cast<float>(i % 1000)) << "element " << i;
  cuda::synchronize();
  EXPECT_EQ(cuda::pinned_stats().in_flight, 0);
  // A view of a pinned block (a DataLoader batch) and a converting upload are asynchronous too.
  Tensor v = h2.slice(0, 8, 16);
  const int64_t async = cuda::pinned_stats().async_uploads;
  Tensor dv = v.to(kGPU), dc = Tensor::empty({8}, DType::f64, kGPU);
  gpu().copy(v, dc);
  EXPECT_EQ(cuda::pinned_stats().async_uploads, async + 2);
  EXPECT_EQ(dv.to(kCPU).to_vector<float>(), std::vector<float>(8, -1.0f));
  EXPECT_EQ(dc.to(kCPU).to_vector<double>(), std::vector<double>(8, -1.0));
  // Freed blocks come back from the cache once no upload holds them.
  h2 = v = Tensor();
  cuda::synchronize();
  const cuda::PinnedStats s0 = cuda::pinned_stats();
  Tensor h3 = cuda::pinned_empty({n}, DType::f32);
  EXPECT_EQ(cuda::pinned_stats().host_allocs, s0.host_allocs);
  EXPECT_EQ(cuda::pinned_stats().cache_hits, s0.cache_hits + 1);
  // Pageable memory keeps the synchronous path.
  Tensor plain = Tensor::ones({16});
  plain.to(kGPU);
  EXPECT_EQ(cuda::pinned_stats().async_uploads, s0.async_uploads);
}

// ---------------------------------------------------------------- memory

TEST_F(CudaBackendTest, CopyRoundTripsEveryDtype) {
  Tensor src = randt({5, 7}, 1, DType::f64, -100, 100);
  for (DType t : {DType::f32, DType::f64, DType::bf16, DType::i64, DType::i32, DType::u8}) {
    Tensor h = Tensor::empty({5, 7}, t);
    ref().copy(t == DType::u8 ? randt({5, 7}, 2, DType::f64, 0, 255) : src, h);
    Tensor back = down(up(h));
    Tensor h64 = host_out({5, 7}, DType::f64), b64 = host_out({5, 7}, DType::f64);
    ref().copy(h, h64);
    ref().copy(back, b64);
    expect_close(b64, h64, std::string("round trip ") + dtype_name(t), 0, 0);
  }
}

TEST_F(CudaBackendTest, CopyStridedViewsAndConversions) {
  Tensor x = randt({3, 4, 5}, 3);
  Tensor dx = up(x);
  // A permuted device view [5, 3, 4] copied (and converted to float64) on the device.
  Shape ps{5, 3, 4};
  Strides pst{x.strides()[2], x.strides()[0], x.strides()[1]};
  Tensor hv = make_view(x, ps, pst, 0), dv = make_view(dx, ps, pst, 0);
  Tensor want = host_out(ps, DType::f64), got = poisoned(ps, DType::f64);
  ref().copy(hv, want);
  gpu().copy(dv, got);
  expect_close(got, want, "device permuted copy to float64", 0, 0);
  // Download of a strided device view; upload into a strided device view.
  expect_close(down(dv), make_view(x, ps, pst, 0).contiguous(), "download of a view", 0, 0);
  Tensor target = Tensor::zeros({4, 3}, DType::f32, kGPU);
  Tensor target_t = make_view(target, {3, 4}, {1, 3}, 0);  // transposed view
  Tensor src = randt({4, 3}, 4);
  Tensor src_t = make_view(src, {3, 4}, {1, 3}, 0);
  target_t.copy_(src_t);
  expect_close(target, src, "upload strided into strided", 0, 0);
  // Reshaping copy (same numel) and float32 -> bfloat16 rounding as on the host.
  Tensor r = poisoned({6, 10});
  gpu().copy(dx, r);
  expect_close(r, make_view(x, {6, 10}, {10, 1}, 0), "reshaping copy", 0, 0);
  Tensor hb = Tensor::empty({3, 4, 5}, DType::bf16), db = Tensor::empty({3, 4, 5}, DType::bf16, kGPU);
  ref().copy(x, hb);
  gpu().copy(dx, db);
  Tensor hb32 = host_out({3, 4, 5}), db32 = poisoned({3, 4, 5});
  ref().copy(hb, hb32);
  gpu().copy(db, db32);
  expect_close(db32, hb32, "float32 -> bfloat16 rounding", 0, 0);
}

TEST_F(CudaBackendTest, FillContiguousAndStrided) {
  for (DType t : {DType::f32, DType::f64, DType::i64, DType::bf16}) {
    Tensor d = Tensor::zeros({6, 8}, t, kGPU), h = Tensor::zeros({6, 8}, t);
    gpu().fill(make_view(d, {6, 4}, {8, 2}, 1), 2.5);  // every other column
    ref().fill(make_view(h, {6, 4}, {8, 2}, 1), 2.5);
    Tensor d64 = Tensor::empty({6, 8}, DType::f64), h64 = Tensor::empty({6, 8}, DType::f64);
    d64.copy_(d);
    ref().copy(h, h64);
    expect_close(d64, h64, std::string("strided fill ") + dtype_name(t), 0, 0);
  }
}

TEST_F(CudaBackendTest, RandomMatchesTheReferenceStream) {
  for (DType t : {DType::f32, DType::f64}) {
    Tensor hu = host_out({1000}, t), du = poisoned({1000}, t);
    ref().random_uniform(hu, 42, 17, -2, 3);
    gpu().random_uniform(du, 42, 17, -2, 3);
    // Same counters, same 64-bit integers; low + range * u may differ in the last bit of the double
    // where the host compiler fuses it into an FMA (-march=native) and the GPU kernel does not: about
    // one ulp of the largest intermediate, absolute.
    expect_close(du, hu, "uniform (same counters, same numbers)", t == DType::f64 ? 4e-16 : 1.2e-7, 2e-15);  // one ulp of |low| + range
    Tensor hn = host_out({1001}, t), dn = poisoned({1001}, t);
    ref().random_normal(hn, 7, 5, 1, 0.5);
    gpu().random_normal(dn, 7, 5, 1, 0.5);
    // log and cos may differ from glibc's in the last bit.
    expect_close(dn, hn, "normal", t == DType::f64 ? 1e-14 : 1e-6, 1e-14);
  }
}

// ---------------------------------------------------------------- elementwise

TEST_F(CudaBackendTest, UnaryEveryOpContiguousAndStrided) {
  for (DType t : {DType::f32, DType::f64}) {
    for (int o = 0; o <= static_cast<int>(UnaryOp::erf); ++o) {
      UnaryOp op = static_cast<UnaryOp>(o);
      bool positive = op == UnaryOp::log || op == UnaryOp::sqrt || op == UnaryOp::rsqrt ||
                      op == UnaryOp::pow_scalar || op == UnaryOp::reciprocal;
      Tensor x = randt({6, 9}, 10 + o, t, positive ? 0.1 : -3, positive ? 3 : 3);
      Tensor xt = make_view(x, {9, 6}, {1, 9}, 0);  // transposed input
      Tensor dx = up(x);
      Tensor dxt = make_view(dx, {9, 6}, {1, 9}, 0);
      double alpha = op == UnaryOp::pow_scalar ? 1.7 : 0.3;
      Tensor want = host_out({9, 6}, t), got = poisoned({9, 6}, t);
      ref().unary(op, xt, want, alpha);
      gpu().unary(op, dxt, got, alpha);
      expect_close(got, want, std::string(unary_name(op)) + " " + dtype_name(t));
    }
  }
}

TEST_F(CudaBackendTest, BinaryEveryOpWithBroadcasting) {
  for (DType t : {DType::f32, DType::f64}) {
    for (int o = 0; o <= static_cast<int>(BinaryOp::add_relu); ++o) {
      BinaryOp op = static_cast<BinaryOp>(o);
      bool positive = op == BinaryOp::pow;
      Tensor a = randt({4, 1, 5}, 30 + o, t, positive ? 0.1 : -2, 2);
      Tensor b = randt({1, 3}, 60 + o, t, -2, 2);  // transposed to [3, 1] below: strided and broadcast
      if (op == BinaryOp::eq) ref().copy(make_view(a, {1, 3}, {0, 1}, 0), b);  // some equal pairs
      Tensor bt = make_view(b, {3, 1}, {1, 3}, 0);
      Tensor da = up(a), db = up(b);
      Tensor dbt = make_view(db, {3, 1}, {1, 3}, 0);
      Tensor want = host_out({4, 3, 5}, t), got = poisoned({4, 3, 5}, t);
      ref().binary(op, a, bt, want, 0.1);
      gpu().binary(op, da, dbt, got, 0.1);
      expect_close(got, want, std::string(binary_name(op)) + " " + dtype_name(t));
    }
  }
}

// Dense operands whose size is a multiple of the vector width take the 16-byte path (vectorizable()
// in kernels.cu); the cases above take the strided one. Both must agree with the reference.
TEST_F(CudaBackendTest, DenseOperandsTakeTheVectorPath) {
  for (DType t : {DType::f32, DType::f64, DType::bf16}) {
    const DType ht = t == DType::bf16 ? DType::f32 : t;  // host reference dtype
    auto host = [&](const Shape& s, uint64_t seed, double lo, double hi) {
      Tensor h = randt(s, seed, ht, lo, hi);
      return t == DType::bf16 ? h.to(DType::bf16).to(DType::f32) : h;
    };
    auto dev = [&](const Tensor& h) { return up(h.to(t)); };
    const double rtol = t == DType::bf16 ? 1.2e-2 : rtol_for(t), atol = t == DType::bf16 ? 1e-6 : atol_for(t);
    for (int o = 0; o <= static_cast<int>(UnaryOp::erf); ++o) {
      UnaryOp op = static_cast<UnaryOp>(o);
      bool positive = op == UnaryOp::log || op == UnaryOp::sqrt || op == UnaryOp::rsqrt ||
                      op == UnaryOp::pow_scalar || op == UnaryOp::reciprocal;
      Tensor x = host({8, 64}, 90 + o, positive ? 0.1 : -3, 3);
      Tensor want = host_out({8, 64}, ht), got = poisoned({8, 64}, t);
      ref().unary(op, x, want, 0.3);
      gpu().unary(op, dev(x), got, 0.3);
      expect_close(down(got).to(ht), want, std::string("dense ") + unary_name(op) + " " + dtype_name(t), rtol, atol);
    }
    for (int o = 0; o <= static_cast<int>(BinaryOp::add_relu); ++o) {
      BinaryOp op = static_cast<BinaryOp>(o);
      Tensor a = host({8, 64}, 120 + o, op == BinaryOp::pow ? 0.1 : -2, 2), b = host({8, 64}, 150 + o, -2, 2);
      Tensor want = host_out({8, 64}, ht), got = poisoned({8, 64}, t);
      ref().binary(op, a, b, want, 0.1);
      gpu().binary(op, dev(a), dev(b), got, 0.1);
      expect_close(down(got).to(ht), want, std::string("dense ") + binary_name(op) + " " + dtype_name(t), rtol,
                   t == DType::bf16 ? 1e-2 : atol);
    }
  }
}

TEST_F(CudaBackendTest, Axpby) {
  Tensor x = randt({1000}, 5), y = randt({1000}, 6);
  Tensor want = host_out({1000}), got = poisoned({1000});
  ref().axpby(0.5, x, -2, y, want);
  gpu().axpby(0.5, up(x), -2, up(y), got);
  expect_close(got, want, "axpby");
}

// ---------------------------------------------------------------- reductions

TEST_F(CudaBackendTest, ReduceEveryOpOverAxisSets) {
  const std::vector<std::vector<int>> axis_sets = {{0}, {1}, {3}, {0, 2}, {1, 2, 3}, {0, 1, 2, 3}};
  for (DType t : {DType::f32, DType::f64}) {
    Tensor x = randt({3, 4, 5, 70}, 7, t);
    Tensor dx = up(x);
    for (const auto& axes : axis_sets) {
      Shape os = x.shape();
      for (int a : axes) os[a] = 1;
      for (ReduceOp op : {ReduceOp::sum, ReduceOp::mean, ReduceOp::max, ReduceOp::min, ReduceOp::sum_square}) {
        Tensor want = host_out(os, t), got = poisoned(os, t);
        ref().reduce(op, x, axes, want);
        gpu().reduce(op, dx, axes, got);
        expect_close(got, want, fmt::format("{} over {} {}", reduce_name(op), shape_str(Shape(axes.begin(), axes.end())),
                                            dtype_name(t)),
                     t == DType::f64 ? 1e-12 : 1e-5, 1e-6);
      }
      if (axes.size() == 1) {
        Tensor want = Tensor::full(os, -1, DType::i64), got = Tensor::full(os, -1, DType::i64, kGPU);
        ref().reduce(ReduceOp::argmax, x, axes, want);
        gpu().reduce(ReduceOp::argmax, dx, axes, got);
        expect_close(got, want, fmt::format("argmax over {}", axes[0]), 0, 0);
      }
    }
  }
  // A long row (block reduction) and a permuted, non-contiguous input.
  Tensor big = randt({2, 300000}, 8);
  Tensor want = host_out({2, 1}), got = poisoned({2, 1});
  ref().reduce(ReduceOp::sum, big, {1}, want);
  gpu().reduce(ReduceOp::sum, up(big), {1}, got);
  expect_close(got, want, "sum of 300000", 1e-5, 1e-4);
  for (ReduceOp op : {ReduceOp::max, ReduceOp::min, ReduceOp::mean, ReduceOp::sum_square}) {
    Tensor w = host_out({2, 1}), g = poisoned({2, 1});
    ref().reduce(op, big, {1}, w);
    gpu().reduce(op, up(big), {1}, g);
    expect_close(g, w, std::string(reduce_name(op)) + " of 300000 (two passes)", 1e-5, 1e-6);
  }
  Tensor wa = Tensor::full({2, 1}, -1, DType::i64), ga = Tensor::full({2, 1}, -1, DType::i64, kGPU);
  ref().reduce(ReduceOp::argmax, big, {1}, wa);
  gpu().reduce(ReduceOp::argmax, up(big), {1}, ga);
  expect_close(ga, wa, "argmax of 300000 (two passes)", 0, 0);
  Tensor x = randt({8, 6}, 9);
  Tensor xt = make_view(x, {6, 8}, {1, 6}, 0), dxt = make_view(up(x), {6, 8}, {1, 6}, 0);
  Tensor w2 = host_out({6, 1}), g2 = poisoned({6, 1});
  ref().reduce(ReduceOp::max, xt, {1}, w2);
  gpu().reduce(ReduceOp::max, dxt, {1}, g2);
  expect_close(g2, w2, "max over a transposed view", 0, 0);
}

// ---------------------------------------------------------------- matmul

TEST_F(CudaBackendTest, MatmulTransposesBatchesAndBroadcast) {
  const int64_t M = 17, K = 23, N = 9, B = 3;
  for (DType t : {DType::f32, DType::f64}) {
    for (int ta = 0; ta < 2; ++ta)
      for (int tb = 0; tb < 2; ++tb)
        for (int64_t batch_a : {int64_t{0}, int64_t{1}, B}) {  // 0: rank 2 everywhere; 1: a's batch of 1 broadcasts
          bool batched = batch_a != 0;
          Shape as = ta ? Shape{K, M} : Shape{M, K}, bs = tb ? Shape{N, K} : Shape{K, N}, cs{M, N};
          if (batched) {
            as.insert(as.begin(), batch_a);
            bs.insert(bs.begin(), B);
            cs.insert(cs.begin(), B);
          }
          Tensor a = randt(as, 100 + ta, t), b = randt(bs, 200 + tb, t), c = randt(cs, 300, t);
          Tensor want = c.clone(), got = up(c);
          ref().matmul(a, b, want, ta, tb, 0.5, 0.25);
          gpu().matmul(up(a), up(b), got, ta, tb, 0.5, 0.25);
          expect_close(got, want, fmt::format("matmul ta={} tb={} batch_a={} {}", ta, tb, batch_a, dtype_name(t)),
                       t == DType::f64 ? 1e-12 : 1e-5, 1e-5);
        }
  }
}

// ---------------------------------------------------------------- convolution

struct ConvCase {
  int64_t N, C, H, W, K, R, S;
  Conv2dParams p;
};

// Every case in float32 and float64, the three directions against the reference.
void conv_cases_against_reference(const std::string& tag) {
  Conv2dParams strided;
  strided.stride_h = 2, strided.stride_w = 1, strided.pad_h = 0, strided.pad_w = 2;
  strided.dilation_h = 2, strided.dilation_w = 1, strided.groups = 2;
  Conv2dParams same;
  same.pad_h = same.pad_w = 1;
  const std::vector<ConvCase> cases = {{2, 4, 9, 8, 6, 3, 3, same}, {3, 4, 11, 7, 6, 3, 2, strided},
                                       {4, 16, 14, 14, 32, 1, 1, Conv2dParams{}}};
  for (DType t : {DType::f32, DType::f64}) {
    for (const auto& c : cases) {
      const auto& p = c.p;
      int64_t P = Conv2dParams::out_size(c.H, c.R, p.stride_h, p.pad_h, p.dilation_h);
      int64_t Q = Conv2dParams::out_size(c.W, c.S, p.stride_w, p.pad_w, p.dilation_w);
      std::string name = fmt::format("{} conv x[{},{},{},{}] w[{},{},{},{}] groups {} {}", tag, c.N, c.C, c.H, c.W,
                                     c.K, c.C / p.groups, c.R, c.S, p.groups, dtype_name(t));
      Tensor x = randt({c.N, c.C, c.H, c.W}, 11, t), w = randt({c.K, c.C / p.groups, c.R, c.S}, 12, t);
      Tensor bias = randt({c.K}, 13, t), dy = randt({c.N, c.K, P, Q}, 14, t);
      double rtol = t == DType::f64 ? 1e-11 : 1e-4, atol = t == DType::f64 ? 1e-12 : 1e-5;

      Tensor want = host_out({c.N, c.K, P, Q}, t), got = poisoned({c.N, c.K, P, Q}, t);
      ref().conv2d_forward(x, w, bias, want, p);
      gpu().conv2d_forward(up(x), up(w), up(bias), got, p);
      expect_close(got, want, name + " forward", rtol, atol);

      Tensor wdx = host_out(x.shape(), t), gdx = poisoned(x.shape(), t);
      ref().conv2d_backward_data(dy, w, wdx, p);
      gpu().conv2d_backward_data(up(dy), up(w), gdx, p);
      expect_close(gdx, wdx, name + " backward data", rtol, atol);

      Tensor wdw = host_out(w.shape(), t), gdw = poisoned(w.shape(), t);
      Tensor wdb = host_out({c.K}, t), gdb = poisoned({c.K}, t);
      ref().conv2d_backward_weights(x, dy, wdw, wdb, p);
      gpu().conv2d_backward_weights(up(x), up(dy), gdw, gdb, p);
      expect_close(gdw, wdw, name + " backward weights", rtol, atol);
      expect_close(gdb, wdb, name + " backward bias", rtol, atol);
    }
  }
}

// Sets one of the backend's switches for a scope and restores it after.
template <bool (*Get)(), void (*Set)(bool)>
class SwitchScope {
 public:
  explicit SwitchScope(bool on) : prev_(Get()) { Set(on); }
  ~SwitchScope() { Set(prev_); }
  SwitchScope(const SwitchScope&) = delete;
  SwitchScope& operator=(const SwitchScope&) = delete;

 private:
  bool prev_;
};
using ConvGraphScope = SwitchScope<cuda::conv_graph, cuda::set_conv_graph>;            // cuDNN graph plans
using FusedResidualScope = SwitchScope<cuda::fused_residual, cuda::set_fused_residual>;  // BN + add + ReLU
// Deferred index checks for a scope; restoring them reports (as a test failure, never by throwing
// from the destructor) a bad index still pending.
class DeferredChecksScope {
 public:
  explicit DeferredChecksScope(bool on) : prev_(cuda::deferred_index_checks()) { cuda::set_deferred_index_checks(on); }
  ~DeferredChecksScope() {
    try {
      cuda::set_deferred_index_checks(prev_);
    } catch (const Error& e) {
      ADD_FAILURE() << "a deferred index error was still pending at the end of the scope: " << e.what();
      cuda::set_deferred_index_checks(prev_);
    }
  }
  DeferredChecksScope(const DeferredChecksScope&) = delete;
  DeferredChecksScope& operator=(const DeferredChecksScope&) = delete;

 private:
  bool prev_;
};

TEST_F(CudaBackendTest, Conv2dForwardAndBothBackwards) {
  ConvGraphScope legacy(false);
  conv_cases_against_reference("legacy");
}

// The same cases through cached graph-API execution plans: they must run there (not fall back to the
// legacy API), agree with the reference, and a second pass must reuse the plans.
TEST_F(CudaBackendTest, Conv2dThroughCachedGraphPlans) {
  ConvGraphScope graph(true);
  const cuda::GraphConvStats before = cuda::graph_conv_stats();
  conv_cases_against_reference("graph");
  const cuda::GraphConvStats first = cuda::graph_conv_stats();
  std::printf("graph convolutions: %lld plans built, %lld shapes left to the legacy API, %lld runs\n",
              static_cast<long long>(first.plans_built - before.plans_built),
              static_cast<long long>(first.unsupported - before.unsupported),
              static_cast<long long>(first.runs - before.runs));
  EXPECT_GE(first.runs - before.runs, 3 * 3 * 2 / 2) << "most convolutions should run through graph plans";
  conv_cases_against_reference("graph again");
  const cuda::GraphConvStats second = cuda::graph_conv_stats();
  EXPECT_EQ(second.plans_built, first.plans_built) << "the second pass must reuse the cached plans";
  EXPECT_EQ(second.runs - first.runs, first.runs - before.runs);
}

// ---------------------------------------------------------------- pooling

TEST_F(CudaBackendTest, Pool2dMaxAndAverage) {
  struct Case {
    PoolKind kind;
    int64_t k, s, pad;
    bool include_pad;
  };
  const std::vector<Case> cases = {{PoolKind::max, 2, 2, 0, false}, {PoolKind::max, 3, 2, 1, false},
                                   {PoolKind::avg, 2, 2, 0, false}, {PoolKind::avg, 3, 2, 1, false},
                                   {PoolKind::avg, 3, 2, 1, true}};
  for (DType t : {DType::f32, DType::f64}) {
    for (const auto& c : cases) {
      Pool2dParams p;
      p.kernel_h = p.kernel_w = c.k, p.stride_h = p.stride_w = c.s, p.pad_h = p.pad_w = c.pad;
      p.count_include_pad = c.include_pad;
      const int64_t H = 11, W = 10;
      const int64_t P = (H + 2 * c.pad - c.k) / c.s + 1, Q = (W + 2 * c.pad - c.k) / c.s + 1;
      std::string name = fmt::format("{} pool k{} s{} p{} include_pad={} {}", c.kind == PoolKind::max ? "max" : "avg",
                                     c.k, c.s, c.pad, c.include_pad, dtype_name(t));
      Tensor x = randt({2, 3, H, W}, 21, t), dy = randt({2, 3, P, Q}, 22, t);
      Tensor want = host_out({2, 3, P, Q}, t), got = poisoned({2, 3, P, Q}, t);
      ref().pool2d_forward(c.kind, x, want, p);
      gpu().pool2d_forward(c.kind, up(x), got, p);
      expect_close(got, want, name + " forward");
      Tensor wdx = host_out(x.shape(), t), gdx = poisoned(x.shape(), t);
      ref().pool2d_backward(c.kind, x, want, dy, wdx, p);
      gpu().pool2d_backward(c.kind, up(x), got, up(dy), gdx, p);
      expect_close(gdx, wdx, name + " backward");
    }
  }
}

// ---------------------------------------------------------------- normalization

TEST_F(CudaBackendTest, BatchnormTrainInferBackward) {
  for (DType t : {DType::f32, DType::f64}) {
    for (Shape s : {Shape{4, 3, 5, 6}, Shape{16, 5}}) {
      const int64_t C = s[1];
      std::string name = fmt::format("batchnorm {} {}", shape_str(s), dtype_name(t));
      Tensor x = randt(s, 31, t, -2, 3), dy = randt(s, 32, t);
      Tensor gamma = randt({C}, 33, t, 0.5, 1.5), beta = randt({C}, 34, t);
      Tensor wy = host_out(s, t), wm = host_out({C}, t), wi = host_out({C}, t);
      Tensor gy = poisoned(s, t), gm = poisoned({C}, t), gi = poisoned({C}, t);
      ref().batchnorm_forward_train(x, gamma, beta, wy, wm, wi, 1e-5);
      gpu().batchnorm_forward_train(up(x), up(gamma), up(beta), gy, gm, gi, 1e-5);
      double rtol = t == DType::f64 ? 1e-10 : 1e-4, atol = t == DType::f64 ? 1e-11 : 1e-5;
      expect_close(gy, wy, name + " train y", rtol, atol);
      expect_close(gm, wm, name + " train mean", rtol, atol);
      expect_close(gi, wi, name + " train invstd", rtol, atol);

      Tensor mean = randt({C}, 35, t), var = randt({C}, 36, t, 0.5, 2);
      Tensor wyi = host_out(s, t), gyi = poisoned(s, t);
      ref().batchnorm_forward_infer(x, gamma, beta, mean, var, wyi, 1e-5);
      gpu().batchnorm_forward_infer(up(x), up(gamma), up(beta), up(mean), up(var), gyi, 1e-5);
      expect_close(gyi, wyi, name + " infer", rtol, atol);

      Tensor wdx = host_out(s, t), wdg = host_out({C}, t), wdb = host_out({C}, t);
      Tensor gdx = poisoned(s, t), gdg = poisoned({C}, t), gdb = poisoned({C}, t);
      ref().batchnorm_backward(x, dy, gamma, wm, wi, wdx, wdg, wdb);
      gpu().batchnorm_backward(up(x), up(dy), up(gamma), up(wm), up(wi), gdx, gdg, gdb);
      expect_close(gdx, wdx, name + " backward dx", rtol, atol);
      expect_close(gdg, wdg, name + " backward dgamma", rtol, atol);
      expect_close(gdb, wdb, name + " backward dbeta", rtol, atol);
    }
  }
}

// The one-pass running-statistics update (double inside, rounded once) against the reference's six
// kernels, and the device-side counter of num_batches_tracked.
TEST_F(CudaBackendTest, BatchnormRunningStatisticsAndCounter) {
  for (DType t : {DType::f32, DType::f64}) {
    Tensor rm = randt({7}, 101, t), rv = randt({7}, 102, t, 0.5, 2);
    Tensor mean = randt({7}, 103, t), invstd = randt({7}, 104, t, 0.5, 2);
    Tensor grm = up(rm), grv = up(rv);
    ref().batchnorm_update_running(rm, rv, mean, invstd, 0.1, 1e-5, 50);
    gpu().batchnorm_update_running(grm, grv, up(mean), up(invstd), 0.1, 1e-5, 50);
    expect_close(grm, rm, std::string("running mean ") + dtype_name(t));
    expect_close(grv, rv, std::string("running var ") + dtype_name(t));
  }
  Tensor counter = up(Tensor::full({}, 41, DType::i64));
  gpu().increment(counter);
  gpu().increment(counter);
  EXPECT_EQ(down(counter).item(), 43);
  EXPECT_THROW(gpu().increment(up(Tensor::zeros({2}, DType::i64))), Error);
}

TEST_F(CudaBackendTest, LayernormForwardBackward) {
  for (DType t : {DType::f32, DType::f64}) {
    for (Shape s : {Shape{37, 300}, Shape{5, 8}, Shape{2, 3, 1000}}) {
      const int64_t D = s.back(), M = numel_of(s) / D;
      std::string name = fmt::format("layernorm {} {}", shape_str(s), dtype_name(t));
      Tensor x = randt(s, 41, t, -2, 3), dy = randt(s, 42, t);
      Tensor gamma = randt({D}, 43, t, 0.5, 1.5), beta = randt({D}, 44, t);
      Tensor wy = host_out(s, t), wm = host_out({M}, t), wi = host_out({M}, t);
      Tensor gy = poisoned(s, t), gm = poisoned({M}, t), gi = poisoned({M}, t);
      ref().layernorm_forward(x, gamma, beta, wy, wm, wi, 1e-5);
      gpu().layernorm_forward(up(x), up(gamma), up(beta), gy, gm, gi, 1e-5);
      expect_close(gy, wy, name + " y");
      expect_close(gm, wm, name + " mean");
      expect_close(gi, wi, name + " invstd");
      Tensor wdx = host_out(s, t), wdg = host_out({D}, t), wdb = host_out({D}, t);
      Tensor gdx = poisoned(s, t), gdg = poisoned({D}, t), gdb = poisoned({D}, t);
      ref().layernorm_backward(x, dy, gamma, wm, wi, wdx, wdg, wdb);
      gpu().layernorm_backward(up(x), up(dy), up(gamma), up(wm), up(wi), gdx, gdg, gdb);
      expect_close(gdx, wdx, name + " dx", rtol_for(t) * 10, atol_for(t) * 10);
      expect_close(gdg, wdg, name + " dgamma", rtol_for(t) * 10, atol_for(t) * 10);
      expect_close(gdb, wdb, name + " dbeta", rtol_for(t) * 10, atol_for(t) * 10);
    }
  }
}

TEST_F(CudaBackendTest, SoftmaxAndLogSoftmax) {
  for (DType t : {DType::f32, DType::f64}) {
    for (bool log : {false, true}) {
      // Last-axis cases ({5, 1000}, {3, 2, 37}) take the row kernels, the others cuDNN.
      const std::vector<std::pair<Shape, int>> cases = {{{4, 7, 3}, 1}, {{5, 1000}, 1}, {{6, 10}, 0}, {{3, 2, 37}, 2}};
      for (auto [s, axis] : cases) {
        std::string name = fmt::format("{} {} axis {} {}", log ? "log_softmax" : "softmax", shape_str(s), axis,
                                       dtype_name(t));
        Tensor x = randt(s, 51, t, -4, 4), dy = randt(s, 52, t);
        Tensor wy = host_out(s, t), gy = poisoned(s, t);
        ref().softmax_forward(x, wy, axis, log);
        gpu().softmax_forward(up(x), gy, axis, log);
        expect_close(gy, wy, name + " forward");
        Tensor wdx = host_out(s, t), gdx = poisoned(s, t);
        ref().softmax_backward(wy, dy, wdx, axis, log);
        gpu().softmax_backward(up(wy), up(dy), gdx, axis, log);
        expect_close(gdx, wdx, name + " backward", rtol_for(t) * 10, atol_for(t) * 10);
      }
    }
  }
}

// ---------------------------------------------------------------- indexing

TEST_F(CudaBackendTest, IndexSelectAndIndexAdd) {
  for (DType t : {DType::f32, DType::f64}) {
    Tensor x = randt({3, 5, 4}, 61, t);
    Tensor idx = Tensor::from_vector<int64_t>({4, 0, 4, 2}, {4});
    Tensor want = host_out({3, 4, 4}, t), got = poisoned({3, 4, 4}, t);
    ref().index_select(x, 1, idx, want);
    gpu().index_select(up(x), 1, up(idx), got);
    expect_close(got, want, "index_select", 0, 0);

    Tensor src = randt({3, 4, 4}, 62, t), base = randt({3, 5, 4}, 63, t);
    Tensor wadd = base.clone(), gadd = up(base);
    ref().index_add(wadd, 1, idx, src);
    gpu().index_add(gadd, 1, up(idx), up(src));  // repeated index 4 adds twice
    expect_close(gadd, wadd, "index_add");

    Tensor bad = Tensor::from_vector<int64_t>({1, 5}, {2});
    DeferredChecksScope immediate(false);  // the op itself throws
    EXPECT_THROW(gpu().index_select(up(x), 1, up(bad), poisoned({3, 2, 4}, t)), Error);
  }
}

TEST_F(CudaBackendTest, GatherAndScatterRows) {
  for (DType t : {DType::f32, DType::f64}) {
    Tensor x = randt({6, 5}, 71, t);
    Tensor idx = Tensor::from_vector<int64_t>({0, 4, -1, 2, 2, 3}, {6});
    Tensor want = host_out({6}, t), got = poisoned({6}, t);
    ref().gather_rows(x, idx, want);
    gpu().gather_rows(up(x), up(idx), got);
    expect_close(got, want, "gather_rows", 0, 0);
    Tensor src = randt({6}, 72, t);
    Tensor wsc = host_out({6, 5}, t), gsc = poisoned({6, 5}, t);
    ref().scatter_rows(src, idx, wsc);
    gpu().scatter_rows(up(src), up(idx), gsc);
    expect_close(gsc, wsc, "scatter_rows", 0, 0);
    Tensor bad = Tensor::from_vector<int64_t>({0, 5, 0, 0, 0, 0}, {6});
    DeferredChecksScope immediate(false);  // the op itself throws
    EXPECT_THROW(gpu().gather_rows(up(x), up(bad), poisoned({6}, t)), Error);
  }
}

// Deferred index checks: a bad index does not throw at its op, nor synchronize; the next
// synchronization (a download, cuda::synchronize(), a full bank of checks) throws the op's message
// once, and good ops queued around it compute their results.
TEST_F(CudaBackendTest, DeferredIndexChecksReportAtTheNextSynchronization) {
  cuda::synchronize();
  DeferredChecksScope deferred(true);
  Tensor hx = randt({6, 5}, 71), hgood = Tensor::from_vector<int64_t>({0, 4, -1, 2, 2, 3}, {6});
  Tensor x = up(hx), good = up(hgood), bad = up(Tensor::from_vector<int64_t>({0, 5, 0, 0, 0, 0}, {6}));
  Tensor out = poisoned({6}), want = host_out({6});
  ref().gather_rows(hx, hgood, want);
  const int64_t downloads = cuda::transfer_stats().downloads;
  EXPECT_NO_THROW(gpu().gather_rows(x, bad, out));
  EXPECT_EQ(cuda::transfer_stats().downloads, downloads) << "the check read its result back";
  gpu().gather_rows(x, good, out);
  try {
    (void)out.to(kCPU);
    ADD_FAILURE() << "the download after a bad index did not throw";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("gather_rows: class index >= number of classes 5 in row 1"), std::string::npos) << what;
    EXPECT_NE(what.find("deferred"), std::string::npos) << what;
  }
  EXPECT_NO_THROW(cuda::synchronize()) << "reported twice";
  expect_close(out, want, "gather_rows after a deferred error", 0, 0);

  Tensor grad = poisoned({6, 5});
  gpu().scatter_rows(up(randt({6}, 72)), bad, grad);
  EXPECT_THROW(cuda::synchronize(), Error);

  // More checks than the bank holds (256): taking a slot in a full bank reads it, and throws.
  gpu().gather_rows(x, bad, out);
  int thrown_at = -1;
  for (int i = 0; i < 300 && thrown_at < 0; ++i) {
    try {
      gpu().gather_rows(x, good, out);
    } catch (const Error&) {
      thrown_at = i;
    }
  }
  EXPECT_EQ(thrown_at, 255);
  for (int i = 0; i < 600; ++i) gpu().gather_rows(x, good, out);  // two bank reads, nothing bad
  EXPECT_NO_THROW(cuda::synchronize());
  expect_close(out, want, "gather_rows after 600 deferred checks", 0, 0);
}

// ---------------------------------------------------------------- optimizers

TEST_F(CudaBackendTest, OptimizerUpdatesSgdAndAdamw) {
  for (DType t : {DType::f32, DType::f64}) {
    const int64_t n = 5000;
    Tensor p = randt({n}, 81, t), g = randt({n}, 82, t), m = randt({n}, 83, t), v = randt({n}, 84, t, 0, 1);
    std::vector<OptimizerUpdate> updates;
    OptimizerUpdate sgd;
    sgd.lr = 0.1, sgd.momentum = 0.9, sgd.weight_decay = 1e-2, sgd.nesterov = true;
    for (int64_t step : {1, 2}) {
      sgd.step = step;
      updates.push_back(sgd);
    }
    OptimizerUpdate plain;
    plain.lr = 0.05, plain.decoupled_decay = true, plain.weight_decay = 0.1, plain.scale = 0.7;
    updates.push_back(plain);
    OptimizerUpdate adamw;
    adamw.kind = OptimizerUpdate::Kind::adamw, adamw.lr = 1e-3, adamw.weight_decay = 0.01, adamw.step = 3;
    updates.push_back(adamw);
    for (size_t i = 0; i < updates.size(); ++i) {
      const auto& u = updates[i];
      bool uses_m = u.kind == OptimizerUpdate::Kind::adamw || u.momentum != 0;
      Tensor hp = p.clone(), hm = m.clone(), hv = v.clone();
      Tensor dp = up(p), dm = up(m), dv = up(v);
      ref().optimizer_update(u, hp, g, uses_m ? hm : undefined(), hv);
      gpu().optimizer_update(u, dp, up(g), uses_m ? dm : undefined(), dv);
      expect_close(dp, hp, fmt::format("optimizer update {} param {}", i, dtype_name(t)));
      expect_close(dm, hm, fmt::format("optimizer update {} buf1 {}", i, dtype_name(t)));
      expect_close(dv, hv, fmt::format("optimizer update {} buf2 {}", i, dtype_name(t)));
    }
  }
}

// The grouped update (32 parameters per launch): 41 parameters of sizes 0 to 5000, each with its own
// weight decay and step, against the reference's per-parameter update.
TEST_F(CudaBackendTest, OptimizerUpdateManyMatchesPerParameterUpdates) {
  for (DType t : {DType::f32, DType::f64}) {
    OptimizerUpdate sgd;
    sgd.lr = 0.1, sgd.momentum = 0.9, sgd.nesterov = true;
    OptimizerUpdate adamw;
    adamw.kind = OptimizerUpdate::Kind::adamw, adamw.lr = 1e-3, adamw.decoupled_decay = true;
    for (const OptimizerUpdate& u : {sgd, adamw}) {
      std::vector<UpdateSlot> host, dev;
      for (int i = 0; i < 41; ++i) {
        const int64_t n = (i * 977) % 5001;  // includes 0
        Tensor p = randt({n}, 200 + i, t), g = randt({n}, 300 + i, t), m = randt({n}, 400 + i, t);
        Tensor v = randt({n}, 500 + i, t, 0, 1);
        const double wd = i % 3 == 0 ? 0.0 : 1e-2 * i;
        const int64_t step = 1 + i % 4;  // the first step of SGD momentum copies the gradient
        host.push_back(UpdateSlot{p.clone(), g, m.clone(), v.clone(), wd, step});
        dev.push_back(UpdateSlot{up(p), up(g), up(m), up(v), wd, step});
      }
      ref().optimizer_update_many(u, host);
      gpu().optimizer_update_many(u, dev);
      const char* kind = u.kind == OptimizerUpdate::Kind::adamw ? "adamw" : "sgd";
      for (size_t i = 0; i < host.size(); ++i) {
        expect_close(dev[i].param, host[i].param, fmt::format("{} many: param {} {}", kind, i, dtype_name(t)));
        expect_close(dev[i].buf1, host[i].buf1, fmt::format("{} many: buf1 {} {}", kind, i, dtype_name(t)));
        expect_close(dev[i].buf2, host[i].buf2, fmt::format("{} many: buf2 {} {}", kind, i, dtype_name(t)));
      }
    }
  }
}

// ---------------------------------------------------------------- bfloat16 (autocast)
// The reference computes in float32 on inputs already rounded to bfloat16, so the only
// differences left are the GPU's bfloat16 output rounding (2^-9 relative) and summation order.

Tensor bf16_rounded(const Tensor& t) { return t.to(DType::bf16).to(DType::f32); }
Tensor up_bf16(const Tensor& t) { return up(t.to(DType::bf16)); }
Tensor widened_down(const Tensor& d) { return down(d).to(DType::f32); }
constexpr double kBfRtol = 1.2e-2, kBfAtol = 2e-2;

TEST_F(CudaBackendTest, Bf16ElementwiseReduceAndMatmul) {
  Tensor a = bf16_rounded(randt({6, 5, 7}, 61)), b = bf16_rounded(randt({1, 5, 1}, 62));
  for (BinaryOp op : {BinaryOp::add, BinaryOp::mul, BinaryOp::relu_grad, BinaryOp::add_relu}) {
    Tensor want = host_out(a.shape()), got = poisoned(a.shape(), DType::bf16);
    ref().binary(op, a, b, want, 0);
    gpu().binary(op, up_bf16(a), up_bf16(b), got, 0);
    expect_close(widened_down(got), want, std::string("bf16 ") + binary_name(op), kBfRtol, 1e-6);
  }
  for (UnaryOp op : {UnaryOp::relu, UnaryOp::exp, UnaryOp::mul_scalar}) {
    Tensor want = host_out(a.shape()), got = poisoned(a.shape(), DType::bf16);
    ref().unary(op, a, want, 0.5);
    gpu().unary(op, up_bf16(a), got, 0.5);
    expect_close(widened_down(got), want, std::string("bf16 ") + unary_name(op), kBfRtol, 1e-6);
  }
  {
    Tensor want = host_out(a.shape()), got = poisoned(a.shape(), DType::bf16);
    ref().axpby(0.9, a, -0.3, bf16_rounded(randt(a.shape(), 63)), want);
    gpu().axpby(0.9, up_bf16(a), -0.3, up_bf16(randt(a.shape(), 63)), got);
    expect_close(widened_down(got), want, "bf16 axpby", kBfRtol, 1e-2);
  }
  for (std::vector<int> axes : {std::vector<int>{0, 2}, std::vector<int>{1}}) {
    Shape os = a.shape();
    for (int ax : axes) os[ax] = 1;
    Tensor want = host_out(os), got = poisoned(os, DType::bf16);
    ref().reduce(ReduceOp::sum, a, axes, want);
    gpu().reduce(ReduceOp::sum, up_bf16(a), axes, got);
    expect_close(widened_down(got), want, "bf16 sum", kBfRtol, 1e-2);
  }
  Tensor m1 = bf16_rounded(randt({2, 33, 70}, 64)), m2 = bf16_rounded(randt({2, 70, 19}, 65));
  Tensor want = host_out({2, 33, 19}), got = poisoned({2, 33, 19}, DType::bf16);
  ref().matmul(m1, m2, want, false, false, 1.0, 0.0);
  gpu().matmul(up_bf16(m1), up_bf16(m2), got, false, false, 1.0, 0.0);
  expect_close(widened_down(got), want, "bf16 matmul", kBfRtol, kBfAtol);
}

TEST_F(CudaBackendTest, Bf16ConvolutionPoolingAndBatchnorm) {
  Conv2dParams p;
  p.pad_h = p.pad_w = 1, p.stride_h = 2;
  Tensor x = bf16_rounded(randt({4, 8, 10, 9}, 71)), w = bf16_rounded(randt({16, 8, 3, 3}, 72));
  Tensor bias = bf16_rounded(randt({16}, 73));
  const int64_t P = Conv2dParams::out_size(10, 3, 2, 1, 1), Q = Conv2dParams::out_size(9, 3, 1, 1, 1);
  Tensor dy = bf16_rounded(randt({4, 16, P, Q}, 74));
  Tensor want = host_out({4, 16, P, Q}), got = poisoned({4, 16, P, Q}, DType::bf16);
  ref().conv2d_forward(x, w, bias, want, p);
  gpu().conv2d_forward(up_bf16(x), up_bf16(w), up_bf16(bias), got, p);
  expect_close(widened_down(got), want, "bf16 conv forward (with bias)", kBfRtol, kBfAtol);
  Tensor wdx = host_out(x.shape()), gdx = poisoned(x.shape(), DType::bf16);
  ref().conv2d_backward_data(dy, w, wdx, p);
  gpu().conv2d_backward_data(up_bf16(dy), up_bf16(w), gdx, p);
  expect_close(widened_down(gdx), wdx, "bf16 conv backward data", kBfRtol, kBfAtol);
  Tensor wdw = host_out(w.shape()), gdw = poisoned(w.shape(), DType::bf16);
  Tensor wdb = host_out({16}), gdb = poisoned({16}, DType::bf16);
  ref().conv2d_backward_weights(x, dy, wdw, wdb, p);
  gpu().conv2d_backward_weights(up_bf16(x), up_bf16(dy), gdw, gdb, p);
  expect_close(widened_down(gdw), wdw, "bf16 conv backward weights", kBfRtol, 0.1);  // sums of 4*5*9 products
  expect_close(widened_down(gdb), wdb, "bf16 conv backward bias", kBfRtol, 0.1);

  for (PoolKind kind : {PoolKind::max, PoolKind::avg}) {
    Pool2dParams pp;
    pp.kernel_h = pp.kernel_w = 3, pp.stride_h = pp.stride_w = 2, pp.pad_h = pp.pad_w = 1;
    const int64_t PP = (10 + 2 - 3) / 2 + 1, PQ = (9 + 2 - 3) / 2 + 1;
    Tensor py = host_out({4, 8, PP, PQ}), gpy = poisoned({4, 8, PP, PQ}, DType::bf16);
    ref().pool2d_forward(kind, x, py, pp);
    gpu().pool2d_forward(kind, up_bf16(x), gpy, pp);
    expect_close(widened_down(gpy), py, "bf16 pool forward", kBfRtol, 1e-6);
    Tensor pdy = bf16_rounded(randt(py.shape(), 75)), pdx = host_out(x.shape()), gpdx = poisoned(x.shape(), DType::bf16);
    ref().pool2d_backward(kind, x, py, pdy, pdx, pp);
    gpu().pool2d_backward(kind, up_bf16(x), gpy, up_bf16(pdy), gpdx, pp);
    expect_close(widened_down(gpdx), pdx, "bf16 pool backward", kBfRtol, 1e-2);
  }

  // Batch norm: bfloat16 data, float32 parameters and statistics (summed in double on the GPU).
  for (Shape s : {Shape{4, 3, 5, 6}, Shape{64, 5, 7, 7}, Shape{8, 16, 5, 5}}) {  // C = 16: 16-byte path (NHWC)
    const int64_t C = s[1];
    std::string name = fmt::format("bf16 batchnorm {}", shape_str(s));
    Tensor bx = bf16_rounded(randt(s, 76, DType::f32, -2, 3)), bdy = bf16_rounded(randt(s, 77));
    Tensor gamma = randt({C}, 78, DType::f32, 0.5, 1.5), beta = randt({C}, 79);
    Tensor wy = host_out(s), wm = host_out({C}), wi = host_out({C});
    Tensor gy = poisoned(s, DType::bf16), gm = poisoned({C}), gi = poisoned({C});
    ref().batchnorm_forward_train(bx, gamma, beta, wy, wm, wi, 1e-5);
    gpu().batchnorm_forward_train(up_bf16(bx), up(gamma), up(beta), gy, gm, gi, 1e-5);
    expect_close(widened_down(gy), wy, name + " train y", kBfRtol, kBfAtol);
    expect_close(gm, wm, name + " mean", 1e-5, 1e-6);
    expect_close(gi, wi, name + " invstd", 1e-5, 1e-6);
    Tensor mean = randt({C}, 80), var = randt({C}, 81, DType::f32, 0.5, 2);
    Tensor wyi = host_out(s), gyi = poisoned(s, DType::bf16);
    ref().batchnorm_forward_infer(bx, gamma, beta, mean, var, wyi, 1e-5);
    gpu().batchnorm_forward_infer(up_bf16(bx), up(gamma), up(beta), up(mean), up(var), gyi, 1e-5);
    expect_close(widened_down(gyi), wyi, name + " infer", kBfRtol, kBfAtol);
    Tensor wdx = host_out(s), wdg = host_out({C}), wdb = host_out({C});
    Tensor gdx = poisoned(s, DType::bf16), gdg = poisoned({C}), gdb = poisoned({C});
    ref().batchnorm_backward(bx, bdy, gamma, wm, wi, wdx, wdg, wdb);
    gpu().batchnorm_backward(up_bf16(bx), up_bf16(bdy), up(gamma), up(wm), up(wi), gdx, gdg, gdb);
    expect_close(widened_down(gdx), wdx, name + " backward dx", kBfRtol, kBfAtol);
    expect_close(gdg, wdg, name + " backward dgamma", 1e-4, 1e-4);
    expect_close(gdb, wdb, name + " backward dbeta", 1e-4, 1e-4);

    // Fused ReLU (batch_norm_relu): against the reference's composition (batch norm, then ReLU;
    // dy masked by y > 0, then the batch-norm backward); the GPU recomputes the mask from x.
    Tensor ry = host_out(s), rm2 = host_out({C}), ri2 = host_out({C});
    Tensor fy = poisoned(s, DType::bf16), fm = poisoned({C}), fi = poisoned({C});
    ref().batchnorm_relu_forward_train(bx, gamma, beta, ry, rm2, ri2, 1e-5);
    gpu().batchnorm_relu_forward_train(up_bf16(bx), up(gamma), up(beta), fy, fm, fi, 1e-5);
    expect_close(widened_down(fy), ry, name + " relu forward", kBfRtol, kBfAtol);
    Tensor rdx = host_out(s), rdg = host_out({C}), rdb = host_out({C});
    Tensor fdx = poisoned(s, DType::bf16), fdg = poisoned({C}), fdb = poisoned({C});
    ref().batchnorm_relu_backward(bx, ry, bdy, gamma, beta, rm2, ri2, rdx, rdg, rdb);
    gpu().batchnorm_relu_backward(up_bf16(bx), fy, up_bf16(bdy), up(gamma), up(beta), fm, fi, fdx, fdg, fdb);
    expect_close(widened_down(fdx), rdx, name + " relu backward dx", kBfRtol, kBfAtol);
    expect_close(fdg, rdg, name + " relu backward dgamma", 1e-4, 1e-4);
    expect_close(fdb, rdb, name + " relu backward dbeta", 1e-4, 1e-4);
  }
}

// Channels-last (NHWC strides) operands, as autocast makes them: convolution (legacy and graph API) and
// batch norm with fused ReLU, in float32 and bfloat16, against the reference on row-major copies.
Tensor up_channels_last(const Tensor& host, DType t) {
  Tensor dense = up(host.to(t)), cl = Tensor::empty_channels_last(host.shape(), t, kGPU);
  gpu().copy(dense, cl);
  return cl;
}
Tensor poisoned_channels_last(const Shape& s, DType t) {
  Tensor o = Tensor::empty_channels_last(s, t, kGPU);
  gpu().fill(o, NAN);
  return o;
}

// Channels-last max pooling backward (the backend's gather kernels): the gradient goes to the first
// maximum of each window, as the reference; values quantized to quarters so that windows hold ties.
TEST_F(CudaBackendTest, ChannelsLastMaxPoolBackwardFirstMaximum) {
  for (DType t : {DType::f32, DType::bf16, DType::f64}) {
    for (auto [k, st, pad] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{{3, 2, 1}, {2, 2, 0}, {3, 1, 1}}) {
      Pool2dParams pp;
      pp.kernel_h = pp.kernel_w = k, pp.stride_h = pp.stride_w = st, pp.pad_h = pp.pad_w = pad;
      const int64_t N = 3, C = 16, H = 9, W = 8;
      const int64_t P = (H + 2 * pad - k) / st + 1, Q = (W + 2 * pad - k) / st + 1;
      const std::string name = fmt::format("channels-last max pool {}x{} stride {} pad {} {}", k, k, st, pad,
                                           dtype_name(t));
      Tensor x = randt({N, C, H, W}, 111, DType::f64, -2, 2);
      std::vector<double> xv = x.to_vector<double>();
      for (double& v : xv) v = std::round(v * 4) / 4;  // many ties
      x = Tensor::from_vector(xv, {N, C, H, W}).to(DType::f32);
      Tensor dy = bf16_rounded(randt({N, C, P, Q}, 112));
      const DType rt = t == DType::f64 ? DType::f64 : DType::f32;
      Tensor xr = x.to(rt), dyr = dy.to(rt);
      Tensor y = host_out({N, C, P, Q}, rt), want = host_out(x.shape(), rt);
      ref().pool2d_forward(PoolKind::max, xr, y, pp);
      ref().pool2d_backward(PoolKind::max, xr, y, dyr, want, pp);
      Tensor gx = up_channels_last(x, t), gy = poisoned_channels_last({N, C, P, Q}, t);
      gpu().pool2d_forward(PoolKind::max, gx, gy, pp);
      Tensor got = poisoned_channels_last(x.shape(), t);
      gpu().pool2d_backward(PoolKind::max, gx, gy, up_channels_last(dy, t), got, pp);
      const double tol = t == DType::bf16 ? kBfRtol : 1e-6;
      expect_close(down(got.contiguous()).to(rt), want, name, tol, tol);
    }
  }
}

TEST_F(CudaBackendTest, ChannelsLastConvolutionAndBatchnorm) {
  Conv2dParams p;
  p.pad_h = p.pad_w = 1;
  const int64_t N = 4, C = 16, H = 7, W = 6, K = 32;
  for (DType t : {DType::f32, DType::bf16}) {
    const bool bf = t == DType::bf16;
    const double rtol = bf ? kBfRtol : 1e-4, atol = bf ? kBfAtol : 1e-5;
    Tensor x = bf16_rounded(randt({N, C, H, W}, 91)), w3 = bf16_rounded(randt({K, C, 3, 3}, 92));
    Tensor w1 = bf16_rounded(randt({K, C, 1, 1}, 93));
    for (bool graph : {false, true}) {
      ConvGraphScope scope(graph);
      const int64_t runs_before = cuda::graph_conv_stats().runs;
      for (const Tensor& w : {w3, w1}) {
        const std::string name = fmt::format("channels-last {} conv {}x{} ({})", dtype_name(t), w.shape()[2],
                                             w.shape()[3], graph ? "graph" : "legacy");
        Conv2dParams q = w.shape()[2] == 3 ? p : Conv2dParams{};
        Tensor dy = bf16_rounded(randt({N, K, H, W}, 94));
        Tensor want = host_out({N, K, H, W}), got = poisoned_channels_last({N, K, H, W}, t);
        ref().conv2d_forward(x, w, undefined(), want, q);
        gpu().conv2d_forward(up_channels_last(x, t), up_channels_last(w, t), undefined(), got, q);
        expect_close(down(got.contiguous()).to(DType::f32), want, name + " forward", rtol, atol);
        Tensor wdx = host_out(x.shape()), gdx = poisoned_channels_last(x.shape(), t);
        ref().conv2d_backward_data(dy, w, wdx, q);
        gpu().conv2d_backward_data(up_channels_last(dy, t), up_channels_last(w, t), gdx, q);
        expect_close(down(gdx.contiguous()).to(DType::f32), wdx, name + " backward data", rtol, atol);
        Tensor wdw = host_out(w.shape()), gdw = poisoned_channels_last(w.shape(), t);
        ref().conv2d_backward_weights(x, dy, wdw, undefined(), q);
        gpu().conv2d_backward_weights(up_channels_last(x, t), up_channels_last(dy, t), gdw, undefined(), q);
        expect_close(down(gdw.contiguous()).to(DType::f32), wdw, name + " backward weights", rtol, bf ? 0.2 : 1e-4);
      }
      // The graph pass must have run (some of) its six convolutions through plans, not all on the legacy API.
      if (graph) {
        EXPECT_GT(cuda::graph_conv_stats().runs, runs_before) << dtype_name(t) << " channels-last: no graph plan ran";
      }
    }
    if (!bf) continue;  // batch norm on the GPU takes channels-last bfloat16 (autocast's layout)
    // C = 16, 24, 64: 16-byte paths (2, 3 and 8 vectors per row; 64x64x9x9 splits rows over blocks);
    // C = 12: the scalar channels-last kernels.
    for (Shape s : {Shape{4, 16, 7, 6}, Shape{3, 24, 5, 7}, Shape{2, 12, 3, 3}, Shape{64, 64, 9, 9}}) {
      const int64_t Cb = s[1];
      const std::string name = fmt::format("channels-last bf16 batchnorm relu {}", shape_str(s));
      Tensor bx = bf16_rounded(randt(s, 98, DType::f32, -2, 3));
      Tensor gamma = randt({Cb}, 95, DType::f32, 0.5, 1.5), beta = randt({Cb}, 96);
      Tensor bdy = bf16_rounded(randt(s, 97));
      Tensor ry = host_out(s), rm = host_out({Cb}), ri = host_out({Cb});
      Tensor fy = poisoned_channels_last(s, t), fm = poisoned({Cb}), fi = poisoned({Cb});
      ref().batchnorm_relu_forward_train(bx, gamma, beta, ry, rm, ri, 1e-5);
      gpu().batchnorm_relu_forward_train(up_channels_last(bx, t), up(gamma), up(beta), fy, fm, fi, 1e-5);
      expect_close(down(fy.contiguous()).to(DType::f32), ry, name + " forward", rtol, atol);
      expect_close(fm, rm, name + " mean", 1e-5, 1e-6);
      expect_close(fi, ri, name + " invstd", 1e-5, 1e-6);
      Tensor rdx = host_out(s), rdg = host_out({Cb}), rdb = host_out({Cb});
      Tensor fdx = poisoned_channels_last(s, t), fdg = poisoned({Cb}), fdb = poisoned({Cb});
      ref().batchnorm_relu_backward(bx, ry, bdy, gamma, beta, rm, ri, rdx, rdg, rdb);
      gpu().batchnorm_relu_backward(up_channels_last(bx, t), fy, up_channels_last(bdy, t), up(gamma), up(beta), fm,
                                    fi, fdx, fdg, fdb);
      expect_close(down(fdx.contiguous()).to(DType::f32), rdx, name + " backward dx", rtol, atol);
      expect_close(fdg, rdg, name + " dgamma", 1e-4, 1e-4);
      expect_close(fdb, rdb, name + " dbeta", 1e-4, 1e-4);
      // Plain batch norm (no ReLU) through the same sums.
      Tensor py = host_out(s), pm = host_out({Cb}), pi = host_out({Cb});
      Tensor gy = poisoned_channels_last(s, t), gm = poisoned({Cb}), gi = poisoned({Cb});
      ref().batchnorm_forward_train(bx, gamma, beta, py, pm, pi, 1e-5);
      gpu().batchnorm_forward_train(up_channels_last(bx, t), up(gamma), up(beta), gy, gm, gi, 1e-5);
      expect_close(down(gy.contiguous()).to(DType::f32), py, name + " (no relu) forward", rtol, atol);
      Tensor pdx = host_out(s), pdg = host_out({Cb}), pdb = host_out({Cb});
      Tensor gdx = poisoned_channels_last(s, t), gdg = poisoned({Cb}), gdb = poisoned({Cb});
      ref().batchnorm_backward(bx, bdy, gamma, pm, pi, pdx, pdg, pdb);
      gpu().batchnorm_backward(up_channels_last(bx, t), up_channels_last(bdy, t), up(gamma), gm, gi, gdx, gdg, gdb);
      expect_close(down(gdx.contiguous()).to(DType::f32), pdx, name + " (no relu) backward dx", rtol, atol);
      expect_close(gdg, pdg, name + " (no relu) dgamma", 1e-4, 1e-4);
      // Residual add fused into the output pass (batch_norm_add_relu), channels-last and NCHW: the GPU
      // adds in float32 before its one rounding, the reference after rounding bn(x) to bfloat16's input
      // values here (float32), so the same tolerance as the forward above.
      Tensor bres = bf16_rounded(randt(s, 99, DType::f32, -1, 1));
      Tensor ay = host_out(s), am = host_out({Cb}), ai = host_out({Cb});
      ref().batchnorm_add_relu_forward_train(bx, bres, gamma, beta, ay, am, ai, 1e-5);
      FusedResidualScope fused(true);
      for (bool cl : {true, false}) {
        Tensor hy = cl ? poisoned_channels_last(s, t) : up_bf16(host_out(s)), hm = poisoned({Cb}), hi = poisoned({Cb});
        gpu().batchnorm_add_relu_forward_train(cl ? up_channels_last(bx, t) : up_bf16(bx),
                                               cl ? up_channels_last(bres, t) : up_bf16(bres), up(gamma), up(beta), hy,
                                               hm, hi, 1e-5);
        const std::string an = name + (cl ? " add_relu channels-last" : " add_relu NCHW");
        expect_close(down(hy.contiguous()).to(DType::f32), ay, an + " forward", rtol, atol);
        expect_close(hm, am, an + " mean", 1e-5, 1e-6);
        expect_close(hi, ai, an + " invstd", 1e-5, 1e-6);
      }
      // A residual in the other layout is brought into the input's first.
      Tensor oy = poisoned_channels_last(s, t), om = poisoned({Cb}), oi = poisoned({Cb});
      gpu().batchnorm_add_relu_forward_train(up_channels_last(bx, t), up_bf16(bres), up(gamma), up(beta), oy, om, oi,
                                             1e-5);
      expect_close(down(oy.contiguous()).to(DType::f32), ay, name + " add_relu mixed layouts forward", rtol, atol);
      // Switched off (the default until measured): the composed batch norm and add_relu.
      FusedResidualScope composed(false);
      Tensor cy = poisoned_channels_last(s, t), cm = poisoned({Cb}), ci = poisoned({Cb});
      gpu().batchnorm_add_relu_forward_train(up_channels_last(bx, t), up_channels_last(bres, t), up(gamma), up(beta),
                                             cy, cm, ci, 1e-5);
      expect_close(down(cy.contiguous()).to(DType::f32), ay, name + " add_relu composed forward", rtol, atol);
    }
  }
}

}  // namespace
}  // namespace hpdl

#endif  // HPDL_HAVE_CUDA
