//! Scaled dot-product attention on the CPU, over a KV cache held in f16 or
//! in i8 with a scale per 32 values.
//!
//! Generating a token reads every cached key and value of every layer: at
//! 8k positions that is 1 GB per token in f16 for Mistral 7B (0.56 GB in
//! i8), 2 GB in f32, next to 4.3 GB of Q4_K_M weights. So the cache is f16
//! or i8 (as llama.cpp's `f16` and `q8_0`), each key and value is read once
//! for all the query heads that share it
//! (grouped-query attention), and the work is spread over the cores by
//! (key/value head, query position). The causal mask and the sliding window
//! are ranges of positions, never materialised.

use std::io::{Read, Write};

use half::f16;
use half::slice::HalfFloatSliceExt;

mod kernels;
mod zeroed;

use crate::model::isa::{self, Isa};
use zeroed::{Plain, Zeroed};

/// How the CPU KV cache stores keys and values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvType {
    /// 2 bytes a value, as llama.cpp's default.
    #[default]
    F16,
    /// 1 byte a value and a scale per 32 (`max|x| / 127`), as llama.cpp's
    /// `q8_0` cache: half the reads per generated token at long contexts,
    /// at a small cost in precision. (Heads whose size is not a multiple of
    /// 32 keep f16.)
    Q8,
}

impl KvType {
    pub fn name(self) -> &'static str {
        match self {
            KvType::F16 => "f16",
            KvType::Q8 => "q8",
        }
    }
}

/// Keys and values of the positions seen so far; the first `len` positions
/// are valid. Values are (kv_heads, capacity, head_dim); keys hold the same
/// numbers in blocks of [`kernels::BLOCK`] positions (see [`kernels`]).
/// Storage grows by half as needed, so memory follows the conversation, not
/// the model's context.
#[derive(Default)]
pub struct HostKvCache {
    store: Store,
    kv_heads: usize,
    head_dim: usize,
    /// A multiple of [`kernels::BLOCK`].
    capacity: usize,
    len: usize,
}

enum Store {
    F16 {
        k: Zeroed<f16>,
        v: Zeroed<f16>,
    },
    /// A scale per [`kernels::GROUP`] values: the keys' per head laid out
    /// by [`kernels::key_scale_at`], the values' (kv_heads, capacity,
    /// head_dim / GROUP).
    Q8 {
        k: Zeroed<i8>,
        v: Zeroed<i8>,
        k_scale: Zeroed<f32>,
        v_scale: Zeroed<f32>,
    },
}

impl Default for Store {
    fn default() -> Self {
        Store::F16 {
            k: Zeroed::default(),
            v: Zeroed::default(),
        }
    }
}

/// Room reserved on the first append.
const INITIAL_CAPACITY: usize = 256;

impl HostKvCache {
    pub fn new(kv_heads: usize, head_dim: usize, kind: KvType) -> Self {
        let store = match kind {
            KvType::Q8 if head_dim.is_multiple_of(kernels::GROUP) => Store::Q8 {
                k: Zeroed::default(),
                v: Zeroed::default(),
                k_scale: Zeroed::default(),
                v_scale: Zeroed::default(),
            },
            _ => Store::default(),
        };
        HostKvCache {
            store,
            kv_heads,
            head_dim,
            capacity: 0,
            len: 0,
        }
    }

    pub fn positions(&self) -> usize {
        self.len
    }

    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Appends `n` positions of keys and values laid out (kv_heads, n,
    /// head_dim); fails, appending nothing, when no memory is left for them.
    pub fn append(&mut self, k: &[f32], v: &[f32], n: usize) -> std::io::Result<()> {
        let (heads, hd) = (self.kv_heads, self.head_dim);
        assert_eq!(k.len(), heads * n * hd, "keys of the wrong size");
        assert_eq!(v.len(), heads * n * hd, "values of the wrong size");
        if self.len + n > self.capacity {
            self.grow(self.len + n)?;
        }
        let (cap, len) = (self.capacity, self.len);
        for h in 0..heads {
            let (new_k, new_v) = (&k[h * n * hd..][..n * hd], &v[h * n * hd..][..n * hd]);
            let (row, at) = (h * cap + len, (h * cap + len) * hd);
            match &mut self.store {
                Store::F16 { k, v } => {
                    let keys = &mut k[h * cap * hd..][..cap * hd];
                    for (i, key) in new_k.chunks_exact(hd).enumerate() {
                        for (d, &x) in key.iter().enumerate() {
                            keys[kernels::f16_key_at(len + i, d, hd)] = f16::from_f32(x);
                        }
                    }
                    v[at..at + n * hd].convert_from_f32_slice(new_v);
                }
                Store::Q8 {
                    k,
                    v,
                    k_scale,
                    v_scale,
                } => {
                    let per_row = hd / kernels::GROUP;
                    let (mut rounded, mut scales) = (vec![0i8; n * hd], vec![0f32; n * per_row]);
                    quantize_rows(new_k, &mut rounded, &mut scales);
                    let keys = &mut k[h * cap * hd..][..cap * hd];
                    let key_scales = &mut k_scale[h * cap * per_row..][..cap * per_row];
                    let rows = rounded.chunks_exact(hd).zip(scales.chunks_exact(per_row));
                    for (i, (key, scales)) in rows.enumerate() {
                        for (d, &x) in key.iter().enumerate() {
                            keys[kernels::i8_key_at(len + i, d, hd)] = x;
                        }
                        for (group, &scale) in scales.iter().enumerate() {
                            key_scales[kernels::key_scale_at(len + i, group, per_row)] = scale;
                        }
                    }
                    let scales = &mut v_scale[row * per_row..(row + n) * per_row];
                    quantize_rows(new_v, &mut v[at..at + n * hd], scales);
                }
            }
        }
        self.len += n;
        Ok(())
    }

    /// The bytes [`save`](Self::save) writes for the first `len` positions.
    pub fn saved_bytes(&self, len: usize) -> u64 {
        self.saved_ranges(len)
            .iter()
            .map(|(_, r)| r.len() as u64)
            .sum()
    }

    /// Writes the first `len` positions as stored, bit for bit: a later
    /// [`restore`](Self::restore) in a cache of the same kind gives the
    /// attention exactly what it had.
    pub fn save(&self, len: usize, out: &mut dyn Write) -> std::io::Result<()> {
        assert!(len <= self.len, "saving positions that are not cached");
        let arrays = self.store.bytes();
        for (array, range) in self.saved_ranges(len) {
            out.write_all(&arrays[array][range])?;
        }
        Ok(())
    }

    /// Replaces the cache with `len` positions read as [`save`](Self::save)
    /// wrote them. On an error the cache is left empty.
    pub fn restore(&mut self, len: usize, input: &mut dyn Read) -> std::io::Result<()> {
        self.len = 0;
        if len > self.capacity {
            self.grow(len)?;
        }
        let ranges = self.saved_ranges(len);
        let mut arrays = self.store.bytes_mut();
        for (array, range) in ranges {
            input.read_exact(&mut arrays[array][range])?;
        }
        self.len = len;
        Ok(())
    }

    /// Where the first `len` positions lie, as (array of
    /// [`Store::bytes`], byte range), head by head: whole blocks of keys,
    /// exact rows of values.
    fn saved_ranges(&self, len: usize) -> Vec<(usize, std::ops::Range<usize>)> {
        let (hd, cap) = (self.head_dim, self.capacity);
        let per_row = hd / kernels::GROUP;
        // (values a position, in key blocks, bytes a value) of each array.
        let arrays: &[(usize, bool, usize)] = match self.store {
            Store::F16 { .. } => &[(hd, true, 2), (hd, false, 2)],
            Store::Q8 { .. } => &[
                (hd, true, 1),
                (hd, false, 1),
                (per_row, true, 4),
                (per_row, false, 4),
            ],
        };
        let blocks = len.next_multiple_of(kernels::BLOCK);
        let mut ranges = Vec::new();
        for (array, &(per, blocked, size)) in arrays.iter().enumerate() {
            let positions = if blocked { blocks } else { len };
            for h in 0..self.kv_heads {
                let start = h * cap * per * size;
                ranges.push((array, start..start + positions * per * size));
            }
        }
        ranges
    }

    /// Room for at least `needed` positions. Growing by half copies each
    /// position about three times over a long conversation; the room not yet
    /// written is address space, not memory ([`Zeroed`]).
    fn grow(&mut self, needed: usize) -> std::io::Result<()> {
        let (heads, hd, len) = (self.kv_heads, self.head_dim, self.len);
        let old = self.capacity;
        let capacity = needed
            .max(old + old / 2)
            .max(INITIAL_CAPACITY)
            .next_multiple_of(kernels::BLOCK);
        // Whole key blocks keep their layout whatever the capacity.
        let blocks = len.next_multiple_of(kernels::BLOCK);
        // Every new array is mapped before any replaces the old, so that a
        // failure leaves the cache as it was.
        let (values, per_row) = (heads * capacity * hd, hd / kernels::GROUP);
        let grown = (old, capacity);
        match &mut self.store {
            Store::F16 { k, v } => {
                let fresh = (Zeroed::new(values)?, Zeroed::new(values)?);
                *k = regrow(k, fresh.0, heads, hd, grown, blocks);
                *v = regrow(v, fresh.1, heads, hd, grown, len);
            }
            Store::Q8 {
                k,
                v,
                k_scale,
                v_scale,
            } => {
                let scales = heads * capacity * per_row;
                let fresh = (Zeroed::new(values)?, Zeroed::new(values)?);
                let fresh_scales = (Zeroed::new(scales)?, Zeroed::new(scales)?);
                *k = regrow(k, fresh.0, heads, hd, grown, blocks);
                *v = regrow(v, fresh.1, heads, hd, grown, len);
                *k_scale = regrow(k_scale, fresh_scales.0, heads, per_row, grown, blocks);
                *v_scale = regrow(v_scale, fresh_scales.1, heads, per_row, grown, len);
            }
        }
        self.capacity = capacity;
        Ok(())
    }
}

impl Store {
    /// Its arrays as bytes: keys, values, and the i8 store's key and value
    /// scales.
    fn bytes(&self) -> Vec<&[u8]> {
        match self {
            Store::F16 { k, v } => vec![zeroed::bytes(k), zeroed::bytes(v)],
            Store::Q8 {
                k,
                v,
                k_scale,
                v_scale,
            } => vec![
                zeroed::bytes(k),
                zeroed::bytes(v),
                zeroed::bytes(k_scale),
                zeroed::bytes(v_scale),
            ],
        }
    }

    fn bytes_mut(&mut self) -> Vec<&mut [u8]> {
        match self {
            Store::F16 { k, v } => vec![zeroed::bytes_mut(k), zeroed::bytes_mut(v)],
            Store::Q8 {
                k,
                v,
                k_scale,
                v_scale,
            } => vec![
                zeroed::bytes_mut(k),
                zeroed::bytes_mut(v),
                zeroed::bytes_mut(k_scale),
                zeroed::bytes_mut(v_scale),
            ],
        }
    }
}

/// New storage of `capacity.1` positions per head holding the first `len`
/// of the old (`capacity.0` per head), `per` values a position.
fn regrow<T: Plain>(
    old: &[T],
    mut fresh: Zeroed<T>,
    heads: usize,
    per: usize,
    capacity: (usize, usize),
    len: usize,
) -> Zeroed<T> {
    for h in 0..heads {
        fresh[h * capacity.1 * per..][..len * per]
            .copy_from_slice(&old[h * capacity.0 * per..][..len * per]);
    }
    fresh
}

/// Pieces of `x` (one per scale) to i8 at `max|piece| / 127`.
fn quantize_rows(x: &[f32], q: &mut [i8], scales: &mut [f32]) {
    let per = x.len() / scales.len();
    for ((x, q), scale) in x.chunks_exact(per).zip(q.chunks_exact_mut(per)).zip(scales) {
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        *scale = if amax.is_finite() { amax / 127.0 } else { 0.0 };
        let inv = if *scale > 0.0 { 1.0 / *scale } else { 0.0 };
        for (q, x) in q.iter_mut().zip(x) {
            *q = (x * inv).round() as i8;
        }
    }
}

/// Attention of the last `n` cached positions: `q` is (heads, n, head_dim),
/// already rotated; returns (n, heads · head_dim), ready for the output
/// projection. A position sees itself and the earlier ones, at most
/// `window` of them.
pub fn attend(
    q: &[f32],
    heads: usize,
    n: usize,
    cache: &HostKvCache,
    window: Option<usize>,
) -> Vec<f32> {
    attend_with(isa::best(), q, heads, n, cache, window)
}

/// [`attend`] with the kernels of `level`.
fn attend_with(
    level: Isa,
    q: &[f32],
    heads: usize,
    n: usize,
    cache: &HostKvCache,
    window: Option<usize>,
) -> Vec<f32> {
    let (kv_heads, hd, t, cap) = (cache.kv_heads, cache.head_dim, cache.len, cache.capacity);
    assert_eq!(q.len(), heads * n * hd, "queries of the wrong size");
    let group = heads / kv_heads;
    let window = window.unwrap_or(usize::MAX);
    let scale = 1.0 / (hd as f32).sqrt();
    // The group's queries side by side for each position: (kv, n, group, hd).
    let mut q_by_position = vec![0f32; q.len()];
    for h in 0..heads {
        let (g, j) = (h / group, h % group);
        for i in 0..n {
            q_by_position[((g * n + i) * group + j) * hd..][..hd]
                .copy_from_slice(&q[(h * n + i) * hd..][..hd]);
        }
    }
    let mut out = vec![0f32; n * heads * hd];
    let out_ptr = super::Disjoint::new(&mut out);
    // One item per (kv head, query position): the group's query heads share its reads.
    super::in_parallel(kv_heads * n, |items| {
        let mut scores = Vec::new();
        let mut acc = vec![0f32; group * hd];
        let per_row = hd / kernels::GROUP;
        let (mut q8, mut q8_scale) = (vec![0i8; group * hd], vec![0f32; group * per_row]);
        let mut totals = vec![0f32; group];
        for item in items {
            let (g, i) = (item / n, item % n);
            let pos = t - n + i;
            let first = (pos + 1).saturating_sub(window);
            // Scores are computed for whole key blocks, the ones outside
            // the window dropped.
            let (b0, b1) = (first / kernels::BLOCK, pos / kernels::BLOCK + 1);
            let stride = (b1 - b0) * kernels::BLOCK;
            let visible = first % kernels::BLOCK..pos + 1 - b0 * kernels::BLOCK;
            let queries = &q_by_position[(g * n + i) * group * hd..][..group * hd];
            let (keys, values) = (
                g * cap * hd + b0 * kernels::BLOCK * hd..g * cap * hd + b1 * kernels::BLOCK * hd,
                (g * cap + first) * hd..(g * cap + pos + 1) * hd,
            );
            scores.clear();
            scores.resize(group * stride, 0f32);
            match &cache.store {
                Store::F16 { k, .. } => {
                    kernels::scores(level, queries, &k[keys], hd, stride, &mut scores)
                }
                Store::Q8 { k, k_scale, .. } => {
                    quantize_rows(queries, &mut q8, &mut q8_scale);
                    let key_scales =
                        &k_scale[(g * cap + b0 * kernels::BLOCK) * per_row..][..stride * per_row];
                    let keys = (&k[keys], key_scales);
                    kernels::scores_i8(level, (&q8, &q8_scale), keys, hd, stride, &mut scores)
                }
            }
            for (head, total) in scores.chunks_exact_mut(stride).zip(&mut totals) {
                *total = kernels::softmax_weights(level, &mut head[visible.clone()], scale);
            }
            let weights = &scores[visible.start..];
            match &cache.store {
                Store::F16 { v, .. } => {
                    kernels::mix(level, weights, stride, (&v[values], None), hd, &mut acc)
                }
                Store::Q8 { v, v_scale, .. } => {
                    let value_scales = &v_scale[(g * cap + first) * per_row..];
                    let values = (&v[values], Some(value_scales));
                    kernels::mix(level, weights, stride, values, hd, &mut acc)
                }
            }
            for (out, total) in acc.chunks_exact_mut(hd).zip(&totals) {
                out.iter_mut().for_each(|x| *x /= total);
            }
            let at = (i * heads + g * group) * hd;
            // SAFETY: (position i, heads g·group …) belong to this item
            // alone, and lie in `out`, (n, heads, hd).
            unsafe { std::ptr::copy_nonoverlapping(acc.as_ptr(), out_ptr.at(at), group * hd) }
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys or values (kv, t, hd) rounded as the cache of `kind` stores them.
    fn rounded(x: &[f32], kind: KvType) -> Vec<f32> {
        match kind {
            KvType::F16 => x.iter().map(|&x| f16::from_f32(x).to_f32()).collect(),
            KvType::Q8 => x
                .chunks_exact(kernels::GROUP)
                .flat_map(|row| {
                    let scale = row.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
                    // Times the inverse, as the cache: a division can round
                    // the other way at a half.
                    row.iter().map(move |x| (x * (1.0 / scale)).round() * scale)
                })
                .collect(),
        }
    }

    /// Attention by the book, in f32, over keys and values as given.
    fn reference(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        (heads, kv, n, t, hd): (usize, usize, usize, usize, usize),
        window: usize,
    ) -> Vec<f32> {
        let group = heads / kv;
        let mut out = vec![0f32; n * heads * hd];
        for h in 0..heads {
            let g = h / group;
            for i in 0..n {
                let pos = t - n + i;
                let qv = &q[(h * n + i) * hd..][..hd];
                let visible: Vec<usize> =
                    (0..t).filter(|&j| j <= pos && pos - j < window).collect();
                let mut w: Vec<f32> = visible
                    .iter()
                    .map(|&j| {
                        (0..hd)
                            .map(|d| qv[d] * k[(g * t + j) * hd + d])
                            .sum::<f32>()
                            / (hd as f32).sqrt()
                    })
                    .collect();
                let max = w.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                let total: f32 = w.iter().map(|x| (x - max).exp()).sum();
                w.iter_mut().for_each(|x| *x = (*x - max).exp() / total);
                for (p, &j) in w.iter().zip(&visible) {
                    for d in 0..hd {
                        out[(i * heads + h) * hd + d] += p * v[(g * t + j) * hd + d];
                    }
                }
            }
        }
        out
    }

    fn random(len: usize, seed: u64) -> Vec<f32> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    /// The keys of heads (kv, t, hd) split into appends of `sizes` positions.
    fn fill(
        cache: &mut HostKvCache,
        k: &[f32],
        v: &[f32],
        kv: usize,
        t: usize,
        hd: usize,
        sizes: &[usize],
    ) {
        let mut start = 0;
        for &n in sizes {
            let part = |x: &[f32]| -> Vec<f32> {
                (0..kv)
                    .flat_map(|h| x[(h * t + start) * hd..(h * t + start + n) * hd].to_vec())
                    .collect()
            };
            cache.append(&part(k), &part(v), n).unwrap();
            start += n;
        }
    }

    #[test]
    fn matches_the_textbook_with_groups_windows_and_growth() {
        let (heads, kv, hd) = (12, 2, 128);
        for (t, n, window, sizes) in [
            (300, 1, usize::MAX, vec![200, 99, 1]),
            (300, 5, usize::MAX, vec![295, 5]),
            (40, 40, 7, vec![40]),
            (41, 1, 7, vec![40, 1]),
        ] {
            let (k, v) = (random(kv * t * hd, 1), random(kv * t * hd, 2));
            let q = random(heads * n * hd, 3);
            let window = (window != usize::MAX).then_some(window);
            for kind in [KvType::F16, KvType::Q8] {
                let mut cache = HostKvCache::new(kv, hd, kind);
                fill(&mut cache, &k, &v, kv, t, hd, &sizes);
                let (kr, vr) = (rounded(&k, kind), rounded(&v, kind));
                let shape = (heads, kv, n, t, hd);
                let window_or_all = window.unwrap_or(usize::MAX);
                for level in isa::levels() {
                    // Over i8 keys, the queries are rounded to i8 as well.
                    let q_used = match kind {
                        KvType::Q8 => rounded(&q, kind),
                        KvType::F16 => q.clone(),
                    };
                    let want = reference(&q_used, &kr, &vr, shape, window_or_all);
                    let got = attend_with(level, &q, heads, n, &cache, window);
                    for (g, w) in got.iter().zip(&want) {
                        assert!(
                            (g - w).abs() < 1e-4,
                            "{g} vs {w} ({kind:?}, {level:?}, t {t}, n {n})"
                        );
                    }
                }
            }
        }
    }

    /// A restored cache attends bit for bit as the one saved, for a whole
    /// cache and for a prefix that ends inside a key block.
    #[test]
    fn saved_positions_restore_bit_for_bit() {
        let (heads, kv, hd, t) = (4, 2, 64, 40);
        let (k, v) = (random(kv * t * hd, 4), random(kv * t * hd, 5));
        for kind in [KvType::F16, KvType::Q8] {
            let mut cache = HostKvCache::new(kv, hd, kind);
            fill(&mut cache, &k, &v, kv, t, hd, &[t]);
            for len in [t, 21] {
                let mut saved = Vec::new();
                cache.save(len, &mut saved).unwrap();
                assert_eq!(saved.len() as u64, cache.saved_bytes(len));
                let mut restored = HostKvCache::new(kv, hd, kind);
                // Restoring replaces what was there, whatever its size.
                let other = vec![9.0; kv * 300 * hd];
                restored.append(&other, &other, 300).unwrap();
                restored.restore(len, &mut saved.as_slice()).unwrap();
                assert_eq!(restored.positions(), len);
                let mut original = HostKvCache::new(kv, hd, kind);
                fill(&mut original, &k, &v, kv, t, hd, &[len]);
                let q = random(heads * hd, 6);
                assert_eq!(
                    attend(&q, heads, 1, &restored, None),
                    attend(&q, heads, 1, &original, None),
                    "{kind:?}, {len} positions"
                );
            }
            let mut short = HostKvCache::new(kv, hd, kind);
            let mut saved = Vec::new();
            cache.save(t, &mut saved).unwrap();
            let cut = &saved[..saved.len() - 1];
            assert!(short.restore(t, &mut &cut[..]).is_err());
            assert_eq!(short.positions(), 0);
        }
    }

    #[test]
    fn truncate_rewinds_and_new_positions_overwrite() {
        let (kv, hd) = (1, 8);
        let mut cache = HostKvCache::new(kv, hd, KvType::F16);
        cache.append(&[1.0; 8 * 3], &[1.0; 8 * 3], 3).unwrap();
        cache.truncate(1);
        cache.append(&[2.0; 8], &[2.0; 8], 1).unwrap();
        assert_eq!(cache.positions(), 2);
        let Store::F16 { k, v } = &cache.store else {
            panic!("an f16 cache")
        };
        assert_eq!(v[8..16], [f16::from_f32(2.0); 8]);
        for d in 0..8 {
            assert_eq!(k[kernels::f16_key_at(1, d, 8)], f16::from_f32(2.0));
            assert_eq!(k[kernels::f16_key_at(0, d, 8)], f16::from_f32(1.0));
        }
        cache.truncate(99);
        assert_eq!(cache.positions(), 2);
    }
}
