// GPipe pipeline parallelism over point-to-point messages (see pipeline.h).
// Wire format of one message (activation or gradient): int64 words
// [kMagic, dtype, ndim, dims...] followed by the tensor's bytes, or the single
// word kFailed when the sending stage (or one before it) failed this batch,
// so every stage still receives exactly M messages and none is left behind.
#include "hpdl/dist/pipeline.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <utility>

#include "hpdl/autograd/node.h"
#include "hpdl/ops/ops.h"

namespace hpdl::dist {
namespace {

constexpr int64_t kMagic = 0x48504950;   // "HPIP"
constexpr int64_t kFailed = 0x48504646;  // "HPFF"

std::vector<uint8_t> encode(const Tensor& t) {
  Tensor c = t.contiguous();
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

void send_failed(Communicator& comm, int dest, int tag) {
  const int64_t w = kFailed;
  comm.send_bytes(&w, sizeof w, dest, tag);
}

// A stage: the model's layers [lo, hi), registered under their names in the
// model so that parameter names (and state dicts) match the whole model's.
class Stage : public nn::Module {
 public:
  void add(const std::string& name, nn::ModulePtr m) {
    layers_.push_back(register_module(name, std::move(m)));
  }
  Tensor forward(const Tensor& x) override {
    Tensor h = x;
    for (auto& m : layers_) h = m->forward(h);
    return h;
  }
  std::string type_name() const override { return "PipelineStage"; }

 private:
  std::vector<nn::ModulePtr> layers_;
};

}  // namespace

std::vector<int64_t> balance_stages(const std::vector<int64_t>& layer_params, int stages) {
  const auto L = static_cast<int64_t>(layer_params.size());
  HPDL_CHECK(stages >= 1, "Pipeline: {} stages; need at least one", stages);
  HPDL_CHECK(stages <= L,
             "Pipeline: {} stages but the model has only {} layers (each stage needs at least one); run with at most "
             "{} ranks",
             stages, L, L);
  std::vector<int64_t> prefix(static_cast<size_t>(L) + 1, 0);
  for (int64_t i = 0; i < L; ++i) prefix[i + 1] = prefix[i] + layer_params[i];
  // cost[s][j]: the best (largest stage's parameters, largest stage's layers)
  // for the first j layers cut into s stages; arg[s][j]: where stage s-1 starts.
  using Cost = std::pair<int64_t, int64_t>;
  const Cost inf{std::numeric_limits<int64_t>::max(), 0};
  std::vector<std::vector<Cost>> cost(stages + 1, std::vector<Cost>(L + 1, inf));
  std::vector<std::vector<int64_t>> arg(stages + 1, std::vector<int64_t>(L + 1, -1));
  cost[0][0] = {0, 0};
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

Pipeline::Pipeline(const std::shared_ptr<nn::Sequential>& model, Communicator& comm, PipelineOptions options)
    : comm_(comm), options_(std::move(options)) {
  HPDL_CHECK(model != nullptr, "Pipeline: the model is null");
  HPDL_CHECK(options_.micro_batches >= 1, "Pipeline: micro_batches is {}; need at least 1", options_.micro_batches);
  const int S = comm.size();
  const auto L = static_cast<int64_t>(model->size());
  HPDL_CHECK(S <= L,
             "Pipeline: {} stages (ranks) but the model has only {} layers (each stage needs at least one); run with "
             "at most {} ranks",
             S, L, L);
  if (options_.split_points.empty()) {
    std::vector<int64_t> params;
    for (const auto& [_, m] : model->children()) params.push_back(m->num_parameters());
    bounds_ = balance_stages(params, S);
  } else {
    const auto& sp = options_.split_points;
    HPDL_CHECK(static_cast<int>(sp.size()) == S - 1, "Pipeline: {} split points for {} stages; need exactly {}",
               sp.size(), S, S - 1);
    bounds_ = {0};
    for (size_t i = 0; i < sp.size(); ++i) {
      HPDL_CHECK(sp[i] > bounds_.back() && sp[i] < L,
                 "Pipeline: split point {} is {}; split points must increase strictly within [1, {}) (layers)", i,
                 sp[i], L);
      bounds_.push_back(sp[i]);
    }
    bounds_.push_back(L);
  }
  stage_index_ = comm.rank();
  auto stage = std::make_shared<Stage>();
  for (int64_t i = bounds_[stage_index_]; i < bounds_[stage_index_ + 1]; ++i) {
    const auto& [name, m] = model->children()[static_cast<size_t>(i)];
    stage->add(name, m);
  }
  stage->train(model->is_training());
  stage_ = stage;
}

std::string Pipeline::describe_stage(int s) const {
  return fmt::format("stage {} of {} (layers {}..{}, rank {})", s, num_stages(), bounds_[s], bounds_[s + 1] - 1, s);
}

void Pipeline::raise_everywhere(int failed_stage, const std::string& local_message) {
  // The first failing stage's message goes to every rank, so all raise the same error.
  std::string msg = stage_index_ == failed_stage ? local_message : std::string();
  int64_t n = static_cast<int64_t>(msg.size());
  comm_.broadcast_bytes(&n, sizeof n, failed_stage);
  msg.resize(static_cast<size_t>(n));
  if (n > 0) comm_.broadcast_bytes(msg.data(), n, failed_stage);
  HPDL_FAIL("Pipeline: {}: {}", describe_stage(failed_stage), msg);
}

// The forward phase shared by train_step (M micro-batches, graphs kept, loss
// on the last stage) and forward (one micro-batch, no graph, no loss). Every
// stage receives and sends exactly M messages whatever fails, then one
// allreduce tells all stages whether any failed (and the summed loss); on
// failure all raise the first failing stage's message.
double Pipeline::forward_phase(const Tensor& input, const Tensor& target, const LossFn* loss, int M,
                               std::vector<Tensor>& inputs, std::vector<Tensor>& outputs) {
  const int s = stage_index_, S = num_stages();
  const int act_tag = options_.tag;
  inputs.assign(M, Tensor());
  outputs.assign(M, Tensor());
  std::string error;
  bool failed = false, upstream_failed = false;
  double loss_sum = 0;
  auto fail = [&](const std::string& what) {
    if (!failed) error = what;
    failed = true;
  };
  int64_t micro = 0, t_micro = 0;
  try {
    if (is_first()) {
      HPDL_CHECK(input.impl_ptr() != nullptr && input.ndim() >= 1, "the input must be a tensor [N, ...]");
      HPDL_CHECK(input.device() == kCPU, "the input is on {}; pipeline stages exchange CPU tensors only",
                 input.device().str());
      HPDL_CHECK(input.dim(0) % M == 0, "batch size {} is not divisible by micro_batches = {}", input.dim(0), M);
      micro = input.dim(0) / M;
    }
    if (is_last() && loss) {
      HPDL_CHECK(target.impl_ptr() != nullptr && target.ndim() >= 1, "the target must be a tensor [N, ...]");
      HPDL_CHECK(target.dim(0) % M == 0, "target batch size {} is not divisible by micro_batches = {}",
                 target.dim(0), M);
      HPDL_CHECK(!is_first() || target.dim(0) == input.dim(0), "target batch size {} differs from the input's {}",
                 target.dim(0), input.dim(0));
      t_micro = target.dim(0) / M;
    }
  } catch (const Error& e) {
    fail(e.message());
  }

  for (int m = 0; m < M; ++m) {
    Tensor in;
    if (is_first()) {
      if (!failed) in = input.slice(0, m * micro, (m + 1) * micro);
    } else {
      try {
        in = decode(comm_.recv_bytes(s - 1, act_tag), "activation", s - 1);
        if (in.impl_ptr() == nullptr) upstream_failed = true;
        else if (loss) in.set_requires_grad(true);  // a leaf: backward leaves dL/d(in) in its .grad
      } catch (const Error& e) {
        fail(e.message());
      }
    }
    Tensor out;
    if (!failed && !upstream_failed) {
      try {
        out = stage_->forward(in);
        if (is_last() && loss) {
          HPDL_CHECK(out.ndim() >= 1 && out.dim(0) == t_micro,
                     "the output {} of micro-batch {} does not match its {} targets", out.str(), m, t_micro);
          Tensor l = (*loss)(out, target.slice(0, m * t_micro, (m + 1) * t_micro));
          HPDL_CHECK(l.numel() == 1, "the loss function returned {}; it must return a scalar (the micro-batch mean)",
                     l.str());
          loss_sum += l.item();
          out = mul(l, 1.0 / M);  // the batch mean is the mean of the M micro-batch means
        }
        inputs[m] = in;
        outputs[m] = out;
      } catch (const Error& e) {
        fail(in.impl_ptr() != nullptr && !is_first()
                 ? fmt::format("on the input {} from the previous stage: {}", in.str(), e.message())
                 : e.message());
      }
    }
    if (!is_last()) {
      if (failed || upstream_failed) {
        send_failed(comm_, s + 1, act_tag);
      } else {
        const auto msg = encode(out);
        comm_.send_bytes(msg.data(), static_cast<int64_t>(msg.size()), s + 1, act_tag);
      }
    }
  }

  // [S - first failing stage (0: none), the last stage's loss sum], max over ranks.
  double status[2] = {failed ? double(S - s) : 0.0, is_last() ? loss_sum : std::numeric_limits<double>::lowest()};
  comm_.allreduce(status, 2, DType::f64, ReduceKind::max);
  if (status[0] > 0) {
    inputs.clear();
    outputs.clear();
    raise_everywhere(S - static_cast<int>(status[0]), error);
  }
  return status[1] / M;
}

double Pipeline::train_step(const Tensor& input, const Tensor& target, const LossFn& loss) {
  const int M = options_.micro_batches, s = stage_index_;
  const int grad_tag = options_.tag + 1;
  std::vector<Tensor> inputs, outputs;
  const double mean_loss = forward_phase(input, target, &loss, M, inputs, outputs);
  boundary_bytes_ = 0;
  for (int m = 0; m < M; ++m) {
    if (!is_first()) boundary_bytes_ += static_cast<int64_t>(inputs[m].nbytes());
    if (!is_last()) boundary_bytes_ += static_cast<int64_t>(outputs[m].nbytes());
  }
  // Backward, last micro-batch first (the one whose activations are freshest
  // on the last stage). The forward phase ended in an allreduce, so every
  // stage is here; an error now would leave neighbours waiting: abort instead.
  try {
    for (int m = M - 1; m >= 0; --m) {
      if (is_last()) {
        outputs[m].backward();
      } else {
        Tensor dy = decode(comm_.recv_bytes(s + 1, grad_tag), "gradient", s + 1);
        HPDL_CHECK(dy.impl_ptr() != nullptr && dy.shape() == outputs[m].shape() && dy.dtype() == outputs[m].dtype(),
                   "the gradient {} from the next stage does not match this stage's output {}",
                   dy.impl_ptr() ? dy.str() : std::string("(failure marker)"), outputs[m].str());
        outputs[m].backward(dy);
      }
      outputs[m] = Tensor();  // frees this micro-batch's graph
      if (!is_first()) {
        Tensor dx = inputs[m].grad();
        // A stage whose output does not depend on its input sends zeros.
        if (dx.impl_ptr() == nullptr) dx = Tensor::zeros(inputs[m].shape(), inputs[m].dtype());
        const auto msg = encode(dx);
        comm_.send_bytes(msg.data(), static_cast<int64_t>(msg.size()), s - 1, grad_tag);
      }
      inputs[m] = Tensor();
    }
  } catch (const Error& e) {
    comm_.abort(fmt::format("Pipeline: {} failed in backward: {}", describe_stage(s), e.message()));
  }
  return mean_loss;
}

Tensor Pipeline::forward(const Tensor& input) {
  NoGradGuard no_grad;
  std::vector<Tensor> inputs, outputs;
  forward_phase(input, Tensor(), nullptr, 1, inputs, outputs);
  return is_last() ? outputs[0] : Tensor();
}

}  // namespace hpdl::dist
