#!/usr/bin/env python3
"""Loads each model `adept run` wrote (OUT_DIR/<method>/model) with transformers, unchanged,
and scores held-out-like domain text with it: the checkpoints are usable in the HF ecosystem.

    python3 bench/gpu-study/check_in_transformers.py /tmp/gpu-study /tmp/study-data/domain.jsonl
"""
import json
import os
import sys

import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast


def main():
    run_dir, corpus = sys.argv[1], sys.argv[2]
    texts = [json.loads(line)["text"] for line in open(corpus)][-8:]
    for method in sorted(os.listdir(run_dir)):
        model_dir = os.path.join(run_dir, method, "model")
        if not os.path.isfile(os.path.join(model_dir, "config.json")):
            continue
        tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(model_dir, "tokenizer.json"))
        model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).cuda().eval()
        losses = []
        with torch.no_grad():
            for text in texts:
                ids = torch.tensor([tok.encode(text)[:1024]], device="cuda")
                losses.append(model(input_ids=ids, labels=ids).loss.item())
        print(f"{method}: {type(model).__name__}, {model.config.num_hidden_layers} layers, "
              f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params, "
              f"mean loss on the last 8 domain documents {sum(losses) / len(losses):.3f}")


if __name__ == "__main__":
    main()
