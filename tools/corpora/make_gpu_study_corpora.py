#!/usr/bin/env python3
"""The corpora and tokenizer of the GPU study (configs/gpu-small.toml), from Debian packages:

  general.jsonl  general English: every English fortune (package `fortunes`), one document
                 per fortune, and the Python 3.11 documentation (package `python3.11-doc`,
                 HTML stripped to text; the license page left out), one document per page
  domain.jsonl   the legal domain: every distinct /usr/share/doc/*/copyright file and
                 /usr/share/common-licenses/*, one document per file
  tokenizer/     a byte-level BPE (GPT-2 pre-tokenizer, 8192 tokens, <|begin_of_text|> and
                 <|end_of_text|>) trained with the `tokenizers` package on both corpora

Usage: python3 tools/corpora/make_gpu_study_corpora.py OUT_DIR [PYTHON_DOC_HTML_DIR]
(apt-get download python3.11-doc && dpkg -x python3.11-doc_*.deb /tmp/pydoc gives
/tmp/pydoc/usr/share/doc/python3.11/html). Deterministic: files are read in sorted order.
"""
import glob
import hashlib
import json
import os
import re
import sys
from html.parser import HTMLParser

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers


class HtmlText(HTMLParser):
    BLOCK = {"p", "div", "br", "li", "h1", "h2", "h3", "pre", "dt", "dd", "tr"}

    def __init__(self):
        super().__init__()
        self.parts, self.hidden = [], 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style", "nav"):
            self.hidden += 1
        if tag in self.BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in ("script", "style", "nav"):
            self.hidden -= 1

    def handle_data(self, data):
        if not self.hidden:
            self.parts.append(data)


def general_documents(python_html):
    for path in sorted(glob.glob("/usr/share/games/fortunes/*")):
        if "." in os.path.basename(path) or os.path.islink(path):
            continue  # .dat indexes, .u8 links
        try:
            text = open(path, encoding="utf-8").read()
        except UnicodeDecodeError:
            continue
        for fortune in text.split("\n%\n"):
            if len(fortune.strip()) > 20:
                yield fortune.strip()
    for path in sorted(glob.glob(os.path.join(python_html, "**", "*.html"), recursive=True)):
        if "/_" in path or "genindex" in path or "license" in path.lower():
            continue
        parser = HtmlText()
        parser.feed(open(path, encoding="utf-8", errors="replace").read())
        text = re.sub(r"\n\s*\n+", "\n\n", "".join(parser.parts)).strip()
        if len(text) > 200:
            yield text


def domain_documents():
    seen = set()
    for path in sorted(glob.glob("/usr/share/doc/*/copyright")) + sorted(glob.glob("/usr/share/common-licenses/*")):
        try:
            text = open(path, encoding="utf-8").read().strip()
        except (UnicodeDecodeError, IsADirectoryError):
            continue
        digest = hashlib.sha256(text.encode()).hexdigest()
        if digest not in seen and len(text) >= 200:
            seen.add(digest)
            yield text


def write_jsonl(path, documents):
    count = chars = 0
    with open(path, "w") as f:
        for text in documents:
            f.write(json.dumps({"text": text}) + "\n")
            count, chars = count + 1, chars + len(text)
    print(f"{path}: {count} documents, {chars} characters")


def main():
    out = sys.argv[1]
    python_html = sys.argv[2] if len(sys.argv) > 2 else "/usr/share/doc/python3.11/html"
    os.makedirs(os.path.join(out, "tokenizer"), exist_ok=True)
    write_jsonl(os.path.join(out, "general.jsonl"), general_documents(python_html))
    write_jsonl(os.path.join(out, "domain.jsonl"), domain_documents())

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=8192, special_tokens=["<|begin_of_text|>", "<|end_of_text|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)

    def texts():
        for name in ("general.jsonl", "domain.jsonl"):
            for line in open(os.path.join(out, name)):
                yield json.loads(line)["text"]

    tokenizer.train_from_iterator(texts(), trainer)
    tokenizer.save(os.path.join(out, "tokenizer", "tokenizer.json"))
    with open(os.path.join(out, "tokenizer", "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>", "add_bos_token": True,
                   "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 4096}, f, indent=2)
    print(f"tokenizer: {tokenizer.get_vocab_size()} tokens")


if __name__ == "__main__":
    main()
