// The CUDA decoder's device arena: allocate() returns with the arena's zeros complete, so
// what the decoder then writes on its own non-blocking stream (tables, weights) cannot be
// overwritten by a memset still running on the legacy stream. Before the fix the 1B-shape
// train-bench learned or not depending on the machine's timing (bench/RESULTS.md).
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <vector>

#include "backend/cuda/cuda_check.hpp"
#include "backend/cuda/device_arena.hpp"
#include "gpu/train_test_util.hpp"

namespace adept::cuda {
namespace {

// Big enough that its memset takes about a millisecond on an H100 / H200, far longer than
// the host needs to get from allocate() to the next call.
constexpr size_t kArenaBytes = size_t(3) << 30;

TEST(DeviceArena, AllocateReturnsWithTheZeroFillDone) {
  REQUIRE_GPU();
  DeviceArena arena;
  arena.reserve("big", kArenaBytes, 256);
  arena.allocate();
  // Nothing may be left in flight on the legacy stream (where the zero fill runs).
  EXPECT_EQ(cudaStreamQuery(nullptr), cudaSuccess) << "the arena's memset is still running after allocate()";
}

TEST(DeviceArena, AnUploadOnANonBlockingStreamRightAfterAllocateSurvives) {
  REQUIRE_GPU();
  const uint64_t seed = std::random_device{}();
  std::printf("[ info ] seed %llu\n", static_cast<unsigned long long>(seed));
  std::mt19937_64 rng(seed);
  DeviceArena arena;
  // The upload goes to the arena's last megabyte, behind 3 GiB (as the decoder's tables sit
  // behind its weights and optimizer state): the region a memset front reaches last.
  arena.reserve("big", kArenaBytes, 256);
  const size_t table = arena.reserve("table", size_t(1) << 20, 256);
  std::vector<uint32_t> values((size_t(1) << 20) / 4);
  for (auto& v : values) v = uint32_t(rng()) | 1u;  // never zero
  cudaStream_t stream = nullptr;
  ADEPT_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  arena.allocate();
  auto* dst = arena.at<uint32_t>(table);
  ADEPT_CUDA_CHECK(cudaMemcpyAsync(dst, values.data(), values.size() * 4, cudaMemcpyHostToDevice, stream));
  ADEPT_CUDA_CHECK(cudaStreamSynchronize(stream));
  ADEPT_CUDA_CHECK(cudaDeviceSynchronize());  // everything, the legacy stream included, is done
  std::vector<uint32_t> back(values.size(), 0);
  ADEPT_CUDA_CHECK(cudaMemcpy(back.data(), dst, back.size() * 4, cudaMemcpyDeviceToHost));
  size_t zeroed = 0;
  for (size_t i = 0; i < back.size(); ++i) zeroed += back[i] != values[i];
  EXPECT_EQ(zeroed, 0u) << "words of the upload overwritten after it landed";
  // And the rest of the arena is zero (a spot check just before the table).
  std::vector<uint32_t> before(1024, 1);
  ADEPT_CUDA_CHECK(cudaMemcpy(before.data(), arena.at<unsigned char>(table - 4096), 4096, cudaMemcpyDeviceToHost));
  for (uint32_t v : before) ASSERT_EQ(v, 0u);
  ADEPT_CUDA_CHECK(cudaStreamDestroy(stream));
}

}  // namespace
}  // namespace adept::cuda
