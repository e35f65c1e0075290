#!/usr/bin/env python3
"""SPIN vs continued SFT on a real model (SmolLM2-135M-Instruct), with the demo's protocol.

Task: two-digit addition ("What is 47 + 38? Reply with the number only." -> "85"), answers
checked exactly. SmolLM2-135M-Instruct gets the sums partly right but answers in sentences, so
SFT has something to teach and SPIN something to improve.

Protocol (the same as `wgspin demo`):
  1. SFT from the instruct model one epoch at a time; after each epoch, greedy exact match on a
     validation split. After --patience epochs without a new best, back to the best epoch with
     a tenth of the learning rate, down to the rate SPIN and continued SFT use; a plateau at
     that rate ends SFT. The best epoch is kept.
  2. From that converged SFT model: `wgspin spin` for --iterations iterations on the SFT prompts,
     and continued SFT with the same compute (sequences through forward and backward: a SPIN
     iteration over N pairs is 2N sequences, so 2 SFT epochs for iteration 1 and 4 for the
     later ones, which train on the pairs of t and t-1).
  3. Every model is scored on a test split never used for a decision (greedy exact match).

Writes OUT/data/*.jsonl, every run folder, OUT/results.json and a Markdown table on stdout.
Needs only the wgspin binary and Python's standard library.

    python3 scripts/smollm2_spin.py --wgspin target/release/wgspin \
        --model SmolLM2-135M-Instruct.Q4_1.gguf --out runs/smollm2-spin
"""

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path


def make_split(rng, n, seen):
    rows = []
    while len(rows) < n:
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        if (a, b) in seen:
            continue
        seen.add((a, b))
        rows.append({
            "id": f"add-{a}-{b}",
            "prompt": f"What is {a} + {b}? Reply with the number only.",
            "response": str(a + b),
        })
    return rows


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


class Runner:
    def __init__(self, args):
        self.args = args
        self.log = open(Path(args.out) / "commands.log", "a")

    def wgspin(self, *cmd):
        full = [self.args.wgspin, *cmd, "--device", self.args.device]
        self.log.write(" ".join(str(c) for c in full) + "\n")
        self.log.flush()
        start = time.time()
        done = subprocess.run(full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if done.returncode != 0:
            sys.exit(f"failed ({done.returncode}): {' '.join(map(str, full))}\n{done.stderr[-4000:]}")
        return time.time() - start

    def exact_match(self, model, data, name):
        out = Path(self.args.out) / "eval" / f"{name}.jsonl"
        out.parent.mkdir(parents=True, exist_ok=True)
        self.wgspin("generate", "--model", model, "--data", data, "--out", out, "--overwrite",
                    "--temperature", "0", "--max-new-tokens", "8", "--gen-batch-size", "32")
        rows = [json.loads(line) for line in open(out)]
        right = sum(r["generated"][1]["content"].strip() == r["real"][1]["content"].strip()
                    for r in rows)
        return right / len(rows)


def checkpoint(run):
    return str(Path(run) / "checkpoint")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--wgspin", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="auto")
    p.add_argument("--train", type=int, default=128)
    p.add_argument("--validation", type=int, default=100)
    p.add_argument("--test", type=int, default=200)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--sft-lr", default="1e-4")
    p.add_argument("--spin-lr", default="1e-5")
    p.add_argument("--beta", default="0.1")
    p.add_argument("--batch-size", default="8")
    p.add_argument("--patience", type=int, default=2)
    p.add_argument("--max-sft-epochs", type=int, default=12)
    p.add_argument("--iterations", type=int, default=3)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run = Runner(args)
    started = time.time()

    rng = random.Random(args.seed)
    seen = set()
    train, val, test = (make_split(rng, n, seen) for n in (args.train, args.validation, args.test))
    data = out / "data"
    for name, rows in (("train", train), ("validation", val), ("test", test)):
        write_jsonl(data / f"{name}.jsonl", rows)
    # SPIN's held-out slice (reward accuracy) is the last --eval-size rows: the validation split.
    write_jsonl(data / "spin.jsonl", train + val)

    common = ["--batch-size", args.batch_size, "--optimizer", "adamw", "--max-length", "128",
              "--max-prompt-length", "96"]
    results = {"settings": vars(args), "stages": []}

    def record(stage, method, rnd, model, seconds, **extra):
        em = run.exact_match(model, data / "test.jsonl", stage.replace(" ", "-"))
        row = {"stage": stage, "method": method, "round": rnd, "test_exact_match": em,
               "seconds": round(seconds, 1), **extra}
        results["stages"].append(row)
        print(json.dumps(row), flush=True)
        (out / "results.json").write_text(json.dumps(results, indent=2))

    # 1. SFT to convergence on the validation split.
    start_em = run.exact_match(args.model, data / "validation.jsonl", "validation-start")
    results["sft_validation_curve"] = [{"epoch": 0, "validation_exact_match": start_em}]
    record("instruct model", "start", -1, args.model, 0.0)
    best, best_em, since, prev = args.model, start_em, 0, args.model
    lr = float(args.sft_lr)
    floor = float(args.spin_lr)
    sft_seconds = 0.0
    for epoch in range(1, args.max_sft_epochs + 1):
        run_dir = out / "sft" / f"epoch-{epoch}"
        sft_seconds += run.wgspin(
            "sft", "--model", prev, "--data", data / "train.jsonl", "--out", run_dir, "--overwrite",
            "--epochs", "1", "--lr", f"{lr:g}", "--schedule", "constant",
            "--warmup-ratio", "0.1" if epoch == 1 else "0", "--data-seed", str(args.seed + epoch),
            *common)
        prev = checkpoint(run_dir)
        em = run.exact_match(prev, data / "validation.jsonl", f"validation-sft-{epoch}")
        results["sft_validation_curve"].append(
            {"epoch": epoch, "lr": lr, "validation_exact_match": em})
        print(json.dumps({"sft_epoch": epoch, "lr": lr, "validation_exact_match": em}), flush=True)
        if em > best_em:
            best, best_em, since = prev, em, 0
        else:
            since += 1
            if since >= args.patience:
                # A plateau: back to the best epoch at a tenth of the rate, down to the rate
                # continued SFT uses; a plateau at that rate ends SFT (as `wgspin demo` does).
                if lr <= floor * (1 + 1e-9):
                    break
                lr, since, prev = max(lr / 10, floor), 0, best
    results["sft_best"] = {"model": best, "validation_exact_match": best_em}
    record("SFT (converged)", "start", 0, best, sft_seconds)

    # 2a. SPIN from the converged SFT model.
    spin_dir = out / "spin"
    t0 = time.time()
    run.wgspin("spin", "--model", best, "--data", data / "spin.jsonl", "--out", spin_dir,
               "--overwrite", "--iterations", str(args.iterations), "--stop-accuracy", "0",
               "--eval-size", str(args.validation), "--max-new-tokens", "8",
               "--temperature", "1.0", "--sampling-seed", str(args.seed), "--epochs", "1",
               "--lr", args.spin_lr, "--beta", args.beta, "--data-seed", str(args.seed),
               "--gen-batch-size", "32", *common)
    spin_seconds = time.time() - t0
    summary = json.loads((spin_dir / "summary.json").read_text())
    evals = {it["iteration"]: it["eval"] for it in summary["iterations"]}
    for t in range(args.iterations):
        ckpt = spin_dir / f"iter-{t}" / "checkpoint"
        record(f"SPIN iteration {t + 1}", "spin", t + 1, ckpt,
               spin_seconds / args.iterations, spin_eval=evals.get(t))

    # 2b. Continued SFT with SPIN's compute, from the same converged model.
    prev = best
    for t in range(args.iterations):
        run_dir = out / f"sft-continued-{t + 1}"
        secs = run.wgspin(
            "sft", "--model", prev, "--data", data / "train.jsonl", "--out", run_dir, "--overwrite",
            "--epochs", "2" if t == 0 else "4", "--lr", args.spin_lr,
            "--data-seed", str(args.seed + 100 + t), *common)
        prev = checkpoint(run_dir)
        record(f"continued SFT {t + 1}", "sft", t + 1, prev, secs)

    results["wall_seconds"] = round(time.time() - started)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\nwall time {results['wall_seconds']} s")
    print("\n| stage | test exact match | time |\n|---|---|---|")
    for s in results["stages"]:
        print(f"| {s['stage']} | {100 * s['test_exact_match']:.1f}% | {s['seconds']:.0f} s |")


if __name__ == "__main__":
    main()
