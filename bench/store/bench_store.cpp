// hpdl_store_bench: the store's side of bench/store/run.sh.
//   extract STORE OUTDIR        write every entry of STORE as one plain file under OUTDIR
//   read STORE LIST [EPOCHS] [VERIFY]  read the entries named in LIST (random order, one
//                               path a line) through hpdl::store::Reader, by path lookup,
//                               printing one line per epoch like posix_reader does.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "hpdl/core/error.h"
#include "hpdl/store/reader.h"

namespace fs = std::filesystem;
using hpdl::store::Reader;

int main(int argc, char** argv) try {
  std::string cmd = argc > 1 ? argv[1] : "";
  if (cmd == "extract" && argc == 4) {
    Reader r = Reader::open(argv[2]);
    for (size_t i = 0; i < r.size(); ++i) {
      fs::path out = fs::path(argv[3]) / r.entry(i).path;
      fs::create_directories(out.parent_path());
      auto bytes = r.read(i);
      std::ofstream(out, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), bytes.size());
    }
    return 0;
  }
  if (cmd == "read" && argc >= 4) {
    const int epochs = argc > 4 ? std::atoi(argv[4]) : 1;
    hpdl::store::ReaderOptions opts;
    std::string verify = argc > 5 ? argv[5] : "first_read";
    opts.verify = verify == "always" ? hpdl::store::Verify::always
                  : verify == "never" ? hpdl::store::Verify::never
                                      : hpdl::store::Verify::first_read;
    std::vector<std::string> paths;
    std::ifstream list(argv[3]);
    for (std::string line; std::getline(list, line);)
      if (!line.empty()) paths.push_back(line);
    auto t_open = std::chrono::steady_clock::now();
    Reader r = Reader::open(argv[2], opts);  // timed as part of epoch 1
    std::vector<std::byte> buf;
    for (int e = 1; e <= epochs; ++e) {
      auto t0 = e == 1 ? t_open : std::chrono::steady_clock::now();
      unsigned long long bytes = 0, sum = 0;
      for (const std::string& p : paths) {
        auto i = r.find(p);
        HPDL_CHECK(i.has_value(), "bench: no entry '{}' in the store", p);
        buf.resize(r.entry(*i).size);
        r.read(*i, buf);
        bytes += buf.size();
        if (!buf.empty()) sum += uint8_t(buf[buf.size() / 2]);
      }
      double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      std::printf("mode=reader-%s epoch=%d reads=%zu bytes=%llu sec=%.4f reads_per_s=%.0f MB_per_s=%.1f check=%llu\n",
                  verify.c_str(), e, paths.size(), bytes, dt, paths.size() / dt, bytes / dt / 1e6, sum);
      std::fflush(stdout);
    }
    return 0;
  }
  std::fprintf(stderr, "usage: %s extract STORE OUTDIR | read STORE LIST [EPOCHS] [first_read|always|never]\n",
               argv[0]);
  return 2;
} catch (const std::exception& e) {
  std::fprintf(stderr, "hpdl_store_bench: error: %s\n", e.what());
  return 1;
}
