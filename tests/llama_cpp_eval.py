"""What llama.cpp computes for a GGUF file, for tests/llama_cpp.rs (through llama-cpp-python).

Reads JSON {"gguf", "ids", "prompt_len", "greedy"} on stdin and prints JSON: the log-prob llama.cpp
gives each token of `ids` after the first `prompt_len` (its full-vocabulary log-softmax), and
`greedy` tokens continued greedily (argmax of the logits) from the first `prompt_len` ids."""

import json
import sys

import numpy as np
import llama_cpp


def log_softmax(row):
    row = row.astype(np.float64)
    m = row.max()
    return row - m - np.log(np.exp(row - m).sum())


def main():
    req = json.load(sys.stdin)
    # An f32 KV cache (llama.cpp's default is f16), so only the weight format is compared.
    llm = llama_cpp.Llama(
        model_path=req["gguf"],
        n_ctx=256,
        n_threads=1,
        logits_all=True,
        type_k=llama_cpp.GGML_TYPE_F32,
        type_v=llama_cpp.GGML_TYPE_F32,
        verbose=False,
    )
    ids, p = req["ids"], req["prompt_len"]
    llm.eval(ids)
    scores = np.array(llm.scores[: len(ids)])
    logprobs = [float(log_softmax(scores[i - 1])[ids[i]]) for i in range(p, len(ids))]
    llm.reset()
    llm.eval(ids[:p])
    greedy = []
    for _ in range(req["greedy"]):
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        greedy.append(tok)
        llm.eval([tok])
    json.dump({"logprobs": logprobs, "greedy": greedy}, sys.stdout)


main()
