#!/usr/bin/env bash
# Device check of flash4's Hopper (sm90a) forward at head dim 256, with softcap and the
# learnable sink, in one call on an H100 / H200 from the repository root (carry
# .device-carry/ for the build dependencies, as scripts/hopper_varlen_check.sh):
#   1. build   flash4 for sm_90a only (ninja -j16, timed), the flash4-only GPU tests and
#              flash4-bench with nvcc (no adept); SASS of forward_sm90_hdim{64,128,256} (HGMMA
#              by shape, UTMALDG, local memory LDL/STL, registers / stack) and ptxas -v of the
#              d 256 file (spills);
#   2. smoke   one small case each of d 256, softcap and sink with FLASH4_LOG=1; if one
#              fails, memcheck of them and stop;
#   3. test    the new suites: D256/Flash4Hopper.*, Softcap/Flash4Hopper.*, Sink/Flash4Hopper.*,
#              and the dispatch tests (uncovered features still fall back);
#   4. check   compute-sanitizer memcheck on one small d 256 case and one d 256 varlen case;
#   5. bench   flash4-bench --d 256 (bf16, 16k tokens, hidden 2048, S 512 .. 16k, causal 0 / 1),
#              Hopper vs FLASH4_BACKEND=portable; forward TF/s, ratio, and which backend ran
#              the forward (FLASH4_LOG=1 lines counted);
#   6. test    every existing Hopper forward test (Covered, Varlen, Window), then, if time is
#              left, the portable suites (their d 256 / softcap / sink forwards now run here).
# Every stage's timeout is cut to the time left of a ~7-minute budget (BUDGET seconds, 420),
# most-needed stages first; a suite cut short says how to rerun it alone.
# Everything goes to $OUT (default ./hopper-fwd256-out): log, tests_*.txt, bench_*.txt,
# sass.txt.gz, ptxas_d256.txt; the last lines printed are the summary (each stage's seconds,
# the bench table). --no-bench skips stage 5.
#
#   bash scripts/hopper_fwd256_check.sh [--no-bench]
set -uo pipefail
# shellcheck source=scripts/lib/hopper_check_lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/hopper_check_lib.sh"

check_start hopper-fwd256-out 420 "$@"

# ---- 1. build -------------------------------------------------------------------------
build_flash4
compile_tests_in_background
# ptxas -v of the d 256 instantiations (registers, spills), beside the test compiles.
"${NV[@]}" -O3 -DNDEBUG -DFLASH4_HAVE_HOPPER=1 -Xptxas -v -c flash4/src/hopper/forward_sm90_hdim256.cu \
  -o $B/ptxas_d256.o > "$OUT/ptxas_d256.txt" 2>&1 &
ptxas_pid=$!
wait_for_compiles "a test compile failed"
link_tests
# The bench is someone else's file too: a failure here skips stage 5, not the tests.
if [ $BENCH -eq 1 ]; then
  compile_bench || { note "flash4-bench did not build (stage 5 skipped)"; BENCH=0; }
fi
say "tests and bench built"
wait $ptxas_pid
note "ptxas -v d 256 (4 kernels: bf16 / fp16 x softcap): $(grep -oE '[0-9]+ bytes spill (stores|loads)|Used [0-9]+ registers' \
  "$OUT/ptxas_d256.txt" | sort | uniq -c | tr -s ' ' | tr '\n' ';')"
for obj in forward_sm90_hdim64 forward_sm90_hdim128 forward_sm90_hdim256; do
  dump_sass $obj
  shapes=$(grep -oE "HGMMA\.64x[0-9]+x16" "$OUT/sass_$obj.txt" | sort | uniq -c | tr '\n' ' ')
  note "$obj SASS (4 kernels: bf16 / fp16 x softcap): $shapes, UTMALDG $(sass_count UTMALDG $obj), LDL/STL $(sass_count 'LDL|STL' $obj) (expect 0), resources: $(registers $obj)"
done
pack_sass

# ---- 2. smoke -------------------------------------------------------------------------
SMOKE='D256/Flash4Hopper.*/0_*:Softcap/Flash4Hopper.*/0_*:Sink/Flash4Hopper.*/1_*'
say "smoke: d 256 case 0 (B 2, Hq 4, Hkv 2, 128 x 128), softcap case 0 (d 64), sink case 1 (d 64, rows with no key)"
smoke_or_stop "$SMOKE" 90 200 "an mbarrier phase / named barrier"
note "smoke passed"

# ---- 3. tests (new), 4. memcheck, 5. bench, 6. tests (existing) ---------------------------
run_suite d256 'D256/Flash4Hopper.*' 150
run_suite softcap_sink 'Softcap/Flash4Hopper.*:Sink/Flash4Hopper.*:Flash4HopperDispatch.*' 90
# worst FIELD DTYPE: the largest value after FIELD over the new suites' error lines.
worst() {
  cat "$OUT"/tests_d256.txt "$OUT"/tests_softcap_sink.txt 2>/dev/null | grep -E "^\[ errors \]" | grep "$2" | max_after "$1"
}
note "new suites worst: bf16 out $(worst out bf16) lse $(worst lse bf16); fp16 out $(worst out fp16) lse $(worst lse fp16)"

MC='D256/Flash4Hopper.*/0_*:D256/Flash4Hopper.*hopper_d256_varlen*'
say "compute-sanitizer memcheck: d 256 case 0 and the d 256 varlen cases"
sanitize_stage memcheck "$MC" 150

if [ $BENCH -eq 1 ]; then
  say "flash4-bench --d 256: bf16, 16k tokens, hidden 2048 (8 heads), S 512 .. 16k, causal 0 / 1"
  t=$(date +%s)
  FLASH4_LOG=1 timeout "$(budget 90)" $B/bin/flash4-bench --d 256 --repeats 10 --deterministic 0 \
    > "$OUT/bench_hopper.txt" 2> "$OUT/bench_hopper_log.txt"
  FLASH4_BACKEND=portable timeout "$(budget 90)" $B/bin/flash4-bench --d 256 --repeats 10 --deterministic 0 \
    > "$OUT/bench_portable.txt" 2>&1
  head -1 "$OUT/bench_hopper.txt" | tee -a "$LOG"
  # Rows "d S B H causal | fwd_ms fwd_TF | ...": fwd TF/s is field 8.
  awk 'NR == FNR {if ($1 == 256) tf[$2 " " $5] = $8; next}
       $1 == 256 {h = $8; p = tf[$2 " " $5]; printf "| %s | %s | %s | %s | %s |\n", $2, $5, h, p, (p > 0 ? sprintf("%.2f", h / p) : "-")}' \
    "$OUT/bench_portable.txt" "$OUT/bench_hopper.txt" > "$OUT/bench_rows.md"
  { echo "| S | causal | fwd TF/s Hopper | fwd TF/s portable | Hopper/portable |"; echo "|---|---|---|---|---|"
    cat "$OUT/bench_rows.md"; } > "$OUT/bench_table.md"
  cat "$OUT/bench_table.md" >> "$LOG"
  note "bench in $(($(date +%s) - t)) s; forward calls by backend (FLASH4_LOG): hopper $(grep -c 'flash4_forward ran hopper' "$OUT/bench_hopper_log.txt"), portable $(grep -c 'flash4_forward ran portable' "$OUT/bench_hopper_log.txt") $(grep -m1 'flash4_forward ran portable' "$OUT/bench_hopper_log.txt")"
fi

run_suite existing_forward 'Covered/Flash4Hopper.*:Varlen/Flash4Hopper.*:Window/Flash4Hopper.*' 120
if [ "$(time_left)" -ge 40 ]; then
  run_suite portable '*Flash4Portable*' 120
else
  note "portable suites skipped (budget spent); alone: $T --gtest_filter='*Flash4Portable*'"
fi

finish
