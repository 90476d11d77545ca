// The integer side of the Hopper backward's per-element mask (src/hopper/mask_bounds.hpp),
// which the kernel calls as it is: each key row's visible queries, and the element test with
// the bounds moved to the column's side. Checked on the CPU against the definition of
// visibility, query by query (the GPU suites check the kernel's gradients end to end).
#include <gtest/gtest.h>

#include <climits>
#include <cstdint>
#include <random>

#include "common/random.hpp"
#include "hopper/mask_bounds.hpp"

namespace {

using flash4::hopper::column_outside;
using flash4::hopper::queries_seeing_key;
using flash4::hopper::VisibleQueries;

struct Reach {
  bool has_right = false, has_left = false;
  int64_t right = 0, left = 0;
};

// Query i (of sq) sees key j (of sk), bottom-right aligned: i sits at key i + sk - sq and sees
// keys up to `right` past that and down to `left` before it, on the bounded sides.
bool sees(int64_t i, int64_t j, int64_t sq, int64_t sk, const Reach& r) {
  if (i < 0 || i >= sq || j < 0 || j >= sk) return false;
  const int64_t diagonal = i + sk - sq;
  if (r.has_right && j > diagonal + r.right) return false;
  if (r.has_left && j < diagonal - r.left) return false;
  return true;
}

Reach random_reach(std::mt19937_64& rng) {
  Reach r;
  std::uniform_int_distribution<int> coin(0, 1), side(0, 40), huge(0, 5);
  r.has_right = coin(rng) != 0;
  r.has_left = coin(rng) != 0;
  // A side is sometimes as wide as the API allows (INT_MAX): the 64-bit arithmetic's case.
  r.right = r.has_right ? (huge(rng) == 0 ? INT_MAX : side(rng)) : 0;
  r.left = r.has_left ? (huge(rng) == 0 ? INT_MAX : side(rng)) : 0;
  return r;
}

// For random lengths and windows, every key row (past sk too: a key block may run past the
// keys) gets [begin, end) inside [0, sq] holding exactly the queries that see it.
TEST(HopperMaskBounds, QueriesSeeingKeyAreExactlyTheQueriesThatSeeIt) {
  auto rng = testing_support::make_rng(1);
  std::uniform_int_distribution<int> length(1, 200);
  int rows = 0;
  for (int trial = 0; trial < 400; ++trial) {
    const int sq = length(rng), sk = length(rng);
    const Reach r = random_reach(rng);
    for (int j = 0; j < sk + 70; ++j) {
      const VisibleQueries v = queries_seeing_key(j, sq, sk, r.has_right, r.right, r.has_left, r.left);
      ASSERT_LE(0, v.begin);
      ASSERT_LE(v.begin, sq);
      ASSERT_LE(0, v.end);
      ASSERT_LE(v.end, sq);
      for (int i = 0; i < sq + 70; ++i)
        ASSERT_EQ(i >= v.begin && i < v.end, sees(i, j, sq, sk, r))
            << "sq " << sq << " sk " << sk << " right " << (r.has_right ? r.right : -1) << " left "
            << (r.has_left ? r.left : -1) << " key " << j << " query " << i;
      ++rows;
    }
  }
  EXPECT_GT(rows, 400);
}

// The element test as the kernel forms it (lo / hi once per step, the column a constant):
// for every step start q0, lane column 2t and column c of a 64-query step, it masks exactly
// the queries outside the row's range.
TEST(HopperMaskBounds, ColumnOutsideMasksExactlyTheQueriesOutsideTheRange) {
  auto rng = testing_support::make_rng(2);
  std::uniform_int_distribution<int> length(1, 300);
  for (int trial = 0; trial < 200; ++trial) {
    const int sq = length(rng), sk = length(rng);
    const Reach r = random_reach(rng);
    std::uniform_int_distribution<int> key(0, sk + 63);
    const int j = key(rng);
    const VisibleQueries v = queries_seeing_key(j, sq, sk, r.has_right, r.right, r.has_left, r.left);
    for (int q0 = 0; q0 < sq + 64; q0 += 16)
      for (int t = 0; t < 4; ++t) {
        const int lo = v.begin - q0 - 2 * t, hi = v.end - q0 - 2 * t;
        for (int i = 0; i < 8; ++i)
          for (int b = 0; b < 2; ++b) {
            const int c = 8 * i + b, query = q0 + 2 * t + c;
            ASSERT_EQ(column_outside(c, lo, hi), !sees(query, j, sq, sk, r))
                << "sq " << sq << " sk " << sk << " key " << j << " q0 " << q0 << " t " << t << " c " << c;
          }
      }
  }
}

// Lengths and windows near the int range: the range stays exact and inside [0, sq] where
// 32-bit arithmetic would overflow (j - shift - right with right = INT_MAX).
TEST(HopperMaskBounds, HugeWindowsAndLengthsDoNotOverflow) {
  const int sq = INT_MAX - 7, sk = 5;
  for (int j = 0; j < 8; ++j) {
    const VisibleQueries both = queries_seeing_key(j, sq, sk, true, INT_MAX, true, INT_MAX);
    EXPECT_EQ(both.begin, 0);
    EXPECT_EQ(both.end, j < sk ? sq : 0) << "key " << j;
    // Causal (right 0): key j is seen from its diagonal query j + sq - sk on.
    const VisibleQueries causal = queries_seeing_key(j, sq, sk, true, 0, false, 0);
    EXPECT_EQ(causal.begin, j < sk ? int64_t(j) + sq - sk : int64_t(sq)) << "key " << j;
    if (j < sk) EXPECT_EQ(causal.end, sq);
  }
  // Four queries at the end of INT_MAX - 1 keys, causal: every query sees the first key, only
  // the last query the last key.
  const int many = INT_MAX - 1;
  const VisibleQueries first = queries_seeing_key(0, 4, many, true, 0, false, 0);
  EXPECT_EQ(first.begin, 0);
  EXPECT_EQ(first.end, 4);
  const VisibleQueries last = queries_seeing_key(many - 1, 4, many, true, 0, false, 0);
  EXPECT_EQ(last.begin, 3);
  EXPECT_EQ(last.end, 4);
}

}  // namespace
