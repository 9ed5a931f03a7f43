#!/usr/bin/env python3
"""Time to first token with the prompt cache cold (empty) and warm, in one run.

Two cases, as a user meets them:
  * persona: `greve ask --strike=raleuse -n 1 PROMPT`, whose system prompt is
    the same on every call; cold and warm runs alternate (--pairs), each pair
    followed by the same question without the persona (plain), the cost the
    persona should come down to.
  * resume: a saved conversation of about --conversation-tokens tokens (the
    pages of docs/, in turns), answered once cold with
    `--load conv.json --save saved.json`, which computes it all and saves its
    keys and values, then once warm with `--load saved.json`.

Each run is a fresh process; the figures are its --json fields (ttft_ms
counts the read from the cache, cache_read_ms is that read alone) and its
wall time (model load included). The cache lives in a temporary
XDG_CACHE_HOME. A warm run reads its entry from the page cache (the file
was just written); with --drop-caches (root), one more resume reads it from
the disk itself.

usage: prompt-cache-bench.py MODEL [--greve target/release/greve] [--pairs 3]
       [--conversation-tokens 4000] [--drop-caches] [--out FILE.jsonl]
Needs only the standard library.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(greve, args, env):
    start = time.monotonic()
    out = subprocess.run([greve, *args], env=env, capture_output=True, text=True)
    wall = time.monotonic() - start
    if out.returncode != 0:
        sys.exit(f"greve {' '.join(args)} failed: {out.stderr.strip()}")
    if "--json" not in args:
        return None
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["wall_s"] = wall
    return result


def conversation(tokens_wanted, chars_per_token):
    """Alternating turns cut from greve's own documentation, about `tokens_wanted` long."""
    pages = sorted((ROOT / "docs").glob("*.md"))
    text = " ".join(p.read_text() for p in pages)
    words, messages, budget = text.split(), [], int(tokens_wanted * chars_per_token)
    at, used = 0, 0
    while used < budget and at < len(words):
        chunk = " ".join(words[at:at + 120])
        at += 120
        role = "user" if len(messages) % 2 == 0 else "assistant"
        messages.append({"role": role, "content": chunk})
        used += len(chunk)
    if messages[-1]["role"] == "user":
        messages.pop()
    return {"format": "greve-transcript", "version": 1, "system": None, "persona": None,
            "messages": messages}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--greve", default=str(ROOT / "target/release/greve"))
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--conversation-tokens", type=int, default=4000)
    ap.add_argument("--chars-per-token", type=float, default=3.4,
                    help="to size the conversation; the real count is reported")
    ap.add_argument("--drop-caches", action="store_true",
                    help="then resume once more with the page cache dropped (root only)")
    ap.add_argument("--out")
    a = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="greve-prompt-cache-"))
    env = dict(os.environ, XDG_CACHE_HOME=str(work / "cache"),
               GREVE_CONFIG=str(work / "none.toml"))
    base = ["ask", "-m", a.model, "-n", "1", "--json", "--temperature", "0"]
    rows = []

    def record(case, state, r):
        row = {"case": case, "cache": state, **{k: r[k] for k in (
            "prompt_tokens", "prefilled_tokens", "loaded_tokens", "ttft_ms", "cache_read_ms", "wall_s")}}
        rows.append(row)
        print(json.dumps(row), flush=True)

    for _ in range(a.pairs):
        run(a.greve, ["cache", "clear"], env)
        for state in ("cold", "warm"):
            record("persona", state, run(a.greve, [*base, "--strike=râleuse", "Bonjour, ça va ?"], env))
        # What the persona should cost: the same question without it.
        record("plain", "none", run(a.greve, [*base, "Bonjour, ça va ?"], env))

    run(a.greve, ["cache", "clear"], env)
    conv, saved = work / "conv.json", work / "saved.json"
    conv.write_text(json.dumps(conversation(a.conversation_tokens, a.chars_per_token), ensure_ascii=False))
    record("resume", "cold", run(a.greve, [*base, "--load", str(conv), "--save", str(saved), "Et donc ?"], env))
    record("resume", "warm", run(a.greve, [*base, "--load", str(saved), "Et ensuite ?"], env))
    if a.drop_caches:
        # The entry read from the disk itself, not from memory (the model too).
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        record("resume", "warm-disk", run(a.greve, [*base, "--load", str(saved), "Et après ?"], env))
    entries = sorted((work / "cache" / "greve" / "prompt-cache").glob("*.kv"))
    size = max(p.stat().st_size for p in entries)

    def median(case, state, key):
        xs = sorted(r[key] for r in rows if r["case"] == case and r["cache"] == state)
        return xs[len(xs) // 2]

    summary = {"case": "summary", "conversation_entry_bytes": size}
    for case in ("persona", "resume"):
        for key in ("ttft_ms", "wall_s"):
            cold, warm = median(case, "cold", key), median(case, "warm", key)
            summary[f"{case}_{key}_cold_over_warm"] = round(cold / warm, 1)
    summary["persona_warm_over_plain_ttft"] = round(
        median("persona", "warm", "ttft_ms") / median("plain", "none", "ttft_ms"), 2)
    warm_read = median("resume", "warm", "cache_read_ms")
    summary["resume_read_gb_s"] = round(size / 1e9 / (warm_read / 1e3), 2)
    if a.drop_caches:
        disk_read = median("resume", "warm-disk", "cache_read_ms")
        summary["resume_disk_read_gb_s"] = round(size / 1e9 / (disk_read / 1e3), 2)
        summary["resume_ttft_ms_cold_over_warm_disk"] = round(
            median("resume", "cold", "ttft_ms") / median("resume", "warm-disk", "ttft_ms"), 1)
    rows.append(summary)
    print(json.dumps(summary), flush=True)
    if a.out:
        Path(a.out).write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
