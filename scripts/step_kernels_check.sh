#!/usr/bin/env bash
# Device check of the training step's memory-bound kernels after their rewrite (RoPE,
# RMSNorm backward and its weight-gradient reduce, the cross-entropy over bf16 logits, AdamW,
# flash4's Hopper backward rows preprocess) and of what they did to the step, in one call on
# an H100 / H200 from the repository root, carrying .device-carry:
#   build    build-loss for sm_90a: train-bench and gpu_tests (-j$(nproc))
#   tests    gpu_tests: the training kernels, decoder, engine-parity and data-parallel
#            suites, the device arena
#   rowtests the Hopper backward suites that read the rows preprocess (dense, varlen,
#            deterministic, sink: dsink rows)
#   steps    scripts/train_loss_check.sh steps: every variant's per-step loss (must learn as
#            the 2026-12-01 run did: 2 x 4096 -> ~7.71 after 13 steps)
#   peers    bench/train_peers.py --batch 2 --seq 4096: adept vs HF eager / torch.compile
#   optin    train-bench 2 x 4096 with FLASH4_HOPPER_FWD_WARPGROUPS=2 and =3 against the default
#            (not among the default stages: name it)
#   profile  ncu, one no-graphs step of train-bench 2 x 4096: every kernel's duration summed
#            by name (kernels.md; ncu locks the clocks to base, so times are ~1.3x a real
#            step's for compute-bound kernels)
#   check    compute-sanitizer memcheck of a 1 x 4096 step
# Logs go to $OUT (or ./step-kernels-out): log, tests_*.txt, steps.md, train_peers.txt,
# kernels.md, memcheck.txt. Keeps within STEP_CHECK_SECONDS (default 540).
#
#   bash scripts/step_kernels_check.sh [build] [tests] [steps] [peers] [optin] [profile] [rowtests] [check]
set -uo pipefail

OUT=${OUT:-$PWD/step-kernels-out}
mkdir -p "$OUT"
LOG=$OUT/log
BUILD=build-loss
stages=("$@")
((${#stages[@]})) || stages=(build tests steps peers profile rowtests check)

START=$(date +%s)
BUDGET=${STEP_CHECK_SECONDS:-540}
# shellcheck source=scripts/lib/device_check_lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/device_check_lib.sh"

stage_build() { build_sm90 train-bench gpu_tests; }

# suite NAME FILTER LIMIT: gpu_tests on FILTER, its summary and first failures in the log.
suite() {
  say "tests: $1 ($2)"
  timeout "$(left "$3")" "$BUILD/tests/gpu_tests" --gtest_filter="$2" >"$OUT/tests_$1.txt" 2>&1 || fail "tests $1 (rc $?)"
  grep -E -A6 "Failure$" "$OUT/tests_$1.txt" | head -30 | tee -a "$LOG"
  grep -E "^\[  (PASSED|FAILED)  \]|tests? ran" "$OUT/tests_$1.txt" | tee -a "$LOG"
}

stage_tests() {
  suite train 'TrainKernels*:TrainCrossEntropy*:TrainDecoder*:TrainEngineParity*:DeviceArena*:*DataParallel*' 200
}

stage_rowtests() {
  suite hopper_rows 'Covered/Flash4HopperBackward*:Varlen/Flash4HopperVarlenBackward*:Deterministic/Flash4HopperDeterministicBackwardBulkDq*:Sink/Flash4HopperBackward*' 120
}

stage_steps() { OUT=$OUT/loss LOSS_CHECK_SECONDS=$(left 90) bash scripts/train_loss_check.sh steps >>"$LOG" 2>&1 || fail steps
  cp "$OUT/loss/steps.md" "$OUT/steps.md" 2>/dev/null
  grep -E "^GEMM|FAILED" "$OUT/loss/loss.log" | tee -a "$LOG"; }

stage_peers() {
  say "train_peers 2 x 4096"
  timeout "$(left 150)" python3 bench/train_peers.py --engine "$BUILD/bin/train-bench" --batch 2 --seq 4096 \
    >"$OUT/train_peers.txt" 2>&1 || fail "train_peers"
  tail -6 "$OUT/train_peers.txt" | tee -a "$LOG"
}

# optin: train-bench 2 x 4096 with each flash4 kernel switch that reaches training (the d 64
# forward's consumer warpgroups forced to two and to three; the backward's per-warpgroup dQ is
# for non-deterministic calls, which adept's training does not make) against the default, same
# process order, tokens/s and the 13-step loss of each.
stage_optin() {
  for variant in default FLASH4_HOPPER_FWD_WARPGROUPS=2 FLASH4_HOPPER_FWD_WARPGROUPS=3; do
    say "optin: train-bench 2 x 4096, $variant"
    local envs=()
    [ "$variant" != default ] && envs=("$variant")
    env "${envs[@]}" timeout "$(left 60)" "$BUILD/bin/train-bench" --batch 2 --seq 4096 \
      >"$OUT/optin_${variant//=/_}.txt" 2>&1 || fail "optin $variant"
    grep -E "^GEMM" "$OUT/optin_${variant//=/_}.txt" | tee -a "$LOG"
  done
}

stage_profile() {
  say "ncu: kernel durations of one no-graphs step"
  timeout "$(left 120)" ncu --metrics gpu__time_duration.sum --csv --print-units base "$BUILD/bin/train-bench" \
    --batch 2 --seq 4096 --steps 1 --warmup 0 --no-graphs >"$OUT/ncu.csv" 2>"$OUT/ncu.err" || fail "ncu"
  python3 - "$OUT/ncu.csv" <<'PY' | tee "$OUT/kernels.md" >>"$LOG"
import collections, csv, re, sys
rows = list(csv.reader(open(sys.argv[1])))
head = next(i for i, r in enumerate(rows) if "Kernel Name" in r)  # train-bench's own lines come first
k, v = rows[head].index("Kernel Name"), rows[head].index("Metric Value")
total = collections.defaultdict(lambda: [0, 0.0])
for r in rows[head + 1:]:
    try:
        ns = float(r[v].replace(",", ""))
    except (IndexError, ValueError):
        continue
    name = re.sub(r"\(.*", "", r[k])[:100]
    total[name][0] += 1
    total[name][1] += ns
print("| ms (base clocks) | calls | us / call | kernel |\n|---|---|---|---|")
for name, (n, ns) in sorted(total.items(), key=lambda x: -x[1][1])[:40]:
    print(f"| {ns / 1e6:.3f} | {n} | {ns / 1e3 / n:.1f} | `{name}` |")
PY
}

stage_check() {
  say "compute-sanitizer memcheck: train-bench 1 x 4096, 2 steps"
  timeout "$(left 150)" compute-sanitizer --tool memcheck --error-exitcode 9 "$BUILD/bin/train-bench" \
    --model llama-3.2-1b --batch 1 --seq 4096 --steps 1 --warmup 1 >"$OUT/memcheck.txt" 2>&1 ||
    fail "memcheck (rc $?)"
  grep -E "ERROR SUMMARY" "$OUT/memcheck.txt" | tee -a "$LOG"
  grep -m 12 -A3 -E "^========= (Uninitialized|Invalid)" "$OUT/memcheck.txt" | tee -a "$LOG"
}

for s in "${stages[@]}"; do "stage_$s"; done
say "done in $(($(date +%s) - START)) s, status $status"
exit $status
