#!/usr/bin/env python3
"""Where a profiled kernel's warps wait, from an Nsight Compute report's CSV pages.

    ncu -i R.ncu-rep --page raw --csv | python3 scripts/lib/ncu_stalls.py reasons
        the stall reasons (smsp__average_warps_issue_stalled_<reason>_per_issue_active.ratio:
        warps stalled for that reason per issued instruction), largest first;
    ncu -i R.ncu-rep --page source --print-source sass --csv | python3 scripts/lib/ncu_stalls.py sass
        the SASS instructions with the most stall samples (which wait the time goes to: an
        mbarrier try_wait of a stage, a wgmma wait, a named barrier), with their share;
    ... | python3 scripts/lib/ncu_stalls.py opcodes
        per opcode: warp-instructions executed, stall samples and "wait" samples (the
        fixed-latency stalls), largest first (e.g. MUFU.EX2 holding the samples);
    ... | python3 scripts/lib/ncu_stalls.py levels
        the code grouped by how often each instruction ran: instructions executed the same
        number of times are one level (a per-tile set-up and epilogue run once a tile and warp,
        a key-block loop once a block), each level's instruction count, executions, samples and
        share -- where the time goes between the per-tile code and the loops, for two kernels
        of different structure alike (how the thirteenth session found the forward's set-up
        and epilogue to be 85% of its gap to cuDNN at d 64 S 512 causal).

Prints what it finds; a page without the expected columns gives a one-line note (ncu's CSV
layout differs between versions), never an error status.
"""
import csv
import re
import sys


def reasons(rows):
    header, values = rows[0], None
    for row in rows[1:]:
        if len(row) == len(header) and any(c.strip() for c in row):
            try:
                float(row[-1].replace(",", ""))
            except ValueError:
                continue  # the units row
            values = row
            break
    if values is None:
        print("ncu_stalls: no metric values on the raw page")
        return
    pattern = re.compile(r"smsp__average_warps_issue_stalled_(\w+)_per_issue_active\.ratio$")
    found = []
    for name, value in zip(header, values):
        m = pattern.search(name)
        if m:
            try:
                found.append((float(value.replace(",", "")), m.group(1)))
            except ValueError:
                pass
    if not found:
        print("ncu_stalls: no smsp__average_warps_issue_stalled_* metrics (profile with --set full)")
        return
    total = sum(v for v, _ in found)
    for v, name in sorted(found, reverse=True)[:12]:
        print(f"{name:28s} {v:7.3f} warps / issue ({100 * v / total:5.1f}%)")


def sass(rows):
    table = source_table(rows, "Stall Sampling")
    if not table:
        return
    header = list(table[0])
    samples = next((c for c in header if "Stall Sampling (All" in c), None) or next(
        c for c in header if "Stall Sampling" in c)
    items = [(number(r[samples]), r["Source"].strip()) for r in table]
    total = sum(v for v, _ in items) or 1.0
    for v, text in sorted(items, reverse=True)[:25]:
        print(f"{100 * v / total:5.1f}%  {text}")


def source_table(rows, column="Instructions Executed"):
    """The source page's rows as dicts (header: the first row with "Source" and a column whose
    name holds `column`), or None (a note printed)."""
    start = next((i for i, r in enumerate(rows) if "Source" in r and any(column in c for c in r)), None)
    if start is None:
        print(f"ncu_stalls: no 'Source' / '{column}' columns on the source page")
        return None
    header = rows[start]
    return [dict(zip(header, r)) for r in rows[start + 1:] if len(r) == len(header)]


def number(text):
    try:
        return float(str(text).replace(",", ""))
    except ValueError:
        return 0.0


def opcode(text):
    words = text.split()
    if words and words[0].startswith("@"):
        words = words[1:]
    return words[0] if words else "?"


def opcodes(rows):
    table = source_table(rows)
    if table is None:
        return
    executed, samples, waits = {}, {}, {}
    for r in table:
        op = opcode(r["Source"])
        executed[op] = executed.get(op, 0.0) + number(r["Instructions Executed"])
        samples[op] = samples.get(op, 0.0) + number(r.get("# Samples", 0))
        waits[op] = waits.get(op, 0.0) + number(r.get("stall_wait", 0))
    total = sum(samples.values()) or 1.0
    print(f"{'opcode':34s} {'executed (M)':>12s} {'samples':>8s} {'share':>6s} {'wait':>7s}")
    for op in sorted(executed, key=lambda o: -samples[o])[:30]:
        print(f"{op:34s} {executed[op] / 1e6:12.3f} {samples[op]:8.0f} {100 * samples[op] / total:5.1f}% {waits[op]:7.0f}")


def levels(rows):
    table = source_table(rows)
    if table is None:
        return
    groups = {}
    for r in table:
        n = number(r["Instructions Executed"])
        if n <= 0:
            continue
        g = groups.setdefault(n, [0, 0.0, opcode(r["Source"])])
        g[0] += 1
        g[1] += number(r.get("# Samples", 0))
    total = sum(g[1] for g in groups.values()) or 1.0
    print(f"{'executions':>12s} {'instructions':>12s} {'samples':>8s} {'share':>6s}  first opcode")
    for n, (count, smp, first) in sorted(groups.items(), key=lambda kv: -kv[1][1])[:20]:
        print(f"{n:12.0f} {count:12d} {smp:8.0f} {100 * smp / total:5.1f}%  {first}")


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else "reasons"
    rows = [r for r in csv.reader(sys.stdin)]
    if not rows:
        print("ncu_stalls: empty input")
        return
    {"sass": sass, "opcodes": opcodes, "levels": levels}.get(mode, reasons)(rows)


if __name__ == "__main__":
    main()
