// Private to the CUDA backend: convolutions through cuDNN's graph API with
// execution plans cached per shape (cudnn_graph.cpp). The public switch and
// counters are in cuda.h (set_conv_graph, graph_conv_stats).
#pragma once

#include "hpdl/backend/backend.h"

namespace hpdl::cuda {

enum class ConvDir { fwd, bwd_data, bwd_filter };

// One convolution on dense operands of one dtype, by role: fwd y = conv(x, w); bwd_data x = dx from
// y = dy and w; bwd_filter w = dw from x and y = dy. Returns false, having run nothing, when the graph
// path is off or no engine can run these operands; the caller then uses the legacy API.
bool run_graph_conv(ConvDir dir, const Tensor& x, const Tensor& w, const Tensor& y, const Conv2dParams& p);

}  // namespace hpdl::cuda
