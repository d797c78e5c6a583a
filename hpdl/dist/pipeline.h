// dist::Pipeline: pipeline parallelism (GPipe, Huang et al. 2019) for a
// sequential model too large for one rank. The layers are cut into S
// contiguous stages, one per rank of a communicator; a batch is split into M
// micro-batches that flow forward stage to stage (activations sent
// point-to-point), then backward in reverse (activation gradients sent back).
// Each stage accumulates its parameters' gradients over the micro-batches and
// steps its own optimizer on its own parameters: nothing is all-reduced
// (a grid of replicas averages each stage over its replicas: see the grid
// constructor).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "hpdl/dist/communicator.h"
#include "hpdl/dist/data_parallel.h"
#include "hpdl/nn/layers.h"
#include "hpdl/nn/module.h"

namespace hpdl::dist {

enum class PipelineSchedule {
  gpipe,        // all M forwards, then all M backwards: every stage holds M micro-batches' activations
  one_f_one_b,  // 1F1B: forwards and backwards alternate; stage s holds at most S - s
};

struct PipelineOptions {
  // M: micro-batches per batch. The batch size must be a multiple of M.
  int micro_batches = 1;
  PipelineSchedule schedule = PipelineSchedule::gpipe;
  // Where stages 1..S-1 begin: S-1 strictly increasing layer indices in
  // [1, layers), layers as nn::Stageable counts them (a Sequential's leaves,
  // nested Sequentials opened up; a vit's embedding, encoder layers, head).
  // Empty: balance_stages() by parameter count, or by layer_costs when given.
  std::vector<int64_t> split_points;
  // Without split points: one cost per layer (seconds, say, from
  // profile_layer_seconds), balanced by balance_stages_by_cost instead of
  // the parameter counts. Must be the same on every rank.
  std::vector<double> layer_costs;
  // Pipeline x data parallelism (the grid constructor): each stage's gradients
  // sit in flat buckets of at most this many bytes (dist::DataParallel), all-
  // reduced over the replicas while the stage runs its last micro-batch's
  // backward; bf16_wire sends them as bfloat16 (half the bytes).
  int64_t bucket_bytes = 25ll << 20;
  bool bf16_wire = false;
  // Point-to-point tags: `tag` carries activations forward, `tag + 1`
  // gradients backward. Change it only if something else on the same
  // communicator uses these tags.
  int tag = 7300;
};

// Stage bounds [0 = b_0, b_1, ..., b_S = L] for L layers with the given
// parameter counts: contiguous, at least one layer per stage, minimizing the
// largest stage's parameter count (exact, by dynamic programming); among equal
// maxima the layer counts are kept as even as possible. Throws when
// stages < 1 or stages > L.
std::vector<int64_t> balance_stages(const std::vector<int64_t>& layer_params, int stages);
// The same for non-negative per-layer costs (seconds): minimizes the largest
// stage's total cost, the pipeline's step time in steady state.
std::vector<int64_t> balance_stages_by_cost(const std::vector<double>& layer_costs, int stages);
// Per-stage sums of `per_layer` over stage bounds (as balance_stages returns).
template <typename T>
std::vector<T> stage_sums(const std::vector<T>& per_layer, const std::vector<int64_t>& bounds) {
  std::vector<T> out;
  for (size_t s = 0; s + 1 < bounds.size(); ++s) {
    T sum{};
    for (int64_t i = bounds[s]; i < bounds[s + 1]; ++i) sum += per_layer[static_cast<size_t>(i)];
    out.push_back(sum);
  }
  return out;
}

// Profiles `model` (an nn::Stageable, whole: before the pipeline cuts it)
// layer by layer: the seconds one training micro-batch takes through each
// layer, forward plus backward (the input's gradient too, except the first
// layer's), the fastest of `repeats` passes after one warm-up. One layer's
// activations live at a time. Collective over `comm` (run it on every rank
// that holds the model; collectives inside the layers, a tensor-parallel
// vit's, run in the same order everywhere): the times are averaged over the
// ranks and rank 0's average is given to all, so every rank cuts alike.
// Leaves the model as it found it: buffers (running statistics), random
// generators and gradients are restored. CPU only. Throws when the model is
// not Stageable, a layer cannot take what the one before gives, or
// repeats < 1.
std::vector<double> profile_layer_seconds(nn::Module& model, const Tensor& micro_batch, Communicator& comm,
                                          int repeats = 3);

// A grid of pipelines x data-parallel replicas over `all`: ranks
// [d S, (d+1) S) form pipeline (replica) d, its stage s on rank d S + s;
// `data` joins the ranks holding the same stage in every replica.
// With tensor parallelism (P > 1: pipelines whose stages are each split over
// a group of P ranks) the world is replicas x S x P: rank (d S + s) P + t is
// rank t of stage s's group in replica d. `tensor` joins a stage's group (P
// consecutive ranks, the fastest links), `pipeline` the ranks with the same
// t along the stages of one replica (stage s -> s + 1 sends from rank t to
// rank t), and `data` the ranks holding the same slice of the same stage in
// every replica. `tensor` is null when P = 1.
struct PipelineGrid {
  Communicator* all = nullptr;
  std::unique_ptr<Communicator> pipeline, data, tensor;
  int replica = 0, replicas = 1;
};
// Collective over `comm`. Throws when comm.size() is not a multiple of
// stages x tensor_parallel.
PipelineGrid make_pipeline_grid(Communicator& comm, int stages, int tensor_parallel = 1);

class Pipeline {
 public:
  // The loss of one micro-batch: output [m, ...] of the last stage and that
  // micro-batch's targets; must return the scalar MEAN over the micro-batch
  // (the pipeline weighs each micro-batch by 1/M, so the gradients are those
  // of the mean over the whole batch).
  using LossFn = std::function<Tensor(const Tensor& output, const Tensor& target)>;

  // `model`, built identically on every rank of `comm` (same seed, so no
  // broadcast is needed), is cut into comm.size() stages; rank s keeps layers
  // [bounds()[s], bounds()[s+1]) and holds no reference to the others (drop
  // `model` after this call to free them). The model must be nn::Stageable:
  // an nn::Sequential (its layers are its children) or a vit (patch
  // embedding, each encoder layer, head: nn/models/vit.h). The stage keeps
  // the full model's parameter names ("3.weight", "blocks.2.linear1.weight"),
  // so its state dict is a subset of the model's. CPU tensors only. Throws, on
  // every rank alike, when the model is not Stageable, there are more stages
  // than layers or the split points are not valid.
  Pipeline(const std::shared_ptr<nn::Module>& model, Communicator& comm, PipelineOptions options = {});
  // Pipeline x data parallelism: this rank's stage of its replica's pipeline
  // (grid.pipeline); in each train_step the stage's gradients are averaged
  // over the replicas (grid.data) through a dist::DataParallel on the stage:
  // the earlier micro-batches accumulate into its buckets, and the last one's
  // backward launches each bucket's allreduce as soon as it is full, so the
  // averaging overlaps that backward. Afterwards its buffers (running
  // statistics) are broadcast from replica 0. Replica 0's stage weights are
  // broadcast at construction (collective over grid.data). So with each
  // replica given its own shard of the global batch every replica steps like
  // one pipeline on the global batch. train_step returns the global batch's
  // mean loss; errors are raised on every rank of the grid. `grid` must
  // outlive the Pipeline.
  Pipeline(const std::shared_ptr<nn::Module>& model, PipelineGrid& grid, PipelineOptions options = {});
  ~Pipeline();
  Pipeline(const Pipeline&) = delete;
  Pipeline& operator=(const Pipeline&) = delete;

  // One batch, forward and backward, in the options' schedule (GPipe: all M
  // forwards, then all M backwards, last micro-batch first; 1F1B: see
  // PipelineSchedule). `input` [N, ...] is read on the first stage only and
  // `target` [N, ...] on the last stage only (other ranks may pass undefined
  // tensors). Gradients are ACCUMULATED into the stage's .grad (zero them
  // before, as for backward()); then step the stage's optimizer. Returns the
  // batch's mean loss on every rank.
  // Errors (N not divisible by M, a shape one stage's layers cannot take from
  // the previous stage, a failing loss) are raised on every rank with the same
  // message, naming the first failing stage and its layers; every stage still
  // exchanges its M messages each way (failure markers), so none is left
  // behind and the pipeline stays usable. GPipe: an error in forward leaves the
  // gradients untouched. An error in 1F1B, or in GPipe's backward, drops the
  // stage's gradients (zero_grad), since part of the batch may be in them.
  // Batch norm in a stage normalizes each micro-batch with its own statistics
  // and updates its running statistics M times per batch.
  double train_step(const Tensor& input, const Tensor& target, const LossFn& loss);

  // optimizer.clip_grad_norm over the whole model, collective over the
  // pipeline (call it on every stage after train_step, before stepping): each
  // stage computes its parameters' float64 sums of squares, one allreduce of a
  // vector indexed by the whole model's parameters (zeros at the other
  // stages', so the sum is exact) gives every stage all of them, and the total
  // is added in the model's parameter order (stage 0's first). The stages'
  // parameters are contiguous runs of that order, so the norm and the scale
  // are bitwise the ones optim::clip_grad_norm computes on the whole model's
  // gradients. Every stage scales its own gradients by the same factor
  // max_norm / (norm + 1e-6) when that is below 1. After the replicas'
  // average the replicas' gradients are identical, so they clip alike.
  // Returns the norm before clipping. Throws when max_norm <= 0 or the norm
  // is not finite (on every stage alike).
  // Stages split over tensor-parallel groups (a tensor-parallel model cut
  // into stages, grid.tensor): pass the group; each stage's sums are then
  // its full parameters' (parameter_sums_of_squares, one allreduce over the
  // group first), so the norm is the whole model's, as one process computes
  // it up to the order of float sums inside a split parameter. Collective
  // over the pipeline and the group.
  double clip_grad_norm(double max_norm, Communicator* tensor_group = nullptr);

  // Forward only, without a graph (uses the modules' current train/eval mode),
  // the whole batch at once (no micro-batches). Returns the last stage's output
  // on the last stage and an undefined Tensor elsewhere. Errors as train_step.
  Tensor forward(const Tensor& input);

  // This rank's layers as one module (train/eval, zero_grad, parameters for
  // the optimizer, state_dict with the model's names): the model's
  // make_stage. A Sequential's stage is an nn::Sequential: activation
  // checkpointing (set_checkpoint_chunk, or
  // models::enable_activation_checkpointing on it) cuts the stage's layers
  // into segments, checkpointed per micro-batch; a vit's stage holds its
  // encoder layers in a Sequential, each one a segment. Each micro-batch's nodes keep
  // their own dropout generator states, so with 1F1B (several micro-batches'
  // nodes alive at once) every recompute draws its own forward's masks, and
  // batch norm updates its running statistics in the forward only (M times).
  nn::Module& stage() { return *stage_; }
  int stage_index() const { return stage_index_; }
  int num_stages() const { return static_cast<int>(bounds_.size()) - 1; }
  bool is_first() const { return stage_index_ == 0; }
  bool is_last() const { return stage_index_ == num_stages() - 1; }
  const std::vector<int64_t>& bounds() const { return bounds_; }
  int micro_batches() const { return options_.micro_batches; }
  // The replicas' gradient averaging (grid with more than one replica), or nullptr.
  DataParallel* data_parallel() { return dp_.get(); }

  // Bytes of activations this stage held for backward at the peak of the last
  // train_step: the received inputs and the saved outputs of all micro-batches
  // (the tensors between layers inside a stage are not counted; the CPU
  // allocator's peak, cpu_memory_stats(), covers everything).
  int64_t boundary_activation_bytes() const { return boundary_bytes_; }
  // Seconds the last train_step spent computing on this stage (forward, loss,
  // backward; not waiting for or sending messages). Divided by the step's
  // time it is the stage's busy fraction, M / (M + S - 1) for GPipe with
  // balanced stages on dedicated cores.
  double compute_seconds() const { return compute_seconds_; }
  // Seconds the last train_step waited, after this stage's last backward, for
  // the replicas' gradient average to finish (the part the backward did not
  // hide; 0 without replicas).
  double replica_wait_seconds() const { return replica_wait_seconds_; }

 private:
  std::string describe_stage() const;
  struct Step;
  void begin(Step& st);
  void send(Step& st, Communicator& c, const Tensor& t, int dest, int tag);
  void forward_micro(Step& st, int m);
  void backward_micro(Step& st, int m);
  double check(Step& st, bool drop_grads);
  void finish_replicas(Step& st);
  [[noreturn]] void raise_everywhere(int failed_rank, const std::string& local_message);

  Communicator& comm_;
  std::unique_ptr<Communicator> fwd_comm_, bwd_comm_;  // activations forward, gradients backward
  PipelineOptions options_;
  Communicator* status_comm_;                          // failure checks and the loss: comm_, or the whole grid
  Communicator* data_comm_ = nullptr;                  // the same stage in the other replicas (grid only)
  std::vector<int64_t> bounds_;
  int stage_index_ = 0;
  std::shared_ptr<nn::Module> stage_;
  std::unique_ptr<DataParallel> dp_;  // after stage_: it detaches from the stage's parameters first
  int64_t boundary_bytes_ = 0;
  double compute_seconds_ = 0;
  double replica_wait_seconds_ = 0;
};

}  // namespace hpdl::dist
