#include "hpdl/core/env.h"

#include <cstdlib>

#include "hpdl/core/error.h"

namespace hpdl {

int env_node_id() {
  const char* v = std::getenv("HPDL_NODE_ID");
  if (v == nullptr) return -1;
  char* end = nullptr;
  const long id = std::strtol(v, &end, 10);
  HPDL_CHECK(end != v && *end == '\0' && id >= 0 && id < (1L << 30),
             "HPDL_NODE_ID='{}' is not a node number (an integer in [0, 2^30))", v);
  return static_cast<int>(id);
}

}  // namespace hpdl
