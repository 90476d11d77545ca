#!/usr/bin/env bash
# The peers table with FlashAttention-4 in it (bench/peers.py), on an H100 / H200 in two device
# calls on one warm machine (the FA4 wheels, ~106 MB, travel in two parts: bench/fa4_wheels.sh
# packs them here). Stage 1 builds flash4 for sm_90a (libflash4.so at /tmp/libflash4.so) and
# keeps part 1 of the wheels in /tmp/whl; stage 2 joins and installs the wheels and runs
# peers.py for bf16 and, while BUDGET (default 540 s) lasts, fp16. A machine that went cold
# between the calls has no /tmp/whl: stage 2 says so and stops.
#   here:   bash bench/fa4_wheels.sh
#   call 1: carry [".device-carry/deps.tar.xz", ".whl/part1"]: bash bench/fa4_device.sh 1
#   call 2: carry [".whl/part2"]:                               bash bench/fa4_device.sh 2
# Outputs under $OUT (peers_bf16.txt / .md, peers_fp16.txt / .md, log). Either stage takes a
# command after `--`, run last (stage 2: instead of peers.py, with FA4 importable), e.g. the
# per-kernel profiles of flash4 and FA4 on one shape (their reports under $OUT/p, so that the
# device tool brings them back; as run in the sixteenth session):
#   call 1: OUT=$OUT/s1 bash bench/fa4_device.sh 1 -- env OUT=$OUT/p bash scripts/peer_profile.sh build
#   call 2: OUT=$OUT/s2 bash bench/fa4_device.sh 2 -- env OUT=$OUT/p PASS=bwd D=128 S=8192 CAUSAL=1 \
#             bash scripts/peer_profile.sh flash4 fa4 compare pack
set -uo pipefail
# shellcheck source=scripts/lib/hopper_check_lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib/hopper_check_lib.sh"
stage=${1:?stage 1 or 2}
shift
extra=()
if [ "${1:-}" = -- ]; then
  shift
  extra=("$@")
fi
set --
OUT=${OUT:-$PWD/fa4-out}
check_start fa4-out "${BUDGET:-540}"
# run_extra: the command given after `--` (if any) within the time left, its status noted.
run_extra() {
  [ ${#extra[@]} -gt 0 ] || return 0
  timeout "$(time_left)" "${extra[@]}"
  note "${extra[*]}: rc $?"
}

if [ "$stage" = 1 ]; then
  build_flash4
  if ! shared_lib "$B" /tmp/libflash4.so; then
    note "libflash4.so did not link (log)"
    exit 1
  fi
  mkdir -p /tmp/whl && cp .whl/part1/* /tmp/whl/ && note "wheels part 1 kept in /tmp/whl"
  run_extra
  finish
  exit 0
fi

if [ ! -f /tmp/libflash4.so ] || ! ls /tmp/whl/*.part-aa >/dev/null 2>&1; then
  note "no stage 1 on this machine (cold start between the calls): run stage 1 again"
  finish
  exit 1
fi
cp .whl/part2/* /tmp/whl/
(
  cd /tmp/whl || exit 1
  for first in *.part-aa; do
    cat "${first%.part-aa}".part-* > "${first%.part-aa}" && rm -f "${first%.part-aa}".part-*
  done
  python3 -m pip install -q --no-index --no-deps --target /tmp/site3 ./*.whl
) >>"$LOG" 2>&1 || { note "wheel install failed (log)"; finish; exit 1; }
# pip --target does not run the CuTe DSL's .pth file: its packages go on PYTHONPATH by hand.
export PYTHONPATH=/tmp/site3:/tmp/site3/nvidia_cutlass_dsl/dsl_packages${PYTHONPATH:+:$PYTHONPATH}
if [ ${#extra[@]} -gt 0 ]; then
  run_extra
  finish
  exit 0
fi
for dtype in bf16 fp16; do
  left=$(time_left)
  [ "$left" -lt 120 ] && { note "no time left for $dtype"; break; }
  say "peers $dtype with FA4"
  timeout "$left" python3 bench/peers.py --ctypes --lib /tmp/libflash4.so --repeats 10 --dtype "$dtype" \
    --markdown "$OUT/peers_$dtype.md" > "$OUT/peers_$dtype.txt" 2>&1
  note "peers $dtype rc $?: $(grep -c '^ *[0-9]' "$OUT/peers_$dtype.txt") rows; $(grep -m1 'FlashAttention-4 not' "$OUT/peers_$dtype.txt")"
  cat "$OUT/peers_$dtype.txt"
done
finish
