// Communicator collectives across real ranks (run under mpirun -np 2 and -np 4).
#include <gtest/gtest.h>

#include <sched.h>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <cstring>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "hpdl/dist/communicator.h"
#include "tests/mpi/mpi_test_util.h"

namespace hpdl::dist {
namespace {

Communicator& W() { return Communicator::world(); }

TEST(Communicator, AllreduceSumsEveryRank) {
  const int n = W().size(), r = W().rank();
  ASSERT_GE(n, 2) << "multi-rank tests must run under mpirun with at least 2 ranks";
  Tensor t = Tensor::from_vector<float>({float(r), 1.0f, float(r * r)}, {3});
  W().allreduce(t);
  float sum_r = n * (n - 1) / 2.0f, sum_r2 = 0;
  for (int i = 0; i < n; ++i) sum_r2 += float(i * i);
  EXPECT_EQ(t.to_vector<float>(), (std::vector<float>{sum_r, float(n), sum_r2}));
}

TEST(Communicator, AllreduceMaxAndDouble) {
  Tensor t = Tensor::from_vector<double>({double(W().rank())}, {1});
  W().allreduce(t, ReduceKind::max);
  EXPECT_EQ(t.item(), W().size() - 1);
}

TEST(Communicator, AsyncAllreducesCompleteInOrder) {
  std::vector<Tensor> bufs;
  std::vector<std::shared_ptr<Work>> works;
  for (int i = 0; i < 8; ++i) {
    bufs.push_back(Tensor::full({1000}, i + W().rank()));
    works.push_back(W().allreduce_async(bufs.back()));
  }
  for (auto& w : works) w->wait();
  const int n = W().size();
  for (int i = 0; i < 8; ++i) {
    float expected = n * i + n * (n - 1) / 2.0f;
    auto v = bufs[i].to_vector<float>();
    EXPECT_EQ(v.front(), expected);
    EXPECT_EQ(v.back(), expected);
  }
}

TEST(Communicator, Bf16AllreduceOnTheWire) {
  Tensor t = Tensor::full({64}, 0.5).to(DType::bf16);
  W().allreduce(t);
  EXPECT_FLOAT_EQ(t.to(DType::f32).to_vector<float>()[7], 0.5f * W().size());
}

// Hierarchical allreduce: ranks pose as nodes of two (node = rank / 2). At -np 4
// that is two nodes of two ranks, and the hierarchy is used; at -np 2 it is one
// node, and allreduce stays flat. Either way every rank gets the exact sums
// (integer-valued floats add exactly in any order), for sizes that split evenly
// and unevenly over a node's ranks, below one element per rank, in float32,
// float64 (max) and bfloat16, synchronous and on the communication thread.
// The tests run under `mpirun --bind-to none` on one machine: every rank may
// run on every core, so all share them. Then each rank pins itself to core
// rank % cores: ranks share a core only with those pinned to the same one.
TEST(Communicator, CoreShareCountsTheRanksOnTheSameCores) {
  cpu_set_t all;
  ASSERT_EQ(sched_getaffinity(0, sizeof all, &all), 0);
  const int cores = CPU_COUNT(&all), n = W().size(), r = W().rank();
  auto share = W().core_share();
  EXPECT_EQ(share.cores, cores);
  EXPECT_EQ(share.ranks, n);
  EXPECT_EQ(share.threads(), std::max(1, cores / n));

  std::vector<int> allowed;
  for (int c = 0; c < CPU_SETSIZE; ++c)
    if (CPU_ISSET(c, &all)) allowed.push_back(c);
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(allowed[static_cast<size_t>(r) % allowed.size()], &one);
  ASSERT_EQ(sched_setaffinity(0, sizeof one, &one), 0);
  share = W().core_share();
  ASSERT_EQ(sched_setaffinity(0, sizeof all, &all), 0);
  int same_core = 0;
  for (int q = 0; q < n; ++q) same_core += q % static_cast<int>(allowed.size()) == r % static_cast<int>(allowed.size());
  EXPECT_EQ(share.cores, 1);
  EXPECT_EQ(share.ranks, same_core);
  EXPECT_EQ(share.threads(), 1);
}

TEST(Communicator, HierarchicalAllreduceGivesTheFlatResult) {
  const int n = W().size(), r = W().rank();
  auto c = W().split(0, r);
  const bool used = c->set_hierarchical(true, r / 2, /*min_bytes=*/0);
  EXPECT_EQ(used, n >= 4 && n % 2 == 0);
  EXPECT_EQ(c->hierarchical(), used);
  for (int64_t len : {int64_t{1}, int64_t{3}, int64_t{5}, int64_t{4096}, int64_t{100003}}) {
    std::vector<float> mine(static_cast<size_t>(len)), want(static_cast<size_t>(len), 0.f);
    for (int64_t i = 0; i < len; ++i) {
      mine[size_t(i)] = float((r + 1) * (i % 7) + r);
      for (int k = 0; k < n; ++k) want[size_t(i)] += float((k + 1) * (i % 7) + k);
    }
    Tensor t = Tensor::from_vector<float>(mine, {len});
    c->allreduce(t);
    EXPECT_EQ(t.to_vector<float>(), want) << "len " << len;
    Tensor a = Tensor::from_vector<float>(mine, {len});
    c->allreduce_async(a)->wait();
    EXPECT_EQ(a.to_vector<float>(), want) << "async, len " << len;
  }
  Tensor d = Tensor::full({1001}, double(r * 3), DType::f64);
  c->allreduce(d, ReduceKind::max);
  EXPECT_EQ(d.to_vector<double>().back(), double(3 * (n - 1)));
  Tensor b = Tensor::full({777}, 0.5).to(DType::bf16);
  c->allreduce(b);
  EXPECT_EQ(b.to(DType::f32).to_vector<float>()[776], 0.5f * float(n));
  EXPECT_FALSE(c->set_hierarchical(false));
  EXPECT_FALSE(c->hierarchical());
}

// Nodes of different sizes ({0, 0, 0, 1} at -np 4), one rank per node, and one
// node: every rank agrees that the hierarchy cannot be used. HPDL_NODE_ID gives
// the node when none is passed, and a bad value is an error naming it.
TEST(Communicator, HierarchicalAllreduceOnlyWithEqualNodesOfSeveralRanks) {
  const int n = W().size(), r = W().rank();
  auto c = W().split(0, r);
  EXPECT_FALSE(c->set_hierarchical(true, r == n - 1 ? 1 : 0));
  EXPECT_FALSE(c->set_hierarchical(true, r));
  EXPECT_FALSE(c->set_hierarchical(true, 0));
  ::setenv("HPDL_NODE_ID", std::to_string(r / 2).c_str(), 1);
  EXPECT_EQ(c->set_hierarchical(true), n >= 4 && n % 2 == 0);
  ::setenv("HPDL_NODE_ID", "node-a", 1);
  try {
    c->set_hierarchical(true);
    ADD_FAILURE() << "a bad HPDL_NODE_ID was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("HPDL_NODE_ID='node-a'"), std::string::npos) << e.what();
  }
  ::unsetenv("HPDL_NODE_ID");
  Tensor t = Tensor::full({10}, 1.0);
  c->allreduce(t);  // still usable, flat
  EXPECT_EQ(t.to_vector<float>()[9], float(n));
}

TEST(Communicator, BroadcastFromRoot) {
  Tensor t = Tensor::full({5}, W().rank() == 0 ? 42.0 : -1.0);
  W().broadcast(t, 0);
  EXPECT_EQ(t.to_vector<float>()[4], 42.0f);
}

TEST(Communicator, AllgatherStacksInRankOrder) {
  Tensor t = Tensor::full({2}, W().rank());
  Tensor all = W().allgather(t);
  ASSERT_EQ(all.shape(), (Shape{W().size(), 2}));
  auto v = all.to_vector<float>();
  for (int r = 0; r < W().size(); ++r) EXPECT_EQ(v[2 * r], float(r));
}

TEST(Communicator, GatherBytesOfDifferentSizesOnRoot) {
  // Rank r sends r + 1 bytes of value r; the last rank is the root.
  const int root = W().size() - 1;
  std::vector<char> mine(static_cast<size_t>(W().rank() + 1), static_cast<char>(W().rank()));
  auto all = W().gather_bytes(mine, root);
  if (W().rank() != root) {
    EXPECT_TRUE(all.empty());
    return;
  }
  ASSERT_EQ(all.size(), static_cast<size_t>(W().size()));
  for (int r = 0; r < W().size(); ++r) EXPECT_EQ(all[r], std::vector<char>(static_cast<size_t>(r + 1), char(r)));
}

TEST(Communicator, BroadcastRegionsFillsSeparateTensorsInOneMessage) {
  // Three tensors of different dtypes and sizes, and an empty region, from the last rank.
  const int root = W().size() - 1;
  const bool me = W().rank() == root;
  Tensor a = Tensor::full({7}, me ? 1.5 : 0.0), b = Tensor::full({2, 3}, me ? -2.0 : 0.0, DType::f64);
  Tensor c = Tensor::full({1}, me ? 9.0 : 0.0, DType::i64), untouched = Tensor::full({2}, W().rank());
  W().broadcast_regions({{a.raw_data(), int64_t(a.nbytes())}, {untouched.raw_data(), 0},
                         {b.raw_data(), int64_t(b.nbytes())}, {c.raw_data(), int64_t(c.nbytes())}}, root);
  EXPECT_EQ(a.to_vector<float>(), std::vector<float>(7, 1.5f));
  EXPECT_EQ(b.to_vector<double>(), std::vector<double>(6, -2.0));
  EXPECT_EQ(c.item(), 9.0);
  EXPECT_EQ(untouched.to_vector<float>()[0], float(W().rank()));
}

TEST(Communicator, SplitIntoSubCommunicators) {
  auto sub = W().split(W().rank() % 2, W().rank());
  Tensor t = Tensor::ones({1});
  sub->allreduce(t);
  int expected = (W().size() + (W().rank() % 2 == 0 ? 1 : 0)) / 2;
  EXPECT_EQ(t.item(), expected);
  EXPECT_EQ(sub->rank(), W().rank() / 2);
}

TEST(Communicator, ErrorsInAsyncWorkReachTheWaiter) {
  auto w = W().enqueue([] { HPDL_FAIL("boom on the communication thread"); });
  EXPECT_THROW(w->wait(), Error);
}

// Point-to-point bytes: every rank sends its right neighbour a message that
// names both ends; then every rank but 0 sends two messages to rank 0, which
// takes them from any source and must see each sender's two in order.
TEST(Communicator, SendRecvBytesRingAndAnySource) {
  const int n = W().size(), r = W().rank();
  const std::string out = "from " + std::to_string(r) + " to " + std::to_string((r + 1) % n);
  W().send_bytes(out.data(), static_cast<int64_t>(out.size()), (r + 1) % n, 5);
  int from = -1;
  const auto in = W().recv_bytes((r + n - 1) % n, 5, &from);
  EXPECT_EQ(std::string(in.begin(), in.end()), "from " + std::to_string((r + n - 1) % n) + " to " + std::to_string(r));
  EXPECT_EQ(from, (r + n - 1) % n);
  if (r != 0) {
    for (int64_t k = 0; k < 2; ++k) {
      const int64_t msg[2] = {r, k};
      W().send_bytes(msg, sizeof(msg), 0, 6);
    }
  } else {
    std::vector<int64_t> next(static_cast<size_t>(n), 0);
    for (int i = 0; i < 2 * (n - 1); ++i) {
      const auto b = W().recv_bytes(Communicator::kAnySource, 6, &from);
      ASSERT_EQ(b.size(), 2 * sizeof(int64_t));
      int64_t msg[2];
      std::memcpy(msg, b.data(), sizeof(msg));
      EXPECT_EQ(msg[0], from);
      EXPECT_EQ(msg[1], next[static_cast<size_t>(from)]++) << "messages from one sender arrive in order";
    }
  }
  EXPECT_THROW(W().send_bytes(out.data(), 1, n, 5), Error) << "a destination outside the communicator";
  W().barrier();
}

// A second thread of rank 0 receives while the main thread sends to it and
// the other ranks: the waits hold no lock, whatever the thread level.
TEST(Communicator, RecvBytesOnAThreadWhileTheMainThreadSends) {
  const int n = W().size(), r = W().rank();
  ASSERT_GE(W().thread_level(), MPI_THREAD_SERIALIZED);
  if (r == 0) {
    std::set<int> senders;
    std::thread server([&] {
      for (int i = 0; i < n; ++i) {
        int from = -1;
        W().recv_bytes(Communicator::kAnySource, 8, &from);
        senders.insert(from);
        W().send_bytes(&from, sizeof(from), from, 9);
      }
    });
    const int me = 0;
    W().send_bytes(&me, sizeof(me), 0, 8);
    const auto echo = W().recv_bytes(0, 9);
    server.join();
    EXPECT_EQ(static_cast<int>(senders.size()), n);
    EXPECT_EQ(echo.size(), sizeof(int));
  } else {
    W().send_bytes(&r, sizeof(r), 0, 8);
    const auto echo = W().recv_bytes(0, 9);
    int got = -1;
    std::memcpy(&got, echo.data(), sizeof(got));
    EXPECT_EQ(got, r);
  }
  W().barrier();
}

// idle_barrier: no rank leaves before every rank entered (rank 0 enters last, after writing a
// file the others then find), and the ranks waiting for it sleep rather than spin: the process
// CPU time they spend while rank 0 works for 400 ms is a small part of it.
TEST(Communicator, IdleBarrierWaitsForEveryRankWithoutSpinning) {
  const auto dir = test::shared_dir("idle_barrier");
  const auto marker = dir / "rank0_was_here";
  const std::clock_t cpu0 = std::clock();
  const auto wall0 = std::chrono::steady_clock::now();
  if (W().rank() == 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(400));
    std::ofstream(marker) << "x";
  }
  W().idle_barrier();
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall0).count();
  const double cpu = static_cast<double>(std::clock() - cpu0) / CLOCKS_PER_SEC;
  EXPECT_TRUE(std::filesystem::exists(marker)) << "rank " << W().rank() << " left before rank 0 entered";
  if (W().rank() != 0) {
    EXPECT_GE(wall, 0.3);
    EXPECT_LT(cpu, 0.5 * wall) << "a waiting rank used " << cpu << " s of CPU in " << wall << " s";
  }
  W().barrier();
  if (W().rank() == 0) std::filesystem::remove_all(dir);
}

// isend_bytes returns before anyone receives; try_recv_bytes finds nothing
// until a message is there, then takes each exactly once, in send order.
TEST(Communicator, IsendAndTryRecvBytes) {
  const int n = W().size(), r = W().rank();
  EXPECT_FALSE(W().try_recv_bytes(Communicator::kAnySource, 11).has_value()) << "nothing was sent yet";
  W().barrier();
  std::vector<std::unique_ptr<PendingSend>> sends;
  if (r != 0)
    for (int64_t k = 0; k < 3; ++k) {
      std::vector<uint8_t> big(100000 + static_cast<size_t>(k), static_cast<uint8_t>(r + k));  // past eager limits
      sends.push_back(W().isend_bytes(std::move(big), 0, 11));
    }
  if (r == 0) {
    std::vector<int> next(static_cast<size_t>(n), 0);
    for (int got = 0; got < 3 * (n - 1);) {
      int from = -1;
      auto m = W().try_recv_bytes(Communicator::kAnySource, 11, &from);
      if (!m) {
        std::this_thread::sleep_for(std::chrono::microseconds(100));
        continue;
      }
      const int k = next[static_cast<size_t>(from)]++;
      ASSERT_EQ(m->size(), 100000u + static_cast<size_t>(k)) << "from " << from;
      EXPECT_EQ((*m)[0], static_cast<uint8_t>(from + k));
      ++got;
    }
    EXPECT_FALSE(W().try_recv_bytes(Communicator::kAnySource, 11).has_value()) << "each message taken once";
  }
  for (auto& s : sends) s->wait();
  for (auto& s : sends) EXPECT_TRUE(s->test());
  EXPECT_THROW(W().isend_bytes({1}, n, 11), Error) << "a destination outside the communicator";
  W().barrier();
}

}  // namespace
}  // namespace hpdl::dist
