// Activation checkpointing (Chen et al. 2016, "Training Deep Nets with
// Sublinear Memory Cost"): a segment of the forward pass runs without
// recording a graph, so none of its intermediate activations are kept; its
// backward runs the segment again with grad mode on and backpropagates
// through that recomputed graph. Memory for activations drops to the
// segment boundaries plus one segment's worth, for about one extra forward.
// It lives in ops/, not autograd/, because the recompute must restore state
// owned by the ops layer (the autocast dtype, dropout's generators).
#pragma once

#include <functional>
#include <vector>

#include "hpdl/core/random.h"
#include "hpdl/core/tensor.h"

namespace hpdl {

using CheckpointFn = std::function<std::vector<Tensor>(const std::vector<Tensor>&)>;

// Runs fn(inputs) and returns its outputs; with grad mode on, without
// recording fn's graph. One node is recorded instead (always, even when no
// input requires grad: parameters used inside fn may). Its backward
//   1. restores the autocast dtype of the forward and the state every
//      Generator drawn by dropout() inside fn had, so dropout draws the same
//      masks (those generators must outlive the backward);
//   2. re-runs fn with grad mode on over detached copies of the inputs, with
//      checkpoint_recomputing() true (BatchNorm then neither updates its
//      running statistics nor counts the batch a second time);
//   3. backpropagates the incoming gradients through the recomputed graph:
//      parameters used inside fn accumulate into their .grad as in a plain
//      backward (their post-accumulate hooks fire, so DataParallel's buckets
//      launch), and the inputs' gradients flow on to the outer graph.
// Gradients equal the uncheckpointed graph's bit for bit when fn is
// deterministic (same kernels on the same values). Then the generators are
// put back where they were before the recompute.
// Under grad(...) (capture mode) only the inputs' gradients are computed; a
// grad() with respect to a tensor used inside fn (not passed as an input)
// throws, as does create_graph (the recomputed graph is first-order only).
// Every output must be defined; an output that is one of the inputs is
// returned as a new handle (sharing its data). With grad mode off, this is
// fn(inputs).
std::vector<Tensor> checkpoint(const CheckpointFn& fn, const std::vector<Tensor>& inputs);

// As above; `after_backward` (may be empty) runs on the backward thread once
// the node's backward is done with the recomputed segment: after its nested
// backward, also when there was nothing to backpropagate or it threw. ZeRO-3
// (dist::Zero3) releases a unit's gathered parameters there. It does not run
// in the forward, nor with grad mode off.
std::vector<Tensor> checkpoint(const CheckpointFn& fn, const std::vector<Tensor>& inputs,
                               std::function<void()> after_backward);

// The one-tensor form: checkpoint(fn, {x})[0].
Tensor checkpoint(const std::function<Tensor(const Tensor&)>& fn, const Tensor& x);

// True on this thread while a checkpoint's backward re-runs its segment.
// Layers with side effects in the forward (BatchNorm's running statistics)
// skip them then, so they happen once per step.
bool checkpoint_recomputing();

// Called by dropout() before it draws from `gen`: inside a checkpointed
// forward, the first call per generator saves its state for the recompute.
// A no-op elsewhere.
void checkpoint_note_generator(Generator& gen);

}  // namespace hpdl
