// Box domains and collocation sampling. Points are generated in double on the
// CPU, one Generator draw per coordinate in a fixed order, then converted.
#include "hpdl/physics/domain.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "hpdl/core/shape.h"

namespace hpdl::physics {
namespace {

Tensor to_tensor(const std::vector<double>& values, int64_t n, int64_t dims, DType dtype) {
  HPDL_CHECK(dtype_is_float(dtype), "physics: collocation points must be floating point, got {}", dtype_name(dtype));
  Tensor t = Tensor::from_vector<double>(values, {n, dims});
  return dtype == DType::f64 ? t : t.to(dtype);
}

}  // namespace

void Box::check() const {
  HPDL_CHECK(!low.empty(), "physics::Box: no coordinates (low and high are empty)");
  HPDL_CHECK(low.size() == high.size(), "physics::Box: low has {} coordinates but high has {}", low.size(),
             high.size());
  for (size_t d = 0; d < low.size(); ++d)
    HPDL_CHECK(std::isfinite(low[d]) && std::isfinite(high[d]) && low[d] < high[d],
               "physics::Box: axis {} is empty: low {} must be below high {}", d, low[d], high[d]);
}

std::string Box::str() const {
  std::string s;
  for (size_t d = 0; d < low.size(); ++d)
    s += fmt::format("{}[{}, {}]", d ? " x " : "", low[d], d < high.size() ? high[d] : std::nan(""));
  return s;
}

Tensor sample_interior(const Box& box, int64_t n, Generator& gen, DType dtype) {
  box.check();
  HPDL_CHECK(n > 0, "physics::sample_interior: need a positive number of points, got {}", n);
  const int64_t D = box.dims();
  std::vector<double> v(static_cast<size_t>(n * D));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t d = 0; d < D; ++d)
      v[i * D + d] = box.low[d] + (box.high[d] - box.low[d]) * gen.next_uniform();
  return to_tensor(v, n, D, dtype);
}

Tensor sample_boundary(const Box& box, int64_t n, Generator& gen, DType dtype, const std::vector<int64_t>& faces) {
  box.check();
  const int64_t D = box.dims();
  std::vector<int64_t> fs = faces;
  if (fs.empty()) {
    fs.resize(static_cast<size_t>(2 * D));
    std::iota(fs.begin(), fs.end(), 0);
  }
  for (size_t i = 0; i < fs.size(); ++i) {
    HPDL_CHECK(fs[i] >= 0 && fs[i] < 2 * D, "physics::sample_boundary: face {} out of range for the {}-D box {} "
               "(faces are 0 .. {})", fs[i], D, box.str(), 2 * D - 1);
    HPDL_CHECK(std::count(fs.begin(), fs.end(), fs[i]) == 1, "physics::sample_boundary: face {} listed twice", fs[i]);
  }
  const auto F = static_cast<int64_t>(fs.size());
  HPDL_CHECK(n >= F, "physics::sample_boundary: {} points cannot cover {} faces; use at least {}", n, F, F);

  // Points per face: one each, the rest in proportion to the face's (D-1)-volume,
  // rounded by largest remainder so the counts add up to n.
  std::vector<double> area(fs.size(), 1.0);
  for (size_t k = 0; k < fs.size(); ++k)
    for (int64_t d = 0; d < D; ++d)
      if (d != fs[k] / 2) area[k] *= box.high[d] - box.low[d];
  const double total = std::accumulate(area.begin(), area.end(), 0.0);
  std::vector<int64_t> count(fs.size(), 1);
  std::vector<double> frac(fs.size());
  int64_t left = n - F;
  for (size_t k = 0; k < fs.size(); ++k) {
    double share = static_cast<double>(n - F) * area[k] / total;
    count[k] += static_cast<int64_t>(std::floor(share));
    frac[k] = share - std::floor(share);
    left -= static_cast<int64_t>(std::floor(share));
  }
  std::vector<size_t> order(fs.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return frac[a] > frac[b]; });
  for (size_t i = 0; left > 0; ++i, --left) ++count[order[i % order.size()]];

  std::vector<double> v;
  v.reserve(static_cast<size_t>(n * D));
  for (size_t k = 0; k < fs.size(); ++k) {
    const int64_t fixed = fs[k] / 2;
    const double at = fs[k] % 2 ? box.high[fixed] : box.low[fixed];
    for (int64_t i = 0; i < count[k]; ++i)
      for (int64_t d = 0; d < D; ++d)
        v.push_back(d == fixed ? at : box.low[d] + (box.high[d] - box.low[d]) * gen.next_uniform());
  }
  return to_tensor(v, n, D, dtype);
}

Tensor grid(const Box& box, const std::vector<int64_t>& points_per_axis, DType dtype) {
  box.check();
  const int64_t D = box.dims();
  HPDL_CHECK(static_cast<int64_t>(points_per_axis.size()) == D, "physics::grid: {} point counts for the {}-D box {}",
             points_per_axis.size(), D, box.str());
  int64_t n = 1;
  for (int64_t d = 0; d < D; ++d) {
    HPDL_CHECK(points_per_axis[d] >= 2, "physics::grid: axis {} needs at least 2 points, got {}", d,
               points_per_axis[d]);
    n *= points_per_axis[d];
  }
  std::vector<double> v(static_cast<size_t>(n * D));
  for (int64_t i = 0; i < n; ++i) {
    int64_t rest = i;
    for (int64_t d = D - 1; d >= 0; --d) {
      const int64_t m = points_per_axis[d], j = rest % m;
      rest /= m;
      v[i * D + d] = box.low[d] + (box.high[d] - box.low[d]) * static_cast<double>(j) / static_cast<double>(m - 1);
    }
  }
  return to_tensor(v, n, D, dtype);
}

}  // namespace hpdl::physics
