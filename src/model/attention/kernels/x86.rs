//! The x86-64 kernels: AVX2 with FMA and F16C, AVX-512, and AVX-512 VNNI
//! for i8 keys; the lane type of each for the code written once over
//! [`Lanes`].

use half::f16;

use super::lanes::*;
use super::*;
use crate::model::isa::{load256, prefetch, Level};

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn softmax_f16c(x: &mut [f32], scale: f32) -> f32 {
    softmax_with::<std::arch::x86_64::__m256>(x, scale)
}

#[target_feature(enable = "avx512f")]
pub(super) unsafe fn softmax_512(x: &mut [f32], scale: f32) -> f32 {
    softmax_with::<std::arch::x86_64::__m512>(x, scale)
}

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
        std::arch::x86_64::_mm512_cvtph_ps(load256(p.cast()))
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

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn scores_f16c<const G: usize>(
    q: &[f32],
    blocks: &[f16],
    hd: usize,
    stride: usize,
    out: &mut [f32],
) {
    scores_with::<std::arch::x86_64::__m256, G>(q, blocks, hd, stride, out)
}

#[target_feature(enable = "avx512f")]
pub(super) unsafe fn scores_512<const G: usize>(
    q: &[f32],
    blocks: &[f16],
    hd: usize,
    stride: usize,
    out: &mut [f32],
) {
    scores_with::<std::arch::x86_64::__m512, G>(q, blocks, hd, stride, out)
}

/// `vpdpbusd` multiplies unsigned by signed bytes: the keys are shifted to
/// unsigned (k + 128, a flip of the top bit) and 128·Σq taken back off.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn scores_vnni<const G: usize>(
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
                    Level::L2,
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
#[target_feature(enable = "avx2")]
pub(super) unsafe fn scores_avx2<const G: usize>(
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
                    // Both parts read this line: it is asked for once.
                    if part == 0 {
                        prefetch(
                            block.as_ptr().wrapping_add(at + AHEAD * hd * BLOCK),
                            Level::L2,
                        );
                    }
                    let k = load256(block.as_ptr().add(at).cast());
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

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn mix_f16c<E: Elem, const G: usize>(
    weights: &[f32],
    stride: usize,
    values: (&[E], Option<&[f32]>),
    hd: usize,
    out: &mut [f32],
) {
    mix_with::<E, std::arch::x86_64::__m256, G, 2>(weights, stride, values, hd, out)
}

#[target_feature(enable = "avx512f")]
pub(super) unsafe fn mix_512<E: Elem, const G: usize>(
    weights: &[f32],
    stride: usize,
    values: (&[E], Option<&[f32]>),
    hd: usize,
    out: &mut [f32],
) {
    mix_with::<E, std::arch::x86_64::__m512, G, 4>(weights, stride, values, hd, out)
}
