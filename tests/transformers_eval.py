"""What transformers (and PEFT) compute for a checkpoint folder, for tests/transformers_roundtrip.rs.

Reads JSON {"model", "adapter" (or null), "ids", "prompt_len", "greedy"} on stdin and prints JSON:
the log-prob of each token of `ids` after the first `prompt_len`, and `greedy` tokens continued
greedily from the first `prompt_len` ids (argmax, no stop token). float32, eager attention."""

import json
import sys

import torch
from transformers import AutoModelForCausalLM


def main():
    req = json.load(sys.stdin)
    model = AutoModelForCausalLM.from_pretrained(
        req["model"], dtype=torch.float32, attn_implementation="eager"
    )
    if req.get("adapter"):
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, req["adapter"])
    model.eval()
    ids, p = req["ids"], req["prompt_len"]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
        lp = torch.log_softmax(logits, dim=-1)
        logprobs = [float(lp[i - 1, ids[i]]) for i in range(p, len(ids))]
        seq = list(ids[:p])
        greedy = []
        for _ in range(req["greedy"]):
            nxt = int(model(torch.tensor([seq])).logits[0, -1].argmax())
            greedy.append(nxt)
            seq.append(nxt)
    json.dump({"logprobs": logprobs, "greedy": greedy}, sys.stdout)


main()
