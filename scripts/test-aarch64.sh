#!/usr/bin/env bash
# Builds greve for 64-bit ARM (aarch64 Linux: Graviton, Raspberry Pi 5, and
# the same code paths as Apple Silicon) on an x86-64 Linux machine, and runs
# the test suite under qemu-user. Needs, once:
#   rustup target add aarch64-unknown-linux-gnu
#   apt-get install gcc-aarch64-linux-gnu qemu-user
# Arguments go to `cargo test`. By default: the unit tests (every kernel
# against its reference, on an emulated CPU with DotProd and again on a
# Cortex-A72 without it), the tokenizer tests, and the engine tests that
# hold GGUF files to transformers and llama.cpp, the one for quantised
# files on the Cortex-A72 too (about 5 min under emulation; the whole
# engine file takes far longer). The tests that start
# the greve binary themselves need qemu registered with binfmt_misc
# (package qemu-user-binfmt) to run an ARM binary from an x86 process.
set -euo pipefail
cd "$(dirname "$0")/.."

target=aarch64-unknown-linux-gnu
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
# The test binaries run under qemu with the cross toolchain's C library
# (QEMU_LD_PREFIX serves a greve binary started through binfmt_misc too).
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
export QEMU_LD_PREFIX=/usr/aarch64-linux-gnu
if [ $# -gt 0 ]; then
    exec cargo test --target "$target" "$@"
fi
cargo test --target "$target" --lib
cargo test --target "$target" --test integration -- tokenizer::
# The unit tests again on a CPU without DotProd (the emulated default has
# it): plain NEON for the products, and nothing that needs `sdot`.
QEMU_CPU=cortex-a72 cargo test --target "$target" --lib
cargo test --target "$target" --test integration -- \
    engine::gguf_from_llama_cpp_converter_matches_transformers engine::quantized_gguf_matches_llama_cpp
# The block formats greve has no kernels for (Q8_0, Q4_0, Q5_K) without
# DotProd, where candle's kernels for them would not run.
QEMU_CPU=cortex-a72 cargo test --target "$target" --test integration -- \
    --exact engine::quantized_gguf_matches_llama_cpp
