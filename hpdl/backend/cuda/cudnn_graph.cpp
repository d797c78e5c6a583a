// Convolutions through cuDNN's graph (backend descriptor) API with cached
// execution plans. cuDNN 9 implements each legacy cudnnConvolution* call on
// top of this API and builds an execution plan every time; the host sampler
// on an H200 put half of a ResNet-50 step's host time there (and a third in
// the cuBLASLt heuristics that plan building consults), so at batch 128 the
// GPU waited for the host. Here a plan is built once per (direction, shapes,
// strides, alignment, dtype, math, device) and reused: a call then costs one
// variant pack and cudnnBackendExecute.
//
// Engines come from heuristics mode A in its order; with float32 and TF32 off
// an engine that notes tensor cores or down-converted inputs is skipped, as
// the legacy path takes only FMA-math algorithms. When no engine finalizes
// the convolution is remembered as unsupported and runs through the legacy
// API (run_graph_conv returns false).
#include <cudnn.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "hpdl/backend/cuda/common.h"
#include "hpdl/backend/cuda/cuda.h"
#include "hpdl/backend/cuda/cudnn_graph.h"

namespace hpdl::cuda {
namespace {

// The handle attributes are deprecated in recent cuDNN 9 releases but still the
// documented way to bind a plan to a handle in every 9.x.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
constexpr cudnnBackendAttributeName_t kGraphHandle = CUDNN_ATTR_OPERATIONGRAPH_HANDLE;
constexpr cudnnBackendAttributeName_t kPlanHandle = CUDNN_ATTR_EXECUTION_PLAN_HANDLE;
#pragma GCC diagnostic pop

// Engines whose plan needs more workspace than this are passed over.
constexpr int64_t kMaxWorkspace = int64_t{1} << 30;

// One backend descriptor, destroyed with its owner; Desc::ok() is false when creation failed.
class Desc {
 public:
  explicit Desc(cudnnBackendDescriptorType_t type) { status_ = cudnnBackendCreateDescriptor(type, &d_); }
  ~Desc() {
    if (d_) cudnnBackendDestroyDescriptor(d_);
  }
  Desc(Desc&& o) noexcept : d_(o.d_), status_(o.status_) { o.d_ = nullptr; }
  Desc(const Desc&) = delete;
  Desc& operator=(const Desc&) = delete;
  Desc& operator=(Desc&&) = delete;
  cudnnBackendDescriptor_t get() const { return d_; }
  // Gives up ownership (a cached plan lives as long as the process).
  cudnnBackendDescriptor_t release() {
    cudnnBackendDescriptor_t d = d_;
    d_ = nullptr;
    return d;
  }
  bool ok() const { return status_ == CUDNN_STATUS_SUCCESS && d_ != nullptr; }

  // Chained attribute setting: after the first failure the rest are skipped and ok() stays false.
  template <typename T>
  Desc& set(cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type, int64_t count, const T* values) {
    if (ok()) status_ = cudnnBackendSetAttribute(d_, name, type, count, values);
    return *this;
  }
  template <typename T>
  Desc& set(cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type, const T& value) {
    return set(name, type, 1, &value);
  }
  Desc& set_desc(cudnnBackendAttributeName_t name, const Desc& d) {
    cudnnBackendDescriptor_t raw = d.get();
    return set(name, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &raw);
  }
  bool finalize() {
    if (ok()) status_ = cudnnBackendFinalize(d_);
    return ok();
  }
  cudnnStatus_t status() const { return status_; }

 private:
  cudnnBackendDescriptor_t d_ = nullptr;
  cudnnStatus_t status_ = CUDNN_STATUS_SUCCESS;
};

cudnnDataType_t data_type(DType t) {
  return t == DType::f64    ? CUDNN_DATA_DOUBLE
         : t == DType::bf16 ? CUDNN_DATA_BFLOAT16
         : t == DType::f16  ? CUDNN_DATA_HALF
                            : CUDNN_DATA_FLOAT;
}

// Largest power of two up to 16 that divides the address.
int64_t alignment_of(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  int64_t al = 16;
  while (al > 1 && a % static_cast<uintptr_t>(al) != 0) al /= 2;
  return al;
}

// Packed strides of a 4-D shape in NCHW or NHWC memory order.
std::array<int64_t, 4> packed_strides(const Shape& s, bool channels_last) {
  if (channels_last) return {s[1] * s[2] * s[3], 1, s[3] * s[1], s[1]};
  return {s[1] * s[2] * s[3], s[2] * s[3], s[3], 1};
}

// The strides the descriptor gets. A dense tensor's size-1 dims have arbitrary strides; when the tensor
// is packed in the call's preferred layout its strides are rewritten to that layout's packed ones, so
// that (like the legacy NHWC descriptors) a 1x1 filter or a 1-channel image reads as NHWC next to NHWC
// partners. Any other tensor keeps its own strides.
std::array<int64_t, 4> descriptor_strides(const Tensor& t, bool prefer_cl) {
  const Shape& s = t.shape();
  auto packed_as = [&](bool cl) {
    const auto p = packed_strides(s, cl);
    for (int d = 0; d < 4; ++d)
      if (s[d] != 1 && t.strides()[d] != p[d]) return false;
    return true;
  };
  if (packed_as(prefer_cl)) return packed_strides(s, prefer_cl);
  if (packed_as(!prefer_cl)) return packed_strides(s, !prefer_cl);
  return {t.strides()[0], t.strides()[1], t.strides()[2], t.strides()[3]};
}

struct Operand {
  int64_t uid;
  std::array<int64_t, 4> dims, strides;
  int64_t alignment;
};

Desc tensor_desc(const Operand& o, cudnnDataType_t type) {
  Desc d(CUDNN_BACKEND_TENSOR_DESCRIPTOR);
  d.set(CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, type)
      .set(CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, o.dims.data())
      .set(CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, o.strides.data())
      .set(CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, o.uid)
      .set(CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, o.alignment)
      .finalize();
  return d;
}

Desc conv_desc(const Conv2dParams& p, cudnnDataType_t compute) {
  const int64_t spatial = 2;
  const int64_t pads[2] = {p.pad_h, p.pad_w}, strides[2] = {p.stride_h, p.stride_w},
                dil[2] = {p.dilation_h, p.dilation_w};
  const cudnnConvolutionMode_t mode = CUDNN_CROSS_CORRELATION;
  Desc d(CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR);
  d.set(CUDNN_ATTR_CONVOLUTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, compute)
      .set(CUDNN_ATTR_CONVOLUTION_CONV_MODE, CUDNN_TYPE_CONVOLUTION_MODE, mode)
      .set(CUDNN_ATTR_CONVOLUTION_SPATIAL_DIMS, CUDNN_TYPE_INT64, spatial)
      .set(CUDNN_ATTR_CONVOLUTION_PRE_PADDINGS, CUDNN_TYPE_INT64, 2, pads)
      .set(CUDNN_ATTR_CONVOLUTION_POST_PADDINGS, CUDNN_TYPE_INT64, 2, pads)
      .set(CUDNN_ATTR_CONVOLUTION_FILTER_STRIDES, CUDNN_TYPE_INT64, 2, strides)
      .set(CUDNN_ATTR_CONVOLUTION_DILATIONS, CUDNN_TYPE_INT64, 2, dil)
      .finalize();
  return d;
}

// The attribute names of the three directions: x (or dx), w (or dw), y (or dy), conv, alpha, beta.
struct DirAttrs {
  cudnnBackendDescriptorType_t op;
  cudnnBackendAttributeName_t x, w, y, conv, alpha, beta;
};
DirAttrs attrs_of(ConvDir dir) {
  switch (dir) {
    case ConvDir::fwd:
      return {CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR,
              CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_X,
              CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_W,
              CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_Y,
              CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_CONV_DESC,
              CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_ALPHA,
              CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_BETA};
    case ConvDir::bwd_data:
      return {CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_DATA_DESCRIPTOR,
              CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DX,
              CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_W,
              CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DY,
              CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_CONV_DESC,
              CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_ALPHA,
              CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_BETA};
    case ConvDir::bwd_filter:
      return {CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_FILTER_DESCRIPTOR,
              CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_X,
              CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_DW,
              CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_DY,
              CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_CONV_DESC,
              CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_ALPHA,
              CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_BETA};
  }
  return {};
}

const char* dir_name(ConvDir dir) {
  return dir == ConvDir::fwd ? "fwd" : dir == ConvDir::bwd_data ? "bwd_data" : "bwd_filter";
}

// Whether the engine of `cfg` may run this convolution: not one compiled at run time (NVRTC: seconds per
// shape on first use; the legacy API does not take them either), and for float32 with TF32 off no
// tensor-core or down-converting engine (their results differ from the reference beyond float32 rounding).
bool engine_allowed(cudnnBackendDescriptor_t cfg, DType t) {
  Desc engine(CUDNN_BACKEND_ENGINE_DESCRIPTOR);
  if (!engine.ok()) return false;
  cudnnBackendDescriptor_t raw = engine.get();
  int64_t n = 0;
  if (cudnnBackendGetAttribute(cfg, CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &n, &raw) !=
          CUDNN_STATUS_SUCCESS ||
      n != 1)
    return false;
  std::array<cudnnBackendBehaviorNote_t, CUDNN_BEHAVIOR_NOTE_TYPE_COUNT> behavior{};
  int64_t count = 0;
  if (cudnnBackendGetAttribute(engine.get(), CUDNN_ATTR_ENGINE_BEHAVIOR_NOTE, CUDNN_TYPE_BEHAVIOR_NOTE,
                               static_cast<int64_t>(behavior.size()), &count, behavior.data()) != CUDNN_STATUS_SUCCESS)
    return false;
  for (int64_t i = 0; i < count; ++i)
    if (behavior[i] == CUDNN_BEHAVIOR_NOTE_RUNTIME_COMPILATION) return false;
  if (t != DType::f32 || allow_tf32()) return true;
  std::array<cudnnBackendNumericalNote_t, CUDNN_NUMERICAL_NOTE_TYPE_COUNT> notes{};
  count = 0;
  if (cudnnBackendGetAttribute(engine.get(), CUDNN_ATTR_ENGINE_NUMERICAL_NOTE, CUDNN_TYPE_NUMERICAL_NOTE,
                               static_cast<int64_t>(notes.size()), &count, notes.data()) != CUDNN_STATUS_SUCCESS)
    return false;
  for (int64_t i = 0; i < count; ++i)
    if (notes[i] == CUDNN_NUMERICAL_NOTE_TENSOR_CORE || notes[i] == CUDNN_NUMERICAL_NOTE_DOWN_CONVERT_INPUTS)
      return false;
  return true;
}

struct Plan {
  cudnnBackendDescriptor_t plan = nullptr;  // null: no engine could run it (use the legacy API); never freed
  int64_t workspace = 0;
};

std::mutex g_mu;
std::unordered_map<std::string, Plan> g_plans;
std::atomic<bool> g_enabled{[] {
  const char* e = std::getenv("HPDL_CUDNN_GRAPH");
  return e && std::string(e) == "1";
}()};
std::atomic<int64_t> g_built{0}, g_unsupported{0}, g_runs{0};

// Builds the plan of one convolution; Plan{} when heuristics offer no engine that finalizes.
Plan build_plan(cudnnHandle_t h, ConvDir dir, const std::array<Operand, 3>& ops, DType t, const Conv2dParams& p) {
  const cudnnDataType_t type = data_type(t);
  const cudnnDataType_t compute = t == DType::f64 ? CUDNN_DATA_DOUBLE : CUDNN_DATA_FLOAT;
  Desc xd = tensor_desc(ops[0], type), wd = tensor_desc(ops[1], type), yd = tensor_desc(ops[2], type);
  Desc cd = conv_desc(p, compute);
  if (!xd.ok() || !wd.ok() || !yd.ok() || !cd.ok()) return {};
  const DirAttrs a = attrs_of(dir);
  Desc op(a.op);
  const float f1 = 1, f0 = 0;
  const double d1 = 1, d0 = 0;
  op.set_desc(a.x, xd).set_desc(a.w, wd).set_desc(a.y, yd).set_desc(a.conv, cd);
  if (t == DType::f64)
    op.set(a.alpha, CUDNN_TYPE_DOUBLE, d1).set(a.beta, CUDNN_TYPE_DOUBLE, d0);
  else
    op.set(a.alpha, CUDNN_TYPE_FLOAT, f1).set(a.beta, CUDNN_TYPE_FLOAT, f0);
  if (!op.finalize()) return {};
  Desc graph(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
  if (!graph.set_desc(CUDNN_ATTR_OPERATIONGRAPH_OPS, op).set(kGraphHandle, CUDNN_TYPE_HANDLE, h).finalize()) return {};
  // The first engine of heuristics mode A that is allowed and finalizes; failing that, of the
  // fallback mode (which lists engines for graphs mode A has nothing for).
  auto first_plan = [&](cudnnBackendHeurMode_t mode) -> Plan {
    Desc heur(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR);
    if (!heur.set_desc(CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, graph)
             .set(CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, mode)
             .finalize())
      return {};
    int64_t count = 0;
    if (cudnnBackendGetAttribute(heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &count,
                                 nullptr) != CUDNN_STATUS_SUCCESS ||
        count <= 0)
      return {};
    std::vector<Desc> cfgs;
    std::vector<cudnnBackendDescriptor_t> raw;
    for (int64_t i = 0; i < count; ++i) {
      cfgs.emplace_back(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR);
      if (!cfgs.back().ok()) return {};
      raw.push_back(cfgs.back().get());
    }
    int64_t got = 0;
    if (cudnnBackendGetAttribute(heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, count,
                                 &got, raw.data()) != CUDNN_STATUS_SUCCESS)
      return {};
    for (int64_t i = 0; i < got && i < count; ++i) {
      if (!engine_allowed(raw[i], t)) continue;
      Desc plan(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR);
      if (!plan.set(kPlanHandle, CUDNN_TYPE_HANDLE, h)
               .set_desc(CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, cfgs[i])
               .finalize())
        continue;
      int64_t ws = 0, n = 0;
      if (cudnnBackendGetAttribute(plan.get(), CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &n,
                                   &ws) != CUDNN_STATUS_SUCCESS ||
          ws < 0 || ws > kMaxWorkspace)
        continue;
      // The plan and everything it was built from stay alive with the process: the backend API does
      // not say whether a finalized plan still refers to its engine configuration or graph.
      for (Desc* d : {&xd, &wd, &yd, &cd, &op, &graph, &heur, &cfgs[i]}) d->release();
      return Plan{plan.release(), ws};
    }
    return {};
  };
  Plan found = first_plan(CUDNN_HEUR_MODE_A);
  if (!found.plan) found = first_plan(CUDNN_HEUR_MODE_FALLBACK);
  return found;
}

}  // namespace

void set_conv_graph(bool on) { g_enabled = on; }
bool conv_graph() { return g_enabled; }

GraphConvStats graph_conv_stats() { return {g_built.load(), g_unsupported.load(), g_runs.load()}; }

bool run_graph_conv(ConvDir dir, const Tensor& x, const Tensor& w, const Tensor& y, const Conv2dParams& p) {
  if (!g_enabled) return false;
  const DType t = x.dtype();
  if (w.dtype() != t || y.dtype() != t || x.ndim() != 4 || w.ndim() != 4 || y.ndim() != 4) return false;
  const bool cl = nhwc(x) || nhwc(w) || nhwc(y);
  std::array<Operand, 3> ops;
  const Tensor* ts[3] = {&x, &w, &y};
  for (int i = 0; i < 3; ++i) {
    const Shape& s = ts[i]->shape();
    ops[i] = Operand{i + 1, {s[0], s[1], s[2], s[3]}, descriptor_strides(*ts[i], cl), alignment_of(ts[i]->raw_data())};
  }
  cudnnHandle_t h = cudnn_for(y.device());
  std::string key = fmt::format("{}|{}|{}|{}|{}|{},{},{},{},{},{},{}", dir_name(dir), dtype_name(t),
                                allow_tf32() ? "tf32" : "fma", y.device().index,
                                reinterpret_cast<uintptr_t>(h), p.stride_h, p.stride_w, p.pad_h, p.pad_w,
                                p.dilation_h, p.dilation_w, p.groups);
  for (const Operand& o : ops)
    key += fmt::format("|{},{},{},{}:{},{},{},{}@{}", o.dims[0], o.dims[1], o.dims[2], o.dims[3], o.strides[0],
                       o.strides[1], o.strides[2], o.strides[3], o.alignment);
  Plan plan;
  {
    std::lock_guard<std::mutex> lock(g_mu);
    auto it = g_plans.find(key);
    if (it == g_plans.end()) {
      plan = build_plan(h, dir, ops, t, p);
      (plan.plan ? g_built : g_unsupported)++;
      it = g_plans.emplace(key, plan).first;
    }
    plan = it->second;
  }
  if (!plan.plan) return false;
  Tensor ws = plan.workspace ? Tensor::empty({plan.workspace}, DType::u8, y.device()) : Tensor();
  void* ptrs[3] = {x.raw_data(), w.raw_data(), y.raw_data()};
  const int64_t uids[3] = {1, 2, 3};
  void* ws_ptr = ws.defined() ? ws.raw_data() : nullptr;
  Desc pack(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR);
  pack.set(CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, 3, uids)
      .set(CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, 3, ptrs)
      .set(CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &ws_ptr);
  HPDL_CHECK(pack.finalize(), "cuDNN graph convolution {}: variant pack failed: {}", key,
             cudnnGetErrorString(pack.status()));
  HPDL_CUDNN_CHECK(cudnnBackendExecute(h, plan.plan, pack.get()));
  g_runs++;
  return true;
}

}  // namespace hpdl::cuda
