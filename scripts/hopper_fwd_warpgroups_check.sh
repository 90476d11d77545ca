#!/usr/bin/env bash
# Device check of the Hopper (sm90a) forward at d = 64 with three consumer warpgroups
# (192-row tiles, FlashAttention-3's d = 64 shape, 160 registers a consumer thread; the default
# but for short causal problems, FLASH4_HOPPER_FWD_WARPGROUPS=2|3 forces it; not with softcap,
# which keeps two), in one call on an H100 /
# H200 from the repository root (carry .device-carry/ for the build dependencies):
#   1. build   flash4 for sm_90a only, the flash4-only GPU tests and flash4-bench with nvcc;
#              ptxas -v of forward_sm90_hdim64 (the 3-warpgroup kernels: 128 launch registers,
#              0 spills expected);
#   2. smoke   two cases of the new suite with FLASH4_LOG=1 under a timeout: the log must say
#              "three consumer warpgroups"; a hang (an mbarrier count or the varlen zeroing's
#              barrier): memcheck of them and stop;
#   3. test    D64/Flash4HopperThreeWarpgroups.* and ...TwoWarpgroups.* (every d = 64 case of the covered, varlen,
#              window, sink and softcap suites, against float64), then the existing forward
#              suites without the switch (nothing changed for two warpgroups);
#   4. bench   flash4-bench forward at d = 64 (bf16, 16k tokens, hidden 2048, S 512 .. 16k,
#              causal 0 / 1), two vs three warpgroups in separate processes, and the ratio;
#   5. check   compute-sanitizer racecheck and memcheck of a small varlen case.
# Its first run (H200, 2026-12-01) made three the default (forward_warpgroups in
# src/hopper/hopper.cpp) where they won. Every stage's timeout is cut to the time left
# of BUDGET seconds (default 300). Everything goes to $OUT (default ./hopper-fwd-wg-out).
#
#   bash scripts/hopper_fwd_warpgroups_check.sh [--no-bench]
set -uo pipefail
# shellcheck source=scripts/lib/hopper_check_lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/hopper_check_lib.sh"

check_start hopper-fwd-wg-out 300 "$@"
unset FLASH4_HOPPER_FWD_WARPGROUPS  # the default (three but for short causal) unless a stage asks

# ---- 1. build -------------------------------------------------------------------------
build_flash4
build_tests_and_bench
note "forward_sm90_hdim64 registers: $(registers forward_sm90_hdim64)"

# ---- 2. smoke -------------------------------------------------------------------------
SMOKE='D64/Flash4HopperThreeWarpgroups.*/0_*:D64/Flash4HopperThreeWarpgroups.*/27_*'
say "smoke: three consumer warpgroups, dense case 0 and varlen case 27 (FLASH4_LOG=1)"
smoke_or_stop "$SMOKE" 60 120 "an mbarrier count (12 consumer warps) or barrier 3's thread count" "warpgroups"
smoke_says "three consumer warpgroups" "the switch did not reach the launch"

# ---- 3. tests -------------------------------------------------------------------------
run_suite wg3 'D64/Flash4HopperThreeWarpgroups.*:D64/Flash4HopperTwoWarpgroups.*' 120
note "three-warpgroup worst vs float64: bf16 out $(worst_error wg3 out bf16) lse $(worst_error wg3 lse bf16); fp16 out $(worst_error wg3 out fp16) lse $(worst_error wg3 lse fp16)"
reserve=$((BENCH == 1 ? 70 : 0))
limit=$(($(time_left) - reserve - 30))
run_suite existing 'Covered/Flash4Hopper.*:Varlen/Flash4Hopper.*:Window/Flash4Hopper.*' $((limit > 30 ? limit : 30))

# ---- 4. bench -------------------------------------------------------------------------
if [ "$BENCH" -eq 1 ]; then
  say "flash4-bench forward d 64: two vs three consumer warpgroups"
  FLASH4_HOPPER_FWD_WARPGROUPS=2 FLASH4_LOG=1 timeout "$(budget 40)" "$B/bin/flash4-bench" --d 64 --repeats 10 \
    --deterministic 0 >"$OUT/bench_wg2.txt" 2>"$OUT/bench_wg2_log.txt"
  FLASH4_HOPPER_FWD_WARPGROUPS=3 FLASH4_LOG=1 timeout "$(budget 40)" "$B/bin/flash4-bench" --d 64 --repeats 10 \
    --deterministic 0 >"$OUT/bench_wg3.txt" 2>"$OUT/bench_wg3_log.txt"
  # Rows "d S B H causal | fwd_ms fwd_TF | ...": fwd TF/s is field 8 (as hopper_sched_check.sh).
  awk 'NR == FNR {if ($1 ~ /^[0-9]+$/ && $6 == "|") tf[$2 " " $5] = $8; next}
       $1 ~ /^[0-9]+$/ && $6 == "|" {w3 = $8; w2 = tf[$2 " " $5]
         printf "| %s | %s | %s | %s | %s |\n", $2, $5, w2, w3, (w2 > 0 ? sprintf("%.3f", w3 / w2) : "-")}' \
    "$OUT/bench_wg2.txt" "$OUT/bench_wg3.txt" >"$OUT/bench_rows.md"
  { echo "| S | causal | fwd TF/s 2 warpgroups | fwd TF/s 3 warpgroups | 3 / 2 |"; echo "|---|---|---|---|---|"
    cat "$OUT/bench_rows.md"; } >"$OUT/bench_table.md"
  cat "$OUT/bench_table.md" >>"$LOG"
  note "bench: 'three consumer warpgroups' calls: 2-warpgroup runs $(grep -c 'three consumer' "$OUT/bench_wg2_log.txt")" \
    "(expect 0), 3-warpgroup runs $(grep -c 'three consumer' "$OUT/bench_wg3_log.txt")"
  note "geometric mean 3 / 2 warpgroups: $(awk -F'|' '$6 + 0 > 0 {s += log($6); n++} END {if (n) printf "%.3f over %d rows", exp(s / n), n; else print "-"}' "$OUT/bench_rows.md")"
fi

# ---- 5. sanitizers ----------------------------------------------------------------------------
SMALL='D64/Flash4HopperThreeWarpgroups.*/26_*'  # small varlen batch
export FLASH4_HOPPER_FWD_WARPGROUPS=3
sanitize_stage racecheck "$SMALL" 60
sanitize_stage memcheck "$SMALL" 60

finish
