// flash4's portable CUDA backend against the float64 CPU reference: every feature, both
// 16-bit dtypes, every kernel head dim, Sq = Sk / Sq < Sk / Sq > Sk over lengths
// {1, 17, 128, 1000, 4097}, dense (BSHD, BHSD), packed and paged. Each case checks out
// and lse (forward) and dq, dk, dv, dsink (backward) by ||gpu - ref|| / ||ref||, that every
// output element was written (NaN-poisoned before the call) and that rows of no sequence
// were left alone by the forward.
#include <cctype>
#include <cstdio>

#include "common/random.hpp"
#include "flash4_gpu_problem.hpp"

namespace flash4_gpu {
namespace {

void print_errors(const Problem& p, const Errors& e) {
  std::printf("[ errors ] %s | out %.2e lse %.2e", p.describe().c_str(), e.out, e.lse);
  if (p.backward && !p.paged())
    std::printf(" dq %.2e dk %.2e dv %.2e (slack dq %.1e dk %.1e)", e.dq, e.dk, e.dv, e.dq_slack, e.dk_slack);
  if (p.sink && p.backward && !p.paged()) std::printf(" dsink %.2e (slack %.1e)", e.dsink, e.dsink_slack);
  std::printf("\n");
}

// Forward (and backward) of p against the reference, within the dtype's tolerance.
void check_problem(const Problem& p, uint64_t salt) {
  auto rng = testing_support::make_rng(salt);
  SCOPED_TRACE(p.describe());
  ProblemRunner runner(p, rng);
  runner.setup();
  Errors e;
  runner.forward(e);
  if (::testing::Test::HasFatalFailure()) return;
  const bool backward = p.backward && !p.paged();
  if (backward) {
    runner.backward(e);
    if (::testing::Test::HasFatalFailure()) return;
  }
  print_errors(p, e);
  const Tolerance tol = tolerance_for(p.dtype);
  EXPECT_LT(e.out, tol.out) << "out";
  EXPECT_LT(e.lse, tol.lse_abs) << "lse (max abs)";
  if (backward) {
    EXPECT_LT(e.dq, tol.grad + e.dq_slack) << "dq (slack for the 16-bit out: " << e.dq_slack << ")";
    EXPECT_LT(e.dk, tol.grad + e.dk_slack) << "dk (slack for the 16-bit out: " << e.dk_slack << ")";
    EXPECT_LT(e.dv, tol.grad) << "dv";
    if (p.sink) EXPECT_LT(e.dsink, tol.grad + e.dsink_slack) << "dsink (slack for the 16-bit out: " << e.dsink_slack << ")";
  }
}

std::string test_name(const ::testing::TestParamInfo<Problem>& info) {
  std::string s = std::to_string(info.index) + "_" + info.param.describe();
  std::string out;
  for (char c : s) out += std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
  return out;
}

class Flash4Portable : public ::testing::TestWithParam<Problem> {};

TEST_P(Flash4Portable, MatchesFloat64Reference) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  check_problem(GetParam(), std::hash<std::string>{}(GetParam().describe()));
}

// --- Head dims x dtypes x causal, rotating through shapes ------------------------------
std::vector<Problem> head_dim_cases() {
  struct Shape {
    int B, Hq, Hkv, Sq, Sk;
  };
  const Shape shapes[] = {{2, 4, 2, 128, 128}, {1, 2, 2, 17, 1000}, {2, 2, 1, 1000, 17},
                          {3, 2, 2, 1, 128},   {1, 2, 1, 1000, 1000}, {1, 1, 1, 128, 4097}};
  const int dims[][2] = {{64, 64}, {96, 96}, {128, 128}, {192, 192}, {256, 256}, {192, 128}};
  std::vector<Problem> cases;
  int i = 0;
  for (auto [dqk, dv] : dims)
    for (flash4_dtype dtype : {FLASH4_BF16, FLASH4_F16})
      for (bool causal : {false, true}) {
        const Shape& s = shapes[i++ % 6];
        Problem p;
        p.label = "hdim";
        p.dtype = dtype;
        p.Dqk = dqk, p.Dv = dv;
        p.B = s.B, p.Hq = s.Hq, p.Hkv = s.Hkv, p.Sq = s.Sq, p.Sk = s.Sk;
        p.causal = causal;
        cases.push_back(p);
      }
  // Head dims between the kernels' (padded with zero columns).
  for (auto [dqk, dv] : {std::pair{40, 40}, std::pair{80, 80}, std::pair{128, 64}, std::pair{64, 128}}) {
    Problem p;
    p.label = "odd hdim";
    p.Dqk = dqk, p.Dv = dv;
    p.B = 2, p.Hq = 2, p.Hkv = 1, p.Sq = 77, p.Sk = 130;
    p.causal = true;
    cases.push_back(p);
  }
  return cases;
}
INSTANTIATE_TEST_SUITE_P(HeadDims, Flash4Portable, ::testing::ValuesIn(head_dim_cases()), test_name);

// --- Lengths {1, 17, 128, 1000, 4097} as Sq = Sk, Sq < Sk, Sq > Sk (bf16, d = 128) ------
std::vector<Problem> length_cases() {
  const int pairs[][2] = {{1, 1},     {17, 17},   {128, 128},  {1000, 1000}, {1, 4097},   {17, 128},
                          {128, 1000}, {1000, 4097}, {4097, 1000}, {1000, 128}, {128, 17}, {17, 1}};
  std::vector<Problem> cases;
  int i = 0;
  for (auto [sq, sk] : pairs) {
    Problem p;
    p.label = "length";
    p.Sq = sq, p.Sk = sk;
    const int64_t work = int64_t(sq) * sk;
    p.B = work > 1000000 ? 1 : 2;
    p.Hq = work > 1000000 ? 1 : 4;
    p.Hkv = 1;
    p.causal = (i++ % 2) == 1;
    cases.push_back(p);
  }
  // The long causal square: many heads so the CPU reference runs them in parallel.
  Problem p;
  p.label = "long";
  p.Dqk = p.Dv = 64;
  p.Sq = p.Sk = 4097;
  p.B = 1, p.Hq = 16, p.Hkv = 16;
  p.causal = true;
  cases.push_back(p);
  return cases;
}
INSTANTIATE_TEST_SUITE_P(Lengths, Flash4Portable, ::testing::ValuesIn(length_cases()), test_name);

// --- Features -----------------------------------------------------------------------
std::vector<Problem> feature_cases() {
  std::vector<Problem> cases;
  auto base = [](const char* label) {
    Problem p;
    p.label = label;
    p.B = 2, p.Hq = 4, p.Hkv = 2, p.Sq = 300, p.Sk = 300;
    return p;
  };
  // Sliding windows, with and without causal, Sq != Sk.
  for (auto [wl, wr, causal, sq, sk] : {std::tuple{64, 0, true, 300, 300}, std::tuple{32, 32, false, 300, 300},
                                        std::tuple{-1, 16, false, 200, 500}, std::tuple{100, -1, false, 500, 200},
                                        std::tuple{0, 0, false, 130, 130}, std::tuple{200, 7, true, 250, 700}}) {
    Problem p = base("window");
    p.window_left = wl, p.window_right = wr, p.causal = causal, p.Sq = sq, p.Sk = sk;
    cases.push_back(p);
  }
  {
    Problem p = base("softcap");
    p.softcap = 30.0f, p.causal = true, p.q_scale = 4.0;
    cases.push_back(p);
    p.dtype = FLASH4_F16, p.Dqk = p.Dv = 64, p.softcap = 5.0f, p.causal = false;
    cases.push_back(p);
  }
  {
    Problem p = base("sink");
    p.sink = true, p.causal = true;
    cases.push_back(p);
    p.Sq = 300, p.Sk = 100;  // rows before the diagonal see only the sink
    cases.push_back(p);
    p.dtype = FLASH4_F16, p.Dqk = p.Dv = 256, p.Sq = 100, p.Sk = 150, p.causal = false;
    cases.push_back(p);
  }
  {
    Problem p = base("gqa");
    p.Hq = 8, p.Hkv = 2, p.causal = true;
    cases.push_back(p);
    p.label = "mqa", p.Hq = 6, p.Hkv = 1, p.causal = false, p.Dqk = 192, p.Dv = 128;
    cases.push_back(p);
  }
  {
    Problem p = base("bhsd");
    p.bhsd = true, p.Sq = 200, p.Sk = 333, p.causal = true;
    cases.push_back(p);
    p.Dqk = p.Dv = 96, p.dtype = FLASH4_F16, p.causal = false;
    cases.push_back(p);
  }
  {
    Problem p = base("varlen");
    p.seqs = {{1, 1}, {17, 17}, {128, 128}, {300, 300}, {0, 5}, {5, 0}, {77, 200}};
    p.pad_q = 3, p.pad_k = 5, p.causal = true, p.Hq = 4, p.Hkv = 1;
    cases.push_back(p);
    p.seqs = {{17, 100}, {100, 17}, {1, 300}, {1000, 1000}};
    p.pad_q = p.pad_k = 0, p.causal = false, p.Dqk = p.Dv = 64, p.dtype = FLASH4_F16;
    cases.push_back(p);
  }
  {
    Problem p = base("varlen seqused");
    p.seqs = {{64, 200}, {100, 100}, {10, 50}, {33, 40}};
    p.seqused = {150, 37, 0, 40};
    p.causal = true, p.pad_k = 9;
    cases.push_back(p);
  }
  {
    Problem p = base("dense seqused");
    p.B = 3, p.Sq = 50, p.Sk = 300, p.seqused = {300, 123, 1};
    cases.push_back(p);
    p.causal = true, p.seqused = {0, 299, 64};
    cases.push_back(p);
  }
  for (int page_size : {16, 64, 256, 10}) {
    Problem p = base("paged");
    p.backward = false;
    p.page_size = page_size;
    p.B = 3, p.Sq = page_size == 16 ? 1 : 40, p.Sk = 1000, p.seqused = {1000, 17, 300};
    p.causal = page_size != 64;
    cases.push_back(p);
  }
  {
    Problem p = base("paged varlen");
    p.backward = false, p.page_size = 32, p.causal = true;
    p.seqs = {{5, 400}, {1, 33}, {60, 60}};
    p.seqused = {400, 33, 60};
    cases.push_back(p);
  }
  {
    Problem p = base("deterministic");
    p.deterministic = true, p.causal = true, p.Hq = 8, p.Hkv = 2;
    cases.push_back(p);
    p.seqs = {{100, 300}, {300, 100}, {1, 1}};
    p.pad_q = 2, p.pad_k = 2, p.Dqk = p.Dv = 256, p.causal = false, p.sink = true;
    cases.push_back(p);
  }
  {
    // How adept's CUDA decoder calls it: q, k, v column blocks of one fused [N, (Hq + 2 Hkv) D]
    // row (row stride > H D), packed documents, causal, deterministic.
    Problem p = base("adept layout");
    p.seqs = {{16, 16}, {9, 9}, {23, 23}};
    p.Hq = 4, p.Hkv = 2, p.Dqk = p.Dv = 64, p.causal = true, p.deterministic = true;
    p.row_pad = 64 * 4;
    cases.push_back(p);
    p.deterministic = false, p.Dqk = p.Dv = 16, p.row_pad = 16 * 4;
    cases.push_back(p);
    p.seqs.clear();
    p.B = 2, p.Sq = p.Sk = 100, p.Dqk = p.Dv = 128, p.row_pad = 40, p.window_left = 30;
    cases.push_back(p);
  }
  {
    Problem p = base("everything");
    p.seqs = {{120, 300}, {300, 310}, {7, 7}};
    p.seqused = {250, 305, 7};
    p.softcap = 20.0f, p.sink = true, p.window_left = 90, p.window_right = 3, p.causal = true;
    p.Hq = 6, p.Hkv = 2, p.Dqk = 192, p.Dv = 128;
    cases.push_back(p);
    p.dtype = FLASH4_F16, p.deterministic = true, p.Dqk = p.Dv = 128;
    cases.push_back(p);
  }
  return cases;
}
INSTANTIATE_TEST_SUITE_P(Features, Flash4Portable, ::testing::ValuesIn(feature_cases()), test_name);

// --- Determinism ------------------------------------------------------------------------
TEST(Flash4PortableDeterminism, DeterministicBackwardIsBitIdenticalAcrossRuns) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  auto rng = testing_support::make_rng(77);
  Problem p;
  p.B = 2, p.Hq = 8, p.Hkv = 2, p.Sq = 700, p.Sk = 900, p.causal = true, p.sink = true, p.deterministic = true;
  ProblemRunner runner(p, rng);
  runner.setup();
  Errors e;
  GpuOutputs first, second;
  runner.forward(e);
  ASSERT_FALSE(::testing::Test::HasFatalFailure());
  runner.backward(e, &first);
  ASSERT_FALSE(::testing::Test::HasFatalFailure());
  runner.backward(e, &second);
  ASSERT_FALSE(::testing::Test::HasFatalFailure());
  EXPECT_EQ(first.dq, second.dq);
  EXPECT_EQ(first.dk, second.dk);
  EXPECT_EQ(first.dv, second.dv);
}

// --- Fused buffers: q, k, v as column blocks of one [N, (Hq + 2 Hkv) D] buffer and dq, dk,
// dv of another (adept's CUDA decoder), against separate buffers: the deterministic
// backward must give the same bits either way.
TEST(Flash4PortableLayouts, FusedQkvBuffersGiveTheSameBitsAsSeparateOnes) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  auto rng = testing_support::make_rng(91);
  const int64_t Hq = 4, Hkv = 2, D = 64, W = (Hq + 2 * Hkv) * D;
  for (const std::vector<int32_t>& cu : {std::vector<int32_t>{0, 16, 25, 48}, std::vector<int32_t>{0, 24, 48}}) {
    const int64_t N = cu.back();
    const int batch = int(cu.size()) - 1;
    std::normal_distribution<double> normal(0.0, 1.0);
    std::vector<uint16_t> qkv(size_t(N * W)), out_grad(size_t(N * Hq * D));
    for (auto& x : qkv) x = to_bits(normal(rng), FLASH4_BF16);
    for (auto& x : out_grad) x = to_bits(normal(rng), FLASH4_BF16);
    // Separate contiguous copies of the same values.
    std::vector<uint16_t> q(size_t(N * Hq * D)), k(size_t(N * Hkv * D)), v(size_t(N * Hkv * D));
    for (int64_t n = 0; n < N; ++n) {
      std::copy_n(&qkv[size_t(n * W)], Hq * D, &q[size_t(n * Hq * D)]);
      std::copy_n(&qkv[size_t(n * W + Hq * D)], Hkv * D, &k[size_t(n * Hkv * D)]);
      std::copy_n(&qkv[size_t(n * W + (Hq + Hkv) * D)], Hkv * D, &v[size_t(n * Hkv * D)]);
    }
    DeviceMemory d_qkv = upload(qkv), d_q = upload(q), d_k = upload(k), d_v = upload(v), d_dout = upload(out_grad);
    DeviceMemory d_cu = upload(cu), d_out(size_t(N * Hq * D) * 2), d_lse(size_t(Hq * N) * 4);
    DeviceMemory d_dqkv(size_t(N * W) * 2), d_dq(q.size() * 2), d_dk(k.size() * 2), d_dv(v.size() * 2);
    auto view = [](void* base, int64_t offset, int64_t H, int64_t ld) {
      flash4_tensor t{};
      t.data = static_cast<uint16_t*>(base) + offset;
      t.dtype = FLASH4_BF16;
      t.rank = 3;
      const int64_t shape[3] = {0, H, 64}, stride[3] = {ld, 64, 1};
      for (int i = 0; i < 3; ++i) t.shape[i] = shape[i], t.stride[i] = stride[i];
      return t;
    };
    auto with_rows = [N](flash4_tensor t) {
      t.shape[0] = N;
      return t;
    };
    flash4_varlen vl{};
    vl.cu_seqlens_q = vl.cu_seqlens_k = static_cast<const int32_t*>(d_cu.get());
    vl.batch = batch;
    flash4_options o{};
    o.causal = 1, o.window_left = o.window_right = -1;
    flash4_forward_args f;
    flash4_forward_args_init(&f);
    f.device = FLASH4_CUDA;
    f.q = with_rows(view(d_q.get(), 0, Hq, Hq * D)), f.k = with_rows(view(d_k.get(), 0, Hkv, Hkv * D));
    f.v = with_rows(view(d_v.get(), 0, Hkv, Hkv * D)), f.out = with_rows(view(d_out.get(), 0, Hq, Hq * D));
    f.lse.data = d_lse.get(), f.lse.dtype = FLASH4_F32, f.lse.rank = 2;
    f.lse.shape[0] = Hq, f.lse.shape[1] = N, f.lse.stride[0] = N, f.lse.stride[1] = 1;
    f.options = o, f.varlen = vl;
    ASSERT_EQ(flash4_forward(&f), FLASH4_OK) << flash4_last_error();
    flash4_backward_args b;
    flash4_backward_args_init(&b);
    b.device = FLASH4_CUDA;
    b.q = f.q, b.k = f.k, b.v = f.v, b.out = f.out, b.lse = f.lse;
    b.dout = with_rows(view(d_dout.get(), 0, Hq, Hq * D));
    b.dq = with_rows(view(d_dq.get(), 0, Hq, Hq * D)), b.dk = with_rows(view(d_dk.get(), 0, Hkv, Hkv * D));
    b.dv = with_rows(view(d_dv.get(), 0, Hkv, Hkv * D));
    b.options = o, b.varlen = vl, b.deterministic = 1;
    ASSERT_EQ(flash4_backward(&b), FLASH4_OK) << flash4_last_error();
    // The same through the fused buffers.
    cudaMemset(d_dqkv.get(), 0xFF, d_dqkv.bytes());
    flash4_backward_args fb = b;
    fb.q = with_rows(view(d_qkv.get(), 0, Hq, W)), fb.k = with_rows(view(d_qkv.get(), Hq * D, Hkv, W));
    fb.v = with_rows(view(d_qkv.get(), (Hq + Hkv) * D, Hkv, W));
    fb.dq = with_rows(view(d_dqkv.get(), 0, Hq, W)), fb.dk = with_rows(view(d_dqkv.get(), Hq * D, Hkv, W));
    fb.dv = with_rows(view(d_dqkv.get(), (Hq + Hkv) * D, Hkv, W));
    ASSERT_EQ(flash4_backward(&fb), FLASH4_OK) << flash4_last_error();
    FLASH4_TEST_CUDA(cudaDeviceSynchronize());
    std::vector<uint16_t> dqkv(size_t(N * W)), dq(q.size()), dk(k.size()), dv(v.size());
    cudaMemcpy(dqkv.data(), d_dqkv.get(), dqkv.size() * 2, cudaMemcpyDeviceToHost);
    cudaMemcpy(dq.data(), d_dq.get(), dq.size() * 2, cudaMemcpyDeviceToHost);
    cudaMemcpy(dk.data(), d_dk.get(), dk.size() * 2, cudaMemcpyDeviceToHost);
    cudaMemcpy(dv.data(), d_dv.get(), dv.size() * 2, cudaMemcpyDeviceToHost);
    int mismatches = 0;
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t i = 0; i < Hq * D; ++i) mismatches += dqkv[size_t(n * W + i)] != dq[size_t(n * Hq * D + i)];
      for (int64_t i = 0; i < Hkv * D; ++i) {
        mismatches += dqkv[size_t(n * W + Hq * D + i)] != dk[size_t(n * Hkv * D + i)];
        mismatches += dqkv[size_t(n * W + (Hq + Hkv) * D + i)] != dv[size_t(n * Hkv * D + i)];
      }
    }
    EXPECT_EQ(mismatches, 0) << "documents " << batch;
  }
}

// --- What the backend does not cover answers FLASH4_UNSUPPORTED, naming it ---------------
struct Views {
  DeviceMemory memory{size_t(1) << 22};
  flash4_forward_args args{};
  Views(flash4_dtype dtype, int64_t d, int64_t row_stride) {
    flash4_forward_args_init(&args);
    args.device = FLASH4_CUDA;
    auto view = [&](int64_t D) {
      flash4_tensor t{};
      t.data = memory.get();
      t.dtype = dtype;
      t.rank = 4;
      const int64_t S = 16;
      const int64_t shape[4] = {1, S, 1, D}, stride[4] = {S * row_stride, row_stride, row_stride, 1};
      for (int i = 0; i < 4; ++i) t.shape[i] = shape[i], t.stride[i] = stride[i];
      return t;
    };
    args.q = view(d), args.k = view(d), args.v = view(d), args.out = view(d);
  }
};

void expect_unsupported(const flash4_forward_args& a, const char* fragment) {
  EXPECT_EQ(flash4_forward(&a), FLASH4_UNSUPPORTED);
  EXPECT_NE(std::string(flash4_last_error()).find(fragment), std::string::npos) << flash4_last_error();
}

TEST(Flash4PortableUnsupported, Fp32IsNamed) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  expect_unsupported(Views(FLASH4_F32, 64, 64).args, "dtype fp32");
}

TEST(Flash4PortableUnsupported, HeadDimNotMultipleOf8IsNamed) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  expect_unsupported(Views(FLASH4_BF16, 12, 16).args, "multiples of 8");
}

TEST(Flash4PortableUnsupported, HeadDimAbove256IsNamed) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  expect_unsupported(Views(FLASH4_BF16, 264, 264).args, "at most 256");
}

TEST(Flash4PortableUnsupported, UnalignedRowStrideIsNamed) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  expect_unsupported(Views(FLASH4_BF16, 64, 68).args, "multiple of 8 elements");
}

}  // namespace
}  // namespace flash4_gpu
