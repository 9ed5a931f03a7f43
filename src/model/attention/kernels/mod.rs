//! The two loops over the cache, with the vector instructions the CPU has
//! (chosen at run time).
//!
//! Keys are stored in blocks of [`BLOCK`] positions, dimension-major within a
//! block, so that one vector holds one dimension of 16 keys: the scores of 16
//! positions come out of plain multiply-adds (or, for i8 keys, integer dot
//! products), with no horizontal sum per key, which used to cost as much as
//! the products themselves. Values stay one row per position: the mix adds
//! whole rows, weighted, into the outputs.

use half::f16;
use half::slice::HalfFloatSliceExt;

use crate::model::isa::Isa;

#[cfg(target_arch = "aarch64")]
mod arm;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod lanes;
#[cfg(target_arch = "x86_64")]
mod x86;

#[cfg(target_arch = "aarch64")]
use arm::*;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
use lanes::*;
#[cfg(target_arch = "x86_64")]
use x86::*;

/// Positions a key block holds: one AVX-512 vector of f32 lanes.
pub const BLOCK: usize = 16;

/// Dimensions an i8 key block keeps together per position: what one lane of
/// `vpdpbusd` multiplies and adds.
const QUAD: usize = 4;

/// Where (position `s`, dimension `d`) of a head's f16 keys lies.
pub fn f16_key_at(s: usize, d: usize, hd: usize) -> usize {
    (s / BLOCK * hd + d) * BLOCK + s % BLOCK
}

/// Where (position `s`, dimension `d`) of a head's i8 keys lies: each block
/// is (hd / 4, 16 positions, 4 dimensions).
pub fn i8_key_at(s: usize, d: usize, hd: usize) -> usize {
    ((s / BLOCK * (hd / QUAD) + d / QUAD) * BLOCK + s % BLOCK) * QUAD + d % QUAD
}

/// Dimensions of a key, value or query that share one scale in i8, as in
/// llama.cpp's `q8_0`: an outlier dimension costs the precision of its own
/// 32, not of the whole head.
pub const GROUP: usize = 32;

/// Where the scale of (position `s`, group `group`) of a head's i8 keys
/// lies, for `per_row` groups a key: each block is (per_row, 16 positions),
/// one vector a group.
pub fn key_scale_at(s: usize, group: usize, per_row: usize) -> usize {
    (s / BLOCK * per_row + group) * BLOCK + s % BLOCK
}

/// `scores[j · stride + s] = queries[j] · key[s]` for the group's queries
/// (rows of `hd`) and every position `s` of the whole key `blocks`.
pub fn scores(
    level: Isa,
    queries: &[f32],
    blocks: &[f16],
    hd: usize,
    stride: usize,
    scores: &mut [f32],
) {
    let span = blocks.len() / hd;
    assert!(span <= stride && scores.len() >= (queries.len() / hd - 1) * stride + span);
    #[cfg(target_arch = "x86_64")]
    if level >= Isa::Avx2 && hd.is_multiple_of(2) {
        return by_groups(queries.len() / hd, |first, g| {
            let (q, out) = (&queries[first * hd..], &mut scores[first * stride..]);
            // SAFETY: the CPU has the features each kernel needs; the sizes
            // were checked above.
            unsafe {
                match (level == Isa::Avx512, g) {
                    (true, HEADS) => scores_512::<HEADS>(q, blocks, hd, stride, out),
                    (true, _) => scores_512::<1>(q, blocks, hd, stride, out),
                    (false, HEADS) => scores_f16c::<HEADS>(q, blocks, hd, stride, out),
                    (false, _) => scores_f16c::<1>(q, blocks, hd, stride, out),
                }
            }
        });
    }
    #[cfg(target_arch = "aarch64")]
    if level >= Isa::Neon && hd.is_multiple_of(2) {
        return by_groups(queries.len() / hd, |first, g| {
            let (q, out) = (&queries[first * hd..], &mut scores[first * stride..]);
            // SAFETY: every ARM64 CPU has NEON; the sizes were checked above.
            unsafe {
                match g {
                    HEADS => scores_neon::<HEADS>(q, blocks, hd, stride, out),
                    _ => scores_neon::<1>(q, blocks, hd, stride, out),
                }
            }
        });
    }
    let _ = level;
    let mut key = vec![0f32; hd];
    for s in 0..span {
        for (d, k) in key.iter_mut().enumerate() {
            *k = blocks[f16_key_at(s, d, hd)].to_f32();
        }
        for (j, q) in queries.chunks_exact(hd).enumerate() {
            scores[j * stride + s] = q.iter().zip(&key).map(|(a, b)| a * b).sum();
        }
    }
}

/// [`scores`] over i8 keys, for queries rounded to i8 too, both with a
/// scale per [`GROUP`] dimensions (the keys' laid out by [`key_scale_at`],
/// the queries' one row of `hd / GROUP` a head): the products of a group are
/// exact integers, whatever the kernel, and the score is
/// `Σ_group (Σ q·k) as f32 · key_scale · query_scale` in that order.
pub fn scores_i8(
    level: Isa,
    (queries, query_scales): (&[i8], &[f32]),
    (blocks, key_scales): (&[i8], &[f32]),
    hd: usize,
    stride: usize,
    scores: &mut [f32],
) {
    let span = blocks.len() / hd;
    assert!(span <= stride && scores.len() >= (queries.len() / hd - 1) * stride + span);
    let per_row = hd / GROUP;
    assert!(hd.is_multiple_of(GROUP) && key_scales.len() >= span * per_row);
    assert!(query_scales.len() * hd >= queries.len() * per_row);
    #[cfg(target_arch = "x86_64")]
    {
        let vnni = level == Isa::Avx512 && crate::model::isa::avx512_integers();
        if vnni || level >= Isa::Avx2 {
            return by_groups(queries.len() / hd, |first, g| {
                let q = (&queries[first * hd..], &query_scales[first * per_row..]);
                let out = &mut scores[first * stride..];
                // SAFETY: the CPU has the features each kernel needs; the
                // sizes were checked above.
                unsafe {
                    match (vnni, g) {
                        (true, HEADS) => {
                            scores_vnni::<HEADS>(q, (blocks, key_scales), hd, stride, out)
                        }
                        (true, _) => scores_vnni::<1>(q, (blocks, key_scales), hd, stride, out),
                        (false, HEADS) => {
                            scores_avx2::<HEADS>(q, (blocks, key_scales), hd, stride, out)
                        }
                        (false, _) => scores_avx2::<1>(q, (blocks, key_scales), hd, stride, out),
                    }
                }
            });
        }
    }
    #[cfg(target_arch = "aarch64")]
    if level >= Isa::Neon {
        return by_groups(queries.len() / hd, |first, g| {
            let q = (&queries[first * hd..], &query_scales[first * per_row..]);
            let out = &mut scores[first * stride..];
            let k = (blocks, key_scales);
            // SAFETY: the CPU has the features each kernel needs; the sizes
            // were checked above.
            unsafe {
                match (level >= Isa::DotProd, g) {
                    (true, HEADS) => scores_i8_dotprod::<HEADS>(q, k, hd, stride, out),
                    (true, _) => scores_i8_dotprod::<1>(q, k, hd, stride, out),
                    (false, HEADS) => scores_i8_neon::<HEADS>(q, k, hd, stride, out),
                    (false, _) => scores_i8_neon::<1>(q, k, hd, stride, out),
                }
            }
        });
    }
    let _ = level;
    for s in 0..span {
        for (j, q) in queries.chunks_exact(hd).enumerate() {
            let mut score = 0f32;
            for group in 0..per_row {
                let dot: i32 = (group * GROUP..(group + 1) * GROUP)
                    .map(|d| q[d] as i32 * blocks[i8_key_at(s, d, hd)] as i32)
                    .sum();
                let key_scale = key_scales[key_scale_at(s, group, per_row)];
                score += dot as f32 * key_scale * query_scales[j * per_row + group];
            }
            scores[j * stride + s] = score;
        }
    }
}

/// `out[j] = Σ_s weights[j · stride + s] · values[s]` for the group's heads
/// (rows of `hd` in `out`), over the value rows given, each [`GROUP`] of a
/// row times its scale where there are scales (i8 values).
pub fn mix<E: Elem>(
    level: Isa,
    weights: &[f32],
    stride: usize,
    (values, scales): (&[E], Option<&[f32]>),
    hd: usize,
    out: &mut [f32],
) {
    out.fill(0.0);
    let span = values.len() / hd;
    assert!(span <= stride && weights.len() >= (out.len() / hd - 1) * stride + span);
    if let Some(scales) = scales {
        assert!(hd.is_multiple_of(GROUP) && scales.len() >= span * hd / GROUP);
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let _ = level;
    #[cfg(target_arch = "aarch64")]
    if level >= Isa::Neon && hd.is_multiple_of(16) {
        return by_groups(out.len() / hd, |first, g| {
            let (w, o) = (&weights[first * stride..], &mut out[first * hd..]);
            // SAFETY: every ARM64 CPU has NEON; the sizes were checked above.
            unsafe {
                match g {
                    HEADS => mix_neon::<E, HEADS>(w, stride, (values, scales), hd, o),
                    _ => mix_neon::<E, 1>(w, stride, (values, scales), hd, o),
                }
            }
        });
    }
    #[cfg(target_arch = "x86_64")]
    {
        let (avx512, f16c) = (
            level == Isa::Avx512 && hd.is_multiple_of(64),
            level >= Isa::Avx2 && hd.is_multiple_of(16),
        );
        if avx512 || f16c {
            return by_groups(out.len() / hd, |first, g| {
                let (w, o) = (&weights[first * stride..], &mut out[first * hd..]);
                // SAFETY: the CPU has the features each kernel needs; the
                // sizes were checked above.
                unsafe {
                    let v = (values, scales);
                    match (avx512, g) {
                        (true, HEADS) => mix_512::<E, HEADS>(w, stride, v, hd, o),
                        (true, _) => mix_512::<E, 1>(w, stride, v, hd, o),
                        (false, HEADS) => mix_f16c::<E, HEADS>(w, stride, v, hd, o),
                        (false, _) => mix_f16c::<E, 1>(w, stride, v, hd, o),
                    }
                }
            });
        }
    }
    let mut row = vec![0f32; hd];
    for (s, value) in values.chunks_exact(hd).enumerate() {
        E::widen_slice(value, &mut row);
        if let Some(scales) = scales {
            let scales = &scales[s * hd / GROUP..];
            for (part, scale) in row.chunks_exact_mut(GROUP).zip(scales) {
                part.iter_mut().for_each(|v| *v *= scale);
            }
        }
        for (j, out) in out.chunks_exact_mut(hd).enumerate() {
            let w = weights[j * stride + s];
            for (o, v) in out.iter_mut().zip(&row) {
                *o += w * v;
            }
        }
    }
}

/// The weights of one head's softmax, unnormalised:
/// `x[s] ← e^(scale·(x[s] − max x))`. Returns their sum: what the weighted
/// sum of values is to be divided by.
pub fn softmax_weights(level: Isa, x: &mut [f32], scale: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if level >= Isa::Avx2 {
        // SAFETY: the CPU has the features each kernel needs.
        return unsafe {
            match level == Isa::Avx512 {
                true => softmax_512(x, scale),
                false => softmax_f16c(x, scale),
            }
        };
    }
    #[cfg(target_arch = "aarch64")]
    if level >= Isa::Neon {
        // SAFETY: every ARM64 CPU has NEON.
        return unsafe { softmax_neon(x, scale) };
    }
    let _ = level;
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    softmax_tail(x, 0, max, scale)
}

/// [`softmax_weights`]' exponentials from `x[from..]` on, one at a time;
/// returns their sum (in f64: one f32 sum over thousands of positions would
/// drift).
fn softmax_tail(x: &mut [f32], from: usize, max: f32, scale: f32) -> f32 {
    let mut total = 0f64;
    for x in &mut x[from..] {
        *x = exp((*x - max) * scale);
        total += *x as f64;
    }
    total as f32
}

/// e^x for x ≤ 0, within 1.5e-7·(1 + |x|) relative (libm's expf is a call
/// per value, and slow on underflow, which far-away positions hit all the
/// time): 2^n · 2^f with n = round(x·log2 e) and 2^f = e^(f·ln 2) by its
/// Taylor series to the 6th power (|f·ln 2| ≤ 0.35). [`Lanes::exp`] is the
/// same, a vector at a time.
fn exp(x: f32) -> f32 {
    // Below e^-87 an f32 is subnormal; the weight of such a position is 0 to all intents.
    let t = x.max(-87.0) * std::f32::consts::LOG2_E;
    let n = t.round_ties_even();
    let u = (t - n) * std::f32::consts::LN_2;
    let p = TAYLOR[1..].iter().fold(TAYLOR[0], |p, c| p * u + c);
    f32::from_bits(p.to_bits().wrapping_add(((n as i32) << 23) as u32))
}

/// 1/k! for k = 6 down to 0.
const TAYLOR: [f32; 7] = [
    1.0 / 720.0,
    1.0 / 120.0,
    1.0 / 24.0,
    1.0 / 6.0,
    0.5,
    1.0,
    1.0,
];

/// What the cache holds a value as.
pub trait Elem: Copy + Sync {
    /// A row of values as f32.
    fn widen_slice(row: &[Self], out: &mut [f32]);
    /// `V::N` values from `p`, widened.
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    #[allow(private_bounds)]
    unsafe fn widen<V: Lanes>(p: *const Self) -> V;
}

impl Elem for f16 {
    fn widen_slice(row: &[Self], out: &mut [f32]) {
        row.convert_to_f32_slice(out)
    }
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    #[inline(always)]
    #[allow(private_bounds)]
    unsafe fn widen<V: Lanes>(p: *const Self) -> V {
        V::widen(p)
    }
}

impl Elem for i8 {
    fn widen_slice(row: &[Self], out: &mut [f32]) {
        for (o, &x) in out.iter_mut().zip(row) {
            *o = x as f32;
        }
    }
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    #[inline(always)]
    #[allow(private_bounds)]
    unsafe fn widen<V: Lanes>(p: *const Self) -> V {
        V::widen_i8(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::isa::levels;

    /// Integer products, then the same float operations in the same order:
    /// every level gives the portable code's numbers exactly, for groups of
    /// four heads and single ones.
    #[test]
    fn i8_scores_are_the_same_numbers_at_every_level() {
        let (hd, span, heads) = (128, 48, 6);
        let per_row = hd / GROUP;
        // In [-127, 127], as the cache rounds: AVX2's sign trick needs no -128.
        let bytes = |n: usize, seed: usize| -> Vec<i8> {
            (0..n)
                .map(|i| (((i * 37 + seed) % 255) as i32 - 127) as i8)
                .collect()
        };
        let scales =
            |n: usize| -> Vec<f32> { (0..n).map(|i| 0.01 + (i % 7) as f32 * 0.003).collect() };
        let (keys, key_scales) = (bytes(span * hd, 11), scales(span * per_row));
        let (queries, query_scales) = (bytes(heads * hd, 5), scales(heads * per_row));
        let run = |level: Isa| {
            let mut out = vec![0f32; heads * span];
            let q = (&queries[..], &query_scales[..]);
            scores_i8(level, q, (&keys, &key_scales), hd, span, &mut out);
            out
        };
        let want = run(Isa::Scalar);
        for level in levels() {
            assert_eq!(run(level), want, "{level:?}");
        }
    }

    #[test]
    fn exp_is_accurate_over_the_softmax_range() {
        let xs: Vec<f32> = (0..=100_000)
            .map(|i| -90.0 * i as f32 / 100_000.0)
            .collect();
        let check = |x: f32, got: f32| {
            let want = x.exp();
            assert!(
                (got - want).abs() <= 1.5e-7 * (1.0 - x) * want + 1e-37,
                "exp({x}) = {got}, not {want}"
            );
        };
        for &x in &xs {
            check(x, exp(x));
        }
        // The vector kernels, through the weights of a softmax whose maximum is 0.
        for level in levels() {
            let mut weights = xs.clone();
            let total = softmax_weights(level, &mut weights, 1.0);
            for (&x, &w) in xs.iter().zip(&weights) {
                check(x, w);
            }
            let want: f64 = xs.iter().map(|&x| (x as f64).exp()).sum();
            assert!(
                (total as f64 - want).abs() < 1e-5 * want,
                "{level:?}: Σ {total} vs {want}"
            );
        }
    }
}
