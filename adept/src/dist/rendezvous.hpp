// The one thing ranks exchange outside NCCL: NCCL's unique id (128 bytes), which rank 0
// creates and every other rank needs before ncclCommInitRank. Rank 0 listens on
// MASTER_ADDR:MASTER_PORT and hands the bytes to each rank that connects; the others
// connect (retrying while rank 0 starts) and read them. Tensors never travel here.
//
// Every wait is bounded by timeout_seconds; a rank that does not show up, a second
// rank with the same number, a peer of another job (wrong magic / world size) or a
// closed connection is an adept::Error naming the ranks and the address.
#pragma once

#include <cstdint>
#include <vector>

#include "dist/launch_env.hpp"

namespace adept::dist {

// Rank 0 passes the payload and gets it back; every other rank gets rank 0's payload.
std::vector<uint8_t> exchange_bytes(const LaunchEnv& env, const std::vector<uint8_t>& payload,
                                    double timeout_seconds = 300.0);

}  // namespace adept::dist
