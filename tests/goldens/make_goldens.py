#!/usr/bin/env python3
"""Makes the goldens that greve's Rust tests compare against, with independent
implementations: mistral-common (token ids of text and of chats), transformers
(greedy continuations of tiny random Mistral models) and llama.cpp's own
converter (the GGUF files of those models).

Run it from this folder; it rewrites the files beside it:

    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install mistral-common==1.13.1 \
        sentencepiece protobuf numpy safetensors torch transformers==5.24.0
    pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36   # the sdist, for the converter
    tar xzf llama_cpp_python-0.3.36.tar.gz
    /tmp/venv/bin/python make_goldens.py --llama-cpp llama_cpp_python-0.3.36/vendor/llama.cpp

(`--tokens-only` remakes the tokenizer and token goldens alone, without
llama.cpp; `--models tekken` remakes one tiny model.)

The tiny models' weights come from a formula (`weight_values`) that the Rust
tests implement too (tests/common/mod.rs), so only the GGUF files, which must
come from llama.cpp's converter, are committed as weights.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import torch
import mistral_common
from safetensors.torch import save_file
from transformers import MistralConfig, MistralForCausalLM

from vocabularies import CORPUS, SPM, mistral_tokenizer, token_goldens_of

HERE = os.path.dirname(os.path.abspath(__file__))

# The tiny models: Mistral's architecture, real vocabularies, few weights.
TINY = {
    "v1": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, head_dim=8, rope_theta=10000.0, sliding_window=4096,
               max_position_embeddings=32768, rms_norm_eps=1e-5),
    "v3": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, head_dim=8, rope_theta=1000000.0, sliding_window=None,
               max_position_embeddings=32768, rms_norm_eps=1e-5),
    "k": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, head_dim=64, rope_theta=1000000.0, sliding_window=None,
              max_position_embeddings=32768, rms_norm_eps=1e-5),
    # NeMo's shape in small: heads × head size (32) is not the hidden size
    # (16), and the real Tekken vocabulary (131072), whose embeddings are
    # most of the file, hence the narrow hidden size.
    "tekken": dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                   num_key_value_heads=1, head_dim=16, rope_theta=1000000.0, sliding_window=None,
                   max_position_embeddings=1024000, rms_norm_eps=1e-5),
}
NEW_TOKENS = 24
GGUF_TYPES = {"v1": ["f16", "q8_0"], "v3": ["f16"], "k": ["f16"], "tekken": ["f16"]}


def train_k_tokenizer(seeds):
    """SentencePiece BPE with byte fallback, Mistral's kind, on the seed texts."""
    import sentencepiece

    lines = [l for f in sorted(os.listdir(seeds)) for l in open(os.path.join(seeds, f)) if l.strip()]
    prefix = SPM["k"][: -len(".model")]
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_prefix=prefix, vocab_size=512, model_type="bpe",
        byte_fallback=True, character_coverage=0.995, num_threads=1, add_dummy_prefix=True,
        remove_extra_whitespaces=False, normalization_rule_name="identity", unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
    os.remove(prefix + ".vocab")


def token_goldens(version):
    source = f"mistral-common {mistral_common.__version__}, {os.path.basename(SPM[version])}" + (
        " as version v7" if version == "tekken-v7" else "")
    return token_goldens_of(mistral_tokenizer(version), version, source)


def fnv1a64(name):
    h = 0xCBF29CE484222325
    for b in name.encode():
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def weight_values(name, n, scale, offset):
    """offset + scale * k / 64 with k in [-64, 64] from splitmix64: exact in bf16 and f16."""
    with np.errstate(over="ignore"):
        i = np.arange(1, n + 1, dtype=np.uint64)
        z = np.uint64(fnv1a64(name)) + i * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    k = (z % np.uint64(129)).astype(np.int64) - 64
    return (offset + scale * k.astype(np.float64) / 64.0).astype(np.float32)


def projection_scale(cfg):
    """A power of two (so weights stay exact in bf16) near 1.4/sqrt(hidden):
    wider models get smaller weights, or their activations blow up and every
    rounding difference flips a greedy token."""
    return 0.25 if cfg["hidden_size"] <= 32 else 0.0625


def scale_of(name, projection):
    """(scale, offset) by tensor role; mirrored in tests/common/mod.rs."""
    if name.endswith("norm.weight"):
        return 0.5, 1.0
    if "embed_tokens" in name:
        return 1.0, 0.0
    if "lm_head" in name:
        return 0.5, 0.0
    return projection, 0.0


def tiny_state_dict(cfg, vocab):
    h, f, hd = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    shapes = {"model.embed_tokens.weight": (vocab, h), "model.norm.weight": (h,), "lm_head.weight": (vocab, h)}
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        shapes.update({
            p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (q, h), p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, q),
            p + "mlp.gate_proj.weight": (f, h), p + "mlp.up_proj.weight": (f, h),
            p + "mlp.down_proj.weight": (h, f),
        })
    out = {}
    for name, shape in shapes.items():
        scale, offset = scale_of(name, projection_scale(cfg))
        out[name] = torch.from_numpy(weight_values(name, int(np.prod(shape)), scale, offset).reshape(shape))
    return out


def write_tiny_folder(folder, version, cfg, state, tokenizer_json):
    """The layout of a Hub repo: sharded bf16 safetensors with an index, configs, tokenizers."""
    vocab = state["model.embed_tokens.weight"].shape[0]
    config = dict(architectures=["MistralForCausalLM"], model_type="mistral", vocab_size=vocab,
                  hidden_act="silu", bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
                  torch_dtype="bfloat16", **cfg)
    json.dump(config, open(os.path.join(folder, "config.json"), "w"), indent=2)
    names = sorted(state)
    shards = [n for n in names if "layers.1." not in n], [n for n in names if "layers.1." in n]
    weight_map = {}
    for i, part in enumerate(shards):
        file = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({n: state[n].to(torch.bfloat16).contiguous() for n in part}, os.path.join(folder, file),
                  metadata={"format": "pt"})
        weight_map.update({n: file for n in part})
    json.dump({"metadata": {}, "weight_map": weight_map}, open(os.path.join(folder, "model.safetensors.index.json"), "w"))
    shutil.copy(tokenizer_json, os.path.join(folder, "tokenizer.json"))
    shutil.copy(SPM[version], os.path.join(folder, "tokenizer.model"))
    json.dump({"add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
               "unk_token": "<unk>", "tokenizer_class": "LlamaTokenizer"},
              open(os.path.join(folder, "tokenizer_config.json"), "w"))
    json.dump({"bos_token_id": 1, "eos_token_id": 2}, open(os.path.join(folder, "generation_config.json"), "w"))
    return config


def greedy_continuations(model, state, prompts):
    """The model with `state` loaded: for each prompt, its greedy
    continuation and the first 16 logits after it."""
    model.load_state_dict(state, strict=True)
    model.eval()
    continuations = []
    with torch.no_grad():
        for ids in prompts:
            out = model.generate(torch.tensor([ids]), max_new_tokens=NEW_TOKENS, do_sample=False,
                                 eos_token_id=2, pad_token_id=2)
            logits = model(torch.tensor([ids])).logits[0, -1]
            continuations.append({"prompt": ids, "greedy": out[0, len(ids):].tolist(),
                                  "first_logits": [round(float(x), 5) for x in logits[:16]]})
    return continuations


def model_goldens(version, llama_cpp, prompts):
    import sentencepiece

    cfg = TINY[version]
    if version == "tekken":
        vocab = 131072
    else:
        vocab = sentencepiece.SentencePieceProcessor(model_file=SPM[version]).vocab_size()
    state = tiny_state_dict(cfg, vocab)
    with tempfile.TemporaryDirectory() as tmp:
        # A fixed folder name: the converter records it in general.name.
        folder = os.path.join(tmp, f"tiny-{version}")
        os.mkdir(folder)
        if version == "tekken":
            config = write_tekken_folder(folder, cfg, state)
        else:
            tokenizer = os.path.join(HERE, f"tokenizer-{version}.json")
            config = write_tiny_folder(folder, version, cfg, state, tokenizer)
        model = MistralForCausalLM(MistralConfig(**{k: v for k, v in config.items() if k != "architectures"}))
        continuations = greedy_continuations(model, state, prompts)
        env = dict(os.environ, PYTHONPATH=os.path.join(llama_cpp, "gguf-py"))
        convert = [sys.executable, os.path.join(llama_cpp, "convert_hf_to_gguf.py"), folder]
        for outtype in GGUF_TYPES[version]:
            target = os.path.join(HERE, f"tiny-{version}-{outtype}.gguf")
            subprocess.run(convert + ["--outtype", outtype, "--outfile", target], check=True, env=env,
                           stdout=subprocess.DEVNULL)
        if version == "v1":
            # A vocabulary-only GGUF, as llama.cpp publishes them for its tokenizer tests.
            target = os.path.join(HERE, "vocab-v1.gguf")
            subprocess.run(convert + ["--vocab-only", "--outfile", target], check=True, env=env,
                           stdout=subprocess.DEVNULL)
            other_tokenizer_kind(target, os.path.join(HERE, "vocab-gpt2-kind.gguf"), llama_cpp)
    return {"version": version, "transformers": __import__("transformers").__version__, "config": cfg,
            "vocab_size": vocab, "projection_scale": projection_scale(cfg), "new_tokens": NEW_TOKENS, "continuations": continuations}


def other_tokenizer_kind(source, target, llama_cpp):
    """The vocabulary-only file with tokenizer.ggml.model set to "gpt2", a
    kind greve does not read: it must refuse it, not give wrong ids."""
    sys.path.insert(0, os.path.join(llama_cpp, "gguf-py"))
    import gguf

    reader = gguf.GGUFReader(source)
    writer = gguf.GGUFWriter(target, arch="llama")
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        value = field.contents()
        if field.name == "tokenizer.ggml.model":
            value = "gpt2"
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, value, vtype, sub_type=sub)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()


def score_ranked_merges(proto):
    """BPE merges ranked by the SentencePiece score of the merged piece, as
    transformers' converter made them before version 5 (and so as the Hub's
    Mistral tokenizer.json files hold them). transformers 5 ranks by piece id
    instead, which merges runs of spaces too early (their pieces have the
    lowest score, -1e9, but low ids)."""
    vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    merges = []
    for piece, i in vocab.items():
        local = [(piece[:k], piece[k:]) for k in range(1, len(piece)) if piece[:k] in vocab and piece[k:] in vocab]
        local.sort(key=lambda m: (vocab[m[0]], vocab[m[1]]))
        merges.extend((l, r, proto.pieces[i].score) for l, r in local)
    merges.sort(key=lambda m: m[2], reverse=True)
    return vocab, [(l, r) for l, r, _ in merges]


def tokenizer_json(version):
    """tokenizer.json in the Hub's layout for a SentencePiece model: the v1
    file with the legacy normaliser layout (Prepend + Replace), the v3 and v7
    files with the Metaspace pre-tokenizer, so that both layouts are tested."""
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(open(SPM[version], "rb").read())
    vocab, merges = score_ranked_merges(proto)
    tok = Tokenizer(BPE(vocab, merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    if version in ("v1", "k"):
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    # Control pieces are special added tokens, user-defined ones plain added tokens.
    tok.add_special_tokens([AddedToken(p.piece, normalized=False, special=True)
                            for p in proto.pieces if p.type in (2, 3)])
    tok.add_tokens([AddedToken(p.piece, normalized=False, special=False) for p in proto.pieces if p.type == 4])
    tok.save(os.path.join(HERE, f"tokenizer-{version}.json"), pretty=False)


def write_tekken_folder(folder, cfg, state):
    """A NeMo-like repo: one bf16 safetensors file, and the tokenizer.json
    transformers makes of mistral-common's Tekken file. llama.cpp's converter
    writes its vocabulary as a `gpt2` kind with merges and the `tekken`
    pre-tokenizer; the GGUF is the golden (and greve's tests read the
    vocabulary from it)."""
    from transformers.integrations.mistral import convert_tekken_tokenizer

    convert_tekken_tokenizer(SPM["tekken"]).save_pretrained(folder)
    config = dict(architectures=["MistralForCausalLM"], model_type="mistral", vocab_size=131072,
                  hidden_act="silu", bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
                  torch_dtype="bfloat16", **cfg)
    json.dump(config, open(os.path.join(folder, "config.json"), "w"), indent=2)
    save_file({n: t.to(torch.bfloat16).contiguous() for n, t in state.items()},
              os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    return config


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-cpp", help="llama.cpp source folder (convert_hf_to_gguf.py)")
    ap.add_argument("--tokens-only", action="store_true", help="only the tokenizer and token goldens")
    ap.add_argument("--seeds", default=os.path.join(HERE, "../../../shared/seeds"), help="texts for tokenizer-k")
    ap.add_argument("--models", nargs="*", default=["v1", "v3", "k", "tekken"], help="the tiny models to remake")
    args = ap.parse_args()
    for version in ("v1", "v3", "v7", "tekken", "tekken-v7"):
        if not version.startswith("tekken"):
            tokenizer_json(version)
        tokens = token_goldens(version)
        json.dump(tokens, open(os.path.join(HERE, f"tokens-{version}.json"), "w"), ensure_ascii=False, indent=1)
    if args.tokens_only:
        return
    if not args.llama_cpp:
        ap.error("--llama-cpp is needed for the tiny models")
    if "k" in args.models:
        train_k_tokenizer(args.seeds)
        tokenizer_json("k")
    for version in args.models:
        if version == "k":
            import sentencepiece

            spm = sentencepiece.SentencePieceProcessor(model_file=SPM["k"])
            prompts = [[1] + spm.encode(t) for t in CORPUS[:6]]
        else:
            tokens = json.load(open(os.path.join(HERE, f"tokens-{version}.json")))
            prompts = [chat["ids"] for chat in tokens["chats"]]
        models = model_goldens(version, args.llama_cpp, prompts)
        json.dump(models, open(os.path.join(HERE, f"tiny-{version}.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
