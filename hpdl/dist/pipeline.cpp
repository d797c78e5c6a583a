// GPipe and 1F1B pipeline parallelism over point-to-point messages (see pipeline.h).
// Wire format of one message (activation or gradient): int64 words
// [kMagic, dtype, ndim, dims...] followed by the tensor's bytes, or the single
// word kFailed when the sending stage (or one before it) failed this batch,
// so every stage still receives exactly M messages and none is left behind.
#include "hpdl/dist/pipeline.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <tuple>
#include <utility>

#include "hpdl/autograd/node.h"
#include "hpdl/dist/tensor_parallel.h"
#include "hpdl/ops/ops.h"
#include "hpdl/optim/optimizer.h"

namespace hpdl::dist {
namespace {

constexpr int64_t kMagic = 0x48504950;   // "HPIP"
constexpr int64_t kFailed = 0x48504646;  // "HPFF"

std::vector<uint8_t> encode(const Tensor& t) {
  // Messages travel through host memory: a device tensor is copied back first.
  Tensor c = t.device() == kCPU ? t.contiguous() : t.to(kCPU).contiguous();
  std::vector<int64_t> head{kMagic, static_cast<int64_t>(c.dtype()), c.ndim()};
  for (int64_t d : c.shape()) head.push_back(d);
  std::vector<uint8_t> out(head.size() * sizeof(int64_t) + c.nbytes());
  std::memcpy(out.data(), head.data(), head.size() * sizeof(int64_t));
  if (c.nbytes() > 0) std::memcpy(out.data() + head.size() * sizeof(int64_t), c.raw_data(), c.nbytes());
  return out;
}

// Undefined Tensor for a kFailed marker.
Tensor decode(const std::vector<uint8_t>& msg, const char* what, int from) {
  auto word = [&](size_t i) {
    HPDL_CHECK((i + 1) * sizeof(int64_t) <= msg.size(), "Pipeline: {} message from rank {} is truncated ({} bytes)",
               what, from, msg.size());
    int64_t v;
    std::memcpy(&v, msg.data() + i * sizeof(int64_t), sizeof v);
    return v;
  };
  if (word(0) == kFailed) return Tensor();
  HPDL_CHECK(word(0) == kMagic, "Pipeline: {} message from rank {} is not a pipeline tensor (tag clash?)", what, from);
  const auto dtype = static_cast<DType>(word(1));
  const int64_t ndim = word(2);
  HPDL_CHECK(ndim >= 0 && ndim <= 16, "Pipeline: {} message from rank {} has {} dimensions", what, from, ndim);
  Shape shape;
  for (int64_t i = 0; i < ndim; ++i) shape.push_back(word(3 + static_cast<size_t>(i)));
  Tensor t = Tensor::empty(shape, dtype);
  const size_t head = static_cast<size_t>(3 + ndim) * sizeof(int64_t);
  HPDL_CHECK(msg.size() == head + t.nbytes(), "Pipeline: {} message from rank {} holds {} bytes, expected {} for {}",
             what, from, msg.size(), head + t.nbytes(), t.str());
  if (t.nbytes() > 0) std::memcpy(t.raw_data(), msg.data() + head, t.nbytes());
  return t;
}

}  // namespace

namespace {

// balance_stages for any additive cost: exact min-max by dynamic programming.
template <typename T>
std::vector<int64_t> balance(const std::vector<T>& layer_cost, int stages) {
  const auto L = static_cast<int64_t>(layer_cost.size());
  HPDL_CHECK(stages >= 1, "Pipeline: {} stages; need at least one", stages);
  HPDL_CHECK(stages <= L,
             "Pipeline: {} stages but the model has only {} layers (each stage needs at least one); run with at most "
             "{} ranks",
             stages, L, L);
  std::vector<T> prefix(static_cast<size_t>(L) + 1, T{});
  for (int64_t i = 0; i < L; ++i) prefix[i + 1] = prefix[i] + layer_cost[i];
  // cost[s][j]: the best (largest stage's cost, largest stage's layers) for
  // the first j layers cut into s stages; arg[s][j]: where stage s-1 starts.
  using Cost = std::pair<T, int64_t>;
  const Cost inf{std::numeric_limits<T>::max(), 0};
  std::vector<std::vector<Cost>> cost(stages + 1, std::vector<Cost>(L + 1, inf));
  std::vector<std::vector<int64_t>> arg(stages + 1, std::vector<int64_t>(L + 1, -1));
  cost[0][0] = {T{}, 0};
  for (int s = 1; s <= stages; ++s)
    for (int64_t j = s; j <= L - (stages - s); ++j)
      for (int64_t i = s - 1; i < j; ++i) {
        if (cost[s - 1][i] == inf) continue;
        const Cost c{std::max(cost[s - 1][i].first, prefix[j] - prefix[i]), std::max(cost[s - 1][i].second, j - i)};
        if (c < cost[s][j]) cost[s][j] = c, arg[s][j] = i;
      }
  std::vector<int64_t> bounds(static_cast<size_t>(stages) + 1);
  bounds[stages] = L;
  for (int s = stages; s >= 1; --s) bounds[s - 1] = arg[s][bounds[s]];
  return bounds;
}

}  // namespace

std::vector<int64_t> balance_stages(const std::vector<int64_t>& layer_params, int stages) {
  return balance(layer_params, stages);
}

std::vector<int64_t> balance_stages_by_cost(const std::vector<double>& layer_costs, int stages) {
  for (size_t i = 0; i < layer_costs.size(); ++i)
    HPDL_CHECK(std::isfinite(layer_costs[i]) && layer_costs[i] >= 0, "Pipeline: layer {} costs {}; layer costs "
               "must be finite and non-negative", i, layer_costs[i]);
  return balance(layer_costs, stages);
}

std::vector<double> profile_layer_seconds(nn::Module& model, const Tensor& micro_batch, Communicator& comm,
                                          int repeats) {
  auto* layers = dynamic_cast<nn::Stageable*>(&model);
  HPDL_CHECK(layers != nullptr, "Pipeline: cannot profile a {} layer by layer: it is not a sequence of layers (an "
             "nn::Sequential, a vit or another nn::Stageable)", model.type_name());
  HPDL_CHECK(repeats >= 1, "Pipeline: profiling with {} repeats; need at least 1", repeats);
  HPDL_CHECK(micro_batch.defined() && micro_batch.device() == kCPU, "Pipeline: profiling needs a CPU micro-batch");
  const int64_t L = layers->num_layers();
  // What the passes change, to put back: running statistics, generator
  // counters (dropout), gradients.
  std::vector<std::pair<Tensor, Tensor>> buffers;
  for (auto& [name, b] : model.named_buffers()) buffers.emplace_back(b, b.clone());
  std::vector<std::tuple<Generator*, uint64_t, uint64_t>> generators;
  for (auto& [name, g] : model.named_generators()) generators.emplace_back(g, g->seed(), g->offset());
  std::vector<std::pair<Tensor, Tensor>> grads;
  for (auto& p : model.parameters()) grads.emplace_back(p, p.grad().defined() ? p.grad().clone() : Tensor());

  std::vector<std::shared_ptr<nn::Module>> parts;
  for (int64_t i = 0; i < L; ++i) {
    parts.push_back(layers->make_stage(i, i + 1));
    parts.back()->train(model.is_training());
  }
  std::vector<double> best(static_cast<size_t>(L), std::numeric_limits<double>::infinity());
  using Clock = std::chrono::steady_clock;
  for (int pass = 0; pass <= repeats; ++pass) {  // pass 0 warms up
    Tensor x = micro_batch;
    for (int64_t i = 0; i < L; ++i) {
      Tensor in = x.detach();
      if (i > 0 && dtype_is_float(in.dtype())) in.set_requires_grad(true);
      const auto t0 = Clock::now();
      Tensor y;
      try {
        y = parts[i]->forward(in);
        if (y.requires_grad()) y.backward(Tensor::full(y.shape(), 1.0, y.dtype(), y.device()));
      } catch (const Error& e) {
        HPDL_FAIL("Pipeline: profiling layer {} of {} ({}): {}", i, L, parts[i]->type_name(), e.what());
      }
      const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
      if (pass > 0) best[i] = std::min(best[i], seconds);
      x = y.detach();
    }
    model.zero_grad();
  }
  for (auto& [b, saved] : buffers) b.copy_(saved);
  for (auto& [g, seed, offset] : generators) g->set_state(seed, offset);
  for (auto& [p, g] : grads)
    if (g.defined()) p.set_grad(g);
  comm.allreduce(best.data(), L, DType::f64, ReduceKind::sum);
  for (double& b : best) b /= comm.size();
  comm.broadcast_bytes(best.data(), L * static_cast<int64_t>(sizeof(double)), 0);
  return best;
}

PipelineGrid make_pipeline_grid(Communicator& comm, int stages, int tensor_parallel) {
  const int S = stages, P = tensor_parallel;
  HPDL_CHECK(S >= 1 && P >= 1 && comm.size() % (S * P) == 0,
             "Pipeline grid: {} ranks cannot form pipelines of {} stages{} (the rank count must be a multiple of "
             "{})",
             comm.size(), S, P > 1 ? fmt::format(" of {} tensor-parallel ranks each", P) : "", S * P);
  PipelineGrid g;
  g.all = &comm;
  const int r = comm.rank(), stage = (r / P) % S, t = r % P;
  g.replicas = comm.size() / (S * P);
  g.replica = r / (S * P);
  g.pipeline = comm.split(g.replica * P + t, stage);  // one replica's stages, rank t of each
  g.data = comm.split(stage * P + t, g.replica);      // the same slice of the same stage in every replica
  if (P > 1) g.tensor = comm.split(r / P, t);         // a stage's group: consecutive ranks
  return g;
}

namespace {
Communicator& grid_pipeline(PipelineGrid& grid) {
  HPDL_CHECK(grid.all != nullptr && grid.pipeline != nullptr && grid.data != nullptr,
             "Pipeline: the grid is empty (build it with make_pipeline_grid)");
  return *grid.pipeline;
}
}  // namespace

Pipeline::Pipeline(const std::shared_ptr<nn::Module>& model, PipelineGrid& grid, PipelineOptions options)
    : Pipeline(model, grid_pipeline(grid), std::move(options)) {
  status_comm_ = grid.all;
  data_comm_ = grid.data.get();
  if (data_comm_->size() > 1) {
    DataParallelOptions o;
    o.bucket_bytes = options_.bucket_bytes;
    o.bf16_wire = options_.bf16_wire;
    o.broadcast_buffers = true;  // every replica keeps replica 0's running statistics: bitwise identical replicas
    dp_ = std::make_unique<DataParallel>(*stage_, *data_comm_, o);
  }
}

Pipeline::Pipeline(const std::shared_ptr<nn::Module>& model, Communicator& comm, PipelineOptions options)
    : comm_(comm), options_(std::move(options)), status_comm_(&comm) {
  HPDL_CHECK(model != nullptr, "Pipeline: the model is null");
  auto* layers = dynamic_cast<nn::Stageable*>(model.get());
  HPDL_CHECK(layers != nullptr, "Pipeline: a {} is not a sequence of layers that can be cut into stages (an "
             "nn::Sequential, a vit or another nn::Stageable)", model->type_name());
  HPDL_CHECK(options_.micro_batches >= 1, "Pipeline: micro_batches is {}; need at least 1", options_.micro_batches);
  const int S = comm.size();
  const int64_t L = layers->num_layers();
  HPDL_CHECK(S <= L,
             "Pipeline: {} stages (ranks) but the model has only {} layers (each stage needs at least one); run with "
             "at most {} ranks",
             S, L, L);
  if (options_.split_points.empty() && !options_.layer_costs.empty()) {
    HPDL_CHECK(static_cast<int64_t>(options_.layer_costs.size()) == L, "Pipeline: {} layer_costs for a model of {} "
               "layers; need one per layer", options_.layer_costs.size(), L);
    bounds_ = balance_stages_by_cost(options_.layer_costs, S);
  } else if (options_.split_points.empty()) {
    std::vector<int64_t> params;
    for (int64_t i = 0; i < L; ++i) params.push_back(layers->layer_parameters(i));
    bounds_ = balance_stages(params, S);
  } else {
    const auto& sp = options_.split_points;
    HPDL_CHECK(static_cast<int>(sp.size()) == S - 1, "Pipeline: {} split_points for {} stages; need exactly {}",
               sp.size(), S, S - 1);
    bounds_ = {0};
    for (size_t i = 0; i < sp.size(); ++i) {
      HPDL_CHECK(sp[i] > bounds_.back() && sp[i] < L,
                 "Pipeline: split_points[{}] is {}; split points must increase strictly within [1, {}) (layers)", i,
                 sp[i], L);
      bounds_.push_back(sp[i]);
    }
    bounds_.push_back(L);
  }
  stage_index_ = comm.rank();
  stage_ = layers->make_stage(bounds_[stage_index_], bounds_[stage_index_ + 1]);
  stage_->train(model->is_training());
  // One communicator per direction, each with its own communication thread.
  fwd_comm_ = comm.split(0, comm.rank());
  bwd_comm_ = comm.split(0, comm.rank());
}

Pipeline::~Pipeline() = default;

// "stage 1 of 4 (layers 3..5, rank 1)", with the rank in the whole grid.
std::string Pipeline::describe_stage() const {
  const int s = stage_index_;
  return fmt::format("stage {} of {} (layers {}..{}, rank {})", s, num_stages(), bounds_[s], bounds_[s + 1] - 1,
                     status_comm_->rank());
}

void Pipeline::raise_everywhere(int failed_rank, const std::string& local_message) {
  // The first failing rank's message (of the status communicator: the whole
  // grid) goes to every rank, so all raise the same error.
  Communicator& c = *status_comm_;
  std::string msg;
  if (c.rank() == failed_rank) {
    msg = fmt::format("Pipeline: {}", describe_stage());
    if (data_comm_ && data_comm_->size() > 1) msg += fmt::format(" of replica {}", data_comm_->rank());
    msg += ": " + local_message;
  }
  int64_t n = static_cast<int64_t>(msg.size());
  c.broadcast_bytes(&n, sizeof n, failed_rank);
  msg.resize(static_cast<size_t>(n));
  if (n > 0) c.broadcast_bytes(msg.data(), n, failed_rank);
  HPDL_FAIL("{}", msg);
}

// The state of one batch on this stage.
struct Pipeline::Step {
  Tensor input, target;
  const LossFn* loss = nullptr;  // null: forward only
  int M = 1;
  int last_backward = 0;  // the micro-batch whose backward this stage runs last
  int64_t micro = 0, target_micro = 0;
  std::vector<Tensor> inputs, outputs;  // per micro-batch: the received activation (a leaf) and this stage's output
  std::vector<char> ok;                 // micro-batch m went through this stage's forward
  bool failed = false;                  // this stage raised (its first message is kept)
  std::string error;
  double loss_sum = 0;
  int64_t live_bytes = 0, peak_bytes = 0;
  double compute_seconds = 0;  // in the stage's forward, loss and backward (not waiting, not sending)
  std::vector<std::shared_ptr<Work>> sends;
  void fail(const std::string& what) {
    if (!failed) error = what;
    failed = true;
  }
};

void Pipeline::begin(Step& st) {
  const int M = st.M;
  st.inputs.assign(M, Tensor());
  st.outputs.assign(M, Tensor());
  st.ok.assign(M, 0);
  try {
    if (is_first()) {
      HPDL_CHECK(st.input.impl_ptr() != nullptr && st.input.ndim() >= 1, "the input must be a tensor [N, ...]");
      HPDL_CHECK(st.input.device() == kCPU, "the input is on {}; pipeline stages exchange CPU tensors only",
                 st.input.device().str());
      HPDL_CHECK(st.input.dim(0) % M == 0, "batch size {} is not divisible by micro_batches = {}", st.input.dim(0),
                 M);
      st.micro = st.input.dim(0) / M;
    }
    if (is_last() && st.loss) {
      HPDL_CHECK(st.target.impl_ptr() != nullptr && st.target.ndim() >= 1, "the target must be a tensor [N, ...]");
      HPDL_CHECK(st.target.dim(0) % M == 0, "target batch size {} is not divisible by micro_batches = {}",
                 st.target.dim(0), M);
      HPDL_CHECK(!is_first() || st.target.dim(0) == st.input.dim(0),
                 "target batch size {} differs from the input's {}", st.target.dim(0), st.input.dim(0));
      st.target_micro = st.target.dim(0) / M;
    }
  } catch (const Error& e) {
    st.fail(e.message());
  }
}

// Sends on the direction's own communicator, from its communication thread:
// this stage goes on computing while the message is in flight, and activations
// and gradients never queue behind each other (which could deadlock 1F1B).
void Pipeline::send(Step& st, Communicator& c, const Tensor& t, int dest, int tag) {
  auto buf = std::make_shared<std::vector<uint8_t>>(t.impl_ptr() ? encode(t) : std::vector<uint8_t>(sizeof(int64_t)));
  if (!t.impl_ptr()) std::memcpy(buf->data(), &kFailed, sizeof kFailed);
  st.sends.push_back(c.enqueue([&c, buf, dest, tag] {
    c.send_bytes(buf->data(), static_cast<int64_t>(buf->size()), dest, tag);
  }));
}

// Forward of micro-batch m: receive (or slice) the input, run the stage, send
// the output on. A failed micro-batch is passed on as a failure marker.
void Pipeline::forward_micro(Step& st, int m) {
  const int s = stage_index_;
  bool good = !st.failed;
  Tensor in;
  if (is_first()) {
    if (good) in = st.input.slice(0, m * st.micro, (m + 1) * st.micro);
  } else {
    try {
      in = decode(fwd_comm_->recv_bytes(s - 1, options_.tag), "activation", s - 1);
    } catch (const Error& e) {
      st.fail(e.message());
    }
    good = good && in.impl_ptr() != nullptr;
    if (good && st.loss) in.set_requires_grad(true);  // a leaf: backward leaves dL/d(in) in its .grad
  }
  Tensor out;
  if (good) {
    const auto t0 = std::chrono::steady_clock::now();
    try {
      out = stage_->forward(in);
      if (is_last() && st.loss) {
        HPDL_CHECK(out.ndim() >= 1 && out.dim(0) == st.target_micro,
                   "the output {} of micro-batch {} does not match its {} targets", out.str(), m, st.target_micro);
        Tensor l = (*st.loss)(out, st.target.slice(0, m * st.target_micro, (m + 1) * st.target_micro));
        HPDL_CHECK(l.numel() == 1, "the loss function returned {}; it must return a scalar (the micro-batch mean)",
                   l.str());
        st.loss_sum += l.item();
        out = mul(l, 1.0 / st.M);  // the batch mean is the mean of the M micro-batch means
      }
      if (!is_first()) st.inputs[m] = in, st.live_bytes += static_cast<int64_t>(in.nbytes());
      if (!is_last()) st.live_bytes += static_cast<int64_t>(out.nbytes());
      st.peak_bytes = std::max(st.peak_bytes, st.live_bytes);
      st.outputs[m] = out;
      st.ok[m] = 1;
    } catch (const Error& e) {
      good = false;
      st.fail(!is_first() ? fmt::format("on the input {} from the previous stage: {}", in.str(), e.message())
                          : e.message());
    }
    st.compute_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  if (!is_last()) send(st, *fwd_comm_, good ? out : Tensor(), s + 1, options_.tag);
}

// Backward of micro-batch m: receive dL/d(output) (the last stage starts from
// its weighted loss), backpropagate into the stage's .grad and the input leaf,
// send dL/d(input) back. Always exactly one receive and one send per micro-batch.
void Pipeline::backward_micro(Step& st, int m) {
  const int s = stage_index_;
  bool good = st.ok[m] && !st.failed;
  // The batch's last backward on this stage: its gradient hooks launch the replicas' bucket allreduces.
  if (dp_ && m == st.last_backward) dp_->set_accumulating(false);
  try {
    if (is_last()) {
      if (good && st.outputs[m].requires_grad()) {
        const auto t0 = std::chrono::steady_clock::now();
        st.outputs[m].backward();
        st.compute_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      }
    } else {
      Tensor dy = decode(bwd_comm_->recv_bytes(s + 1, options_.tag + 1), "gradient", s + 1);
      good = good && dy.impl_ptr() != nullptr;
      if (good) {
        HPDL_CHECK(dy.shape() == st.outputs[m].shape() && dy.dtype() == st.outputs[m].dtype(),
                   "the gradient {} from the next stage does not match this stage's output {}", dy.str(),
                   st.outputs[m].str());
        // A first stage of parameter-free layers (a lone Flatten) has no graph to run.
        if (st.outputs[m].requires_grad()) {
          const auto t0 = std::chrono::steady_clock::now();
          st.outputs[m].backward(dy);
          st.compute_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        }
      }
    }
  } catch (const Error& e) {
    good = false;
    st.fail(fmt::format("in backward of micro-batch {}: {}", m, e.message()));
  }
  Tensor dx;
  if (!is_first() && good) {
    dx = st.inputs[m].grad();
    // A stage whose output does not depend on its input sends zeros.
    if (dx.impl_ptr() == nullptr) dx = Tensor::zeros(st.inputs[m].shape(), st.inputs[m].dtype());
  }
  if (st.inputs[m].impl_ptr()) st.live_bytes -= static_cast<int64_t>(st.inputs[m].nbytes());
  if (st.outputs[m].impl_ptr() && !is_last()) st.live_bytes -= static_cast<int64_t>(st.outputs[m].nbytes());
  st.inputs[m] = Tensor();
  st.outputs[m] = Tensor();  // frees this micro-batch's graph
  if (!is_first()) send(st, *bwd_comm_, dx, s - 1, options_.tag + 1);
}

// Waits for this stage's sends, then one allreduce tells every stage whether
// any failed (the first failing stage's message is raised everywhere) and the
// last stage's loss sum. With drop_grads, a failure drops the stage's
// gradients (a backward may have accumulated part of the batch).
double Pipeline::check(Step& st, bool drop_grads) {
  for (auto& w : st.sends) {
    try {
      w->wait();
    } catch (const Error& e) {
      st.fail(e.message());
    }
  }
  st.sends.clear();
  // Max over all ranks (of every pipeline in a grid) of [size - first failing rank (0: none)].
  Communicator& c = *status_comm_;
  double status = st.failed ? double(c.size() - c.rank()) : 0.0;
  c.allreduce(&status, 1, DType::f64, ReduceKind::max);
  if (status > 0) {
    st.inputs.clear();
    st.outputs.clear();
    if (drop_grads) stage_->zero_grad();
    raise_everywhere(c.size() - static_cast<int>(status), st.error);
  }
  if (!st.loss) return 0;
  // The batch's mean loss: the last stage's, averaged over the replicas.
  double loss = is_last() ? st.loss_sum / st.M : 0.0;
  c.allreduce(&loss, 1, DType::f64, ReduceKind::sum);
  return loss / (c.size() / num_stages());
}

// Data parallel over the replicas: waits for the stage's bucket allreduces. A replica whose
// step failed before its last backward launches its buckets here, in the order the others'
// hooks did, so the replicas' collectives stay paired; check() then drops the gradients.
void Pipeline::finish_replicas(Step& st) {
  replica_wait_seconds_ = 0;
  if (!dp_) return;
  const auto t0 = std::chrono::steady_clock::now();
  try {
    dp_->set_accumulating(false);
    dp_->finish();
  } catch (const Error& e) {
    st.fail(e.message());
  }
  replica_wait_seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

double Pipeline::train_step(const Tensor& input, const Tensor& target, const LossFn& loss) {
  Step st;
  st.input = input, st.target = target, st.loss = &loss, st.M = options_.micro_batches;
  const int M = st.M, S = num_stages(), s = stage_index_;
  st.last_backward = options_.schedule == PipelineSchedule::gpipe ? 0 : M - 1;
  if (dp_) {
    dp_->adopt_grads();  // the caller zeroed (or not) the .grad its own way; accumulate from there
    dp_->set_accumulating(true);
  }
  begin(st);
  double mean_loss = 0;
  if (options_.schedule == PipelineSchedule::gpipe) {
    // GPipe: every forward, then every backward (last micro-batch first). The
    // check in between keeps the gradients untouched when a forward fails.
    for (int m = 0; m < M; ++m) forward_micro(st, m);
    mean_loss = check(st, false);
    for (int m = M - 1; m >= 0; --m) backward_micro(st, m);
    finish_replicas(st);
    st.loss = nullptr;  // the first check reported the loss: the second needs one allreduce only
    check(st, true);
  } else {
    // 1F1B (PipeDream-Flush, Narayanan et al. 2021): S - s - 1 warm-up
    // forwards, then one forward and one backward in turn, then the remaining
    // backwards: at most S - s micro-batches are held at once instead of M.
    const int warm = std::min(S - s - 1, M);
    for (int m = 0; m < warm; ++m) forward_micro(st, m);
    for (int i = 0; i < M - warm; ++i) {
      forward_micro(st, warm + i);
      backward_micro(st, i);
    }
    for (int m = M - warm; m < M; ++m) backward_micro(st, m);
    finish_replicas(st);
    mean_loss = check(st, true);
  }
  boundary_bytes_ = st.peak_bytes;
  compute_seconds_ = st.compute_seconds;
  return mean_loss;
}

double Pipeline::clip_grad_norm(double max_norm, Communicator* tensor_group) {
  HPDL_CHECK(max_norm > 0, "Pipeline::clip_grad_norm: max_norm must be > 0, got {}", max_norm);
  NoGradGuard no_grad;
  // Where this stage's parameters begin in the whole model's order: the stages before it hold
  // the parameters before (each stage is a contiguous run of the model's layers).
  const std::vector<Tensor> params = stage_->parameters();
  const Tensor counts = comm_.allgather(Tensor::from_vector<int64_t>({static_cast<int64_t>(params.size())}, {1}));
  const std::vector<int64_t> n = counts.to_vector<int64_t>();
  int64_t first = 0, total_params = 0;
  for (int s = 0; s < static_cast<int>(n.size()); ++s) {
    if (s < stage_index_) first += n[s];
    total_params += n[s];
  }
  // This stage's sums of squares per parameter (0 without a gradient): its own gradients', or with
  // a tensor-parallel group the full parameters' (summed over the group, replicated ones once).
  std::vector<double> mine(params.size(), 0.0);
  if (tensor_group != nullptr) {
    mine = parameter_sums_of_squares(*stage_, *tensor_group);
  } else {
    std::vector<Tensor> grads;
    std::vector<size_t> at;
    for (size_t i = 0; i < params.size(); ++i)
      if (params[i].grad().defined()) grads.push_back(params[i].grad()), at.push_back(i);
    const std::vector<double> sums = optim::sums_of_squares(grads);
    for (size_t k = 0; k < at.size(); ++k) mine[at[k]] = sums[k];
  }
  // Zeros at the other stages' parameters: x + 0 is x, so after the sum every stage holds each
  // stage's values bit for bit (a parameter without a gradient adds 0, as if it were skipped).
  std::vector<double> sq(static_cast<size_t>(total_params), 0.0);
  for (size_t i = 0; i < mine.size(); ++i) sq[static_cast<size_t>(first) + i] = mine[i];
  if (!sq.empty()) comm_.allreduce(sq.data(), static_cast<int64_t>(sq.size()), DType::f64);
  double total_sq = 0;
  for (double v : sq) total_sq += v;  // the whole model's parameter order, as optim::clip_grad_norm adds them
  const double total = std::sqrt(total_sq);
  HPDL_CHECK(std::isfinite(total), "Pipeline::clip_grad_norm: the gradient norm over all {} stages is not finite "
             "({}); the loss has diverged (lower the learning rate or check the inputs)", num_stages(), total);
  const double coef = max_norm / (total + 1e-6);  // the epsilon of optim::clip_grad_norm
  if (coef < 1)
    for (const Tensor& p : params) {
      if (!p.grad().defined()) continue;
      Tensor g = p.grad();
      g.copy_(mul(g, coef));
    }
  return total;
}

Tensor Pipeline::forward(const Tensor& input) {
  NoGradGuard no_grad;
  Step st;
  st.input = input;
  begin(st);
  forward_micro(st, 0);
  check(st, false);
  return is_last() ? st.outputs[0] : Tensor();
}

}  // namespace hpdl::dist
