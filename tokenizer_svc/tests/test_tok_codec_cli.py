#!/usr/bin/env python3
"""test_tok_codec_cli.py: runs `omnipipe tokenize` / `omnipipe detokenize` over every case of
fixtures/text_golden.json (transformers' ids and decoded texts) and compares byte for byte.
Usage: test_tok_codec_cli.py OMNIPIPE FIXTURES_DIR. Exits 77 (skipped) when OMNIPIPE is not built."""
import json
import os
import subprocess
import sys


def run(exe, args, data):
    p = subprocess.run([exe] + args, input=data, capture_output=True, timeout=120)
    if p.returncode != 0:
        raise SystemExit(f"FAIL: {' '.join(args)} exited {p.returncode}: {p.stderr.decode(errors='replace')}")
    return p.stdout


def main():
    exe, fix = sys.argv[1], sys.argv[2]
    if not os.access(exe, os.X_OK):
        print(f"skip: {exe} is not built")
        return 77
    model = os.path.join(fix, "tiny-omni")
    with open(os.path.join(fix, "text_golden.json"), encoding="utf-8") as f:
        golden = json.load(f)
    enc, dec = golden["encode"], golden["decode"]
    bad = 0

    # tokenize --jsonl: every encode case in one process
    lines = "".join(json.dumps({"text": c["text"]}, ensure_ascii=False) + "\n" for c in enc)
    out = run(exe, ["tokenize", "--model", model, "--jsonl"], lines.encode()).decode().split("\n")[:-1]
    if len(out) != len(enc):
        raise SystemExit(f"FAIL: tokenize --jsonl gave {len(out)} lines for {len(enc)} texts")
    for i, (c, line) in enumerate(zip(enc, out)):
        if json.loads(line) != {"ids": c["ids"]}:
            bad += 1
            print(f"tokenize --jsonl case {i}: {line[:200]}")

    # tokenize: all of stdin is one text (a sample, each a separate process)
    for i in list(range(0, len(enc), 41)) + [len(enc) - 1]:
        got = json.loads(run(exe, ["tokenize", "--model", model], enc[i]["text"].encode()))
        if got != enc[i]["ids"]:
            bad += 1
            print(f"tokenize case {i}: {got} != {enc[i]['ids']}")

    # detokenize --jsonl: every decode case, both settings
    lines = "".join(json.dumps({"ids": c["ids"], "keep_special": k}) + "\n" for c in dec for k in (False, True))
    out = run(exe, ["detokenize", "--model", model, "--jsonl"], lines.encode()).decode().split("\n")[:-1]
    want = [c[k] for c in dec for k in ("skip_special", "keep_special")]
    if len(out) != len(want):
        raise SystemExit(f"FAIL: detokenize --jsonl gave {len(out)} lines for {len(want)} cases")
    for i, (w, line) in enumerate(zip(want, out)):
        if json.loads(line) != {"text": w}:
            bad += 1
            print(f"detokenize --jsonl case {i // 2}: {line[:200]}")

    # detokenize: exact bytes on stdout, default = skip special
    for i in list(range(0, len(dec), 37)) + [len(dec) - 1]:
        ids = json.dumps(dec[i]["ids"]).encode()
        for args, key in (([], "skip_special"), (["--keep-special"], "keep_special")):
            got = run(exe, ["detokenize", "--model", model] + args, ids)
            if got != dec[i][key].encode():
                bad += 1
                print(f"detokenize {args} case {i}: {got[:100]!r}")

    # bad input is refused with a message naming the field
    p = subprocess.run([exe, "detokenize", "--model", model], input=b'[1, "x"]', capture_output=True)
    if p.returncode == 0 or b"ids[1]" not in p.stderr:
        bad += 1
        print(f"detokenize accepted a non-integer id: rc {p.returncode}, {p.stderr!r}")
    p = subprocess.run([exe, "tokenize", "--model", model], input=b"ok\xffok", capture_output=True)
    if p.returncode == 0 or b"UTF-8" not in p.stderr:
        bad += 1
        print(f"tokenize accepted invalid UTF-8: rc {p.returncode}, {p.stderr!r}")

    print(f"{len(enc)} encode and {len(want)} decode cases, {bad} mismatches")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
