#!/usr/bin/env bash
# Builds what the GPU check carries to a machine with an NVIDIA GPU, on a
# machine without one (see docs/hardware.md, "GPU builds"): greve and the test
# binary (the engine tests run there) with --features cuda, for a baseline x86-64 CPU (in one xz archive:
# they share candle's kernels, and the pair shrinks from 106 MB to 9), and
# the Python gguf package the synthetic GGUF maker needs, into target/gpu/.
# Greve binaries given as arguments (GPU builds of other commits) go along
# as baselines the check benches against, each under its file name. Then,
# on the GPU machine, from a copy of this checkout with target/gpu in it:
#
#   bash benches/gpu-check.sh target/gpu OUT_DIR
set -euo pipefail
baselines=()
for b in "$@"; do baselines+=("$(realpath "$b")"); done
cd "$(dirname "$0")/.."
eval "$(bash scripts/cuda-env.sh)"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/greve-cuda/target}
cargo build --release --features cuda
tests=$(cargo test --release --features cuda --test integration --no-run --message-format=json |
    python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "integration" and m.get("executable"):
        print(m["executable"])')
rm -rf target/gpu
mkdir -p target/gpu/bin
cp "$CARGO_TARGET_DIR/release/greve" "$tests" target/gpu/bin/
strip target/gpu/bin/*
tar -C target/gpu -cf - bin | xz -T2 --lzma2=preset=9,dict=192MiB >target/gpu/bin.tar.xz
rm -r target/gpu/bin
for b in "${baselines[@]}"; do
    strip -o "target/gpu/$(basename "$b")" "$b"
    xz -T2 -9 "target/gpu/$(basename "$b")"
done
python3 -m pip install -q --no-deps --target target/gpu/py gguf==0.19.0
du -sh target/gpu
