//! greve's CUDA kernels (`kernels.cu`, compiled by NVRTC on first use),
//! each standing in for several candle operations on a GPU; every function
//! returns `None` where its kernel does not apply (no CUDA, another layout),
//! and the caller takes candle's operations.
//!
//! - Decoding's attention: the tensor path (scores matmul, softmax,
//!   probabilities matmul) suits a prompt, but for one new token its second
//!   product is a matrix of 4 rows reduced over the whole context: cuBLAS
//!   ran it on a handful of blocks, and after 8k tokens attention took
//!   longer than reading the weights. Split over chunks of positions, every
//!   SM reads its share once.
//! - The feed-forward's gate and the residual add with the norm after it:
//!   elementwise work, where a step's time goes to launches and allocations
//!   (candle's silu then mul; add then RMSNorm), and a strided gate (halves
//!   of one stacked product) costs candle's kernels index arithmetic.
//! - The rotary embedding in place and the new keys and values written into
//!   the cache in one kernel: candle's rope allocates its output, and the
//!   cache took a copy each for keys and values.
//! - Decoding's products, one activation row by a 16-bit or f32 matrix:
//!   cuBLAS left some shapes at half the memory bandwidth, and split others
//!   over two kernels. The feed-forward's gate goes with its products.

use candle_core::{Result, Tensor};

#[cfg(test)]
mod emulated;
#[cfg(feature = "cuda")]
mod ops;

// The launch geometry, which the emulated kernels take too.
/// Positions per attention block: a short loop each, and enough blocks to
/// fill the GPU from about 2k positions on.
#[cfg(any(feature = "cuda", test))]
const CHUNK: usize = 64;
/// Threads per block of the elementwise kernels and of attention.
#[cfg(any(feature = "cuda", test))]
const THREADS: u32 = 256;
/// Rows of a matrix-vector product per block, a warp each.
#[cfg(any(feature = "cuda", test))]
const MATVEC_ROWS: usize = 8;

/// The attention output for one new token, (1, heads, 1, hd), of query
/// `q` (1, heads, 1, hd) over keys and values `k`, `v` (1, kv_heads, t, hd)
/// (views of the cache), attending the last `window` positions at most.
pub fn decode_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    window: Option<usize>,
) -> Result<Option<Tensor>> {
    #[cfg(feature = "cuda")]
    if q.device().is_cuda() {
        return ops::decode_attention(q, k, v, window);
    }
    let _ = (q, k, v, window);
    Ok(None)
}

/// `x · wᵀ` for one row of `x` (…, 1, k) and a (n, k) matrix `w`.
pub fn matvec(w: &Tensor, x: &Tensor) -> Result<Option<Tensor>> {
    #[cfg(feature = "cuda")]
    if w.device().is_cuda() {
        return ops::matvec(w, x);
    }
    let _ = (w, x);
    Ok(None)
}

/// `silu(gate) * up` for one row of `x` (…, 1, k), where `w` (2f, k) stacks
/// the gate's rows over the up's: both products and the gate in one kernel.
pub fn matvec_gated(w: &Tensor, x: &Tensor) -> Result<Option<Tensor>> {
    #[cfg(feature = "cuda")]
    if w.device().is_cuda() {
        return ops::matvec_gated(w, x);
    }
    let _ = (w, x);
    Ok(None)
}

/// The rotary embedding applied in place to `x` (1, heads, n, hd) with
/// angles `cos`, `sin` (n, hd/2); false where the kernel does not apply.
pub fn rope_in_place(x: &Tensor, cos: &Tensor, sin: &Tensor, interleaved: bool) -> Result<bool> {
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() {
        return ops::rope_in_place(x, cos, sin, interleaved);
    }
    let _ = (x, cos, sin, interleaved);
    Ok(false)
}

/// New keys and values `k`, `v` (1, kv_heads, n, hd) written into `cache`
/// (2, 1, kv_heads, capacity, hd) from position `at`, in one kernel; false
/// where it does not apply.
pub fn write_kv(cache: &Tensor, k: &Tensor, v: &Tensor, at: usize) -> Result<bool> {
    #[cfg(feature = "cuda")]
    if cache.device().is_cuda() {
        return ops::write_kv(cache, k, v, at);
    }
    let _ = (cache, k, v, at);
    Ok(false)
}

/// `silu(gate) * up`, elementwise.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Option<Tensor>> {
    #[cfg(feature = "cuda")]
    if gate.device().is_cuda() {
        return ops::silu_mul(gate, up);
    }
    let _ = (gate, up);
    Ok(None)
}

/// `x + y` and its RMSNorm with weight `w`: the residual stream after a
/// sublayer and the next sublayer's input.
pub fn add_rms_norm(
    x: &Tensor,
    y: &Tensor,
    w: &Tensor,
    eps: f32,
) -> Result<Option<(Tensor, Tensor)>> {
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() {
        return ops::add_rms_norm(x, y, w, eps);
    }
    let _ = (x, y, w, eps);
    Ok(None)
}

#[cfg(all(test, feature = "cuda"))]
mod tests {
    /// NVRTC needs no GPU: the kernel source compiles on any machine with
    /// the CUDA libraries.
    #[test]
    fn the_kernels_compile() {
        let ptx = super::ops::ptx().unwrap();
        for name in [
            "attend_chunks_bf16",
            "merge_chunks_f16",
            "silu_mul_f32",
            "add_rms_norm_bf16",
            "matvec_f16",
            "matvec_gated_bf16",
            "rope_bf16",
            "write_kv_f32",
        ] {
            assert!(ptx.contains(&format!(".entry {name}")), "{name} missing");
        }
    }
}
