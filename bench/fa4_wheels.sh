#!/usr/bin/env bash
# FlashAttention-4 (PyPI flash-attn-4, pre-release, on nvidia-cutlass-dsl) as a peer for
# bench/peers.py on the GPU machine, which has no network: download the wheels here, for
# its Python 3.12, and pack them into .whl/part1 and .whl/part2 (git-ignored), each small
# enough to travel in one device call (64 MiB with the 5 MiB tree, so no room for
# .device-carry beside them: part2 also takes libflash4.so, linked here from build/ and
# xz-compressed, 1.6 MB). The CUDA library wheel (~92 MB) is split across the two parts,
# so they travel in two calls on one warm machine (as run on 2x H200, 2026-11-30):
#   here:   cmake --build build && bash bench/fa4_wheels.sh
#   call 1: carry [".whl/part1"]: mkdir -p /tmp/whl && cp .whl/part1/* /tmp/whl/
#   call 2: carry [".whl/part2"]: cp .whl/part2/* /tmp/whl/ && cd /tmp/whl &&
#           cat *.whl.part-* > nvidia_cutlass_dsl_libs_cu13-4.8.1-cp312-cp312-manylinux_2_28_x86_64.whl &&
#           rm *.part-* && python3 -m pip install -q --no-index --no-deps --target /tmp/site3 *.whl &&
#           xz -dc libflash4.so.xz > /tmp/libflash4.so && cd - &&
#           PYTHONPATH=/tmp/site3:/tmp/site3/nvidia_cutlass_dsl/dsl_packages python3 bench/peers.py --ctypes \
#             --lib /tmp/libflash4.so
# (pip --target does not run the cutlass DSL's .pth file, hence dsl_packages on PYTHONPATH.)
# To spend the first call on a device check too (as on 2026-12-01, fifth session): part1 holds
# only the big wheel's first piece (PART1_MIB=52, the default), so it travels beside the tree
# and .device-carry/deps.tar.xz (xz -T2 -6 of deps.tar, 2.6 MB; unpack it with xz -dc first):
#   call 1: carry [".device-carry/deps.tar.xz", ".whl/part1"]: the check, then
#           mkdir -p /tmp/whl && cp .whl/part1/* /tmp/whl/
#   call 2: carry [".whl/part2"]: as above, with --lib a libflash4.so linked there from the
#           check's build-gpu/flash4/libflash4.a (the machine keeps ignored build outputs while warm).
set -euo pipefail
cd "$(dirname "$0")/.."
dl() {
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any -d .whl/all "$@"
}
rm -rf .whl/all .whl/part1 .whl/part2
mkdir -p .whl/all .whl/part1 .whl/part2
# FA4_VERSION: the flash-attn-4 pre-release (4.0.0b36 until the sixteenth session).
dl --pre "flash-attn-4==${FA4_VERSION:-4.0.0b40}"
dl "nvidia-cutlass-dsl==4.8.1" "nvidia-cutlass-dsl-libs-base==4.8.1" "nvidia-cutlass-dsl-libs-core==4.8.1" \
  "nvidia-cutlass-dsl-libs-cu13==4.8.1" "cuda-bindings==13.5.0" "cuda-pathfinder==1.9.1" "protobuf==7.36.2" \
  "apache-tvm-ffi==0.1.15.post2" "torch-c-dlpack-ext==0.1.5" "quack-kernels==0.6.5" "einops==0.8.1"
# The big wheel in 50 MiB pieces: the first piece goes alone in part1, the rest in part2.
for w in .whl/all/*.whl; do
  if [ "$(stat -c %s "$w")" -gt $((60 * 1024 * 1024)) ]; then
    split -b 50M "$w" ".whl/all/$(basename "$w").part-"
    mv ".whl/all/$(basename "$w").part-aa" .whl/part1/
    mv .whl/all/"$(basename "$w")".part-* .whl/part2/
    rm "$w"
  fi
done
# The small wheels fill part1 up to PART1_MIB (default 52), then part2.
used=$(du -sb .whl/part1 | cut -f1)
for w in $(ls -S .whl/all/*.whl); do
  size=$(stat -c %s "$w")
  if ((used + size < ${PART1_MIB:-52} * 1024 * 1024)); then mv "$w" .whl/part1/; used=$((used + size)); else mv "$w" .whl/part2/; fi
done
rmdir .whl/all
# flash4 for the peers table, linked from this machine's build (its gencode includes sm_90a).
if [ -f build/flash4/libflash4.a ]; then
  g++ -shared -o .whl/libflash4.so -Wl,--whole-archive build/flash4/libflash4.a -Wl,--no-whole-archive \
    -L/usr/local/cuda/lib64 -lcudart_static -ldl -lrt -lpthread -lgomp
  xz -f -T2 .whl/libflash4.so && mv .whl/libflash4.so.xz .whl/part2/
else
  echo "no build/flash4/libflash4.a: build here first, or build libflash4.so on the device" >&2
fi
du -sh .whl/part1 .whl/part2
