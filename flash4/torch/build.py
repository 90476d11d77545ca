#!/usr/bin/env python3
"""Builds flash4's PyTorch extension: libflash4 through the project's CMake, then
csrc/flash4_op.cpp through torch.utils.cpp_extension, linked against it.

    python3 flash4/torch/build.py [--sm90a-only | --gencode="-gencode=..."] [--jobs 16]

Output: build-torch/lib/libflash4.so (the C ABI) and build-torch/ext/flash4_torch.so (the
ops, linked to it), which `import flash4` (PYTHONPATH=flash4/torch)
loads. Needs PyTorch, CMake, Ninja and the project's C++ build dependencies
(scripts/install_deps.sh; on the device machine, .device-carry/deps.tar). Not part of
the CMake build or CI: CI has no PyTorch.
"""
import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def run(cmd):
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True)


def uses_driver_api(archive: Path) -> bool:
    """Whether libflash4.a calls the CUDA driver API (cu* symbols, e.g. tensor maps)."""
    listing = subprocess.run(["nm", "-u", str(archive)], capture_output=True, text=True).stdout
    names = [line.split()[-1] for line in listing.splitlines() if line.strip()]
    return any(n.startswith("cu") and n[2:3].isupper() for n in names)


def link_shared_library(archive: Path, lib_dir: Path, cuda_home: Path, cxx: str) -> Path:
    """libflash4.so from libflash4.a: the C ABI (flash4_*) exported and nothing else, the CUDA
    runtime linked statically as scripts/gpu_check.sh links it for bench/peers.py's ctypes
    path, and libstdc++ statically where the toolchain allows, so that no other library in
    the process (torch, the extension) can stand in for the C++ runtime it was built with."""
    lib_dir.mkdir(parents=True, exist_ok=True)
    exports = lib_dir / "flash4.map"
    exports.write_text("{ global: flash4_*; local: *; };\n")
    listing = subprocess.run(["nm", "-u", str(archive)], capture_output=True, text=True).stdout
    uses_cuda = any(line.split()[-1].startswith("cuda") for line in listing.splitlines() if line.strip())
    shared = lib_dir / "libflash4.so"
    cmd = [cxx, "-shared", "-o", shared, "-Wl,--whole-archive", archive, "-Wl,--no-whole-archive",
           f"-Wl,--version-script={exports}"]
    if uses_cuda:
        cmd += [f"-L{cuda_home / 'lib64'}", "-lcudart_static", "-ldl", "-lrt", "-lpthread"]
    if uses_driver_api(archive):
        cmd += [f"-L{cuda_home / 'lib64' / 'stubs'}", "-lcuda"]
    cmd += ["-lgomp"]
    try:
        run(cmd[:1] + ["-static-libstdc++"] + cmd[1:])
    except subprocess.CalledProcessError:
        print("static libstdc++ did not link here; linking the shared one", flush=True)
        run(cmd)
    return shared


def cmake_cxx_compiler(cmake_dir: Path) -> str:
    for line in (cmake_dir / "CMakeCache.txt").read_text().splitlines():
        if line.startswith("CMAKE_CXX_COMPILER:"):
            return line.split("=", 1)[1]
    return "g++"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "build-torch"), help="build directory (default build-torch)")
    ap.add_argument("--cmake-build", default=None, help="CMake build directory for libflash4 (default OUT/cmake)")
    ap.add_argument("--gencode", default=None,
                    help="ADEPT_CUDA_GENCODE (write --gencode=-gencode=arch=...,code=...: the value starts with '-')")
    ap.add_argument("--sm90a-only", action="store_true",
                    help="kernels for sm_90a alone (H100 / H200), a faster build than the default sm_80 + sm_90a")
    ap.add_argument("--cuda", choices=["auto", "on", "off"], default="auto",
                    help="build flash4's CUDA backends (auto: when nvcc is found)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count())
    args = ap.parse_args()

    out = Path(args.out).resolve()
    cmake_dir = Path(args.cmake_build).resolve() if args.cmake_build else out / "cmake"
    t0 = time.time()
    configure = ["cmake", "-S", REPO, "-B", cmake_dir, "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
                 "-DADEPT_TESTS=OFF", "-DADEPT_BENCH=OFF"]
    gencode = "-gencode=arch=compute_90a,code=sm_90a" if args.sm90a_only else args.gencode
    if gencode:
        configure.append(f"-DADEPT_CUDA_GENCODE={gencode}")
    if args.cuda != "auto":
        configure.append(f"-DADEPT_CUDA={'ON' if args.cuda == 'on' else 'OFF'}")
    run(configure)
    run(["ninja", "-C", cmake_dir, f"-j{args.jobs}", "flash4"])
    archive = cmake_dir / "flash4" / "libflash4.a"
    t1 = time.time()
    print(f"libflash4 built in {t1 - t0:.1f} s: {archive}", flush=True)

    # Imported late: the CMake step does not need torch.
    from torch.utils import cpp_extension

    shared = link_shared_library(archive, out / "lib", Path(cpp_extension.CUDA_HOME or "/usr/local/cuda"),
                                 cmake_cxx_compiler(cmake_dir))
    ext_dir = out / "ext"
    ext_dir.mkdir(parents=True, exist_ok=True)
    # The extension exports no symbol: its ops register from static initialisers. On the
    # H200 machine cpp_extension's compiler (/opt/gcc) put a static libstdc++ into the
    # extension and exported it, and libflash4's iostream calls bound to that copy and
    # crashed (2026-11-30, cuda-gdb backtrace through flash4::detail::validate_forward).
    hide_all = ext_dir / "hide_all.map"
    hide_all.write_text("{ local: *; };\n")
    ldflags = [f"-L{shared.parent}", "-lflash4", f"-Wl,-rpath,{shared.parent}", f"-Wl,--version-script={hide_all}"]
    os.environ.setdefault("MAX_JOBS", str(args.jobs))
    # The extension has no .cu source, but cpp_extension wants an arch list and cannot read
    # one off a machine without a GPU.
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
    cpp_extension.load(
        name="flash4_torch",
        sources=[str(HERE / "csrc" / "flash4_op.cpp")],
        extra_include_paths=[str(REPO / "flash4" / "include")],
        extra_cflags=["-O2", "-Wall", "-Wno-unused-parameter"],
        extra_ldflags=ldflags,
        build_directory=str(ext_dir),
        with_cuda=True,
        is_python_module=False,
        verbose=True,
    )
    print(f"extension built in {time.time() - t1:.1f} s: {ext_dir / 'flash4_torch.so'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
