#!/usr/bin/env python3
"""The Hopper backward's step loop as it runs on a dense step without softcap or mask: SASS
opcode counts of its hot path, from a build tree (no GPU needed).

The step loop's SASS also holds the branches such a step never takes (softcap's tanh, the
varlen zeroing, the per-element mask), so its length says little about what a step issues.
This recompiles one backward_sm90_hdim*.cu of BUILD with -DFLASH4_SASS_HOT_PATH (the kernel
then compiles those branches out, backward_sm90.cuh's kColdPaths; the object is never linked),
dumps it with cuobjdump and counts the innermost loop holding both kinds of HGMMA
(scripts/lib/sass_loop_compare.py's hot_loop) by class and opcode. Branches chosen by run-time
switches (p.flat_atomic_chunks, p.d256_split_queries) stay in. The fifteenth session's count
(d 128, bf16 flat kernel): 493 instructions a warp and step, ~190 of them uniform (the wgmma
descriptors), 32 scalar LDS of lse2 / D.

    python3 scripts/sass_hot_path.py --build /tmp/bdef [--dim 128] [--key KERNEL_KEY] [--top 30]

BUILD: a configured tree with sm_90a code (compile_commands.json; cmake writes it).
KERNEL_KEY: a substring of the mangled kernel name (default: the bf16, not deterministic,
flat-dQ kernel of --dim that the host launches by default). cuobjdump: from PATH, else
/usr/local/cuda/bin (pip's nvidia-cuda-cuobjdump has one where the toolkit does not).
"""
import argparse
import collections
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from ncu_stalls import opcode  # noqa: E402
from sass_loop_compare import hot_loop, kernel_ops  # noqa: E402

DEFAULT_KEYS = {
    64: "ILi64E13__nv_bfloat16Lb0ELNS0_5DqAddE3ELi128",
    128: "ILi128E13__nv_bfloat16Lb0ELNS0_5DqAddE3ELi64",
    256: "ILi256E13__nv_bfloat16Lb0ELNS0_5DqAddE3ELi64",
}


def compile_hot_path(build, dim, out):
    """Recompiles backward_sm90_hdim{dim}.cu as BUILD does, with -DFLASH4_SASS_HOT_PATH, to out."""
    entries = json.load(open(os.path.join(build, "compile_commands.json"), encoding="utf-8"))
    source = f"backward_sm90_hdim{dim}.cu"
    entry = next((e for e in entries if e["file"].endswith(source)), None)
    if entry is None:
        sys.exit(f"{build}/compile_commands.json has no {source} (a build with the Hopper kernels?)")
    words = shlex.split(entry["command"]) if "command" in entry else list(entry["arguments"])
    kept, skip = [], False
    for word in words:
        if skip:
            skip = False
            continue
        if word in ("-o", "-MT", "-MF"):  # the object and its depfile: ours, not the build's
            skip = True
            continue
        if word == "-MD":
            continue
        kept.append(word)
    command = kept[:1] + ["-DFLASH4_SASS_HOT_PATH"] + kept[1:] + ["-o", out]
    done = subprocess.run(command, cwd=entry["directory"], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"compile failed:\n{done.stderr[-3000:]}")


def cuobjdump():
    found = shutil.which("cuobjdump") or "/usr/local/cuda/bin/cuobjdump"
    if not os.path.exists(found):
        sys.exit("no cuobjdump (pip download nvidia-cuda-cuobjdump, put its bin/ on PATH)")
    return found


def instruction_class(op):
    base = op.split(".")[0]
    if base == "HGMMA":
        return "wgmma"
    if op.startswith("U") or op in ("R2UR", "S2UR", "VOTEU.ALL"):
        return "uniform"
    if base in ("LDS", "STS", "STSM", "LDSM", "LDGSTS"):
        return "shared memory"
    if base in ("FFMA", "FMUL", "FADD", "FMNMX", "MUFU", "F2FP", "FSEL", "FSETP", "HFMA2", "HMUL2"):
        return "float math"
    if base in ("BAR", "SYNCS", "WARPGROUP", "MEMBAR", "FENCE", "DEPBAR", "WARPSYNC", "NOP"):
        return "sync"
    if base in ("LDG", "STG", "REDG", "RED", "ATOMG", "LDL", "STL", "LDC"):
        return "global / local / constant"
    return "integer / control"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", required=True, help="a configured build tree with sm_90a code")
    ap.add_argument("--dim", type=int, default=128, choices=sorted(DEFAULT_KEYS))
    ap.add_argument("--key", help="a substring of the kernel's mangled name")
    ap.add_argument("--top", type=int, default=30, help="opcodes listed")
    args = ap.parse_args()
    key = args.key or DEFAULT_KEYS[args.dim]
    with tempfile.TemporaryDirectory() as tmp:
        obj, sass = os.path.join(tmp, "hot.o"), os.path.join(tmp, "hot.sass")
        compile_hot_path(args.build, args.dim, obj)
        with open(sass, "w", encoding="utf-8") as f:
            subprocess.run([cuobjdump(), "-sass", obj], stdout=f, check=True)
        ops = kernel_ops(sass, key)
    if not ops:
        sys.exit(f"no kernel named like {key}")
    loop = hot_loop(ops)
    if loop is None:
        sys.exit(f"{key}: no loop holding both kinds of HGMMA")
    opcodes = [opcode(x) for x in loop]
    print(f"{key}: hot-path step loop {len(loop)} instructions a warp and step")
    for name, count in collections.Counter(instruction_class(op) for op in opcodes).most_common():
        print(f"  {name:28s} {count:5d}")
    print("opcodes:", ", ".join(f"{op} {n}" for op, n in collections.Counter(opcodes).most_common(args.top)))


if __name__ == "__main__":
    main()
