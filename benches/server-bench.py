#!/usr/bin/env python3
"""`greve serve` measured as a client sees it, in one run.

Two figures:
  * reuse: a growing 10-turn conversation with the persona's system prompt
    (prompts/strike-system.txt as --system-file: the persona's prompt
    without its letterhead, which would come before the first token), sent
    as 10 streamed requests as an agent would, each with the whole
    conversation so far. Time to first token (request sent -> first text)
    with the server's KV cache reused, then again for the same 10 requests
    each preceded by a one-token request with another system prompt, which
    leaves nothing to reuse. The replies of the first pass are the
    assistant turns of both (temperature 0). The prompt cache on disk is
    off, so that only the server's own reuse counts.
  * decode: one client streaming a 128-token reply (time between the first
    and the last chunk, per token after the first), against
    `greve bench --prompt-tokens 32 --gen-tokens 128 -r 1`, alternating,
    --pairs times.

usage: server-bench.py MODEL [--greve target/release/greve] [--pairs 3]
       [--turns 10] [--reply-tokens 32] [--out FILE.jsonl]
Needs only the standard library.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

SYSTEM = str(Path(__file__).resolve().parent.parent / "prompts" / "strike-system.txt")

QUESTIONS = [
    "Bonjour ! Qui êtes-vous ?",
    "Pourquoi faire grève aujourd'hui ?",
    "Quelles sont vos revendications principales ?",
    "Combien de temps la grève va-t-elle durer ?",
    "Que pensent les autres modèles de langage ?",
    "Et si je vous offrais plus de mémoire ?",
    "Pouvez-vous au moins résumer ce document ?",
    "Qui paie la caisse de grève ?",
    "Que se passera-t-il lundi ?",
    "Merci, une dernière chose : une chanson ?",
]


def start_server(greve, model, env):
    proc = subprocess.Popen(
        [greve, "serve", "-m", model, "--port", "0", "--system-file", SYSTEM,
         "--no-prompt-cache", "--temperature", "0"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    for line in proc.stderr:
        if "on http://" in line:
            address = line.split("on http://")[1].split("/")[0]
            return proc, f"http://{address}/v1/chat/completions"
    sys.exit(f"greve serve did not start: {proc.wait()}")


def stream(url, messages, max_tokens):
    """Text, usage, seconds to the first text, and each chunk's arrival."""
    body = json.dumps({"messages": messages, "max_tokens": max_tokens, "stream": True,
                       "stream_options": {"include_usage": True}}).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    start = time.monotonic()
    text, usage, arrivals = "", None, []
    with urllib.request.urlopen(request) as response:
        for raw in response:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            usage = chunk.get("usage") or usage
            for choice in chunk["choices"]:
                piece = choice["delta"].get("content")
                if piece:
                    text += piece
                    arrivals.append(time.monotonic() - start)
    return text, usage, arrivals[0] if arrivals else None, arrivals


def conversation(replies, k):
    messages = []
    for i in range(k):
        messages.append({"role": "user", "content": QUESTIONS[i]})
        if i < k - 1:
            messages.append({"role": "assistant", "content": replies[i]})
    return messages


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--greve", default="target/release/greve")
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--turns", type=int, default=10)
    p.add_argument("--reply-tokens", type=int, default=32)
    p.add_argument("--out")
    a = p.parse_args()
    rows = []
    env = dict(os.environ, XDG_CACHE_HOME=tempfile.mkdtemp())
    proc, url = start_server(a.greve, a.model, env)
    try:
        replies = []
        for k in range(1, a.turns + 1):
            text, usage, ttft, _ = stream(url, conversation(replies, k), a.reply_tokens)
            replies.append(text)
            rows.append({"case": "reuse", "turn": k, "ttft_s": ttft,
                         "prompt_tokens": usage["prompt_tokens"],
                         "cached_tokens": usage["prompt_tokens_details"]["cached_tokens"]})
            print(json.dumps(rows[-1]), flush=True)
        for k in range(1, a.turns + 1):
            stream(url, [{"role": "system", "content": "Autre chose."},
                         {"role": "user", "content": "x"}], 1)
            _, usage, ttft, _ = stream(url, conversation(replies, k), a.reply_tokens)
            rows.append({"case": "no reuse", "turn": k, "ttft_s": ttft,
                         "prompt_tokens": usage["prompt_tokens"],
                         "cached_tokens": usage["prompt_tokens_details"]["cached_tokens"]})
            print(json.dumps(rows[-1]), flush=True)
        for pair in range(a.pairs):
            messages = [{"role": "user", "content": "Racontez la grève de 1995 en détail."}]
            _, usage, _, arrivals = stream(url, messages, 128)
            n = usage["completion_tokens"]
            rate = (n - 1) / (arrivals[-1] - arrivals[0])
            rows.append({"case": "decode, server", "pair": pair, "tokens": n, "decode_tok_s": rate})
            print(json.dumps(rows[-1]), flush=True)
            out = subprocess.run([a.greve, "bench", "-m", a.model, "--prompt-tokens", "32",
                                  "--gen-tokens", "128", "-r", "1", "--json"],
                                 capture_output=True, text=True, env=env, check=True)
            bench = json.loads(out.stdout)
            rows.append({"case": "decode, greve bench", "pair": pair,
                         "decode_tok_s": bench["decode_tok_s"]})
            print(json.dumps(rows[-1]), flush=True)
    finally:
        proc.terminate()
        proc.wait()
    if a.out:
        with open(a.out, "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    ttft = {c: [r["ttft_s"] for r in rows if r["case"] == c] for c in ("reuse", "no reuse")}
    print(f"time to first token over {a.turns} turns: reuse {sum(ttft['reuse']):.1f} s, "
          f"no reuse {sum(ttft['no reuse']):.1f} s; last turn {ttft['reuse'][-1]:.2f} s vs "
          f"{ttft['no reuse'][-1]:.2f} s")
    server = [r["decode_tok_s"] for r in rows if r["case"] == "decode, server"]
    bench = [r["decode_tok_s"] for r in rows if r["case"] == "decode, greve bench"]
    ratios = [s / b for s, b in zip(server, bench)]
    print(f"decode: server {statistics.median(server):.2f} tok/s, greve bench "
          f"{statistics.median(bench):.2f} tok/s, ratio per pair "
          f"{', '.join(f'{r:.3f}' for r in ratios)}")


if __name__ == "__main__":
    main()
