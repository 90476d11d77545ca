#!/usr/bin/env bash
# Device check of the Hopper forward's inter-tile overlap (FLASH4_HOPPER_FWD_TILE_OVERLAP=1,
# opt-in, written without a GPU in the ninth session; forward_sm90.cuh, kOverlapTiles): each
# consumer warpgroup issues the next tile's first S = Q K^T right behind its tile's last P V
# and finishes the tile (O / l, the O stores, the lse) while that S runs, where it used to
# finish first and then start the next tile's S (ncu, H200, d 64 S 512 causal: 0.72x cuDNN,
# tiles of one to four key blocks). In one call on an H100 / H200 from the repository root
# (carry .device-carry/, or only its deps.tar.xz):
#   1. build   flash4 for sm_90a, the flash4-only GPU tests and flash4-bench; registers / stack
#              of the forward kernels (the dense kernels' producer 8 bytes, as before);
#   2. smoke   TileOverlap case 0 with FLASH4_LOG=1 (the log must name the overlap); a failure
#              or hang (a wait for the wrong phase): memcheck, stop;
#   3. test    TileOverlap/* (every forward case up to d 128 incl. paged and packed GQA, with
#              the dynamic and static schedules, pingpong, three warpgroups, the store warp),
#              then the default forward suites (the loop's S moved out of the tile), in SHARDS
#              shards (default 6);
#   4. bench   flash4-bench forward at d 64 and 128, FLASH4_HOPPER_FWD_TILE_OVERLAP=0 and =1 in
#              alternate processes, twice, the better of each ($OUT/bench_table.md);
#   5. check   compute-sanitizer memcheck and racecheck of two small TileOverlap cases.
# Every stage's timeout is cut to the time left of BUDGET seconds (default 480). Outputs go to
# $OUT (default ./hopper-fwd-overlap-out), packed into results.tar.gz beside bench_table.md.
#
#   [SHARDS=6] bash scripts/hopper_fwd_overlap_check.sh [--no-bench]
set -uo pipefail
# shellcheck source=scripts/lib/hopper_check_lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/hopper_check_lib.sh"

check_start hopper-fwd-overlap-out 480 "$@"
SHARDS=${SHARDS:-6}
[ -f .device-carry/deps.tar ] || xz -dc .device-carry/deps.tar.xz > .device-carry/deps.tar

# ---- 1. build -----------------------------------------------------------------------------
build_flash4
build_tests_and_bench
for obj in forward_sm90_hdim64 forward_sm90_hdim128; do
  note "$obj registers: $(registers $obj)"
done

# ---- 2. smoke -----------------------------------------------------------------------------
say "smoke: TileOverlap cases 0 and 1 (FLASH4_LOG=1)"
smoke_or_stop 'TileOverlap/Flash4HopperTileOverlap.RunsOn*/0_*:TileOverlap/Flash4HopperTileOverlap.RunsOn*/1_*' 60 120 \
  "a wait for the wrong phase (q_full / k_full of the next tile)" "first S beside"
smoke_says "first S beside the last P V" "the switch did not reach the kernel"

# ---- 3. tests -----------------------------------------------------------------------------
run_suite overlap 'TileOverlap/*' 200
note "overlap worst vs float64: bf16 out $(worst_error overlap out bf16) lse $(worst_error overlap lse bf16); fp16 out $(worst_error overlap out fp16)"
limit=$(($(time_left) - 130))
run_suite existing 'Covered/Flash4Hopper.*:Window/Flash4Hopper.*:Varlen/Flash4Hopper.*:Padded/Flash4Hopper.*:D64/*:Sink/Flash4Hopper.*' \
  $((limit > 30 ? limit : 30))

# ---- 4. bench -----------------------------------------------------------------------------
# fwd_rows OVERLAP D: flash4-bench's forward rows "S causal TF" at head dim D.
fwd_rows() {
  FLASH4_HOPPER_FWD_TILE_OVERLAP=$1 timeout "$(budget 40)" "$B/bin/flash4-bench" --d "$2" --repeats 10 --deterministic 0 \
    2>>"$LOG" | awk '$1 ~ /^[0-9]+$/ && $6 == "|" {print $2, $5, $8}'
}
# best_of A B: row by row, "S causal max(TF_A, TF_B)".
best_of() { paste -d' ' "$1" "$2" | awk '{print $1, $2, ($3 > $6 ? $3 : $6)}'; }
if [ "$BENCH" = 1 ]; then
  say "bench: forward, FLASH4_HOPPER_FWD_TILE_OVERLAP=0 vs 1, two rounds"
  { echo "| d | S | causal | fwd TF/s without | with the overlap | with / without |"
    echo "|---|---|---|---|---|---|"; } >"$OUT/bench_table.md"
  for d in 64 128; do
    for round in 1 2; do
      fwd_rows 0 $d >"$OUT/b_d${d}_off$round.txt"
      fwd_rows 1 $d >"$OUT/b_d${d}_on$round.txt"
    done
    best_of "$OUT/b_d${d}_off1.txt" "$OUT/b_d${d}_off2.txt" >"$OUT/b_d${d}_off.txt"
    best_of "$OUT/b_d${d}_on1.txt" "$OUT/b_d${d}_on2.txt" >"$OUT/b_d${d}_on.txt"
    paste -d' ' "$OUT/b_d${d}_off.txt" "$OUT/b_d${d}_on.txt" |
      awk -v d=$d '{printf "| %s | %s | %s | %s | %s | %.3f |\n", d, $1, $2, $3, $6, ($3 > 0 ? $6 / $3 : 0)}' \
      >>"$OUT/bench_table.md"
  done
  note "geomean overlap / without: $(awk -F'|' 'NR > 2 && $7 + 0 > 0 {s += log($7); n++} END {if (n) printf "%.3f (%d rows)", exp(s / n), n}' "$OUT/bench_table.md")"
fi

# ---- 5. sanitizers ------------------------------------------------------------------------
SMALL='TileOverlap/Flash4HopperTileOverlap.RunsOn*/0_*:TileOverlap/Flash4HopperTileOverlap.StaticSchedule*/1_*'
sanitize_stage memcheck "$SMALL" 60
sanitize_stage racecheck "$SMALL" 60

(cd "$OUT" && tar czf /tmp/fwd_overlap_results.tar.gz --exclude=bench_table.md . &&
  find . -maxdepth 1 -type f ! -name bench_table.md -delete && mv /tmp/fwd_overlap_results.tar.gz results.tar.gz)
finish
