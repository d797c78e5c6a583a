// StageComm over plain MPI (mpi.h): node discovery with MPI_Comm_split_type
// (MPI_COMM_TYPE_SHARED), or by the HPDL_NODE_ID variable for single-machine tests,
// and a communicator of node leaders for the data. The only MPI code of the store.
#include <mpi.h>

#include <cstdio>
#include <cstdlib>

#include "hpdl/core/env.h"
#include "hpdl/core/error.h"
#include "hpdl/store/stage_comm_impl.h"

namespace hpdl::store::detail {
namespace {

bool under_launcher() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS"})
    if (std::getenv(v)) return true;
  return false;
}

void check(int rc, const char* call) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, text, &len);
  HPDL_FAIL("hpdl stage: {} failed: {}", call, std::string(text, len));
}

// MPI counts are int: move large buffers in pieces of at most 1 GiB.
constexpr size_t kPiece = size_t{1} << 30;

class MpiComm final : public StageComm {
 public:
  MpiComm() {
    int inited = 0;
    MPI_Initialized(&inited);
    if (!inited) {
      check(MPI_Init(nullptr, nullptr), "MPI_Init");
      own_init_ = true;
    }
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
    hpdl::set_error_rank(rank_);
    int key = rank_;
    if (const int node_id = env_node_id(); node_id >= 0) {
      check(MPI_Comm_split(MPI_COMM_WORLD, node_id, rank_, &node_comm_), "MPI_Comm_split(HPDL_NODE_ID)");
      key = node_id;
    } else {
      check(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node_comm_),
            "MPI_Comm_split_type(MPI_COMM_TYPE_SHARED)");
    }
    int node_rank = 0;
    MPI_Comm_rank(node_comm_, &node_rank);
    leader_ = node_rank == 0;
    check(MPI_Comm_split(MPI_COMM_WORLD, leader_ ? 0 : MPI_UNDEFINED, key, &leaders_), "MPI_Comm_split(leaders)");
    int info[2] = {0, 0};
    if (leader_) {
      MPI_Comm_rank(leaders_, &info[0]);
      MPI_Comm_size(leaders_, &info[1]);
    }
    check(MPI_Bcast(info, 2, MPI_INT, 0, node_comm_), "MPI_Bcast(node index)");
    node_ = info[0];
    nodes_ = info[1];
  }
  ~MpiComm() override {
    if (leaders_ != MPI_COMM_NULL) MPI_Comm_free(&leaders_);
    MPI_Comm_free(&node_comm_);
    if (own_init_) MPI_Finalize();
  }
  int node() const override { return node_; }
  int nodes() const override { return nodes_; }
  bool leader() const override { return leader_; }
  bool distributed() const override { return true; }
  void bcast(void* data, size_t n, int root) override {
    auto* p = static_cast<char*>(data);
    for (size_t at = 0; at < n; at += kPiece)
      check(MPI_Bcast(p + at, int(std::min(kPiece, n - at)), MPI_BYTE, root, leaders_), "MPI_Bcast");
  }
  void send(const void* data, size_t n, int to) override {
    auto* p = static_cast<const char*>(data);
    for (size_t at = 0; at < n; at += kPiece)
      check(MPI_Send(p + at, int(std::min(kPiece, n - at)), MPI_BYTE, to, 7, leaders_), "MPI_Send");
  }
  void recv(void* data, size_t n, int from) override {
    auto* p = static_cast<char*>(data);
    for (size_t at = 0; at < n; at += kPiece)
      check(MPI_Recv(p + at, int(std::min(kPiece, n - at)), MPI_BYTE, from, 7, leaders_, MPI_STATUS_IGNORE),
            "MPI_Recv");
  }
  void barrier() override { check(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier"); }
  [[noreturn]] void abort(const std::string& message) override {
    std::fprintf(stderr, "hpdl: error: %s\n", message.c_str());
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 1);
    std::abort();
  }

 private:
  int rank_ = 0, size_ = 1, node_ = 0, nodes_ = 1;
  bool leader_ = true, own_init_ = false;
  MPI_Comm node_comm_ = MPI_COMM_NULL, leaders_ = MPI_COMM_NULL;
};

class LocalComm final : public StageComm {
 public:
  int node() const override { return 0; }
  int nodes() const override { return 1; }
  bool leader() const override { return true; }
  bool distributed() const override { return false; }
  void bcast(void*, size_t, int) override {}
  void send(const void*, size_t, int) override { HPDL_FAIL("hpdl stage: send on a single node"); }
  void recv(void*, size_t, int) override { HPDL_FAIL("hpdl stage: recv on a single node"); }
  void barrier() override {}
  [[noreturn]] void abort(const std::string& message) override { throw std::runtime_error(message); }
};

}  // namespace

std::unique_ptr<StageComm> make_stage_comm() {
  if (under_launcher()) return std::make_unique<MpiComm>();
  return std::make_unique<LocalComm>();
}

}  // namespace hpdl::store::detail
