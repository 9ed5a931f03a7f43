//! The transformer's elementwise steps: one fused kernel of greve's on a
//! GPU where there is one ([`super::cuda`]), candle's operations elsewhere.
//! The transformer calls these and never asks which device it runs on.

use candle_core::{Result, Tensor};

use super::cuda;
use super::weights::RopeLayout;

/// `x` (b, heads, n, hd) rotated by the angles `cos`, `sin` (n, hd/2), in
/// place where a kernel can (`x` is then the caller's own, consumed).
pub fn rope(x: Tensor, cos: &Tensor, sin: &Tensor, layout: RopeLayout) -> Result<Tensor> {
    let interleaved = layout == RopeLayout::Interleaved;
    if cuda::rope_in_place(&x, cos, sin, interleaved)? {
        return Ok(x);
    }
    match layout {
        RopeLayout::Halves => candle_nn::rotary_emb::rope(&x, cos, sin),
        RopeLayout::Interleaved => candle_nn::rotary_emb::rope_i(&x, cos, sin),
    }
}

/// `silu(gate) * up`, elementwise: SwiGLU's gate.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    match cuda::silu_mul(gate, up)? {
        Some(gated) => Ok(gated),
        None => candle_nn::ops::silu(gate)? * up,
    }
}

pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    candle_nn::ops::rms_norm(x, weight, eps as f32)
}

/// `x + residual` (the residual stream after a sublayer) and its RMSNorm
/// (the next sublayer's input), in one kernel where there is one.
pub fn add_rms_norm(
    x: &Tensor,
    residual: &Tensor,
    weight: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor)> {
    if let Some(both) = cuda::add_rms_norm(x, residual, weight, eps as f32)? {
        return Ok(both);
    }
    let x = (x + residual)?;
    let normed = rms_norm(&x, weight, eps)?;
    Ok((x, normed))
}
