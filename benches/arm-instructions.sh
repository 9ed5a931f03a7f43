#!/usr/bin/env bash
# Instructions per generated token on ARM64, counted under qemu-aarch64 by
# the plugin in benches/insn-count.c: emulated time says nothing about an
# ARM CPU's speed, but the instructions a token takes are the same there.
# Runs greve's kernels at each level on the same GGUF file, one thread:
# portable Rust (GREVE_KERNELS=scalar), plain NEON (neon) and NEON with sdot
# (the default on a CPU with DotProd, as the emulated `max` CPU is), and
# candle's own kernels for the Q4_K/Q6_K products (candle).
#
#   cargo build --release --target aarch64-unknown-linux-gnu   # see scripts/test-aarch64.sh
#   benches/arm-instructions.sh MODEL.gguf [GREVE]
#
# A token's count is the difference between runs generating 6 and 2 tokens,
# over 4, so that loading and the prompt drop out. Needs qemu-user 7.2 or
# later (its plugin API), the aarch64 C library (gcc-aarch64-linux-gnu) and
# a C compiler; a model whose EOS never wins (make-synthetic-gguf.py's).
set -euo pipefail
model=$1
greve=${2:-${CARGO_TARGET_DIR:-target}/aarch64-unknown-linux-gnu/release/greve}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cc -shared -fPIC -O2 -o "$work/insn-count.so" "$(dirname "$0")/insn-count.c"

count() { # kernels, tokens → instructions
    GREVE_KERNELS=$1 qemu-aarch64 -cpu max -L /usr/aarch64-linux-gnu \
        -plugin "$work/insn-count.so" -d plugin -D "$work/log" \
        "$greve" ask -q -m "$model" --threads 1 --temperature 0 -n "$2" Bonjour >/dev/null
    sed -n 's/^instructions //p' "$work/log"
}

printf '%-8s %s\n' kernels "instructions per generated token"
for kernels in scalar neon '' candle; do
    short=$(count "$kernels" 2)
    long=$(count "$kernels" 6)
    printf '%-8s %d\n' "${kernels:-sdot}" $(((long - short) / 4))
done
