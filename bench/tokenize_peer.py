#!/usr/bin/env python3
"""Tokenization throughput: adept (tokenize-bench) against Hugging Face `tokenizers`.

Both encode the same JSONL corpus (one {"text": ...} per line) with the same
tokenizer.json on the same number of threads (RAYON_NUM_THREADS for tokenizers), and
adept's ids are checked against tokenizers' for every document. Prints tokens/s of each
and the ratio adept / tokenizers (the faster of encode_batch and encode_batch_fast).

With no --corpus, a corpus is assembled from text every Debian system has
(/usr/share/doc/*/copyright, the fortunes package when installed, common-licenses); with
no --tokenizer, a Llama-3-style byte-level BPE (the Llama-3 split regex, ByteLevel,
vocabulary 32000) is trained on that corpus with tokenizers itself. Both are written to
--workdir and reused by later runs.

    python3 bench/tokenize_peer.py --engine build/dev/bin/tokenize-bench [--threads 2]
"""
import argparse
import glob
import json
import os
import subprocess
import sys
import time

LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def build_corpus(path):
    docs = []
    for f in sorted(glob.glob("/usr/share/doc/*/copyright")) + sorted(glob.glob("/usr/share/common-licenses/*")):
        try:
            with open(f, "rb") as fh:
                text = fh.read().decode("utf-8", errors="replace")
        except OSError:
            continue
        if text.strip():
            docs.append(text)
    for f in sorted(glob.glob("/usr/share/games/fortunes/*")):
        if "." in os.path.basename(f):
            continue  # .dat indexes and .u8 links
        try:
            with open(f, "rb") as fh:
                text = fh.read().decode("utf-8", errors="replace")
        except OSError:
            continue
        docs.extend(d.strip("\n") for d in text.split("\n%\n") if d.strip())
    with open(path, "w", encoding="utf-8") as out:
        for d in docs:
            out.write(json.dumps({"text": d}, ensure_ascii=False) + "\n")


def train_tokenizer(corpus_texts, path, vocab_size):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|begin_of_text|>", "<|end_of_text|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus_texts, trainer)
    tok.save(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", required=True, help="path of the tokenize-bench binary")
    ap.add_argument("--workdir", default="build/tokenize-bench")
    ap.add_argument("--corpus", help="JSONL corpus with a text field (default: assembled in --workdir)")
    ap.add_argument("--tokenizer", help="tokenizer.json (default: trained in --workdir)")
    ap.add_argument("--vocab-size", type=int, default=32000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    # tokenizers reads its thread count when the module loads.
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    import tokenizers
    from tokenizers import Tokenizer

    os.makedirs(args.workdir, exist_ok=True)
    corpus = args.corpus or os.path.join(args.workdir, "corpus.jsonl")
    if not os.path.exists(corpus):
        build_corpus(corpus)
    with open(corpus, encoding="utf-8") as fh:
        texts = [json.loads(line)["text"] for line in fh if line.strip()]
    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    tok_path = args.tokenizer or os.path.join(args.workdir, "tokenizer.json")
    if not os.path.exists(tok_path):
        train_tokenizer(texts, tok_path, args.vocab_size)
    tok = Tokenizer.from_file(tok_path)
    print(f"corpus    {corpus}: {len(texts)} documents, {nbytes / 1e6:.1f} MB")
    print(f"tokenizer {tok_path}, vocab {tok.get_vocab_size()}; tokenizers {tokenizers.__version__}, "
          f"{args.threads} threads")

    results = {}
    encodings = None
    for name in ("encode_batch", "encode_batch_fast"):
        fn = getattr(tok, name, None)
        if fn is None:
            continue
        best = float("inf")
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            enc = fn(texts, add_special_tokens=False)
            best = min(best, time.perf_counter() - t0)
        ntokens = sum(len(e.ids) for e in enc)
        encodings = encodings or enc
        results[name] = ntokens / best
        print(f"hf {name:18s} {ntokens} tokens in {best:.3f}s (best of {args.repeat}): {ntokens / best:.0f} tokens/s")

    ids_path = os.path.join(args.workdir, "hf_ids.u32")
    lengths_path = os.path.join(args.workdir, "hf_lengths.u32")
    import array
    ids, lengths = array.array("I"), array.array("I")
    for e in encodings:
        ids.extend(e.ids)
        lengths.append(len(e.ids))
    with open(ids_path, "wb") as fh:
        ids.tofile(fh)
    with open(lengths_path, "wb") as fh:
        lengths.tofile(fh)

    cmd = [args.engine, "--tokenizer", tok_path, "--corpus", corpus, "--threads", str(args.threads), "--repeat",
           str(args.repeat), "--expect-ids", ids_path, "--expect-lengths", lengths_path, "--prepare-out",
           os.path.join(args.workdir, "prepared")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    sys.stdout.write(proc.stdout)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        sys.exit(f"tokenize-bench failed ({proc.returncode})")
    adept = json.loads(proc.stdout.strip().splitlines()[-1])
    peer_name = max(results, key=results.get)
    peer = results[peer_name]
    print(f"ratio     adept encode / hf {peer_name}: {adept['encode_tokens_per_s'] / peer:.2f}x"
          f"  (adept prepare, file to shards: {adept.get('prepare_tokens_per_s', 0) / peer:.2f}x)")
    if adept.get("mismatched_documents", 0):
        print(f"WARNING: {adept['mismatched_documents']} documents tokenized differently from tokenizers")
    print(json.dumps({"adept_encode_tokens_per_s": adept["encode_tokens_per_s"],
                      "adept_prepare_tokens_per_s": adept.get("prepare_tokens_per_s"),
                      "hf": results, "ratio": adept["encode_tokens_per_s"] / peer,
                      "mismatched_documents": adept.get("mismatched_documents")}))


if __name__ == "__main__":
    main()
