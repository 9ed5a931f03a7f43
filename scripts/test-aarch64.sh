#!/usr/bin/env bash
# Builds greve for 64-bit ARM (aarch64 Linux: Graviton, Raspberry Pi 5, and
# the same code paths as Apple Silicon) on an x86-64 Linux machine, and runs
# the test suite under qemu-user. Needs, once:
#   rustup target add aarch64-unknown-linux-gnu
#   apt-get install gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user
# Arguments go to `cargo test`. By default: the unit tests (every kernel
# against its reference) and the integration tests that load models through
# the library; the others start the greve binary themselves, which needs
# qemu registered with binfmt_misc (package qemu-user-binfmt) to run an ARM
# binary from an x86 process.
set -euo pipefail
cd "$(dirname "$0")/.."

target=aarch64-unknown-linux-gnu
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++
# The test binaries, and the greve binary the integration tests start,
# run under qemu with the cross toolchain's C library.
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
export QEMU_LD_PREFIX=/usr/aarch64-linux-gnu
if [ $# -eq 0 ]; then
    set -- --lib --test engine --test tokenizer --test fuzz
fi
cargo test --target "$target" "$@"
