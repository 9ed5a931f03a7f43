//! Projections of a single token (decode) through Q4_K weights.
//!
//! candle repacks Q4_K matrices into wider tiles for its AVX kernels, which
//! pays off when many rows share each weight (prefill) but makes a one-row
//! product read more bytes than the file's compact blocks; decode is bound
//! by memory bandwidth. So a one-row product over Q4_K goes to candle's
//! compact k-quant kernels instead; everything else is `QMatMul` as usual.
//! The tests check both paths against llama.cpp.

use candle_core::quantized::k_quants::{self, BlockQ4K};
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Module, Result, Tensor};

/// `w` applied to `x` (…, in) → (…, out).
pub fn project(w: &QMatMul, x: &Tensor) -> Result<Tensor> {
    if let QMatMul::QTensor(q) = w {
        let rows = x.dims().iter().rev().skip(1).product::<usize>();
        if rows == 1
            && q.dtype() == GgmlDType::Q4K
            && x.device().is_cpu()
            && x.dtype() == DType::F32
        {
            if let Some(y) = compact_q4k(q, x)? {
                return Ok(y);
            }
        }
    }
    w.forward(x)
}

/// The product over the compact blocks; `None` when the storage cannot be
/// viewed as blocks (then the caller takes candle's path).
fn compact_q4k(q: &QTensor, x: &Tensor) -> Result<Option<Tensor>> {
    let (n, k) = q.shape().dims2()?;
    let data = q.data()?;
    let size = std::mem::size_of::<BlockQ4K>();
    let aligned = (data.as_ptr() as usize).is_multiple_of(std::mem::align_of::<BlockQ4K>());
    if !aligned || data.len() != n * k / k_quants::QK_K * size {
        return Ok(None);
    }
    // SAFETY: the bytes are candle's own storage of this Q4_K tensor, that
    // is `BlockQ4K` values (repr(C), plain numbers, valid for any bits);
    // length and alignment are checked above, and `data` outlives `blocks`.
    let blocks: &[BlockQ4K] =
        unsafe { std::slice::from_raw_parts(data.as_ptr().cast(), data.len() / size) };
    let lhs = x.flatten_all()?.to_vec1::<f32>()?;
    let mut out = vec![0f32; n];
    k_quants::matmul((1, k, n), &lhs, blocks, &mut out)?;
    let mut shape = x.dims().to_vec();
    if let Some(last) = shape.last_mut() {
        *last = n;
    }
    Tensor::from_vec(out, shape, x.device()).map(Some)
}
