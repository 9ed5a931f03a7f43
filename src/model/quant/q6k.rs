//! Q6_K: 256 weights in 210 bytes. Sixteen sub-blocks of 16 weights, each
//! `w = d·sc·(q − 32)` with a 6-bit `q` and a signed 8-bit `sc`.
//!
//! Layout (llama.cpp's `block_q6_K`): 128 bytes of low nibbles at 0, 64 bytes
//! of high bit pairs at 128, 16 scales at 192, `d` f16 at 208. Each half of
//! 128 weights uses 64 low-nibble bytes `ql` and 32 high bytes `qh`: weight
//! l, l + 32, l + 64, l + 96 (l < 32) take the low nibble of `ql[l]`, of
//! `ql[l + 32]`, the high nibble of `ql[l]`, of `ql[l + 32]`, and bits 0–1,
//! 2–3, 4–5, 6–7 of `qh[l]` on top.

use super::{f16_at, Q8Block};

pub const BLOCK_BYTES: usize = 210;
const QH: usize = 128;
const SCALES: usize = 192;
/// The block's last two bytes; SIMD code reads them with the two before
/// (`f16_pair_at(block, D - 2)`), as four bytes from D could pass the end
/// of the mapped file.
const D: usize = 208;

/// The 256 quants of `block` in order (0–63 each; the weight is
/// `scale·(q − 32)`), with `d·sc` of its sixteen sub-blocks.
pub fn unpack(block: &[u8], quants: &mut [u8; 256]) -> [f32; 16] {
    for half in 0..2 {
        let (ql, qh) = (&block[64 * half..], &block[QH + 32 * half..]);
        for l in 0..32 {
            let at = 128 * half + l;
            quants[at] = (ql[l] & 0x0F) | (qh[l] & 3) << 4;
            quants[at + 32] = (ql[l + 32] & 0x0F) | (qh[l] >> 2 & 3) << 4;
            quants[at + 64] = (ql[l] >> 4) | (qh[l] >> 4 & 3) << 4;
            quants[at + 96] = (ql[l + 32] >> 4) | (qh[l] >> 6 & 3) << 4;
        }
    }
    let d = f16_at(block, D);
    std::array::from_fn(|s| d * scale(block, s) as f32)
}

fn scale(block: &[u8], s: usize) -> i32 {
    block[SCALES + s] as i8 as i32
}

/// The reference. The −32 offset is taken out through the activation sums,
/// as the SIMD versions do (their multiplies need unsigned weights).
pub fn dot_scalar(row: &[u8], acts: &[Q8Block]) -> f32 {
    let mut acc = 0f32;
    let mut quants = [0u8; 256];
    for (block, a) in row.chunks_exact(BLOCK_BYTES).zip(acts) {
        unpack(block, &mut quants);
        let mut sum = 0i32;
        for s in 0..16 {
            let dot: i32 = (16 * s..16 * s + 16)
                .map(|e| quants[e] as i32 * a.qs[e] as i32)
                .sum();
            sum += scale(block, s) * (dot - 32 * a.sums[s] as i32);
        }
        acc += a.d * f16_at(block, D) * sum as f32;
    }
    acc
}

#[cfg(target_arch = "aarch64")]
arm_kernels!();

/// [`dot_dotprod`]'s body, always inlined (as [`super::q4k`]'s): each
/// 16-weight sub-block is one vector of 6-bit weights, its dot product
/// times its scale; the −32 offset comes off through the activations' sums.
///
/// # Safety
/// The CPU must have NEON and DotProd.
#[cfg(target_arch = "aarch64")]
#[inline(always)]
unsafe fn by_sdot<const T: usize>(row: &[u8], acts: [&[Q8Block]; T]) -> [f32; T] {
    use crate::model::isa::neon::{self, Dot8, DotProd};
    use std::arch::aarch64::*;
    let mut acc = [0f32; T];
    for (b, block) in row.chunks_exact(BLOCK_BYTES).enumerate() {
        let scales = vld1q_s8(block.as_ptr().add(SCALES).cast());
        // The scales of sub-blocks c, c + 2, c + 4, c + 6 (c = 0, 1, 8,
        // 9) in each register: the four that one chunk of bytes below
        // gives, in the lanes [`neon::sum_each`] sums their products into.
        const STRIDED: [u8; 16] = [0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15];
        let strided = vqtbl1q_s8(scales, vld1q_u8(STRIDED.as_ptr()));
        let wide = neon::widen_bytes(strided);
        let mut sums = [vdupq_n_s32(0); T];
        for half in 0..2 {
            for c in 0..2 {
                let q = quants(block, half, c);
                for t in 0..T {
                    // Not a closure: one would not inherit `sdot`'s feature.
                    let mut dots = [vdupq_n_s32(0); 4];
                    for (i, dot) in dots.iter_mut().enumerate() {
                        let s = 8 * half + 2 * i + c;
                        let a = vld1q_s8(acts[t][b].qs.as_ptr().add(16 * s));
                        *dot = DotProd::dot(*dot, vreinterpretq_s8_u8(q[i]), a);
                    }
                    sums[t] = vmlaq_s32(sums[t], neon::sum_each(dots), wide[2 * half + c]);
                }
            }
        }
        block_total(block, scales, sums, acts, b, &mut acc);
    }
    acc
}

/// [`dot_neon`]'s body, always inlined as [`by_sdot`] is. Without `sdot`,
/// widening multiplies leave each i16 lane with two products of a
/// sub-block, and a pairwise add two sub-blocks in one register with four
/// (at most 4·63·127 = 32004, within i16); widening multiply-adds by a
/// register of their scales accumulate them in i32, with no sub-block's
/// sum taken on its own.
///
/// # Safety
/// The CPU must have NEON (every ARM64 CPU does).
#[cfg(target_arch = "aarch64")]
#[inline(always)]
unsafe fn by_widening<const T: usize>(row: &[u8], acts: [&[Q8Block]; T]) -> [f32; T] {
    use std::arch::aarch64::*;
    // Table lookups into a half's eight scales as i16 that put those of
    // sub-blocks 2i + c, for i = 2j and 2j + 1, in the low and the high
    // four lanes.
    let spread: [[uint8x16_t; 2]; 2] = std::array::from_fn(|c| {
        std::array::from_fn(|j| {
            let bytes: [u8; 16] = std::array::from_fn(|b| {
                let s = 2 * (2 * j + b / 8) + c;
                (2 * s + b % 2) as u8
            });
            vld1q_u8(bytes.as_ptr())
        })
    });
    // Σ w·a over one sub-block, two products to a lane.
    let products = |w: uint8x16_t, a: *const i8| {
        let (w, a) = (vreinterpretq_s8_u8(w), vld1q_s8(a));
        vmlal_high_s8(vmull_s8(vget_low_s8(w), vget_low_s8(a)), w, a)
    };
    let mut acc = [0f32; T];
    for (b, block) in row.chunks_exact(BLOCK_BYTES).enumerate() {
        let scales = vld1q_s8(block.as_ptr().add(SCALES).cast());
        let halves = [
            vreinterpretq_u8_s16(vmovl_s8(vget_low_s8(scales))),
            vreinterpretq_u8_s16(vmovl_high_s8(scales)),
        ];
        let mut sums = [vdupq_n_s32(0); T];
        for (half, wide) in halves.into_iter().enumerate() {
            for (c, spread) in spread.iter().enumerate() {
                let q = quants(block, half, c);
                let sc = [
                    vreinterpretq_s16_u8(vqtbl1q_u8(wide, spread[0])),
                    vreinterpretq_s16_u8(vqtbl1q_u8(wide, spread[1])),
                ];
                for t in 0..T {
                    let a = acts[t][b].qs.as_ptr().add(16 * (8 * half + c));
                    for (j, sc) in sc.into_iter().enumerate() {
                        let (i0, i1) = (2 * j, 2 * j + 1);
                        let pairs = vpaddq_s16(
                            products(q[i0], a.add(32 * i0)),
                            products(q[i1], a.add(32 * i1)),
                        );
                        sums[t] = vmlal_s16(sums[t], vget_low_s16(pairs), vget_low_s16(sc));
                        sums[t] = vmlal_high_s16(sums[t], pairs, sc);
                    }
                }
            }
        }
        block_total(block, scales, sums, acts, b, &mut acc);
    }
    acc
}

/// The 6-bit quants of sub-blocks 8·half + 2i + c (i = 0..4), one vector
/// each, from chunk c of the half's low nibbles and high bit pairs.
///
/// # Safety
/// `block` must be a whole block.
#[cfg(target_arch = "aarch64")]
#[inline(always)]
unsafe fn quants(block: &[u8], half: usize, c: usize) -> [std::arch::aarch64::uint8x16_t; 4] {
    use std::arch::aarch64::*;
    let (nibble, pair) = (vdupq_n_u8(0x0F), vdupq_n_u8(0x30));
    let p = block.as_ptr();
    let ql_a = vld1q_u8(p.add(64 * half + 16 * c));
    let ql_b = vld1q_u8(p.add(64 * half + 32 + 16 * c));
    let qh = vld1q_u8(p.add(QH + 32 * half + 16 * c));
    [
        vorrq_u8(vandq_u8(ql_a, nibble), vandq_u8(vshlq_n_u8::<4>(qh), pair)),
        vorrq_u8(vandq_u8(ql_b, nibble), vandq_u8(vshlq_n_u8::<2>(qh), pair)),
        vorrq_u8(vshrq_n_u8::<4>(ql_a), vandq_u8(qh, pair)),
        vorrq_u8(vshrq_n_u8::<4>(ql_b), vandq_u8(vshrq_n_u8::<2>(qh), pair)),
    ]
}

/// Adds block `b`'s part to each token's total, from its scaled products'
/// lanes (`sums`) less the −32 offset, which goes through the activations'
/// sums of 16.
///
/// # Safety
/// `block` must be a whole block.
#[cfg(target_arch = "aarch64")]
#[inline(always)]
unsafe fn block_total<const T: usize>(
    block: &[u8],
    scales: std::arch::aarch64::int8x16_t,
    sums: [std::arch::aarch64::int32x4_t; T],
    acts: [&[Q8Block]; T],
    b: usize,
    acc: &mut [f32; T],
) {
    use crate::model::isa::neon;
    use std::arch::aarch64::*;
    let (_, d) = super::f16_pair_at(block, D - 2);
    let (scales_lo, scales_hi) = (vmovl_s8(vget_low_s8(scales)), vmovl_high_s8(scales));
    for t in 0..T {
        let a = &acts[t][b];
        let s = a.sums.as_ptr();
        let offset =
            neon::dot_i16(vld1q_s16(s), scales_lo) + neon::dot_i16(vld1q_s16(s.add(8)), scales_hi);
        acc[t] += a.d * d * (vaddvq_s32(sums[t]) - 32 * offset) as f32;
    }
}

/// One row against `T` activation rows (see [`super::q4k::dot_avx2`]; the
/// 6-bit weights keep maddubs' i16 pairs within 2·63·127).
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_avx2<const T: usize>(row: &[u8], acts: [&[Q8Block]; T]) -> [f32; T] {
    use std::arch::x86_64::*;
    let nibble = _mm256_set1_epi8(0x0F);
    let pair = _mm256_set1_epi8(0x30);
    let mut acc = [_mm256_setzero_ps(); T];
    let level = super::weights_level(acts[0].len());
    for (b, block) in row.chunks_exact(BLOCK_BYTES).enumerate() {
        if T == 1 {
            super::prefetch_ahead::<BLOCK_BYTES>(block.as_ptr(), level);
        }
        let p = block.as_ptr();
        let scales = _mm_loadu_si128(p.add(SCALES).cast());
        let all_scales = _mm256_cvtepi8_epi16(scales);
        let scales = _mm256_broadcastsi128_si256(scales);
        let mut sums = [_mm256_setzero_si256(); T];
        for half in 0..2 {
            let ql0 = super::load256(p.add(64 * half));
            let ql1 = super::load256(p.add(64 * half + 32));
            let qh = super::load256(p.add(QH + 32 * half));
            let q = [
                _mm256_or_si256(
                    _mm256_and_si256(ql0, nibble),
                    _mm256_and_si256(_mm256_slli_epi16(qh, 4), pair),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(ql1, nibble),
                    _mm256_and_si256(_mm256_slli_epi16(qh, 2), pair),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16(ql0, 4), nibble),
                    _mm256_and_si256(qh, pair),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16(ql1, 4), nibble),
                    _mm256_and_si256(_mm256_srli_epi16(qh, 2), pair),
                ),
            ];
            for (i, q) in q.into_iter().enumerate() {
                // 32 weights are two sub-blocks: their two scales, eight i16 lanes each.
                let sc = _mm256_srai_epi16(_mm256_shuffle_epi8(scales, SPREAD[4 * half + i]), 8);
                for t in 0..T {
                    let a = super::load_acts(acts[t][b].qs.as_ptr().add(128 * half + 32 * i));
                    let prod = _mm256_madd_epi16(_mm256_maddubs_epi16(q, a), sc);
                    sums[t] = _mm256_add_epi32(sums[t], prod);
                }
            }
        }
        let (_, d) = super::f16_pair_at(block, D - 2);
        for t in 0..T {
            let a = &acts[t][b];
            let a_sums = super::load_acts(a.sums.as_ptr());
            let offset = _mm256_slli_epi32(_mm256_madd_epi16(a_sums, all_scales), 5);
            let sum = _mm256_sub_epi32(sums[t], offset);
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), _mm256_set1_ps(d * a.d), acc[t]);
        }
    }
    let mut out = [0f32; T];
    for t in 0..T {
        out[t] = super::q4k::hsum(acc[t]);
    }
    out
}

/// Byte shuffles for sub-blocks `2p` (low 128 bits) and `2p + 1` (high),
/// each scale in the high byte of its i16 lanes for a shift to sign-extend.
#[cfg(target_arch = "x86_64")]
const SPREAD: [std::arch::x86_64::__m256i; 8] = super::spread_bytes(true, true);

/// [`dot_avx2`] with 512-bit registers: 64 weights (four sub-blocks, each
/// with its scale in a quarter of the lanes) per multiply, and VNNI's
/// multiply-accumulate for the scales.
///
/// # Safety
/// The CPU must have AVX-512 F, BW and VNNI, and AVX2, FMA and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
pub unsafe fn dot_avx512<const T: usize>(row: &[u8], acts: [&[Q8Block]; T]) -> [f32; T] {
    use std::arch::x86_64::*;
    let nibble = _mm512_set1_epi8(0x0F);
    let pair = _mm512_set1_epi8(0x30);
    // Sub-blocks 4p … 4p + 3, eight i16 lanes each.
    let spread: [__m512i; 4] = std::array::from_fn(|p| {
        let s: [i16; 32] = std::array::from_fn(|lane| (4 * p + lane / 8) as i16);
        _mm512_loadu_si512(s.as_ptr().cast())
    });
    let mut acc = [_mm512_setzero_ps(); T];
    let level = super::weights_level(acts[0].len());
    for (b, block) in row.chunks_exact(BLOCK_BYTES).enumerate() {
        if T == 1 {
            super::prefetch_ahead::<BLOCK_BYTES>(block.as_ptr(), level);
        }
        let p = block.as_ptr();
        let all_scales = _mm256_cvtepi8_epi16(_mm_loadu_si128(p.add(SCALES).cast()));
        let scales: [__m512i; 4] = std::array::from_fn(|i| {
            _mm512_permutexvar_epi16(spread[i], _mm512_castsi256_si512(all_scales))
        });
        let mut sums = [_mm512_setzero_si512(); T];
        for half in 0..2 {
            let ql = _mm512_loadu_si512(p.add(64 * half).cast());
            // The high bit pairs of the 128 weights, each moved to bits 4–5:
            // shifted in 256-bit halves, which costs less than shifting by
            // lane in 512 bits.
            let qh = super::load256(p.add(QH + 32 * half));
            let join = |a, b| _mm512_inserti64x4(_mm512_castsi256_si512(a), b, 1);
            let high = [
                join(_mm256_slli_epi16(qh, 4), _mm256_slli_epi16(qh, 2)),
                join(qh, _mm256_srli_epi16(qh, 2)),
            ];
            let w = [
                _mm512_ternarylogic_epi32(_mm512_and_si512(ql, nibble), high[0], pair, 0xF8),
                _mm512_ternarylogic_epi32(
                    _mm512_and_si512(_mm512_srli_epi16(ql, 4), nibble),
                    high[1],
                    pair,
                    0xF8,
                ),
            ];
            for (c, w) in w.into_iter().enumerate() {
                let scale = scales[2 * half + c];
                for t in 0..T {
                    let a =
                        _mm512_loadu_si512(acts[t][b].qs.as_ptr().add(128 * half + 64 * c).cast());
                    sums[t] = crate::model::isa::dpwssd(sums[t], _mm512_maddubs_epi16(w, a), scale);
                }
            }
        }
        let (_, d) = super::f16_pair_at(block, D - 2);
        for t in 0..T {
            let a = &acts[t][b];
            let a_sums = super::load_acts(a.sums.as_ptr());
            let offset = _mm256_slli_epi32(_mm256_madd_epi16(a_sums, all_scales), 5);
            let sum = _mm512_sub_epi32(sums[t], _mm512_zextsi256_si512(offset));
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_set1_ps(d * a.d), acc[t]);
        }
    }
    let mut out = [0f32; T];
    for t in 0..T {
        out[t] = _mm512_reduce_add_ps(acc[t]);
    }
    out
}
