// The NCCL communicator (compiled only when CMake found NCCL: ADEPT_NCCL).
#include <cuda_runtime.h>
#include <nccl.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/error.hpp"
#include "dist/communicator.hpp"
#include "dist/rendezvous.hpp"

namespace adept::dist {

namespace {

using Clock = std::chrono::steady_clock;

std::string nccl_failure(int rank, int world, ncclResult_t r, const char* call, const char* file, int line) {
  return fmt::format("rank {} of {}: NCCL error {} ({}) in {} at {}:{}{}", rank, world, int(r), ncclGetErrorString(r),
                     call, file, line,
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

// The backstop that makes a failed job end, whatever this rank's host thread is doing.
// Every collective records an event behind it on its stream; a thread polls them. A
// collective still unfinished `timeout` seconds after it was enqueued means a rank
// failed or hangs, even if the host thread never reaches a wait of its own: it may be
// blocked where no timeout applies (inside a CUDA or NCCL call that waits for the GPU,
// in ncclCommAbort joining an NCCL thread that talks to the dead rank, in a destructor
// that frees device memory and so synchronizes the device). Once a failure is known
// (found here, or reported by the host thread, which then throws its adept::Error), the
// process has `grace` seconds to end by itself; after that this thread prints the error
// and ends it with std::_Exit(1), so that mpirun / srun / torchrun see a failed rank
// instead of a hang. The thread calls no NCCL function (an aborted communicator must not
// be touched from a second thread), and after a failure it outlives the communicator
// (detached, holding this state), since the hang may come later in the teardown.
class Watchdog {
 public:
  Watchdog(int rank, int world, int device, double timeout_s, double grace_s)
      : rank_(rank), world_(world), device_(device), timeout_(timeout_s), grace_(grace_s) {}
  ~Watchdog() {
    for (const Pending& p : pending_) cudaEventDestroy(p.event);
    for (cudaEvent_t e : free_) cudaEventDestroy(e);
  }

  static void start(const std::shared_ptr<Watchdog>& self) {
    self->thread_ = std::thread([state = self] { state->run(); });
  }

  // Called by the host thread after enqueueing a collective on `stream`.
  void watch(cudaStream_t stream, const char* what) {
    cudaStreamCaptureStatus capturing = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(stream, &capturing) != cudaSuccess || capturing != cudaStreamCaptureStatusNone) return;
    cudaEvent_t e = nullptr;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (failed_) return;
      if (!free_.empty()) e = free_.back(), free_.pop_back();
    }
    if (!e && cudaEventCreateWithFlags(&e, cudaEventDisableTiming) != cudaSuccess) return;
    if (cudaEventRecord(e, stream) != cudaSuccess) {
      cudaEventDestroy(e);
      return;
    }
    std::lock_guard<std::mutex> lock(mutex_);
    pending_.push_back({e, Clock::now(), what});
  }

  // A failure is known: report it once and start the grace period.
  void failed(const std::string& message) {
    std::lock_guard<std::mutex> lock(mutex_);
    fail_locked(message);
  }

  // The communicator is going away. Healthy: the thread stops. After a failure: it is
  // left running (detached) to end the process if the teardown hangs.
  void stop() {
    if (!thread_.joinable()) return;
    std::unique_lock<std::mutex> lock(mutex_);
    if (failed_) {
      lock.unlock();
      thread_.detach();
      return;
    }
    stop_ = true;
    lock.unlock();
    wake_.notify_all();
    thread_.join();
  }

 private:
  using Clock = std::chrono::steady_clock;
  struct Pending {
    cudaEvent_t event;
    Clock::time_point enqueued;
    const char* what;
  };

  void fail_locked(const std::string& message) {
    if (failed_) return;
    failed_ = true;
    message_ = message;
    failed_at_ = Clock::now();
    std::fprintf(stderr, "[error] %s\n", message.c_str());
    std::fflush(nullptr);
    wake_.notify_all();
  }

  void run() {
    cudaSetDevice(device_);
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      wake_.wait_for(lock, std::chrono::milliseconds(100));
      if (stop_) return;
      const auto now = Clock::now();
      if (failed_) {
        if (now - failed_at_ > std::chrono::duration<double>(grace_)) {
          std::fprintf(stderr,
                       "[error] rank %d of %d: the process did not end within %.0f s of the failure above (a "
                       "thread is blocked in CUDA or NCCL behind the failed collective); ending it now\n",
                       rank_, world_, grace_);
          std::fflush(nullptr);
          std::_Exit(1);
        }
        continue;
      }
      // Finished events go back to the pool; only this thread removes entries (the host
      // thread appends), so the front ones can be queried with the lock released.
      const size_t n = pending_.size();
      std::vector<Pending> front(pending_.begin(), pending_.begin() + long(n));
      lock.unlock();
      size_t done = 0;
      cudaError_t error = cudaSuccess;
      for (; done < n; ++done) {
        cudaError_t q = cudaEventQuery(front[done].event);
        if (q == cudaErrorNotReady) break;
        if (q != cudaSuccess) {
          error = q;
          break;
        }
      }
      lock.lock();
      for (size_t i = 0; i < done; ++i) free_.push_back(pending_.front().event), pending_.pop_front();
      if (error != cudaSuccess) {
        fail_locked(fmt::format("rank {} of {}: CUDA error {} ({}) behind {}", rank_, world_, int(error),
                                cudaGetErrorString(error), front[done].what));
      } else if (done < n) {
        const double waited = std::chrono::duration<double>(now - front[done].enqueued).count();
        if (waited > timeout_)
          fail_locked(fmt::format("rank {} of {}: {} enqueued {:.0f} s ago has not finished (timeout {} s) — another "
                                  "rank failed or hangs; ending this rank",
                                  rank_, world_, front[done].what, waited, timeout_));
      }
    }
  }

  const int rank_, world_, device_;
  const double timeout_, grace_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<Pending> pending_;
  std::vector<cudaEvent_t> free_;
  bool stop_ = false, failed_ = false;
  std::string message_;
  Clock::time_point failed_at_;
  std::thread thread_;
};

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
    watchdog_ = std::make_shared<Watchdog>(env.rank, env.world, env.local_rank, options.timeout_seconds,
                                           options.failure_grace_seconds);
    Watchdog::start(watchdog_);
    spdlog::info("rank {} of {}: NCCL {} communicator on GPU {} (NCCL_NVLS_ENABLE={})", env.rank, env.world,
                 NCCL_VERSION_CODE, env.local_rank, std::getenv("NCCL_NVLS_ENABLE"));
  }

  ~NcclCommunicator() override {
    if (host_buffer_) cudaFree(host_buffer_);
    if (host_pinned_) cudaFreeHost(host_pinned_);
    if (host_stream_) cudaStreamDestroy(host_stream_);
    if (watchdog_) watchdog_->stop();  // after a failure it stays, to end a teardown that hangs
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
    throw_if_failed();
    check(ncclAllReduce(send, recv, count, nccl_type(type), nccl_op(op), comm_, cudaStream_t(stream)),
          "ncclAllReduce", __FILE__, __LINE__);
    wait_ready("ncclAllReduce (enqueue)");
    watchdog_->watch(cudaStream_t(stream), "an all-reduce");
  }
  void reduce_scatter(const void* send, void* recv, size_t recv_count, DataType type, ReduceOp op,
                      void* stream) override {
    throw_if_failed();
    check(ncclReduceScatter(send, recv, recv_count, nccl_type(type), nccl_op(op), comm_, cudaStream_t(stream)),
          "ncclReduceScatter", __FILE__, __LINE__);
    wait_ready("ncclReduceScatter (enqueue)");
    watchdog_->watch(cudaStream_t(stream), "a reduce-scatter");
  }
  void all_gather(const void* send, void* recv, size_t send_count, DataType type, void* stream) override {
    throw_if_failed();
    check(ncclAllGather(send, recv, send_count, nccl_type(type), comm_, cudaStream_t(stream)), "ncclAllGather",
          __FILE__, __LINE__);
    wait_ready("ncclAllGather (enqueue)");
    watchdog_->watch(cudaStream_t(stream), "an all-gather");
  }

  // Staged through pinned memory both ways: a device-to-host copy into pageable memory
  // returns only once the all-reduce before it has finished, a wait no timeout bounds.
  void all_reduce_host(double* values, size_t count, ReduceOp op) override {
    throw_if_failed();
    if (count == 0) return;
    if (count > host_capacity_) {  // room for the trainer's few scalars at once: freeing synchronizes the device
      if (host_buffer_) cudaFree(host_buffer_);
      if (host_pinned_) cudaFreeHost(host_pinned_);
      host_buffer_ = host_pinned_ = nullptr;
      host_capacity_ = std::max<size_t>(count, 64);
      cuda_or_fail(env_.rank, cudaMalloc(&host_buffer_, host_capacity_ * sizeof(double)), "cudaMalloc (host all-reduce)");
      cuda_or_fail(env_.rank, cudaMallocHost(&host_pinned_, host_capacity_ * sizeof(double)),
                   "cudaMallocHost (host all-reduce)");
    }
    if (!host_stream_)
      cuda_or_fail(env_.rank, cudaStreamCreateWithFlags(&host_stream_, cudaStreamNonBlocking), "cudaStreamCreate");
    std::memcpy(host_pinned_, values, count * sizeof(double));
    cuda_or_fail(env_.rank,
                 cudaMemcpyAsync(host_buffer_, host_pinned_, count * sizeof(double), cudaMemcpyHostToDevice,
                                 host_stream_),
                 "cudaMemcpyAsync (host all-reduce)");
    all_reduce(host_buffer_, host_buffer_, count, DataType::f64, op, host_stream_);
    cuda_or_fail(env_.rank,
                 cudaMemcpyAsync(host_pinned_, host_buffer_, count * sizeof(double), cudaMemcpyDeviceToHost,
                                 host_stream_),
                 "cudaMemcpyAsync (host all-reduce)");
    synchronize(host_stream_);
    std::memcpy(values, host_pinned_, count * sizeof(double));
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
    end_rank(nccl_failure(env_.rank, env_.world, r, call, file, line));
  }

  // After a failure the communicator is aborted: every later call throws the same error
  // (none may reach NCCL again).
  void throw_if_failed() const {
    if (!failure_.empty()) throw Error(failure_);
  }

  // This rank gives up: the watchdog reports the failure and gives the process its grace
  // period (ncclCommAbort and the teardown that follows may block behind the failed
  // collective); NCCL's kernels are told to quit; the error is thrown.
  [[noreturn]] void end_rank(const std::string& message) {
    if (failure_.empty()) failure_ = message;
    if (watchdog_) watchdog_->failed(failure_);
    abort_comm();
    throw Error(failure_);
  }

  void poll_async_error(const char* what) {
    ncclResult_t state = ncclSuccess;
    ncclResult_t r = ncclCommGetAsyncError(comm_, &state);
    if (r != ncclSuccess) state = r;
    if (state != ncclSuccess && state != ncclInProgress)
      end_rank(fmt::format("rank {} of {}: NCCL reported error {} ({}) during {}; another rank probably failed — "
                           "ending this rank (NCCL_DEBUG=WARN says more)",
                           env_.rank, env_.world, int(state), ncclGetErrorString(state), what));
  }

  // Polls `query` (cudaSuccess: done) with NCCL's asynchronous error and the timeout. The
  // first millisecond spins (a step's end is usually that close), then 50 µs naps.
  template <typename Query>
  void wait_until(Query query, const char* call) {
    throw_if_failed();
    const auto start = Clock::now();
    for (;;) {
      cudaError_t q = query();
      if (q == cudaSuccess) return;
      if (q != cudaErrorNotReady)
        end_rank(fmt::format("rank {} of {}: CUDA error {} ({}) in {}", env_.rank, env_.world, int(q),
                             cudaGetErrorString(q), call));
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
    end_rank(fmt::format("rank {} of {}: {} did not finish within {} s — another rank failed or hangs; aborting "
                         "the NCCL communicator and ending this rank",
                         env_.rank, env_.world, what, options_.timeout_seconds));
  }

  void abort_comm() {
    if (comm_ && !aborted_) {
      aborted_ = true;
      ncclCommAbort(comm_);
    }
  }

  LaunchEnv env_;
  CommOptions options_;
  ncclComm_t comm_ = nullptr;
  bool aborted_ = false;
  double* host_buffer_ = nullptr;  // all_reduce_host's staging: device
  double* host_pinned_ = nullptr;  // and pinned host memory
  size_t host_capacity_ = 0;
  cudaStream_t host_stream_ = nullptr;
  std::shared_ptr<Watchdog> watchdog_;
  std::string failure_;  // set once this rank has given up
};

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(const LaunchEnv& env, const CommOptions& options) {
  return std::make_unique<NcclCommunicator>(env, options);
}

}  // namespace adept::dist
