#!/usr/bin/env python3
"""A Tekken vocabulary in mistral-common's own file format, tekken.json, as
Magistral and Devstral repositories ship it without a tokenizer.json: v13,
its control tokens named, cut to its first pieces (3000, so the file stays
small; mistral-common cuts at `default_vocab_size` too). Writes
`tekken-v13-cut.json` and `tokens-tekken-v13-cut.json`, mistral-common's ids
for the shared texts and chats, for tests/integration/tokenizer.rs.

usage: pip install mistral-common==1.13.1; python3 tests/goldens/tekken_goldens.py
"""
import json
import os

import mistral_common
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

from vocabularies import tekken_file, token_goldens_of

HERE = os.path.dirname(os.path.abspath(__file__))
PIECES = 3000


def main():
    tekken = tekken_file("tekken-v13")
    tekken["vocab"] = tekken["vocab"][:PIECES + 10]
    tekken["config"]["num_vocab_tokens"] = len(tekken["vocab"])
    tekken["config"]["default_vocab_size"] = tekken["config"]["default_num_special_tokens"] + PIECES
    path = os.path.join(HERE, "tekken-v13-cut.json")
    with open(path, "w") as f:
        json.dump(tekken, f, ensure_ascii=False)
    tokenizer = MistralTokenizer.from_file(path)
    tokens = token_goldens_of(tokenizer, "tekken-v13-cut",
                              f"mistral-common {mistral_common.__version__}, tekken_240911.json as v13, cut to {PIECES} pieces")
    with open(os.path.join(HERE, "tokens-tekken-v13-cut.json"), "w") as f:
        json.dump(tokens, f, ensure_ascii=False, indent=1)


if __name__ == "__main__":
    main()
