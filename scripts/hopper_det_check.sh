#!/usr/bin/env bash
# Device check of the Hopper (sm90a) backward's deterministic dQ (flash4_backward_args.
# deterministic = 1, what adept's training asks for), in one call on an H100 / H200 from the
# repository root (carry .device-carry/ for the build dependencies, as
# scripts/hopper_varlen_check.sh):
#   1. build   flash4 for sm_90a only (ninja -j16, timed), the flash4-only GPU tests and
#              flash4-bench with nvcc (no adept); registers / stack of the backward kernels
#              (atomic: <.., false>, deterministic: <.., true>) and local memory in SASS;
#   2. smoke   one dense and one varlen deterministic case, three runs each, under a short
#              timeout (a hang is a dQ-order deadlock); if either fails, memcheck of it and stop;
#   3. test    the deterministic suites: Deterministic/Flash4HopperDeterministicBackward.*
#              (reference and bit-identical reruns), the long-sequence contention test, adept's
#              fused qkv layout (Adept/Flash4HopperVarlenFused.*), dispatch, and the portable
#              suite's determinism / fused-layout tests (on the Hopper kernel under AUTO);
#   4. check   compute-sanitizer memcheck, then synccheck (named barriers) on the small
#              deterministic varlen case;
#   5. bench   flash4-bench backward, atomic vs deterministic dQ, one process timing both:
#              dense bf16 d 128, S 4096 / 16384, causal 0 / 1 (16k tokens), and the varlen
#              adept-like batch (4 x 4096 tokens, Hq 32 / Hkv 8, causal, fused qkv) at d 64 / 128;
#   6. race    compute-sanitizer racecheck on the small deterministic varlen case (the d = 64
#              shared-memory exchange of the two warpgroups' dQ halves);
#   7. test    the existing Hopper backward suites (atomic dQ), if time is left.
# Every stage's timeout is cut to the time left of a ~6-minute budget (BUDGET seconds, 360),
# most-needed stages first; a suite cut short says how to rerun it alone.
# Everything goes to $OUT (default ./hopper-det-out): log, tests_*.txt, bench_*.txt, sass.txt.gz;
# the last lines printed are the summary (each stage's seconds) and the bench table.
# --no-bench skips stage 5.
#
#   bash scripts/hopper_det_check.sh [--no-bench]
set -uo pipefail
# shellcheck source=scripts/lib/hopper_check_lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/hopper_check_lib.sh"

check_start hopper-det-out 360 "$@"

# ---- 1. build -------------------------------------------------------------------------
build_flash4
build_tests_and_bench
for obj in backward_sm90_hdim64 backward_sm90_hdim128; do
  dump_sass $obj
  # Per kernel: Lb0 = atomic dQ, Lb1 = deterministic (the template's bool); DqAddE1E = dQ by
  # bulk reduce-add (FLASH4_HOPPER_DQ=bulk, scripts/hopper_dq_check.sh), "+bulk".
  res=$(cuobjdump -res-usage "$(hopper_object $obj)" 2>&1 | awk '/Function .*attention_backward_sm90/ {
          k = ($0 ~ /Lb1E/) ? "det" : "atomic"; if ($0 ~ /DqAddE1E/) k = k "+bulk";
          t = ($0 ~ /bfloat16/) ? "bf16" : "fp16"; getline;
          match($0, /REG:[0-9]+ STACK:[0-9]+/); printf "%s/%s %s; ", k, t, substr($0, RSTART, RLENGTH)}')
  note "$obj: $res HGMMA $(sass_count HGMMA $obj), LDL/STL $(sass_count 'LDL|STL' $obj) (expect 0)"
done
pack_sass

# ---- 2. smoke -------------------------------------------------------------------------
# Case 0: dense d 64 bf16 Sq = Sk = 1000 not causal (8 key blocks per query block); case 12:
# packed documents 1, 17, 64, 129, 300, causal, d 64 (cases: deterministic_cases()).
SMOKE='Deterministic/Flash4HopperDeterministicBackward.ThreeRunsGiveTheSameBits/0_*:Deterministic/Flash4HopperDeterministicBackward.ThreeRunsGiveTheSameBits/12_*'
SMALL='Deterministic/Flash4HopperDeterministicBackward.ThreeRunsGiveTheSameBits/12_*'
say "smoke: deterministic dense case 0 and varlen case 12, three runs each"
smoke_or_stop "$SMOKE" 60 150 "the dQ order (counts, ticket) or a named barrier" differs
note "smoke passed"

# ---- 3. tests, 4. memcheck / synccheck, 5. bench, 6. racecheck, 7. existing tests --------
run_suite deterministic 'Deterministic/Flash4HopperDeterministicBackward.*' 120
run_suite contention 'Flash4HopperDeterministicBackwardContention.*' 60
# The portable suite's determinism / fused-layout tests run on the Hopper kernel now (AUTO).
run_suite fused 'Adept/Flash4HopperVarlenFused.*:Flash4HopperBackwardDispatch.*:Flash4PortableDeterminism.*:Flash4PortableLayouts.*' 90
# worst FIELD DTYPE: the largest value after FIELD over the deterministic tests' error lines.
worst() {
  grep -hE "^\[ errors \].*deterministic" "$OUT"/tests_deterministic.txt "$OUT"/tests_fused.txt 2>/dev/null | grep "$2" |
    max_after "$1"
}
note "deterministic worst vs float64: bf16 dq $(worst dq bf16) dk $(worst dk bf16) dv $(worst dv bf16); fp16 dq $(worst dq fp16) dk $(worst dk fp16) dv $(worst dv fp16)"
grep -hE "deterministic vs atomic" "$OUT/tests_contention.txt" 2>/dev/null | tee -a "$LOG"

for tool in memcheck synccheck; do
  say "compute-sanitizer $tool: deterministic varlen case 12"
  sanitize_stage $tool "$SMALL" 90
done

if [ $BENCH -eq 1 ]; then
  say "flash4-bench backward, atomic vs deterministic dQ (bf16; dense: 16k tokens, hidden 2048)"
  table=("| case | bwd TF/s atomic | bwd TF/s deterministic | det backend | det / atomic |" "|---|---|---|---|---|")
  ratio() { awk -v d="$1" -v a="$2" 'BEGIN {if (a > 0 && d > 0) printf "%.2f", d / a; else print "-"}'; }
  for S in 4096 16384; do
    for c in 0 1; do
      # Dense rows: "d S B H causal | fwd ms TF | bwd ms TF | det ms TF BACKEND".
      row=$(timeout "$(budget 40)" $B/bin/flash4-bench --d 128 --seqlen $S --causal $c --repeats 10 2>&1 |
            tee -a "$OUT/bench_dense.txt" | awk -F'|' 'NF >= 4 && $1 ~ /[0-9]/ {split($3, a, " "); split($4, b, " ");
            print a[2], b[2], b[3]}')
      read -r a d backend <<<"${row:-- - -}"
      table+=("| dense d 128 S $S causal $c | $a | $d | $backend | $(ratio "$d" "$a") |")
    done
  done
  for d in 64 128; do
    # "varlen | fwd B MS ms TF TF | bwd B MS ms TF TF | bwd-det B MS ms TF TF"
    row=$(timeout "$(budget 40)" $B/bin/flash4-bench --varlen --d $d --repeats 20 2>&1 | tee -a "$OUT/bench_varlen.txt" |
          awk -F'|' '/^varlen \|/ {split($3, a, " "); split($4, b, " "); print a[5], b[5], b[2]}')
    read -r a dt backend <<<"${row:-- - -}"
    table+=("| varlen adept-like d $d (Hq 32 Hkv 8 causal) | $a | $dt | $backend | $(ratio "$dt" "$a") |")
  done
  printf '%s\n' "${table[@]}" | tee "$OUT/bench_table.md" >>"$LOG"
fi

if [ "$(time_left)" -ge 45 ]; then
  say "compute-sanitizer racecheck: deterministic varlen case 12"
  sanitize racecheck "$SMALL" "$(budget 120)"
  note "racecheck rc $? ($(grep -E 'RACECHECK SUMMARY|ERROR SUMMARY' "$OUT/racecheck.txt" | tail -1))"
else
  note "racecheck skipped (budget spent); alone: compute-sanitizer --tool racecheck $T --gtest_filter='$SMALL'"
fi

# The atomic path's kernels are unchanged (same PTX); its host code is not: the existing suites.
if [ "$(time_left)" -ge 30 ]; then
  run_suite atomic 'Covered/Flash4HopperBackward.*:Window/Flash4HopperBackward.*:Varlen/Flash4HopperVarlenBackward.*' 150
else
  note "existing backward suites skipped (budget spent); alone: $T --gtest_filter='Covered/Flash4HopperBackward.*:Window/Flash4HopperBackward.*:Varlen/Flash4HopperVarlenBackward.*'"
fi

finish
