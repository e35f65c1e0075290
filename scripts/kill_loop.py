#!/usr/bin/env python3
"""Kill -9 loop: starts a wgspin job, SIGKILLs it at a random moment, reruns it (with --resume for
`train`), and repeats until a run finishes; checks that every interruption left something resumable
and that the final weights equal those of an uninterrupted run (max |Δ| ≤ 1e-4, as tests/train.rs).

Usage: python3 scripts/kill_loop.py --bin target/release/wgspin --job train --kills 50
       python3 scripts/kill_loop.py --bin target/release/wgspin --job spin --kills 20
       python3 scripts/kill_loop.py ... --lora-rank 4   (the same with a LoRA adapter)
Runs on the tiny fixture model on the CPU backend; Unix only (SIGKILL). Prints one line per kill and a
summary; exits 1 on any failure.
"""
import argparse
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "tests", "fixtures")


def job_args(bin_path, job, out, lora_rank=0):
    model = os.path.join(FIX, "tiny-llama-bf16")
    if job == "train":
        data = os.path.join(FIX, "data", "spin.jsonl")
        extra = ["--epochs", "20", "--batch-size", "1", "--save-every", "1"]
    else:
        data = os.path.join(FIX, "data", "prompt_response.jsonl")
        extra = ["--iterations", "3", "--epochs", "2", "--batch-size", "1", "--max-new-tokens", "6",
                 "--stop-accuracy", "0"]
    if lora_rank:
        extra += ["--lora-rank", str(lora_rank), "--lr", "1e-2"]
    return [bin_path, job, "--device", "cpu", "--model", model, "--data", data, "--out", out] + extra


def weights_of(checkpoint):
    """The weights file of a checkpoint: a full model's, or a LoRA adapter's."""
    adapter = os.path.join(checkpoint, "adapter_model.safetensors")
    return adapter if os.path.exists(os.path.join(checkpoint, "adapter_config.json")) else \
        os.path.join(checkpoint, "model.safetensors")


def checkpoint_of(job, out):
    if job == "train":
        return os.path.join(out, "checkpoint")
    iters = sorted(d for d in os.listdir(out) if d.startswith("iter-")) if os.path.isdir(out) else []
    return os.path.join(out, iters[-1], "checkpoint") if iters else None


def tensors(path):
    """name -> values (floats) of a safetensors file (F32, BF16 or F16)."""
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        raw = data[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]]
        if v["dtype"] == "F32":
            out[k] = list(struct.unpack(f"<{len(raw) // 4}f", raw))
        elif v["dtype"] == "BF16":
            halves = struct.unpack(f"<{len(raw) // 2}H", raw)
            out[k] = list(struct.unpack(f"<{len(halves)}f", struct.pack(f"<{len(halves)}I",
                                                                          *(h << 16 for h in halves))))
        else:
            out[k] = list(struct.unpack(f"<{len(raw) // 2}e", raw))
    return out


def max_diff(a, b):
    if a.keys() != b.keys():
        return float("inf")
    return max((abs(x - y) for k in a for x, y in zip(a[k], b[k])), default=0.0)


def run_to_end(cmd, resume):
    args = cmd + (["--resume"] if resume else [])
    r = subprocess.run(args, capture_output=True, text=True)
    return r.returncode, r.stderr


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--job", choices=["train", "spin"], default="train")
    ap.add_argument("--kills", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lora-rank", type=int, default=0, help="train a LoRA adapter of this rank")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    tmp = tempfile.mkdtemp()
    try:
        ref_out = os.path.join(tmp, "reference")
        t0 = time.time()
        rc, err = run_to_end(job_args(a.bin, a.job, ref_out, a.lora_rank), False)
        if rc != 0:
            sys.exit(f"uninterrupted run failed: {err}")
        full_secs = time.time() - t0
        want = tensors(weights_of(checkpoint_of(a.job, ref_out)))
        failures, kills, cycles, worst = [], 0, 0, 0.0
        while kills < a.kills:
            out = os.path.join(tmp, f"run{cycles}")
            cycles += 1
            cmd = job_args(a.bin, a.job, out, a.lora_rank)
            started = False
            # Kill this run several times, then let it finish.
            for _ in range(rng.randint(1, 4)):
                args = cmd + (["--resume"] if a.job == "train" and started else [])
                p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(rng.uniform(0.02, full_secs))
                if p.poll() is None:
                    os.kill(p.pid, signal.SIGKILL)
                    p.wait()
                    kills += 1
                started = True
                # After every kill the folder must hold no half-written checkpoint under its name.
                ck = checkpoint_of(a.job, out)
                if ck and os.path.isdir(ck) and not os.path.exists(weights_of(ck)):
                    failures.append(f"cycle {cycles}: {ck} without weights")
            rc, err = run_to_end(cmd, a.job == "train" and started)
            if rc != 0:
                failures.append(f"cycle {cycles}: resume failed: {err.strip().splitlines()[-1:]}")
                continue
            got = tensors(weights_of(checkpoint_of(a.job, out)))
            d = max_diff(got, want)
            worst = max(worst, d)
            print(f"cycle {cycles}: {kills} kills so far, final weights max |Δ| {d:.3g} vs uninterrupted")
            if d > 1e-4:
                failures.append(f"cycle {cycles}: final weights differ by {d:.3g}")
            shutil.rmtree(out, ignore_errors=True)
        print(f"{a.job}: {kills} kills in {cycles} runs, {len(failures)} failures, "
              f"worst final-weight difference {worst:.3g}")
        for f in failures:
            print("  ", f)
        sys.exit(1 if failures else 0)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
