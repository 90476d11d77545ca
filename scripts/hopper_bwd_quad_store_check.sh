#!/usr/bin/env bash
# Device check of the Hopper backward's quad stores of dK / dV (FLASH4_HOPPER_BWD_QUAD_STORE=1,
# opt-in, written without a GPU; backward_sm90.cuh's epilogue: a 4 x 4 transpose within each
# quad so that a lane stores 16 bytes and a quad 64, as the forward's O, instead of 4 bytes a
# lane, half of each 32-byte sector, which ncu counted as excess), in one call on an H100 /
# H200 from the repository root (carry .device-carry/):
#   1. build   flash4 for sm_90a, the flash4-only GPU tests and flash4-bench; registers / stack
#              of the backward kernels (0 spills expected);
#   2. smoke   QuadStore case 0 with FLASH4_LOG=1 (the log must say "quad stores"); a
#              failure: memcheck, stop;
#   3. test    QuadStore/* (covered, window, varlen, padded and sink cases against float64, at
#              BM = 64 and, d <= 64, at BM = 128), then the default backward suites;
#   4. bench   flash4-bench --d 64 / 128 and --varlen, FLASH4_HOPPER_BWD_QUAD_STORE=0 vs 1 in
#              alternate processes: bwd and bwd-det TFLOP/s and their ratios ($OUT/bench_table.md);
#   5. check   compute-sanitizer memcheck of two small QuadStore cases.
# Every stage's timeout is cut to the time left of BUDGET seconds (default 420). Everything goes
# to $OUT (default ./hopper-bwd-quad-out).
#
#   bash scripts/hopper_bwd_quad_store_check.sh [--no-bench]
set -uo pipefail
# shellcheck source=scripts/lib/hopper_check_lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/hopper_check_lib.sh"

check_start hopper-bwd-quad-out 420 "$@"

# ---- 1. build -----------------------------------------------------------------------------
build_flash4
build_tests_and_bench
for obj in backward_sm90_hdim64 backward_sm90_hdim128; do
  note "$obj registers: $(registers $obj)"
done

# ---- 2. smoke -----------------------------------------------------------------------------
say "smoke: QuadStore case 0 (FLASH4_LOG=1)"
smoke_or_stop 'QuadStore/Flash4HopperBackwardQuadStore.*/0_*' 60 120 "a shuffle or row mapping of the epilogue" \
  "quad stores"
smoke_says "quad stores" "the switch did not reach the kernel"

# ---- 3. tests -----------------------------------------------------------------------------
run_suite quad 'QuadStore/*' 150
note "quad worst vs float64: bf16 dk $(worst_error quad dk bf16) dv $(worst_error quad dv bf16); fp16 dk $(worst_error quad dk fp16)"
limit=$(($(time_left) - 120))
run_suite existing 'Covered/Flash4HopperBackward*:Varlen/Flash4HopperVarlenBackward*:Deterministic/*:WideM/*' \
  $((limit > 30 ? limit : 30))

# ---- 4. bench -----------------------------------------------------------------------------
if [ "$BENCH" = 1 ]; then
  say "bench: FLASH4_HOPPER_BWD_QUAD_STORE=0 vs 1"
  rm -f "$OUT/bench_table.md"
  for d in 64 128; do
    bwd_ab_rows $d FLASH4_HOPPER_BWD_QUAD_STORE=0 FLASH4_HOPPER_BWD_QUAD_STORE=1 4-byte quad
  done
  note "geomean quad / 4-byte: $(bwd_ab_geomean)"
  for quad in 0 1; do
    line=$(FLASH4_HOPPER_BWD_QUAD_STORE=$quad timeout "$(budget 30)" "$B/bin/flash4-bench" --varlen --repeats 20 2>>"$LOG" |
      grep "^varlen |")
    note "varlen quad $quad: $line"
  done
fi

# ---- 5. sanitizers ------------------------------------------------------------------------
sanitize_stage memcheck 'QuadStore/Flash4HopperBackwardQuadStore.*/0_*:QuadStore/Flash4HopperBackwardQuadStore.*/40_*' 60

finish
