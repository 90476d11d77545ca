#!/usr/bin/env bash
# The GPU study, on the GPU machine from the repository root: build adept for sm_90a,
# unpack the corpora (made here by tools/corpora/make_gpu_study_corpora.py, carried as
# $CORPORA/{general,domain}.jsonl.xz + tokenizer/), run `adept run` on
# bench/gpu-study/config.toml, and pack the report, results, plots and logs into $OUT/study.tar.
set -euo pipefail
OUT=${OUT:-$PWD/gpu-study-out}
CORPORA=${CORPORA:-.lead-corpora}
BUILD=${BUILD:-build-gpu}
mkdir -p "$OUT" /tmp/study-data
for t in .device-carry/*.tar; do [ -f "$t" ] && tar xf "$t" -C / --skip-old-files; done
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DADEPT_TESTS=OFF -DADEPT_BENCH=OFF \
  -DADEPT_CUDA_GENCODE="-gencode=arch=compute_90a,code=sm_90a" >"$OUT/build.log" 2>&1
start=$(date +%s)
ninja -C "$BUILD" -j"$(nproc)" adept >>"$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
echo "build: $(( $(date +%s) - start )) s"
xz -dc "$CORPORA/general.jsonl.xz" >/tmp/study-data/general.jsonl
xz -dc "$CORPORA/domain.jsonl.xz" >/tmp/study-data/domain.jsonl
cp -r "$CORPORA/tokenizer" /tmp/study-data/
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
status=0
"$BUILD/bin/adept" run bench/gpu-study/config.toml --quiet "$@" 2>&1 | tee "$OUT/run.log" || status=$?
# The report, results, plots and metrics logs in one archive (the device returns few files).
(cd /tmp/gpu-study && tar cf "$OUT/study.tar" $(ls report.md results.json *.svg *.jsonl */*.jsonl 2>/dev/null)) || true
exit $status
