//! A projection matrix and its product with activations, whichever way the
//! weights are held: candle's tensors (safetensors, float GGUF tensors, any
//! GPU) or quantised blocks read in place from a memory-mapped GGUF file.
//!
//! Mapped Q4_K and Q6_K matrices (all of a Q4_K_M file) go to greve's own
//! kernels ([`super::quant`]); the other block formats to candle's compact
//! k-quant kernels, which also take the file's blocks as they are. Neither
//! copies the weights, so a model costs its file in page cache and no more.

use std::ops::Range;
use std::sync::Arc;

use candle_core::quantized::k_quants::{self, GgmlType};
use candle_core::quantized::{GgmlDType, QMatMul};
use candle_core::{DType, Module, Result, Tensor};
use memmap2::Mmap;

use super::quant::{self, Format};

/// Runs `$body` with `$B` bound to candle's block type for a quantised
/// `$dtype`, and `$fallback` for the formats without blocks.
macro_rules! with_block_type {
    ($dtype:expr, $B:ident => $body:expr, else $other:pat => $fallback:expr) => {
        match $dtype {
            GgmlDType::Q4_0 => {
                type $B = k_quants::BlockQ4_0;
                $body
            }
            GgmlDType::Q4_1 => {
                type $B = k_quants::BlockQ4_1;
                $body
            }
            GgmlDType::Q5_0 => {
                type $B = k_quants::BlockQ5_0;
                $body
            }
            GgmlDType::Q5_1 => {
                type $B = k_quants::BlockQ5_1;
                $body
            }
            GgmlDType::Q8_0 => {
                type $B = k_quants::BlockQ8_0;
                $body
            }
            GgmlDType::Q2K => {
                type $B = k_quants::BlockQ2K;
                $body
            }
            GgmlDType::Q3K => {
                type $B = k_quants::BlockQ3K;
                $body
            }
            GgmlDType::Q4K => {
                type $B = k_quants::BlockQ4K;
                $body
            }
            GgmlDType::Q5K => {
                type $B = k_quants::BlockQ5K;
                $body
            }
            GgmlDType::Q6K => {
                type $B = k_quants::BlockQ6K;
                $body
            }
            $other => $fallback,
        }
    };
}

pub enum Linear {
    Candle(QMatMul),
    Mapped(MappedMatrix),
}

impl Linear {
    /// `self` applied to `x`: (…, in) → (…, out).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Linear::Candle(w) => {
                if let QMatMul::Tensor(dense) = w {
                    if let Some(y) = super::dense::matvec(dense, x)? {
                        return Ok(y);
                    }
                }
                w.forward(x)
            }
            Linear::Mapped(w) => w.forward(x),
        }
    }
}

/// A (rows, cols) matrix of quantised blocks inside a mapped file.
#[derive(Clone)]
pub struct MappedMatrix {
    map: Arc<Mmap>,
    range: Range<usize>,
    pub dtype: GgmlDType,
    pub shape: (usize, usize),
}

impl MappedMatrix {
    /// `None` when neither greve's nor candle's compact kernels take this
    /// format in place (float formats; blocks the file misaligned).
    pub fn new(
        map: Arc<Mmap>,
        range: Range<usize>,
        dtype: GgmlDType,
        shape: (usize, usize),
    ) -> Option<Self> {
        let m = MappedMatrix {
            map,
            range,
            dtype,
            shape,
        };
        let supported = match dtype {
            GgmlDType::Q4K | GgmlDType::Q6K => true,
            GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => false,
            _ => with_block_type!(dtype, B => m.blocks::<B>().is_some(), else _ => false),
        };
        supported.then_some(m)
    }

    pub fn bytes(&self) -> &[u8] {
        &self.map[self.range.clone()]
    }

    /// The bytes as candle's block type, if they are aligned for it.
    fn blocks<B: GgmlType>(&self) -> Option<&[B]> {
        let bytes = self.bytes();
        let size = std::mem::size_of::<B>();
        let aligned = (bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<B>());
        // SAFETY: candle's block types are repr(C) structs of integers and
        // f16, valid for any bits; alignment is checked and the length
        // rounded down to whole blocks; the map lives as long as `self`.
        (aligned && bytes.len().is_multiple_of(size)).then(|| unsafe {
            std::slice::from_raw_parts(bytes.as_ptr().cast(), bytes.len() / size)
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (n, k) = self.shape;
        let x_dtype = x.dtype();
        let mut out_shape = x.dims().to_vec();
        let m = x.elem_count() / k;
        if let Some(last) = out_shape.last_mut() {
            *last = n;
        }
        let xs = x.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let mut out = vec![0f32; m * n];
        match self.dtype {
            GgmlDType::Q4K => quant::matmul(Format::Q4K, self.bytes(), (m, k, n), &xs, &mut out),
            GgmlDType::Q6K => quant::matmul(Format::Q6K, self.bytes(), (m, k, n), &xs, &mut out),
            dtype => with_block_type!(dtype, B => {
                let blocks = self.blocks::<B>().expect("checked by MappedMatrix::new");
                k_quants::matmul::<B>((m, k, n), &xs, blocks, &mut out)?
            }, else other => candle_core::bail!("no kernel for {other:?} blocks")),
        }
        Tensor::from_vec(out, out_shape, x.device())?.to_dtype(x_dtype)
    }
}
