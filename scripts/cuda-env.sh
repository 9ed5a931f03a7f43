#!/usr/bin/env bash
# Prints the environment that builds greve's `cuda` feature on a machine with
# no GPU and no CUDA installation:
#
#   eval "$(bash scripts/cuda-env.sh)" && cargo build --release --features cuda
#
# The first run installs, from PyPI into a cache folder ($GREVE_CUDA_DIR,
# default ~/.cache/greve-cuda), the CUDA 13.0 compiler, headers and the
# libraries candle links (cuBLAS, cuBLASLt, cuRAND, NVRTC), all pinned to one
# release: mixing releases makes nvcc's front end write PTX its ptxas refuses.
# The driver's libcuda.so is not a wheel: a stub that exports the driver API's
# names stands in for it at link time; the real one (installed with the
# NVIDIA driver) is found at run time. CUDA_COMPUTE_CAP (default 90, the
# H100) picks the GPU generation candle's kernels are compiled for.
set -euo pipefail

dir=${GREVE_CUDA_DIR:-$HOME/.cache/greve-cuda}/cu13.0
cu=$dir/nvidia/cu13
python=${PYTHON:-python3}

if [[ ! -x $cu/bin/nvcc ]]; then
    echo "cuda-env: installing CUDA 13.0 wheels into $dir (once)" >&2
    # One pip call: a second `pip install --target` into the same folder
    # replaces the nvidia/cu13 folder the wheels share.
    "$python" -m pip install -q --target "$dir" \
        nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
        nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88 \
        nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35 >&2
fi

# The linker wants libX.so; the wheels ship libX.so.N.
link=$dir/link
mkdir -p "$link"
for lib in cudart cublas cublasLt curand nvrtc; do
    found=$(find "$dir/nvidia" -name "lib$lib.so.*" | sort | head -n1)
    if [[ -z $found ]]; then
        echo "cuda-env: lib$lib.so is missing from $dir; remove the folder and run again" >&2
        exit 1
    fi
    ln -sf "$found" "$link/lib$lib.so"
done

# The stub: every driver function cudarc declares, as an empty symbol, with
# the soname of the real library so the binary asks for libcuda.so.1.
if [[ ! -f $link/libcuda.so ]]; then
    registry=${CARGO_HOME:-$HOME/.cargo}/registry/src
    sys=$(find "$registry" -path '*cudarc-0.19*/src/driver/sys/mod.rs' 2>/dev/null | sort | tail -n1)
    if [[ -z $sys ]]; then
        echo "cuda-env: cudarc's sources are not in $registry; run \`cargo fetch\` first" >&2
        exit 1
    fi
    grep -oE '^\s+fn cu[A-Za-z0-9_]+\(' "$sys" | sed -E 's/^\s+fn (cu[A-Za-z0-9_]+)\(/void \1(void) {}/' |
        sort -u >"$link/cuda-stub.c"
    cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$link/libcuda.so" "$link/cuda-stub.c"
fi
# Under its soname too, so that a test binary built here starts (and finds
# no GPU): the kernel source test compiles greve's kernels with NVRTC.
ln -sf libcuda.so "$link/libcuda.so.1"

echo "export PATH=\"$cu/bin:\$PATH\""
echo "export CUDA_ROOT=\"$cu\" CUDA_PATH=\"$cu\" CUDA_HOME=\"$cu\""
echo "export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}"
echo "export LIBRARY_PATH=\"$link${LIBRARY_PATH:+:$LIBRARY_PATH}\""
# For running a test binary here, not for cargo: a changed LD_LIBRARY_PATH
# makes cargo rebuild candle's CUDA kernels (20 minutes).
echo "export GREVE_CUDA_RUN_PATH=\"$link:$cu/lib\""
