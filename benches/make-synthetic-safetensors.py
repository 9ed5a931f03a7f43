#!/usr/bin/env python3
"""A Mistral-7B-Instruct-v0.2-shaped safetensors folder with random bf16 weights.

Like make-synthetic-gguf.py beside it for GGUF: the cost of running a
model does not depend on its weight values, so `greve bench` on this folder
measures what the real 14.5 GB download would cost on this machine's CPU.
`--layers N` makes a smaller file (the per-layer cost is the same).

usage: make-synthetic-safetensors.py OUT_DIR [--layers 32] [--tokenizer tests/goldens/tokenizer-v1.json]
Needs numpy and safetensors (pip install numpy safetensors).
"""
import argparse
import json
import os
import shutil

import numpy as np
from safetensors.numpy import save_file

p = argparse.ArgumentParser()
p.add_argument("out")
p.add_argument("--layers", type=int, default=32)
p.add_argument("--tokenizer", default=os.path.join(os.path.dirname(__file__), "..", "tests", "goldens", "tokenizer-v1.json"))
args = p.parse_args()

d, f, heads, kv, vocab = 4096, 14336, 32, 8, 32000
hd = d // heads
config = {
    "architectures": ["MistralForCausalLM"],
    "model_type": "mistral",
    "hidden_size": d,
    "intermediate_size": f,
    "num_attention_heads": heads,
    "num_key_value_heads": kv,
    "num_hidden_layers": args.layers,
    "vocab_size": vocab,
    "max_position_embeddings": 32768,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-5,
    "sliding_window": None,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "bos_token_id": 1,
    "eos_token_id": 2,
}
os.makedirs(args.out, exist_ok=True)
with open(os.path.join(args.out, "config.json"), "w") as fh:
    json.dump(config, fh, indent=2)
shutil.copy(args.tokenizer, os.path.join(args.out, "tokenizer.json"))

rng = np.random.default_rng(0)


def bf16(*shape):
    """Random N(0, 0.02) values, rounded to bf16 and stored as its bits (uint16)."""
    x = (rng.standard_normal(shape, dtype=np.float32) * 0.02).view(np.uint32)
    return ((x + 0x8000) >> 16).astype(np.uint16)


def norm():
    return np.full((d,), 0x3F80, dtype=np.uint16)  # 1.0 in bf16


# One shard per layer, as large checkpoints are sharded, with the index.
shards, weight_map = [], {}
total = 0
for l in range(args.layers + 1):
    name = f"model-{l + 1:05d}-of-{args.layers + 1:05d}.safetensors"
    if l < args.layers:
        pre = f"model.layers.{l}."
        tensors = {
            pre + "input_layernorm.weight": norm(),
            pre + "post_attention_layernorm.weight": norm(),
            pre + "self_attn.q_proj.weight": bf16(d, d),
            pre + "self_attn.k_proj.weight": bf16(kv * hd, d),
            pre + "self_attn.v_proj.weight": bf16(kv * hd, d),
            pre + "self_attn.o_proj.weight": bf16(d, d),
            pre + "mlp.gate_proj.weight": bf16(f, d),
            pre + "mlp.up_proj.weight": bf16(f, d),
            pre + "mlp.down_proj.weight": bf16(d, f),
        }
    else:
        tensors = {
            "model.embed_tokens.weight": bf16(vocab, d),
            "model.norm.weight": norm(),
            "lm_head.weight": bf16(vocab, d),
        }
    # safetensors.numpy has no bf16: write uint16, then patch the dtype in the header.
    path = os.path.join(args.out, name)
    save_file(tensors, path)
    with open(path, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        header = fh.read(n).replace(b'"U16"', b'"BF16"')
        data = fh.read()
    header += b" " * (-len(header) % 8)
    with open(path + ".tmp", "wb") as fh:
        fh.write(len(header).to_bytes(8, "little") + header + data)
    os.replace(path + ".tmp", path)
    for k, v in tensors.items():
        weight_map[k] = name
        total += v.nbytes
with open(os.path.join(args.out, "model.safetensors.index.json"), "w") as fh:
    json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, fh, indent=2)
print(f"{args.out}: {args.layers} layers, {total / 1e9:.2f} GB")
