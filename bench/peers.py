#!/usr/bin/env python3
"""flash4 next to its peers, in one process, on the same tensors.

Times flash4 through its PyTorch op (flash4.attention = torch.ops.flash4.fwd / bwd with
autograd; flash4/torch, built by flash4/torch/build.py) beside torch's
scaled_dot_product_attention with the cuDNN and FLASH_ATTENTION (FlashAttention-2)
backends, each called the way a PyTorch user calls it: forward alone, and the backward as
torch.autograd.grad over the forward's graph. bf16 (--dtype fp16: fp16), BSHD, 16384 tokens in total
(batch = 16384 / S), hidden 2048 (heads = 2048 / d); FLOPs by convention (forward
4 B H S^2 d, halved when causal; backward 2.5x forward; fwd+bwd 3.5x over the sum of the
two times); CUDA events, median of the repeats after warm-up. Also checks that flash4's
output matches cuDNN's. When FlashAttention-4 (PyPI flash-attn-4, module flash_attn.cute;
bench/fa4_wheels.sh carries it to the GPU machine) imports, it is timed too, the same way
(flash_attn_func on the BSHD tensors, backward by autograd); its kernels compile on first
use (CuTe DSL JIT), which the warm-up absorbs.

    PYTHONPATH=flash4/torch python3 bench/peers.py [--quick] [--dtype bf16|fp16] [--repeats 20] [--markdown table.md]

When the op is not built, --lib build-gpu/libflash4.so times flash4 through its C ABI by
ctypes instead (forward and backward kernels alone, no autograd). Needs PyTorch with CUDA
(the device machine has 2.11).
"""
import argparse
import ctypes
import os
import statistics
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

MAX_RANK = 4
FLASH4_BF16, FLASH4_F16, FLASH4_F32, FLASH4_CUDA = 2, 1, 0, 1
FLASH4_DTYPES = {torch.bfloat16: FLASH4_BF16, torch.float16: FLASH4_F16, torch.float32: FLASH4_F32}


class Tensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("dtype", ctypes.c_int), ("rank", ctypes.c_int),
                ("shape", ctypes.c_int64 * MAX_RANK), ("stride", ctypes.c_int64 * MAX_RANK)]


class Options(ctypes.Structure):
    _fields_ = [("softmax_scale", ctypes.c_float), ("causal", ctypes.c_int), ("window_left", ctypes.c_int),
                ("window_right", ctypes.c_int), ("softcap", ctypes.c_float), ("sink", ctypes.c_void_p)]


class Varlen(ctypes.Structure):
    _fields_ = [("cu_seqlens_q", ctypes.c_void_p), ("cu_seqlens_k", ctypes.c_void_p),
                ("seqused_k", ctypes.c_void_p), ("batch", ctypes.c_int), ("max_seqlen_q", ctypes.c_int),
                ("max_seqlen_k", ctypes.c_int)]


class Paged(ctypes.Structure):
    _fields_ = [("page_table", ctypes.c_void_p), ("max_pages_per_seq", ctypes.c_int64),
                ("page_size", ctypes.c_int)]


class Tuning(ctypes.Structure):
    _fields_ = [("exp2_emulation", ctypes.c_int), ("rescale_threshold", ctypes.c_float)]


class ForwardArgs(ctypes.Structure):
    _fields_ = [("device", ctypes.c_int), ("stream", ctypes.c_void_p), ("backend", ctypes.c_int),
                ("q", Tensor), ("k", Tensor), ("v", Tensor), ("out", Tensor), ("lse", Tensor),
                ("options", Options), ("varlen", Varlen), ("paged", Paged), ("tuning", Tuning)]


class BackwardArgs(ctypes.Structure):
    _fields_ = [("device", ctypes.c_int), ("stream", ctypes.c_void_p), ("backend", ctypes.c_int),
                ("q", Tensor), ("k", Tensor), ("v", Tensor), ("out", Tensor), ("dout", Tensor),
                ("lse", Tensor), ("dq", Tensor), ("dk", Tensor), ("dv", Tensor),
                ("dsink", ctypes.c_void_p), ("options", Options), ("varlen", Varlen),
                ("deterministic", ctypes.c_int)]


def view(t):
    """A flash4_tensor over a torch tensor (strides in elements)."""
    v = Tensor()
    v.data = t.data_ptr()
    v.dtype = FLASH4_DTYPES[t.dtype]
    v.rank = t.dim()
    for i in range(t.dim()):
        v.shape[i] = t.shape[i]
        v.stride[i] = t.stride(i)
    return v


class Flash4:
    def __init__(self, path):
        self.lib = ctypes.CDLL(path)
        self.lib.flash4_forward.argtypes = [ctypes.POINTER(ForwardArgs)]
        self.lib.flash4_backward.argtypes = [ctypes.POINTER(BackwardArgs)]
        self.lib.flash4_last_error.restype = ctypes.c_char_p

    def _check(self, status, what):
        if status != 0:
            raise RuntimeError(f"{what}: status {status}: {self.lib.flash4_last_error().decode()}")

    def forward(self, q, k, v, out, lse, causal, softcap=0.0):
        a = ForwardArgs()
        self.lib.flash4_forward_args_init(ctypes.byref(a))
        a.device = FLASH4_CUDA
        a.stream = torch.cuda.current_stream().cuda_stream
        a.q, a.k, a.v, a.out, a.lse = view(q), view(k), view(v), view(out), view(lse)
        a.options.causal = int(causal)
        a.options.softcap = softcap
        self._check(self.lib.flash4_forward(ctypes.byref(a)), "flash4_forward")

    def backward(self, q, k, v, out, dout, lse, dq, dk, dv, causal, softcap=0.0):
        a = BackwardArgs()
        self.lib.flash4_backward_args_init(ctypes.byref(a))
        a.device = FLASH4_CUDA
        a.stream = torch.cuda.current_stream().cuda_stream
        a.q, a.k, a.v, a.out, a.dout, a.lse = view(q), view(k), view(v), view(out), view(dout), view(lse)
        a.dq, a.dk, a.dv = view(dq), view(dk), view(dv)
        a.options.causal = int(causal)
        a.options.softcap = softcap
        self._check(self.lib.flash4_backward(ctypes.byref(a)), "flash4_backward")


def median_ms(fn, warmup, repeats):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    stops = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    for i in range(repeats):
        starts[i].record()
        fn()
        stops[i].record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, stops))


def load_op():
    """flash4's PyTorch op, or None (with the reason on stderr) when it is not built."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "flash4", "torch"))
    try:
        import flash4
    except ImportError as e:
        print(f"flash4 op unavailable: {e}", file=sys.stderr)
        return None
    if not flash4.available():
        print(f"flash4 op unavailable: {flash4._load_error}", file=sys.stderr)
        return None
    return flash4


def load_fa4():
    """FlashAttention-4's flash_attn_func, or None (with the reason) when it does not import."""
    try:
        from flash_attn.cute import flash_attn_func
        return flash_attn_func, ""
    except Exception as e:  # not installed, or its CuTe DSL runtime does not load here
        return None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lib", help="libflash4.so for the ctypes fallback (used only when the op is not built)")
    ap.add_argument("--ctypes", action="store_true", help="use the ctypes path (--lib) even when the op is built")
    ap.add_argument("--quick", action="store_true", help="d = 128, S in {1024, 4096, 16384}")
    ap.add_argument("--dims", help="head dims, comma-separated (default 64,128,256; e.g. 96,192: the Hopper "
                    "kernels' zero-padded ones); heads = 2048 // d")
    ap.add_argument("--dtype", choices=("bf16", "fp16"), default="bf16", help="q, k, v, out, gradients")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--markdown", help="also write the table as markdown rows to this file")
    ap.add_argument("--no-fa4", action="store_true", help="leave FlashAttention-4 out even when it imports")
    args = ap.parse_args()

    op = None if args.ctypes else load_op()
    if op is None and not args.lib:
        sys.exit("peers.py: flash4's PyTorch op is not built (flash4/torch/build.py) and no --lib was given")
    f4 = None if op is not None else Flash4(args.lib)
    via = "torch.ops.flash4 (autograd)" if op is not None else f"ctypes {args.lib}"
    fa4, why_no_fa4 = (None, "--no-fa4") if args.no_fa4 else load_fa4()
    if fa4 is None:
        print(f"FlashAttention-4 not in the table: {why_no_fa4}")
    print(f"peers on {torch.cuda.get_device_name()} with torch {torch.__version__}, "
          f"cuDNN {torch.backends.cudnn.version()}; flash4 via {via}; {args.dtype}, 16384 tokens, hidden 2048; "
          f"TFLOPs fwd/bwd/fwd+bwd")
    dims = [128] if args.quick else [64, 128, 256]
    if args.dims:
        dims = [int(x) for x in args.dims.split(",")]
        if any(d <= 0 or d % 8 or d > 256 for d in dims):
            sys.exit(f"peers.py: --dims {args.dims}: each a multiple of 8 from 8 to 256")
    lengths = [1024, 4096, 16384] if args.quick else [512, 1024, 2048, 4096, 8192, 16384]
    header = (f"{'d':>4} {'S':>6} {'causal':>6} | {'flash4':>15} | {'cuDNN':>15} | {'FA2':>15} | {'FA4':>15} | "
              f"{'f4/cuDNN':>14} | {'f4/FA2':>14} | {'f4/FA4':>14} | max|f4-cuDNN|")
    print(header)
    print("-" * len(header))
    md = ["| d | S | causal | flash4 | cuDNN | FA2 | FA4 | f4/cuDNN | f4/FA2 | f4/FA4 | max\\|f4-cuDNN\\| |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
    backend = None
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    for d in dims:
        for S in lengths:
            for causal in (False, True):
                B, H = 16384 // S, 2048 // d
                gen = torch.Generator(device="cuda").manual_seed(S * 1000 + d)
                mk = lambda: torch.randn(B, S, H, d, device="cuda", dtype=dtype, generator=gen)
                q, k, v, dout = mk(), mk(), mk(), mk()
                flops = 4.0 * B * H * S * S * d / (2 if causal else 1)

                if op is not None:
                    with torch.no_grad():
                        out = op.attention(q, k, v, causal=causal)
                    backend = op.last_backend()
                    f4_fwd = median_ms(lambda: op.attention(q, k, v, causal=causal), 3, args.repeats)
                    qg, kg, vg = (x.detach().requires_grad_() for x in (q, k, v))
                    og = op.attention(qg, kg, vg, causal=causal)
                    f4_bwd = median_ms(lambda: torch.autograd.grad(og, (qg, kg, vg), dout, retain_graph=True),
                                       3, args.repeats)
                    del qg, kg, vg, og
                else:
                    out = torch.empty_like(q)
                    lse = torch.empty(B, H, S, device="cuda", dtype=torch.float32)
                    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
                    f4_fwd = median_ms(lambda: f4.forward(q, k, v, out, lse, causal), 3, args.repeats)
                    f4_bwd = median_ms(lambda: f4.backward(q, k, v, out, dout, lse, dq, dk, dv, causal), 3,
                                       args.repeats)
                    del lse, dq, dk, dv

                # SDPA wants [B, H, S, D]: the same memory seen through transposed strides.
                qt, kt, vt = (x.transpose(1, 2).detach().requires_grad_() for x in (q, k, v))
                gt = dout.transpose(1, 2)
                result, o = {}, None
                for name, sdpa_backend in (("cuDNN", SDPBackend.CUDNN_ATTENTION), ("FA2", SDPBackend.FLASH_ATTENTION)):
                    try:
                        with sdpa_kernel(sdpa_backend):
                            o = F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal)
                            fwd = median_ms(lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal),
                                            3, args.repeats)
                            bwd = median_ms(lambda: torch.autograd.grad(o, (qt, kt, vt), gt, retain_graph=True),
                                            3, args.repeats)
                        result[name] = (fwd, bwd, o.detach().transpose(1, 2))
                    except RuntimeError as e:  # backend unavailable for this shape
                        print(f"  {name} unavailable: {str(e).splitlines()[0]}", file=sys.stderr)
                        result[name] = None

                if fa4 is not None:
                    # FA4 takes BSHD as flash4 does; it returns (out, lse) or out by version.
                    def fa4_out(*t):
                        r = fa4(*t, causal=causal)
                        return r[0] if isinstance(r, tuple) else r
                    try:
                        qg, kg, vg = (x.detach().requires_grad_() for x in (q, k, v))
                        with torch.no_grad():
                            fwd = median_ms(lambda: fa4_out(q, k, v), 3, args.repeats)
                        og = fa4_out(qg, kg, vg)
                        bwd = median_ms(lambda: torch.autograd.grad(og, (qg, kg, vg), dout, retain_graph=True),
                                        3, args.repeats)
                        result["FA4"] = (fwd, bwd, og.detach())
                        del qg, kg, vg, og
                    except Exception as e:  # a shape or head dim it does not cover on this GPU
                        print(f"  FA4 unavailable: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                              file=sys.stderr)
                        result["FA4"] = None
                else:
                    result["FA4"] = None

                def tf(ms, scale=1.0):
                    return flops * scale / ms * 1e-9

                def cell(r):
                    if not r:
                        return "n/a"
                    return f"{tf(r[0]):.0f}/{tf(r[1], 2.5):.0f}/{tf(r[0] + r[1], 3.5):.0f}"

                def ratio(r):  # flash4's TFLOP/s over the peer's = the peer's time over flash4's
                    if not r:
                        return "n/a"
                    return f"{r[0] / f4_fwd:.2f}/{r[1] / f4_bwd:.2f}/{(r[0] + r[1]) / (f4_fwd + f4_bwd):.2f}"

                cu, fa, f4peer = result["cuDNN"], result["FA2"], result["FA4"]
                mine = (f4_fwd, f4_bwd)
                diff = (out.float() - cu[2].float()).abs().max().item() if cu else float("nan")
                print(f"{d:>4} {S:>6} {int(causal):>6} | {cell(mine):>15} | {cell(cu):>15} | {cell(fa):>15} | "
                      f"{cell(f4peer):>15} | {ratio(cu):>14} | {ratio(fa):>14} | {ratio(f4peer):>14} | {diff:.3g}",
                      flush=True)
                md.append(f"| {d} | {S} | {int(causal)} | {cell(mine)} | {cell(cu)} | {cell(fa)} | {cell(f4peer)} | "
                          f"{ratio(cu)} | {ratio(fa)} | {ratio(f4peer)} | {diff:.2g} |")
                del q, k, v, dout, out, qt, kt, vt, result, o
                torch.cuda.empty_cache()
    if backend:
        print(f"flash4 backend (flash4_last_backend after a forward): {backend}")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
