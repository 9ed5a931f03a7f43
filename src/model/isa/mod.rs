//! The instruction sets greve's own kernels (`quant/`, `attention/`) are
//! written for, chosen when greve starts from what the CPU running it has,
//! never from what the build assumed, so that one binary serves every CPU.
//!
//! `GREVE_KERNELS=scalar|avx2` (on ARM64 `scalar|neon`) caps the choice, to measure what a CPU
//! without the newer instructions gets (`greve bench`), or to rule the SIMD
//! kernels out when chasing a bug; `GREVE_KERNELS=candle` hands the Q4_K and
//! Q6_K products to candle's kernels, to measure greve's against them.

use std::sync::OnceLock;

#[cfg(target_arch = "aarch64")]
pub(crate) mod neon;

/// Ordered: each one's CPUs run the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Portable Rust, for any CPU.
    Scalar,
    /// AVX2, FMA and F16C (Haswell and later).
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// AVX-512 F; the integer kernels also want BW and VNNI, and fall back
    /// to AVX2 on a CPU without them.
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// NEON, which every ARM64 CPU has.
    #[cfg(target_arch = "aarch64")]
    Neon,
    /// NEON with the dot-product instructions (DotProd: Apple M1 and later,
    /// Graviton 2 and later, Cortex-A76 and later).
    #[cfg(target_arch = "aarch64")]
    DotProd,
}

impl Isa {
    const BEST: Isa = {
        #[cfg(target_arch = "x86_64")]
        let best = Isa::Avx512;
        #[cfg(target_arch = "aarch64")]
        let best = Isa::DotProd;
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        let best = Isa::Scalar;
        best
    };
}

/// Every instruction set this CPU runs, the plainest first; not capped.
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(unused_mut)
)]
pub fn levels() -> Vec<Isa> {
    let mut levels = vec![Isa::Scalar];
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx2") && has!("fma") && has!("f16c") {
            levels.push(Isa::Avx2);
            if has!("avx512f") {
                levels.push(Isa::Avx512);
            }
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        use std::arch::is_aarch64_feature_detected as has;
        if has!("neon") {
            levels.push(Isa::Neon);
            if has!("dotprod") {
                levels.push(Isa::DotProd);
            }
        }
    }
    levels
}

/// The most `GREVE_KERNELS` allows (everything when it is not set).
pub fn cap() -> Isa {
    static CAP: OnceLock<Isa> = OnceLock::new();
    *CAP.get_or_init(|| match std::env::var("GREVE_KERNELS").as_deref() {
        Ok("scalar") => Isa::Scalar,
        #[cfg(target_arch = "x86_64")]
        Ok("avx2") => Isa::Avx2,
        #[cfg(target_arch = "aarch64")]
        Ok("neon") => Isa::Neon,
        Ok("") | Ok("candle") | Err(_) => Isa::BEST,
        Ok(other) => {
            let caps = if cfg!(target_arch = "aarch64") {
                "`scalar`, `neon` or `candle`"
            } else {
                "`scalar`, `avx2` or `candle`"
            };
            crate::messages::warn(format!(
                "GREVE_KERNELS={other} is not {caps}; using the best kernels this CPU runs"
            ));
            Isa::BEST
        }
    })
}

/// Whether `GREVE_KERNELS=candle` asks for candle's Q4_K and Q6_K products.
pub fn candle_products() -> bool {
    static CANDLE: OnceLock<bool> = OnceLock::new();
    *CANDLE.get_or_init(|| std::env::var("GREVE_KERNELS").as_deref() == Ok("candle"))
}

/// Whether the integer kernels' AVX-512 code runs here: beyond AVX-512 F
/// it takes BW and VNNI (Ice Lake, Zen 4 and later; not Skylake-X), the
/// one decision on it for the products, the prefill tiles and attention.
#[cfg(target_arch = "x86_64")]
pub fn avx512_integers() -> bool {
    static VNNI: OnceLock<bool> = OnceLock::new();
    *VNNI.get_or_init(|| {
        use std::arch::is_x86_feature_detected as has;
        has!("avx512f") && has!("avx512bw") && has!("avx512vnni")
    })
}

/// The best instruction set this CPU runs, within the cap.
pub fn best() -> Isa {
    static BEST: OnceLock<Isa> = OnceLock::new();
    *BEST.get_or_init(|| levels().last().map_or(Isa::Scalar, |&best| best.min(cap())))
}

/// An unaligned 256-bit load in one instruction. Built for x86-64-v2, LLVM
/// tunes for CPUs older than AVX2 and splits `_mm256_loadu_si256` into two
/// 128-bit loads and an insert, a µop more per load in the kernels.
///
/// # Safety
/// The CPU must have AVX, and `p` point at 32 readable bytes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
#[inline]
pub(crate) unsafe fn load256(p: *const u8) -> std::arch::x86_64::__m256i {
    let v;
    std::arch::asm!(
        "vmovdqu {v}, ymmword ptr [{p}]",
        v = out(ymm_reg) v,
        p = in(reg) p,
        options(pure, readonly, nostack, preserves_flags)
    );
    v
}

/// `acc` plus the sums of adjacent products of `a`'s and `b`'s i16 lanes,
/// as one `vpdpwssd`. From the intrinsic, LLVM (tuned for the x86-64-v2
/// baseline) makes a `vpmaddwd` and a `vpaddd`: an instruction more.
///
/// # Safety
/// The CPU must have AVX-512 F and VNNI.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vnni")]
#[inline]
pub(crate) unsafe fn dpwssd(
    acc: std::arch::x86_64::__m512i,
    a: std::arch::x86_64::__m512i,
    b: std::arch::x86_64::__m512i,
) -> std::arch::x86_64::__m512i {
    let mut acc = acc;
    std::arch::asm!(
        "vpdpwssd {acc}, {a}, {b}",
        acc = inout(zmm_reg) acc,
        a = in(zmm_reg) a,
        b = in(zmm_reg) b,
        options(pure, nomem, nostack, preserves_flags)
    );
    acc
}

/// The cache a prefetched line is to wait in.
#[derive(Clone, Copy)]
pub(crate) enum Level {
    /// The first: for what the next few KiB of a stream will need (the
    /// weights' products on x86-64 with short rows; ARM64's ask for
    /// nothing, hence the allowance there).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    L1,
    /// The second, for lines asked for many KiB ahead: a line bound for the
    /// first holds one of its few miss buffers until it arrives. Attention,
    /// whose arithmetic takes nearly as long as its reads, streams its cache
    /// from memory 1.3× faster on Zen 4 with its lines asked into L2 than
    /// into L1 (`benches/results/epyc-2026-12-06-attention-l2.txt`). The
    /// weights of a product whose activations crowd L1 come here too
    /// (`quant::weights_level`).
    L2,
}

/// Asks for the cache line at `p` before it is needed: streaming weights or
/// a KV cache, the hardware prefetchers alone leave the stream well short
/// of the memory's bandwidth (they stop at every 4 KiB page).
#[inline(always)]
pub(crate) fn prefetch<T>(p: *const T, level: Level) {
    // SAFETY: a prefetch never faults, whatever the address.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        use std::arch::x86_64::*;
        match level {
            Level::L1 => _mm_prefetch(p.cast(), _MM_HINT_T0),
            Level::L2 => _mm_prefetch(p.cast(), _MM_HINT_T1),
        }
    }
    // SAFETY: as above (the intrinsic is not stable Rust yet).
    #[cfg(target_arch = "aarch64")]
    unsafe {
        use std::arch::asm;
        match level {
            Level::L1 => {
                asm!("prfm pldl1keep, [{p}]", p = in(reg) p, options(nostack, readonly, preserves_flags))
            }
            Level::L2 => {
                asm!("prfm pldl2keep, [{p}]", p = in(reg) p, options(nostack, readonly, preserves_flags))
            }
        }
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let _ = (p, level);
}
