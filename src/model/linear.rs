//! A projection matrix and its product with activations, whichever way the
//! weights are held: candle's tensors (safetensors, float GGUF tensors, any
//! GPU) or quantised blocks read in place from a memory-mapped GGUF file.
//!
//! Mapped Q4_K and Q6_K matrices (all of a Q4_K_M file) go to greve's own
//! kernels ([`super::quant`]); the other block formats to candle's compact
//! k-quant kernels, which also take the file's blocks as they are. Neither
//! copies the weights, so a model costs its file in page cache and no more.

use std::borrow::Cow;
use std::ops::Range;
use std::sync::Arc;

use candle_core::quantized::k_quants::{self, GgmlType};
use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{DType, Device, Module, Result, Tensor};
use memmap2::Mmap;

use super::profile::{self, Part};
use super::quant::{self, QuantFormat};

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
    /// `self` applied to `x`: (…, in) → (…, out). The rows of `x` (its
    /// next-to-last dimension) belong to sequences of `rows` rows each, in
    /// order: each sequence gets the sums it would get alone (see
    /// [`forward_greve`]).
    pub fn forward(&self, x: &Tensor, rows: &[usize]) -> Result<Tensor> {
        match self {
            // The one-row product and candle's matmul round apart, and the
            // latter's sums may depend on the batch: each sequence alone.
            Linear::Candle(QMatMul::Tensor(_)) if rows.len() > 1 => {
                per_sequence(x, rows, |x, n| self.forward(x, &[n]))
            }
            Linear::Candle(w) => profile::time(Part::OtherProducts, || {
                if let QMatMul::Tensor(dense) = w {
                    let matvec = match dense.device().is_cpu() {
                        true => super::dense::matvec,
                        false => super::cuda::matvec,
                    };
                    if let Some(y) = matvec(dense, x)? {
                        return Ok(y);
                    }
                }
                w.forward(x)
            }),
            Linear::Mapped(w) => w.forward(x, rows),
        }
    }

    /// The block format of greve's kernels that multiply by `self`, if they do.
    fn kernel_format(&self) -> Option<QuantFormat> {
        match self {
            Linear::Mapped(w) => w.kernel_format(),
            Linear::Candle(_) => None,
        }
    }
}

/// Projections of the same input (attention's Q, K and V; the feed-forward's
/// gate and up), as one product over their matrices stacked by rows where
/// that pays: on a GPU each product is a kernel launch, and launches, not
/// bandwidth, bound a small model's step. On a CPU stacking would copy the
/// weights; those of one block format that greve's kernels take in place go
/// through one product all the same ([`quant::matmuls`]), which quantises
/// the input once and has the threads wait for each other once: a decoded
/// token 0.6 % faster on 2 Zen 4 cores (the two ways alternating token by
/// token in one process).
pub enum Projections {
    Stacked { matrix: Linear, rows: Vec<usize> },
    Separate(Vec<Linear>),
}

impl Projections {
    /// `parts` as the model on `device` runs them best: stacked on a GPU.
    pub fn new(parts: Vec<Linear>, device: &Device) -> Result<Self> {
        match device.is_cpu() {
            true => Ok(Projections::Separate(parts)),
            false => Self::stack(parts),
        }
    }

    /// Stacks `parts` where they are held alike (the same dtype, in
    /// candle's tensors); keeps them apart otherwise.
    fn stack(parts: Vec<Linear>) -> Result<Self> {
        Ok(match stacked(&parts)? {
            Some((matrix, rows)) => Projections::Stacked { matrix, rows },
            None => Projections::Separate(parts),
        })
    }

    /// The `N` projections of `x`, in the order they were given; `rows`
    /// as for [`Linear::forward`].
    pub fn forward<const N: usize>(&self, x: &Tensor, rows: &[usize]) -> Result<[Tensor; N]> {
        let ys: Vec<Tensor> = match self {
            Projections::Separate(parts) => {
                let mut ys = Vec::with_capacity(parts.len());
                // Matrices one kernel takes go through it together.
                let together = |a: &Linear, b: &Linear| {
                    a.kernel_format().is_some() && a.kernel_format() == b.kernel_format()
                };
                for group in parts.chunk_by(together) {
                    match group[0].kernel_format() {
                        Some(format) => {
                            let matrices: Vec<&MappedMatrix> = group
                                .iter()
                                .filter_map(|p| match p {
                                    Linear::Mapped(m) => Some(m),
                                    Linear::Candle(_) => None,
                                })
                                .collect();
                            ys.extend(forward_greve(format, &matrices, x, rows)?);
                        }
                        // Alone: `together` holds only where the kernels do.
                        None => ys.push(group[0].forward(x, rows)?),
                    }
                }
                Ok(ys)
            }
            Projections::Stacked {
                matrix,
                rows: parts,
            } => {
                let y = matrix.forward(x, rows)?;
                let last = y.rank() - 1;
                let mut start = 0;
                parts
                    .iter()
                    .map(|&n| {
                        start += n;
                        y.narrow(last, start - n, n)
                    })
                    .collect::<Result<_>>()
            }
        }?;
        let count = ys.len();
        ys.try_into()
            .map_err(|_| candle_core::Error::Msg(format!("{count} projections, not {N}")))
    }

    /// SwiGLU's gate over two projections, gate then up:
    /// `silu(gate(x)) * up(x)`. Stacked in one tensor on a GPU, both
    /// products and the gate are one kernel of greve's.
    pub fn swiglu(&self, x: &Tensor, rows: &[usize]) -> Result<Tensor> {
        if let (
            Projections::Stacked {
                matrix: Linear::Candle(QMatMul::Tensor(w)),
                ..
            },
            [_],
        ) = (self, rows)
        {
            if let Some(gated) = super::cuda::matvec_gated(w, x)? {
                return Ok(gated);
            }
        }
        let [gate, up] = self.forward(x, rows)?;
        super::ops::silu_mul(&gate, &up)
    }
}

/// `f(x, n)` for each sequence's `n` rows of `x` alone, put back together.
fn per_sequence(
    x: &Tensor,
    rows: &[usize],
    f: impl Fn(&Tensor, usize) -> Result<Tensor>,
) -> Result<Tensor> {
    let dim = x.rank() - 2;
    let mut start = 0;
    let mut ys = Vec::with_capacity(rows.len());
    for &n in rows {
        ys.push(f(&x.narrow(dim, start, n)?, n)?);
        start += n;
    }
    Tensor::cat(&ys, dim)
}

/// One matrix of `parts` stacked by rows, and the rows of each; `None`
/// when they are not all candle matrices of one dtype.
fn stacked(parts: &[Linear]) -> Result<Option<(Linear, Vec<usize>)>> {
    let matmuls: Option<Vec<&QMatMul>> = parts
        .iter()
        .map(|p| match p {
            Linear::Candle(m) => Some(m),
            Linear::Mapped(_) => None,
        })
        .collect();
    let Some(matmuls) = matmuls else {
        return Ok(None);
    };
    let rows = |shape: &candle_core::Shape| shape.dims().first().copied().unwrap_or(0);
    match matmuls[..] {
        [QMatMul::Tensor(first), ..] => {
            let tensors: Option<Vec<&Tensor>> = matmuls
                .iter()
                .map(|m| match m {
                    QMatMul::Tensor(t) if t.dtype() == first.dtype() => Some(t),
                    _ => None,
                })
                .collect();
            let Some(tensors) = tensors else {
                return Ok(None);
            };
            let rows = tensors.iter().map(|t| rows(t.shape())).collect();
            let matrix = Tensor::cat(&tensors, 0)?;
            Ok(Some((Linear::Candle(QMatMul::Tensor(matrix)), rows)))
        }
        [QMatMul::QTensor(first), ..] => {
            let blocks: Option<Vec<&QTensor>> = matmuls
                .iter()
                .map(|m| match m {
                    QMatMul::QTensor(q) if q.dtype() == first.dtype() => Some(&**q),
                    _ => None,
                })
                .collect();
            let Some(blocks) = blocks else {
                return Ok(None);
            };
            let rows: Vec<usize> = blocks.iter().map(|q| rows(q.shape())).collect();
            let cols = first.shape().dims()[1];
            // Rows are whole blocks, so the stacked matrix is the parts'
            // bytes one after another.
            let mut bytes = Vec::new();
            for q in &blocks {
                bytes.extend_from_slice(&q.data()?);
            }
            let storage = QStorage::from_data(Cow::Owned(bytes), &first.device(), first.dtype())?;
            let matrix = QTensor::new(storage, (rows.iter().sum::<usize>(), cols))?;
            Ok(Some((Linear::Candle(QMatMul::from_qtensor(matrix)?), rows)))
        }
        _ => Ok(None),
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

    /// The block format of greve's kernels for this matrix, unless they
    /// have none or candle's are asked for.
    fn kernel_format(&self) -> Option<QuantFormat> {
        match self.dtype {
            _ if super::isa::candle_products() => None,
            GgmlDType::Q4K => Some(QuantFormat::Q4K),
            GgmlDType::Q6K => Some(QuantFormat::Q6K),
            _ => None,
        }
    }

    /// The product with `x`; `rows` as for [`Linear::forward`] (candle's
    /// block products give a row the same sums in any batch).
    fn forward(&self, x: &Tensor, rows: &[usize]) -> Result<Tensor> {
        if let Some(format) = self.kernel_format() {
            let [y] = forward_greve(format, &[self], x, rows)?
                .try_into()
                .expect("one product of one matrix");
            return Ok(y);
        }
        let (n, k) = self.shape;
        let (xs, m) = flat_f32(x, k)?;
        let mut out = vec![0f32; m * n];
        let dtype = self.dtype;
        profile::time(Part::OtherProducts, || -> Result<()> {
            with_block_type!(dtype, B => {
                let blocks = self.blocks::<B>().ok_or_else(|| {
                    candle_core::Error::Msg(format!("{dtype:?} blocks misaligned in the file"))
                })?;
                if candle_blocks_run_here() {
                    k_quants::matmul::<B>((m, k, n), &xs, blocks, &mut out)?
                } else {
                    matmul_portable::<B>((m, k, n), &xs, blocks, &mut out)
                }
            }, else other => candle_core::bail!("no kernel for {other:?} blocks"));
            Ok(())
        })?;
        shaped_like(x, out, n)
    }
}

/// `x` (…, k) as `m` rows of f32, and `m`.
fn flat_f32(x: &Tensor, k: usize) -> Result<(Vec<f32>, usize)> {
    let xs = x.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    let m = xs.len() / k;
    Ok((xs, m))
}

/// `out`, `m` rows of `n`, as a tensor shaped (…, n) like `x`, and of its dtype.
fn shaped_like(x: &Tensor, out: Vec<f32>, n: usize) -> Result<Tensor> {
    let mut shape = x.dims().to_vec();
    if let Some(last) = shape.last_mut() {
        *last = n;
    }
    Tensor::from_vec(out, shape, x.device())?.to_dtype(x.dtype())
}

/// `matrices`, all of `format` and as wide as `x`, applied to it in one
/// product of greve's kernels ([`quant::matmuls`]), or two: where `x`'s
/// rows belong to several sequences (`rows`), those of a sequence long
/// enough for repacked tiles (a prompt's batch) take them together, and the
/// others (decoded tokens) the compact kernels together, as each sequence
/// would alone.
fn forward_greve(
    format: QuantFormat,
    matrices: &[&MappedMatrix],
    x: &Tensor,
    rows: &[usize],
) -> Result<Vec<Tensor>> {
    let k = matrices[0].shape.1;
    let (xs, m) = flat_f32(x, k)?;
    let tiled = |n: usize| n >= quant::packed::MIN_TOKENS;
    let lanes: [Vec<usize>; 2] = [false, true].map(|lane| {
        let mut start = 0;
        let mut lane_rows = Vec::new();
        for &n in rows {
            if tiled(n) == lane {
                lane_rows.extend(start..start + n);
            }
            start += n;
        }
        lane_rows
    });
    let mut outs: Vec<Vec<f32>> = matrices.iter().map(|w| vec![0f32; m * w.shape.0]).collect();
    let part = match format {
        QuantFormat::Q4K => Part::Q4K,
        QuantFormat::Q6K => Part::Q6K,
    };
    for (lane, lane_rows) in lanes.iter().enumerate() {
        if lane_rows.is_empty() {
            continue;
        }
        let whole = lane_rows.len() == m;
        let gathered: Vec<f32>;
        let input = match whole {
            true => &xs[..],
            false => {
                gathered = lane_rows
                    .iter()
                    .flat_map(|&r| &xs[r * k..][..k])
                    .copied()
                    .collect();
                &gathered[..]
            }
        };
        let mut lane_outs: Vec<Vec<f32>> = matrices
            .iter()
            .map(|w| vec![0f32; lane_rows.len() * w.shape.0])
            .collect();
        let mut parts: Vec<(&[u8], &mut [f32])> = matrices
            .iter()
            .zip(&mut lane_outs)
            .map(|(w, out)| (w.bytes(), &mut out[..]))
            .collect();
        let tiles = lane == 1;
        profile::time(part, || {
            quant::matmuls(format, (lane_rows.len(), k), input, &mut parts, tiles)
        });
        for ((w, out), lane_out) in matrices.iter().zip(&mut outs).zip(lane_outs) {
            let n = w.shape.0;
            if whole {
                *out = lane_out;
                continue;
            }
            for (&r, sums) in lane_rows.iter().zip(lane_out.chunks_exact(n)) {
                out[r * n..][..n].copy_from_slice(sums);
            }
        }
    }
    matrices
        .iter()
        .zip(outs)
        .map(|(w, out)| shaped_like(x, out, w.shape.0))
        .collect()
}

/// Whether candle's products for the block formats greve has no kernels
/// for run on this CPU: its ARM64 ones use `sdot` without asking, an
/// illegal instruction before ARMv8.2's DotProd (Cortex-A72, the Raspberry
/// Pi 4), which would kill greve on a Q8_0, Q4_0 or Q5_K file.
fn candle_blocks_run_here() -> bool {
    #[cfg(target_arch = "aarch64")]
    return std::arch::is_aarch64_feature_detected!("dotprod");
    #[cfg(not(target_arch = "aarch64"))]
    true
}

/// `k_quants::matmul` through candle's portable dot products, for the CPUs
/// [`candle_blocks_run_here`] rules out: the activations quantised to the
/// format's partner blocks as there, then each row of blocks against them.
fn matmul_portable<B: GgmlType>(
    (m, k, n): (usize, usize, usize),
    xs: &[f32],
    blocks: &[B],
    out: &mut [f32],
) {
    let per_row = k / B::BLCK_SIZE;
    assert!(
        per_row * B::BLCK_SIZE == k && blocks.len() == n * per_row && out.len() == m * n,
        "a product of the wrong size"
    );
    let mut acts = vec![B::VecDotType::zeros(); m * per_row];
    for (x, a) in xs.chunks_exact(k).zip(acts.chunks_exact_mut(per_row)) {
        B::VecDotType::from_float(x, a);
    }
    let out = super::Disjoint::new(out);
    super::in_parallel(n, |rows| {
        for r in rows {
            let row = &blocks[r * per_row..(r + 1) * per_row];
            for (t, a) in acts.chunks_exact(per_row).enumerate() {
                // SAFETY: (t, r) lies in `out` (asserted sizes), and row r
                // belongs to this range alone.
                unsafe { *out.at(t * n + r) = B::vec_dot_unopt(k, row, a) }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn portable_products_match_candles_kernels() {
        if !candle_blocks_run_here() {
            // candle's kernels, the reference here, cannot run on this CPU;
            // the engine tests hold the portable ones to llama.cpp instead.
            return;
        }
        let (m, k, n) = (3, 512, 37);
        let x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let w: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.11).cos()).collect();
        fn both<B: GgmlType>(mkn: (usize, usize, usize), x: &[f32], w: &[f32]) {
            let mut blocks = vec![B::zeros(); w.len() / B::BLCK_SIZE];
            B::from_float(w, &mut blocks);
            let (mut want, mut got) = (vec![0f32; mkn.0 * mkn.2], vec![0f32; mkn.0 * mkn.2]);
            k_quants::matmul::<B>(mkn, x, &blocks, &mut want).unwrap();
            matmul_portable::<B>(mkn, x, &blocks, &mut got);
            for (w, g) in want.iter().zip(&got) {
                assert!(
                    (w - g).abs() <= 1e-4 * w.abs().max(1.0),
                    "{:?}: {w} vs {g}",
                    B::DTYPE
                );
            }
        }
        both::<k_quants::BlockQ8_0>((m, k, n), &x, &w);
        both::<k_quants::BlockQ4_0>((m, k, n), &x, &w);
        both::<k_quants::BlockQ5K>((m, k, n), &x, &w);
    }

    /// Stacked or not, each projection is the same product.
    #[test]
    fn stacked_projections_equal_separate_ones() {
        let (d, rows) = (256, [64, 32, 32]);
        let x = Tensor::randn(0f32, 1.0, (1, 3, d), &Device::Cpu).unwrap();
        let matrices: Vec<Tensor> = rows
            .iter()
            .map(|&r| Tensor::randn(0f32, 1.0, (r, d), &Device::Cpu).unwrap())
            .collect();
        let dense = |m: &Tensor| Linear::Candle(QMatMul::Tensor(m.clone()));
        let blocks = |m: &Tensor| {
            let q = QTensor::quantize(m, GgmlDType::Q8_0).unwrap();
            Linear::Candle(QMatMul::from_qtensor(q).unwrap())
        };
        // candle's Q8_0 products do not run on every CPU (see
        // `candle_blocks_run_here`); greve's own weights never take them.
        let makes: Vec<fn(&Tensor) -> Linear> = match candle_blocks_run_here() {
            true => vec![dense, blocks],
            false => vec![dense],
        };
        for make in makes {
            let parts = || matrices.iter().map(make).collect::<Vec<_>>();
            let separate = Projections::new(parts(), &Device::Cpu).unwrap();
            assert!(matches!(separate, Projections::Separate(_)));
            let stacked = Projections::stack(parts()).unwrap();
            assert!(matches!(stacked, Projections::Stacked { .. }));
            let (want, got) = (
                separate.forward::<3>(&x, &[3]).unwrap(),
                stacked.forward::<3>(&x, &[3]).unwrap(),
            );
            for ((w, g), r) in want.iter().zip(&got).zip(rows) {
                assert_eq!(g.dims(), &[1, 3, r]);
                for (w, g) in values(w).iter().zip(values(g)) {
                    assert!((w - g).abs() <= 1e-4 * w.abs().max(1.0), "{w} vs {g}");
                }
            }
            assert!(stacked.forward::<2>(&x, &[3]).is_err());
        }
        // Matrices held differently stay apart.
        let mixed = vec![dense(&matrices[0]), blocks(&matrices[1])];
        assert!(matches!(
            Projections::stack(mixed).unwrap(),
            Projections::Separate(_)
        ));
    }
}
