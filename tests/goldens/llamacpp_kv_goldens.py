#!/usr/bin/env python3
"""Records llama.cpp's logits and greedy continuation of the tiny Q4_K_M file
after a 300-token prompt, with its KV cache in f16 and in q8_0 (keys and
values in blocks of 32 with a scale each, what `greve --kv-cache q8` stores),
for tests/engine.rs to hold greve's caches against. Run with a Python that has
llama-cpp-python 0.3.36 (../shared/tools/setup-bench-env.sh makes one):

    ~/.cache/greve-bench/venv/bin/python llamacpp_kv_goldens.py
"""
import json
import os

import llama_cpp
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
FILE = "tiny-k-q4_k_m.gguf"
CACHES = {"f16": llama_cpp.GGML_TYPE_F16, "q8_0": llama_cpp.GGML_TYPE_Q8_0}
NEW_TOKENS = 16


def prompt(vocab):
    # The same ids as the test builds: spread over the vocabulary, past the specials.
    return [3 + (i * 53 + i // 5) % (vocab - 3) for i in range(300)]


def run(cache_type):
    # A quantised value cache needs llama.cpp's flash-attention path.
    llm = llama_cpp.Llama(os.path.join(HERE, FILE), n_ctx=512, n_threads=1, verbose=False, seed=0,
                          type_k=cache_type, type_v=cache_type, flash_attn=True, logits_all=True)
    ids = prompt(llm.n_vocab())
    llm.eval(ids)
    logits = [round(float(x), 5) for x in llm.eval_logits[-1]]
    tokens, margins = [], []
    while len(tokens) < NEW_TOKENS:
        last = np.array(llm.eval_logits[-1])
        token = int(last.argmax())
        top2 = np.sort(last)[-2:]
        tokens.append(token)
        margins.append(round(float(top2[1] - top2[0]), 5))
        llm.eval([token])
    return {"prompt": ids, "logits": logits, "greedy": tokens, "margins": margins}


def main():
    result = {"llama_cpp_python": llama_cpp.__version__, "file": FILE,
              "caches": {name: run(t) for name, t in CACHES.items()}}
    json.dump(result, open(os.path.join(HERE, "llamacpp-kv.json"), "w"), indent=None, separators=(",", ":"))


if __name__ == "__main__":
    main()
