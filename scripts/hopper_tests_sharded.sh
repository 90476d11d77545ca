#!/usr/bin/env bash
# The flash4-only GPU tests of a gtest FILTER (default '*Hopper*') in SHARDS processes side by
# side on one GPU (gtest sharding; default 4), on an H100 / H200 from the repository root
# (carry .device-carry/): the Hopper suites take ~10 minutes one after another, past one device
# call's limit beside a build. Prints each shard's result line and every failure; writes
# $OUT/tests_sharded.tar.gz (the shards' outputs) -- the device tool brings back few files.
#
#   [FILTER=...] [SHARDS=4] [LIMIT=420] bash scripts/hopper_tests_sharded.sh
set -uo pipefail
# shellcheck source=scripts/lib/hopper_check_lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/hopper_check_lib.sh"
check_start hopper-tests-sharded-out "${LIMIT:-420}"
FILTER=${FILTER:-'*Hopper*'}
SHARDS=${SHARDS:-4}
[ -f .device-carry/deps.tar ] || xz -dc .device-carry/deps.tar.xz > .device-carry/deps.tar
build_flash4
build_tests_and_bench
say "tests: $FILTER in $SHARDS shards"
for ((i = 0; i < SHARDS; i++)); do
  GTEST_TOTAL_SHARDS=$SHARDS GTEST_SHARD_INDEX=$i timeout "$(budget 600)" $T --gtest_filter="$FILTER" \
    > "$OUT/shard_$i.txt" 2>&1 &
done
wait
for ((i = 0; i < SHARDS; i++)); do
  note "shard $i: $(gtest_result "$OUT/shard_$i.txt") $(grep -c '^\[       OK' "$OUT/shard_$i.txt") ok"
  grep -E '^\[  FAILED  \] .*\(|Failure$' "$OUT/shard_$i.txt" | head -20
done
(cd "$OUT" && tar czf tests_sharded.tar.gz shard_*.txt log && rm -f shard_*.txt)
finish
