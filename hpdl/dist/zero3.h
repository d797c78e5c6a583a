// ZeRO stage 3 (Rajbhandari et al. 2020): the parameters are sharded too.
// At rest each rank holds only the parameters it owns (the ShardedOptimizer's
// partition); the others' storage is released in place (the TensorImpl keeps
// its shape, its data is gone), so handles held by layers and optimizers stay
// valid. The model, an nn::Sequential, runs as a chain of "units", each one
// activation-checkpointed segment (ops/checkpoint.h):
//   forward:  gather the unit's non-owned parameters (one broadcast per owner
//             that has some in the unit), run it without a graph, release them;
//   backward: the checkpoint node gathers them again, recomputes the unit,
//             backpropagates; the gradients go to their owners through
//             DataParallel's ZeRO-2 buckets (the same reduces, so the same
//             sums); when the node's backward is done the unit is released;
//   step:     ShardedOptimizer steps the owned parameters and broadcasts
//             nothing (the next forward gathers).
// Every rank runs the same units in the same order (the same model, the same
// number of forwards and backwards), and every gather is queued on the data
// communicator's thread behind the gradient reduces already issued, so the
// collectives pair up across ranks.
//
// Prefetch (Zero3Options::prefetch; train.zero3_prefetch, on by default): a
// gather is queued one unit ahead and waited for only when its unit runs, so
// the broadcasts of unit i+1 travel while unit i computes its forward, and in
// backward those of unit i-1 while unit i recomputes and backpropagates. The
// last unit stays gathered after a forward with grad mode on (its backward
// comes next). The queueing points are the same on every rank (the start of a
// unit's forward, the start of its node's recompute), so the communication
// thread still runs one sequence of collectives everywhere; the bytes gathered
// and the kernels run are the same, so results are bitwise those without it.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "hpdl/dist/data_parallel.h"
#include "hpdl/dist/zero.h"
#include "hpdl/nn/layers.h"

namespace hpdl::dist {

// Shards an nn::Sequential's (or another nn::Stageable model's) parameters
// over the ranks of `dp`'s communicator.
//
// Units: the Sequential's children, with nested Sequentials opened up (their
// children run in the same order, so the chain computes the same function).
// A unit starts at each module with parameters; modules without parameters
// (activations, pooling, flatten) join the unit before them. A Stageable
// model that is not a Sequential (a vit) runs as its layers, each a unit of
// its own (make_stage(i, i + 1): a vit's embedding, each encoder layer, its
// head), named "layer i". Parameters must
// each belong to exactly one unit: a parameter shared by two units, or one
// registered on a Sequential itself, is refused by name (so are non-float32,
// non-CPU and non-contiguous ones, through ShardedOptimizer and DataParallel).
// Buffers (batch norm running statistics) stay whole on every rank:
// DataParallel's broadcast_buffers keeps them equal, and a checkpoint's
// recompute does not update them a second time.
//
// It is an nn::Module for forward only (evaluate(), the training loop): its
// forward(x) is the model's, collective, with or without grad mode; train()/
// eval() pass through to the model. It registers nothing: parameters(),
// state_dict() and load_state_dict() of this object are empty; the model's
// state goes through full_state_dict() and load_full_state_dict() below.
//
// Use: build the ShardedOptimizer and the DataParallel (with
// grad_owners = opt.owners_of(model.parameters())) over the whole model
// first (DataParallel broadcasts rank 0's weights), then this. Per step:
// dp.zero_grad(), loss(zero3.forward(x)).backward(), dp.finish(), optionally
// opt.clip_grad_norm(c), opt.step(). Construction turns the optimizer's
// broadcast after the step off; the destructor turns it back on but gathers
// nothing (call unshard() first, collectively, to keep using the model whole).
struct Zero3Options {
  // Queue each unit's gather one unit ahead (see above). Costs a larger kept
  // gather buffer: the two largest neighbouring units instead of the largest,
  // and two units gathered at once (in a model of few units that can be all
  // of a rank's non-owned parameters). Off here, so a bare Zero3 holds one
  // unit at a time; the trainer turns it on (train.zero3_prefetch = true).
  bool prefetch = false;
};

class Zero3 : public nn::Module {
 public:
  // `opt` and `dp` must be over `model`'s parameters and outlive this object;
  // dp must shard gradients (DataParallelOptions::grad_owners) by opt's owners.
  // Not collective. Throws naming the parameter or the option at fault.
  Zero3(std::shared_ptr<nn::Module> model, ShardedOptimizer& opt, DataParallel& dp, Zero3Options options = {});
  ~Zero3() override;

  Tensor forward(const Tensor& x) override;
  std::string type_name() const override { return "Zero3"; }

  // Collective. The model's full state dict (every parameter and buffer, under
  // the model's names) on `root`, gathered from the owners with one MPI_Gatherv;
  // an empty map on the other ranks. Root's own parameters are its handles,
  // the others fresh tensors; nothing stays gathered afterwards.
  std::map<std::string, Tensor> full_state_dict(int root = 0);
  // Not collective. Takes a full state dict (every rank passes the same one,
  // e.g. each read from the same checkpoint) and keeps the owned parameters and
  // every buffer. Shapes are checked for every parameter; with strict, a missing
  // or unknown key throws naming it, as Module::load_state_dict does.
  void load_full_state_dict(const std::map<std::string, Tensor>& state, bool strict = true);

  // Collective: gathers every parameter on every rank (the model is then whole,
  // e.g. for an export) / releases the non-owned ones again.
  void unshard();
  void reshard();

  // Bytes of parameter data this rank holds now (owned plus gathered), the
  // most held at once since construction or reset_peak(), and the owned share.
  int64_t parameter_bytes() const { return owned_bytes_ + gathered_bytes_; }
  int64_t peak_parameter_bytes() const { return peak_bytes_; }
  int64_t owned_parameter_bytes() const { return owned_bytes_; }
  void reset_peak() { peak_bytes_ = parameter_bytes(); }
  // The gather buffer this rank keeps between units (mapped at the first
  // gather, 0 before; never freed, so it is part of a rank's memory at rest,
  // beside the owned parameters). Without prefetch it is sized for the unit
  // with the most non-owned parameters and holds one unit at a time; with
  // prefetch for the largest sum of two neighbouring units: even units fill it
  // from the front, odd ones from the back, so unit i and the one gathered
  // ahead of it (i+1 in forward, i-1 in backward) never overlap. A unit that
  // would (unshard(), or one left from an abandoned backward) gets pages of
  // its own.
  int64_t buffer_bytes() const;
  bool prefetch() const { return options_.prefetch; }
  // Gathers, since construction, that were queued before their unit needed
  // them (prefetched) / that their unit queued and waited for at once.
  int64_t prefetched_gathers() const { return prefetched_; }
  int64_t waited_gathers() const { return waited_; }
  // Microseconds the compute thread spent waiting for gathers since
  // construction (what prefetch hides shows up as less of it).
  int64_t gather_wait_us() const { return wait_us_; }
  // True when `p` (a parameter of the model) has no data on this rank now.
  static bool released(const Tensor& p);

  int num_units() const { return static_cast<int>(units_.size()); }
  // The dotted names of the modules of unit i ("0", "1", "3.0", ...).
  std::vector<std::string> unit_modules(int i) const;
  nn::Module& model() { return *model_; }

 protected:
  void on_train(bool on) override { model_->train(on); }

 private:
  struct Unit;
  void issue(Unit& u);   // maps u's parameters, queues its broadcasts; no wait
  void wait(Unit& u);    // until u's queued broadcasts are done
  void gather(Unit& u);  // issue + wait
  void release(Unit& u);
  void settle();         // waits for and releases whatever a previous forward/backward left gathered
  Tensor run(const Unit& u, const Tensor& x) const;

  std::shared_ptr<nn::Module> model_;
  ShardedOptimizer& opt_;
  DataParallel& dp_;
  Communicator& comm_;
  Zero3Options options_;
  std::vector<std::unique_ptr<Unit>> units_;
  std::vector<std::string> param_names_;  // model.named_parameters() order
  std::vector<Tensor> params_;
  std::vector<int> owners_;               // per parameter
  Tensor buffer_;                         // the shared gather buffer (buffer_numel_ floats)
  Unit* buffer_user_[2] = {nullptr, nullptr};  // the units gathered into its front / back now
  int64_t buffer_numel_ = 0;
  int64_t prefetched_ = 0, waited_ = 0, wait_us_ = 0;
  int64_t owned_bytes_ = 0, gathered_bytes_ = 0, peak_bytes_ = 0;
  bool unsharded_ = false;
};

}  // namespace hpdl::dist
