#!/usr/bin/env bash
# Device check of the Hopper (sm90a) backward's flat dQ layout (FLASH4_HOPPER_DQ=flat,
# hopper::DqAdd::flat, written without a GPU in the eighth session, the default since the
# ninth after this check passed on an H200): each consumer warpgroup
# stores its dQ tile thread-major (8 float4 stores, no swizzle) and the dQ writer adds it with
# one 1-D bulk reduce-add into dq_accum laid out [Hq][slot][part][64 x 64] in that order;
# backward_sm90_dq_flat_finish converts it. d 64 / 128 non-deterministic at 64-query blocks
# (varlen, d 128; per-warpgroup hand-over), d 64 at 128-query blocks (dense; lock-step,
# deterministic too). One call on an H100 / H200 from the repository root (carry
# .device-carry/, or only its deps.tar.xz):
#   1. build   flash4 for sm_90a, the flash4-only GPU tests and flash4-bench; registers / stack
#              of the backward kernels (expect 168 / 0);
#   2. smoke   dense case 0 and varlen case 0 of the ...FlatDq suites under a short timeout (a
#              hang: the writer's barriers; wrong values: the layout); memcheck and stop if not;
#   3. test    every ...FlatDq suite (covered, window, varlen, sink, softcap, padded head dims,
#              deterministic: three runs bit for bit) in SHARDS gtest shards (default 4), worst
#              errors against float64;
#   4. bench   flash4-bench, the default dQ path against FLASH4_HOPPER_DQ=flat at d 128 and 64
#              (bwd, and bwd-det at d 64; fwd does not change), into bench_table.md, the
#              varlen adept-like batch, and bench/peers.py with flat (peers_flat.txt, in the
#              archive; its table also goes to the end of the output);
#   5. check   compute-sanitizer racecheck and memcheck of a small varlen case.
# The bench's A side is FLASH4_HOPPER_DQ=per_warpgroup, the tensor-map layout that was the
# default before. Every stage's timeout is cut to the time left of BUDGET
# seconds (default 500). Outputs go to $OUT (default ./hopper-dq-flat-out), packed into
# results.tar.gz beside bench_table.md (the device tool brings back only a few files).
#
#   [SHARDS=4] bash scripts/hopper_dq_flat_check.sh [--no-bench]
set -uo pipefail
# shellcheck source=scripts/lib/hopper_check_lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/hopper_check_lib.sh"

check_start hopper-dq-flat-out 500 "$@"
SHARDS=${SHARDS:-4}

# ---- 1. build -------------------------------------------------------------------------
build_flash4
build_tests_and_bench
for obj in backward_sm90_hdim64 backward_sm90_hdim128 backward_dq_flat; do
  note "$obj registers: $(registers $obj)"
done

# ---- 2. smoke -------------------------------------------------------------------------
SMOKE='Covered/Flash4HopperBackwardFlatDq.*/0_*:Varlen/Flash4HopperVarlenBackwardFlatDq.*/0_*'
say "smoke: flat dQ, dense case 0 and varlen case 0"
smoke_or_stop "$SMOKE" 60 120 "the writer's per-warpgroup staged / free barriers" "dQ by"
smoke_says "flat layout" "the flat path did not run"

# ---- 3. tests -------------------------------------------------------------------------
run_suite flat '*FlatDq.*' 240
note "flat worst vs float64: bf16 dq $(worst_error flat dq bf16) dk $(worst_error flat dk bf16) dv $(worst_error flat dv bf16); fp16 dq $(worst_error flat dq fp16)"

# ---- 4. bench -------------------------------------------------------------------------
if [ "$BENCH" = 1 ]; then
  rm -f "$OUT/bench_table.md"
  for d in 128 64; do
    say "bench d $d: the tensor-map dQ layout (FLASH4_HOPPER_DQ=per_warpgroup) vs the flat layout"
    bwd_ab_rows "$d" FLASH4_HOPPER_DQ=per_warpgroup FLASH4_HOPPER_DQ=flat tensor-map flat
  done
  note "geomean flat / tensor-map: $(bwd_ab_geomean)"
  say "varlen adept-like batch (flash4-bench --varlen): default vs flat"
  for env in FLASH4_HOPPER_DQ=per_warpgroup FLASH4_HOPPER_DQ=flat; do
    note "varlen $env: $(env $env timeout "$(budget 30)" $B/bin/flash4-bench --varlen --repeats 20 2>>"$LOG" | grep '^varlen |')"
  done
  # The peers table with flat dQ (bench/peers.py through the C ABI, one process, no FA4): what
  # bench/RESULTS.md would show were flat the default.
  say "peers with FLASH4_HOPPER_DQ=flat"
  peers_with peers_flat.txt 90 FLASH4_HOPPER_DQ=flat
fi

# ---- 5. sanitizers --------------------------------------------------------------------
SMALL='Varlen/Flash4HopperVarlenBackwardFlatDq.*/0_*:Deterministic/Flash4HopperDeterministicBackwardFlatDq.RunsOn*/0_*'
sanitize_stage racecheck "$SMALL" 60
sanitize_stage memcheck "$SMALL" 60

[ -f "$OUT/peers_flat.txt" ] && tail -40 "$OUT/peers_flat.txt"
pack_results
finish
