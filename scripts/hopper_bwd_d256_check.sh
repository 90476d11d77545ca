#!/usr/bin/env bash
# Device check of the Hopper backward at d 256 (FLASH4_HOPPER_BWD_D256=1, opt-in, written
# without a GPU; backward_sm90.cuh's kSplitHeadDim, docs/hopper_backward_d256.md: 64-key CTAs,
# both consumer warpgroups on the same keys with half the head dim of dK / dV / dQ each, S^T and
# dP^T duplicated, dQ by float2 atomics), in one call on an H100 / H200 from the repository root
# (carry .device-carry/):
#   1. build   flash4 for sm_90a, the flash4-only GPU tests and flash4-bench; registers / stack
#              of the d 256 kernels (ptxas here: 168 registers, 0 spills);
#   2. smoke   the layout tests (the d 256 products in isolation against float64, beside the
#              d 64 / 128 ones), then D256 case 0 with FLASH4_LOG=1 (the log must say "d 256");
#              a failure or hang: memcheck, stop;
#   3. test    D256/* (every d 128 case of the covered, window, varlen, sink, softcap, seqused
#              suites at d 256, padded head dims), the deterministic D256 suite (float64 and
#              three runs bit for bit), the dispatch tests, then the d 64 / 128 backward suites
#              as time allows (the step code they share was reorganised);
#   4. bench   flash4-bench --d 256, FLASH4_HOPPER_BWD_D256=0 (the portable backward) vs 1:
#              bwd and bwd-det TFLOP/s and their ratios ($OUT/bench_table.md); bench/peers.py
#              --dims 256 with the kernel on, beside cuDNN and FA2 ($OUT/peers_d256.md);
#   5. check   compute-sanitizer memcheck and racecheck of two small D256 cases.
# Every stage's timeout is cut to the time left of BUDGET seconds (default 540). Everything goes
# to $OUT (default ./hopper-bwd-d256-out).
#
#   bash scripts/hopper_bwd_d256_check.sh [--no-bench]
set -uo pipefail
# shellcheck source=scripts/lib/hopper_check_lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/hopper_check_lib.sh"

check_start hopper-bwd-d256-out 540 "$@"

# ---- 1. build -----------------------------------------------------------------------------
build_flash4
build_tests_and_bench
note "backward_sm90_hdim256 registers: $(registers backward_sm90_hdim256)"

# ---- 2. layouts and smoke ----------------------------------------------------------------
# The five products of one step in isolation first (a layout error names its product).
run_suite layouts 'Flash4HopperBackwardLayouts.*' 60
say "smoke: D256 case 0 (FLASH4_LOG=1)"
smoke_or_stop 'D256/Flash4HopperBackwardD256.*/0_*' 60 120 \
  "the barrier 1 hand-over of dS^T or a wait_group count of the split step" "d 256"
smoke_says "d 256" "the switch did not reach the kernel"

# ---- 3. tests -----------------------------------------------------------------------------
run_suite d256 'D256/Flash4HopperBackwardD256.*:Flash4HopperBackwardD256Dispatch.*' 200
note "d256 worst vs float64: bf16 dq $(worst_error d256 dq bf16) dk $(worst_error d256 dk bf16) dv $(worst_error d256 dv bf16); fp16 dq $(worst_error d256 dq fp16)"
run_suite d256det 'D256/Flash4HopperDeterministicBackwardD256.*' 120
run_suite dispatch 'Flash4HopperBackwardDispatch.*' 40
# The d 64 / 128 kernels share the step code (its fences moved into two lambdas both use).
limit=$(($(time_left) - 110))
run_suite existing 'Covered/Flash4HopperBackward*:Deterministic/Flash4HopperDeterministicBackwardBulkDq*:WideM/*' \
  $((limit > 30 ? limit : 30))

# ---- 4. bench -----------------------------------------------------------------------------
if [ "$BENCH" = 1 ]; then
  say "bench: FLASH4_HOPPER_BWD_D256=0 (portable) vs 1"
  rm -f "$OUT/bench_table.md"
  bwd_ab_rows 256 FLASH4_HOPPER_BWD_D256=0 FLASH4_HOPPER_BWD_D256=1 portable hopper
  note "geomean hopper / portable: $(bwd_ab_geomean)"
  # The peers at d 256 with the kernel on (cuDNN and FA2 through SDPA, one process): the ratio
  # the issue's goal names.
  if shared_lib "$B" "$B/libflash4.so"; then
    FLASH4_HOPPER_BWD_D256=1 timeout "$(budget 60)" python3 bench/peers.py --ctypes --lib "$B/libflash4.so" --dims 256 \
      --no-fa4 --repeats 10 --markdown "$OUT/peers_d256.md" >"$OUT/peers_d256.txt" 2>&1
    note "peers d 256 (FLASH4_HOPPER_BWD_D256=1), rc $?: $(awk -F'|' '$2 + 0 == 256 {split($9, c, "/"); s += log(c[2]); n++}
      END {if (n) printf "flash4 / cuDNN bwd geomean %.2f over %d rows", exp(s / n), n}' "$OUT/peers_d256.md" 2>/dev/null)"
  fi
fi

# ---- 5. sanitizers ------------------------------------------------------------------------
SMALL='D256/Flash4HopperBackwardD256.*/0_*:D256/Flash4HopperDeterministicBackwardD256.RunsOn*/0_*'
sanitize_stage memcheck "$SMALL" 60
sanitize_stage racecheck "$SMALL" 90

finish
