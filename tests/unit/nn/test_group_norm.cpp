// nn::GroupNorm against PyTorch 1.13's group_norm (group_norm_torch_check.py
// beside this file): outputs, first derivatives and the derivatives of a
// create_graph gradient, over one group, several, one channel per group
// (instance norm), 3-D and 2-D inputs and float32; the layer's parameters,
// state dict names and the errors bad arguments get.
#include <gtest/gtest.h>

#include <map>
#include <string>

#include "hpdl/autograd/engine.h"
#include "hpdl/core/random.h"
#include "hpdl/nn/layers.h"
#include "hpdl/ops/ops.h"
#include "tests/unit/nn/torch_check.h"
#include "tests/unit/test_util.h"

namespace hpdl {
namespace {

using test::error_of;

using test::contains;

TEST(GroupNormLayer, MatchesTorch) {
  struct Case {
    Shape shape;
    int64_t groups;
    double eps;
    DType dtype;
  };
  const std::vector<Case> cases = {{{2, 6, 3, 4}, 1, 1e-5, DType::f64}, {{2, 6, 3, 4}, 2, 1e-5, DType::f64},
                                   {{2, 6, 3, 4}, 6, 1e-3, DType::f64}, {{3, 4, 5}, 2, 1e-5, DType::f64},
                                   {{4, 6}, 3, 1e-5, DType::f64},       {{2, 6, 3, 4}, 3, 1e-5, DType::f32}};
  std::map<std::string, Tensor> tensors;
  std::map<std::string, std::string> meta;
  std::string names;
  Generator gen(42);
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    const std::string k = std::to_string(i);
    names += (names.empty() ? "" : ",") + k;
    meta[k + ".groups"] = std::to_string(c.groups);
    meta[k + ".eps"] = fmt::format("{:.17g}", c.eps);
    nn::GroupNorm gn(c.groups, c.shape[1], c.eps);
    gn.to(c.dtype);
    {
      NoGradGuard ng;
      gn.weight.copy_(Tensor::rand({c.shape[1]}, gen, 0.5, 1.5, c.dtype));
      gn.bias.copy_(Tensor::rand({c.shape[1]}, gen, -0.5, 0.5, c.dtype));
    }
    Tensor x = Tensor::randn(c.shape, gen, 0.3, 1.5, c.dtype).set_requires_grad();
    Tensor w_out = Tensor::rand(c.shape, gen, -1, 1, c.dtype), w2 = Tensor::rand(c.shape, gen, -1, 1, c.dtype);
    Tensor y = gn(x);
    std::vector<Tensor> d = grad({sum(mul(y, w_out))}, {x, gn.weight, gn.bias}, {}, true, true);
    std::vector<Tensor> dd = grad({sum(mul(d[0], w2))}, {x, gn.weight, gn.bias}, {}, false, false, true);
    if (!dd[2].defined()) dd[2] = Tensor::zeros({c.shape[1]}, c.dtype);
    tensors[k + ".x"] = x.detach();
    tensors[k + ".weight"] = gn.weight.detach();
    tensors[k + ".bias"] = gn.bias.detach();
    tensors[k + ".w_out"] = w_out;
    tensors[k + ".w2"] = w2;
    tensors["hpdl." + k + ".y"] = y.detach();
    tensors["hpdl." + k + ".dx"] = d[0].detach();
    tensors["hpdl." + k + ".dweight"] = d[1].detach();
    tensors["hpdl." + k + ".dbias"] = d[2].detach();
    tensors["hpdl." + k + ".ggx"] = dd[0];
    tensors["hpdl." + k + ".ggweight"] = dd[1];
    tensors["hpdl." + k + ".ggbias"] = dd[2];
  }
  meta["cases"] = names;
  const test::TorchCheck c = test::run_torch_check("group_norm_torch_check.py", tensors, meta);
  if (c.torch_missing())
    GTEST_SKIP() << "/usr/bin/python3 cannot import torch (install python3-torch to run this interop check)";
  EXPECT_EQ(c.rc, 0) << c.command << "\n" << c.report;
}

TEST(GroupNormLayer, ParametersAndErrors) {
  nn::GroupNorm gn(2, 4);
  const auto sd = gn.state_dict();
  EXPECT_EQ(sd.size(), 2u);
  EXPECT_TRUE(sd.count("weight") && sd.count("bias"));
  EXPECT_EQ(gn.parameters().size(), 2u);
  nn::GroupNorm plain(2, 4, 1e-5, false);
  EXPECT_EQ(plain.parameters().size(), 0u);
  EXPECT_EQ(plain(Tensor::ones({1, 4, 2})).shape(), (Shape{1, 4, 2}));
  std::string m = error_of([] { nn::GroupNorm bad(3, 4); });
  EXPECT_TRUE(contains(m, "GroupNorm") && contains(m, "num_groups = 3")) << m;
  m = error_of([] { nn::GroupNorm bad(2, 4, 0.0); });
  EXPECT_TRUE(contains(m, "GroupNorm") && contains(m, "eps")) << m;
  m = error_of([&] { gn(Tensor::ones({2, 6, 3})); });
  EXPECT_TRUE(contains(m, "GroupNorm(2, 4)") && contains(m, "[2, 6, 3]")) << m;
}

}  // namespace
}  // namespace hpdl
