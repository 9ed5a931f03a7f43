#!/usr/bin/env bash
# Where decode's CPU time goes on every thread: the products, the threads
# waiting for each other (at the pool's barrier, or a worker spinning in its
# thread's entry function, which perf names __rust_begin_short_backtrace,
# for the next product), and the rest. Counted from perf's user-space
# samples, so the figures hold when the memory's speed drifts between runs,
# as a tokens/s figure does not.
#
#   benches/idle-share.sh BIN [MODEL]
#
# BIN is a greve binary; MODEL defaults to the synthetic 7B that
# setup-bench-env.sh makes. Needs perf (linux-tools) and samples from user
# space (kernel.perf_event_paranoid at 2 or lower). The first 7 s, loading
# the model, are not sampled.
set -euo pipefail
bin=${1:?usage: benches/idle-share.sh BIN [MODEL]}
model=${2:-$HOME/.cache/greve-bench/mistral-7b-synthetic-Q4_K_M.gguf}
data=$(mktemp)
trap 'rm -f "$data"' EXIT
perf record -q -D 7000 -F 2000 -o "$data" "$bin" bench -m "$model" \
    --prompt-tokens 1 --gen-tokens 96 -r 1 2>&1 | grep '^tg'
perf report -i "$data" --no-children --sort sym 2>/dev/null | python3 -c '
import re, sys
parts = {"products": 0.0, "waiting": 0.0, "rest": 0.0}
for line in sys.stdin:
    m = re.match(r"\s*([\d.]+)%\s+\[.\]\s+(.*)", line)
    if not m:
        continue
    share, symbol = float(m.group(1)), m.group(2)
    if re.search(r"::dot_(avx|neon|dotprod|scalar)", symbol):
        parts["products"] += share
    elif "short_backtrace" in symbol or "BarrierGuard" in symbol:
        parts["waiting"] += share
    else:
        parts["rest"] += share
print("  ".join(f"{k} {v:.2f} %" for k, v in parts.items()))'
