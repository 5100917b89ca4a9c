#!/usr/bin/env python3
"""tok_hf.py: Hugging Face `tokenizers` encode throughput on the corpus tok_bench writes
(`tok_bench --write-corpus corpus.jsonl`), with the same ids checksum tok_bench prints, so the two
runs can be checked identical.

    python3 bench/tok_hf.py --model DIR --corpus corpus.jsonl [--reps 3] [--batch] [--dump-ids IDS.jsonl]

Single-threaded by default (RAYON_NUM_THREADS=1 and one encode() call per document, as tok_bench's
1-thread figure); --batch also times encode_batch over all cores. The checksum is FNV-1a 64 over every
id of every document in order: h = (h ^ id) * 1099511628211 mod 2^64 from 14695981039346656037."""
import argparse
import json
import os
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="checkpoint dir with tokenizer.json")
    ap.add_argument("--corpus", required=True, help="JSONL of {\"text\": ...} (tok_bench --write-corpus)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batch", action="store_true", help="also time encode_batch on all threads")
    ap.add_argument("--dump-ids", metavar="OUT", help="write each document's ids as a JSONL line {\"ids\": [...]}")
    a = ap.parse_args()
    if not a.batch:
        os.environ["RAYON_NUM_THREADS"] = "1"
    import tokenizers  # after RAYON_NUM_THREADS is set

    with open(a.corpus, encoding="utf-8") as f:
        docs = [json.loads(line)["text"] for line in f if line.strip()]
    nbytes = sum(len(d.encode("utf-8")) for d in docs)
    t0 = time.perf_counter()
    tok = tokenizers.Tokenizer.from_file(os.path.join(a.model, "tokenizer.json"))
    load_ms = (time.perf_counter() - t0) * 1e3

    h, nids = 14695981039346656037, 0
    mask = (1 << 64) - 1
    dump = open(a.dump_ids, "w") if a.dump_ids else None
    for d in docs:
        ids = tok.encode(d, add_special_tokens=False).ids
        nids += len(ids)
        for i in ids:
            h = ((h ^ i) * 1099511628211) & mask
        if dump:
            dump.write(json.dumps({"ids": ids}) + "\n")
    if dump:
        dump.close()
    print(f"tokenizers {tokenizers.__version__}")
    print(f"corpus: {len(docs)} documents, {nbytes / 1e6:.2f} MB ({nbytes} bytes), {nids} ids")
    print(f"load: {load_ms:.1f} ms")
    print(f"checksum: {h:016x}")

    best = float("inf")
    for _ in range(a.reps):
        t0 = time.perf_counter()
        for d in docs:
            tok.encode(d, add_special_tokens=False)
        best = min(best, time.perf_counter() - t0)
    print(f"encode 1 thread: {nbytes / 1e6 / best:.1f} MB/s (best of {a.reps}, {best:.3f} s)")
    if a.batch:
        best = float("inf")
        for _ in range(a.reps):
            t0 = time.perf_counter()
            tok.encode_batch(docs, add_special_tokens=False)
            best = min(best, time.perf_counter() - t0)
        print(f"encode_batch {os.cpu_count()} threads: {nbytes / 1e6 / best:.1f} MB/s (best of {a.reps}, {best:.3f} s)")


if __name__ == "__main__":
    main()
