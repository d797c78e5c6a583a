// The Trainer: one training run, on one rank or many.
#include "hpdl/train/trainer.h"

#include <sys/resource.h>

#include <cstring>
#include <cstdio>
#include <fstream>
#include <set>
#include <tuple>

#include <fmt/ranges.h>

#include "hpdl/autograd/node.h"
#include "hpdl/backend/cpu/onednn.h"
#ifdef HPDL_HAVE_CUDA
#include "hpdl/backend/cuda/cuda.h"
#endif
#include "hpdl/core/random.h"
#include "hpdl/core/threading.h"
#include "hpdl/data/dataloader.h"
#include "hpdl/data/sampler.h"
#include "hpdl/dist/communicator.h"
#include "hpdl/dist/data_parallel.h"
#include "hpdl/dist/pipeline.h"
#include "hpdl/dist/sync_batchnorm.h"
#include "hpdl/dist/tensor_parallel.h"
#include "hpdl/dist/zero.h"
#include "hpdl/dist/zero3.h"
#include "hpdl/io/file.h"
#include "hpdl/io/safetensors.h"
#include "hpdl/nn/layers.h"
#include "hpdl/nn/models/models.h"
#include "hpdl/nn/models/vit.h"
#include "hpdl/ops/ops.h"
#include "hpdl/optim/ema.h"
#include "hpdl/optim/factory.h"
#include "hpdl/store/store_dataset.h"
#include "hpdl/train/checkpoint.h"
#include "hpdl/train/early_stopping.h"
#include "hpdl/train/metrics.h"
#include "hpdl/train/progress.h"
#include "hpdl/train/report.h"
#include "hpdl/train/signals.h"
#include "hpdl/train/trace.h"

namespace hpdl::train {
namespace fs = std::filesystem;

namespace {

// Tensor memory on the training device (the caching allocator's count: model, optimizer state,
// activations, gradients; not libraries' own buffers): reset() starts a new peak, peak_mb() reads it.
struct DevicePeakMemory {
  Device device;
  void reset() const {
#ifdef HPDL_HAVE_CUDA
    if (device.is_cuda()) return cuda::reset_peak_memory();
#endif
    if (device.is_cpu()) reset_cpu_memory_peak();
  }
  double peak_mb() const {
#ifdef HPDL_HAVE_CUDA
    if (device.is_cuda()) return static_cast<double>(cuda::allocator_stats().peak_allocated_bytes) / (1 << 20);
#endif
    return device.is_cpu() ? static_cast<double>(cpu_memory_stats().peak_live_bytes) / (1 << 20) : -1.0;
  }
};

nn::ModulePtr build_custom(const ModelConfig& m, const Shape& sample, uint64_t seed) {
  HPDL_CHECK(!m.layers.empty(), "model.name = \"custom\" needs at least one [[model.layers]] entry");
  auto seq = std::make_shared<nn::Sequential>();
  Generator gen(seed);
  int64_t c = sample[0], h = sample[1], w = sample[2], features = -1;  // features >= 0 once flattened
  for (size_t i = 0; i < m.layers.size(); ++i) {
    const LayerSpec& l = m.layers[i];
    auto where = [&] { return fmt::format("model.layers[{}] ({})", i, l.type); };
    if (l.type == "conv2d") {
      HPDL_CHECK(features < 0, "{}: a convolution after flatten", where());
      HPDL_CHECK(l.out_channels > 0, "{}: out_channels must be positive", where());
      nn::Conv2dOptions o = nn::Conv2dOptions::k(l.kernel_size).s(l.stride).p(l.padding);
      if (!l.bias) o.no_bias();
      auto conv = std::make_shared<nn::Conv2d>(c, l.out_channels, o, gen);
      auto [oh, ow] = conv->output_size(h, w);
      HPDL_CHECK(oh > 0 && ow > 0, "{}: output would be empty for input {}x{}", where(), h, w);
      c = l.out_channels, h = oh, w = ow;
      seq->push_back(conv);
    } else if (l.type == "maxpool2d" || l.type == "avgpool2d") {
      HPDL_CHECK(features < 0, "{}: pooling after flatten", where());
      int64_t s = l.stride > 1 ? l.stride : l.kernel_size;
      if (l.type == "maxpool2d") seq->push_back(std::make_shared<nn::MaxPool2d>(l.kernel_size, s));
      else seq->push_back(std::make_shared<nn::AvgPool2d>(l.kernel_size, s));
      h = (h - l.kernel_size) / s + 1, w = (w - l.kernel_size) / s + 1;
      HPDL_CHECK(h > 0 && w > 0, "{}: output would be empty", where());
    } else if (l.type == "batchnorm2d") {
      HPDL_CHECK(features < 0, "{}: batchnorm2d after flatten", where());
      seq->push_back(std::make_shared<nn::BatchNorm2d>(c));
    } else if (l.type == "relu") {
      seq->push_back(std::make_shared<nn::ReLU>());
    } else if (l.type == "dropout") {
      seq->push_back(std::make_shared<nn::Dropout>(l.p, seed + 1000 + i));
    } else if (l.type == "flatten") {
      seq->push_back(std::make_shared<nn::Flatten>());
      features = c * h * w;
    } else if (l.type == "linear") {
      if (features < 0) {
        seq->push_back(std::make_shared<nn::Flatten>());
        features = c * h * w;
      }
      HPDL_CHECK(l.out_features > 0, "{}: out_features must be positive", where());
      seq->push_back(std::make_shared<nn::Linear>(features, l.out_features, l.bias, gen));
      features = l.out_features;
    } else {
      HPDL_FAIL("{}: unknown layer type '{}' (known: conv2d, linear, relu, maxpool2d, avgpool2d, batchnorm2d, "
                "dropout, flatten)", where(), l.type);
    }
  }
  HPDL_CHECK(features == m.num_classes, "model.layers: the last layer must be linear with out_features = "
             "model.num_classes ({}), got {}", m.num_classes, features);
  return seq;
}

// Sums (n, stop flag, checkpoint flag, then loss * n and the objective's metric sums) over ranks
// in one small allreduce.
struct StepStats {
  double count = 0, stop = 0, ckpt = 0;
  std::vector<double> sums;  // loss sum, then Objective::metric_sums (same length on every rank)
};

std::vector<double> allreduce_sums(dist::Communicator& comm, const std::vector<double>& v) {
  Tensor t = Tensor::from_vector<double>(v, {static_cast<int64_t>(v.size())});
  comm.allreduce(t);
  return t.to_vector<double>();
}

StepStats allreduce_stats(dist::Communicator& comm, StepStats s) {
  std::vector<double> v{s.count, s.stop, s.ckpt};
  v.insert(v.end(), s.sums.begin(), s.sums.end());
  v = allreduce_sums(comm, v);
  return {v[0], v[1], v[2], std::vector<double>(v.begin() + 3, v.end())};
}

// Sums of (loss x samples) and of the objective's metric sums (correct predictions, or the
// regression error sums), kept as one float64 vector on the compute device. Adding a batch queues
// a few small kernels and does not wait for them: a training step on a GPU then never
// synchronizes for its metrics. read() copies the sums to the host (one synchronization) when a
// log line or a summary needs them.
class MetricSums {
 public:
  MetricSums() = default;
  // One batch: `loss` (a scalar) times `weight` (the batch size for a mean loss, 1 for a summed
  // one), and objective.metric_sums(outputs, targets).
  static MetricSums of_batch(const Tensor& loss, double weight, const Objective& objective, const Tensor& outputs,
                             const Tensor& targets) {
    NoGradGuard ng;
    MetricSums m;
    Tensor l = loss.detach().to(DType::f64);
    if (weight != 1.0) l = l * weight;
    m.sums_ = cat({l.reshape({1}), objective.metric_sums(outputs, targets)}, 0);
    return m;
  }
  void add(const MetricSums& b) {
    if (!sums_.defined()) {
      *this = b;
    } else if (b.sums_.defined()) {
      NoGradGuard ng;
      sums_ = sums_ + b.sums_;
    }
  }
  // The loss sum, then the metric sums, on the host; `size` zeros when nothing was added.
  std::vector<double> read(size_t size) const {
    if (!sums_.defined()) return std::vector<double>(size, 0.0);
    return sums_.to(kCPU).to_vector<double>();
  }

 private:
  Tensor sums_;
};

// Record fields `prefix` + name for each metric (train_rmse, test_accuracy, ...).
void put_metrics(nlohmann::json& rec, const std::string& prefix, const std::map<std::string, double>& m) {
  for (auto& [k, v] : m) rec[prefix + k] = v;
}

optim::OptimizerConfig optimizer_config(const OptimizerConfig& o, int64_t global_batch) {
  optim::OptimizerConfig c;
  c.name = o.name;
  c.lr = o.lr;
  if (o.lr_scaling == "linear") c.lr = o.lr * static_cast<double>(global_batch) / static_cast<double>(o.base_batch);
  c.momentum = o.momentum;
  c.nesterov = o.nesterov;
  c.weight_decay = o.weight_decay;
  c.eta = o.eta;
  if (o.betas.size() == 2) c.beta1 = o.betas[0], c.beta2 = o.betas[1];
  c.eps = o.eps;
  return c;
}

optim::ScheduleConfig schedule_config(const ScheduleConfig& s, double lr, int64_t steps_per_epoch, int64_t epochs) {
  optim::ScheduleConfig c;
  c.lr = lr;
  c.name = s.name == "poly" ? "polynomial" : (s.name == "step" ? "multistep" : s.name);
  c.total_steps = steps_per_epoch * epochs;
  c.final_lr = s.final_lr;
  c.gamma = s.gamma;
  c.power = s.power;
  for (int64_t e : s.milestones) c.milestones.push_back(e * steps_per_epoch);
  c.warmup_steps = static_cast<int64_t>(s.warmup_epochs * static_cast<double>(steps_per_epoch));
  return c;
}

// Microseconds as seconds.
std::vector<double> seconds(const std::vector<int64_t>& us) {
  std::vector<double> out;
  for (int64_t x : us) out.push_back(static_cast<double>(x) / 1e6);
  return out;
}

// Sizes as MiB, from units of `unit` bytes.
std::vector<double> mib(const std::vector<int64_t>& v, double unit) {
  std::vector<double> out;
  for (int64_t x : v) out.push_back(static_cast<double>(x) * unit / (1 << 20));
  return out;
}

// ---- pipeline parallelism (train.pipeline_stages) ----

// A dict of CPU tensors as bytes, to gather the stages' state dicts on one rank: the entry count,
// then per entry [name length, name, dtype, ndim, dims..., byte count, bytes] (int64 words).
std::vector<uint8_t> pack_tensors(const std::map<std::string, Tensor>& m) {
  std::vector<uint8_t> out;
  auto put = [&](const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    out.insert(out.end(), b, b + n);
  };
  auto word = [&](int64_t v) { put(&v, sizeof v); };
  word(static_cast<int64_t>(m.size()));
  for (const auto& [name, t] : m) {
    Tensor c = t.to(kCPU).contiguous();
    word(static_cast<int64_t>(name.size()));
    put(name.data(), name.size());
    word(static_cast<int64_t>(c.dtype()));
    word(c.ndim());
    for (int64_t d : c.shape()) word(d);
    word(static_cast<int64_t>(c.nbytes()));
    if (c.nbytes() > 0) put(c.raw_data(), c.nbytes());
  }
  return out;
}

std::map<std::string, Tensor> unpack_tensors(const std::vector<uint8_t>& b, int from) {
  size_t at = 0;
  auto take = [&](void* p, size_t n) {
    HPDL_CHECK(n <= b.size() - at, "pipeline checkpoint: the state sent by stage {} is truncated ({} bytes)", from,
               b.size());
    if (n > 0) std::memcpy(p, b.data() + at, n);
    at += n;
  };
  auto word = [&] {
    int64_t v = 0;
    take(&v, sizeof v);
    return v;
  };
  std::map<std::string, Tensor> m;
  const int64_t count = word();
  for (int64_t i = 0; i < count; ++i) {
    const int64_t len = word();
    HPDL_CHECK(len >= 0 && static_cast<size_t>(len) <= b.size() - at, "pipeline checkpoint: bad name length {} in "
               "the state sent by stage {}", len, from);
    std::string name(static_cast<size_t>(len), '\0');
    take(name.data(), name.size());
    const auto dtype = static_cast<DType>(word());
    const int64_t ndim = word();
    HPDL_CHECK(ndim >= 0 && ndim <= 16, "pipeline checkpoint: '{}' from stage {} has {} dimensions", name, from, ndim);
    Shape shape(static_cast<size_t>(ndim));
    for (auto& d : shape) d = word();
    Tensor t = Tensor::empty(shape, dtype);
    const int64_t bytes = word();
    HPDL_CHECK(bytes == static_cast<int64_t>(t.nbytes()), "pipeline checkpoint: '{}' from stage {} holds {} bytes, "
               "expected {} for {}", name, from, bytes, t.nbytes(), t.str());
    take(t.raw_data(), t.nbytes());
    m.emplace(std::move(name), t);
  }
  return m;
}

// The union of the dicts of every rank of `c` (their names are disjoint, apart from entries equal
// on every rank, such as the optimizer's "step", of which rank 0's is kept), on rank 0 of `c`;
// an empty dict elsewhere. Collective over `c`.
std::map<std::string, Tensor> gather_dicts(dist::Communicator& c, std::map<std::string, Tensor> mine) {
  constexpr int kTag = 7410;
  if (c.rank() != 0) {
    const auto bytes = pack_tensors(mine);
    c.send_bytes(bytes.data(), static_cast<int64_t>(bytes.size()), 0, kTag);
    return {};
  }
  for (int r = 1; r < c.size(); ++r)
    for (auto& [k, v] : unpack_tensors(c.recv_bytes(r, kTag), r)) mine.emplace(k, v);
  return mine;
}

// A pipeline stage's share of a whole model's dicts: the model entries it has, and the optimizer
// entries "<parameter>.<buffer>" of its parameters (with the shared "step").
std::map<std::string, Tensor> stage_model_slice(const std::map<std::string, Tensor>& full, nn::Module& stage) {
  std::map<std::string, Tensor> out;
  for (const auto& [k, _] : stage.state_dict()) {
    auto it = full.find(k);
    if (it != full.end()) out.emplace(k, it->second);  // a missing one: load_state_dict names it
  }
  return out;
}

std::map<std::string, Tensor> stage_optimizer_slice(const std::map<std::string, Tensor>& full, nn::Module& stage) {
  std::set<std::string> params;
  for (const auto& [name, _] : stage.named_parameters()) params.insert(name);
  std::map<std::string, Tensor> out;
  for (const auto& [k, v] : full) {
    const auto dot = k.rfind('.');
    if (k == "step" || (dot != std::string::npos && params.count(k.substr(0, dot)))) out.emplace(k, v);
  }
  return out;
}

// The evaluation loader over shard `part` of `parts` of `dataset` (in order, batches of at least
// 256), started; `mine` receives the shard's size (the sampler pads the last shard by wrapping, and
// the evaluations count each sample once).
std::unique_ptr<data::DataLoader> eval_loader(std::shared_ptr<const data::Dataset> dataset, const DataConfig& config,
                                              int parts, int part, int64_t& mine) {
  auto sampler = std::make_shared<data::DistributedSampler>(dataset->size(), parts, part, false, 0, false);
  data::DataLoaderOptions lo;
  lo.batch_size = std::max<int64_t>(config.batch_size, 256);
  lo.workers = static_cast<int>(config.workers);
  lo.prefetch = static_cast<int>(std::max<int64_t>(1, config.prefetch));
  auto loader = std::make_unique<data::DataLoader>(dataset, sampler, lo, make_pipeline(config, false));
  loader->start_epoch(0);
  mine = (dataset->size() - part + parts - 1) / parts;
  return loader;
}

// The result of an evaluation from its all-reduced sums (loss sum, then the objective's metric sums).
EvalResult eval_result(const Objective& objective, const StepStats& s) {
  EvalResult r;
  r.loss = s.sums[0] / std::max(1.0, s.count);
  r.samples = static_cast<int64_t>(s.count);
  r.metrics = objective.metrics(std::vector<double>(s.sums.begin() + 1, s.sums.end()), s.count);
  r.accuracy = objective.regression() ? -1.0 : r.metrics["accuracy"];
  return r;
}

// Loss and accuracy through a pipeline: the replicas share the dataset, every rank of a pipeline
// reads its replica's batches, the first stage feeds them in and the last scores the outputs (its
// tensor-parallel group's rank 0 alone, when it has one); the sums go to every rank of the grid,
// so all report the same numbers.
EvalResult evaluate_pipeline(dist::Pipeline& pipe, dist::PipelineGrid& grid,
                             std::shared_ptr<const data::Dataset> dataset, const DataConfig& config,
                             const Objective& objective) {
  int64_t seen = 0, mine = 0;
  auto loader = eval_loader(dataset, config, grid.replicas, grid.replica, mine);
  nn::Module& stage = pipe.stage();
  const bool was_training = stage.is_training();
  stage.eval();
  NoGradGuard ng;
  StepStats s;
  MetricSums sums;
  data::Batch b;
  while (loader->next(b)) {
    const int64_t keep = std::min<int64_t>(b.size(), mine - seen);
    seen += b.size();
    if (keep <= 0) continue;
    Tensor x = keep < b.size() ? b.images.slice(0, 0, keep) : b.images;
    Tensor y = keep < b.size() ? b.labels.slice(0, 0, keep) : b.labels;
    Tensor logits = pipe.forward(x);
    if (pipe.is_last() && (!grid.tensor || grid.tensor->rank() == 0)) {  // a stage's group: the same logits
      sums.add(MetricSums::of_batch(objective.eval_loss_sum(logits, y), 1.0, objective, logits, y));
      s.count += static_cast<double>(keep);
    }
  }
  stage.train(was_training);
  s.sums = sums.read(1 + objective.metric_sums_size());
  return eval_result(objective, allreduce_stats(*grid.all, s));
}

// A fresh run in a run directory that already holds checkpoints would overwrite and prune the
// earlier run's checkpoints and append to its metrics: refused unless train.overwrite, which
// removes that run's files first. Rank 0 looks; every rank gets its answer.
void refuse_earlier_run(const fs::path& run_dir, bool overwrite, dist::Communicator& comm) {
  std::string newest;
  int64_t found = 0;
  std::error_code ec;
  if (comm.rank() == 0 && fs::is_directory(run_dir / "checkpoints", ec)) {
    for (const auto& e : fs::directory_iterator(run_dir / "checkpoints", ec)) {
      const std::string name = e.path().filename().string();
      if (name.rfind("step-", 0) != 0 || e.path().extension() != ".json") continue;
      ++found;
      newest = std::max(newest, name);
    }
  }
  Tensor n = Tensor::full({1}, static_cast<double>(found), DType::f64);
  comm.broadcast(n, 0);
  found = static_cast<int64_t>(n.item());
  if (found == 0) return;
  HPDL_CHECK(overwrite, "train.run_dir = '{}' already holds {} checkpoint(s) of an earlier run (newest {}): continue it "
             "with `hpdl train --resume {}`, choose another train.run_dir, or set train.overwrite = true to start "
             "over (that run's checkpoints and metrics are then removed)", run_dir.string(), found,
             comm.rank() == 0 ? newest : std::string("on rank 0"), run_dir.string());
  if (comm.rank() == 0) {
    fs::remove_all(run_dir / "checkpoints");
    for (const char* f : {"metrics.jsonl", "summary.json", "report.html"}) fs::remove(run_dir / f, ec);
  }
  comm.barrier();
}

}  // namespace


Datasets load_datasets(const DataConfig& config, int64_t targets) {
  Datasets ds;
  if (!config.store.empty()) {
    HPDL_CHECK(targets == 0, "data.store = \"{}\": a packed store holds class labels; a regression loss (float "
               "targets) reads data.dataset = npy, csv or hdf5", config.store);
    auto [train, test] = store::open_store_datasets(config.store);
    ds.train = train, ds.test = test;
  } else {
    HPDL_CHECK(config.dataset != "mnist" || !config.path.empty(),
               "data.dataset = \"mnist\" needs data.path (a directory with the MNIST idx files)");
    const data::Hdf5Names h5{config.hdf5_x, config.hdf5_y, config.hdf5_test_x, config.hdf5_test_y};
    ds.train = data::open_dataset(config.dataset, config.path, true, h5, targets);
    ds.test = data::open_dataset(config.dataset, config.path, false, h5, targets);
  }
  if (config.validation > 0) {
    const int64_t n = ds.train->size();
    HPDL_CHECK(config.validation < n, "data.validation = {} leaves no training samples: the training set has {}",
               config.validation, n);
    ds.validation = std::make_shared<data::SubsetDataset>(ds.train, n - config.validation, config.validation);
    ds.train = std::make_shared<data::SubsetDataset>(ds.train, 0, n - config.validation);
  }
  return ds;
}

void apply_layout(const Config& config) {
  set_cpu_channels_last(config.train.channels_last);
  set_autocast_channels_last(config.train.channels_last);
}

nn::ModulePtr build_model(const Config& config, const Shape& sample) {
  HPDL_CHECK(sample.size() == 3, "model: samples must be [C, H, W], got {}", shape_str(sample));
  HPDL_CHECK(sample[0] == config.model.in_channels, "model.in_channels = {} but the data has {} channels",
             config.model.in_channels, sample[0]);
  if (config.model.name == "custom") return build_custom(config.model, sample, config.train.seed);
  nn::models::ModelConfig mc;
  mc.in_channels = sample[0];
  mc.height = sample[1];
  mc.width = sample[2];
  mc.num_classes = config.model.num_classes;
  mc.hidden = config.model.hidden;
  mc.patch_size = config.model.patch_size, mc.dim = config.model.dim, mc.depth = config.model.depth;
  mc.heads = config.model.heads, mc.mlp_ratio = config.model.mlp_ratio;
  mc.dropout = config.model.dropout;
  mc.seed = config.train.seed;
  return nn::models::make_model(config.model.name, mc);
}

data::Pipeline make_pipeline(const DataConfig& config, bool train) {
  data::AugmentOptions a;
  a.random_crop = config.random_crop;
  a.crop_padding = config.crop_padding;
  a.random_flip = config.random_flip;
  a.normalize = config.normalize;
  a.mean.assign(config.mean.begin(), config.mean.end());
  a.std.assign(config.std.begin(), config.std.end());
  return data::make_pipeline(a, train);
}

EvalResult evaluate(nn::Module& model, std::shared_ptr<const data::Dataset> dataset, const DataConfig& config,
                    dist::Communicator* comm_or_world, const Objective* objective_or_null) {
  auto& comm = comm_or_world ? *comm_or_world : dist::Communicator::world();
  const Objective plain;
  const Objective& objective = objective_or_null ? *objective_or_null : plain;
  int64_t seen = 0, mine = 0;
  auto loader = eval_loader(dataset, config, comm.size(), comm.rank(), mine);
  const bool was_training = model.is_training();
  const auto params = model.parameters();
  const Device device = params.empty() ? kCPU : params.front().device();
  model.eval();
  NoGradGuard ng;
  StepStats s;
  MetricSums sums;
  data::Batch b;
  while (loader->next(b)) {
    int64_t keep = std::min<int64_t>(b.size(), mine - seen);
    seen += b.size();
    if (keep <= 0) {
      // A batch of padding only: nothing to score, but every rank runs the same forwards, as a
      // collective one (ZeRO-3 gathers each unit's parameters) needs.
      model.forward(b.images.slice(0, 0, 1).to(device));
      continue;
    }
    Tensor x = keep < b.size() ? b.images.slice(0, 0, keep) : b.images;
    Tensor y = keep < b.size() ? b.labels.slice(0, 0, keep) : b.labels;
    x = x.to(device), y = y.to(device);
    Tensor logits = model.forward(x);
    sums.add(MetricSums::of_batch(objective.eval_loss_sum(logits, y), 1.0, objective, logits, y));
    s.count += static_cast<double>(keep);
  }
  model.train(was_training);
  s.sums = sums.read(1 + objective.metric_sums_size());
  return eval_result(objective, allreduce_stats(comm, s));
}

void load_model_weights(nn::Module& model, const fs::path& path, bool averages) {
  std::map<std::string, Tensor> tensors;
  if (fs::is_directory(path)) {
    CheckpointManager mgr(path, 1 << 30);
    auto info = mgr.latest_valid();
    HPDL_CHECK(info.has_value(), "no valid checkpoint in {} (expected {}/checkpoints/step-*.json)", path.string(),
               path.string());
    tensors = mgr.load(*info);
  } else {
    tensors = io::load_safetensors(path).tensors;
  }
  auto weights = with_prefix(tensors, "model.");
  HPDL_CHECK(!weights.empty(), "{}: no model weights (tensors named model.*)", path.string());
  // A run with train.ema_decay holds the weight averages too: they are the model it evaluated.
  if (averages)
    for (auto& [k, v] : with_prefix(tensors, "ema.")) weights[k] = v;
  model.load_state_dict(weights);
}

std::unique_ptr<optim::GradScaler> make_grad_scaler(const TrainConfig& t) {
  const auto v = loss_scale_value(t.loss_scale);
  HPDL_CHECK(v.has_value(), "train.loss_scale = '{}' is not one of auto, dynamic, none or a positive number",
             t.loss_scale);
  const bool dynamic = t.loss_scale == "dynamic" || (t.loss_scale == "auto" && t.precision == "fp16");
  if (dynamic) return std::make_unique<optim::GradScaler>();
  if (t.loss_scale == "auto" || *v == 1.0) return nullptr;
  optim::GradScalerOptions o;
  o.init_scale = *v;
  o.dynamic = false;
  return std::make_unique<optim::GradScaler>(o);
}

Trainer::Trainer(Config config, TrainerOptions options) : config_(std::move(config)), options_(options) {}

TrainSummary Trainer::run(bool resume) {
  const Config& cfg = config_;
  auto& comm = options_.comm ? *options_.comm : dist::Communicator::world();
  std::FILE* log = options_.log ? options_.log : stderr;
  const int rank = comm.rank(), world = comm.size();
  const bool root = rank == 0;
  if (cfg.train.threads > 0) set_num_threads(static_cast<int>(cfg.train.threads));
  // threads = 0 and no OMP_NUM_THREADS: ranks that share cores (mpirun --bind-to none) split them
  // rather than each starting a thread per core (design decision 86). Collective on every rank alike
  // (the config is the same everywhere); the environment only decides whether to apply it.
  std::string thread_note;
  if (cfg.train.threads == 0) thread_note = comm.split_shared_cores();
  if (!thread_note.empty()) thread_note = " (" + thread_note + ")";
  apply_layout(cfg);
  Device device = Device::parse(cfg.train.device);
  // GPU ranks: one GPU each, picked from the rank within the node; gradients go over NCCL.
  std::unique_ptr<dist::NcclCommunicator> nccl;
  if (device.is_cuda() && world > 1) {
    HPDL_CHECK(cfg.train.device == "cuda", "train.device = \"{}\" with {} ranks: give \"cuda\" without an index; "
               "each rank takes the GPU of its rank within the node", cfg.train.device, world);
    device = Device{DeviceType::cuda, dist::select_device(comm)};
#ifdef HPDL_HAVE_CUDA
    cuda::set_device(device.index);
#endif
    nccl = std::make_unique<dist::NcclCommunicator>(comm, device.index);
  }
  HPDL_CHECK(cfg.train.precision != "fp16" || device.is_cuda(), "train.precision = \"fp16\" needs train.device = "
             "\"cuda\" (fp16 compute runs on GPU tensor cores); the CPU trains in \"fp32\" or \"bf16\"");
  if (cfg.train.precision == "bf16" && device.is_cpu())
    HPDL_CHECK(cpu::onednn_bf16_supported(), "train.precision = \"bf16\" on the CPU needs AVX512_BF16 or AMX "
               "(oneDNN ISA avx512_core_bf16 or avx512_core_amx); this CPU's oneDNN ISA is {}: use \"fp32\"",
               cpu::onednn_isa());
  // ---- pipeline parallelism (train.pipeline_stages): a grid of pipelines x data-parallel replicas ----
  // The data is sharded over the replicas; every rank of a pipeline reads its replica's batches.
  const int stages = static_cast<int>(cfg.train.pipeline_stages);
  const bool pipelined = stages > 1;
  // ---- tensor parallelism (train.tensor_parallel): groups of P consecutive ranks x replicas ----
  // grid.tensor is the tensor-parallel group, grid.data the ranks holding the same slices in the
  // other replicas. Every rank of a group reads its replica's batches. With pipeline stages too,
  // each stage is split over a group (replicas x stages x P ranks).
  const int tp = static_cast<int>(cfg.train.tensor_parallel);
  const bool tensor_parallel = tp > 1;
  if (pipelined && tensor_parallel)
    HPDL_CHECK(world % (stages * tp) == 0, "train.pipeline_stages = {} x train.tensor_parallel = {} does not divide "
               "the {} rank(s) of this run: run with a multiple of {} ranks (pipelines of {} stages, each split "
               "over {} ranks, x data-parallel replicas)", stages, tp, world, stages * tp, stages, tp);
  else if (pipelined)
    HPDL_CHECK(world % stages == 0, "train.pipeline_stages = {} does not divide the {} rank(s) of this run: run with "
               "a multiple of {} ranks (pipelines of {} stages x data-parallel replicas), or set "
               "train.pipeline_stages = 1", stages, world, stages, stages);
  else if (tensor_parallel)
    HPDL_CHECK(world % tp == 0, "train.tensor_parallel = {} does not divide the {} rank(s) of this run: run with "
               "a multiple of {} ranks (tensor-parallel groups of {} x data-parallel replicas), or set "
               "train.tensor_parallel = 1", tp, world, tp, tp);
  const bool gridded = pipelined || tensor_parallel;
  dist::PipelineGrid grid;
  if (gridded) grid = dist::make_pipeline_grid(comm, stages, tp);
  // The ranks that hold the same part of the model: all of them, or a grid's replicas.
  dist::Communicator& replica_comm = gridded ? *grid.data : comm;
  // train.hierarchical_allreduce: whatever averages the replicas (DataParallel, a pipeline stage's
  // DataParallel, local SGD's averaging) all-reduces node by node. Used only where nodes are equal.
  bool hierarchical = false;
  if (cfg.train.hierarchical_allreduce) {
    hierarchical = replica_comm.set_hierarchical(true);
    if (!hierarchical && rank == 0)
      std::fprintf(stderr, "hpdl: train.hierarchical_allreduce: not used (%d replica rank(s): it needs several nodes "
                   "with the same number, > 1, of them; nodes from MPI_COMM_TYPE_SHARED or HPDL_NODE_ID)\n",
                   replica_comm.size());
  }
  const int replicas = gridded ? grid.replicas : world, replica = gridded ? grid.replica : rank;
  // Tensor parallel: every rank of a group computes the same logits; only its first counts them.
  const bool counts_metrics = !tensor_parallel || grid.tensor->rank() == 0;
  // bf16: autocast (hpdl/ops/autocast.h) around forward and loss: convolutions
  // and matmuls on tensor cores, activations (channels-last) and their
  // gradients in bfloat16; master weights, their gradients and optimizer state
  // stay float32. fp16: float32 convolutions and matmuls convert their
  // operands to float16 for the tensor cores (float32 accumulation and
  // activations), with loss scaling.
  // bf16 on the CPU (design decision 69): the same autocast scope, but tensors
  // stay float32; convolutions, linear layers and matmuls (forward and both
  // gradients) round their operands to bfloat16 inside oneDNN and accumulate in
  // float32. Everything else, the weights and the optimizer compute in float32.
  const bool autocast_bf16 = cfg.train.precision == "bf16";
#ifdef HPDL_HAVE_CUDA
  if (device.is_cuda()) cuda::set_compute_precision(cfg.train.precision == "fp16" ? DType::f16 : DType::f32);
#endif
  // Loss scaling (fp16 by default; allowed with any precision). Skipped steps
  // (inf/NaN gradients) leave weights and optimizer state untouched but still
  // count as steps of the data order and the lr schedule (as PyTorch's
  // scheduler does), so a resumed run sees the same batches and rates.
  std::unique_ptr<optim::GradScaler> scaler = make_grad_scaler(cfg.train);

  const fs::path run_dir = cfg.train.run_dir;
  if (!resume) refuse_earlier_run(run_dir, cfg.train.overwrite, comm);
  if (root) {
    fs::create_directories(run_dir);
    save_config(cfg, run_dir / "config.toml");
  }
  comm.barrier();

  JobSignals signals;  // SIGTERM: checkpoint and stop; SIGUSR1: checkpoint and go on (signals.h)

  // ---- data ----
  const Objective objective(cfg);  // train.loss: the loss and the metrics
  Datasets ds = load_datasets(cfg.data, objective.targets());
  auto sampler = std::make_shared<data::DistributedSampler>(ds.train->size(), replicas, replica, cfg.data.shuffle,
                                                            cfg.train.seed, cfg.data.drop_last);
  data::DataLoaderOptions lo;
  lo.batch_size = cfg.data.batch_size;
  lo.drop_last = cfg.data.drop_last;
  lo.workers = static_cast<int>(cfg.data.workers);
  lo.prefetch = static_cast<int>(cfg.data.prefetch);
  lo.seed = cfg.train.seed;
#ifdef HPDL_HAVE_CUDA
  if (cfg.data.pin_memory && device.is_cuda())  // page-locked batches: uploads overlap the step
    lo.allocate = [](const Shape& s, DType t) { return cuda::pinned_empty(s, t); };
#endif
  data::DataLoader loader(ds.train, sampler, lo, make_pipeline(cfg.data, true));
  const int64_t per_rank = sampler->epoch_length();
  const int64_t batches_per_epoch =
      cfg.data.drop_last ? per_rank / cfg.data.batch_size : (per_rank + cfg.data.batch_size - 1) / cfg.data.batch_size;
  HPDL_CHECK(batches_per_epoch > 0, "data.batch_size = {} is larger than this rank's {} samples (drop_last on)",
             cfg.data.batch_size, per_rank);
  // train.accumulate_steps: one optimizer step per group of that many batches (the last group of an
  // epoch may be shorter). Steps, the schedule and checkpoints count optimizer steps.
  const int64_t accum = cfg.train.accumulate_steps;
  const int64_t steps_per_epoch = (batches_per_epoch + accum - 1) / accum;
  if (pipelined && !cfg.data.drop_last) {
    const int64_t tail = per_rank % cfg.data.batch_size;
    HPDL_CHECK(tail % cfg.train.micro_batches == 0, "train.micro_batches = {}: the last batch of each epoch holds {} "
               "samples ({} per replica, data.batch_size = {}), which do not split into that many equal "
               "micro-batches; set data.drop_last = true or a train.micro_batches that divides {}",
               cfg.train.micro_batches, tail, per_rank, cfg.data.batch_size, tail);
  }

  // ---- model, optimizer, schedule ----
  Shape sample = make_pipeline(cfg.data, true).output_shape(ds.train->sample_shape());
  nn::ModulePtr model = build_model(cfg, sample);
  model->to(device);
  model->train();
  // The config refused the combinations it cannot take; a pipeline stage and a tensor-parallel
  // vit are cut into segments below, once they exist.
  // ZeRO-3 checkpoints each of its units itself (below); the model's own segments would not run.
  const bool zero3_units = cfg.train.shard_optimizer && cfg.train.zero_stage == 3 && world > 1;
  if (cfg.train.activation_checkpointing && zero3_units) {
    if (root) std::fprintf(log, "hpdl: activation checkpointing: each ZeRO-3 unit is a segment\n");
  } else if (cfg.train.activation_checkpointing && !pipelined && !tensor_parallel) {
    const std::string segments = nn::models::enable_activation_checkpointing(*model);
    if (root) std::fprintf(log, "hpdl: activation checkpointing: %s\n", segments.c_str());
  }
  const int64_t model_parameters = model->num_parameters();
  // With tensor parallelism, each vit encoder layer is replaced by its slice on this rank (built
  // from the full layer, identical on every rank); the rest of the model stays whole. With pipeline
  // stages too, the pipeline (below) cuts this tensor-parallel vit into its stages. Generators
  // of the split parts draw per rank (seed + an offset per rank): their offsets from the full
  // model's seeds are kept, so checkpoints hold the full model's seeds at any P.
  std::map<std::string, uint64_t> tp_seed_offset;
  if (tensor_parallel) {
    auto* full = dynamic_cast<nn::models::VisionTransformer*>(model.get());
    HPDL_CHECK(full != nullptr, "train.tensor_parallel = {}: model.name = \"{}\" is not a vit; set "
               "train.tensor_parallel = 1", tp, cfg.model.name);
    std::map<std::string, uint64_t> full_seed;
    for (auto& [name, gen] : model->named_generators()) full_seed[name] = gen->seed();
    model = std::make_shared<dist::ParallelVisionTransformer>(*full, *grid.tensor);
    for (auto& [name, gen] : model->named_generators()) tp_seed_offset[name] = gen->seed() - full_seed.at(name);
    if (root)
      std::fprintf(log, "hpdl: tensor parallel: groups of %d rank(s) x %d replica(s); %lld of the model's %lld "
                   "parameters per rank\n", tp, replicas, static_cast<long long>(model->num_parameters()),
                   static_cast<long long>(model_parameters));
  }
  // With pipeline stages, `model` becomes this rank's stage (the model's layers it holds, under the
  // model's names); the pipeline owns it, and the other stages' layers are freed here.
  std::unique_ptr<dist::Pipeline> pipeline;
  if (pipelined) {
    HPDL_CHECK(dynamic_cast<nn::Stageable*>(model.get()) != nullptr, "train.pipeline_stages = {}: model.name = \"{}\" "
               "is not a sequence of layers, so it cannot be cut into stages; use mlp, lenet5, resnet20, resnet18, "
               "resnet50, alexnet_bn, vgg11_bn, vgg16_bn, vit or custom, or set train.pipeline_stages = 1", stages,
               cfg.model.name);
    dist::PipelineOptions po;
    po.micro_batches = static_cast<int>(cfg.train.micro_batches);
    po.schedule = cfg.train.pipeline_schedule == "1f1b" ? dist::PipelineSchedule::one_f_one_b
                                                        : dist::PipelineSchedule::gpipe;
    po.bucket_bytes = static_cast<int64_t>(cfg.train.bucket_mb * (1 << 20));
    po.bf16_wire = cfg.train.bf16_wire;
    po.split_points = cfg.train.pipeline_split_points;
    const int64_t layers = dynamic_cast<nn::Stageable&>(*model).num_layers();
    for (size_t i = 0; i < po.split_points.size(); ++i)
      HPDL_CHECK(po.split_points[i] < layers, "train.pipeline_split_points[{}] = {} is not below the {} layers of "
                 "model.name = \"{}\" (a stage must begin at layer 1..{})", i, po.split_points[i], layers,
                 cfg.model.name, layers - 1);
    std::string balance_note;
    if (cfg.train.pipeline_balance == "time") {
      // One training micro-batch of the first samples (evaluation transforms: no random draws),
      // timed through each layer on every rank at once (design decision 85).
      const int64_t m = cfg.data.batch_size / cfg.train.micro_batches;
      data::DataLoaderOptions first_lo;
      first_lo.batch_size = m;
      first_lo.workers = 0;
      data::DataLoader first(ds.train, std::make_shared<data::SequentialSampler>(ds.train->size()), first_lo,
                             make_pipeline(cfg.data, false));
      first.start_epoch(0);
      data::Batch micro;
      HPDL_CHECK(first.next(micro), "train.pipeline_balance = \"time\": the training set has no samples to time");
      std::vector<double> seconds;
      {
        AutocastScope ac(DType::bf16, autocast_bf16);
        seconds = dist::profile_layer_seconds(*model, micro.images, comm);
      }
      po.layer_costs = seconds;
      std::vector<int64_t> params;
      for (int64_t i = 0; i < layers; ++i) params.push_back(dynamic_cast<nn::Stageable&>(*model).layer_parameters(i));
      auto ms = [](const std::vector<double>& v) {
        std::vector<std::string> out;
        for (double x : v) out.push_back(fmt::format("{:.1f}", x * 1e3));
        return fmt::format("{}", fmt::join(out, ", "));
      };
      const auto by_time = dist::balance_stages_by_cost(seconds, stages);
      balance_note = fmt::format("; balanced by time: stages take {} ms per micro-batch of {} (balanced by "
                                 "parameters: {} ms)", ms(dist::stage_sums(seconds, by_time)), m,
                                 ms(dist::stage_sums(seconds, dist::balance_stages(params, stages))));
    }
    pipeline = std::make_unique<dist::Pipeline>(model, grid, po);
    model = nn::ModulePtr(nn::ModulePtr(), &pipeline->stage());  // not owning: the pipeline holds the stage
    const int s = pipeline->stage_index();
    int64_t empty_stage = model->num_parameters() == 0 ? s : -1;
    comm.allreduce(&empty_stage, 1, DType::i64, dist::ReduceKind::max);
    HPDL_CHECK(empty_stage < 0, "train.pipeline_stages = {}: stage {} of model.name = \"{}\" has no parameters to "
               "train; use fewer stages", stages, empty_stage, cfg.model.name);
    if (root)
      std::fprintf(log, "hpdl: pipeline: %d stages x %d replica(s), %lld micro-batches per batch (%s); stages "
                   "begin at layers %s of %lld%s\n", stages, replicas, static_cast<long long>(cfg.train.micro_batches),
                   cfg.train.pipeline_schedule.c_str(),
                   fmt::format("{}", fmt::join(pipeline->bounds().begin(), pipeline->bounds().end() - 1, ", ")).c_str(),
                   static_cast<long long>(pipeline->bounds().back()), balance_note.c_str());
  }
  // Activation checkpointing with pipeline stages or tensor parallelism (design decision 67): each
  // stage cuts its own layers into segments (checkpointed micro-batch by micro-batch); each
  // tensor-parallel encoder layer is one segment, whose recompute re-runs its forward allreduce in
  // backward, in the same layer order on every rank of the group.
  if (cfg.train.activation_checkpointing && (pipelined || tensor_parallel)) {
    std::string segments;
    if (pipelined && tensor_parallel) {  // the stage's tensor-parallel encoder layers
      auto& st = dynamic_cast<nn::models::VitStage&>(pipeline->stage());
      if (st.blocks) st.blocks->set_checkpoint_chunk(1);
      segments = fmt::format("stage {}: {} segments: each tensor-parallel encoder layer", pipeline->stage_index(),
                             st.blocks ? st.blocks->size() : 0);
    } else if (pipelined) {
      segments = fmt::format("stage {}: {}", pipeline->stage_index(),
                             nn::models::enable_activation_checkpointing(pipeline->stage()));
    } else {
      auto& pvit = dynamic_cast<dist::ParallelVisionTransformer&>(*model);
      pvit.blocks->set_checkpoint_chunk(1);
      segments = fmt::format("{} segments: each tensor-parallel encoder layer", pvit.blocks->size());
    }
    if (root) std::fprintf(log, "hpdl: activation checkpointing: %s\n", segments.c_str());
  }
  const int64_t global_batch = cfg.data.batch_size * replicas * accum;
  auto ocfg = optimizer_config(cfg.optimizer, global_batch);
  // train.shard_optimizer (ZeRO-1): each rank keeps the optimizer state of the parameters it owns and
  // broadcasts them after stepping; one rank is the plain optimizer.
  const bool shard_optimizer = cfg.train.shard_optimizer && world > 1;
  HPDL_CHECK(!shard_optimizer || device.is_cpu(), "train.shard_optimizer = true needs CPU ranks (train.device = "
             "\"cpu\"), got train.device = \"{}\"; on GPU ranks set it to false", cfg.train.device);
  // train.zero_stage = 2 (ZeRO-2): the gradients are sharded too; gradient buckets go to their owners.
  // Stage 3 (below) shards the parameters on top of that.
  const bool shard_grads = shard_optimizer && cfg.train.zero_stage >= 2;
  std::unique_ptr<optim::Optimizer> opt;
  if (shard_optimizer) {
    // Pipeline stages and tensor-parallel groups: a rank's state (its stage's, or its slices' and
    // replicated layers') is sharded over the ranks holding the same part in every replica.
    opt = std::make_unique<dist::ShardedOptimizer>(
        optim::param_specs(*model), [&](std::vector<optim::ParamSpec> specs) {
          return optim::make_optimizer(std::move(specs), ocfg);
        }, replica_comm);
  } else {
    opt = optim::make_optimizer(optim::param_specs(*model), ocfg);
  }
  auto schedule = optim::make_schedule(schedule_config(cfg.schedule, ocfg.lr, steps_per_epoch, cfg.train.epochs));
  std::unique_ptr<dist::DataParallel> dp;
  // ---- data parallelism and synchronized batch norm (train.sync_batchnorm) ----
  // Tensor parallel: over the replicas only. The replicated parameters' gradients are already
  // equal within a group (copy_to_tp all-reduces the activations' gradient on its way back into
  // the replicated layers); each split one is averaged with the same slice in the other replicas.
  dist::Communicator& dp_comm = tensor_parallel ? *grid.data : comm;
  if (dp_comm.size() > 1 && !pipelined) {
    dist::DataParallelOptions dpo;
    // Per-rank BN, or BN groups smaller than the world: every rank keeps rank 0's running statistics.
    dpo.broadcast_buffers = !cfg.train.sync_batchnorm ||
                            (cfg.train.sync_batchnorm_group > 0 && cfg.train.sync_batchnorm_group < world);
    dpo.bucket_bytes = static_cast<int64_t>(cfg.train.bucket_mb * (1 << 20));
    dpo.bf16_wire = cfg.train.bf16_wire;
    if (shard_grads) dpo.grad_owners = dynamic_cast<dist::ShardedOptimizer&>(*opt).owners_of(model->parameters());
    HPDL_CHECK(cfg.train.powersgd_rank == 0 || !nccl, "train.powersgd_rank = {} needs CPU ranks (train.device = "
               "\"cpu\"); set it to 0 on GPU ranks", cfg.train.powersgd_rank);
    dpo.powersgd_rank = static_cast<int>(cfg.train.powersgd_rank);
    dpo.powersgd_start_step = cfg.train.powersgd_start_step;
    dp = nccl ? std::make_unique<dist::DataParallel>(*model, comm, *nccl, dpo)
              : std::make_unique<dist::DataParallel>(*model, dp_comm, dpo);
    if (root && dpo.powersgd_rank > 0) {
      const int64_t all = model->num_parameters(), wire = dp->powersgd_wire_elements();
      std::fprintf(log, "hpdl: PowerSGD rank %d: %lld weight matrices sent as factors; %lld of %lld gradient values "
                   "on the wire per step (%.1fx fewer) from step %lld\n", dpo.powersgd_rank,
                   static_cast<long long>(dp->powersgd_compressed_matrices()), static_cast<long long>(wire),
                   static_cast<long long>(all), static_cast<double>(all) / static_cast<double>(std::max<int64_t>(1, wire)),
                   static_cast<long long>(dpo.powersgd_start_step));
    }
  }
  // Whose gradient traffic the epoch records and the summary count: the data-parallel wrapper's, or
  // a pipeline grid's replicas' (each stage's DataParallel over grid.data).
  dist::DataParallel* const sync = dp ? dp.get() : pipelined ? pipeline->data_parallel() : nullptr;
  // train.zero_stage = 3 (ZeRO-3): the parameters are sharded too. The model's layers run as units, each
  // gathered from its owners around a checkpointed forward and again for its recompute in backward; a
  // rank keeps only its owned parameters in between. `net` runs the forward (the model's own otherwise).
  std::unique_ptr<dist::Zero3> zero3;
  if (shard_grads && cfg.train.zero_stage == 3 && dp) {
    HPDL_CHECK(dynamic_cast<nn::Stageable*>(model.get()) != nullptr, "train.zero_stage = 3: model.name = \"{}\" is "
               "not a sequence of layers, so its parameters cannot be gathered unit by unit; use mlp, lenet5, "
               "resnet20, resnet18, resnet50, alexnet_bn, vgg11_bn, vgg16_bn, vit or custom, or train.zero_stage = 2",
               cfg.model.name);
    dist::Zero3Options z3o;
    z3o.prefetch = cfg.train.zero3_prefetch;
    zero3 = std::make_unique<dist::Zero3>(model, dynamic_cast<dist::ShardedOptimizer&>(*opt), *dp, z3o);
    if (root) {
      int64_t total = 0;
      for (auto& p : model->parameters()) total += static_cast<int64_t>(p.nbytes());
      std::fprintf(log, "hpdl: ZeRO-3: parameters, gradients and optimizer state sharded over %d ranks; %d units "
                   "(each gathered around its forward and its recompute in backward; gathers prefetched one unit ahead: "
                   "%s); rank 0 holds %.2f of %.2f MiB of parameters at rest\n", world, zero3->num_units(),
                   zero3->prefetch() ? "on" : "off",
                   static_cast<double>(zero3->owned_parameter_bytes()) / (1 << 20), static_cast<double>(total) / (1 << 20));
    }
  }
  nn::Module& net = zero3 ? static_cast<nn::Module&>(*zero3) : *model;
  // ---- local SGD (train.local_sgd_steps; Stich 2019, Lin et al. 2020) ----
  // The gradient hooks stay held back (DataParallel::set_accumulating), so each rank steps on its
  // own gradients; every local_sgd steps, at the end of every epoch and before every checkpoint the
  // parameters and float buffers (with train.local_sgd_average_optimizer also the optimizer's float
  // state) are replaced by their mean over the ranks, in one allreduce.
  const int64_t local_sgd = world > 1 ? cfg.train.local_sgd_steps : 0;
  int64_t local_steps = 0;  // optimizer steps since the last averaging point (equal on every rank)
  auto average_replicas = [&] {
    if (local_sgd == 0 || local_steps == 0) return;
    std::vector<Tensor> extra;
    std::map<std::string, Tensor> ostate;
    if (cfg.train.local_sgd_average_optimizer) {
      ostate = opt->state_dict();  // CPU copies; the same keys on every rank (every parameter steps)
      for (auto& [k, v] : ostate)
        if (v.dtype() == DType::f32) extra.push_back(v.to(device).contiguous());
    }
    dp->average_state(extra);
    if (cfg.train.local_sgd_average_optimizer) {
      size_t i = 0;
      for (auto& [k, v] : ostate)
        if (v.dtype() == DType::f32) v = extra[i++].to(kCPU);
      opt->load_state_dict(ostate);
    }
    local_steps = 0;
  };
  if (root && local_sgd > 0)
    std::fprintf(log, "hpdl: local SGD: no gradient allreduce; parameters averaged every %lld steps%s\n",
                 static_cast<long long>(local_sgd),
                 cfg.train.local_sgd_average_optimizer ? " (with the optimizer state)" : "");
  const int64_t bn_group = cfg.train.sync_batchnorm_group;
  HPDL_CHECK(bn_group == 0 || (bn_group <= world && world % bn_group == 0),
             "train.sync_batchnorm_group = {} does not divide the {} rank(s) of this run: use a divisor of {}, "
             "or 0 for all ranks", bn_group, world, world);
  if (cfg.train.sync_batchnorm && world > 1) {
    // On GPU ranks too the per-channel sums (2C + 1 doubles per layer) go over MPI as host vectors,
    // while gradient buckets go over NCCL: the two never share a communicator.
    int layers = dist::convert_sync_batchnorm(*model, comm, static_cast<int>(cfg.train.sync_batchnorm_group));
    if (root && layers == 0)
      std::fprintf(log, "hpdl: warning: train.sync_batchnorm = true but the model has no batch norm layer\n");
  }

  // ---- resume ----
  CheckpointManager ckpt(run_dir, static_cast<int>(cfg.train.keep_checkpoints));
  // train.checkpoint_async: rank 0 hands each checkpoint to a background writer (the gathers stay
  // collective and synchronous; only the files and their fsyncs leave the training loop).
  std::unique_ptr<AsyncCheckpointWriter> writer;
  if (root && cfg.train.checkpoint_async) writer = std::make_unique<AsyncCheckpointWriter>(ckpt);
  double checkpoint_s = 0;  // rank 0's time inside save_checkpoint: gathers, snapshots, writes or waits
  int64_t checkpoints_saved = 0;
  auto write_checkpoint = [&](const CheckpointMeta& meta, const std::map<std::string, Tensor>& tensors) {
    if (writer) writer->save(meta, tensors);
    else ckpt.save(meta, tensors);
  };
  int64_t step = 0, epoch = 0, position = 0;
  std::map<std::string, Tensor> ema_saved;  // the checkpoint's weight averages (ema.*), if any
  int64_t ema_updates = 0;
  // Model selection (train.keep_best, train.early_stopping_patience; design decision 72). Every rank
  // keeps the same state: each is fed rank 0's value of the monitored metric.
  const bool selecting = cfg.train.keep_best || cfg.train.early_stopping_patience > 0;
  EarlyStopping selection(cfg);
  if (root && selecting && selection.monitor().rfind("test_", 0) == 0)
    std::fprintf(log, "hpdl: warning: train.monitor = %s selects the model on the test set, so the test metrics no "
                 "longer estimate unseen data; hold out a validation split with data.validation = N\n",
                 selection.monitor().c_str());
  auto put_selection = [&](TrainSummary& out) {
    out.monitor = selection.monitor();
    if (selection.has_best()) out.best_metric = selection.best();
    out.best_epoch = selection.best_epoch(), out.best_step = selection.best_step();
  };
  if (resume) {
    std::vector<std::string> problems;
    auto info = ckpt.latest_valid(&problems);
    if (root)
      for (auto& p : problems) std::fprintf(log, "hpdl: skipping bad checkpoint: %s\n", p.c_str());
    HPDL_CHECK(info.has_value(), "--resume: no valid checkpoint in {}/checkpoints", run_dir.string());
    auto tensors = ckpt.load(*info);
    // Checkpoints hold the whole model under its own names, whatever the stage count that wrote
    // them: a pipeline stage loads its share.
    auto model_state = with_prefix(tensors, "model."), optim_state = with_prefix(tensors, "optim.");
    if (pipelined)
      model_state = stage_model_slice(model_state, *model), optim_state = stage_optimizer_slice(optim_state, *model);
    if (tensor_parallel)  // this rank's slices
      dist::load_full_state_dict(*model, model_state), optim_state = dist::shard_optimizer_state(*model, optim_state);
    else if (zero3)  // every rank read the file: each keeps its owned parameters and the buffers
      zero3->load_full_state_dict(model_state);
    else
      model->load_state_dict(model_state);
    opt->load_state_dict(optim_state);
    ema_saved = with_prefix(tensors, "ema.");
    ema_updates = info->meta.extra.value("ema_updates", int64_t{0});
    const int saved_world = info->meta.extra.value("world", world);
    // Local SGD: each rank resumes its own optimizer state when the rank count is unchanged
    // (an exact resume); otherwise every rank starts from rank 0's.
    if (local_sgd > 0 && rank > 0 && saved_world == world) {
      auto own = with_prefix(tensors, fmt::format("local_sgd.rank{}.", rank));
      if (!own.empty()) {
        auto state = with_prefix(tensors, "optim.");
        for (auto& [k, v] : own) state[k] = v;
        opt->load_state_dict(state);
      }
    }
    if (scaler) {
      auto st = with_prefix(tensors, "scaler.");
      if (!st.empty()) scaler->load_state_dict(st);
      else if (root)
        std::fprintf(log, "hpdl: the checkpoint has no loss scaler state; starting the loss scale at %g\n",
                     scaler->get_scale());
    }
    step = info->meta.step;
    epoch = info->meta.epoch;
    // The position counts samples of this rank's epoch order; with another
    // rank count, re-shard from the same global sample count (elastic restart).
    // ("world" counts the ranks the data was sharded over: the data-parallel replicas.)
    const int64_t global_pos = info->meta.sampler_position * saved_world;
    position = std::min<int64_t>(per_rank, global_pos / replicas);
    for (auto& g : info->meta.rng)
      for (auto& [name, gen] : model->named_generators())
        if (name == g.name) gen->set_state(g.seed + (tensor_parallel ? tp_seed_offset.at(name) : 0), g.offset);
    HPDL_CHECK(cfg.train.stop_after_epoch == 0 || epoch < cfg.train.stop_after_epoch,
               "--resume: train.stop_after_epoch = {} but the checkpoint {} is already past epoch {}; raise it or "
               "set it to 0", cfg.train.stop_after_epoch, info->sidecar_path.string(), epoch);
    if (zero3) dp->broadcast_buffers(0);  // the parameters stay with their owners
    else if (dp) dp->broadcast_state(0);
    if (dp) dp->set_step(step);  // PowerSGD's start step counts optimizer steps
    if (dp && cfg.train.powersgd_rank > 0) {
      const int64_t restored = dp->load_powersgd_state(with_prefix(tensors, "powersgd."), saved_world);
      if (root)
        std::fprintf(log, "hpdl: PowerSGD: %s\n", restored < 0 ? "the checkpoint's state is for another "
                     "train.powersgd_rank; error and Q start afresh" : fmt::format("{} of {} matrices resume their "
                     "error and Q from the checkpoint", restored, dp->powersgd_compressed_matrices()).c_str());
    }
    if (root)
      std::fprintf(log, "hpdl: resumed from %s (epoch %lld, step %lld)\n", info->sidecar_path.string().c_str(),
                   static_cast<long long>(epoch + 1), static_cast<long long>(step));
    const auto saved = info->meta.extra.find("early_stopping");
    if (selecting && saved != info->meta.extra.end() && !selection.load_state(*saved, info->sidecar_path.string()) &&
        root)
      std::fprintf(log, "hpdl: the checkpoint monitored %s, this run monitors %s: the best value and the patience "
                   "count start afresh\n", saved->value("monitor", "?").c_str(), selection.monitor().c_str());
    // A run whose patience ran out is finished: resuming it trains nothing and leaves its files as they are.
    if (selecting && selection.should_stop()) {
      if (root)
        std::fprintf(log, "hpdl: %s stopped early: %s did not improve for %lld evaluations (best %.6g after epoch "
                     "%lld); not training further (raise train.early_stopping_patience to continue it)\n",
                     run_dir.string().c_str(), selection.monitor().c_str(),
                     static_cast<long long>(selection.bad_evaluations()), selection.best(),
                     static_cast<long long>(selection.best_epoch()));
      TrainSummary done;
      done.run_dir = run_dir;
      done.steps = step, done.epochs_done = epoch;
      done.stopped_early = true;
      put_selection(done);
      return done;
    }
  }

  // ---- weight averaging (train.ema_decay): after the model is loaded and synchronized ----
  // Every rank holds the same weights and buffers after each step (DataParallel broadcasts rank 0's
  // buffers, a sharded optimizer its owners' parameters), so every rank keeps the same averages.
  std::unique_ptr<optim::ModelEma> ema;
  if (cfg.train.ema_decay > 0) {
    ema = std::make_unique<optim::ModelEma>(*model, optim::EmaOptions{cfg.train.ema_decay, cfg.train.ema_warmup});
    if (!ema_saved.empty()) ema->load_state_dict(ema_saved, ema_updates);
    if (root)
      std::fprintf(log, "hpdl: weight averaging: decay %g%s; evaluation uses the averages (the live weights' "
                   "metrics as live_*)%s\n", cfg.train.ema_decay,
                   cfg.train.ema_warmup ? " (warmup: min(decay, (1 + n) / (10 + n)))" : "",
                   resume && ema_saved.empty() ? "; the checkpoint had none, so they start at its weights" : "");
  }
  // The whole model's state dict on world rank 0 (empty elsewhere), gathered as checkpoints gather
  // it: a pipeline's stages from replica 0, a tensor-parallel group's slices from replica 0, ZeRO-3's
  // owned parameters from every rank. Collective: every rank calls it.
  auto full_model_state = [&]() -> std::map<std::string, Tensor> {
    if (gridded && grid.replica != 0) return {};
    if (pipelined && tensor_parallel) {  // each stage's group reassembles its stage, stage 0's gathers them
      auto stage_state = dist::gather_full_state_dict(*model);
      if (grid.tensor->rank() != 0) return {};
      return gather_dicts(*grid.pipeline, std::move(stage_state));
    }
    if (pipelined) return gather_dicts(*grid.pipeline, model->state_dict());
    if (tensor_parallel) return dist::gather_full_state_dict(*model);
    if (zero3) return zero3->full_state_dict(0);
    return root ? model->state_dict() : std::map<std::string, Tensor>{};
  };

  // train.keep_best: the model just evaluated (`rec`, the epoch's record with its val_/test_
  // metrics) becomes RUN_DIR/checkpoints/best.safetensors. Collective, like full_model_state().
  auto save_best = [&](const nlohmann::json& rec) {
    std::map<std::string, Tensor> state = full_model_state();
    if (!root) return;
    nlohmann::json evaluation = nlohmann::json::object();
    for (const auto& [k, v] : rec.items())
      if (k.rfind("val_", 0) == 0 || k.rfind("test_", 0) == 0) evaluation[k] = v;
    ckpt.save_best(prefixed(state, "model."), {{"hpdl.monitor", selection.monitor()},
                                               {"hpdl.best", fmt::format("{:.17g}", selection.best())},
                                               {"hpdl.epoch", std::to_string(selection.best_epoch())},
                                               {"hpdl.step", std::to_string(selection.best_step())},
                                               {"hpdl.evaluation", evaluation.dump()}});
  };

  auto save_checkpoint_now = [&](int64_t ep, int64_t pos) {
    // A sharded optimizer gathers its full state to rank 0: every rank takes part.
    // Local SGD: a checkpoint is an averaging point, so every rank agrees on the weights saved.
    average_replicas();
    std::map<std::string, Tensor> opt_state;
    // Pipeline: the replicas are identical, so replica 0's stages send their model, optimizer and
    // generator state to world rank 0 (its first stage), which writes one whole-model checkpoint.
    std::map<std::string, Tensor> gathered;
    // This rank's part of the model as whole-model entries: "model." and "optim." (the optimizer
    // state `part_opt`) and the generators' "rng." states under the full model's seeds (rank 0's
    // offsets are 0). With tensor parallelism the group reassembles its split parameters and their
    // elementwise optimizer buffers (collective over the group; the result counts on its rank 0).
    auto part_state = [&](const std::map<std::string, Tensor>& part_opt) {
      std::map<std::string, Tensor> m;
      if (tensor_parallel) {
        m = prefixed(dist::gather_full_state_dict(*model), "model.");
        for (auto& [k, v] : dist::gather_full_optimizer_state(*model, part_opt)) m["optim." + k] = v;
      } else {
        m = prefixed(model->state_dict(), "model.");
        for (auto& [k, v] : part_opt) m["optim." + k] = v;
      }
      for (auto& [name, gen] : model->named_generators())
        m["rng." + name] = Tensor::from_vector<int64_t>(
            {static_cast<int64_t>(gen->seed() - (tensor_parallel ? tp_seed_offset.at(name) : 0)),
             static_cast<int64_t>(gen->offset())}, {2});
      return m;
    };
    if (pipelined) {
      // Sharded (ZeRO-1 over the replicas): every replica's rank of the stage takes part in gathering
      // the stage's state to replica 0. Split over a group, the stage is reassembled on the group's
      // rank 0 first; those ranks send their stages.
      std::map<std::string, Tensor> stage_opt = opt->state_dict();
      if (grid.replica != 0) return;
      std::map<std::string, Tensor> mine = part_state(stage_opt);
      if (tensor_parallel && grid.tensor->rank() != 0) return;
      gathered = gather_dicts(*grid.pipeline, std::move(mine));
    } else if (tensor_parallel) {
      // Replica 0's group gathers the full model and optimizer state on world rank 0: an ordinary
      // checkpoint. Sharded (ZeRO-1 over the replicas): every replica's rank takes part in gathering
      // its part's state.
      std::map<std::string, Tensor> part_opt = opt->state_dict();
      if (grid.replica != 0) return;
      gathered = part_state(part_opt);
    } else if (root || shard_optimizer || local_sgd > 0) {
      opt_state = opt->state_dict();
    }
    // ZeRO-3: the owners' parameters are gathered to rank 0 (every rank takes part).
    std::map<std::string, Tensor> model_state;
    if (zero3) model_state = zero3->full_state_dict(0);
    // Local SGD keeps optimizer state per rank: rank r > 0's float state goes in as local_sgd.rank<r>.<key>.
    std::map<std::string, Tensor> rank_state;
    if (local_sgd > 0 && !cfg.train.local_sgd_average_optimizer)
      for (auto& [k, v] : opt_state) {
        if (v.dtype() != DType::f32) continue;
        Tensor all = comm.allgather(v.contiguous());  // [world, ...]
        if (root)
          for (int r = 1; r < world; ++r) rank_state[fmt::format("local_sgd.rank{}.{}", r, k)] = all.select(0, r).contiguous();
      }
    // PowerSGD: Q and the ranks' mean error (collective), so a resume continues the compression.
    std::map<std::string, Tensor> powersgd_state;
    if (dp && cfg.train.powersgd_rank > 0) powersgd_state = dp->powersgd_state();
    if (!root) return;
    CheckpointMeta meta;
    meta.step = step;
    meta.epoch = ep;
    meta.sampler_position = pos;
    meta.config = to_json(cfg);
    meta.extra = {{"world", replicas}};
    if (selecting) meta.extra["early_stopping"] = selection.state();
    if (gridded) {
      if (pipelined) meta.extra["pipeline_stages"] = stages;
      if (tensor_parallel) meta.extra["tensor_parallel"] = tp;
      std::map<std::string, Tensor> tensors;
      for (auto& [k, v] : gathered) {
        if (k.rfind("rng.", 0) != 0) {
          tensors[k] = v;
          continue;
        }
        const auto st = v.to_vector<int64_t>();
        meta.rng.push_back({k.substr(4), static_cast<uint64_t>(st[0]), static_cast<uint64_t>(st[1])});
      }
      write_checkpoint(meta, tensors);
      return;
    }
    for (auto& [name, gen] : model->named_generators()) meta.rng.push_back({name, gen->seed(), gen->offset()});
    std::map<std::string, Tensor> tensors = prefixed(zero3 ? model_state : model->state_dict(), "model.");
    for (auto& [k, v] : opt_state) tensors["optim." + k] = v;
    for (auto& [k, v] : rank_state) tensors[k] = v;
    for (auto& [k, v] : powersgd_state) tensors["powersgd." + k] = v;
    if (ema) {
      for (auto& [k, v] : ema->state_dict()) tensors["ema." + k] = v;
      meta.extra["ema_updates"] = ema->updates();
    }
    if (scaler)
      for (auto& [k, v] : scaler->state_dict()) tensors["scaler." + k] = v;
    write_checkpoint(meta, tensors);
  };
  int64_t saved_step = -1, saved_epoch = -1, saved_position = -1;  // the last checkpoint's place
  auto save_checkpoint = [&](int64_t ep, int64_t pos) {
    // The same place again (train.max_steps ending on a checkpoint_every_steps step): the state
    // has not changed since, so the checkpoint on disk is this one. Every rank skips alike.
    if (step == saved_step && ep == saved_epoch && pos == saved_position) return;
    saved_step = step, saved_epoch = ep, saved_position = pos;
    const auto t0 = std::chrono::steady_clock::now();
    save_checkpoint_now(ep, pos);
    checkpoint_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ++checkpoints_saved;
  };

  std::unique_ptr<MetricsWriter> metrics;
  if (root) metrics = std::make_unique<MetricsWriter>(run_dir / "metrics.jsonl");
  Progress progress(log, cfg.train.log_every);
  TraceRecorder trace(rank, cfg.train.trace);
  const int64_t total_steps = cfg.train.max_steps > 0 ? std::min(cfg.train.max_steps, steps_per_epoch * cfg.train.epochs)
                                                      : steps_per_epoch * cfg.train.epochs;
  if (root)
    std::fprintf(log, "hpdl: training %s (%lld parameters) on %s, %lld samples, %d rank(s) x %d thread(s)%s, "
                 "batch %lld per rank, %lld steps per epoch\n",
                 cfg.model.name.c_str(), static_cast<long long>(model_parameters), cfg.data.dataset.c_str(),
                 static_cast<long long>(ds.train->size()), world, num_threads(), thread_note.c_str(),
                 static_cast<long long>(cfg.data.batch_size), static_cast<long long>(steps_per_epoch));
  if (root && autocast_bf16 && device.is_cpu())
    std::fprintf(log, "hpdl: precision bf16 on the CPU (oneDNN %s): convolutions, linear layers, matmuls and "
                 "LSTM/GRU gate GEMMs (forward and gradients) read bfloat16 operands, accumulate in float32; activations, weights, "
                 "gradients and optimizer state stay float32\n", cpu::onednn_isa().c_str());

  TrainSummary summary;
  summary.run_dir = run_dir;
  const DevicePeakMemory memory{device};
  memory.reset();
  const auto t_start = std::chrono::steady_clock::now();
  int64_t samples_done = 0;
  int64_t step_meetings = 0;  // steps whose metrics and signals were all-reduced
  double last_loss = 0;
  std::map<std::string, double> last_metrics = objective.metrics({}, 0);
  const size_t n_sums = 1 + objective.metric_sums_size();  // the loss sum and the metric sums
  // The metrics of `sums` (loss sum first) over `count` samples.
  auto metrics_of = [&](const std::vector<double>& sums, double count) {
    return objective.metrics(std::vector<double>(sums.begin() + 1, sums.end()), count);
  };
  double grad_norm = 0;  // the last step's, before clipping (optimizer.clip_grad_norm)
  bool stop = false;
  for (; epoch < cfg.train.epochs && !stop; ++epoch, position = 0) {
    loader.start_epoch(static_cast<uint64_t>(epoch), position);
    data::Batch batch;
    StepStats epoch_stats;
    MetricSums epoch_sums, last_sums;  // on the device; last_sums: the last step, when it did not log
    double last_count = 0;             // this rank's samples in that step
    double unmet_count = 0;            // local SGD: this rank's samples since ranks last met
    double replica_wait_s = 0;         // pipeline grid: this epoch's waits for the replicas' average
    const auto t_epoch = std::chrono::steady_clock::now();
    const int64_t sync_calls0 = sync ? sync->sync_allreduces() : 0;
    const int64_t sync_bytes0 = sync ? sync->sync_allreduce_bytes() : 0;
    for (;;) {
      if (cfg.train.max_steps > 0 && step >= cfg.train.max_steps) {
        stop = true;
        break;
      }
      int64_t t0 = trace_now_us();
      if (!loader.next(batch)) break;
      trace.span("data_wait", "data", t0, trace_now_us(), 2);
      opt->set_lr(schedule->lr(step));
      if (dp) dp->zero_grad(); else opt->zero_grad();
      // This step's group of batches (train.accumulate_steps), and its samples: each batch's mean
      // loss is weighted by its share, so the summed gradient is the mean over the whole group.
      const int64_t first_batch = position / cfg.data.batch_size + batch.index;
      const int64_t group = std::min(accum, batches_per_epoch - first_batch);
      const int64_t group_samples = std::min(group * cfg.data.batch_size, per_rank - first_batch * cfg.data.batch_size);
      MetricSums step_sums;
      double step_count = 0;
      for (int64_t micro = 0; micro < group; ++micro) {
        if (micro > 0) {
          t0 = trace_now_us();
          HPDL_CHECK(loader.next(batch), "train.accumulate_steps: the data loader ended inside a group of {} batches "
                     "(batch {} of {} in this epoch)", group, first_batch + micro + 1, batches_per_epoch);
          trace.span("data_wait", "data", t0, trace_now_us(), 2);
        }
        if (dp) dp->set_accumulating(local_sgd > 0 || micro + 1 < group);
        if (pipelined) {
          // Every rank of the pipeline holds the batch: the first stage feeds in the images, the last
          // scores each micro-batch (its mean loss and correct predictions into this step's sums).
          TraceRecorder::Scope scope(trace, "pipeline_step", "compute");
          // bf16 (CPU: pipelines are CPU-only): each stage's forward under autocast; the backward
          // closures it records keep the precision (design decision 69).
          AutocastScope ac(DType::bf16, autocast_bf16);
          const Tensor labels = batch.labels;
          pipeline->train_step(batch.images, labels, [&](const Tensor& out, const Tensor& y) {
            Tensor l = objective.train_loss(out, y);
            if (counts_metrics) step_sums.add(MetricSums::of_batch(l, static_cast<double>(y.dim(0)), objective, out, y));
            return l;
          });
          if (pipeline->is_last() && counts_metrics) step_count += static_cast<double>(batch.size());
          replica_wait_s += pipeline->replica_wait_seconds();
          continue;
        }
        Tensor logits, loss, labels = batch.labels.to(device);
        {
          TraceRecorder::Scope s(trace, "forward", "compute");
          AutocastScope ac(DType::bf16, autocast_bf16);
          logits = net.forward(batch.images.to(device));
          loss = objective.train_loss(logits, labels);
        }
        {
          TraceRecorder::Scope s(trace, "backward", "compute");
          Tensor weighted = group > 1 ? mul(loss, static_cast<double>(batch.size()) / static_cast<double>(group_samples))
                                      : loss;
          (scaler ? scaler->scale(weighted) : weighted).backward();
        }
        if (!counts_metrics) continue;
        step_sums.add(MetricSums::of_batch(loss, static_cast<double>(batch.size()), objective, logits, labels));
        step_count += static_cast<double>(batch.size());
      }
      if (dp && local_sgd == 0) {
        TraceRecorder::Scope s(trace, "allreduce_wait", "compute");
        dp->finish();
      }
      if (dp && trace.enabled())
        for (auto& sp : dp->last_spans())
          trace.span(fmt::format("allreduce bucket {}", sp.bucket), "allreduce", sp.begin_us, sp.end_us, 1);
      {
        TraceRecorder::Scope s(trace, "optimizer", "compute");
        // With a scaler: unscale, and step only when the (all-reduced, hence
        // identical on every rank) gradients are finite.
        // optimizer.clip_grad_norm: on the global mean gradient, identical on every rank
        // (with local SGD: on this rank's own gradient).
        auto clip = [&] {
          if (cfg.optimizer.clip_grad_norm <= 0) return;
          const double c = cfg.optimizer.clip_grad_norm;
          if (pipelined)  // over every stage's parameters: one allreduce of the squared norms (a split
                          // stage's sums over its group first)
            grad_norm = pipeline->clip_grad_norm(c, tensor_parallel ? grid.tensor.get() : nullptr);
          else if (tensor_parallel)  // the full model's norm: split parameters' slices summed over the group
            grad_norm = dist::clip_grad_norm(*model, *grid.tensor, c);
          else
            grad_norm = shard_grads  // only owners hold a gradient: one allreduce of the squared norms
                            ? dynamic_cast<dist::ShardedOptimizer&>(*opt).clip_grad_norm(c)
                            : optim::clip_grad_norm(model->parameters(), c);
        };
        if (!scaler) {
          clip();
          opt->step();
        } else {
          if (scaler->unscale_and_check(*opt)) clip(), opt->step();
          scaler->update();
        }
      }
      if (ema) {
        TraceRecorder::Scope s(trace, "ema", "compute");
        ema->update();
      }
      ++step;
      if (local_sgd > 0 && ++local_steps == local_sgd) average_replicas();
      // The step's loss and accuracy stay on the device, added to the epoch's sums. They are read
      // (a synchronization on a GPU) only on the steps that log: every train.log_every and the first.
      epoch_sums.add(step_sums);
      const bool log_step = step % std::max<int64_t>(1, cfg.train.log_every) == 0 || step == 1;
      // Metrics and signals agree on every rank through one small allreduce per step. Local SGD
      // keeps the ranks apart between averaging points: it meets only there and on logging steps,
      // and each rank counts its own samples in between (signals act at the next meeting).
      const bool meet = local_sgd == 0 || log_step || local_steps == 0;
      StepStats st;
      st.count = step_count + unmet_count;
      st.sums = log_step ? step_sums.read(n_sums) : std::vector<double>(n_sums, 0.0);
      if (meet) {
        st.stop = signals.stop_requested() ? 1 : 0;
        st.ckpt = signals.checkpoint_requested() ? 1 : 0;
        st = allreduce_stats(comm, st);
        ++step_meetings;
        signals.clear_checkpoint_request();
        unmet_count = 0;
        epoch_stats.count += st.count;
        samples_done += static_cast<int64_t>(st.count);
      } else {
        unmet_count = st.count;
        st.count = step_count * world;  // for the progress line only (exact but for a short batch)
      }
      if (log_step) {
        last_loss = st.sums[0] / st.count, last_metrics = metrics_of(st.sums, st.count);
        last_sums = MetricSums(), last_count = 0;
      } else {
        last_sums = step_sums, last_count = step_count;
      }
      ProgressUpdate pu;
      pu.epoch = epoch, pu.epochs = cfg.train.epochs;
      // Batches are numbered from the epoch's start position (non-zero after a resume).
      pu.step_in_epoch = (position / cfg.data.batch_size + batch.index + accum) / accum;
      pu.steps_per_epoch = steps_per_epoch;
      pu.global_step = step, pu.total_steps = total_steps;
      pu.loss = last_loss;
      if (objective.regression()) pu.rmse = last_metrics["rmse"];
      else pu.accuracy = last_metrics["accuracy"];
      pu.samples = static_cast<int64_t>(st.count);
      pu.data_wait_s = loader.last_wait_seconds();
      if (root) progress.update(pu);
      if (root && log_step) {
        nlohmann::json rec = {{"type", "step"}, {"epoch", epoch + 1}, {"step", step}, {"loss", last_loss},
                              {"lr", opt->lr()}, {"samples_per_s", progress.samples_per_second()},
                              {"data_wait_s", loader.last_wait_seconds()}};
        put_metrics(rec, "", last_metrics);
        if (scaler) rec["loss_scale"] = scaler->get_scale(), rec["skipped_steps"] = scaler->skipped_steps();
        if (cfg.optimizer.clip_grad_norm > 0) rec["grad_norm"] = grad_norm;  // before clipping
        metrics->write(rec);
      }
      const bool periodic = cfg.train.checkpoint_every_steps > 0 && step % cfg.train.checkpoint_every_steps == 0;
      if (periodic || st.ckpt > 0 || st.stop > 0) save_checkpoint(epoch, loader.position());
      if (st.stop > 0) {
        stop = true;
        summary.interrupted = true;
        if (root) progress.message("hpdl: stopped by signal after a checkpoint; continue with --resume " + run_dir.string());
        break;
      }
    }
    average_replicas();  // local SGD: the epoch ends at an averaging point (evaluation, checkpoint, replica check)
    {
      // The epoch's sums, and the last step's loss when that step did not log: one read, one
      // allreduce (every rank gets here once per epoch, after the same number of steps).
      // With local SGD, also the samples counted since the last meeting.
      // Layout: the epoch's sums, the last step's sums, then last_count and unmet_count.
      std::vector<double> v = epoch_sums.read(n_sums), last = last_sums.read(n_sums);
      v.insert(v.end(), last.begin(), last.end());
      v.push_back(last_count), v.push_back(unmet_count);
      v = allreduce_sums(comm, v);
      epoch_stats.sums.assign(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(n_sums));
      last.assign(v.begin() + static_cast<std::ptrdiff_t>(n_sums), v.begin() + static_cast<std::ptrdiff_t>(2 * n_sums));
      const double step_count = v[2 * n_sums];
      if (step_count > 0) last_loss = last[0] / step_count, last_metrics = metrics_of(last, step_count);
      epoch_stats.count += v[2 * n_sums + 1];
      samples_done += static_cast<int64_t>(v[2 * n_sums + 1]);
      unmet_count = 0;
    }
    if (summary.interrupted ||
        (stop && cfg.train.max_steps > 0 && position / cfg.data.batch_size + batch.index + 1 < batches_per_epoch)) {
      if (!summary.interrupted) save_checkpoint(epoch, loader.position());
      break;
    }
    summary.epochs_done = epoch + 1;
    const double epoch_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_epoch).count();
    nlohmann::json rec = {{"type", "epoch"}, {"epoch", epoch + 1}, {"step", step},
                          {"train_loss", epoch_stats.sums[0] / std::max(1.0, epoch_stats.count)},
                          {"seconds", epoch_s}, {"samples", epoch_stats.count},
                          {"samples_per_s", epoch_stats.count / epoch_s}};
    put_metrics(rec, "train_", metrics_of(epoch_stats.sums, epoch_stats.count));
    if (sync) {  // model-synchronization traffic of this epoch, per rank (gradient buckets, averaging points)
      rec["sync_allreduces"] = sync->sync_allreduces() - sync_calls0;
      rec["sync_allreduce_mb"] = static_cast<double>(sync->sync_allreduce_bytes() - sync_bytes0) / (1 << 20);
      // Pipeline grid: seconds rank 0's stage waited after its last backward for the average (what
      // the backward did not hide).
      if (pipelined) rec["replica_wait_s"] = replica_wait_s;
    }
    const bool last = epoch + 1 == cfg.train.epochs;
    if (cfg.train.eval_every_epochs > 0 &&
        ((epoch + 1) % cfg.train.eval_every_epochs == 0 || last || epoch + 1 == cfg.train.stop_after_epoch)) {
      AutocastScope ac(DType::bf16, autocast_bf16);
      // Tensor parallel: sharded over the replicas; every rank of a group reads the same samples.
      auto evaluate_on = [&](const std::shared_ptr<const data::Dataset>& d, const std::string& prefix) {
        EvalResult r = pipelined ? evaluate_pipeline(*pipeline, grid, d, cfg.data, objective)
                                 : evaluate(net, d, cfg.data, &dp_comm, &objective);
        rec[prefix + "loss"] = r.loss;
        put_metrics(rec, prefix, r.metrics);
        return r;
      };
      if (ema) {  // the live weights first, then (below) the averages, swapped in for the evaluation
        if (ds.validation) evaluate_on(ds.validation, "live_val_");
        evaluate_on(ds.test, "live_test_");
      }
      optim::ModelEma::Applied averaged(ema.get());
      if (ds.validation) {
        EvalResult val = evaluate_on(ds.validation, "val_");
        summary.val_accuracy = val.accuracy, summary.val_loss = val.loss, summary.val_metrics = val.metrics;
      }
      EvalResult ev = evaluate_on(ds.test, "test_");
      summary.test_accuracy = ev.accuracy, summary.test_loss = ev.loss, summary.test_metrics = ev.metrics;
      if (selecting) {
        // Rank 0's value decides on every rank, so all stop at the same epoch whatever the last bits
        // of their all-reduced sums.
        Tensor value = Tensor::full({1}, rec.at(selection.monitor()).get<double>(), DType::f64);
        comm.broadcast(value, 0);
        const bool improved = selection.update(value.item(), epoch + 1, step);
        rec["monitor_best"] = selection.has_best() ? nlohmann::json(selection.best()) : nlohmann::json(nullptr);
        rec["monitor_improved"] = improved;
        if (improved && cfg.train.keep_best) {
          save_best(rec);
          if (root)
            progress.message(fmt::format("hpdl: best {} so far ({:.6g}): wrote {}", selection.monitor(),
                                         selection.best(), CheckpointManager::best_path(run_dir).string()));
        }
      }
    }
    if (root) {
      metrics->write(rec);
      // Classification: accuracy in percent; regression: RMSE and R^2.
      auto shown = [&](const std::string& prefix, const char* label) -> std::string {
        if (!objective.regression()) {
          if (!rec.contains(prefix + "accuracy")) return "";
          return fmt::format(", {}accuracy {:.2f}%", label, 100 * rec[prefix + "accuracy"].get<double>());
        }
        if (!rec.contains(prefix + "rmse")) return "";
        const auto& r2 = rec[prefix + "r2"];
        return fmt::format(", {}RMSE {:.4g}, {}R2 {:.4f}", label, rec[prefix + "rmse"].get<double>(), label,
                           r2.is_number() ? r2.get<double>() : std::nan(""));
      };
      const double train_loss = rec["train_loss"].get<double>();
      progress.message(fmt::format("epoch {}/{}: train loss {}{}{}{} ({:.1f} s, {:.0f} samples/s)", epoch + 1,
                                   cfg.train.epochs, objective.regression() ? fmt::format("{:.4g}", train_loss)
                                                                             : fmt::format("{:.4f}", train_loss),
                                   shown("train_", "train "),
                                   shown("val_", "validation "), shown("test_", "test ") + shown("live_test_", "live weights' test "),
                                   epoch_s,
                                   epoch_stats.count / epoch_s));
    }
    // train.stop_after_epoch: this chunk of the run ends here, always with a checkpoint to resume from.
    const bool chunk_end = cfg.train.stop_after_epoch > 0 && epoch + 1 == cfg.train.stop_after_epoch && !last;
    // train.early_stopping_patience ran out before train.epochs: the run ends here, with a checkpoint.
    const bool early_end = selecting && selection.should_stop() && !last;
    if (chunk_end || early_end ||
        (cfg.train.checkpoint_every_epochs > 0 && ((epoch + 1) % cfg.train.checkpoint_every_epochs == 0 || last)))
      save_checkpoint(epoch + 1, 0);
    if (early_end) {
      summary.stopped_early = true;
      if (root)
        progress.message(fmt::format("hpdl: early stopping after epoch {}: {} has not improved for {} evaluations "
                                     "(train.early_stopping_patience = {}); best {:.6g} after epoch {}", epoch + 1,
                                     selection.monitor(), selection.bad_evaluations(), selection.patience(),
                                     selection.best(), selection.best_epoch()));
      break;
    }
    if (chunk_end) {
      if (root)
        progress.message(fmt::format("hpdl: stopped after epoch {} (train.stop_after_epoch); continue with --resume {}",
                                     epoch + 1, run_dir.string()));
      break;
    }
  }
  if (writer) {  // the last checkpoint is on disk before anything reads it or the job ends
    const auto t0 = std::chrono::steady_clock::now();
    writer->wait();
    checkpoint_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  if (root) progress.finish();
  summary.steps = step;
  summary.final_train_loss = last_loss;
  if (selecting) put_selection(summary);
  summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  summary.train_samples_per_s = static_cast<double>(samples_done) / std::max(1e-9, summary.seconds);
  summary.peak_tensor_memory_mb = memory.peak_mb();
  // Pipeline: the replicas of each stage (its ranks in the other pipelines) are compared.
  // Tensor parallel: the slices are compared across the replicas, and the replicated parameters
  // within each group (equal gradients there are what keeps them equal).
  if (tensor_parallel) {
    const auto split = dist::sharded_parameters(*model);
    uint64_t h = 0;
    for (auto& [name, t] : model->named_parameters()) {
      if (split.count(name)) continue;
      Tensor c = t.contiguous();
      h = io::xxh64(c.raw_data(), c.nbytes(), h);
    }
    auto all = grid.tensor->allgather(Tensor::from_vector<int64_t>({static_cast<int64_t>(h)}, {1})).to_vector<int64_t>();
    for (int r = 1; r < tp; ++r)
      HPDL_CHECK(all[r] == all[0], "tensor-parallel check: rank {} of the group of world rank {} ended with other "
                 "replicated weights than its rank 0", r, rank - grid.tensor->rank());
    if (root) std::fprintf(log, "hpdl: tensor-parallel check: replicated weights identical in each group of %d\n", tp);
  }
  if (replica_comm.size() > 1) {
    // Replica check: every rank must end with bitwise identical weights. ZeRO-3: each parameter is
    // held by its owner only, so the replicated state compared is the buffers.
    uint64_t h = 0;
    std::map<std::string, Tensor> compared = model->state_dict();
    if (zero3)
      for (auto& [name, p] : model->named_parameters()) compared.erase(name);
    if (ema)
      for (auto& [name, t] : ema->state_dict()) compared["ema." + name] = t;
    for (auto& [name, t] : compared) {
      Tensor c = t.device().is_cpu() ? t.contiguous() : t.to(kCPU);
      h = io::xxh64(c.raw_data(), c.nbytes(), h);
    }
    Tensor mine = Tensor::from_vector<int64_t>({static_cast<int64_t>(h)}, {1});
    auto all = replica_comm.allgather(mine).to_vector<int64_t>();
    for (int r = 1; r < replica_comm.size(); ++r)
      HPDL_CHECK(all[r] == all[0], "replica check: {} {} ended with different weights than {} 0 "
                 "(weights hash {:016x} vs {:016x})", gridded ? "replica" : "rank", r, gridded ? "replica" : "rank",
                 static_cast<uint64_t>(all[r]), static_cast<uint64_t>(all[0]));
    if (root && gridded)
      std::fprintf(log, "hpdl: replica check: each %s's weights identical in all %d replicas\n",
                   pipelined && tensor_parallel ? "stage's tensor-parallel rank" : pipelined ? "stage" : "tensor-parallel rank",
                   replicas);
    else if (root && zero3)
      std::fprintf(log, "hpdl: replica check: buffers identical on all %d ranks (ZeRO-3: each parameter lives on "
                   "its owner only)\n", world);
    else if (root)
      std::fprintf(log, "hpdl: replica check: weights identical on all %d ranks\n", world);
  }
  // Optimizer state and peak resident memory of every rank (what sharding saves), in summary.json.
  std::vector<int64_t> state_bytes, peak_rss_kb, grad_bytes, peak_grad_bytes, param_bytes, peak_param_bytes,
      gather_bytes, gather_wait_us;
  {
    struct rusage ru {};
    getrusage(RUSAGE_SELF, &ru);
    // Gradient buckets held after the last step (ZeRO-2: the owned ones), and the most held at once
    // during it (ZeRO-2: owned plus those in flight, which depends on timing).
    // Parameters held after the run (ZeRO-3: the owned share) and the most at once (plus gathered units).
    // Without buckets (a pipeline of one replica), the .grad tensors held.
    int64_t whole = 0, held = 0;
    for (auto& p : model->parameters()) {
      whole += static_cast<int64_t>(p.nbytes());
      if (p.grad().defined()) held += static_cast<int64_t>(p.grad().nbytes());
    }
    Tensor mine = Tensor::from_vector<int64_t>({opt->state_bytes(), static_cast<int64_t>(ru.ru_maxrss),
                                                sync ? sync->grad_bytes() : held,
                                                sync ? sync->peak_grad_bytes() : held,
                                                zero3 ? zero3->parameter_bytes() : whole,
                                                zero3 ? zero3->peak_parameter_bytes() : whole,
                                                zero3 ? zero3->buffer_bytes() : 0,
                                                zero3 ? zero3->gather_wait_us() : 0}, {8});
    auto all = comm.allgather(mine).to_vector<int64_t>();
    for (size_t r = 0; r < static_cast<size_t>(world); ++r) {
      state_bytes.push_back(all[8 * r]), peak_rss_kb.push_back(all[8 * r + 1]);
      grad_bytes.push_back(all[8 * r + 2]), peak_grad_bytes.push_back(all[8 * r + 3]);
      param_bytes.push_back(all[8 * r + 4]), peak_param_bytes.push_back(all[8 * r + 5]);
      gather_bytes.push_back(all[8 * r + 6]), gather_wait_us.push_back(all[8 * r + 7]);
    }
    if (root && world > 1)
      std::fprintf(log, "hpdl: optimizer state per rank: %s MiB%s; gradients per rank: %s MiB%s (peak %s MiB); "
                   "peak RSS per rank: %s MiB\n", fmt::format("{:.2f}", fmt::join(mib(state_bytes, 1), ", ")).c_str(),
                   shard_optimizer ? " (sharded)" : "", fmt::format("{:.2f}", fmt::join(mib(grad_bytes, 1), ", ")).c_str(),
                   shard_grads ? " (sharded)" : "", fmt::format("{:.2f}", fmt::join(mib(peak_grad_bytes, 1), ", ")).c_str(),
                   fmt::format("{:.1f}", fmt::join(mib(peak_rss_kb, 1024), ", ")).c_str());
    if (root && zero3)
      std::fprintf(log, "hpdl: parameters per rank: %s MiB (sharded; peak with a gathered unit %s MiB; gather "
                   "buffer %s MiB); waited for gathers: %s s\n", fmt::format("{:.2f}", fmt::join(mib(param_bytes, 1), ", ")).c_str(),
                   fmt::format("{:.2f}", fmt::join(mib(peak_param_bytes, 1), ", ")).c_str(),
                   fmt::format("{:.2f}", fmt::join(mib(gather_bytes, 1), ", ")).c_str(),
                   fmt::format("{:.2f}", fmt::join(seconds(gather_wait_us), ", ")).c_str());
  }
  // Peak tensor memory of every rank (-1 where the device keeps no count): what activation
  // checkpointing saves differs by pipeline stage, so rank 0's figure alone does not tell it.
  const std::vector<double> peak_tensor_mb =
      comm.allgather(Tensor::from_vector<double>({summary.peak_tensor_memory_mb}, {1})).to_vector<double>();
  if (trace.enabled()) {
    trace.write(run_dir / fmt::format("trace.rank{}.json", rank));
    comm.barrier();
    if (root) {
      std::vector<fs::path> files;
      for (int r = 0; r < world; ++r) files.push_back(run_dir / fmt::format("trace.rank{}.json", r));
      merge_traces(files, run_dir / "trace.json");
      for (auto& f : files) fs::remove(f);
      summary.allreduce_hidden_fraction = allreduce_hidden_fraction(run_dir / "trace.json");
    }
  }
  if (root) {
    nlohmann::json s = {{"steps", summary.steps}, {"epochs", summary.epochs_done}, {"seconds", summary.seconds},
                        {"train_samples_per_s", summary.train_samples_per_s}, {"final_train_loss", last_loss},
                        {"ranks", world}, {"threads", num_threads()}, {"interrupted", summary.interrupted}};
    if (!summary.test_metrics.empty()) s["test_loss"] = summary.test_loss, put_metrics(s, "test_", summary.test_metrics);
    if (!summary.val_metrics.empty()) s["val_loss"] = summary.val_loss, put_metrics(s, "val_", summary.val_metrics);
    s["stopped_early"] = summary.stopped_early;
    // Rank 0's time checkpointing took from training (gathers, snapshots, and the writes, or with
    // train.checkpoint_async the waits for them).
    s["checkpoints_saved"] = checkpoints_saved, s["checkpoint_seconds"] = checkpoint_s;
    s["checkpoint_async"] = cfg.train.checkpoint_async;
    s["hierarchical_allreduce"] = hierarchical;
    if (hierarchical) s["hierarchical_allreduces"] = replica_comm.hierarchical_allreduces();
    if (selecting) {
      s["monitor"] = summary.monitor;
      s["best_metric"] = selection.has_best() ? nlohmann::json(summary.best_metric) : nlohmann::json(nullptr);
      s["best_epoch"] = summary.best_epoch, s["best_step"] = summary.best_step;
      if (cfg.train.keep_best && selection.has_best())
        s["best_model"] = fs::relative(CheckpointManager::best_path(run_dir), run_dir).string();
    }
    s["loss"] = objective.name();
    if (summary.allreduce_hidden_fraction >= 0) s["allreduce_hidden_fraction"] = summary.allreduce_hidden_fraction;
    s["device"] = device.str();
    s["optimizer_state_bytes_per_rank"] = state_bytes;
    s["peak_rss_mb_per_rank"] = mib(peak_rss_kb, 1024);
    s["peak_tensor_memory_mb_per_rank"] = peak_tensor_mb;
    s["shard_optimizer"] = shard_optimizer;
    s["zero_stage"] = zero3 ? 3 : shard_grads ? 2 : shard_optimizer ? 1 : 0;
    s["parameter_bytes_per_rank"] = param_bytes;
    s["peak_parameter_bytes_per_rank"] = peak_param_bytes;
    s["gather_buffer_bytes_per_rank"] = gather_bytes;
    if (zero3) {
      s["zero3_prefetch"] = zero3->prefetch();
      // Time the compute thread waited for parameter gathers over the whole run (training and evaluation).
      std::vector<double> ms;
      for (int64_t us : gather_wait_us) ms.push_back(static_cast<double>(us) / 1e3);
      s["zero3_gather_wait_ms_per_rank"] = ms;
    }
    s["grad_bytes_per_rank"] = grad_bytes;
    s["peak_grad_bytes_per_rank"] = peak_grad_bytes;
    s["ema_decay"] = cfg.train.ema_decay;
    if (ema) s["ema_updates"] = ema->updates();
    s["local_sgd_steps"] = local_sgd;
    s["step_meetings"] = step_meetings;
    s["pipeline_stages"] = stages;
    s["tensor_parallel"] = tp;
    s["parameters_per_rank"] = model->num_parameters();
    if (pipelined) s["micro_batches"] = cfg.train.micro_batches, s["pipeline_schedule"] = cfg.train.pipeline_schedule;
    if (sync) s["sync_allreduces"] = sync->sync_allreduces(), s["sync_allreduce_mb"] =
        static_cast<double>(sync->sync_allreduce_bytes()) / (1 << 20);
    if (summary.peak_tensor_memory_mb >= 0) s["peak_tensor_memory_mb"] = summary.peak_tensor_memory_mb;
    const std::string text = s.dump(2) + "\n";
    io::write_file_atomic(run_dir / "summary.json", text.data(), text.size());
    metrics->write({{"type", "summary"}, {"summary", s}});
    // The report is a view of the files above: failing to draw it loses nothing, so it only warns.
    try {
      write_report(run_dir);
    } catch (const std::exception& e) {
      std::fprintf(log, "hpdl: warning: could not write %s: %s (retry with: hpdl report %s)\n",
                   (run_dir / "report.html").string().c_str(), e.what(), run_dir.string().c_str());
    }
  }
  return summary;
}

}  // namespace hpdl::train
