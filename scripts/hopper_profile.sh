#!/usr/bin/env bash
# Nsight Compute profiles of flash4's Hopper kernels, for the "where is the gap" question of
# issues 4 and 9, in one call on an H100 / H200 from the repository root (carry
# .device-carry/): builds flash4 for sm_90a and flash4-bench (with -lineinfo), then one
# launch each (after 3 warm-ups) under `ncu --set full`: the forward at d 64, S 1k,
# non-causal and at d 128, S 1k, causal (the furthest rows from cuDNN), the backward at
# d 128, S 4k and d 256, S 4k; the backward as adept's training calls it (d 64, S 4k, causal,
# deterministic); and the opt-in variants beside their defaults (the d 64 forward with three
# consumer warpgroups, the d 64 backward with the per-warpgroup dQ hand-over). Writes
# $OUT/NAME.ncu-rep (open in Nsight Compute), NAME.txt (details page) and NAME.stalls.txt
# (stall reasons and the most-stalled SASS instructions), and prints the headline metrics and
# stalls of each. NAMEs on the command line pick profiles (default: all).
#
#   bash scripts/hopper_profile.sh [NAME...]
set -uo pipefail
OUT=${OUT:-$PWD/hopper-profile-out}
mkdir -p "$OUT"
tar xf .device-carry/deps.tar -C / --skip-old-files 2>/dev/null
B=build-ncu
cmake -S . -B $B -G Ninja -DCMAKE_BUILD_TYPE=Release -DADEPT_CUDA_GENCODE="-gencode=arch=compute_90a,code=sm_90a" > $OUT/cfg.txt 2>&1
ninja -C $B -j16 flash4 > $OUT/build.txt 2>&1 || { tail $OUT/build.txt; exit 1; }
mkdir -p $B/bin
nvcc -std=c++20 -O2 --expt-relaxed-constexpr -gencode=arch=compute_90a,code=sm_90a -lineinfo -Iflash4/include -Iflash4/src bench/flash4_bench.cu $B/flash4/libflash4.a -lgomp -lcuda -o $B/bin/flash4-bench >> $OUT/build.txt 2>&1 || { tail $OUT/build.txt; exit 1; }
picked=("$@")
prof() { # name kernel-regex bench-args (the environment of the call applies)
  local n=$1 k=$2; shift 2
  if ((${#picked[@]})) && [[ " ${picked[*]} " != *" $n "* ]]; then return; fi
  timeout 150 ncu -k "regex:$k" --launch-skip 3 --launch-count 1 --set full --import-source no -o $OUT/$n $B/bin/flash4-bench "$@" > $OUT/$n.log 2>&1
  ncu -i $OUT/$n.ncu-rep --print-summary none --page details > $OUT/$n.txt 2>&1
  echo "== $n"; grep -E "Duration|Compute \(SM\) Throughput|Memory Throughput|Registers Per|Achieved Occupancy|Issue Slots Busy|No Eligible|Executed Ipc Active|Warp Cycles Per Issued|Stall|L2 Hit|Tensor|Pipe" $OUT/$n.txt | head -40
  # Where the warps wait: the stall reasons, and the SASS instructions with the most samples
  # (which barrier or wgmma wait; scripts/lib/ncu_stalls.py).
  ncu -i $OUT/$n.ncu-rep --page raw --csv 2>/dev/null | python3 scripts/lib/ncu_stalls.py reasons > $OUT/$n.stalls.txt
  ncu -i $OUT/$n.ncu-rep --page source --print-source sass --csv 2>/dev/null |
    python3 scripts/lib/ncu_stalls.py sass >> $OUT/$n.stalls.txt
  echo "-- $n stalls"; head -40 $OUT/$n.stalls.txt
}
prof fwd_d64_s1k attention_forward_sm90 --d 64 --seqlen 1024 --causal 0 --repeats 3 --deterministic 0
prof fwd_d128_s1k_causal attention_forward_sm90 --d 128 --seqlen 1024 --causal 1 --repeats 3 --deterministic 0
prof bwd_d128_s4k attention_backward_sm90_kernel --d 128 --seqlen 4096 --causal 0 --repeats 3 --deterministic 0
prof bwd_d64_s4k_causal_det attention_backward_sm90_kernel --d 64 --seqlen 4096 --causal 1 --repeats 3 --deterministic 1
prof bwd_d64_s4k attention_backward_sm90_kernel --d 64 --seqlen 4096 --causal 0 --repeats 3 --deterministic 0
FLASH4_HOPPER_DQ=per_warpgroup prof bwd_d64_s4k_per_warpgroup attention_backward_sm90_kernel --d 64 --seqlen 4096 \
  --causal 0 --repeats 3 --deterministic 0
prof bwd_d256_s4k attention_backward_sm90_kernel --d 256 --seqlen 4096 --causal 0 --repeats 3 \
  --deterministic 0
FLASH4_HOPPER_FWD_WARPGROUPS=3 prof fwd_d64_s1k_wg3 attention_forward_sm90 --d 64 --seqlen 1024 --causal 0 \
  --repeats 3 --deterministic 0
ls -la $OUT
