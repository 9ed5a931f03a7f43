#!/usr/bin/env python3
"""Makes tiny-ministral3.json: greedy continuations and logits of a tiny
random Ministral 3 model (transformers' `ministral3`, YaRN rope and the
llama-4 query scaling), whose original window is 16 positions so that both
act within a short prompt.

    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install torch==2.9.* transformers==5.24.0 \
        safetensors numpy sentencepiece protobuf mistral-common==1.13.1
    /tmp/venv/bin/python ministral3_goldens.py --llama-cpp LLAMA_CPP

The weights come from make_goldens.py's formula, which the Rust tests
implement too (tests/integration/common/mod.rs), so only the config and the
results are committed; the vocabulary is v3's (tokenizer-v3.json). With
`--llama-cpp` (a llama.cpp source tree, such as the one llama-cpp-python
0.3.36's sdist vendors), llama.cpp's own converter also writes the model
as tiny-ministral3-f16.gguf (arch `mistral3`).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import transformers
from transformers import Ministral3Config, Ministral3ForCausalLM

from make_goldens import HERE, NEW_TOKENS, greedy_continuations, projection_scale, tiny_state_dict, write_tiny_folder

CFG = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2, head_dim=16, max_position_embeddings=1024, rms_norm_eps=1e-5)
# Ministral 3's rope in small: its factor and betas, an original window of
# 16 positions instead of 16384, and mscale_all_dim 0 (none, to
# transformers and llama.cpp alike; the converter needs the key), so that
# YaRN's attention factor (0.1·ln(factor) + 1) is not 1 and is checked too.
ROPE = dict(rope_type="yarn", rope_theta=1000000.0, factor=4.0, original_max_position_embeddings=16,
            beta_fast=32.0, beta_slow=1.0, mscale=1.0, mscale_all_dim=0.0, llama_4_scaling_beta=0.1)
VOCAB = 32768
PROMPTS = [
    [1, 3, 1027, 1136, 1171, 4],
    [1] + [1000 + 37 * i % 5000 for i in range(40)],
    [1] + [20000 + 11 * i for i in range(70)],
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-cpp", help="llama.cpp source folder (convert_hf_to_gguf.py)")
    args = ap.parse_args()
    config = dict(architectures=["Ministral3ForCausalLM"], model_type="ministral3", vocab_size=VOCAB,
                  hidden_act="silu", bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
                  sliding_window=None, rope_parameters=ROPE, dtype="bfloat16", **CFG)
    model = Ministral3ForCausalLM(Ministral3Config(**{k: v for k, v in config.items() if k != "architectures"}))
    state = tiny_state_dict(dict(CFG), VOCAB)
    continuations = greedy_continuations(model, state, PROMPTS)
    golden = {"version": "ministral3", "transformers": transformers.__version__, "config": CFG,
              "hf_config": config, "tokenizer": "v3", "vocab_size": VOCAB, "projection_scale": projection_scale(CFG),
              "new_tokens": NEW_TOKENS, "continuations": continuations}
    json.dump(golden, open(os.path.join(HERE, "tiny-ministral3.json"), "w"), indent=1)
    if args.llama_cpp:
        convert(config, state, args.llama_cpp)


def convert(config, state, llama_cpp):
    """The Hub layout of the tiny model, through llama.cpp's converter."""
    with tempfile.TemporaryDirectory() as tmp:
        # A fixed folder name: the converter records it in general.name.
        folder = os.path.join(tmp, "tiny-ministral3")
        os.mkdir(folder)
        write_tiny_folder(folder, "v3", CFG, state, os.path.join(HERE, "tokenizer-v3.json"))
        json.dump(config, open(os.path.join(folder, "config.json"), "w"), indent=2)
        env = dict(os.environ, PYTHONPATH=os.path.join(llama_cpp, "gguf-py"))
        target = os.path.join(HERE, "tiny-ministral3-f16.gguf")
        subprocess.run([sys.executable, os.path.join(llama_cpp, "convert_hf_to_gguf.py"), folder,
                        "--outtype", "f16", "--outfile", target], check=True, env=env, stdout=subprocess.DEVNULL)


if __name__ == "__main__":
    main()
