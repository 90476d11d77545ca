// The host-side shape rules of the Hopper kernels, which decide what runs where before any
// kernel does (so they are checked here, on the CPU, against brute force): the kernel head dim
// a pair (d_qk, d_v) is zero-padded to, and the rows of a paged K / V tensor-map box.
#include <gtest/gtest.h>

#include <numeric>

#include "common/scoped_env.hpp"
#include "hopper/host.hpp"
#include "hopper/launch.hpp"

namespace {

using flash4::detail::padded_head_dim;
using flash4::detail::ProblemShape;

ProblemShape dims(int64_t d_qk, int64_t d_v) {
  ProblemShape s;
  s.d_qk = d_qk;
  s.d_v = d_v;
  return s;
}

// The smallest kernel dim of {64, 128, 256} holding both, for multiples of 8; 0 otherwise.
TEST(HopperShapes, PaddedHeadDimIsTheSmallestKernelThatHoldsBoth) {
  int checked = 0;
  for (int64_t qk = 1; qk <= 264; ++qk)
    for (int64_t v = 1; v <= 264; ++v) {
      int expected = 0;
      if (qk % 8 == 0 && v % 8 == 0)
        for (int kernel : {64, 128, 256})
          if (qk <= kernel && v <= kernel) {
            expected = kernel;
            break;
          }
      ASSERT_EQ(padded_head_dim(dims(qk, v)), expected) << "d_qk " << qk << " d_v " << v;
      checked += expected != 0;
    }
  EXPECT_EQ(checked, 32 * 32);  // every pair of multiples of 8 up to 256 runs on some kernel
  EXPECT_EQ(padded_head_dim(dims(96, 96)), 128);
  EXPECT_EQ(padded_head_dim(dims(192, 128)), 256);
  EXPECT_EQ(padded_head_dim(dims(64, 64)), 64);
  EXPECT_EQ(padded_head_dim(dims(0, 64)), 0);
}

// A box divides both the page and the key block (so it never crosses a page and a block takes
// whole boxes), is the largest that does, and starts on the 1024-byte swizzle atom (8 rows of
// 128 bytes) whenever the page size is a multiple of 8 -- what the host requires.
TEST(HopperShapes, PagedBoxRowsDivideThePageAndTheKeyBlock) {
  for (int block : {128, 80})
    for (int page = 1; page <= 1024; ++page) {
      const int box = flash4::hopper::paged_box_rows(page, block);
      ASSERT_EQ(box, std::gcd(page, block)) << "page " << page << " block " << block;
      ASSERT_EQ(page % box, 0);
      ASSERT_EQ(block % box, 0);
      if (page % 8 == 0) ASSERT_EQ(box % 8, 0) << "page " << page << " block " << block;
    }
  EXPECT_EQ(flash4::hopper::paged_box_rows(256, 80), 16);
  EXPECT_EQ(flash4::hopper::paged_box_rows(24, 128), 8);
  EXPECT_EQ(flash4::hopper::paged_box_rows(16, 128), 16);
  EXPECT_EQ(flash4::hopper::paged_box_rows(512, 128), 128);
}

// Packed GQA packs exactly when it needs fewer 128-row tiles than one head a tile.
TEST(HopperShapes, PackGqaRulePacksWhenItSavesTiles) {
  using flash4::detail::pack_gqa_rule;
  EXPECT_EQ(pack_gqa_rule(1, 8, 128), 8);      // decode: 1 tile instead of 8
  EXPECT_EQ(pack_gqa_rule(100, 16, 128), 16);  // 13 tiles instead of 16
  EXPECT_EQ(pack_gqa_rule(300, 2, 128), 2);    // 5 instead of 6
  EXPECT_EQ(pack_gqa_rule(128, 4, 128), 1);    // 4 either way
  EXPECT_EQ(pack_gqa_rule(256, 2, 128), 1);
  EXPECT_EQ(pack_gqa_rule(1, 1, 128), 1);      // no group
  EXPECT_EQ(pack_gqa_rule(1, 6, 128), 1);      // not a power of two
  EXPECT_EQ(pack_gqa_rule(1, 32, 128), 1);     // over 16
  for (int64_t sq = 1; sq <= 600; ++sq)
    for (int64_t group : {2, 4, 8, 16}) {
      const bool saves = (sq * group + 127) / 128 < group * ((sq + 127) / 128);
      ASSERT_EQ(pack_gqa_rule(sq, group, 128), saves ? int(group) : 1) << "Sq " << sq << " group " << group;
    }
}

// Split-KV: runs only when the tiles fill under half the SMs and have >= 4 key blocks; a power
// of two, at most 16, at most half the blocks, and no more than covering the SMs needs.
TEST(HopperShapes, SplitKvRuleFillsTheSmsWithPowerOfTwoRuns) {
  using flash4::detail::split_kv_rule;
  EXPECT_EQ(split_kv_rule(64, 64, 132), 2);  // ceil(132 / 64) = 3 -> 2
  EXPECT_EQ(split_kv_rule(8, 64, 132), 16);
  EXPECT_EQ(split_kv_rule(8, 10, 132), 4);   // at most 5 (half the blocks) -> 4
  EXPECT_EQ(split_kv_rule(70, 64, 132), 1);  // already over half the SMs
  EXPECT_EQ(split_kv_rule(8, 3, 132), 1);    // too few blocks
  // Unpacked q (runs of >= 8 blocks): 64 tiles of 8 blocks (1024 queries x 8 heads, d 128)
  // stay whole; 32 tiles of 64 blocks (chunked prefill over 8192 keys) split in 4.
  EXPECT_EQ(split_kv_rule(64, 8, 132, 8), 1);
  EXPECT_EQ(split_kv_rule(64, 16, 132, 8), 2);
  EXPECT_EQ(split_kv_rule(32, 64, 132, 8), 4);
  EXPECT_EQ(split_kv_rule(8, 20, 132, 8), 2);
  for (int64_t tiles = 1; tiles <= 200; ++tiles)
    for (int64_t blocks = 1; blocks <= 200; blocks += 7) {
      const int splits = split_kv_rule(tiles, blocks, 132);
      ASSERT_EQ(splits & (splits - 1), 0);
      ASSERT_LE(splits, 16);
      if (splits > 1) {
        ASSERT_LE(2 * tiles, 132);
        ASSERT_LE(2 * splits, blocks);
        ASSERT_LT((splits / 2) * tiles, 132) << "no more runs than covering the SMs needs";
      }
      // Unpacked q: runs of at least 8 blocks, else as packed.
      const int unpacked = split_kv_rule(tiles, blocks, 132, 8);
      ASSERT_EQ(unpacked & (unpacked - 1), 0);
      ASSERT_LE(unpacked, splits);
      if (unpacked > 1) ASSERT_LE(8 * unpacked, blocks);
      if (blocks >= 8 * splits) ASSERT_EQ(unpacked, splits);
    }
}

// The d 64 backward's query block: 128 by default (dense, or deterministic varlen), 64 for
// varlen without determinism, softcap, other head dims, atomic dQ and 2^31 query tokens;
// FLASH4_HOPPER_BWD_BM forces either (not past atomics), FLASH4_HOPPER_DQ=per_warpgroup asks 64.
TEST(HopperShapes, BackwardWideMRuleTakes128QueriesWhereItWasMeasuredFaster) {
  using flash4::detail::backward_wide_m_rule;
  using testing_support::ScopedEnv;
  ScopedEnv bm("FLASH4_HOPPER_BWD_BM", nullptr), dq("FLASH4_HOPPER_DQ", nullptr);
  auto shape = [](int64_t d, bool varlen, int64_t tokens = 4096) {
    ProblemShape s = dims(d, d);
    s.varlen = varlen;
    s.tokens_q = tokens;
    return s;
  };
  EXPECT_TRUE(backward_wide_m_rule(shape(64, false), false, false));
  EXPECT_TRUE(backward_wide_m_rule(shape(64, false), true, false));
  EXPECT_TRUE(backward_wide_m_rule(shape(32, false), false, false));  // padded to 64
  EXPECT_TRUE(backward_wide_m_rule(shape(64, true), true, false));    // varlen, deterministic
  EXPECT_FALSE(backward_wide_m_rule(shape(64, true), false, false));  // varlen: 0.976x
  EXPECT_FALSE(backward_wide_m_rule(shape(64, false), false, true));  // softcap
  EXPECT_FALSE(backward_wide_m_rule(shape(128, false), false, false));
  EXPECT_FALSE(backward_wide_m_rule(shape(72, false), false, false));  // the d 128 kernel
  EXPECT_FALSE(backward_wide_m_rule(shape(64, false, int64_t(1) << 31), false, false));
  {
    ScopedEnv narrow("FLASH4_HOPPER_BWD_BM", "64");
    EXPECT_FALSE(backward_wide_m_rule(shape(64, false), true, false));
  }
  {
    ScopedEnv wide("FLASH4_HOPPER_BWD_BM", "128");
    EXPECT_TRUE(backward_wide_m_rule(shape(64, true), false, false));
    EXPECT_FALSE(backward_wide_m_rule(shape(64, false), false, true));  // softcap, even forced
    ScopedEnv atomics("FLASH4_HOPPER_DQ", "atomics");
    EXPECT_FALSE(backward_wide_m_rule(shape(64, false), false, false));
  }
  {
    ScopedEnv per_warpgroup("FLASH4_HOPPER_DQ", "per_warpgroup");
    EXPECT_FALSE(backward_wide_m_rule(shape(64, false), false, false));
    ScopedEnv wide("FLASH4_HOPPER_BWD_BM", "128");
    EXPECT_TRUE(backward_wide_m_rule(shape(64, false), false, false));
  }
}

// The flat backward's dQ chunks by float4 atomics: all at d 64 (1) and d 256 (2), none at d 128
// (measured faster there with the staging); FLASH4_HOPPER_FLAT_ATOMIC_CHUNKS=0 | 1 | 2 overrides,
// clamped to the warpgroup's chunks; other values leave the rule.
TEST(HopperShapes, FlatAtomicChunksRuleSendsTheChunksByAtomicsWhereItWasMeasuredFaster) {
  using flash4::detail::flat_atomic_chunks_rule;
  using testing_support::ScopedEnv;
  {
    ScopedEnv unset("FLASH4_HOPPER_FLAT_ATOMIC_CHUNKS", nullptr);
    EXPECT_EQ(flat_atomic_chunks_rule(64), 1);
    EXPECT_EQ(flat_atomic_chunks_rule(128), 0);
    EXPECT_EQ(flat_atomic_chunks_rule(256), 2);
  }
  {
    ScopedEnv none("FLASH4_HOPPER_FLAT_ATOMIC_CHUNKS", "0");
    for (int d : {64, 128, 256}) EXPECT_EQ(flat_atomic_chunks_rule(d), 0) << "d " << d;
  }
  {
    ScopedEnv one("FLASH4_HOPPER_FLAT_ATOMIC_CHUNKS", "1");
    for (int d : {64, 128, 256}) EXPECT_EQ(flat_atomic_chunks_rule(d), 1) << "d " << d;
  }
  {
    ScopedEnv two("FLASH4_HOPPER_FLAT_ATOMIC_CHUNKS", "2");
    EXPECT_EQ(flat_atomic_chunks_rule(64), 1);
    EXPECT_EQ(flat_atomic_chunks_rule(128), 1);
    EXPECT_EQ(flat_atomic_chunks_rule(256), 2);
  }
  {
    ScopedEnv other("FLASH4_HOPPER_FLAT_ATOMIC_CHUNKS", "yes");
    EXPECT_EQ(flat_atomic_chunks_rule(128), 0);
    EXPECT_EQ(flat_atomic_chunks_rule(256), 2);
  }
}

// The split-query d 256 step: on at d 256 where both of a warpgroup's dQ chunks go by atomics
// (its P^T tiles take the staging buffer), never at d 64 / 128 nor with fewer atomic chunks;
// FLASH4_HOPPER_BWD_D256_SPLIT_QUERIES=0 turns it off, other values leave the rule.
TEST(HopperShapes, D256SplitQueriesRuleTakesItWhereEveryDqChunkGoesByAtomics) {
  using flash4::detail::d256_split_queries_rule;
  using testing_support::ScopedEnv;
  {
    ScopedEnv unset("FLASH4_HOPPER_BWD_D256_SPLIT_QUERIES", nullptr);
    EXPECT_TRUE(d256_split_queries_rule(256, 2));
    EXPECT_FALSE(d256_split_queries_rule(256, 1));
    EXPECT_FALSE(d256_split_queries_rule(256, 0));
    EXPECT_FALSE(d256_split_queries_rule(128, 2));
    EXPECT_FALSE(d256_split_queries_rule(64, 1));
  }
  {
    ScopedEnv off("FLASH4_HOPPER_BWD_D256_SPLIT_QUERIES", "0");
    EXPECT_FALSE(d256_split_queries_rule(256, 2));
  }
  {
    ScopedEnv on("FLASH4_HOPPER_BWD_D256_SPLIT_QUERIES", "1");
    EXPECT_TRUE(d256_split_queries_rule(256, 2));
    EXPECT_FALSE(d256_split_queries_rule(256, 1)) << "=1 cannot split without the staging buffer free";
  }
}

// The dense backward's grid order: heads first for causal calls at d 128 / 256 up to
// kHeadsFirstMaxKeys keys only; never for
// varlen or deterministic calls or past 65535 key blocks; FLASH4_HOPPER_BWD_HEADS_FIRST=1 | 0
// forces it either way within those limits.
TEST(HopperShapes, BackwardHeadsFirstRuleTakesItForCausalCallsAtD128And256) {
  using flash4::detail::backward_heads_first_rule;
  using testing_support::ScopedEnv;
  auto shape = [](bool varlen = false, int64_t keys = 4096) {
    ProblemShape s = dims(128, 128);
    s.varlen = varlen;
    s.seqlen_k = keys;
    return s;
  };
  {
    ScopedEnv unset("FLASH4_HOPPER_BWD_HEADS_FIRST", nullptr);
    EXPECT_TRUE(backward_heads_first_rule(128, true, shape(), false));
    EXPECT_TRUE(backward_heads_first_rule(256, true, shape(), false));
    EXPECT_FALSE(backward_heads_first_rule(64, true, shape(), false));
    EXPECT_FALSE(backward_heads_first_rule(128, false, shape(), false));
    EXPECT_FALSE(backward_heads_first_rule(256, false, shape(), false));
    EXPECT_FALSE(backward_heads_first_rule(128, true, shape(true), false));  // varlen
    EXPECT_FALSE(backward_heads_first_rule(128, true, shape(), true));       // deterministic
    EXPECT_FALSE(backward_heads_first_rule(128, true, shape(false, int64_t(65535) * 64), false));
    EXPECT_TRUE(backward_heads_first_rule(256, true, shape(false, flash4::detail::kHeadsFirstMaxKeys), false));
    EXPECT_FALSE(backward_heads_first_rule(256, true, shape(false, flash4::detail::kHeadsFirstMaxKeys + 1), false));
  }
  {
    ScopedEnv on("FLASH4_HOPPER_BWD_HEADS_FIRST", "1");
    EXPECT_TRUE(backward_heads_first_rule(64, false, shape(), false));
    EXPECT_FALSE(backward_heads_first_rule(64, false, shape(true), false));
    EXPECT_FALSE(backward_heads_first_rule(64, false, shape(), true));
  }
  {
    ScopedEnv off("FLASH4_HOPPER_BWD_HEADS_FIRST", "0");
    EXPECT_FALSE(backward_heads_first_rule(256, true, shape(), false));
  }
}

// The backward kernel's head dim: padded_head_dim (64 / 128 / 256, dense or varlen; past 256 or
// not a multiple of 8, none), but d 256 deterministic only from kDeterministicD256MinKeys keys
// per sequence on average; FLASH4_HOPPER_BWD_D256=0 turns d 256 off, =1 on even then.
TEST(HopperShapes, BackwardKernelDimTakesD256ButForShortDeterministicSequences) {
  using flash4::detail::backward_kernel_dim;
  using flash4::detail::kDeterministicD256MinKeys;
  using testing_support::ScopedEnv;
  auto shape = [](int64_t dqk, int64_t dv, bool varlen = false, int64_t batch = 2, int64_t keys = 1024) {
    ProblemShape s = dims(dqk, dv);
    s.varlen = varlen;
    s.batch = batch;
    s.tokens_k = batch * keys;
    return s;
  };
  const int64_t long_keys = kDeterministicD256MinKeys, short_keys = kDeterministicD256MinKeys - 8;
  {
    ScopedEnv unset("FLASH4_HOPPER_BWD_D256", nullptr);
    for (bool det : {false, true}) {
      EXPECT_EQ(backward_kernel_dim(shape(40, 40), det), 64);
      EXPECT_EQ(backward_kernel_dim(shape(96, 64), det), 128);
      EXPECT_EQ(backward_kernel_dim(shape(128, 128, true), det), 128);
      EXPECT_EQ(backward_kernel_dim(shape(264, 264), det), 0);
      EXPECT_EQ(backward_kernel_dim(shape(252, 252), det), 0);  // not a multiple of 8
    }
    EXPECT_EQ(backward_kernel_dim(shape(256, 256), false), 256);
    EXPECT_EQ(backward_kernel_dim(shape(192, 128), false), 256);
    EXPECT_EQ(backward_kernel_dim(shape(136, 136), false), 256);
    EXPECT_EQ(backward_kernel_dim(shape(256, 256, true), false), 256);  // varlen: 64-key work lists
    EXPECT_EQ(backward_kernel_dim(shape(256, 256, false, 2, long_keys), true), 256);
    EXPECT_EQ(backward_kernel_dim(shape(256, 256, false, 2, short_keys), true), 0);
    EXPECT_EQ(backward_kernel_dim(shape(256, 256, true, 3, long_keys), true), 256);  // packed: the mean
    EXPECT_EQ(backward_kernel_dim(shape(256, 256, true, 3, short_keys), true), 0);
  }
  {
    ScopedEnv off("FLASH4_HOPPER_BWD_D256", "0");
    EXPECT_EQ(backward_kernel_dim(shape(256, 256), false), 0);
    EXPECT_EQ(backward_kernel_dim(shape(192, 128, false, 2, long_keys), true), 0);
    EXPECT_EQ(backward_kernel_dim(shape(128, 128), false), 128);
  }
  ScopedEnv on("FLASH4_HOPPER_BWD_D256", "1");
  EXPECT_EQ(backward_kernel_dim(shape(256, 256, false, 2, short_keys), true), 256);
  EXPECT_EQ(backward_kernel_dim(shape(264, 264), true), 0);
}

// A forward call's split-KV runs on a 132-SM H200, as hopper.cpp decides them: MHA decode
// splits (64 tiles, 2 runs), a one-head prefill over 4096 keys splits in runs of >= 8 blocks,
// a 1024-query prefill of 8 heads (8 blocks) does not; packed q keeps runs of >= 2; varlen,
// softcap and FLASH4_HOPPER_SPLIT_KV_UNPACKED=0 never split unpacked q; FLASH4_HOPPER_SPLIT_KV=N
// forces a power of two; no SM count, no rule.
TEST(HopperShapes, ForwardSplitCountFollowsTheRuleAndItsSwitches) {
  using flash4::detail::forward_split_count;
  using testing_support::ScopedEnv;
  const auto h200 = [] { return 132; };
  const auto no_count = [] { return 0; };
  ScopedEnv unpacked("FLASH4_HOPPER_SPLIT_KV_UNPACKED", nullptr), forced("FLASH4_HOPPER_SPLIT_KV", nullptr);
  auto shape = [](int64_t batch, int64_t hq, int64_t hkv, int64_t sq, int64_t sk, bool varlen = false) {
    ProblemShape s = dims(128, 128);
    s.batch = batch, s.heads_q = hq, s.heads_kv = hkv, s.seqlen_q = sq, s.seqlen_k = sk, s.varlen = varlen;
    return s;
  };
  EXPECT_EQ(forward_split_count(shape(8, 8, 8, 1, 8192), false, 1, 128, h200), 2);     // 64 tiles of 64 blocks
  EXPECT_EQ(forward_split_count(shape(1, 1, 1, 4096, 4096), false, 1, 128, h200), 4);  // 32 tiles, 32 blocks
  EXPECT_EQ(forward_split_count(shape(1, 32, 32, 128, 8192), false, 1, 128, h200), 4); // chunked prefill
  EXPECT_EQ(forward_split_count(shape(1, 8, 8, 1024, 1024), false, 1, 128, h200), 1); // 8 blocks: runs of 4
  EXPECT_EQ(forward_split_count(shape(8, 32, 8, 1, 8192), false, 4, 128, h200), 2);    // packed: 64 tiles
  EXPECT_EQ(forward_split_count(shape(1, 8, 8, 1, 640), false, 4, 128, h200), 2);      // packed: runs of >= 2
  EXPECT_EQ(forward_split_count(shape(1, 8, 8, 1, 640), false, 1, 128, h200), 1);      // unpacked: 5 blocks
  EXPECT_EQ(forward_split_count(shape(8, 8, 8, 1, 8192, true), false, 1, 128, h200), 1);  // varlen
  EXPECT_EQ(forward_split_count(shape(8, 8, 8, 1, 8192), true, 1, 128, h200), 1);          // softcap
  EXPECT_EQ(forward_split_count(shape(8, 8, 8, 1, 8192), false, 1, 128, no_count), 1);      // no SM count
  EXPECT_EQ(forward_split_count(shape(8, 8, 8, 1, 8192), false, 1, 256, h200), 2);         // 80-key blocks
  {
    ScopedEnv off("FLASH4_HOPPER_SPLIT_KV_UNPACKED", "0");
    EXPECT_EQ(forward_split_count(shape(8, 8, 8, 1, 8192), false, 1, 128, h200), 1);
    EXPECT_EQ(forward_split_count(shape(8, 32, 8, 1, 8192), false, 4, 128, h200), 2);  // packed q is not "unpacked"
  }
  {
    ScopedEnv n("FLASH4_HOPPER_SPLIT_KV", "6");
    EXPECT_EQ(forward_split_count(shape(1, 8, 8, 1024, 1024), false, 1, 128, h200), 4);
    EXPECT_EQ(forward_split_count(shape(8, 8, 8, 1, 8192, true), false, 1, 128, h200), 1);  // varlen still not
  }
}

}  // namespace
