#!/usr/bin/env python3
"""tok_fuzz_corpus.py: writes a deterministic JSONL corpus of adversarial texts ({"text": ...} per line)
for checking our encoder against Hugging Face tokenizers beyond the fixtures: random code points from
the whole Unicode range (unassigned and recently assigned ones included), characters on the
pre-tokenizer regex's class boundaries, NFC-sensitive sequences, added tokens with whitespace
around them, contractions in every case, long mixed whitespace runs and digits of many scripts.

    python3 bench/tok_fuzz_corpus.py OUT.jsonl [--n 50000] [--seed 1]

Then on a machine with `tokenizers`: python3 bench/tok_hf.py --model DIR --corpus OUT.jsonl
--dump-ids IDS.jsonl, and here: python3 bench/tok_fuzz_corpus.py --compare OUT.jsonl IDS.jsonl
--omnipipe build/bin/omnipipe --model DIR (prints every text whose ids differ)."""
import argparse
import json
import random
import subprocess
import sys
import unicodedata

POOL = (
    [0x20] * 6 + [0x09, 0x0A, 0x0A, 0x0D, 0x0B, 0x0C, 0x85, 0xA0, 0x1680, 0x180E, 0x2000, 0x2003, 0x200A, 0x2028,
                  0x2029, 0x202F, 0x205F, 0x3000, 0x200B, 0x200C, 0x200D, 0xFEFF, 0x2060]
    + [ord(c) for c in "'''sStTrReEvVmMlLdDkK"] + [0x17F, 0x2019, 0x212A]
    + [ord(c) for c in "azAZx_-.,!?(){}[]<>|/\\#$%^&*+=~`\":;@"]
    + [ord(c) for c in "0123456789"] + [0x660, 0x966, 0xFF11, 0xB2, 0xBD, 0x2167, 0x3007, 0x2460, 0x1D7CE, 0x10107]
    + [0xE9, 0xDF, 0xC6, 0x3A9, 0x3C9, 0x416, 0x436, 0x5D0, 0x627, 0x915, 0xE01, 0x10D0, 0x4E2D, 0x6587, 0x3042,
       0x30AB, 0xAC00, 0xD55C, 0xFB05, 0x1F1, 0x2C6, 0x2B0, 0x3005, 0x20000, 0x1E900]
    + [0x301, 0x308, 0x323, 0x327, 0x93F, 0x94D, 0xE31, 0x20DD, 0x5B4, 0x64B, 0x1AB0, 0x302, 0x31B, 0x3099, 0x309A]
    + [0x212B, 0x2126, 0x1E9B, 0x344, 0xF900, 0x2F800, 0x1100, 0x1161, 0x11A8, 0xAC01, 0xB47, 0xB3E, 0xBC6, 0xBBE,
       0x9C7, 0x9BE, 0x1025, 0x102E, 0x1B05, 0x1B35, 0x304B, 0x30CF]
    # assigned in Unicode 14, 15, 15.1, 16 (where the regex engines' tables may differ)
    + [0x1E290, 0x11F00, 0x11F04, 0x11F50, 0x1E4D0, 0x1E4F0, 0x31350, 0x2EBF0, 0x1D2C0, 0x0CF3, 0x1F6DC, 0x1FA75,
       0x10EFD, 0x1E030, 0x1E08F, 0x2FFC, 0x31EF, 0x105C0, 0x16D40, 0x16D70, 0x1CCF0, 0x1E5D0, 0x1E5F1, 0x11BC0,
       0x11F5A, 0x1D2D3, 0x0870, 0x0898, 0x1715, 0x1B4E, 0x1DF0A, 0x1E4EC]
    + [0x2014, 0x201C, 0x2026, 0x3002, 0xFF0C, 0x20AC, 0xA9, 0x1F600, 0x1F409, 0x1F525, 0x1F469, 0xFE0F, 0x1F1FA,
       0x1F1F8, 0x1F3FB, 0xFFFD, 0xE000, 0x10FFFD, 0x0, 0x7F, 0x9F]
)
SPECIALS = ["<|im_start|>", "<|im_end|>", "<think>", "</think>", "<|audio_pad|>", "<|endoftext|>", "<tool_call>",
            "<|im_end", "|>", "<|vision_start|><|image_pad|>", "<tts_pad>"]


def rnd_cp(r):
    x = r.random()
    if x < 0.75:
        return r.choice(POOL)
    if x < 0.85:
        return r.randrange(0x20, 0x7F)
    while True:
        cp = r.randrange(0, 0x110000)
        if not 0xD800 <= cp <= 0xDFFF:
            return cp


COMPOSITES = [c for c in range(0xC0, 0x30000)
              if not 0xD800 <= c <= 0xDFFF and len(unicodedata.normalize("NFD", chr(c))) > 1]


def rnd_text(r):
    kind = r.random()
    if kind > 0.9:  # decomposed sequences, reordered marks, inert marks between
        parts = []
        for _ in range(r.randrange(1, 12)):
            d = list(unicodedata.normalize("NFD", chr(r.choice(COMPOSITES))))
            if r.random() < 0.3:
                r.shuffle(d)
            if r.random() < 0.3:
                d.insert(r.randrange(len(d) + 1), chr(r.choice(POOL)))
            parts.append("".join(d))
        return "".join(parts)
    out = []
    n = r.randrange(0, 120)
    while len(out) < n:
        cp = rnd_cp(r)
        k = r.randrange(2, 40) if r.random() < 0.1 else 1
        out.extend([cp] * k)
    s = "".join(map(chr, out))
    if kind < 0.3:  # added tokens with whitespace around them
        for _ in range(r.randrange(1, 4)):
            at = r.randrange(0, len(s) + 1)
            ws = r.choice(["", " ", "  ", "\n", " \n ", "\t", "\u3000"])
            s = s[:at] + ws + r.choice(SPECIALS) + r.choice(["", " ", "\n", "  "]) + s[at:]
    elif kind < 0.4:  # digits of many scripts
        s += "".join(chr(r.choice([0x30, 0x660, 0x966, 0xFF10, 0x1D7CE, 0xE50]) + r.randrange(10))
                     for _ in range(r.randrange(1, 30)))
    return s


def compare(args):
    texts = [json.loads(l)["text"] for l in open(args.compare[0], encoding="utf-8") if l.strip()]
    want = [json.loads(l)["ids"] for l in open(args.compare[1], encoding="utf-8") if l.strip()]
    data = "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts).encode()
    p = subprocess.run([args.omnipipe, "tokenize", "--model", args.model, "--jsonl"], input=data,
                       capture_output=True, check=True)
    got = [json.loads(l)["ids"] for l in p.stdout.decode().split("\n") if l.strip()]
    assert len(got) == len(want) == len(texts), (len(got), len(want), len(texts))
    bad = 0
    for i, (t, g, w) in enumerate(zip(texts, got, want)):
        if g != w:
            bad += 1
            if bad <= 20:
                print(f"case {i}: {t!r}\n  ours {g}\n  hf   {w}")
    print(f"{len(texts)} texts, {bad} differ")
    return 1 if bad else 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out", nargs="?")
    ap.add_argument("--n", type=int, default=50000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--compare", nargs=2, metavar=("CORPUS", "IDS"))
    ap.add_argument("--omnipipe")
    ap.add_argument("--model")
    a = ap.parse_args()
    if a.compare:
        return compare(a)
    r = random.Random(a.seed)
    with open(a.out, "w", encoding="utf-8") as f:
        for _ in range(a.n):
            f.write(json.dumps({"text": rnd_text(r)}, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
