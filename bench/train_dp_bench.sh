#!/usr/bin/env bash
# Data-parallel scaling of the CUDA backend (issue 10's goal): train-bench on one GPU,
# then on N GPUs (one process per GPU, torchrun-style environment, NCCL) with ZeRO-1 and
# with ZeRO-2, at the same per-GPU batch; prints the JSON lines, a table and the per-GPU
# throughput ratio (goal: >= 95%), the optimizer state per GPU (goal: 1/N of one GPU's)
# and ZeRO-2's fp32 gradient buffers per GPU against ZeRO-1's; then bench/scaling_model.py on
# the same lines (NCCL bus bandwidth measured by train-bench, predictions for 4 .. 32 GPUs).
#
#   bench/train_dp_bench.sh [--build DIR] [--gpus N] [--zero "1 2"] [--variants "ENV=V ..."]
#                           [train-bench arguments...]
#   e.g. bench/train_dp_bench.sh --build build-dp --gpus 2 --model llama-3.2-1b --batch 2 --seq 4096 --steps 20
#   --variants: extra ZeRO-1 runs, one per NAME=VALUE (e.g. "NCCL_MAX_CTAS=4 NCCL_MAX_CTAS=16":
#   fewer NCCL CTAs take fewer SMs from the backward they overlap), each a row of the table
#   labelled with its setting, so the exposed communication can be A/B'd in one call.
#
# NCCL_NVLS_ENABLE=0 is set by adept itself unless given (NVLink multicast stays off on
# shared machines). Logs of every rank go to ${OUT:-.}/train_dp_bench.zero<z>.rank<r>.log.
set -uo pipefail
BUILD=build
GPUS=2
ZEROS="1 2"
VARIANTS=""
args=()
while (($#)); do
  case $1 in
    --build) BUILD=$2; shift 2 ;;
    --gpus) GPUS=$2; shift 2 ;;
    --zero) ZEROS=$2; shift 2 ;;
    --variants) VARIANTS=$2; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
BENCH=$BUILD/bin/train-bench
OUT=${OUT:-.}
[ -x "$BENCH" ] || { echo "train_dp_bench: $BENCH not built" >&2; exit 2; }

echo "== 1 GPU"
"$BENCH" "${args[@]}" >"$OUT/train_dp_bench.single.log" 2>&1 || { tail -20 "$OUT/train_dp_bench.single.log"; exit 1; }
lines=("$(grep '^{"engine"' "$OUT/train_dp_bench.single.log" | tail -1)")
echo "${lines[0]}"

status=0
labels=("")  # the environment setting of each line after the first ("" = none)
# run_ranks ZERO TAG ENV...: one data-parallel run on $GPUS ranks with ENV (NAME=VALUE ...),
# logs train_dp_bench.TAG.rank<r>.log; its rank 0 JSON line appended to `lines`.
run_ranks() {
  local zero=$1 tag=$2
  shift 2
  local port=$((29500 + RANDOM % 1000)) pids=() r p failed=0
  for ((r = 0; r < GPUS; r++)); do
    env "$@" RANK=$r WORLD_SIZE=$GPUS LOCAL_RANK=$r MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
      "$BENCH" "${args[@]}" --data-parallel --zero "$zero" >"$OUT/train_dp_bench.$tag.rank$r.log" 2>&1 &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || failed=1; done
  grep -h "tokens/s on this GPU" "$OUT"/train_dp_bench."$tag".rank*.log
  if ((failed)); then
    echo "train_dp_bench: a rank failed ($tag); logs in $OUT/train_dp_bench.$tag.rank*.log" >&2
    tail -20 "$OUT"/train_dp_bench."$tag".rank*.log >&2
    status=1
    return
  fi
  lines+=("$(grep '^{"engine"' "$OUT/train_dp_bench.$tag.rank0.log" | tail -1)")
  labels+=("$*")
  echo "${lines[-1]}"
}
for zero in $ZEROS; do
  echo "== $GPUS GPUs (data parallel, ZeRO-$zero)"
  run_ranks "$zero" "zero$zero"
done
base=${#lines[@]}  # the lines the scaling model fits (the variants change NCCL's behaviour)
for variant in $VARIANTS; do
  echo "== $GPUS GPUs (data parallel, ZeRO-1, $variant)"
  run_ranks 1 "zero1.${variant//[^A-Za-z0-9]/_}" "$variant"
done

python3 - "${#lines[@]}" "${lines[@]}" "${labels[@]}" <<'PY'
import json, sys
n = int(sys.argv[1])
rows = [json.loads(line) for line in sys.argv[2:2 + n]]
labels = sys.argv[2 + n:] + [""] * n  # the environment of each row ("" = none)
one = rows[0]
print("| GPUs | ZeRO | environment | batch/GPU | seq | tokens/s per GPU | step ms | graphs | optimizer GiB/GPU | "
      "gradients GiB/GPU | arena GiB |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for r, env in zip(rows, labels):
    zero = r.get("zero", 0) or "-"
    print(f"| {r['gpus']} | {zero} | {env or '-'} | {r['batch']} | {r['seq']} | {r['tokens_per_s']:.0f} | "
          f"{r['step_ms']:.1f} | {'on' if r['graphs'] else 'off'} | {r['optimizer_state_gib']:.2f} | "
          f"{r.get('gradient_gib', float('nan')):.2f} | {r['arena_gib']:.2f} |")
for r, env in zip(rows[1:], labels[1:]):
    ratio = r["tokens_per_s"] / one["tokens_per_s"]
    print(f"ZeRO-{r['zero']}{' ' + env if env else ''}: per-GPU throughput {100 * ratio:.1f}% of one GPU "
          f"(goal >= 95%); optimizer state "
          f"{r['optimizer_state_gib'] / one['optimizer_state_gib']:.3f}x (goal {1 / r['gpus']:.3f}x); gradient "
          f"buffers {r['gradient_gib']:.2f} GiB/GPU ({r['gradient_gib'] / one['gradient_gib']:.3f}x one GPU's)")
PY
# The weak-scaling model (issue 11) fitted to these lines: measured bus bandwidth, exposed
# fraction, predictions for more GPUs on one node and across nodes.
if ((base > 1)); then
  printf '%s\n' "${lines[@]:0:base}" | python3 "$(dirname "$0")/scaling_model.py" --predict 4 8 16 32 || status=1
fi
exit $status
