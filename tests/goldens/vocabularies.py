"""The vocabularies the goldens are made with, and mistral-common's
tokenizer for each (shared by make_goldens.py and tools_goldens.py)."""
import json
import os
import tempfile

import mistral_common
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(os.path.dirname(mistral_common.__file__), "data")
SPM = {
    "v1": os.path.join(DATA, "tokenizer.model.v1"),
    "v3": os.path.join(DATA, "mistral_instruct_tokenizer_240323.model.v3"),
    # The V7 format with a SentencePiece vocabulary (no tiny model: the
    # template and the tokenizer are what it tests).
    "v7": os.path.join(DATA, "mistral_instruct_tokenizer_241114.model.v7"),
    # Tekken (NeMo's V3): byte-level BPE, with a tiny NeMo-shaped model.
    "tekken": os.path.join(DATA, "tekken_240911.json"),
    # The same vocabulary in the V7 format (Mistral Small 3.x: the system
    # prompt alone after BOS); its config's version is set to v7.
    "tekken-v7": os.path.join(DATA, "tekken_240911.json"),
    # A 512-piece SentencePiece BPE trained here, for "k", the model whose
    # sizes (multiples of 256) allow llama.cpp's k-quants.
    "k": os.path.join(HERE, "tokenizer-k.model"),
}


def mistral_tokenizer(version):
    if version != "tekken-v7":
        return MistralTokenizer.from_file(SPM[version])
    tekken = json.load(open(SPM[version]))
    tekken["config"]["version"] = "v7"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "tekken.json")
        json.dump(tekken, open(path, "w"))
        return MistralTokenizer.from_file(path)
