// Checks a pipeline-stageable model (nn::Stageable): cut at each set of bounds,
// its stages hold the model's own parameters under its names, in its order,
// and run one after another they give the model's output and gradients
// exactly. Buffers too (names and tensors).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "hpdl/autograd/node.h"
#include "hpdl/nn/layers.h"
#include "hpdl/ops/ops.h"

namespace hpdl::nn {

inline double stage_check_max_diff(const Tensor& a, const Tensor& b) {
  EXPECT_EQ(a.shape(), b.shape());
  const auto u = a.contiguous().to_vector<float>(), w = b.contiguous().to_vector<float>();
  double worst = 0;
  for (size_t i = 0; i < u.size() && i < w.size(); ++i) worst = std::max(worst, std::fabs(double(u[i]) - w[i]));
  return worst;
}

template <typename Model>
void expect_stages_compose(Model& model, const Tensor& x, const std::vector<std::vector<int64_t>>& cuts) {
  Stageable& layers = model;
  model.zero_grad();
  const Tensor full = model.forward(x);
  sum(full).backward();
  std::map<std::string, Tensor> want;
  for (auto& [name, p] : model.named_parameters()) want[name] = p.grad().clone();
  const auto order = model.named_parameters();
  const auto state = model.state_dict();
  for (const auto& bounds : cuts) {
    SCOPED_TRACE(::testing::PrintToString(bounds));
    std::vector<ModulePtr> stages;
    std::vector<std::string> names;
    size_t buffers = 0;
    for (size_t s = 0; s + 1 < bounds.size(); ++s) {
      stages.push_back(layers.make_stage(bounds[s], bounds[s + 1]));
      for (auto& [name, p] : stages.back()->named_parameters()) {
        names.push_back(name);
        ASSERT_TRUE(state.count(name)) << name << " is not a name of the model";
        EXPECT_EQ(p.raw_data(), state.at(name).raw_data()) << name << " is not the model's own tensor";
      }
      for (auto& [name, b] : stages.back()->named_buffers()) {
        ++buffers;
        ASSERT_TRUE(state.count(name)) << name << " is not a name of the model";
        EXPECT_EQ(b.raw_data(), state.at(name).raw_data()) << name << " is not the model's own buffer";
      }
    }
    EXPECT_EQ(buffers, model.named_buffers().size());
    ASSERT_EQ(names.size(), order.size());
    for (size_t i = 0; i < names.size(); ++i) EXPECT_EQ(names[i], order[i].first) << "parameter " << i;
    model.zero_grad();
    Tensor h = x;
    for (auto& st : stages) h = st->forward(h);
    EXPECT_EQ(stage_check_max_diff(h, full), 0.0);
    sum(h).backward();
    for (auto& [name, p] : model.named_parameters()) EXPECT_EQ(stage_check_max_diff(p.grad(), want.at(name)), 0.0) << name;
  }
}

}  // namespace hpdl::nn
