#!/usr/bin/env bash
# The main job on the embedded default: builds the CPU engine and trains a tiny
# Llama-style decoder on the bundled corpus (about a minute on 2 cores), printing the
# progress, the loss curve and the held-out loss. Extra arguments go to `adept train`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
# CPU-only and no tests: the quickest build that runs the engine.
cmake -S . -B build/quickstart -G Ninja -DCMAKE_BUILD_TYPE=Release -DADEPT_CUDA=OFF -DADEPT_TESTS=OFF \
      -DADEPT_BENCH=OFF >/dev/null
cmake --build build/quickstart --target adept -j"$(nproc)"
exec build/quickstart/bin/adept train "$@"
