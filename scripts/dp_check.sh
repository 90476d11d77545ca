#!/usr/bin/env bash
# Issue 10's check on a machine with two (or more) GPUs, in one call from the repository
# root (the device machine: 2x H200):
#   deps   unpack .device-carry/*.tar (build dependencies the image lacks); find NCCL:
#          the CUDA toolkit, the nvidia-nccl-cu1x wheel (site-packages/nvidia/nccl), or
#          only a libnccl.so.2 plus the header carried in .device-carry/nccl-header.tar
#   build  configure build-dp for sm_90a and build adept_tests, gpu_tests, train-bench,
#          adept (-j32)
#   cpu    the dist CPU tests (shard plan, loader, launch environment, rendezvous, the
#          training loop's data-parallel checks)
#   dp     the 2-GPU tests, TrainDataParallel.*: the 200-step loss curve vs one GPU
#          (ZeRO-1, CUDA graphs), the held-out loss and importance gradient of the
#          engine, a 2-GPU checkpoint resumed on 1 GPU and a 1-GPU one on 2 with ZeRO-2,
#          ZeRO-1 memory, a dead rank ends the job
#   cli    `adept train` on 1 GPU and under 2 processes (ZeRO-1, ZeRO-2): the training
#          losses of the first 30 steps agree step by step, the held-out losses at step 0
#          (later ones loosely: chaotic growth, see the check); a 2-process run killed
#          after a checkpoint resumes on 1 GPU; `adept train --method adept` on 1 and 2
#          GPUs (tables in cli.md)
#   bench  bench/train_dp_bench.sh: Llama-3.2-1B shape, S 4096, one GPU vs two (ZeRO-1
#          and ZeRO-2; DP_BENCH_VARIANTS="NCCL_MAX_CTAS=4 ..." adds ZeRO-1 rows under those
#          settings, to A/B the communication's overlap)
#   gpu    the rest of the gpu suite (the single-GPU tests must not change)
# Stages run in the order given (default: all). Logs go to $OUT (or ./dp-check-out):
# dp_check.log (everything), bench table in bench.md, the CLI's in cli.md. The whole
# run keeps within DP_CHECK_SECONDS (default 570, under the device call's 600 s): each
# test / bench stage gets at most the time left, so the logs always come back.
#
#   scripts/dp_check.sh [deps] [build] [cpu] [dp] [cli] [bench] [gpu]
set -uo pipefail

OUT=${OUT:-$PWD/dp-check-out}
mkdir -p "$OUT"
LOG=$OUT/dp_check.log
BUILD=${BUILD:-build-dp}
stages=("$@")
((${#stages[@]})) || stages=(deps build cpu dp cli bench gpu)

START=$(date +%s)
BUDGET=${DP_CHECK_SECONDS:-570}
# shellcheck source=scripts/lib/device_check_lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/device_check_lib.sh"
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
  ninja -C "$BUILD" -j32 adept_tests gpu_tests train-bench adept >>"$LOG" 2>&1 || { fail build; grep -E "error" "$LOG" | head -20; return; }
  say "built in $(( $(date +%s) - t0 )) s"
}

stage_cpu() {
  say "dist CPU tests"
  "$BUILD/tests/adept_tests" --gtest_filter='Dist*:TrainDistributed*' >>"$LOG" 2>&1 || fail "dist CPU tests"
  grep -E "^\[  (PASSED|FAILED) |^\[  FAILED" "$LOG" | tail -5
}

stage_dp() {
  say "2-GPU tests (NCCL_DEBUG=WARN)"
  NCCL_DEBUG=WARN timeout "$(left 240)" "$BUILD/tests/gpu_tests" --gtest_filter='TrainDataParallel.*' 2>&1 | tee "$OUT/dp_tests.log" >>"$LOG" ||
    fail "2-GPU tests"
  grep -E "^\[ +(OK|FAILED|SKIPPED) +\]|\[ info \]|Failure|Expected|actual|Which is" "$OUT/dp_tests.log" | head -80
}

# Two ranks of `adept ARGS...` in the background (torchrun-style variables), logs
# $CLI/<name>.rank<r>.log; cli_wait waits for them (non-zero if either failed).
cli_two() {
  local name=$1 port=$((29500 + RANDOM % 1000)) r
  shift
  CLI_PIDS=()
  for r in 0 1; do
    RANK=$r WORLD_SIZE=2 LOCAL_RANK=$r MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
      timeout "$(left 120)" "$BUILD/bin/adept" "$@" >"$CLI/$name.rank$r.log" 2>&1 &
    CLI_PIDS+=($!)
  done
}
cli_wait() {
  local bad=0 p
  for p in "${CLI_PIDS[@]}"; do wait "$p" || bad=1; done
  return $bad
}
cli_one() {
  local name=$1
  shift
  CUDA_VISIBLE_DEVICES=0 timeout "$(left 120)" "$BUILD/bin/adept" "$@" >"$CLI/$name.log" 2>&1
}

stage_cli() {
  say "adept train: 1 GPU vs 2 processes (ZeRO-1, ZeRO-2), a 2-GPU checkpoint resumed on 1 GPU, --method adept"
  CLI=$OUT/cli
  rm -rf "$CLI" && mkdir -p "$CLI"
  local cfg=$CLI/cli.toml ck=$CLI/checkpoints.toml
  cli_toml "$cfg" 200
  sed 's/^checkpoint_every = 0/checkpoint_every = 20/' "$cfg" >"$ck"  # the same training (checkpoint key)
  cli_one one train "$cfg" --out "$CLI/one" --quiet || fail "cli: adept train on 1 GPU"
  # A control: one GPU again, its cosine schedule over 601 steps instead of 600 (a
  # learning rate ~1e-8 apart in the first steps): how far chaotic training carries a
  # perturbation far below bf16's by the later evaluations.
  cli_one perturbed train "$cfg" --steps 601 --out "$CLI/perturbed" --quiet || fail "cli: adept train on 1 GPU (601 steps)"
  cli_two zero1 train "$cfg" --out "$CLI/zero1" --quiet
  cli_wait || fail "cli: adept train on 2 GPUs (ZeRO-1)"
  cli_two zero2 train "$cfg" --out "$CLI/zero2" --quiet --zero-stage 2
  cli_wait || fail "cli: adept train on 2 GPUs (ZeRO-2)"
  # Killed on 2 GPUs once a checkpoint exists, resumed on 1.
  cli_two killed train "$ck" --out "$CLI/resumed" --quiet
  local i
  for i in $(seq 1200); do [ -f "$CLI/resumed/checkpoints/latest.json" ] && break; sleep 0.025; done
  kill "${CLI_PIDS[@]}" 2>/dev/null
  cli_wait
  cli_one resumed train "$ck" --out "$CLI/resumed" --quiet || fail "cli: resume on 1 GPU"
  grep -h "^resume" "$CLI/resumed.log" | tee -a "$LOG" || fail "cli: the 2-process run ended before it was killed (no resume)"
  # A method of the study on the 1-GPU model: probe, expansion, importance re-estimated
  # every 25 steps (the engine's gradient, shared out over the ranks).
  local method=(train "$cfg" --method adept --base "$CLI/one/model" --data embedded:data/tiny/corpus.txt
    --general embedded:data/tiny/corpus.txt --steps 60 --quiet)
  cli_one adept-one "${method[@]}" --out "$CLI/adept-one" || fail "cli: adept train --method adept on 1 GPU"
  cli_two adept-two "${method[@]}" --out "$CLI/adept-two"
  cli_wait || fail "cli: adept train --method adept on 2 GPUs"
  grep -h "error" "$CLI"/*.log | head -10
  python3 - "$CLI" <<'PY' | tee "$OUT/cli.md" | tee -a "$LOG" || fail "cli: loss curves"
import json, os, sys
cli = sys.argv[1]
def series(run, event, key):
    path = os.path.join(cli, run, "metrics.jsonl")
    if not os.path.exists(path):
        return {}
    out = {}
    for line in open(path):
        j = json.loads(line)
        if j.get("event") == event:
            out[j["step"]] = j[key]
    return out
evals = lambda run: series(run, "eval", "heldout_loss")
losses = lambda run: series(run, "step", "loss")
bad = []
# The first EARLY steps' training losses (global: summed over the ranks), step by step:
# the same rows, learning rates and updates as one GPU, up to bf16 rounding (the ranks'
# GEMMs run 4 rows where one GPU runs 8) and the order of the gradient sums, before
# training has amplified either (TrainDataParallel.* compare 200 steps of a model that
# does not amplify them).
EARLY = 30
def early(reference, runs):
    ref = losses(reference)
    print(f"training loss, steps 0..{EARLY - 1} (relative gap to {reference}):")
    print("| run | max gap | mean gap | step of the max |")
    print("|---|---|---|---|")
    for run in runs:
        s = losses(run)
        if any(k not in s or k not in ref for k in range(EARLY)):
            bad.append(f"{run}: training losses of steps 0..{EARLY - 1} missing")
            continue
        gaps = [abs(s[k] - ref[k]) / ref[k] for k in range(EARLY)]
        worst = max(range(EARLY), key=lambda k: gaps[k])
        mean = sum(gaps) / EARLY
        print(f"| {run} | {gaps[worst]:.1e} | {mean:.1e} | {worst} |")
        if gaps[worst] > 2e-2 or mean > 5e-3:
            bad.append(f"{run}: training loss of steps 0..{EARLY - 1} off by {gaps[worst]:.1e} at step {worst} "
                       f"(mean {mean:.1e}; limits 2e-2, 5e-3)")
# Held-out losses. Step 0: the same weights, evaluated whole on one GPU and shared out
# on two: bf16 noise only (1e-3). Later ones are checked loosely (1e-1: the same
# training, nothing broken), because 600 steps from scratch on an 82k-token corpus
# amplify rounding differences chaotically: on the CPU (fp32) a schedule over 601
# steps instead of 600 (learning rates ~1e-8 apart early on) moved the training loss
# by 2e-8 at step 50, 1e-3 at step 100, and the held-out loss by 1.9% at step 200; on
# the GPUs (2026-11-30) a run that took only its first 20 steps on 2 GPUs, the rest on
# one, ended 5% from the one-GPU run, as far as the 2-GPU runs did. The "perturbed"
# column (one GPU, 601 steps) shows that spread in this run.
def table(reference, runs, later):
    ref = evals(reference)
    print(f"| step | {reference} | " + " | ".join(runs) + " |")
    print("|---|---|" + "---|" * len(runs))
    for step in sorted(ref):
        cells = []
        for run in runs:
            e = evals(run)
            if step not in e:
                cells.append("-")
                continue
            gap = abs(e[step] - ref[step]) / ref[step]
            limit = 1e-3 if step == 0 else later
            if gap > limit:
                bad.append(f"{run} step {step}: {e[step]:.5f} vs {ref[step]:.5f} ({gap:.1e} > {limit:.0e})")
            cells.append(f"{e[step]:.5f} ({gap:.1e})")
        print(f"| {step} | {ref[step]:.5f} | " + " | ".join(cells) + " |")
    if not ref:
        bad.append(f"{reference}: no held-out losses")
# How the gap grows (information, no limit): the relative training-loss gap at some steps.
def growth(reference, runs, steps=(0, 10, 20, 29, 50, 75, 100, 150, 200, 300, 400, 599)):
    ref = losses(reference)
    print(f"\ntraining loss gap to {reference} as training goes on (information):")
    print("| step | " + " | ".join(runs) + " |")
    print("|---|" + "---|" * len(runs))
    for k in steps:
        if k not in ref:
            continue
        cells = [f"{abs(losses(r)[k] - ref[k]) / ref[k]:.1e}" if k in losses(r) else "-" for r in runs]
        print(f"| {k} | " + " | ".join(cells) + " |")
early("one", ["zero1", "zero2", "resumed", "perturbed"])
growth("one", ["zero1", "zero2", "resumed", "perturbed"])
print("\nheld-out loss, adept train (relative gap to one GPU):")
table("one", ["zero1", "zero2", "resumed", "perturbed"], 1e-1)
print("\nheld-out loss, adept train --method adept (60 steps of continual pretraining: no amplification yet):")
table("adept-one", ["adept-two"], 3e-2)
for b in bad:
    print("MISMATCH", b)
sys.exit(1 if bad else 0)
PY
}

stage_bench() {
  say "bench: Llama-3.2-1B shape, S 4096, batch 2 per GPU, 1 GPU vs 2 (ZeRO-1, ZeRO-2)"
  # DP_BENCH_VARIANTS (e.g. "NCCL_MAX_CTAS=4 NCCL_MAX_CTAS=16"): extra ZeRO-1 rows, one per setting.
  OUT=$OUT timeout "$(left 200)" bash bench/train_dp_bench.sh --build "$BUILD" --gpus 2 --zero "1 2" \
    --variants "${DP_BENCH_VARIANTS:-}" --model llama-3.2-1b --batch 2 --seq 4096 --steps 20 --warmup 3 2>&1 |
    tee "$OUT/bench.md" >>"$LOG" || fail bench
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
