#!/usr/bin/env bash
# Device check of the Hopper (sm90a) backward's per-warpgroup dQ hand-over
# (FLASH4_HOPPER_DQ=per_warpgroup, DqAdd::bulk_per_warpgroup: the same bulk reduce-adds as the
# default, but the dQ writer hands each consumer warpgroup its staging buffers on barriers of
# its own, so the two are not held in step at every query block; not for deterministic
# calls), in one call on an H100 / H200 from the repository root (carry .device-carry/):
#   1. build   flash4 for sm_90a only, the flash4-only GPU tests and flash4-bench with nvcc;
#              registers / stack of the backward kernels (expect 168 / 0);
#   2. smoke   the per-warpgroup path on dense case 0 and varlen case 0 under a short timeout
#              (a hang: the writer's barrier order); if it fails, memcheck of it and stop;
#   3. bench   flash4-bench backward (non-deterministic), bulk vs per_warpgroup, one process
#              each: dense bf16 d 64 / 128, S 4096 / 16384, causal 0 / 1, and the varlen
#              adept-like batch at d 64 / 128;
#   4. test    the ...PerWarpgroupDq suites (covered, window, varlen, sink, softcap), then
#              compute-sanitizer racecheck and memcheck of a small varlen case.
# If it passes and the bench gains, per_warpgroup can become the non-deterministic default
# (backward_sm90_host.cpp). Every stage's timeout is cut to the time left of BUDGET seconds
# (default 300). Everything goes to $OUT (default ./hopper-dq-warpgroup-out).
#
#   bash scripts/hopper_dq_warpgroup_check.sh [--no-bench]
set -uo pipefail
# shellcheck source=scripts/lib/hopper_check_lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/hopper_check_lib.sh"

check_start hopper-dq-warpgroup-out 300 "$@"

# ---- 1. build -------------------------------------------------------------------------
build_flash4
build_tests_and_bench
for obj in backward_sm90_hdim64 backward_sm90_hdim128; do
  note "$obj registers: $(registers $obj)"
done

# ---- 2. smoke -------------------------------------------------------------------------
SMOKE='Covered/Flash4HopperBackwardPerWarpgroupDq.*/0_*:Varlen/Flash4HopperVarlenBackwardPerWarpgroupDq.*/0_*'
say "smoke: per-warpgroup dQ hand-over, dense case 0 and varlen case 0"
smoke_or_stop "$SMOKE" 60 120 "the writer's per-warpgroup staged / free barriers" "dQ by"
smoke_says "per-warpgroup hand-over" "the path did not run"

# ---- 3. bench -------------------------------------------------------------------------
if [ "$BENCH" -eq 1 ]; then
  say "flash4-bench backward (non-deterministic), bulk vs per_warpgroup (bf16; dense: 16k tokens, hidden 2048)"
  table=("| case | bwd TF/s bulk | bwd TF/s per_warpgroup | per_warpgroup / bulk |" "|---|---|---|---|")
  ratio() { awk -v b="$1" -v a="$2" 'BEGIN {if (a > 0 && b > 0) printf "%.3f", b / a; else print "-"}'; }
  # dense_tf D S C ENV / varlen_tf D ENV: the non-deterministic backward TF/s of one flash4-bench call.
  dense_tf() {
    env FLASH4_HOPPER_DQ=$4 timeout "$(budget 30)" $B/bin/flash4-bench --d $1 --seqlen $2 --causal $3 --repeats 10 \
      --deterministic 0 2>&1 | tee -a "$OUT/bench_dense_$4.txt" |
      awk -F'|' 'NF >= 4 && $1 ~ /[0-9]/ {split($3, a, " "); print a[2]}'
  }
  varlen_tf() {
    env FLASH4_HOPPER_DQ=$2 timeout "$(budget 30)" $B/bin/flash4-bench --varlen --d $1 --repeats 20 2>&1 |
      tee -a "$OUT/bench_varlen_$2.txt" | awk -F'|' '/^varlen \|/ {split($3, a, " "); print a[5]}'
  }
  for d in 64 128; do
    for S in 16384 4096; do
      for c in 0 1; do
        u=$(dense_tf $d $S $c bulk)
        w=$(dense_tf $d $S $c per_warpgroup)
        table+=("| dense d $d S $S causal $c | ${u:--} | ${w:--} | $(ratio "${w:-}" "${u:-}") |")
      done
    done
    u=$(varlen_tf $d bulk)
    w=$(varlen_tf $d per_warpgroup)
    table+=("| varlen adept-like d $d (Hq 32 Hkv 8 causal) | ${u:--} | ${w:--} | $(ratio "${w:-}" "${u:-}") |")
  done
  grep -h "hopper dQ:" "$OUT"/bench_*.txt 2>/dev/null | sort | uniq -c | tee -a "$LOG"
  printf '%s\n' "${table[@]}" | tee "$OUT/bench_table.md" >>"$LOG"
  note "geometric mean per_warpgroup / bulk: $(awk -F'|' '$5 + 0 > 0 {s += log($5); n++} END {if (n) printf "%.3f over %d rows", exp(s / n), n; else print "-"}' "$OUT/bench_table.md")"
fi

# ---- 4. tests and sanitizers -----------------------------------------------------------------
run_suite per_warpgroup '*/Flash4HopperBackwardPerWarpgroupDq.*:*/Flash4HopperVarlenBackwardPerWarpgroupDq.*' 150
note "per_warpgroup worst vs float64: bf16 dq $(worst_error per_warpgroup dq bf16) dk $(worst_error per_warpgroup dk bf16) dv $(worst_error per_warpgroup dv bf16); fp16 dq $(worst_error per_warpgroup dq fp16)"
SMALL='Varlen/Flash4HopperVarlenBackwardPerWarpgroupDq.*/0_*'
say "compute-sanitizer racecheck, then memcheck: varlen case 0, per-warpgroup hand-over"
sanitize_stage racecheck "$SMALL" 60
sanitize_stage memcheck "$SMALL" 60

finish
