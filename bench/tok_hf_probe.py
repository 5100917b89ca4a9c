#!/usr/bin/env python3
"""tok_hf_probe.py: reads out of Hugging Face `tokenizers` itself the Unicode data its byte-level BPE
pipeline uses, for every code point: the classes \\p{L}, \\p{N} and \\s of its regex engine (Oniguruma)
and where its NFC normalizer departs from Python's unicodedata NFC (single code points and short
probes with combining marks). Writes one JSON file:
  {"tokenizers": version, "unidata": python's Unicode version,
   "L": [[lo, hi], ...], "N": [...], "S": [...],          (inclusive code point ranges)
   "nfc_diff": [[probe, hf_nfc, py_nfc], ...],            (probes where the two NFCs differ)
   "compose_diff": [[nfd, hf_nfc, py_nfc], ...]}          (canonical decompositions recomposed differently)

    python3 bench/tok_hf_probe.py OUT.json"""
import json
import sys
import unicodedata

import tokenizers
from tokenizers import Regex, normalizers, pre_tokenizers

SEP = "\x01"


def cps():
    return [c for c in range(1, 0x110000) if not (0xD800 <= c <= 0xDFFF) and c != 1]


def ranges(sorted_cps):
    out = []
    for c in sorted_cps:
        if out and out[-1][1] == c - 1:
            out[-1][1] = c
        else:
            out.append([c, c])
    return out


def regex_class(pattern, all_cps):
    split = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    hit = set()
    chunk = 50000
    for i in range(0, len(all_cps), chunk):
        part = all_cps[i:i + chunk]
        s = SEP.join(chr(c) for c in part) + SEP
        for piece, _ in split.pre_tokenize_str(s):
            if len(piece) == 1 and piece != SEP:
                hit.add(ord(piece))
    return ranges(sorted(hit))


def nfc_diff(all_cps):
    nfc = normalizers.NFC()
    probes = []
    for c in all_cps:
        if c == 0x0A:
            continue
        ch = chr(c)
        probes += [ch, "a" + ch, "a" + ch + "\u0334", "a" + "\u0301" + ch, "a" + ch + "\u0345", "a" + ch + "\u0316",
                   ch + "\u0301", "a" + ch + ch]
    diffs = []
    chunk = 40000
    for i in range(0, len(probes), chunk):
        part = probes[i:i + chunk]
        got = nfc.normalize_str("\n".join(part)).split("\n")
        if len(got) != len(part):
            got = [nfc.normalize_str(p) for p in part]
        for p, g in zip(part, got):
            want = unicodedata.normalize("NFC", p)
            if g != want:
                diffs.append([p, g, want])
    return diffs


def main():
    all_cps = cps()
    out = {"tokenizers": tokenizers.__version__, "unidata": unicodedata.unidata_version}
    for name, pat in (("L", r"\p{L}"), ("N", r"\p{N}"), ("S", r"\s")):
        out[name] = regex_class(pat, all_cps)
        print(name, len(out[name]), "ranges", file=sys.stderr)
    out["nfc_diff"] = nfc_diff(all_cps)
    print("nfc diffs", len(out["nfc_diff"]), file=sys.stderr)
    nfc = normalizers.NFC()
    out["compose_diff"] = []
    for c in all_cps:
        d = unicodedata.normalize("NFD", chr(c))
        if len(d) > 1:
            for probe in (d, "a" + d, d + d):
                h, w = nfc.normalize_str(probe), unicodedata.normalize("NFC", probe)
                if h != w:
                    out["compose_diff"].append([probe, h, w])
    print("compose diffs", len(out["compose_diff"]), file=sys.stderr)
    with open(sys.argv[1], "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=True)


if __name__ == "__main__":
    main()
