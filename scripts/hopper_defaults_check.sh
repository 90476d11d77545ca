#!/usr/bin/env bash
# Device check of flash4's Hopper paths after their defaults change (2026-12-01: d 64 backward
# at BM = 128 but for varlen without determinism, split-KV of unpacked q), in one call on an
# H100 / H200 from the repository root (carry .device-carry/):
#   1. build   flash4 for sm_90a, the flash4-only GPU tests and flash4-bench;
#   2. test    the whole flash4 GPU test binary under the new defaults, in SHARDS (default 6)
#              gtest shards side by side on the one GPU (the float64 references are CPU work);
#              every failure listed; the smoke lines say which paths the defaults took;
#   3. bench   split-KV of unpacked q where the rule now splits prefill too (few tiles: one
#              sequence, 1-16 heads, 512-4096 queries; chunked prefill of 128 queries over 8k
#              keys; MHA decode): flash4-bench --paged's contiguous side, the default against
#              FLASH4_HOPPER_SPLIT_KV_UNPACKED=0, one process each ($OUT/bench_table.md);
#   4. check   compute-sanitizer racecheck of one BM = 128 and one BM = 64 backward case, the
#              hazards' kinds counted (racecheck flags the bulk copies of a stage's lse / D rows
#              on the BM = 64 kernels: are the BM = 128 kernel's the same?).
# Every stage's timeout is cut to the time left of BUDGET seconds (default 480). Everything goes
# to $OUT (default ./hopper-defaults-out).
#
#   bash scripts/hopper_defaults_check.sh
set -uo pipefail
# shellcheck source=scripts/lib/hopper_check_lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/hopper_check_lib.sh"

check_start hopper-defaults-out 480 "$@"

# ---- 1. build -----------------------------------------------------------------------------
build_flash4
build_tests_and_bench

# ---- 2. smoke and tests -------------------------------------------------------------------
say "smoke: which paths the defaults take (FLASH4_LOG=1)"
smoke 'WideM/Flash4HopperBackwardWideM.*/0_*:SplitUnpacked/Flash4HopperSplitKvUnpacked.*/0_*' "$(budget 60)" ||
  note "SMOKE FAILED (rc $?)"
smoke_says "128-query blocks" "the BM = 128 backward did not run"
smoke_says "split-KV" "the unpacked call did not split"

SHARDS=${SHARDS:-6}
limit=$(($(time_left) - 150))
say "tests: the whole flash4 GPU binary in $SHARDS shards (limit ${limit} s)"
t=$(date +%s)
for i in $(seq 0 $((SHARDS - 1))); do
  GTEST_TOTAL_SHARDS=$SHARDS GTEST_SHARD_INDEX=$i timeout "$((limit > 60 ? limit : 60))" $T \
    >"$OUT/tests_shard$i.txt" 2>&1 &
done
wait
for i in $(seq 0 $((SHARDS - 1))); do
  note "shard $i: $(gtest_result "$OUT/tests_shard$i.txt")$(grep -c '^\[       OK' "$OUT/tests_shard$i.txt") ok, $(grep -c '^\[  SKIPPED' "$OUT/tests_shard$i.txt") skipped"
done
note "whole suite: $(cat "$OUT"/tests_shard*.txt | grep -c '^\[       OK') ok, $(cat "$OUT"/tests_shard*.txt | grep -c '^\[  FAILED .*(') failed in $(($(date +%s) - t)) s"
grep -h '^\[  FAILED .*(' "$OUT"/tests_shard*.txt | head -20 | tee -a "$LOG"
grep -h -B2 -A6 'Failure$' "$OUT"/tests_shard*.txt | head -40 >>"$LOG"
for f in dq dk dv; do
  note "worst bf16 $f vs float64 (all backward suites): $(cat "$OUT"/tests_shard*.txt | grep -E '^\[ errors \]' | grep bf16 | max_after $f)"
done

# ---- 3. bench -----------------------------------------------------------------------------
say "bench: split-KV of unpacked q, default vs FLASH4_HOPPER_SPLIT_KV_UNPACKED=0"
{ echo "| shape | d | causal | ms split (default) | ms unsplit | unsplit / split |"
  echo "|---|---|---|---|---|---|"; } >"$OUT/bench_table.md"
contiguous_ms() {
  timeout "$(budget 20)" "$B/bin/flash4-bench" --paged 64 "$@" --repeats 20 2>>"$LOG" | tee -a "$LOG" |
    grep "^paged |" | sed -E 's/.*contiguous \| fwd [a-z]+ ([0-9.]+) ms.*/\1/'
}
for run in "B1xH8xS1024 128 1 --batch 1 --hq 8 --hkv 8 --seqlen-q 1024 --seqlen-k 1024" \
           "B1xH8xS1024 128 0 --batch 1 --hq 8 --hkv 8 --seqlen-q 1024 --seqlen-k 1024" \
           "B1xH8xS1024 64 0 --batch 1 --hq 8 --hkv 8 --seqlen-q 1024 --seqlen-k 1024" \
           "B1xH16xS512 128 0 --batch 1 --hq 16 --hkv 16 --seqlen-q 512 --seqlen-k 512" \
           "B1xH4xS2048 128 1 --batch 1 --hq 4 --hkv 4 --seqlen-q 2048 --seqlen-k 2048" \
           "B1xH1xS4096 128 0 --batch 1 --hq 1 --hkv 1 --seqlen-q 4096 --seqlen-k 4096" \
           "B1xH32xQ128xK8192 128 1 --batch 1 --hq 32 --hkv 32 --seqlen-q 128 --seqlen-k 8192" \
           "B1xH32/8xQ128xK8192 128 1 --batch 1 --hq 32 --hkv 8 --seqlen-q 128 --seqlen-k 8192" \
           "B8xH8xQ1xK8192 128 0 --batch 8 --hq 8 --hkv 8 --seqlen-q 1 --seqlen-k 8192"; do
  read -r name d causal rest <<<"$run"
  # shellcheck disable=SC2086  # rest: the shape's own options
  split=$(contiguous_ms --d "$d" --causal "$causal" $rest)
  # shellcheck disable=SC2086
  unsplit=$(FLASH4_HOPPER_SPLIT_KV_UNPACKED=0 contiguous_ms --d "$d" --causal "$causal" $rest)
  awk -v n="$name" -v d="$d" -v c="$causal" -v s="$split" -v u="$unsplit" \
    'BEGIN {printf "| %s | %s | %s | %s | %s | %s |\n", n, d, c, s, u, (s > 0 ? sprintf("%.3f", u / s) : "-")}' \
    >>"$OUT/bench_table.md"
done

# ---- 4. racecheck -------------------------------------------------------------------------
# race_kinds FILE: the racecheck report's hazards, counted by kind and kernel.
race_kinds() {
  grep -E "Race reported|hazard|Error:" "$1" | sed -E 's/0x[0-9a-f]+/ADDR/g; s/\(.*//' | sort | uniq -c | sort -rn | head -12
}
# BM = 128: WideM case 0 (the test forces it); BM = 64: the lock-step bulk suite's case 0 (pinned).
for run in "128 WideM/Flash4HopperBackwardWideM.*/0_*" "64 Covered/Flash4HopperBackwardBulkDq.*/0_*"; do
  read -r bm filter <<<"$run"
  t=$(date +%s)
  timeout "$(budget 60)" compute-sanitizer --tool racecheck --error-exitcode 9 $T --gtest_filter="$filter" \
    >"$OUT/racecheck_bm$bm.txt" 2>&1
  note "racecheck BM $bm ($filter): rc $? in $(($(date +%s) - t)) s, $(grep -m1 'RACECHECK SUMMARY\|ERROR SUMMARY' "$OUT/racecheck_bm$bm.txt")"
  race_kinds "$OUT/racecheck_bm$bm.txt" | tee -a "$LOG"
done
grep -m3 -A12 "Race reported\|Error:" "$OUT/racecheck_bm128.txt" | head -50 >>"$LOG"

finish
