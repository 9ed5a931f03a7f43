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

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn softmax_f16c(x: &mut [f32], scale: f32) -> f32 {
    softmax_with::<std::arch::x86_64::__m256>(x, scale)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn softmax_512(x: &mut [f32], scale: f32) -> f32 {
    softmax_with::<std::arch::x86_64::__m512>(x, scale)
}

/// Two passes, `V::N` lanes at a time: the maximum, then the exponentials
/// and their sum.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[inline(always)]
unsafe fn softmax_with<V: Lanes>(x: &mut [f32], scale: f32) -> f32 {
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
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn by_groups(group: usize, mut f: impl FnMut(usize, usize)) {
    let mut first = 0;
    while first < group {
        let count = if group - first >= HEADS { HEADS } else { 1 };
        f(first, count);
        first += count;
    }
}

/// Query heads handled per pass over the cache.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const HEADS: usize = 4;

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

/// f32 vectors of one width, for kernels written once for AVX2 (8 lanes),
/// AVX-512 (16 lanes) and NEON (4 lanes). The methods inline into the callers below,
/// whose `target_feature` lets the intrinsics compile as single instructions.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
trait Lanes: Copy {
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

#[cfg(target_arch = "x86_64")]
impl Lanes for std::arch::x86_64::__m256 {
    const N: usize = 8;
    #[inline(always)]
    unsafe fn zero() -> Self {
        std::arch::x86_64::_mm256_setzero_ps()
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        std::arch::x86_64::_mm256_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        std::arch::x86_64::_mm256_storeu_ps(p, self)
    }
    #[inline(always)]
    unsafe fn widen(p: *const f16) -> Self {
        use std::arch::x86_64::*;
        _mm256_cvtph_ps(_mm_loadu_si128(p.cast()))
    }
    #[inline(always)]
    unsafe fn widen_i8(p: *const i8) -> Self {
        use std::arch::x86_64::*;
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p.cast())))
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        std::arch::x86_64::_mm256_set1_ps(x)
    }
    #[inline(always)]
    unsafe fn fma(self, a: Self, b: Self) -> Self {
        std::arch::x86_64::_mm256_fmadd_ps(a, b, self)
    }
    #[inline(always)]
    unsafe fn add(self, b: Self) -> Self {
        std::arch::x86_64::_mm256_add_ps(self, b)
    }
    #[inline(always)]
    unsafe fn sub(self, b: Self) -> Self {
        std::arch::x86_64::_mm256_sub_ps(self, b)
    }
    #[inline(always)]
    unsafe fn mul(self, b: Self) -> Self {
        std::arch::x86_64::_mm256_mul_ps(self, b)
    }
    #[inline(always)]
    unsafe fn max(self, b: Self) -> Self {
        std::arch::x86_64::_mm256_max_ps(self, b)
    }
    #[inline(always)]
    unsafe fn round(self) -> Self {
        use std::arch::x86_64::*;
        _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(self)
    }
    #[inline(always)]
    unsafe fn times_pow2(self, n: Self) -> Self {
        use std::arch::x86_64::*;
        let exponent = _mm256_slli_epi32::<23>(_mm256_cvtps_epi32(n));
        _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(self), exponent))
    }
    #[inline(always)]
    unsafe fn hsum(self) -> f32 {
        use std::arch::x86_64::*;
        let v = _mm_add_ps(
            _mm256_castps256_ps128(self),
            _mm256_extractf128_ps::<1>(self),
        );
        let v = _mm_add_ps(v, _mm_movehl_ps(v, v));
        _mm_cvtss_f32(_mm_add_ss(v, _mm_movehdup_ps(v)))
    }
    #[inline(always)]
    unsafe fn hmax(self) -> f32 {
        use std::arch::x86_64::*;
        let v = _mm_max_ps(
            _mm256_castps256_ps128(self),
            _mm256_extractf128_ps::<1>(self),
        );
        let v = _mm_max_ps(v, _mm_movehl_ps(v, v));
        _mm_cvtss_f32(_mm_max_ss(v, _mm_movehdup_ps(v)))
    }
}

#[cfg(target_arch = "x86_64")]
impl Lanes for std::arch::x86_64::__m512 {
    const N: usize = 16;
    #[inline(always)]
    unsafe fn zero() -> Self {
        std::arch::x86_64::_mm512_setzero_ps()
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        std::arch::x86_64::_mm512_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        std::arch::x86_64::_mm512_storeu_ps(p, self)
    }
    #[inline(always)]
    unsafe fn widen(p: *const f16) -> Self {
        use std::arch::x86_64::*;
        _mm512_cvtph_ps(_mm256_loadu_si256(p.cast()))
    }
    #[inline(always)]
    unsafe fn widen_i8(p: *const i8) -> Self {
        use std::arch::x86_64::*;
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p.cast())))
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        std::arch::x86_64::_mm512_set1_ps(x)
    }
    #[inline(always)]
    unsafe fn fma(self, a: Self, b: Self) -> Self {
        std::arch::x86_64::_mm512_fmadd_ps(a, b, self)
    }
    #[inline(always)]
    unsafe fn add(self, b: Self) -> Self {
        std::arch::x86_64::_mm512_add_ps(self, b)
    }
    #[inline(always)]
    unsafe fn sub(self, b: Self) -> Self {
        std::arch::x86_64::_mm512_sub_ps(self, b)
    }
    #[inline(always)]
    unsafe fn mul(self, b: Self) -> Self {
        std::arch::x86_64::_mm512_mul_ps(self, b)
    }
    #[inline(always)]
    unsafe fn max(self, b: Self) -> Self {
        std::arch::x86_64::_mm512_max_ps(self, b)
    }
    #[inline(always)]
    unsafe fn round(self) -> Self {
        use std::arch::x86_64::*;
        _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(self)
    }
    #[inline(always)]
    unsafe fn times_pow2(self, n: Self) -> Self {
        use std::arch::x86_64::*;
        let exponent = _mm512_slli_epi32::<23>(_mm512_cvtps_epi32(n));
        _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(self), exponent))
    }
    #[inline(always)]
    unsafe fn hsum(self) -> f32 {
        std::arch::x86_64::_mm512_reduce_add_ps(self)
    }
    #[inline(always)]
    unsafe fn hmax(self) -> f32 {
        std::arch::x86_64::_mm512_reduce_max_ps(self)
    }
}

/// NEON: four lanes. Half floats are widened by `fcvtl` (Rust's f16 vector
/// types are not stable yet; the instruction is every ARM64 CPU's).
#[cfg(target_arch = "aarch64")]
impl Lanes for std::arch::aarch64::float32x4_t {
    const N: usize = 4;
    #[inline(always)]
    unsafe fn zero() -> Self {
        std::arch::aarch64::vdupq_n_f32(0.0)
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        std::arch::aarch64::vld1q_f32(p)
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        std::arch::aarch64::vst1q_f32(p, self)
    }
    #[inline(always)]
    unsafe fn widen(p: *const f16) -> Self {
        use std::arch::aarch64::*;
        let halves = vld1_u16(p.cast());
        let out: float32x4_t;
        std::arch::asm!(
            "fcvtl {out:v}.4s, {halves:v}.4h",
            out = lateout(vreg) out,
            halves = in(vreg) halves,
            options(pure, nomem, nostack, preserves_flags)
        );
        out
    }
    #[inline(always)]
    unsafe fn widen_i8(p: *const i8) -> Self {
        use std::arch::aarch64::*;
        let four = vreinterpret_s8_u32(vdup_n_u32(p.cast::<u32>().read_unaligned()));
        vcvtq_f32_s32(vmovl_s16(vget_low_s16(vmovl_s8(four))))
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        std::arch::aarch64::vdupq_n_f32(x)
    }
    #[inline(always)]
    unsafe fn fma(self, a: Self, b: Self) -> Self {
        std::arch::aarch64::vfmaq_f32(self, a, b)
    }
    #[inline(always)]
    unsafe fn add(self, b: Self) -> Self {
        std::arch::aarch64::vaddq_f32(self, b)
    }
    #[inline(always)]
    unsafe fn sub(self, b: Self) -> Self {
        std::arch::aarch64::vsubq_f32(self, b)
    }
    #[inline(always)]
    unsafe fn mul(self, b: Self) -> Self {
        std::arch::aarch64::vmulq_f32(self, b)
    }
    #[inline(always)]
    unsafe fn max(self, b: Self) -> Self {
        std::arch::aarch64::vmaxq_f32(self, b)
    }
    #[inline(always)]
    unsafe fn round(self) -> Self {
        std::arch::aarch64::vrndnq_f32(self)
    }
    #[inline(always)]
    unsafe fn times_pow2(self, n: Self) -> Self {
        use std::arch::aarch64::*;
        let exponent = vshlq_n_s32::<23>(vcvtq_s32_f32(n));
        vreinterpretq_f32_s32(vaddq_s32(vreinterpretq_s32_f32(self), exponent))
    }
    #[inline(always)]
    unsafe fn hsum(self) -> f32 {
        std::arch::aarch64::vaddvq_f32(self)
    }
    #[inline(always)]
    unsafe fn hmax(self) -> f32 {
        std::arch::aarch64::vmaxvq_f32(self)
    }
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn scores_neon<const G: usize>(
    q: &[f32],
    blocks: &[f16],
    hd: usize,
    stride: usize,
    out: &mut [f32],
) {
    scores_with::<std::arch::aarch64::float32x4_t, G>(q, blocks, hd, stride, out)
}

/// ARM64: 16 key bytes are the same quad of dimensions of four positions,
/// and `D::dot` against the query's quad, repeated, sums each position's
/// four products into its lane (one `sdot` with DotProd); a group's sums
/// are exact in i32, so the scores are the scalar loop's, bit for bit.
#[cfg(target_arch = "aarch64")]
#[inline(always)]
unsafe fn scores_i8_arm<D: crate::model::isa::neon::Dot8, const G: usize>(
    (q, q_scale): (&[i8], &[f32]),
    (blocks, k_scale): (&[i8], &[f32]),
    hd: usize,
    stride: usize,
    out: &mut [f32],
) {
    use std::arch::aarch64::*;
    let per_row = hd / GROUP;
    let quads = q.as_ptr().cast::<[u8; QUAD]>();
    for (b, block) in blocks.chunks_exact(hd * BLOCK).enumerate() {
        for part in (0..BLOCK).step_by(4) {
            let mut score = [vdupq_n_f32(0.0); G];
            for group in 0..per_row {
                let mut acc = [vdupq_n_s32(0); G];
                for c in group * GROUP / QUAD..(group + 1) * GROUP / QUAD {
                    let k = vld1q_s8(block.as_ptr().add((c * BLOCK + part) * QUAD));
                    for (j, a) in acc.iter_mut().enumerate() {
                        let quad = i32::from_ne_bytes(*quads.add(j * hd / QUAD + c));
                        *a = D::dot(*a, k, vreinterpretq_s8_s32(vdupq_n_s32(quad)));
                    }
                }
                let at = key_scale_at(b * BLOCK + part, group, per_row);
                let ks = vld1q_f32(k_scale.as_ptr().add(at));
                for (j, (score, a)) in score.iter_mut().zip(&acc).enumerate() {
                    let s = vmulq_f32(vcvtq_f32_s32(*a), ks);
                    let s = vmulq_n_f32(s, q_scale[j * per_row + group]);
                    *score = vaddq_f32(*score, s);
                }
            }
            for (j, score) in score.iter().enumerate() {
                vst1q_f32(out.as_mut_ptr().add(j * stride + b * BLOCK + part), *score);
            }
        }
    }
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn scores_i8_neon<const G: usize>(
    q: (&[i8], &[f32]),
    k: (&[i8], &[f32]),
    hd: usize,
    stride: usize,
    out: &mut [f32],
) {
    scores_i8_arm::<crate::model::isa::neon::Widening, G>(q, k, hd, stride, out)
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon,dotprod")]
unsafe fn scores_i8_dotprod<const G: usize>(
    q: (&[i8], &[f32]),
    k: (&[i8], &[f32]),
    hd: usize,
    stride: usize,
    out: &mut [f32],
) {
    scores_i8_arm::<crate::model::isa::neon::DotProd, G>(q, k, hd, stride, out)
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn mix_neon<E: Elem, const G: usize>(
    weights: &[f32],
    stride: usize,
    values: (&[E], Option<&[f32]>),
    hd: usize,
    out: &mut [f32],
) {
    // 32 registers, as AVX-512: G·4 sums, 4 values and a weight fit.
    mix_with::<E, std::arch::aarch64::float32x4_t, G, 4>(weights, stride, values, hd, out)
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn softmax_neon(x: &mut [f32], scale: f32) -> f32 {
    softmax_with::<std::arch::aarch64::float32x4_t>(x, scale)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scores_f16c<const G: usize>(
    q: &[f32],
    blocks: &[f16],
    hd: usize,
    stride: usize,
    out: &mut [f32],
) {
    scores_with::<std::arch::x86_64::__m256, G>(q, blocks, hd, stride, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn scores_512<const G: usize>(
    q: &[f32],
    blocks: &[f16],
    hd: usize,
    stride: usize,
    out: &mut [f32],
) {
    scores_with::<std::arch::x86_64::__m512, G>(q, blocks, hd, stride, out)
}

/// One block at a time, `V::N` positions per vector: each dimension of the
/// keys is multiplied by that dimension of every query, broadcast. Even and
/// odd dimensions go to separate sums, so that twice as many multiply-adds
/// are in flight.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[inline(always)]
unsafe fn scores_with<V: Lanes, const G: usize>(
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
                prefetch(keys.wrapping_add(d * BLOCK + AHEAD * hd * BLOCK));
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

/// `vpdpbusd` multiplies unsigned by signed bytes: the keys are shifted to
/// unsigned (k + 128, a flip of the top bit) and 128·Σq taken back off.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn scores_vnni<const G: usize>(
    (q, q_scale): (&[i8], &[f32]),
    (blocks, k_scale): (&[i8], &[f32]),
    hd: usize,
    stride: usize,
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let per_row = hd / GROUP;
    let flip = _mm512_set1_epi8(-128);
    let offsets: Vec<i32> = q[..G * hd]
        .chunks_exact(GROUP)
        .map(|group| 128 * group.iter().map(|&x| x as i32).sum::<i32>())
        .collect();
    let quads = q.as_ptr().cast::<[u8; QUAD]>();
    for (b, block) in blocks.chunks_exact(hd * BLOCK).enumerate() {
        let mut score = [_mm512_setzero_ps(); G];
        for group in 0..per_row {
            let mut acc = [[_mm512_setzero_si512(); G]; 2];
            for c in (group * GROUP / QUAD..(group + 1) * GROUP / QUAD).step_by(2) {
                prefetch(
                    block
                        .as_ptr()
                        .wrapping_add(c * BLOCK * QUAD + AHEAD * hd * BLOCK),
                );
                for (e, acc) in acc.iter_mut().enumerate() {
                    let k = _mm512_loadu_si512(block.as_ptr().add((c + e) * BLOCK * QUAD).cast());
                    let k = _mm512_xor_si512(k, flip);
                    for (j, a) in acc.iter_mut().enumerate() {
                        let quad = i32::from_ne_bytes(*quads.add(j * hd / QUAD + c + e));
                        *a = _mm512_dpbusd_epi32(*a, k, _mm512_set1_epi32(quad));
                    }
                }
            }
            let ks = _mm512_loadu_ps(
                k_scale
                    .as_ptr()
                    .add(key_scale_at(b * BLOCK, group, per_row)),
            );
            for (j, score) in score.iter_mut().enumerate() {
                let dot = _mm512_add_epi32(acc[0][j], acc[1][j]);
                let dot = _mm512_sub_epi32(dot, _mm512_set1_epi32(offsets[j * per_row + group]));
                let s = _mm512_mul_ps(_mm512_cvtepi32_ps(dot), ks);
                let s = _mm512_mul_ps(s, _mm512_set1_ps(q_scale[j * per_row + group]));
                *score = _mm512_add_ps(*score, s);
            }
        }
        for (j, score) in score.iter().enumerate() {
            _mm512_storeu_ps(out.as_mut_ptr().add(j * stride + b * BLOCK), *score);
        }
    }
}

/// Without VNNI: `vpmaddubsw` takes |k| unsigned and q with k's sign, so
/// that a pair of products never leaves i16 (both are at most 127 in size).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn scores_avx2<const G: usize>(
    (q, q_scale): (&[i8], &[f32]),
    (blocks, k_scale): (&[i8], &[f32]),
    hd: usize,
    stride: usize,
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let per_row = hd / GROUP;
    let ones = _mm256_set1_epi16(1);
    let quads = q.as_ptr().cast::<[u8; QUAD]>();
    for (b, block) in blocks.chunks_exact(hd * BLOCK).enumerate() {
        for part in (0..BLOCK).step_by(8) {
            let mut score = [_mm256_setzero_ps(); G];
            for group in 0..per_row {
                let mut acc = [_mm256_setzero_si256(); G];
                for c in group * GROUP / QUAD..(group + 1) * GROUP / QUAD {
                    let at = (c * BLOCK + part) * QUAD;
                    let k = _mm256_loadu_si256(block.as_ptr().add(at).cast());
                    let magnitude = _mm256_abs_epi8(k);
                    for (j, a) in acc.iter_mut().enumerate() {
                        let quad = i32::from_ne_bytes(*quads.add(j * hd / QUAD + c));
                        let signed = _mm256_sign_epi8(_mm256_set1_epi32(quad), k);
                        let pairs = _mm256_maddubs_epi16(magnitude, signed);
                        *a = _mm256_add_epi32(*a, _mm256_madd_epi16(pairs, ones));
                    }
                }
                let at = key_scale_at(b * BLOCK + part, group, per_row);
                let ks = _mm256_loadu_ps(k_scale.as_ptr().add(at));
                for (j, (score, a)) in score.iter_mut().zip(&acc).enumerate() {
                    let s = _mm256_mul_ps(_mm256_cvtepi32_ps(*a), ks);
                    let s = _mm256_mul_ps(s, _mm256_set1_ps(q_scale[j * per_row + group]));
                    *score = _mm256_add_ps(*score, s);
                }
            }
            for (j, score) in score.iter().enumerate() {
                _mm256_storeu_ps(out.as_mut_ptr().add(j * stride + b * BLOCK + part), *score);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn mix_f16c<E: Elem, const G: usize>(
    weights: &[f32],
    stride: usize,
    values: (&[E], Option<&[f32]>),
    hd: usize,
    out: &mut [f32],
) {
    mix_with::<E, std::arch::x86_64::__m256, G, 2>(weights, stride, values, hd, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn mix_512<E: Elem, const G: usize>(
    weights: &[f32],
    stride: usize,
    values: (&[E], Option<&[f32]>),
    hd: usize,
    out: &mut [f32],
) {
    mix_with::<E, std::arch::x86_64::__m512, G, 4>(weights, stride, values, hd, out)
}

/// Values are read `L·V::N` dimensions at a time, with the sums of `G`
/// heads for those dimensions in registers over [`ROWS_PER_PASS`] rows,
/// which stay in L1 for the next slice of dimensions: memory is read once.
/// `G·L` sums, `L` values and a weight must fit the registers: AVX-512 has
/// 32 (L = 4), AVX2 16 (L = 2).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[inline(always)]
unsafe fn mix_with<E: Elem, V: Lanes, const G: usize, const L: usize>(
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
                prefetch(next);
                if size_of::<E>() * L * V::N > 64 {
                    prefetch(next.wrapping_add(64 / size_of::<E>()));
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

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const ROWS_PER_PASS: usize = 64;

/// Key blocks read ahead of the one in use.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const AHEAD: usize = 2;

/// Asks for the cache line at `p` before it is needed: the hardware
/// prefetchers alone leave the cache's stream well short of the memory's
/// bandwidth.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefetch<T>(p: *const T) {
    // SAFETY: a prefetch never faults, whatever the address.
    unsafe { std::arch::x86_64::_mm_prefetch(p.cast(), std::arch::x86_64::_MM_HINT_T0) }
}

#[cfg(target_arch = "aarch64")]
#[inline(always)]
fn prefetch<T>(p: *const T) {
    // SAFETY: a prefetch never faults, whatever the address (the intrinsic
    // is not stable Rust yet).
    unsafe {
        std::arch::asm!("prfm pldl1keep, [{p}]", p = in(reg) p, options(nostack, readonly, preserves_flags))
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
