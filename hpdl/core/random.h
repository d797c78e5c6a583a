// Generator: a counter-based random stream (SplitMix64 of seed and counter), so
// element i of a fill depends only on (seed, offset + i): the same numbers for
// any number of threads, and a state that is two integers (checkpointable).
#pragma once

#include <cstdint>

namespace hpdl {

class Generator {
 public:
  explicit Generator(uint64_t seed = 0) : seed_(seed) {}
  uint64_t seed() const { return seed_; }
  uint64_t offset() const { return offset_; }
  void set_state(uint64_t seed, uint64_t offset) { seed_ = seed, offset_ = offset; }
  // Reserves n consecutive counters and returns the first.
  uint64_t reserve(uint64_t n) {
    uint64_t first = offset_;
    offset_ += n;
    return first;
  }
  uint64_t next_u64() { return bits(seed_, reserve(1)); }
  double next_uniform() { return uniform(seed_, reserve(1)); }  // [0, 1)

  // Pure functions of (seed, counter).
  static uint64_t bits(uint64_t seed, uint64_t counter) {
    uint64_t z = seed * 0x9E3779B97F4A7C15ull + counter * 0xD1B54A32D192ED03ull + 0x632BE59BD9B4E019ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  static double uniform(uint64_t seed, uint64_t counter) {
    return static_cast<double>(bits(seed, counter) >> 11) * 0x1.0p-53;
  }

 private:
  uint64_t seed_;
  uint64_t offset_ = 0;
};

// The process-wide default generator (init, dropout when none is given).
Generator& default_generator();
void manual_seed(uint64_t seed);

}  // namespace hpdl
