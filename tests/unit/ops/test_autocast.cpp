// Autocast scope semantics and mixed-dtype promotion, on the CPU (the GPU
// behaviour is tested in tests/unit/cuda/test_cuda_training.cpp).
#include <gtest/gtest.h>

#include "hpdl/backend/cpu/onednn.h"
#include "hpdl/ops/ops.h"

namespace hpdl {
namespace {

TEST(Autocast, ScopesNestAndRestore) {
  EXPECT_TRUE(autocast_dtype() == DType::f32);
  {
    AutocastScope on(DType::bf16);
    EXPECT_TRUE(autocast_dtype() == DType::bf16);
    {
      AutocastScope off(DType::f32);
      EXPECT_TRUE(autocast_dtype() == DType::f32);
    }
    EXPECT_TRUE(autocast_dtype() == DType::bf16);
    {
      AutocastScope disabled(DType::f32, /*enabled=*/false);  // a disabled scope changes nothing
      EXPECT_TRUE(autocast_dtype() == DType::bf16);
    }
  }
  EXPECT_TRUE(autocast_dtype() == DType::f32);
  EXPECT_THROW(AutocastScope(DType::f64), Error);
}

// CPU tensors are not cast (their kernels round operands internally, tests/unit/ops/test_cpu_bf16.cpp).
TEST(Autocast, LeavesCpuTensorsInFloat32) {
  if (!cpu::onednn_bf16_supported()) GTEST_SKIP() << "no bfloat16 kernels on this CPU (test_cpu_bf16.cpp checks the refusal)";
  AutocastScope on(DType::bf16);
  Tensor x = Tensor::ones({2, 3}), w = Tensor::ones({4, 3});
  EXPECT_FALSE(autocast_applies(x));
  Tensor y = linear(x, w, Tensor());
  EXPECT_TRUE(y.dtype() == DType::f32);
  EXPECT_DOUBLE_EQ(y.to_vector<double>()[0], 3.0);
}

// A bfloat16 tensor meeting a float32 one computes in float32; each operand's
// gradient comes back in its own dtype through the differentiable casts.
TEST(Autocast, MixedDtypesPromoteWithGradientsInEachDtype) {
  Tensor a = Tensor::from_vector<float>({1.5f, -2.0f, 3.25f}, {3}).to(DType::bf16).set_requires_grad();
  Tensor b = Tensor::from_vector<float>({0.5f, 4.0f, -1.0f}, {3}).set_requires_grad();
  Tensor y = mul(a, b);
  EXPECT_TRUE(y.dtype() == DType::f32);
  EXPECT_EQ(y.to_vector<double>(), (std::vector<double>{0.75, -8.0, -3.25}));
  sum(y).backward();
  ASSERT_TRUE(a.grad().defined() && b.grad().defined());
  EXPECT_TRUE(a.grad().dtype() == DType::bf16);
  EXPECT_TRUE(b.grad().dtype() == DType::f32);
  EXPECT_EQ(a.grad().to_vector<double>(), (std::vector<double>{0.5, 4.0, -1.0}));
  EXPECT_EQ(b.grad().to_vector<double>(), (std::vector<double>{1.5, -2.0, 3.25}));
}

TEST(Autocast, Bfloat16ComputeOnTheCpuIsAnErrorNamingTheOp) {
  Tensor a = Tensor::ones({2, 2}).to(DType::bf16);
  try {
    relu(a);
    FAIL() << "relu on a CPU bfloat16 tensor did not throw";
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("relu"), std::string::npos) << m;
    EXPECT_NE(m.find("bfloat16"), std::string::npos) << m;
    EXPECT_NE(m.find("cpu"), std::string::npos) << m;
  }
}

// Channels-last: logically NCHW, NHWC in memory; size-1 dims do not decide.
TEST(ChannelsLast, LayoutAndValuesSurviveACopy) {
  Tensor x = Tensor::arange(2 * 3 * 4 * 5).reshape({2, 3, 4, 5});
  Tensor c = Tensor::empty_channels_last({2, 3, 4, 5});
  EXPECT_EQ(c.strides(), (Strides{60, 1, 15, 3}));
  EXPECT_TRUE(c.is_channels_last());
  EXPECT_FALSE(c.is_contiguous());
  EXPECT_FALSE(x.is_channels_last());
  c.copy_(x);
  EXPECT_EQ(c.to_vector<double>(), x.to_vector<double>());  // same logical values
  EXPECT_TRUE(Tensor::empty_channels_last({4, 1, 3, 3}).is_contiguous());  // one channel: both layouts
  EXPECT_TRUE(Tensor::empty({4, 7, 1, 1}).is_channels_last());
  EXPECT_THROW(Tensor::empty_channels_last({2, 3, 4}), Error);
  // On the CPU ops give row-major outputs for channels-last inputs (the CPU backends read row-major).
  Tensor y = relu(c);
  EXPECT_TRUE(y.is_contiguous());
  EXPECT_EQ(y.to_vector<double>(), x.to_vector<double>());
}

}  // namespace
}  // namespace hpdl
