#!/usr/bin/env python3
"""Greedy-generation throughput baseline: Hugging Face transformers `generate()`.

What is measured (per batch size B):
  * Prompts: B rows of random token ids (torch.manual_seed(0)), exactly --prompt-len
    tokens each, all-ones attention mask, no padding.
  * One `model.generate()` call with do_sample=False (greedy), use_cache=True,
    min_new_tokens = max_new_tokens = --new-tokens (EOS can never end a row early),
    so every row gets exactly --new-tokens new tokens (asserted).
  * seconds    = wall time of that call (prefill + all decode steps), CUDA synchronised
                 before and after; median over --repeats timed calls, after --warmup
                 untimed calls at the same batch size.
  * tokens_per_s = B * new_tokens / seconds  (generated tokens only; prompt not counted).

Model: --model DIR (HF folder, weights loaded) or --config FILE.json (LlamaForCausalLM
randomly initialised with torch.manual_seed(0); e.g. SmolLM2-135M's architecture
without weights). Weights are cast to --dtype.

CPU note: on a shared/busy machine use --threads 1 (or fewer than the free cores):
intra-op threads that share a core with another busy process stall every op barrier
(seen here: 2 threads on 2 cores with one core busy -> ~40x slower than 1 thread).

Usage:
  python3 scripts/bench_generate.py --config /work/shared/fixtures/smollm2-135m-instruct/config.json \
      --batch-sizes 1,8,32 --prompt-len 128 --new-tokens 256 --dtype bfloat16 --device cuda \
      --json scripts/baseline.jsonl
  python3 scripts/bench_generate.py --model tests/fixtures/tiny-llama-bf16 --batch-sizes 1,8 \
      --prompt-len 32 --new-tokens 32
"""
import argparse
import json
import os
import statistics
import time

import torch
import transformers
from transformers import GenerationConfig

from bench_common import DTYPES, add_model_args, add_run_args, load_model, set_threads, sync


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_args(p)
    p.add_argument("--batch-sizes", default="1,8,32")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=256)
    add_run_args(p)
    p.add_argument("--warmup", type=int, default=1, help="untimed generate() calls per batch size")
    p.add_argument("--repeats", type=int, default=1, help="timed calls per batch size (median)")
    p.add_argument("--json", help="append one JSON row per batch size to this .jsonl file")
    args = p.parse_args()
    set_threads(args)

    dtype = DTYPES[args.dtype]
    model = load_model(args, dtype).eval()
    cfg = model.config
    pad = cfg.pad_token_id if cfg.pad_token_id is not None else (cfg.eos_token_id or 0)
    if isinstance(pad, list):
        pad = pad[0]
    gen_cfg = GenerationConfig(
        do_sample=False, num_beams=1, use_cache=True,
        max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
        eos_token_id=cfg.eos_token_id, pad_token_id=pad,
    )

    rows = []
    for b in [int(x) for x in args.batch_sizes.split(",")]:
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(3, cfg.vocab_size, (b, args.prompt_len), generator=g).to(args.device)
        mask = torch.ones_like(ids)
        times = []
        for i in range(args.warmup + args.repeats):
            sync(args.device)
            t0 = time.perf_counter()
            with torch.inference_mode():
                out = model.generate(input_ids=ids, attention_mask=mask, generation_config=gen_cfg)
            sync(args.device)
            dt = time.perf_counter() - t0
            assert out.shape == (b, args.prompt_len + args.new_tokens), out.shape
            if i >= args.warmup:
                times.append(dt)
        secs = statistics.median(times)
        row = {
            "impl": "transformers", "task": "generate", "batch": b,
            "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
            "tokens_per_s": b * args.new_tokens / secs, "seconds": secs,
            "device": args.device, "dtype": args.dtype,
            "model": args.model or args.config, "threads": torch.get_num_threads(), "loadavg_1m": os.getloadavg()[0],
            "torch": torch.__version__, "transformers": transformers.__version__,
        }
        rows.append(row)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(row) + "\n")

    print(f"transformers generate  model={args.model or args.config}  device={args.device}  "
          f"dtype={args.dtype}  prompt={args.prompt_len}  new={args.new_tokens}  "
          f"torch={torch.__version__}  transformers={transformers.__version__}")
    print(f"{'batch':>6} {'seconds':>10} {'tokens/s':>12}")
    for r in rows:
        print(f"{r['batch']:>6} {r['seconds']:>10.3f} {r['tokens_per_s']:>12.1f}")


if __name__ == "__main__":
    main()
