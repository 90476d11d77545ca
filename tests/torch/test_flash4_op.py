"""flash4's PyTorch op (torch.ops.flash4.*, flash4.attention) against PyTorch.

Forward (out, lse) and backward (dq, dk, dv, dsink) of flash4 on bf16 / fp16 inputs are
compared with float64 references computed by torch from the same (rounded) inputs:
torch's SDPA math backend where it expresses the case (no softcap, no sink), otherwise
the explicit formula (score matrix, mask, softmax with the sink as an extra column),
which is itself checked against SDPA. Errors are relative L2 norms, ||x - ref|| / ||ref||,
bounded by what the low-precision arithmetic allows (bf16 ~1e-2, fp16 ~2e-3).

Runs where the extension is built (flash4/torch/build.py) and needs a CUDA device for
the CUDA cases; without one (FLASH4_TEST_DEVICE=cpu, or no GPU) the same cases run on
flash4's float32 CPU kernels (float64 inputs: its CPU reference). Inputs are random with a printed seed; FLASH4_TEST_SEED=<n>
replays one.

    PYTHONPATH=flash4/torch python3 -m pytest -q tests/torch
"""
import itertools
import math
import os
import random

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

flash4 = pytest.importorskip("flash4")
if not flash4.available():
    pytest.skip(f"flash4's PyTorch extension is not built: {flash4._load_error}", allow_module_level=True)

DEVICE = os.environ.get("FLASH4_TEST_DEVICE", "cuda" if torch.cuda.is_available() else "cpu")
ON_CUDA = DEVICE == "cuda"
TOL = {torch.bfloat16: 1.5e-2, torch.float16: 3e-3}
LSE_TOL = 2e-3  # absolute, nats: fp32 scores from the same rounded inputs


@pytest.fixture
def seed(request):
    s = int(os.environ.get("FLASH4_TEST_SEED", random.randrange(1 << 31)))
    torch.manual_seed(s)
    print(f"\n{request.node.name}: FLASH4_TEST_SEED={s}")
    return s


def rand(*shape, dtype, scale=1.0):
    return (torch.randn(*shape, device=DEVICE, dtype=torch.float32) * scale).to(dtype)


def rel_err(x, ref):
    x, ref = x.double(), ref.double()
    denom = ref.norm().item()
    return (x - ref).norm().item() / (denom if denom > 0 else 1.0)


def visibility_mask(Sq, Sk, causal, window, device):
    """True where query i may see key j (bottom-right aligned)."""
    i = torch.arange(Sq, device=device)[:, None] + (Sk - Sq)
    j = torch.arange(Sk, device=device)[None, :]
    visible = torch.ones(Sq, Sk, dtype=torch.bool, device=device)
    if causal:
        visible &= j <= i
    if window[0] >= 0:
        visible &= j >= i - window[0]
    if window[1] >= 0:
        visible &= j <= i + window[1]
    return visible


def explicit_reference(q, k, v, causal=False, window=(-1, -1), softcap=0.0, sink=None, scale=None, seqused=None):
    """float64 formula, dense [B, S, H, D]: returns out [B, Sq, Hq, Dv], lse [B, Hq, Sq]."""
    B, Sq, Hq, D = q.shape
    Sk, Hkv = k.shape[1], k.shape[2]
    scale = scale or 1.0 / math.sqrt(D)
    k = k.repeat_interleave(Hq // Hkv, dim=2)
    v = v.repeat_interleave(Hq // Hkv, dim=2)
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    outs, lses = [], []
    for b in range(B):
        n = Sk if seqused is None else int(seqused[b])
        visible = visibility_mask(Sq, n, causal, window, q.device)
        sb = s[b, :, :, :n].masked_fill(~visible, -1e300)
        if sink is not None:
            sb = torch.cat([sb, sink.double().view(Hq, 1, 1).expand(Hq, Sq, 1)], dim=-1)
        lse = torch.logsumexp(sb, dim=-1)  # [Hq, Sq]
        p = torch.exp(sb - lse[..., None])[..., :n]
        seen = visible.any(dim=-1)  # rows with no key: out 0, lse -inf (or the sink)
        p = p * seen[None, :, None]
        if sink is None:
            lse = torch.where(seen[None, :], lse, torch.full_like(lse, -math.inf))
        outs.append(torch.einsum("hqk,khd->qhd", p, v[b, :n]))
        lses.append(lse)
    return torch.stack(outs), torch.stack(lses)


def sdpa_reference(q, k, v, causal, window, scale=None):
    """torch SDPA, math backend, float64 (BHSD views of the BSHD tensors)."""
    Sq, Sk = q.shape[1], k.shape[1]
    mask = visibility_mask(Sq, Sk, causal, window, q.device)
    with sdpa_kernel(SDPBackend.MATH):
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
                                             scale=scale, enable_gqa=q.shape[2] != k.shape[2])
    return out.transpose(1, 2)


def reference(q, k, v, causal=False, window=(-1, -1), softcap=0.0, sink=None, scale=None, seqused=None):
    """out, lse in float64; out by SDPA's math backend where it can express the case."""
    out, lse = explicit_reference(q, k, v, causal, window, softcap, sink, scale, seqused)
    every_row_sees = bool(visibility_mask(q.shape[1], k.shape[1], causal, window, q.device).any(dim=-1).all())
    if softcap == 0 and sink is None and seqused is None and every_row_sees:
        out = sdpa_reference(q, k, v, causal, window, scale)
    return out, lse


def leaves(*tensors):
    return [t.detach().clone().requires_grad_() for t in tensors]


def check_case(seed, dtype, B, Sq, Sk, Hq, Hkv, D, Dv=None, causal=False, window=(-1, -1), softcap=0.0,
               with_sink=False, scale=None, layout="bshd", deterministic=False, seqused=None):
    Dv = Dv or D
    q, k, v = rand(B, Sq, Hq, D, dtype=dtype), rand(B, Sk, Hkv, D, dtype=dtype), rand(B, Sk, Hkv, Dv, dtype=dtype)
    dout = rand(B, Sq, Hq, Dv, dtype=dtype)
    sink = torch.randn(Hq, device=DEVICE) if with_sink else None
    if layout == "bhsd":  # BHSD memory, seen as [B, S, H, D]
        q, k, v = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in (q, k, v))
    elif layout == "padded":  # rows of a wider buffer (e.g. fused qkv)
        q, k, v = (torch.cat([x, torch.zeros_like(x[..., :8])], -1)[..., :x.shape[-1]] for x in (q, k, v))
    elif layout == "head_dim_strided":  # last stride != 1: the op copies
        q, k, v = (x.transpose(-1, -2).contiguous().transpose(-1, -2) for x in (q, k, v))
    q1, k1, v1 = leaves(q, k, v)
    s1 = sink.clone().requires_grad_() if with_sink else None
    seqused_t = torch.tensor(seqused, dtype=torch.int32, device=DEVICE) if seqused is not None else None
    out, lse = flash4.attention(q1, k1, v1, causal=causal, window=window, softcap=softcap, sink=s1,
                                softmax_scale=scale, deterministic=deterministic, return_lse=True, seqused_k=seqused_t)
    out.backward(dout)

    q64, k64, v64 = leaves(*(x.double() for x in (q, k, v)))
    s64 = sink.double().clone().requires_grad_() if with_sink else None
    ref_out, ref_lse = reference(q64, k64, v64, causal, window, softcap, s64, scale, seqused)
    ref_out.backward(dout.double())

    tol = TOL[dtype]
    what = f"seed {seed}"
    finite = torch.isfinite(ref_lse)
    errors = {"out": rel_err(out, ref_out), "dq": rel_err(q1.grad, q64.grad), "dk": rel_err(k1.grad, k64.grad),
              "dv": rel_err(v1.grad, v64.grad)}
    if with_sink:
        errors["dsink"] = rel_err(s1.grad, s64.grad)
    if finite.any():
        errors["lse_abs"] = (lse.double() - ref_lse)[finite].abs().max().item()
    print("errors " + " ".join(f"{k}={v:.2e}" for k, v in errors.items()))
    assert out.dtype == dtype and out.shape == (B, Sq, Hq, Dv)
    assert lse.dtype == torch.float32 and lse.shape == (B, Hq, Sq)
    assert rel_err(out, ref_out) < tol, f"out {rel_err(out, ref_out):.3g}, {what}"
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse)), f"lse -inf rows differ, {what}"
    if finite.any():
        lse_err = (lse.double() - ref_lse)[finite].abs().max().item()
        assert lse_err < LSE_TOL, f"lse {lse_err:.3g}, {what}"
    for name, g, ref in (("dq", q1.grad, q64.grad), ("dk", k1.grad, k64.grad), ("dv", v1.grad, v64.grad)):
        assert g.shape == ref.shape and g.dtype == dtype
        assert rel_err(g, ref) < tol, f"{name} {rel_err(g, ref):.3g}, {what}"
    if with_sink:
        assert rel_err(s1.grad, s64.grad) < 2 * tol, f"dsink {rel_err(s1.grad, s64.grad):.3g}, {what}"
    return out, (q1.grad, k1.grad, v1.grad)


DTYPES = [torch.bfloat16, torch.float16]
DTYPE_IDS = ["bf16", "fp16"]


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("D", [64, 128, 256])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_matches_sdpa_math(seed, dtype, D, causal):
    check_case(seed, dtype, B=2, Sq=257, Sk=257, Hq=4, Hkv=4, D=D, causal=causal)


FEATURES = {
    "gqa": dict(Hq=8, Hkv=2, causal=True),
    "mqa": dict(Hq=6, Hkv=1),
    "sq_lt_sk_causal": dict(Sq=100, Sk=300, causal=True),
    "sq_gt_sk_causal": dict(Sq=300, Sk=100, causal=True),  # early rows see no key
    "sq_ne_sk_full": dict(Sq=77, Sk=190),
    "window": dict(window=(32, 16)),
    "window_causal": dict(window=(64, -1), causal=True, Sq=150, Sk=260),
    "softcap": dict(softcap=2.0, causal=True),
    "sink": dict(with_sink=True),
    "sink_causal_sq_gt_sk": dict(with_sink=True, causal=True, Sq=200, Sk=90),
    "scale": dict(scale=0.3),
    "dv_ne_dqk": dict(D=192, Dv=128, causal=True),
    "d96": dict(D=96),
    "bhsd": dict(layout="bhsd", causal=True, Hq=4, Hkv=2),
    "padded_rows": dict(layout="padded"),
    "head_dim_strided": dict(layout="head_dim_strided"),
    "seqused_k": dict(seqused=[150, 37], Sk=200, causal=True),
    "deterministic": dict(deterministic=True, Hq=8, Hkv=2),
    "everything": dict(Hq=8, Hkv=2, causal=True, window=(40, -1), softcap=5.0, with_sink=True, Sq=180, Sk=220),
}


@pytest.mark.parametrize("feature", list(FEATURES))
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_feature(seed, dtype, feature):
    case = dict(B=2, Sq=200, Sk=200, Hq=4, Hkv=4, D=128)
    case.update(FEATURES[feature])
    check_case(seed, dtype, **case)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("give_max", [True, False], ids=["max_given", "max_read"])
def test_varlen_matches_per_sequence(seed, dtype, causal, give_max):
    """Packed sequences (cu_seqlens, Sq != Sk per sequence, an empty one) against each
    sequence's float64 reference; tokens past cu_seqlens[batch] get zero out and grads."""
    lens_q, lens_k = [1, 17, 128, 0, 300], [5, 17, 200, 3, 300]
    Hq, Hkv, D = 4, 2, 64
    Tq, Tk = sum(lens_q) + 3, sum(lens_k) + 2  # trailing tokens of no sequence
    cu_q = torch.tensor([0, *itertools.accumulate(lens_q)], dtype=torch.int32, device=DEVICE)
    cu_k = torch.tensor([0, *itertools.accumulate(lens_k)], dtype=torch.int32, device=DEVICE)
    q, k, v = rand(Tq, Hq, D, dtype=dtype), rand(Tk, Hkv, D, dtype=dtype), rand(Tk, Hkv, D, dtype=dtype)
    dout = rand(Tq, Hq, D, dtype=dtype)
    q1, k1, v1 = leaves(q, k, v)
    out, lse = flash4.attention(q1, k1, v1, causal=causal, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k,
                                max_seqlen_q=max(lens_q) if give_max else None,
                                max_seqlen_k=max(lens_k) if give_max else None, return_lse=True)
    assert out.shape == (Tq, Hq, D) and lse.shape == (Hq, Tq)
    out.backward(dout)

    ref_out = torch.zeros(Tq, Hq, D, dtype=torch.float64, device=DEVICE)
    ref_dq = torch.zeros_like(ref_out)
    ref_dk = torch.zeros(Tk, Hkv, D, dtype=torch.float64, device=DEVICE)
    ref_dv = torch.zeros_like(ref_dk)
    for b, (lq, lk) in enumerate(zip(lens_q, lens_k)):
        a, e, c, f = int(cu_q[b]), int(cu_q[b + 1]), int(cu_k[b]), int(cu_k[b + 1])
        if lq == 0:
            continue
        qb, kb, vb = leaves(*(x.double()[None] for x in (q[a:e], k[c:f], v[c:f])))
        ob, lb = explicit_reference(qb, kb, vb, causal=causal)
        ob.backward(dout[a:e].double()[None])
        ref_out[a:e], ref_dq[a:e], ref_dk[c:f], ref_dv[c:f] = ob[0], qb.grad[0], kb.grad[0], vb.grad[0]
        finite = torch.isfinite(lb[0])
        assert torch.equal(torch.isinf(lse[:, a:e]), ~finite)
        if finite.any():
            assert (lse[:, a:e].double() - lb[0])[finite].abs().max().item() < LSE_TOL, f"seq {b}, seed {seed}"
    tol = TOL[dtype]
    for name, x, ref in (("out", out, ref_out), ("dq", q1.grad, ref_dq), ("dk", k1.grad, ref_dk),
                         ("dv", v1.grad, ref_dv)):
        assert rel_err(x, ref) < tol, f"{name} {rel_err(x, ref):.3g}, seed {seed}"
    assert (out[cu_q[-1]:] == 0).all() and (q1.grad[cu_q[-1]:] == 0).all() and (k1.grad[cu_k[-1]:] == 0).all()


def test_explicit_reference_is_sdpa(seed):
    """The float64 formula the feature tests fall back on agrees with SDPA's math backend."""
    q, k, v = (torch.randn(2, n, h, 64, dtype=torch.float64, device=DEVICE) for n, h in ((90, 4), (130, 2), (130, 2)))
    for causal, window in ((False, (-1, -1)), (True, (-1, -1)), (False, (20, 10)), (True, (50, -1))):
        ours, _ = explicit_reference(q, k, v, causal, window)
        theirs = sdpa_reference(q, k, v, causal, window)
        assert (ours - theirs).abs().max().item() < 1e-10


def test_deterministic_backward_is_bit_identical(seed):
    dtype = torch.bfloat16
    q, k, v = rand(2, 300, 8, 128, dtype=dtype), rand(2, 300, 2, 128, dtype=dtype), rand(2, 300, 2, 128, dtype=dtype)
    dout = rand(2, 300, 8, 128, dtype=dtype)
    grads = []
    for _ in range(2):
        q1, k1, v1 = leaves(q, k, v)
        flash4.attention(q1, k1, v1, causal=True, deterministic=True).backward(dout)
        grads.append((q1.grad, k1.grad, v1.grad))
    for a, b in zip(*grads):
        assert torch.equal(a, b)


def test_gradcheck_cpu_float64(seed):
    """Autograd wiring: torch.autograd.gradcheck through flash4's CPU reference in float64
    (q, k, v; the sink is fp32 in the ABI, so its gradient is checked against the float64
    formula instead)."""
    q = torch.randn(1, 9, 4, 16, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 12, 2, 16, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 12, 2, 8, dtype=torch.float64, requires_grad=True)
    sink = torch.randn(4, dtype=torch.float64)
    fn = lambda q, k, v: flash4.attention(q, k, v, causal=True, window=(6, -1), softcap=3.0, sink=sink)
    assert torch.autograd.gradcheck(fn, (q, k, v))
    s1 = sink.float().double().requires_grad_()
    flash4.attention(q, k, v, causal=True, softcap=3.0, sink=s1).sum().backward()
    s2 = s1.detach().clone().requires_grad_()
    explicit_reference(q, k, v, causal=True, softcap=3.0, sink=s2)[0].sum().backward()
    assert (s1.grad - s2.grad).abs().max().item() < 1e-5


def test_torch_compile_fullgraph(seed):
    """torch.compile(fullgraph=True) traces flash4.attention (fake kernels) and its
    backward (register_autograd), and gives eager's results."""
    dtype = torch.bfloat16 if ON_CUDA else torch.float32
    q, k, v = rand(2, 128, 4, 64, dtype=dtype), rand(2, 128, 2, 64, dtype=dtype), rand(2, 128, 2, 64, dtype=dtype)
    sink = torch.randn(4, device=DEVICE)
    dout = rand(2, 128, 4, 64, dtype=dtype)

    def fn(q, k, v, sink):
        out, lse = flash4.attention(q, k, v, causal=True, sink=sink, deterministic=True, return_lse=True)
        return out, lse

    compiled = torch.compile(fn, fullgraph=True)
    results = []
    for f in (fn, compiled):
        q1, k1, v1 = leaves(q, k, v)
        s1 = sink.clone().requires_grad_()
        out, lse = f(q1, k1, v1, s1)
        out.backward(dout)
        results.append((out, lse, q1.grad, k1.grad, v1.grad, s1.grad))
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_paged_forward_matches_dense(seed):
    """paged_attention over a shuffled page pool equals attention over the same keys."""
    dtype = torch.bfloat16 if ON_CUDA else torch.float32
    B, Sq, Hq, Hkv, D, page = 3, 16, 8, 2, 128, 64
    lens = [200, 64, 1]
    pages_per_seq = 4
    q = rand(B, Sq, Hq, D, dtype=dtype)
    k, v = rand(B, page * pages_per_seq, Hkv, D, dtype=dtype), rand(B, page * pages_per_seq, Hkv, D, dtype=dtype)
    perm = torch.randperm(B * pages_per_seq, device=DEVICE)
    k_cache = torch.empty(B * pages_per_seq, page, Hkv, D, dtype=dtype, device=DEVICE)
    v_cache = torch.empty_like(k_cache)
    k_cache[perm] = k.reshape(B * pages_per_seq, page, Hkv, D)
    v_cache[perm] = v.reshape(B * pages_per_seq, page, Hkv, D)
    page_table = perm.view(B, pages_per_seq).to(torch.int32)
    seqused = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    out, lse = flash4.paged_attention(q, k_cache, v_cache, page_table, seqused, causal=True, return_lse=True)
    dense, dense_lse = flash4.attention(q, k, v, causal=True, seqused_k=seqused, return_lse=True)
    assert torch.equal(out, dense) or rel_err(out, dense) < 1e-3
    ref, _ = explicit_reference(q.double(), k.double(), v.double(), causal=True, seqused=lens)
    assert rel_err(out, ref) < TOL.get(dtype, 1e-5), f"seed {seed}"


@pytest.mark.skipif(not ON_CUDA, reason="CUDA streams")
def test_runs_on_the_current_stream(seed):
    q, k, v = (rand(2, 512, 4, 128, dtype=torch.bfloat16) for _ in range(3))
    expected = flash4.attention(q, k, v, causal=True)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        out = flash4.attention(q, k, v, causal=True)
    torch.cuda.current_stream().wait_stream(side)
    assert torch.equal(out, expected)


def test_errors_name_the_problem():
    q = torch.randn(1, 8, 6, 64, device=DEVICE).to(torch.bfloat16)
    k = torch.randn(1, 8, 4, 64, device=DEVICE).to(torch.bfloat16)
    with pytest.raises(RuntimeError, match=r"must divide"):
        flash4.attention(q, k, k)
    if ON_CUDA:
        with pytest.raises(RuntimeError, match=r"bf16 and fp16 only"):
            flash4.attention(q.float(), q.float(), q.float())
    with pytest.raises(ValueError, match="cu_seqlens"):
        flash4.attention(q[0], q[0], q[0], cu_seqlens_q=torch.tensor([0, 8], dtype=torch.int32, device=DEVICE))
