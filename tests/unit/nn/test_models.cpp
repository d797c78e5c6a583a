// Model zoo: exact parameter counts (computed layer by layer in the comments)
// and output shapes for the input sizes hpdl trains on; make_model errors.
#include <gtest/gtest.h>

#include "hpdl/autograd/node.h"
#include "hpdl/nn/models/models.h"
#include "tests/unit/nn/stage_check.h"

namespace hpdl::nn::models {
namespace {

TEST(Models, ParameterCounts) {
  // mlp 2-64-64-2: (2*64+64) + (64*64+64) + (64*2+2) = 192 + 4160 + 130
  EXPECT_EQ(mlp(2, {64, 64}, 2)->num_parameters(), 4482);
  // lenet5 1x28x28: conv 6*1*25+6 = 156, conv 16*6*25+16 = 2416, fc 400*120+120 = 48120,
  // fc 120*84+84 = 10164, fc 84*10+10 = 850
  EXPECT_EQ(lenet5(1, 10)->num_parameters(), 156 + 2416 + 48120 + 10164 + 850);
  // resnet20, 3 channels: stem 3*16*9 + BN 32 = 464;
  //   stage 1: 3 blocks * (2 * 16*16*9 + 2 * 32) = 14016
  //   stage 2: (16*32*9 + 32*32*9 + 2*64 + proj 16*32 + 64) + 2 * (2*32*32*9 + 2*64) = 14528 + 37120
  //   stage 3: (32*64*9 + 64*64*9 + 2*128 + proj 32*64 + 128) + 2 * (2*64*64*9 + 2*128) = 57728 + 147968
  //   fc 64*10 + 10 = 650   -> 272,474
  EXPECT_EQ(resnet20(3, 10)->num_parameters(), 464 + 14016 + 14528 + 37120 + 57728 + 147968 + 650);
  EXPECT_EQ(resnet20(3, 10)->num_parameters(), 272474);
  EXPECT_EQ(resnet20(1, 10)->num_parameters(), 272474 - 2 * 16 * 9);
  // resnet18 at 3x224x224 with 1000 classes has torchvision's count.
  EXPECT_EQ(resnet18(3, 1000)->num_parameters(), 11689512);
  // alexnet_bn 1x28x28: convs 576 + 73728 + 294912 + 589824 + 294912, BN2d 2*(64+128+256+256+128),
  //   fc 1152*512 + 512*512 (no bias, BN1d 2*512 each), fc 512*10+10
  EXPECT_EQ(alexnet_bn(1, 10, 28, 28)->num_parameters(), 2114762);
  // vgg11_bn 1x28x28 (pools 28 -> 14 -> 7 -> 3 -> 1; the fifth is skipped): convs with bias
  //   1*64*9+64 = 640, 64*128*9+128 = 73856, 128*256*9+256 = 295168, 256*256*9+256 = 590080,
  //   256*512*9+512 = 1180160, 3 x (512*512*9+512) = 3 x 2359808; BN 2*(64+128+256+256+4*512) = 5504; fc 5130
  EXPECT_EQ(vgg_bn(11, 1, 10, 28, 28)->num_parameters(),
            640 + 73856 + 295168 + 590080 + 1180160 + 3 * 2359808 + 5504 + 5130);
  // vgg16_bn at 3x224x224 with 1000 classes has torchvision's count.
  EXPECT_EQ(vgg_bn(16, 3, 1000)->num_parameters(), 138365992);
}

TEST(Models, FactoryAndErrors) {
  ModelConfig c;
  c.hidden = {32};
  EXPECT_EQ(make_model("mlp", c)->num_parameters(), 784 * 32 + 32 + 32 * 10 + 10);
  try {
    make_model("vgg99", c);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("vgg99"), std::string::npos);
    EXPECT_NE(e.message().find("resnet20"), std::string::npos);
  }
  c.height = 4;
  c.width = 4;
  EXPECT_THROW(make_model("lenet5", c), Error);
  EXPECT_THROW(make_model("vgg16_bn", c), Error);
  EXPECT_THROW(vgg_bn(12, 3, 10), Error);
  // Same seed, same weights.
  auto a = make_model("resnet20", ModelConfig{}), b = make_model("resnet20", ModelConfig{});
  EXPECT_EQ(a->state_dict().at("3.0.conv1.weight").to_vector<float>(),
            b->state_dict().at("3.0.conv1.weight").to_vector<float>());
}

TEST(Models, OutputShapes) {
  Generator gen(5);
  Tensor mnist = Tensor::randn({2, 1, 28, 28}, gen);
  Tensor cifar = Tensor::randn({2, 3, 32, 32}, gen);
  for (const char* name : {"mlp", "lenet5", "resnet20", "alexnet_bn", "vgg11_bn"}) {
    ModelConfig c;
    auto m = make_model(name, c);
    EXPECT_EQ(m->forward(mnist).shape(), (Shape{2, 10})) << name;
  }
  ModelConfig c3{.in_channels = 3, .height = 32, .width = 32, .num_classes = 100};
  for (const char* name : {"resnet20", "resnet18", "alexnet_bn", "lenet5", "vgg11_bn"}) {
    auto m = make_model(name, c3);
    m->eval();
    NoGradGuard ng;
    EXPECT_EQ(m->forward(cifar).shape(), (Shape{2, 100})) << name;
  }
}

// A Sequential's pipeline layers are its leaves: nested Sequentials (resnet20's stages of
// blocks) opened up, so a stage can end inside one; any cut composes to the model exactly and
// keeps its names ("4.1.conv1.weight" in a nested NamedSequential) and order, buffers included.
TEST(Models, SequentialStagesOpenNestedSequentials) {
  auto m = std::dynamic_pointer_cast<Sequential>(resnet20(1, 10, 5));
  ASSERT_NE(m, nullptr);
  const auto leaves = m->leaves();
  // stem conv, bn, relu; 3 stages of 3 blocks; pool, flatten, fc
  ASSERT_EQ(leaves.size(), 15u);
  EXPECT_EQ(m->num_layers(), 15);
  EXPECT_EQ(leaves[3].first, "3.0");
  EXPECT_EQ(leaves[11].first, "5.2");
  int64_t counted = 0;
  for (int64_t i = 0; i < 15; ++i) counted += m->layer_parameters(i);
  EXPECT_EQ(counted, m->num_parameters());
  m->eval();  // batch norm by its running statistics: the same in every cut
  Generator gen(2);
  expect_stages_compose(*m, Tensor::randn({2, 1, 8, 8}, gen), {{0, 15}, {0, 4, 15}, {0, 5, 8, 13, 15}, {0, 3, 12, 14, 15}});
  auto stage = m->make_stage(4, 8);  // 3.1, 3.2, 4.0, 4.1
  std::vector<std::string> kids;
  for (auto& [name, _] : stage->children()) kids.push_back(name);
  EXPECT_EQ(kids, (std::vector<std::string>{"3", "4"}));
  EXPECT_TRUE(stage->state_dict().count("3.1.conv1.weight"));
  EXPECT_FALSE(stage->state_dict().count("3.0.conv1.weight"));
}

}  // namespace
}  // namespace hpdl::nn::models
