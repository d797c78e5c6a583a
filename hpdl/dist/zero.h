// ZeRO stage 1 (Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward
// Training Trillion Parameter Models"): data-parallel ranks split the optimizer
// state instead of each holding all of it. Whole parameters are partitioned
// over the ranks, so per-tensor logic (LARS/LAMB trust ratios) stays exact;
// after the usual gradient allreduce each rank steps only the parameters it
// owns, and the updated values go back to every replica in one broadcast per
// owner. Checkpoints hold the full state under the unsharded keys.
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "hpdl/dist/communicator.h"
#include "hpdl/optim/optimizer.h"

namespace hpdl::dist {

// The owner rank of each of `numels.size()` parameters: greedy balancing by
// element count (largest first, ties by position; each goes to the least loaded
// rank, ties to the lowest rank). Deterministic, so every rank computes the same
// partition. A rank may own nothing when there are fewer parameters than ranks.
// Throws if ranks < 1 or a count is negative.
std::vector<int> partition_params(const std::vector<int64_t>& numels, int ranks);

// An Optimizer over all of a model's parameters that keeps state only for the
// parameters this rank owns. It wraps a plain optimizer (SGD, AdamW, LARS, LAMB,
// ...) built by `make` over the owned subset, so the update of each owned
// parameter is exactly the unsharded one. CPU parameters only (contiguous).
//
// ZeRO stage 2 adds sharded gradients on top (DataParallelOptions::grad_owners
// = owners_of(model.parameters())): each rank then receives only its owned
// parameters' gradients, and clipping goes through clip_grad_norm() below.
//
// Use: after DataParallel::finish() (gradients are then the global mean on
// every rank), step() is collective: it steps the owned parameters and
// broadcasts each owner's updated parameters as one message (an MPI datatype
// over their memory, no staging copy), so every replica ends the step identical. Gradient clipping by global norm before
// step() needs nothing special: every rank holds the full gradients.
class ShardedOptimizer : public optim::Optimizer {
 public:
  using Factory = std::function<std::unique_ptr<optim::Optimizer>(std::vector<optim::ParamSpec>)>;
  // `make` builds the wrapped optimizer over a list of specs; it is called
  // during construction only (with the owned subset, and with all specs on a
  // rank that owns nothing, to learn the optimizer's name). Per-parameter
  // options (no_weight_decay, ...) must be set on the specs before. `comm` must
  // outlive this object. Throws on a non-CPU or non-contiguous parameter.
  ShardedOptimizer(std::vector<optim::ParamSpec> params, const Factory& make, Communicator& comm);

  void step() override;
  std::string name() const override { return name_; }

  // Collective. The full state, with the keys and values the unsharded
  // optimizer would have, gathered on rank 0; an empty map on the other ranks.
  std::map<std::string, Tensor> state_dict() const override;
  // Takes a full state dict (from a sharded or unsharded run, of any rank
  // count) and keeps the entries of the owned parameters. Throws naming the key
  // for an entry of an unknown parameter or a missing "step"; buffer names and
  // shapes are checked by the owner (an error there aborts the job).
  void load_state_dict(const std::map<std::string, Tensor>& state) override;
  // Bytes of state held on this rank (owned parameters only).
  int64_t state_bytes() const override;

  int owner(size_t param) const { return owners_.at(param); }
  // The owner of each tensor of `params` (matched by identity with this
  // optimizer's parameters), e.g. DataParallelOptions::grad_owners from
  // model.parameters(). Throws naming the position of a tensor it does not have.
  std::vector<int> owners_of(const std::vector<Tensor>& params) const;
  // ZeRO-2's optimizer.clip_grad_norm, collective: with sharded gradients
  // (DataParallelOptions::grad_owners) only owners hold a parameter's .grad.
  // Each owner computes its parameters' sums of squares, one allreduce of a
  // float64 vector (zeros elsewhere, so the sum is exact) gives every rank all
  // of them, and the total is added in parameter order: bitwise the norm and
  // scaling optim::clip_grad_norm computes over full gradients in the same
  // order. Scales the owned gradients; returns the norm before clipping.
  double clip_grad_norm(double max_norm);
  // Whether step() broadcasts the owners' updated parameters (default true).
  // ZeRO-3 (dist::Zero3) turns it off: non-owned parameters are not held
  // between steps, and the next forward gathers each unit's from its owners.
  void set_broadcast_after_step(bool on) { broadcast_after_step_ = on; }
  bool broadcast_after_step() const { return broadcast_after_step_; }
  // Indices (into params()) of the parameters this rank owns.
  const std::vector<size_t>& owned() const { return owned_by_.at(static_cast<size_t>(comm_.rank())); }
  // The wrapped optimizer over the owned parameters, or nullptr when this rank owns none.
  optim::Optimizer* local() const { return local_.get(); }

 protected:
  std::vector<std::string> buffer_names() const override { return {}; }  // load_state_dict is overridden

 private:
  Communicator& comm_;
  std::unique_ptr<optim::Optimizer> local_;
  std::string name_;
  std::vector<int> owners_;                   // per parameter
  std::vector<std::vector<size_t>> owned_by_;  // per rank: parameter indices, in order
  std::vector<int64_t> bytes_of_;             // per rank: bytes of its parameters
  bool broadcast_after_step_ = true;
};

}  // namespace hpdl::dist
