#!/usr/bin/env bash
# Device check of the d = 64 Hopper backward at BM = 128 (FA3's 128 x 128 tile; backward_sm90.cuh,
# BackwardSm90Config<64, 128>; passed on an H200 on 2026-12-01 and the default at d = 64 since,
# but for varlen without determinism and softcap), in one call on an H100 / H200 from the
# repository root (carry .device-carry/):
#   1. build   flash4 for sm_90a, the flash4-only GPU tests and flash4-bench; registers / stack
#              of the backward kernels (the BM = 128 ones must not spill);
#   2. smoke   the layout tests (Flash4HopperBackwardLayouts.*, BM = 128's products in
#              isolation), then WideM case 0 with FLASH4_LOG=1 (the log must say "128-query
#              blocks"); a failure or hang: memcheck, stop;
#   3. test    WideM/Flash4HopperBackwardWideM.* and WideM/Flash4HopperDeterministicBackwardWideM.*
#              (every d <= 64 covered / window / varlen / sink / padded / deterministic case
#              against float64, deterministic runs bit-identical), then the existing backward
#              suites as a regression (the kernel's config became a template of BM);
#   4. bench   flash4-bench --d 64 and --varlen (adept's batch), FLASH4_HOPPER_BWD_BM=64 vs
#              FLASH4_HOPPER_BWD_BM=128, alternately, one process each: bwd and bwd-det TFLOP/s
#              and their ratio ($OUT/bench_table.md);
#   5. check   compute-sanitizer memcheck and racecheck of two small WideM cases.
# Every stage's timeout is cut to the time left of BUDGET seconds (default 420). Everything goes
# to $OUT (default ./hopper-bwd-wide-out).
#
#   bash scripts/hopper_bwd_wide_check.sh
set -uo pipefail
# shellcheck source=scripts/lib/hopper_check_lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/hopper_check_lib.sh"

check_start hopper-bwd-wide-out 420 "$@"

# ---- 1. build -----------------------------------------------------------------------------
build_flash4
build_tests_and_bench
note "backward_sm90_hdim64 registers: $(registers backward_sm90_hdim64)"

# ---- 2. smoke -----------------------------------------------------------------------------
# The five wgmma products of one step in isolation, BM = 128 included (Hdim64Block128*): if
# the whole kernel fails, these say whether a layout is why.
run_suite layouts 'Flash4HopperBackwardLayouts.*' 60
grep "^\[ layout \]" "$OUT/tests_layouts.txt" | grep "BM=128" | tee -a "$LOG"
say "smoke: WideM case 0 (FLASH4_LOG=1)"
smoke_or_stop 'WideM/Flash4HopperBackwardWideM.*/0_*' 60 120 "the one dQ staging buffer's free / staged barriers" \
  "128-query blocks"
smoke_says "128-query blocks" "the wide kernel never ran"

# ---- 3. tests -----------------------------------------------------------------------------
run_suite wide 'WideM/*' 150
note "wide worst vs float64: bf16 dq $(worst_error wide dq bf16) dk $(worst_error wide dk bf16) dv $(worst_error wide dv bf16); fp16 dq $(worst_error wide dq fp16)"
limit=$(($(time_left) - 120))
run_suite existing 'Covered/Flash4HopperBackward*:Varlen/Flash4HopperVarlenBackward*:Deterministic/*' \
  $((limit > 30 ? limit : 30))

# ---- 4. bench -----------------------------------------------------------------------------
say "bench: d 64, FLASH4_HOPPER_BWD_BM=64 vs 128"
bwd_bench_rows 64 FLASH4_HOPPER_BWD_BM=64 >"$OUT/bench_default.txt"
bwd_bench_rows 64 FLASH4_HOPPER_BWD_BM=128 >"$OUT/bench_wide.txt"
{ echo "| S | causal | bwd BM 64 | bwd BM 128 | ratio | bwd-det BM 64 | bwd-det BM 128 | ratio |"
  echo "|---|---|---|---|---|---|---|---|"
  paste -d' ' "$OUT/bench_default.txt" "$OUT/bench_wide.txt" |
    awk '{printf "| %s | %s | %s | %s | %.3f | %s | %s | %.3f |\n", $1, $2, $3, $7, $7 / $3, $4, $8, ($4 > 0 ? $8 / $4 : 0)}'
} >"$OUT/bench_table.md"
note "d 64 geomean BM 128 / BM 64: $(paste -d' ' "$OUT/bench_default.txt" "$OUT/bench_wide.txt" |
  awk '{b += log($7 / $3); if ($4 > 0) {x += log($8 / $4); m++} n++} END {printf "bwd %.3f bwd-det %.3f (%d rows)", exp(b / n), (m ? exp(x / m) : 0), n}')"
for bm in 64 128; do
  line=$(FLASH4_HOPPER_BWD_BM=$bm timeout "$(budget 30)" "$B/bin/flash4-bench" --varlen --repeats 20 2>>"$LOG" | grep "^varlen |")
  note "varlen BM $bm: $line"
done

# ---- 5. sanitizers ------------------------------------------------------------------------
SMALL='WideM/Flash4HopperBackwardWideM.*/0_*:WideM/Flash4HopperDeterministicBackwardWideM.*/0_*'
sanitize_stage memcheck "$SMALL" 60
sanitize_stage racecheck "$SMALL" 60

finish
