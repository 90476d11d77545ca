#!/usr/bin/env python3
"""bench/env_ab.py's output read against a control setting instead of against A.

A (the tree as it is) read 1-2% apart from builds identical to it in the same env_ab process
(H200, 2026-12-03, eighteenth session), so scripts/hopper_variants_ab.sh times an unchanged
copy of the tree beside the variants (`ctl=`, no patch) and the variants are read against
that: per shape, control ms / variant ms (above 1 the variant is faster), and per head dim
the geometric means over all shapes, the non-causal and the causal ones.

    python3 bench/ab_vs_control.py env_ab_bwd.txt B1      # B1: the control's setting name
    python3 bench/ab_vs_control.py env_ab_bwd.txt B1 --markdown

Exit status 2 when the file has no rows of the control (or of any other setting).
"""
import argparse
import math
import re
import sys

# "  64    512      0  B2 |    0.568    0.560  1.014 |  6.16e-04 |  3.94e-03  3.94e-03"
ROW = re.compile(r"^\s*(\d+)\s+(\d+)\s+([01])\s+(B\d+)\s+\|\s*([0-9.]+)\s+([0-9.]+)\s")


def read_times(lines):
    """{setting: {(d, S, causal): B ms}} from env_ab rows."""
    times = {}
    for line in lines:
        m = ROW.match(line)
        if m:
            d, s, causal, name, _, b_ms = m.groups()
            times.setdefault(name, {})[(int(d), int(s), int(causal))] = float(b_ms)
    return times


def geometric_mean(values):
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def mean_text(value):
    """A geometric mean to 3 places, "-" for one over no shapes."""
    return "-" if math.isnan(value) else f"{value:.3f}"


def against_control(times, control):
    """{setting: {"shapes": {(d, S, causal): ratio}, "means": {d: (all, non-causal, causal)}}},
    ratio = control ms / setting ms over the shapes both have."""
    base = times[control]
    out = {}
    for name, shapes in times.items():
        if name == control:
            continue
        ratios = {key: base[key] / ms for key, ms in shapes.items() if key in base and ms > 0}
        means = {}
        for d in sorted({key[0] for key in ratios}):
            of_d = [(c, r) for (dd, _, c), r in ratios.items() if dd == d]
            means[d] = (geometric_mean([r for _, r in of_d]), geometric_mean([r for c, r in of_d if not c]),
                        geometric_mean([r for c, r in of_d if c]))
        out[name] = {"shapes": ratios, "means": means}
    return out


def shape_label(seqlen, causal):
    """A column of the per-shape table, as bench/RESULTS.md heads them: 512, 1k c, 16k."""
    size = f"{seqlen // 1024}k" if seqlen >= 1024 else str(seqlen)
    return size + (" c" if causal else "")


def report(result, control, markdown):
    lines = []
    for name, r in result.items():
        lines.append(f"{name} / {control} (control ms / {name} ms, above 1 {name} is faster):")
        for d, (every, plain, causal) in r["means"].items():
            lines.append(f"  d {d}: {every:.3f} (non-causal {mean_text(plain)}, causal {mean_text(causal)})")
        if markdown:
            shapes = sorted(r["shapes"])
            columns = sorted({(s, c) for _, s, c in shapes})
            head = " | ".join(shape_label(s, c) for s, c in columns)
            lines.append(f"| d | {head} |")
            lines.append("|---" * (len(columns) + 1) + "|")
            for d in r["means"]:
                cells = " | ".join(f"{r['shapes'][(d, s, c)]:.3f}" if (d, s, c) in r["shapes"] else ""
                                   for s, c in columns)
                lines.append(f"| {d} | {cells} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file", help="bench/env_ab.py's output")
    ap.add_argument("control", help="the control's setting name in it (B1, B2, ...)")
    ap.add_argument("--markdown", action="store_true", help="also each shape's ratio, as a Markdown table")
    args = ap.parse_args()
    try:
        with open(args.file, encoding="utf-8") as f:
            times = read_times(f)
    except OSError as e:
        print(f"ab_vs_control: cannot read {args.file}: {e.strerror}", file=sys.stderr)
        return 2
    if args.control not in times:
        print(f"ab_vs_control: {args.file} has no rows of the control {args.control} "
              f"(settings there: {', '.join(sorted(times)) or 'none'})", file=sys.stderr)
        return 2
    if len(times) < 2:
        print(f"ab_vs_control: {args.file} has no setting beside the control {args.control}", file=sys.stderr)
        return 2
    print(report(against_control(times, args.control), args.control, args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
