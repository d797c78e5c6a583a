// LSTM and GRU stacks through cuDNN 9's RNN API: cudnnSetRNNDescriptor_v8
// (standard algorithm, double bias, linear input, no dropout, no projection),
// sequence-major packed RNN data descriptors with every sequence of length T
// (which is plain [T, N, features]), cudnnRNNForward in training mode,
// cudnnRNNBackwardData_v8, cudnnRNNBackwardWeights_v8 (add mode, into a
// zeroed buffer). cuDNN keeps all weights in one "weight space"; its layout is
// cuDNN's own, so every call packs hpdl's PyTorch-layout tensors into it (and
// unpacks the weight gradients) at the addresses cudnnGetRNNWeightParams gives.
// cuDNN's linear-layer ids follow PyTorch's gate order: LSTM 0-3 = i, f, g, o
// on the input, 4-7 on the recurrent state; GRU 0-2 = r, z, n, 3-5 recurrent;
// each matrix is [H, in] row-major, as a gate's block of rows of w_ih / w_hh.
#include <algorithm>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "hpdl/backend/cuda/common.h"
#include "hpdl/backend/cuda/cuda.h"
#include "hpdl/backend/cuda/cuda_backend.h"

namespace hpdl::cuda {
namespace {

int rnn_int(int64_t v, const char* what) {
  HPDL_CHECK(v > 0 && v < INT32_MAX, "cuDNN RNN: {} = {} is outside (0, 2^31)", what, v);
  return static_cast<int>(v);
}

cudnnDataType_t rnn_type(DType t) { return t == DType::f64 ? CUDNN_DATA_DOUBLE : CUDNN_DATA_FLOAT; }

// Every descriptor one RNN call needs, with the sizes cuDNN derives from them.
class RnnDescs {
 public:
  RnnDescs(const RnnParams& p, DType dtype, Device dev) : p_(p), dtype_(dtype), dev_(dev) {
    // A failed call leaves the descriptors made so far to destroy().
    try {
      HPDL_CHECK(dtype == DType::f32 || dtype == DType::f64, "cuda backend: rnn supports float32 and float64, got {}",
                 dtype_name(dtype));
      handle = cudnn_for(dev);
      const cudnnDataType_t dt = rnn_type(dtype);
      // No dropout: cuDNN draws nothing, so the descriptor needs no state buffer.
      HPDL_CUDNN_CHECK(cudnnCreateDropoutDescriptor(&dropout));
      HPDL_CUDNN_CHECK(cudnnSetDropoutDescriptor(dropout, handle, 0.0f, nullptr, 0, 0));
      const cudnnMathType_t math = dtype == DType::f32 && !allow_tf32() ? CUDNN_FMA_MATH : CUDNN_DEFAULT_MATH;
      HPDL_CUDNN_CHECK(cudnnCreateRNNDescriptor(&rnn));
      HPDL_CUDNN_CHECK(cudnnSetRNNDescriptor_v8(
          rnn, CUDNN_RNN_ALGO_STANDARD, p.mode == RnnMode::lstm ? CUDNN_LSTM : CUDNN_GRU, CUDNN_RNN_DOUBLE_BIAS,
          p.bidirectional ? CUDNN_BIDIRECTIONAL : CUDNN_UNIDIRECTIONAL, CUDNN_LINEAR_INPUT, dt, dt, math,
          rnn_int(p.input_size, "input_size"), rnn_int(p.hidden_size, "hidden_size"),
          rnn_int(p.hidden_size, "projection size"), rnn_int(p.num_layers, "num_layers"), dropout,
          CUDNN_RNN_PADDED_IO_DISABLED));

      const int T = rnn_int(p.seq_len, "sequence length"), N = rnn_int(p.batch, "batch");
      std::vector<int> lengths(N, T);
      HPDL_CUDNN_CHECK(cudnnCreateRNNDataDescriptor(&x));
      HPDL_CUDNN_CHECK(cudnnSetRNNDataDescriptor(x, dt, CUDNN_RNN_DATA_LAYOUT_SEQ_MAJOR_PACKED, T, N,
                                                 rnn_int(p.input_size, "input_size"), lengths.data(), nullptr));
      HPDL_CUDNN_CHECK(cudnnCreateRNNDataDescriptor(&y));
      HPDL_CUDNN_CHECK(cudnnSetRNNDataDescriptor(y, dt, CUDNN_RNN_DATA_LAYOUT_SEQ_MAJOR_PACKED, T, N,
                                                 rnn_int(p.hidden_size * p.dirs(), "output size"), lengths.data(),
                                                 nullptr));
      const int dims[3] = {rnn_int(p.num_layers * p.dirs(), "layers * directions"), N,
                           rnn_int(p.hidden_size, "hidden_size")};
      const int strides[3] = {dims[1] * dims[2], dims[2], 1};
      HPDL_CUDNN_CHECK(cudnnCreateTensorDescriptor(&state));
      HPDL_CUDNN_CHECK(cudnnSetTensorNdDescriptor(state, dt, 3, dims, strides));

      HPDL_CUDNN_CHECK(cudnnGetRNNWeightSpaceSize(handle, rnn, &weight_bytes));
      HPDL_CUDNN_CHECK(
          cudnnGetRNNTempSpaceSizes(handle, rnn, CUDNN_FWD_MODE_TRAINING, x, &work_bytes, &reserve_bytes));
      // The kernels read the sequence lengths from device memory.
      Tensor host_lengths = Tensor::empty({p.batch}, DType::i32);
      std::fill_n(host_lengths.data<int32_t>(), N, T);
      seq_lengths = Tensor::empty({p.batch}, DType::i32, dev);
      seq_lengths.copy_(host_lengths);
    } catch (...) {
      destroy();
      throw;
    }
  }
  ~RnnDescs() { destroy(); }
  void destroy() {
    if (state) cudnnDestroyTensorDescriptor(state), state = nullptr;
    if (y) cudnnDestroyRNNDataDescriptor(y), y = nullptr;
    if (x) cudnnDestroyRNNDataDescriptor(x), x = nullptr;
    if (rnn) cudnnDestroyRNNDescriptor(rnn), rnn = nullptr;
    if (dropout) cudnnDestroyDropoutDescriptor(dropout), dropout = nullptr;
  }
  RnnDescs(const RnnDescs&) = delete;
  RnnDescs& operator=(const RnnDescs&) = delete;

  const int32_t* dev_seq_lengths() const { return static_cast<const int32_t*>(seq_lengths.raw_data()); }
  Tensor buffer(size_t bytes) const {
    return Tensor::empty({static_cast<int64_t>(std::max<size_t>(bytes, 1))}, DType::u8, dev_);
  }

  // Copies between hpdl's weight tensors and a cuDNN weight space: to_space = true packs
  // `tensors` into `space`, false unpacks `space` into `tensors` (the weight gradients).
  void transfer(const Tensor& space, const std::vector<Tensor>& tensors, bool to_space) const {
    const int64_t G = p_.gates(), H = p_.hidden_size, D = p_.dirs();
    const size_t es = dtype_size(dtype_);
    cudaStream_t s = stream_for(dev_);
    cudnnTensorDescriptor_t mdesc = nullptr, bdesc = nullptr;
    HPDL_CUDNN_CHECK(cudnnCreateTensorDescriptor(&mdesc));
    HPDL_CUDNN_CHECK(cudnnCreateTensorDescriptor(&bdesc));
    try {
      for (int64_t l = 0; l < p_.num_layers; ++l)
        for (int64_t d = 0; d < D; ++d) {
          const int64_t cell = l * D + d;
          for (int64_t lin = 0; lin < 2 * G; ++lin) {
            const bool recurrent = lin >= G;
            const int64_t gate = lin % G, in = recurrent ? H : p_.layer_input(l);
            void *maddr = nullptr, *baddr = nullptr;
            HPDL_CUDNN_CHECK(cudnnGetRNNWeightParams(handle, rnn, static_cast<int32_t>(cell), weight_bytes,
                                                     space.raw_data(), static_cast<int32_t>(lin), mdesc, &maddr,
                                                     bdesc, &baddr));
            HPDL_CHECK(maddr && baddr,
                       "cuDNN RNN: no weight or bias address for layer {} direction {} linear layer {}", l, d, lin);
            check_numel(mdesc, H * in, "matrix", l, d, lin);
            check_numel(bdesc, H, "bias", l, d, lin);
            const Tensor& w = tensors[4 * cell + (recurrent ? 1 : 0)];
            const Tensor& b = tensors[4 * cell + (recurrent ? 3 : 2)];
            char* wsrc = static_cast<char*>(w.raw_data()) + gate * H * in * es;
            char* bsrc = static_cast<char*>(b.raw_data()) + gate * H * es;
            copy(to_space ? maddr : wsrc, to_space ? wsrc : maddr, H * in * es, s);
            copy(to_space ? baddr : bsrc, to_space ? bsrc : baddr, H * es, s);
          }
        }
    } catch (...) {
      cudnnDestroyTensorDescriptor(mdesc);
      cudnnDestroyTensorDescriptor(bdesc);
      throw;
    }
    cudnnDestroyTensorDescriptor(mdesc);
    cudnnDestroyTensorDescriptor(bdesc);
  }

  cudnnHandle_t handle = nullptr;
  cudnnDropoutDescriptor_t dropout = nullptr;
  cudnnRNNDescriptor_t rnn = nullptr;
  cudnnRNNDataDescriptor_t x = nullptr, y = nullptr;
  cudnnTensorDescriptor_t state = nullptr;  // hx, cx, hy, cy, and their gradients: [L*dirs, N, H]
  size_t weight_bytes = 0, work_bytes = 0, reserve_bytes = 0;
  Tensor seq_lengths;  // int32 [N] on the device, all T

 private:
  static void copy(void* dst, const void* src, size_t bytes, cudaStream_t s) {
    HPDL_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, s));
  }
  void check_numel(cudnnTensorDescriptor_t desc, int64_t want, const char* what, int64_t l, int64_t d,
                   int64_t lin) const {
    cudnnDataType_t dt;
    int nb = 0, dims[8], strides[8];
    HPDL_CUDNN_CHECK(cudnnGetTensorNdDescriptor(desc, 8, &dt, &nb, dims, strides));
    int64_t n = 1;
    for (int i = 0; i < nb; ++i) n *= dims[i];
    HPDL_CHECK(n == want,
               "cuDNN RNN: the {} of layer {} direction {} linear layer {} has {} elements in cuDNN's weight space, "
               "hpdl expected {} (hidden_size {}, input_size {})",
               what, l, d, lin, n, want, p_.hidden_size, p_.input_size);
  }

  RnnParams p_;
  DType dtype_;
  Device dev_;
};

// The descriptors of one shape, built on first use and kept for the process (a training loop calls the
// same shapes every step: no descriptor setup, weight-space queries or synchronous upload of the sequence
// lengths per call). Never destroyed: at exit the cuDNN handles and the allocator may already be gone.
const RnnDescs& descs_for(const RnnParams& p, DType t, Device dev) {
  static std::mutex mu;
  static auto* cache = new std::map<std::string, std::unique_ptr<RnnDescs>>();
  const std::string key = fmt::format("{}|{}|{}|{}|{}|{}|{}|{}|{}|{}", static_cast<int>(p.mode), p.seq_len, p.batch,
                                      p.input_size, p.hidden_size, p.num_layers, p.bidirectional, dtype_name(t),
                                      dev.index, allow_tf32());
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache->find(key);
  if (it == cache->end()) it = cache->emplace(key, std::make_unique<RnnDescs>(p, t, dev)).first;
  return *it->second;
}

void* mut(const Tensor& t) { return t.defined() ? t.raw_data() : nullptr; }

void check_reserve(const RnnDescs& d, const Tensor& reserve) {
  const size_t have = static_cast<size_t>(reserve.numel()) * dtype_size(reserve.dtype());
  HPDL_CHECK(have >= d.reserve_bytes, "cuDNN RNN: reserve tensor holds {} bytes, cuDNN needs {}", have,
             d.reserve_bytes);
}

}  // namespace

int64_t CudaBackend::rnn_reserve_size(const RnnParams& p, const Tensor& x) {
  const RnnDescs& d = descs_for(p, x.dtype(), x.device());
  const size_t es = dtype_size(x.dtype());
  return static_cast<int64_t>((d.reserve_bytes + es - 1) / es);
}

void CudaBackend::rnn_forward_train(const RnnParams& p, const Tensor& x, const Tensor& hx, const Tensor& cx,
                                    const std::vector<Tensor>& weights, const Tensor& y, const Tensor& hy,
                                    const Tensor& cy, const Tensor& reserve) {
  const RnnDescs& d = descs_for(p, x.dtype(), x.device());
  check_reserve(d, reserve);
  Tensor wspace = d.buffer(d.weight_bytes), work = d.buffer(d.work_bytes);
  d.transfer(wspace, weights, true);
  HPDL_CUDNN_CHECK(cudnnRNNForward(d.handle, d.rnn, CUDNN_FWD_MODE_TRAINING, d.dev_seq_lengths(), d.x, x.raw_data(),
                                   d.y, y.raw_data(), d.state, hx.raw_data(), hy.raw_data(), d.state, mut(cx),
                                   mut(cy), d.weight_bytes, wspace.raw_data(), d.work_bytes, work.raw_data(),
                                   d.reserve_bytes, reserve.raw_data()));
}

void CudaBackend::rnn_backward_data(const RnnParams& p, const Tensor& x, const Tensor& hx, const Tensor& cx,
                                    const std::vector<Tensor>& weights, const Tensor& y, const Tensor& dy,
                                    const Tensor& dhy, const Tensor& dcy, const Tensor& reserve, const Tensor& dx,
                                    const Tensor& dhx, const Tensor& dcx) {
  const RnnDescs& d = descs_for(p, x.dtype(), x.device());
  check_reserve(d, reserve);
  Tensor wspace = d.buffer(d.weight_bytes), work = d.buffer(d.work_bytes);
  d.transfer(wspace, weights, true);
  HPDL_CUDNN_CHECK(cudnnRNNBackwardData_v8(d.handle, d.rnn, d.dev_seq_lengths(), d.y, y.raw_data(), dy.raw_data(),
                                           d.x, dx.raw_data(), d.state, hx.raw_data(), dhy.raw_data(),
                                           dhx.raw_data(), d.state, mut(cx), mut(dcy), mut(dcx), d.weight_bytes,
                                           wspace.raw_data(), d.work_bytes, work.raw_data(), d.reserve_bytes,
                                           reserve.raw_data()));
}

void CudaBackend::rnn_backward_weights(const RnnParams& p, const Tensor& x, const Tensor& hx,
                                       const std::vector<Tensor>&, const Tensor& y, const Tensor& reserve,
                                       const std::vector<Tensor>& dweights) {
  const RnnDescs& d = descs_for(p, x.dtype(), x.device());
  check_reserve(d, reserve);
  Tensor dspace = d.buffer(d.weight_bytes), work = d.buffer(d.work_bytes);
  // cuDNN 9 only adds into the gradient buffer (CUDNN_WGRAD_MODE_ADD): start from zeros.
  HPDL_CUDA_CHECK(cudaMemsetAsync(dspace.raw_data(), 0, d.weight_bytes, stream_for(x.device())));
  HPDL_CUDNN_CHECK(cudnnRNNBackwardWeights_v8(d.handle, d.rnn, CUDNN_WGRAD_MODE_ADD, d.dev_seq_lengths(), d.x,
                                              x.raw_data(), d.state, hx.raw_data(), d.y, y.raw_data(),
                                              d.weight_bytes, dspace.raw_data(), d.work_bytes, work.raw_data(),
                                              d.reserve_bytes, reserve.raw_data()));
  d.transfer(dspace, dweights, false);
}

}  // namespace hpdl::cuda
