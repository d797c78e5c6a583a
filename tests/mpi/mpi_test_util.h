// Helpers shared by the MPI tests: an expected error, byte equality of tensors, a directory all
// ranks name alike, and a state dict passed through a safetensors file the way
// the trainer's checkpoints pass it (rank 0 writes, every rank reads).
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <string>

#include "hpdl/core/error.h"
#include "hpdl/core/tensor.h"
#include "hpdl/dist/communicator.h"
#include "hpdl/io/safetensors.h"

namespace hpdl::test {

// f() must throw an hpdl::Error whose message contains `what`.
inline void expect_error(const std::function<void()>& f, const std::string& what) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one naming " << what;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
  }
}

// Same dtype, shape and bytes.
inline bool same_bytes(const Tensor& a, const Tensor& b) {
  if (a.dtype() != b.dtype() || a.shape() != b.shape()) return false;
  Tensor ca = a.contiguous(), cb = b.contiguous();
  return std::memcmp(ca.raw_data(), cb.raw_data(), ca.nbytes()) == 0;
}

// A directory shared by all ranks of the world (rank 0's pid names it), created by rank 0.
inline std::filesystem::path shared_dir(const std::string& tag) {
  auto& world = dist::Communicator::world();
  int64_t pid = world.rank() == 0 ? getpid() : 0;
  world.broadcast_bytes(&pid, sizeof pid, 0);
  auto d = std::filesystem::temp_directory_path() / ("hpdl_mpi_" + tag + "_" + std::to_string(pid));
  if (world.rank() == 0) std::filesystem::create_directories(d);
  world.barrier();
  return d;
}

// Rank 0 writes what it holds; every rank reads it back (as the trainer's checkpoints do).
inline std::map<std::string, Tensor> through_file(const std::map<std::string, Tensor>& state, const std::string& tag) {
  auto& world = dist::Communicator::world();
  auto dir = shared_dir(tag);
  if (world.rank() == 0) io::save_safetensors(dir / "state.safetensors", state);
  world.barrier();
  auto out = io::load_safetensors(dir / "state.safetensors").tensors;
  world.barrier();
  if (world.rank() == 0) std::filesystem::remove_all(dir);
  return out;
}

}  // namespace hpdl::test
