#!/usr/bin/env python3
"""A Mistral-7B-Instruct-v0.2-shaped safetensors folder with random bf16 weights.

Like make-synthetic-gguf.py beside it for GGUF: the cost of running a
model does not depend on its weight values, so `greve bench` on this folder
measures what the real 14.5 GB download would cost on this machine's CPU.
`--layers N` makes a smaller file (the per-layer cost is the same).

usage: make-synthetic-safetensors.py OUT_DIR [--layers 32] [--jobs N] [--tokenizer tests/goldens/tokenizer-v1.json]
Needs only numpy; writes the safetensors format itself (an 8-byte header
length, a JSON header, the raw data), at disk speed: the weights are random
bits, not random normals, so 14.5 GB take seconds on a GPU machine.
"""
import argparse
import json
import multiprocessing
import os
import shutil

import numpy as np

p = argparse.ArgumentParser()
p.add_argument("out")
p.add_argument("--layers", type=int, default=32)
p.add_argument("--jobs", type=int, default=os.cpu_count(), help="shards written at once")
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


def bf16(rng, *shape):
    """Random bf16 bits: random sign and mantissa, exponent 2^-7, so values
    lie in ±[0.0078, 0.0156) like a trained layer's (std ≈ 0.01)."""
    x = np.frombuffer(rng.bytes(2 * int(np.prod(shape))), dtype=np.uint16)
    return ((x & 0x807F) | 0x3C00).reshape(shape)


def norm():
    return np.full((d,), 0x3F80, dtype=np.uint16)  # 1.0 in bf16


def save(tensors, path):
    header, offset = {}, 0
    for name, t in tensors.items():
        header[name] = {"dtype": "BF16", "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path + ".tmp", "wb") as fh:
        fh.write(len(text).to_bytes(8, "little") + text)
        for t in tensors.values():
            t.tofile(fh)
    os.replace(path + ".tmp", path)


def shard(l):
    """Writes shard `l` (a layer, or the embeddings and head after the last
    layer) and returns its file name and {tensor: bytes}."""
    rng = np.random.default_rng(l)
    name = f"model-{l + 1:05d}-of-{args.layers + 1:05d}.safetensors"
    if l < args.layers:
        pre = f"model.layers.{l}."
        tensors = {
            pre + "input_layernorm.weight": norm(),
            pre + "post_attention_layernorm.weight": norm(),
            pre + "self_attn.q_proj.weight": bf16(rng, d, d),
            pre + "self_attn.k_proj.weight": bf16(rng, kv * hd, d),
            pre + "self_attn.v_proj.weight": bf16(rng, kv * hd, d),
            pre + "self_attn.o_proj.weight": bf16(rng, d, d),
            pre + "mlp.gate_proj.weight": bf16(rng, f, d),
            pre + "mlp.up_proj.weight": bf16(rng, f, d),
            pre + "mlp.down_proj.weight": bf16(rng, d, f),
        }
    else:
        tensors = {
            "model.embed_tokens.weight": bf16(rng, vocab, d),
            "model.norm.weight": norm(),
            "lm_head.weight": bf16(rng, vocab, d),
        }
    save(tensors, os.path.join(args.out, name))
    return name, {k: v.nbytes for k, v in tensors.items()}


# One shard per layer, as large checkpoints are sharded, with the index;
# shards are written in parallel.
weight_map, total = {}, 0
with multiprocessing.Pool(args.jobs) as pool:
    for name, sizes in pool.imap(shard, range(args.layers + 1)):
        for k, n in sizes.items():
            weight_map[k] = name
            total += n
with open(os.path.join(args.out, "model.safetensors.index.json"), "w") as fh:
    json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, fh, indent=2)
print(f"{args.out}: {args.layers} layers, {total / 1e9:.2f} GB")
