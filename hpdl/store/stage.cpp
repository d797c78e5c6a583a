// Staging a store to node-local storage. Node leader (p mod N) reads partition p
// from the shared store in chunks and streams it to the other nodes that hold p
// (a broadcast among leaders in full mode, point-to-point sends in partitioned
// mode); every holder hashes what it writes and checks it against the index before
// renaming the file into place. The index goes last, so a half-staged folder never
// looks like a store.
#include "hpdl/store/stage.h"

#include <fcntl.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <vector>

#include "hpdl/core/error.h"
#include "hpdl/io/file.h"
#include "hpdl/store/format.h"
#include "hpdl/store/stage_comm_impl.h"

namespace hpdl::store {
namespace fs = std::filesystem;

fs::path stage_destination(const std::string& pattern, int node) {
  std::string out;
  for (size_t i = 0; i < pattern.size(); ++i) {
    if (pattern[i] == '%' && i + 1 < pattern.size() && pattern[i + 1] == 'n') {
      out += std::to_string(node);
      ++i;
    } else if (pattern[i] == '%' && i + 1 < pattern.size() && pattern[i + 1] == 'h') {
      char host[256] = {};
      ::gethostname(host, sizeof host - 1);
      out += host;
      ++i;
    } else {
      out += pattern[i];
    }
  }
  return out;
}

bool stage_node_holds(StageMode mode, int replicas, uint32_t partition, int node, int nodes) {
  if (mode == StageMode::full || nodes <= 1) return true;
  const int r = std::clamp(replicas, 1, nodes);
  const int first = int(partition % uint32_t(nodes));
  return (node - first + nodes) % nodes < r;
}

namespace {

// A partition being written: temporary file, running hash of the data region.
class StagedFile {
 public:
  StagedFile(fs::path final_path) : final_(std::move(final_path)), tmp_(final_.string() + ".tmp") {
    fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    HPDL_CHECK(fd_ >= 0, "hpdl stage: cannot create {}: {}; is the node-local folder writable?", tmp_.string(),
               std::strerror(errno));
    XXH3_64bits_reset(state_.get());
  }
  ~StagedFile() {
    if (fd_ >= 0) {
      ::close(fd_);
      ::unlink(tmp_.c_str());
    }
  }
  void write(const std::byte* p, size_t n) {
    // Only the data region (after the header) enters the hash the index records.
    if (written_ + n > kHeaderSize) {
      size_t skip = written_ >= kHeaderSize ? 0 : kHeaderSize - written_;
      XXH3_64bits_update(state_.get(), p + skip, n - skip);
    }
    if (written_ < kHeaderSize) {
      size_t h = std::min(n, kHeaderSize - size_t(written_));
      header_.insert(header_.end(), p, p + h);
    }
    size_t done = 0;
    while (done < n) {
      ssize_t w = ::write(fd_, p + done, n - done);
      if (w < 0 && errno == EINTR) continue;
      HPDL_CHECK(w > 0, "hpdl stage: write to {} failed: {}; is the node-local disk full?", tmp_.string(),
                 std::strerror(errno));
      done += size_t(w);
    }
    written_ += n;
  }
  void finish(uint32_t id, const PartitionInfo& info) {
    check_partition_header(header_, id, info.data_size, written_, tmp_.string());
    HPDL_CHECK(XXH3_64bits_digest(state_.get()) == info.data_checksum,
               "hpdl stage: {} arrived corrupt (data checksum differs from the index); re-run `hpdl stage`",
               final_.string());
    HPDL_CHECK(::fsync(fd_) == 0, "hpdl stage: fsync of {} failed: {}", tmp_.string(), std::strerror(errno));
    ::close(fd_);
    fd_ = -1;
    HPDL_CHECK(::rename(tmp_.c_str(), final_.c_str()) == 0, "hpdl stage: rename to {} failed: {}",
               final_.string(), std::strerror(errno));
  }

 private:
  fs::path final_, tmp_;
  int fd_ = -1;
  uint64_t written_ = 0;
  std::vector<std::byte> header_;
  std::unique_ptr<XXH3_state_t, decltype(&XXH3_freeState)> state_{XXH3_createState(), &XXH3_freeState};
};

void pread_all(int fd, std::byte* p, size_t n, uint64_t offset, const std::string& what) {
  size_t done = 0;
  while (done < n) {
    ssize_t r = ::pread(fd, p + done, n - done, off_t(offset + done));
    if (r < 0 && errno == EINTR) continue;
    HPDL_CHECK(r > 0, "hpdl stage: read of {} failed at byte {}: {}", what, offset + done,
               r == 0 ? "unexpected end of file (truncated?)" : std::strerror(errno));
    done += size_t(r);
  }
}

StageResult stage_leader(detail::StageComm& comm, const fs::path& store, const std::string& pattern,
                         const StageOptions& options) {
  StageResult res;
  res.node = comm.node();
  res.nodes = comm.nodes();
  res.leader = true;
  res.dir = stage_destination(pattern, res.node);
  std::error_code ec;
  fs::create_directories(res.dir, ec);
  HPDL_CHECK(!ec, "hpdl stage: cannot create {}: {}", res.dir.string(), ec.message());
  HPDL_CHECK(fs::absolute(res.dir) != fs::absolute(store), "hpdl stage: --to {} is the store itself",
             res.dir.string());

  // The index: read once (by node 0's leader), broadcast to the other leaders.
  const fs::path index_path = store / kIndexName;
  std::vector<std::byte> index_bytes;
  uint64_t index_size = 0;
  if (res.node == 0) {
    index_bytes = read_file(index_path);
    index_size = index_bytes.size();
    res.bytes_read_shared += index_size;
  }
  comm.bcast(&index_size, sizeof index_size, 0);
  index_bytes.resize(index_size);
  comm.bcast(index_bytes.data(), index_size, 0);
  const Index index = decode_index(index_bytes, index_path.string());

  std::vector<std::byte> buf(std::max<uint64_t>(options.chunk_bytes, kHeaderSize));
  for (uint32_t p = 0; p < index.partitions.size(); ++p) {
    const int root = int(p % uint32_t(res.nodes));
    const bool full = options.mode == StageMode::full || res.nodes == 1;
    const bool here = stage_node_holds(options.mode, options.replicas, p, res.node, res.nodes);
    if (!here && !full) continue;  // partitioned: only holders take part (the root always holds p)
    const fs::path src = store / partition_name(p);
    const uint64_t file_size = kHeaderSize + index.partitions[p].data_size;
    int fd = -1;
    if (res.node == root) {
      fd = ::open(src.c_str(), O_RDONLY | O_CLOEXEC);
      HPDL_CHECK(fd >= 0, "hpdl stage: cannot open {}: {}", src.string(), std::strerror(errno));
    }
    std::unique_ptr<StagedFile> out;
    if (here) out = std::make_unique<StagedFile>(res.dir / partition_name(p));
    try {
      for (uint64_t at = 0; at < file_size; at += buf.size()) {
        const size_t n = size_t(std::min<uint64_t>(buf.size(), file_size - at));
        if (res.node == root) {
          pread_all(fd, buf.data(), n, at, src.string());
          res.bytes_read_shared += n;
        }
        if (full) {
          comm.bcast(buf.data(), n, root);
        } else if (res.node == root) {
          for (int k = 1; k < std::min(options.replicas, res.nodes); ++k)
            comm.send(buf.data(), n, (root + k) % res.nodes);
        } else {
          comm.recv(buf.data(), n, root);
        }
        if (out) out->write(buf.data(), n);
      }
    } catch (...) {
      if (fd >= 0) ::close(fd);
      throw;
    }
    if (fd >= 0) ::close(fd);
    if (out) {
      out->finish(p, index.partitions[p]);
      ++res.partitions_here;
    }
  }
  io::write_file_atomic(res.dir / kIndexName, index_bytes.data(), index_bytes.size());
  return res;
}

}  // namespace

StageResult stage(const fs::path& store, const std::string& to_pattern, const StageOptions& options) {
  HPDL_CHECK(options.replicas >= 1, "hpdl stage: --replicas must be at least 1 (got {})", options.replicas);
  auto comm = detail::make_stage_comm();
  StageResult res;
  try {
    if (comm->leader()) {
      res = stage_leader(*comm, store, to_pattern, options);
    } else {
      res.node = comm->node();
      res.nodes = comm->nodes();
      res.leader = false;
      res.dir = stage_destination(to_pattern, res.node);
    }
    comm->barrier();
  } catch (const std::exception& e) {
    if (!comm->distributed()) throw;
    comm->abort(e.what());  // a peer may be blocked in a collective with us: end the job
  }
  return res;
}

}  // namespace hpdl::store
