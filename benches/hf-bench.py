#!/usr/bin/env python3
"""Hugging Face transformers on a GPU, measured as `greve bench` measures:
prompt tokens/s (one forward over a random prompt), generated tokens/s
(greedy, one token per forward, through the KV cache), time to first token,
and the same after `--depth` tokens already in the context. Also the GPU's
copy bandwidth, which bounds decoding: every generated token reads every
weight once.

usage: hf-bench.py MODEL_DIR [--prompt-tokens 512] [--gen-tokens 128] [-r 3]
                   [--depth 8192] [--compile] [--bandwidth]
Prints one JSON object per measurement. Needs torch and transformers.
"""
import argparse
import json
import statistics
import time

import torch

p = argparse.ArgumentParser()
p.add_argument("model")
p.add_argument("--prompt-tokens", type=int, default=512)
p.add_argument("--gen-tokens", type=int, default=128)
p.add_argument("-r", "--repetitions", type=int, default=3)
p.add_argument("--depth", type=int, default=0)
p.add_argument("--compile", action="store_true",
               help="static KV cache and torch.compile (transformers' fast path) instead of eager")
p.add_argument("--bandwidth", action="store_true", help="only measure the device-to-device copy bandwidth")
args = p.parse_args()


# The CPU only to try this script out on a tiny model.
dev = "cuda" if torch.cuda.is_available() else "cpu"


def sync_time():
    if dev == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def bandwidth():
    """Bytes read plus written per second by a device-to-device copy."""
    n = 4 << 30
    x = torch.empty(n, dtype=torch.uint8, device=dev)
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    t0 = sync_time()
    for _ in range(20):
        y.copy_(x)
    dt = sync_time() - t0
    return 2 * n * 20 / dt


if args.bandwidth:
    print(json.dumps({"device": torch.cuda.get_device_name(), "copy_bytes_per_s": bandwidth()}))
    raise SystemExit

from transformers import AutoModelForCausalLM, StaticCache  # noqa: E402

t0 = time.perf_counter()
model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16, attn_implementation="eager" if not args.compile else "sdpa").to(dev).eval()
load_s = sync_time() - t0
weights = sum(t.numel() * t.element_size() for t in model.parameters())
vocab = model.config.vocab_size
gen = torch.Generator().manual_seed(0)


def random_ids(n):
    return torch.randint(3, vocab, (1, n), generator=gen).to(dev)


step = model
if args.compile:
    step = torch.compile(model, mode="reduce-overhead", fullgraph=True)


@torch.inference_mode()
def run(depth):
    """(prefill s, ttft s, decode s) for one prompt after `depth` tokens."""
    if args.compile:
        cache = StaticCache(config=model.config, max_cache_len=depth + args.prompt_tokens + args.gen_tokens + 8)
    else:
        cache = None
    pos = 0
    if depth:
        ids = random_ids(depth)
        out = model(ids, past_key_values=cache, use_cache=True,
                    cache_position=torch.arange(0, depth, device=dev))
        cache, pos = out.past_key_values, depth
    ids = random_ids(args.prompt_tokens)
    t0 = sync_time()
    out = model(ids, past_key_values=cache, use_cache=True,
                cache_position=torch.arange(pos, pos + args.prompt_tokens, device=dev))
    cache, pos = out.past_key_values, pos + args.prompt_tokens
    token = out.logits[:, -1:].argmax(-1)
    t1 = sync_time()
    for _ in range(args.gen_tokens):
        out = step(token, past_key_values=cache, use_cache=True,
                   cache_position=torch.tensor([pos], device=dev))
        cache, pos = out.past_key_values, pos + 1
        token = out.logits[:, -1:].argmax(-1)
    t2 = sync_time()
    return t1 - t0, t2 - t1


def measure(depth):
    run(depth)  # warm-up (and, with --compile, the compilation)
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    runs = [run(depth) for _ in range(args.repetitions)]
    pp = [args.prompt_tokens / r[0] for r in runs]
    tg = [args.gen_tokens / r[1] for r in runs]
    return {
        "engine": "transformers " + ("static cache + torch.compile" if args.compile else "eager"),
        "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu",
        "depth": depth,
        "prompt_tokens": args.prompt_tokens,
        "gen_tokens": args.gen_tokens,
        "load_s": load_s,
        "weights_gb": weights / 1e9,
        "prefill_tok_s": statistics.mean(pp),
        "decode_tok_s": statistics.mean(tg),
        "decode_tok_s_sd": statistics.stdev(tg) if len(tg) > 1 else 0.0,
        "ttft_s": statistics.mean(r[0] for r in runs),
        "peak_gpu_gb": torch.cuda.max_memory_allocated() / 1e9 if dev == "cuda" else None,
    }


for depth in sorted({0, args.depth}):
    print(json.dumps(measure(depth)), flush=True)
