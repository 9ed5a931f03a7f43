#!/usr/bin/env bash
# The GPU check, on a machine with an NVIDIA GPU, PyTorch and transformers
# but no Rust: run from a checkout holding what benches/gpu-prepare.sh built.
#
#   bash benches/gpu-check.sh target/gpu OUT_DIR
#
# 1. The CUDA libraries greve links come from the PyTorch install's NVIDIA
#    wheels when no CUDA toolkit is on the library path.
# 2. Correctness: the engine goldens on the GPU (GREVE_TEST_DEVICE=cuda), and
#    `greve ask` and a three-turn `greve chat` (KV cache reused between
#    turns) giving the same greedy text on the GPU as on the CPU.
# 3. Speed: `greve bench` on a synthetic Mistral 7B, bf16 safetensors and
#    Q4_K_M GGUF (written here by the makers in benches/), at short context
#    and after 8192 tokens, with the GPU memory nvidia-smi saw; transformers
#    on the same bf16 folder (benches/hf-bench.py), and the copy bandwidth
#    that bounds decoding.
# Every step has its own time limit; the log and JSON lines go to OUT_DIR.
#
# GPU_STEPS picks steps (default all: "libs tests chat bench hf profile";
# "ncu" is the profile's Nsight Compute half alone), GPU_MODELS the
# synthetic models the bench step runs (default "q4km.gguf bf16"); device
# time is scarce. Baseline greves (GPU builds of other commits,
# packed by `gpu-prepare.sh BINARY...`) in the carried folder are benched
# after this one, so that a change is measured in one run on one card.
set -u
carried=$(realpath "$1")
out=$(realpath -m "${2:-gpu-out}")
work=${GREVE_GPU_WORK:-/tmp/greve-gpu}
mkdir -p "$out" "$work"
exec > >(tee "$out/gpu.log") 2>&1
tar -C "$work" -xJf "$carried/bin.tar.xz"
greve=$work/bin/greve
baselines=()
for packed in "$carried"/*.xz; do
    [[ $packed == */bin.tar.xz ]] && continue
    xz -dc "$packed" >"$work/$(basename "$packed" .xz)" && chmod +x "$work/$(basename "$packed" .xz)"
    baselines+=("$work/$(basename "$packed" .xz)")
done
steps=${GPU_STEPS:-libs tests chat bench hf profile}
wants() { [[ " $steps " == *" $1 "* ]]; }
models=${GPU_MODELS:-q4km.gguf bf16}

step() {
    local limit=$1
    shift
    echo "== $*" >&2
    timeout "$limit" "$@"
    echo "-- exit $?" >&2
}

# 1. Libraries.
libs=$(python3 - <<'EOF'
import glob, os, site, sys
dirs = []
for lib in ["libcublas.so.13", "libcublasLt.so.13", "libcudart.so.13", "libcurand.so.10", "libnvrtc.so.13"]:
    hits = [h for r in site.getsitepackages() + ["/usr/local/cuda/lib64"]
            for h in glob.glob(os.path.join(r, "**", lib), recursive=True)]
    if not hits:
        print(f"gpu-check: {lib} not found", file=sys.stderr)
    elif os.path.dirname(hits[0]) not in dirs:
        dirs.append(os.path.dirname(hits[0]))
print(":".join(dirs))
EOF
)
export LD_LIBRARY_PATH=$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
if wants libs; then
    echo "== without them:"
    LD_LIBRARY_PATH= "$greve" --version 2>&1 | head -n 3
    echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
    step 30 "$greve" --version
    step 60 "$greve" doctor --offline
fi

# 2. Correctness.
wants tests && CARGO_MANIFEST_DIR=$PWD GREVE_TEST_DEVICE=cuda step 120 "$work"/bin/integration-* engine:: --test-threads 1
wants chat && {
same=0 differ=0
for file in tiny-v1-f16.gguf tiny-v1-q8_0.gguf tiny-k-q4_k_m.gguf; do
    for device in cpu cuda; do
        timeout 60 "$greve" ask -m "tests/goldens/$file" --device "$device" --temperature 0 -n 24 \
            "Raconte-moi la grève" >"$work/ask-$device.txt" 2>"$work/ask-$device.err"
        printf 'Bonjour\nEt ensuite ?\nMerci, au revoir\n' |
            timeout 60 "$greve" chat -m "tests/goldens/$file" --device "$device" --temperature 0 -n 16 \
                >"$work/chat-$device.txt" 2>"$work/chat-$device.err"
    done
    for what in ask chat; do
        if [[ -s $work/$what-cpu.txt ]] && cmp -s "$work/$what-cpu.txt" "$work/$what-cuda.txt"; then
            same=$((same + 1))
            echo "$what $file: the GPU's greedy text is the CPU's"
        else
            differ=$((differ + 1))
            echo "$what $file: DIFFERS"
            head -c 600 "$work/$what-cpu.txt" "$work/$what-cuda.txt" "$work/$what-cuda.err"
        fi
    done
done
echo "cpu vs cuda: $same same, $differ different"
}

# 3. Speed. The makers write in parallel with each other.
export PYTHONPATH=$carried/py${PYTHONPATH:+:$PYTHONPATH}
if wants bench || wants hf || wants profile || wants ncu; then
    echo "== synthetic models"
    python3 benches/make-synthetic-safetensors.py "$work/bf16" &
    bf16=$!
    makers=($bf16)
    if [[ " $models " == *" q4km.gguf "* ]]; then
        python3 benches/make-synthetic-gguf.py --vocab-from tests/goldens/vocab-v1.gguf \
            --out "$work/q4km.gguf" >/dev/null 2>&1 &
        makers+=($!)
    fi
    # Not a bare `wait`: it would also wait for the log's tee, forever.
    wait "${makers[@]}"
    (cd "$work" && du -sh bf16 $models | sort -u)
fi

gpu_memory() { # the largest memory.used nvidia-smi reports while "$@" runs
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$work/mem.log" &
    local watcher=$!
    "$@"
    kill $watcher
    echo "peak GPU memory used: $(sort -n "$work/mem.log" | tail -n1) MiB" >&2
}
if wants bench; then
    # A 2-layer model's step is all overhead (launches, allocations), the
    # GPU idle between kernels: per layer, what a 7B step spends outside them.
    for binary in "$greve" "${baselines[@]}"; do
        step 30 "$binary" bench -m tests/goldens/tiny-v1-f16.gguf --device cuda -r 2 --json |
            sed "s|^{|{\"binary\":\"$(basename "$binary")\",|" | tee -a "$out/bench.jsonl"
    done
    for model in $models; do
        for binary in "$greve" "${baselines[@]}"; do
            gpu_memory step 120 "$binary" bench -m "$work/$model" --device cuda -r 2 -d 8192 --json |
                sed "s|^{|{\"binary\":\"$(basename "$binary")\",|" | tee -a "$out/bench.jsonl"
        done
    done
fi
if wants hf; then
    step 30 python3 benches/hf-bench.py --bandwidth "$work/bf16" | tee -a "$out/bench.jsonl"
    step 90 python3 benches/hf-bench.py "$work/bf16" -r 2 | tee -a "$out/bench.jsonl"
    step 150 python3 benches/hf-bench.py "$work/bf16" -r 2 --compile | tee -a "$out/bench.jsonl"
fi

# Where a generated token's time goes. Nsight Systems: the time in CUDA
# calls (launches, allocations) against the time in kernels. Nsight
# Compute: every kernel of about one decoding step (the sum against the
# step's wall time is the share lost between kernels).
nsys=$(command -v nsys || ls /opt/nvidia/nsight-systems/*/bin/nsys 2>/dev/null | tail -n1)
if wants profile && [[ -n $nsys ]]; then
    step 90 "$nsys" profile -t cuda --force-overwrite true -o "$work/decode" \
        "$greve" ask -m "$work/bf16" --device cuda --temperature 0 -n 64 Bonjour >/dev/null
    step 60 "$nsys" stats -r cuda_api_sum,cuda_gpu_kern_sum -f csv -o "$out/nsys-bf16" "$work/decode.nsys-rep"
fi
ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | tail -n1)
if (wants profile || wants ncu) && [[ -n $ncu ]]; then
    step 90 "$ncu" --launch-skip 3000 --launch-count 700 --csv --metrics gpu__time_duration.sum \
        "$greve" ask -m "$work/bf16" --device cuda --temperature 0 -n 12 Bonjour >"$out/ncu-bf16.csv"
fi
