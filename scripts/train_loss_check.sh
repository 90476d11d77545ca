#!/usr/bin/env bash
# Why does train-bench's 13-step loss on the Llama-3.2-1B shape differ between runs of the
# same binary (bench/RESULTS.md, "Open: the loss after 13 steps")? One call on one H100 /
# H200 from the repository root, carrying .device-carry:
#   build  configure build-loss for sm_90a, build train-bench (-j$(nproc))
#   steps  train-bench --log-steps (every step's loss on its batch, gradient norm before
#          clipping, skip flag) at B x S = 2 x 4096, 8 x 1024 and 1 x 4096, attention by the
#          default dispatch (Hopper) and with FLASH4_BACKEND=portable, graphs on; then
#          2 x 4096 without CUDA graphs and with the materialised-scores fallback attention
#   check  compute-sanitizer initcheck, then memcheck, of two steps at 1 x 4096 (the
#          1B shape: a read of memory no one wrote, or an access out of bounds, at the size
#          the tiny-model tests do not reach)
# Logs go to $OUT (or ./train-loss-out): loss.log (everything), steps/*.txt, steps.md (the
# per-step table of each variant), initcheck.txt, memcheck.txt. Keeps within
# LOSS_CHECK_SECONDS (default 300).
#
#   scripts/train_loss_check.sh [build] [steps] [check]
set -uo pipefail

OUT=${OUT:-$PWD/train-loss-out}
mkdir -p "$OUT/steps"
LOG=$OUT/loss.log
BUILD=${BUILD:-build-loss}
stages=("$@")
((${#stages[@]})) || stages=(build steps check)

START=$(date +%s)
BUDGET=${LOSS_CHECK_SECONDS:-300}
# shellcheck source=scripts/lib/device_check_lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/device_check_lib.sh"

stage_build() { build_sm90 train-bench; }

# variant NAME ENV ARGS...: one train-bench run, its per-step lines in steps/NAME.txt.
variant() {
  local name=$1 env=$2
  shift 2
  say "$name: ${env:-default} train-bench $*"
  env ${env:+$env} timeout "$(left 60)" "$BUILD/bin/train-bench" --model llama-3.2-1b --steps 10 --warmup 3 \
    --log-steps "$@" >"$OUT/steps/$name.txt" 2>&1 || fail "$name"
  grep -E "^step |loss .* -> " "$OUT/steps/$name.txt" | tail -3 | tee -a "$LOG"
}

stage_steps() {
  variant hopper-2x4096 "" --batch 2 --seq 4096
  variant portable-2x4096 FLASH4_BACKEND=portable --batch 2 --seq 4096
  variant hopper-8x1024 "" --batch 8 --seq 1024
  variant portable-8x1024 FLASH4_BACKEND=portable --batch 8 --seq 1024
  variant hopper-1x4096 "" --batch 1 --seq 4096
  variant portable-1x4096 FLASH4_BACKEND=portable --batch 1 --seq 4096
  variant eager-2x4096 "" --batch 2 --seq 4096 --no-graphs
  variant fallback-2x4096 "" --batch 2 --seq 4096 --attention fallback
  python3 - "$OUT/steps" <<'PY' | tee "$OUT/steps.md" >>"$LOG"
import os, re, sys
d = sys.argv[1]
runs = sorted(f[:-4] for f in os.listdir(d) if f.endswith(".txt"))
pat = re.compile(r"^step (\d+) \(batch \d+\): loss ([0-9.naninf-]+), grad_norm ([0-9.e+naninf-]+)(, skipped)?")
table = {}
for r in runs:
    for line in open(os.path.join(d, r + ".txt")):
        m = pat.match(line)
        if m:
            table.setdefault(int(m.group(1)), {})[r] = f"{float(m.group(2)):.3f} / {float(m.group(3)):.3g}" + (" S" if m.group(4) else "")
print("loss / grad_norm per step (S: skipped)\n")
print("| step | " + " | ".join(runs) + " |")
print("|---" * (len(runs) + 1) + "|")
for s in sorted(table):
    print(f"| {s} | " + " | ".join(table[s].get(r, "-") for r in runs) + " |")
PY
  cat "$OUT/steps.md"
}

stage_check() {
  for tool in initcheck memcheck; do
    say "compute-sanitizer $tool: train-bench 1 x 4096, 2 steps"
    timeout "$(left 150)" compute-sanitizer --tool "$tool" --error-exitcode 9 "$BUILD/bin/train-bench" \
      --model llama-3.2-1b --batch 1 --seq 4096 --steps 1 --warmup 1 --log-steps >"$OUT/$tool.txt" 2>&1 ||
      fail "compute-sanitizer $tool (rc $?)"
    grep -E "ERROR SUMMARY" "$OUT/$tool.txt" | tee -a "$LOG"
    grep -m 12 -A3 -E "^========= (Uninitialized|Invalid)" "$OUT/$tool.txt" | tee -a "$LOG"
  done
}

for s in "${stages[@]}"; do "stage_$s"; done
say "done in $(($(date +%s) - START)) s, status $status"
exit $status
