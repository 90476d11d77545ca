#!/usr/bin/env python3
"""One flash4.attention forward and backward on the GPU (bf16, causal, GQA) against torch
SDPA's math backend in float64: a quick check that the built extension works here.

    PYTHONPATH=flash4/torch python3 flash4/torch/smoke.py
"""
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import flash4


def main():
    flash4.load_library()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    q = torch.randn(2, 300, 8, 128, device=device).to(torch.bfloat16).requires_grad_()
    k = torch.randn(2, 300, 2, 128, device=device).to(torch.bfloat16).requires_grad_()
    v = torch.randn(2, 300, 2, 128, device=device).to(torch.bfloat16).requires_grad_()
    dout = torch.randn(2, 300, 8, 128, device=device).to(torch.bfloat16)
    out = flash4.attention(q, k, v, causal=True)
    backend = flash4.last_backend()
    out.backward(dout)
    q64, k64, v64 = (x.detach().double().transpose(1, 2).requires_grad_() for x in (q, k, v))
    with sdpa_kernel(SDPBackend.MATH):
        ref = F.scaled_dot_product_attention(q64, k64, v64, is_causal=True, enable_gqa=True)
    ref.backward(dout.double().transpose(1, 2))
    worst = 0.0
    for name, x, r in (("out", out, ref.transpose(1, 2)), ("dq", q.grad, q64.grad.transpose(1, 2)),
                       ("dk", k.grad, k64.grad.transpose(1, 2)), ("dv", v.grad, v64.grad.transpose(1, 2))):
        err = ((x.double() - r).norm() / r.norm()).item()
        worst = max(worst, err)
        print(f"{name}: relative error {err:.2e}")
    print(f"flash4 smoke on {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'} ({backend}): "
          f"{'ok' if worst < 1.5e-2 else 'FAILED'}")
    return 0 if worst < 1.5e-2 else 1


if __name__ == "__main__":
    sys.exit(main())
