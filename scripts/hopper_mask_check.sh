#!/usr/bin/env bash
# Device check of a Hopper kernel change that must not alter any result, only the time (first
# used for the per-element masks in 32-bit compares against immediates, 2026-12-03), against
# the same tree with PATCH reversed, in one call on an H100 / H200 from the repository root
# (carry .device-carry/, or only its deps.tar.xz; PATCH: the change's `git diff`, left
# untracked so that it travels):
#   1. build   flash4 for sm_90a and the flash4-only GPU tests; the baseline (PATCH reversed)
#              in /tmp/baseline beside them; registers / stack of the changed kernels;
#   2. bench   bench/env_ab.py in one process per pass (the same tensors, each run checked
#              against torch's float32 attention up to S 2k): forward and backward, baseline
#              (A) against this tree (B), at each head dim of DIMS (default 64,128,256), the
#              passes of PASSES (default "fwd bwd");
#   3. test    every suite of FILTER (default '*Hopper*'; FILTER=none skips) in SHARDS gtest
#              shards (default 8);
#   4. peers   (PEERS=1) bench/peers.py with this tree, d 64 / 128 / 256 (peers.txt);
#   5. check   (SANITIZE=1) compute-sanitizer memcheck and racecheck of small causal and
#              window cases, forward and backward.
# A change that adds a switch: AB_ENV="NAME=value[,NAME=value] ..." times each setting against
# the change's default in one more env_ab process (env_ab_switch_PASS.txt); TEST_ENV="NAME=value
# ..." is exported for the tests and sanitizers (the switch's kernels are the ones tested).
# Every stage's timeout is cut to the time left of BUDGET seconds (default 560). Outputs go to
# $OUT (default ./hopper-mask-out), packed into results.tar.gz.
#
#   PATCH=change.patch [DIMS=64,128,256] [PASSES="fwd bwd"] [FILTER=...] [SHARDS=8] [PEERS=1] [SANITIZE=1] \
#     [AB_ENV="..."] [TEST_ENV="..."] [AB_ARGS="--rounds 8 --repeats 20"] bash scripts/hopper_mask_check.sh
# AB_ARGS is added to every env_ab call (more rounds when the change is expected to be worth ~1%).
set -uo pipefail
# shellcheck source=scripts/lib/hopper_check_lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/hopper_check_lib.sh"

check_start hopper-mask-out 560 "$@"
PATCH=${PATCH:?PATCH=file: the change as git diff output}
DIMS=${DIMS:-64,128,256}
FILTER=${FILTER:-'*Hopper*'}
SHARDS=${SHARDS:-8}

# ---- 1. build -------------------------------------------------------------------------
build_flash4
build_baseline "$PATCH" &
baseline_pid=$!
compile_tests_in_background
wait_for_compiles "a test compile failed"
link_tests
note "registers: fwd d 64 $(registers forward_sm90_hdim64)| bwd d 128 $(registers backward_sm90_hdim128)| bwd d 256 $(registers backward_sm90_hdim256)"
wait "$baseline_pid"

# ---- 2. bench -------------------------------------------------------------------------
if [ "$BENCH" = 1 ] && shared_lib "$B" /tmp/libflash4_change.so && shared_lib "/tmp/baseline/$B" /tmp/libflash4_base.so; then
  for pass in ${PASSES:-fwd bwd}; do
    say "env_ab $pass: baseline (A) vs change (B), dims $DIMS"
    # shellcheck disable=SC2086  # AB_ARGS: several words
    timeout "$(budget 150)" python3 bench/env_ab.py --lib /tmp/libflash4_change.so --a lib=/tmp/libflash4_base.so \
      --b lib=/tmp/libflash4_change.so --pass "$pass" --dims "$DIMS" ${AB_ARGS:-} > "$OUT/env_ab_$pass.txt" 2>&1
    note "env_ab $pass rc $?: $(grep -iE 'geometric|tolerance|FAILED' "$OUT/env_ab_$pass.txt" | tr '\n' ' ')"
    if [ -n "${AB_ENV:-}" ]; then
      switches=()
      for setting in $AB_ENV; do switches+=(--b "$setting"); done
      say "env_ab $pass: the change's default (A) vs $AB_ENV"
      # shellcheck disable=SC2086  # AB_ARGS: several words
      timeout "$(budget 150)" python3 bench/env_ab.py --lib /tmp/libflash4_change.so --a '' "${switches[@]}" \
        --pass "$pass" --dims "$DIMS" ${AB_ARGS:-} > "$OUT/env_ab_switch_$pass.txt" 2>&1
      note "env_ab switch $pass rc $?: $(grep -iE 'geometric|tolerance|FAILED' "$OUT/env_ab_switch_$pass.txt" | tr '\n' ' ')"
    fi
  done
else
  note "no bench (--no-bench, or a library did not build: see log)"
fi

# ---- 3. tests -------------------------------------------------------------------------
if [ -n "${TEST_ENV:-}" ]; then
  for setting in $TEST_ENV; do export "${setting?}"; done
  note "tests and sanitizers under $TEST_ENV"
fi
if [ "$FILTER" != none ]; then
  run_suite hopper "$FILTER" 600
  note "worst vs float64: bf16 out $(worst_error hopper out bf16) dq $(worst_error hopper dq bf16) dk $(worst_error hopper dk bf16) fp16 dq $(worst_error hopper dq fp16)"
fi

# ---- 4. peers -------------------------------------------------------------------------
[ "${PEERS:-0}" = 1 ] && peers_with peers.txt 200 --

# ---- 5. sanitizers --------------------------------------------------------------------
[ "${SANITIZE:-0}" = 1 ] && sanitize_checks "$SANITIZE_BWD_CASES:$SANITIZE_FWD_CASES"

for f in env_ab_fwd env_ab_switch_fwd env_ab_bwd env_ab_switch_bwd; do [ -f "$OUT/$f.txt" ] && cat "$OUT/$f.txt"; done
[ -f "$OUT/peers.txt" ] && cat "$OUT/peers.txt"
pack_results
finish
