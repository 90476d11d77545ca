#!/usr/bin/env python3
"""The hot loop of one kernel in two SASS dumps, side by side (no GPU needed).

A kernel change aimed at the code around a loop (a tile's set-up or epilogue) can still
reschedule the loop itself, and a loop that runs 128 times a tile outweighs it: the
thirteenth session's early-S forward had the same opcodes in its key-block loop but a
different order (SequenceMatcher ratio 0.48) and ran 5% slower at S 16k. Compare before
spending device time:

    cuobjdump -sass build/.../forward_sm90_hdim64.cu.o > new.sass     # and old.sass, before
    python3 scripts/lib/sass_loop_compare.py old.sass new.sass KERNEL_KEY

KERNEL_KEY: a substring of the mangled kernel name (e.g. ILi64E13__nv_bfloat16Lb0ELi2ELb0ELb0E,
the d 64 bf16 two-warpgroup forward). The loop: the innermost backward branch whose range holds
both kinds of HGMMA (S = Q K^T, A in shared memory, and O += P V, A in registers), from the branch's target to the branch. Prints each loop's length, the opcodes whose counts differ, how alike the two
instruction sequences are with registers and addresses masked (1.0: the same schedule), and
the S2UR count (a re-read special register in a loop: uniform registers ran short).
Exit status 0 always (a report, not a test).
"""
import collections
import difflib
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ncu_stalls import opcode  # noqa: E402  (an instruction's opcode, its predicate skipped)

ADDRESS = re.compile(r"/\*([0-9a-f]{4,})\*/")


def kernel_ops(path, key):
    """[(address, instruction)] of the first function whose name contains key."""
    text = open(path, encoding="utf-8", errors="replace").read()
    for function in re.split(r"\n\s*Function : ", text)[1:]:
        if key not in function.split("\n", 1)[0]:
            continue
        ops = []
        for line in function.split("\n"):
            m = ADDRESS.search(line)
            if m and line.strip().startswith("/*"):
                body = line[m.end():].split(";")[0].strip()
                if body:
                    ops.append((int(m.group(1), 16), body))
        return ops
    return None


def wgmma_kind(instruction):
    """An HGMMA's shape and where its A operand lives: at d 128 S = Q K^T and O += P V are both
    64x128x16, told apart by A (shared memory for S, registers for P V)."""
    a_in_registers = re.match(r"HGMMA\S* R\d+, R\d+,", instruction) is not None
    return opcode(instruction) + (" A in registers" if a_in_registers else " A in shared memory")


def hot_loop(ops):
    """The innermost loop (backward branch to its target) holding two kinds of HGMMA (wgmma_kind),
    or None."""
    at = {address: i for i, (address, _) in enumerate(ops)}
    best = None
    for j, (address, ins) in enumerate(ops):
        m = re.search(r"\bBRA (0x[0-9a-f]+)", ins)
        if not m or int(m.group(1), 16) >= address or int(m.group(1), 16) not in at:
            continue
        k = at[int(m.group(1), 16)]
        shapes = {wgmma_kind(x) for _, x in ops[k:j + 1] if x.startswith("HGMMA")}
        if len(shapes) >= 2 and (best is None or j - k < best[1] - best[0]):
            best = (k, j)
    return None if best is None else [x for _, x in ops[best[0]:best[1] + 1]]


def masked(instruction):
    text = " ".join(instruction.split())
    text = re.sub(r"0x[0-9a-f]+", "X", text)
    return re.sub(r"\bU?R\d+\b|\bU?P\d\b", "R", text)


def main():
    if len(sys.argv) != 4:
        print(__doc__)
        return
    old_path, new_path, key = sys.argv[1:]
    loops = []
    for path in (old_path, new_path):
        ops = kernel_ops(path, key)
        if ops is None:
            print(f"{path}: no kernel matching {key}")
            return
        loop = hot_loop(ops)
        if loop is None:
            print(f"{path}: no loop around a mixed HGMMA batch in {key}")
            return
        loops.append(loop)
        print(f"{path}: kernel {len(ops)} instructions, hot loop {len(loop)}, "
              f"S2UR in it {sum(opcode(x) == 'S2UR' for x in loop)}")
    old, new = (collections.Counter(opcode(x) for x in loop) for loop in loops)
    changed = {op: (old[op], new[op]) for op in old.keys() | new.keys() if old[op] != new[op]}
    print("opcode counts that differ (old -> new):",
          ", ".join(f"{op} {a}->{b}" for op, (a, b) in sorted(changed.items())) or "none")
    ratio = difflib.SequenceMatcher(None, [masked(x) for x in loops[0]], [masked(x) for x in loops[1]],
                                    autojunk=False).ratio()
    print(f"sequence likeness (registers and addresses masked): {ratio:.3f}")


if __name__ == "__main__":
    main()
