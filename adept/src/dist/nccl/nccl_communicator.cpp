// The NCCL communicator (compiled only when CMake found NCCL: ADEPT_NCCL).
#include <cuda_runtime.h>
#include <nccl.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <vector>
#include <thread>

#include "core/error.hpp"
#include "dist/communicator.hpp"
#include "dist/rendezvous.hpp"

namespace adept::dist {

namespace {

using Clock = std::chrono::steady_clock;

[[noreturn]] void nccl_failure(int rank, ncclResult_t r, const char* call, const char* file, int line) {
  fail("rank {}: NCCL error {} ({}) in {} at {}:{}{}", rank, int(r), ncclGetErrorString(r), call, file, line,
       r == ncclSystemError || r == ncclRemoteError ? " (NCCL_DEBUG=WARN says more)" : "");
}

void cuda_or_fail(int rank, cudaError_t e, const char* call) {
  if (e != cudaSuccess) fail("rank {}: CUDA error {} ({}) in {}", rank, int(e), cudaGetErrorString(e), call);
}

ncclDataType_t nccl_type(DataType t) {
  switch (t) {
    case DataType::f32: return ncclFloat32;
    case DataType::f64: return ncclFloat64;
    case DataType::i64: return ncclInt64;
    case DataType::bf16: return ncclBfloat16;
  }
  return ncclFloat32;
}

ncclRedOp_t nccl_op(ReduceOp op) { return op == ReduceOp::max ? ncclMax : ncclSum; }

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(const LaunchEnv& env, const CommOptions& options) : env_(env), options_(options) {
    // NVLink multicast off on shared machines unless the user decided otherwise.
    ::setenv("NCCL_NVLS_ENABLE", "0", /*overwrite=*/0);
    cuda_or_fail(env.rank, cudaSetDevice(env.local_rank), "cudaSetDevice(local rank)");
    ncclUniqueId id{};
    if (env.rank == 0) check(ncclGetUniqueId(&id), "ncclGetUniqueId", __FILE__, __LINE__);
    std::vector<uint8_t> bytes(reinterpret_cast<uint8_t*>(&id), reinterpret_cast<uint8_t*>(&id) + sizeof(id));
    bytes = exchange_bytes(env, bytes, options.rendezvous_seconds);
    if (bytes.size() != sizeof(id)) fail("rank {}: rendezvous gave {} bytes, NCCL's id has {}", env.rank, bytes.size(), sizeof(id));
    std::memcpy(&id, bytes.data(), sizeof(id));
    // Non-blocking: initialisation and collectives return at once, and this rank polls
    // ncclCommGetAsyncError with a deadline instead of blocking inside NCCL forever.
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    check(ncclCommInitRankConfig(&comm_, env.world, id, env.rank, &config), "ncclCommInitRankConfig", __FILE__,
          __LINE__);
    wait_ready("ncclCommInitRankConfig");
    spdlog::info("rank {} of {}: NCCL {} communicator on GPU {} (NCCL_NVLS_ENABLE={})", env.rank, env.world,
                 NCCL_VERSION_CODE, env.local_rank, std::getenv("NCCL_NVLS_ENABLE"));
  }

  ~NcclCommunicator() override {
    if (host_buffer_) cudaFree(host_buffer_);
    if (host_stream_) cudaStreamDestroy(host_stream_);
    if (!comm_ || aborted_) return;
    // Finalize flushes outstanding work; in non-blocking mode it may return in progress.
    // A bounded wait, then abort rather than hang in a destructor.
    ncclResult_t state = ncclCommFinalize(comm_);
    const auto deadline = Clock::now() + std::chrono::seconds(30);
    while ((state == ncclSuccess || state == ncclInProgress) && Clock::now() < deadline) {
      if (ncclCommGetAsyncError(comm_, &state) != ncclSuccess) break;
      if (state != ncclInProgress) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    if (state == ncclSuccess)
      ncclCommDestroy(comm_);
    else
      ncclCommAbort(comm_);
  }

  int rank() const override { return env_.rank; }
  int world() const override { return env_.world; }
  bool device_buffers() const override { return true; }
  std::string name() const override { return "nccl"; }

  void all_reduce(const void* send, void* recv, size_t count, DataType type, ReduceOp op, void* stream) override {
    check(ncclAllReduce(send, recv, count, nccl_type(type), nccl_op(op), comm_, cudaStream_t(stream)),
          "ncclAllReduce", __FILE__, __LINE__);
    wait_ready("ncclAllReduce (enqueue)");
  }
  void reduce_scatter(const void* send, void* recv, size_t recv_count, DataType type, ReduceOp op,
                      void* stream) override {
    check(ncclReduceScatter(send, recv, recv_count, nccl_type(type), nccl_op(op), comm_, cudaStream_t(stream)),
          "ncclReduceScatter", __FILE__, __LINE__);
    wait_ready("ncclReduceScatter (enqueue)");
  }
  void all_gather(const void* send, void* recv, size_t send_count, DataType type, void* stream) override {
    check(ncclAllGather(send, recv, send_count, nccl_type(type), comm_, cudaStream_t(stream)), "ncclAllGather",
          __FILE__, __LINE__);
    wait_ready("ncclAllGather (enqueue)");
  }

  void all_reduce_host(double* values, size_t count, ReduceOp op) override {
    if (count == 0) return;
    if (count > host_capacity_) {
      if (host_buffer_) cudaFree(host_buffer_);
      host_buffer_ = nullptr;
      cuda_or_fail(env_.rank, cudaMalloc(&host_buffer_, count * sizeof(double)), "cudaMalloc (host all-reduce)");
      host_capacity_ = count;
    }
    if (!host_stream_)
      cuda_or_fail(env_.rank, cudaStreamCreateWithFlags(&host_stream_, cudaStreamNonBlocking), "cudaStreamCreate");
    cuda_or_fail(env_.rank,
                 cudaMemcpyAsync(host_buffer_, values, count * sizeof(double), cudaMemcpyHostToDevice, host_stream_),
                 "cudaMemcpyAsync (host all-reduce)");
    all_reduce(host_buffer_, host_buffer_, count, DataType::f64, op, host_stream_);
    cuda_or_fail(env_.rank,
                 cudaMemcpyAsync(values, host_buffer_, count * sizeof(double), cudaMemcpyDeviceToHost, host_stream_),
                 "cudaMemcpyAsync (host all-reduce)");
    synchronize(host_stream_);
  }

  void synchronize(void* stream) override {
    wait_until([&] { return cudaStreamQuery(cudaStream_t(stream)); }, "cudaStreamQuery (waiting for collectives)");
  }
  void synchronize_event(void* event) override {
    wait_until([&] { return cudaEventQuery(cudaEvent_t(event)); }, "cudaEventQuery (waiting for collectives)");
  }

 private:
  void check(ncclResult_t r, const char* call, const char* file, int line) {
    if (r == ncclSuccess || r == ncclInProgress) return;
    abort_comm();
    nccl_failure(env_.rank, r, call, file, line);
  }

  void poll_async_error(const char* what) {
    ncclResult_t state = ncclSuccess;
    ncclResult_t r = ncclCommGetAsyncError(comm_, &state);
    if (r != ncclSuccess) state = r;
    if (state != ncclSuccess && state != ncclInProgress) {
      abort_comm();
      fail("rank {} of {}: NCCL reported error {} ({}) during {}; another rank probably failed — ending this rank "
           "(NCCL_DEBUG=WARN says more)",
           env_.rank, env_.world, int(state), ncclGetErrorString(state), what);
    }
  }

  // Polls `query` (cudaSuccess: done) with NCCL's asynchronous error and the timeout. The
  // first millisecond spins (a step's end is usually that close), then 50 µs naps.
  template <typename Query>
  void wait_until(Query query, const char* call) {
    const auto start = Clock::now();
    for (;;) {
      cudaError_t q = query();
      if (q == cudaSuccess) return;
      if (q != cudaErrorNotReady) cuda_or_fail(env_.rank, q, call);
      poll_async_error("a collective");
      const auto waited = Clock::now() - start;
      if (waited > std::chrono::duration<double>(options_.timeout_seconds)) abort_with_timeout("a collective");
      if (waited < std::chrono::milliseconds(1))
        std::this_thread::yield();
      else
        std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }

  // Non-blocking calls may still be in progress when they return.
  void wait_ready(const char* what) {
    const auto start = Clock::now();
    for (;;) {
      ncclResult_t state = ncclSuccess;
      ncclResult_t r = ncclCommGetAsyncError(comm_, &state);
      if (r != ncclSuccess) state = r;
      if (state == ncclSuccess) return;
      if (state != ncclInProgress) poll_async_error(what);
      if (Clock::now() - start > std::chrono::duration<double>(options_.timeout_seconds)) abort_with_timeout(what);
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }

  [[noreturn]] void abort_with_timeout(const char* what) {
    abort_comm();
    fail("rank {} of {}: {} did not finish within {} s — another rank failed or hangs; aborting the NCCL "
         "communicator and ending this rank",
         env_.rank, env_.world, what, options_.timeout_seconds);
  }

  void abort_comm() {
    if (comm_ && !aborted_) {
      ncclCommAbort(comm_);
      aborted_ = true;
    }
  }

  LaunchEnv env_;
  CommOptions options_;
  ncclComm_t comm_ = nullptr;
  bool aborted_ = false;
  double* host_buffer_ = nullptr;  // all_reduce_host's staging
  size_t host_capacity_ = 0;
  cudaStream_t host_stream_ = nullptr;
};

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(const LaunchEnv& env, const CommOptions& options) {
  return std::make_unique<NcclCommunicator>(env, options);
}

}  // namespace adept::dist
