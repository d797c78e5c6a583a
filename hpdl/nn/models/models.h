// The model zoo: classic networks sized for the inputs hpdl trains on
// (Fashion-MNIST 1x28x28, CIFAR 3x32x32, ImageNet-style 3x224x224), built from
// a ModelConfig and a seed so every rank builds identical weights.
// make_model(name, config) is what the trainer and the CLI call.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "hpdl/nn/layers.h"
#include "hpdl/nn/rnn.h"

namespace hpdl::nn::models {

struct ModelConfig {
  int64_t in_channels = 1;
  int64_t height = 28, width = 28;
  int64_t num_classes = 10;
  std::vector<int64_t> hidden = {256, 128};  // mlp only
  std::string activation = "relu";           // mlp only (see make_activation)
  // Dropout probability; < 0 means the model's default (mlp: none, after each
  // hidden activation; alexnet_bn, vgg*_bn: 0.5 in the classifier).
  double dropout = -1.0;
  uint64_t seed = 0;                          // weight init (and dropout masks)
  // vit only (see nn/models/vit.h): patch size, embedding width, encoder
  // layers, attention heads, feed-forward width / dim.
  int64_t patch_size = 4, dim = 64, depth = 4, heads = 4;
  double mlp_ratio = 2.0;
};

// Flatten -> [Linear -> act (-> Dropout)] per hidden size -> Linear(classes).
// Input [N, C, H, W] or [N, in_features]; output [N, classes].
ModulePtr mlp(int64_t in_features, const std::vector<int64_t>& hidden, int64_t num_classes,
              const std::string& activation = "relu", double dropout = 0.0, uint64_t seed = 0);

// LeNet-5 (LeCun et al. 1998) in its common modern form: ReLU and max pooling
// instead of the original scaled tanh and trainable subsampling.
// conv5x5(6, pad 2) -> ReLU -> maxpool2 -> conv5x5(16) -> ReLU -> maxpool2 ->
// fc120 -> ReLU -> fc84 -> ReLU -> fc(classes). 1x28x28: 61,706 parameters.
ModulePtr lenet5(int64_t in_channels, int64_t num_classes, int64_t height = 28, int64_t width = 28,
                 uint64_t seed = 0);

// CIFAR ResNet-20 (He et al. 2016, section 4.2): conv3x3(16)+BN+ReLU, three
// stages of 3 BasicBlocks with 16/32/64 channels (stride 2 at the start of
// stages 2 and 3, projection shortcuts there), global average pooling, fc.
// Works for any input of at least 4x4 (e.g. 1x28x28). 3 channels, 10 classes:
// 272,474 parameters (the paper's 0.27M, which uses parameter-free shortcuts).
ModulePtr resnet20(int64_t in_channels, int64_t num_classes, uint64_t seed = 0);

// ResNet-18 (He et al. 2016, table 1): four stages of 2 BasicBlocks with
// 64/128/256/512 channels. For inputs larger than 64x64 the ImageNet stem
// (conv7x7 stride 2 + maxpool3x3 stride 2); for small inputs (<= 64) a
// conv3x3 stride 1 stem without pooling, the usual CIFAR adaptation.
// 3x224x224, 1000 classes: 11,689,512 parameters (as torchvision).
ModulePtr resnet18(int64_t in_channels, int64_t num_classes, int64_t height = 224, int64_t width = 224,
                   uint64_t seed = 0);

// A small AlexNet (Krizhevsky et al. 2012) with batch normalization for 28x28
// and 32x32 inputs: five conv3x3 layers (64, 128, 256, 256, 128 channels,
// each conv+BN+ReLU, max pooling after the 1st, 2nd and 5th), then
// fc512+BN+ReLU(+Dropout) twice and fc(classes).
ModulePtr alexnet_bn(int64_t in_channels, int64_t num_classes, int64_t height = 32, int64_t width = 32,
                     double dropout = 0.5, uint64_t seed = 0);

// VGG with batch normalization (Simonyan and Zisserman 2015, configurations
// A, B, D, E for depth 11, 13, 16, 19): conv3x3+BN+ReLU stacks of 64 to 512
// channels with max pooling between them. Inputs larger than 64x64 get the
// ImageNet classifier (7x7x512 -> fc4096 -> fc4096 -> classes, with dropout;
// vgg16_bn at 3x224x224, 1000 classes: 138,365,992 parameters, as
// torchvision); small inputs (CIFAR, Fashion-MNIST) skip the poolings that
// would go below 1x1 and end with global average pooling and one fc.
ModulePtr vgg_bn(int64_t depth, int64_t in_channels, int64_t num_classes, int64_t height = 224, int64_t width = 224,
                 double dropout = 0.5, uint64_t seed = 0);

// A recurrent sequence classifier for images read row by row: x [N, C, H, W]
// becomes H timesteps of C*W features (or x [N, T, F] is used as it is), a
// stack of LSTM (cell = "lstm") or GRU ("gru") layers of `hidden` units runs
// over them, and the last layer's final hidden state goes through a Linear to
// the classes. Fashion-MNIST rows: T = 28, 28 features. Submodules "rnn" and "fc".
ModulePtr rnn_classifier(const std::string& cell, int64_t in_features, int64_t hidden, int64_t num_layers,
                         int64_t num_classes, uint64_t seed = 0);

// The module rnn_classifier builds (public so the ONNX exporter can read its parts).
class RnnClassifier : public Module {
 public:
  RnnClassifier(const std::string& cell, int64_t in_features, int64_t hidden, int64_t num_layers, int64_t classes,
                Generator& gen);
  Tensor forward(const Tensor& x) override;
  std::string type_name() const override { return "RnnClassifier"; }
  std::shared_ptr<RNNBase> rnn;  // batch_first, unidirectional
  std::shared_ptr<Linear> fc;
  int64_t in_features, num_layers;
};

// The names make_model knows, in order.
std::vector<std::string> model_names();
// Builds a model by name ("mlp", "lenet5", "resnet20", "resnet18",
// "resnet50" (nn/models/resnet50.h), "alexnet_bn", "vgg11_bn", "vgg16_bn", "lstm", "gru", "vit"
// (nn/models/vit.h); for the
// recurrent ones `hidden` gives one size per layer, all equal, e.g. [128]); throws for an unknown name listing the known ones, and for a
// config the model cannot take (naming the field).
ModulePtr make_model(const std::string& name, const ModelConfig& config);

// Activation checkpointing for a zoo model (Sequential::set_checkpoint_chunk):
// every Sequential whose children are all residual blocks (BasicBlock,
// Bottleneck: resnet18/20/50) or encoder layers (TransformerEncoderLayer: vit)
// checkpoints each child; a model that is a flat Sequential of layers (mlp,
// lenet5, alexnet_bn, vgg*_bn, custom) runs as ceil(n / k) segments of
// k = ceil(sqrt(n)) layers (Chen et al. 2016: sqrt(n) segments of sqrt(n)).
// Returns a one-line description ("9 segments: each residual block").
// Throws for a model with neither (lstm, gru: one fused recurrent layer).
std::string enable_activation_checkpointing(Module& model);

}  // namespace hpdl::nn::models
