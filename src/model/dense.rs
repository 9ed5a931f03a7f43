//! One-token products with 16-bit dense weights: the safetensors path on a
//! CPU, where Mistral 7B computes in bf16 because f32 would not fit in memory.
//!
//! candle's CPU matmul is slow for a single bf16 activation row (a 2-layer
//! file with Mistral 7B's shapes decoded 1.1 tokens/s here), while the product
//! only has to stream the weights once: each row is widened to f32 as it is
//! read, on every core, and decode becomes bound by memory bandwidth.
//! Batches (prefill) stay with candle's matmul.

use candle_core::{DType, Result, Storage, Tensor};
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

/// Rows per unit of work handed to a thread.
const ROWS_PER_ITEM: usize = 16;

/// `x · wᵀ` for one row of `x` (…, 1, in) and a CPU (out, in) bf16 or f16
/// `w`; `None` when that is not the case (the caller takes candle's path).
pub fn matvec(w: &Tensor, x: &Tensor) -> Result<Option<Tensor>> {
    let (n, k) = w.dims2()?;
    if !w.device().is_cpu() || x.elem_count() != k || !w.is_contiguous() {
        return Ok(None);
    }
    let xs = x.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    let (storage, layout) = w.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return Ok(None);
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        return Ok(None);
    };
    let mut out = vec![0f32; n];
    match w.dtype() {
        DType::BF16 => rows(
            &cpu.as_slice::<bf16>()?[start..end],
            k,
            &xs,
            &mut out,
            dot_bf16,
        ),
        DType::F16 => rows(
            &cpu.as_slice::<f16>()?[start..end],
            k,
            &xs,
            &mut out,
            dot_f16,
        ),
        _ => return Ok(None),
    }
    let mut shape = x.dims().to_vec();
    if let Some(last) = shape.last_mut() {
        *last = n;
    }
    Tensor::from_vec(out, shape, x.device())?
        .to_dtype(x.dtype())
        .map(Some)
}

/// `out[r] = dot(w[r], x)` over all rows, on every core.
fn rows<T: Sync>(w: &[T], k: usize, x: &[f32], out: &mut [f32], dot: fn(&[T], &[f32]) -> f32) {
    let n = out.len();
    let out_ptr = super::Disjoint::new(out);
    super::in_parallel(n.div_ceil(ROWS_PER_ITEM), |items| {
        for r in items.start * ROWS_PER_ITEM..(items.end * ROWS_PER_ITEM).min(n) {
            // SAFETY: row r lies in `out` and belongs to this work item alone.
            unsafe { *out_ptr.at(r) = dot(&w[r * k..(r + 1) * k], x) }
        }
    });
}

/// bf16 is the top half of an f32: widening is a shift, which the compiler
/// vectorises with the multiply-adds (16 lanes).
fn dot_bf16(w: &[bf16], x: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let (wc, xc) = (w.chunks_exact(16), x.chunks_exact(16));
    let tail: f32 = wc
        .remainder()
        .iter()
        .zip(xc.remainder())
        .map(|(w, x)| w.to_f32() * x)
        .sum();
    for (w, x) in wc.zip(xc) {
        for l in 0..16 {
            lanes[l] += f32::from_bits((w[l].to_bits() as u32) << 16) * x[l];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// f16 goes through `half`'s slice conversion (F16C where the CPU has it).
fn dot_f16(w: &[f16], x: &[f32]) -> f32 {
    let mut wide = [0f32; 256];
    let mut lanes = [0f32; 16];
    let mut tail = 0.0;
    for (w, x) in w.chunks(256).zip(x.chunks(256)) {
        let wide = &mut wide[..w.len()];
        w.convert_to_f32_slice(wide);
        let (wc, xc) = (wide.chunks_exact(16), x.chunks_exact(16));
        tail += wc
            .remainder()
            .iter()
            .zip(xc.remainder())
            .map(|(w, x)| w * x)
            .sum::<f32>();
        for (w, x) in wc.zip(xc) {
            for l in 0..16 {
                lanes[l] += w[l] * x[l];
            }
        }
    }
    lanes.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_candle_for_bf16_and_f16() {
        let (n, k) = (37, 300); // a partial work item and a partial chunk
        let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
        let x = Tensor::randn(0f32, 1.0, (1, 1, k), &Device::Cpu).unwrap();
        for dtype in [DType::BF16, DType::F16] {
            let (w, x) = (w.to_dtype(dtype).unwrap(), x.to_dtype(dtype).unwrap());
            let got = matvec(&w, &x).unwrap().expect("a CPU matrix in 16 bits");
            assert_eq!(got.dims(), &[1, 1, n]);
            let want = x
                .to_dtype(DType::F32)
                .unwrap()
                .broadcast_matmul(&w.to_dtype(DType::F32).unwrap().t().unwrap())
                .unwrap();
            let (got, want) = (
                got.to_dtype(DType::F32)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap(),
                want.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            for (g, w) in got.iter().zip(&want) {
                // The output is rounded to the activations' 16-bit dtype.
                assert!(
                    (g - w).abs() <= 0.01 * w.abs() + 0.05,
                    "{g} vs {w} ({dtype:?})"
                );
            }
        }
        let f32_w = Tensor::zeros((n, k), DType::F32, &Device::Cpu).unwrap();
        assert!(matvec(
            &f32_w,
            &Tensor::zeros((1, k), DType::F32, &Device::Cpu).unwrap()
        )
        .unwrap()
        .is_none());
    }
}
