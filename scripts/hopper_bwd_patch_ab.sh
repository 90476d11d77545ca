#!/usr/bin/env bash
# A/B of a Hopper backward change given as a patch, in one device call from the repository
# root (carry .device-carry/): this tree against the same tree with PATCH reversed (PATCH: the
# change's `git diff`, left untracked so that it travels; the baseline builds in /tmp/baseline
# while the tests run):
#   1. build   flash4 for sm_90a, the flash4-only GPU tests and flash4-bench; registers;
#   2. test    the suites of TESTS (a gtest filter; default every backward that adds dQ by
#              atomics: d 256, FLASH4_HOPPER_DQ=atomics at d 64 / 128, the deterministic
#              atomic suites, varlen), in SHARDS processes side by side (default 1);
#   3. bench   flash4-bench bwd / bwd-det, baseline vs this tree, at each head dim of DIMS
#              (default "256 128") under ENV (NAME=value words, default
#              "FLASH4_HOPPER_DQ=atomics"), into $OUT/bench_table.md;
#   4. check   compute-sanitizer memcheck of two small d 256 cases.
# First used for dQ by float4 atomics (2026-12-02, rejected: bench/RESULTS.md).
#
#   PATCH=change.patch [TESTS=...] [DIMS="256 128"] [ENV=...] bash scripts/hopper_bwd_patch_ab.sh [--no-bench]
set -uo pipefail
# shellcheck source=scripts/lib/hopper_check_lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/hopper_check_lib.sh"

check_start hopper-bwd-patch-ab-out 540 "$@"
PATCH=${PATCH:?PATCH=file: the change as git diff output}
TESTS=${TESTS:-'D256/*:*/Flash4HopperBackward.*:*/Flash4HopperDeterministicBackward.*:*/Flash4HopperVarlenBackward.*:*/Flash4HopperVarlenFused.*'}
DIMS=${DIMS:-256 128}
ENV=${ENV:-FLASH4_HOPPER_DQ=atomics}

build_flash4
build_tests_and_bench
note "backward registers: d 64 $(registers backward_sm90_hdim64)| d 128 $(registers backward_sm90_hdim128)| d 256 $(registers backward_sm90_hdim256)"
# The baseline builds while the tests run.
if [ "$BENCH" = 1 ]; then
  build_baseline "$PATCH" &
  baseline_pid=$!
fi

run_suite tests "$TESTS" 300

if [ "$BENCH" = 1 ]; then
  wait "$baseline_pid"
  BASE_BENCH=/tmp/baseline/$B/bin/flash4-bench
  if [ -x "$BASE_BENCH" ]; then
    rm -f "$OUT/bench_table.md"
    for d in $DIMS; do
      say "bench d $d ($ENV): baseline vs change"
      bwd_ab_rows "$d" "BIN=$BASE_BENCH $ENV" "$ENV" baseline change
    done
    note "geomean change / baseline: $(bwd_ab_geomean)"
  else
    note "no baseline bench (see $OUT/log)"
  fi
fi

sanitize_stage memcheck 'D256/Flash4HopperBackwardD256.*/0_*:D256/Flash4HopperDeterministicBackwardD256.RunsOn*/0_*' 60

# The device tool brings back only a few files: everything in one archive beside the table.
pack_results
finish
