// The PPO rollout/update loop (PpoRunner, train_ppo), its checkpoints and its
// data-parallel parts. A checkpoint is taken between iterations, where the
// rollout buffers are empty and the per-rank statistics have been merged, so
// the state is: the agent (parameters, Adam, statistics, generators, update
// count) plus the per-copy environment state and the run's counters.
#include "hpdl/rl/ppo_runner.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>

#include <nlohmann/json.hpp>

#include "hpdl/core/error.h"
#include "hpdl/dist/communicator.h"
#include "hpdl/io/file.h"
#include "hpdl/io/safetensors.h"
#include "hpdl/train/checkpoint.h"

namespace hpdl::rl {
namespace {

constexpr const char* kFormat = "hpdl-ppo";
constexpr int kVersion = 1;
constexpr uint64_t kRankStride = 1ull << 40;  // reset seeds of rank r start at env_seed + r 2^40

Tensor f64(const std::vector<double>& v) {
  return Tensor::from_vector<double>(v, {static_cast<int64_t>(v.size())});
}

// What must match between a checkpoint and the run that resumes it.
nlohmann::json fingerprint(const Ppo& agent, const Env& env, size_t copies, int ranks, const PpoTrainOptions& t) {
  const auto& o = agent.options();
  return {{"env", env.name()},
          {"copies", copies},
          {"ranks", ranks},
          {"observation_size", agent.observation_size()},
          {"continuous", agent.continuous()},
          {"actions", agent.continuous() ? agent.action_size() : agent.num_actions()},
          {"hidden", o.hidden},
          {"shared_network", o.shared_network},
          {"rollout_steps", o.rollout_steps},
          {"minibatch_size", o.minibatch_size},
          {"epochs", o.epochs},
          {"normalize_observations", o.normalize_observations},
          {"normalize_returns", o.normalize_returns},
          {"seed", o.seed},
          {"env_seed", t.env_seed},
          {"window", t.window}};
}

// Where the checkpoints of `rank` in a run of `ranks` ranks live.
std::filesystem::path rank_dir(const std::filesystem::path& run_dir, int ranks, int rank) {
  return ranks > 1 ? run_dir / fmt::format("rank-{}", rank) : run_dir;
}

}  // namespace

PpoRunner::PpoRunner(Ppo& agent, std::vector<std::unique_ptr<Env>>& envs, const PpoTrainOptions& options,
                     dist::Communicator* comm)
    : agent_(agent),
      envs_(envs),
      options_(options),
      comm_(comm),
      obs_base_(agent.observation_size()),
      ret_base_(1),
      obs_delta_(agent.observation_size()),
      ret_delta_(1) {
  if (comm_ != nullptr) {
    rank_ = comm_->rank();
    ranks_ = comm_->size();
  }
  rank_offset_ = static_cast<uint64_t>(rank_) * kRankStride;
  check_setup();
  const auto k = envs_.size();
  obs_.resize(k);
  running_.assign(k, 0.0);
  discounted_.assign(k, 0.0);
  for (size_t e = 0; e < k; ++e) obs_[e] = envs_[e]->reset(reset_seed());
  if (rank_ > 0) {
    // Own action and minibatch streams; the initial weights stay rank 0's (same init stream).
    const uint64_t seed = agent_.options().seed;
    agent_.action_generator().set_state(Generator::bits(seed, 16 + 2 * static_cast<uint64_t>(rank_)), 0);
    agent_.sample_generator().set_state(Generator::bits(seed, 17 + 2 * static_cast<uint64_t>(rank_)), 0);
  }
  if (ranks_ > 1) {
    for (auto& p : agent_.parameters()) comm_->broadcast(p, 0);
    agent_.set_gradient_hook([this](const std::vector<Tensor>& ps) { average_gradients(ps); });
  }
  obs_base_ = agent_.observation_stats();
  ret_base_ = agent_.return_stats();
}

PpoRunner::~PpoRunner() {
  if (ranks_ > 1) agent_.set_gradient_hook({});
}

void PpoRunner::check_setup() const {
  const auto& o = agent_.options();
  HPDL_CHECK(!envs_.empty(), "rl::train_ppo: no environments; give at least one copy");
  HPDL_CHECK(options_.iterations >= 1 && options_.window >= 1, "rl::train_ppo: iterations ({}) and window ({}) must "
             "be >= 1", options_.iterations, options_.window);
  for (size_t e = 0; e < envs_.size(); ++e) {
    const Env& env = *envs_[e];
    HPDL_CHECK(env.observation_size() == agent_.observation_size() &&
                   env.continuous_actions() == agent_.continuous() &&
                   (agent_.continuous() ? env.action_size() == agent_.action_size()
                                        : env.num_actions() == agent_.num_actions()),
               "rl::train_ppo: environment {} ({}) has {} observation values and {} {} actions but the agent was "
               "built for {} and {} {}", e, env.name(), env.observation_size(),
               env.continuous_actions() ? env.action_size() : env.num_actions(),
               env.continuous_actions() ? "continuous" : "discrete", agent_.observation_size(),
               agent_.continuous() ? agent_.action_size() : agent_.num_actions(),
               agent_.continuous() ? "continuous" : "discrete");
  }
  const size_t total = static_cast<size_t>(o.rollout_steps) * envs_.size();
  HPDL_CHECK(static_cast<size_t>(o.minibatch_size) <= total, "rl::train_ppo: minibatch_size {} exceeds the rollout "
             "({} steps x {} environments = {} transitions)", o.minibatch_size, o.rollout_steps, envs_.size(), total);
  if (ranks_ > 1) {
    // Every rank must take the same number of minibatch steps (one gradient allreduce each), or the job hangs.
    std::vector<double> mine = {static_cast<double>(envs_.size()), static_cast<double>(o.rollout_steps),
                                static_cast<double>(o.minibatch_size), static_cast<double>(o.epochs),
                                static_cast<double>(options_.iterations)};
    auto all = comm_->allgather(f64(mine)).to_vector<double>();
    for (int r = 0; r < ranks_; ++r)
      for (size_t j = 0; j < mine.size(); ++j)
        HPDL_CHECK(all[static_cast<size_t>(r) * mine.size() + j] == all[j], "rl::PpoRunner: rank {} has {} "
                   "environment copies, rollout_steps {}, minibatch_size {}, epochs {}, iterations {}; rank 0 has {}, "
                   "{}, {}, {}, {}; data-parallel PPO needs the same on every rank", r,
                   all[static_cast<size_t>(r) * 5], all[static_cast<size_t>(r) * 5 + 1],
                   all[static_cast<size_t>(r) * 5 + 2], all[static_cast<size_t>(r) * 5 + 3],
                   all[static_cast<size_t>(r) * 5 + 4], all[0], all[1], all[2], all[3], all[4]);
  }
}

void PpoRunner::average_gradients(const std::vector<Tensor>& params) {
  // One message for all gradients: the networks are small (a few thousand values), so the
  // latency of one allreduce dominates and bucketing would not pay.
  std::vector<float> flat;
  for (const auto& p : params) {
    const Tensor& g = p.grad();
    if (!g.defined()) {
      flat.insert(flat.end(), static_cast<size_t>(p.numel()), 0.0f);
    } else {
      auto v = g.to_vector<float>();
      flat.insert(flat.end(), v.begin(), v.end());
    }
  }
  comm_->allreduce(flat.data(), static_cast<int64_t>(flat.size()), DType::f32, dist::ReduceKind::sum);
  const float inv = 1.0f / static_cast<float>(ranks_);
  size_t at = 0;
  for (const auto& p : params) {
    const auto n = static_cast<size_t>(p.numel());
    std::vector<float> v(flat.begin() + static_cast<std::ptrdiff_t>(at),
                         flat.begin() + static_cast<std::ptrdiff_t>(at + n));
    for (float& x : v) x *= inv;
    Tensor g = Tensor::from_vector<float>(v, p.shape()).to(p.device());
    Tensor handle = p;  // shares the parameter; set_grad replaces its gradient
    handle.set_grad(g);
    at += n;
  }
}

void PpoRunner::merge_statistics(RunningMeanStd& stats, RunningMeanStd& base, const RunningMeanStd& delta) {
  if (ranks_ > 1) {
    // Every rank merges every rank's additions in rank order, so all end with the same bits.
    const auto packed = delta.pack();
    auto all = comm_->allgather(f64(packed)).to_vector<double>();
    RunningMeanStd merged = base;
    for (int r = 0; r < ranks_; ++r) {
      RunningMeanStd d(delta.size());
      d.unpack(std::vector<double>(all.begin() + static_cast<std::ptrdiff_t>(r * packed.size()),
                                   all.begin() + static_cast<std::ptrdiff_t>((r + 1) * packed.size())),
               "a rank's statistics");
      merged.merge(d);
    }
    stats = merged;
  }
  base = stats;
}

bool PpoRunner::finished() const {
  return iteration_ >= options_.iterations || (options_.stop_when_solved && result_.solved);
}

PpoIterationLog PpoRunner::iterate() {
  const auto& o = agent_.options();
  const auto k = envs_.size();
  const auto n = static_cast<size_t>(o.rollout_steps);
  const size_t total = n * k;
  const auto obs_size = static_cast<size_t>(agent_.observation_size());
  const auto act_size = static_cast<size_t>(agent_.action_size());
  const int64_t it = ++iteration_;

  // Rollout storage, time-major per environment: index e * n + t. Observations are stored as the
  // networks saw them (normalised with the statistics of that step).
  std::vector<float> ob(total * obs_size), act_vec(agent_.continuous() ? total * act_size : 0);
  std::vector<int64_t> act_idx(agent_.continuous() ? 0 : total);
  std::vector<double> logp(total), value(total), reward(total), next_value(total);
  std::vector<bool> terminated(total), episode_end(total);

  if (o.anneal_lr)
    agent_.optimizer().set_lr(o.lr * (1.0 - static_cast<double>(it - 1) / static_cast<double>(options_.iterations)));
  obs_delta_.clear();
  ret_delta_.clear();
  double iter_return_sum = 0;
  int64_t iter_episodes = 0;
  std::vector<double> raw_reward(k), obs_rows(k * obs_size);
  for (size_t t = 0; t < n; ++t) {
    if (o.normalize_observations) {
      for (size_t e = 0; e < k; ++e) std::copy(obs_[e].begin(), obs_[e].end(), obs_rows.begin() + static_cast<std::ptrdiff_t>(e * obs_size));
      agent_.observation_stats().update(obs_rows.data(), static_cast<int64_t>(k));
      obs_delta_.update(obs_rows.data(), static_cast<int64_t>(k));
    }
    auto actions = agent_.act(obs_);
    std::vector<Observation> truncated_final;  // final observations of episodes cut by the time limit
    std::vector<size_t> truncated_at;
    for (size_t e = 0; e < k; ++e) {
      const size_t i = e * n + t;
      const Observation seen = agent_.normalize_observation(obs_[e]);
      std::copy(seen.begin(), seen.end(), ob.begin() + static_cast<std::ptrdiff_t>(i * obs_size));
      const PpoAction& a = actions[e];
      StepResult r = agent_.continuous() ? envs_[e]->step(a.vector) : envs_[e]->step(a.index);
      if (agent_.continuous())
        for (size_t j = 0; j < act_size; ++j) act_vec[i * act_size + j] = static_cast<float>(a.vector[j]);
      else
        act_idx[i] = a.index;
      logp[i] = a.log_prob;
      value[i] = a.value;
      raw_reward[e] = r.reward;
      discounted_[e] = discounted_[e] * o.gamma + r.reward * o.reward_scale;
      terminated[i] = r.terminated;
      episode_end[i] = r.done();
      running_[e] += r.reward;
      if (r.done()) {
        ++iter_episodes;
        iter_return_sum += running_[e];
        result_.returns.push_back(running_[e]);
        window_.push_back(running_[e]);
        window_sum_ += running_[e];
        if (static_cast<int64_t>(window_.size()) > options_.window) {
          window_sum_ -= window_.front();
          window_.pop_front();
        }
        running_[e] = 0;
        if (!r.terminated) {
          truncated_final.push_back(r.observation);
          truncated_at.push_back(i);
        }
        obs_[e] = envs_[e]->reset(reset_seed());
      } else {
        obs_[e] = std::move(r.observation);
      }
    }
    // Return normalisation: the statistics take this step's discounted returns, then every reward
    // is divided by their standard deviation; an episode's discounted return restarts after its end.
    if (o.normalize_returns) {
      agent_.return_stats().update(discounted_.data(), static_cast<int64_t>(k));
      ret_delta_.update(discounted_.data(), static_cast<int64_t>(k));
    }
    for (size_t e = 0; e < k; ++e) {
      reward[e * n + t] = agent_.normalize_reward(raw_reward[e]);
      if (episode_end[e * n + t]) discounted_[e] = 0;
    }
    // next_value of step t: V(s_{t+1}) is the value the next act() computes; fill it in then.
    if (t > 0)
      for (size_t e = 0; e < k; ++e)
        if (!episode_end[e * n + t - 1]) next_value[e * n + t - 1] = value[e * n + t];
    if (!truncated_final.empty()) {
      auto v = agent_.values(truncated_final);
      for (size_t j = 0; j < truncated_at.size(); ++j) next_value[truncated_at[j]] = v[j];
    }
  }
  // Bootstrap the last step of every copy from the observation it is left in.
  auto last_v = agent_.values(obs_);
  for (size_t e = 0; e < k; ++e)
    if (!episode_end[e * n + n - 1]) next_value[e * n + n - 1] = last_v[e];
  result_.steps += static_cast<int64_t>(total) * ranks_;
  if (comm_ != nullptr) {
    if (o.normalize_observations) merge_statistics(agent_.observation_stats(), obs_base_, obs_delta_);
    if (o.normalize_returns) merge_statistics(agent_.return_stats(), ret_base_, ret_delta_);
  }

  std::vector<double> adv(total), ret(total);
  for (size_t e = 0; e < k; ++e) {
    const auto b = static_cast<std::ptrdiff_t>(e * n), en = static_cast<std::ptrdiff_t>((e + 1) * n);
    auto a = gae_advantages(std::vector<double>(reward.begin() + b, reward.begin() + en),
                            std::vector<double>(value.begin() + b, value.begin() + en),
                            std::vector<double>(next_value.begin() + b, next_value.begin() + en),
                            std::vector<bool>(terminated.begin() + b, terminated.begin() + en),
                            std::vector<bool>(episode_end.begin() + b, episode_end.begin() + en), o.gamma,
                            o.gae_lambda);
    for (size_t t = 0; t < n; ++t) {
      adv[e * n + t] = a[t];
      ret[e * n + t] = a[t] + value[e * n + t];
    }
  }
  // Data parallel: advantages normalised once with the mean and (unbiased) standard deviation of
  // all ranks' rollouts, instead of per minibatch (which would see one rank's data only).
  const bool global_adv = comm_ != nullptr && o.normalize_advantages;
  if (global_adv) {
    std::vector<double> moments = {0, 0, static_cast<double>(total)};
    for (double a : adv) moments[0] += a, moments[1] += a * a;
    comm_->allreduce(moments.data(), 3, DType::f64, dist::ReduceKind::sum);
    const double m = moments[0] / moments[2];
    const double var = std::max(0.0, (moments[1] - moments[2] * m * m) / std::max(moments[2] - 1, 1.0));
    const double sd = std::sqrt(var);
    for (double& a : adv) a = (a - m) / (sd + 1e-8);
  }

  // Epochs of shuffled minibatches (a Fisher-Yates shuffle from the sampling stream; the tail that
  // does not fill a minibatch is left out of that epoch).
  PpoLossLog sum_log;
  int64_t steps_logged = 0;
  std::vector<size_t> order(total);
  const auto mb = static_cast<size_t>(o.minibatch_size);
  for (int64_t epoch = 0; epoch < o.epochs; ++epoch) {
    std::iota(order.begin(), order.end(), size_t{0});
    for (size_t i = total - 1; i > 0; --i) {
      const auto j =
          std::min(static_cast<size_t>(agent_.sample_generator().next_uniform() * static_cast<double>(i + 1)), i);
      std::swap(order[i], order[j]);
    }
    for (size_t start = 0; start + mb <= total; start += mb) {
      Ppo::Minibatch batch;
      std::vector<float> bo(mb * obs_size), bav, blp(mb), bv(mb), badv(mb), bret(mb);
      if (agent_.continuous()) bav.resize(mb * act_size);
      for (size_t r = 0; r < mb; ++r) {
        const size_t i = order[start + r];
        std::copy(ob.begin() + static_cast<std::ptrdiff_t>(i * obs_size),
                  ob.begin() + static_cast<std::ptrdiff_t>((i + 1) * obs_size),
                  bo.begin() + static_cast<std::ptrdiff_t>(r * obs_size));
        if (agent_.continuous())
          for (size_t j = 0; j < act_size; ++j) bav[r * act_size + j] = act_vec[i * act_size + j];
        else
          batch.action_indices.push_back(act_idx[i]);
        blp[r] = static_cast<float>(logp[i]);
        bv[r] = static_cast<float>(value[i]);
        badv[r] = static_cast<float>(adv[i]);
        bret[r] = static_cast<float>(ret[i]);
      }
      const auto b = static_cast<int64_t>(mb);
      batch.observations = Tensor::from_vector<float>(bo, {b, static_cast<int64_t>(obs_size)});
      if (agent_.continuous()) batch.action_vectors = Tensor::from_vector<float>(bav, {b, agent_.action_size()});
      batch.old_log_probs = Tensor::from_vector<float>(blp, {b});
      batch.old_values = Tensor::from_vector<float>(bv, {b});
      batch.advantages = Tensor::from_vector<float>(badv, {b});
      batch.returns = Tensor::from_vector<float>(bret, {b});
      batch.advantages_normalized = global_adv;
      PpoLossLog l = agent_.update(batch);
      sum_log.policy_loss += l.policy_loss;
      sum_log.value_loss += l.value_loss;
      sum_log.entropy += l.entropy;
      sum_log.approx_kl += l.approx_kl;
      sum_log.clip_fraction += l.clip_fraction;
      ++steps_logged;
    }
  }
  // Episode statistics over all ranks: [this iteration's return sum, its episodes, window sum, window size].
  std::vector<double> ep = {iter_return_sum, static_cast<double>(iter_episodes), window_sum_,
                            static_cast<double>(window_.size())};
  if (ranks_ > 1) comm_->allreduce(ep.data(), 4, DType::f64, dist::ReduceKind::sum);
  result_.episodes += static_cast<int64_t>(ep[1]);
  PpoIterationLog log;
  log.iteration = it;
  log.total_steps = result_.steps;
  log.episodes = static_cast<int64_t>(ep[1]);
  log.mean_return = ep[1] > 0 ? ep[0] / ep[1] : std::numeric_limits<double>::quiet_NaN();
  log.moving_average = ep[3] > 0 ? ep[2] / ep[3] : std::numeric_limits<double>::quiet_NaN();
  const double c = static_cast<double>(std::max<int64_t>(steps_logged, 1));
  log.loss = {sum_log.policy_loss / c, sum_log.value_loss / c, sum_log.entropy / c, sum_log.approx_kl / c,
              sum_log.clip_fraction / c};
  log.lr = agent_.optimizer().lr();
  result_.iterations = it;
  if (!result_.solved && ep[3] >= static_cast<double>(options_.window * ranks_) &&
      log.moving_average >= options_.solved_return) {
    result_.solved = true;
    result_.solved_iteration = it;
  }
  return log;
}

// ---------------------------------------------------------------- checkpoints

std::filesystem::path PpoRunner::save_checkpoint(const std::filesystem::path& run_dir, int keep) {
  const auto dir = rank_dir(run_dir, ranks_, rank_);
  std::map<std::string, Tensor> tensors;
  for (auto& [name, p] : agent_.named_parameters()) tensors["param." + name] = p;
  for (auto& [name, t] : agent_.optimizer().state_dict()) tensors["optim." + name] = t;
  tensors["stats.observation"] = f64(agent_.observation_stats().pack());
  tensors["stats.return"] = f64(agent_.return_stats().pack());
  const auto k = envs_.size();
  std::vector<double> env_state, observations;
  int64_t state_size = 0;
  for (size_t e = 0; e < k; ++e) {
    auto s = envs_[e]->save_state();
    state_size = static_cast<int64_t>(s.size());
    env_state.insert(env_state.end(), s.begin(), s.end());
    observations.insert(observations.end(), obs_[e].begin(), obs_[e].end());
  }
  tensors["env.state"] = Tensor::from_vector<double>(env_state, {static_cast<int64_t>(k), state_size});
  tensors["env.observation"] = Tensor::from_vector<double>(observations, {static_cast<int64_t>(k), agent_.observation_size()});
  tensors["env.episode_return"] = f64(running_);
  tensors["env.discounted_return"] = f64(discounted_);
  // [window sum, every finished episode's return...]: the window is the history's tail.
  std::vector<double> history = {window_sum_};
  history.insert(history.end(), result_.returns.begin(), result_.returns.end());
  tensors["history.returns"] = f64(history);

  train::CheckpointMeta meta;
  meta.step = iteration_;
  meta.rng = {{"init", agent_.init_generator().seed(), agent_.init_generator().offset()},
              {"action", agent_.action_generator().seed(), agent_.action_generator().offset()},
              {"sample", agent_.sample_generator().seed(), agent_.sample_generator().offset()}};
  meta.config = fingerprint(agent_, *envs_[0], k, ranks_, options_);
  meta.extra = {{"format", kFormat},
                {"version", kVersion},
                {"rank", rank_},
                {"resets", resets_},
                {"updates", agent_.updates()},
                {"steps", result_.steps},
                {"episodes", result_.episodes},
                {"solved", result_.solved},
                {"solved_iteration", result_.solved_iteration}};
  train::CheckpointManager manager(dir, keep);
  return manager.save(meta, tensors).sidecar_path;
}

bool PpoRunner::resume(const std::filesystem::path& run_dir) {
  resume_note_.clear();
  // Rank 0 picks [iteration, rank count of the run that wrote it]; -1: none. Both layouts are
  // looked at: a run resumed at another count saves in its own, and the newer save wins (the
  // layout of this run's count first, so it wins a tie).
  int64_t pick[2] = {-1, 0};
  if (rank_ == 0) {
    const std::filesystem::path dirs[2] = {rank_dir(run_dir, ranks_, 0), rank_dir(run_dir, ranks_ > 1 ? 1 : 2, 0)};
    for (const auto& dir : dirs) {
      if (!std::filesystem::exists(dir / "checkpoints")) continue;
      auto info = train::CheckpointManager(dir).latest_valid();
      if (info && info->meta.step > pick[0])
        pick[0] = info->meta.step, pick[1] = info->meta.config.value("ranks", int64_t{0});
    }
  }
  if (ranks_ > 1) comm_->broadcast_bytes(pick, sizeof(pick), 0);
  if (pick[0] < 0) return false;
  const int saved = static_cast<int>(pick[1]);
  const bool own = rank_ < saved;
  // The sidecar's name as train::CheckpointManager writes it (step-NNNNNNNNNN.json).
  const auto sidecar =
      rank_dir(run_dir, saved, own ? rank_ : 0) / "checkpoints" / fmt::format("step-{:010d}.json", pick[0]);
  // Every rank learns whether every rank has its file before anyone loads (no rank left waiting
  // in a collective while another throws).
  std::vector<double> present = {std::filesystem::exists(sidecar) ? 1.0 : 0.0};
  if (ranks_ > 1) present = comm_->allgather(f64(present)).to_vector<double>();
  for (size_t r = 0; r < present.size(); ++r)
    HPDL_CHECK(present[r] == 1.0, "rl::PpoRunner::resume: rank {} finds no checkpoint of iteration {} ({} ranks) "
               "under {}; rank 0's newest valid one is that iteration; restore the run directory or remove the "
               "newer checkpoints", r, pick[0], saved, run_dir.string());
  load(sidecar, saved, own);
  if (saved != ranks_) {
    const auto span = [](int a, int b) { return a == b ? fmt::format("rank {}", a) : fmt::format("ranks {}-{}", a, b); };
    std::string kept = "continuing their saved environments and streams: " + span(0, std::min(saved, ranks_) - 1);
    if (ranks_ > saved)
      kept += fmt::format("; starting fresh environments (seeds from seed, rank and iteration {}): {}", pick[0],
                          span(saved, ranks_ - 1));
    else
      kept += "; dropped (their environments and episode histories): " + span(ranks_, saved - 1);
    resume_note_ = fmt::format("PPO checkpoint of iteration {} was written by {} rank{}, resumed at {}: weights, "
                               "optimizer and statistics carry over exactly; {}", pick[0], saved,
                               saved > 1 ? "s" : "", ranks_, kept);
    warn_once(resume_note_);
  }
  return true;
}

void PpoRunner::load_checkpoint(const std::filesystem::path& sidecar) { load(sidecar, ranks_, true); }

void PpoRunner::start_fresh(int64_t iteration) {
  // A rank the saved run did not have: new environments and streams, determined by (seed, rank,
  // iteration) so that a repeat of the same resume repeats, and distinct from every stream this
  // rank would use when started from iteration 0 (reset seeds from iteration 2^20 on, unless a
  // rank resets more than 2^20 episodes in an iteration).
  const uint64_t seed = agent_.options().seed, r = static_cast<uint64_t>(rank_), it = static_cast<uint64_t>(iteration);
  agent_.action_generator().set_state(Generator::bits(Generator::bits(seed, 16 + 2 * r), it), 0);
  agent_.sample_generator().set_state(Generator::bits(Generator::bits(seed, 17 + 2 * r), it), 0);
  resets_ = it << 20;
  for (size_t e = 0; e < envs_.size(); ++e) obs_[e] = envs_[e]->reset(reset_seed());
  running_.assign(envs_.size(), 0.0);
  discounted_.assign(envs_.size(), 0.0);
  result_.returns.clear();
  window_.clear();
  window_sum_ = 0;
}

void PpoRunner::load(const std::filesystem::path& sidecar, int saved_ranks, bool own_state) {
  const std::string f = sidecar.string();
  train::CheckpointInfo info = train::CheckpointManager::read_sidecar(sidecar);
  const auto& x = info.meta.extra;
  HPDL_CHECK(x.value("format", "") == kFormat, "{}: not a PPO checkpoint (extra.format '{}', expected '{}')", f,
             x.value("format", ""), kFormat);
  HPDL_CHECK(x.value("version", 0) <= kVersion, "{}: PPO checkpoint version {} is newer than this hpdl reads ({})", f,
             x.value("version", 0), kVersion);
  const auto k = envs_.size();
  // The rank count is the saving run's (the caller decided that a different one is fine).
  const nlohmann::json want = fingerprint(agent_, *envs_[0], k, saved_ranks, options_);
  // The task first (the most telling mismatch), then the rest.
  std::vector<std::string> keys = {"env"};
  for (auto& [key, value] : want.items())
    if (key != "env") keys.push_back(key);
  for (const auto& key : keys) {
    const auto& value = want[key];
    HPDL_CHECK(info.meta.config.contains(key), "{}: the checkpoint does not record '{}'", f, key);
    HPDL_CHECK(info.meta.config[key] == value, "{}: the checkpoint was written with {} = {}, this run has {}; resume "
               "with the same settings", f, key, info.meta.config[key].dump(), value.dump());
  }
  const int writer = own_state ? rank_ : 0;
  HPDL_CHECK(x.value("rank", -1) == writer, "{}: written by rank {}, read by rank {} for rank {}'s state", f,
             x.value("rank", -1), rank_, writer);
  HPDL_CHECK(info.meta.rng.size() == 3, "{}: {} generator states, expected 3 (init, action, sample)", f,
             info.meta.rng.size());
  // Verify size and checksum against the sidecar before reading anything into the agent.
  {
    std::vector<uint8_t> bytes = io::read_file(info.tensors_path);
    HPDL_CHECK(bytes.size() == info.file_bytes, "{}: {} bytes, the sidecar recorded {}", info.tensors_path.string(),
               bytes.size(), info.file_bytes);
    HPDL_CHECK(io::hex64(io::xxh64(bytes.data(), bytes.size())) == info.file_xxh64,
               "{}: xxh64 differs from the sidecar's (the file is corrupt)", info.tensors_path.string());
  }
  io::SafetensorsFile file = io::load_safetensors(info.tensors_path);
  const std::string tf = info.tensors_path.string();
  auto take = [&](const std::string& name, const Shape& shape, DType dtype) -> const Tensor& {
    auto i = file.tensors.find(name);
    HPDL_CHECK(i != file.tensors.end(), "{}: tensor '{}' is missing", tf, name);
    HPDL_CHECK(i->second.shape() == shape && i->second.dtype() == dtype, "{}: tensor '{}' is {} {}, expected {} {}", tf,
               name, dtype_name(i->second.dtype()), shape_str(i->second.shape()), dtype_name(dtype), shape_str(shape));
    return i->second;
  };
  const auto named = agent_.named_parameters();
  for (auto& [name, p] : named) take("param." + name, p.shape(), p.dtype());
  const int64_t d = agent_.observation_size();
  const Tensor& obs_stats = take("stats.observation", {1 + 2 * d}, DType::f64);
  const Tensor& ret_stats = take("stats.return", {3}, DType::f64);
  const int64_t state_size = static_cast<int64_t>(envs_[0]->save_state().size());
  const Tensor& env_state = take("env.state", {static_cast<int64_t>(k), state_size}, DType::f64);
  const Tensor& env_obs = take("env.observation", {static_cast<int64_t>(k), d}, DType::f64);
  const Tensor& episode_return = take("env.episode_return", {static_cast<int64_t>(k)}, DType::f64);
  const Tensor& discounted = take("env.discounted_return", {static_cast<int64_t>(k)}, DType::f64);
  auto hi = file.tensors.find("history.returns");
  HPDL_CHECK(hi != file.tensors.end() && hi->second.ndim() == 1 && hi->second.dim(0) >= 1 &&
                 hi->second.dtype() == DType::f64,
             "{}: tensor 'history.returns' is missing or not a float64 vector", tf);
  std::map<std::string, Tensor> optim_state;
  for (auto& [name, t] : file.tensors)
    if (name.rfind("optim.", 0) == 0) optim_state[name.substr(6)] = t;

  // Everything is checked; now change state (the optimizer checks its own entries first).
  agent_.optimizer().load_state_dict(optim_state);
  for (auto& [name, p] : named) {
    const Tensor& src = file.tensors.at("param." + name);
    std::memcpy(p.data<float>(), src.data<float>(), static_cast<size_t>(p.numel()) * sizeof(float));
  }
  agent_.observation_stats().unpack(obs_stats.to_vector<double>(), "stats.observation");
  agent_.return_stats().unpack(ret_stats.to_vector<double>(), "stats.return");
  obs_base_ = agent_.observation_stats();
  ret_base_ = agent_.return_stats();
  const auto& g = info.meta.rng;
  agent_.init_generator().set_state(g[0].seed, g[0].offset);
  agent_.set_updates(x.at("updates").get<int64_t>());
  iteration_ = info.meta.step;
  result_.iterations = iteration_;
  result_.steps = x.at("steps").get<int64_t>();
  result_.episodes = x.at("episodes").get<int64_t>();
  result_.solved = x.at("solved").get<bool>();
  result_.solved_iteration = x.at("solved_iteration").get<int64_t>();
  if (!own_state) {
    start_fresh(iteration_);
    return;
  }
  // This rank's own state.
  agent_.action_generator().set_state(g[1].seed, g[1].offset);
  agent_.sample_generator().set_state(g[2].seed, g[2].offset);
  auto es = env_state.to_vector<double>(), eo = env_obs.to_vector<double>();
  for (size_t e = 0; e < k; ++e) {
    envs_[e]->load_state(std::vector<double>(es.begin() + static_cast<std::ptrdiff_t>(e * state_size),
                                             es.begin() + static_cast<std::ptrdiff_t>((e + 1) * state_size)));
    obs_[e].assign(eo.begin() + static_cast<std::ptrdiff_t>(e * d), eo.begin() + static_cast<std::ptrdiff_t>((e + 1) * d));
  }
  running_ = episode_return.to_vector<double>();
  discounted_ = discounted.to_vector<double>();
  auto history = hi->second.to_vector<double>();
  window_sum_ = history[0];
  result_.returns.assign(history.begin() + 1, history.end());
  window_.clear();
  const size_t w = std::min(result_.returns.size(), static_cast<size_t>(options_.window));
  window_.assign(result_.returns.end() - static_cast<std::ptrdiff_t>(w), result_.returns.end());
  resets_ = x.at("resets").get<uint64_t>();
}

// ---------------------------------------------------------------- the one-call loop

PpoTrainResult train_ppo(Ppo& agent, std::vector<std::unique_ptr<Env>>& envs, const PpoTrainOptions& options,
                         const std::function<void(const PpoIterationLog&)>& on_iteration) {
  PpoRunner runner(agent, envs, options);
  while (!runner.finished()) {
    PpoIterationLog log = runner.iterate();
    if (on_iteration) on_iteration(log);
  }
  return runner.result();
}

}  // namespace hpdl::rl
