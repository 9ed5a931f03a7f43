//! Q4_K: 256 weights in 144 bytes. Eight sub-blocks of 32 weights, each
//! `w = d·sc·q − dmin·m` with a 4-bit `q` and 6-bit `sc`, `m`.
//!
//! Layout (llama.cpp's `block_q4_K`): `d` f16 at 0, `dmin` f16 at 2, the 6-bit
//! scales and mins packed in 12 bytes at 4, then 128 bytes of nibbles: byte l
//! of chunk j (32 bytes) holds weight 64j + l low and 64j + 32 + l high.

use super::{f16_at, Q8Block};

pub const BLOCK_BYTES: usize = 144;
const SCALES: usize = 4;
const QS: usize = 16;

/// The eight 6-bit scales and mins: the first four in the low six bits of
/// bytes 0–3 and 4–7, the last four split over nibbles of bytes 8–11 and the
/// top two bits of bytes 0–7.
#[inline(always)]
fn scales_and_mins(block: &[u8]) -> ([u8; 8], [u8; 8]) {
    let s = &block[SCALES..SCALES + 12];
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    for j in 0..4 {
        sc[j] = s[j] & 63;
        mn[j] = s[j + 4] & 63;
        sc[j + 4] = (s[j + 8] & 0x0F) | ((s[j] >> 6) << 4);
        mn[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4);
    }
    (sc, mn)
}

/// The 256 quants of `block` in order (0–15 each), with `d·sc` and `dmin·m`
/// of its eight sub-blocks: what a weight is, `scale·q − min`.
pub fn unpack(block: &[u8], quants: &mut [u8; 256]) -> ([f32; 8], [f32; 8]) {
    for (j, chunk) in block[QS..BLOCK_BYTES].chunks_exact(32).enumerate() {
        for (l, q) in chunk.iter().enumerate() {
            quants[64 * j + l] = q & 0x0F;
            quants[64 * j + 32 + l] = q >> 4;
        }
    }
    let (sc, mn) = scales_and_mins(block);
    let (d, dmin) = (f16_at(block, 0), f16_at(block, 2));
    (sc.map(|s| d * s as f32), mn.map(|m| dmin * m as f32))
}

/// The reference: integer sums per sub-block, as the SIMD versions compute them.
pub fn dot_scalar(row: &[u8], acts: &[Q8Block]) -> f32 {
    let mut acc = 0f32;
    let mut quants = [0u8; 256];
    for (block, a) in row.chunks_exact(BLOCK_BYTES).zip(acts) {
        unpack(block, &mut quants);
        let (sc, mn) = scales_and_mins(block);
        let mut sum = 0i32;
        let mut mins = 0i32;
        for s in 0..8 {
            let dot: i32 = (32 * s..32 * s + 32)
                .map(|e| quants[e] as i32 * a.qs[e] as i32)
                .sum();
            sum += sc[s] as i32 * dot;
            mins += mn[s] as i32 * (a.sums[2 * s] as i32 + a.sums[2 * s + 1] as i32);
        }
        acc += a.d * (f16_at(block, 0) * sum as f32 - f16_at(block, 2) * mins as f32);
    }
    acc
}

/// One row against `T` activation rows. maddubs multiplies the unsigned
/// nibbles by the signed activations into i16 pairs (at most 2·15·127, no
/// saturation); madd applies the sub-block scale and widens to i32.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot_avx2<const T: usize>(row: &[u8], acts: [&[Q8Block]; T]) -> [f32; T] {
    use std::arch::x86_64::*;
    let nibble = _mm256_set1_epi8(0x0F);
    let mut acc = [_mm256_setzero_ps(); T];
    for (b, block) in row.chunks_exact(BLOCK_BYTES).enumerate() {
        let (sc, mn) = scales_and_mins(block);
        // Each min repeated for the two 16-value sums of its sub-block.
        let mins = _mm256_cvtepu8_epi16(_mm_set_epi8(
            mn[7] as i8,
            mn[7] as i8,
            mn[6] as i8,
            mn[6] as i8,
            mn[5] as i8,
            mn[5] as i8,
            mn[4] as i8,
            mn[4] as i8,
            mn[3] as i8,
            mn[3] as i8,
            mn[2] as i8,
            mn[2] as i8,
            mn[1] as i8,
            mn[1] as i8,
            mn[0] as i8,
            mn[0] as i8,
        ));
        let mut sums = [_mm256_setzero_si256(); T];
        for j in 0..4 {
            let q = _mm256_loadu_si256(block.as_ptr().add(QS + 32 * j).cast());
            let lo = _mm256_and_si256(q, nibble);
            let hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), nibble);
            let sc_lo = _mm256_set1_epi16(sc[2 * j] as i16);
            let sc_hi = _mm256_set1_epi16(sc[2 * j + 1] as i16);
            for t in 0..T {
                let a = acts[t][b].qs.as_ptr().add(64 * j);
                let a_lo = _mm256_loadu_si256(a.cast());
                let a_hi = _mm256_loadu_si256(a.add(32).cast());
                let p_lo = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, a_lo), sc_lo);
                let p_hi = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, a_hi), sc_hi);
                sums[t] = _mm256_add_epi32(sums[t], _mm256_add_epi32(p_lo, p_hi));
            }
        }
        let (d, dmin) = (f16_at(block, 0), f16_at(block, 2));
        for t in 0..T {
            let a = &acts[t][b];
            let a_sums = _mm256_loadu_si256(a.sums.as_ptr().cast());
            let m = _mm256_cvtepi32_ps(_mm256_madd_epi16(a_sums, mins));
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums[t]), _mm256_set1_ps(d * a.d), acc[t]);
            acc[t] = _mm256_fmadd_ps(m, _mm256_set1_ps(-dmin * a.d), acc[t]);
        }
    }
    let mut out = [0f32; T];
    for t in 0..T {
        out[t] = hsum(acc[t]);
    }
    out
}

/// The sum of the eight lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
pub(super) unsafe fn hsum(v: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let v = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let v = _mm_add_ps(v, _mm_movehl_ps(v, v));
    let v = _mm_add_ss(v, _mm_movehdup_ps(v));
    _mm_cvtss_f32(v)
}
