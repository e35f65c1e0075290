#!/usr/bin/env python3
"""Writes the seed inputs of the fuzz targets into fuzz/corpus/<target>/seed-*: small valid files
of each format (the fuzzer mutates from these), plus the repository's own small fixtures. Run from
the repository root; the committed corpus is this plus what fuzzing found (minimised with
`cargo fuzz cmin`). Standard library only."""
import json
import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def put(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def f16(x):
    return struct.pack("<e", x)


# --- GGUF (version 3): the metadata a llama / qwen2 file carries, and F32, F16, Q8_0 tensors.
def gguf_str(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def gguf_kv(key, kind, value):
    out = gguf_str(key)
    if kind == "str":
        return out + struct.pack("<I", 8) + gguf_str(value)
    if kind == "u32":
        return out + struct.pack("<II", 4, value)
    if kind == "f32":
        return out + struct.pack("<If", 6, value)
    if kind == "bool":
        return out + struct.pack("<IB", 7, value)
    if kind == "strs":
        return out + struct.pack("<IIQ", 9, 8, len(value)) + b"".join(gguf_str(v) for v in value)
    if kind == "i32s":
        return out + struct.pack("<IIQ", 9, 5, len(value)) + b"".join(struct.pack("<i", v) for v in value)
    raise ValueError(kind)


def q8_0(values):
    out = b""
    for i in range(0, len(values), 32):
        block = values[i:i + 32]
        scale = max(abs(v) for v in block) / 127 or 1.0
        out += f16(scale) + b"".join(struct.pack("<b", round(v / scale)) for v in block)
    return out


def gguf(arch, tokens):
    hidden, ff = 32, 64
    kvs = [
        ("general.architecture", "str", arch),
        ("general.name", "str", "Seed"),
        (f"{arch}.context_length", "u32", 64),
        (f"{arch}.embedding_length", "u32", hidden),
        (f"{arch}.block_count", "u32", 1),
        (f"{arch}.feed_forward_length", "u32", ff),
        (f"{arch}.attention.head_count", "u32", 4),
        (f"{arch}.attention.head_count_kv", "u32", 2),
        (f"{arch}.rope.freq_base", "f32", 10000.0),
        (f"{arch}.attention.layer_norm_rms_epsilon", "f32", 1e-5),
        ("tokenizer.ggml.model", "str", "gpt2"),
        ("tokenizer.ggml.pre", "str", "smollm"),
        ("tokenizer.ggml.tokens", "strs", tokens),
        ("tokenizer.ggml.token_type", "i32s", [1] * (len(tokens) - 1) + [3]),
        ("tokenizer.ggml.merges", "strs", ["a b"]),
        ("tokenizer.ggml.bos_token_id", "u32", len(tokens) - 1),
        ("tokenizer.ggml.eos_token_id", "u32", len(tokens) - 1),
        ("tokenizer.ggml.add_bos_token", "bool", 0),
        ("tokenizer.chat_template", "str", "{% for m in messages %}{{ m.content }}{% endfor %}"),
    ]
    vals = [((i * 37) % 101 - 50) / 50 for i in range(64 * 32)]
    tensors = [
        ("token_embd.weight", [hidden, len(tokens)], 8, q8_0(vals[: hidden * len(tokens)])),
        ("output_norm.weight", [hidden], 0, b"".join(struct.pack("<f", 1.0) for _ in range(hidden))),
        ("blk.0.attn_q.weight", [hidden, hidden], 1, b"".join(f16(v) for v in vals[: hidden * hidden])),
    ]
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs))
    head += b"".join(gguf_kv(*kv) for kv in kvs)
    data, infos = b"", b""
    for name, dims, kind, raw in tensors:
        infos += gguf_str(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        infos += struct.pack("<IQ", kind, len(data))
        data += raw + b"\0" * (-len(raw) % 32)
    head += infos
    head += b"\0" * (-len(head) % 32)
    return head + data


# --- safetensors: an 8-byte header length, the JSON header, the data.
def safetensors(tensors, metadata=None):
    header, data = {}, b""
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    if metadata:
        header["__metadata__"] = metadata
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


def main():
    put("gguf", "llama", gguf("llama", ["a", "b", "ab", "<s>"]))
    put("gguf", "qwen2", gguf("qwen2", ["x", "y", "<|im_end|>"]))

    ones = b"".join(struct.pack("<f", 1.0) for _ in range(6))
    put("safetensors", "f32", safetensors([("model.norm.weight", "F32", [6], ones)], {"format": "pt"}))
    put("safetensors", "mixed", safetensors([
        ("a.weight", "F16", [2, 3], b"".join(f16(v) for v in [0.5, -1, 2, 0, 65504, -0.0])),
        ("b.weight", "BF16", [2], b"\x80\x3f\x00\xc0"),
        ("c.bias", "I64", [1], struct.pack("<q", 7)),
        ("d.empty", "F32", [0, 4], b""),
    ]))

    data_dir = os.path.join(os.path.dirname(ROOT), "..", "tests", "fixtures", "data")
    for name in sorted(os.listdir(data_dir)):
        if not name.endswith((".jsonl", ".parquet")):
            continue
        with open(os.path.join(data_dir, name), "rb") as f:
            put("dataset", name.replace(".", "-"), f.read())
    put("dataset", "mixed-lines", "\ufeff" + "\n".join([
        json.dumps({"id": "a", "prompt": "p", "response": "r"}),
        "",
        json.dumps({"messages": [{"role": "user", "content": "u"}]}),
        json.dumps({"instruction": "i", "input": "", "output": "o"}),
        "[1, 2]",
    ]) + "\r\n")

    templates = {
        "chatml": "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
        "llama2": "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] | trim + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] | trim + eos_token }}{% endif %}{% endfor %}",
        "zephyr": "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\\n'  + message['content'] + eos_token }}\n{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}",
        "namespace": "{%- set ns = namespace(n=0) -%}{%- for m in messages -%}{%- set ns.n = ns.n + m.content|length -%}{{ m.role|upper }}: {{ m.content.strip()|tojson(indent=2) }}{%- endfor -%}{{ ns.n }}{{ strftime_now('%Y') if false }}{{ messages|selectattr('role', 'equalto', 'user')|list|length }}",
    }
    for name, source in templates.items():
        put("chat_template", name, source + "\0hello\0hi there\0again")


if __name__ == "__main__":
    main()
