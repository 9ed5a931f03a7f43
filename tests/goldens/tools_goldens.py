#!/usr/bin/env python3
"""Token ids of conversations with tools, as mistral-common encodes them,
for tests/integration/tokenizer.rs to hold greve's rendering to.

Each case is an OpenAI request body (`messages`, `tools`), read by
mistral-common's own `ChatCompletionRequest.from_openai` and encoded by
`encode_chat_completion` with the V3 SentencePiece vocabulary (Mistral 7B
v0.3), NeMo's Tekken (V3), the V7 SentencePiece vocabulary, and Tekken as V7
(Mistral Small 3.x's format), V11 and V13 (Magistral Small 1.2, Devstral
Small 2, Ministral 3, whose thinking `reasoning_content` carries): greve
reads the same body with its API parser. With V13, also the system prompt
reasoning releases ship, its example of thinking between the control tokens.

usage: pip install 'mistral-common[sentencepiece]'; python3 tests/goldens/tools_goldens.py
"""
import json
import os

import mistral_common
from mistral_common.protocol.instruct.request import ChatCompletionRequest

from vocabularies import mistral_tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))

METEO = {"type": "function", "function": {
    "name": "meteo",
    "description": "La météo d'une ville, aujourd'hui",
    "parameters": {"type": "object", "properties": {
        "ville": {"type": "string", "description": "Le nom de la ville"},
        "unite": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["ville"]}}}
GREVES = {"type": "function", "function": {
    "name": "greves_du_jour",
    "description": "Les grèves annoncées",
    "parameters": {"type": "object", "properties": {
        "secteur": {"type": "string"}, "jours": {"type": "integer", "minimum": 1}}}}}


def call(id, name, arguments):
    return {"id": id, "type": "function", "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)}}


CASES = [
    {"tools": [METEO], "messages": [
        {"role": "user", "content": "Quel temps fait-il à Lyon ?"}]},
    {"tools": [METEO, GREVES], "messages": [
        {"role": "system", "content": "Réponds brièvement."},
        {"role": "user", "content": "Quel temps à Besançon ?"},
        {"role": "assistant", "content": None, "tool_calls": [call("abcDEF123", "meteo", {"ville": "Besançon"})]},
        {"role": "tool", "tool_call_id": "abcDEF123", "content": json.dumps({"ciel": "gris", "temp": 4})},
        {"role": "assistant", "content": "Gris, 4 degrés."},
        {"role": "user", "content": "Et les grèves ?"}]},
    {"tools": [METEO, GREVES], "messages": [
        {"role": "user", "content": "Météo à Paris et grèves dans les transports ?"},
        {"role": "assistant", "content": None, "tool_calls": [
            call("abcDEF123", "meteo", {"ville": "Paris", "unite": "celsius"}),
            call("zyx987WVU", "greves_du_jour", {"secteur": "transports", "jours": 2})]},
        {"role": "tool", "tool_call_id": "abcDEF123", "content": "Pluie fine."},
        {"role": "tool", "tool_call_id": "zyx987WVU", "content": json.dumps([{"ligne": "RER B"}, {"ligne": "13"}])}]},
    {"messages": [
        {"role": "user", "content": "Et hier ?"},
        {"role": "assistant", "content": None, "tool_calls": [call("Q1w2E3r4T", "meteo", {"ville": "Nantes"})]},
        {"role": "tool", "tool_call_id": "Q1w2E3r4T", "content": "{\"ciel\": \"bleu\"}"},
        {"role": "assistant", "content": "Bleu.  "},
        {"role": "user", "content": "Merci !"}]},
]
# V7 also writes an assistant's text before its calls.
CASES_V7 = CASES + [
    {"tools": [METEO], "messages": [
        {"role": "system", "content": "Réponds brièvement."},
        {"role": "user", "content": "Quel temps à Brest ?"},
        {"role": "assistant", "content": "Je regarde.", "tool_calls": [call("abcDEF123", "meteo", {"ville": "Brest"})]},
        {"role": "tool", "tool_call_id": "abcDEF123", "content": "Crachin."}]},
]

# v13 also carries an assistant's thinking (`reasoning_content`, read as a
# ThinkChunk), and cuts no trailing space of the text after it.
CASES_V13 = CASES_V7 + [
    {"messages": [
        {"role": "system", "content": "Réponds brièvement."},
        {"role": "user", "content": "Combien font 2 + 2 ?"},
        {"role": "assistant", "reasoning_content": "Deux et deux, quatre.", "content": "4.  "},
        {"role": "user", "content": "Et 3 + 3 ?"}]},
    {"tools": [METEO], "messages": [
        {"role": "user", "content": "Quel temps à Brest ?"},
        {"role": "assistant", "reasoning_content": "Il faut demander.", "content": None,
         "tool_calls": [call("abcDEF123", "meteo", {"ville": "Brest"})]},
        {"role": "tool", "tool_call_id": "abcDEF123", "content": "Crachin."},
        {"role": "assistant", "reasoning_content": "Rien d'étonnant.", "content": "Crachin."},
        {"role": "user", "content": "Et demain ?"}]},
]
CASES_BY_VERSION = {"v7": CASES_V7, "tekken-v7": CASES_V7, "tekken-v11": CASES_V7, "tekken-v13": CASES_V13}


# The system prompt a reasoning release ships (SYSTEM_PROMPT.txt), cut at its
# [THINK] and [/THINK] as the model cards cut it: text, a ThinkChunk, text.
# A user's own system prompt follows it after a blank line, as greve
# composes them.
REASONING_PROMPT = "reasoning-prompt.txt"
REASONING_CASES = [
    {"system": None, "messages": [{"role": "user", "content": "Combien font 2 + 2 ?"}]},
    {"system": "Réponds en une phrase.", "messages": [
        {"role": "user", "content": "Combien font 2 + 2 ?"},
        {"role": "assistant", "reasoning_content": "Deux et deux.", "content": "Quatre."},
        {"role": "user", "content": "Et 3 + 3 ?"}]},
]


def reasoning_prompt_cases(tokenizer):
    from mistral_common.protocol.instruct.chunk import TextChunk, ThinkChunk
    from mistral_common.protocol.instruct.messages import SystemMessage
    text = open(os.path.join(HERE, REASONING_PROMPT), encoding="utf-8").read()
    before, rest = text.split("[THINK]", 1)
    thinking, after = rest.split("[/THINK]", 1)
    cases = []
    for case in REASONING_CASES:
        last = after if case["system"] is None else after.rstrip() + "\n\n" + case["system"]
        system = SystemMessage(content=[TextChunk(text=before), ThinkChunk(thinking=thinking, closed=True),
                                        TextChunk(text=last)])
        request = ChatCompletionRequest.from_openai(case["messages"])
        request.messages.insert(0, system)
        tokenized = tokenizer.encode_chat_completion(request)
        cases.append({**case, "ids": tokenized.tokens, "text": tokenized.text})
    return {"file": REASONING_PROMPT, "cases": cases}


def main():
    golden = {"mistral_common": mistral_common.__version__}
    golden["reasoning_prompt"] = reasoning_prompt_cases(mistral_tokenizer("tekken-v13"))
    for version in ("v3", "tekken", "v7", "tekken-v7", "tekken-v11", "tekken-v13"):
        tokenizer = mistral_tokenizer(version)
        cases = []
        for case in CASES_BY_VERSION.get(version, CASES):
            request = ChatCompletionRequest.from_openai(case["messages"], tools=case.get("tools"))
            tokenized = tokenizer.encode_chat_completion(request)
            cases.append({"request": case, "ids": tokenized.tokens, "text": tokenized.text})
        golden[version] = cases
    with open(os.path.join(HERE, "tools.json"), "w") as f:
        json.dump(golden, f, ensure_ascii=False, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
