#!/usr/bin/env bash
# Several kernel changes timed against this tree and against each other in one device call
# (one env_ab process: the same tensors, rounds in alternating order), then one of them tested:
# more answers per device call than scripts/hopper_mask_check.sh, which times one patch. From
# the repository root on an H100 / H200 (carry .device-carry/deps.tar.xz):
#
#   VARIANTS="NAME=PATCH[+PATCH...] ..." [PASSES="bwd fwd bwd-softcap30"] [DIMS=64,128,256] [AB_ARGS="--rounds 8"] \
#     [TEST_VARIANT=NAME] [FILTER='*Backward*:*VarlenFused*'] [SHARDS=8] [SANITIZE=1] [BUDGET=560] \
#     bash scripts/hopper_variants_ab.sh
#
#   1. build   this tree (the baseline, A) and each variant -- a copy of the sources with its
#              patches applied in order (`patch -p1`; e.g. docs/experiments/*.patch, which
#              travel with the tree) -- in /tmp/variant_NAME, all side by side; a
#              libflash4.so of each. `NAME=` (no patch) is an unchanged copy, a control: A
#              read 1-2% apart from identical kernels (H200, 2026-12-03), so compare the
#              variants with it rather than with A alone;
#   2. bench   bench/env_ab.py per pass: A = the baseline, B1, B2, ... = the variants in
#              VARIANTS' order (env_ab_PASS.txt; geometric means in the summary); with a
#              variant named ctl, each variant against it too (bench/ab_vs_control.py:
#              vs_control_PASS.txt, and its means in the summary);
#   3. test    TEST_VARIANT's GPU tests (default: the last variant; TEST_VARIANT=none skips),
#              FILTER's suites in SHARDS gtest shards;
#   4. check   (SANITIZE=1) memcheck and racecheck of TEST_VARIANT, as hopper_mask_check.sh.
# Every stage's timeout is cut to the time left of BUDGET. Outputs in $OUT (default
# ./hopper-variants-out), packed into results.tar.gz.
set -uo pipefail
# shellcheck source=scripts/lib/hopper_check_lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/hopper_check_lib.sh"

check_start hopper-variants-out 560 "$@"
VARIANTS=${VARIANTS:?VARIANTS="NAME=PATCH[+PATCH...] ...": the changes to time}
FILTER=${FILTER:-'*Backward*:*VarlenFused*'}
SHARDS=${SHARDS:-8}
DIMS=${DIMS:-64,128,256}
ROOT=$PWD

# ---- 1. build ---------------------------------------------------------------------------
# The baseline and every variant build side by side (each is bound by its longest object, so
# one after another left most of the cores idle), 32 compile jobs in all (nvcc's heavy objects
# take GBs each: not 16 a build).
unpack_device_deps
n_builds=$((1 + $(wc -w <<< "$VARIANTS")))
export NINJA_JOBS=$(((32 + n_builds - 1) / n_builds))
build_one() {  # DIR SO: flash4 of DIR and its libflash4.so, logged to DIR/build.log
  # shellcheck disable=SC2030  # LOG: this build's own, in the subshell only
  (cd "$1" && LOG=$1/build.log && build_flash4 && shared_lib "$B" "$2") > "$1/build.out" 2>&1
}
copy_sources /tmp/variant_baseline
build_one /tmp/variant_baseline /tmp/libflash4_base.so &
build_pids=($!)
names=()
for variant in $VARIANTS; do
  name=${variant%%=*}
  patches=${variant#*=}
  dir=/tmp/variant_$name
  copy_sources "$dir"
  applied=1
  for patch_file in ${patches//+/ }; do
    # shellcheck disable=SC2031  # the check's LOG (build_one's is its subshell's)
    if ! (cd "$dir" && patch -p1 -s < "$ROOT/$patch_file") >>"$LOG" 2>&1; then
      note "$name: $patch_file does not apply"
      applied=0
      break
    fi
  done
  [ "$applied" = 1 ] || continue
  names+=("$name")
  build_one "$dir" "/tmp/libflash4_$name.so" &
  build_pids+=($!)
done
for pid in "${build_pids[@]}"; do wait "$pid"; done
[ -f /tmp/libflash4_base.so ] || { note "baseline build failed: $(tail -5 /tmp/variant_baseline/build.out)"; finish; exit 1; }
note "built in $(($(date +%s) - START)) s"
built=()
libs=()
for name in "${names[@]}"; do
  dir=/tmp/variant_$name
  if [ -f "/tmp/libflash4_$name.so" ]; then
    built+=("$name")
    libs+=("/tmp/libflash4_$name.so")
    note "$name built (registers: bwd d 128 $(cd "$dir" && registers backward_sm90_hdim128)| bwd d 256 $(cd "$dir" && registers backward_sm90_hdim256))"
  else
    note "$name: build failed: $(grep -m3 -A3 error "$dir/build.log" "$dir/build.out" | head -8 | tr '\n' ' ')"
  fi
done
names=("${built[@]}")
[ ${#names[@]} -gt 0 ] || { note "no variant built"; finish; exit 1; }

# ---- 2. bench ---------------------------------------------------------------------------
settings=()
control=""  # the setting of the variant named ctl, when there is one
for i in "${!libs[@]}"; do
  settings+=(--b "lib=${libs[$i]}")
  note "B$((i + 1)) = ${names[$i]}"
  [ "${names[$i]}" = ctl ] && control=B$((i + 1))
done
for pass in ${PASSES:-bwd}; do
  # A pass is bwd or fwd, with -softcapVALUE for scores capped at VALUE (bwd-softcap30).
  softcap=0
  case $pass in *-softcap*) softcap=${pass##*-softcap} ;; esac
  say "env_ab $pass: baseline (A) vs ${names[*]}"
  # shellcheck disable=SC2086  # AB_ARGS: several words
  timeout "$(budget 240)" python3 bench/env_ab.py --lib /tmp/libflash4_base.so --a lib=/tmp/libflash4_base.so \
    "${settings[@]}" --pass "${pass%%-*}" --softcap "$softcap" --dims "$DIMS" ${AB_ARGS:-} \
    > "$OUT/env_ab_$pass.txt" 2>&1
  note "env_ab $pass rc $?: $(grep -iE 'geometric|tolerance|FAILED' "$OUT/env_ab_$pass.txt" | tr '\n' ' ')"
  # Against the control (ctl=): the numbers to read.
  [ -n "$control" ] && python3 bench/ab_vs_control.py "$OUT/env_ab_$pass.txt" "$control" --markdown \
    > "$OUT/vs_control_$pass.txt" 2>&1 && note "$pass against ctl: $(grep -v '^|' "$OUT/vs_control_$pass.txt" | tr '\n' ' ')"
done

# ---- 3. tests, 4. sanitizers --------------------------------------------------------------
tested=${TEST_VARIANT:-${names[-1]}}
if [ "$tested" != none ] && [ -d "/tmp/variant_$tested/$B" ]; then
  cd "/tmp/variant_$tested" || exit 1
  compile_tests_in_background
  wait_for_compiles "a test compile failed ($tested)"
  link_tests
  [ "$FILTER" != none ] && run_suite "$tested" "$FILTER" 600
  note "worst vs float64 ($tested): bf16 dq $(worst_error "$tested" dq bf16) dk $(worst_error "$tested" dk bf16) fp16 dq $(worst_error "$tested" dq fp16)"
  [ "${SANITIZE:-0}" = 1 ] && sanitize_checks "$SANITIZE_BWD_CASES:$SANITIZE_FWD_CASES"
  cd "$ROOT" || exit 1
fi

for pass in ${PASSES:-bwd}; do [ -f "$OUT/env_ab_$pass.txt" ] && cat "$OUT/env_ab_$pass.txt"; done
pack_results
finish
