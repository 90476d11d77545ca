#!/usr/bin/env bash
# Device check of seqused_k on the Hopper (sm90a) forward and backward (each sequence attends
# to its first seqused_k[b] keys: the kernels mask by Sequence::sk, zero the K / V rows past it
# that they read, and the backward writes zero dK / dV there), which runs only with
# FLASH4_HOPPER_SEQUSED=1 until this check passes; in one call on an H100 / H200 from the
# repository root (carry .device-carry/ for the build dependencies):
#   1. build   flash4 for sm_90a only and the flash4-only GPU tests with nvcc (no adept);
#   2. smoke   forward and backward case 0 of the seqused suites with FLASH4_LOG=1 under a
#              timeout: the log must say "flash4_backward ran hopper" (not portable); a
#              failure or hang: memcheck of them and stop;
#   3. test    Seqused/Flash4HopperSeqused.* (forward, d 64 / 128 / 256) and
#              Seqused/Flash4HopperBackwardSeqused.* (both dQ paths, d 64 / 128): dense and
#              packed, causal, windows, GQA, sink, softcap, deterministic, the K / V rows past
#              the keys used NaN -- against the float64 reference; then the dispatch tests
#              (without the switch seqused_k still runs on the portable kernels);
#   4. test    the existing forward and backward suites that share the changed code paths
#              (Varlen forward, Covered / Varlen backward), unchanged without seqused_k;
#   5. check   compute-sanitizer memcheck of the small packed seqused cases.
# If everything passes, the switch can go (hopper_seqused_enabled in hopper/host.hpp: true).
# Every stage's timeout is cut to the time left of a BUDGET (seconds, default 360).
# Everything goes to $OUT (default ./hopper-seqused-out): log, smoke.txt, tests_*.txt,
# memcheck.txt; the last lines printed are the summary.
#
#   bash scripts/hopper_seqused_check.sh
set -uo pipefail
# shellcheck source=scripts/lib/hopper_check_lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/hopper_check_lib.sh"

check_start hopper-seqused-out 360 "$@"
export FLASH4_HOPPER_SEQUSED=1  # the suites set it themselves; the smoke and memcheck rely on it too

# ---- 1. build -------------------------------------------------------------------------
build_flash4
compile_tests_in_background
wait_for_compiles "a test compile failed"
link_tests
say "tests built"

# ---- 2. smoke -------------------------------------------------------------------------
SMOKE='Seqused/Flash4HopperSeqused.*/0_*:Seqused/Flash4HopperBackwardSeqused.*/0_*'
say "smoke: seqused forward and backward case 0 (FLASH4_LOG=1)"
smoke_or_stop "$SMOKE" 60 120 "the zeroed rows' barrier (forward barrier 3, backward 3 + w)"
smoke_says "flash4_backward ran hopper" "the switch did not reach the gap"

# ---- 3. the seqused suites -----------------------------------------------------------------
run_suite seqused 'Seqused/Flash4HopperSeqused.*:Seqused/Flash4HopperBackwardSeqused.*' 150
note "seqused worst vs float64: bf16 out $(worst_error seqused out bf16) dq $(worst_error seqused dq bf16) dk $(worst_error seqused dk bf16) dv $(worst_error seqused dv bf16);" \
  "fp16 out $(worst_error seqused out fp16) dq $(worst_error seqused dq fp16) dk $(worst_error seqused dk fp16) dv $(worst_error seqused dv fp16)"
n_portable=$(grep -cE "^\[ errors \].*\| (bwd )?portable" "$OUT/tests_seqused.txt" 2>/dev/null)
note "seqused cases on the portable kernels: ${n_portable:-0} (expect 0)"
FLASH4_HOPPER_SEQUSED=0 run_suite dispatch 'Flash4HopperDispatch.*:Flash4HopperBackwardDispatch.*' 60

# ---- 4. the existing suites on the changed paths --------------------------------------------
EXISTING='Varlen/Flash4Hopper.*:Covered/Flash4HopperBackwardBulkDq.*:Varlen/Flash4HopperVarlenBackwardBulkDq.*'
if [ "$(time_left)" -ge 60 ]; then
  FLASH4_HOPPER_SEQUSED=0 run_suite existing "$EXISTING" $(($(time_left) - 40))
else
  note "existing suites skipped (budget spent); alone: $T --gtest_filter='$EXISTING'"
fi

# ---- 5. memcheck --------------------------------------------------------------------------
say "compute-sanitizer memcheck: the packed seqused cases, d 64"
sanitize_stage memcheck 'Seqused/Flash4HopperBackwardSeqused.*/4_*:Seqused/Flash4HopperSeqused.*/4_*' 90

finish
