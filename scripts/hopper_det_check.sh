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

OUT=${OUT:-$PWD/hopper-det-out}
mkdir -p "$OUT"
LOG=$OUT/log
B=${BUILD:-build-gpu}
BUDGET=${BUDGET:-360}
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
for obj in backward_sm90_hdim64 backward_sm90_hdim128; do
  cuobjdump -sass "$O/$obj.cu.o" > "$OUT/sass_$obj.txt" 2>&1
  # Per kernel: Lb0 = atomic dQ, Lb1 = deterministic (the template's bool).
  res=$(cuobjdump -res-usage "$O/$obj.cu.o" 2>&1 | awk '/Function .*attention_backward_sm90/ {
          k = ($0 ~ /Lb1E/) ? "det" : "atomic"; t = ($0 ~ /bfloat16/) ? "bf16" : "fp16"; getline;
          match($0, /REG:[0-9]+ STACK:[0-9]+/); printf "%s/%s %s; ", k, t, substr($0, RSTART, RLENGTH)}')
  note "$obj: $res HGMMA $(grep -c HGMMA "$OUT/sass_$obj.txt"), LDL/STL $(grep -cE 'LDL|STL' "$OUT/sass_$obj.txt") (expect 0)"
done
cat "$OUT"/sass_*.txt | gzip > "$OUT/sass.txt.gz"
rm -f "$OUT"/sass_*.txt
T=$B/flash4_gpu_tests

# ---- 2. smoke -------------------------------------------------------------------------
# Case 0: dense d 64 bf16 Sq = Sk = 1000 not causal (8 key blocks per query block); case 12:
# packed documents 1, 17, 64, 129, 300, causal, d 64 (cases: deterministic_cases()).
SMOKE='Deterministic/Flash4HopperDeterministicBackward.ThreeRunsGiveTheSameBits/0_*:Deterministic/Flash4HopperDeterministicBackward.ThreeRunsGiveTheSameBits/12_*'
SMALL='Deterministic/Flash4HopperDeterministicBackward.ThreeRunsGiveTheSameBits/12_*'
say "smoke: deterministic dense case 0 and varlen case 12, three runs each"
FLASH4_LOG=1 timeout "$(budget 60)" $T --gtest_filter="$SMOKE" > "$OUT/smoke.txt" 2>&1
rc=$?
grep -E "errors|flash4:|OK \]|FAILED|Failure|Expected|Which is|differs" "$OUT/smoke.txt" | head -30 | tee -a "$LOG"
if [ $rc -ne 0 ]; then
  note "SMOKE FAILED (rc $rc, 124 = timeout: a hang, likely the dQ order (counts, ticket) or a named barrier); memcheck:"
  timeout "$(budget 150)" compute-sanitizer --tool memcheck $T --gtest_filter="$SMOKE" 2>&1 | tail -80 |
    tee "$OUT/memcheck.txt" | tail -30
  finish
  exit 1
fi
note "smoke passed"

# ---- 3. tests, 4. memcheck / synccheck, 5. bench, 6. racecheck, 7. existing tests --------
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
run_suite deterministic 'Deterministic/Flash4HopperDeterministicBackward.*' 120
run_suite contention 'Flash4HopperDeterministicBackwardContention.*' 60
# The portable suite's determinism / fused-layout tests run on the Hopper kernel now (AUTO).
run_suite fused 'Adept/Flash4HopperVarlenFused.*:Flash4HopperBackwardDispatch.*:Flash4PortableDeterminism.*:Flash4PortableLayouts.*' 90
# worst FIELD DTYPE: the largest value after FIELD over the deterministic tests' error lines.
worst() {
  grep -hE "^\[ errors \].*deterministic" "$OUT"/tests_deterministic.txt "$OUT"/tests_fused.txt 2>/dev/null | grep "$2" |
    awk -v f="$1" '{for (i = 1; i < NF; i++) if ($i == f) {print $(i + 1); break}}' | sort -g | tail -1
}
note "deterministic worst vs float64: bf16 dq $(worst dq bf16) dk $(worst dk bf16) dv $(worst dv bf16); fp16 dq $(worst dq fp16) dk $(worst dk fp16) dv $(worst dv fp16)"
grep -hE "deterministic vs atomic" "$OUT/tests_contention.txt" 2>/dev/null | tee -a "$LOG"

for tool in memcheck synccheck; do
  say "compute-sanitizer $tool: deterministic varlen case 12"
  t=$(date +%s)
  timeout "$(budget 90)" compute-sanitizer --tool $tool --error-exitcode 9 $T --gtest_filter="$SMALL" \
    > "$OUT/$tool.txt" 2>&1
  note "$tool rc $? in $(($(date +%s) - t)) s ($(grep -E 'ERROR SUMMARY' "$OUT/$tool.txt" | tail -1))"
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

if [ $((BUDGET - ($(date +%s) - START))) -ge 45 ]; then
  say "compute-sanitizer racecheck: deterministic varlen case 12"
  timeout "$(budget 120)" compute-sanitizer --tool racecheck --error-exitcode 9 $T --gtest_filter="$SMALL" \
    > "$OUT/racecheck.txt" 2>&1
  note "racecheck rc $? ($(grep -E 'RACECHECK SUMMARY|ERROR SUMMARY' "$OUT/racecheck.txt" | tail -1))"
else
  note "racecheck skipped (budget spent); alone: compute-sanitizer --tool racecheck $T --gtest_filter='$SMALL'"
fi

# The atomic path's kernels are unchanged (same PTX); its host code is not: the existing suites.
if [ $((BUDGET - ($(date +%s) - START))) -ge 30 ]; then
  run_suite atomic 'Covered/Flash4HopperBackward.*:Window/Flash4HopperBackward.*:Varlen/Flash4HopperVarlenBackward.*' 150
else
  note "existing backward suites skipped (budget spent); alone: $T --gtest_filter='Covered/Flash4HopperBackward.*:Window/Flash4HopperBackward.*:Varlen/Flash4HopperVarlenBackward.*'"
fi

finish
