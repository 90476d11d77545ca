#!/usr/bin/env bash
# Device check of the Hopper forward's deferred O-store read wait (FLASH4_HOPPER_DEFER_O_READ=1,
# opt-in, written without a GPU; forward_sm90.cuh, kDeferOReadWait: with the TMA store of O,
# a consumer warpgroup's storing thread waits for the store to read its Q buffer only once the
# next tile's first S = Q K^T is issued, instead of the whole warpgroup waiting at the tile's
# end; two warpgroups only), in one call on an H100 / H200 from the repository root (carry
# .device-carry/):
#   1. build   flash4 for sm_90a, the flash4-only GPU tests and flash4-bench; registers / stack
#              of the forward kernels (the dense ones: 0 spills);
#   2. smoke   DeferORead case 0 with FLASH4_LOG=1 (the log must say "its read waited for in
#              the next tile"); a failure or hang (q_empty never completed: the deferred
#              arrival missing): memcheck, stop;
#   3. test    DeferORead/* (every dense case up to d 128 of the covered, window, sink, softcap
#              and padded suites against float64), then the default forward suites
#              (Covered / Window / Padded / RegisterStore / Unsplit: the store block changed);
#   4. bench   flash4-bench forward at d 64 and d 128 (bf16, 16k tokens, S 512 .. 16k, causal
#              0 / 1), FLASH4_HOPPER_DEFER_O_READ=0 and =1 in alternate processes, twice, and
#              the ratio of the better of each ($OUT/bench_table.md): the short-S rows are
#              the ones it is for; at d 64 also deferred with two warpgroups forced (the
#              deferral skips three, d 64's default but for short causal problems);
#   5. check   compute-sanitizer memcheck and racecheck of two small DeferORead cases.
# Every stage's timeout is cut to the time left of BUDGET seconds (default 480). Everything goes
# to $OUT (default ./hopper-defer-o-out).
#
#   bash scripts/hopper_defer_o_check.sh [--no-bench]
set -uo pipefail
# shellcheck source=scripts/lib/hopper_check_lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/hopper_check_lib.sh"

check_start hopper-defer-o-out 480 "$@"

# ---- 1. build -----------------------------------------------------------------------------
build_flash4
build_tests_and_bench
for obj in forward_sm90_hdim64 forward_sm90_hdim128; do
  note "$obj registers: $(registers $obj)"
done

# ---- 2. smoke -----------------------------------------------------------------------------
say "smoke: DeferORead case 0 (FLASH4_LOG=1)"
smoke_or_stop 'DeferORead/Flash4HopperDeferOReadWait.*/0_*' 60 120 \
  "a Q buffer never handed back (the storing thread's deferred q_empty arrival)" "read waited for"
smoke_says "its read waited for in the next tile" "the switch did not reach the kernel"

# ---- 3. tests -----------------------------------------------------------------------------
run_suite defer 'DeferORead/*' 120
note "defer worst vs float64: bf16 out $(worst_error defer out bf16) lse $(worst_error defer lse bf16); fp16 out $(worst_error defer out fp16)"
limit=$(($(time_left) - 150))
run_suite existing 'Covered/Flash4Hopper.*:Window/Flash4Hopper.*:Padded/Flash4Hopper.*:RegisterStore/*:Covered/Flash4HopperUnsplit.*' \
  $((limit > 30 ? limit : 30))

# ---- 4. bench -----------------------------------------------------------------------------
# fwd_rows DEFER D [WARPGROUPS]: flash4-bench's forward rows "S causal TF" at head dim D.
fwd_rows() {
  FLASH4_HOPPER_DEFER_O_READ=$1 FLASH4_HOPPER_FWD_WARPGROUPS=${3:-} timeout "$(budget 40)" "$B/bin/flash4-bench" \
    --d "$2" --repeats 10 --deterministic 0 2>>"$LOG" | awk '$1 ~ /^[0-9]+$/ && $6 == "|" {print $2, $5, $8}'
}
# best_of A B: row by row, "S causal max(TF_A, TF_B)".
best_of() { paste -d' ' "$1" "$2" | awk '{print $1, $2, ($3 > $6 ? $3 : $6)}'; }
if [ "$BENCH" = 1 ]; then
  # The deferral is for two warpgroups; d 64 runs three by default but for short causal
  # problems, so d 64 also times deferred with two forced (would two + deferral beat three?).
  say "bench: forward, FLASH4_HOPPER_DEFER_O_READ=0 vs 1 (d 64: and 1 with two warpgroups), two rounds"
  { echo "| d | S | causal | fwd TF/s at once | deferred | deferred / at once | deferred, 2 warpgroups (d 64) | that / at once |"
    echo "|---|---|---|---|---|---|---|---|"; } >"$OUT/bench_table.md"
  for d in 64 128; do
    for round in 1 2; do
      fwd_rows 0 $d >"$OUT/b_d${d}_now$round.txt"
      fwd_rows 1 $d >"$OUT/b_d${d}_defer$round.txt"
      if [ $d = 64 ]; then fwd_rows 1 $d 2 >"$OUT/b_d${d}_wg2$round.txt"; fi
    done
    best_of "$OUT/b_d${d}_now1.txt" "$OUT/b_d${d}_now2.txt" >"$OUT/b_d${d}_now.txt"
    best_of "$OUT/b_d${d}_defer1.txt" "$OUT/b_d${d}_defer2.txt" >"$OUT/b_d${d}_defer.txt"
    if [ $d = 64 ]; then
      best_of "$OUT/b_d${d}_wg21.txt" "$OUT/b_d${d}_wg22.txt" >"$OUT/b_d${d}_wg2.txt"
    else
      awk '{print $1, $2, 0}' "$OUT/b_d${d}_now.txt" >"$OUT/b_d${d}_wg2.txt"
    fi
    paste -d' ' "$OUT/b_d${d}_now.txt" "$OUT/b_d${d}_defer.txt" "$OUT/b_d${d}_wg2.txt" |
      awk -v d=$d '{a = $3; b = $6; c = $9;
        printf "| %s | %s | %s | %s | %s | %.3f | %s | %s |\n", d, $1, $2, a, b, (a > 0 ? b / a : 0),
          (c > 0 ? c : "-"), (c > 0 && a > 0 ? sprintf("%.3f", c / a) : "-")}' >>"$OUT/bench_table.md"
  done
  note "geomean deferred / at once: $(awk -F'|' 'NR > 2 && $7 + 0 > 0 {s += log($7); n++} END {if (n) printf "%.3f (%d rows)", exp(s / n), n}' "$OUT/bench_table.md")"
fi

# ---- 5. sanitizers ------------------------------------------------------------------------
SMALL='DeferORead/Flash4HopperDeferOReadWait.*/0_*:DeferORead/Flash4HopperDeferOReadWait.*/5_*'
sanitize_stage memcheck "$SMALL" 60
sanitize_stage racecheck "$SMALL" 60

finish
