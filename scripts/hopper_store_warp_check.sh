#!/usr/bin/env bash
# Device check of the Hopper forward's store warp (FLASH4_HOPPER_O_STORE_WARP=1, opt-in,
# written without a GPU; forward_sm90.cuh, kStoreWarpO): with the TMA store of O, warp 1 of
# the producer warpgroup issues each tile's stores and waits for their reads, so the
# consumers only write their rows into the Q buffer, arrive on o_full and go on (their wait
# for the read and two barriers per tile gone: the short-S rows' per-tile cost), in one call
# on an H100 / H200 from the repository root (carry .device-carry/):
#   1. build   flash4 for sm_90a, the flash4-only GPU tests and flash4-bench; registers / stack
#              of the forward kernels (the consumers spill-free; ptxas reports 4 bytes in the
#              producer warpgroup of the dense kernels since the store warp's branch);
#   2. smoke   StoreWarp case 0 with FLASH4_LOG=1 (the log must say "from a producer warp");
#              a failure or hang (o_full / q_empty never completing, the end mark): memcheck,
#              stop;
#   3. test    StoreWarp/* (every dense case up to d 128 of the covered, window, sink, softcap
#              and padded suites against float64, with the dynamic and the static schedule),
#              then the default forward suites (Covered / Window / Padded / RegisterStore /
#              Unsplit: the store block and the barriers changed);
#   4. bench   flash4-bench forward at d 64 and d 128 (bf16, 16k tokens, S 512 .. 16k, causal
#              0 / 1), FLASH4_HOPPER_O_STORE_WARP=0 and =1 in alternate processes, twice, the
#              better of each side and their ratio ($OUT/bench_table.md);
#   5. check   compute-sanitizer memcheck and racecheck of two small StoreWarp cases.
# Every stage's timeout is cut to the time left of BUDGET seconds (default 450). Everything goes
# to $OUT (default ./hopper-store-warp-out).
#
#   bash scripts/hopper_store_warp_check.sh [--no-bench]
set -uo pipefail
# shellcheck source=scripts/lib/hopper_check_lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/hopper_check_lib.sh"

check_start hopper-store-warp-out 450 "$@"

# ---- 1. build -----------------------------------------------------------------------------
build_flash4
build_tests_and_bench
for obj in forward_sm90_hdim64 forward_sm90_hdim128; do
  note "$obj registers: $(registers $obj)"
done

# ---- 2. smoke -----------------------------------------------------------------------------
say "smoke: StoreWarp case 0 (FLASH4_LOG=1)"
smoke_or_stop 'StoreWarp/Flash4HopperStoreWarpO.*/0_*' 60 120 \
  "o_full or q_empty never completing (an arrival count, the end mark)" "producer warp"
smoke_says "from a producer warp" "the switch did not reach the kernel"

# ---- 3. tests -----------------------------------------------------------------------------
run_suite storewarp 'StoreWarp/*' 150
note "store warp worst vs float64: bf16 out $(worst_error storewarp out bf16) lse $(worst_error storewarp lse bf16); fp16 out $(worst_error storewarp out fp16)"
limit=$(($(time_left) - 150))
run_suite existing 'Covered/Flash4Hopper.*:Window/Flash4Hopper.*:Padded/Flash4Hopper.*:RegisterStore/*:Covered/Flash4HopperUnsplit.*' \
  $((limit > 30 ? limit : 30))

# ---- 4. bench -----------------------------------------------------------------------------
# fwd_rows STORE_WARP D: flash4-bench's forward rows "S causal TF" at head dim D.
fwd_rows() {
  FLASH4_HOPPER_O_STORE_WARP=$1 timeout "$(budget 40)" "$B/bin/flash4-bench" --d "$2" --repeats 10 --deterministic 0 \
    2>>"$LOG" | awk '$1 ~ /^[0-9]+$/ && $6 == "|" {print $2, $5, $8}'
}
# best_of A B: row by row, "S causal max(TF_A, TF_B)".
best_of() { paste -d' ' "$1" "$2" | awk '{print $1, $2, ($3 > $6 ? $3 : $6)}'; }
if [ "$BENCH" = 1 ]; then
  say "bench: forward, FLASH4_HOPPER_O_STORE_WARP=0 vs 1, two rounds"
  { echo "| d | S | causal | fwd TF/s consumers store | store warp | store warp / consumers |"
    echo "|---|---|---|---|---|---|"; } >"$OUT/bench_table.md"
  for d in 64 128; do
    for round in 1 2; do
      fwd_rows 0 $d >"$OUT/b_d${d}_now$round.txt"
      fwd_rows 1 $d >"$OUT/b_d${d}_warp$round.txt"
    done
    best_of "$OUT/b_d${d}_now1.txt" "$OUT/b_d${d}_now2.txt" >"$OUT/b_d${d}_now.txt"
    best_of "$OUT/b_d${d}_warp1.txt" "$OUT/b_d${d}_warp2.txt" >"$OUT/b_d${d}_warp.txt"
    paste -d' ' "$OUT/b_d${d}_now.txt" "$OUT/b_d${d}_warp.txt" |
      awk -v d=$d '{printf "| %s | %s | %s | %s | %s | %.3f |\n", d, $1, $2, $3, $6, ($3 > 0 ? $6 / $3 : 0)}' \
      >>"$OUT/bench_table.md"
  done
  note "geomean store warp / consumers: $(awk -F'|' 'NR > 2 && $7 + 0 > 0 {s += log($7); n++} END {if (n) printf "%.3f (%d rows)", exp(s / n), n}' "$OUT/bench_table.md")"
fi

# ---- 5. sanitizers ------------------------------------------------------------------------
SMALL='StoreWarp/Flash4HopperStoreWarpO.*/0_*:StoreWarp/Flash4HopperStoreWarpO.*/5_*'
sanitize_stage memcheck "$SMALL" 60
sanitize_stage racecheck "$SMALL" 60

finish
