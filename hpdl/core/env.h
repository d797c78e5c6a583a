// Settings read from the environment that more than one layer reads alike.
#pragma once

namespace hpdl {

// HPDL_NODE_ID: the node this process poses as (tests on one machine pose as
// several nodes: the store's staging, the hierarchical allreduce). -1 when
// unset; throws naming the variable and its value unless it is an integer in
// [0, 2^30).
int env_node_id();

}  // namespace hpdl
