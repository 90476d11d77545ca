#!/usr/bin/env bash
# The flash4-only GPU tests of a gtest FILTER (default '*Hopper*') in SHARDS processes side by
# side on one GPU (run_suite's gtest sharding; default 4), on an H100 / H200 from the repository
# root (carry .device-carry/, or only its deps.tar.xz): the Hopper suites take ~10 minutes one
# after another, past one device call's limit beside a build; 4 shards ran them in 219 s on an
# H200 (2026-12-02). Writes $OUT/tests.tar.gz (the outputs and log: the device tool brings back
# only a few files).
#
#   [FILTER=...] [SHARDS=4] [LIMIT=420] bash scripts/hopper_tests_sharded.sh
set -uo pipefail
# shellcheck source=scripts/lib/hopper_check_lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/hopper_check_lib.sh"
check_start hopper-tests-sharded-out "${LIMIT:-420}"
FILTER=${FILTER:-'*Hopper*'}
SHARDS=${SHARDS:-4}
build_flash4
build_tests_and_bench
run_suite hopper "$FILTER" 600
(cd "$OUT" && tar czf tests.tar.gz tests_hopper.txt log && rm -f tests_hopper.txt)
finish
