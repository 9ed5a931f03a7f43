//! Products of f32 activations with k-quantised weights, read in place from
//! the GGUF file's own blocks (Q4_K and Q6_K: every matrix of a Q4_K_M file).
//!
//! The activations are quantised once per product to 8 bits in blocks of 256
//! (ggml's Q8_K), so each block pair is an integer dot product scaled twice:
//! the kernels in [`q4k`] and [`q6k`] do exactly that, with AVX2 or AVX-512
//! on x86-64 and NEON (with `sdot` where the CPU has it) on ARM64, chosen at
//! run time, and a scalar version everywhere else. Nothing is
//! repacked: the file's bytes are the working copy, so a mapped file costs no
//! memory beyond the page cache, and a token's decode reads each weight once.
//!
//! Prefill reuses each weight block for [`TOKENS`] tokens at a time while it
//! sits in registers and L1, which is what makes a batch cheaper per token.

/// A format module's ARM64 kernels, `dot_dotprod` (with `sdot`) and
/// `dot_neon` (plain NEON): its always-inlined bodies `by_sdot` and
/// `by_widening`, each compiled with the features it needs.
#[cfg(target_arch = "aarch64")]
macro_rules! arm_kernels {
    () => {
        /// One row against `T` activation rows on ARM64 with `sdot`.
        ///
        /// # Safety
        /// The CPU must have NEON and DotProd.
        #[target_feature(enable = "neon,dotprod")]
        pub unsafe fn dot_dotprod<const T: usize>(row: &[u8], acts: [&[Q8Block]; T]) -> [f32; T] {
            by_sdot(row, acts)
        }

        /// One row against `T` activation rows on ARM64 with plain NEON.
        ///
        /// # Safety
        /// The CPU must have NEON (every ARM64 CPU does).
        #[target_feature(enable = "neon")]
        pub unsafe fn dot_neon<const T: usize>(row: &[u8], acts: [&[Q8Block]; T]) -> [f32; T] {
            by_widening(row, acts)
        }
    };
}

pub mod packed;
pub mod q4k;
pub mod q6k;

use std::ops::Range;
use std::sync::OnceLock;

#[cfg(target_arch = "x86_64")]
use super::isa::load256;
use super::isa::{self, Isa};
use super::Disjoint;

/// Values per block, in the weights and in the quantised activations.
pub const QK: usize = 256;

/// Tokens that share one pass over a weight row during prefill.
pub const TOKENS: usize = 4;

/// Weight rows per unit of work handed to a thread: enough to amortise the
/// hand-over, few enough that both cores finish together.
const ROWS_PER_ITEM: usize = 16;

/// 256 activations as i8 with one scale, and the sums of each 16 of them,
/// which the weights' offsets (Q4_K mins, Q6_K's −32) multiply. The values
/// come first and the block is aligned to a cache line, so that no vector
/// load of them straddles two lines: 7 % off the AVX-512 Q4_K product.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub struct Q8Block {
    pub qs: [i8; QK],
    pub sums: [i16; 16],
    pub d: f32,
}

impl Q8Block {
    pub const ZERO: Q8Block = Q8Block {
        d: 0.0,
        sums: [0; 16],
        qs: [0; QK],
    };

    /// Rounds `x` (256 values) to the nearest multiple of max|x| / 127,
    /// ties to even as ggml's Q8_K does. A block with a NaN or an infinity,
    /// or whose largest value is too small to invert (below 4e-37), is zero.
    pub fn quantize(x: &[f32]) -> Q8Block {
        // The largest magnitude as the largest of the bits without the sign:
        // an integer maximum vectorises, a float one does not (for NaN's sake).
        let amax = f32::from_bits(
            x.iter()
                .map(|v| v.to_bits() & !(1 << 31))
                .max()
                .unwrap_or(0),
        );
        let inv = 127.0 / amax;
        let mut block = Q8Block::ZERO;
        if !(amax.is_finite() && inv.is_finite()) {
            return block;
        }
        for (q, v) in block.qs.iter_mut().zip(x) {
            // SAFETY: every |v| is at most amax, so v · inv rounds into
            // -127..=127 and the unchecked conversion is exact (it is one
            // vector instruction for many values; `as` saturates them one by one).
            *q = unsafe { (v * inv).round_ties_even().to_int_unchecked::<i32>() } as i8;
        }
        for (sum, qs) in block.sums.iter_mut().zip(block.qs.chunks_exact(16)) {
            *sum = qs.iter().map(|&q| q as i16).sum();
        }
        block.d = amax / 127.0;
        block
    }
}

/// The quantised weight formats with kernels of their own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantFormat {
    Q4K,
    Q6K,
}

impl QuantFormat {
    /// Bytes per block of 256 weights.
    pub const fn block_bytes(self) -> usize {
        match self {
            QuantFormat::Q4K => q4k::BLOCK_BYTES,
            QuantFormat::Q6K => q6k::BLOCK_BYTES,
        }
    }
}

/// The instruction set the products use: the best this CPU runs (see
/// [`crate::model::isa`]), but AVX-512 only with BW and VNNI, which its
/// integer products and prefill tiles need.
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| match isa::best() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if !packed::available() => Isa::Avx2,
        best => best,
    })
}

/// Every instruction set this CPU can run the kernels with, from the
/// plainest to the one [`isa`] picks.
pub fn isas() -> Vec<Isa> {
    // The products' levels are the CPU's, but AVX-512 without VNNI.
    isa::levels().into_iter().filter(|&l| l <= isa()).collect()
}

/// Puts quantised activations in the order the kernels of `isa` for
/// `format` read them: the AVX-512 Q4_K product's
/// ([`q4k::swap_sub_blocks`]); the others read them as quantised.
pub fn prepare(isa: Isa, format: QuantFormat, acts: &mut [Q8Block]) {
    #[cfg(target_arch = "x86_64")]
    if (isa, format) == (Isa::Avx512, QuantFormat::Q4K) {
        q4k::swap_sub_blocks(acts);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (isa, format, acts);
}

/// Dot products of one weight row with `T` rows of quantised activations,
/// with the kernels of `isa` (one of [`isas`]), the activations as
/// [`prepare`] leaves them for `isa` and `format`.
pub fn dot<const T: usize>(
    isa: Isa,
    format: QuantFormat,
    row: &[u8],
    acts: [&[Q8Block]; T],
) -> [f32; T] {
    assert!(
        isa <= self::isa(),
        "this CPU cannot run the {isa:?} kernels"
    );
    match (isa, format) {
        (Isa::Scalar, QuantFormat::Q4K) => acts.map(|a| q4k::dot_scalar(row, a)),
        (Isa::Scalar, QuantFormat::Q6K) => acts.map(|a| q6k::dot_scalar(row, a)),
        // SAFETY (all the arms below): asserted above, this CPU runs `isa`.
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2, QuantFormat::Q4K) => unsafe { q4k::dot_avx2(row, acts) },
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2, QuantFormat::Q6K) => unsafe { q6k::dot_avx2(row, acts) },
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx512, QuantFormat::Q4K) => unsafe { q4k::dot_avx512(row, acts) },
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx512, QuantFormat::Q6K) => unsafe { q6k::dot_avx512(row, acts) },
        #[cfg(target_arch = "aarch64")]
        (Isa::Neon, QuantFormat::Q4K) => unsafe { q4k::dot_neon(row, acts) },
        #[cfg(target_arch = "aarch64")]
        (Isa::Neon, QuantFormat::Q6K) => unsafe { q6k::dot_neon(row, acts) },
        #[cfg(target_arch = "aarch64")]
        (Isa::DotProd, QuantFormat::Q4K) => unsafe { q4k::dot_dotprod(row, acts) },
        #[cfg(target_arch = "aarch64")]
        (Isa::DotProd, QuantFormat::Q6K) => unsafe { q6k::dot_dotprod(row, acts) },
    }
}

/// One token's products with consecutive `rows` of `format` blocks, as
/// many as `out` holds, each into its place: [`dot`] row after row, with
/// the kernel chosen once for the run and called from a loop that has its
/// target features, rather than through a choice for every row (~1.4
/// million rows a token in Mistral 7B).
pub fn dot_rows(isa: Isa, format: QuantFormat, rows: &[u8], acts: &[Q8Block], out: &mut [f32]) {
    assert!(
        isa <= self::isa(),
        "this CPU cannot run the {isa:?} kernels"
    );
    assert!(
        !out.is_empty() && rows.len().is_multiple_of(out.len()),
        "rows of the wrong size"
    );
    let row_bytes = rows.len() / out.len();
    /// The loop for one instruction set, with its target features, so
    /// that the kernels can inline into it (LLVM inlines some).
    macro_rules! rows_with {
        ($features:literal, $kernel:ident) => {{
            #[target_feature(enable = $features)]
            unsafe fn each(
                format: QuantFormat,
                rows: &[u8],
                row_bytes: usize,
                acts: &[Q8Block],
                out: &mut [f32],
            ) {
                for (row, o) in rows.chunks_exact(row_bytes).zip(out) {
                    *o = match format {
                        QuantFormat::Q4K => q4k::$kernel(row, [acts])[0],
                        QuantFormat::Q6K => q6k::$kernel(row, [acts])[0],
                    };
                }
            }
            // SAFETY: asserted above, this CPU runs `isa`.
            unsafe { each(format, rows, row_bytes, acts, out) }
        }};
    }
    match isa {
        Isa::Scalar => {
            for (row, o) in rows.chunks_exact(row_bytes).zip(out) {
                *o = dot(isa, format, row, [acts])[0];
            }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => rows_with!("avx2,fma,f16c", dot_avx2),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => rows_with!("avx512f,avx512bw,avx512vnni,avx2,fma,f16c", dot_avx512),
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => rows_with!("neon", dot_neon),
        #[cfg(target_arch = "aarch64")]
        Isa::DotProd => rows_with!("neon,dotprod", dot_dotprod),
    }
}

/// `out[t][r] = Σ_k x[t][k] · w[r][k]` for `m` tokens of `k` values against
/// `n` rows of `format` blocks; `out` is (m, n), row-major like `x`.
pub fn matmul(
    format: QuantFormat,
    w: &[u8],
    (m, k, n): (usize, usize, usize),
    x: &[f32],
    out: &mut [f32],
) {
    assert_eq!(
        w.len(),
        n * (k / QK) * format.block_bytes(),
        "weights of the wrong size"
    );
    matmuls(format, (m, k), x, &mut [(w, out)], true);
}

/// [`matmul`] for several matrices of one format that multiply the same
/// activations (attention's query, key and value; the gate and the up
/// projection), each with its output: the activations are quantised once
/// and every matrix's rows shared out in one parallel loop, so that the
/// threads hand work over once, not once a matrix.
///
/// With `tiles`, a batch of [`packed::MIN_TOKENS`] tokens or more goes
/// through repacked tiles, whose sums differ in their last bits from the
/// compact kernels'. Either way a token's sums do not depend on the other
/// tokens of the batch: a forward pass over several sequences
/// (`linear.rs`) keeps each on the kernels it would have alone.
pub fn matmuls(
    format: QuantFormat,
    (m, k): (usize, usize),
    x: &[f32],
    parts: &mut [(&[u8], &mut [f32])],
    tiles: bool,
) {
    assert!(
        k.is_multiple_of(QK),
        "{k} values per row is not a whole number of blocks"
    );
    assert_eq!(x.len(), m * k, "activations of the wrong size");
    let row_bytes = k / QK * format.block_bytes();
    let matrices: Vec<Matrix> = parts
        .iter_mut()
        .map(|(w, out)| {
            assert!(
                w.len().is_multiple_of(row_bytes),
                "weights of the wrong size"
            );
            let n = w.len() / row_bytes;
            assert_eq!(out.len(), m * n, "output of the wrong size");
            Matrix {
                w,
                n,
                out: Disjoint::new(out),
            }
        })
        .collect();
    let mut acts = quantize(x, m, k);
    let isa = isa();
    #[cfg(not(target_arch = "x86_64"))]
    let _ = tiles;
    #[cfg(target_arch = "x86_64")]
    if tiles
        && isa >= Isa::Avx2
        && m >= packed::MIN_TOKENS
        && matrices.iter().all(|p| p.n.is_multiple_of(packed::ROWS))
    {
        let acts: Vec<&[Q8Block]> = acts.chunks_exact(k / QK).collect();
        // SAFETY: `isa()` saw (at least) AVX2 and FMA on this CPU.
        unsafe { matmul_packed(isa, format, row_bytes, &matrices, &acts) };
        return;
    }
    prepare(isa, format, &mut acts);
    let acts: Vec<&[Q8Block]> = acts.chunks_exact(k / QK).collect();
    let items: Vec<usize> = matrices
        .iter()
        .map(|p| p.n.div_ceil(ROWS_PER_ITEM))
        .collect();
    in_parallel_over(&items, |p, range| {
        let Matrix { w, n, out } = &matrices[p];
        let rows = range.start * ROWS_PER_ITEM..(range.end * ROWS_PER_ITEM).min(*n);
        let write = |t: usize, r: usize, v: f32| {
            // SAFETY: every (t, r) lies in the matrix's output (asserted
            // sizes) and is written by the one work item that owns row r.
            unsafe { *out.at(t * n + r) = v }
        };
        let work = Work {
            isa,
            format,
            w,
            row_bytes,
            rows: rows.clone(),
        };
        let mut t = 0;
        while t + TOKENS <= m {
            work.tokens::<TOKENS>(&acts[t..], |i, r, v| write(t + i, r, v));
            t += TOKENS;
        }
        // Two or three tokens left still share each pass over a row (and
        // get the sums they get alone): two streams decoding together cost
        // little more than one.
        match m - t {
            3 => work.tokens::<3>(&acts[t..], |i, r, v| write(t + i, r, v)),
            2 => work.tokens::<2>(&acts[t..], |i, r, v| write(t + i, r, v)),
            _ => {}
        }
        if m - t >= 2 {
            return;
        }
        for (t, a) in acts.iter().enumerate().skip(t) {
            // SAFETY: the rows of token t lie in the matrix's output
            // (asserted sizes) and belong to this work item alone.
            let out =
                unsafe { std::slice::from_raw_parts_mut(out.at(t * n + rows.start), rows.len()) };
            dot_rows(
                isa,
                format,
                &w[rows.start * row_bytes..rows.end * row_bytes],
                a,
                out,
            );
        }
    });
}

/// A work item's rows of one matrix, and the kernels that multiply them.
struct Work<'a> {
    isa: Isa,
    format: QuantFormat,
    w: &'a [u8],
    row_bytes: usize,
    rows: Range<usize>,
}

impl Work<'_> {
    /// `T` tokens' products with each row, one pass over each: `write(i,
    /// r, v)` for token `i` of `acts` and row `r`.
    fn tokens<const T: usize>(&self, acts: &[&[Q8Block]], write: impl Fn(usize, usize, f32)) {
        for r in self.rows.clone() {
            let row = &self.w[r * self.row_bytes..(r + 1) * self.row_bytes];
            let a: [&[Q8Block]; T] = std::array::from_fn(|i| acts[i]);
            for (i, v) in dot(self.isa, self.format, row, a).into_iter().enumerate() {
                write(i, r, v);
            }
        }
    }
}

/// One matrix of a [`matmuls`] call: its weights, its rows, and where its
/// (tokens, rows) results go.
struct Matrix<'a> {
    w: &'a [u8],
    n: usize,
    out: Disjoint<f32>,
}

/// [`super::in_parallel`] over the work items of several matrices laid end
/// to end (`items[p]` of matrix p): `f(p, range)` with a range of matrix
/// p's own items. A thread's range may run on from one matrix into the next.
fn in_parallel_over(items: &[usize], f: impl Fn(usize, Range<usize>) + Sync) {
    super::in_parallel(items.iter().sum(), |range| {
        let mut first = 0;
        for (p, &count) in items.iter().enumerate() {
            let (start, end) = (range.start.max(first), range.end.min(first + count));
            if start < end {
                f(p, start - first..end - first);
            }
            first += count;
        }
    });
}

/// Prefill through [`packed`] tiles, one tile of rows per work item.
///
/// # Safety
/// The CPU must run `isa` (AVX2 at least); every matrix's rows a multiple of
/// [`packed::ROWS`], its output (tokens, rows).
#[cfg(target_arch = "x86_64")]
unsafe fn matmul_packed(
    isa: Isa,
    format: QuantFormat,
    row_bytes: usize,
    matrices: &[Matrix],
    acts: &[&[Q8Block]],
) {
    use std::cell::RefCell;
    thread_local! {
        static TILE: RefCell<packed::Tile> = RefCell::default();
    }
    const ROWS: usize = packed::ROWS;
    let tiles: Vec<usize> = matrices.iter().map(|p| p.n / ROWS).collect();
    in_parallel_over(&tiles, |p, range| {
        let Matrix { w, n, out } = &matrices[p];
        TILE.with_borrow_mut(|tile| {
            for i in range {
                let first = i * ROWS;
                tile.pack(
                    format,
                    &w[first * row_bytes..(first + ROWS) * row_bytes],
                    row_bytes,
                );
                let write = |t: usize, sums: &[f32; ROWS]| {
                    // SAFETY: rows first..first + 16 of token t lie in `out`
                    // and belong to this work item alone.
                    unsafe {
                        std::ptr::copy_nonoverlapping(sums.as_ptr(), out.at(t * n + first), ROWS)
                    }
                };
                match isa {
                    Isa::Avx512 => by_tokens::<{ packed::TOKENS }>(isa, format, tile, acts, &write),
                    _ => by_tokens::<{ packed::TOKENS_AVX2 }>(isa, format, tile, acts, &write),
                }
            }
        })
    });
}

/// The tile's products with every token, `T` tokens at a time and then one
/// by one, each token's sums handed to `write`.
///
/// # Safety
/// As [`matmul_packed`].
#[cfg(target_arch = "x86_64")]
unsafe fn by_tokens<const T: usize>(
    isa: Isa,
    format: QuantFormat,
    tile: &packed::Tile,
    acts: &[&[Q8Block]],
    write: &dyn Fn(usize, &[f32; packed::ROWS]),
) {
    let products = |a: [&[Q8Block]; T]| match isa {
        Isa::Avx512 => packed::products(format, tile, a),
        _ => packed::products_avx2(format, tile, a),
    };
    let mut t = 0;
    while t + T <= acts.len() {
        for (i, sums) in products(std::array::from_fn(|i| acts[t + i]))
            .iter()
            .enumerate()
        {
            write(t + i, sums);
        }
        t += T;
    }
    for (t, a) in acts.iter().enumerate().skip(t) {
        let sums = match isa {
            Isa::Avx512 => packed::products(format, tile, [*a]),
            _ => packed::products_avx2(format, tile, [*a]),
        };
        write(t, &sums[0]);
    }
}

/// `m` rows of `k` activations as Q8 blocks, quantised on every core when
/// there are more than [`QUANTIZE_ITEM`].
fn quantize(x: &[f32], m: usize, k: usize) -> Vec<Q8Block> {
    let mut blocks = vec![Q8Block::ZERO; m * k / QK];
    let ptr = Disjoint::new(&mut blocks);
    let count = blocks.len();
    super::in_parallel(count.div_ceil(QUANTIZE_ITEM), |items| {
        for i in items.start * QUANTIZE_ITEM..(items.end * QUANTIZE_ITEM).min(count) {
            // SAFETY: each block index is handed to exactly one work item.
            unsafe { *ptr.at(i) = Q8Block::quantize(&x[i * QK..(i + 1) * QK]) }
        }
    });
    blocks
}

/// Activation blocks a thread quantises at a time. A block takes about 70
/// ns, so one token's (16 to 56 blocks in Mistral 7B's products) take less
/// on the thread at hand than handing half of them to another would.
const QUANTIZE_ITEM: usize = 64;

/// An f16 stored little-endian at `bytes[at..at + 2]`, widened by `half`'s
/// software conversion, which inlines into the kernels: its `to_f32` is a
/// call that checks for F16C each time in a portable build (5 % of a
/// token's decode, one per block scale).
#[inline(always)]
fn f16_at(bytes: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32_const()
}

/// 32 bytes of quantised activations at `p`, on a 32-byte boundary (a
/// [`Q8Block`] is aligned to 64 and read in 32-byte steps): an aligned load,
/// which LLVM folds into the instruction that uses it. An unaligned one it
/// splits in two for the x86-64-v2 baseline, and [`load256`], which keeps it
/// whole, costs an instruction and an address of its own: 12 of a Q4_K
/// block's ~100 instructions with AVX2.
///
/// # Safety
/// The CPU must have AVX, and `p` point at 32 readable bytes on a 32-byte boundary.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
#[inline]
unsafe fn load_acts<T>(p: *const T) -> std::arch::x86_64::__m256i {
    debug_assert!(p.cast::<u8>().align_offset(32) == 0);
    std::arch::x86_64::_mm256_load_si256(p.cast())
}

/// How far past the block it multiplies a one-token product asks for
/// weights (about 20 Q4_K blocks). Decoding streams every weight once a
/// token; a prefetch this far ahead has the next page's lines on their way
/// while the current ones are multiplied: 4 % faster decoding on 2 Zen 4
/// cores, with the AVX-512 and the AVX2 kernels alike (docs/performance.md).
/// Several tokens at once are bound by the arithmetic instead, and skip it.
#[cfg(target_arch = "x86_64")]
const PREFETCH_AHEAD: usize = 3072;

/// How far ahead weights bound for L2 are asked for ([`weights_level`]):
/// such a line holds none of L1's few miss buffers on its way, so more of
/// them can be on their way at once. The down projection's product, 3072
/// bytes → 6144: 12 and 23 % faster (Q4_K, Q6_K) with AVX-512, 8 and 14 %
/// with AVX2; 8, 12 and 16 KiB were no faster than 6
/// (`benches/results/epyc-2026-12-06-down-projection-distance.txt`).
#[cfg(target_arch = "x86_64")]
const PREFETCH_AHEAD_L2: usize = 6144;

/// Asks for the `BYTES`-byte block [`PREFETCH_AHEAD`] bytes past `block`
/// ([`PREFETCH_AHEAD_L2`] into L2), a line per 64 bytes, into `level`:
/// blocks lie end to end, so every line of a row is asked for.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefetch_ahead<const BYTES: usize>(block: *const u8, level: isa::Level) {
    let distance = match level {
        isa::Level::L1 => PREFETCH_AHEAD,
        isa::Level::L2 => PREFETCH_AHEAD_L2,
    };
    let ahead = block.wrapping_add(distance);
    for line in (0..BYTES).step_by(64) {
        isa::prefetch(ahead.wrapping_add(line), level);
    }
}

/// Where a one-token product asks for its weights, given the activation
/// blocks of a row. Every row reads all of them, so they must stay in L1;
/// a weights' stream prefetched into L1 evicts them when they fill much of
/// it, as the feed-forward's down projection's 56 blocks (18 KiB) do. Then
/// the stream waits in L2: on 2 Zen 4 cores the down projection's product
/// went 8–22 % faster, while the 16-block ones would lose 8 % in L2
/// (`benches/results/epyc-2026-12-06-down-projection.txt`).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn weights_level(act_blocks: usize) -> isa::Level {
    match act_blocks * std::mem::size_of::<Q8Block>() {
        0..=LARGE_ACTIVATIONS => isa::Level::L1,
        _ => isa::Level::L2,
    }
}

/// The activations' bytes above which [`weights_level`] is L2: 10 KiB,
/// a third of a 32 KiB L1 (x86-64 cores have 32 or 48 KiB).
#[cfg(target_arch = "x86_64")]
const LARGE_ACTIVATIONS: usize = 10 << 10;

/// Masks for `_mm256_shuffle_epi8` that spread bytes of a 16-byte register
/// (broadcast to both halves) over i16 lanes: mask `m` takes byte `m`, or
/// with `halves` byte `2m` in the low 128 bits and `2m + 1` in the high; into
/// each lane's low byte, the other zero (a 0x80 index), or with `high` into
/// its high byte, where a shift right by 8 sign-extends it.
#[cfg(target_arch = "x86_64")]
const fn spread_bytes(halves: bool, high: bool) -> [std::arch::x86_64::__m256i; 8] {
    let mut masks = [[0u8; 32]; 8];
    let mut m = 0;
    while m < 8 {
        let mut i = 0;
        while i < 32 {
            let byte = if halves { 2 * m + i / 16 } else { m };
            masks[m][i] = if (i % 2 == 1) == high {
                byte as u8
            } else {
                0x80
            };
            i += 1;
        }
        m += 1;
    }
    // SAFETY: 32 bytes are one __m256i, whatever their values.
    unsafe { std::mem::transmute::<[[u8; 32]; 8], [std::arch::x86_64::__m256i; 8]>(masks) }
}

/// The two f16 at `at` and `at + 2` as f32, with F16C's one conversion:
/// [`f16_at`] in software costs a block dozens of instructions and branches.
///
/// # Safety
/// The CPU must have F16C, and `bytes` hold 4 bytes from `at`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "f16c")]
#[inline]
unsafe fn f16_pair_at(bytes: &[u8], at: usize) -> (f32, f32) {
    use std::arch::x86_64::*;
    let word = std::ptr::read_unaligned(bytes.as_ptr().add(at).cast::<i32>());
    let both = _mm_cvtph_ps(_mm_cvtsi32_si128(word));
    (_mm_cvtss_f32(both), _mm_cvtss_f32(_mm_movehdup_ps(both)))
}

/// [`f16_pair_at`] on ARM64: one `fcvtl`, which every ARM64 CPU has (the
/// FP16 extension is for arithmetic; Rust's f16 vector types are unstable,
/// hence the assembly).
///
/// # Safety
/// `bytes` must hold 4 bytes from `at`.
#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
#[inline]
unsafe fn f16_pair_at(bytes: &[u8], at: usize) -> (f32, f32) {
    use std::arch::aarch64::*;
    let word = std::ptr::read_unaligned(bytes.as_ptr().add(at).cast::<u32>());
    let both: float32x4_t;
    std::arch::asm!(
        "fcvtl {both:v}.4s, {halves:v}.4h",
        both = lateout(vreg) both,
        halves = in(vreg) vdup_n_u32(word),
        options(pure, nomem, nostack, preserves_flags)
    );
    (vgetq_lane_f32::<0>(both), vgetq_lane_f32::<1>(both))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QStorage, QTensor};
    use candle_core::Device;
    use rand::{Rng, SeedableRng};
    use std::borrow::Cow;

    /// Random blocks of `format` whose scales are sane f16 values (random
    /// bytes there would make infinities and NaNs).
    pub fn random_rows(format: QuantFormat, rows: usize, k: usize, seed: u64) -> Vec<u8> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut bytes = vec![0u8; rows * k / QK * format.block_bytes()];
        rng.fill(&mut bytes[..]);
        let f16 = |rng: &mut rand_chacha::ChaCha8Rng| {
            half::f16::from_f32(rng.random_range(0.001..0.02)).to_le_bytes()
        };
        for block in bytes.chunks_exact_mut(format.block_bytes()) {
            match format {
                QuantFormat::Q4K => {
                    block[0..2].copy_from_slice(&f16(&mut rng));
                    block[2..4].copy_from_slice(&f16(&mut rng));
                }
                QuantFormat::Q6K => block[208..210].copy_from_slice(&f16(&mut rng)),
            }
        }
        bytes
    }

    pub fn random_acts(m: usize, k: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..m * k).map(|_| rng.random_range(-2.0f32..2.0)).collect()
    }

    /// The same product through candle: dequantised weights, f32 matmul.
    fn reference(
        format: QuantFormat,
        w: &[u8],
        (m, k, n): (usize, usize, usize),
        x: &[f32],
    ) -> Vec<f32> {
        let dtype = match format {
            QuantFormat::Q4K => GgmlDType::Q4K,
            QuantFormat::Q6K => GgmlDType::Q6K,
        };
        let storage = QStorage::from_data(Cow::Borrowed(w), &Device::Cpu, dtype).unwrap();
        let w = QTensor::new(storage, (n, k))
            .unwrap()
            .dequantize(&Device::Cpu)
            .unwrap();
        let x = candle_core::Tensor::from_slice(x, (m, k), &Device::Cpu).unwrap();
        x.matmul(&w.t().unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    fn assert_close(got: &[f32], want: &[f32], tolerance: f32) {
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= tolerance * scale,
                "element {i}: {g} vs {w} (scale {scale})"
            );
        }
    }

    #[test]
    fn products_match_candle_on_dequantised_weights() {
        // 7 tokens: one group of TOKENS and a remainder; 37 rows: a partial
        // work item; 35 tokens and 32 rows: repacked tiles, where the CPU has them.
        for (format, (m, k, n)) in [
            (QuantFormat::Q4K, (7, 512, 37)),
            (QuantFormat::Q6K, (7, 512, 37)),
            (QuantFormat::Q4K, (35, 512, 32)),
            (QuantFormat::Q6K, (35, 256, 32)),
        ] {
            let w = random_rows(format, n, k, 1);
            let x = random_acts(m, k, 2);
            let mut out = vec![0f32; m * n];
            matmul(format, &w, (m, k, n), &x, &mut out);
            // Only the 8-bit rounding of the activations separates the two.
            assert_close(&out, &reference(format, &w, (m, k, n), &x), 0.01);
        }
    }

    #[test]
    fn products_of_several_matrices_are_each_ones_product() {
        // 1 token, then 7 (a group of TOKENS and a remainder), then 35
        // (repacked tiles, where the CPU has them: every matrix 16 rows a tile).
        for (format, m, rows) in [
            (QuantFormat::Q4K, 1, [37, 16, 5]),
            (QuantFormat::Q6K, 7, [37, 16, 5]),
            (QuantFormat::Q4K, 35, [32, 16, 48]),
            (QuantFormat::Q6K, 35, [32, 16, 48]),
        ] {
            let k = 512;
            let x = random_acts(m, k, 8);
            let ws: Vec<Vec<u8>> = (0..3)
                .map(|i| random_rows(format, rows[i], k, i as u64))
                .collect();
            let mut outs: Vec<Vec<f32>> = rows.iter().map(|n| vec![0f32; m * n]).collect();
            let mut parts: Vec<(&[u8], &mut [f32])> = ws
                .iter()
                .zip(&mut outs)
                .map(|(w, out)| (&w[..], &mut out[..]))
                .collect();
            matmuls(format, (m, k), &x, &mut parts, true);
            for ((w, n), together) in ws.iter().zip(rows).zip(&outs) {
                let mut alone = vec![0f32; m * n];
                matmul(format, w, (m, k, n), &x, &mut alone);
                assert_eq!(together, &alone, "{format:?}, {m} tokens, {n} rows");
            }
        }
    }

    /// A token's sums are the same whatever else is in the batch: alone,
    /// among a few (groups of TOKENS and a remainder) or many, with the
    /// compact kernels; and among any batch that takes the tiles.
    #[test]
    fn a_tokens_products_do_not_depend_on_the_batch() {
        let (k, n, most) = (512, 48, 41);
        for format in [QuantFormat::Q4K, QuantFormat::Q6K] {
            let w = random_rows(format, n, k, 3);
            let x = random_acts(most, k, 4);
            let product = |m: usize, tiles: bool| {
                let mut out = vec![0f32; m * n];
                matmuls(format, (m, k), &x[..m * k], &mut [(&w, &mut out)], tiles);
                out
            };
            let alone: Vec<Vec<f32>> = (0..most)
                .map(|t| {
                    let mut out = vec![0f32; n];
                    matmuls(
                        format,
                        (1, k),
                        &x[t * k..][..k],
                        &mut [(&w, &mut out)],
                        false,
                    );
                    out
                })
                .collect();
            for m in [2, 3, 4, 5, 6, 7, 9, most] {
                for (t, sums) in product(m, false).chunks_exact(n).enumerate() {
                    assert_eq!(sums, alone[t], "{format:?}: token {t} of {m}");
                }
            }
            let tiled = product(most, true);
            for m in [packed::MIN_TOKENS, packed::MIN_TOKENS + 3] {
                assert_eq!(product(m, true), tiled[..m * n], "{format:?}: {m} tiled");
            }
        }
    }

    #[test]
    fn every_instruction_set_gives_the_scalar_result() {
        let k = 1024;
        let x = random_acts(TOKENS, k, 3);
        let blocks: Vec<Q8Block> = x.chunks_exact(QK).map(Q8Block::quantize).collect();
        let acts: [&[Q8Block]; TOKENS] = std::array::from_fn(|t| &blocks[t * 4..(t + 1) * 4]);
        // Every ARM64 CPU has NEON, so its kernels are always among these.
        #[cfg(target_arch = "aarch64")]
        assert!(isas().contains(&Isa::Neon) || isa::cap() == Isa::Scalar);
        for format in [QuantFormat::Q4K, QuantFormat::Q6K] {
            let row = random_rows(format, 1, k, 4);
            let scalar = dot(Isa::Scalar, format, &row, acts);
            for isa in isas() {
                let mut prepared = blocks.clone();
                prepare(isa, format, &mut prepared);
                let acts: [&[Q8Block]; TOKENS] =
                    std::array::from_fn(|t| &prepared[t * 4..(t + 1) * 4]);
                assert_close(&dot(isa, format, &row, acts), &scalar, 1e-5);
                assert_close(&dot(isa, format, &row, [acts[2]]), &scalar[2..3], 1e-5);
                let rows = random_rows(format, 5, k, 9);
                let mut each = [0f32; 5];
                dot_rows(isa, format, &rows, acts[1], &mut each);
                for (row, got) in rows.chunks_exact(rows.len() / 5).zip(each) {
                    assert_eq!(
                        got,
                        dot(isa, format, row, [acts[1]])[0],
                        "{isa:?} {format:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn largest_quants_and_activations_overflow_no_kernel() {
        // Every quant, scale and min at its largest and every activation
        // at ±127: the kernels' narrowest lanes at their fullest.
        let k = 512;
        for format in [QuantFormat::Q4K, QuantFormat::Q6K] {
            let mut row = vec![0xFF; k / QK * format.block_bytes()];
            let one = half::f16::ONE.to_le_bytes();
            let scales: &[usize] = match format {
                QuantFormat::Q4K => &[0, 2],
                QuantFormat::Q6K => &[208],
            };
            for block in row.chunks_exact_mut(format.block_bytes()) {
                for &at in scales {
                    block[at..at + 2].copy_from_slice(&one);
                }
            }
            for sign in [1.0, -1.0] {
                let blocks: Vec<Q8Block> = vec![sign; k]
                    .chunks_exact(QK)
                    .map(Q8Block::quantize)
                    .collect();
                assert!(blocks
                    .iter()
                    .all(|b| b.qs.iter().all(|&q| q == 127 * sign as i8)));
                let want = dot(Isa::Scalar, format, &row, [&blocks]);
                for isa in isas() {
                    let mut prepared = blocks.clone();
                    prepare(isa, format, &mut prepared);
                    let got = dot(isa, format, &row, [&prepared]);
                    assert_close(&got, &want, 1e-6);
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn packed_tiles_give_the_scalar_result() {
        if isa() < Isa::Avx2 {
            return;
        }
        let k = 512;
        let x = random_acts(TOKENS, k, 6);
        let acts: Vec<Q8Block> = x.chunks_exact(QK).map(Q8Block::quantize).collect();
        let acts: [&[Q8Block]; TOKENS] = std::array::from_fn(|t| &acts[t * 2..(t + 1) * 2]);
        for format in [QuantFormat::Q4K, QuantFormat::Q6K] {
            let rows = random_rows(format, packed::ROWS, k, 7);
            let row_bytes = k / QK * format.block_bytes();
            let mut tile = packed::Tile::default();
            tile.pack(format, &rows, row_bytes);
            // SAFETY: AVX2 checked just above, AVX-512 VNNI just below.
            let mut results = vec![unsafe { packed::products_avx2(format, &tile, acts) }];
            if isa() == Isa::Avx512 {
                results.push(unsafe { packed::products(format, &tile, acts) });
            }
            for sums in results {
                for (r, row) in rows.chunks_exact(row_bytes).enumerate() {
                    let scalar = dot(Isa::Scalar, format, row, acts);
                    let got: Vec<f32> = sums.iter().map(|s| s[r]).collect();
                    assert_close(&got, &scalar, 1e-5);
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn long_rows_prefetch_their_weights_into_l2() {
        use isa::Level;
        // Mistral's hidden sizes (4096, 5120) against the down projections'
        // rows (14336 in 7B and NeMo, 32768 in Small 3).
        for (k, l2) in [(4096, false), (5120, false), (14336, true), (32768, true)] {
            let level = weights_level(k / QK);
            assert_eq!(matches!(level, Level::L2), l2, "{k} values a row");
        }
    }

    #[test]
    fn quantised_activations_keep_their_sums() {
        let x = random_acts(1, QK, 5);
        let b = Q8Block::quantize(&x);
        assert_eq!(b.qs.iter().map(|&q| q.unsigned_abs()).max(), Some(127));
        for (s, qs) in b.sums.iter().zip(b.qs.chunks_exact(16)) {
            assert_eq!(*s, qs.iter().map(|&q| q as i16).sum::<i16>());
        }
        for (q, v) in b.qs.iter().zip(&x) {
            assert!((*q as f32 * b.d - v).abs() <= b.d / 2.0 + 1e-6);
        }
        assert_eq!(Q8Block::quantize(&[0.0; QK]).d, 0.0);
        // With 127 the largest, values keep their size: 0.5 and 2.5 are ties.
        let mut ties = [0f32; QK];
        ties[..3].copy_from_slice(&[127.0, 0.5, 2.5]);
        assert_eq!(Q8Block::quantize(&ties).qs[..3], [127, 0, 2]);
        // Nothing that cannot be scaled to 127 comes out nonzero.
        for bad in [f32::NAN, f32::INFINITY, -f32::INFINITY, 1e-38] {
            let mut x = [1e-38f32; QK];
            x[7] = bad;
            let b = Q8Block::quantize(&x);
            assert_eq!((b.d, b.qs.iter().all(|&q| q == 0)), (0.0, true), "{bad}");
        }
    }
}
