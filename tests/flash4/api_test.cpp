// The C ABI's contract outside validation: defaults, status and message reporting, the
// backend record, and the C++ wrappers.
#include <cstring>

#include "test_util.hpp"

namespace flash4_test {
namespace {

TEST(Api, ForwardArgsInitZeroesEverythingButTheWindow) {
  flash4_forward_args a;
  std::memset(&a, 0x5a, sizeof(a));
  flash4_forward_args_init(&a);
  EXPECT_EQ(a.device, FLASH4_CPU);
  EXPECT_EQ(a.backend, FLASH4_BACKEND_AUTO);
  EXPECT_EQ(a.stream, nullptr);
  EXPECT_EQ(a.q.data, nullptr);
  EXPECT_EQ(a.lse.data, nullptr);
  EXPECT_EQ(a.options.window_left, -1);
  EXPECT_EQ(a.options.window_right, -1);
  EXPECT_EQ(a.options.causal, 0);
  EXPECT_EQ(a.options.softmax_scale, 0.0f);
  EXPECT_EQ(a.options.softcap, 0.0f);
  EXPECT_EQ(a.options.sink, nullptr);
  EXPECT_EQ(a.varlen.cu_seqlens_q, nullptr);
  EXPECT_EQ(a.varlen.batch, 0);
  EXPECT_EQ(a.paged.page_table, nullptr);
  EXPECT_EQ(a.tuning.exp2_emulation, 0);
}

TEST(Api, BackwardArgsInitZeroesEverythingButTheWindow) {
  flash4_backward_args a;
  std::memset(&a, 0x5a, sizeof(a));
  flash4_backward_args_init(&a);
  EXPECT_EQ(a.device, FLASH4_CPU);
  EXPECT_EQ(a.backend, FLASH4_BACKEND_AUTO);
  EXPECT_EQ(a.dsink, nullptr);
  EXPECT_EQ(a.dq.data, nullptr);
  EXPECT_EQ(a.deterministic, 0);
  EXPECT_EQ(a.options.window_left, -1);
  EXPECT_EQ(a.options.window_right, -1);
}

TEST(Api, SuccessfulCallClearsTheLastErrorAndRecordsTheReferenceBackend) {
  HostTensor q(FLASH4_F32, {1, 2, 1, 4}), k(FLASH4_F32, {1, 2, 1, 4}), v(FLASH4_F32, {1, 2, 1, 4});
  HostTensor out(FLASH4_F32, {1, 2, 1, 4});
  flash4::ForwardArgs a = flash4::forward_args();
  a.q = q.view(), a.k = k.view(), a.v = v.view(), a.out = out.view();
  EXPECT_EQ(flash4_forward(nullptr), FLASH4_INVALID_ARGUMENT);
  EXPECT_STRNE(flash4_last_error(), "");
  a.backend = FLASH4_BACKEND_REFERENCE;
  EXPECT_EQ(flash4_forward(&a), FLASH4_OK);
  EXPECT_STREQ(flash4_last_error(), "");
  EXPECT_STREQ(flash4_last_backend(), "reference");
}

TEST(Api, CppWrapperThrowsErrorCarryingStatusAndMessage) {
  flash4::ForwardArgs a = flash4::forward_args();  // every tensor missing
  try {
    flash4::forward(a);
    FAIL() << "expected flash4::Error";
  } catch (const flash4::Error& e) {
    EXPECT_EQ(e.status(), FLASH4_INVALID_ARGUMENT);
    EXPECT_STREQ(e.what(), "flash4_forward: q.data is NULL");
  }
}

TEST(Api, CppViewsDescribeBhsdMemoryAsLogicalBshd) {
  float memory[2 * 3 * 5 * 4];
  const flash4_tensor t = flash4::strided(memory, FLASH4_F32, {2, 5, 3, 4}, {60, 4, 20, 1});
  EXPECT_EQ(t.rank, 4);
  EXPECT_EQ(t.shape[1], 5);
  EXPECT_EQ(t.stride[2], 20);
  const flash4_tensor c = flash4::contiguous(memory, FLASH4_F32, {2, 5, 3, 4});
  EXPECT_EQ(c.stride[0], 60);
  EXPECT_EQ(c.stride[1], 12);
}

// With no CUDA kernels built, a CUDA call is valid but unsupported, and says so. (Once
// the portable kernels land this empty problem simply succeeds on them.)
TEST(Api, CudaCallWithoutCudaKernelsIsUnsupportedWithAClearMessage) {
  HostTensor q(FLASH4_BF16, {0, 4, 2, 64}), k(FLASH4_BF16, {0, 4, 2, 64}), v(FLASH4_BF16, {0, 4, 2, 64});
  HostTensor out(FLASH4_BF16, {0, 4, 2, 64});
  flash4::ForwardArgs a = flash4::forward_args();
  a.device = FLASH4_CUDA;
  a.q = q.view(), a.k = k.view(), a.v = v.view(), a.out = out.view();
  const flash4_status status = flash4_forward(&a);
  if (status == FLASH4_OK) GTEST_SKIP() << "CUDA kernels are built: ran on " << flash4_last_backend();
  EXPECT_EQ(status, FLASH4_UNSUPPORTED);
  EXPECT_STREQ(flash4_last_error(), "flash4: no CUDA implementation built");
}

TEST(Api, EmptyBatchIsANoOp) {
  HostTensor q(FLASH4_F32, {0, 3, 2, 4}), k(FLASH4_F32, {0, 3, 2, 4}), v(FLASH4_F32, {0, 3, 2, 4});
  HostTensor out(FLASH4_F32, {0, 3, 2, 4});
  flash4::ForwardArgs a = flash4::forward_args();
  a.q = q.view(), a.k = k.view(), a.v = v.view(), a.out = out.view();
  EXPECT_EQ(flash4_forward(&a), FLASH4_OK) << flash4_last_error();
}

}  // namespace
}  // namespace flash4_test
