// Numeric CSV and PNG readers. CSV: one sample a row, numbers only, an optional
// header row, one integer label column. PNG goes through libpng's simplified
// png_image API, which converts any colour type and bit depth for us and
// reports errors in a message buffer instead of longjmp.
#include <png.h>

#include <charconv>
#include <cmath>
#include <cstring>
#include <fstream>

#include "hpdl/core/error.h"
#include "hpdl/data/readers.h"
#include "hpdl/io/file.h"

namespace hpdl::data {
namespace {

std::vector<std::string> split(const std::string& line, char delim) {
  std::vector<std::string> out;
  size_t start = 0;
  while (true) {
    size_t p = line.find(delim, start);
    std::string field = line.substr(start, p == std::string::npos ? std::string::npos : p - start);
    size_t a = field.find_first_not_of(" \t\r"), b = field.find_last_not_of(" \t\r");
    out.push_back(a == std::string::npos ? "" : field.substr(a, b - a + 1));
    if (p == std::string::npos) break;
    start = p + 1;
  }
  return out;
}

bool parse_double(const std::string& s, double& v) {
  if (s.empty()) return false;
  const char* b = s.data() + (s[0] == '+' ? 1 : 0);
  auto [p, ec] = std::from_chars(b, s.data() + s.size(), v);
  return ec == std::errc() && p == s.data() + s.size();
}

}  // namespace

CsvTable read_csv(const std::filesystem::path& path, const CsvOptions& opt) {
  const std::string f = path.string();
  std::ifstream in(path);
  HPDL_CHECK(in.good(), "{}: cannot open CSV file: {}", f, std::strerror(errno));
  CsvTable t;
  std::string line;
  int64_t lineno = 0, ncols = -1, label = -1;
  bool first = true;
  while (std::getline(in, line)) {
    ++lineno;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    std::vector<std::string> fields = split(line, opt.delimiter);
    if (ncols < 0) {
      ncols = static_cast<int64_t>(fields.size());
      if (opt.label_column != CsvOptions::kNoLabel) {
        label = opt.label_column < 0 ? ncols + opt.label_column : opt.label_column;
        HPDL_CHECK(label >= 0 && label < ncols, "{}: label column {} is outside the {} columns of line {}", f,
                   opt.label_column, ncols, lineno);
      }
      t.cols = ncols - (label >= 0 ? 1 : 0);
    }
    HPDL_CHECK(static_cast<int64_t>(fields.size()) == ncols, "{}:{}: {} fields, expected {} like the first row", f,
               lineno, fields.size(), ncols);
    if (first) {
      first = false;
      bool is_header = opt.header == 1;
      if (opt.header == -1) {
        double v;
        for (auto& s : fields) is_header |= !parse_double(s, v);
      }
      if (is_header) {
        for (int64_t c = 0; c < ncols; ++c)
          if (c != label) t.column_names.push_back(fields[static_cast<size_t>(c)]);
        continue;
      }
      for (int64_t c = 0; c < ncols; ++c)
        if (c != label) t.column_names.push_back(fmt::format("c{}", c));
    }
    for (int64_t c = 0; c < ncols; ++c) {
      double v;
      const std::string& s = fields[static_cast<size_t>(c)];
      HPDL_CHECK(parse_double(s, v), "{}:{}: column {}: '{}' is not a number", f, lineno, c + 1, s);
      if (c == label) {
        HPDL_CHECK(v == std::floor(v) && v >= 0, "{}:{}: label column {}: '{}' is not a non-negative integer{}", f,
                   lineno, c + 1, s, v != std::floor(v) ? " (float targets are for a regression loss: train.loss = "
                                                          "mse, l1 or huber)" : "");
        t.labels.push_back(static_cast<int64_t>(v));
      } else {
        t.features.push_back(static_cast<float>(v));
      }
    }
    ++t.rows;
  }
  HPDL_CHECK(!in.bad(), "{}: read error after line {}", f, lineno);
  return t;
}

Image read_png(const std::filesystem::path& path, int channels) {
  const std::string f = path.string();
  HPDL_CHECK(channels == 0 || channels == 1 || channels == 3, "{}: read_png: channels must be 0, 1 or 3, got {}", f,
             channels);
  std::vector<uint8_t> bytes = io::read_file(path);
  png_image img;
  std::memset(&img, 0, sizeof img);
  img.version = PNG_IMAGE_VERSION;
  HPDL_CHECK(png_image_begin_read_from_memory(&img, bytes.data(), bytes.size()) != 0, "{}: not a readable PNG: {}", f,
             img.message);
  int c = channels ? channels : ((img.format & PNG_FORMAT_FLAG_COLOR) ? 3 : 1);
  img.format = c == 3 ? PNG_FORMAT_RGB : PNG_FORMAT_GRAY;
  std::vector<uint8_t> hwc(PNG_IMAGE_SIZE(img));
  png_color black{0, 0, 0};
  if (png_image_finish_read(&img, &black, hwc.data(), 0, nullptr) == 0) {
    std::string msg = img.message;
    png_image_free(&img);
    HPDL_FAIL("{}: PNG decode failed: {}", f, msg);
  }
  Image out;
  out.channels = c, out.height = img.height, out.width = img.width;
  const int64_t hw = out.height * out.width;
  out.pixels.resize(static_cast<size_t>(c * hw));
  for (int64_t i = 0; i < hw; ++i)  // HWC (PNG rows) -> CHW (tensor planes)
    for (int k = 0; k < c; ++k) out.pixels[static_cast<size_t>(k * hw + i)] = hwc[static_cast<size_t>(i * c + k)];
  return out;
}

void write_png(const std::filesystem::path& path, const Image& image) {
  const std::string f = path.string();
  HPDL_CHECK(image.channels == 1 || image.channels == 3, "{}: write_png: channels must be 1 or 3, got {}", f,
             image.channels);
  const int64_t hw = image.height * image.width, c = image.channels;
  HPDL_CHECK(static_cast<int64_t>(image.pixels.size()) == c * hw && hw > 0,
             "{}: write_png: {} pixels bytes for a {}x{}x{} image", f, image.pixels.size(), c, image.height,
             image.width);
  std::vector<uint8_t> hwc(image.pixels.size());
  for (int64_t i = 0; i < hw; ++i)
    for (int64_t k = 0; k < c; ++k) hwc[static_cast<size_t>(i * c + k)] = image.pixels[static_cast<size_t>(k * hw + i)];
  png_image img;
  std::memset(&img, 0, sizeof img);
  img.version = PNG_IMAGE_VERSION;
  img.width = static_cast<png_uint_32>(image.width);
  img.height = static_cast<png_uint_32>(image.height);
  img.format = c == 3 ? PNG_FORMAT_RGB : PNG_FORMAT_GRAY;
  png_alloc_size_t size = 0;
  HPDL_CHECK(png_image_write_to_memory(&img, nullptr, &size, 0, hwc.data(), 0, nullptr) != 0,
             "{}: PNG encode failed: {}", f, img.message);
  std::vector<uint8_t> out(size);
  HPDL_CHECK(png_image_write_to_memory(&img, out.data(), &size, 0, hwc.data(), 0, nullptr) != 0,
             "{}: PNG encode failed: {}", f, img.message);
  io::write_file_atomic(path, out.data(), size);
}

}  // namespace hpdl::data
