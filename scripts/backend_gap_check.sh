#!/usr/bin/env bash
# The CPU / CUDA gap of `adept train` on one GPU (the device machine: 1x H200), in one
# call from the repository root, carrying .device-carry (gtest sources the image lacks):
#   build  configure build-gap-dev for sm_90a, build gpu_tests and adept (-j$(nproc))
#   tests  the engine-parity GPU tests (tests/gpu/train_engine_parity_test.cpp: the same
#          weights give the same held-out loss and per-tensor gradients at the CLI's
#          shape; 50 steps of train() on both engines, multipliers off and on) and the
#          decoder's 200-step curve
#   cli    scripts/dp_check.sh's cli config for 200 steps (--steps 200, held-out every
#          50) on the cpu and the cuda backend, and the same with head_dim 32 instead of
#          24 (3 query heads, 1 key-value head) to tell a head_dim-24 kernel from the
#          rest; held-out losses side by side (cli.md)
# Logs go to $OUT (or ./backend-gap-out): gap.log (everything), tests.log, cli.md. The
# whole run keeps within GAP_CHECK_SECONDS (default 240).
#
#   scripts/backend_gap_check.sh [build] [tests] [cli]
set -uo pipefail

OUT=${OUT:-$PWD/backend-gap-out}
mkdir -p "$OUT"
LOG=$OUT/gap.log
BUILD=${BUILD:-build-gap-dev}
stages=("$@")
((${#stages[@]})) || stages=(build tests cli)

START=$(date +%s)
BUDGET=${GAP_CHECK_SECONDS:-240}
# shellcheck source=scripts/lib/device_check_lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/device_check_lib.sh"

say "backend_gap_check: ${stages[*]} on $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)"

stage_build() {
  [ -f .device-carry/deps.tar ] && tar xf .device-carry/deps.tar -C / --skip-old-files 2>>"$LOG" && say "unpacked deps.tar"
  say "configure $BUILD (sm_90a)"
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DADEPT_CUDA_GENCODE="-gencode=arch=compute_90a,code=sm_90a" \
    >>"$LOG" 2>&1 || { fail configure; return; }
  local t0=$(date +%s)
  ninja -C "$BUILD" -j"$(nproc)" gpu_tests adept >>"$LOG" 2>&1 || { fail build; grep -E "error" "$LOG" | head -20; return; }
  say "built in $(($(date +%s) - t0)) s"
}

stage_tests() {
  say "engine-parity GPU tests"
  timeout "$(left 150)" "$BUILD/tests/gpu_tests" \
    --gtest_filter='TrainEngineParity.*:TrainDecoderCpuVsCuda.TwoHundredStepsFollowTheCpuLossCurve' 2>&1 |
    tee "$OUT/tests.log" >>"$LOG" || fail "engine-parity GPU tests"
  grep -E "^\[ +(OK|FAILED|SKIPPED) +\]|\[ info \]|Failure|Expected|actual|Which is|^  " "$OUT/tests.log" | head -150
}

stage_cli() {
  local CLI=$OUT/cli
  rm -rf "$CLI" && mkdir -p "$CLI"
  # scripts/dp_check.sh's cli.toml, backend from the command line, evaluated every 50.
  cat >"$CLI/cli.toml" <<'TOML'
[data]
general_split = "blocks"
[train]
backend = "cuda"
steps = 600
batch_size = 8
eval_every = 50
eval_batches = 4
checkpoint_every = 0
TOML
  { cat "$CLI/cli.toml"; printf '[model]\nnum_attention_heads = 3\nnum_key_value_heads = 1\n'; } >"$CLI/hd32.toml"
  local variant backend
  for variant in cli hd32; do
    for backend in cuda cpu; do
      say "adept train $variant.toml --backend $backend --steps 200"
      OMP_NUM_THREADS=$(nproc) CUDA_VISIBLE_DEVICES=0 timeout "$(left 120)" "$BUILD/bin/adept" train "$CLI/$variant.toml" \
        --backend "$backend" --steps 200 --out "$CLI/$variant-$backend" --quiet >"$CLI/$variant-$backend.log" 2>&1 ||
        fail "adept train $variant on $backend"
    done
  done
  python3 - "$CLI" <<'PY' | tee "$OUT/cli.md" | tee -a "$LOG"
import json, os, sys
cli = sys.argv[1]
def series(run, event, field):
    """{step: field} over run's metrics.jsonl lines of that event ({} without the file)."""
    path = os.path.join(cli, run, "metrics.jsonl")
    out = {}
    if os.path.exists(path):
        for line in open(path):
            j = json.loads(line)
            if j.get("event") == event:
                out[j["step"]] = j[field]
    return out
def evals(run):
    return series(run, "eval", "heldout_loss")
def losses(run):
    return series(run, "step", "loss")
for variant, what in (("cli", "head_dim 24 (dp_check's cli config)"), ("hd32", "head_dim 32 (3 q heads, 1 kv head)")):
    c, g = evals(f"{variant}-cpu"), evals(f"{variant}-cuda")
    print(f"held-out loss, {what}, 200 steps:")
    print("| step | cpu | cuda | cuda / cpu - 1 |")
    print("|---|---|---|---|")
    for s in sorted(set(c) | set(g)):
        cs, gs = c.get(s), g.get(s)
        rel = f"{gs / cs - 1:+.1%}" if cs and gs else "-"
        print(f"| {s} | {cs if cs is None else f'{cs:.5f}'} | {gs if gs is None else f'{gs:.5f}'} | {rel} |")
    lc, lg = losses(f"{variant}-cpu"), losses(f"{variant}-cuda")
    print("training loss (cpu / cuda) at steps " +
          ", ".join(f"{s}: {lc[s]:.4f} / {lg[s]:.4f}" for s in (0, 1, 5, 10, 20, 50, 100, 199) if s in lc and s in lg))
    print()
PY
}

for s in "${stages[@]}"; do "stage_$s"; done
say "done in $(($(date +%s) - START)) s, status $status"
exit $status
