#include "hpdl/workflow/workflow.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <ctime>
#include <numeric>
#include <thread>

#include <filesystem>
#include <map>

#include <nlohmann/json.hpp>

#include "hpdl/autograd/node.h"
#include "hpdl/core/error.h"
#include "hpdl/core/random.h"
#include "hpdl/io/file.h"
#include "hpdl/ops/ops.h"
#include "hpdl/optim/optimizers.h"
#include "hpdl/train/checkpoint.h"

namespace hpdl::workflow {
namespace {

constexpr double kPi = 3.14159265358979323846;

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// CPU time of the calling thread (it does not grow while the thread waits for a core).
double thread_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

// Parameters scaled to [0, 1] per coordinate: the surrogate's input.
Tensor scaled_inputs(const Simulation& sim, const std::vector<double>& params) {
  const int64_t p = sim.num_params(), n = static_cast<int64_t>(params.size()) / p;
  const auto lo = sim.low(), hi = sim.high();
  std::vector<float> v(params.size());
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < p; ++j) v[i * p + j] = static_cast<float>((params[i * p + j] - lo[j]) / (hi[j] - lo[j]));
  return Tensor::from_vector(v, {n, p});
}

std::vector<float> simulate_all(const Simulation& sim, const std::vector<double>& params) {
  const int64_t p = sim.num_params(), m = sim.output_size(), n = static_cast<int64_t>(params.size()) / p;
  std::vector<float> out(static_cast<size_t>(n * m));
  for (int64_t i = 0; i < n; ++i) sim.run(params.data() + i * p, out.data() + i * m);
  return out;
}

double relative_l2(const std::vector<float>& pred, const std::vector<float>& truth) {
  double num = 0, den = 0;
  for (size_t i = 0; i < truth.size(); ++i) {
    num += (static_cast<double>(pred[i]) - truth[i]) * (static_cast<double>(pred[i]) - truth[i]);
    den += static_cast<double>(truth[i]) * truth[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

std::shared_ptr<nn::Sequential> make_surrogate(const Simulation& sim, const std::vector<int64_t>& hidden,
                                               uint64_t seed) {
  Generator gen(seed);
  auto net = std::make_shared<nn::Sequential>();
  int64_t width = sim.num_params();
  for (int64_t h : hidden) {
    net->push_back(std::make_shared<nn::Linear>(width, h, true, gen));
    net->push_back(std::make_shared<nn::Tanh>());
    width = h;
  }
  net->push_back(std::make_shared<nn::Linear>(width, sim.output_size(), true, gen));
  return net;
}

}  // namespace

HeatEquation1d::HeatEquation1d(int64_t points, double t_end, int64_t refine)
    : points_(points), refine_(refine), t_end_(t_end) {
  HPDL_CHECK(points >= 3, "HeatEquation1d: points must be at least 3, got {}", points);
  HPDL_CHECK(refine >= 1, "HeatEquation1d: refine must be at least 1, got {}", refine);
  HPDL_CHECK(t_end > 0, "HeatEquation1d: t_end must be positive, got {}", t_end);
}

void HeatEquation1d::run(const double* p, float* out) const {
  const double nu = p[0], a = p[1], b = p[2];
  HPDL_CHECK(nu > 0, "HeatEquation1d: the diffusivity must be positive, got {}", nu);
  // The solver's grid is `refine` times finer than the output grid.
  const int64_t cells = (points_ + 1) * refine_;
  const double dx = 1.0 / static_cast<double>(cells);
  const int64_t steps = static_cast<int64_t>(std::ceil(t_end_ * 2.5 * nu / (dx * dx)));  // dt = 0.4 dx^2 / nu at most
  const double dt = t_end_ / static_cast<double>(steps), r = nu * dt / (dx * dx);
  std::vector<double> u(static_cast<size_t>(cells + 1)), next(u.size());
  for (int64_t i = 0; i <= cells; ++i) {
    const double x = static_cast<double>(i) * dx;
    u[i] = a * std::sin(kPi * x) + b * std::sin(2 * kPi * x);
  }
  u[0] = u[cells] = 0;
  for (int64_t s = 0; s < steps; ++s) {
    for (int64_t i = 1; i < cells; ++i) next[i] = u[i] + r * (u[i - 1] - 2 * u[i] + u[i + 1]);
    next[0] = next[cells] = 0;
    std::swap(u, next);
  }
  for (int64_t k = 0; k < points_; ++k) out[k] = static_cast<float>(u[(k + 1) * refine_]);
}

std::vector<double> HeatEquation1d::exact(const double* p) const {
  std::vector<double> out(static_cast<size_t>(points_));
  for (int64_t k = 0; k < points_; ++k) {
    const double x = static_cast<double>(k + 1) / static_cast<double>(points_ + 1);
    out[k] = p[1] * std::exp(-p[0] * kPi * kPi * t_end_) * std::sin(kPi * x) +
             p[2] * std::exp(-4 * p[0] * kPi * kPi * t_end_) * std::sin(2 * kPi * x);
  }
  return out;
}

std::vector<double> sample_params(const Simulation& sim, int64_t n, uint64_t seed, uint64_t stream) {
  const int64_t p = sim.num_params();
  const auto lo = sim.low(), hi = sim.high();
  std::vector<double> v(static_cast<size_t>(n * p));
  for (int64_t i = 0; i < n * p; ++i)
    v[i] = lo[i % p] + (hi[i % p] - lo[i % p]) * Generator::uniform(seed, (stream << 40) + static_cast<uint64_t>(i));
  return v;
}

Tensor predict(nn::Module& surrogate, const Simulation& sim, const std::vector<double>& params) {
  HPDL_CHECK(!params.empty() && params.size() % static_cast<size_t>(sim.num_params()) == 0,
             "workflow::predict: {} values is not a whole number of {}-parameter rows", params.size(), sim.num_params());
  NoGradGuard ng;
  return surrogate.forward(scaled_inputs(sim, params));
}

const char* exchange_name(Exchange e) { return e == Exchange::async ? "async" : "sync"; }

Exchange parse_exchange(const std::string& s) {
  if (s == "sync") return Exchange::sync;
  if (s == "async") return Exchange::async;
  HPDL_FAIL("workflow: unknown exchange '{}'; choose sync or async", s);
}

uint64_t record_checksum(const double* params, int64_t num_params, const float* output, int64_t output_size) {
  return io::xxh64(output, static_cast<size_t>(output_size) * sizeof(float),
                   io::xxh64(params, static_cast<size_t>(num_params) * sizeof(double)));
}

const char* acquire_name(Acquire a) { return a == Acquire::variance ? "variance" : "random"; }

Acquire parse_acquire(const std::string& s) {
  if (s == "random") return Acquire::random;
  if (s == "variance") return Acquire::variance;
  HPDL_FAIL("workflow: unknown acquisition '{}'; choose random or variance", s);
}

void Ensemble::add(std::shared_ptr<nn::Module> member) {
  HPDL_CHECK(member != nullptr, "workflow::Ensemble: null member");
  register_module(std::to_string(members_.size()), member);
  members_.push_back(std::move(member));
}

nn::Module& Ensemble::member(int64_t k) const {
  HPDL_CHECK(k >= 0 && k < size(), "workflow::Ensemble: member {} of {}", k, size());
  return *members_[static_cast<size_t>(k)];
}

Tensor Ensemble::forward(const Tensor& x) {
  HPDL_CHECK(!members_.empty(), "workflow::Ensemble: forward of an empty ensemble");
  Tensor sum = members_[0]->forward(x);
  if (members_.size() == 1) return sum;
  for (size_t k = 1; k < members_.size(); ++k) sum = hpdl::add(sum, members_[k]->forward(x));
  return hpdl::mul(sum, 1.0 / static_cast<double>(members_.size()));
}

std::vector<double> ensemble_variance(const std::vector<Tensor>& preds) {
  HPDL_CHECK(preds.size() >= 2, "workflow::ensemble_variance: needs at least 2 members, got {}", preds.size());
  const Shape shape = preds[0].shape();
  HPDL_CHECK(shape.size() == 2, "workflow::ensemble_variance: predictions must be [N, M], got {}", shape_str(shape));
  std::vector<std::vector<float>> v;
  for (size_t k = 0; k < preds.size(); ++k) {
    HPDL_CHECK(preds[k].shape() == shape, "workflow::ensemble_variance: member {} predicts {}, member 0 {}", k,
               shape_str(preds[k].shape()), shape_str(shape));
    v.push_back(preds[k].to_vector<float>());
  }
  const int64_t n = shape[0], m = shape[1];
  const double kk = static_cast<double>(preds.size());
  std::vector<double> score(static_cast<size_t>(n), 0.0);
  for (int64_t i = 0; i < n; ++i) {
    double acc = 0;
    for (int64_t j = 0; j < m; ++j) {
      double mean = 0, sq = 0;
      for (const auto& pk : v) mean += pk[i * m + j];
      mean /= kk;
      for (const auto& pk : v) sq += (pk[i * m + j] - mean) * (pk[i * m + j] - mean);
      acc += sq / kk;
    }
    score[i] = acc / static_cast<double>(m);
  }
  return score;
}

std::vector<int64_t> select_in_chunks(const std::vector<double>& scores, int64_t n) {
  const int64_t total = static_cast<int64_t>(scores.size());
  HPDL_CHECK(n >= 1 && n <= total, "workflow::select_in_chunks: cannot pick {} of {} candidates", n, total);
  std::vector<int64_t> picks;
  for (int64_t c = 0; c < n; ++c) {
    // Chunk c is [c N / n, (c + 1) N / n): sizes differ by at most one.
    const int64_t begin = c * total / n, end = (c + 1) * total / n;
    int64_t best = begin;
    for (int64_t i = begin + 1; i < end; ++i)
      if (scores[i] > scores[best]) best = i;
    picks.push_back(best);
  }
  return picks;
}

std::vector<double> acquire_params(Ensemble& ensemble, const Simulation& sim, int64_t n, int64_t pool,
                                   double explore, uint64_t seed, int64_t round) {
  HPDL_CHECK(explore >= 0 && explore <= 1, "workflow::acquire_params: explore must be in [0, 1], got {}", explore);
  const int64_t p = sim.num_params(), uniform = std::llround(explore * static_cast<double>(n));
  HPDL_CHECK(n >= 1 && pool >= n - uniform, "workflow::acquire_params: a pool of {} cannot give {} picks", pool, n);
  std::vector<double> out;
  if (n > uniform) {
    const auto cand = sample_params(sim, pool, seed, 5000000 + static_cast<uint64_t>(round));
    std::vector<Tensor> preds;
    {
      NoGradGuard ng;
      const Tensor x = scaled_inputs(sim, cand);
      for (int64_t k = 0; k < ensemble.size(); ++k) preds.push_back(ensemble.member(k).forward(x));
    }
    for (int64_t i : select_in_chunks(ensemble_variance(preds), n - uniform))
      out.insert(out.end(), cand.begin() + i * p, cand.begin() + (i + 1) * p);
  }
  if (uniform > 0) {
    const auto extra = sample_params(sim, uniform, seed, 6000000 + static_cast<uint64_t>(round));
    out.insert(out.end(), extra.begin(), extra.end());
  }
  return out;
}

namespace {

// The settings a checkpoint must share with the run that resumes it.
nlohmann::json online_config(const Simulation& sim, const OnlineOptions& o, int world_size) {
  return {{"simulation", sim.name()},     {"num_params", sim.num_params()},   {"output_size", sim.output_size()},
          {"world_size", world_size},     {"sim_ranks", o.sim_ranks},         {"sims_per_round", o.sims_per_round},
          {"max_rounds", o.max_rounds},   {"steps_per_round", o.steps_per_round}, {"batch_size", o.batch_size},
          {"lr", o.lr},                   {"hidden", o.hidden},               {"validation", o.validation},
          {"seed", o.seed},               {"acquire", acquire_name(o.acquire)}, {"ensemble", o.ensemble},
          {"pool", o.pool},               {"explore", o.explore}};
}

// Poisson(1) draw from a uniform u in [0, 1) by inversion: the online bootstrap
// (Oza and Russell, "Online bagging and boosting", 2001) gives each new sample
// this many copies in a member's resample.
int poisson1(double u) {
  double term = std::exp(-1.0), cdf = term;
  int k = 0;
  while (u >= cdf && k < 20) {
    ++k;
    term /= k;
    cdf += term;
  }
  return k;
}

// Async exchange messages (on a duplicate of the world communicator, so no other traffic can match them).
// Simulation rank -> first trainer, tag kTagToTrainer: an int64 header {kind, batch, count, ticket, checksum},
// then `count` records of num_params doubles and output_size floats (kResult only). First trainer ->
// simulation rank, tag kTagToSim: {kind, ticket}, then the parameters (kParams only). One tag each way keeps
// every sender's messages in order: a rank's kDone comes after all its results and requests.
constexpr int kTagToTrainer = 7301, kTagToSim = 7302;
enum MessageKind : int64_t { kResult = 1, kRequest = 2, kDone = 3, kParams = 4, kStop = 5 };

template <class T>
void put(std::vector<uint8_t>& out, const T* data, size_t n) {
  const auto* b = reinterpret_cast<const uint8_t*>(data);
  out.insert(out.end(), b, b + n * sizeof(T));
}

// Reads a message front to back; a short one is an error naming what was expected.
struct MessageReader {
  const std::vector<uint8_t>& bytes;
  size_t at = 0;
  template <class T>
  void get(T* data, size_t n) {
    HPDL_CHECK(at + n * sizeof(T) <= bytes.size(),
               "workflow: async exchange: a {}-byte message ends before byte {} (corrupt or from another program "
               "sharing the communicator)",
               bytes.size(), at + n * sizeof(T));
    std::memcpy(data, bytes.data() + at, n * sizeof(T));
    at += n * sizeof(T);
  }
};

// Sleeps between two polls: short at first, then up to 2 ms (as Communicator's point-to-point waits do).
struct PollPause {
  std::chrono::microseconds pause{20};
  void wait() {
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, std::chrono::microseconds(2000));
  }
};

// Records and their arrival order, as the first trainer takes them in and shares them with the other trainers.
struct Intake {
  std::vector<Arrival> arrivals;
  std::vector<double> params;
  std::vector<float> outputs;
};

std::map<std::string, Tensor> with_prefix(const std::map<std::string, Tensor>& all, const std::string& prefix) {
  std::map<std::string, Tensor> out;
  for (const auto& [k, v] : all)
    if (k.rfind(prefix, 0) == 0) out[k.substr(prefix.size())] = v;
  return out;
}

}  // namespace

OnlineResult train_online(const Simulation& sim, const OnlineOptions& o, dist::Communicator& world,
                          const std::function<void(const RoundLog&)>& on_round) {
  HPDL_CHECK(world.size() >= 2, "workflow: online training needs at least 2 ranks (simulation and trainer); got {}",
             world.size());
  HPDL_CHECK(o.sim_ranks >= 1 && o.sim_ranks < world.size(),
             "workflow: sim_ranks = {} must leave at least one of the {} ranks to train", o.sim_ranks, world.size());
  HPDL_CHECK(o.sims_per_round >= 1 && o.max_rounds >= 1 && o.steps_per_round >= 1 && o.batch_size >= 1 &&
                 o.validation >= 1 && o.lr > 0 && o.ensemble >= 1,
             "workflow: sims_per_round, max_rounds, steps_per_round, batch_size, validation, ensemble and lr must be "
             "positive");
  const int64_t p = sim.num_params(), m = sim.output_size(), row = p + m;
  const int64_t per_round = o.sim_ranks * o.sims_per_round;  // simulations a round, all simulation ranks
  const bool active = o.acquire == Acquire::variance;
  HPDL_CHECK(!active || o.ensemble >= 2,
             "workflow: acquire = variance scores the disagreement of an ensemble; set ensemble >= 2 (got {})",
             o.ensemble);
  HPDL_CHECK(!active || (o.explore >= 0 && o.explore <= 1 &&
                         o.pool >= per_round - std::llround(o.explore * static_cast<double>(per_round))),
             "workflow: acquire = variance needs explore in [0, 1] (got {}) and pool ({}) >= the {} picks a round",
             o.explore, o.pool, per_round);
  HPDL_CHECK(o.checkpoint_every >= 0 && o.stop_after_round >= 0,
             "workflow: checkpoint_every ({}) and stop_after_round ({}) must not be negative", o.checkpoint_every,
             o.stop_after_round);
  HPDL_CHECK(!o.checkpoint_dir.empty() || (o.checkpoint_every == 0 && o.stop_after_round == 0 && !o.resume),
             "workflow: checkpoint_every, stop_after_round and resume need a checkpoint directory (--checkpoint-dir)");
  const bool async = o.exchange == Exchange::async;
  HPDL_CHECK(o.slow_factor >= 1 && (o.slow_factor == 1 || (o.slow_rank >= 0 && o.slow_rank < o.sim_ranks)),
             "workflow: slow_factor = {} must be >= 1, and above 1 slow_rank = {} must be one of the {} simulation "
             "ranks (--slow-rank, --slow-factor)",
             o.slow_factor, o.slow_rank, o.sim_ranks);
  const auto t0 = std::chrono::steady_clock::now();
  const bool simulator = world.rank() < o.sim_ranks;
  const int first_trainer = static_cast<int>(o.sim_ranks);
  nlohmann::json config = online_config(sim, o, world.size());
  if (async) config["exchange"] = exchange_name(o.exchange);  // absent: sync (checkpoints from before async ones)

  // Every rank reads the checkpoint itself, so a bad one fails every rank with the same error.
  int64_t start = 0;
  std::map<std::string, Tensor> saved;
  train::CheckpointMeta saved_meta;
  OnlineResult result;
  if (o.resume) {
    const std::filesystem::path dir = std::filesystem::path(o.checkpoint_dir) / "checkpoints";
    HPDL_CHECK(std::filesystem::is_directory(dir),
               "workflow: --resume: no checkpoint directory {}; was the run started with --checkpoint-dir {}?",
               dir.string(), o.checkpoint_dir);
    train::CheckpointManager mgr(o.checkpoint_dir, 1 << 30);
    std::vector<std::string> problems;
    auto info = mgr.latest_valid(&problems);
    HPDL_CHECK(info.has_value(), "workflow: --resume: no valid checkpoint in {}{}", dir.string(),
               problems.empty() ? std::string() : " (" + problems.front() + ")");
    for (const auto& [key, value] : config.items()) {
      const auto it = info->meta.config.find(key);
      HPDL_CHECK(it != info->meta.config.end() && *it == value,
                 "workflow: --resume: checkpoint {} was written with {} = {}, this run has {} = {}; resume with the "
                 "same settings and rank count",
                 info->sidecar_path.string(), key, it == info->meta.config.end() ? std::string("nothing") : it->dump(), key,
                 value.dump());
    }
    HPDL_CHECK(async || !info->meta.config.contains("exchange"),
               "workflow: --resume: checkpoint {} was written with exchange = {}, this run has exchange = sync; resume "
               "with --exchange {}", info->sidecar_path.string(), info->meta.config["exchange"].dump(),
               info->meta.config["exchange"].get<std::string>());
    start = info->meta.step;
    HPDL_CHECK(start < o.max_rounds, "workflow: --resume: checkpoint {} is at round {}: the run is already finished",
               info->sidecar_path.string(), start);
    HPDL_CHECK(o.stop_after_round == 0 || o.stop_after_round > start,
               "workflow: --resume: stop_after_round = {} but checkpoint {} is already at round {}", o.stop_after_round,
               info->sidecar_path.string(), start);
    saved = mgr.load(*info);
    saved_meta = info->meta;
    for (const auto& l : saved_meta.extra.at("rounds")) {
      RoundLog log;
      log.round = l.at(0).get<int64_t>();
      log.samples = l.at(1).get<int64_t>();
      log.train_loss = l.at(2).get<double>();
      log.validation_error = l.at(3).get<double>();
      log.seconds = l.at(4).get<double>();
      result.rounds.push_back(log);
    }
    result.simulations = start * per_round;
  }

  auto group = world.split(simulator ? 0 : 1, world.rank());
  // Async exchange: point-to-point messages on their own copy of the world (same ranks).
  std::unique_ptr<dist::Communicator> p2p = async ? world.split(0, world.rank()) : nullptr;
  const int64_t per_rank = o.sims_per_round * row;  // values each rank contributes to a round's allgather
  result.trainer = !simulator;
  result.first_round = start;

  // The parameters of every round in flight, all simulation ranks' in rank order. Uniform rounds use each
  // simulation rank's own stream (round * world size + rank); chosen rounds come from the first trainer.
  std::map<int64_t, std::vector<double>> planned;
  auto uniform_plan = [&](int64_t r) {
    std::vector<double> v;
    for (int64_t s = 0; s < o.sim_ranks; ++s) {
      const auto part = sample_params(sim, o.sims_per_round, o.seed, static_cast<uint64_t>(r * world.size() + s));
      v.insert(v.end(), part.begin(), part.end());
    }
    return v;
  };
  auto chosen_round = [&](int64_t r) { return active && r >= 2; };
  if (o.resume) {
    for (const auto& [k, v] : with_prefix(saved, "plan.")) planned[std::stoll(k)] = v.to_vector<double>();
  } else {
    for (int64_t r = 0; r < std::min<int64_t>(2, o.max_rounds); ++r) planned[r] = uniform_plan(r);
  }
  for (int64_t r = start; !async && r < std::min(start + 2, o.max_rounds); ++r)
    HPDL_CHECK(planned.count(r) && static_cast<int64_t>(planned[r].size()) == per_round * p,
               "workflow: --resume: the checkpoint in {} lacks the parameters planned for round {}", o.checkpoint_dir,
               r + 1);

  // Trainer state: identical initial weights on every trainer (same seed).
  std::shared_ptr<Ensemble> net;
  std::unique_ptr<optim::AdamW> opt;
  std::vector<double> buffer_params;
  std::vector<float> buffer_out;
  std::vector<std::vector<int64_t>> boot(static_cast<size_t>(o.ensemble));  // each member's resample (indices)
  Tensor val_x;
  std::vector<float> val_y;
  Generator batch_gen(o.seed + 17);
  auto add_to_resamples = [&](int64_t first, int64_t last) {
    if (o.ensemble == 1) return;  // one surrogate trains on all the data
    for (int64_t k = 0; k < o.ensemble; ++k)
      for (int64_t i = first; i < last; ++i)
        for (int c = poisson1(Generator::uniform(o.seed + 41 + static_cast<uint64_t>(k), static_cast<uint64_t>(i)));
             c > 0; --c)
          boot[k].push_back(i);
  };
  if (!simulator) {
    net = std::make_shared<Ensemble>();
    for (int64_t k = 0; k < o.ensemble; ++k)
      net->add(make_surrogate(sim, o.hidden, k == 0 ? o.seed : o.seed + 0x9E3779B97F4A7C15ull * static_cast<uint64_t>(k)));
    optim::AdamWOptions adam;
    adam.lr = o.lr;
    adam.weight_decay = 0;
    opt = std::make_unique<optim::AdamW>(optim::param_specs(*net), adam);
    const auto vp = sample_params(sim, o.validation, o.seed, 1000003);  // a stream no rank samples from
    val_x = scaled_inputs(sim, vp);
    val_y = simulate_all(sim, vp);
    if (o.resume) {
      net->load_state_dict(with_prefix(saved, "model."));
      opt->load_state_dict(with_prefix(saved, "optim."));
      buffer_params = saved.at("buffer.params").to_vector<double>();
      buffer_out = saved.at("buffer.outputs").to_vector<float>();
      add_to_resamples(0, static_cast<int64_t>(buffer_out.size()) / m);
      for (const auto& g : saved_meta.rng)
        if (g.name == "batch") batch_gen.set_state(g.seed, g.offset);
    }
  }
  auto validation_error = [&] {
    NoGradGuard ng;
    return relative_l2(net->forward(val_x).to_vector<float>(), val_y);
  };
  // Async exchange adds its bookkeeping (counts and checksums per simulation rank, the arrival order).
  std::function<void(std::map<std::string, Tensor>&, nlohmann::json&)> async_fields;
  auto save_checkpoint = [&](int64_t rounds_done) {
    if (world.rank() == first_trainer) {
      train::CheckpointMeta meta;
      meta.step = rounds_done;
      meta.rng.push_back({"batch", batch_gen.seed(), batch_gen.offset()});
      meta.config = config;
      nlohmann::json logs = nlohmann::json::array();
      for (const auto& l : result.rounds)
        logs.push_back({l.round, l.samples, l.train_loss, l.validation_error, l.seconds});
      meta.extra["rounds"] = logs;
      std::map<std::string, Tensor> tensors;
      for (auto& [k, v] : net->state_dict()) tensors["model." + k] = v;
      for (auto& [k, v] : opt->state_dict()) tensors["optim." + k] = v;
      const int64_t have = static_cast<int64_t>(buffer_out.size()) / m;
      tensors["buffer.params"] = Tensor::from_vector(buffer_params, {have, p});
      tensors["buffer.outputs"] = Tensor::from_vector(buffer_out, {have, m});
      if (async_fields) {
        async_fields(tensors, meta.extra);
      } else {
        for (const auto& [r, v] : planned)
          if (r >= rounds_done) tensors["plan." + std::to_string(r)] = Tensor::from_vector(v, {per_round * p});
      }
      train::CheckpointManager(o.checkpoint_dir, 3).save(meta, tensors);
    }
    // The checkpoint is complete before any rank goes on (or reads it to resume). Async: the broadcast that
    // restarts the exchange after it does this.
    if (!async) world.barrier();
  };

  // The slow rank's batches take slow_factor times as long: it sleeps slow_factor - 1 times the batch's CPU
  // time. CPU time, not wall time: on a shared, oversubscribed node the wall time of a solve grows with the
  // load, and a sleep scaled by it would make the slowdown depend on the exchange being measured.
  auto simulate_batch = [&](const std::vector<double>& params) {
    const double cpu0 = thread_cpu_seconds();
    auto out = simulate_all(sim, params);
    if (world.rank() == o.slow_rank && o.slow_factor > 1)
      std::this_thread::sleep_for(std::chrono::duration<double>((o.slow_factor - 1) * (thread_cpu_seconds() - cpu0)));
    return out;
  };
  // One round's (or batch's) training on the whole buffer; `between` runs after each step (async: the first
  // trainer's polls). Returns the sum of the steps' mean member losses.
  auto train_steps = [&](const std::function<void()>& between) {
    const int64_t have = static_cast<int64_t>(buffer_out.size()) / m;
    const Tensor inputs = scaled_inputs(sim, buffer_params);
    const Tensor targets = Tensor::from_vector(buffer_out, {have, m});
    double loss_sum = 0;
    for (int64_t step = 0; step < o.steps_per_round; ++step) {
      // Each trainer draws its own batches (its rank in the stream), gradients are averaged. Each member
      // draws from its own resample; the members' losses are summed, so each gets its own gradient.
      opt->zero_grad();
      Tensor loss;
      for (int64_t k = 0; k < o.ensemble; ++k) {
        const auto& from = boot[k];
        const int64_t size = o.ensemble == 1 || from.empty() ? have : static_cast<int64_t>(from.size());
        std::vector<int64_t> idx(static_cast<size_t>(o.batch_size));
        for (auto& i : idx) {
          i = std::min<int64_t>(size - 1, static_cast<int64_t>(Generator::uniform(
                                              o.seed + 29 + static_cast<uint64_t>(group->rank()),
                                              batch_gen.reserve(1)) * static_cast<double>(size)));
          if (size != have) i = from[i];
        }
        Tensor index = Tensor::from_vector(idx, {o.batch_size});
        Tensor lk = mse_loss(net->member(k).forward(index_select(inputs, 0, index)), index_select(targets, 0, index));
        loss = k == 0 ? lk : add(loss, lk);
      }
      loss.backward();
      if (group->size() > 1)
        for (auto& param : net->parameters()) {
          Tensor g = param.grad();
          group->allreduce(g);
          g.copy_(mul(g, 1.0 / group->size()));
        }
      opt->step();
      loss_sum += loss.item() / static_cast<double>(o.ensemble);
      if (between) between();
    }
    return loss_sum;
  };
  auto buffer_checksum = [&] {
    uint64_t sum = 0;
    for (size_t i = 0; i < buffer_out.size() / static_cast<size_t>(m); ++i)
      sum += record_checksum(buffer_params.data() + i * p, p, buffer_out.data() + i * m, m);
    return sum;
  };
  // Async exchange (see the header). Simulation ranks: produce batches until told to stop. First trainer:
  // takes in results and parameter requests whenever it polls (before each round, between steps, in the
  // drain), shares the results with the other trainers in one broadcast a round, and decides when to stop.
  auto run_async = [&] {
    // A resumed run continues each simulation rank's count, checksum and batch numbers from the checkpoint.
    std::vector<int64_t> got(static_cast<size_t>(o.sim_ranks), 0);
    std::vector<uint64_t> got_sum(static_cast<size_t>(o.sim_ranks), 0);
    int64_t ticket = 0;
    if (o.resume) {
      const auto n = saved.at("async.received").to_vector<int64_t>();
      const auto c = saved.at("async.received_checksum").to_vector<int64_t>();
      HPDL_CHECK(static_cast<int64_t>(n.size()) == o.sim_ranks && n.size() == c.size(),
                 "workflow: --resume: checkpoint in {} has counts of {} simulation ranks, this run has {}",
                 o.checkpoint_dir, n.size(), o.sim_ranks);
      for (size_t i = 0; i < n.size(); ++i) got[i] = n[i], got_sum[i] = static_cast<uint64_t>(c[i]);
      const auto a = saved.at("async.arrivals").to_vector<int64_t>();
      for (size_t i = 0; i + 5 <= a.size(); i += 5) result.arrivals.push_back({a[i], a[i + 1], a[i + 2], a[i + 3], a[i + 4]});
      result.simulations_by_rank = got;
      ticket = saved_meta.extra.at("ticket").get<int64_t>();
    }
    if (simulator) {
      // Segments: the exchange runs until the first trainer's stop; after a checkpoint's drain it restarts.
      int64_t batch = got[world.rank()] / o.sims_per_round, total = got[world.rank()], sent = 0;
      uint64_t total_sum = got_sum[world.rank()];
      for (int64_t go = 1; go != 0;) {
        std::vector<std::unique_ptr<dist::PendingSend>> inflight;
        auto send = [&](const int64_t (&header)[5], const std::vector<double>& params, const std::vector<float>& out) {
          std::vector<uint8_t> bytes;
          put(bytes, header, 5);
          for (size_t i = 0; i < out.size() / static_cast<size_t>(m); ++i) {  // the records, if any
            put(bytes, params.data() + i * p, static_cast<size_t>(p));
            put(bytes, out.data() + i * m, static_cast<size_t>(m));
          }
          std::erase_if(inflight, [](auto& s) { return s->test(); });
          inflight.push_back(p2p->isend_bytes(std::move(bytes), first_trainer, kTagToTrainer));
        };
        // Always one request ahead: batch b + 1's parameters are asked for before batch b is simulated, so
        // the reply is usually there when it is done.
        send({kRequest, batch, 0, -1, 0}, {}, {});
        for (;; ++batch) {
          const auto msg = p2p->recv_bytes(first_trainer, kTagToSim);
          MessageReader rd{msg};
          int64_t head[2];  // {kind, ticket}
          rd.get(head, 2);
          if (head[0] == kStop) break;
          HPDL_CHECK(head[0] == kParams, "workflow: async exchange: simulation rank {} expected parameters, got a "
                     "message of kind {}", world.rank(), head[0]);
          std::vector<double> params(static_cast<size_t>(o.sims_per_round * p));
          rd.get(params.data(), params.size());
          send({kRequest, batch + 1, 0, -1, 0}, {}, {});
          const auto out = simulate_batch(params);
          for (int64_t i = 0; i < o.sims_per_round; ++i) {
            const uint64_t c = record_checksum(params.data() + i * p, p, out.data() + i * m, m);
            result.checksum += c;
            total_sum += c;
          }
          sent += o.sims_per_round;
          total += o.sims_per_round;
          send({kResult, batch, o.sims_per_round, head[1], 0}, params, out);
        }
        // The segment's last message: how many results this rank sent over the whole run and their checksum,
        // which the first trainer checks against what it received.
        send({kDone, batch, total, -1, static_cast<int64_t>(total_sum)}, {}, {});
        for (auto& s : inflight) s->wait();
        // The trainers say whether the exchange goes on (after a checkpoint) or the run is over.
        world.broadcast_bytes(&go, sizeof(go), first_trainer);
      }
      result.sent = sent;
    } else {
      const bool first = world.rank() == first_trainer;
      Intake pending;  // first trainer: taken in, not yet shared
      std::vector<bool> finished(static_cast<size_t>(o.sim_ranks), false);
      int64_t finished_count = 0;
      // Flow control: batch b's parameters are granted once b < allowed, and allowed is r + 2 from round r's
      // intake on (as in sync mode, a rank runs batch r + 1 while the trainers train on round r). A fast rank
      // thus keeps pace with the trainers whatever a slow one does; requests beyond wait in `deferred`.
      // A checkpoint's drain after round R (R rounds done) takes the place of round R's intake: it holds
      // the batches round R would have taken, so the exchange restarts with allowed = R + 2, as that intake
      // would have set it, and round R does not wait for a new batch (every rank has done at most batches
      // 0 .. R, so each gets its next one at once, which ends round R + 1's wait). A resume at round R
      // continues the same way.
      int64_t allowed = start > 0 ? start + 2 : 1;
      bool after_drain = start > 0;
      std::vector<std::pair<int, int64_t>> deferred;  // (rank, batch)
      bool stopping = false;
      std::vector<std::unique_ptr<dist::PendingSend>> replies;
      // Each request scores pool / sim_ranks candidates, so a round's acquisitions cost what sync mode's one does.
      const int64_t request_pool = std::max(o.sims_per_round, o.pool / o.sim_ranks);
      auto grant = [&](int from, int64_t b) {
        const auto params = active && b >= 2 ? acquire_params(*net, sim, o.sims_per_round, request_pool, o.explore,
                                                              o.seed, 1000000 + ticket)
                                             : sample_params(sim, o.sims_per_round, o.seed,
                                                             static_cast<uint64_t>(b * world.size() + from));
        const int64_t head[2] = {kParams, ticket++};
        std::vector<uint8_t> bytes;
        put(bytes, head, 2);
        put(bytes, params.data(), params.size());
        std::erase_if(replies, [](auto& s) { return s->test(); });
        replies.push_back(p2p->isend_bytes(std::move(bytes), from, kTagToSim));
      };
      auto handle = [&](const std::vector<uint8_t>& msg, int from) {
        HPDL_CHECK(from >= 0 && from < o.sim_ranks && !finished[from],
                   "workflow: async exchange: the first trainer got a message from rank {}, which is not a running "
                   "simulation rank", from);
        MessageReader rd{msg};
        int64_t h[5];
        rd.get(h, 5);
        if (h[0] == kResult) {
          for (int64_t i = 0; i < h[2]; ++i) {
            const size_t at_p = pending.params.size(), at_o = pending.outputs.size();
            pending.params.resize(at_p + static_cast<size_t>(p));
            pending.outputs.resize(at_o + static_cast<size_t>(m));
            rd.get(pending.params.data() + at_p, static_cast<size_t>(p));
            rd.get(pending.outputs.data() + at_o, static_cast<size_t>(m));
            got_sum[from] += record_checksum(pending.params.data() + at_p, p, pending.outputs.data() + at_o, m);
          }
          got[from] += h[2];
          pending.arrivals.push_back({0, from, h[1], h[2], h[3]});
        } else if (h[0] == kRequest) {
          if (stopping) return;  // the stop message already sent answers it
          if (h[1] < allowed) grant(from, h[1]);
          else deferred.emplace_back(from, h[1]);
        } else {
          HPDL_CHECK(h[0] == kDone, "workflow: async exchange: unknown message kind {} from rank {}", h[0], from);
          HPDL_CHECK(h[2] == got[from] && static_cast<uint64_t>(h[4]) == got_sum[from],
                     "workflow: async exchange: simulation rank {} sent {} results (checksum {}), the first trainer "
                     "received {} (checksum {})",
                     from, h[2], io::hex64(static_cast<uint64_t>(h[4])), got[from], io::hex64(got_sum[from]));
          finished[from] = true;
          ++finished_count;
        }
      };
      auto poll = [&] {
        int from = -1;
        while (auto msg = p2p->try_recv_bytes(dist::Communicator::kAnySource, kTagToTrainer, &from)) handle(*msg, from);
      };
      // The first trainer's intake goes to every trainer (group rank 0 is the first trainer); all append it.
      auto share = [&](int64_t round) {
        std::vector<uint8_t> bytes;
        int64_t sizes[2] = {static_cast<int64_t>(pending.arrivals.size()),
                            static_cast<int64_t>(pending.outputs.size()) / m};
        if (first) {
          put(bytes, sizes, 2);
          for (const auto& a : pending.arrivals) {
            const int64_t v[4] = {a.source, a.batch, a.count, a.ticket};
            put(bytes, v, 4);
          }
          put(bytes, pending.params.data(), pending.params.size());
          put(bytes, pending.outputs.data(), pending.outputs.size());
          pending = Intake{};
        }
        int64_t nbytes = static_cast<int64_t>(bytes.size());
        group->broadcast_bytes(&nbytes, sizeof(nbytes), 0);
        bytes.resize(static_cast<size_t>(nbytes));
        group->broadcast_bytes(bytes.data(), nbytes, 0);
        MessageReader rd{bytes};
        rd.get(sizes, 2);
        for (int64_t i = 0; i < sizes[0]; ++i) {
          int64_t v[4];
          rd.get(v, 4);
          result.arrivals.push_back({round, v[0], v[1], v[2], v[3]});
          result.simulations_by_rank[v[0]] += v[2];
        }
        const int64_t before = static_cast<int64_t>(buffer_out.size()) / m;
        buffer_params.resize(buffer_params.size() + static_cast<size_t>(sizes[1] * p));
        rd.get(buffer_params.data() + before * p, static_cast<size_t>(sizes[1] * p));
        buffer_out.resize(buffer_out.size() + static_cast<size_t>(sizes[1] * m));
        rd.get(buffer_out.data() + before * m, static_cast<size_t>(sizes[1] * m));
        add_to_resamples(before, before + sizes[1]);
      };
      // A stop to each simulation rank, then everything until each one's last message (kDone, whose counts
      // are checked). Requests that arrive meanwhile are answered by the stop; deferred ones too.
      auto drain = [&] {
        stopping = true;
        deferred.clear();
        const int64_t head[2] = {kStop, -1};
        for (int s = 0; s < o.sim_ranks; ++s) {
          std::vector<uint8_t> bytes;
          put(bytes, head, 2);
          replies.push_back(p2p->isend_bytes(std::move(bytes), s, kTagToSim));
        }
        for (PollPause pause; finished_count < o.sim_ranks; pause.wait()) poll();
        for (auto& s : replies) s->wait();
        replies.clear();
      };
      auto checkpoint_due = [&](int64_t rounds_done) {
        return !o.checkpoint_dir.empty() &&
               (rounds_done == o.stop_after_round || (o.checkpoint_every > 0 && rounds_done % o.checkpoint_every == 0));
      };
      async_fields = [&](std::map<std::string, Tensor>& tensors, nlohmann::json& extra) {
        tensors["async.received"] = Tensor::from_vector(got, {o.sim_ranks});
        std::vector<int64_t> sums(got_sum.begin(), got_sum.end());
        tensors["async.received_checksum"] = Tensor::from_vector(sums, {o.sim_ranks});
        std::vector<int64_t> a;
        for (const auto& x : result.arrivals) a.insert(a.end(), {x.round, x.source, x.batch, x.count, x.ticket});
        tensors["async.arrivals"] = Tensor::from_vector(a, {static_cast<int64_t>(result.arrivals.size()), 5});
        extra["ticket"] = ticket;
      };
      for (int64_t r = start; r < o.max_rounds; ++r) {
        if (first) {
          // Whatever has arrived; at least one batch, so that no round trains on exactly the data of the last.
          poll();
          if (!after_drain)
            for (PollPause pause; pending.arrivals.empty(); pause.wait()) poll();
          after_drain = false;
          allowed = r + 2;
          std::vector<std::pair<int, int64_t>> waiting;
          std::swap(waiting, deferred);
          for (const auto& [from, b] : waiting) {
            if (b < allowed) grant(from, b);
            else deferred.emplace_back(from, b);
          }
        }
        share(r + 1);
        RoundLog log;
        log.round = r + 1;
        log.samples = static_cast<int64_t>(buffer_out.size()) / m;
        log.train_loss = train_steps(first ? std::function<void()>(poll) : std::function<void()>()) /
                         static_cast<double>(o.steps_per_round);
        log.validation_error = validation_error();
        const int stop = (o.target_error > 0 && log.validation_error < o.target_error) || r + 1 == o.max_rounds ||
                         r + 1 == o.stop_after_round;
        // The first trainer's log and decision reach the other trainers.
        double msg[4] = {static_cast<double>(stop), log.train_loss, log.validation_error, seconds_since(t0)};
        group->broadcast_bytes(msg, sizeof(msg), 0);
        log.train_loss = msg[1];
        log.validation_error = msg[2];
        log.seconds = msg[3];
        result.rounds.push_back(log);
        if (first && on_round) on_round(log);
        if (msg[0] > 0.5) break;
        if (checkpoint_due(r + 1)) {
          // Mid-run checkpoint: drain (the drained results join the buffer and are trained on from the next
          // round), save, restart the exchange.
          if (first) drain();
          share(r + 2);
          save_checkpoint(r + 1);
          int64_t go = 1;
          world.broadcast_bytes(&go, sizeof(go), first_trainer);
          if (first) {
            stopping = false;
            finished.assign(finished.size(), false);
            finished_count = 0;
            allowed = r + 3;
            after_drain = true;
          }
        }
      }
      // Drain at the end: the drained results join the buffer but no step trains on them (unless a resumed
      // run does: a checkpoint here holds them).
      if (first) drain();
      const int64_t rounds_done = static_cast<int64_t>(result.rounds.size());
      share(rounds_done + 1);
      if (checkpoint_due(rounds_done)) save_checkpoint(rounds_done);
      int64_t go = 0;
      world.broadcast_bytes(&go, sizeof(go), first_trainer);
      result.checksum = buffer_checksum();
    }
    // Every rank gets the logs, the arrival order and the counts from the first trainer.
    std::vector<uint8_t> bytes;
    if (world.rank() == first_trainer) {
      const int64_t sizes[2] = {static_cast<int64_t>(result.rounds.size()), static_cast<int64_t>(result.arrivals.size())};
      put(bytes, sizes, 2);
      for (const auto& l : result.rounds) {
        const double v[5] = {static_cast<double>(l.round), static_cast<double>(l.samples), l.train_loss,
                             l.validation_error, l.seconds};
        put(bytes, v, 5);
      }
      for (const auto& a : result.arrivals) {
        const int64_t v[5] = {a.round, a.source, a.batch, a.count, a.ticket};
        put(bytes, v, 5);
      }
      put(bytes, result.simulations_by_rank.data(), result.simulations_by_rank.size());
      const double secs = seconds_since(t0);
      put(bytes, &secs, 1);
    }
    int64_t nbytes = static_cast<int64_t>(bytes.size());
    world.broadcast_bytes(&nbytes, sizeof(nbytes), first_trainer);
    bytes.resize(static_cast<size_t>(nbytes));
    world.broadcast_bytes(bytes.data(), nbytes, first_trainer);
    if (world.rank() != first_trainer) {
      MessageReader rd{bytes};
      int64_t sizes[2];
      rd.get(sizes, 2);
      result.rounds.clear();
      for (int64_t i = 0; i < sizes[0]; ++i) {
        double v[5];
        rd.get(v, 5);
        result.rounds.push_back({static_cast<int64_t>(v[0]), static_cast<int64_t>(v[1]), v[2], v[3], v[4]});
      }
      result.arrivals.clear();
      for (int64_t i = 0; i < sizes[1]; ++i) {
        int64_t v[5];
        rd.get(v, 5);
        result.arrivals.push_back({v[0], v[1], v[2], v[3], v[4]});
      }
      rd.get(result.simulations_by_rank.data(), result.simulations_by_rank.size());
      rd.get(&result.seconds, 1);
    } else {
      result.seconds = seconds_since(t0);
    }
    result.simulations = std::accumulate(result.simulations_by_rank.begin(), result.simulations_by_rank.end(),
                                         int64_t{0});
    result.validation_error = result.rounds.back().validation_error;
    result.surrogate = net;
  };
  result.simulations_by_rank.assign(static_cast<size_t>(o.sim_ranks), 0);
  if (async) {
    run_async();
    return result;
  }

  // Round r: simulators produce, everyone exchanges, trainers train on it.
  std::vector<double> mine(static_cast<size_t>(per_rank), 0.0);
  auto simulate_round = [&](int64_t r) {
    const auto& plan = planned.at(r);
    const std::vector<double> params(plan.begin() + world.rank() * o.sims_per_round * p,
                                     plan.begin() + (world.rank() + 1) * o.sims_per_round * p);
    const auto out = simulate_batch(params);
    for (int64_t i = 0; i < o.sims_per_round; ++i) {
      std::copy(params.begin() + i * p, params.begin() + (i + 1) * p, mine.begin() + i * row);
      std::copy(out.begin() + i * m, out.begin() + (i + 1) * m, mine.begin() + i * row + p);
    }
  };
  if (simulator) simulate_round(start);
  for (int64_t r = start; r < o.max_rounds; ++r) {
    Tensor all = world.allgather(Tensor::from_vector(mine, {per_rank}));
    result.simulations += per_round;
    for (auto& n : result.simulations_by_rank) n += o.sims_per_round;
    if (simulator) result.sent += o.sims_per_round;
    if (simulator)
      for (int64_t i = 0; i < o.sims_per_round; ++i) {
        std::vector<float> out(mine.begin() + i * row + p, mine.begin() + (i + 1) * row);
        result.checksum += record_checksum(mine.data() + i * row, p, out.data(), m);
      }
    result.round_params.push_back(planned.at(r));
    RoundLog log;
    log.round = r + 1;
    int stop = 0;
    std::vector<double> chosen;  // the parameters of round r + 2, when the first trainer picks them
    if (simulator) {
      if (r + 1 < o.max_rounds) simulate_round(r + 1);  // the next round's simulations run while trainers train
    } else {
      auto v = all.to_vector<double>();
      const int64_t before = static_cast<int64_t>(buffer_out.size()) / m;
      for (int64_t s = 0; s < o.sim_ranks; ++s)
        for (int64_t i = 0; i < o.sims_per_round; ++i) {
          const double* rec = v.data() + s * per_rank + i * row;
          buffer_params.insert(buffer_params.end(), rec, rec + p);
          for (int64_t k = 0; k < m; ++k) buffer_out.push_back(static_cast<float>(rec[p + k]));
        }
      const int64_t have = static_cast<int64_t>(buffer_out.size()) / m;
      add_to_resamples(before, have);
      const double loss_sum = train_steps({});
      log.samples = have;
      log.train_loss = loss_sum / static_cast<double>(o.steps_per_round);
      log.validation_error = validation_error();
      stop = (o.target_error > 0 && log.validation_error < o.target_error) ? 1 : 0;
      if (world.rank() == first_trainer && chosen_round(r + 2) && r + 2 < o.max_rounds && !stop)
        chosen = acquire_params(*net, sim, per_round, o.pool, o.explore, o.seed, r + 2);
    }
    // The first trainer tells everyone whether to go on, with its log and the parameters it chose.
    std::vector<double> msg = {static_cast<double>(stop), static_cast<double>(log.samples), log.train_loss,
                               log.validation_error};
    world.broadcast_bytes(msg.data(), static_cast<int64_t>(msg.size() * sizeof(double)), first_trainer);
    log.samples = static_cast<int64_t>(msg[1]);
    log.train_loss = msg[2];
    log.validation_error = msg[3];
    log.seconds = seconds_since(t0);
    result.rounds.push_back(log);
    if (world.rank() == 0 && on_round) on_round(log);
    const bool stopping = msg[0] > 0.5;
    if (!stopping && r + 2 < o.max_rounds) {
      if (chosen_round(r + 2)) {
        chosen.resize(static_cast<size_t>(per_round * p));
        world.broadcast_bytes(chosen.data(), static_cast<int64_t>(chosen.size() * sizeof(double)), first_trainer);
        planned[r + 2] = std::move(chosen);
      } else {
        planned[r + 2] = uniform_plan(r + 2);
      }
    }
    planned.erase(r);
    const bool last_chunk = o.stop_after_round == r + 1;
    if (!o.checkpoint_dir.empty() && (last_chunk || (o.checkpoint_every > 0 && (r + 1) % o.checkpoint_every == 0)))
      save_checkpoint(r + 1);
    if (stopping || last_chunk) break;
  }
  result.validation_error = result.rounds.back().validation_error;
  result.surrogate = net;
  if (!simulator) result.checksum = buffer_checksum();
  result.seconds = seconds_since(t0);
  return result;
}

Speedup surrogate_speedup(nn::Module& surrogate, const Simulation& sim, int64_t n, uint64_t seed) {
  HPDL_CHECK(n >= 1, "workflow::surrogate_speedup: n must be at least 1, got {}", n);
  const auto params = sample_params(sim, n, seed, 2000003);
  Speedup s;
  auto t0 = std::chrono::steady_clock::now();
  const auto truth = simulate_all(sim, params);
  s.simulation_s = seconds_since(t0) / static_cast<double>(n);
  t0 = std::chrono::steady_clock::now();
  const auto pred = predict(surrogate, sim, params).to_vector<float>();
  s.surrogate_s = seconds_since(t0) / static_cast<double>(n);
  s.error = relative_l2(pred, truth);
  return s;
}

std::vector<Steered> steer_sweep(nn::Module& surrogate, const Simulation& sim,
                                 const std::function<double(const float*)>& objective, int64_t candidates,
                                 int64_t verify, uint64_t seed) {
  HPDL_CHECK(candidates >= 1 && verify >= 1 && verify <= candidates,
             "workflow::steer_sweep: need 1 <= verify ({}) <= candidates ({})", verify, candidates);
  const int64_t p = sim.num_params(), m = sim.output_size();
  const auto params = sample_params(sim, candidates, seed, 3000003);
  const auto pred = predict(surrogate, sim, params).to_vector<float>();
  std::vector<double> score(static_cast<size_t>(candidates));
  for (int64_t i = 0; i < candidates; ++i) score[i] = objective(pred.data() + i * m);
  std::vector<int64_t> order(static_cast<size_t>(candidates));
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + verify, order.end(),
                    [&](int64_t a, int64_t b) { return score[a] > score[b]; });
  std::vector<Steered> out;
  std::vector<float> y(static_cast<size_t>(m));
  for (int64_t k = 0; k < verify; ++k) {
    Steered s;
    s.params.assign(params.begin() + order[k] * p, params.begin() + (order[k] + 1) * p);
    s.predicted = score[order[k]];
    sim.run(s.params.data(), y.data());
    s.simulated = objective(y.data());
    out.push_back(std::move(s));
  }
  return out;
}

}  // namespace hpdl::workflow
