//! Prefill: weight rows repacked on the fly, a tile of 16 rows at a time,
//! into the order `vpdpbusd` wants (4 consecutive values of each of 16 rows
//! per 64 bytes), then used for every token of the prompt. With AVX-512 VNNI
//! one instruction then does 64 multiply-adds into 16 row sums, and the
//! sub-block scales apply once per 32 (Q4_K) or 16 (Q6_K) values for all 16
//! rows at once, where the compact kernels spend two multiplies per 32
//! values and row; AVX2 does the same 8 rows at a time ([`products_avx2`]). The tile lives in a per-thread scratch buffer, so
//! memory use does not grow: the file's blocks stay the only copy.
//!
//! Repacking costs about as much as a few dozen tokens' worth of products,
//! so only batches of [`MIN_TOKENS`] or more come here.

#[cfg(target_arch = "x86_64")]
use super::Q8Block;
use super::{q4k, q6k, QuantFormat, QK};

/// Rows per tile: one 512-bit register of i32 sums.
pub const ROWS: usize = 16;

/// The smallest batch worth repacking for.
pub const MIN_TOKENS: usize = 32;

/// Tokens per pass over a tile: enough independent sums to keep the
/// multiply-add units busy through their latency.
pub const TOKENS: usize = 8;

/// The same for [`products_avx2`], which has half the registers.
pub const TOKENS_AVX2: usize = 4;

/// One value for each of a tile's 16 rows, aligned so that a register's
/// worth loads whole (LLVM splits unaligned 256-bit loads in two for the
/// x86-64-v2 baseline).
#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
struct Lanes([f32; ROWS]);

/// 16 rows of weights in `vpdpbusd` order, with their scales as f32.
#[derive(Default)]
pub struct Tile {
    /// Per block: [64 groups of 4 values][16 rows][4 quants].
    quants: Vec<u8>,
    /// Per block and sub-block: `d·sc` of the 16 rows.
    scales: Vec<Lanes>,
    /// Q4_K only, per block and sub-block: `dmin·m` of the 16 rows.
    mins: Vec<Lanes>,
    blocks: usize,
}

impl Tile {
    /// Repacks rows `rows[r * row_bytes..]` (16 of them) of `format`.
    pub fn pack(&mut self, format: QuantFormat, rows: &[u8], row_bytes: usize) {
        let blocks = row_bytes / format.block_bytes();
        let sub = sub_blocks(format);
        self.blocks = blocks;
        self.quants.resize(blocks * QK * ROWS, 0);
        self.scales.resize(blocks * sub, Lanes::default());
        self.mins.resize(
            if format == QuantFormat::Q4K {
                blocks * 8
            } else {
                0
            },
            Lanes::default(),
        );
        let mut quants = [0u8; QK];
        for r in 0..ROWS {
            let row = &rows[r * row_bytes..(r + 1) * row_bytes];
            for (b, block) in row.chunks_exact(format.block_bytes()).enumerate() {
                match format {
                    QuantFormat::Q4K => {
                        let (scales, mins) = q4k::unpack(block, &mut quants);
                        for s in 0..8 {
                            self.scales[b * 8 + s].0[r] = scales[s];
                            self.mins[b * 8 + s].0[r] = mins[s];
                        }
                    }
                    QuantFormat::Q6K => {
                        let scales = q6k::unpack(block, &mut quants);
                        for (s, scale) in scales.into_iter().enumerate() {
                            self.scales[b * 16 + s].0[r] = scale;
                        }
                    }
                }
                let out = &mut self.quants[b * QK * ROWS..(b + 1) * QK * ROWS];
                for (g, four) in quants.chunks_exact(4).enumerate() {
                    out[(g * ROWS + r) * 4..(g * ROWS + r + 1) * 4].copy_from_slice(four);
                }
            }
        }
    }
}

fn sub_blocks(format: QuantFormat) -> usize {
    match format {
        QuantFormat::Q4K => 8,
        QuantFormat::Q6K => 16,
    }
}

/// Whether this CPU runs the tile kernels.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    return crate::model::isa::avx512_integers();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The 16 row sums of `tile` for each of `T` tokens.
///
/// # Safety
/// The CPU must have AVX-512 F, BW and VNNI ([`available`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn products<const T: usize>(
    format: QuantFormat,
    tile: &Tile,
    acts: [&[Q8Block]; T],
) -> [[f32; ROWS]; T] {
    match format {
        QuantFormat::Q4K => products_of::<T, 8>(tile, acts),
        QuantFormat::Q6K => products_of::<T, 16>(tile, acts),
    }
}

/// [`products`] for `SUB` sub-blocks per block (8: Q4_K, 16: Q6_K).
#[cfg(target_arch = "x86_64")]
#[allow(clippy::needless_range_loop)] // `b` indexes the tile and every token's blocks
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn products_of<const T: usize, const SUB: usize>(
    tile: &Tile,
    acts: [&[Q8Block]; T],
) -> [[f32; ROWS]; T] {
    use std::arch::x86_64::*;
    // Groups of 4 values per sub-block.
    let groups = QK / SUB / 4;
    let mut acc = [_mm512_setzero_ps(); T];
    for b in 0..tile.blocks {
        let quants = tile.quants[b * QK * ROWS..(b + 1) * QK * ROWS].as_ptr();
        let scales = &tile.scales[b * SUB..(b + 1) * SUB];
        let mut block_acc = [_mm512_setzero_ps(); T];
        for s in 0..SUB {
            let mut sums = [_mm512_setzero_si512(); T];
            for g in s * groups..(s + 1) * groups {
                let w = _mm512_loadu_si512(quants.add(g * 4 * ROWS).cast());
                for t in 0..T {
                    let a = acts[t][b]
                        .qs
                        .as_ptr()
                        .add(4 * g)
                        .cast::<i32>()
                        .read_unaligned();
                    sums[t] = _mm512_dpbusd_epi32(sums[t], w, _mm512_set1_epi32(a));
                }
            }
            let scale = _mm512_load_ps(scales[s].0.as_ptr());
            for t in 0..T {
                block_acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums[t]), scale, block_acc[t]);
            }
        }
        // The offsets through the activation sums: Q4_K's mins per 32
        // values, Q6_K's −32 per 16.
        let weights = match SUB {
            8 => &tile.mins[b * 8..(b + 1) * 8],
            _ => scales,
        };
        for t in 0..T {
            let a = &acts[t][b];
            let sums = offset_sums::<SUB>(a);
            let mut offset = _mm512_setzero_ps();
            for s in 0..SUB {
                let w = _mm512_load_ps(weights[s].0.as_ptr());
                offset = _mm512_fmadd_ps(w, _mm512_set1_ps(sums[s]), offset);
            }
            let block = _mm512_sub_ps(block_acc[t], offset);
            acc[t] = _mm512_fmadd_ps(block, _mm512_set1_ps(a.d), acc[t]);
        }
    }
    let mut out = [[0f32; ROWS]; T];
    for t in 0..T {
        _mm512_storeu_ps(out[t].as_mut_ptr(), acc[t]);
    }
    out
}

/// What each sub-block's offset is multiplied by, from a block's
/// activation sums: with Q4_K (`SUB` 8) the mins, by the sums of its 32
/// values; with Q6_K (16) the scales, by 32 times the sums of its 16 (its
/// quants are stored 32 up). Converted all at once: one by one, through
/// general registers, they were a quarter of a tile's instructions.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn offset_sums<const SUB: usize>(a: &Q8Block) -> [f32; 16] {
    use std::arch::x86_64::*;
    let sums = super::load_acts(a.sums.as_ptr());
    let mut out = [0f32; 16];
    if SUB == 8 {
        let pairs = _mm256_madd_epi16(sums, _mm256_set1_epi16(1));
        _mm256_storeu_ps(out.as_mut_ptr(), _mm256_cvtepi32_ps(pairs));
    } else {
        let times32 = _mm256_set1_ps(32.0);
        let low = _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(sums)));
        let high = _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm256_extracti128_si256::<1>(sums)));
        _mm256_storeu_ps(out.as_mut_ptr(), _mm256_mul_ps(low, times32));
        _mm256_storeu_ps(out.as_mut_ptr().add(8), _mm256_mul_ps(high, times32));
    }
    out
}

/// [`products`] for CPUs with AVX2 but no AVX-512 VNNI, eight rows (one
/// half of the tile) per register. Without VNNI each 4-value product is
/// maddubs' i16 pair sums; several groups are added in i16 before one widening
/// multiply (Q4_K: 8 groups stay within 8·2·15·127 < 2¹⁵; Q6_K: 2 groups,
/// 2·2·63·127), so a sub-block costs one multiply per group rather than two.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn products_avx2<const T: usize>(
    format: QuantFormat,
    tile: &Tile,
    acts: [&[Q8Block]; T],
) -> [[f32; ROWS]; T] {
    let mut out = [[0f32; ROWS]; T];
    for half in 0..2 {
        let sums = match format {
            QuantFormat::Q4K => half_products::<T, 8, 8>(tile, acts, half),
            QuantFormat::Q6K => half_products::<T, 16, 2>(tile, acts, half),
        };
        for t in 0..T {
            out[t][8 * half..8 * half + 8].copy_from_slice(&sums[t]);
        }
    }
    out
}

/// Rows 8·half … 8·half + 7 of the tile; `SUB` sub-blocks per block, and
/// `WIDEN` groups added in i16 before widening.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
#[allow(clippy::needless_range_loop)] // `b` indexes the tile and every token's blocks
unsafe fn half_products<const T: usize, const SUB: usize, const WIDEN: usize>(
    tile: &Tile,
    acts: [&[Q8Block]; T],
    half: usize,
) -> [[f32; 8]; T] {
    use std::arch::x86_64::*;
    let groups = QK / SUB / 4;
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); T];
    for b in 0..tile.blocks {
        let quants = tile.quants[b * QK * ROWS..(b + 1) * QK * ROWS]
            .as_ptr()
            .add(32 * half);
        let scales = &tile.scales[b * SUB..(b + 1) * SUB];
        let mut block_acc = [_mm256_setzero_ps(); T];
        for s in 0..SUB {
            let mut sums = [_mm256_setzero_si256(); T];
            for first in (s * groups..(s + 1) * groups).step_by(WIDEN) {
                let mut narrow = [_mm256_setzero_si256(); T];
                for g in first..first + WIDEN {
                    let w = super::load256(quants.add(g * 4 * ROWS).cast());
                    for t in 0..T {
                        let a = acts[t][b]
                            .qs
                            .as_ptr()
                            .add(4 * g)
                            .cast::<i32>()
                            .read_unaligned();
                        let p = _mm256_maddubs_epi16(w, _mm256_set1_epi32(a));
                        narrow[t] = _mm256_add_epi16(narrow[t], p);
                    }
                }
                for t in 0..T {
                    sums[t] = _mm256_add_epi32(sums[t], _mm256_madd_epi16(narrow[t], ones));
                }
            }
            let scale = _mm256_load_ps(scales[s].0.as_ptr().add(8 * half));
            for t in 0..T {
                block_acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums[t]), scale, block_acc[t]);
            }
        }
        let weights = match SUB {
            8 => &tile.mins[b * 8..(b + 1) * 8],
            _ => scales,
        };
        for t in 0..T {
            let a = &acts[t][b];
            let sums = offset_sums::<SUB>(a);
            let mut offset = _mm256_setzero_ps();
            for s in 0..SUB {
                let w = _mm256_load_ps(weights[s].0.as_ptr().add(8 * half));
                offset = _mm256_fmadd_ps(w, _mm256_set1_ps(sums[s]), offset);
            }
            let block = _mm256_sub_ps(block_acc[t], offset);
            acc[t] = _mm256_fmadd_ps(block, _mm256_set1_ps(a.d), acc[t]);
        }
    }
    let mut out = [[0f32; 8]; T];
    for t in 0..T {
        _mm256_storeu_ps(out[t].as_mut_ptr(), acc[t]);
    }
    out
}
