//! What the ARM64 kernels of the products (`quant/q4k.rs`, `quant/q6k.rs`)
//! and the attention's i8 scores share: the product of 16 signed bytes with 16
//! others, summed into four i32 lanes (each lane the sum of four
//! neighbouring products), with the dot-product instruction `sdot`
//! (ARMv8.2's DotProd: Apple M1 and later, Graviton 2 and later,
//! Cortex-A76 and later as in the Raspberry Pi 5) or, in the i8 scores
//! written once over [`Dot8`], with plain NEON widening multiplies for the
//! CPUs before it (the products have their own plain-NEON versions, which
//! keep their sums in i16 lanes longer); and small reductions.

use std::arch::aarch64::*;

pub trait Dot8 {
    /// `acc` plus the products of `a` and `b`, four by four.
    ///
    /// # Safety
    /// The CPU must have what the implementation uses.
    unsafe fn dot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t;
}

/// Plain NEON: i8 × i8 → i16 products, added pairwise twice, so that each
/// lane gets its own four products as with `sdot` (the attention's i8
/// scores keep a position per lane). A pair of products stays within i16
/// while no byte is -128 (the callers' bytes are in [-127, 127]).
pub struct Widening;

impl Dot8 for Widening {
    #[inline(always)]
    unsafe fn dot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
        let lo = vmull_s8(vget_low_s8(a), vget_low_s8(b));
        let hi = vmull_high_s8(a, b);
        vpadalq_s16(acc, vpaddq_s16(lo, hi))
    }
}

/// `sdot`, one instruction for the sixteen products and their sums.
pub struct DotProd;

impl Dot8 for DotProd {
    #[inline(always)]
    unsafe fn dot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
        // The intrinsic (vdotq_s32) is not stable Rust yet; the instruction
        // is, and the kernels calling this enable the `dotprod` feature.
        let mut acc = acc;
        std::arch::asm!(
            "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags)
        );
        acc
    }
}

/// Σ x[i]·y[i] over eight i16 pairs, widened to i32.
#[inline(always)]
pub unsafe fn dot_i16(x: int16x8_t, y: int16x8_t) -> i32 {
    let products = vmull_s16(vget_low_s16(x), vget_low_s16(y));
    vaddvq_s32(vmlal_high_s16(products, x, y))
}

/// The sums of the lanes of each of `d`, in this order, in one register:
/// four sub-blocks' dot products made ready for one multiply by their
/// four scales.
#[inline(always)]
pub unsafe fn sum_each(d: [int32x4_t; 4]) -> int32x4_t {
    vpaddq_s32(vpaddq_s32(d[0], d[1]), vpaddq_s32(d[2], d[3]))
}

/// Sixteen signed bytes as i32, four to a register.
#[inline(always)]
pub unsafe fn widen_bytes(v: int8x16_t) -> [int32x4_t; 4] {
    let (lo, hi) = (vmovl_s8(vget_low_s8(v)), vmovl_high_s8(v));
    [
        vmovl_s16(vget_low_s16(lo)),
        vmovl_high_s16(lo),
        vmovl_s16(vget_low_s16(hi)),
        vmovl_high_s16(hi),
    ]
}
