// OneDnnBackend: oneDNN primitives for the float32 hot paths, created once per
// shape and cached (creating a primitive JIT-compiles a kernel: far too slow
// to do per call).
#include "hpdl/backend/cpu/onednn.h"

#include <map>
#include <mutex>
#include <oneapi/dnnl/dnnl.hpp>
#include <tuple>

namespace hpdl::cpu {

using dnnl::memory;
using tag = memory::format_tag;
using dt = memory::data_type;

struct OneDnnBackend::Impl {
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream{engine};
  std::mutex mu;
  // matmul primitives by (B, M, N, K, trans_a, trans_b, batch-broadcast flags, beta != 0)
  std::map<std::tuple<int64_t, int64_t, int64_t, int64_t, bool, bool, bool, bool, bool>, std::pair<dnnl::matmul::primitive_desc, dnnl::matmul>> matmuls;
};

OneDnnBackend::OneDnnBackend() : impl_(new Impl) {}
OneDnnBackend::~OneDnnBackend() { delete impl_; }

bool OneDnnBackend::supports(OpKind op, DType dtype) const { return ReferenceBackend::supports(op, dtype); }

void OneDnnBackend::matmul(const Tensor& a, const Tensor& b, const Tensor& c, bool trans_a, bool trans_b,
                           double alpha, double beta) {
  if (c.dtype() != DType::f32 || alpha != 1.0) {
    ReferenceBackend::matmul(a, b, c, trans_a, trans_b, alpha, beta);
    return;
  }
  const int nd = c.ndim();
  const int64_t M = c.dim(-2), N = c.dim(-1), K = trans_a ? a.dim(-2) : a.dim(-1);
  const int64_t B = nd == 3 ? c.dim(0) : 1;
  const bool a_batched = a.ndim() == 3 && a.dim(0) > 1, b_batched = b.ndim() == 3 && b.dim(0) > 1;
  auto key = std::make_tuple(B, M, N, K, trans_a, trans_b, a_batched, b_batched, beta != 0.0);
  dnnl::matmul prim;
  dnnl::matmul::primitive_desc pd;
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    auto it = impl_->matmuls.find(key);
    if (it == impl_->matmuls.end()) {
      // Always describe 3-D operands; a transposed operand is the same buffer with swapped strides.
      memory::dims ad = {a_batched ? B : 1, M, K}, bd = {b_batched ? B : 1, K, N}, cd = {B, M, N};
      memory::dims as = trans_a ? memory::dims{M * K, 1, M} : memory::dims{M * K, K, 1};
      memory::dims bs = trans_b ? memory::dims{K * N, 1, K} : memory::dims{K * N, N, 1};
      memory::desc amd(ad, dt::f32, as), bmd(bd, dt::f32, bs), cmd(cd, dt::f32, tag::abc);
      dnnl::primitive_attr attr;
      if (beta != 0.0) {
        dnnl::post_ops po;
        po.append_sum(static_cast<float>(beta));
        attr.set_post_ops(po);
      }
      auto npd = dnnl::matmul::primitive_desc(dnnl::matmul::desc(amd, bmd, cmd), attr, impl_->engine);
      it = impl_->matmuls.emplace(key, std::make_pair(npd, dnnl::matmul(npd))).first;
    }
    pd = it->second.first;
    prim = it->second.second;
  }
  memory am(pd.src_desc(), impl_->engine, a.raw_data()), bm(pd.weights_desc(), impl_->engine, b.raw_data()),
      cm(pd.dst_desc(), impl_->engine, c.raw_data());
  dnnl::stream s(impl_->engine);
  prim.execute(s, {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_DST, cm}});
  s.wait();
}

std::string onednn_version() {
  const dnnl_version_t* v = dnnl_version();
  return fmt::format("{}.{}.{}", v->major, v->minor, v->patch);
}

std::string onednn_isa() {
  switch (dnnl::get_effective_cpu_isa()) {
    case dnnl::cpu_isa::sse41: return "sse41";
    case dnnl::cpu_isa::avx: return "avx";
    case dnnl::cpu_isa::avx2: return "avx2";
    case dnnl::cpu_isa::avx512_core: return "avx512_core";
    case dnnl::cpu_isa::avx512_core_vnni: return "avx512_core_vnni";
    case dnnl::cpu_isa::avx512_core_bf16: return "avx512_core_bf16";
    case dnnl::cpu_isa::avx512_core_amx: return "avx512_core_amx";
    default: return "other";
  }
}

}  // namespace hpdl::cpu

namespace hpdl {
Backend& cpu_backend() {
  static cpu::OneDnnBackend b;
  return b;
}
}  // namespace hpdl
