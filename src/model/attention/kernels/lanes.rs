//! The kernels written once over [`Lanes`], a vector of f32 lanes of one
//! width, and compiled for each instruction set by the callers in `x86.rs`
//! and `arm.rs`.

use half::f16;

use super::*;
use crate::model::isa::{prefetch, Level};

/// Two passes, `V::N` lanes at a time: the maximum, then the exponentials
/// and their sum.
#[inline(always)]
pub(super) unsafe fn softmax_with<V: Lanes>(x: &mut [f32], scale: f32) -> f32 {
    let whole = x.len() / V::N * V::N;
    let p = x.as_mut_ptr();
    let mut m = V::splat(f32::NEG_INFINITY);
    for i in (0..whole).step_by(V::N) {
        m = m.max(V::load(p.add(i)));
    }
    let max = x[whole..].iter().fold(m.hmax(), |m, &v| m.max(v));
    let (top, scale_v) = (V::splat(max), V::splat(scale));
    let (mut sum, mut total) = (V::zero(), 0f64);
    for (n, i) in (0..whole).step_by(V::N).enumerate() {
        let e = V::load(p.add(i)).sub(top).mul(scale_v).exp();
        sum = sum.add(e);
        e.store(p.add(i));
        // Lanes that each add up thousands of weights drift (four NEON
        // lanes over 100k positions by 1e-5): every 64 vectors they go to
        // an f64 total, as the one-at-a-time tail's do.
        if n % 64 == 63 {
            total += sum.hsum() as f64;
            sum = V::zero();
        }
    }
    (total + sum.hsum() as f64) as f32 + softmax_tail(x, whole, max, scale)
}

/// Runs `f(first, count)` over the group's heads, [`HEADS`] at a time
/// and then one by one.
pub(super) fn by_groups(group: usize, mut f: impl FnMut(usize, usize)) {
    let mut first = 0;
    while first < group {
        let count = if group - first >= HEADS { HEADS } else { 1 };
        f(first, count);
        first += count;
    }
}

/// Query heads handled per pass over the cache.
pub(super) const HEADS: usize = 4;

/// f32 vectors of one width, for kernels written once for AVX2 (8 lanes),
/// AVX-512 (16 lanes) and NEON (4 lanes). The methods inline into the callers below,
/// whose `target_feature` lets the intrinsics compile as single instructions.
pub(super) trait Lanes: Copy {
    const N: usize;
    unsafe fn zero() -> Self;
    unsafe fn load(p: *const f32) -> Self;
    unsafe fn store(self, p: *mut f32);
    /// `N` f16 values, widened.
    unsafe fn widen(p: *const f16) -> Self;
    /// `N` i8 values, widened.
    unsafe fn widen_i8(p: *const i8) -> Self;
    unsafe fn splat(x: f32) -> Self;
    /// `a · b + self`.
    unsafe fn fma(self, a: Self, b: Self) -> Self;
    unsafe fn add(self, b: Self) -> Self;
    unsafe fn sub(self, b: Self) -> Self;
    unsafe fn mul(self, b: Self) -> Self;
    unsafe fn max(self, b: Self) -> Self;
    /// Each lane rounded to the nearest integer, ties to even.
    unsafe fn round(self) -> Self;
    /// `self · 2^n` for whole `n`, by adding to the exponents (no check of
    /// the range: what [`exp`] needs).
    unsafe fn times_pow2(self, n: Self) -> Self;
    unsafe fn hsum(self) -> f32;
    unsafe fn hmax(self) -> f32;

    /// [`exp`] of each lane.
    #[inline(always)]
    unsafe fn exp(self) -> Self {
        let t = self
            .max(Self::splat(-87.0))
            .mul(Self::splat(std::f32::consts::LOG2_E));
        let n = t.round();
        let u = t.sub(n).mul(Self::splat(std::f32::consts::LN_2));
        let p = TAYLOR[1..]
            .iter()
            .fold(Self::splat(TAYLOR[0]), |p, &c| Self::splat(c).fma(p, u));
        p.times_pow2(n)
    }
}

/// One block at a time, `V::N` positions per vector: each dimension of the
/// keys is multiplied by that dimension of every query, broadcast. Even and
/// odd dimensions go to separate sums, so that twice as many multiply-adds
/// are in flight.
#[inline(always)]
pub(super) unsafe fn scores_with<V: Lanes, const G: usize>(
    queries: &[f32],
    blocks: &[f16],
    hd: usize,
    stride: usize,
    out: &mut [f32],
) {
    let q = queries.as_ptr();
    for (b, block) in blocks.chunks_exact(hd * BLOCK).enumerate() {
        for part in (0..BLOCK).step_by(V::N) {
            let keys = block.as_ptr().add(part);
            let mut acc = [[V::zero(); G]; 2];
            for d in (0..hd).step_by(2) {
                prefetch(keys.wrapping_add(d * BLOCK + AHEAD * hd * BLOCK), Level::L2);
                for (e, acc) in acc.iter_mut().enumerate() {
                    let k = V::widen(keys.add((d + e) * BLOCK));
                    for (j, a) in acc.iter_mut().enumerate() {
                        *a = a.fma(V::splat(*q.add(j * hd + d + e)), k);
                    }
                }
            }
            for (j, (even, odd)) in acc[0].iter().zip(&acc[1]).enumerate() {
                even.add(*odd)
                    .store(out.as_mut_ptr().add(j * stride + b * BLOCK + part));
            }
        }
    }
}

/// Values are read `L·V::N` dimensions at a time, with the sums of `G`
/// heads for those dimensions in registers over [`ROWS_PER_PASS`] rows,
/// which stay in L1 for the next slice of dimensions: memory is read once.
/// `G·L` sums, `L` values and a weight must fit the registers: AVX-512 has
/// 32 (L = 4), AVX2 16 (L = 2).
#[inline(always)]
pub(super) unsafe fn mix_with<E: Elem, V: Lanes, const G: usize, const L: usize>(
    weights: &[f32],
    stride: usize,
    (values, scales): (&[E], Option<&[f32]>),
    hd: usize,
    out: &mut [f32],
) {
    let span = values.len() / hd;
    let base = out.as_mut_ptr();
    for start in (0..span).step_by(ROWS_PER_PASS) {
        let rows = start..span.min(start + ROWS_PER_PASS);
        for c in (0..hd).step_by(L * V::N) {
            let sums = |j: usize, l: usize| base.add(j * hd + c + l * V::N);
            let mut acc: [[V; L]; G] =
                std::array::from_fn(|j| std::array::from_fn(|l| V::load(sums(j, l))));
            for s in rows.clone() {
                let row = values.as_ptr().add(s * hd + c);
                let next = row.wrapping_add(ROWS_PER_PASS * hd);
                prefetch(next, Level::L2);
                if size_of::<E>() * L * V::N > 64 {
                    prefetch(next.wrapping_add(64 / size_of::<E>()), Level::L2);
                }
                let mut v: [V; L] = std::array::from_fn(|l| E::widen::<V>(row.add(l * V::N)));
                if let Some(scales) = scales {
                    let scales = scales.as_ptr().add(s * hd / GROUP);
                    for (l, v) in v.iter_mut().enumerate() {
                        *v = v.mul(V::splat(*scales.add((c + l * V::N) / GROUP)));
                    }
                }
                for (j, acc) in acc.iter_mut().enumerate() {
                    let w = V::splat(*weights.get_unchecked(j * stride + s));
                    for l in 0..L {
                        acc[l] = acc[l].fma(w, v[l]);
                    }
                }
            }
            for (j, acc) in acc.iter().enumerate() {
                for (l, a) in acc.iter().enumerate() {
                    a.store(sums(j, l));
                }
            }
        }
    }
}

pub(super) const ROWS_PER_PASS: usize = 64;

/// Key blocks read ahead of the one in use.
pub(super) const AHEAD: usize = 2;
