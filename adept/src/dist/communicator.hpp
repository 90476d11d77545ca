// Collectives for data parallelism: all-reduce, reduce-scatter and all-gather of
// buffers on a stream. NCCL does them across GPUs (NcclCommunicator, dist/nccl/); the
// LocalCommunicator is world size 1 on host memory, so code written against this
// interface runs and is tested without GPUs.
//
// Buffers are device pointers for NCCL and host pointers for the LocalCommunicator
// (device_buffers() says which); `stream` is a cudaStream_t passed as void*, so this
// header needs no CUDA headers. Calls follow NCCL's contract: every rank makes the same
// calls in the same order; in-place is allowed where NCCL allows it (reduce-scatter:
// recv == send + rank·recv_count; all-gather: send == recv + rank·send_count).
//
// A failure never hangs: synchronize() polls the stream, checks NCCL's asynchronous
// error and gives up after CommOptions::timeout_seconds, aborting the communicator and
// throwing an adept::Error that names this rank (the launcher then ends the others,
// whose own timeouts fire in any case). Behind that, NCCL's communicator runs a
// watchdog thread: a collective unfinished timeout_seconds after it was enqueued, or a
// failure the host thread reported, gives the process failure_grace_seconds to end by
// itself (the host thread may be blocked where no timeout applies: in a CUDA or NCCL
// call behind the failed collective, in the abort, in a destructor that synchronizes the
// device); then the watchdog prints the error and ends it (exit status 1).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "dist/launch_env.hpp"

namespace adept::dist {

enum class DataType { f32, f64, i64, bf16 };
enum class ReduceOp { sum, max };

size_t type_size(DataType type);

struct CommOptions {
  double timeout_seconds = 600.0;      // a collective (or the whole step behind it) longer than this is a hang
  double rendezvous_seconds = 300.0;  // for every rank to reach rank 0
  double failure_grace_seconds = 30.0;  // after a failure, then the watchdog ends the process (NCCL only)
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int world() const = 0;
  virtual bool device_buffers() const = 0;
  virtual std::string name() const = 0;  // "nccl" | "local"

  virtual void all_reduce(const void* send, void* recv, size_t count, DataType type, ReduceOp op, void* stream) = 0;
  // recv[recv_count] := op over ranks of send[rank·recv_count ... +recv_count).
  virtual void reduce_scatter(const void* send, void* recv, size_t recv_count, DataType type, ReduceOp op,
                              void* stream) = 0;
  // recv[r·send_count ... +send_count) := rank r's send.
  virtual void all_gather(const void* send, void* recv, size_t send_count, DataType type, void* stream) = 0;
  // Waits for everything queued on `stream`, within the collective timeout.
  virtual void synchronize(void* stream) = 0;
  // Waits for a recorded CUDA event (a cudaEvent_t as void*), within the collective
  // timeout: for work queued behind collectives (a forward that waits for all-gathers).
  virtual void synchronize_event(void* event) = 0;
  // Host values, reduced in place and returned when done (blocking): the trainer's
  // scalars (held-out loss sums, token counts, a stop flag). NCCL stages them through a
  // small device buffer on a stream of its own.
  virtual void all_reduce_host(double* values, size_t count, ReduceOp op) = 0;
  // Every rank has reached this call (an all-reduce of nothing much).
  void barrier() {
    double one = 1.0;
    all_reduce_host(&one, 1, ReduceOp::sum);
  }
};

// World size 1 on host memory: every collective is a copy (memmove when in place).
class LocalCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int world() const override { return 1; }
  bool device_buffers() const override { return false; }
  std::string name() const override { return "local"; }
  void all_reduce(const void* send, void* recv, size_t count, DataType type, ReduceOp op, void* stream) override;
  void reduce_scatter(const void* send, void* recv, size_t recv_count, DataType type, ReduceOp op,
                      void* stream) override;
  void all_gather(const void* send, void* recv, size_t send_count, DataType type, void* stream) override;
  void synchronize(void*) override {}
  void synchronize_event(void*) override {}
  void all_reduce_host(double*, size_t, ReduceOp) override {}
};

// True when this build has NCCL (ADEPT_NCCL).
bool nccl_available();

// The job's communicator: a LocalCommunicator for one process, else NCCL over every
// rank of `env` (rendezvous at env.master_addr:port; this rank's GPU is env.local_rank,
// made current here). Sets NCCL_NVLS_ENABLE=0 unless the user set it: NVLink multicast
// (NVLS) reserves fabric memory and multicast objects that other jobs on a shared
// machine also need, and data parallelism's reduce-scatter / all-gather gain little
// from it. Throws adept::Error when env is distributed and this build has no NCCL.
std::unique_ptr<Communicator> make_communicator(const LaunchEnv& env, const CommOptions& options = {});

}  // namespace adept::dist
