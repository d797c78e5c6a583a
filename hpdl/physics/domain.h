// Domains and collocation points for physics-informed training: an
// axis-aligned box [low_0, high_0] x ... x [low_{D-1}, high_{D-1}], points
// drawn uniformly inside it or on its faces, and regular grids for testing.
// Draws come from an hpdl::Generator, so the same seed gives the same points.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "hpdl/core/random.h"
#include "hpdl/core/tensor.h"

namespace hpdl::physics {

// Face f of a D-dimensional box is the set where coordinate f / 2 equals
// low (f even) or high (f odd): faces 0, 1 are x_0 = low_0 and x_0 = high_0.
struct Box {
  std::vector<double> low, high;
  int64_t dims() const { return static_cast<int64_t>(low.size()); }
  // Throws hpdl::Error unless low and high have the same, non-zero length
  // and low[d] < high[d] for every d (an empty or degenerate box).
  void check() const;
  std::string str() const;  // "[0, 1] x [0, 2]"
};

// n points uniform in the box, [n, D]; n > 0.
Tensor sample_interior(const Box& box, int64_t n, Generator& gen, DType dtype = DType::f32);

// n points on the listed faces (all 2D faces when `faces` is empty), [n, D].
// Points are shared among the faces in proportion to their (D-1)-volume
// (each face gets at least one, when n allows), so every face is covered;
// within a face they are uniform. In 1-D the faces are the two end points.
// Throws on n < number of faces, a face index outside [0, 2D) or a repeat.
Tensor sample_boundary(const Box& box, int64_t n, Generator& gen, DType dtype = DType::f32,
                       const std::vector<int64_t>& faces = {});

// A regular grid with points_per_axis[d] >= 2 points along axis d, end points
// included, as [prod(points_per_axis), D] in row-major order (last axis fastest).
Tensor grid(const Box& box, const std::vector<int64_t>& points_per_axis, DType dtype = DType::f32);

}  // namespace hpdl::physics
