// Shapes and strides. Dimension letters used across hpdl: N batch, C channels,
// H height, W width, K output channels (filters), R/S filter height/width,
// T time steps, D feature width. Strides count elements, not bytes.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

namespace hpdl {

using Shape = std::vector<int64_t>;
using Strides = std::vector<int64_t>;

int64_t numel_of(const Shape& s);
Strides contiguous_strides(const Shape& s);
std::string shape_str(const Shape& s);  // "[2, 3, 4]"

// NumPy broadcasting of two shapes; throws naming `op` and both shapes if they do not broadcast.
Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op);

// Normalizes a possibly negative axis for a tensor of `ndim` dims; throws naming `op`.
int normalize_axis(int64_t axis, int ndim, const char* op);

}  // namespace hpdl
