#!/usr/bin/env bash
# Device check of the Hopper (sm90a) kernels on head dims they round up (padded_head_dim in
# flash4/src/hopper/host.hpp: the forward runs any d_qk / d_v that are multiples of 8 up to
# 256 on its d 64 / 128 / 256 kernel, the backward those up to 128 on its d 64 / 128 kernel;
# TMA zero-fills the columns past the real widths and the kernels store only those), in one
# call on an H100 / H200 from the repository root (carry .device-carry/):
#   1. build   flash4 for sm_90a only, the flash4-only GPU tests and flash4-bench with nvcc;
#              registers / stack of the forward and backward kernels (0 spills expected);
#   2. smoke   forward and backward case 0 of the Padded suites with FLASH4_LOG=1: the log
#              must say "zero-padded"; a failure: memcheck of them and stop;
#   3. test    Padded/* (forward: d 32 / 40 / 96 / 160 / 192, 192/128, 64/128, 128/96; backward:
#              d 32 / 40 / 96 / 120, 64/96, 128/64, 48/80 on every dQ path and deterministic),
#              the dispatch tests, then the existing covered forward / backward suites (the
#              stores changed);
#   4. bench   flash4-bench at d 96 and d 192 (bf16, 16k tokens, hidden 2048 / d heads): the
#              Hopper kernels against the portable ones (FLASH4_BACKEND=portable), fwd / bwd;
#   5. check   compute-sanitizer memcheck of a small padded forward + backward.
# Every stage's timeout is cut to the time left of BUDGET seconds (default 300). Everything
# goes to $OUT (default ./hopper-padded-out).
#
#   bash scripts/hopper_padded_dims_check.sh [--no-bench]
set -uo pipefail
# shellcheck source=scripts/lib/hopper_check_lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/hopper_check_lib.sh"

check_start hopper-padded-out 300 "$@"

# ---- 1. build -------------------------------------------------------------------------
build_flash4
build_tests_and_bench
for obj in forward_sm90_hdim64 forward_sm90_hdim128 forward_sm90_hdim256 backward_sm90_hdim64 backward_sm90_hdim128; do
  note "$obj registers: $(registers $obj)"
done

# ---- 2. smoke -------------------------------------------------------------------------
SMOKE='Padded/Flash4Hopper.*/0_*:Padded/Flash4HopperBackwardBulkDq.*/0_*'
say "smoke: padded head dims, forward and backward case 0 (FLASH4_LOG=1)"
smoke_or_stop "$SMOKE" 60 120 "a wholly out-of-bounds TMA box (transaction bytes)" "zero-padded"
smoke_says "zero-padded" "the padded dims did not reach the Hopper kernels"

# ---- 3. tests -------------------------------------------------------------------------
run_suite padded 'Padded/*' 150
note "padded worst vs float64: bf16 out $(worst_error padded out bf16) dq $(worst_error padded dq bf16) dk $(worst_error padded dk bf16) dv $(worst_error padded dv bf16);" \
  "fp16 out $(worst_error padded out fp16) dq $(worst_error padded dq fp16)"
n_portable=$(grep -cE "^\[ errors \].*\| (bwd )?portable" "$OUT/tests_padded.txt" 2>/dev/null)
note "padded cases on the portable kernels: ${n_portable:-0} (expect 0)"
run_suite dispatch 'Flash4HopperDispatch.*:Flash4HopperBackwardDispatch.*' 60
reserve=$((BENCH == 1 ? 60 : 0))
limit=$(($(time_left) - reserve - 20))
run_suite existing 'Covered/Flash4Hopper.*:Covered/Flash4HopperBackwardBulkDq.*' $((limit > 30 ? limit : 30))

# ---- 4. bench -------------------------------------------------------------------------
if [ "$BENCH" -eq 1 ]; then
  say "flash4-bench d 96 / 192: Hopper (padded) vs portable"
  rows() {  # "d S causal fwd_TF bwd_TF" of a flash4-bench run
    awk -F'|' 'NF >= 4 && $1 ~ /[0-9]/ {split($1, a, " "); split($2, f, " "); split($3, b, " ");
      print a[1], a[2], a[5], f[2], b[2]}'
  }
  for d in 96 192; do
    timeout "$(budget 25)" "$B/bin/flash4-bench" --d $d --repeats 10 --deterministic 0 2>/dev/null | rows \
      >"$OUT/bench_hopper_$d.txt"
    FLASH4_BACKEND=portable timeout "$(budget 25)" "$B/bin/flash4-bench" --d $d --repeats 10 --deterministic 0 \
      2>/dev/null | rows >"$OUT/bench_portable_$d.txt"
  done
  { echo "| d | S | causal | fwd TF/s hopper / portable | ratio | bwd TF/s hopper / portable | ratio |"
    echo "|---|---|---|---|---|---|---|"
    for d in 96 192; do
      awk 'NR == FNR {f[$1 " " $2 " " $3] = $4; b[$1 " " $2 " " $3] = $5; next}
           {k = $1 " " $2 " " $3; pf = f[k]; pb = b[k]
            printf "| %s | %s | %s | %s / %s | %s | %s / %s | %s |\n", $1, $2, $3, $4, pf,
              (pf > 0 ? sprintf("%.2f", $4 / pf) : "-"), $5, pb, (pb > 0 ? sprintf("%.2f", $5 / pb) : "-")}' \
        "$OUT/bench_portable_$d.txt" "$OUT/bench_hopper_$d.txt"
    done; } >"$OUT/bench_table.md"
fi

# ---- 5. memcheck --------------------------------------------------------------------------
say "compute-sanitizer memcheck: padded varlen forward and backward (d 32)"
sanitize_stage memcheck 'Padded/Flash4Hopper.*/3_*:Padded/Flash4HopperBackwardBulkDq.*/2_*' 60

finish
