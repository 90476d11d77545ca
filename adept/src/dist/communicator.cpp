#include "dist/communicator.hpp"

#include <cstring>

#include "core/error.hpp"

namespace adept::dist {

#if defined(ADEPT_WITH_NCCL)
std::unique_ptr<Communicator> make_nccl_communicator(const LaunchEnv& env, const CommOptions& options);
#endif

size_t type_size(DataType type) {
  switch (type) {
    case DataType::f32: return 4;
    case DataType::f64: return 8;
    case DataType::i64: return 8;
    case DataType::bf16: return 2;
  }
  return 0;
}

void LocalCommunicator::all_reduce(const void* send, void* recv, size_t count, DataType type, ReduceOp, void*) {
  if (send != recv) std::memmove(recv, send, count * type_size(type));
}

void LocalCommunicator::reduce_scatter(const void* send, void* recv, size_t recv_count, DataType type, ReduceOp,
                                       void*) {
  if (send != recv) std::memmove(recv, send, recv_count * type_size(type));
}

void LocalCommunicator::all_gather(const void* send, void* recv, size_t send_count, DataType type, void*) {
  if (send != recv) std::memmove(recv, send, send_count * type_size(type));
}

bool nccl_available() {
#if defined(ADEPT_WITH_NCCL)
  return true;
#else
  return false;
#endif
}

std::unique_ptr<Communicator> make_communicator(const LaunchEnv& env, const CommOptions& options) {
  if (env.world <= 1) return std::make_unique<LocalCommunicator>();
#if defined(ADEPT_WITH_NCCL)
  return make_nccl_communicator(env, options);
#else
  fail("rank {} of {} ({}): this build has no NCCL, so it cannot train on several GPUs (install NCCL, or the "
       "nvidia-nccl-cu13 wheel, and rebuild)",
       env.rank, env.world, env.launcher);
#endif
}

}  // namespace adept::dist
