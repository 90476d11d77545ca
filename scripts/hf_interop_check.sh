#!/usr/bin/env bash
# The transformers side of the HF-interop checks, for a machine with torch + transformers
# (the GPU machine), from the repository root after a build in $BUILD:
#   1. tools/fixtures/make_hf_model_fixtures.py writes tests/fixtures/hf/ (tiny random
#      llama / mistral / qwen2 / qwen3 with golden logits, loss, gradients);
#   2. adept_tests compares the CPU decoder with them and exports identity-expanded
#      copies (HfGoldenDecoder.*, ADEPT_EXPORT_DIR keeps the exports);
#   3. tools/fixtures/check_export_in_transformers.py loads the exports in transformers.
# Logs go to $OUT (default ./hf-check-out); tests/fixtures/hf is then committed.
set -euo pipefail
BUILD=${BUILD:-build-gpu}
OUT=${OUT:-$PWD/hf-check-out}
EXPORTS=${EXPORTS:-/tmp/adept-hf-exports}
mkdir -p "$OUT"
python3 tools/fixtures/make_hf_model_fixtures.py 2>&1 | tee "$OUT/fixtures.log"
rm -rf "$EXPORTS"
ADEPT_EXPORT_DIR=$EXPORTS "$BUILD/tests/adept_tests" --gtest_filter='*HfModelFixture*:*HfGoldenDecoder*' 2>&1 |
  tee "$OUT/golden.log" | grep -E "^\[ +(OK|FAILED|PASSED|SKIPPED) |relative error|Failure|Expected|actual"
python3 tools/fixtures/check_export_in_transformers.py "$EXPORTS" 2>&1 | tee "$OUT/export.log"
