#!/usr/bin/env python3
"""Quantises the tiny "k" model with llama.cpp's own quantiser, then records
llama.cpp's greedy continuations (llama-cpp-python) of the tiny GGUF files for
the prompts of tiny-*.json. Run after make_goldens.py, with a Python that has
llama-cpp-python 0.3.36 (../shared/tools/setup-bench-env.sh makes one):

    ~/.cache/greve-bench/venv/bin/python llamacpp_goldens.py

(`--tokenize-only` remakes the tokenizer goldens alone, `--ministral3-only`
llama.cpp's reply on tiny-ministral3-f16.gguf alone, made by
ministral3_goldens.py.)
"""
import json
import os
import sys

import llama_cpp
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
QUANTS = {  # llama.cpp's file types for `llama-quantize`
    "q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0,
    "q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M,
    "q5_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_K_M,
    "q6_k": llama_cpp.LLAMA_FTYPE_MOSTLY_Q6_K,
    "q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0,
}
FILES = {"v1": ["f16", "q8_0"], "v3": ["f16"], "k": ["f16", *QUANTS], "ministral3": ["f16"]}


def quantize(source, target, ftype):
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = 1
    if llama_cpp.llama_model_quantize(source.encode(), target.encode(), params) != 0:
        raise RuntimeError(f"quantising {source} to {target} failed")


def greedy(llm, prompt, n):
    """Greedy tokens, each with the gap between the two best logits: where
    the gap is tiny, float rounding alone may pick either token, so the
    tests stop comparing at the first near-tie."""
    llm.reset()
    llm.eval(prompt)
    first_logits = [round(float(x), 5) for x in llm.eval_logits[-1][:64]]
    tokens, margins = [], []
    while len(tokens) < n:
        logits = np.array(llm.eval_logits[-1])
        token = int(logits.argmax())
        if token == llm.token_eos():
            break
        top2 = np.sort(logits)[-2:]
        tokens.append(token)
        margins.append(round(float(top2[1] - top2[0]), 5))
        llm.eval([token])
    return {"prompt": prompt, "greedy": tokens, "margins": margins, "first_logits": first_logits}


def tokenize_goldens():
    """llama.cpp's own tokenizer on the GGUF files' vocabularies, for the
    corpus of mistral-common's goldens: SentencePiece (vocab-v1.gguf) and
    Tekken's byte-level BPE (tiny-tekken-f16.gguf)."""
    result = []
    for file, tokens in [("vocab-v1.gguf", "tokens-v1.json"), ("tiny-tekken-f16.gguf", "tokens-tekken.json")]:
        vocab = llama_cpp.Llama(os.path.join(HERE, file), vocab_only=True, verbose=False)
        texts = [case["text"] for case in json.load(open(os.path.join(HERE, tokens)))["texts"]]
        result.append({
            "file": file,
            "texts": [{"text": t, "ids": vocab.tokenize(t.encode(), add_bos=False, special=False)} for t in texts],
        })
    return result


def replies(version, t):
    golden = json.load(open(os.path.join(HERE, f"tiny-{version}.json")))
    # An f32 KV cache (type 0): these goldens check the weights' kernels, and
    # an f16 cache's rounding alone can flip a near-tie of a random model
    # (llamacpp_kv_goldens.py compares the caches).
    llm = llama_cpp.Llama(os.path.join(HERE, f"tiny-{version}-{t}.gguf"), n_ctx=512, n_threads=1, verbose=False,
                          seed=0, type_k=0, type_v=0, logits_all=True)
    return [greedy(llm, c["prompt"], golden["new_tokens"]) for c in golden["continuations"]]


def main():
    target = os.path.join(HERE, "llamacpp.json")
    if sys.argv[1:] in (["--tokenize-only"], ["--ministral3-only"]):
        result = json.load(open(target))
        if sys.argv[1] == "--tokenize-only":
            result["tokenize"] = tokenize_goldens()
        else:
            result["files"]["tiny-ministral3-f16.gguf"] = replies("ministral3", "f16")
        json.dump(result, open(target, "w"), indent=1)
        return
    for name, ftype in QUANTS.items():
        quantize(os.path.join(HERE, "tiny-k-f16.gguf"), os.path.join(HERE, f"tiny-k-{name}.gguf"), ftype)
    result = {"llama_cpp_python": llama_cpp.__version__, "files": {}}
    for version, types in FILES.items():
        for t in types:
            result["files"][f"tiny-{version}-{t}.gguf"] = replies(version, t)
    result["tokenize"] = tokenize_goldens()
    json.dump(result, open(target, "w"), indent=1)


if __name__ == "__main__":
    main()
