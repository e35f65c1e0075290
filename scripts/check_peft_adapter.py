#!/usr/bin/env python3
"""Loads an adapter folder that wgspin wrote with the real PEFT client and compares PEFT's summed
response log-probs with `wgspin logprobs` output for the same rows.

  wgspin logprobs --model ADAPTER --data rows.jsonl --out wgspin.jsonl
  python3 scripts/check_peft_adapter.py --base BASE --adapter ADAPTER --data rows.jsonl \
      --wgspin wgspin.jsonl [--tol 1e-4]

Rows are {"prompt", "response"}; tokenization is wgspin's rule (chat template with
add_generation_prompt, no extra special tokens; response + eos). Exits 1 if any row differs by more
than --tol relative. Needs torch, transformers, peft.
"""
import argparse
import json
import sys

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--wgspin", required=True)
    ap.add_argument("--tol", type=float, default=1e-4)
    a = ap.parse_args()
    tok = AutoTokenizer.from_pretrained(a.base)
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(a.base, dtype=torch.float32), a.adapter).eval()
    ours = [json.loads(l) for l in open(a.wgspin) if l.strip()]
    worst = 0.0
    for row, got in zip((json.loads(l) for l in open(a.data) if l.strip()), ours):
        text = tok.apply_chat_template([{"role": "user", "content": row["prompt"]}], tokenize=False,
                                       add_generation_prompt=True)
        p = tok(text, add_special_tokens=False)["input_ids"]
        r = tok(row["response"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=torch.tensor([p + r[:-1]])).logits[0].float(), -1)
        want = lp[torch.arange(len(p) - 1, len(p) - 1 + len(r)), torch.tensor(r)].sum().item()
        rel = abs(got["logprob"] - want) / max(abs(want), 1e-6)
        worst = max(worst, rel)
        print(f"row {got['index']}: wgspin {got['logprob']:.6f}  peft {want:.6f}  rel {rel:.1e}")
    print(f"worst relative difference {worst:.1e} over {len(ours)} rows (tolerance {a.tol:.0e})")
    sys.exit(0 if worst <= a.tol else 1)


if __name__ == "__main__":
    main()
