#!/usr/bin/env python3
"""One attention pass (forward or backward) of one shape, run by one implementation, for a
profiler to look at.

    python3 bench/peer_once.py --impl flash4|cudnn|fa2|fa4 [--lib libflash4.so] [--pass bwd|fwd]
        [--d 128] [--seqlen 4096] [--causal 0] [--iters 3]

The shapes of bench/peers.py (bf16, BSHD, 16384 tokens, hidden 2048): one forward (and, for
--pass bwd, its graph), then --iters runs of the pass, each inside an NVTX start / end range
"pass" so that Nsight Compute can take only that pass's kernels (ncu --nvtx --nvtx-include
"pass"); scripts/peer_profile.sh does. flash4 through its C ABI (ctypes, the kernels alone, as
peers.py --ctypes); cuDNN and FA2 through SDPA (backward: autograd); FA4 through
flash_attn.cute's flash_attn_func (backward: autograd).
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peers import Flash4  # noqa: E402  (bench/ is not a package)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--impl", required=True, choices=["flash4", "cudnn", "fa2", "fa4"])
    ap.add_argument("--lib", help="libflash4.so (--impl flash4)")
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=4096)
    ap.add_argument("--causal", type=int, default=0)
    ap.add_argument("--pass", dest="which", choices=["bwd", "fwd"], default="bwd")
    ap.add_argument("--iters", type=int, default=3)
    args = ap.parse_args()
    if args.impl == "flash4" and not args.lib:
        ap.error("--impl flash4 needs --lib")

    seed = 1234
    print(f"seed {seed}")
    gen = torch.Generator(device="cuda").manual_seed(seed)
    S, d = args.seqlen, args.d
    B, H = 16384 // S, 2048 // d
    mk = lambda: torch.randn(B, S, H, d, device="cuda", dtype=torch.bfloat16, generator=gen)
    q, k, v, dout = mk(), mk(), mk(), mk()
    causal = bool(args.causal)

    if args.impl == "flash4":
        f4 = Flash4(args.lib)
        out = torch.empty_like(q)
        lse = torch.empty(B, H, S, device="cuda", dtype=torch.float32)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        f4.forward(q, k, v, out, lse, causal)
        run_fwd = lambda: f4.forward(q, k, v, out, lse, causal)
        run = lambda: f4.backward(q, k, v, out, dout, lse, dq, dk, dv, causal)
    elif args.impl in ("cudnn", "fa2"):
        backend = SDPBackend.CUDNN_ATTENTION if args.impl == "cudnn" else SDPBackend.FLASH_ATTENTION
        qt, kt, vt = (x.transpose(1, 2).detach().requires_grad_() for x in (q, k, v))
        gt = dout.transpose(1, 2)
        with sdpa_kernel(backend):
            o = F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal)

        def run_fwd():
            with sdpa_kernel(backend), torch.no_grad():
                F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal)

        def run():
            with sdpa_kernel(backend):
                torch.autograd.grad(o, (qt, kt, vt), gt, retain_graph=True)
    else:
        from flash_attn.cute import flash_attn_func
        qg, kg, vg = (x.detach().requires_grad_() for x in (q, k, v))
        r = flash_attn_func(qg, kg, vg, causal=causal)
        o = r[0] if isinstance(r, tuple) else r

        def run_fwd():
            with torch.no_grad():
                flash_attn_func(q, k, v, causal=causal)

        run = lambda: torch.autograd.grad(o, (qg, kg, vg), dout, retain_graph=True)

    if args.which == "fwd":
        run = run_fwd
    run()  # compiles / selects outside the profiled ranges
    torch.cuda.synchronize()
    for _ in range(args.iters):
        # A start / end range, not push / pop: autograd launches the backward from its own
        # thread, and push / pop ranges belong to the thread that opened them.
        marker = torch.cuda.nvtx.range_start("pass")
        run()
        torch.cuda.synchronize()
        torch.cuda.nvtx.range_end(marker)
    print(f"{args.impl}: d {d}, S {S}, causal {int(causal)}: {args.iters} x {args.which}")


if __name__ == "__main__":
    main()
