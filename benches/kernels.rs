//! Speed of the quantised mat-vec kernels, one core, per instruction set
//! this CPU runs: nanoseconds per 256-weight block with the weights in cache
//! (what the arithmetic costs) and streamed from memory (what decode sees),
//! the whole multi-threaded product at each of Mistral 7B's matrix shapes,
//! and one token's attention over an 8k-position cache of all 32 layers.
//!
//! `cargo bench --bench kernels`; `-- matmul` runs only the whole products,
//! `-- attention` only attention. The end-to-end figures against llama.cpp
//! come from `greve bench` (see the README).

use std::time::Instant;

use greve::model::attention::{self, HostKvCache, KvType};
use greve::model::quant::{self, Q8Block, QuantFormat, QK};

/// Columns of Mistral 7B's up/gate projections (the hidden size).
const K: usize = 4096;

fn main() {
    if std::env::args().any(|a| a == "attention") {
        return attention_decode();
    }
    let x: Vec<f32> = (0..K).map(|i| (i as f32 * 0.37).sin()).collect();
    let natural: Vec<Q8Block> = x.chunks_exact(QK).map(Q8Block::quantize).collect();
    let only_products = std::env::args().any(|a| a == "matmul");
    for format in [QuantFormat::Q4K, QuantFormat::Q6K] {
        if only_products {
            products(format);
            continue;
        }
        let row_bytes = K / QK * format.block_bytes();
        // 32 rows stay in L1/L2; 256 MB do not fit any cache. The best run
        // counts: a shared machine's other work only ever slows one down.
        for (place, rows, runs, passes) in [
            ("cache", 32, 15, 1500),
            ("memory", (256 << 20) / row_bytes, 3, 1),
        ] {
            let w = weights(format, rows, row_bytes);
            for isa in quant::isas() {
                let mut acts = natural.clone();
                quant::prepare(isa, format, &mut acts);
                let mut best = f64::MAX;
                let mut sink = 0f32;
                let mut out = vec![0f32; rows];
                for _ in 0..runs {
                    let start = Instant::now();
                    for _ in 0..passes {
                        // As decode calls them: a run of rows at a time.
                        quant::dot_rows(isa, format, &w, &acts, &mut out);
                        sink += out.iter().sum::<f32>();
                    }
                    best = best.min(start.elapsed().as_secs_f64());
                }
                let blocks = (passes * rows * K / QK) as f64;
                println!(
                    "{format:?} {isa:?} {place}: {:.2} ns/block, {:.1} GB/s, best of {runs} (checksum {sink:.0})",
                    best / blocks * 1e9,
                    blocks * format.block_bytes() as f64 / best / 1e9
                );
            }
        }
        products(format);
    }
}

/// Decode (one token) and a prompt batch through Mistral 7B's up (or gate)
/// matrix, and decode through its down matrix, whose rows are 3.5 times as
/// long, and through attention's query (or output) and key (or value)
/// matrices: all cores. Decode takes its turns through copies that together
/// outgrow the caches, as a model's matrices do.
fn products(format: QuantFormat) {
    let shapes = [
        (K, 14336, &[1, 64][..]),
        (14336, K, &[1][..]),
        (K, K, &[1][..]),
        (K, 1024, &[1][..]),
    ];
    for (k, n, ms) in shapes {
        let row_bytes = k / QK * format.block_bytes();
        let w = weights(format, n, row_bytes);
        let copies: Vec<Vec<u8>> = (0..(256 << 20) / w.len() + 1).map(|_| w.clone()).collect();
        for &m in ms {
            let x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.11).cos()).collect();
            let mut out = vec![0f32; m * n];
            let passes = if m == 1 { 8 * copies.len() } else { 5 };
            let start = Instant::now();
            for pass in 0..passes {
                let w = if m == 1 {
                    &copies[pass % copies.len()]
                } else {
                    &w
                };
                quant::matmul(format, w, (m, k, n), &x, &mut out);
            }
            let seconds = start.elapsed().as_secs_f64() / passes as f64;
            println!(
                "{format:?} matmul {m} × {k} × {n}: {:.2} ms, {:.1} GB/s of weights, {:.0} GMAC/s",
                seconds * 1e3,
                w.len() as f64 / seconds / 1e9,
                (m * k * n) as f64 / seconds / 1e9
            );
        }
    }
}

/// Mistral 7B's attention for one new token at 8192 cached positions, every
/// layer's cache its own (1 GiB in f16), so the reads come from memory.
fn attention_decode() {
    let layers = 32;
    // 32 caches of 8192 positions are read from memory; one of 2048, 128
    // times over, stays in L3 (what the arithmetic costs).
    for (caches, t, passes) in [(layers, 8192, 10), (1, 2048, 128 * 10)] {
        attention_over(caches, t, passes);
    }
}

fn attention_over(layers: usize, t: usize, passes: usize) {
    let (heads, kv, hd) = (32, 8, 128);
    let values: Vec<f32> = (0..kv * t * hd).map(|i| (i as f32 * 0.013).sin()).collect();
    let q: Vec<f32> = (0..heads * hd).map(|i| (i as f32 * 0.7).cos()).collect();
    for kind in [KvType::F16, KvType::Q8] {
        let caches: Vec<HostKvCache> = (0..layers)
            .map(|_| {
                let mut cache = HostKvCache::new(kv, hd, kind);
                cache.append(&values, &values, t).unwrap();
                cache
            })
            .collect();
        let bytes = match kind {
            KvType::F16 => 2 * 2 * layers * kv * t * hd,
            KvType::Q8 => 2 * layers * kv * t * (hd + 4 * hd / 32),
        };
        let mut sink = 0f32;
        let start = Instant::now();
        for _ in 0..passes {
            for cache in &caches {
                sink += attention::attend(&q, heads, 1, cache, None)[0];
            }
        }
        let seconds = start.elapsed().as_secs_f64() / passes as f64;
        println!(
            "attention {kind:?}, 1 token over {t} positions, {layers} caches: {:.2} ns a position, {:.1} GB/s (checksum {sink:.0})",
            seconds * 1e9 / (layers * t) as f64,
            bytes as f64 / seconds / 1e9
        );
    }
}

/// Blocks of arbitrary quants with scale 1.0 (f16 0x3C00), so no NaN appears.
fn weights(format: QuantFormat, rows: usize, row_bytes: usize) -> Vec<u8> {
    let mut w: Vec<u8> = (0..rows * row_bytes).map(|i| (i * 7 % 251) as u8).collect();
    for block in w.chunks_exact_mut(format.block_bytes()) {
        let scales: &[usize] = match format {
            QuantFormat::Q4K => &[0, 2],
            QuantFormat::Q6K => &[208],
        };
        for &at in scales {
            block[at..at + 2].copy_from_slice(&[0x00, 0x3C]);
        }
    }
    w
}
