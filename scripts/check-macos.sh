#!/usr/bin/env bash
# Type-checks greve for macOS on Apple Silicon (aarch64-apple-darwin), with
# and without the metal feature, from a Linux machine: `cargo check` compiles
# every crate and runs the build scripts but links nothing, so no Apple SDK
# is needed. Needs, once:
#   rustup target add aarch64-apple-darwin
#   apt-get install clang llvm   (llvm-ar)
# The one C dependency is ring (TLS for the Hub downloads, through ureq). Its C
# code asks little of the system: it builds freestanding, with its own memcpy
# and memset (RING_CORE_NOSTDLIBINC, what ring does for WebAssembly), and the
# only Apple header it includes, TargetConditionals.h, is written below with
# the three macros it reads. What this does not check: linking against
# Apple's frameworks, and running anything (no Mac here).
set -euo pipefail
cd "$(dirname "$0")/.."

target=aarch64-apple-darwin
headers=$(mktemp -d)
trap 'rm -rf "$headers"' EXIT
cat >"$headers/TargetConditionals.h" <<'H'
#define TARGET_OS_MAC 1
#define TARGET_OS_OSX 1
#define TARGET_OS_IPHONE 0
H
export CC_aarch64_apple_darwin=clang
export AR_aarch64_apple_darwin=llvm-ar
export CFLAGS_aarch64_apple_darwin="-ffreestanding -DRING_CORE_NOSTDLIBINC=1 -I$headers"

cargo check --target "$target" --all-targets
cargo check --target "$target" --all-targets --features metal
