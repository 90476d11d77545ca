"""flash4 for PyTorch: exact fused attention as torch.ops.flash4.* custom ops.

    import flash4
    out = flash4.attention(q, k, v, causal=True)          # q [B, Sq, Hq, D], k/v [B, Sk, Hkv, D]
    out, lse = flash4.attention(q, k, v, return_lse=True)  # lse fp32 [B, Hq, Sq]

The ops come from a small C++ extension (flash4/torch/csrc/flash4_op.cpp) over flash4's C
ABI, built with flash4/torch/build.py; this module loads it, registers the fake (meta)
kernels that torch.compile traces with, and the autograd formula. CUDA tensors (bf16 /
fp16) run flash4's CUDA backends on the current stream; CPU tensors run its float32 CPU
kernels, or its float64 reference for float64 tensors (gradcheck).

Ops (schemas in flash4_op.cpp):
    torch.ops.flash4.fwd(q, k, v, sink, cu_seqlens_q, cu_seqlens_k, seqused_k, page_table,
                         max_seqlen_q, max_seqlen_k, softmax_scale, causal, window_left,
                         window_right, softcap, deterministic=False) -> (out, lse)
    torch.ops.flash4.bwd(dout, q, k, v, out, lse, sink, cu_seqlens_q, cu_seqlens_k, seqused_k,
                         max_seqlen_q, max_seqlen_k, softmax_scale, causal, window_left,
                         window_right, softcap, deterministic) -> (dq, dk, dv, dsink)
    torch.ops.flash4.last_backend() -> str

The library is found at $FLASH4_TORCH_LIB, else at <repo>/build-torch/ext/flash4_torch.so
(build.py's default).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

__all__ = ["attention", "paged_attention", "available", "last_backend", "library_path", "load_library"]

_loaded = False
_load_error: str | None = None


def library_path() -> Path:
    """Where the extension is looked for."""
    env = os.environ.get("FLASH4_TORCH_LIB")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[3]
    return repo / "build-torch" / "ext" / "flash4_torch.so"


def load_library(path: str | os.PathLike | None = None) -> None:
    """Loads the extension (once) and registers the fake kernels and the autograd formula."""
    global _loaded, _load_error
    if _loaded:
        return
    path = Path(path) if path is not None else library_path()
    if not hasattr(torch.ops.flash4, "fwd"):  # build.py's cpp_extension.load may have loaded it already
        if not path.exists():
            _load_error = f"flash4: the PyTorch extension is not built ({path} missing; run flash4/torch/build.py)"
            raise RuntimeError(_load_error)
        torch.ops.load_library(str(path))
    _register()
    _loaded = True
    _load_error = None


def available() -> bool:
    """Whether torch.ops.flash4 is usable (loads it on first call)."""
    try:
        load_library()
        return True
    except (RuntimeError, OSError) as e:
        global _load_error
        _load_error = str(e)
        return False


def _register() -> None:
    @torch.library.register_fake("flash4::fwd")
    def _fwd_fake(q, k, v, sink, cu_seqlens_q, cu_seqlens_k, seqused_k, page_table, max_seqlen_q, max_seqlen_k,
                  softmax_scale, causal, window_left, window_right, softcap, deterministic=False):
        dv = v.shape[-1]
        if cu_seqlens_q is not None:  # packed: out [Tq, Hq, Dv], lse [Hq, Tq]
            out = q.new_empty((q.shape[0], q.shape[1], dv))
            lse = q.new_empty((q.shape[1], q.shape[0]), dtype=torch.float32)
        else:  # out [B, Sq, Hq, Dv], lse [B, Hq, Sq]
            out = q.new_empty((q.shape[0], q.shape[1], q.shape[2], dv))
            lse = q.new_empty((q.shape[0], q.shape[2], q.shape[1]), dtype=torch.float32)
        return out, lse

    @torch.library.register_fake("flash4::bwd")
    def _bwd_fake(dout, q, k, v, out, lse, sink, cu_seqlens_q, cu_seqlens_k, seqused_k, max_seqlen_q, max_seqlen_k,
                  softmax_scale, causal, window_left, window_right, softcap, deterministic):
        # The op returns fresh contiguous tensors whatever the inputs' strides.
        dq = q.new_empty(q.shape)
        dk = k.new_empty(k.shape)
        dv = v.new_empty(v.shape)
        dsink = q.new_empty((sink.numel() if sink is not None else 0,), dtype=torch.float32)
        return dq, dk, dv, dsink

    def setup_context(ctx, inputs, output):
        (q, k, v, sink, cu_seqlens_q, cu_seqlens_k, seqused_k, page_table, max_seqlen_q, max_seqlen_k, softmax_scale,
         causal, window_left, window_right, softcap, deterministic) = inputs
        out, lse = output
        ctx.save_for_backward(q, k, v, out, lse, sink, cu_seqlens_q, cu_seqlens_k, seqused_k)
        ctx.paged = page_table is not None
        ctx.scalars = (max_seqlen_q, max_seqlen_k, softmax_scale, causal, window_left, window_right, softcap,
                       deterministic)
        # The LSE is an output for callers (e.g. to merge attention over KV chunks), not a
        # differentiable one: gradients flow through `out` only.
        ctx.mark_non_differentiable(lse)

    def backward(ctx, dout, dlse):
        if ctx.paged:
            raise RuntimeError("flash4: the paged-KV forward has no backward")
        q, k, v, out, lse, sink, cu_seqlens_q, cu_seqlens_k, seqused_k = ctx.saved_tensors
        (max_seqlen_q, max_seqlen_k, softmax_scale, causal, window_left, window_right, softcap,
         deterministic) = ctx.scalars
        dq, dk, dv, dsink = torch.ops.flash4.bwd(dout, q, k, v, out, lse, sink, cu_seqlens_q, cu_seqlens_k, seqused_k,
                                                 max_seqlen_q, max_seqlen_k, softmax_scale, causal, window_left,
                                                 window_right, softcap, deterministic)
        return (dq, dk, dv, dsink if sink is not None else None) + (None,) * 12

    torch.library.register_autograd("flash4::fwd", backward, setup_context=setup_context)


def last_backend() -> str:
    """Name of the implementation flash4's last call on this thread ran ("portable",
    "hopper", "cpu", "reference"). Autograd runs backward on its own threads: ask after a forward."""
    _require()
    return torch.ops.flash4.last_backend()


def _require() -> None:
    if not _loaded:
        load_library()


def _int32(t):
    if t is None:
        return None
    return t if t.dtype == torch.int32 else t.to(torch.int32)


def attention(q, k, v, causal=False, window=(-1, -1), softcap=0.0, sink=None, softmax_scale=None,
              deterministic=False, cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=None, max_seqlen_k=None,
              return_lse=False, seqused_k=None):
    """Exact softmax attention, differentiable in q, k, v and sink.

    q [B, Sq, Hq, Dqk], k [B, Sk, Hkv, Dqk], v [B, Sk, Hkv, Dv] (any strides whose last one
    is 1; BHSD memory is q.transpose(1, 2) of a [B, H, S, D] tensor), or packed
    [T, H, D] with cu_seqlens_q / cu_seqlens_k ([batch + 1] int32 offsets; give
    max_seqlen_q / max_seqlen_k to save a device-to-host read). Hq a multiple of Hkv.
    causal is bottom-right aligned when Sq != Sk; window = (left, right), -1 unbounded;
    softcap > 0 applies c * tanh(s / c); sink is a per-head logit [Hq] that joins the
    softmax denominator only; softmax_scale None is 1 / sqrt(Dqk). seqused_k [B] limits
    each sequence's keys. deterministic makes the backward bit-reproducible.

    Returns out [B, Sq, Hq, Dv] (packed: [Tq, Hq, Dv]), and with return_lse also the fp32
    log-sum-exp [B, Hq, Sq] (packed: [Hq, Tq]; not differentiable).
    """
    _require()
    if (cu_seqlens_q is None) != (cu_seqlens_k is None):
        raise ValueError("flash4.attention: give both cu_seqlens_q and cu_seqlens_k, or neither")
    if window is None:
        window = (-1, -1)
    if sink is not None:
        sink = sink.to(torch.float32).contiguous()
    out, lse = torch.ops.flash4.fwd(
        q, k, v, sink, _int32(cu_seqlens_q), _int32(cu_seqlens_k), _int32(seqused_k), None,
        int(max_seqlen_q or 0), int(max_seqlen_k or 0), float(softmax_scale or 0.0), bool(causal),
        int(window[0]), int(window[1]), float(softcap), bool(deterministic))
    return (out, lse) if return_lse else out


def paged_attention(q, k_cache, v_cache, page_table, seqused_k, causal=False, window=(-1, -1), softcap=0.0,
                    sink=None, softmax_scale=None, cu_seqlens_q=None, max_seqlen_q=None, return_lse=False):
    """Forward over a paged KV cache (inference; no backward).

    k_cache / v_cache [num_pages, page_size, Hkv, D]; page_table [B, max_pages_per_seq]
    int32; seqused_k [B] int32 keys of each sequence. q dense [B, Sq, Hq, D] or packed
    [Tq, Hq, D] with cu_seqlens_q.
    """
    _require()
    if window is None:
        window = (-1, -1)
    if sink is not None:
        sink = sink.to(torch.float32).contiguous()
    out, lse = torch.ops.flash4.fwd(
        q, k_cache, v_cache, sink, _int32(cu_seqlens_q), None, _int32(seqused_k), _int32(page_table),
        int(max_seqlen_q or 0), 0, float(softmax_scale or 0.0), bool(causal), int(window[0]), int(window[1]),
        float(softcap), False)
    return (out, lse) if return_lse else out
