// An ONNX model writer without a protobuf library: the protobuf wire format
// (varints, fixed32, length-delimited fields) and the few onnx.proto messages an
// inference graph needs (ModelProto, GraphProto, NodeProto, AttributeProto,
// TensorProto, ValueInfoProto), with the field numbers of the public onnx.proto.
// The exporter that turns hpdl modules into such a graph is hpdl/train/onnx_export.h.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace hpdl::io::onnx {

// ---- protobuf wire format ----
// Wire types: 0 varint, 1 fixed64, 2 length-delimited, 5 fixed32.
enum class WireType : uint8_t { varint = 0, fixed64 = 1, len = 2, fixed32 = 5 };

// The base-128 varint of v (little-endian groups of 7 bits, high bit = more).
// Negative int64 values are encoded as their 64-bit two's complement (10 bytes),
// as protobuf does for int64/int32 fields.
std::string encode_varint(uint64_t v);

// Appends fields to a message buffer. Field numbers must be >= 1.
class ProtoWriter {
 public:
  void varint_field(int field, uint64_t v);
  void int64_field(int field, int64_t v) { varint_field(field, static_cast<uint64_t>(v)); }
  void float_field(int field, float v);  // fixed32, IEEE little-endian
  void bytes_field(int field, std::string_view bytes);
  void message_field(int field, const ProtoWriter& message) { bytes_field(field, message.bytes()); }
  const std::string& bytes() const { return buf_; }

 private:
  void tag(int field, WireType type);
  std::string buf_;
};

// ---- the ONNX messages hpdl writes ----
enum class ElemType : int32_t { f32 = 1, i64 = 7 };  // TensorProto.DataType

struct Attribute {
  enum class Kind : int32_t { f = 1, i = 2, s = 3, ints = 7 };  // AttributeProto.AttributeType
  std::string name;
  Kind kind = Kind::i;
  float f = 0;
  int64_t i = 0;
  std::string s;  // bytes (ONNX strings are UTF-8)
  std::vector<int64_t> ints;
  static Attribute of_float(std::string name, float v);
  static Attribute of_int(std::string name, int64_t v);
  static Attribute of_string(std::string name, std::string v);
  static Attribute of_ints(std::string name, std::vector<int64_t> v);
};

struct Node {
  std::string op_type, name;
  std::vector<std::string> inputs, outputs;
  std::vector<Attribute> attributes;
};

// A constant tensor (weights): raw little-endian bytes in raw_data.
struct Initializer {
  std::string name;
  ElemType type = ElemType::f32;
  std::vector<int64_t> dims;
  std::string raw;  // numel * element size bytes
  static Initializer of_floats(std::string name, std::vector<int64_t> dims, const std::vector<float>& values);
  static Initializer of_int64s(std::string name, std::vector<int64_t> dims, const std::vector<int64_t>& values);
};

// A graph input or output: name, element type and shape; a dimension is a
// fixed size (>= 0) or, when `symbol` is non-empty, a named dynamic one ("N").
struct Dim {
  int64_t value = -1;
  std::string symbol;
};
struct ValueInfo {
  std::string name;
  ElemType type = ElemType::f32;
  std::vector<Dim> dims;
  std::string doc;
};

struct Graph {
  std::string name = "hpdl";
  std::vector<Node> nodes;  // in topological order
  std::vector<Initializer> initializers;
  std::vector<ValueInfo> inputs, outputs;
  std::string doc;
};

struct Model {
  int64_t ir_version = 8;
  int64_t opset = 13;  // the default ("") domain's opset
  std::string producer_name = "hpdl", producer_version, doc;
  Graph graph;
};

// The ModelProto bytes. Throws hpdl::Error for a malformed model: an empty
// op_type, an unnamed node output, graph input or initializer, or an
// initializer whose byte count does not match its dims.
std::string serialize(const Model& model);
// serialize() written atomically to `path` (hpdl/io/file.h); throws naming the file.
void write_model(const std::filesystem::path& path, const Model& model);

}  // namespace hpdl::io::onnx
