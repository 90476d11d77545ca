#!/usr/bin/env bash
# Device check of flash4's Hopper (sm90a) backward (issue 9), in one call on an H100 /
# H200 from the repository root (carry .device-carry/ for the build dependencies):
#   1. build   flash4 for sm_90a only (ninja -j16, timed), flash4-only GPU tests and
#              flash4-bench with nvcc (no adept), SASS of the backward objects (HGMMA count,
#              local memory, registers);
#   2. smoke   the layout test (the five wgmma products of one step, each against float64:
#              says which layout is wrong), then two small cases with FLASH4_LOG=1; if they
#              fail, memcheck of one and stop;
#   3. test    every Hopper backward test (Covered/Flash4HopperBackward.*, dispatch tests),
#              then the Hopper forward tests (must be unchanged);
#   4. bench   flash4-bench backward, Hopper (the default) vs portable (FLASH4_HOPPER_BWD=0), d 64 / 128,
#              S 1024 / 4096 / 16384, causal 0 / 1;
#   5. check   compute-sanitizer memcheck and racecheck on one small case (last: the call's
#              10-minute limit may cut it; give it a call of its own then).
# Everything goes to $OUT (default ./hopper-bwd-out): log, tests.txt, bench_*.txt, sass.txt.gz;
# the last lines printed are the summary. Each stage has a timeout so the whole fits in
# ~9 minutes; --no-bench skips stage 5, --full also runs the whole flash4 GPU suite with
# the switch on (longer: give it its own call).
#
#   bash scripts/hopper_bwd_check.sh [--no-bench] [--full]
set -uo pipefail
# shellcheck source=scripts/lib/hopper_check_lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/hopper_check_lib.sh"

check_setup hopper-bwd-out
BENCH=1
FULL=0
for arg in "$@"; do
  case $arg in
    --no-bench) BENCH=0 ;;
    --full) FULL=1 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

# ---- 1. build -------------------------------------------------------------------------
build_flash4
build_tests_and_bench
for d in 64 128; do
  obj=backward_sm90_hdim$d
  dump_sass $obj
  note "d=$d backward SASS (both dtypes): HGMMA $(sass_count HGMMA $obj) (expect 2 x $((d == 128 ? 32 : 20))), UTMALDG $(sass_count UTMALDG $obj), UBLKCP $(sass_count UBLKCP $obj), LDL/STL $(sass_count 'LDL|STL' $obj), resources: $(registers $obj)"
done
pack_sass

# ---- 2. smoke -------------------------------------------------------------------------
say "layouts: the five wgmma products of one backward step in isolation (d 64 / 128, bf16 / fp16)"
timeout 60 $T --gtest_filter='Flash4HopperBackwardLayouts.*' > "$OUT/layouts.txt" 2>&1
note "layout tests rc $? ($(grep -cE '^\[ layout \].*, first wrong' "$OUT/layouts.txt") wrong products)"
grep -E "^\[ layout \]|FAILED|OK \]" "$OUT/layouts.txt" | head -24 | tee -a "$LOG"
say "smoke: two small Hopper backward cases (d 64 and d 128, bf16, B 2, Hq 4, Hkv 2, S 128)"
smoke 'Covered/Flash4HopperBackward.*/0_*:Covered/Flash4HopperBackward.*/8_*' 90
rc=$?
if [ $rc -ne 0 ]; then
  note "SMOKE FAILED (rc $rc, 124 = timeout: a hang, likely an mbarrier phase / named barrier); memcheck of case 0:"
  FLASH4_HOPPER_BWD=1 timeout 150 compute-sanitizer --tool memcheck $T \
    --gtest_filter='Covered/Flash4HopperBackward.*/0_*' 2>&1 | tail -60 | tee "$OUT/memcheck.txt" | tail -25
  print_summary
  exit 1
fi
note "smoke passed"

# ---- 3. tests ---------------------------------------------------------------------------
say "Hopper backward tests"
timeout 300 $T --gtest_filter='*Flash4HopperBackward*' > "$OUT/tests.txt" 2>&1
rc=$?
grep -E "^\[  (PASSED|FAILED) |^\[  FAILED|tests? ran" "$OUT/tests.txt" | tail -30 | tee -a "$LOG"
grep -E -A4 "Failure$" "$OUT/tests.txt" | head -24 | tee -a "$LOG"
worst() { grep -E "bwd hopper" "$OUT/tests.txt" | grep "$2" | max_after "$1"; }  # worst FIELD DTYPE
note "hopper backward tests rc $rc; worst bf16 dq $(worst dq bf16) dk $(worst dk bf16) dv $(worst dv bf16); fp16 dq $(worst dq fp16) dk $(worst dk fp16) dv $(worst dv fp16)"
say "Hopper forward tests (unchanged by the backward)"
timeout 90 $T --gtest_filter='*Flash4Hopper.*:*Flash4HopperDispatch*' > "$OUT/tests_forward.txt" 2>&1
note "hopper forward tests rc $? ($(gtest_result "$OUT/tests_forward.txt"))"
if [ $FULL -eq 1 ]; then
  say "whole flash4 GPU suite (Hopper backward on: the default)"
  timeout 400 $T > "$OUT/tests_full.txt" 2>&1
  note "full suite with the switch on: rc $? ($(gtest_result "$OUT/tests_full.txt"))"
fi

# ---- 4. bench ---------------------------------------------------------------------------
if [ $BENCH -eq 1 ]; then
  say "flash4-bench backward: Hopper (the default) vs portable (FLASH4_HOPPER_BWD=0), bf16, 16k tokens"
  table=("| d | S | causal | bwd TF/s Hopper | bwd TF/s portable | Hopper/portable |" "|---|---|---|---|---|---|")
  for d in 128 64; do
    for S in 1024 4096 16384; do
      for c in 0 1; do
        h=$(FLASH4_HOPPER_BWD=1 timeout 60 $B/bin/flash4-bench --d $d --seqlen $S --causal $c --repeats 10 2>&1 |
            tee -a "$OUT/bench_hopper.txt" | awk -F'|' 'NF >= 4 && $1 ~ /[0-9]/ {split($3, a, " "); print a[2]}')
        p=$(FLASH4_HOPPER_BWD=0 timeout 60 $B/bin/flash4-bench --d $d --seqlen $S --causal $c --repeats 10 2>&1 |
            tee -a "$OUT/bench_portable.txt" | awk -F'|' 'NF >= 4 && $1 ~ /[0-9]/ {split($3, a, " "); print a[2]}')
        r=$(awk -v h="${h:-0}" -v p="${p:-0}" 'BEGIN {if (p > 0) printf "%.2f", h / p; else print "-"}')
        table+=("| $d | $S | $c | ${h:--} | ${p:--} | $r |")
      done
    done
  done
  printf '%s\n' "${table[@]}" | tee "$OUT/bench_table.md" >>"$LOG"
fi

# ---- 5. sanitizers ----------------------------------------------------------------------
for tool in memcheck racecheck; do
  say "compute-sanitizer $tool (case 1: d 64 bf16 Sq 17 Sk 1000)"
  sanitize $tool 'Covered/Flash4HopperBackward.*/1_*' 90
  note "$tool rc $? ($(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/$tool.txt" | tail -1))"
done

say "summary"
print_summary
if [ $BENCH -eq 1 ]; then cat "$OUT/bench_table.md"; fi
