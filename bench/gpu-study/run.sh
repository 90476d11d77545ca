#!/usr/bin/env bash
# The GPU study, on the GPU machine from the repository root: build adept for sm_90a,
# unpack the corpora (made here by tools/corpora/make_gpu_study_corpora.py, carried as
# $CORPORA/{general,domain}.jsonl.xz + tokenizer/), run `adept run` on
# bench/gpu-study/config.toml, and copy the report, results and plots to $OUT.
set -euo pipefail
OUT=${OUT:-$PWD/gpu-study-out}
CORPORA=${CORPORA:-.lead-corpora}
BUILD=${BUILD:-build-gpu}
mkdir -p "$OUT" /tmp/study-data
for t in .device-carry/*.tar; do [ -f "$t" ] && tar xf "$t" -C / --skip-old-files; done
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DADEPT_TESTS=OFF -DADEPT_BENCH=OFF \
  -DADEPT_CUDA_GENCODE="-gencode=arch=compute_90a,code=sm_90a" >"$OUT/cmake.log" 2>&1
start=$(date +%s)
ninja -C "$BUILD" -j"$(nproc)" adept >"$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
echo "build: $(( $(date +%s) - start )) s"
xz -dc "$CORPORA/general.jsonl.xz" >/tmp/study-data/general.jsonl
xz -dc "$CORPORA/domain.jsonl.xz" >/tmp/study-data/domain.jsonl
cp -r "$CORPORA/tokenizer" /tmp/study-data/
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
status=0
"$BUILD/bin/adept" run bench/gpu-study/config.toml --quiet "$@" 2>&1 | tee "$OUT/run.log" || status=$?
for f in report.md results.json loss_curves.svg layer_importance.svg lr_multipliers.svg; do
  [ -f "/tmp/gpu-study/$f" ] && cp "/tmp/gpu-study/$f" "$OUT/"
done
exit $status
