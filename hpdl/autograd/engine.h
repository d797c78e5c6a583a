// The backward engine: runs graph nodes in reverse creation order from the
// given roots, summing the gradients that reach each node before applying it.
#pragma once

#include <vector>

#include "hpdl/autograd/node.h"

namespace hpdl {

// Backpropagates `grad_outputs` (one per root; undefined means ones for a
// scalar root) into the leaves' .grad. Frees the graph unless retain_graph.
void run_backward(const std::vector<Tensor>& roots, const std::vector<Tensor>& grad_outputs, bool retain_graph,
                  bool create_graph);

// d(sum of outputs · grad_outputs)/d(inputs), returned rather than accumulated.
// With create_graph the results are themselves differentiable (higher order).
// An input the outputs do not depend on gets an undefined Tensor when
// allow_unused is set; otherwise the call throws naming the input's index.
std::vector<Tensor> grad(const std::vector<Tensor>& outputs, const std::vector<Tensor>& inputs,
                         const std::vector<Tensor>& grad_outputs = {}, bool retain_graph = false,
                         bool create_graph = false, bool allow_unused = false);

// The gradient edges the innermost grad() now running on this thread
// captures; null outside the engine and under backward(). A node whose
// backward runs a nested backward (checkpoint) needs it to tell the two apart:
// grad() must leave every leaf's .grad alone.
const std::vector<Edge>* current_capture_edges();

}  // namespace hpdl
