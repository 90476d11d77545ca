#!/usr/bin/env bash
# Packs the build dependencies the GPU machine lacks (it has CUDA, CMake, ninja and PyTorch,
# but not Debian's dev packages: GoogleTest, nlohmann-json, CLI11, fmt, spdlog, toml++,
# sentencepiece, Google Benchmark) into .device-carry/deps.tar (git-ignored), from this
# machine's installed packages (scripts/install_deps.sh installs them), and an xz copy,
# deps.tar.xz (~2.6 MB against ~13 MB), for calls that carry large wheels beside it.
# The device checks unpack deps.tar over / (tar xf .device-carry/deps.tar -C / --skip-old-files;
# scripts/lib/hopper_check_lib.sh does); with only the xz copy carried, first
#   xz -dc .device-carry/deps.tar.xz > .device-carry/deps.tar
#
#   bash scripts/make_device_carry.sh
set -euo pipefail
cd "$(dirname "$0")/.."
packages=(libgtest-dev googletest nlohmann-json3-dev libcli11-dev libfmt-dev libspdlog-dev libtomlplusplus-dev
          libsentencepiece-dev libbenchmark-dev)
# The runtime libraries the dev packages depend on (libfmt9, libspdlog1.10, ...): their
# Depends lines, lib* names only (libc and the compiler's own are on the device already).
runtime=$(dpkg-query -W -f='${Depends}\n' "${packages[@]}" | tr ',' '\n' | sed -E 's/^ *//; s/ .*//' |
  grep -E '^lib(fmt|spdlog|tomlplusplus|sentencepiece|benchmark|gtest)' | sort -u)
mkdir -p .device-carry
list=$(mktemp)
for p in "${packages[@]}" $runtime; do
  dpkg -L "$p" | while read -r f; do
    if [ -f "$f" ] || [ -L "$f" ]; then echo "$f"; fi
  done
done | sort -u >"$list"
tar cf .device-carry/deps.tar -T "$list" 2>/dev/null
xz -T2 -6 -c .device-carry/deps.tar >.device-carry/deps.tar.xz
rm -f "$list"
ls -la .device-carry
