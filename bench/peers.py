#!/usr/bin/env python3
"""flash4 next to its peers, in one process, on the same tensors.

Loads libflash4.so through ctypes and calls its C ABI (flash4.h) with torch tensors'
data pointers on torch's current stream, and times it beside torch's scaled_dot_product_
attention with the cuDNN and FLASH_ATTENTION (FlashAttention-2) backends. bf16, BSHD,
16384 tokens in total (batch = 16384 / S), hidden 2048 (heads = 2048 / d); FLOPs by
convention (forward 4 B H S^2 d, halved when causal; backward 2.5x forward); CUDA events,
median of the repeats after warm-up. Also checks that flash4's output matches cuDNN's.

    python3 bench/peers.py --lib build-gpu/libflash4.so [--quick] [--repeats 20]

Needs PyTorch with CUDA (the device machine has 2.11). libflash4.so: scripts/gpu_check.sh
links it from the static library.
"""
import argparse
import ctypes
import statistics
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

MAX_RANK = 4
FLASH4_BF16, FLASH4_F32, FLASH4_CUDA = 2, 0, 1


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
    v.dtype = FLASH4_BF16 if t.dtype == torch.bfloat16 else FLASH4_F32
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

    def forward(self, q, k, v, out, lse, causal):
        a = ForwardArgs()
        self.lib.flash4_forward_args_init(ctypes.byref(a))
        a.device = FLASH4_CUDA
        a.stream = torch.cuda.current_stream().cuda_stream
        a.q, a.k, a.v, a.out, a.lse = view(q), view(k), view(v), view(out), view(lse)
        a.options.causal = int(causal)
        self._check(self.lib.flash4_forward(ctypes.byref(a)), "flash4_forward")

    def backward(self, q, k, v, out, dout, lse, dq, dk, dv, causal):
        a = BackwardArgs()
        self.lib.flash4_backward_args_init(ctypes.byref(a))
        a.device = FLASH4_CUDA
        a.stream = torch.cuda.current_stream().cuda_stream
        a.q, a.k, a.v, a.out, a.dout, a.lse = view(q), view(k), view(v), view(out), view(dout), view(lse)
        a.dq, a.dk, a.dv = view(dq), view(dk), view(dv)
        a.options.causal = int(causal)
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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lib", required=True, help="path of libflash4.so")
    ap.add_argument("--quick", action="store_true", help="d = 128, S in {1024, 4096, 16384}")
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()

    f4 = Flash4(args.lib)
    print(f"peers on {torch.cuda.get_device_name()} with torch {torch.__version__}, "
          f"cuDNN {torch.backends.cudnn.version()}; bf16, 16384 tokens, hidden 2048, TFLOPs fwd/bwd")
    dims = [128] if args.quick else [64, 128, 256]
    lengths = [1024, 4096, 16384] if args.quick else [512, 1024, 2048, 4096, 8192, 16384]
    header = (f"{'d':>4} {'S':>6} {'causal':>6} | {'flash4':>11} | {'cuDNN':>11} | {'FA2':>11} | "
              f"{'f4/cuDNN':>9} | {'f4/FA2':>9} | max|f4-cuDNN|")
    print(header)
    print("-" * len(header))
    rows = []
    for d in dims:
        for S in lengths:
            for causal in (False, True):
                B, H = 16384 // S, 2048 // d
                gen = torch.Generator(device="cuda").manual_seed(S * 1000 + d)
                mk = lambda: torch.randn(B, S, H, d, device="cuda", dtype=torch.bfloat16, generator=gen)
                q, k, v, dout = mk(), mk(), mk(), mk()
                out = torch.empty_like(q)
                lse = torch.empty(B, H, S, device="cuda", dtype=torch.float32)
                dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
                flops = 4.0 * B * H * S * S * d / (2 if causal else 1)

                f4_fwd = median_ms(lambda: f4.forward(q, k, v, out, lse, causal), 3, args.repeats)
                f4_bwd = median_ms(lambda: f4.backward(q, k, v, out, dout, lse, dq, dk, dv, causal), 3, args.repeats)

                # SDPA wants [B, H, S, D]: the same memory seen through transposed strides.
                qt, kt, vt = (x.transpose(1, 2).detach().requires_grad_() for x in (q, k, v))
                gt = dout.transpose(1, 2)
                result = {}
                for name, backend in (("cuDNN", SDPBackend.CUDNN_ATTENTION), ("FA2", SDPBackend.FLASH_ATTENTION)):
                    try:
                        with sdpa_kernel(backend):
                            o = F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal)
                            fwd = median_ms(lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal),
                                            3, args.repeats)
                            bwd = median_ms(lambda: torch.autograd.grad(o, (qt, kt, vt), gt, retain_graph=True),
                                            3, args.repeats)
                        result[name] = (fwd, bwd, o.detach().transpose(1, 2))
                    except RuntimeError as e:  # backend unavailable for this shape
                        print(f"  {name} unavailable: {str(e).splitlines()[0]}", file=sys.stderr)
                        result[name] = None

                def tf(ms, scale=1.0):
                    return flops * scale / ms * 1e-9

                def cell(r):
                    return f"{tf(r[0]):5.0f}/{tf(r[1], 2.5):5.0f}" if r else f"{'n/a':>11}"

                def ratio(r, i):  # flash4's TFLOPs over the peer's = the peer's time over flash4's
                    return f"{r[i] / (f4_fwd, f4_bwd)[i]:4.2f}" if r else " n/a"

                cu, fa = result["cuDNN"], result["FA2"]
                diff = (out.float() - cu[2].float()).abs().max().item() if cu else float("nan")
                print(f"{d:>4} {S:>6} {int(causal):>6} | {tf(f4_fwd):5.0f}/{tf(f4_bwd, 2.5):5.0f} | {cell(cu)} | "
                      f"{cell(fa)} | {ratio(cu, 0):>4}/{ratio(cu, 1):>4} | {ratio(fa, 0):>4}/{ratio(fa, 1):>4} | "
                      f"{diff:.3g}", flush=True)
                rows.append((d, S, causal, f4_fwd, f4_bwd, cu, fa))
                del q, k, v, dout, out, lse, dq, dk, dv, qt, kt, vt, result
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
