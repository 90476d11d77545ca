#!/usr/bin/env bash
# Device check of the Hopper (sm90a) forward features first run on an H200 on 2026-12-01 and
# the defaults since: paged K / V (FLASH4_HOPPER_PAGED=0 opts out; k / v [pages, page_size, Hkv, D] and a page
# table, page_size a multiple of 8, no softcap: the producer gathers each key block in TMA
# boxes of gcd(page_size, key block) rows from the sequence's pages, load_key_block in
# forward_sm90.cuh, kernels of their own: kPaged), packed GQA (FLASH4_HOPPER_PACK_GQA=auto|1:
# a KV head's query heads in one tile's rows for short Sq, kPackGqa) and, in those kernels,
# split-KV (FLASH4_HOPPER_SPLIT_KV=auto|N: flash-decoding, merged by split_combine.cu), and the
# TMA store of O (FLASH4_HOPPER_TMA_STORE_O=0 opts out: dense q, d <= 128), in one call on an H100 / H200
# from the repository root (carry .device-carry/):
#   1. build   flash4 for sm_90a only, the flash4-only GPU tests and flash4-bench with nvcc;
#              registers / stack of the forward kernels (the dense ones 0 spills; the paged
#              ones 0 / 8 / 4 bytes at d 128 / 64 / 256 on this toolkit);
#   2. smoke   Paged case 0 (d 128, pages of 8) with FLASH4_LOG=1: the log must say "paged KV";
#              a failure or hang (the transaction bytes of a gathered block): memcheck, stop;
#   3. test    Paged/Flash4HopperPaged.* (page sizes 8 .. 256, d 64 / 96 / 128 / 256, causal,
#              windows, decode-like Sq = 1, seqused_k 0, packed queries, a sink; NaN in every
#              unused slot; each unpacked and packed) and PackGqa/Flash4HopperPackGqa.* (each
#              whole and in 4 split-KV runs) against
#              float64, RegisterStore/Flash4HopperRegisterStoreO.* (the opt-out), the dispatch tests, then the existing
#              forward suites (the producer's key-block loop and the tile arithmetic changed)
#              and the covered bulk-dQ backward (the tensor maps' encoder was refactored);
#              SplitUnpacked/Flash4HopperSplitKvUnpacked.* (split-KV of unpacked q, the default
#              since 2026-12-01: MHA and groups 3 / 32 split in the packed kernels at q_pack 1);
#   4. bench   flash4-bench --paged: decode (8 x 8192 keys, one query, GQA 32 / 8) at page sizes
#              16 / 24 / 64 / 256 and a causal prefill, paged against the same keys contiguous,
#              unpacked, packed GQA, packed with split-KV; flash4-bench forward at d 64 / 128 with
#              and without the TMA store of O;
#   5. check   compute-sanitizer memcheck and racecheck of two small paged cases.
# Every stage's timeout is cut to the time left of BUDGET seconds (default 420). Everything
# goes to $OUT (default ./hopper-fwd-features-out).
#
#   bash scripts/hopper_fwd_features_check.sh
set -uo pipefail
# shellcheck source=scripts/lib/hopper_check_lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/hopper_check_lib.sh"

check_start hopper-fwd-features-out 420 "$@"

# ---- 1. build -------------------------------------------------------------------------
build_flash4
build_tests_and_bench
for obj in forward_sm90_hdim64 forward_sm90_hdim128 forward_sm90_hdim256; do
  note "$obj registers: $(registers $obj)"
done

# ---- 2. smoke -------------------------------------------------------------------------
SMOKE='Paged/Flash4HopperPaged.*/0_*:PackGqa/Flash4HopperPackGqa.*/0_*'
say "smoke: paged case 0 and packed-GQA case 0 (FLASH4_LOG=1)"
smoke_or_stop "$SMOKE" 60 120 "a gathered block's transaction bytes (boxes x rows != the key block)" "paged KV|packed GQA"
smoke_says "paged KV" "the paged call did not reach the Hopper kernels"
smoke_says "packed GQA" "packing never ran"
# Split-KV of unpacked q (the default; FLASH4_HOPPER_SPLIT_KV_UNPACKED=0 opts out): MHA decode.
# A failure here is noted and the check goes on.
smoke 'SplitUnpacked/Flash4HopperSplitKvUnpacked.*/0_*' "$(budget 60)" "split-KV" ||
  note "SMOKE FAILED: SplitUnpacked case 0 (rc $?; 124 = a hang)"
smoke_says "split-KV" "the unpacked call did not split"

# ---- 3. tests -------------------------------------------------------------------------
run_suite paged 'Paged/Flash4HopperPaged.*:PackGqa/Flash4HopperPackGqa.*' 120
run_suite splitunpacked 'SplitUnpacked/Flash4HopperSplitKvUnpacked.*' 60
run_suite registerstore 'RegisterStore/Flash4HopperRegisterStoreO.*' 60
note "paged worst vs float64: bf16 out $(worst_error paged out bf16) lse $(worst_error paged lse bf16); fp16 out $(worst_error paged out fp16) lse $(worst_error paged lse fp16)"
n_portable=$(grep -cE "^\[ errors \].*\| portable" "$OUT/tests_paged.txt" 2>/dev/null)
note "paged cases on the portable kernels: ${n_portable:-0} (expect 0)"
run_suite dispatch 'Flash4HopperDispatch.*' 60
limit=$(($(time_left) - 110))
# EXISTING=0 skips them (a call that runs the whole flash4 suite after this check).
[ "${EXISTING:-1}" = 0 ] || run_suite existing 'Covered/Flash4Hopper.*:Varlen/Flash4Hopper.*:Window/Flash4Hopper.*:Padded/Flash4Hopper.*:Covered/Flash4HopperBackwardBulkDq.*' \
  $((limit > 30 ? limit : 30))

# ---- 4. bench ----------------------------------------------------------------------------------
# flash4-bench --paged: the paged forward against the same keys contiguous, one process each
# shape (decode: 8 x 8192 keys, one query, GQA 32 / 8; prefill: 4 x 2048 causal).
say "flash4-bench --paged: paged vs contiguous"
{ echo "| shape | page size | paged ms | contiguous ms | paged / contiguous | GB/s paged | max diff |"
  echo "|---|---|---|---|---|---|---|"; } >"$OUT/bench_table.md"
# decode: unpacked; +pack: packed GQA; +split: with split-KV (the defaults); :portable: the paged
# side on the portable kernels (FLASH4_HOPPER_PAGED=0; the contiguous side stays on Hopper);
# mha: Hq = Hkv = 8 (nothing to pack).
for run in "decode 16 --seqlen-q 1" "decode 64 --seqlen-q 1" "decode 256 --seqlen-q 1" "decode 24 --seqlen-q 1" \
           "decode+pack 64 --seqlen-q 1" "decode+pack+split 64 --seqlen-q 1" \
           "decode+pack+split 16 --seqlen-q 1" "decode+pack+split:portable 16 --seqlen-q 1" \
           "decode+pack+split 24 --seqlen-q 1" "decode+pack+split:portable 24 --seqlen-q 1" \
           "mha 16 --seqlen-q 1 --hq 8 --hkv 8" "mha:portable 16 --seqlen-q 1 --hq 8 --hkv 8" \
           "mha 64 --seqlen-q 1 --hq 8 --hkv 8" "mha:portable 64 --seqlen-q 1 --hq 8 --hkv 8" \
           "mha+split 64 --seqlen-q 1 --hq 8 --hkv 8" "mha+split 16 --seqlen-q 1 --hq 8 --hkv 8" \
           "gqa3+split 64 --batch 2 --seqlen-q 1 --hq 24 --hkv 8" "gqa3 64 --batch 2 --seqlen-q 1 --hq 24 --hkv 8" \
           "prefill 64 --batch 4 --seqlen-q 2048 --seqlen-k 2048 --causal 1" \
           "prefill:portable 64 --batch 4 --seqlen-q 2048 --seqlen-k 2048 --causal 1" \
           "prefill 16 --batch 4 --seqlen-q 2048 --seqlen-k 2048 --causal 1" \
           "prefill:portable 16 --batch 4 --seqlen-q 2048 --seqlen-k 2048 --causal 1"; do
  read -r name page rest <<<"$run"
  pack=0 split=1 paged=1 unpacked=0
  case $name in *:portable) paged=0 ;; esac
  case ${name%:portable} in
    decode+pack) pack=auto ;;
    decode+pack+split | mha | gqa3 | prefill) pack=auto split=auto ;;
    mha+split | gqa3+split) pack=auto split=auto unpacked=1 ;;  # unpacked q split (the default)
  esac
  # shellcheck disable=SC2086  # rest: the shape's own options
  line=$(FLASH4_HOPPER_SPLIT_KV_UNPACKED=$unpacked FLASH4_HOPPER_PAGED=$paged FLASH4_HOPPER_PACK_GQA=$pack FLASH4_HOPPER_SPLIT_KV=$split timeout "$(budget 20)" "$B/bin/flash4-bench" \
    --paged "$page" $rest --repeats 20 2>&1 | tee -a "$LOG" | grep "^paged |")
  echo "$line" | awk -v n="$name" -v ps="$page" -F'|' '{split($2, a, " "); split($4, c, " ");
    match($5, /[0-9.]+/); r = substr($5, RSTART, RLENGTH); match($6, /[0-9.e+-]+ *$/); d = substr($6, RSTART, RLENGTH); gsub(/ /, "", d);
    printf "| %s | %s | %s | %s | %s | %s | %s |\n", n, ps, a[3], c[3], r, a[7], d}' >>"$OUT/bench_table.md"
done

# flash4-bench forward, register stores of O vs the TMA store (separate processes).
{ echo; echo "| d | S | causal | fwd TF/s registers | fwd TF/s TMA store | ratio |"; echo "|---|---|---|---|---|---|"; } \
  >>"$OUT/bench_table.md"
for d in 64 128; do
  for store in 0 1; do
    FLASH4_HOPPER_TMA_STORE_O=$store timeout "$(budget 25)" "$B/bin/flash4-bench" --d $d --repeats 10 --deterministic 0 \
      2>/dev/null | awk '$1 ~ /^[0-9]+$/ && $6 == "|" {print $1, $2, $5, $8}' >"$OUT/bench_store$store.d$d.txt"
  done
  awk 'NR == FNR {f[$2 " " $3] = $4; next} {r = f[$2 " " $3]; printf "| %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, r, $4,
       (r > 0 ? sprintf("%.3f", $4 / r) : "-")}' "$OUT/bench_store0.d$d.txt" "$OUT/bench_store1.d$d.txt" \
    >>"$OUT/bench_table.md"
done

# ---- 5. sanitizers ----------------------------------------------------------------------------
# Decode-like d 128 in pages of 8; packed queries; packed GQA with seqused_k.
SMALL='Paged/Flash4HopperPaged.*/1_*:Paged/Flash4HopperPaged.*/24_*:PackGqa/Flash4HopperPackGqa.*/3_*:RegisterStore/*/2_*'
sanitize_stage memcheck "$SMALL" 60
sanitize_stage racecheck "$SMALL" 60

finish
