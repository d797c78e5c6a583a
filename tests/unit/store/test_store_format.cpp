// Unit tests of the packed data store: pack/read round trips (nested folders, empty
// files, a file over 100 MB, idx datasets, compression, append), and bad input:
// flipped bytes, truncated partitions and index, paths that try to escape the store.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <thread>

#include "hpdl/core/error.h"
#include "hpdl/store/reader.h"
#include "hpdl/store/writer.h"

namespace fs = std::filesystem;
using namespace hpdl::store;

namespace {

// A fresh temporary folder per test, removed afterwards.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "hpdl_store_XXXXXX").string();
    path_ = ::mkdtemp(tmpl.data());
  }
  ~TempDir() { fs::remove_all(path_); }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

void write_text(const fs::path& p, const std::string& s) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << s;
}

std::string as_string(const std::vector<std::byte>& v) { return {reinterpret_cast<const char*>(v.data()), v.size()}; }

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

// Flips one byte of a file in place.
void flip_byte(const fs::path& p, uint64_t offset) {
  std::fstream f(p, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(offset);
  char c = 0;
  f.read(&c, 1);
  c ^= 0x5a;
  f.seekp(offset);
  f.write(&c, 1);
}

// The small tree most tests use: nested folders, an empty file, binary content.
void make_tree(const fs::path& root) {
  write_text(root / "a" / "b.txt", "hello from a/b.txt\n");
  write_text(root / "a" / "c" / "d" / "deep.bin", std::string("\x00\x01\x02\xff", 4));
  write_text(root / "empty.txt", "");
  write_text(root / "top.txt", std::string(10000, 'x'));
  write_text(root / "b-sibling.txt", "sorted before b/?");
  fs::create_directories(root / "a" / "c" / "e");
  write_text(root / "a" / "c" / "e" / "f.txt", "f");
}

std::string expect_error(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const hpdl::Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected hpdl::Error";
  return {};
}

}  // namespace

TEST(StoreFormat, RoundTripNestedTreeWithEmptyFiles) {
  TempDir t;
  make_tree(t.path() / "src");
  PackStats st = pack(t.path() / "src", t.path() / "store", {});
  EXPECT_EQ(st.entries, 6u);
  Reader r = Reader::open(t.path() / "store");
  ASSERT_EQ(r.size(), 6u);
  for (const char* p : {"a/b.txt", "a/c/d/deep.bin", "empty.txt", "top.txt", "b-sibling.txt", "a/c/e/f.txt"}) {
    auto i = r.find(p);
    ASSERT_TRUE(i.has_value()) << p;
    EXPECT_EQ(as_string(r.read(*i)), slurp(t.path() / "src" / p)) << p;
    EXPECT_EQ(r.entry(*i).label, kNoLabel);
  }
  EXPECT_EQ(r.read(*r.find("empty.txt")).size(), 0u);
  EXPECT_TRUE(r.is_dir(""));
  EXPECT_TRUE(r.is_dir("a/c"));
  EXPECT_FALSE(r.is_dir("a/b.txt"));
  auto root = r.list_dir("");
  ASSERT_TRUE(root.has_value());
  std::vector<std::string> names;
  for (auto& d : *root) names.push_back(d.name + (d.is_dir ? "/" : ""));
  EXPECT_EQ(names, (std::vector<std::string>{"a/", "b-sibling.txt", "empty.txt", "top.txt"}));
  auto ac = r.list_dir("a/c");
  ASSERT_TRUE(ac.has_value());
  ASSERT_EQ(ac->size(), 2u);
  EXPECT_EQ((*ac)[0].name, "d");
  EXPECT_EQ(r.list("a/").size(), 3u);
  // read_at behaves like pread.
  std::vector<std::byte> buf(5);
  EXPECT_EQ(r.read_at(*r.find("a/b.txt"), 6, buf), 5u);
  EXPECT_EQ(as_string(buf), "from ");
  EXPECT_EQ(r.read_at(*r.find("a/b.txt"), 1000, buf), 0u);
}

TEST(StoreFormat, PackingIsDeterministic) {
  TempDir t;
  make_tree(t.path() / "src");
  PackOptions o;
  o.partition_count = 3;
  pack(t.path() / "src", t.path() / "s1", o);
  pack(t.path() / "src", t.path() / "s2", o);
  for (auto& de : fs::directory_iterator(t.path() / "s1"))
    EXPECT_EQ(slurp(de.path()), slurp(t.path() / "s2" / de.path().filename())) << de.path();
}

TEST(StoreFormat, LargeFileOver100MBAndPartitionLimits) {
  TempDir t;
  const size_t big = (100u << 20) + 12345;
  {
    fs::create_directories(t.path() / "src" / "big");
    std::ofstream out(t.path() / "src" / "big" / "blob.bin", std::ios::binary);
    std::mt19937_64 rng(7);
    std::vector<uint64_t> chunk(1 << 17);
    size_t left = big;
    while (left) {
      for (auto& v : chunk) v = rng();
      size_t n = std::min(left, chunk.size() * 8);
      out.write(reinterpret_cast<const char*>(chunk.data()), n);
      left -= n;
    }
  }
  write_text(t.path() / "src" / "small" / "x.txt", "x");
  write_text(t.path() / "src" / "small" / "y.txt", "y");
  PackOptions o;
  o.partition_bytes = 64u << 20;  // the big file gets a partition of its own
  PackStats st = pack(t.path() / "src", t.path() / "store", o);
  EXPECT_EQ(st.partitions, 2u);
  Reader r = Reader::open(t.path() / "store");
  auto i = r.find("big/blob.bin");
  ASSERT_TRUE(i.has_value());
  EXPECT_EQ(r.entry(*i).size, big);
  auto bytes = r.read(*i);
  EXPECT_EQ(as_string(bytes), slurp(t.path() / "src" / "big" / "blob.bin"));
  std::vector<std::byte> tail(100);
  EXPECT_EQ(r.read_at(*i, big - 40, tail), 40u);
}

// Large uncompressed files start on a kMapAlign boundary of their partition file
// (what lets the LD_PRELOAD shim map them in place); small ones stay packed
// back to back; align_min_bytes = 0 and compression turn it off.
TEST(StoreFormat, LargeFilesStartOnAMapBoundary) {
  TempDir t;
  make_tree(t.path() / "src");
  std::string big(300000, '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = char(i * 7 + i / 251);
  write_text(t.path() / "src" / "big1.bin", big);
  write_text(t.path() / "src" / "big2.bin", big.substr(1000));
  write_text(t.path() / "src" / "c-small.txt", "between the big ones");
  auto offsets = [&](const std::string& name, uint64_t align_min, Compression c) {
    PackOptions o;
    o.align_min_bytes = align_min;
    o.compression = c;
    pack(t.path() / "src", t.path() / name, o);
    Reader r = Reader::open(t.path() / name);
    r.verify_all();
    EXPECT_EQ(as_string(r.read("big1.bin")), big);
    EXPECT_EQ(as_string(r.read("big2.bin")), big.substr(1000));
    EXPECT_EQ(as_string(r.read("c-small.txt")), "between the big ones");
    std::map<std::string, uint64_t> at;
    for (size_t i = 0; i < r.size(); ++i) at[r.entry(i).path] = kHeaderSize + r.entry(i).offset;
    return at;
  };
  auto aligned = offsets("aligned", 100000, Compression::none);
  EXPECT_EQ(aligned["big1.bin"] % kMapAlign, 0u);
  EXPECT_EQ(aligned["big2.bin"] % kMapAlign, 0u);
  EXPECT_NE(aligned["a/b.txt"] % kMapAlign, 0u);  // packed right after its neighbours
  // Only the two large files pay padding: the partition is < 2 * kMapAlign larger.
  auto dense = offsets("dense", 0, Compression::none);
  const uint64_t a_size = fs::file_size(t.path() / "aligned" / partition_name(0));
  const uint64_t d_size = fs::file_size(t.path() / "dense" / partition_name(0));
  EXPECT_GT(a_size, d_size);
  EXPECT_LT(a_size - d_size, 2 * kMapAlign);
  EXPECT_NE(dense["big1.bin"] % kMapAlign, 0u);
  // Packing stays deterministic with padding.
  offsets("aligned2", 100000, Compression::none);
  EXPECT_EQ(slurp(t.path() / "aligned" / partition_name(0)), slurp(t.path() / "aligned2" / partition_name(0)));
  EXPECT_EQ(slurp(t.path() / "aligned" / kIndexName), slurp(t.path() / "aligned2" / kIndexName));
  auto zstd = offsets("zstd", 100000, Compression::zstd);
  EXPECT_NE(zstd["big2.bin"] % kMapAlign, 0u);  // no padding: nothing to map in place
}

TEST(StoreFormat, CompressionRoundTrip) {
  for (const char* c : {"lz4", "zstd"}) {
    TempDir t;
    make_tree(t.path() / "src");
    PackOptions o;
    o.compression = parse_compression(c);
    PackStats st = pack(t.path() / "src", t.path() / "store", o);
    EXPECT_LT(st.bytes_stored, st.bytes_in) << c;
    Reader r = Reader::open(t.path() / "store");
    auto i = *r.find("top.txt");
    EXPECT_EQ(r.entry(i).compression, o.compression);
    EXPECT_EQ(as_string(r.read(i)), std::string(10000, 'x'));
    std::vector<std::byte> buf(3);
    EXPECT_EQ(r.read_at(i, 9998, buf), 2u);
    EXPECT_THROW(r.view(i), hpdl::Error);
    r.verify_all();
  }
}

TEST(StoreFormat, AppendAddsPartitionsAndRewritesIndex) {
  TempDir t;
  make_tree(t.path() / "src");
  write_text(t.path() / "more" / "new.txt", "new");
  pack(t.path() / "src", t.path() / "store", {});
  std::string err = expect_error([&] { pack(t.path() / "more", t.path() / "store", {}); });
  EXPECT_NE(err.find("--append"), std::string::npos) << err;
  PackOptions o;
  o.append = true;
  PackStats st = pack(t.path() / "more", t.path() / "store", o);
  EXPECT_EQ(st.entries, 1u);
  Reader r = Reader::open(t.path() / "store");
  EXPECT_EQ(r.size(), 7u);
  EXPECT_EQ(as_string(r.read("new.txt")), "new");
  EXPECT_EQ(as_string(r.read("a/b.txt")), "hello from a/b.txt\n");
  EXPECT_TRUE(fs::exists(t.path() / "store" / partition_name(1)));
  EXPECT_FALSE(fs::exists(t.path() / "store" / (std::string(kIndexName) + ".tmp")));
  // Appending the same paths again is refused and leaves the store as it was.
  err = expect_error([&] { pack(t.path() / "more", t.path() / "store", o); });
  EXPECT_NE(err.find("new.txt"), std::string::npos) << err;
  o.prefix = "extra";
  pack(t.path() / "more", t.path() / "store", o);
  EXPECT_EQ(as_string(Reader::open(t.path() / "store").read("extra/new.txt")), "new");
}

TEST(StoreFormat, FlippedByteGivesChecksumErrorNamingTheFile) {
  TempDir t;
  make_tree(t.path() / "src");
  pack(t.path() / "src", t.path() / "store", {});
  uint64_t offset;
  {
    Reader r = Reader::open(t.path() / "store");
    offset = kHeaderSize + r.entry(*r.find("a/b.txt")).offset + 3;
  }
  flip_byte(t.path() / "store" / partition_name(0), offset);
  Reader r = Reader::open(t.path() / "store");
  std::string err = expect_error([&] { r.read("a/b.txt"); });
  EXPECT_NE(err.find("checksum mismatch"), std::string::npos) << err;
  EXPECT_NE(err.find("a/b.txt"), std::string::npos) << err;
  EXPECT_NE(err.find(partition_name(0)), std::string::npos) << err;
  EXPECT_EQ(as_string(r.read("top.txt")), std::string(10000, 'x'));  // others still fine
  // Verify::never skips content checks (headers still checked on open).
  ReaderOptions never;
  never.verify = Verify::never;
  EXPECT_NO_THROW(Reader::open(t.path() / "store", never).read("a/b.txt"));
}

TEST(StoreFormat, VerifyAlwaysChecksEveryRead) {
  TempDir t;
  make_tree(t.path() / "src");
  pack(t.path() / "src", t.path() / "store", {});
  ReaderOptions always;
  always.verify = Verify::always;
  Reader r = Reader::open(t.path() / "store", always);
  size_t i = *r.find("top.txt");
  r.read(i);  // verified once
  // Corrupt the mapped file underneath (MAP_SHARED sees it): first_read would not notice now.
  flip_byte(t.path() / "store" / partition_name(0), kHeaderSize + r.entry(i).offset);
  EXPECT_THROW(r.read(i), hpdl::Error);
}

TEST(StoreFormat, TruncatedPartitionIsDetectedOnOpen) {
  TempDir t;
  make_tree(t.path() / "src");
  pack(t.path() / "src", t.path() / "store", {});
  fs::path part = t.path() / "store" / partition_name(0);
  fs::resize_file(part, fs::file_size(part) - 1);
  std::string err = expect_error([&] { Reader::open(t.path() / "store"); });
  EXPECT_NE(err.find(part.string()), std::string::npos) << err;
  EXPECT_NE(err.find("truncated"), std::string::npos) << err;
  fs::resize_file(part, 10);
  err = expect_error([&] { Reader::open(t.path() / "store"); });
  EXPECT_NE(err.find(part.string()), std::string::npos) << err;
  fs::remove(part);
  err = expect_error([&] { Reader::open(t.path() / "store"); });
  EXPECT_NE(err.find(part.string()), std::string::npos) << err;
}

TEST(StoreFormat, CorruptPartitionHeaderIsDetected) {
  TempDir t;
  make_tree(t.path() / "src");
  pack(t.path() / "src", t.path() / "store", {});
  fs::path part = t.path() / "store" / partition_name(0);
  flip_byte(part, 17);
  std::string err = expect_error([&] { Reader::open(t.path() / "store"); });
  EXPECT_NE(err.find("header checksum"), std::string::npos) << err;
  EXPECT_NE(err.find(part.string()), std::string::npos) << err;
}

TEST(StoreFormat, TruncatedOrCorruptIndexIsDetected) {
  TempDir t;
  make_tree(t.path() / "src");
  pack(t.path() / "src", t.path() / "store", {});
  fs::path index = t.path() / "store" / kIndexName;
  const std::string good = slurp(index);
  for (size_t cut : {size_t(0), size_t(30), good.size() - 1}) {
    std::ofstream(index, std::ios::binary | std::ios::trunc) << good.substr(0, cut);
    std::string err = expect_error([&] { Reader::open(t.path() / "store"); });
    EXPECT_NE(err.find(index.string()), std::string::npos) << cut << ": " << err;
  }
  std::ofstream(index, std::ios::binary | std::ios::trunc) << good;
  flip_byte(index, good.size() - 3);  // inside the path strings
  std::string err = expect_error([&] { Reader::open(t.path() / "store"); });
  EXPECT_NE(err.find("checksum"), std::string::npos) << err;
  EXPECT_NE(err.find(index.string()), std::string::npos) << err;
}

TEST(StoreFormat, EscapingPathsAreRefused) {
  for (const char* bad : {"../x", "/etc/passwd", "a/../b", "a//b", "./a", "a/", ""})
    EXPECT_FALSE(entry_path_problem(bad).empty()) << bad;
  EXPECT_TRUE(entry_path_problem("a/b..c/.hidden").empty());
  TempDir t;
  make_tree(t.path() / "src");
  pack(t.path() / "src", t.path() / "store", {});
  Reader r = Reader::open(t.path() / "store");
  EXPECT_FALSE(r.find("../store/index.hpdi").has_value());
  EXPECT_FALSE(r.find("/a/b.txt").has_value());
  EXPECT_FALSE(r.find("a/../a/b.txt").has_value());
  EXPECT_FALSE(r.is_dir(".."));
  // A prefix that escapes is refused by pack.
  PackOptions o;
  o.prefix = "../outside";
  std::string err = expect_error([&] { pack(t.path() / "src", t.path() / "store2", o); });
  EXPECT_NE(err.find(".."), std::string::npos) << err;
  // A hand-made index with an escaping path is refused on decode.
  Index idx;
  idx.partitions.push_back({0, 0});
  Entry e;
  e.path = "../evil";
  idx.entries.push_back(e);
  EXPECT_THROW(encode_index(idx), hpdl::Error);
}

TEST(StoreFormat, IdxDatasetOneEntryPerSampleWithLabels) {
  const fs::path images = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz";
  if (!fs::exists(images)) GTEST_SKIP() << "Fashion-MNIST not installed (dataset-fashion-mnist)";
  TempDir t;
  PackOptions o;
  o.partition_count = 4;
  PackStats st = pack(images, t.path() / "store", o);
  EXPECT_EQ(st.entries, 10001u);  // 10,000 samples + meta.json
  EXPECT_EQ(st.partitions, 4u);
  Reader r = Reader::open(t.path() / "store");
  auto samples = r.list("test/0");
  ASSERT_EQ(samples.size(), 10000u);
  const Entry& first = r.entry(samples[0]);
  EXPECT_EQ(first.path, "test/00000.bin");
  EXPECT_EQ(first.size, 784u);
  EXPECT_EQ(first.label, 9);  // the first Fashion-MNIST test image is an ankle boot
  EXPECT_NE(as_string(r.read("test/meta.json")).find("\"shape\":[28,28]"), std::string::npos);
}

TEST(StoreFormat, ConcurrentReadsAreThreadSafe) {
  TempDir t;
  for (int i = 0; i < 200; ++i) write_text(t.path() / "src" / fmt::format("f{:03d}.txt", i), std::string(i * 7, char('a' + i % 26)));
  PackOptions o;
  o.compression = Compression::lz4;
  pack(t.path() / "src", t.path() / "store", o);
  Reader r = Reader::open(t.path() / "store");
  std::atomic<int> bad{0};
  std::vector<std::thread> threads;
  for (int k = 0; k < 4; ++k)
    threads.emplace_back([&, k] {
      for (int rep = 0; rep < 20; ++rep)
        for (size_t i = k; i < r.size(); i += 3) {
          auto b = r.read(i);
          int n = std::stoi(r.entry(i).path.substr(1, 3));
          if (b.size() != size_t(n * 7)) ++bad;
        }
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(bad.load(), 0);
}

TEST(StoreFormat, PartitionedNodeCopyReadsOnlyItsPartitions) {
  TempDir t;
  for (int i = 0; i < 6; ++i) write_text(t.path() / "src" / fmt::format("f{}.txt", i), std::string(100, char('a' + i)));
  PackOptions o;
  o.partition_count = 3;
  pack(t.path() / "src", t.path() / "store", o);
  fs::remove(t.path() / "store" / partition_name(1));  // as on a node of a partitioned staging
  EXPECT_THROW(Reader::open(t.path() / "store"), hpdl::Error);
  ReaderOptions opts;
  opts.allow_missing_partitions = true;
  Reader r = Reader::open(t.path() / "store", opts);
  EXPECT_EQ(as_string(r.read("f0.txt")), std::string(100, 'a'));
  size_t missing = *r.find("f2.txt");
  ASSERT_EQ(r.entry(missing).partition, 1u);
  std::string err = expect_error([&] { r.read(missing); });
  EXPECT_NE(err.find(partition_name(1)), std::string::npos) << err;
}
