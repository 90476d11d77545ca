#!/usr/bin/env python3
"""Weak-scaling model of adept's data-parallel training (issue 11), from train-bench's JSON lines.

Per GPU and step, ZeRO-1 and ZeRO-2 alike move the fp32 gradient through a reduce-scatter
(4 bytes a parameter) and the bf16 weights through an all-gather (2 bytes a parameter). With
NCCL's bus bandwidths B (what train-bench --data-parallel measures at the model's size, and
nccl-tests print), a ring or NVLink-switch collective over N GPUs takes

    t_comm(N) = (N - 1) / N * P * (4 / B_rs + 2 / B_ag)

The step overlaps most of it: the reduce-scatter runs bucket by bucket during the backward,
the all-gather is waited for only by the next forward's first layer that needs it. What is
left is a fraction phi of t_comm, fitted to the measured multi-GPU points:

    T(N) = T(1) + phi * t_comm(N),  efficiency(N) = T(1) / T(N)   (per-GPU batch fixed)

Since T(1) = 6 P tokens / (MFU * peak) and t_comm is proportional to P too, the
communication-to-compute ratio, MFU * peak / (B * tokens per GPU) at B_rs = B_ag = B, does not
depend on the model's size: efficiency is set by the tokens each GPU computes per step and
by the bandwidth. Across nodes B drops to the per-GPU network bandwidth (--inter-node-gbs).

    grep -h '^{"engine"' OUT/train_dp_bench.*.log | python3 bench/scaling_model.py --predict 4 8 16
    python3 bench/scaling_model.py --example   # the 2026-11-30 2x H200 points, bandwidth assumed

Lines without measured bus bandwidths (runs before train-bench measured them) need --busbw.
"""
import argparse
import json
import sys

# 2026-11-30, 2x H200 (bench/RESULTS.md "Multi-GPU data parallel"): 1 GPU and ZeRO-1 / ZeRO-2 on
# 2 GPUs, Llama-3.2-1B shape, batch 2 x 4096 per GPU. Bus bandwidth was not measured then.
EXAMPLE = [
    {"gpus": 1, "zero": 0, "step_ms": 158.9, "tokens_per_s": 51558, "parameters": 1235814400},
    {"gpus": 2, "zero": 1, "step_ms": 167.0, "tokens_per_s": 49041, "parameters": 1235814400},
    {"gpus": 2, "zero": 2, "step_ms": 169.2, "tokens_per_s": 48423, "parameters": 1235814400},
]
EXAMPLE_BUSBW_GBS = 350.0  # assumed (NVLink 4 through NVSwitch, typical NCCL busbw); measure it


def comm_ms(params, gpus, rs_gbs, ag_gbs):
    """t_comm(N) in ms: the reduce-scatter of 4 P bytes and the all-gather of 2 P bytes."""
    if gpus <= 1:
        return 0.0
    return (gpus - 1) / gpus * params * (4.0 / (rs_gbs * 1e9) + 2.0 / (ag_gbs * 1e9)) * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*", help="files of train-bench output (default: standard input)")
    ap.add_argument("--example", action="store_true", help="the 2026-11-30 2-GPU points with an assumed bandwidth")
    ap.add_argument("--busbw", type=float, help="GB/s for lines that did not measure it")
    ap.add_argument("--predict", type=int, nargs="*", default=[4, 8], help="GPU counts to predict (one node)")
    ap.add_argument("--inter-node-gbs", type=float, default=50.0,
                    help="per-GPU network bandwidth across nodes, GB/s (8x 400 Gb/s NICs per 8 GPUs: 50)")
    ap.add_argument("--node-gpus", type=int, default=8, help="GPUs per node, for the multi-node predictions")
    args = ap.parse_args()

    if args.example:
        runs = [dict(r) for r in EXAMPLE]
        args.busbw = args.busbw or EXAMPLE_BUSBW_GBS
    else:
        text = "".join(open(f).read() for f in args.files) if args.files else sys.stdin.read()
        runs = [json.loads(line) for line in text.splitlines() if line.startswith('{"engine"')]
    single = [r for r in runs if r.get("gpus", 1) == 1]
    multi = [r for r in runs if r.get("gpus", 1) > 1]
    if not single or not multi:
        sys.exit("scaling_model: needs a 1-GPU line and at least one multi-GPU line (train_dp_bench.sh prints both)")
    t1 = single[-1]["step_ms"]
    params = single[-1].get("parameters") or multi[-1].get("parameters")
    if not params:
        sys.exit("scaling_model: no 'parameters' in the lines (train-bench from before 2026-12-01): rerun it")

    def bandwidths(r):
        rs, ag = r.get("reduce_scatter_busbw_gbs", 0), r.get("all_gather_busbw_gbs", 0)
        if rs > 0 and ag > 0:
            return rs, ag, "measured"
        if not args.busbw:
            sys.exit(f"scaling_model: the {r['gpus']}-GPU line has no bus bandwidth: give --busbw")
        return args.busbw, args.busbw, "assumed"

    print(f"1 GPU: {t1:.1f} ms/step; {params / 1e9:.3f} B parameters; per GPU and step the collectives move "
          f"{6 * params / 1e9:.2f} GB (fp32 reduce-scatter + bf16 all-gather)\n")
    print("| GPUs | ZeRO | ms/step | efficiency | bus GB/s (rs / ag) | t_comm model ms | exposed ms | phi |")
    print("|---|---|---|---|---|---|---|---|")
    phis = []
    for r in multi:
        rs, ag, how = bandwidths(r)
        t = comm_ms(params, r["gpus"], rs, ag)
        exposed = r["step_ms"] - t1
        phi = exposed / t if t > 0 else 0.0
        phis.append(phi)
        print(f"| {r['gpus']} | {r.get('zero', '-')} | {r['step_ms']:.1f} | {t1 / r['step_ms']:.3f} | "
              f"{rs:.0f} / {ag:.0f} ({how}) | {t:.1f} | {exposed:.1f} | {phi:.2f} |")
    phi = max(0.0, min(1.0, sum(phis) / len(phis)))
    rs, ag, how = bandwidths(multi[-1])
    print(f"\nphi (exposed fraction, mean of the measured points, clipped to [0, 1]) = {phi:.2f}; "
          f"bandwidth {how}.\n")
    print("| GPUs | where | bus GB/s | t_comm ms | predicted ms/step | efficiency |")
    print("|---|---|---|---|---|---|")
    for n in args.predict:
        inter = n > args.node_gpus
        b_rs, b_ag = (args.inter_node_gbs, args.inter_node_gbs) if inter else (rs, ag)
        t = comm_ms(params, n, b_rs, b_ag)
        tn = t1 + phi * t
        print(f"| {n} | {'nodes of ' + str(args.node_gpus) if inter else 'one node'} | {b_rs:.0f} | {t:.1f} | "
              f"{tn:.1f} | {t1 / tn:.3f} |")
    r = 6.0 * params / (rs * 1e9) / (t1 * 1e-3)
    print(f"\ncommunication / compute on one node, r = 6 P / (B T(1)) = {r:.3f}: efficiency(N) = "
          f"1 / (1 + phi (N - 1) / N r). T(1) and the bytes both grow with P, so r -- and the efficiency -- "
          f"depend on the tokens per GPU per step and on B, not on the model's size (at the same MFU).")

if __name__ == "__main__":
    main()
