#!/usr/bin/env bash
# Builds everything (CUDA sources too, when nvcc is present) and runs the CPU test
# suites. GPU tests are the ctest label `gpu`, run on a GPU machine (scripts/gpu_check.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
cmake -S . -B build/test -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
start=$(date +%s)
cmake --build build/test -j"$(nproc)"
echo "build: $(( $(date +%s) - start )) s"
cd build/test
ctest -LE gpu --output-on-failure -j"$(nproc)"
cd ../..
# The parsers of untrusted files under libFuzzer + ASan/UBSan, briefly (scripts/fuzz_smoke.sh).
bash scripts/fuzz_smoke.sh
