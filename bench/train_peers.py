#!/usr/bin/env python3
"""Training throughput on one GPU, in one run: adept's CUDA backend (train-bench) against
Hugging Face transformers (SDPA attention, bf16 autocast over fp32 weights, fused AdamW),
eager and under torch.compile, on the Llama-3.2-1B shape (hidden 2048, 16 layers, 32/8
heads, intermediate 8192, vocab 128256, tied embeddings), random init, the same batch
shape and optimizer settings (AdamW 0.9/0.95, wd 0.1, clip 1.0).

Prints tokens/s, MFU (6·N + causal attention FLOPs per token, over the bf16 GEMM rate
measured here with torch, 8192³), peak GPU memory and the ratios; writes
train_peers.json and train_peers.md into --out.

  python3 bench/train_peers.py --engine build-gpu-train/bin/train-bench [--batch 2]
      [--seq 4096] [--steps 10] [--warmup 3] [--only adept,eager,compile] [--out DIR]

Each engine runs in its own process, so that peak memory is its own.
"""
import argparse
import json
import os
import subprocess
import sys
import time

# meta-llama/Llama-3.2-1B config.json (the fields that shape the computation).
LLAMA_3_2_1B = {
    "vocab_size": 128256, "hidden_size": 2048, "intermediate_size": 8192,
    "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
    "head_dim": 64, "max_position_embeddings": 131072, "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                     "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    "tie_word_embeddings": True, "attention_bias": False, "mlp_bias": False,
}


def flops_per_token(seq):
    c = LLAMA_3_2_1B
    C, I, L, V = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    q = c["num_attention_heads"] * c["head_dim"]
    kv = c["num_key_value_heads"] * c["head_dim"]
    n = L * (C * (q + 2 * kv) + q * C + 3 * C * I) + V * C
    return 6.0 * n + 6.0 * L * seq * q


def gemm_tflops():
    import torch
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(20):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        a @ b
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e))
    return 2.0 * n ** 3 / (sorted(times)[len(times) // 2] * 1e-3) / 1e12


def hf_worker(mode, batch, seq, steps, warmup):
    import torch
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.backends.cuda.matmul.allow_tf32 = True
    cfg = LlamaConfig.from_dict(dict(LLAMA_3_2_1B))
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8,
                            weight_decay=0.1, fused=True)
    fwd = torch.compile(model) if mode == "compile" else model
    g = torch.Generator(device="cuda").manual_seed(7)
    data = [torch.randint(0, cfg.vocab_size, (batch, seq), device="cuda", generator=g) for _ in range(4)]

    def step(i):
        x = data[i % 4]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = fwd(input_ids=x, labels=x).loss  # labels shifted inside: next-token loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    t_setup = time.perf_counter()
    first = float(step(0))
    for i in range(1, warmup):
        step(i)
    torch.cuda.synchronize()
    setup = time.perf_counter() - t_setup
    t0 = time.perf_counter()
    for i in range(steps):
        loss = step(warmup + i)
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    print(json.dumps({
        "engine": f"hf-{mode}", "tokens_per_s": batch * seq * steps / dt, "step_ms": 1e3 * dt / steps,
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2 ** 30,
        "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2 ** 30,
        "attention": model.config._attn_implementation, "loss_first": first, "loss_last": float(loss),
        "warmup_s": setup, "torch": torch.__version__, "transformers": transformers.__version__,
        "rope": str(getattr(model.config, "rope_parameters", getattr(model.config, "rope_scaling", None))),
    }), flush=True)


def last_json(text):
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                pass
    return None


def run(cmd, timeout, log):
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        out, rc = p.stdout + p.stderr, p.returncode
    except subprocess.TimeoutExpired as e:
        text = lambda b: b.decode(errors="replace") if isinstance(b, bytes) else (b or "")
        out, rc = text(e.stdout) + text(e.stderr), "timeout"
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}  (rc {rc}, {time.perf_counter() - t0:.0f} s)\n{out}\n")
    r = last_json(out) if rc == 0 else None
    if r is None:
        tail = "\n".join(out.strip().splitlines()[-5:])
        print(f"  {' '.join(cmd[:3])}...: failed (rc {rc}): {tail}", flush=True)
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--engine", default="build-gpu-train/bin/train-bench")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--only", default="adept,eager,compile")
    ap.add_argument("--engine-args", default="", help="extra train-bench arguments")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--worker", choices=["eager", "compile"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        hf_worker(a.worker, a.batch, a.seq, a.steps, a.warmup)
        return

    import torch
    os.makedirs(a.out, exist_ok=True)
    log = os.path.join(a.out, "train_peers.log")
    device = torch.cuda.get_device_name(0)
    peak = gemm_tflops()
    fpt = flops_per_token(a.seq)
    print(f"device {device}; bf16 GEMM 8192^3 (torch) {peak:.0f} TFLOP/s; "
          f"{fpt / 1e9:.2f} GFLOP/token; batch {a.batch} x {a.seq}", flush=True)
    results = []
    shape = ["--batch", str(a.batch), "--seq", str(a.seq), "--steps", str(a.steps), "--warmup", str(a.warmup)]
    for name in a.only.split(","):
        if name == "adept":
            r = run([a.engine, "--model", "llama-3.2-1b", *shape, *a.engine_args.split()], 500, log)
        else:
            r = run([sys.executable, __file__, "--worker", name, *shape], 500, log)
        if r:
            r["mfu"] = r["tokens_per_s"] * fpt / (peak * 1e12)
            results.append(r)
            print(f"  {r['engine']}: {r['tokens_per_s']:.0f} tokens/s, {r['step_ms']:.1f} ms/step, "
                  f"MFU {100 * r['mfu']:.1f}%, peak {r['peak_mem_gib']:.1f} GiB", flush=True)

    by = {r["engine"]: r for r in results}
    ours = by.get("adept-cuda")
    rows = ["| engine | tokens/s | ms/step | MFU | peak GiB | ours ÷ this |", "|---|---|---|---|---|---|"]
    for r in results:
        ratio = f"{ours['tokens_per_s'] / r['tokens_per_s']:.2f}×" if ours else "–"
        rows.append(f"| {r['engine']} | {r['tokens_per_s']:.0f} | {r['step_ms']:.1f} | {100 * r['mfu']:.1f}% "
                    f"| {r['peak_mem_gib']:.1f} | {ratio} |")
    table = "\n".join(rows)
    print(table, flush=True)
    meta = {"device": device, "gemm_tflops_torch": peak, "flops_per_token": fpt, "batch": a.batch,
            "seq": a.seq, "steps": a.steps, "warmup": a.warmup, "results": results}
    with open(os.path.join(a.out, "train_peers.json"), "w") as f:
        json.dump(meta, f, indent=1)
    with open(os.path.join(a.out, "train_peers.md"), "w") as f:
        f.write(f"{device}, bf16 GEMM {peak:.0f} TFLOP/s (torch, 8192³), batch {a.batch} × {a.seq}, "
                f"{a.steps} timed steps after {a.warmup}\n\n{table}\n")


if __name__ == "__main__":
    main()
