// Samplers (determinism, per-epoch reshuffle, disjoint shards covering the
// dataset, resume position), transform determinism, and the DataLoader: the
// same batches for 1 and 3 workers, resume mid-epoch, worker errors.
#include <gtest/gtest.h>

#include <set>
#include <thread>

#include "hpdl/core/error.h"
#include "hpdl/core/threading.h"
#include "hpdl/data/dataloader.h"

using namespace hpdl;
using namespace hpdl::data;

namespace {

// n samples of [C, H, W]; sample i's pixels are i*1000 + k, its label i % 10.
std::shared_ptr<InMemoryDataset> toy(int64_t n, Shape s = {1, 4, 4}) {
  std::vector<float> v;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t k = 0; k < numel_of(s); ++k) v.push_back(static_cast<float>(i * 1000 + k));
  std::vector<int64_t> l;
  for (int64_t i = 0; i < n; ++i) l.push_back(i % 10);
  return std::make_shared<InMemoryDataset>(s, std::move(v), std::move(l));
}

Pipeline augment() {
  Pipeline p;
  p.add(std::make_shared<RandomCrop>(2));
  p.add(std::make_shared<RandomHorizontalFlip>(0.5));
  p.add(std::make_shared<Normalize>(std::vector<float>{100}, std::vector<float>{50}));
  return p;
}

std::vector<std::vector<float>> run_epoch(DataLoader& dl, uint64_t epoch, int64_t start = 0) {
  dl.start_epoch(epoch, start);
  std::vector<std::vector<float>> out;
  Batch b;
  while (dl.next(b)) {
    std::vector<float> v = b.images.to_vector<float>();
    for (int64_t l : b.labels.to_vector<int64_t>()) v.push_back(static_cast<float>(l));
    out.push_back(std::move(v));
  }
  return out;
}

// Throws for one chosen index, to test error propagation out of workers.
class Faulty : public Dataset {
 public:
  int64_t size() const override { return 50; }
  Shape sample_shape() const override { return {1, 2, 2}; }
  int64_t get(int64_t i, float* out) const override {
    HPDL_CHECK(i != 37, "decode failed for sample file img_{}.png", i);
    for (int k = 0; k < 4; ++k) out[k] = static_cast<float>(i);
    return 0;
  }
};

// Records the OpenMP team size its get() would use, on whichever thread calls it.
class TeamSizeProbe : public Dataset {
 public:
  int64_t size() const override { return 16; }
  Shape sample_shape() const override { return {1}; }
  int64_t get(int64_t, float* out) const override {
    out[0] = static_cast<float>(omp_get_max_threads());
    return 0;
  }
};

}  // namespace

TEST(Sampler, PermutationDependsOnlyOnSeedAndEpoch) {
  RandomSampler a(1000, 7), b(1000, 7), c(1000, 8);
  EXPECT_EQ(a.epoch_indices(3), b.epoch_indices(3));
  EXPECT_NE(a.epoch_indices(3), a.epoch_indices(4));
  EXPECT_NE(a.epoch_indices(3), c.epoch_indices(3));
  std::vector<int64_t> p = a.epoch_indices(0);
  std::set<int64_t> s(p.begin(), p.end());
  EXPECT_EQ(s.size(), 1000u);
  EXPECT_EQ(*s.begin(), 0);
  EXPECT_EQ(*s.rbegin(), 999);
}

TEST(Sampler, DistributedShardsAreDisjointAndCoverEverything) {
  for (int64_t n : {100, 103}) {
    const int R = 4;
    std::vector<int64_t> all;
    for (int r = 0; r < R; ++r) {
      DistributedSampler s(n, R, r, true, 11);
      auto idx = s.epoch_indices(2);
      EXPECT_EQ(static_cast<int64_t>(idx.size()), (n + R - 1) / R);
      all.insert(all.end(), idx.begin(), idx.end());
    }
    std::set<int64_t> uniq(all.begin(), all.end());
    EXPECT_EQ(static_cast<int64_t>(uniq.size()), n);  // covers everything
    EXPECT_EQ(static_cast<int64_t>(all.size()), ((n + R - 1) / R) * R);  // duplicates only from padding
    // Global order = the same permutation single-rank training sees.
    std::vector<int64_t> global = permutation(n, 11, 2);
    DistributedSampler s1(n, R, 1, true, 11);
    EXPECT_EQ(s1.epoch_indices(2)[0], global[1]);
    EXPECT_EQ(s1.epoch_indices(2)[1], global[1 + R]);
  }
  DistributedSampler d(103, 4, 3, true, 11, /*drop_last=*/true);
  EXPECT_EQ(d.epoch_length(), 25);
}

TEST(Sampler, StartPositionSkipsConsumedSamples) {
  DistributedSampler s(50, 2, 1, true, 3);
  s.set_epoch(5);
  auto full = s.indices();
  s.set_start(10);
  auto rest = s.indices();
  EXPECT_EQ(rest, std::vector<int64_t>(full.begin() + 10, full.end()));
  EXPECT_THROW(s.set_start(26), Error);
}

TEST(Transforms, DeterministicPerSampleKey) {
  Pipeline p = augment();
  Shape in{1, 4, 4};
  std::vector<float> x(16), a(p.scratch_numel(in)), b(a.size()), o1(16), o2(16), o3(16);
  for (int k = 0; k < 16; ++k) x[static_cast<size_t>(k)] = static_cast<float>(k + 1);
  p.apply(x.data(), in, o1.data(), a.data(), b.data(), {1, 2, 3});
  p.apply(x.data(), in, o2.data(), a.data(), b.data(), {1, 2, 3});
  EXPECT_EQ(o1, o2);
  // Different samples/epochs get different crops: over many keys not all equal.
  int differ = 0;
  for (int64_t i = 0; i < 20; ++i) {
    p.apply(x.data(), in, o3.data(), a.data(), b.data(), {1, 2, i + 10});
    differ += o3 != o1;
  }
  EXPECT_GT(differ, 10);
}

TEST(Transforms, CropFlipNormalizeValues) {
  Shape in{1, 1, 3};
  std::vector<float> x{1, 2, 3}, o(3);
  RandomHorizontalFlip always(1.0);
  always.apply(x.data(), in, o.data(), 0);
  EXPECT_EQ(o, (std::vector<float>{3, 2, 1}));
  RandomCrop none(0);
  none.apply(x.data(), in, o.data(), 123);
  EXPECT_EQ(o, x);
  Normalize n({1}, {2});
  n.apply(x.data(), in, o.data(), 0);
  EXPECT_EQ(o, (std::vector<float>{0, 0.5f, 1}));
  // A padded crop keeps every value from the input or zero.
  RandomCrop pad(1);
  for (uint64_t s = 0; s < 10; ++s) {
    pad.apply(x.data(), in, o.data(), s);
    for (float v : o) EXPECT_TRUE(v == 0 || v == 1 || v == 2 || v == 3);
  }
}

TEST(DataLoader, SameBatchesForOneAndThreeWorkers) {
  auto ds = toy(103);
  std::vector<std::vector<std::vector<float>>> results;
  for (int workers : {0, 1, 3}) {
    DataLoaderOptions o;
    o.batch_size = 8;
    o.workers = workers;
    o.prefetch = 3;
    o.seed = 5;
    DataLoader dl(ds, std::make_shared<RandomSampler>(103, 9), o, augment());
    auto e0 = run_epoch(dl, 0);
    auto e1 = run_epoch(dl, 1);
    EXPECT_EQ(e0.size(), 13u);
    EXPECT_NE(e0, e1);
    e0.insert(e0.end(), e1.begin(), e1.end());
    results.push_back(e0);
  }
  EXPECT_EQ(results[0], results[1]);
  EXPECT_EQ(results[1], results[2]);
}

TEST(DataLoader, DropLastLabelsAndResumeMidEpoch) {
  auto ds = toy(30);
  DataLoaderOptions o;
  o.batch_size = 4;
  o.drop_last = true;
  o.workers = 2;
  DataLoader dl(ds, std::make_shared<SequentialSampler>(30), o);
  dl.start_epoch(0);
  EXPECT_EQ(dl.num_batches(), 7);
  Batch b;
  ASSERT_TRUE(dl.next(b));
  EXPECT_EQ(b.images.shape(), (Shape{4, 1, 4, 4}));
  EXPECT_EQ(b.labels.to_vector<int64_t>(), (std::vector<int64_t>{0, 1, 2, 3}));
  EXPECT_EQ(b.images.to_vector<float>()[16], 1000.0f);  // sample 1, pixel 0
  ASSERT_TRUE(dl.next(b));
  EXPECT_EQ(dl.position(), 8);
  // Resume from position 8 gives the remaining batches of a straight run.
  DataLoaderOptions o2 = o;
  o2.workers = 3;
  o2.drop_last = false;
  DataLoader straight(ds, std::make_shared<RandomSampler>(30, 1), o2, augment());
  DataLoader resumed(ds, std::make_shared<RandomSampler>(30, 1), o2, augment());
  auto all = run_epoch(straight, 4);
  auto rest = run_epoch(resumed, 4, 8);
  ASSERT_EQ(rest.size() + 2, all.size());
  EXPECT_TRUE(std::equal(rest.begin(), rest.end(), all.begin() + 2));
}

TEST(DataLoader, HeldBatchIsNeverOverwritten) {
  auto ds = toy(40);
  DataLoaderOptions o;
  o.batch_size = 4;
  o.workers = 2;
  o.prefetch = 1;
  DataLoader dl(ds, std::make_shared<SequentialSampler>(40), o);
  dl.start_epoch(0);
  Batch b;
  ASSERT_TRUE(dl.next(b));
  Tensor kept = b.images;  // the caller keeps the first batch
  std::vector<float> before = kept.to_vector<float>();
  while (dl.next(b)) {
  }
  EXPECT_EQ(kept.to_vector<float>(), before);
}

TEST(DataLoader, WorkerErrorsReachTheCallerWithContext) {
  for (int workers : {0, 3}) {
    DataLoaderOptions o;
    o.batch_size = 8;
    o.workers = workers;
    DataLoader dl(std::make_shared<Faulty>(), std::make_shared<SequentialSampler>(50), o);
    dl.start_epoch(0);
    Batch b;
    std::string err;
    int got = 0;
    try {
      while (dl.next(b)) ++got;
    } catch (const Error& e) {
      err = e.what();
    }
    EXPECT_EQ(got, 4) << "batches before the failing one arrive intact";
    EXPECT_NE(err.find("img_37.png"), std::string::npos) << err;
    EXPECT_NE(err.find("dataset index 37"), std::string::npos) << err;
    // The loader is reusable after an error, and shuts down cleanly.
    dl.start_epoch(1);
    ASSERT_TRUE(dl.next(b));
  }
}

TEST(Transforms, MakePipelineFromFlags) {
  AugmentOptions o;
  o.random_crop = true, o.random_flip = true;
  EXPECT_FALSE(make_pipeline(o, true).empty());
  o.normalize = false;
  EXPECT_TRUE(make_pipeline(o, false).empty());  // evaluation never augments
  o.normalize = true, o.mean = {0.5f}, o.std = {0.5f};
  Pipeline eval = make_pipeline(o, false);
  std::vector<float> x{1, 0}, out(2), a(2), b(2);
  eval.apply(x.data(), {1, 1, 2}, out.data(), a.data(), b.data(), {});
  EXPECT_EQ(out, (std::vector<float>{1, -1}));
}

// OpenMP keeps the team size per thread: a worker started after
// set_num_threads(1) would still fork OMP_NUM_THREADS (2 in these tests)
// threads for its kernels and fight the main thread's team for the cores.
// Workers take the count the process set.
TEST(DataLoader, WorkersUseTheThreadCountTheProcessSet) {
  const int before = num_threads();
  ASSERT_GT(before, 1) << "run with OMP_NUM_THREADS >= 2 (ctest sets 2)";
  set_num_threads(1);
  DataLoaderOptions o;
  o.batch_size = 4;
  o.workers = 2;
  DataLoader dl(std::make_shared<TeamSizeProbe>(), std::make_shared<SequentialSampler>(16), o);
  dl.start_epoch(0, 0);
  Batch b;
  int batches = 0;
  while (dl.next(b)) {
    for (float v : b.images.to_vector<float>()) EXPECT_EQ(v, 1.0f);
    ++batches;
  }
  EXPECT_EQ(batches, 4);
  // The hazard itself: a thread hpdl does not start keeps OpenMP's default
  // (here OMP_NUM_THREADS), unless it adopts the process's count.
  int plain = 0, adopted = 0;
  std::thread([&] { plain = omp_get_max_threads(); }).join();
  std::thread([&] {
    adopt_num_threads();
    adopted = omp_get_max_threads();
  }).join();
  set_num_threads(before);
  EXPECT_EQ(plain, before);
  EXPECT_EQ(adopted, 1);
}
