#!/usr/bin/env bash
# The GPU check, for the device machine (run from the repository root):
#   build    configure (cmake -G Ninja) and build flash4, gpu_tests and flash4-bench in
#            build-gpu with -j16, and link build-gpu/libflash4.so for bench/peers.py
#   test     ctest -L gpu (the whole gpu suite; flash4's cases print their errors)
#   sanitize compute-sanitizer memcheck on a few small flash4 cases
#   bench    flash4-bench (all d, S, causal; FA4 switches A/B on d = 128)
#   peers    bench/peers.py: flash4 beside torch SDPA cuDNN and FLASH_ATTENTION
#   inspect  SASS of the d = 128 kernels (sass.txt) and an ncu profile of one forward and
#            one backward launch (ncu.txt)
# Stages run in the order given (default: all of them). Logs go to $OUT (or ./gpu-check-out):
# gpu_check.log (everything), bench.csv, peers.txt. Missing build dependencies (headers,
# libs, pkg-config) come from .device-carry/*.tar when carried along.
#
#   scripts/gpu_check.sh [build] [test] [sanitize] [bench] [peers] [--quick] [--sm90-only]
set -uo pipefail

OUT=${OUT:-$PWD/gpu-check-out}
mkdir -p "$OUT"
LOG=$OUT/gpu_check.log
BUILD=${BUILD:-build-gpu}
QUICK=""
GENCODE=""
stages=()
for arg in "$@"; do
  case $arg in
    --quick) QUICK=--quick ;;
    --sm90-only) GENCODE="-gencode=arch=compute_90a,code=sm_90a" ;;
    build | test | sanitize | bench | peers | inspect) stages+=("$arg") ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done
((${#stages[@]})) || stages=(build test sanitize bench peers)

say() { echo "== $(date +%T) $*" | tee -a "$LOG"; }
status=0
fail() { say "FAILED: $*"; status=1; }

say "gpu_check: ${stages[*]} $QUICK on $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null)"

stage_build() {
  for t in .device-carry/*.tar; do
    [ -f "$t" ] && tar xf "$t" -C / --skip-old-files 2>>"$LOG" && say "unpacked $t"
  done
  local gencode_flag=()
  [ -n "$GENCODE" ] && gencode_flag=(-DADEPT_CUDA_GENCODE="$GENCODE")
  say "configure"
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release "${gencode_flag[@]}" >>"$LOG" 2>&1 || { fail configure; return; }
  say "build flash4 (timed)"
  local t0=$(date +%s%N)
  ninja -C "$BUILD" -j16 flash4 >>"$LOG" 2>&1 || { fail "build flash4"; return; }
  say "flash4 built in $(( ($(date +%s%N) - t0) / 1000000 )) ms (-j16)"
  ninja -C "$BUILD" -j16 gpu_tests flash4-bench >>"$LOG" 2>&1 || {
    # The gpu suite and the bench also link adept; if that does not build right now,
    # build flash4's own GPU tests and the bench against libflash4 alone.
    say "gpu_tests / flash4-bench did not build with adept; building flash4-only binaries"
    local nv=(nvcc -std=c++20 -O2 --expt-relaxed-constexpr ${GENCODE:--gencode=arch=compute_90a,code=sm_90a}
              -Itests -Iflash4/include -Iflash4/src)
    "${nv[@]}" tests/gpu/flash4_*.cpp tests/gpu/flash4_*.cu "$BUILD/flash4/libflash4.a" -lgtest -lgtest_main -lgomp \
      -lpthread -o "$BUILD/flash4_gpu_tests" >>"$LOG" 2>&1 || fail "flash4-only gpu tests"
    mkdir -p "$BUILD/bin"
    "${nv[@]}" bench/flash4_bench.cu "$BUILD/flash4/libflash4.a" -lgomp -o "$BUILD/bin/flash4-bench" >>"$LOG" 2>&1 ||
      fail "flash4-only bench"
  }
  g++ -shared -o "$BUILD/libflash4.so" -Wl,--whole-archive "$BUILD/flash4/libflash4.a" -Wl,--no-whole-archive \
    -L/usr/local/cuda/lib64 -lcudart_static -ldl -lrt -lpthread -lgomp >>"$LOG" 2>&1 || fail "libflash4.so"
}

gpu_test_binary() {
  if [ -x "$BUILD/tests/gpu_tests" ]; then echo "$BUILD/tests/gpu_tests"; else echo "$BUILD/flash4_gpu_tests"; fi
}

stage_test() {
  say "tests"
  if [ -x "$BUILD/tests/gpu_tests" ]; then
    (cd "$BUILD" && ctest -L gpu -V --timeout 540) >>"$LOG" 2>&1 || fail "ctest -L gpu"
  else
    "$BUILD/flash4_gpu_tests" >>"$LOG" 2>&1 || fail "flash4 gpu tests"
  fi
  grep -E "^\[  (PASSED|FAILED) |tests? ran|^\[ *FAILED *\]|\[ exp2" "$LOG" | tail -40
  if [ -n "${REPLAY_SEEDS:-}" ] && [ -x "$BUILD/tests/gpu_tests" ]; then
    # Replays given seeds of the decoder test that runs attention through flash4, to tell
    # input-dependent failures from run-to-run ones.
    for seed in $REPLAY_SEEDS; do
      say "replay TrainDecoderCpuVsCuda.Flash4Cuda* with ADEPT_TEST_SEED=$seed (3 repeats)"
      ADEPT_TEST_SEED=$seed "$BUILD/tests/gpu_tests" --gtest_filter='TrainDecoderCpuVsCuda.Flash4Cuda*' \
        --gtest_repeat=3 2>&1 | grep -E "^\[ +(OK|FAILED) +\]|actual:" | head -12 | tee -a "$LOG"
    done
  fi
}

stage_sanitize() {
  say "compute-sanitizer memcheck (small flash4 cases)"
  local filter='HeadDims/Flash4Portable.*/0_*:HeadDims/Flash4Portable.*/13_*:Features/Flash4Portable.*varlen*'
  filter+=':Features/Flash4Portable.*paged*:Features/Flash4Portable.*deterministic*:Flash4PortableUnsupported.*'
  compute-sanitizer --tool memcheck --error-exitcode 9 "$(gpu_test_binary)" --gtest_filter="$filter" >>"$LOG" 2>&1 ||
    fail "compute-sanitizer memcheck"
  say "compute-sanitizer racecheck (shared-memory hazards, two small cases)"
  compute-sanitizer --tool racecheck --error-exitcode 9 "$(gpu_test_binary)" \
    --gtest_filter='HeadDims/Flash4Portable.*/0_*:Features/Flash4Portable.*/*deterministic*' >>"$LOG" 2>&1 ||
    fail "compute-sanitizer racecheck"
  grep -E "ERROR SUMMARY|RACECHECK SUMMARY|^\[  (PASSED|FAILED) " "$LOG" | tail -6
}

stage_bench() {
  say "flash4-bench"
  "$BUILD/bin/flash4-bench" $QUICK --tuning --csv "$OUT/bench.csv" 2>&1 | tee -a "$LOG" || fail flash4-bench
  say "forward pipeline A/B: one stage (FA2's buffers) vs two (double-buffered K / V)"
  for d in 64 128 256; do
    for stages in 1 2; do
      FLASH4_PORTABLE_FWD_STAGES=$stages "$BUILD/bin/flash4-bench" --d $d --seqlen 4096 2>&1 | tail -2 |
        sed "s/^/stages=$stages /" | tee -a "$LOG"
    done
  done
}

stage_peers() {
  say "peers"
  PYTHONUNBUFFERED=1 python3 bench/peers.py --lib "$BUILD/libflash4.so" $QUICK 2>&1 | tee "$OUT/peers.txt" >>"$LOG" ||
    fail peers.py
  cat "$OUT/peers.txt"
}

stage_inspect() {
  say "inspect: SASS and ncu (d = 128, S = 4096, non-causal)"
  for f in forward_hdim128 backward_hdim128; do
    cuobjdump -sass "$BUILD/flash4/CMakeFiles/flash4.dir/src/cuda/$f.cu.o" |
      awk '/Function : .*nv_bfloat16/{p=1} /Function : .*6__half/{p=0} p' >>"$OUT/sass.txt" 2>&1
  done
  for k in attention_forward_kernel attention_backward_kernel; do
    ncu -k "regex:$k" --launch-skip 2 --launch-count 1 --section SpeedOfLight --section Occupancy \
      --section LaunchStats --section WarpStateStats --section SchedulerStats --section ComputeWorkloadAnalysis \
      --section MemoryWorkloadAnalysis "$BUILD/bin/flash4-bench" --d 128 --seqlen 4096 --causal 0 --repeats 3 \
      >>"$OUT/ncu.txt" 2>&1 || fail "ncu $k"
  done
  local stalls=""
  for r in barrier long_scoreboard short_scoreboard mio_throttle math_pipe_throttle wait not_selected selected \
    dispatch_stall lg_throttle no_instruction branch_resolving tex_throttle; do
    stalls+="smsp__average_warps_issue_stalled_${r}_per_issue_active.ratio,"
  done
  for k in attention_forward_kernel attention_backward_kernel; do
    ncu -k "regex:$k" --launch-skip 2 --launch-count 1 --metrics "${stalls%,}" "$BUILD/bin/flash4-bench" --d 128 \
      --seqlen 4096 --causal 0 --repeats 3 >>"$OUT/ncu.txt" 2>&1 || fail "ncu stalls $k"
  done
  grep -E "attention_.*_kernel<|Duration|Registers Per|Achieved Occupancy|Compute \(SM\) Throughput|Issue Slots Busy|No Eligible|stalled" "$OUT/ncu.txt" | head -60
}

for s in "${stages[@]}"; do "stage_$s"; done
say "done, status $status"
exit $status
