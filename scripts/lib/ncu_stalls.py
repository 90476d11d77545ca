#!/usr/bin/env python3
"""Where a profiled kernel's warps wait, from an Nsight Compute report's CSV pages.

    ncu -i R.ncu-rep --page raw --csv | python3 scripts/lib/ncu_stalls.py reasons
        the stall reasons (smsp__average_warps_issue_stalled_<reason>_per_issue_active.ratio:
        warps stalled for that reason per issued instruction), largest first;
    ncu -i R.ncu-rep --page source --print-source sass --csv | python3 scripts/lib/ncu_stalls.py sass
        the SASS instructions with the most stall samples (which wait the time goes to: an
        mbarrier try_wait of a stage, a wgmma wait, a named barrier), with their share.

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
    start = next((i for i, r in enumerate(rows) if "Source" in r and any("Stall Sampling" in c for c in r)), None)
    if start is None:
        print("ncu_stalls: no 'Source' / 'Warp Stall Sampling' columns on the source page")
        return
    header = rows[start]
    src = header.index("Source")
    samples = next(i for i, c in enumerate(header) if "Stall Sampling (All" in c or "Stall Sampling" in c)
    items = []
    for row in rows[start + 1:]:
        if len(row) <= max(src, samples):
            continue
        try:
            items.append((float(row[samples].replace(",", "")), row[src].strip()))
        except ValueError:
            pass
    total = sum(v for v, _ in items) or 1.0
    for v, text in sorted(items, reverse=True)[:25]:
        print(f"{100 * v / total:5.1f}%  {text}")


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else "reasons"
    rows = [r for r in csv.reader(sys.stdin)]
    if not rows:
        print("ncu_stalls: empty input")
        return
    (sass if mode == "sass" else reasons)(rows)


if __name__ == "__main__":
    main()
