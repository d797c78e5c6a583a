// Objective: what `hpdl train` minimizes and reports, from train.loss.
// Classification (cross_entropy): integer labels [N], metric accuracy.
// Regression (mse, l1, huber): float targets [N, k] (k = model.num_classes,
// the number of outputs), metrics RMSE, MAE and R^2. Every metric is a ratio of
// sums over samples (below), so the trainer adds the sums of its batches and
// all-reduces them over ranks and gets the exact value over the whole set.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "hpdl/core/tensor.h"
#include "hpdl/train/config.h"

namespace hpdl::train {

class Objective {
 public:
  enum class Kind { cross_entropy, mse, l1, huber };
  // Classification with plain cross entropy (what evaluation used before train.loss existed).
  Objective() = default;
  // From train.loss, train.label_smoothing, train.huber_delta and model.num_classes. Throws
  // naming the key for an unknown loss or label smoothing with a regression loss.
  explicit Objective(const Config& config);

  Kind kind() const { return kind_; }
  bool regression() const { return kind_ != Kind::cross_entropy; }
  // Float targets per sample for regression (model.num_classes), 0 for classification:
  // what data::open_dataset's `targets` takes.
  int64_t targets() const { return regression() ? outputs_ : 0; }

  // The training loss of a batch, its mean over samples (cross entropy with
  // train.label_smoothing; regression: the mean over all N x k values).
  // outputs [N, k]; targets int64 [N] or float [N, k]. Throws on a mismatch.
  Tensor train_loss(const Tensor& outputs, const Tensor& targets) const;
  // The evaluation loss summed over the batch's samples (no label smoothing;
  // regression: each sample's mean over its k values).
  Tensor eval_loss_sum(const Tensor& outputs, const Tensor& targets) const;

  // The metric sums of a batch, as one float64 vector of metric_sums_size()
  // values on the outputs' device (no synchronization): classification
  // {correct}; regression {sum |e|, then per output j: sum e_j^2, sum y_j, sum y_j^2}.
  Tensor metric_sums(const Tensor& outputs, const Tensor& targets) const;
  size_t metric_sums_size() const { return regression() ? 1 + 3 * static_cast<size_t>(outputs_) : 1; }
  // The metrics from sums added over batches and ranks, for `count` samples:
  // {"accuracy"}, or {"rmse", "mae", "r2"}. rmse = sqrt(sum e^2 / (count k)),
  // mae = sum |e| / (count k), r2 = mean over outputs j of 1 - SSE_j / SST_j with
  // SST_j = sum y_j^2 - (sum y_j)^2 / count (outputs with SST_j = 0 are left out;
  // NaN when all are). Empty sums or count 0 give zeros.
  std::map<std::string, double> metrics(const std::vector<double>& sums, double count) const;
  // Metric names in the order metrics() reports them; the first is the progress line's.
  std::vector<std::string> metric_names() const;
  const char* name() const;

 private:
  Kind kind_ = Kind::cross_entropy;
  double label_smoothing_ = 0, huber_delta_ = 1;
  int64_t outputs_ = 0;
};

}  // namespace hpdl::train
