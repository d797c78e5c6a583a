// The ONNX protobuf writer: varint and field encodings against hand-computed
// bytes, and a whole ModelProto read back by a small wire-format reader
// written here (independent of the writer), field numbers from onnx.proto.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <map>
#include <unistd.h>

#include "hpdl/core/error.h"
#include "hpdl/io/onnx.h"

namespace hpdl::io::onnx {
namespace {

std::string bytes(std::initializer_list<int> b) {
  std::string s;
  for (int v : b) s.push_back(static_cast<char>(v));
  return s;
}

TEST(OnnxWire, VarintKnownValues) {
  EXPECT_EQ(encode_varint(0), bytes({0x00}));
  EXPECT_EQ(encode_varint(1), bytes({0x01}));
  EXPECT_EQ(encode_varint(127), bytes({0x7f}));
  EXPECT_EQ(encode_varint(128), bytes({0x80, 0x01}));
  EXPECT_EQ(encode_varint(300), bytes({0xac, 0x02}));  // the protobuf documentation's example
  EXPECT_EQ(encode_varint(16384), bytes({0x80, 0x80, 0x01}));
  EXPECT_EQ(encode_varint(~uint64_t{0}), bytes({0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}));
}

TEST(OnnxWire, FieldsCarryTagAndPayload) {
  ProtoWriter w;
  w.int64_field(1, 150);  // tag (1 << 3) | 0 = 0x08, then 150 = 0x96 0x01
  EXPECT_EQ(w.bytes(), bytes({0x08, 0x96, 0x01}));
  ProtoWriter neg;
  neg.int64_field(2, -1);  // int64 -1: ten bytes of two's complement
  EXPECT_EQ(neg.bytes(), bytes({0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}));
  ProtoWriter f;
  f.float_field(2, 1.0f);  // tag 0x15 (fixed32), 1.0f = 0x3f800000 little-endian
  EXPECT_EQ(f.bytes(), bytes({0x15, 0x00, 0x00, 0x80, 0x3f}));
  ProtoWriter s;
  s.bytes_field(20, "ab");  // tag (20 << 3) | 2 = 162 = 0xa2 0x01
  EXPECT_EQ(s.bytes(), bytes({0xa2, 0x01, 0x02, 'a', 'b'}));
  ProtoWriter outer;
  outer.message_field(3, w);
  EXPECT_EQ(outer.bytes(), bytes({0x1a, 0x03, 0x08, 0x96, 0x01}));
  EXPECT_THROW(ProtoWriter().varint_field(0, 1), Error);
}

// ---- a minimal protobuf reader for the round trip ----
struct Field {
  int wire = 0;
  uint64_t v = 0;    // varint or fixed32 bits
  std::string data;  // length-delimited
};
using Message = std::multimap<int, Field>;

uint64_t read_varint(const std::string& s, size_t& pos) {
  uint64_t v = 0;
  for (int shift = 0;; shift += 7) {
    EXPECT_LT(pos, s.size());
    if (pos >= s.size()) return v;
    const auto b = static_cast<uint8_t>(s[pos++]);
    v |= static_cast<uint64_t>(b & 0x7f) << shift;
    if (!(b & 0x80)) return v;
  }
}

Message parse(const std::string& s) {
  Message m;
  size_t pos = 0;
  while (pos < s.size()) {
    const uint64_t key = read_varint(s, pos);
    Field f;
    f.wire = static_cast<int>(key & 7);
    if (f.wire == 0) f.v = read_varint(s, pos);
    else if (f.wire == 5) {
      uint32_t b;
      std::memcpy(&b, s.data() + pos, 4);
      f.v = b, pos += 4;
    } else if (f.wire == 2) {
      const uint64_t n = read_varint(s, pos);
      f.data = s.substr(pos, n), pos += n;
    } else {
      ADD_FAILURE() << "unexpected wire type " << f.wire;
      return m;
    }
    m.emplace(static_cast<int>(key >> 3), f);
  }
  EXPECT_EQ(pos, s.size());
  return m;
}
const Field& one(const Message& m, int field) {
  EXPECT_EQ(m.count(field), 1u) << "field " << field;
  static const Field missing;
  auto it = m.find(field);
  return it == m.end() ? missing : it->second;
}
std::vector<Message> all(const Message& m, int field) {
  std::vector<Message> out;
  for (auto [it, end] = m.equal_range(field); it != end; ++it) out.push_back(parse(it->second.data));
  return out;
}

Model tiny_model() {
  Model m;
  m.producer_version = "1.2.3";
  m.graph.name = "g";
  m.graph.inputs.push_back({"x", ElemType::f32, {{-1, "N"}, {3, ""}}, ""});
  m.graph.outputs.push_back({"y", ElemType::f32, {{-1, "N"}, {2, ""}}, ""});
  m.graph.initializers.push_back(Initializer::of_floats("w", {2, 3}, {1, 2, 3, 4, 5, 6}));
  m.graph.initializers.push_back(Initializer::of_int64s("shape", {2}, {0, -1}));
  Node n;
  n.op_type = "Gemm";
  n.name = "fc";
  n.inputs = {"x", "w"};
  n.outputs = {"y"};
  n.attributes = {Attribute::of_int("transB", 1), Attribute::of_float("alpha", 0.5f),
                  Attribute::of_ints("pads", {1, -2}), Attribute::of_string("direction", "bidirectional")};
  m.graph.nodes.push_back(n);
  return m;
}

TEST(OnnxWire, ModelRoundTripThroughAnIndependentReader) {
  const Message model = parse(serialize(tiny_model()));
  EXPECT_EQ(one(model, 1).v, 8u);  // ir_version
  EXPECT_EQ(one(model, 2).data, "hpdl");
  EXPECT_EQ(one(model, 3).data, "1.2.3");
  const Message opset = parse(one(model, 8).data);
  EXPECT_EQ(one(opset, 1).data, "");
  EXPECT_EQ(one(opset, 2).v, 13u);

  const Message graph = parse(one(model, 7).data);
  EXPECT_EQ(one(graph, 2).data, "g");
  auto nodes = all(graph, 1);
  ASSERT_EQ(nodes.size(), 1u);
  EXPECT_EQ(one(nodes[0], 4).data, "Gemm");
  EXPECT_EQ(one(nodes[0], 3).data, "fc");
  auto inputs = nodes[0].equal_range(1);
  ASSERT_EQ(std::distance(inputs.first, inputs.second), 2);
  EXPECT_EQ(inputs.first->second.data, "x");
  EXPECT_EQ(std::next(inputs.first)->second.data, "w");
  EXPECT_EQ(one(nodes[0], 2).data, "y");
  auto attrs = all(nodes[0], 5);
  ASSERT_EQ(attrs.size(), 4u);
  EXPECT_EQ(one(attrs[0], 1).data, "transB");
  EXPECT_EQ(one(attrs[0], 3).v, 1u);
  EXPECT_EQ(one(attrs[0], 20).v, 2u);  // AttributeType INT
  float alpha;
  const auto bits = static_cast<uint32_t>(one(attrs[1], 2).v);
  std::memcpy(&alpha, &bits, 4);
  EXPECT_EQ(alpha, 0.5f);
  EXPECT_EQ(one(attrs[1], 20).v, 1u);  // FLOAT
  auto ints = attrs[2].equal_range(8);
  ASSERT_EQ(std::distance(ints.first, ints.second), 2);
  EXPECT_EQ(ints.first->second.v, 1u);
  EXPECT_EQ(static_cast<int64_t>(std::next(ints.first)->second.v), -2);
  EXPECT_EQ(one(attrs[2], 20).v, 7u);  // INTS
  EXPECT_EQ(one(attrs[3], 1).data, "direction");
  EXPECT_EQ(one(attrs[3], 4).data, "bidirectional");
  EXPECT_EQ(one(attrs[3], 20).v, 3u);  // STRING

  auto inits = all(graph, 5);
  ASSERT_EQ(inits.size(), 2u);
  EXPECT_EQ(one(inits[0], 8).data, "w");
  EXPECT_EQ(one(inits[0], 2).v, 1u);  // FLOAT
  auto dims = inits[0].equal_range(1);
  ASSERT_EQ(std::distance(dims.first, dims.second), 2);
  EXPECT_EQ(dims.first->second.v, 2u);
  EXPECT_EQ(std::next(dims.first)->second.v, 3u);
  const std::string raw = one(inits[0], 9).data;
  ASSERT_EQ(raw.size(), 24u);
  float w[6];
  std::memcpy(w, raw.data(), 24);
  for (int i = 0; i < 6; ++i) EXPECT_EQ(w[i], static_cast<float>(i + 1));
  EXPECT_EQ(one(inits[1], 2).v, 7u);  // INT64
  int64_t shape[2];
  std::memcpy(shape, one(inits[1], 9).data.data(), 16);
  EXPECT_EQ(shape[0], 0);
  EXPECT_EQ(shape[1], -1);

  // input x: TypeProto.tensor_type { elem_type 1, shape { dim { dim_param "N" } dim { dim_value 3 } } }
  auto in = all(graph, 11);
  ASSERT_EQ(in.size(), 1u);
  EXPECT_EQ(one(in[0], 1).data, "x");
  const Message tensor_type = parse(one(parse(one(in[0], 2).data), 1).data);
  EXPECT_EQ(one(tensor_type, 1).v, 1u);
  auto dim = all(parse(one(tensor_type, 2).data), 1);
  ASSERT_EQ(dim.size(), 2u);
  EXPECT_EQ(one(dim[0], 2).data, "N");
  EXPECT_EQ(one(dim[1], 1).v, 3u);
  EXPECT_EQ(all(graph, 12).size(), 1u);
}

TEST(OnnxWire, MalformedModelsAreRefused) {
  Model m = tiny_model();
  m.graph.initializers[0].raw.pop_back();
  EXPECT_THROW(serialize(m), Error);
  m = tiny_model();
  m.graph.nodes[0].op_type.clear();
  EXPECT_THROW(serialize(m), Error);
  m = tiny_model();
  m.graph.inputs[0].dims[1] = {-1, ""};
  EXPECT_THROW(serialize(m), Error);
  EXPECT_THROW(Initializer::of_floats("w", {2, 2}, {1, 2, 3}), Error);
}

TEST(OnnxWire, WriteIsAtomicAndNamesTheFile) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("hpdl_onnx_test_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const fs::path path = dir / "m.onnx";
  write_model(path, tiny_model());
  EXPECT_EQ(fs::file_size(path), serialize(tiny_model()).size());
  // A failing serialization leaves the old file untouched and no temporary behind.
  Model bad = tiny_model();
  bad.graph.nodes[0].op_type.clear();
  EXPECT_THROW(write_model(path, bad), Error);
  EXPECT_EQ(fs::file_size(path), serialize(tiny_model()).size());
  try {
    write_model(dir / "missing" / "m.onnx", tiny_model());
    ADD_FAILURE() << "no error for a missing directory";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("m.onnx"), std::string::npos) << e.what();
  }
  EXPECT_EQ(std::distance(fs::directory_iterator(dir), fs::directory_iterator()), 1);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace hpdl::io::onnx
