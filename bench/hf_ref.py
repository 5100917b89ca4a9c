#!/usr/bin/env python3
"""hf_ref.py: the Hugging Face transformers reference for the engine benchmark.

Builds Qwen3OmniMoeThinkerForConditionalGeneration from a config.json (the thinker_config of
bench/configs/qwen3-omni-30b-a3b-thinker) with random bf16 weights directly on the GPU, sdpa
attention and the default experts implementation (grouped_mm in transformers 5.x), then times
greedy generate() with 512-token random prompts at batch 1 and batch 8:
  prefill  = generate(max_new_tokens=1)
  decode tok/s = batch * (N - 1) / (t(generate N tokens) - t(prefill))
Prints one line per measurement and a final JSON line. Usage: hf_ref.py CONFIG_DIR [--new N]
"""
import json
import sys
import time

import torch


def main():
    cfg_dir = sys.argv[1]
    n_new = int(sys.argv[sys.argv.index("--new") + 1]) if "--new" in sys.argv else 32
    import transformers
    from transformers import Qwen3OmniMoeThinkerConfig, Qwen3OmniMoeThinkerForConditionalGeneration

    raw = json.load(open(f"{cfg_dir}/config.json"))
    tcfg = Qwen3OmniMoeThinkerConfig(**raw["thinker_config"])
    torch.manual_seed(0)
    t0 = time.time()
    with torch.device("cuda"):
        model = Qwen3OmniMoeThinkerForConditionalGeneration._from_config(
            tcfg, dtype=torch.bfloat16, attn_implementation="sdpa")
    model.eval()
    torch.cuda.synchronize()
    print(f"transformers {transformers.__version__} torch {torch.__version__}; model built in "
          f"{time.time() - t0:.1f} s; experts impl "
          f"{getattr(model.config.text_config, '_experts_implementation', '?')}; "
          f"params {sum(p.numel() for p in model.parameters()) / 1e9:.2f} B", flush=True)
    vocab = tcfg.text_config.vocab_size
    res = {"transformers": transformers.__version__, "torch": torch.__version__,
           "gpu": torch.cuda.get_device_name(0), "prompt": 512, "new_tokens": n_new}

    def gen(ids, n):
        torch.cuda.synchronize()
        t = time.time()
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                           min_new_tokens=n, do_sample=False, pad_token_id=0)
        torch.cuda.synchronize()
        return time.time() - t

    for bsz in (1, 8):
        g = torch.Generator(device="cuda").manual_seed(bsz)
        ids = torch.randint(1000, vocab - 1000, (bsz, 512), device="cuda", generator=g)
        gen(ids, 2)  # warm-up
        t_pre = min(gen(ids, 1) for _ in range(2))
        t_all = gen(ids, n_new)
        dec = bsz * (n_new - 1) / max(t_all - t_pre, 1e-9)
        print(f"HF batch {bsz}: prefill+1 token {t_pre * 1e3:.0f} ms, {n_new} tokens {t_all:.2f} s, "
              f"decode {dec:.2f} tok/s", flush=True)
        res[f"b{bsz}_ttft_ms"] = t_pre * 1e3
        res[f"b{bsz}_decode_tok_s"] = dec
    print("HF_REF_JSON " + json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
