#!/usr/bin/env bash
# flash4's Hopper kernels against their peers' under Nsight Compute, one shape and pass (issues
# 4 and 9: where does flash4 spend the time cuDNN and FlashAttention-4 do not?). On an H100 /
# H200, from the repository root:
#
#   bash scripts/peer_profile.sh build      flash4 for sm_90a and build-ncu/libflash4.so
#                                           (carry .device-carry/, or only its deps.tar.xz)
#   bash scripts/peer_profile.sh IMPL...    IMPL: flash4 cudnn fa2 fa4 (fa4: flash_attn.cute
#                                           importable; bench/fa4_wheels.sh carries it)
#   PATCH=F bash scripts/peer_profile.sh build flash4 patched compare
#                                           patched: flash4 again, built from a copy of this
#                                           tree with the patch F applied (git diff output, or
#                                           docs/experiments/*.patch), as "flash4-patched":
#                                           a kernel change against its baseline, same shape
#   bash scripts/peer_profile.sh compare    the reports so far, side by side
#   bash scripts/peer_profile.sh pack       $OUT's files in one archive (below)
#
# Each IMPL runs bench/peer_once.py (the shapes of bench/peers.py; PASS = bwd or fwd, D / S /
# CAUSAL from the environment, default bwd / 128 / 4096 / 0) twice under ncu, taking only the
# kernels inside its NVTX "pass" ranges: first a listing of every kernel of the pass (name,
# time, grid, block, registers, shared memory: $OUT/IMPL.kernels.txt), then `--set full` of
# the longest one ($OUT/IMPL.ncu-rep, IMPL.raw.csv, IMPL.details.txt, IMPL.sass.csv: the
# per-instruction page, IMPL.stalls.txt: stall reasons, top instructions, opcodes, and the
# code by execution count, scripts/lib/ncu_stalls.py). `compare` prints
# scripts/lib/ncu_compare.py's table of the reports in $OUT (default ./peer-profile-out).
# The device tool brings back only a few files: `pack` leaves $OUT/peer-profile.tar.xz of
# everything but the .ncu-rep reports (KEEP_REPORTS=1 keeps those too).
set -uo pipefail
# shellcheck source=scripts/lib/hopper_check_lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/hopper_check_lib.sh"  # unpack_device_deps, copy_sources, shared_lib
OUT=${OUT:-$PWD/peer-profile-out}
mkdir -p "$OUT"
LOG=$OUT/link.txt  # shared_lib's linker output
B=build-ncu
PASS=${PASS:-bwd}
D=${D:-128}
S=${S:-4096}
CAUSAL=${CAUSAL:-0}
LIB=$PWD/$B/libflash4.so
PATCHED_LIB=/tmp/patched/$B/libflash4.so

# build_flash4_at SRC SUFFIX: flash4 for sm_90a in SRC/$B (configure / build logs
# $OUT/cfgSUFFIX.txt, $OUT/buildSUFFIX.txt).
build_flash4_at() {
  cmake -S "$1" -B "$1/$B" -G Ninja -DCMAKE_BUILD_TYPE=Release -DADEPT_CUDA_GENCODE="-gencode=arch=compute_90a,code=sm_90a" \
    > "$OUT/cfg$2.txt" 2>&1
  ninja -C "$1/$B" -j16 flash4 > "$OUT/build$2.txt" 2>&1 || { tail -20 "$OUT/build$2.txt"; return 1; }
}

build() {
  unpack_device_deps
  build_flash4_at . "" || return 1
  if [ -n "${PATCH:-}" ]; then
    # The patched copy beside it (sources only), built the same way.
    copy_sources /tmp/patched
    local patch_file
    patch_file=$(realpath "$PATCH") || return 1
    if ! (cd /tmp/patched && patch -p1 -s < "$patch_file") > "$OUT/patch.txt" 2>&1; then
      echo "$PATCH does not apply"
      return 1
    fi
    build_flash4_at /tmp/patched _patched || return 1
    shared_lib /tmp/patched/$B "$PATCHED_LIB" || { tail -5 "$LOG"; return 1; }
    echo "built $PATCHED_LIB ($PATCH applied)"
  fi
  shared_lib $B "$LIB" || { tail -5 "$LOG"; return 1; }
  echo "built $LIB"
}

profile() { # IMPL (patched: flash4 of the PATCH build, reported as flash4-patched)
  local impl=$1 name lib=$LIB
  if [ "$impl" = patched ]; then
    impl=flash4-patched
    lib=$PATCHED_LIB
  fi
  local run=(python3 bench/peer_once.py --impl "${impl%-patched}" --lib "$lib" --pass "$PASS" --d "$D" --seqlen "$S"
             --causal "$CAUSAL" --iters 1)
  timeout 300 ncu --nvtx --nvtx-include "pass" --csv --page raw --log-file "$OUT/$impl.list.csv" \
    --metrics gpu__time_duration.sum,launch__grid_size,launch__block_size,launch__registers_per_thread,launch__shared_mem_per_block_dynamic \
    "${run[@]}" > "$OUT/$impl.list.log" 2>&1 || { echo "$impl: listing failed"; tail -5 "$OUT/$impl.list.log"; return 1; }
  python3 scripts/lib/ncu_compare.py --list "$OUT/$impl.list.csv" > "$OUT/$impl.kernels.txt"
  echo "== $impl: the $PASS pass's kernels (d $D, S $S, causal $CAUSAL)"
  cat "$OUT/$impl.kernels.txt"
  name=$(python3 scripts/lib/ncu_compare.py --longest "$OUT/$impl.list.csv")
  [ -n "$name" ] || { echo "$impl: no kernel listed"; return 1; }
  timeout 400 ncu --nvtx --nvtx-include "pass" -k "regex:$name" --launch-count 1 --set full --import-source no \
    --metrics sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active,lts__t_sectors_op_red.sum,lts__t_sectors_op_atom.sum \
    -f -o "$OUT/$impl" "${run[@]}" > "$OUT/$impl.full.log" 2>&1 || { echo "$impl: profile failed"; tail -5 "$OUT/$impl.full.log"; return 1; }
  ncu -i "$OUT/$impl.ncu-rep" --page raw --csv > "$OUT/$impl.raw.csv" 2>/dev/null
  ncu -i "$OUT/$impl.ncu-rep" --print-summary none --page details --print-details all > "$OUT/$impl.details.txt" 2>&1
  python3 scripts/lib/ncu_stalls.py reasons < "$OUT/$impl.raw.csv" > "$OUT/$impl.stalls.txt"
  # The whole per-instruction page is kept ($OUT/IMPL.sass.csv, a few MB) for a second look
  # without the GPU (scripts/lib/ncu_stalls.py sass / opcodes / levels read it).
  ncu -i "$OUT/$impl.ncu-rep" --page source --print-source sass --csv > "$OUT/$impl.sass.csv" 2>/dev/null
  local mode
  for mode in sass opcodes levels; do
    python3 scripts/lib/ncu_stalls.py "$mode" < "$OUT/$impl.sass.csv" >> "$OUT/$impl.stalls.txt"
  done
  echo "-- $impl stalls"; head -25 "$OUT/$impl.stalls.txt"
}

compare() {
  local pairs=() f
  for f in "$OUT"/*.raw.csv; do
    [ -f "$f" ] && pairs+=("$(basename "$f" .raw.csv)=$f")
  done
  ((${#pairs[@]})) || { echo "no reports in $OUT"; return 1; }
  echo "== $PASS, d $D, S $S, causal $CAUSAL: the longest kernel of each"
  python3 scripts/lib/ncu_compare.py "${pairs[@]}"
}

pack() {
  local exclude=(--exclude='*.ncu-rep')
  [ "${KEEP_REPORTS:-0}" = 1 ] && exclude=()
  (cd "$OUT" && tar cJf /tmp/peer-profile.tar.xz "${exclude[@]}" --exclude=peer-profile.tar.xz . &&
    find . -maxdepth 1 -type f ! -name peer-profile.tar.xz ! -name '*.ncu-rep' -delete && mv /tmp/peer-profile.tar.xz .)
}

status=0
for arg in "$@"; do
  case $arg in
    build) build || status=1 ;;
    compare) compare || status=1 ;;
    pack) pack || status=1 ;;
    flash4 | cudnn | fa2 | fa4 | patched) profile "$arg" || status=1 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done
exit $status
