#!/usr/bin/env bash
# Device check of the Hopper (sm90a) forward's dynamic tile schedule (FLASH4_HOPPER_SCHEDULE=
# dynamic: persistent CTAs take tiles from an atomic counter zeroed per call, head-major, the
# heaviest query block of each head first; the default since this check passed on an H200,
# 2026-12-01; FLASH4_HOPPER_SCHEDULE=static is the round-robin), in one call on an H100 / H200 from
# the repository root (carry .device-carry/ for the build dependencies, as
# scripts/hopper_fwd256_check.sh):
#   1. build   flash4 for sm_90a only (ninja -j16, timed), the flash4-only GPU tests and
#              flash4-bench with nvcc (no adept); ptxas -v of forward_sm90_hdim{64,128,256}
#              (registers, spills: expect 0) and their SASS (LDL/STL: expect 0, the atom);
#   2. smoke   two dynamic cases with FLASH4_LOG=1 under a timeout (case 0, 8 tiles; case 24,
#              576 tiles over 132 SMs: CTAs take several); the log must say "dynamic
#              schedule". A hang (rc 124) is the likely failure (the tile handoff or the
#              sentinel): memcheck of them and stop;
#   3. test    every existing Hopper forward suite with FLASH4_HOPPER_SCHEDULE=static, then
#              the new suites (Dynamic/Flash4HopperDynamicSchedule.*: the float64 reference;
#              ManyTiles/Flash4HopperScheduleBits.*: B 4, H 16, S 4096 dynamic = static bits,
#              back-to-back calls and graph replays the same bits), then every existing Hopper
#              forward suite (Covered, Varlen, Window, D256, Softcap, Sink) with
#              the default (dynamic) schedule, cut to leave the bench its time;
#   4. bench   flash4-bench at d 64, 128, 256 (bf16, 16k tokens, hidden 2048, S 512 .. 16k,
#              causal 0 / 1), static and dynamic in separate processes; forward TF/s of each
#              and dynamic / static per row (the backward it also times is not compared);
#   5. check   if time is left, compute-sanitizer racecheck of the 576-tile case (the slot
#              in shared memory is written by the producer, read by the consumers).
# Every stage's timeout is cut to the time left of a 6.7-minute budget (BUDGET seconds, 400).
# Everything goes to $OUT (default ./hopper-sched-out): log, smoke.txt, tests_*.txt,
# bench_*.txt, ptxas_*.txt, sass.txt.gz; the last lines printed are the summary and the bench
# table. --no-bench skips stage 4.
#
#   bash scripts/hopper_sched_check.sh [--no-bench]
set -uo pipefail
# shellcheck source=scripts/lib/hopper_check_lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/hopper_check_lib.sh"

check_start hopper-sched-out 400 "$@"
unset FLASH4_HOPPER_SCHEDULE  # the default (dynamic since 2026-12-01) unless a stage asks for static

# ---- 1. build -------------------------------------------------------------------------
build_flash4
compile_tests_in_background
ptxas_pids=()
for d in 64 128 256; do
  "${NV[@]}" -O3 -DNDEBUG -DFLASH4_HAVE_HOPPER=1 -Xptxas -v -c flash4/src/hopper/forward_sm90_hdim$d.cu \
    -o "$B/ptxas_d$d.o" > "$OUT/ptxas_d$d.txt" 2>&1 &
  ptxas_pids+=($!)
done
wait_for_compiles "a test compile failed"
link_tests
# The bench is someone else's file too: a failure here skips stage 4, not the tests.
if [ "$BENCH" -eq 1 ]; then
  compile_bench || { note "flash4-bench did not build (stage 4 skipped)"; BENCH=0; }
fi
say "tests and bench built"
wait "${ptxas_pids[@]}"
for d in 64 128 256; do
  note "ptxas -v d $d (4 kernels: bf16 / fp16 x softcap): $(grep -oE '[0-9]+ bytes spill (stores|loads)|Used [0-9]+ registers' \
    "$OUT/ptxas_d$d.txt" | sort | uniq -c | tr -s ' ' | tr '\n' ';')"
done
for obj in forward_sm90_hdim64 forward_sm90_hdim128 forward_sm90_hdim256; do
  dump_sass $obj
  note "$obj SASS: LDL/STL $(sass_count 'LDL|STL' $obj) (expect 0), ATOMG $(sass_count ATOMG $obj) (the tile counter, one a kernel), resources: $(registers $obj)"
done
pack_sass

# ---- 2. smoke -------------------------------------------------------------------------
SMOKE='Dynamic/Flash4HopperDynamicSchedule.*/0_*:Dynamic/Flash4HopperDynamicSchedule.*/24_*'
say "smoke: dynamic case 0 (d 64, B 2, Hq 4, 128 x 128: 8 tiles) and case 24 (d 64, B 4, Hq 16, 1100 x 1100 causal: 576 tiles)"
smoke_or_stop "$SMOKE" 60 150 "the tile handoff (tile slot / q_full) or the sentinel" "dynamic schedule"
dynamic_lines=$(grep -c 'flash4_forward ran hopper: dynamic schedule' "$OUT/smoke.txt")
if [ "$dynamic_lines" -eq 0 ]; then
  note "SMOKE: no 'dynamic schedule' line in FLASH4_LOG (the switch did not reach the kernel)"
else
  note "smoke passed ($dynamic_lines forward calls logged 'dynamic schedule')"
fi

# ---- 3. tests -------------------------------------------------------------------------
# The static path first (FLASH4_HOPPER_SCHEDULE=static): its producer loop shares the dynamic
# one's order and waits, so every existing forward suite must still pass on it.
existing='Covered/Flash4Hopper.*:Varlen/Flash4Hopper.*:Window/Flash4Hopper.*:D256/Flash4Hopper.*:Softcap/Flash4Hopper.*:Sink/Flash4Hopper.*'
FLASH4_HOPPER_SCHEDULE=static run_suite existing_static "$existing" 70
run_suite dynamic 'Dynamic/Flash4HopperDynamicSchedule.*' 90
run_suite bits 'ManyTiles/Flash4HopperScheduleBits.*' 60
# worst FIELD DTYPE: the largest value after FIELD over the dynamic suite's error lines.
worst() { grep -E "^\[ errors \]" "$OUT/tests_dynamic.txt" | grep "$2" | max_after "$1"; }
note "dynamic suite worst: bf16 out $(worst out bf16) lse $(worst lse bf16); fp16 out $(worst out fp16) lse $(worst lse fp16)"
# The existing forward suites on the default (dynamic); the bench keeps ~75 s of the budget.
reserve=$((BENCH == 1 ? 75 : 0))
limit=$(($(time_left) - reserve))
run_suite existing_dynamic "$existing" $((limit > 30 ? limit : 30))

# ---- 4. bench -------------------------------------------------------------------------
if [ "$BENCH" -eq 1 ]; then
  say "flash4-bench d 64 / 128 / 256: bf16, 16k tokens, hidden 2048, S 512 .. 16k, causal 0 / 1; static vs dynamic"
  t=$(date +%s)
  for d in 64 128 256; do
    FLASH4_HOPPER_SCHEDULE=static FLASH4_LOG=1 timeout "$(budget 40)" "$B/bin/flash4-bench" --d $d --repeats 10 \
      --deterministic 0 > "$OUT/bench_static_d$d.txt" 2> "$OUT/bench_static_log_d$d.txt"
    # The default, no switch: its log lines count the calls that took the dynamic schedule.
    FLASH4_LOG=1 timeout "$(budget 40)" "$B/bin/flash4-bench" --d $d --repeats 10 \
      --deterministic 0 > "$OUT/bench_dynamic_d$d.txt" 2> "$OUT/bench_dynamic_log_d$d.txt"
  done
  head -1 "$OUT/bench_static_d64.txt" | tee -a "$LOG"
  # Rows "d S B H causal | fwd_ms fwd_TF | ...": fwd TF/s is field 8 (as hopper_fwd256_check.sh).
  cat "$OUT"/bench_static_d*.txt > "$OUT/bench_static.txt"
  cat "$OUT"/bench_dynamic_d*.txt > "$OUT/bench_dynamic.txt"
  awk 'NR == FNR {if ($1 ~ /^[0-9]+$/ && $6 == "|") tf[$1 " " $2 " " $5] = $8; next}
       $1 ~ /^[0-9]+$/ && $6 == "|" {dyn = $8; st = tf[$1 " " $2 " " $5]
         printf "| %s | %s | %s | %s | %s | %s |\n", $1, $2, $5, st, dyn, (st > 0 ? sprintf("%.3f", dyn / st) : "-")}' \
    "$OUT/bench_static.txt" "$OUT/bench_dynamic.txt" > "$OUT/bench_rows.md"
  { echo "| d | S | causal | fwd TF/s static | fwd TF/s dynamic | dynamic/static |"; echo "|---|---|---|---|---|---|"
    cat "$OUT/bench_rows.md"; } > "$OUT/bench_table.md"
  cat "$OUT/bench_table.md" >> "$LOG"
  # logged ERE KIND: how many FLASH4_LOG lines of the KIND (static / dynamic) runs match ERE.
  logged() { cat "$OUT"/bench_"$2"_log_d*.txt | grep -cE "$1"; }
  note "bench in $(($(date +%s) - t)) s, $(wc -l < "$OUT/bench_rows.md") rows (36 expected); 'dynamic schedule' calls:" \
    "static runs $(logged 'dynamic schedule' static) (expect 0), dynamic runs $(logged 'dynamic schedule' dynamic);" \
    "forward on portable: $(logged 'flash4_forward ran portable' static) / $(logged 'flash4_forward ran portable' dynamic)"
  note "geometric mean dynamic/static: $(awk -F'|' '$7 + 0 > 0 {s += log($7); n++} END {if (n) printf "%.3f over %d rows", exp(s / n), n; else print "-"}' "$OUT/bench_rows.md")"
fi

# ---- 5. racecheck ---------------------------------------------------------------------
if [ "$(time_left)" -ge 60 ]; then
  say "compute-sanitizer racecheck: dynamic case 24 (576 tiles)"
  sanitize_stage racecheck 'Dynamic/Flash4HopperDynamicSchedule.*/24_*' 120
else
  note "racecheck skipped (budget spent); alone: compute-sanitizer --tool racecheck $T --gtest_filter='Dynamic/Flash4HopperDynamicSchedule.*/24_*'"
fi

finish
