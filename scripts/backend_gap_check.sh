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
#          rest; the head_dim-24 run again with train.cuda_graphs = false (eager) and
#          once more with graphs (run-to-run determinism), the cpu run with the lr 1e-6
#          larger (a perturbation below rounding), both at lr 5e-4; held-out and training losses
#          side by side, and the first step where runs part (cli.md)
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
  cli_toml "$CLI/cli.toml" 50
  { cat "$CLI/cli.toml"; printf '[model]\nnum_attention_heads = 3\nnum_key_value_heads = 1\n'; } >"$CLI/hd32.toml"
  # The same run without CUDA graphs (every launch eager), and the graphed run again (is
  # the CUDA backend deterministic run to run?): tells a replay bug from chaotic growth.
  sed 's/^checkpoint_every = 0$/checkpoint_every = 0\ncuda_graphs = false/' "$CLI/cli.toml" >"$CLI/eager.toml"
  # Chaos or a bug: the CPU engine against itself with the lr 1e-6 larger (a perturbation
  # far below bf16 rounding), and both engines at a quarter of the lr (training far from
  # the edge of stability, where rounding-sized differences should stay small).
  sed 's/^steps = 600$/steps = 600\nlr = 5e-4/' "$CLI/cli.toml" >"$CLI/lowlr.toml"
  sed 's/^steps = 600$/steps = 600\nlr = 0.002000002/' "$CLI/cli.toml" >"$CLI/nudged.toml"
  local run config backend
  for run in cli-cuda:cli:cuda cli-cpu:cli:cpu cli-eager:eager:cuda cli-again:cli:cuda cli-nudged:nudged:cpu \
             lowlr-cuda:lowlr:cuda lowlr-cpu:lowlr:cpu hd32-cuda:hd32:cuda hd32-cpu:hd32:cpu; do
    IFS=: read -r run config backend <<<"$run"
    say "adept train $config.toml --backend $backend --steps 200 ($run)"
    OMP_NUM_THREADS=$(nproc) CUDA_VISIBLE_DEVICES=0 timeout "$(left 120)" "$BUILD/bin/adept" train "$CLI/$config.toml" \
      --backend "$backend" --steps 200 --out "$CLI/$run" --quiet >"$CLI/$run.log" 2>&1 ||
      fail "adept train $config.toml on $backend ($run)"
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
def fmt(v):
    return "-" if v is None else f"{v:.5f}"
def table(title, runs, event, field, steps=None):
    cols = [series(r, event, field) for r in runs]
    print(f"{title}:")
    print("| step | " + " | ".join(runs) + " | " + " | ".join(f"{r} / {runs[0]} - 1" for r in runs[1:]) + " |")
    print("|---" * (2 * len(runs)) + "|")
    for s in steps or sorted(set().union(*cols)):
        vals = [c.get(s) for c in cols]
        rel = [f"{v / vals[0] - 1:+.2%}" if v and vals[0] else "-" for v in vals[1:]]
        print(f"| {s} | " + " | ".join(fmt(v) for v in vals) + " | " + " | ".join(rel) + " |")
    print()
def first_apart(a, b, tol):
    """The first step where runs a and b's training losses differ by more than tol (relative)."""
    la, lb = series(a, "step", "loss"), series(b, "step", "loss")
    for s in sorted(set(la) & set(lb)):
        if abs(la[s] / lb[s] - 1) > tol:
            return s
    return None
steps = (0, 1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 125, 150, 175, 199)
h24 = ["cli-cpu", "cli-cuda", "cli-eager", "cli-again", "cli-nudged"]
table("held-out loss, head_dim 24 (dp_check's cli config), 200 steps", h24, "eval", "heldout_loss")
table("training loss, head_dim 24", h24, "step", "loss", steps)
table("held-out loss, head_dim 24, lr 5e-4", ["lowlr-cpu", "lowlr-cuda"], "eval", "heldout_loss")
table("training loss, head_dim 24, lr 5e-4", ["lowlr-cpu", "lowlr-cuda"], "step", "loss", steps)
table("held-out loss, head_dim 32 (3 q heads, 1 kv head), 200 steps", ["hd32-cpu", "hd32-cuda"], "eval", "heldout_loss")
table("training loss, head_dim 32", ["hd32-cpu", "hd32-cuda"], "step", "loss", steps)
for a, b in (("cli-cuda", "cli-cpu"), ("cli-eager", "cli-cpu"), ("cli-again", "cli-cuda"), ("cli-eager", "cli-cuda"),
             ("cli-nudged", "cli-cpu"), ("lowlr-cuda", "lowlr-cpu"), ("hd32-cuda", "hd32-cpu")):
    print(f"first step where {a} and {b} training losses differ by > 1e-3: {first_apart(a, b, 1e-3)}, "
          f"> 1e-2: {first_apart(a, b, 1e-2)}")
PY
}

for s in "${stages[@]}"; do "stage_$s"; done
say "done in $(($(date +%s) - START)) s, status $status"
exit $status
