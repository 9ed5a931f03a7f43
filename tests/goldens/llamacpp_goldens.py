#!/usr/bin/env python3
"""Greedy continuations by llama.cpp (llama-cpp-python) of the committed tiny
GGUF files, for the prompts of tiny-v*.json. Run after make_goldens.py, with a
Python that has llama-cpp-python 0.3.36 (../shared/tools/setup-bench-env.sh
makes one):

    ~/.cache/greve-bench/venv/bin/python llamacpp_goldens.py
"""
import json
import os

import llama_cpp

HERE = os.path.dirname(os.path.abspath(__file__))
FILES = {"v1": ["f16", "q8_0"], "v3": ["f16"]}


def greedy(llm, prompt, n):
    llm.reset()
    out = []
    for token in llm.generate(prompt, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
        if token == llm.token_eos() or len(out) == n:
            break
        out.append(token)
    return out


def main():
    result = {"llama_cpp_python": llama_cpp.__version__, "files": {}}
    for version, types in FILES.items():
        golden = json.load(open(os.path.join(HERE, f"tiny-{version}.json")))
        n = golden["new_tokens"]
        for t in types:
            name = f"tiny-{version}-{t}.gguf"
            # An f32 KV cache (type 0), as greve keeps on CPU: llama.cpp defaults to
            # f16, whose rounding alone can flip a near-tie of a random model.
            llm = llama_cpp.Llama(os.path.join(HERE, name), n_ctx=512, n_threads=1, verbose=False, seed=0,
                                  type_k=0, type_v=0)
            result["files"][name] = [
                {"prompt": c["prompt"], "greedy": greedy(llm, c["prompt"], n)} for c in golden["continuations"]
            ]
    json.dump(result, open(os.path.join(HERE, "llamacpp.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
