//! The ARM64 kernels: NEON, and the dot-product instructions for i8 keys
//! where the CPU has them; NEON's lane type for the code written once over
//! [`Lanes`].

use half::f16;

use super::lanes::*;
use super::*;

/// NEON: four lanes. Half floats are widened by `fcvtl` (Rust's f16 vector
/// types are not stable yet; the instruction is every ARM64 CPU's).
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

#[target_feature(enable = "neon")]
pub(super) unsafe fn scores_neon<const G: usize>(
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
#[inline(always)]
pub(super) unsafe fn scores_i8_arm<D: crate::model::isa::neon::Dot8, const G: usize>(
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

#[target_feature(enable = "neon")]
pub(super) unsafe fn scores_i8_neon<const G: usize>(
    q: (&[i8], &[f32]),
    k: (&[i8], &[f32]),
    hd: usize,
    stride: usize,
    out: &mut [f32],
) {
    scores_i8_arm::<crate::model::isa::neon::Widening, G>(q, k, hd, stride, out)
}

#[target_feature(enable = "neon,dotprod")]
pub(super) unsafe fn scores_i8_dotprod<const G: usize>(
    q: (&[i8], &[f32]),
    k: (&[i8], &[f32]),
    hd: usize,
    stride: usize,
    out: &mut [f32],
) {
    scores_i8_arm::<crate::model::isa::neon::DotProd, G>(q, k, hd, stride, out)
}

#[target_feature(enable = "neon")]
pub(super) unsafe fn mix_neon<E: Elem, const G: usize>(
    weights: &[f32],
    stride: usize,
    values: (&[E], Option<&[f32]>),
    hd: usize,
    out: &mut [f32],
) {
    // 32 registers, as AVX-512: G·4 sums, 4 values and a weight fit.
    mix_with::<E, std::arch::aarch64::float32x4_t, G, 4>(weights, stride, values, hd, out)
}

#[target_feature(enable = "neon")]
pub(super) unsafe fn softmax_neon(x: &mut [f32], scale: f32) -> f32 {
    softmax_with::<std::arch::aarch64::float32x4_t>(x, scale)
}
