#!/usr/bin/env bash
# The main job on the embedded default: builds the CPU engine and runs `adept run`, the
# whole study — a tiny Llama-style decoder pretrained on general English, its layers
# probed, then adapted to a legal-text domain by ADEPT, full CPT and LLaMA-Pro with the
# same budget — ending with the report table (a few minutes on 2 cores). Extra arguments
# go to `adept run` (e.g. a config file).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
# CPU-only and no tests: the quickest build that runs the engine.
cmake -S . -B build/quickstart -G Ninja -DCMAKE_BUILD_TYPE=Release -DADEPT_CUDA=OFF -DADEPT_TESTS=OFF \
      -DADEPT_BENCH=OFF >/dev/null
cmake --build build/quickstart --target adept -j"$(nproc)"
exec build/quickstart/bin/adept run "$@"
