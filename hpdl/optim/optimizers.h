// The optimizers: SGD (with momentum, Nesterov), AdamW, and the layer-wise
// adaptive large-batch optimizers LARS and LAMB. Each takes its parameters as
// ParamSpecs (see optimizer.h) and an options struct; every option is checked
// in the constructor and a bad one throws naming it.
#pragma once

#include "hpdl/optim/optimizer.h"

namespace hpdl::optim {

// SGD with momentum (Polyak; Sutskever et al. 2013 for Nesterov), as PyTorch:
//   g' = g + wd * w
//   buf = g' on the first step, else momentum * buf + (1 - dampening) * g'
//   step = nesterov ? g' + momentum * buf : buf      (plain g' without momentum)
//   w -= lr * step
// Buffers: "momentum_buffer" (only when momentum != 0).
struct SGDOptions {
  double lr = 0.01;
  double momentum = 0.0;
  double dampening = 0.0;
  double weight_decay = 0.0;
  bool nesterov = false;  // needs momentum > 0 and dampening == 0
};
class SGD : public Optimizer {
 public:
  SGD(std::vector<ParamSpec> params, const SGDOptions& options);
  void step() override;
  std::string name() const override { return "SGD"; }
  SGDOptions options;

 protected:
  std::vector<std::string> buffer_names() const override { return {"momentum_buffer"}; }
};

// AdamW (Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization"):
//   w *= 1 - lr * wd                                  (decoupled decay)
//   m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
//   w -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
// With weight_decay = 0 this is Adam (Kingma & Ba 2015).
// Buffers: "exp_avg" (m), "exp_avg_sq" (v).
struct AdamWOptions {
  double lr = 1e-3;
  double beta1 = 0.9, beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 1e-2;
};
class AdamW : public Optimizer {
 public:
  AdamW(std::vector<ParamSpec> params, const AdamWOptions& options);
  void step() override;
  std::string name() const override { return "AdamW"; }
  AdamWOptions options;

 protected:
  std::vector<std::string> buffer_names() const override { return {"exp_avg", "exp_avg_sq"}; }
};

// LARS (You, Gitman & Ginsburg 2017, "Large Batch Training of Convolutional
// Networks"), Algorithm 1: per layer, a local learning rate
//   local = eta * ||w|| / (||g|| + wd * ||w|| + eps)   (1 when ||w|| or ||g|| is 0)
//   buf = momentum * buf + lr * local * (g + wd * w);  w -= buf
// (the global lr sits inside the momentum, as in the paper; on the first step
// buf starts as lr * local * (g + wd * w)). The momentum update itself runs
// through Backend::optimizer_update. Parameters with no_adaptation use local = 1;
// with no_weight_decay, wd = 0. By default (exclude_1d) biases and
// normalization parameters, i.e. every tensor with ndim <= 1, get both flags,
// as in the paper's and Goyal et al.'s practice.
// Buffers: "momentum_buffer".
struct LARSOptions {
  double lr = 0.1;
  double momentum = 0.9;
  double weight_decay = 0.0;
  double eta = 0.001;  // trust coefficient
  double eps = 0.0;
  bool exclude_1d = true;
};
class LARS : public Optimizer {
 public:
  LARS(std::vector<ParamSpec> params, const LARSOptions& options);
  void step() override;
  std::string name() const override { return "LARS"; }
  LARSOptions options;
  // The local learning rate of the last step for each parameter (for logging).
  const std::vector<double>& last_trust_ratios() const { return ratios_; }

 protected:
  std::vector<std::string> buffer_names() const override { return {"momentum_buffer"}; }

 private:
  std::vector<double> ratios_;
};

// LAMB (You et al. 2019, "Large Batch Optimization for Deep Learning:
// Training BERT in 76 minutes"), Algorithm 2 with phi = identity:
//   m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;  m^ = m/(1-b1^t);  v^ = v/(1-b2^t)
//   r = m^ / (sqrt(v^) + eps) + wd * w
//   ratio = ||w|| / ||r||   (1 when either norm is 0, or for no_adaptation)
//   w -= lr * ratio * r
// exclude_1d (default) sets no_adaptation and no_weight_decay on every tensor
// with ndim <= 1 (biases, LayerNorm/BatchNorm parameters), as BERT's LAMB does.
// Buffers: "exp_avg", "exp_avg_sq".
struct LAMBOptions {
  double lr = 1e-3;
  double beta1 = 0.9, beta2 = 0.999;
  double eps = 1e-6;
  double weight_decay = 0.01;
  bool exclude_1d = true;
};
class LAMB : public Optimizer {
 public:
  LAMB(std::vector<ParamSpec> params, const LAMBOptions& options);
  void step() override;
  std::string name() const override { return "LAMB"; }
  LAMBOptions options;
  const std::vector<double>& last_trust_ratios() const { return ratios_; }

 protected:
  std::vector<std::string> buffer_names() const override { return {"exp_avg", "exp_avg_sq"}; }

 private:
  std::vector<double> ratios_;
};

}  // namespace hpdl::optim
