//! Where a token's time goes, for `greve bench --breakdown`: the products by
//! block type, attention over the KV cache, and (by difference) the rest.
//! Off unless asked for: then each timed part costs two clock reads, and a
//! part is timed where the CPU computes it (a GPU's work is queued, not
//! done, when the call returns, so there the figures mean nothing).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// Products with Q4_K blocks (greve's kernels).
    Q4K,
    /// Products with Q6_K blocks (greve's kernels).
    Q6K,
    /// Every other product: other block types, f16, bf16 and f32 weights.
    OtherProducts,
    /// Attention over the KV cache (the CPU's).
    Attention,
}

impl Part {
    pub const ALL: [Part; 4] = [Part::Q4K, Part::Q6K, Part::OtherProducts, Part::Attention];

    pub fn name(self) -> &'static str {
        match self {
            Part::Q4K => "Q4_K products",
            Part::Q6K => "Q6_K products",
            Part::OtherProducts => "other products",
            Part::Attention => "attention",
        }
    }
}

static ON: AtomicBool = AtomicBool::new(false);
static NANOS: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

/// Starts timing from zero, or stops.
pub fn set(on: bool) {
    for n in &NANOS {
        n.store(0, Ordering::Relaxed);
    }
    ON.store(on, Ordering::Relaxed);
}

/// The time spent in each part since [`set`], in the order of [`Part::ALL`].
pub fn spent() -> [Duration; 4] {
    NANOS
        .each_ref()
        .map(|n| Duration::from_nanos(n.load(Ordering::Relaxed)))
}

/// Runs `f`, counting its time to `part` when timing is on.
#[inline]
pub fn time<T>(part: Part, f: impl FnOnce() -> T) -> T {
    if !ON.load(Ordering::Relaxed) {
        return f();
    }
    let start = Instant::now();
    let out = f();
    NANOS[part as usize].fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
    out
}
