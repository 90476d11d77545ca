#!/usr/bin/env bash
# FlashAttention-4 (PyPI flash-attn-4, pre-release, on nvidia-cutlass-dsl) as a peer for
# bench/peers.py on the GPU machine, which has no network: download the wheels here, for
# its Python 3.12, into .whl/ (git-ignored), and split any wheel over 60 MB, since one
# device call carries at most 64 MiB. The CUDA library wheel is about 92 MB, so it travels
# in two calls on one warm machine:
#   here:   bash bench/fa4_wheels.sh
#   call 1: carry [".whl/part1"]: mkdir -p /tmp/whl && cp .whl/part1/* /tmp/whl/
#   call 2: carry [".whl/part2"]: cp .whl/part2/* /tmp/whl/ && cd /tmp/whl &&
#           cat *.whl.part-* > "$(ls *.whl.part-aa | sed 's/.part-aa$//')" && rm *.part-* &&
#           python3 -m pip install -q --no-index --no-deps --target /tmp/site /tmp/whl/*.whl &&
#           export PYTHONPATH=/tmp/site ... python3 bench/peers.py
set -euo pipefail
cd "$(dirname "$0")/.."
dl() {
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any -d .whl/all "$@"
}
mkdir -p .whl/all .whl/part1 .whl/part2
dl --pre "flash-attn-4==4.0.0b36"
dl "nvidia-cutlass-dsl==4.8.1" "nvidia-cutlass-dsl-libs-base==4.8.1" "nvidia-cutlass-dsl-libs-cu13==4.8.1" \
  "apache-tvm-ffi==0.1.15.post2" "torch-c-dlpack-ext==0.1.5" "quack-kernels==0.6.5" "einops==0.8.1"
for w in .whl/all/*.whl; do
  if [ "$(stat -c %s "$w")" -gt $((60 * 1024 * 1024)) ]; then
    split -b 50M "$w" ".whl/all/$(basename "$w").part-"
    mv ".whl/all/$(basename "$w").part-aa" .whl/part1/
    mv .whl/all/"$(basename "$w")".part-* .whl/part2/
    rm "$w"
  fi
done
mv .whl/all/*.whl .whl/part2/
du -sh .whl/part1 .whl/part2
