#!/usr/bin/env python3
"""Nsight Compute metrics of one kernel from several reports, side by side.

    python3 scripts/lib/ncu_compare.py LABEL=raw.csv [LABEL=raw.csv ...]
        each raw.csv: `ncu -i R.ncu-rep --page raw --csv` of a report holding one kernel;
        prints the metrics below (those a report has) as a table, one column per label.
    python3 scripts/lib/ncu_compare.py --list raw.csv
        the kernels of a listing run (`ncu --page raw --csv --metrics gpu__time_duration.sum,...`
        over several kernels): name, duration, grid, block, registers, shared memory, longest first.
    python3 scripts/lib/ncu_compare.py --longest raw.csv
        the longest of them: its function name, for ncu -k.

For scripts/peer_profile.sh: where flash4's kernels spend the time their peers' do not.
A report without a metric prints "-" there, never an error status.
"""
import csv
import re
import sys

METRICS = [
    ("duration (us)", "gpu__time_duration.sum", 1e-3),
    ("grid", "launch__grid_size", 1),
    ("block", "launch__block_size", 1),
    ("registers / thread", "launch__registers_per_thread", 1),
    ("dynamic smem / block", "launch__shared_mem_per_block_dynamic", 1),
    ("static smem / block", "launch__shared_mem_per_block_static", 1),
    ("SM throughput %", "sm__throughput.avg.pct_of_peak_sustained_elapsed", 1),
    ("tensor (gmma) active %", "sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active", 1),
    ("issue active %", "smsp__issue_active.avg.pct_of_peak_sustained_active", 1),
    ("eligible warps / cycle", "smsp__warps_eligible.avg.per_cycle_active", 1),
    ("active warps / scheduler", "smsp__warps_active.avg.per_cycle_active", 1),
    ("instructions (M)", "smsp__inst_executed.sum", 1e-6),
    ("smem wavefronts (M)", "l1tex__data_pipe_lsu_wavefronts_mem_shared.sum", 1e-6),
    ("smem bank conflicts (M)", "l1tex__data_bank_conflicts_pipe_lsu_mem_shared.sum", 1e-6),
    ("smem ld wavefronts (M)", "l1tex__data_pipe_lsu_wavefronts_mem_shared_op_ld.sum", 1e-6),
    ("smem st wavefronts (M)", "l1tex__data_pipe_lsu_wavefronts_mem_shared_op_st.sum", 1e-6),
    ("L2 bytes (GB)", "lts__t_bytes.sum", 1e-9),
    ("L2 red sectors (M)", "lts__t_sectors_op_red.sum", 1e-6),
    ("L2 atom sectors (M)", "lts__t_sectors_op_atom.sum", 1e-6),
    ("L2 hit %", "lts__t_sector_hit_rate.pct", 1),
    ("DRAM read (GB)", "dram__bytes_read.sum", 1e-9),
    ("DRAM write (GB)", "dram__bytes_write.sum", 1e-9),
    ("memory throughput %", "gpu__compute_memory_throughput.avg.pct_of_peak_sustained_elapsed", 1),
]
STALL_PREFIX, STALL_SUFFIX = "smsp__average_warps_issue_stalled_", "_per_issue_active.ratio"


def rows_of(path):
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f) if r]
    start = next((i for i, r in enumerate(rows) if "Kernel Name" in r or "ID" in r), None)
    if start is None:
        return None, []
    header = rows[start]
    data = []
    for r in rows[start + 1:]:
        if len(r) != len(header):
            continue
        if "ID" in header and not r[header.index("ID")].strip().isdigit():
            continue  # the units row
        data.append(dict(zip(header, r)))
    return header, data


def number(text):
    try:
        return float(text.replace(",", ""))
    except (ValueError, AttributeError):
        return None


def kernels_by_time(path):
    _, data = rows_of(path)
    kernels = [r for r in data if number(r.get("gpu__time_duration.sum")) is not None]
    return sorted(kernels, key=lambda r: -number(r["gpu__time_duration.sum"]))


def longest(path):
    """The longest kernel's function name, as a regular expression for ncu -k regex: the
    demangled name without return type, namespaces, template arguments or parameters."""
    kernels = kernels_by_time(path)
    if kernels:
        name = kernels[0].get("Kernel Name", "").split("(")[0].split("<")[0].strip()
        print(re.escape(name.split()[-1].split("::")[-1]))


def listing(path):
    kernels = kernels_by_time(path)
    for r in kernels:
        name = r.get("Kernel Name", "?")
        fields = [f"{number(r['gpu__time_duration.sum']) / 1e3:9.1f} us"]
        for key in ("launch__grid_size", "launch__block_size", "launch__registers_per_thread",
                    "launch__shared_mem_per_block_dynamic"):
            fields.append(f"{key.split('__')[1]} {r.get(key, '-')}")
        print("  ".join(fields) + "  " + name[:160])


def compare(pairs):
    columns = []
    for label, path in pairs:
        _, data = rows_of(path)
        columns.append((label, data[0] if data else {}))
    width = max(len(label) for label, _ in columns) + 2
    print(f"{'metric':28s}" + "".join(f"{label:>{max(width, 12)}s}" for label, _ in columns))
    for title, key, factor in METRICS:
        cells = []
        for _, row in columns:
            v = number(row.get(key))
            cells.append("-" if v is None else f"{v * factor:.4g}")
        print(f"{title:28s}" + "".join(f"{c:>{max(width, 12)}s}" for c in cells))
    stalls = sorted({k[len(STALL_PREFIX):-len(STALL_SUFFIX)] for _, row in columns for k in row
                     if k.startswith(STALL_PREFIX) and k.endswith(STALL_SUFFIX)})
    if stalls:
        print("stalls (warps per issued instruction):")
    for name in stalls:
        values = [number(row.get(STALL_PREFIX + name + STALL_SUFFIX)) for _, row in columns]
        if all(v is None or v < 0.01 for v in values):
            continue
        print(f"  {name:26s}" + "".join(f"{'-' if v is None else f'{v:.3f}':>{max(width, 12)}s}" for v in values))


def main():
    if len(sys.argv) == 3 and sys.argv[1] in ("--list", "--longest"):
        (listing if sys.argv[1] == "--list" else longest)(sys.argv[2])
        return
    pairs = [a.split("=", 1) for a in sys.argv[1:] if "=" in a]
    if not pairs:
        print(__doc__)
        return
    compare(pairs)


if __name__ == "__main__":
    main()
