// The process-wide default generator.
#include "hpdl/core/random.h"

namespace hpdl {

Generator& default_generator() {
  static Generator g(0x5eed);
  return g;
}

void manual_seed(uint64_t seed) { default_generator().set_state(seed, 0); }

}  // namespace hpdl
