// Module tree -> ONNX graph (OnnxGraphBuilder::Impl). Each supported module emits the ONNX nodes of its
// eval-mode forward; the per-sample shape (without the batch) is tracked along
// the way to size pooling and to write the output's shape. Modules are matched
// by exact type (typeid), so a subclass with its own forward is refused rather
// than exported as its base.
#include "hpdl/train/onnx_export.h"

#include <cmath>
#include <limits>
#include <typeinfo>

#include "hpdl/core/error.h"
#include "hpdl/nn/blocks.h"
#include "hpdl/nn/layers.h"
#include "hpdl/nn/models/models.h"
#include "hpdl/nn/models/resnet50.h"
#include "hpdl/nn/models/vit.h"
#include "hpdl/nn/rnn.h"
#include "hpdl/nn/transformer.h"

namespace hpdl::train {

namespace {

using io::onnx::Attribute;
using io::onnx::Initializer;
using io::onnx::Node;

template <typename T>
T* exactly(nn::Module& m) {
  return typeid(m) == typeid(T) ? static_cast<T*>(&m) : nullptr;
}

std::string join(const std::string& path, const std::string& name) { return path.empty() ? name : path + "." + name; }

}  // namespace

class OnnxGraphBuilder::Impl {
 public:
  io::onnx::Graph graph;

  // Emits `m` applied to value `x` whose per-sample shape is `shape` (updated
  // in place); returns the output value's name.
  std::string emit(nn::Module& m, const std::string& path, const std::string& x, Shape& shape) {
    if (auto* seq = exactly<nn::Sequential>(m)) {
      std::string v = x;
      for (const auto& [name, child] : seq->children()) v = emit(*child, join(path, name), v, shape);
      return v;
    }
    if (auto* l = exactly<nn::Linear>(m)) return linear(*l, path, x, shape);
    if (auto* c = exactly<nn::Conv2d>(m)) return conv(*c, path, x, shape);
    if (auto* c = exactly<nn::ConvTranspose2d>(m)) return conv_transpose(*c, path, x, shape);
    if (exactly<nn::BatchNorm2d>(m) || exactly<nn::BatchNorm1d>(m))
      return batch_norm(static_cast<nn::BatchNorm&>(m), path, x, shape);
    if (auto* p = exactly<nn::MaxPool2d>(m)) return pool("MaxPool", p->params, path, x, shape, false);
    if (auto* p = exactly<nn::AvgPool2d>(m)) return pool("AveragePool", p->params, path, x, shape, true);
    if (auto* p = exactly<nn::AdaptiveAvgPool2d>(m)) return adaptive_pool(*p, path, x, shape);
    if (auto* f = exactly<nn::Flatten>(m)) return flatten(*f, path, x, shape);
    if (exactly<nn::Identity>(m) || exactly<nn::Dropout>(m)) return x;  // eval: dropout is the identity
    if (exactly<nn::ReLU>(m)) return unary("Relu", path, x);
    if (exactly<nn::Tanh>(m)) return unary("Tanh", path, x);
    if (exactly<nn::Sigmoid>(m)) return unary("Sigmoid", path, x);
    if (auto* a = exactly<nn::LeakyReLU>(m))
      return node("LeakyRelu", path, {x}, {Attribute::of_float("alpha", static_cast<float>(a->negative_slope))});
    if (exactly<nn::GELU>(m)) return gelu(path, x);
    if (auto* l = exactly<nn::LayerNorm>(m)) return layer_norm(*l, path, x, shape);
    if (auto* l = exactly<nn::GroupNorm>(m)) return group_norm(*l, path, x, shape);
    if (auto* a = exactly<nn::MultiheadAttention>(m)) return attention(*a, path, x, shape);
    if (auto* e = exactly<nn::TransformerEncoderLayer>(m)) return encoder_layer(*e, path, x, shape);
    if (auto* v = exactly<nn::models::VisionTransformer>(m)) return vit(*v, path, x, shape);
    if (auto* b = exactly<nn::BasicBlock>(m)) return basic_block(*b, path, x, shape);
    if (auto* b = exactly<nn::Bottleneck>(m)) return bottleneck(*b, path, x, shape);
    if (auto* r = exactly<nn::models::RnnClassifier>(m)) return rnn_classifier(*r, path, x, shape);
    if (exactly<nn::LSTM>(m) || exactly<nn::GRU>(m)) return rnn_module(static_cast<nn::RNNBase&>(m), path, x, shape);
    std::string inside;
    for (auto& [name, child] : m.named_modules())
      if (!name.empty()) inside += fmt::format("{}{} '{}'", inside.empty() ? "" : ", ", child->type_name(), name);
    HPDL_FAIL("ONNX export: module '{}' of type {}{} cannot be exported (supported: Sequential, Linear, Conv2d, "
              "ConvTranspose2d, BatchNorm1d/2d, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, Flatten, Dropout, Identity, "
              "ReLU, LeakyReLU, Tanh, Sigmoid, GELU, LayerNorm, GroupNorm, MultiheadAttention, TransformerEncoderLayer, "
              "VisionTransformer, BasicBlock, Bottleneck, LSTM, GRU, RnnClassifier)",
              path.empty() ? "(model)" : path, m.type_name(), inside.empty() ? "" : " (containing " + inside + ")");
  }

  // Adds a float32 initializer named `name` holding `t`.
  std::string weight(const std::string& name, const Tensor& t) {
    Shape s = t.shape();
    graph.initializers.push_back(Initializer::of_floats(name, s, t.to_vector<float>()));
    return name;
  }
  std::string constant(const std::string& name, Shape dims, const std::vector<float>& v) {
    graph.initializers.push_back(Initializer::of_floats(name, std::move(dims), v));
    return name;
  }

  std::string node(const std::string& op, const std::string& path, std::vector<std::string> inputs,
                   std::vector<Attribute> attrs = {}) {
    HPDL_CHECK(!op.empty(), "ONNX export: a node at '{}' has no op type", path);
    Node n;
    n.op_type = op;
    n.name = fresh(join(path, op));
    n.inputs = std::move(inputs);
    n.outputs = {n.name};
    n.attributes = std::move(attrs);
    graph.nodes.push_back(std::move(n));
    return graph.nodes.back().outputs[0];
  }

  std::string int64s(const std::string& base, const std::vector<int64_t>& v) {
    const std::string name = fresh(base);
    graph.initializers.push_back(Initializer::of_int64s(name, {static_cast<int64_t>(v.size())}, v));
    return name;
  }
  // A rank-0 int64 (a Gather index that drops the axis).
  std::string int64_scalar(const std::string& base, int64_t v) {
    const std::string name = fresh(base);
    graph.initializers.push_back(Initializer::of_int64s(name, {}, {v}));
    return name;
  }

 private:
  int64_t counter_ = 0;
  std::string fresh(const std::string& base) { return fmt::format("{}_{}", base, counter_++); }

  std::string unary(const char* op, const std::string& path, const std::string& x) { return node(op, path, {x}); }

  std::string linear(nn::Linear& l, const std::string& path, const std::string& x, Shape& shape) {
    HPDL_CHECK(!shape.empty() && shape.back() == l.in_features,
               "ONNX export: Linear '{}' takes {} features, its input is [N, {}]", path, l.in_features,
               shape_str(shape));
    std::string y;
    if (shape.size() == 1) {  // [N, in] x [out, in]^T + [out]
      std::vector<std::string> in{x, weight(join(path, "weight"), l.weight)};
      if (l.bias.defined()) in.push_back(weight(join(path, "bias"), l.bias));
      y = node("Gemm", path, in, {Attribute::of_int("transB", 1)});
    } else {  // [N, ..., in] @ [in, out] (+ [out])
      y = node("MatMul", path, {x, weight(join(path, "weight_t"), l.weight.transpose(0, 1).contiguous())});
      if (l.bias.defined()) y = node("Add", path, {y, weight(join(path, "bias"), l.bias)});
    }
    shape.back() = l.out_features;
    return y;
  }

  std::string conv(nn::Conv2d& c, const std::string& path, const std::string& x, Shape& shape) {
    HPDL_CHECK(shape.size() == 3 && shape[0] == c.in_channels,
               "ONNX export: Conv2d '{}' takes [N, {}, H, W], its input is [N, {}]", path, c.in_channels,
               shape_str(shape));
    const Conv2dParams p = c.params();
    std::vector<std::string> in{x, weight(join(path, "weight"), c.weight)};
    if (c.bias.defined()) in.push_back(weight(join(path, "bias"), c.bias));
    auto [oh, ow] = c.output_size(shape[1], shape[2]);
    shape = {c.out_channels, oh, ow};
    return node("Conv", path, in,
                {Attribute::of_ints("kernel_shape", {c.options.kernel_h, c.options.kernel_w}),
                 Attribute::of_ints("strides", {p.stride_h, p.stride_w}),
                 Attribute::of_ints("pads", {p.pad_h, p.pad_w, p.pad_h, p.pad_w}),
                 Attribute::of_ints("dilations", {p.dilation_h, p.dilation_w}), Attribute::of_int("group", p.groups)});
  }

  // ONNX's ConvTranspose has hpdl's (and PyTorch's) weight layout [in, out/groups, kh, kw] and output size
  // stride*(H-1) + output_padding + dilation*(kh-1) + 1 - pads_begin - pads_end.
  std::string conv_transpose(nn::ConvTranspose2d& c, const std::string& path, const std::string& x, Shape& shape) {
    HPDL_CHECK(shape.size() == 3 && shape[0] == c.in_channels,
               "ONNX export: ConvTranspose2d '{}' takes [N, {}, H, W], its input is [N, {}]", path, c.in_channels,
               shape_str(shape));
    const nn::ConvTranspose2dOptions& o = c.options;
    std::vector<std::string> in{x, weight(join(path, "weight"), c.weight)};
    if (c.bias.defined()) in.push_back(weight(join(path, "bias"), c.bias));
    auto [oh, ow] = c.output_size(shape[1], shape[2]);
    shape = {c.out_channels, oh, ow};
    return node("ConvTranspose", path, in,
                {Attribute::of_ints("kernel_shape", {o.kernel_h, o.kernel_w}),
                 Attribute::of_ints("strides", {o.stride, o.stride}),
                 Attribute::of_ints("pads", {o.padding, o.padding, o.padding, o.padding}),
                 Attribute::of_ints("output_padding", {o.output_padding, o.output_padding}),
                 Attribute::of_ints("dilations", {o.dilation, o.dilation}), Attribute::of_int("group", o.groups)});
  }

  // y = (x - running_mean) / sqrt(running_var + eps) * weight + bias, per channel (axis 1).
  std::string batch_norm(nn::BatchNorm& b, const std::string& path, const std::string& x, const Shape& shape) {
    HPDL_CHECK(!shape.empty() && shape[0] == b.num_features,
               "ONNX export: {} '{}' has {} channels, its input is [N, {}]", b.type_name(), path, b.num_features,
               shape_str(shape));
    return node("BatchNormalization", path,
                {x, weight(join(path, "weight"), b.weight), weight(join(path, "bias"), b.bias),
                 weight(join(path, "running_mean"), b.running_mean), weight(join(path, "running_var"), b.running_var)},
                {Attribute::of_float("epsilon", static_cast<float>(b.eps))});
  }

  std::string pool(const char* op, const Pool2dParams& p, const std::string& path, const std::string& x,
                   Shape& shape, bool average) {
    HPDL_CHECK(shape.size() == 3, "ONNX export: {} '{}' takes [N, C, H, W], its input is [N, {}]", op, path,
               shape_str(shape));
    std::vector<Attribute> attrs{Attribute::of_ints("kernel_shape", {p.kernel_h, p.kernel_w}),
                                 Attribute::of_ints("strides", {p.stride_h, p.stride_w}),
                                 Attribute::of_ints("pads", {p.pad_h, p.pad_w, p.pad_h, p.pad_w})};
    if (average) attrs.push_back(Attribute::of_int("count_include_pad", p.count_include_pad ? 1 : 0));
    shape[1] = (shape[1] + 2 * p.pad_h - p.kernel_h) / p.stride_h + 1;  // floor mode, as hpdl and ONNX's default
    shape[2] = (shape[2] + 2 * p.pad_w - p.kernel_w) / p.stride_w + 1;
    return node(op, path, {x}, std::move(attrs));
  }

  std::string adaptive_pool(nn::AdaptiveAvgPool2d& a, const std::string& path, const std::string& x, Shape& shape) {
    HPDL_CHECK(shape.size() == 3, "ONNX export: AdaptiveAvgPool2d '{}' takes [N, C, H, W], its input is [N, {}]", path,
               shape_str(shape));
    if (a.out_h == 1 && a.out_w == 1) {
      shape = {shape[0], 1, 1};
      return node("GlobalAveragePool", path, {x});
    }
    // Adaptive bins are equal, non-overlapping windows exactly when the output size divides the input.
    HPDL_CHECK(shape[1] % a.out_h == 0 && shape[2] % a.out_w == 0,
               "ONNX export: AdaptiveAvgPool2d '{}' to {}x{} from {}x{} has unequal bins, which ONNX's AveragePool "
               "cannot express (export needs an output size that divides the input size)",
               path, a.out_h, a.out_w, shape[1], shape[2]);
    Pool2dParams p;
    p.kernel_h = p.stride_h = shape[1] / a.out_h;
    p.kernel_w = p.stride_w = shape[2] / a.out_w;
    p.pad_h = p.pad_w = 0;
    return pool("AveragePool", p, path, x, shape, true);
  }

  std::string flatten(nn::Flatten& f, const std::string& path, const std::string& x, Shape& shape) {
    const int64_t rank = static_cast<int64_t>(shape.size()) + 1;
    const int64_t start = f.start_axis < 0 ? f.start_axis + rank : f.start_axis;
    HPDL_CHECK(start >= 1 && start < rank, "ONNX export: Flatten '{}' from axis {} of an input [N, {}] (the batch "
               "axis cannot be flattened)", path, f.start_axis, shape_str(shape));
    int64_t joined = 1;
    for (int64_t i = start - 1; i < rank - 1; ++i) joined *= shape[static_cast<size_t>(i)];
    shape.resize(static_cast<size_t>(start - 1));
    shape.push_back(joined);
    if (start == 1) return node("Flatten", path, {x}, {Attribute::of_int("axis", 1)});
    // Keep the leading axes (0 copies the input's size), join the rest (-1).
    std::vector<int64_t> target(static_cast<size_t>(start), 0);
    target.push_back(-1);
    return node("Reshape", path, {x, int64s(join(path, "shape"), target)});
  }

  // Exact GELU: 0.5 * x * (1 + erf(x / sqrt(2))).
  std::string gelu(const std::string& path, const std::string& x) {
    const std::string base = fresh(join(path, "gelu"));
    std::string t = node("Div", path, {x, constant(base + ".sqrt2", {}, {static_cast<float>(std::sqrt(2.0))})});
    t = node("Erf", path, {t});
    t = node("Add", path, {t, constant(base + ".one", {}, {1.0f})});
    t = node("Mul", path, {x, t});
    return node("Mul", path, {t, constant(base + ".half", {}, {0.5f})});
  }

  // LayerNorm over the last axis, decomposed for opset 13 (LayerNormalization is opset 17):
  // d = x - mean(x); y = d / sqrt(mean(d * d) + eps) * weight + bias (biased variance, as hpdl).
  std::string layer_norm(nn::LayerNorm& l, const std::string& path, const std::string& x, const Shape& shape) {
    HPDL_CHECK(!shape.empty() && shape.back() == l.normalized_size,
               "ONNX export: LayerNorm '{}' normalizes {} features, its input is [N, {}]",
               path.empty() ? "(model)" : path, l.normalized_size, shape_str(shape));
    const std::vector<Attribute> last{Attribute::of_ints("axes", {-1}), Attribute::of_int("keepdims", 1)};
    const std::string d = node("Sub", path, {x, node("ReduceMean", path, {x}, last)});
    const std::string var = node("ReduceMean", path, {node("Mul", path, {d, d})}, last);
    const std::string eps = constant(fresh(join(path, "eps")), {}, {static_cast<float>(l.eps)});
    std::string y = node("Div", path, {d, node("Sqrt", path, {node("Add", path, {var, eps})})});
    y = node("Mul", path, {y, weight(join(path, "weight"), l.weight)});
    return node("Add", path, {y, weight(join(path, "bias"), l.bias)});
  }

  // GroupNorm over x [N, C, ...], decomposed for opset 13 (GroupNormalization is opset 18):
  // x as [N, G, C/G * spatial], normalized over the last axis as layer_norm above, back to
  // x's shape, then weight and bias [C, 1, ...] per channel.
  std::string group_norm(nn::GroupNorm& l, const std::string& path, const std::string& x, const Shape& shape) {
    HPDL_CHECK(!shape.empty() && shape[0] == l.num_channels,
               "ONNX export: GroupNorm '{}' normalizes {} channels, its input is [N, {}]",
               path.empty() ? "(model)" : path, l.num_channels, shape_str(shape));
    std::vector<int64_t> back{0};
    back.insert(back.end(), shape.begin(), shape.end());
    const std::string r = node("Reshape", path, {x, int64s(join(path, "group_shape"), {0, l.num_groups, -1})});
    const std::vector<Attribute> last{Attribute::of_ints("axes", {-1}), Attribute::of_int("keepdims", 1)};
    const std::string d = node("Sub", path, {r, node("ReduceMean", path, {r}, last)});
    const std::string var = node("ReduceMean", path, {node("Mul", path, {d, d})}, last);
    const std::string eps = constant(fresh(join(path, "eps")), {}, {static_cast<float>(l.eps)});
    std::string y = node("Div", path, {d, node("Sqrt", path, {node("Add", path, {var, eps})})});
    y = node("Reshape", path, {y, int64s(join(path, "shape"), back)});
    if (!l.weight.defined()) return y;
    Shape ps(shape.size(), 1);
    ps[0] = l.num_channels;
    y = node("Mul", path, {y, weight(join(path, "weight"), l.weight.detach().reshape(ps))});
    return node("Add", path, {y, weight(join(path, "bias"), l.bias.detach().reshape(ps))});
  }

  // Self-attention over x [N, T, E], as MultiheadAttention::forward without a mask argument:
  // qkv = x @ in_proj_weight^T + in_proj_bias [N, T, 3E] -> [N, T, 3, H, D] -> [3, N, H, T, D];
  // q, k, v by Gather on axis 0; softmax((q / sqrt(D)) @ k^T (+ causal mask)) over the keys (last
  // axis) @ v [N, H, T, D] -> [N, T, H, D] -> [N, T, E] -> out_proj. T is static; N stays dynamic
  // (Reshape's 0 copies it).
  std::string attention(nn::MultiheadAttention& a, const std::string& path, const std::string& x, Shape& shape) {
    const std::string where = path.empty() ? "(model)" : path;
    HPDL_CHECK(shape.size() == 2 && shape[1] == a.embed_dim,
               "ONNX export: MultiheadAttention '{}' takes [N, T, {}], its input is [N, {}]", where, a.embed_dim,
               shape_str(shape));
    const int64_t T = shape[0], E = a.embed_dim, H = a.num_heads, D = a.head_dim;
    std::string qkv = node("MatMul", path, {x, weight(join(path, "in_proj_weight_t"),
                                                      a.in_proj_weight.transpose(0, 1).contiguous())});
    if (a.in_proj_bias.defined()) qkv = node("Add", path, {qkv, weight(join(path, "in_proj_bias"), a.in_proj_bias)});
    qkv = node("Reshape", path, {qkv, int64s(join(path, "qkv_shape"), {0, T, 3, H, D})});
    qkv = node("Transpose", path, {qkv}, {Attribute::of_ints("perm", {2, 0, 3, 1, 4})});
    auto part = [&](int64_t i) {
      return node("Gather", path, {qkv, int64_scalar(join(path, "qkv_index"), i)}, {Attribute::of_int("axis", 0)});
    };
    const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
    const std::string q = node("Mul", path, {part(0), constant(fresh(join(path, "scale")), {}, {scale})});
    const std::string kt = node("Transpose", path, {part(1)}, {Attribute::of_ints("perm", {0, 1, 3, 2})});
    std::string scores = node("MatMul", path, {q, kt});  // [N, H, T, T]
    if (a.causal) {  // query t sees keys s <= t: -inf above the diagonal, as hpdl's causal_mask
      std::vector<float> mask(static_cast<size_t>(T * T), 0.0f);
      for (int64_t t = 0; t < T; ++t)
        for (int64_t s = t + 1; s < T; ++s) mask[static_cast<size_t>(t * T + s)] = -std::numeric_limits<float>::infinity();
      scores = node("Add", path, {scores, constant(join(path, "causal_mask"), {T, T}, mask)});
    }
    const std::string w = node("Softmax", path, {scores}, {Attribute::of_int("axis", -1)});
    std::string ctx = node("MatMul", path, {w, part(2)});  // [N, H, T, D]
    ctx = node("Transpose", path, {ctx}, {Attribute::of_ints("perm", {0, 2, 1, 3})});
    ctx = node("Reshape", path, {ctx, int64s(join(path, "ctx_shape"), {0, T, E})});
    return linear(*a.out_proj, join(path, "out_proj"), ctx, shape);
  }

  // TransformerEncoderLayer in eval mode (dropouts are the identity): pre-norm x + f(norm(x)) or
  // post-norm norm(x + f(x)), for the attention branch (norm1) and the feed-forward branch
  // linear1 -> activation -> linear2 (norm2).
  std::string encoder_layer(nn::TransformerEncoderLayer& e, const std::string& path, const std::string& x,
                            Shape& shape) {
    auto attend = [&](const std::string& h) {
      Shape s = shape;
      return attention(*e.self_attn, join(path, "self_attn"), h, s);
    };
    auto feed_forward = [&](const std::string& h) {
      Shape s = shape;
      std::string y = emit(*e.linear1, join(path, "linear1"), h, s);
      y = emit(*e.activation, join(path, "activation"), y, s);
      return emit(*e.linear2, join(path, "linear2"), y, s);
    };
    auto norm = [&](nn::LayerNorm& l, const char* name, const std::string& h) {
      return layer_norm(l, join(path, name), h, shape);
    };
    HPDL_CHECK(shape.size() == 2, "ONNX export: TransformerEncoderLayer '{}' takes [N, T, E], its input is [N, {}]",
               path.empty() ? "(model)" : path, shape_str(shape));
    if (e.options.norm_first) {
      const std::string h = node("Add", path, {x, attend(norm(*e.norm1, "norm1", x))});
      return node("Add", path, {h, feed_forward(norm(*e.norm2, "norm2", h))});
    }
    const std::string h = norm(*e.norm1, "norm1", node("Add", path, {x, attend(x)}));
    return norm(*e.norm2, "norm2", node("Add", path, {h, feed_forward(h)}));
  }

  // The ViT: patch embedding [N, E, h, w] -> tokens [N, L, E]; the class token [1, 1, E] expanded
  // to [N, 1, E] (the batch taken from the input's Shape) and concatenated in front; + pos_embed;
  // the encoder blocks; the class token's state [N, E] through norm and head.
  std::string vit(nn::models::VisionTransformer& v, const std::string& path, const std::string& x, Shape& shape) {
    const auto& o = v.options;
    HPDL_CHECK(shape == (Shape{o.in_channels, o.height, o.width}),
               "ONNX export: VisionTransformer '{}' takes [N, {}, {}, {}], its input is [N, {}]",
               path.empty() ? "(model)" : path, o.in_channels, o.height, o.width, shape_str(shape));
    Shape s = shape;
    std::string t = emit(*v.patch_embed, join(path, "patch_embed"), x, s);  // [N, E, h, w]
    const int64_t E = o.dim, L = v.num_patches;
    t = node("Reshape", path, {t, int64s(join(path, "tokens_shape"), {0, E, L})});
    t = node("Transpose", path, {t}, {Attribute::of_ints("perm", {0, 2, 1})});  // [N, L, E]
    std::string n = node("Shape", path, {x});
    n = node("Slice", path, {n, int64s(join(path, "batch_start"), {0}), int64s(join(path, "batch_end"), {1})});
    const std::string target = node("Concat", path, {n, int64s(join(path, "ones"), {1, 1})},
                                    {Attribute::of_int("axis", 0)});  // [N, 1, 1]
    const std::string cls = node("Expand", path, {weight(join(path, "cls_token"), v.cls_token), target});
    std::string h = node("Concat", path, {cls, t}, {Attribute::of_int("axis", 1)});  // [N, 1 + L, E]
    h = node("Add", path, {h, weight(join(path, "pos_embed"), v.pos_embed)});
    shape = {1 + L, E};
    h = emit(*v.blocks, join(path, "blocks"), h, shape);
    h = node("Gather", path, {h, int64_scalar(join(path, "cls_index"), 0)}, {Attribute::of_int("axis", 1)});
    shape = {E};
    h = layer_norm(*v.norm, join(path, "norm"), h, shape);
    return emit(*v.head, join(path, "head"), h, shape);
  }

  std::string basic_block(nn::BasicBlock& b, const std::string& path, const std::string& x, Shape& shape) {
    Shape s = shape;
    std::string h = emit(*b.conv1, join(path, "conv1"), x, s);
    h = unary("Relu", join(path, "bn1"), emit(*b.bn1, join(path, "bn1"), h, s));
    h = emit(*b.bn2, join(path, "bn2"), emit(*b.conv2, join(path, "conv2"), h, s), s);
    return residual(b.downsample.get(), path, x, shape, h, s);
  }

  std::string bottleneck(nn::Bottleneck& b, const std::string& path, const std::string& x, Shape& shape) {
    Shape s = shape;
    std::string h = emit(*b.conv1, join(path, "conv1"), x, s);
    h = unary("Relu", join(path, "bn1"), emit(*b.bn1, join(path, "bn1"), h, s));
    h = emit(*b.conv2, join(path, "conv2"), h, s);
    h = unary("Relu", join(path, "bn2"), emit(*b.bn2, join(path, "bn2"), h, s));
    h = emit(*b.bn3, join(path, "bn3"), emit(*b.conv3, join(path, "conv3"), h, s), s);
    return residual(b.downsample.get(), path, x, shape, h, s);
  }

  // The lstm/gru zoo models: rows of the image as timesteps, the recurrent stack (rnn_stack), the
  // last layer's final hidden state into the Linear.
  std::string rnn_classifier(nn::models::RnnClassifier& r, const std::string& path, const std::string& x,
                             Shape& shape) {
    nn::RNNBase& rnn = *r.rnn;
    const std::string rpath = join(path, "rnn");
    // hpdl's RnnClassifier reads h_n[num_layers - 1], which is the last layer's state only without directions.
    HPDL_CHECK(!rnn.options.bidirectional, "ONNX export: RnnClassifier '{}' has a bidirectional {} '{}'; the "
               "classifier is defined for a unidirectional one", path.empty() ? "(model)" : path, rnn.type_name(), rpath);
    std::string seq;  // [T, N, F]
    if (shape.size() == 3) {  // [N, C, H, W] -> [H, N, C, W] -> [H, N, C*W]
      HPDL_CHECK(shape[0] * shape[2] == r.in_features, "ONNX export: '{}' reads rows of {} features, input is [N, {}]",
                 path.empty() ? "(model)" : path, r.in_features, shape_str(shape));
      seq = node("Transpose", path, {x}, {Attribute::of_ints("perm", {2, 0, 1, 3})});
      seq = node("Reshape", path, {seq, int64s(join(path, "seq_shape"), {0, 0, -1})});
    } else {
      HPDL_CHECK(shape.size() == 2 && shape[1] == r.in_features,
                 "ONNX export: '{}' takes [N, C, H, W] or [N, T, {}], input is [N, {}]", path.empty() ? "(model)" : path,
                 r.in_features, shape_str(shape));
      seq = node("Transpose", path, {x}, {Attribute::of_ints("perm", {1, 0, 2})});
    }
    const std::string y_h = rnn_stack(rnn, rpath, seq, false).y_h;  // [1, N, H]
    shape = {rnn.hidden_size};
    return emit(*r.fc, join(path, "fc"), node("Squeeze", rpath, {y_h, int64s(join(rpath, "axes0"), {0})}), shape);
  }

  // A batch_first LSTM or GRU module on its own: [N, T, F] -> [N, T, H * directions], its forward's output.
  std::string rnn_module(nn::RNNBase& rnn, const std::string& path, const std::string& x, Shape& shape) {
    const std::string where = path.empty() ? "(model)" : path;
    HPDL_CHECK(rnn.options.batch_first, "ONNX export: {} '{}' is not batch_first, so its input [T, N, F] has the "
               "batch on axis 1; export needs the batch first (construct it with RnnOptions batch_first = true)",
               rnn.type_name(), where);
    HPDL_CHECK(shape.size() == 2 && shape[1] == rnn.input_size,
               "ONNX export: {} '{}' takes [N, T, {}], its input is [N, {}]", rnn.type_name(), where, rnn.input_size,
               shape_str(shape));
    const std::string seq = node("Transpose", path, {x}, {Attribute::of_ints("perm", {1, 0, 2})});  // [T, N, F]
    const std::string y = rnn_stack(rnn, path, seq, true).seq;                                       // [T, N, D*H]
    shape = {shape[0], rnn.hidden_size * (rnn.options.bidirectional ? 2 : 1)};
    return node("Transpose", path, {y}, {Attribute::of_ints("perm", {1, 0, 2})});
  }

  // The stack of `rnn` on seq [T, N, F]: one ONNX LSTM or GRU node per layer, direction "forward" or
  // "bidirectional". ONNX's gate order differs from PyTorch's (which hpdl uses): LSTM rows i, f, g, o
  // become i, o, f, c; GRU r, z, n become z, r, h, regrouped for each direction, whose weights ONNX
  // stacks on a leading axis (W [D, G*H, F], R [D, G*H, H], B [D, 2*G*H] with B[d] = [Wb, Rb]).
  // PyTorch's GRU applies the reset gate after the recurrent matmul: ONNX's linear_before_reset = 1.
  // ONNX's Y is [T, D, N, H]; the next layer (and hpdl's output) wants [T, N, D*H], forward direction
  // first. Returns that sequence (when `want_seq` or between layers) and the last layer's Y_h [D, N, H].
  struct RnnValues {
    std::string seq, y_h;
  };
  RnnValues rnn_stack(nn::RNNBase& rnn, const std::string& rpath, std::string seq, bool want_seq) {
    const bool lstm = rnn.mode == RnnMode::lstm;
    const int64_t D = rnn.options.bidirectional ? 2 : 1, L = rnn.options.num_layers;
    const std::vector<int64_t> order = lstm ? std::vector<int64_t>{0, 3, 1, 2} : std::vector<int64_t>{1, 0, 2};
    const int64_t H = rnn.hidden_size, G = static_cast<int64_t>(order.size());
    HPDL_CHECK(static_cast<int64_t>(rnn.weights.size()) == 4 * L * D,
               "ONNX export: {} '{}' holds {} weight tensors, expected {} (4 per layer and direction)", rnn.type_name(),
               rpath, rnn.weights.size(), 4 * L * D);
    // Rows of t regrouped gate by gate into ONNX's order, appended to out; `cols` values per row.
    auto gates = [&](const Tensor& t, int64_t cols, std::vector<float>& out) {
      const auto v = t.to_vector<float>();
      for (int64_t g : order) out.insert(out.end(), v.begin() + g * H * cols, v.begin() + (g + 1) * H * cols);
    };
    RnnValues r;
    for (int64_t l = 0; l < L; ++l) {
      const std::string lp = join(rpath, "l" + std::to_string(l));
      const int64_t in = rnn.weights[4 * l * D].dim(1);
      std::vector<float> w, rr, b;
      for (int64_t d = 0; d < D; ++d) {
        const Tensor* p = &rnn.weights[4 * (l * D + d)];  // w_ih, w_hh, b_ih, b_hh
        gates(p[0], in, w);
        gates(p[1], H, rr);
        gates(p[2], 1, b);
        gates(p[3], 1, b);
      }
      Node n;
      n.op_type = lstm ? "LSTM" : "GRU";
      n.name = fresh(join(lp, n.op_type));
      n.inputs = {seq, constant(join(lp, "W"), {D, G * H, in}, w), constant(join(lp, "R"), {D, G * H, H}, rr),
                  constant(join(lp, "B"), {D, 2 * G * H}, b)};
      n.outputs = {n.name + ".Y", n.name + ".Y_h"};
      n.attributes = {Attribute::of_int("hidden_size", H)};
      if (D == 2) n.attributes.push_back(Attribute::of_string("direction", "bidirectional"));
      if (!lstm) n.attributes.push_back(Attribute::of_int("linear_before_reset", 1));
      graph.nodes.push_back(n);
      r.y_h = n.outputs[1];
      if (l + 1 == L && !want_seq) break;
      if (D == 1) {  // Y [T, 1, N, H] -> [T, N, H]
        seq = node("Squeeze", lp, {n.outputs[0], int64s(join(lp, "axes1"), {1})});
      } else {  // Y [T, 2, N, H] -> [T, N, 2, H] -> [T, N, 2H]
        seq = node("Transpose", lp, {n.outputs[0]}, {Attribute::of_ints("perm", {0, 2, 1, 3})});
        seq = node("Reshape", lp, {seq, int64s(join(lp, "seq_shape"), {0, 0, -1})});
      }
    }
    r.seq = seq;
    return r;
  }

  // relu(h + shortcut(x)); `shape` is x's shape on entry and the block's output shape on return.
  std::string residual(nn::Sequential* downsample, const std::string& path, const std::string& x, Shape& shape,
                       const std::string& h, const Shape& h_shape) {
    std::string sc = x;
    if (downsample) sc = emit(*downsample, join(path, "downsample"), x, shape);
    HPDL_CHECK(shape == h_shape, "ONNX export: block '{}': shortcut [N, {}] and residual branch [N, {}] differ", path,
               shape_str(shape), shape_str(h_shape));
    return unary("Relu", path, node("Add", path, {h, sc}));
  }

 public:
  // The graph's one input: float32 [N, sample...], N dynamic.
  void add_input(const std::string& name, const Shape& sample) {
    HPDL_CHECK(!sample.empty(), "ONNX export: the sample shape is empty (need [C, H, W] or [D])");
    for (int64_t d : sample)
      HPDL_CHECK(d > 0, "ONNX export: sample shape {} has a non-positive size", shape_str(sample));
    HPDL_CHECK(!name.empty(), "ONNX export: the input has no name");
    io::onnx::ValueInfo input{name, io::onnx::ElemType::f32, {{-1, "N"}}, ""};
    for (int64_t d : sample) input.dims.push_back({d, ""});
    graph.inputs.push_back(input);
  }

  io::onnx::Model finish(const std::string& y, const Shape& shape, const std::string& output_name,
                         const std::string& doc) {
    HPDL_CHECK(!output_name.empty(), "ONNX export: the output has no name");
    if (y == graph.inputs.at(0).name) node("Identity", "", {y});
    HPDL_CHECK(!graph.nodes.empty() && graph.nodes.back().outputs[0] == y,
               "ONNX export: the output '{}' is not the last node's output", y);
    // Rename the last value to the output name (no node reads it).
    graph.nodes.back().outputs[0] = output_name;
    io::onnx::ValueInfo output{output_name, io::onnx::ElemType::f32, {{-1, "N"}}, ""};
    for (int64_t d : shape) output.dims.push_back({d, ""});
    graph.outputs.push_back(output);
    graph.name = "hpdl";
    graph.doc = doc;
    io::onnx::Model m;
    m.producer_version = HPDL_VERSION;
    m.graph = std::move(graph);
    return m;
  }
};

io::onnx::Model export_onnx(nn::Module& model, const OnnxExportOptions& o) {
  HPDL_CHECK(o.mean.size() == o.std.size(), "ONNX export: normalization has {} means and {} stds", o.mean.size(),
             o.std.size());
  OnnxGraphBuilder::Impl ex;
  ex.add_input(o.input_name, o.sample);
  std::string x = o.input_name;
  if (!o.mean.empty()) {
    // (x - mean) / std with per-channel constants broadcast as [1, C, 1, ...].
    const int64_t c = o.sample[0];
    HPDL_CHECK(o.mean.size() == 1 || static_cast<int64_t>(o.mean.size()) == c,
               "ONNX export: normalization has {} values for {} channels (need 1 or {})", o.mean.size(), c, c);
    std::vector<float> mean(static_cast<size_t>(c)), stdev(static_cast<size_t>(c));
    for (int64_t i = 0; i < c; ++i) {
      mean[i] = static_cast<float>(o.mean.size() == 1 ? o.mean[0] : o.mean[i]);
      stdev[i] = static_cast<float>(o.std.size() == 1 ? o.std[0] : o.std[i]);
      HPDL_CHECK(stdev[i] != 0.0f, "ONNX export: normalization std of channel {} is 0", i);
    }
    Shape dims(o.sample.size() + 1, 1);
    dims[1] = c;
    x = ex.node("Sub", "normalize", {x, ex.constant("normalize.mean", dims, mean)});
    x = ex.node("Div", "normalize", {x, ex.constant("normalize.std", dims, stdev)});
  }
  Shape shape = o.sample;
  const std::string y = ex.emit(model, "", x, shape);
  return ex.finish(y, shape, o.output_name, o.doc);
}

void save_onnx(const std::filesystem::path& path, nn::Module& model, const OnnxExportOptions& options) {
  io::onnx::write_model(path, export_onnx(model, options));
}

OnnxGraphBuilder::OnnxGraphBuilder(const std::string& input_name, const Shape& sample)
    : impl_(std::make_unique<Impl>()), input_(input_name) {
  impl_->add_input(input_name, sample);
}

OnnxGraphBuilder::~OnnxGraphBuilder() = default;

std::string OnnxGraphBuilder::emit(nn::Module& m, const std::string& path, const std::string& x, Shape& shape) {
  HPDL_CHECK(impl_, "OnnxGraphBuilder: used after finish()");
  return impl_->emit(m, path, x, shape);
}

std::string OnnxGraphBuilder::node(const std::string& op, const std::string& path,
                                   const std::vector<std::string>& inputs,
                                   const std::vector<io::onnx::Attribute>& attrs) {
  HPDL_CHECK(impl_, "OnnxGraphBuilder: used after finish()");
  return impl_->node(op, path, inputs, attrs);
}

std::string OnnxGraphBuilder::reshape(const std::string& path, const std::string& x, Shape& shape, const Shape& to) {
  HPDL_CHECK(impl_, "OnnxGraphBuilder: used after finish()");
  HPDL_CHECK(!to.empty() && numel_of(to) == numel_of(shape),
             "ONNX export: '{}' cannot reshape [N, {}] to [N, {}] (sizes differ)", path, shape_str(shape),
             shape_str(to));
  std::vector<int64_t> target{0};  // 0: keep the batch
  target.insert(target.end(), to.begin(), to.end());
  shape = to;
  return impl_->node("Reshape", path, {x, impl_->int64s(join(path, "shape"), target)});
}

io::onnx::Model OnnxGraphBuilder::finish(const std::string& y, const Shape& shape, const std::string& output_name,
                                         const std::string& doc) {
  HPDL_CHECK(impl_, "OnnxGraphBuilder: finish() called twice");
  io::onnx::Model m = impl_->finish(y, shape, output_name, doc);
  impl_.reset();
  return m;
}

}  // namespace hpdl::train
