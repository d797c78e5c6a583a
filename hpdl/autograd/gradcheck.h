// Finite-difference gradient checking. `gradcheck` compares the analytic
// Jacobian-vector products of f against central differences
// (f(x + h e_i) - f(x - h e_i)) / 2h, input by input, element by element,
// in whatever dtype the inputs have (use float64). `gradgradcheck` does the
// same for the first derivative itself (second derivatives through create_graph).
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "hpdl/core/tensor.h"

namespace hpdl {

struct GradcheckResult {
  bool ok = true;
  double max_abs_error = 0;
  std::string message;  // which input and element failed, analytic vs numeric
};

// f maps inputs to one output tensor. The check uses a random projection of the
// output (fixed seed) so each input element costs two evaluations of f.
GradcheckResult gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& f, std::vector<Tensor> inputs,
                          double eps = 1e-6, double atol = 1e-5, double rtol = 1e-3);

// Second derivatives: with v a fixed random tensor shaped like f's output,
// gradchecks (inputs, v) -> d<f(inputs), v>/d(inputs that require grad),
// computed with create_graph and flattened into one vector. v is an input
// too, so the check covers the backward's derivative in the incoming gradient
// as well as in the inputs. The inputs that require grad must be contiguous.
GradcheckResult gradgradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& f, std::vector<Tensor> inputs,
                              double eps = 1e-6, double atol = 1e-5, double rtol = 1e-3);

}  // namespace hpdl
