#!/usr/bin/env bash
# Device check of flash4's Hopper (sm90a) kernels on packed sequences (varlen, cu_seqlens),
# forward and backward, in one call on an H100 / H200 from the repository root (carry
# .device-carry/ for the build dependencies, as scripts/hopper_bwd_check.sh):
#   1. build   flash4 for sm_90a only (ninja -j16, timed), the flash4-only GPU tests and
#              flash4-bench with nvcc (no adept); SASS of the Hopper objects (HGMMA count,
#              local memory LDL/STL, registers);
#   2. smoke   one small varlen forward and one backward case with FLASH4_LOG=1; if either
#              fails, memcheck of it and stop;
#   3. test    the varlen tests (forward: Varlen/Flash4Hopper.*, backward:
#              Varlen/Flash4HopperVarlenBackward.*, adept's fused qkv layout with
#              cu_seqlens[0] > 0: Adept/Flash4HopperVarlenFused.*);
#   4. check   compute-sanitizer memcheck on one small varlen case of each direction;
#   5. bench   flash4-bench --varlen (4 x 4096 tokens in documents of random lengths,
#              Hq 32 / Hkv 8, causal, fused qkv: adept's batches) at d 64 and 128, Hopper
#              vs portable (FLASH4_BACKEND=portable);
#   6. test    every existing Hopper test (dense forward and backward, dispatch, wgmma
#              layouts), then the sliding-window tests (Window/Flash4Hopper.*,
#              Window/Flash4HopperBackward.*);
#   7. race    compute-sanitizer racecheck on the small backward case, if time is left.
# Every stage's timeout is cut to the time left of a ~8-minute budget (BUDGET seconds, 480),
# most-needed stages first; a suite cut short says how to rerun it alone.
# Everything goes to $OUT (default ./hopper-varlen-out): log, tests_*.txt, bench_*.txt,
# sass.txt.gz; the last lines printed are the summary (with each stage's seconds). --no-bench
# skips stage 5.
#
#   bash scripts/hopper_varlen_check.sh [--no-bench]
set -uo pipefail
# shellcheck source=scripts/lib/hopper_check_lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/hopper_check_lib.sh"

check_start hopper-varlen-out 480 "$@"

# ---- 1. build -------------------------------------------------------------------------
build_flash4
build_tests_and_bench
for obj in forward_sm90_hdim64 forward_sm90_hdim128 backward_sm90_hdim64 backward_sm90_hdim128; do
  dump_sass $obj
  note "$obj SASS (both dtypes): HGMMA $(sass_count HGMMA $obj), UTMALDG $(sass_count UTMALDG $obj), LDL/STL $(sass_count 'LDL|STL' $obj) (expect 0), resources: $(registers $obj)"
done
pack_sass

# ---- 2. smoke -------------------------------------------------------------------------
FWD0='Varlen/Flash4Hopper.*/0_*'
BWD0='Varlen/Flash4HopperVarlenBackward.*/0_*'
say "smoke: varlen forward case 0 and backward case 0 (docs 1, 17, 64..300, Hq 4 Hkv 2)"
smoke_or_stop "$FWD0:$BWD0" 90 200 "an mbarrier phase / named barrier" "" both
note "smoke passed"

# ---- 3. tests (new), 4. memcheck, 5. bench, 3b. tests (existing, window), 6. racecheck ----
# The stages run most-needed first, so a spent budget cuts the least-needed ones.
run_suite varlen_forward 'Varlen/Flash4Hopper.*' 90
run_suite varlen_backward 'Varlen/Flash4HopperVarlenBackward.*' 150
run_suite varlen_fused 'Adept/Flash4HopperVarlenFused.*' 60

say "compute-sanitizer memcheck: varlen forward case 0, backward case 0"
sanitize_stage memcheck "$FWD0:$BWD0" 120

if [ $BENCH -eq 1 ]; then
  say "flash4-bench --varlen: 4 x 4096 tokens, random documents (mean 1024), Hq 32 Hkv 8, causal, fused qkv"
  table=("| d | fwd TF/s Hopper | fwd TF/s portable | fwd ratio | bwd TF/s Hopper | bwd TF/s portable | bwd ratio |"
         "|---|---|---|---|---|---|---|")
  # flash4-bench prints "varlen | fwd BACKEND MS ms TF TF | bwd BACKEND MS ms TF TF":
  # backend:TF of column $1 of file $2.
  tf() { awk -F'|' -v col="$1" '/^varlen \|/ {split($col, a, " "); print a[2] ":" a[5]}' "$2"; }
  ratio() { awk -v h="${1#*:}" -v p="${2#*:}" 'BEGIN {if (p > 0) printf "%.2f", h / p; else print "-"}'; }
  for d in 64 128; do
    timeout "$(budget 40)" $B/bin/flash4-bench --varlen --d $d --repeats 20 > "$OUT/bench_hopper_d$d.txt" 2>&1
    FLASH4_BACKEND=portable timeout "$(budget 40)" $B/bin/flash4-bench --varlen --d $d --repeats 20 \
      > "$OUT/bench_portable_d$d.txt" 2>&1
    hf=$(tf 2 "$OUT/bench_hopper_d$d.txt") hb=$(tf 3 "$OUT/bench_hopper_d$d.txt")
    pf=$(tf 2 "$OUT/bench_portable_d$d.txt") pb=$(tf 3 "$OUT/bench_portable_d$d.txt")
    table+=("| $d | ${hf#*:} (${hf%%:*}) | ${pf#*:} (${pf%%:*}) | $(ratio "$hf" "$pf") | ${hb#*:} (${hb%%:*}) | ${pb#*:} (${pb%%:*}) | $(ratio "$hb" "$pb") |")
  done
  head -1 "$OUT/bench_hopper_d64.txt" | tee -a "$LOG"
  printf '%s\n' "${table[@]}" | tee "$OUT/bench_table.md" >>"$LOG"
fi

# Every existing Hopper test: the dense backward's per-row arrays changed layout with varlen.
run_suite dense_hopper 'Covered/Flash4Hopper.*:Flash4HopperDispatch.*:Covered/Flash4HopperBackward.*:Flash4HopperBackwardDispatch.*:Flash4HopperBackwardLayouts.*' 240
run_suite window 'Window/Flash4Hopper.*:Window/Flash4HopperBackward.*' 90
# worst FIELD DTYPE: the largest value after FIELD over the new tests' error lines.
worst() {
  cat "$OUT"/tests_varlen_*.txt "$OUT"/tests_window.txt 2>/dev/null | grep -E "^\[ errors \]" | grep "$2" | max_after "$1"
}
note "varlen + window worst: bf16 out $(worst out bf16) dq $(worst dq bf16) dk $(worst dk bf16) dv $(worst dv bf16); fp16 out $(worst out fp16) dq $(worst dq fp16) dk $(worst dk fp16) dv $(worst dv fp16)"

if [ "$(time_left)" -ge 60 ]; then
  say "compute-sanitizer racecheck: varlen backward case 0 (shared-memory zeroing and barriers)"
  sanitize racecheck "$BWD0" "$(budget 150)"
  note "racecheck rc $? ($(grep -E 'RACECHECK SUMMARY|ERROR SUMMARY' "$OUT/racecheck.txt" | tail -1))"
else
  note "racecheck skipped (budget spent); alone: compute-sanitizer --tool racecheck $T --gtest_filter='$BWD0'"
fi

finish
