// Derivatives of a pointwise field u(x) with respect to its input coordinates,
// taken through higher-order autograd (hpdl::grad with create_graph), so a
// loss built from them (a PDE residual) backpropagates into the weights.
//
// Conventions: x is [N, D] (N points, D coordinates, e.g. (x, y) or (x, t))
// and requires grad; u is [N] or [N, 1], u_i computed from row x_i only. Then
// d(sum_i u_i)/dx is row i's gradient of u_i, which is what these helpers use:
// a network that mixes rows (batch norm, attention over points) breaks that
// assumption and gives wrong derivatives without any error.
#pragma once

#include <cstdint>

#include "hpdl/core/tensor.h"

namespace hpdl::physics {

// du/dx as [N, D]: row i is the gradient of u_i with respect to x_i.
// The result is differentiable (create_graph) unless create_graph is false.
// Throws hpdl::Error when x is not a 2-D floating tensor that requires grad,
// u is not [N] or [N, 1] for x's N, or u does not depend on x.
Tensor gradient(const Tensor& u, const Tensor& x, bool create_graph = true);

// du/dx_axis in u's shape. `axis` in [0, D); throws naming it otherwise.
Tensor partial(const Tensor& u, const Tensor& x, int64_t axis, bool create_graph = true);

// d2u/(dx_a dx_b) in u's shape (a == b gives a pure second derivative).
// The mixed derivative is taken as d/dx_b of du/dx_a. A field whose first
// derivative along a does not depend on x at all (u linear in x_a) has a zero
// second derivative, returned as zeros.
Tensor partial2(const Tensor& u, const Tensor& x, int64_t a, int64_t b, bool create_graph = true);

// The Laplacian sum_d d2u/dx_d^2 in u's shape: one first-order pass and D
// second-order passes. Pass `dx` (gradient(u, x) with create_graph, the
// default) to reuse a first derivative already computed for another term of
// the residual; a dx taken without create_graph has no graph to differentiate
// and gives a zero Laplacian.
Tensor laplacian(const Tensor& u, const Tensor& x, const Tensor& dx = Tensor(), bool create_graph = true);

}  // namespace hpdl::physics
