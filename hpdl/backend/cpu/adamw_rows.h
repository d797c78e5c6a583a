// The AdamW update's element loop for float32 tensors (OneDnnBackend::optimizer_update).
#pragma once

#include <cstdint>

namespace hpdl::cpu {

// For i < n: m = b1 m + c1 g; v = b2 v + c2 g^2; p = p decay - step_size m / (sqrt(v) inv_sqrt_bc2 + eps).
void adamw_rows(float* p, const float* g, float* m, float* v, int64_t n, float b1, float c1, float b2, float c2,
                float decay, float step_size, float inv_sqrt_bc2, float eps);

}  // namespace hpdl::cpu
