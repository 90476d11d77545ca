#!/usr/bin/env bash
# A short libFuzzer run of every fuzz target (fuzz/CMakeLists.txt) over the committed
# seed corpora: the CI's guard that the safetensors header parser, the tokenizer.json
# loader and the byte-level encoder survive malformed input under ASan/UBSan. Longer
# runs: raise FUZZ_SECONDS. Needs clang (installed by scripts/install_deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${FUZZ_SECONDS:-20}
BUILD=build/fuzz
cmake -S fuzz -B "$BUILD" -G Ninja -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$BUILD" -j"$(nproc)" >/dev/null
declare -A dict=([safetensors_header]=fuzz/safetensors.dict [tokenizer_json]=fuzz/tokenizer_json.dict)
for target in safetensors_header tokenizer_json tokenizer_encode; do
  work=$(mktemp -d)  # new inputs found in this run stay out of the committed corpus
  args=(-max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -print_final_stats=1)
  [ -n "${dict[$target]:-}" ] && args+=(-dict="${dict[$target]}")
  echo "fuzz: $target for ${SECONDS_EACH}s"
  status=0
  "$BUILD/fuzz/${target}_fuzzer" "${args[@]}" "$work" "fuzz/corpus/$target" >"$work.log" 2>&1 || status=$?
  if [ "$status" -ne 0 ]; then
    tail -40 "$work.log"
    echo "fuzz: $target FAILED (exit $status); the crashing input is named above"
    exit 1
  fi
  grep -E "^Done" "$work.log"
  rm -rf "$work" "$work.log"
done
