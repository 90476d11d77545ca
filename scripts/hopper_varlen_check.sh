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

OUT=${OUT:-$PWD/hopper-varlen-out}
mkdir -p "$OUT"
LOG=$OUT/log
B=${BUILD:-build-gpu}
BUDGET=${BUDGET:-480}
BENCH=1
for arg in "$@"; do
  case $arg in
    --no-bench) BENCH=0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done
START=$(date +%s)
say() { echo "== $(date +%T) $*" | tee -a "$LOG"; }
summary=()
note() { summary+=("$*"); say "$*"; }
# Seconds for a stage: its own limit, cut to what is left of the budget (at least 10).
budget() {
  local left=$((BUDGET - ($(date +%s) - START)))
  [ "$left" -lt "$1" ] && echo $((left > 10 ? left : 10)) || echo "$1"
}
finish() {
  say "summary ($(($(date +%s) - START)) s)"
  printf '%s\n' "${summary[@]}"
  [ -f "$OUT/bench_table.md" ] && cat "$OUT/bench_table.md"
}

# ---- 1. build -------------------------------------------------------------------------
[ -f .device-carry/deps.tar ] && tar xf .device-carry/deps.tar -C / --skip-old-files 2>/dev/null
say "$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null); $(nvcc --version | tail -1)"
cmake -S . -B $B -G Ninja -DCMAKE_BUILD_TYPE=Release -DADEPT_CUDA_GENCODE="-gencode=arch=compute_90a,code=sm_90a" \
  >>"$LOG" 2>&1 || { say "configure failed"; tail -30 "$LOG"; exit 1; }
t0=$(date +%s%N)
ninja -C $B -j16 flash4 >>"$LOG" 2>&1 || { say "flash4 build failed"; grep -A12 -m3 "error" "$LOG"; exit 1; }
note "flash4 built in $(( ($(date +%s%N) - t0) / 1000000 )) ms (-j16)"
NV=(nvcc -std=c++20 -O2 --expt-relaxed-constexpr -gencode=arch=compute_90a,code=sm_90a -Itests -Iflash4/include
    -Iflash4/src)
mkdir -p $B/t $B/bin
pids=()
for f in tests/gpu/flash4_*.cpp tests/gpu/flash4_*.cu; do
  "${NV[@]}" -c "$f" -o $B/t/$(basename "$f").o >>"$LOG" 2>&1 &
  pids+=($!)
done
"${NV[@]}" bench/flash4_bench.cu $B/flash4/libflash4.a -lgomp -o $B/bin/flash4-bench >>"$LOG" 2>&1 &
pids+=($!)
for p in "${pids[@]}"; do
  wait "$p" || { say "a test / bench compile failed"; grep -B2 -A8 -m5 "error" "$LOG"; exit 1; }
done
"${NV[@]}" $B/t/*.o $B/flash4/libflash4.a -lgtest -lgtest_main -lgomp -lpthread -o $B/flash4_gpu_tests >>"$LOG" 2>&1 ||
  { say "test link failed"; tail -20 "$LOG"; exit 1; }
say "tests and bench built"
O=$B/flash4/CMakeFiles/flash4.dir/src/hopper
for obj in forward_sm90_hdim64 forward_sm90_hdim128 backward_sm90_hdim64 backward_sm90_hdim128; do
  cuobjdump -sass "$O/$obj.cu.o" > "$OUT/sass_$obj.txt" 2>&1
  res=$(cuobjdump -res-usage "$O/$obj.cu.o" 2>&1 | grep -o "REG:[0-9]* STACK:[0-9]*" | sort | uniq -c | tr '\n' ' ')
  note "$obj SASS (both dtypes): HGMMA $(grep -c HGMMA "$OUT/sass_$obj.txt"), UTMALDG $(grep -c UTMALDG "$OUT/sass_$obj.txt"), LDL/STL $(grep -cE 'LDL|STL' "$OUT/sass_$obj.txt") (expect 0), resources: $res"
done
cat "$OUT"/sass_*.txt | gzip > "$OUT/sass.txt.gz"
rm -f "$OUT"/sass_*.txt
T=$B/flash4_gpu_tests

# ---- 2. smoke -------------------------------------------------------------------------
FWD0='Varlen/Flash4Hopper.*/0_*'
BWD0='Varlen/Flash4HopperVarlenBackward.*/0_*'
say "smoke: varlen forward case 0 and backward case 0 (docs 1, 17, 64..300, Hq 4 Hkv 2)"
FLASH4_LOG=1 timeout "$(budget 90)" $T --gtest_filter="$FWD0:$BWD0" > "$OUT/smoke.txt" 2>&1
rc=$?
grep -E "errors|flash4:|OK \]|FAILED|Failure|Expected|Which is" "$OUT/smoke.txt" | head -30 | tee -a "$LOG"
if [ $rc -ne 0 ]; then
  note "SMOKE FAILED (rc $rc, 124 = timeout: a hang, likely an mbarrier phase / named barrier); memcheck of both:"
  timeout "$(budget 200)" compute-sanitizer --tool memcheck $T --gtest_filter="$FWD0:$BWD0" 2>&1 | tail -80 |
    tee "$OUT/memcheck.txt" | tail -30
  finish
  exit 1
fi
note "smoke passed"

# ---- 3. tests (new), 4. memcheck, 5. bench, 3b. tests (existing, window), 6. racecheck ----
# The stages run most-needed first, so a spent budget cuts the least-needed ones.
# run_suite NAME FILTER LIMIT: one gtest run, its pass / fail counts and time noted; on a
# timeout (rc 124) the note says how to rerun the suite alone.
run_suite() {
  local name=$1 filter=$2 limit=$3 t=$(date +%s)
  say "tests: $name ($filter)"
  timeout "$(budget "$limit")" $T --gtest_filter="$filter" > "$OUT/tests_$name.txt" 2>&1
  local rc=$?
  grep -E -A4 "Failure$" "$OUT/tests_$name.txt" | head -24 | tee -a "$LOG"
  note "$name: rc $rc in $(($(date +%s) - t)) s ($(grep -E '^\[  PASSED|^\[  FAILED' "$OUT/tests_$name.txt" | head -2 | tr '\n' ' ')$(grep -c '^\[       OK' "$OUT/tests_$name.txt") ok)"
  [ $rc -eq 124 ] && note "  $name timed out: rerun alone with $T --gtest_filter='$filter'"
}
run_suite varlen_forward 'Varlen/Flash4Hopper.*' 90
run_suite varlen_backward 'Varlen/Flash4HopperVarlenBackward.*' 150
run_suite varlen_fused 'Adept/Flash4HopperVarlenFused.*' 60

say "compute-sanitizer memcheck: varlen forward case 0, backward case 0"
t=$(date +%s)
timeout "$(budget 120)" compute-sanitizer --tool memcheck --error-exitcode 9 $T --gtest_filter="$FWD0:$BWD0" \
  > "$OUT/memcheck.txt" 2>&1
note "memcheck rc $? in $(($(date +%s) - t)) s ($(grep -E 'ERROR SUMMARY' "$OUT/memcheck.txt" | tail -1))"

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
  cat "$OUT"/tests_varlen_*.txt "$OUT"/tests_window.txt 2>/dev/null | grep -E "^\[ errors \]" | grep "$2" |
    awk -v f="$1" '{for (i = 1; i < NF; i++) if ($i == f) {print $(i + 1); break}}' | sort -g | tail -1
}
note "varlen + window worst: bf16 out $(worst out bf16) dq $(worst dq bf16) dk $(worst dk bf16) dv $(worst dv bf16); fp16 out $(worst out fp16) dq $(worst dq fp16) dk $(worst dk fp16) dv $(worst dv fp16)"

if [ $((BUDGET - ($(date +%s) - START))) -ge 60 ]; then
  say "compute-sanitizer racecheck: varlen backward case 0 (shared-memory zeroing and barriers)"
  timeout "$(budget 150)" compute-sanitizer --tool racecheck --error-exitcode 9 $T --gtest_filter="$BWD0" \
    > "$OUT/racecheck.txt" 2>&1
  note "racecheck rc $? ($(grep -E 'RACECHECK SUMMARY|ERROR SUMMARY' "$OUT/racecheck.txt" | tail -1))"
else
  note "racecheck skipped (budget spent); alone: compute-sanitizer --tool racecheck $T --gtest_filter='$BWD0'"
fi

finish
