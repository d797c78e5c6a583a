// Compiled with -fno-math-errno (hpdl/CMakeLists.txt): with errno semantics GCC keeps a scalar
// call to sqrtf per element, which also stops the division from vectorizing. v >= 0 here, so no
// square root would ever set errno; the results are the same correctly rounded values. And with
// -ffp-contract=off: every element gets the same operations whether it falls in the vector body
// or in a scalar tail, so the result does not depend on where a thread's range (or a ZeRO
// shard) begins.
#include "hpdl/backend/cpu/adamw_rows.h"

#include <cmath>

namespace hpdl::cpu {

void adamw_rows(float* p, const float* g, float* m, float* v, int64_t n, float b1, float c1, float b2, float c2,
                float decay, float step_size, float inv_sqrt_bc2, float eps) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float gi = g[i];
    const float mi = b1 * m[i] + c1 * gi;
    const float vi = b2 * v[i] + c2 * gi * gi;
    m[i] = mi;
    v[i] = vi;
    p[i] = p[i] * decay - step_size * mi / (std::sqrt(vi) * inv_sqrt_bc2 + eps);
  }
}

}  // namespace hpdl::cpu
