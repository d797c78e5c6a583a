// Helpers shared by the unit tests: a fresh per-process scratch directory,
// whole-file text I/O, the text of an hpdl::Error, and the names of an RNN op's inputs.
#pragma once

#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

#include "hpdl/core/error.h"

namespace hpdl::test {

// An empty directory named after the test and this process, under the system temp dir.
inline std::filesystem::path temp_dir(const std::string& name) {
  auto d = std::filesystem::temp_directory_path() / ("hpdl_test_" + name + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(d);
  std::filesystem::create_directories(d);
  return d;
}

inline void write_text(const std::filesystem::path& p, const std::string& s) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out << s;
}

inline std::string read_text(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

inline bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// what() of the hpdl::Error f throws, or "" when it throws none.
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// The name of input i of ops::lstm / ops::gru in the op's order (x, h0, c0 for an LSTM, then four
// weights per layer and direction), as PyTorch names the parameters: "weight_hh_l1_reverse".
inline std::string rnn_input_name(bool lstm, int64_t dirs, size_t i) {
  static const char* kinds[] = {"weight_ih", "weight_hh", "bias_ih", "bias_hh"};
  const size_t w0 = lstm ? 3 : 2;
  if (i == 0) return "x";
  if (i == 1) return "h0";
  if (i == 2 && lstm) return "c0";
  const size_t k = i - w0, cell = k / 4;
  return std::string(kinds[k % 4]) + "_l" + std::to_string(cell / dirs) + (cell % dirs ? "_reverse" : "");
}

}  // namespace hpdl::test
