#!/usr/bin/env bash
# Device check of the Hopper (sm90a) d 256 backward with dQ in the flat layout
# (written without a GPU in the ninth session, the default since this check passed on an H200
# the same day; FLASH4_HOPPER_DQ=atomics keeps the float2 atomics): the two consumer
# warpgroups fill one 16 KB staging buffer in turn (per step (0, part 0), (1, 2), (0, 1), (1, 3))
# and the dQ writer adds each 64 x 64 part with one 1-D bulk reduce-add, where dQ had been
# added by float2 atomics (ncu, H200, d 256 S 4k: 403 M L2 reduction sectors against cuDNN's 201 M,
# 45% of the warps' stalls on the atomics' registers). Also the first full run of every Hopper
# suite with the flat layout as the d 64 / 128 default. One call on an H100 / H200 from the
# repository root (carry .device-carry/, or only its deps.tar.xz):
#   1. build   flash4 for sm_90a, the flash4-only GPU tests and flash4-bench; registers / stack
#              of the d 256 kernels (expect 168 / 0);
#   2. smoke   case 0 of the D256 flat suite under a short timeout (a hang: the hand-over's
#              barriers); memcheck and stop if it fails;
#   3. test    every *Hopper* suite (the new D256 flat suite among them) in SHARDS gtest shards
#              (default 6), worst errors against float64;
#   4. bench   flash4-bench --d 256, FLASH4_HOPPER_DQ=atomics against =flat,
#              into bench_table.md; bench/peers.py --dims 256 with flat (peers_d256_flat.txt);
#   5. check   compute-sanitizer racecheck and memcheck of two small d 256 flat cases.
# Every stage's timeout is cut to the time left of BUDGET seconds (default 560). Outputs go to
# $OUT (default ./hopper-d256-flat-out), packed into results.tar.gz beside bench_table.md.
#
#   [SHARDS=6] bash scripts/hopper_d256_flat_check.sh [--no-bench]
set -uo pipefail
# shellcheck source=scripts/lib/hopper_check_lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/hopper_check_lib.sh"

check_start hopper-d256-flat-out 560 "$@"
SHARDS=${SHARDS:-6}

# ---- 1. build -------------------------------------------------------------------------
build_flash4
build_tests_and_bench
note "backward_sm90_hdim256 registers: $(registers backward_sm90_hdim256)"

# ---- 2. smoke -------------------------------------------------------------------------
SMOKE='D256/Flash4HopperBackwardD256FlatDq.*/0_*:D256/Flash4HopperBackwardD256FlatDq.*/1_*'
say "smoke: d 256 flat dQ, cases 0 and 1"
smoke_or_stop "$SMOKE" 60 120 "the hand-over's staged / free barriers (one buffer in turn)" "d 256"
smoke_says "one buffer in turn" "the d 256 flat path did not run"

# ---- 3. tests -------------------------------------------------------------------------
run_suite hopper '*Hopper*' 270
note "D256 flat worst vs float64: bf16 dq $(worst_error hopper dq 'd256.*FLASH4_HOPPER_DQ=flat') (all bf16 dq $(worst_error hopper dq bf16))"

# ---- 4. bench -------------------------------------------------------------------------
if [ "$BENCH" = 1 ]; then
  rm -f "$OUT/bench_table.md"
  say "bench d 256: float2 atomics (FLASH4_HOPPER_DQ=atomics) vs the flat layout"
  bwd_ab_rows 256 FLASH4_HOPPER_DQ=atomics FLASH4_HOPPER_DQ=flat atomics flat
  note "geomean flat / atomics: $(bwd_ab_geomean)"
  say "peers d 256 with FLASH4_HOPPER_DQ=flat"
  peers_with peers_d256_flat.txt 60 -- --dims 256
fi

# ---- 5. sanitizers --------------------------------------------------------------------
SMALL='D256/Flash4HopperBackwardD256FlatDq.*/0_*:D256/Flash4HopperBackwardD256FlatDq.*/1_*'
sanitize_stage racecheck "$SMALL" 60
sanitize_stage memcheck "$SMALL" 60

[ -f "$OUT/peers_d256_flat.txt" ] && tail -16 "$OUT/peers_d256_flat.txt"
pack_results
finish
