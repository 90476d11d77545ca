// The host-side shape rules of the Hopper kernels, which decide what runs where before any
// kernel does (so they are checked here, on the CPU, against brute force): the kernel head dim
// a pair (d_qk, d_v) is zero-padded to, and the rows of a paged K / V tensor-map box.
#include <gtest/gtest.h>

#include <numeric>

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

}  // namespace
