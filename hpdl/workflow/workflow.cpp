#include "hpdl/workflow/workflow.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>

#include "hpdl/autograd/node.h"
#include "hpdl/core/error.h"
#include "hpdl/core/random.h"
#include "hpdl/ops/ops.h"
#include "hpdl/optim/optimizers.h"

namespace hpdl::workflow {
namespace {

constexpr double kPi = 3.14159265358979323846;

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
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

OnlineResult train_online(const Simulation& sim, const OnlineOptions& o, dist::Communicator& world,
                          const std::function<void(const RoundLog&)>& on_round) {
  HPDL_CHECK(world.size() >= 2, "workflow: online training needs at least 2 ranks (simulation and trainer); got {}",
             world.size());
  HPDL_CHECK(o.sim_ranks >= 1 && o.sim_ranks < world.size(),
             "workflow: sim_ranks = {} must leave at least one of the {} ranks to train", o.sim_ranks, world.size());
  HPDL_CHECK(o.sims_per_round >= 1 && o.max_rounds >= 1 && o.steps_per_round >= 1 && o.batch_size >= 1 &&
                 o.validation >= 1 && o.lr > 0,
             "workflow: sims_per_round, max_rounds, steps_per_round, batch_size, validation and lr must be positive");
  const auto t0 = std::chrono::steady_clock::now();
  const bool simulator = world.rank() < o.sim_ranks;
  auto group = world.split(simulator ? 0 : 1, world.rank());
  const int64_t p = sim.num_params(), m = sim.output_size(), row = p + m;
  const int64_t per_rank = o.sims_per_round * row;  // values each rank contributes to a round's allgather

  OnlineResult result;
  result.trainer = !simulator;
  // Trainer state: identical initial weights on every trainer (same seed).
  std::shared_ptr<nn::Sequential> net;
  std::unique_ptr<optim::AdamW> opt;
  std::vector<double> buffer_params;
  std::vector<float> buffer_out;
  Tensor val_x;
  std::vector<float> val_y;
  if (!simulator) {
    net = make_surrogate(sim, o.hidden, o.seed);
    optim::AdamWOptions adam;
    adam.lr = o.lr;
    adam.weight_decay = 0;
    opt = std::make_unique<optim::AdamW>(optim::param_specs(*net), adam);
    const auto vp = sample_params(sim, o.validation, o.seed, 1000003);  // a stream no rank samples from
    val_x = scaled_inputs(sim, vp);
    val_y = simulate_all(sim, vp);
  }
  auto validation_error = [&] {
    NoGradGuard ng;
    return relative_l2(net->forward(val_x).to_vector<float>(), val_y);
  };

  // Round r: simulators produce, everyone exchanges, trainers train on it.
  std::vector<double> mine(static_cast<size_t>(per_rank), 0.0);
  auto simulate_round = [&](int64_t r) {
    const auto params = sample_params(sim, o.sims_per_round, o.seed, static_cast<uint64_t>(r * world.size() + world.rank()));
    const auto out = simulate_all(sim, params);
    for (int64_t i = 0; i < o.sims_per_round; ++i) {
      std::copy(params.begin() + i * p, params.begin() + (i + 1) * p, mine.begin() + i * row);
      std::copy(out.begin() + i * m, out.begin() + (i + 1) * m, mine.begin() + i * row + p);
    }
  };
  if (simulator) simulate_round(0);
  Generator batch_gen(o.seed + 17);
  for (int64_t r = 0; r < o.max_rounds; ++r) {
    Tensor all = world.allgather(Tensor::from_vector(mine, {per_rank}));
    result.simulations += o.sim_ranks * o.sims_per_round;
    RoundLog log;
    log.round = r + 1;
    int stop = 0;
    if (simulator) {
      if (r + 1 < o.max_rounds) simulate_round(r + 1);  // the next round's simulations run while trainers train
    } else {
      auto v = all.to_vector<double>();
      for (int64_t s = 0; s < o.sim_ranks; ++s)
        for (int64_t i = 0; i < o.sims_per_round; ++i) {
          const double* rec = v.data() + s * per_rank + i * row;
          buffer_params.insert(buffer_params.end(), rec, rec + p);
          for (int64_t k = 0; k < m; ++k) buffer_out.push_back(static_cast<float>(rec[p + k]));
        }
      const int64_t have = static_cast<int64_t>(buffer_out.size()) / m;
      const Tensor inputs = scaled_inputs(sim, buffer_params);
      const Tensor targets = Tensor::from_vector(buffer_out, {have, m});
      double loss_sum = 0;
      for (int64_t step = 0; step < o.steps_per_round; ++step) {
        // Each trainer draws its own batch (its rank in the stream), gradients are averaged.
        std::vector<int64_t> idx(static_cast<size_t>(o.batch_size));
        for (auto& k : idx)
          k = std::min<int64_t>(have - 1, static_cast<int64_t>(Generator::uniform(
                                             o.seed + 29 + static_cast<uint64_t>(group->rank()),
                                             batch_gen.reserve(1)) * static_cast<double>(have)));
        Tensor index = Tensor::from_vector(idx, {o.batch_size});
        opt->zero_grad();
        Tensor loss = mse_loss(net->forward(index_select(inputs, 0, index)), index_select(targets, 0, index));
        loss.backward();
        if (group->size() > 1)
          for (auto& param : net->parameters()) {
            Tensor g = param.grad();
            group->allreduce(g);
            g.copy_(mul(g, 1.0 / group->size()));
          }
        opt->step();
        loss_sum += loss.item();
      }
      log.samples = have;
      log.train_loss = loss_sum / static_cast<double>(o.steps_per_round);
      log.validation_error = validation_error();
      stop = (o.target_error > 0 && log.validation_error < o.target_error) ? 1 : 0;
    }
    // The first trainer (world rank sim_ranks) tells everyone whether to go on, with its log.
    std::vector<double> msg = {static_cast<double>(stop), static_cast<double>(log.samples), log.train_loss,
                               log.validation_error};
    world.broadcast_bytes(msg.data(), static_cast<int64_t>(msg.size() * sizeof(double)),
                          static_cast<int>(o.sim_ranks));
    log.samples = static_cast<int64_t>(msg[1]);
    log.train_loss = msg[2];
    log.validation_error = msg[3];
    log.seconds = seconds_since(t0);
    result.rounds.push_back(log);
    if (world.rank() == 0 && on_round) on_round(log);
    if (msg[0] > 0.5) break;
  }
  result.validation_error = result.rounds.back().validation_error;
  result.surrogate = net;
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
