// The training objective: loss and metric sums per batch, metrics from sums.
// R^2 needs each output's mean over the whole set; with the sums of y and y^2
// the total sum of squares is sum y^2 - (sum y)^2 / n, so one pass and one
// allreduce give the exact value (in float64, from float32 targets).
#include "hpdl/train/objective.h"

#include <cmath>

#include "hpdl/autograd/node.h"
#include "hpdl/core/error.h"
#include "hpdl/ops/ops.h"

namespace hpdl::train {

Objective::Objective(const Config& config) {
  const TrainConfig& t = config.train;
  if (t.loss == "cross_entropy") kind_ = Kind::cross_entropy;
  else if (t.loss == "mse") kind_ = Kind::mse;
  else if (t.loss == "l1") kind_ = Kind::l1;
  else if (t.loss == "huber") kind_ = Kind::huber;
  else HPDL_FAIL("train.loss = '{}' is not one of cross_entropy, mse, l1, huber", t.loss);
  HPDL_CHECK(!regression() || t.label_smoothing == 0, "train.label_smoothing = {} smooths class targets; it does "
             "not apply to train.loss = \"{}\" (set it to 0)", t.label_smoothing, t.loss);
  HPDL_CHECK(t.huber_delta > 0 && std::isfinite(t.huber_delta), "train.huber_delta must be positive, got {}",
             t.huber_delta);
  label_smoothing_ = t.label_smoothing;
  huber_delta_ = t.huber_delta;
  outputs_ = config.model.num_classes;
}

const char* Objective::name() const {
  switch (kind_) {
    case Kind::cross_entropy: return "cross_entropy";
    case Kind::mse: return "mse";
    case Kind::l1: return "l1";
    case Kind::huber: return "huber";
  }
  return "?";
}

namespace {

// Targets checked against the model's outputs [N, k] before any loss sees them, so the
// error names the loss and says where the targets come from.
void check_regression_targets(const Tensor& outputs, const Tensor& targets, const char* loss) {
  HPDL_CHECK(targets.dtype() == DType::f32 || targets.dtype() == DType::f64 || targets.dtype() == DType::bf16,
             "train.loss = \"{}\" needs float targets, got {} {} (class labels: use train.loss = \"cross_entropy\")",
             loss, dtype_name(targets.dtype()), shape_str(targets.shape()));
  HPDL_CHECK(outputs.ndim() == 2 && targets.shape() == outputs.shape(), "train.loss = \"{}\": the model's outputs {} "
             "and the targets {} differ in shape (model.num_classes is the number of outputs)", loss,
             shape_str(outputs.shape()), shape_str(targets.shape()));
}

}  // namespace

Tensor Objective::train_loss(const Tensor& outputs, const Tensor& targets) const {
  switch (kind_) {
    case Kind::cross_entropy: return cross_entropy(outputs, targets, label_smoothing_);
    case Kind::mse: check_regression_targets(outputs, targets, name()); return mse_loss(outputs, targets);
    case Kind::l1: check_regression_targets(outputs, targets, name()); return l1_loss(outputs, targets);
    case Kind::huber:
      check_regression_targets(outputs, targets, name());
      return huber_loss(outputs, targets, huber_delta_);
  }
  return {};
}

Tensor Objective::eval_loss_sum(const Tensor& outputs, const Tensor& targets) const {
  if (kind_ == Kind::cross_entropy) return cross_entropy(outputs, targets, 0.0, Reduction::sum);
  check_regression_targets(outputs, targets, name());
  Tensor s = kind_ == Kind::mse ? mse_loss(outputs, targets, Reduction::sum)
             : kind_ == Kind::l1 ? l1_loss(outputs, targets, Reduction::sum)
                                 : huber_loss(outputs, targets, huber_delta_, Reduction::sum);
  return mul(s, 1.0 / static_cast<double>(outputs.dim(1)));  // per sample: the mean over its k values
}

Tensor Objective::metric_sums(const Tensor& outputs, const Tensor& targets) const {
  NoGradGuard ng;
  Tensor out = outputs.detach();
  if (kind_ == Kind::cross_entropy)
    return sum(eq(argmax(out, 1).to(DType::f64), targets.to(DType::f64))).reshape({1});
  check_regression_targets(out, targets, name());
  Tensor y = targets.to(DType::f64), e = sub(out.to(DType::f64), y);  // [N, k]
  return cat({sum(abs(e)).reshape({1}), sum(square(e), {0}), sum(y, {0}), sum(square(y), {0})}, 0);
}

std::vector<std::string> Objective::metric_names() const {
  if (regression()) return {"rmse", "mae", "r2"};
  return {"accuracy"};
}

std::map<std::string, double> Objective::metrics(const std::vector<double>& sums, double count) const {
  std::map<std::string, double> m;
  const bool empty = count <= 0 || sums.size() < metric_sums_size();
  if (!regression()) {
    m["accuracy"] = empty ? 0.0 : sums[0] / count;
    return m;
  }
  if (empty) return {{"rmse", 0.0}, {"mae", 0.0}, {"r2", 0.0}};
  const int64_t k = outputs_;
  double sse = 0, r2 = 0;
  int64_t r2_terms = 0;
  for (int64_t j = 0; j < k; ++j) {
    const double sse_j = sums[1 + j], sy = sums[1 + k + j], syy = sums[1 + 2 * k + j];
    sse += sse_j;
    const double sst = syy - sy * sy / count;
    if (sst > 0) r2 += 1.0 - sse_j / sst, ++r2_terms;
  }
  const double values = count * static_cast<double>(k);
  m["rmse"] = std::sqrt(sse / values);
  m["mae"] = sums[0] / values;
  m["r2"] = r2_terms > 0 ? r2 / static_cast<double>(r2_terms) : std::nan("");
  return m;
}

}  // namespace hpdl::train
