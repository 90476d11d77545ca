#!/usr/bin/env bash
# Issue 10's check on a machine with two (or more) GPUs, in one call from the repository
# root (the device machine: 2x H200):
#   deps   unpack .device-carry/*.tar (build dependencies the image lacks); find NCCL:
#          the CUDA toolkit, the nvidia-nccl-cu1x wheel (site-packages/nvidia/nccl), or
#          only a libnccl.so.2 plus the header carried in .device-carry/nccl-header.tar
#   build  configure build-dp for sm_90a and build adept_tests, gpu_tests, train-bench (-j32)
#   cpu    the dist CPU tests (shard plan, loader, launch environment, rendezvous)
#   dp     the 2-GPU tests: TrainDataParallel.* (loss curve vs one GPU, ZeRO-1 memory,
#          a dead rank ends the job)
#   bench  bench/train_dp_bench.sh: Llama-3.2-1B shape, S 4096, one GPU vs two
#   gpu    the rest of the gpu suite (the single-GPU tests must not change)
# Stages run in the order given (default: all). Logs go to $OUT (or ./dp-check-out):
# dp_check.log (everything), bench table in bench.md. The whole run keeps within
# DP_CHECK_SECONDS (default 570, under the device call's 600 s): each test / bench stage
# gets at most the time left, so the logs always come back.
#
#   scripts/dp_check.sh [deps] [build] [cpu] [dp] [bench] [gpu]
set -uo pipefail

OUT=${OUT:-$PWD/dp-check-out}
mkdir -p "$OUT"
LOG=$OUT/dp_check.log
BUILD=${BUILD:-build-dp}
stages=("$@")
((${#stages[@]})) || stages=(deps build cpu dp bench gpu)

START=$(date +%s)
BUDGET=${DP_CHECK_SECONDS:-570}
# Seconds left of the budget, capped at $1.
left() {
  local l=$((BUDGET - ($(date +%s) - START)))
  ((l > $1)) && l=$1
  ((l < 5)) && l=5
  echo $l
}
say() { echo "== $(date +%T) $*" | tee -a "$LOG"; }
status=0
fail() { say "FAILED: $*"; status=1; }
NCCL_ARGS=()

say "dp_check: ${stages[*]} on $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | tr '\n' ';')"

stage_deps() {
  for t in .device-carry/deps.tar; do
    [ -f "$t" ] && tar xf "$t" -C / --skip-old-files 2>>"$LOG" && say "unpacked $t"
  done
  say "looking for NCCL"
  local hdr="" lib="" wheel=""
  for d in /usr/local/cuda/include /usr/include /usr/local/include; do
    [ -z "$hdr" ] && [ -f "$d/nccl.h" ] && hdr=$d
  done
  for d in /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/lib/x86_64-linux-gnu /usr/local/lib; do
    [ -z "$lib" ] && ls "$d"/libnccl.so* >/dev/null 2>&1 && lib=$d
  done
  wheel=$(python3 -c "import nvidia.nccl as m; print(list(m.__path__)[0])" 2>/dev/null)
  say "toolkit/system header: ${hdr:-none}; library: ${lib:-none}; wheel: ${wheel:-none}"
  [ -n "$wheel" ] && ls -la "$wheel" "$wheel"/include "$wheel"/lib 2>&1 | tee -a "$LOG" | head -20
  ldconfig -p 2>/dev/null | grep -i nccl | tee -a "$LOG"
  if [ -n "$hdr" ] && [ -n "$lib" ]; then
    say "NCCL from the system / CUDA toolkit (CMake finds it there)"
  elif [ -n "$wheel" ] && [ -f "$wheel/include/nccl.h" ]; then
    say "NCCL from the wheel at $wheel"
    NCCL_ARGS=(-DNCCL_INCLUDE_DIR="$wheel/include" -DNCCL_LIBRARY="$(ls "$wheel"/lib/libnccl.so* | head -1)")
  elif [ -n "$wheel$lib" ] && [ -f .device-carry/nccl-header.tar ]; then
    # A library without its header: the carried nccl.h (NCCL 2.28; the API used here
    # is older than 2.19 and stable).
    mkdir -p /tmp/adept-nccl && tar xf .device-carry/nccl-header.tar -C /tmp/adept-nccl
    local dir=${wheel:+$wheel/lib} so
    dir=${dir:-$lib}
    so=$(ls "$dir"/libnccl.so* 2>/dev/null | head -1)
    say "NCCL library $so with the carried header"
    NCCL_ARGS=(-DNCCL_INCLUDE_DIR=/tmp/adept-nccl/include -DNCCL_LIBRARY="$so")
  else
    fail "no NCCL on this machine: the 2-GPU stages cannot run (install nvidia-nccl-cu13 or carry libnccl)"
  fi
}

stage_build() {
  say "configure $BUILD (sm_90a) ${NCCL_ARGS[*]}"
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DADEPT_CUDA_GENCODE="-gencode=arch=compute_90a,code=sm_90a" \
    "${NCCL_ARGS[@]}" >>"$LOG" 2>&1 || { fail configure; return; }
  grep -E "NCCL" "$LOG" | tail -2
  local t0=$(date +%s)
  ninja -C "$BUILD" -j32 adept_tests gpu_tests train-bench >>"$LOG" 2>&1 || { fail build; grep -E "error" "$LOG" | head -20; return; }
  say "built in $(( $(date +%s) - t0 )) s"
}

stage_cpu() {
  say "dist CPU tests"
  "$BUILD/tests/adept_tests" --gtest_filter='Dist*' >>"$LOG" 2>&1 || fail "dist CPU tests"
  grep -E "^\[  (PASSED|FAILED) |^\[  FAILED" "$LOG" | tail -5
}

stage_dp() {
  say "2-GPU tests (NCCL_DEBUG=WARN)"
  NCCL_DEBUG=WARN timeout "$(left 300)" "$BUILD/tests/gpu_tests" --gtest_filter='TrainDataParallel.*' 2>&1 | tee "$OUT/dp_tests.log" >>"$LOG" ||
    fail "2-GPU tests"
  grep -E "^\[ +(OK|FAILED|SKIPPED) +\]|\[ info \]|Failure|Expected|actual|Which is" "$OUT/dp_tests.log" | head -60
}

stage_bench() {
  say "bench: Llama-3.2-1B shape, S 4096, batch 2 per GPU, 1 GPU vs 2"
  OUT=$OUT timeout "$(left 240)" bash bench/train_dp_bench.sh --build "$BUILD" --gpus 2 --model llama-3.2-1b --batch 2 --seq 4096 \
    --steps 20 --warmup 3 2>&1 | tee "$OUT/bench.md" >>"$LOG" || fail bench
  cat "$OUT/bench.md"
}

stage_gpu() {
  say "the rest of the gpu suite (the single-GPU tests must not change; the 2-GPU ones ran above)"
  timeout "$(left 420)" "$BUILD/tests/gpu_tests" --gtest_filter='-TrainDataParallel.*:DataParallelWorker.*' \
    >"$OUT/gpu_suite.log" 2>&1 || fail "gpu suite"
  grep -E "^\[  (PASSED|FAILED) |tests? ran|^\[ *FAILED *\]" "$OUT/gpu_suite.log" | tail -30
}

for s in "${stages[@]}"; do "stage_$s"; done
say "done, status $status"
exit $status
