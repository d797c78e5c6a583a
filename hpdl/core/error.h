// hpdl::Error, the one exception type of the library, and the HPDL_CHECK macro.
// An error records where it was raised (file:line) and the MPI rank that raised
// it, so a message from rank 37 of 4,096 says so. Library code never aborts or
// exits; the CLI catches Error, prints one line and exits non-zero.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace hpdl {

class Error : public std::runtime_error {
 public:
  // what() is "[rank R] MESSAGE (file.cpp:123)" under MPI, "MESSAGE (file.cpp:123)" otherwise.
  Error(const char* file, int line, std::string message);
  const std::string& message() const { return message_; }  // without location or rank
  const char* file() const { return file_; }
  int line() const { return line_; }
  int rank() const { return rank_; }

 private:
  std::string message_;
  const char* file_;
  int line_;
  int rank_;
};

// The world rank of this process, or -1 outside MPI. The dist layer sets it;
// before that it is read from the launcher's environment (OpenMPI, MPICH, Slurm).
int error_rank();
void set_error_rank(int rank);

// Prints a warning once per distinct message, from rank 0 (or outside MPI) only.
void warn_once(const std::string& message);

}  // namespace hpdl

// HPDL_CHECK(cond, "fmt {}", args...): throws hpdl::Error with the formatted
// message when cond is false. The message should name the op, the shapes, the file.
#define HPDL_CHECK(cond, ...)                                                   \
  do {                                                                          \
    if (!(cond)) [[unlikely]]                                                   \
      throw ::hpdl::Error(__FILE__, __LINE__, ::fmt::format(__VA_ARGS__));      \
  } while (0)

#define HPDL_FAIL(...) throw ::hpdl::Error(__FILE__, __LINE__, ::fmt::format(__VA_ARGS__))
