//! The instruction sets greve's own kernels (`quant/`, `attention/`) are
//! written for, chosen when greve starts from what the CPU running it has,
//! never from what the build assumed, so that one binary serves every CPU.
//!
//! `GREVE_KERNELS=scalar|avx2` caps the choice, to measure what a CPU
//! without the newer instructions gets (`greve bench`), or to rule the SIMD
//! kernels out when chasing a bug.

use std::sync::OnceLock;

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
}

impl Isa {
    const BEST: Isa = {
        #[cfg(target_arch = "x86_64")]
        let best = Isa::Avx512;
        #[cfg(not(target_arch = "x86_64"))]
        let best = Isa::Scalar;
        best
    };
}

/// Every instruction set this CPU runs, the plainest first; not capped.
// Only x86 has sets above the portable one (yet).
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
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
    levels
}

/// The most `GREVE_KERNELS` allows (everything when it is not set).
pub fn cap() -> Isa {
    static CAP: OnceLock<Isa> = OnceLock::new();
    *CAP.get_or_init(|| match std::env::var("GREVE_KERNELS").as_deref() {
        Ok("scalar") => Isa::Scalar,
        #[cfg(target_arch = "x86_64")]
        Ok("avx2") => Isa::Avx2,
        Ok("") | Err(_) => Isa::BEST,
        Ok(other) => {
            crate::messages::warn(format!(
                "GREVE_KERNELS={other} is not `scalar` or `avx2`; using the best kernels this CPU runs"
            ));
            Isa::BEST
        }
    })
}

/// The best instruction set this CPU runs, within the cap.
pub fn best() -> Isa {
    static BEST: OnceLock<Isa> = OnceLock::new();
    *BEST.get_or_init(|| levels().last().map_or(Isa::Scalar, |&best| best.min(cap())))
}
