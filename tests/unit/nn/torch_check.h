// Runs one of the PyTorch interop scripts beside this file on a safetensors
// file the test writes (tensors and metadata), with Debian's python3
// (/usr/bin/python3, where python3-torch installs). The script exits 77 when
// torch is missing; the caller turns that into a visible GTEST_SKIP.
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <string>

#include "hpdl/io/safetensors.h"

namespace hpdl::test {

struct TorchCheck {
  int rc = 0;
  std::string command, report;  // the command line, and what the script printed
  bool torch_missing() const { return WIFEXITED(rc) && WEXITSTATUS(rc) == 77; }
};

inline TorchCheck run_torch_check(const std::string& script, const std::map<std::string, Tensor>& tensors,
                                  const std::map<std::string, std::string>& meta) {
  const std::string stem = std::filesystem::path(script).stem().string();
  const auto dir = std::filesystem::temp_directory_path() / ("hpdl_" + stem + "_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  io::save_safetensors(dir / "in.safetensors", tensors, meta);
  TorchCheck c;
  c.command = "/usr/bin/python3 " + (std::filesystem::path(HPDL_TEST_SOURCE_DIR) / script).string() + " " +
              (dir / "in.safetensors").string() + " > " + (dir / "out.txt").string() + " 2>&1";
  c.rc = std::system(c.command.c_str());
  std::ifstream in(dir / "out.txt");
  c.report.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  std::filesystem::remove_all(dir);
  return c;
}

}  // namespace hpdl::test
