#!/usr/bin/env python3
"""flash4's backward (or forward) under environment settings, in one process, on the same tensors.

For A/B runs of kernel switches read at each call (FLASH4_HOPPER_*), or of two builds (a
setting's lib=PATH: that setting calls that libflash4.so, e.g. the baseline of a kernel
change built from the previous commit): per shape of
bench/peers.py (bf16, BSHD, 16384 tokens, hidden 2048, S 512 .. 16k, causal or not) the
backward's (--pass fwd: the forward's) time under setting A (--a; default: none) and under each setting B (--b,
repeatable), their ratio (A / B: above 1, B is faster), the largest difference between the
runs' dq / dk / dv (forward: out) (relative to the largest magnitude of A's), and, up to S 2048, each run's
largest error against torch's math attention in float32 with autograd (an independent
reference; relative the same way; with --softcap written out: softmax(softcap * tanh(s / softcap))).
A time is the best of --rounds medians of --repeats calls,
the settings' order reversed each round. A setting is NAME=value[,NAME=value...]. flash4 through
its C ABI by ctypes (bench/peers.py's wrapper). Exit status 1 when a B gradient differs from
the reference by more than --tolerance, or is not finite (a switch that breaks the backward
fails the run).

    python3 bench/env_ab.py --lib build-gpu/libflash4.so --b FLASH4_HOPPER_FLAT_ATOMIC_CHUNKS=1 \\
        [--b FLASH4_HOPPER_FLAT_ATOMIC_CHUNKS=2 ...] [--a NAME=value,...] [--dims 64,128,256] [--repeats 10]
    python3 bench/env_ab.py --lib build-gpu/libflash4.so --a lib=/tmp/baseline/libflash4.so --b '' --pass fwd
"""
import argparse
import functools
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peers import Flash4, median_ms  # noqa: E402


def setting(text):
    """"NAME=value[,NAME=value...]" -> dict."""
    out = {}
    for pair in filter(None, (text or "").split(",")):
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise SystemExit(f"not NAME=value: {pair!r}")
        out[name] = value
    return out


def apply(env):
    """Sets env's variables, returns their previous values (None: unset) to restore."""
    old = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    return old


def restore(old):
    for name, value in old.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def under(env, fn):
    """fn() with env's variables set (its "lib" is not one), restored after."""
    old = apply({n: x for n, x in env.items() if n != "lib"})
    try:
        return fn()
    finally:
        restore(old)


def reference(q, k, v, causal, softcap):
    """Attention in float32 by torch (B, H, S, d), differentiable: SDPA's math, or, with a softcap,
    the scores capped as flash4.h defines (s = softcap * tanh(scale * q.k / softcap))."""
    if not softcap:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    s = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    s = softcap * torch.tanh(s / softcap)
    if causal:
        S = s.shape[-1]
        s = s.masked_fill(torch.ones(S, S, dtype=torch.bool, device=s.device).triu(1), float("-inf"))
    return s.softmax(-1) @ v


def rel_max(x, ref):
    return ((x.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-30)).item()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lib", required=True, help="libflash4.so")
    ap.add_argument("--a", default="", help="setting A: NAME=value[,NAME=value...] (default: none)")
    ap.add_argument("--b", action="append", required=True, help="a setting B (repeatable)")
    ap.add_argument("--dims", default="256", help="head dims, comma-separated")
    ap.add_argument("--repeats", type=int, default=10, help="timed calls a round (their median)")
    ap.add_argument("--rounds", type=int, default=4, help="timing rounds, the order reversed each; the best kept")
    ap.add_argument("--tolerance", type=float, default=2e-2, help="largest relative error of B against the reference")
    ap.add_argument("--seed", type=int, default=20261202)
    ap.add_argument("--softcap", type=float, default=0.0, help="the scores' softcap (0: off)")
    ap.add_argument("--pass", dest="which", choices=("bwd", "fwd"), default="bwd", help="the pass timed")
    args = ap.parse_args()
    env_a = setting(args.a)
    settings = [("A", env_a)] + [(f"B{i + 1}", setting(b)) for i, b in enumerate(args.b)]
    libs = {}  # path -> Flash4; a setting's "lib" picks one, the others are environment variables

    def flash4_of(env):
        path = env.get("lib", args.lib)
        if path not in libs:
            libs[path] = Flash4(path)
        return libs[path]

    f4 = flash4_of({})
    for _, env in settings:
        flash4_of(env)
    print(f"seed {args.seed}; {torch.cuda.get_device_name()}; softcap {args.softcap}")
    for name, env in settings:
        print(f"  {name}: {env or '(defaults)'}")
    print(f"{'d':>4} {'S':>6} {'causal':>6} {'B':>3} | {'A ms':>8} {'B ms':>8} {'A/B':>6} | {'max|B-A|':>9} | "
          f"{'A vs ref':>9} {'B vs ref':>9}")
    failed = False
    ratios = {}  # (setting, d) -> A / B per shape
    for d in [int(x) for x in args.dims.split(",")]:
        for S in (512, 1024, 2048, 4096, 8192, 16384):
            for causal in (False, True):
                B, H = 16384 // S, 2048 // d
                gen = torch.Generator(device="cuda").manual_seed(args.seed + S * 1000 + d)
                mk = lambda: torch.randn(B, S, H, d, device="cuda", dtype=torch.bfloat16, generator=gen)
                q, k, v, dout = mk(), mk(), mk(), mk()
                out = torch.empty_like(q)
                lse = torch.empty(B, H, S, device="cuda", dtype=torch.float32)
                f4.forward(q, k, v, out, lse, causal, args.softcap)
                grads, runs = {}, {}
                for name, env in settings:
                    lib = flash4_of(env)
                    # Poisoned first: a result the pass does not write shows as NaN.
                    if args.which == "bwd":
                        g = tuple(torch.full_like(x, float("nan")) for x in (q, k, v))
                        run = functools.partial(lib.backward, q, k, v, out, dout, lse, *g, causal, args.softcap)
                    else:
                        g = (torch.full_like(q, float("nan")), torch.full_like(lse, float("nan")))
                        run = functools.partial(lib.forward, q, k, v, *g, causal, args.softcap)
                    runs[name] = run
                    grads[name] = g[:1] if args.which == "fwd" else g
                    under(env, run)
                torch.cuda.synchronize()
                # Rounds with the settings' order reversed each time, each setting's best round:
                # timed once each, always second, B read up to 7% slower on long shapes whose
                # kernels were identical to A's (H200, 2026-12-03).
                times = {name: float("inf") for name, _ in settings}
                for r in range(args.rounds):
                    for name, env in (settings if r % 2 == 0 else settings[::-1]):
                        ms = under(env, lambda: median_ms(runs[name], 2, args.repeats))
                        times[name] = min(times[name], ms)
                ref_err = {name: float("nan") for name, _ in settings}
                if S <= 2048:
                    qf, kf, vf = (x.float().transpose(1, 2).requires_grad_() for x in (q, k, v))
                    o = reference(qf, kf, vf, causal, args.softcap)
                    if args.which == "bwd":
                        ref = torch.autograd.grad(o, (qf, kf, vf), dout.float().transpose(1, 2))
                        ref = tuple(r.transpose(1, 2) for r in ref)
                    else:
                        ref = (o.detach().transpose(1, 2),)
                    for name, _ in settings:
                        ref_err[name] = max(rel_max(x, r) for x, r in zip(grads[name], ref))
                    del qf, kf, vf, o, ref
                for name, _ in settings[1:]:
                    diff = max(rel_max(b, a) for a, b in zip(grads["A"], grads[name]))
                    err = ref_err[name]
                    bad = not (diff == diff) or (err == err and err > args.tolerance)
                    failed |= bad
                    ratio = times["A"] / times[name]
                    ratios.setdefault((name, d), []).append(ratio)
                    print(f"{d:>4} {S:>6} {int(causal):>6} {name:>3} | {times['A']:>8.3f} {times[name]:>8.3f} "
                          f"{ratio:>6.3f} | {diff:>9.2e} | {ref_err['A']:>9.2e} {err:>9.2e}"
                          f"{'  FAIL' if bad else ''}")
                del q, k, v, dout, out, lse, grads
                torch.cuda.empty_cache()
    for (name, d), values in ratios.items():
        geo = torch.tensor(values).log().mean().exp().item()
        print(f"geometric mean A/{name}, d {d}: {geo:.3f} over {len(values)} shapes")
    print("FAILED" if failed else "all within tolerance")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
