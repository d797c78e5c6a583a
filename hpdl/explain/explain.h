// AI forensics: which parts of an input made a trained classifier decide as it
// did. Four attribution methods, each explaining one class score per sample
// (the target class's logit, before softmax):
//
//   saliency             |d score / d x|, the largest over channels (Simonyan
//                        et al. 2014). One backward pass.
//   integrated gradients (x - x0) * the mean of d score / d x along the straight
//                        path from a baseline x0 to x (Sundararajan et al.
//                        2017), by the midpoint rule. Its attributions add up
//                        to score(x) - score(x0) ("completeness"); the gap is
//                        returned so a user can see whether `steps` sufficed.
//   Grad-CAM             ReLU(sum_k a_k A_k), where A are a convolutional
//                        layer's activations and a_k the spatial mean of
//                        d score / d A_k (Selvaraju et al. 2017), upsampled
//                        bilinearly to the input's size.
//   occlusion            how much the score drops when a window of the input is
//                        replaced by a fill value (Zeiler and Fergus 2014),
//                        averaged over the windows that cover each pixel.
//
// The model is any differentiable function from an input batch [N, C, H, W]
// to logits [N, classes] (a Module, or a Module behind the input
// normalization, so that attributions are in pixel space). A regression model's
// outputs [N, k] work the same way: a target is then the output index to
// explain (deletion_curve alone assumes classes: it takes a softmax). Maps are float32
// CPU tensors [N, H, W] at the input's resolution. Rendering as heatmap images
// is at the end of this header.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "hpdl/core/tensor.h"
#include "hpdl/data/readers.h"
#include "hpdl/nn/layers.h"

namespace hpdl::explain {

using Model = std::function<Tensor(const Tensor&)>;

// The score each sample's explanation is about: logits[n, targets[n]]. An
// empty `targets` means each sample's predicted class (argmax of the logits).
// Checks that the logits are [N, classes] and each target is in range, naming
// the sample. Returns the resolved classes.
std::vector<int64_t> resolve_targets(const Tensor& logits, const std::vector<int64_t>& targets);

// d score / d x for every element: [N, C, H, W] (any input shape, in fact).
Tensor input_gradient(const Model& model, const Tensor& x, const std::vector<int64_t>& targets);

// Saliency map [N, H, W]: max over channels of |d score / d x|.
Tensor saliency(const Model& model, const Tensor& x, const std::vector<int64_t>& targets);

struct IntegratedGradients {
  Tensor attributions;             // [N, C, H, W], same shape as x
  std::vector<double> score_gap;   // per sample: score(x) - score(x0)
  std::vector<double> sum;         // per sample: the attributions' sum (ideally == score_gap)
  Tensor map() const;              // [N, H, W]: the sum over channels (signed)
};
// `baseline` has x's shape, or one sample's shape [1, C, H, W] for all; an
// undefined baseline is all zeros (a black image in pixel space). The path
// points of up to `max_batch` model inputs go through the model at once.
IntegratedGradients integrated_gradients(const Model& model, const Tensor& x, const std::vector<int64_t>& targets,
                                         int64_t steps = 32, const Tensor& baseline = {}, int64_t max_batch = 256);

// Grad-CAM needs the model cut in two at a layer with spatial output:
// logits = head(features(x)), features(x) of shape [N, K, h, w].
struct Split {
  Model features, head;
  std::string layer;  // the layer's name, for messages and file names
};
// Cuts a Sequential after its top-level child `layer` (a child's name, e.g.
// "3"); an empty `layer` takes the last child whose output is 4-D with more
// than one spatial position, found by running `sample` (one input, [1, C, H,
// W]). `pre` (if set) runs before the model (e.g. the input normalization).
// Errors name the layer and list the candidates with their output shapes.
Split split_sequential(nn::Sequential& model, const Tensor& sample, const std::string& layer = "",
                       const Model& pre = {});
// Grad-CAM map [N, H, W] at (H, W) = x's spatial size, not normalized.
Tensor grad_cam(const Split& split, const Tensor& x, const std::vector<int64_t>& targets);

// Occlusion map [N, H, W]: a `window` x `window` square (all channels) is set
// to `fill` at every `stride`-th position (the last window is moved in to touch
// the far edge, so every pixel is covered); each pixel gets the mean of
// score(x) - score(occluded) over the windows covering it.
Tensor occlusion(const Model& model, const Tensor& x, const std::vector<int64_t>& targets, int64_t window = 4,
                 int64_t stride = 2, double fill = 0.0, int64_t max_batch = 256);

// Deletion curve (Petsiuk et al. 2018), a check of how faithful a map is:
// each sample's pixels are set to `fill` (all channels) in the map's order,
// largest value first, and the target class's softmax probability is taken
// after removing fractions 0, 1/points, ..., 1 of them. A map that finds what
// the model uses makes the probability fall fast; the area under the curve
// (trapezoids, mean over samples) is one number to compare methods by, and
// with a random map (`random_map`) as the baseline.
struct DeletionCurve {
  std::vector<double> fractions;    // 0 ... 1
  std::vector<double> probability;  // mean over samples, one per fraction
  double area = 0;                  // under the curve, in [0, 1]
};
DeletionCurve deletion_curve(const Model& model, const Tensor& x, const Tensor& maps,
                             const std::vector<int64_t>& targets, int64_t points = 10, double fill = 0.0,
                             int64_t max_batch = 256);
// Uniform random maps [N, H, W] from a seed: the order a faithful method must beat.
Tensor random_map(int64_t n, int64_t height, int64_t width, uint64_t seed);

// Bilinear resize of maps [N, h, w] -> [N, H, W] with half-pixel centres (the
// convention of align_corners = false).
Tensor resize_bilinear(const Tensor& maps, int64_t height, int64_t width);

// ---- heatmap images ----
// Renders one sample side by side: on the left the input ([C, H, W], C = 1 or
// 3, values in [0, 1]), on the right the map ([H, W]) blended over a gray copy
// of it; each pixel becomes a block scale wide and scale_y high (0: scale,
// square). A signed map is red where
// positive and blue where negative, more opaque the larger |value| (relative
// to the largest); an unsigned one a black-red-yellow-white ramp from 0 to its
// maximum.
data::Image render_heatmap(const Tensor& image, const Tensor& map, bool signed_map, int64_t scale = 1,
                          int64_t scale_y = 0);

}  // namespace hpdl::explain
