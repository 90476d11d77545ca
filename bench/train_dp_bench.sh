#!/usr/bin/env bash
# Data-parallel scaling of the CUDA backend (issue 10's goal): train-bench on one GPU,
# then on N GPUs (one process per GPU, torchrun-style environment, NCCL + ZeRO-1) at the
# same per-GPU batch; prints both JSON lines and the per-GPU throughput ratio (goal:
# >= 95%) and the optimizer state per GPU (goal: 1/N of one GPU's).
#
#   bench/train_dp_bench.sh [--build DIR] [--gpus N] [train-bench arguments...]
#   e.g. bench/train_dp_bench.sh --build build-dp --gpus 2 --model llama-3.2-1b --batch 2 --seq 4096 --steps 20
#
# NCCL_NVLS_ENABLE=0 is set by adept itself unless given (NVLink multicast stays off on
# shared machines). Logs of every rank go to ${OUT:-.}/train_dp_bench.rank<r>.log.
set -uo pipefail
BUILD=build
GPUS=2
args=()
while (($#)); do
  case $1 in
    --build) BUILD=$2; shift 2 ;;
    --gpus) GPUS=$2; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
BENCH=$BUILD/bin/train-bench
OUT=${OUT:-.}
[ -x "$BENCH" ] || { echo "train_dp_bench: $BENCH not built" >&2; exit 2; }

echo "== 1 GPU"
"$BENCH" "${args[@]}" >"$OUT/train_dp_bench.single.log" 2>&1 || { tail -20 "$OUT/train_dp_bench.single.log"; exit 1; }
single=$(grep '^{"engine"' "$OUT/train_dp_bench.single.log" | tail -1)
echo "$single"

echo "== $GPUS GPUs (data parallel, ZeRO-1)"
port=$((29500 + RANDOM % 1000))
pids=()
for ((r = 0; r < GPUS; r++)); do
  RANK=$r WORLD_SIZE=$GPUS LOCAL_RANK=$r MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
    "$BENCH" "${args[@]}" --data-parallel >"$OUT/train_dp_bench.rank$r.log" 2>&1 &
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
grep -h "tokens/s on this GPU" "$OUT"/train_dp_bench.rank*.log
multi=$(grep '^{"engine"' "$OUT/train_dp_bench.rank0.log" | tail -1)
echo "$multi"
if ((status)); then
  echo "train_dp_bench: a rank failed; logs in $OUT/train_dp_bench.rank*.log" >&2
  tail -20 "$OUT"/train_dp_bench.rank*.log >&2
  exit 1
fi
python3 - "$single" "$multi" <<'PY'
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
ratio = b["tokens_per_s"] / a["tokens_per_s"]
print(f"| GPUs | batch/GPU | seq | tokens/s per GPU | step ms | optimizer GiB/GPU | arena GiB |")
print(f"|---|---|---|---|---|---|---|")
for r in (a, b):
    print(f"| {r['gpus']} | {r['batch']} | {r['seq']} | {r['tokens_per_s']:.0f} | {r['step_ms']:.1f} | "
          f"{r['optimizer_state_gib']:.2f} | {r['arena_gib']:.2f} |")
print(f"per-GPU throughput {100 * ratio:.1f}% of one GPU (goal >= 95%); optimizer state "
      f"{b['optimizer_state_gib'] / a['optimizer_state_gib']:.3f}x (goal {1 / b['gpus']:.3f}x)")
PY
