#!/usr/bin/env bash
# Device check of the Hopper (sm90a) backward with learnable sink logits (and softcap) (options.sink, with
# dsink asked for or not: the rows preprocess writes each row's dsink term, the portable
# finish sums them per head in a fixed order; the main kernel is unchanged), in one call on
# an H100 / H200 from the repository root (carry .device-carry/ for the build dependencies,
# as scripts/hopper_varlen_check.sh):
#   1. build   flash4 for sm_90a only (ninja -j16, timed) and the flash4-only GPU tests with
#              nvcc (no adept); registers / stack of the backward kernels (expect the main
#              kernels' counts of scripts/hopper_dq_check.sh, no stack);
#   2. smoke   one dense sink case (Sink/Flash4HopperBackward case 0: d 64 bf16, GQA) with
#              FLASH4_LOG=1 under a short timeout; FLASH4_LOG must say "sink + dsink"; if it
#              fails, memcheck of it and stop;
#   3. test    the new sink suites: Sink/Flash4HopperBackward (atomic dQ) and ...BulkDq (dense
#              and packed, GQA, causal, windows whose rows see no key, deterministic),
#              Sink/Flash4HopperDeterministicBackward[BulkDq] (three runs: the same dq, dk,
#              dv and dsink bits; bulk = atomics), Flash4HopperBackwardSink (no dsink gives
#              the same gradients; calls without query rows write dsink = 0); then the
#              softcap suites (Softcap/Flash4HopperBackward[BulkDq], Softcap/...Deterministic...);
#   4. test    the existing Hopper backward suites, atomic and bulk dQ (Covered, Window,
#              Varlen, Deterministic, the dispatch tests): nothing regressed;
#   5. check   compute-sanitizer memcheck on a small sink varlen case (atomic and bulk dQ)
#              and a small deterministic sink varlen case.
# Every stage's timeout is cut to the time left of a 7-minute budget (BUDGET seconds, 420),
# most-needed stages first; a suite cut short says how to rerun it alone.
# Everything goes to $OUT (default ./hopper-bwd-sink-out): log, smoke.txt, tests_*.txt,
# memcheck.txt; the last lines printed are the summary (each stage's seconds).
#
#   bash scripts/hopper_bwd_sink_check.sh
set -uo pipefail
# shellcheck source=scripts/lib/hopper_check_lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/hopper_check_lib.sh"

check_start hopper-bwd-sink-out 420 "$@"

# ---- 1. build -------------------------------------------------------------------------
build_flash4
compile_tests_in_background
wait_for_compiles "a test compile failed"
link_tests
say "tests built"
for obj in backward_sm90_hdim64 backward_sm90_hdim128; do
  note "$obj registers: $(registers $obj)"
done

# ---- 2. smoke -------------------------------------------------------------------------
SMOKE='Sink/Flash4HopperBackward.*/0_*'
# Small packed sink cases (d 64 bf16 causal: empty sequences, Sq != Sk, tokens of no sequence),
# atomic and bulk dQ, and the small deterministic packed one (case 2: d 128 bf16).
SMALL_VARLEN='Sink/Flash4HopperBackward.*/*hopper_bwd_sink_varlen__bf16*:Sink/Flash4HopperBackwardBulkDq.*/*hopper_bwd_sink_varlen__bf16*'
SMALL_DET='Sink/Flash4HopperDeterministicBackward.ThreeRunsGiveTheSameBits/2_*'
say "smoke: sink, dense case 0 (FLASH4_LOG=1)"
smoke_or_stop "$SMOKE" 60 120 "the rows preprocess or the dsink reduction" "sink" "the sink smoke case"
smoke_says "sink + dsink" "the Hopper backward did not run the sink"

# ---- 3. the sink suites ----------------------------------------------------------------
# (Sink/Flash4Hopper.* is the forward's sink suite: not run here.)
run_suite sink 'Sink/Flash4HopperBackward*:Sink/Flash4HopperDeterministicBackward*:Flash4HopperBackwardSink.*' 150
# Softcap on the same kernel (a uniform branch: th = tanh(s scale / c) while the dP wgmma runs,
# then P and dS = P (dP - D) (1 - th^2)); Softcap/Flash4Hopper.* is the forward's suite.
run_suite softcap 'Softcap/Flash4HopperBackward*:Softcap/Flash4HopperDeterministicBackward*' 120
note "sink worst vs float64: bf16 dq $(worst_error sink dq bf16) dk $(worst_error sink dk bf16) dv $(worst_error sink dv bf16) dsink $(worst_error sink dsink bf16); fp16 dq $(worst_error sink dq fp16) dk $(worst_error sink dk fp16) dv $(worst_error sink dv fp16) dsink $(worst_error sink dsink fp16)"
n_portable=$(grep -cE "^\[ errors \].*\| bwd portable" "$OUT/tests_sink.txt" 2>/dev/null)
note "sink cases on the portable backward: ${n_portable:-0} (expect 0)"

# ---- 4. the existing suites --------------------------------------------------------------
EXISTING='Covered/Flash4HopperBackward*:Window/Flash4HopperBackward*:Varlen/Flash4HopperVarlenBackward*:Deterministic/Flash4HopperDeterministicBackward*:Flash4HopperBackwardDispatch.*'
if [ "$(time_left)" -ge 70 ]; then
  run_suite existing "$EXISTING" $(($(time_left) - 50))
else
  note "existing suites skipped (budget spent); alone: $T --gtest_filter='$EXISTING'"
fi

# ---- 5. memcheck --------------------------------------------------------------------------
say "compute-sanitizer memcheck: small sink varlen case (atomic, bulk) and deterministic sink varlen case 2"
sanitize_stage memcheck "$SMALL_VARLEN:$SMALL_DET" 90

finish
