#!/usr/bin/env bash
# Device check of the Hopper (sm90a) backward's bulk dQ path (FLASH4_HOPPER_DQ=bulk: the
# consumers stage dQ tiles in shared memory, one thread adds them to dq_accum with
# cp.reduce.async.bulk.tensor), in one call on an H100 / H200 from the repository root
# (carry .device-carry/ for the build dependencies, as scripts/hopper_varlen_check.sh):
#   1. build   flash4 for sm_90a only (ninja -j16, timed), the flash4-only GPU tests and
#              flash4-bench with nvcc (no adept); per backward kernel (d, dtype, det0/1,
#              bulk0/1): registers / stack, HGMMA, UTMAREDG (the bulk reduce: bulk1 kernels
#              only), the float dQ atomics (bulk0 only) and LDL/STL (expect 0);
#   2. smoke   bulk dQ on a small dense case and a small deterministic varlen case (three
#              runs, the same bits), under a short timeout (a hang: a named barrier between
#              the dQ writer and the consumers); if either fails, memcheck of it and stop;
#   3. bench   flash4-bench backward, atomics vs bulk (one process each, the env var the only
#              difference): dense bf16 d 64 / 128, S 4096 / 16384, causal 0 / 1, atomic and
#              deterministic dQ, and the varlen adept-like batch at d 64 / 128;
#   4. test    every Hopper backward suite again with FLASH4_HOPPER_DQ=bulk (the ...BulkDq
#              suites: dense, window, varlen, deterministic incl. three-run bit identity and
#              the same bits as the deterministic atomics, contention, adept's fused layout);
#   5. check   compute-sanitizer memcheck, then racecheck, on small bulk cases (varlen
#              deterministic and atomic-mode);
#   6. test    the atomic suites (unchanged kernels), if time is left.
# Every stage's timeout is cut to the time left of a ~6-minute budget (BUDGET seconds, 360),
# most-needed stages first; a suite cut short says how to rerun it alone.
# Everything goes to $OUT (default ./hopper-dq-out): log, tests_*.txt, bench_*.txt, sass.txt.gz;
# the last lines printed are the summary (each stage's seconds) and the bench table.
# --no-bench skips stage 3.
#
#   bash scripts/hopper_dq_check.sh [--no-bench]
set -uo pipefail
# shellcheck source=scripts/lib/hopper_check_lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/hopper_check_lib.sh"

check_start hopper-dq-out 360 "$@"

# ---- 1. build -------------------------------------------------------------------------
build_flash4
build_tests_and_bench
for obj in backward_sm90_hdim64 backward_sm90_hdim128; do
  dump_sass $obj
  note "$obj registers: $(registers $obj)"
  kernel_counts $obj HGMMA UTMAREDG 'ATOMG\.E\.ADD\.F32|REDG\.E\.ADD\.F32' 'LDL|STL' | grep -E "^d(64|128)" |
    while read -r line; do note "  $line"; done
done
pack_sass

# ---- 2. smoke -------------------------------------------------------------------------
# A dense case (Covered case 0) and the deterministic varlen case 12 (packed documents 1, 17,
# 64, 129, 300, causal, d 64), both with bulk dQ.
SMOKE='Covered/Flash4HopperBackwardBulkDq.*/0_*:Deterministic/Flash4HopperDeterministicBackwardBulkDq.ThreeRunsGiveTheSameBits/12_*'
SMALL_DET='Deterministic/Flash4HopperDeterministicBackwardBulkDq.ThreeRunsGiveTheSameBits/12_*'
SMALL_ATOMIC='Varlen/Flash4HopperVarlenBackwardBulkDq.*/0_*'
say "smoke: bulk dQ, dense case 0 and deterministic varlen case 12"
smoke_or_stop "$SMOKE" 60 150 "the staged / free barriers or the dQ order" "differs|dQ by"
smoke_says "dQ by bulk reduce-add" "the bulk path did not run"

# ---- 3. bench -------------------------------------------------------------------------
if [ $BENCH -eq 1 ]; then
  say "flash4-bench backward, dQ by atomics vs bulk reduce-add (bf16; dense: 16k tokens, hidden 2048)"
  table=("| case | bwd TF/s atomics | bwd TF/s bulk | bulk / atomics | det TF/s atomics | det TF/s bulk | bulk / atomics (det) |"
         "|---|---|---|---|---|---|---|")
  ratio() { awk -v b="$1" -v a="$2" 'BEGIN {if (a > 0 && b > 0) printf "%.2f", b / a; else print "-"}'; }
  # dense_row D S C ENV: "bwd_TF det_TF" of one flash4-bench call with FLASH4_HOPPER_DQ=ENV.
  dense_row() {
    env FLASH4_HOPPER_DQ=$4 timeout "$(budget 30)" $B/bin/flash4-bench --d $1 --seqlen $2 --causal $3 --repeats 10 2>&1 |
      tee -a "$OUT/bench_dense_$4.txt" | awk -F'|' 'NF >= 4 && $1 ~ /[0-9]/ {split($3, a, " "); split($4, b, " ");
      print a[2], b[2]}'
  }
  for d in 128 64; do
    for S in 16384 4096; do
      for c in 0 1; do
        read -r a ad <<<"$(dense_row $d $S $c atomics)"
        read -r u ud <<<"$(dense_row $d $S $c bulk)"
        table+=("| dense d $d S $S causal $c | ${a:--} | ${u:--} | $(ratio "${u:-}" "${a:-}") | ${ad:--} | ${ud:--} | $(ratio "${ud:-}" "${ad:-}") |")
      done
    done
  done
  # varlen_row D ENV: "bwd_TF det_TF" ("varlen | fwd B MS ms TF TF | bwd B MS ms TF TF | bwd-det B MS ms TF TF").
  varlen_row() {
    env FLASH4_HOPPER_DQ=$2 timeout "$(budget 30)" $B/bin/flash4-bench --varlen --d $1 --repeats 20 2>&1 |
      tee -a "$OUT/bench_varlen_$2.txt" | awk -F'|' '/^varlen \|/ {split($3, a, " "); split($4, b, " "); print a[5], b[5]}'
  }
  for d in 64 128; do
    read -r a ad <<<"$(varlen_row $d atomics)"
    read -r u ud <<<"$(varlen_row $d bulk)"
    table+=("| varlen adept-like d $d (Hq 32 Hkv 8 causal) | ${a:--} | ${u:--} | $(ratio "${u:-}" "${a:-}") | ${ad:--} | ${ud:--} | $(ratio "${ud:-}" "${ad:-}") |")
  done
  grep -h "hopper dQ:" "$OUT"/bench_*.txt 2>/dev/null | sort | uniq -c | tee -a "$LOG"
  printf '%s\n' "${table[@]}" | tee "$OUT/bench_table.md" >>"$LOG"
fi

# ---- 4. the suites with bulk dQ --------------------------------------------------------
run_suite bulk_deterministic 'Deterministic/Flash4HopperDeterministicBackwardBulkDq.*' 150
run_suite bulk_contention 'Flash4HopperDeterministicBackwardContentionBulkDq.*' 60
run_suite bulk 'Covered/Flash4HopperBackwardBulkDq.*:Window/Flash4HopperBackwardBulkDq.*:Varlen/Flash4HopperVarlenBackwardBulkDq.*' 150
run_suite bulk_fused 'Adept/Flash4HopperVarlenFusedBulkDq.*' 60
worst() {
  grep -hE "^\[ errors \].*FLASH4_HOPPER_DQ=bulk" "$OUT"/tests_bulk*.txt 2>/dev/null | grep "$2" | max_after "$1"
}
note "bulk worst vs float64: bf16 dq $(worst dq bf16) dk $(worst dk bf16) dv $(worst dv bf16); fp16 dq $(worst dq fp16) dk $(worst dk fp16) dv $(worst dv fp16)"
grep -hE "deterministic vs atomic" "$OUT/tests_bulk_contention.txt" 2>/dev/null | tee -a "$LOG"

# ---- 5. sanitizers ---------------------------------------------------------------------
for tool in memcheck racecheck; do
  say "compute-sanitizer $tool: bulk dQ, deterministic varlen case 12 and atomic-mode varlen case 0"
  sanitize_stage $tool "$SMALL_DET:$SMALL_ATOMIC" 90
done

# ---- 6. the atomic suites ----------------------------------------------------------------
if [ "$(time_left)" -ge 30 ]; then
  run_suite atomics 'Covered/Flash4HopperBackward.*:Window/Flash4HopperBackward.*:Varlen/Flash4HopperVarlenBackward.*:Deterministic/Flash4HopperDeterministicBackward.*' 150
else
  note "atomic suites skipped (budget spent); alone: $T --gtest_filter='Covered/Flash4HopperBackward.*:Window/Flash4HopperBackward.*:Varlen/Flash4HopperVarlenBackward.*:Deterministic/Flash4HopperDeterministicBackward.*'"
fi

finish
