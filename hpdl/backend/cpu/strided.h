// Strided elementwise iteration shared by the CPU kernels: operands of one
// shape (after broadcasting) with their own strides are coalesced into as few
// dimensions as possible, then walked row by row in parallel, each row an inner
// loop the compiler vectorizes when its strides are 1.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <vector>

#include "hpdl/core/shape.h"
#include "hpdl/core/threading.h"

namespace hpdl::cpu {

// Strides of `s` (shape `from`) viewed as broadcast to `to`: 0 where broadcast.
Strides broadcast_strides(const Shape& from, const Strides& s, const Shape& to);

template <int K>
struct StridedPlan {
  Shape shape;                          // coalesced shape (at least 1 dim)
  std::array<Strides, K> strides;       // per operand, coalesced
  int64_t rows() const {
    int64_t r = 1;
    for (size_t i = 0; i + 1 < shape.size(); ++i) r *= shape[i];
    return r;
  }
  int64_t inner() const { return shape.back(); }
  // Offsets of row r (in elements, relative to each operand's base).
  std::array<int64_t, K> row_offsets(int64_t r) const {
    std::array<int64_t, K> off{};
    for (int64_t d = static_cast<int64_t>(shape.size()) - 2; d >= 0; --d) {
      int64_t idx = r % shape[d];
      r /= shape[d];
      for (int k = 0; k < K; ++k) off[k] += idx * strides[k][d];
    }
    return off;
  }
};

template <int K>
StridedPlan<K> make_plan(const Shape& shape, const std::array<Strides, K>& strides) {
  StridedPlan<K> p;
  if (shape.empty()) {
    p.shape = {1};
    for (int k = 0; k < K; ++k) p.strides[k] = {0};
    return p;
  }
  // Walk the dims in the first operand's memory order (its strides descending,
  // stable), so a permuted layout such as channels-last coalesces as row-major
  // does; drop size-1 dims, then merge dim i into i+1 when every operand is
  // contiguous across them.
  std::vector<size_t> order(shape.size());
  for (size_t d = 0; d < order.size(); ++d) order[d] = d;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return strides[0][a] > strides[0][b]; });
  Shape sh;
  std::array<Strides, K> st;
  for (size_t d : order) {
    if (shape[d] == 1) continue;
    sh.push_back(shape[d]);
    for (int k = 0; k < K; ++k) st[k].push_back(strides[k][d]);
  }
  if (sh.empty()) {
    sh = {1};
    for (int k = 0; k < K; ++k) st[k] = {0};
  }
  p.shape = {sh[0]};
  for (int k = 0; k < K; ++k) p.strides[k] = {st[k][0]};
  for (size_t d = 1; d < sh.size(); ++d) {
    bool merge = true;
    for (int k = 0; k < K; ++k) merge = merge && p.strides[k].back() == st[k][d] * sh[d];
    if (merge) {
      p.shape.back() *= sh[d];
      for (int k = 0; k < K; ++k) p.strides[k].back() = st[k][d];
    } else {
      p.shape.push_back(sh[d]);
      for (int k = 0; k < K; ++k) p.strides[k].push_back(st[k][d]);
    }
  }
  return p;
}

// Calls f(offsets, n, inner_strides) for every row; rows run in parallel when
// the work is large. A single long row is split into chunks.
template <int K, typename F>
void for_each_row(const StridedPlan<K>& p, F&& f) {
  const int64_t rows = p.rows(), inner = p.inner();
  std::array<int64_t, K> is{};
  for (int k = 0; k < K; ++k) is[k] = p.strides[k].back();
  constexpr int64_t kGrain = 32768;
  if (rows == 1) {
    parallel_for(inner, kGrain, [&](int64_t b, int64_t e) {
      std::array<int64_t, K> off{};
      for (int k = 0; k < K; ++k) off[k] = b * is[k];
      f(off, e - b, is);
    });
    return;
  }
  int64_t grain_rows = inner >= kGrain ? 1 : kGrain / inner;
  parallel_for(rows, grain_rows, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) f(p.row_offsets(r), inner, is);
  });
}

}  // namespace hpdl::cpu
