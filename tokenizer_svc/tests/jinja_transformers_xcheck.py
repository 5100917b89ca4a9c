#!/usr/bin/env python3
"""jinja_transformers_xcheck.py: checks the C chat-template renderer against transformers itself
(not registered with ctest: CI has no transformers; the GPU machine has transformers 5.x).

  here:   jinja_transformers_xcheck.py gen BUILD_DIR SHARED_DIR OUTDIR
          copies the two fixture tokenizers into OUTDIR and writes OUTDIR/cases.jsonl: the oracle suite's
          conversations rendered by `omnipipe render --jsonl` (tok_chat: loading, special tokens,
          request form) and its hand-written/fuzzed templates rendered by jinja_render_tool, with the
          variables apply_chat_template passes.
  there:  jinja_transformers_xcheck.py check OUTDIR
          renders every case with tokenizer.apply_chat_template(..., tokenize=False) and reports any
          difference (an error on both sides counts as agreement).

Run on 2026-11-25 with transformers 5.17.0 (before the expression fuzz was added): 641/641 identical,
13 of them errors on both sides.
"""
import json
import os
import shutil
import sys


def gen(build, shared, outdir):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import jinja_oracle as o
    for m, files in (("tiny-omni", ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")),
                     ("qwen3-tokenizer", ("vocab.json", "merges.txt", "tokenizer_config.json"))):
        os.makedirs(os.path.join(outdir, m), exist_ok=True)
        for f in files:
            shutil.copy(os.path.join(shared, "fixtures", m, f), os.path.join(outdir, m, f))
    cases = []
    for mdir, mm in (("tiny-omni", True), ("qwen3-tokenizer", False)):
        reqs = [dict(conv, **kw) for conv in o.conversations(mm)
                for kw in ({"add_generation_prompt": True}, {"add_generation_prompt": False},
                           {"add_generation_prompt": True, "enable_thinking": False})]
        got = o.run_jsonl([os.path.join(build, "bin", "omnipipe"), "render", "--jsonl", "--model",
                           os.path.join(shared, "fixtures", mdir)], reqs)
        cases += [{"kind": "chat", "model": mdir, "request": r, "ours": g} for r, g in zip(reqs, got)]
    kwargs = dict(o.V)
    tpls = list(o.H) + [o.LLAMA_LIKE, o.MISTRAL_LIKE, o.CHATML_MIN] + o.whitespace_fuzz(150, seed=7)
    v = dict(kwargs, messages=[{"role": "user", "content": "x"}], tools=None, documents=None,
             add_generation_prompt=False, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    got = o.run_jsonl([os.path.join(build, "tests", "jinja_render_tool")],
                      [{"id": i, "template": t, "vars": v} for i, t in enumerate(tpls)])
    cases += [{"kind": "tpl", "model": "tiny-omni", "template": t, "kwargs": kwargs, "ours": g} for t, g in zip(tpls, got)]
    exprs = o.expr_fuzz(600, seed=3)
    v = dict(o.EXPR_VARS, messages=[{"role": "user", "content": "x"}], tools=None, documents=None,
             add_generation_prompt=False, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    got = o.run_jsonl([os.path.join(build, "tests", "jinja_render_tool")],
                      [{"id": i, "template": t, "vars": v} for i, t in enumerate(exprs)])
    cases += [{"kind": "tpl", "model": "tiny-omni", "template": t, "kwargs": o.EXPR_VARS, "ours": g}
              for t, g in zip(exprs, got)]
    with open(os.path.join(outdir, "cases.jsonl"), "w", encoding="utf-8") as f:
        for c in cases:
            f.write(json.dumps(c, ensure_ascii=False) + "\n")
    print(f"{len(cases)} cases written to {outdir}")
    return 0


def check(outdir):
    import transformers
    from transformers import AutoTokenizer
    toks = {m: AutoTokenizer.from_pretrained(os.path.join(outdir, m)) for m in ("tiny-omni", "qwen3-tokenizer")}
    bad = n = both = 0
    for line in open(os.path.join(outdir, "cases.jsonl"), encoding="utf-8"):
        c = json.loads(line)
        n += 1
        tok = toks[c["model"]]
        try:
            if c["kind"] == "chat":
                r = dict(c["request"])
                msgs, tools = r.pop("messages"), r.pop("tools", None)
                ref = ("text", tok.apply_chat_template(msgs, tools=tools, tokenize=False, **r))
            else:
                ref = ("text", tok.apply_chat_template([{"role": "user", "content": "x"}], chat_template=c["template"],
                                                       tokenize=False, **c["kwargs"]))
        except Exception as ex:  # the template raised: ours must have failed too
            ref = ("error", f"{type(ex).__name__}: {ex}")
        ours = ("text", c["ours"]["text"]) if "text" in c["ours"] else ("error", c["ours"]["error"])
        if ref[0] == "error" and ours[0] == "error":
            both += 1
        elif ref != ours:
            bad += 1
            if bad <= 15:
                print(f"DIFF {c['kind']} {c['model']}\n  transformers: {ref!r:.600}\n  ours:         {ours!r:.600}")
    print(f"transformers {transformers.__version__}: {n - bad}/{n} identical ({both} errors on both sides)")
    return 1 if bad else 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "gen":
        sys.exit(gen(*sys.argv[2:]))
    if len(sys.argv) == 3 and sys.argv[1] == "check":
        sys.exit(check(sys.argv[2]))
    print(__doc__)
    sys.exit(2)
