#!/usr/bin/env bash
# A/B of a change to flash4's kernels in one call on an H100 / H200 from the repository root
# (carry .device-carry/ and build-ab/): "A" is the tree with the files under build-ab/
# (git-ignored; copies of the files as they were, at their paths from the repository root,
# e.g. `git show HEAD:F > build-ab/F`) laid over it, "B" the tree as it is.
#   1. build   flash4 B (build-gpu), its GPU tests and flash4-bench; flash4 A and its
#              flash4-bench (/tmp/flash4-ab-a);
#   2. bench   flash4-bench A and B alternately, one process per d and variant, d in AB_DIMS
#              (default "64 128"), and the --varlen batch adept trains on: per row the B / A
#              ratio of fwd, bwd and bwd-det TFLOP/s ($OUT/ab.md), and the geometric means;
#   3. test    B's GPU tests matching AB_TESTS (default every backward suite), in 3 shards at
#              once, and compute-sanitizer memcheck of AB_SANITIZE's tests.
# Every stage's timeout is cut to the time left of BUDGET seconds (default 480). Everything
# goes to $OUT (default ./hopper-ab-out).
#
#   git show HEAD:flash4/src/hopper/backward_sm90.cuh > build-ab/flash4/src/hopper/backward_sm90.cuh
#   bash scripts/hopper_ab.sh
set -uo pipefail
# shellcheck source=scripts/lib/hopper_check_lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/hopper_check_lib.sh"

check_start hopper-ab-out 480 "$@"
DIMS=${AB_DIMS:-64 128}
TESTS=${AB_TESTS:-*Backward*}
SANITIZE=${AB_SANITIZE:-Covered/Flash4HopperBackward.*/0_*:Varlen/Flash4HopperVarlenBackward*.*/0_*}
[ -d build-ab ] || { say "no build-ab/: nothing to compare against"; exit 2; }
note "A: the tree with $(find build-ab -type f | sed 's|^build-ab/||' | tr '\n' ' ')as before"

# ---- 1. build -----------------------------------------------------------------------------
build_flash4
A=/tmp/flash4-ab-a
rm -rf $A && mkdir -p $A
tar cf - --exclude='./build*' --exclude=./.device-carry --exclude=./.git . | tar xf - -C $A
cp -r build-ab/. $A/
(cmake -S $A -B $A/build -G Ninja -DCMAKE_BUILD_TYPE=Release -DADEPT_CUDA_GENCODE="-gencode=arch=compute_90a,code=sm_90a" &&
   ninja -C $A/build -j16 flash4 && mkdir -p $A/build/bin &&
   "${NV[@]}" bench/flash4_bench.cu $A/build/flash4/libflash4.a -lgomp -o $A/build/bin/flash4-bench) >>"$LOG" 2>&1 &
a_build=$!
build_tests_and_bench
wait $a_build || { say "A did not build"; grep -A12 -m3 "error" "$LOG"; exit 1; }
note "A and B built"

# ---- 2. bench -----------------------------------------------------------------------------
# row_csv BENCH ARGS...: flash4-bench's rows as "d S causal fwd bwd bwd-det" TFLOP/s.
row_csv() {
  local bench=$1
  shift
  timeout "$(budget 60)" "$bench" --repeats 10 --csv /tmp/ab.csv "$@" >>"$LOG" 2>&1
  awk -F, 'NR > 1 && $6 == "default" {print $1, $2, $5, $8, $10, $12}' /tmp/ab.csv
}
{ echo "| d | S | causal | fwd A | fwd B | B/A | bwd A | bwd B | B/A | bwd-det A | bwd-det B | B/A |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|"; } >"$OUT/bench_table.md"
: >"$OUT/ab_rows.txt"
for d in $DIMS; do
  say "bench d $d"
  row_csv $A/build/bin/flash4-bench --d "$d" >"$OUT/a$d.txt"
  row_csv $B/bin/flash4-bench --d "$d" >"$OUT/b$d.txt"
  paste -d' ' "$OUT/a$d.txt" "$OUT/b$d.txt" >>"$OUT/ab_rows.txt"
done
awk '{printf "| %s | %s | %s | %s | %s | %.3f | %s | %s | %.3f | %s | %s | %.3f |\n", $1, $2, $3, $4, $10, $10 / $4,
      $5, $11, $11 / $5, $6, $12, ($6 > 0 ? $12 / $6 : 0)}' "$OUT/ab_rows.txt" >>"$OUT/bench_table.md"
for d in $DIMS; do
  note "d $d geomean B/A: $(awk -v d="$d" '$1 == d {f += log($10 / $4); b += log($11 / $5); if ($6 > 0) {x += log($12 / $6); m++} n++}
    END {printf "fwd %.3f bwd %.3f bwd-det %.3f (%d rows)", exp(f / n), exp(b / n), (m ? exp(x / m) : 0), n}' "$OUT/ab_rows.txt")"
done
for side in A:$A/build/bin/flash4-bench B:$B/bin/flash4-bench; do
  line=$(timeout "$(budget 30)" "${side#*:}" --varlen --repeats 20 2>>"$LOG" | grep "^varlen |")
  note "varlen ${side%%:*}: $line"
done

# ---- 3. tests -----------------------------------------------------------------------------
t0=$(date +%s)
limit=$(budget $(($(time_left) - 40)))
for i in 0 1 2; do
  GTEST_TOTAL_SHARDS=3 GTEST_SHARD_INDEX=$i timeout "$limit" $T --gtest_filter="$TESTS" >"$OUT/tests_$i.txt" 2>&1 &
done
wait
for i in 0 1 2; do
  grep -E -A4 "Failure$" "$OUT/tests_$i.txt" | head -24 | tee -a "$LOG"
  note "tests shard $i ($TESTS): $(gtest_result "$OUT/tests_$i.txt")$(grep -c '^\[       OK' "$OUT/tests_$i.txt") ok"
done
note "tests took $(($(date +%s) - t0)) s"
sanitize_stage memcheck "$SANITIZE" 40
finish
