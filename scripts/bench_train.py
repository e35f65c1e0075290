#!/usr/bin/env python3
"""SPIN training-step throughput baseline, computed "the TRL way" in plain PyTorch.

One step (everything inside the timed region):
  * Batch of P pairs; each pair = (prompt, real response, generated response), each
    sequence exactly L = --seq-len tokens: prompt (--prompt-len tokens, shared by the
    pair) + response (L - prompt_len tokens). Token ids are random (seed 0); a fresh
    pre-built batch per step, already on the device.
  * Real and generated sequences concatenated into one [2P, L] batch; ONE forward pass.
  * logp(seq) = sum over response tokens of log_softmax(logits)[t-1] gathered at token t
    (logits shifted by one, prompt positions masked; log_softmax done in float32).
  * Reference log-probs are fixed numbers precomputed once before timing (a no-grad
    forward of the initial model); the reference model is NOT run during the step.
  * loss = mean over pairs of -log sigmoid(beta * ((pi_r - ref_r) - (pi_g - ref_g))),
    beta = 0.1.
  * backward; torch.optim.RMSprop(lr=5e-7) step (alpha=0.99, eps=1e-8 defaults);
    zero_grad(set_to_none=True). Weights/grads/optimizer state all in --dtype.
  * step_seconds = median wall time of the --steps timed steps (after --warmup untimed
    steps), CUDA synchronised. tokens_per_s = 2 * P * L / step_seconds.
  * peak_mem_bytes: CUDA -> torch.cuda.max_memory_allocated() (reset after model load,
    so it covers warmup + timed steps, model weights included); CPU -> process peak RSS
    (ru_maxrss * 1024, whole process lifetime). peak_mem_kind says which.
  * --lora-rank R: PEFT LoRA (alpha 2R, dropout 0) on all seven projections, base frozen, the
    optimizer over the adapters only (as `wgspin bench train --lora-rank R`).
  * --gradient-checkpointing: transformers' gradient_checkpointing_enable() (non-reentrant).
  * --autocast f16|bf16: mixed precision as `wgspin bench train --dtype f16`: weights, gradients
    and optimizer state stay in --dtype (float32), the forward runs under torch.autocast, and
    f16 scales the loss with torch.amp.GradScaler.
  * --compile: model forward wrapped with torch.compile (impl "pytorch-compile");
    compilation happens in the warmup steps, so use --warmup >= 1.

Model: --model DIR (HF folder, weights loaded) or --config FILE.json (LlamaForCausalLM
randomly initialised with torch.manual_seed(0)), cast to --dtype.

CPU note: on a shared/busy machine use --threads 1 (or fewer than the free cores):
intra-op threads that share a core with another busy process stall every op barrier
(seen here: 2 threads on 2 cores with one core busy -> ~40x slower than 1 thread).

Usage:
  python3 scripts/bench_train.py --config /work/shared/fixtures/smollm2-135m-instruct/config.json \
      --pairs 8 --seq-len 512 --prompt-len 128 --steps 5 --dtype bfloat16 --device cuda \
      --json scripts/baseline.jsonl [--compile]
  python3 scripts/bench_train.py --model tests/fixtures/tiny-llama-bf16 --pairs 8 --seq-len 128 \
      --prompt-len 32 --steps 3
"""
import argparse
import json
import os
import resource
import statistics
import time

import torch
import torch.nn.functional as F
import transformers

from bench_common import DTYPES, add_model_args, add_run_args, load_model, set_threads, sync

BETA, LR = 0.1, 5e-7


def make_batch(g, p, seq_len, prompt_len, vocab, device):
    """[2P, L] ids: rows 0..P-1 real, P..2P-1 generated; same prompt within a pair."""
    prompt = torch.randint(3, vocab, (p, prompt_len), generator=g)
    real = torch.randint(3, vocab, (p, seq_len - prompt_len), generator=g)
    gen = torch.randint(3, vocab, (p, seq_len - prompt_len), generator=g)
    ids = torch.cat([torch.cat([prompt, real], 1), torch.cat([prompt, gen], 1)], 0)
    return ids.to(device)


def seq_logps(forward, ids, prompt_len):
    """Sum of response-token log-probs per row (TRL concatenated_forward/get_batch_logps)."""
    logits = forward(input_ids=ids, use_cache=False).logits[:, :-1, :]
    labels = ids[:, 1:]
    tok = torch.gather(logits.float().log_softmax(-1), 2, labels.unsqueeze(2)).squeeze(2)
    mask = torch.zeros_like(tok)
    mask[:, prompt_len - 1:] = 1.0  # label index t-1 holds token t; response starts at prompt_len
    return (tok * mask).sum(-1)


def spin_loss(logps, ref_logps, p):
    pi_r, pi_g = logps[:p], logps[p:]
    ref_r, ref_g = ref_logps[:p], ref_logps[p:]
    return -F.logsigmoid(BETA * ((pi_r - ref_r) - (pi_g - ref_g))).mean()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_args(ap)
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    add_run_args(ap)
    ap.add_argument("--compile", action="store_true", help="torch.compile the forward")
    ap.add_argument("--lora-rank", type=int, default=0, help="PEFT LoRA rank (0 = full fine-tuning)")
    ap.add_argument("--gradient-checkpointing", action="store_true",
                    help="recompute each decoder layer in the backward pass")
    ap.add_argument("--autocast", choices=["f16", "bf16"],
                    help="mixed precision: the forward under torch.autocast in this dtype")
    ap.add_argument("--json", help="append one JSON row to this .jsonl file")
    args = ap.parse_args()
    set_threads(args)
    assert 0 < args.prompt_len < args.seq_len

    dtype, dev, P, L = DTYPES[args.dtype], args.device, args.pairs, args.seq_len
    model = load_model(args, dtype)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if args.lora_rank > 0:
        from peft import LoraConfig, get_peft_model
        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        model = get_peft_model(model, LoraConfig(r=args.lora_rank, lora_alpha=2 * args.lora_rank,
                                                 lora_dropout=0.0, target_modules=targets,
                                                 task_type="CAUSAL_LM"))
    model.train()
    forward = torch.compile(model) if args.compile else model
    opt = torch.optim.RMSprop([q for q in model.parameters() if q.requires_grad], lr=LR)

    g = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    batches = [make_batch(g, P, L, args.prompt_len, vocab, dev) for _ in range(args.warmup + args.steps)]
    with torch.no_grad():  # fixed reference log-probs = initial policy, computed once, untimed
        refs = [seq_logps(model, b, args.prompt_len) for b in batches]
    if dev.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(dev)

    import contextlib
    amp_dtype = {"f16": torch.float16, "bf16": torch.bfloat16}.get(args.autocast)
    dev_type = "cuda" if dev.startswith("cuda") else "cpu"
    amp = (lambda: torch.autocast(dev_type, dtype=amp_dtype)) if amp_dtype else contextlib.nullcontext
    scaler = torch.amp.GradScaler(dev_type, enabled=args.autocast == "f16")

    times, losses = [], []
    for i, (ids, ref) in enumerate(zip(batches, refs)):
        sync(dev)
        t0 = time.perf_counter()
        with amp():
            loss = spin_loss(seq_logps(forward, ids, args.prompt_len), ref, P)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        sync(dev)
        dt = time.perf_counter() - t0
        losses.append(loss.item())
        if i >= args.warmup:
            times.append(dt)

    if dev.startswith("cuda"):
        peak, peak_kind = torch.cuda.max_memory_allocated(dev), "cuda_max_memory_allocated"
    else:
        peak, peak_kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process_peak_rss"
    secs = statistics.median(times)
    row = {
        "impl": "pytorch-compile" if args.compile else "pytorch-eager", "task": "train",
        "pairs": P, "seq_len": L, "prompt_len": args.prompt_len,
        "tokens_per_s": 2 * P * L / secs, "step_seconds": secs, "step_seconds_all": times,
        "peak_mem_bytes": peak, "peak_mem_kind": peak_kind, "loss_first": losses[0],
        "lora_rank": args.lora_rank, "gradient_checkpointing": args.gradient_checkpointing,
        "autocast": args.autocast,
        "device": dev, "dtype": args.dtype, "model": args.model or args.config,
        "threads": torch.get_num_threads(), "loadavg_1m": os.getloadavg()[0], "steps": args.steps, "warmup": args.warmup,
        "torch": torch.__version__, "transformers": transformers.__version__,
    }
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(row) + "\n")
    print(f"{row['impl']} SPIN train  model={row['model']}  device={dev}  dtype={args.dtype}  "
          f"torch={torch.__version__}  transformers={transformers.__version__}")
    print(f"lora_rank={args.lora_rank} gradient_checkpointing={args.gradient_checkpointing} "
          f"autocast={args.autocast}  "
          f"pairs={P} seq_len={L} prompt_len={args.prompt_len}  step={secs:.3f}s (median of "
          f"{len(times)})  tokens/s={row['tokens_per_s']:.1f}  peak_mem={peak / 2**20:.1f} MiB "
          f"({peak_kind})  loss[0]={losses[0]:.6f}")


if __name__ == "__main__":
    main()
