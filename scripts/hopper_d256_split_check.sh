#!/usr/bin/env bash
# Device check of the opt-in split-query d 256 backward step (FLASH4_HOPPER_BWD_D256_SPLIT_QUERIES=1,
# written without a GPU in the tenth session; docs/hopper_backward_d256.md "Split queries"): each
# consumer warpgroup computes S^T / dP^T for its own 32 of a step's 64 queries and shares P^T /
# dS^T through shared memory. One call on an H100 / H200 from the repository root (carry
# .device-carry/, or only its deps.tar.xz):
#   1. build   flash4 for sm_90a, the flash4-only GPU tests; registers / stack of the d 256 kernels;
#   2. smoke   cases 0 and 1 of the split-query test under a short timeout (a hang: the step's
#              barriers between the warpgroups); memcheck and stop if it fails;
#   3. test    every d 256 suite (*D256*, the split-query test among them) in SHARDS gtest
#              shards (default 6), worst errors against float64;
#   4. bench   bench/env_ab.py --dims 256 (one process, the same tensors): the default against
#              the split step, each checked against torch's float32 attention; then peers at d 256
#              with the split step (peers_d256_split.txt);
#   5. check   compute-sanitizer racecheck and memcheck of two small split-query cases.
# Every stage's timeout is cut to the time left of BUDGET seconds (default 560). Outputs go to
# $OUT (default ./hopper-d256-split-out), packed into results.tar.gz.
#
#   [SHARDS=6] bash scripts/hopper_d256_split_check.sh [--no-bench]
set -uo pipefail
# shellcheck source=scripts/lib/hopper_check_lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/hopper_check_lib.sh"

check_start hopper-d256-split-out 560 "$@"
SHARDS=${SHARDS:-6}
SPLIT='D256/Flash4HopperBackwardD256FlatDq.WithQueriesSplit*'

# ---- 1. build -------------------------------------------------------------------------
build_flash4
compile_tests_in_background
wait_for_compiles "a test compile failed"
link_tests
note "backward_sm90_hdim256 registers: $(registers backward_sm90_hdim256)"

# ---- 2. smoke -------------------------------------------------------------------------
SMALL="${SPLIT}/0_*:${SPLIT}/1_*"
say "smoke: split-query d 256, cases 0 and 1"
smoke_or_stop "$SMALL" 60 120 "the split step's barriers between the warpgroups" "d 256 split"
smoke_says "queries split between the warpgroups" "the split-query step did not run"

# ---- 3. tests -------------------------------------------------------------------------
run_suite d256 '*D256*' 240
note "d 256 worst vs float64: bf16 dq $(worst_error d256 dq bf16) dk $(worst_error d256 dk bf16) fp16 dq $(worst_error d256 dq fp16)"

# ---- 4. bench -------------------------------------------------------------------------
if [ "$BENCH" = 1 ]; then
  if shared_lib "$B" "$OUT/libflash4.so"; then
    say "env_ab d 256: default vs FLASH4_HOPPER_BWD_D256_SPLIT_QUERIES=1"
    timeout "$(budget 150)" python3 bench/env_ab.py --lib "$OUT/libflash4.so" \
      --b FLASH4_HOPPER_BWD_D256_SPLIT_QUERIES=1 --dims 256 > "$OUT/env_ab_d256.txt" 2>&1
    note "env_ab rc $?: $(grep -i 'geometric' "$OUT/env_ab_d256.txt" | tr '\n' ' ')"
    rm -f "$OUT/libflash4.so"
  fi
  peers_with peers_d256_split.txt 90 FLASH4_HOPPER_BWD_D256_SPLIT_QUERIES=1 -- --dims 256
fi

# ---- 5. sanitizers --------------------------------------------------------------------
sanitize_stage racecheck "$SMALL" 60
sanitize_stage memcheck "$SMALL" 60

[ -f "$OUT/env_ab_d256.txt" ] && cat "$OUT/env_ab_d256.txt"
[ -f "$OUT/peers_d256_split.txt" ] && tail -16 "$OUT/peers_d256_split.txt"
pack_results
finish
