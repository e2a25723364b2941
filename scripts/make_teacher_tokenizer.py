#!/usr/bin/env python3
"""Trains the teacher's byte-level BPE tokenizer (data/tokenizers/refinery-8k/) on the development corpus.

Generator script: the project never runs Python; this script and its committed outputs document how
the tokenizer was made. Needs `pip install tokenizers` (made with tokenizers 0.23.3).

    python3 scripts/make_teacher_tokenizer.py [--corpus ../shared/data/corpus]

Pipeline (DeepSeek-V3's, so that every component is one our C++ tokenizer already matches):
  normalizer     none
  pre-tokenizer  Sequence[Split(\\p{N}{1,3}), Split(CJK ranges), Split(DeepSeek-V3 main pattern),
                 ByteLevel(add_prefix_space=False, use_regex=False)], the three Splits "Isolated",
                 copied from data/tokenizers/deepseek-v3/tokenizer.json (read at run time)
  model          BPE over the 256 byte symbols, no unk, no dropout, no byte fallback
  decoder        ByteLevel
  post-processor TemplateProcessing "<|bos|> $A" (add_special_tokens puts one BOS in front, the
                 DeepSeek-V3 convention add_bos_token=true / add_eos_token=false)
  special tokens <|bos|> = 0, <|eos|> = 1 (the trainer puts them first); vocab 8192 in all

It trains three vocabulary sizes (4096, 8192, 16384) on the "text" field of every line of
train.jsonl, measures UTF-8 bytes per token on valid.jsonl (whole and per source), keeps 8192, and
writes:
  data/tokenizers/refinery-8k/tokenizer.json, tokenizer_config.json, stats.json
  tests/fixtures/tokenizer/golden_refinery-8k.json   golden ids for the C++ parity test: the texts
      of tests/fixtures/tokenizer/texts.json plus slices of valid.jsonl documents
"""
import argparse
import hashlib
import json
import time
from pathlib import Path

import tokenizers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers, processors
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "data" / "tokenizers" / "refinery-8k"
GOLDEN = ROOT / "tests" / "fixtures" / "tokenizer" / "golden_refinery-8k.json"
TEXTS = ROOT / "tests" / "fixtures" / "tokenizer" / "texts.json"
DEEPSEEK = ROOT / "data" / "tokenizers" / "deepseek-v3" / "tokenizer.json"
BOS, EOS = "<|bos|>", "<|eos|>"
SIZES = [4096, 8192, 16384]
KEEP = 8192


def read_jsonl(path):
    docs = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            docs.append((d["source"], d["text"]))
    return docs


def deepseek_pre_tokenizer():
    """DeepSeek-V3's pre-tokenizer, rebuilt through the `tokenizers` API from its JSON: the three
    Split patterns (each Isolated, not inverted) and ByteLevel without its own regex."""
    j = json.loads(DEEPSEEK.read_text(encoding="utf-8"))["pre_tokenizer"]
    steps = []
    for p in j["pretokenizers"]:
        if p["type"] == "Split":
            assert p["behavior"] == "Isolated" and not p["invert"], p
            steps.append(pre_tokenizers.Split(Regex(p["pattern"]["Regex"]), behavior="isolated", invert=False))
        else:
            assert p["type"] == "ByteLevel" and not p["add_prefix_space"] and not p["use_regex"], p
            steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False))
    return pre_tokenizers.Sequence(steps)


def train(texts, vocab_size):
    tok = Tokenizer(BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = None
    tok.pre_tokenizer = deepseek_pre_tokenizer()
    tok.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, show_progress=False,
        special_tokens=[AddedToken(BOS, special=True, normalized=False),
                        AddedToken(EOS, special=True, normalized=False)],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)])
    return tok


def bytes_per_token(tok, docs):
    """UTF-8 bytes / tokens (no special tokens), overall and per source folder."""
    per = {}
    for source, text in docs:
        key = source.split("/")[0]
        n = len(tok.encode(text, add_special_tokens=False).ids)
        b, t = per.get(key, (0, 0))
        per[key] = (b + len(text.encode("utf-8")), t + n)
    total_b = sum(b for b, _ in per.values())
    total_t = sum(t for _, t in per.values())
    return {"bytes": total_b, "tokens": total_t, "bytes_per_token": round(total_b / total_t, 4),
            "per_source": {k: {"bytes": b, "tokens": t, "bytes_per_token": round(b / t, 4)}
                           for k, (b, t) in sorted(per.items())}}


def golden_texts(valid_docs):
    """texts.json's varied texts, then 24 slices of valid documents (first 1 KB of every second
    document, cut at a character boundary), so the golden file stays small (~300 KB)."""
    texts = list(json.loads(TEXTS.read_text(encoding="utf-8"))["texts"])
    for source, text in valid_docs[::2]:
        texts.append(text[:1024])
    return texts


def golden_cases(tok, texts):
    cases = []
    for text in texts:
        ids = tok.encode(text, add_special_tokens=False).ids
        ids_special = tok.encode(text, add_special_tokens=True).ids
        cases.append({"text": text, "ids": ids, "ids_special": ids_special,
                      "decoded": tok.decode(ids, skip_special_tokens=False),
                      "decoded_skip": tok.decode(ids_special, skip_special_tokens=True)})
    return cases


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="../shared/data/corpus", help="folder with train.jsonl and valid.jsonl")
    args = ap.parse_args()
    corpus = Path(args.corpus)
    train_docs = read_jsonl(corpus / "train.jsonl")
    valid_docs = read_jsonl(corpus / "valid.jsonl")
    train_texts = [t for _, t in train_docs]

    stats = {"tokenizers_version": tokenizers.__version__,
             "train": {"file": "train.jsonl", "documents": len(train_docs),
                       "bytes": sum(len(t.encode("utf-8")) for t in train_texts),
                       "sha256": hashlib.sha256((corpus / "train.jsonl").read_bytes()).hexdigest()},
             "valid": {"file": "valid.jsonl", "documents": len(valid_docs),
                       "sha256": hashlib.sha256((corpus / "valid.jsonl").read_bytes()).hexdigest()},
             "sizes": {}}
    deepseek = Tokenizer.from_file(str(DEEPSEEK))
    stats["reference_deepseek_v3_valid"] = bytes_per_token(deepseek, valid_docs)
    kept = None
    for size in SIZES:
        t0 = time.time()
        tok = train(train_texts, size)
        seconds = time.time() - t0
        entry = {"vocab_size": tok.get_vocab_size(with_added_tokens=True),
                 "train_seconds": round(seconds, 1),
                 "valid": bytes_per_token(tok, valid_docs)}
        stats["sizes"][str(size)] = entry
        print(f"vocab {size}: valid {entry['valid']['bytes_per_token']} bytes/token "
              f"({entry['valid']['tokens']} tokens), trained in {seconds:.1f} s", flush=True)
        if size == KEEP:
            kept = tok
    kept_train = bytes_per_token(kept, train_docs)
    stats["sizes"][str(KEEP)]["train"] = kept_train
    print(f"vocab {KEEP}: train {kept_train['tokens']} tokens, {kept_train['bytes_per_token']} bytes/token")

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    kept.save(str(OUT_DIR / "tokenizer.json"), pretty=False)
    config = {
        "add_bos_token": True, "add_eos_token": False,
        "bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": None,
        "clean_up_tokenization_spaces": False, "model_max_length": 2048,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    (OUT_DIR / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    stats["tokenizer_json_sha256"] = hashlib.sha256((OUT_DIR / "tokenizer.json").read_bytes()).hexdigest()
    (OUT_DIR / "stats.json").write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")

    # Golden ids from the saved file, read back as any user would.
    saved = Tokenizer.from_file(str(OUT_DIR / "tokenizer.json"))
    texts = golden_texts(valid_docs)
    golden = {"tokenizer": "data/tokenizers/refinery-8k", "reference": f"tokenizers {tokenizers.__version__}",
              "vocab_size": saved.get_vocab_size(with_added_tokens=True),
              "cases": golden_cases(saved, texts)}
    GOLDEN.write_text(json.dumps(golden, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"wrote {OUT_DIR}/ and {GOLDEN} ({len(texts)} cases)")


if __name__ == "__main__":
    main()
