// Every validation error: the call returns FLASH4_INVALID_ARGUMENT and the message
// starts with the entry point and names the field at fault and its value.
#include <cmath>

#include "test_util.hpp"

namespace flash4_test {
namespace {

::testing::AssertionResult rejected_with(flash4_status status, const std::string& expected_fragment) {
  const std::string message = flash4_last_error();
  if (status != FLASH4_INVALID_ARGUMENT)
    return ::testing::AssertionFailure() << "status " << int(status) << " (message \"" << message << "\")";
  if (message.find(expected_fragment) == std::string::npos)
    return ::testing::AssertionFailure() << "message \"" << message << "\" lacks \"" << expected_fragment << "\"";
  return ::testing::AssertionSuccess();
}

// A valid dense forward (B=2, Sq=3, Sk=5, Hq=4, Hkv=2, D=8, fp32) that each test breaks once.
class DenseForwardValidation : public ::testing::Test {
 protected:
  void SetUp() override {
    a = flash4::forward_args();
    a.q = q.view(), a.k = k.view(), a.v = v.view(), a.out = out.view(), a.lse = lse.view();
    ASSERT_EQ(flash4_forward(&a), FLASH4_OK) << flash4_last_error();
  }
  flash4_status call() { return flash4_forward(&a); }

  HostTensor q{FLASH4_F32, {2, 3, 4, 8}}, k{FLASH4_F32, {2, 5, 2, 8}}, v{FLASH4_F32, {2, 5, 2, 8}};
  HostTensor out{FLASH4_F32, {2, 3, 4, 8}}, lse{FLASH4_F32, {2, 4, 3}};
  HostTensor f16{FLASH4_F16, {2, 5, 2, 8}};
  flash4::ForwardArgs a{};
};

TEST(ForwardValidation, NullArgsAreRejected) {
  EXPECT_TRUE(rejected_with(flash4_forward(nullptr), "flash4_forward: args is NULL"));
  EXPECT_TRUE(rejected_with(flash4_backward(nullptr), "flash4_backward: args is NULL"));
}

TEST_F(DenseForwardValidation, NullTensorDataIsNamed) {
  a.v.data = nullptr;
  EXPECT_TRUE(rejected_with(call(), "flash4_forward: v.data is NULL"));
}

TEST_F(DenseForwardValidation, WrongRankNamesTheLayout) {
  a.q.rank = 3;
  EXPECT_TRUE(rejected_with(call(), "flash4_forward: q.rank is 3 but must be 4 (dense q is [B, Sq, Hq, Dqk])"));
}

TEST_F(DenseForwardValidation, UnknownDtypeIsNamed) {
  a.k.dtype = flash4_dtype(9);
  EXPECT_TRUE(rejected_with(call(), "k.dtype (9) is not a flash4_dtype"));
}

TEST_F(DenseForwardValidation, NegativeExtentIsNamed) {
  a.out.shape[1] = -3;
  EXPECT_TRUE(rejected_with(call(), "out.shape[1] (-3) is negative"));
}

TEST_F(DenseForwardValidation, NonContiguousHeadDimIsRejected) {
  a.k.stride[3] = 2;
  EXPECT_TRUE(rejected_with(call(), "k.stride[3] (2) must be 1"));
}

TEST_F(DenseForwardValidation, MixedDtypesAreRejected) {
  a.v = f16.view();
  EXPECT_TRUE(rejected_with(call(), "v.dtype (FLASH4_F16) must equal q.dtype (FLASH4_F32)"));
}

TEST_F(DenseForwardValidation, LseMustBeF32) {
  a.lse.dtype = FLASH4_F64;
  EXPECT_TRUE(rejected_with(call(), "lse.dtype (FLASH4_F64) must be FLASH4_F32"));
}

TEST_F(DenseForwardValidation, F64IsRejectedOnCuda) {
  a.device = FLASH4_CUDA;
  a.q.dtype = a.k.dtype = a.v.dtype = a.out.dtype = FLASH4_F64;
  EXPECT_TRUE(rejected_with(call(), "q.dtype is FLASH4_F64, which only device FLASH4_CPU"));
}

TEST_F(DenseForwardValidation, KvHeadsMustDivideQueryHeads) {
  HostTensor k3{FLASH4_F32, {2, 5, 3, 8}}, v3{FLASH4_F32, {2, 5, 3, 8}};
  a.k = k3.view(), a.v = v3.view();
  EXPECT_TRUE(rejected_with(call(), "flash4_forward: k.shape[2] (Hkv=3) must divide q.shape[2] (Hq=4)"));
}

TEST_F(DenseForwardValidation, KeyHeadDimMustEqualQueryHeadDim) {
  a.k.shape[3] = 4;
  EXPECT_TRUE(rejected_with(call(), "k.shape[3] (4) must equal Dqk=8 (q.shape[3])"));
}

TEST_F(DenseForwardValidation, ValueHeadsMustEqualKeyHeads) {
  a.v.shape[2] = 1;
  EXPECT_TRUE(rejected_with(call(), "v.shape[2] (1) must equal Hkv=2 (k.shape[2])"));
}

TEST_F(DenseForwardValidation, OutputHeadDimMustEqualValueHeadDim) {
  a.out.shape[3] = 4;
  EXPECT_TRUE(rejected_with(call(), "out.shape[3] (4) must equal Dv=8 (v.shape[3])"));
}

TEST_F(DenseForwardValidation, OutputSequenceLengthMustEqualQueries) {
  a.out.shape[1] = 2;
  EXPECT_TRUE(rejected_with(call(), "out.shape[1] (2) must equal Sq=3 (q.shape[1])"));
}

TEST_F(DenseForwardValidation, LseShapeMustBeBatchHeadsQueries) {
  a.lse.shape[1] = 2;
  EXPECT_TRUE(rejected_with(call(), "lse.shape[1] (2) must equal Hq=4 (q.shape[2])"));
}

TEST_F(DenseForwardValidation, KeyBatchMustEqualQueryBatch) {
  a.k.shape[0] = 1;
  EXPECT_TRUE(rejected_with(call(), "k.shape[0] (1) must equal B=2 (q.shape[0])"));
}

TEST_F(DenseForwardValidation, ValueLengthMustEqualKeyLength) {
  a.v.shape[1] = 4;
  EXPECT_TRUE(rejected_with(call(), "v.shape[1] (4) must equal Sk=5 (k.shape[1])"));
}

TEST_F(DenseForwardValidation, PackedKeysWithDenseQueriesAreRejected) {
  const int32_t cu[] = {0, 5};
  a.varlen.cu_seqlens_k = cu;
  EXPECT_TRUE(rejected_with(call(), "varlen.cu_seqlens_k is set but varlen.cu_seqlens_q is NULL"));
}

TEST_F(DenseForwardValidation, SequsedKBeyondTheKeysIsRejected) {
  const int32_t used[] = {5, 6};
  a.varlen.seqused_k = used;
  EXPECT_TRUE(rejected_with(call(), "varlen.seqused_k[1] (6) must be in [0, 5]"));
}

TEST_F(DenseForwardValidation, SequsedKWithAMismatchedBatchIsRejected) {
  const int32_t used[] = {5, 5, 5};
  a.varlen.seqused_k = used;
  a.varlen.batch = 3;
  EXPECT_TRUE(rejected_with(call(), "varlen.batch (3) must be 0 or equal B=2"));
}

TEST_F(DenseForwardValidation, NonFiniteScaleIsRejected) {
  a.options.softmax_scale = std::nanf("");
  EXPECT_TRUE(rejected_with(call(), "options.softmax_scale (nan) must be finite"));
}

TEST_F(DenseForwardValidation, NegativeSoftcapIsRejected) {
  a.options.softcap = -1.0f;
  EXPECT_TRUE(rejected_with(call(), "options.softcap (-1) must be finite and >= 0"));
}

TEST_F(DenseForwardValidation, NonFiniteSinkIsNamedByHead) {
  const float sink[] = {0.0f, 1.0f, INFINITY, 0.0f};
  a.options.sink = sink;
  EXPECT_TRUE(rejected_with(call(), "options.sink[2] (inf) must be finite"));
}

TEST_F(DenseForwardValidation, ReferenceBackendOnCudaIsRejected) {
  a.device = FLASH4_CUDA;
  a.backend = FLASH4_BACKEND_REFERENCE;
  EXPECT_TRUE(rejected_with(call(), "backend FLASH4_BACKEND_REFERENCE runs on the CPU only"));
}

TEST_F(DenseForwardValidation, CudaBackendsOnTheCpuAreRejected) {
  a.backend = FLASH4_BACKEND_HOPPER;
  EXPECT_TRUE(rejected_with(call(), "backend FLASH4_BACKEND_HOPPER needs device FLASH4_CUDA"));
  a.backend = FLASH4_BACKEND_PORTABLE;
  EXPECT_TRUE(rejected_with(call(), "backend FLASH4_BACKEND_PORTABLE needs device FLASH4_CUDA"));
}

TEST_F(DenseForwardValidation, UnknownDeviceIsRejected) {
  a.device = flash4_device(7);
  EXPECT_TRUE(rejected_with(call(), "device (7) must be FLASH4_CPU or FLASH4_CUDA"));
}

TEST_F(DenseForwardValidation, UnknownBackendIsRejected) {
  a.backend = flash4_backend(9);
  EXPECT_TRUE(rejected_with(call(), "backend (9) is not a flash4_backend"));
}

TEST_F(DenseForwardValidation, UnknownExp2EmulationModeIsRejected) {
  a.tuning.exp2_emulation = 3;
  EXPECT_TRUE(rejected_with(call(), "tuning.exp2_emulation (3) must be 0 (default), 1 (off) or 2 (on)"));
}

// A valid varlen forward: two sequences of 3 and 4 tokens.
class VarlenForwardValidation : public ::testing::Test {
 protected:
  void SetUp() override {
    a = flash4::forward_args();
    a.q = q.view(), a.k = k.view(), a.v = v.view(), a.out = out.view(), a.lse = lse.view();
    a.varlen.cu_seqlens_q = cu.data();
    a.varlen.cu_seqlens_k = cu.data();
    a.varlen.batch = 2;
    a.varlen.max_seqlen_q = a.varlen.max_seqlen_k = 4;
    ASSERT_EQ(flash4_forward(&a), FLASH4_OK) << flash4_last_error();
  }
  flash4_status call() { return flash4_forward(&a); }

  std::vector<int32_t> cu{0, 3, 7};
  HostTensor q{FLASH4_F32, {7, 4, 8}}, k{FLASH4_F32, {7, 2, 8}}, v{FLASH4_F32, {7, 2, 8}};
  HostTensor out{FLASH4_F32, {7, 4, 8}}, lse{FLASH4_F32, {4, 7}};
  flash4::ForwardArgs a{};
};

TEST_F(VarlenForwardValidation, PackedQueriesNeedPackedKeys) {
  a.varlen.cu_seqlens_k = nullptr;
  EXPECT_TRUE(rejected_with(call(), "varlen.cu_seqlens_k is NULL but varlen.cu_seqlens_q is set"));
}

TEST_F(VarlenForwardValidation, DecreasingCuSeqlensAreRejected) {
  const std::vector<int32_t> bad{0, 5, 4};
  a.varlen.cu_seqlens_k = bad.data();
  a.varlen.max_seqlen_k = 0;
  EXPECT_TRUE(rejected_with(call(), "varlen.cu_seqlens_k must be non-decreasing, but cu_seqlens_k[2] (4) < cu_seqlens_k[1] (5)"));
}

TEST_F(VarlenForwardValidation, NegativeFirstCuSeqlenIsRejected) {
  const std::vector<int32_t> bad{-1, 3, 7};
  a.varlen.cu_seqlens_q = bad.data();
  EXPECT_TRUE(rejected_with(call(), "varlen.cu_seqlens_q[0] (-1) must be >= 0"));
}

TEST_F(VarlenForwardValidation, CuSeqlensPastThePackedLengthAreRejected) {
  const std::vector<int32_t> bad{0, 3, 8};
  a.varlen.cu_seqlens_q = bad.data();
  a.varlen.max_seqlen_q = 5;
  EXPECT_TRUE(rejected_with(call(), "varlen.cu_seqlens_q[2] (8) exceeds the packed length q.shape[0] (7)"));
}

TEST_F(VarlenForwardValidation, SequenceLongerThanMaxSeqlenIsRejected) {
  a.varlen.max_seqlen_q = 3;
  EXPECT_TRUE(rejected_with(call(), "sequence 1 has 4 tokens (varlen.cu_seqlens_q) but varlen.max_seqlen_q is 3"));
}

TEST_F(VarlenForwardValidation, NegativeBatchIsRejected) {
  a.varlen.batch = -1;
  EXPECT_TRUE(rejected_with(call(), "varlen.batch (-1) must be >= 0"));
}

TEST_F(VarlenForwardValidation, SequsedKLongerThanTheSequenceIsRejected) {
  const std::vector<int32_t> used{3, 5};
  a.varlen.seqused_k = used.data();
  EXPECT_TRUE(rejected_with(call(), "varlen.seqused_k[1] (5) must be in [0, 4]"));
}

TEST_F(VarlenForwardValidation, PackedRankIsThree) {
  a.out.rank = 4;
  EXPECT_TRUE(rejected_with(call(), "out.rank is 4 but must be 3 (varlen out is [Tq, Hq, Dv])"));
}

TEST_F(VarlenForwardValidation, PackedLseIsHeadsByTokens) {
  a.lse.shape[1] = 6;
  EXPECT_TRUE(rejected_with(call(), "lse.shape[1] (6) must equal Tq=7 (q.shape[0])"));
}

// A valid paged forward: 2 dense query sequences, pages of 4 keys.
class PagedForwardValidation : public ::testing::Test {
 protected:
  void SetUp() override {
    a = flash4::forward_args();
    a.q = q.view(), a.k = k.view(), a.v = v.view(), a.out = out.view();
    a.varlen.seqused_k = used.data();
    a.paged.page_table = table.data();
    a.paged.max_pages_per_seq = 2;
    a.paged.page_size = 4;
    ASSERT_EQ(flash4_forward(&a), FLASH4_OK) << flash4_last_error();
  }
  flash4_status call() { return flash4_forward(&a); }

  std::vector<int32_t> used{5, 8}, table{2, 0, 1, 3};
  HostTensor q{FLASH4_F32, {2, 3, 4, 8}}, k{FLASH4_F32, {4, 4, 2, 8}}, v{FLASH4_F32, {4, 4, 2, 8}};
  HostTensor out{FLASH4_F32, {2, 3, 4, 8}};
  flash4::ForwardArgs a{};
};

TEST_F(PagedForwardValidation, PageTableNeedsSequsedK) {
  a.varlen.seqused_k = nullptr;
  EXPECT_TRUE(rejected_with(call(), "varlen.seqused_k is NULL, but a page table"));
}

TEST_F(PagedForwardValidation, PageSizeMustBePositive) {
  a.paged.page_size = 0;
  EXPECT_TRUE(rejected_with(call(), "paged.page_size (0) must be > 0"));
}

TEST_F(PagedForwardValidation, MaxPagesPerSequenceMustBePositive) {
  a.paged.max_pages_per_seq = 0;
  EXPECT_TRUE(rejected_with(call(), "paged.max_pages_per_seq (0) must be > 0"));
}

TEST_F(PagedForwardValidation, KeyPagesMustHavePageSizeSlots) {
  a.k.shape[1] = 2;
  EXPECT_TRUE(rejected_with(call(), "k.shape[1] (2) must equal page_size=4 (paged.page_size)"));
}

TEST_F(PagedForwardValidation, PageTableEntriesMustBePagesOfK) {
  table[3] = 4;
  EXPECT_TRUE(rejected_with(call(), "paged.page_table[1][1] (4) is not a page of k (num_pages=4)"));
}

TEST_F(PagedForwardValidation, SequsedKBeyondThePageTableIsRejected) {
  used[0] = 9;
  EXPECT_TRUE(rejected_with(call(), "varlen.seqused_k[0] (9) must be in [0, 8]"));
}

TEST_F(PagedForwardValidation, CuSeqlensKWithAPageTableIsRejected) {
  const std::vector<int32_t> cu_q{0, 3, 6}, cu_k{0, 5, 13};
  HostTensor packed_q{FLASH4_F32, {6, 4, 8}}, packed_out{FLASH4_F32, {6, 4, 8}};
  a.q = packed_q.view(), a.out = packed_out.view();
  a.varlen.cu_seqlens_q = cu_q.data();
  a.varlen.cu_seqlens_k = cu_k.data();
  a.varlen.batch = 2;
  EXPECT_TRUE(rejected_with(call(), "varlen.cu_seqlens_k must be NULL with a page table"));
}

// A valid dense backward that each test breaks once.
class BackwardValidation : public ::testing::Test {
 protected:
  void SetUp() override {
    b = flash4::backward_args();
    b.q = q.view(), b.k = k.view(), b.v = v.view(), b.out = out.view(), b.dout = dout.view(), b.lse = lse.view();
    b.dq = dq.view(), b.dk = dk.view(), b.dv = dv.view();
    ASSERT_EQ(flash4_backward(&b), FLASH4_OK) << flash4_last_error();
  }
  flash4_status call() { return flash4_backward(&b); }

  HostTensor q{FLASH4_F32, {2, 3, 4, 8}}, k{FLASH4_F32, {2, 5, 2, 8}}, v{FLASH4_F32, {2, 5, 2, 8}};
  HostTensor out{FLASH4_F32, {2, 3, 4, 8}}, dout{FLASH4_F32, {2, 3, 4, 8}}, lse{FLASH4_F32, {2, 4, 3}};
  HostTensor dq{FLASH4_F32, {2, 3, 4, 8}}, dk{FLASH4_F32, {2, 5, 2, 8}}, dv{FLASH4_F32, {2, 5, 2, 8}};
  HostTensor bf16{FLASH4_BF16, {2, 3, 4, 8}};
  flash4::BackwardArgs b{};
};

TEST_F(BackwardValidation, LseIsRequired) {
  b.lse.data = nullptr;
  EXPECT_TRUE(rejected_with(call(), "flash4_backward: lse.data is NULL: the backward needs the forward's LSE"));
}

TEST_F(BackwardValidation, GradientShapeMustMatchItsInput) {
  b.dk.shape[1] = 4;
  EXPECT_TRUE(rejected_with(call(), "dk.shape[1] (4) must equal k.shape[1] (5)"));
}

TEST_F(BackwardValidation, GradientDtypeMustMatchTheInputs) {
  b.dout = bf16.view();
  EXPECT_TRUE(rejected_with(call(), "dout.dtype (FLASH4_BF16) must equal q.dtype (FLASH4_F32)"));
}

TEST_F(BackwardValidation, MissingGradientBufferIsNamed) {
  b.dq.data = nullptr;
  EXPECT_TRUE(rejected_with(call(), "flash4_backward: dq.data is NULL"));
}

TEST_F(BackwardValidation, DsinkWithoutASinkIsRejected) {
  float dsink[4];
  b.dsink = dsink;
  EXPECT_TRUE(rejected_with(call(), "dsink is set but options.sink is NULL"));
}

}  // namespace
}  // namespace flash4_test
