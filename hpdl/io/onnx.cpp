// ONNX protobuf writer. Field numbers are those of onnx/onnx.proto (proto2):
// ModelProto        ir_version 1, producer_name 2, producer_version 3, doc_string 6,
//                   graph 7, opset_import 8 (OperatorSetIdProto: domain 1, version 2)
// GraphProto        node 1, name 2, initializer 5, doc_string 10, input 11, output 12
// NodeProto         input 1, output 2, name 3, op_type 4, attribute 5
// AttributeProto    name 1, f 2, i 3, ints 8, type 20
// TensorProto       dims 1, data_type 2, name 8, raw_data 9
// ValueInfoProto    name 1, type 2, doc_string 3
// TypeProto         tensor_type 1 (Tensor: elem_type 1, shape 2)
// TensorShapeProto  dim 1 (Dimension: dim_value 1, dim_param 2)
// Repeated scalars are written unpacked (proto2's default); parsers accept both.
#include "hpdl/io/onnx.h"

#include <bit>
#include <cstring>

#include "hpdl/core/error.h"
#include "hpdl/io/file.h"

namespace hpdl::io::onnx {

static_assert(std::endian::native == std::endian::little, "raw_data and fixed32 are written as little-endian");

std::string encode_varint(uint64_t v) {
  std::string out;
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
  return out;
}

void ProtoWriter::tag(int field, WireType type) {
  HPDL_CHECK(field >= 1, "protobuf: field number must be >= 1, got {}", field);
  buf_ += encode_varint((static_cast<uint64_t>(field) << 3) | static_cast<uint64_t>(type));
}

void ProtoWriter::varint_field(int field, uint64_t v) {
  tag(field, WireType::varint);
  buf_ += encode_varint(v);
}

void ProtoWriter::float_field(int field, float v) {
  tag(field, WireType::fixed32);
  char b[4];
  std::memcpy(b, &v, 4);
  buf_.append(b, 4);
}

void ProtoWriter::bytes_field(int field, std::string_view bytes) {
  tag(field, WireType::len);
  buf_ += encode_varint(bytes.size());
  buf_.append(bytes.data(), bytes.size());
}

Attribute Attribute::of_float(std::string name, float v) {
  Attribute a;
  a.name = std::move(name), a.kind = Kind::f, a.f = v;
  return a;
}
Attribute Attribute::of_int(std::string name, int64_t v) {
  Attribute a;
  a.name = std::move(name), a.kind = Kind::i, a.i = v;
  return a;
}
Attribute Attribute::of_string(std::string name, std::string v) {
  Attribute a;
  a.name = std::move(name), a.kind = Kind::s, a.s = std::move(v);
  return a;
}
Attribute Attribute::of_ints(std::string name, std::vector<int64_t> v) {
  Attribute a;
  a.name = std::move(name), a.kind = Kind::ints, a.ints = std::move(v);
  return a;
}

namespace {

int64_t numel(const std::vector<int64_t>& dims) {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

template <typename T>
std::string raw_bytes(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

ProtoWriter attribute_proto(const Attribute& a, const std::string& node) {
  HPDL_CHECK(!a.name.empty(), "ONNX node '{}': an attribute has no name", node);
  ProtoWriter w;
  w.bytes_field(1, a.name);
  switch (a.kind) {
    case Attribute::Kind::f: w.float_field(2, a.f); break;
    case Attribute::Kind::i: w.int64_field(3, a.i); break;
    case Attribute::Kind::s: w.bytes_field(4, a.s); break;
    case Attribute::Kind::ints:
      for (int64_t v : a.ints) w.int64_field(8, v);
      break;
  }
  w.int64_field(20, static_cast<int64_t>(a.kind));
  return w;
}

ProtoWriter node_proto(const Node& n) {
  HPDL_CHECK(!n.op_type.empty(), "ONNX node '{}': empty op_type", n.name);
  HPDL_CHECK(!n.outputs.empty(), "ONNX node '{}' ({}): no outputs", n.name, n.op_type);
  ProtoWriter w;
  for (const auto& s : n.inputs) w.bytes_field(1, s);
  for (const auto& s : n.outputs) {
    HPDL_CHECK(!s.empty(), "ONNX node '{}' ({}): an output has no name", n.name, n.op_type);
    w.bytes_field(2, s);
  }
  if (!n.name.empty()) w.bytes_field(3, n.name);
  w.bytes_field(4, n.op_type);
  for (const auto& a : n.attributes) w.message_field(5, attribute_proto(a, n.name));
  return w;
}

size_t elem_size(ElemType t) { return t == ElemType::i64 ? 8 : 4; }

ProtoWriter tensor_proto(const Initializer& t) {
  HPDL_CHECK(!t.name.empty(), "ONNX initializer: empty name");
  const int64_t n = numel(t.dims);
  HPDL_CHECK(n >= 0 && static_cast<size_t>(n) * elem_size(t.type) == t.raw.size(),
             "ONNX initializer '{}': {} bytes of data for {} elements of {} bytes", t.name, t.raw.size(), n,
             elem_size(t.type));
  ProtoWriter w;
  for (int64_t d : t.dims) w.int64_field(1, d);
  w.int64_field(2, static_cast<int64_t>(t.type));
  w.bytes_field(8, t.name);
  w.bytes_field(9, t.raw);
  return w;
}

ProtoWriter value_info_proto(const ValueInfo& v) {
  HPDL_CHECK(!v.name.empty(), "ONNX graph input/output: empty name");
  ProtoWriter shape;
  for (const Dim& d : v.dims) {
    ProtoWriter dim;
    if (!d.symbol.empty()) dim.bytes_field(2, d.symbol);
    else {
      HPDL_CHECK(d.value >= 0, "ONNX value '{}': dimension {} is neither a size nor a symbol", v.name, d.value);
      dim.int64_field(1, d.value);
    }
    shape.message_field(1, dim);
  }
  ProtoWriter tensor_type;
  tensor_type.int64_field(1, static_cast<int64_t>(v.type));
  tensor_type.message_field(2, shape);
  ProtoWriter type;
  type.message_field(1, tensor_type);
  ProtoWriter w;
  w.bytes_field(1, v.name);
  w.message_field(2, type);
  if (!v.doc.empty()) w.bytes_field(3, v.doc);
  return w;
}

}  // namespace

Initializer Initializer::of_floats(std::string name, std::vector<int64_t> dims, const std::vector<float>& values) {
  HPDL_CHECK(numel(dims) == static_cast<int64_t>(values.size()), "ONNX initializer '{}': {} values for {} elements",
             name, values.size(), numel(dims));
  return {std::move(name), ElemType::f32, std::move(dims), raw_bytes(values)};
}

Initializer Initializer::of_int64s(std::string name, std::vector<int64_t> dims, const std::vector<int64_t>& values) {
  HPDL_CHECK(numel(dims) == static_cast<int64_t>(values.size()), "ONNX initializer '{}': {} values for {} elements",
             name, values.size(), numel(dims));
  return {std::move(name), ElemType::i64, std::move(dims), raw_bytes(values)};
}

std::string serialize(const Model& m) {
  ProtoWriter g;
  for (const auto& n : m.graph.nodes) g.message_field(1, node_proto(n));
  g.bytes_field(2, m.graph.name);
  for (const auto& t : m.graph.initializers) g.message_field(5, tensor_proto(t));
  if (!m.graph.doc.empty()) g.bytes_field(10, m.graph.doc);
  for (const auto& v : m.graph.inputs) g.message_field(11, value_info_proto(v));
  for (const auto& v : m.graph.outputs) g.message_field(12, value_info_proto(v));

  ProtoWriter opset;
  opset.bytes_field(1, "");
  opset.int64_field(2, m.opset);
  ProtoWriter w;
  w.int64_field(1, m.ir_version);
  w.bytes_field(2, m.producer_name);
  if (!m.producer_version.empty()) w.bytes_field(3, m.producer_version);
  if (!m.doc.empty()) w.bytes_field(6, m.doc);
  w.message_field(7, g);
  w.message_field(8, opset);
  return w.bytes();
}

void write_model(const std::filesystem::path& path, const Model& model) {
  const std::string bytes = serialize(model);
  write_file_atomic(path, bytes.data(), bytes.size());
}

}  // namespace hpdl::io::onnx
