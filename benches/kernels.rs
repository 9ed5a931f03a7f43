//! Speed of the quantised mat-vec kernels, one core, per instruction set
//! this CPU runs: nanoseconds per 256-weight block with the weights in cache
//! (what the arithmetic costs) and streamed from memory (what decode sees),
//! and the whole multi-threaded product at Mistral 7B's feed-forward shape.
//!
//! `cargo bench --bench kernels`. The end-to-end figures against llama.cpp
//! come from `greve bench` (see the README).

use std::time::Instant;

use greve::model::quant::{self, Format, Q8Block, QK};

/// Columns of Mistral 7B's up/gate projections (the hidden size).
const K: usize = 4096;

fn main() {
    let x: Vec<f32> = (0..K).map(|i| (i as f32 * 0.37).sin()).collect();
    let acts: Vec<Q8Block> = x.chunks_exact(QK).map(Q8Block::quantize).collect();
    for format in [Format::Q4K, Format::Q6K] {
        let row_bytes = K / QK * format.block_bytes();
        // 32 rows stay in L1/L2; 256 MB do not fit any cache.
        for (place, rows, passes) in [
            ("cache", 32, 20_000),
            ("memory", (256 << 20) / row_bytes, 3),
        ] {
            let w = weights(format, rows, row_bytes);
            for isa in quant::isas() {
                let start = Instant::now();
                let mut sink = 0f32;
                for _ in 0..passes {
                    for row in w.chunks_exact(row_bytes) {
                        sink += quant::dot(isa, format, row, [&acts[..]])[0];
                    }
                }
                let seconds = start.elapsed().as_secs_f64();
                let blocks = (passes * rows * K / QK) as f64;
                println!(
                    "{format:?} {isa:?} {place}: {:.2} ns/block, {:.1} GB/s (checksum {sink:.0})",
                    seconds / blocks * 1e9,
                    blocks * format.block_bytes() as f64 / seconds / 1e9
                );
            }
        }
        // Decode (one token) and a prompt batch through the 14336 × 4096 matrix, all cores.
        let n = 14336;
        let w = weights(format, n, row_bytes);
        for m in [1, 64] {
            let x: Vec<f32> = (0..m * K).map(|i| (i as f32 * 0.11).cos()).collect();
            let mut out = vec![0f32; m * n];
            let passes = if m == 1 { 50 } else { 5 };
            let start = Instant::now();
            for _ in 0..passes {
                quant::matmul(format, &w, (m, K, n), &x, &mut out);
            }
            let seconds = start.elapsed().as_secs_f64() / passes as f64;
            println!(
                "{format:?} matmul {m} × {K} × {n}: {:.2} ms, {:.1} GB/s of weights, {:.0} GMAC/s",
                seconds * 1e3,
                w.len() as f64 / seconds / 1e9,
                (m * K * n) as f64 / seconds / 1e9
            );
        }
    }
}

/// Blocks of arbitrary quants with scale 1.0 (f16 0x3C00), so no NaN appears.
fn weights(format: Format, rows: usize, row_bytes: usize) -> Vec<u8> {
    let mut w: Vec<u8> = (0..rows * row_bytes).map(|i| (i * 7 % 251) as u8).collect();
    for block in w.chunks_exact_mut(format.block_bytes()) {
        let scales: &[usize] = match format {
            Format::Q4K => &[0, 2],
            Format::Q6K => &[208],
        };
        for &at in scales {
            block[at..at + 2].copy_from_slice(&[0x00, 0x3C]);
        }
    }
    w
}
