// dist::NcclCommunicator and DataParallel over NCCL. Written for any world
// size: run plainly (one MPI singleton rank, what the lent GPU machine does)
// or under `mpirun -np N` with N GPUs. Sums are checked against values every
// rank can compute; the NcclMultiRank tests need N >= 2 ranks and N GPUs and
// skip otherwise. Without a GPU every test is skipped with "no CUDA device".
#ifdef HPDL_HAVE_CUDA

#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <string>
#include <vector>

#include "hpdl/backend/cuda/cuda.h"
#include "hpdl/core/random.h"
#include "hpdl/dist/data_parallel.h"
#include "hpdl/dist/nccl.h"
#include "hpdl/nn/models/models.h"
#include "hpdl/ops/linalg.h"
#include "hpdl/ops/loss.h"
#include "hpdl/ops/ops.h"
#include "hpdl/optim/optimizers.h"

namespace hpdl::dist {
namespace {

#define SKIP_WITHOUT_GPU() \
  if (!cuda::available()) GTEST_SKIP() << "no CUDA device"

Communicator& W() { return Communicator::world(); }

// One communicator for the binary (NCCL setup costs ~0.1-1 s). Never
// destroyed: at exit the CUDA runtime may already be gone.
NcclCommunicator& nccl() {
  static NcclCommunicator* c = [] {
    cuda::set_device(select_device(W()));
    return new NcclCommunicator(W());
  }();
  return *c;
}

Device gpu() { return nccl().device(); }

std::vector<double> host(const Tensor& t) { return t.to(kCPU).to(DType::f64).to_vector<double>(); }

TEST(Nccl, SelectsTheLocalRanksGpu) {
  SKIP_WITHOUT_GPU();
  EXPECT_TRUE(nccl_compiled());
  EXPECT_EQ(nccl().size(), W().size());
  EXPECT_EQ(nccl().rank(), W().rank());
  EXPECT_TRUE(nccl().device().is_cuda());
  EXPECT_NE(nccl().stream_handle(), nullptr);
  if (W().size() == 1) {
    EXPECT_EQ(nccl().device().index, 0);
  }
}

// Rank r holds (r + 1) * base: the sum over n ranks is n(n+1)/2 * base, the
// average (n+1)/2 * base. With one rank the sum is the identity.
void check_allreduce(DType dtype, NcclReduce op, double tol) {
  const int n = W().size(), r = W().rank();
  std::vector<double> base(1000);
  for (size_t i = 0; i < base.size(); ++i) base[i] = static_cast<double>(static_cast<int>(i % 17) - 8);
  std::vector<double> mine(base.size());
  for (size_t i = 0; i < base.size(); ++i) mine[i] = (r + 1) * base[i];
  Tensor t = Tensor::from_vector<double>(mine, {static_cast<int64_t>(mine.size())}).to(dtype).to(gpu());
  nccl().allreduce(t, op);
  const double f = op == NcclReduce::sum ? n * (n + 1) / 2.0 : (n + 1) / 2.0;
  auto got = host(t);
  ASSERT_EQ(got.size(), base.size());
  for (size_t i = 0; i < base.size(); ++i)
    ASSERT_NEAR(got[i], f * base[i], tol * (1 + std::abs(f * base[i]))) << dtype_name(dtype) << " element " << i;
}

TEST(Nccl, AllreduceSumAndAvg) {
  SKIP_WITHOUT_GPU();
  for (DType t : {DType::f32, DType::f64, DType::bf16}) {
    const double tol = t == DType::bf16 ? 1e-2 : 1e-6;  // the values are small integers: exact in all three
    check_allreduce(t, NcclReduce::sum, tol);
    check_allreduce(t, NcclReduce::avg, tol);
  }
}

TEST(Nccl, BroadcastFromRoot) {
  SKIP_WITHOUT_GPU();
  const int r = W().rank();
  Tensor f = Tensor::full({513}, 7.0 + r, DType::f32, gpu());
  Tensor i = Tensor::full({3, 5}, 100.0 + r, DType::i64, gpu());
  nccl().broadcast(f, 0);
  nccl().broadcast(i, 0);
  for (double v : host(f)) ASSERT_EQ(v, 7.0);
  for (double v : host(i)) ASSERT_EQ(v, 100.0);
}

TEST(Nccl, RefusesWrongTensors) {
  SKIP_WITHOUT_GPU();
  try {
    nccl().allreduce(Tensor::zeros({4}));
    FAIL() << "a CPU tensor was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cpu"), std::string::npos) << e.what();
  }
  Tensor m = Tensor::zeros({4, 4}, DType::f32, gpu());
  EXPECT_THROW(nccl().allreduce(m.transpose(0, 1)), Error);  // not contiguous
  EXPECT_THROW(nccl().allreduce(Tensor::zeros({4}, DType::i64, gpu()), NcclReduce::avg), Error);
}

// The collective must see what a kernel queued just before it wrote, even
// when the compute stream is busy for a while: the write is queued behind a
// chain of large matmuls, then the allreduce is launched at once.
TEST(Nccl, AsyncAllreduceIsOrderedAfterQueuedKernels) {
  SKIP_WITHOUT_GPU();
  const int n = W().size();
  Generator g(5);
  Tensor a = Tensor::randn({2048, 2048}, g).to(gpu());
  Tensor b = Tensor::randn({2048, 2048}, g).to(gpu()) * 0.02;
  Tensor y = Tensor::zeros({1 << 22}, DType::f32, gpu());
  cuda::synchronize();
  for (int rep = 0; rep < 3; ++rep) {
    Tensor c = a;
    for (int k = 0; k < 8; ++k) c = matmul(c, b);  // some milliseconds of queued compute
    y.fill_(rep + 1.0);                            // the write, queued behind them
    auto work = nccl().allreduce_async(y, NcclReduce::sum);
    work->wait();  // the compute stream waits for the collective; the host does not
    Tensor z = y * 2.0;  // a kernel on the compute stream after wait(): sees the reduced values
    auto got = host(z);
    for (size_t i = 0; i < got.size(); i += 4093)
      ASSERT_EQ(got[i], 2.0 * n * (rep + 1)) << "repetition " << rep << " element " << i;
    work->synchronize();
    EXPECT_TRUE(work->done());
  }
}

// ---------------------------------------------------------------- DataParallel over NCCL

std::pair<Tensor, Tensor> batch(int64_t n, int64_t features, int step) {
  Generator g(100 + step);
  Tensor x = Tensor::randn({n, features}, g);
  std::vector<int64_t> y(static_cast<size_t>(n));
  for (auto& v : y) v = static_cast<int64_t>(g.next_u64() % 3);
  return {x, Tensor::from_vector(y, {n})};
}

std::vector<std::vector<double>> grads(nn::Module& m) {
  std::vector<std::vector<double>> out;
  for (auto& p : m.parameters()) out.push_back(host(p.grad()));
  return out;
}

double max_rel_diff(const std::vector<std::vector<double>>& a, const std::vector<std::vector<double>>& b) {
  double worst = 0;
  for (size_t k = 0; k < a.size(); ++k)
    for (size_t i = 0; i < a[k].size(); ++i)
      worst = std::max(worst, std::abs(a[k][i] - b[k][i]) / (1e-3 + std::abs(a[k][i])));
  return worst;
}

// Every rank trains on the same batch, so the averaged gradient equals the
// gradient of one process without DataParallel, whatever the world size.
void check_same_gradients(bool bf16_wire, double tol) {
  auto ref = nn::models::mlp(16, {64, 32}, 3, "tanh", 0.0, /*seed=*/7);
  auto model = nn::models::mlp(16, {64, 32}, 3, "tanh", 0.0, /*seed=*/7);
  ref->to(gpu());
  model->to(gpu());
  DataParallelOptions o;
  o.bucket_bytes = 4096;  // several buckets for this small net
  o.bf16_wire = bf16_wire;
  DataParallel dp(*model, W(), nccl(), o);
  EXPECT_EQ(dp.nccl(), &nccl());
  EXPECT_GT(dp.num_buckets(), 2);
  for (int step = 0; step < 3; ++step) {
    auto [x, y] = batch(32, 16, step);
    x = x.to(gpu()), y = y.to(gpu());
    ref->zero_grad();
    cross_entropy(ref->forward(x), y).backward();
    dp.zero_grad();
    cross_entropy(model->forward(x), y).backward();
    EXPECT_EQ(dp.launched_during_backward(), dp.num_buckets()) << "every bucket launched by its last gradient's hook";
    dp.finish();
    for (auto& p : model->parameters()) ASSERT_TRUE(p.grad().device().is_cuda());
    EXPECT_LT(max_rel_diff(grads(*ref), grads(*model)), tol) << "step " << step << (bf16_wire ? " (bf16 wire)" : "");
  }
}

TEST(NcclDataParallel, SameGradientsAsWithoutDataParallel) {
  SKIP_WITHOUT_GPU();
  check_same_gradients(false, 1e-5);
}

TEST(NcclDataParallel, Bf16WireStaysClose) {
  SKIP_WITHOUT_GPU();
  check_same_gradients(true, 2e-2);
}

// Parameters on the GPU and no communicator given: DataParallel makes its own;
// a few SGD steps of lenet5 (conv, pooling) end at the weights of plain training.
TEST(NcclDataParallel, CreatesItsCommunicatorAndTrainsLikeOneProcess) {
  SKIP_WITHOUT_GPU();
  nccl();  // the device is chosen and current
  auto ref = nn::models::lenet5(1, 10, 28, 28, /*seed=*/3);
  auto model = nn::models::lenet5(1, 10, 28, 28, /*seed=*/3);
  ref->to(gpu());
  model->to(gpu());
  DataParallel dp(*model, W(), DataParallelOptions{});
  ASSERT_NE(dp.nccl(), nullptr);
  EXPECT_EQ(dp.device(), gpu());
  optim::SGDOptions so;
  so.lr = 0.05;
  so.momentum = 0.9;
  optim::SGD opt_ref(optim::param_specs(*ref), so), opt(optim::param_specs(*model), so);
  Generator g(11);
  for (int step = 0; step < 4; ++step) {
    Tensor x = Tensor::randn({8, 1, 28, 28}, g).to(gpu());
    std::vector<int64_t> labels(8);
    for (auto& v : labels) v = static_cast<int64_t>(g.next_u64() % 10);
    Tensor y = Tensor::from_vector(labels, {8}).to(gpu());
    ref->zero_grad();
    cross_entropy(ref->forward(x), y).backward();
    opt_ref.step();
    dp.zero_grad();
    cross_entropy(model->forward(x), y).backward();
    EXPECT_GT(dp.launched_during_backward(), 0);
    dp.finish();
    opt.step();
  }
  auto a = model->parameters(), b = ref->parameters();
  ASSERT_EQ(a.size(), b.size());
  for (size_t k = 0; k < a.size(); ++k) {
    auto va = host(a[k]), vb = host(b[k]);
    for (size_t i = 0; i < va.size(); ++i) ASSERT_NEAR(va[i], vb[i], 1e-4 * (1 + std::abs(vb[i]))) << "param " << k;
  }
}

// ---------------------------------------------------------------- several ranks (mpirun -np N, N GPUs)

#define SKIP_WITHOUT_RANKS()                                                                              \
  SKIP_WITHOUT_GPU();                                                                                     \
  if (W().size() < 2) GTEST_SKIP() << "needs mpirun -np 2 or more (world is " << W().size() << " rank)"; \
  if (cuda::device_count() < W().size()) GTEST_SKIP() << "needs one GPU per rank"

TEST(NcclMultiRank, RanksGetDistinctGpusAndReduceTheirValues) {
  SKIP_WITHOUT_RANKS();
  const int n = W().size(), r = W().rank();
  Tensor idx = Tensor::from_vector<int64_t>({gpu().index}, {1});
  auto all = W().allgather(idx).to_vector<int64_t>();
  for (int q = 0; q < n; ++q)
    for (int p = 0; p < q; ++p) EXPECT_NE(all[p], all[q]) << "ranks " << p << " and " << q << " share a GPU";
  Tensor t = Tensor::full({100}, static_cast<double>(r), DType::f32, gpu());
  nccl().allreduce(t, NcclReduce::max);
  for (double v : host(t)) ASSERT_EQ(v, n - 1.0);
}

// N ranks x batch B end with the weights of one process x batch N*B, identical on every rank.
TEST(NcclMultiRank, DataParallelMatchesTheGlobalBatch) {
  SKIP_WITHOUT_RANKS();
  const int n = W().size(), r = W().rank();
  const int64_t B = 8;
  auto ref = nn::models::mlp(16, {64, 32}, 3, "tanh", 0.0, 9);
  auto model = nn::models::mlp(16, {64, 32}, 3, "tanh", 0.0, 9);
  ref->to(gpu());
  model->to(gpu());
  DataParallelOptions o;
  o.bucket_bytes = 4096;
  DataParallel dp(*model, W(), nccl(), o);
  optim::SGDOptions so;
  so.lr = 0.1;
  optim::SGD opt_ref(optim::param_specs(*ref), so), opt(optim::param_specs(*model), so);
  for (int step = 0; step < 4; ++step) {
    auto [x, y] = batch(B * n, 16, step);
    ref->zero_grad();
    cross_entropy(ref->forward(x.to(gpu())), y.to(gpu())).backward();
    opt_ref.step();
    dp.zero_grad();
    Tensor xs = x.slice(0, r * B, (r + 1) * B), ys = y.slice(0, r * B, (r + 1) * B);
    cross_entropy(model->forward(xs.to(gpu())), ys.to(gpu())).backward();
    dp.finish();
    opt.step();
  }
  std::vector<float> mine;
  auto a = model->parameters(), b = ref->parameters();
  for (size_t k = 0; k < a.size(); ++k) {
    auto va = host(a[k]), vb = host(b[k]);
    for (size_t i = 0; i < va.size(); ++i) {
      ASSERT_NEAR(va[i], vb[i], 2e-5 * (1 + std::abs(vb[i]))) << "rank " << r << " param " << k;
      mine.push_back(static_cast<float>(va[i]));
    }
  }
  auto all = W().allgather(Tensor::from_vector(mine, {static_cast<int64_t>(mine.size())})).to_vector<float>();
  for (int q = 1; q < n; ++q)
    for (size_t i = 0; i < mine.size(); ++i) ASSERT_EQ(all[i], all[q * mine.size() + i]) << "rank " << q;
}

}  // namespace
}  // namespace hpdl::dist

#endif  // HPDL_HAVE_CUDA
