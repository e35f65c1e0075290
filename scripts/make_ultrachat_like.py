"""A dataset folder in the layout of HuggingFaceH4/ultrachat_200k at its full size, for measuring
`--data ORG/NAME:SPLIT` on a cache that holds all of it (there is no Hub here): the card's
`configs`, the four splits with the real row counts and shard counts, rows
{prompt, prompt_id, messages: [{content, role}]} of 1-3 exchanges with UltraChat-like lengths
(answers of ~1-2 KB), written with pyarrow as `datasets.push_to_hub` writes them (snappy, row groups
of 1000 rows).

  python3 scripts/make_ultrachat_like.py OUT_DIR [--scale 1.0]

Serve OUT_DIR with tests/hub_server.py (--dataset HuggingFaceH4/ultrachat_200k=OUT_DIR) or
download it into a cache with huggingface_hub's snapshot_download from that server.
"""
import argparse
import hashlib
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SPLITS = {"train_sft": (207865, 3), "test_sft": (23110, 1), "train_gen": (256032, 3), "test_gen": (28304, 1)}
CARD = """---
license: mit
task_categories:
- text-generation
language:
- en
size_categories:
- 100K<n<1M
configs:
- config_name: default
  data_files:
  - split: train_sft
    path: data/train_sft-*
  - split: test_sft
    path: data/test_sft-*
  - split: train_gen
    path: data/train_gen-*
  - split: test_gen
    path: data/test_gen-*
---
# A stand-in for UltraChat 200k (synthetic text, the real layout and sizes)
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--scale", type=float, default=1.0)
    args = ap.parse_args()
    os.makedirs(os.path.join(args.out, "data"), exist_ok=True)
    with open(os.path.join(args.out, "README.md"), "w") as f:
        f.write(CARD)
    rng = np.random.default_rng(0)
    words = np.array(["".join(chr(97 + c) for c in rng.integers(0, 26, rng.integers(2, 10))) for _ in range(5000)])
    schema = pa.schema([("prompt", pa.string()), ("prompt_id", pa.string()),
                        ("messages", pa.list_(pa.struct([("content", pa.string()), ("role", pa.string())])))])

    def text(n_words):
        return " ".join(words[rng.integers(0, len(words), n_words)])

    for split, (rows, shards) in SPLITS.items():
        rows = max(1, int(rows * args.scale))
        per = -(-rows // shards)
        done = 0
        for s in range(shards):
            n = min(per, rows - done)
            name = f"data/{split}-{s:05d}-of-{shards:05d}-{hashlib.sha256(f'{split}{s}'.encode()).hexdigest()[:16]}.parquet"
            writer = pq.ParquetWriter(os.path.join(args.out, name), schema, compression="snappy")
            for start in range(0, n, 1000):
                batch = {"prompt": [], "prompt_id": [], "messages": []}
                for r in range(start, min(n, start + 1000)):
                    prompt = f"{split} {done + r}: " + text(int(rng.integers(10, 60)))
                    turns = [{"content": prompt, "role": "user"}]
                    for t in range(int(rng.integers(1, 4))):
                        if t:
                            turns.append({"content": text(int(rng.integers(10, 60))), "role": "user"})
                        turns.append({"content": text(int(rng.integers(150, 300))), "role": "assistant"})
                    batch["prompt"].append(prompt)
                    batch["prompt_id"].append(hashlib.sha256(prompt.encode()).hexdigest())
                    batch["messages"].append(turns)
                writer.write_table(pa.table(batch, schema=schema))
            writer.close()
            done += n
            print(name, n, os.path.getsize(os.path.join(args.out, name)) >> 20, "MiB", flush=True)


if __name__ == "__main__":
    main()
