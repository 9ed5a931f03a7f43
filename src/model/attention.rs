//! Scaled dot-product attention on the CPU, over a KV cache held in f16.
//!
//! Generating a token reads every cached key and value of every layer: at
//! 8k positions that is 1 GB per token in f16 for Mistral 7B, 2 GB in f32,
//! next to 4.3 GB of Q4_K_M weights. So the cache is f16 (as llama.cpp's),
//! each key and value is read once for all the query heads that share it
//! (grouped-query attention), and the work is spread over the cores by
//! (key/value head, query position). The causal mask and the sliding window
//! are ranges of positions, never materialised.

use half::f16;
use half::slice::HalfFloatSliceExt;
use half::vec::HalfBitsVecExt;

/// How the CPU KV cache stores keys and values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvType {
    /// 2 bytes a value, as llama.cpp's default.
    #[default]
    F16,
    /// 1 byte a value and a scale per head and position (`max|x| / 127`):
    /// half the reads per generated token at long contexts, at a small cost
    /// in precision (as llama.cpp's `q8_0` cache).
    Q8,
}

/// Keys and values of the positions seen so far, (kv_heads, capacity,
/// head_dim) each; the first `len` positions are valid. Storage grows by
/// half as needed, so memory follows the conversation, not the model's
/// context.
#[derive(Default)]
pub struct HostKvCache {
    store: Store,
    kv_heads: usize,
    head_dim: usize,
    capacity: usize,
    len: usize,
}

enum Store {
    F16 {
        k: Vec<f16>,
        v: Vec<f16>,
    },
    /// Scales are (kv_heads, capacity).
    Q8 {
        k: Vec<i8>,
        v: Vec<i8>,
        k_scale: Vec<f32>,
        v_scale: Vec<f32>,
    },
}

impl Default for Store {
    fn default() -> Self {
        Store::F16 {
            k: Vec::new(),
            v: Vec::new(),
        }
    }
}

/// Room reserved on the first append.
const INITIAL_CAPACITY: usize = 256;

impl HostKvCache {
    pub fn new(kv_heads: usize, head_dim: usize, kind: KvType) -> Self {
        let store = match kind {
            KvType::F16 => Store::default(),
            KvType::Q8 => Store::Q8 {
                k: Vec::new(),
                v: Vec::new(),
                k_scale: Vec::new(),
                v_scale: Vec::new(),
            },
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

    /// Appends `n` positions of keys and values laid out (kv_heads, n, head_dim).
    pub fn append(&mut self, k: &[f32], v: &[f32], n: usize) {
        let (heads, hd) = (self.kv_heads, self.head_dim);
        assert_eq!(k.len(), heads * n * hd, "keys of the wrong size");
        assert_eq!(v.len(), heads * n * hd, "values of the wrong size");
        let needed = self.len + n;
        if needed > self.capacity {
            // Growing by half wastes at most a third of the storage, and
            // copies each position about three times over a long conversation.
            let capacity = needed
                .max(self.capacity + self.capacity / 2)
                .max(INITIAL_CAPACITY);
            let (old, len) = (self.capacity, self.len);
            match &mut self.store {
                Store::F16 { k, v } => {
                    // Zeroed by the allocator (calloc) like the others, so the
                    // room not yet used costs address space, not memory.
                    let zeroed = || vec![0u16; heads * capacity * hd].reinterpret_into();
                    *k = regrow(k, zeroed(), heads, hd, (old, capacity), len);
                    *v = regrow(v, zeroed(), heads, hd, (old, capacity), len);
                }
                Store::Q8 {
                    k,
                    v,
                    k_scale,
                    v_scale,
                } => {
                    *k = regrow(
                        k,
                        vec![0; heads * capacity * hd],
                        heads,
                        hd,
                        (old, capacity),
                        len,
                    );
                    *v = regrow(
                        v,
                        vec![0; heads * capacity * hd],
                        heads,
                        hd,
                        (old, capacity),
                        len,
                    );
                    *k_scale = regrow(
                        k_scale,
                        vec![0.0; heads * capacity],
                        heads,
                        1,
                        (old, capacity),
                        len,
                    );
                    *v_scale = regrow(
                        v_scale,
                        vec![0.0; heads * capacity],
                        heads,
                        1,
                        (old, capacity),
                        len,
                    );
                }
            }
            self.capacity = capacity;
        }
        for h in 0..heads {
            let at = (h * self.capacity + self.len) * hd;
            let (new_k, new_v) = (
                &k[h * n * hd..(h + 1) * n * hd],
                &v[h * n * hd..(h + 1) * n * hd],
            );
            match &mut self.store {
                Store::F16 { k, v } => {
                    k[at..at + n * hd].convert_from_f32_slice(new_k);
                    v[at..at + n * hd].convert_from_f32_slice(new_v);
                }
                Store::Q8 {
                    k,
                    v,
                    k_scale,
                    v_scale,
                } => {
                    let row = h * self.capacity + self.len;
                    quantize_rows(new_k, &mut k[at..at + n * hd], &mut k_scale[row..row + n]);
                    quantize_rows(new_v, &mut v[at..at + n * hd], &mut v_scale[row..row + n]);
                }
            }
        }
        self.len = needed;
    }
}

/// New storage of `capacity.1` positions per head holding the first `len`
/// of the old (`capacity.0` per head), `per` values a position.
fn regrow<T: Copy>(
    old: &[T],
    mut fresh: Vec<T>,
    heads: usize,
    per: usize,
    capacity: (usize, usize),
    len: usize,
) -> Vec<T> {
    for h in 0..heads {
        if len > 0 {
            fresh[h * capacity.1 * per..][..len * per]
                .copy_from_slice(&old[h * capacity.0 * per..][..len * per]);
        }
    }
    fresh
}

/// Rows of `x` (one per scale) to i8 at `max|row| / 127`.
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
    attend_with(kernels::best(), q, heads, n, cache, window)
}

/// [`attend`] with the kernels of `level`.
fn attend_with(
    level: kernels::Level,
    q: &[f32],
    heads: usize,
    n: usize,
    cache: &HostKvCache,
    window: Option<usize>,
) -> Vec<f32> {
    let (kv_heads, hd, t) = (cache.kv_heads, cache.head_dim, cache.len);
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
    candle_core::utils::barrier_pool().execute_chunked(kv_heads * n, |items| {
        let mut scores = Vec::new();
        let mut acc = vec![0f32; group * hd];
        for item in items {
            let (g, i) = (item / n, item % n);
            let pos = t - n + i;
            let first = (pos + 1).saturating_sub(window);
            let span = pos + 1 - first;
            let queries = &q_by_position[(g * n + i) * group * hd..][..group * hd];
            let rows = first..pos + 1;
            let base = g * cache.capacity;
            scores.clear();
            scores.resize(group * span, 0f32);
            match &cache.store {
                Store::F16 { k, v } => {
                    kernels::scores(
                        level,
                        queries,
                        &k[(base + first) * hd..(base + pos + 1) * hd],
                        hd,
                        &mut scores,
                    );
                    for head in scores.chunks_exact_mut(span) {
                        softmax(head, scale);
                    }
                    kernels::mix(
                        level,
                        &scores,
                        &v[(base + first) * hd..(base + pos + 1) * hd],
                        hd,
                        &mut acc,
                    );
                }
                Store::Q8 {
                    k,
                    v,
                    k_scale,
                    v_scale,
                } => {
                    let (ks, vs) = (
                        &k_scale[base..][rows.clone()],
                        &v_scale[base..][rows.clone()],
                    );
                    kernels::scores_q8(
                        level,
                        queries,
                        &k[(base + first) * hd..(base + pos + 1) * hd],
                        hd,
                        &mut scores,
                    );
                    for head in scores.chunks_exact_mut(span) {
                        for (s, k) in head.iter_mut().zip(ks) {
                            *s *= k;
                        }
                        softmax(head, scale);
                        for (s, v) in head.iter_mut().zip(vs) {
                            *s *= v;
                        }
                    }
                    kernels::mix(
                        level,
                        &scores,
                        &v[(base + first) * hd..(base + pos + 1) * hd],
                        hd,
                        &mut acc,
                    );
                }
            }
            let at = (i * heads + g * group) * hd;
            // SAFETY: (position i, heads g·group …) belong to this item
            // alone, and lie in `out`, (n, heads, hd).
            unsafe { std::ptr::copy_nonoverlapping(acc.as_ptr(), out_ptr.at(at), group * hd) }
        }
    });
    out
}

/// The two loops over the cache, with F16C and FMA where the CPU has them.
mod kernels {
    use half::f16;
    use half::slice::HalfFloatSliceExt;

    /// The instruction sets of the kernels, each one's CPUs running the ones before.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
    pub enum Level {
        Portable,
        /// AVX2, FMA and F16C.
        F16c,
        /// AVX-512 F.
        Avx512,
    }

    /// Every level this CPU runs, the best last.
    pub fn levels() -> Vec<Level> {
        let mut levels = vec![Level::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") && has!("f16c") {
                levels.push(Level::F16c);
                if has!("avx512f") {
                    levels.push(Level::Avx512);
                }
            }
        }
        levels
    }

    pub fn best() -> Level {
        static BEST: std::sync::OnceLock<Level> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| *levels().last().unwrap_or(&Level::Portable))
    }

    /// `scores[j][s] = queries[j] · keys[s]` for the `group` queries (rows
    /// of `hd`) and every key.
    pub fn scores<E: Elem>(
        level: Level,
        queries: &[f32],
        keys: &[E],
        hd: usize,
        scores: &mut [f32],
    ) {
        let span = keys.len() / hd;
        #[cfg(target_arch = "x86_64")]
        {
            let (avx512, f16c) = (
                level == Level::Avx512 && hd.is_multiple_of(16),
                level >= Level::F16c && hd.is_multiple_of(8),
            );
            if avx512 || f16c {
                return by_groups(queries.len() / hd, |first, g| {
                    let (q, out) = (&queries[first * hd..], &mut scores[first * span..]);
                    // SAFETY: the CPU has the features each kernel needs.
                    unsafe {
                        match (avx512, g) {
                            (true, HEADS) => scores_512::<E, HEADS>(q, keys, hd, out),
                            (true, _) => scores_512::<E, 1>(q, keys, hd, out),
                            (false, HEADS) => scores_f16c::<E, HEADS>(q, keys, hd, out),
                            (false, _) => scores_f16c::<E, 1>(q, keys, hd, out),
                        }
                    }
                });
            }
        }
        let mut row = vec![0f32; hd];
        for (s, key) in keys.chunks_exact(hd).enumerate() {
            E::widen_slice(key, &mut row);
            for (j, q) in queries.chunks_exact(hd).enumerate() {
                scores[j * span + s] = q.iter().zip(&row).map(|(a, b)| a * b).sum();
            }
        }
    }

    /// [`scores`] over i8 keys. With AVX-512 VNNI the queries are rounded to
    /// i8 too (a scale per head) and each key row is 64 integer products per
    /// instruction, rather than widened to f32 first.
    pub fn scores_q8(level: Level, queries: &[f32], keys: &[i8], hd: usize, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if integer_scores(level, hd) {
            let span = keys.len() / hd;
            let mut q = vec![0i8; queries.len()];
            let mut scale = vec![0f32; queries.len() / hd];
            super::quantize_rows(queries, &mut q, &mut scale);
            return by_groups(queries.len() / hd, |first, g| {
                let (qs, sc, out) = (&q[first * hd..], &scale[first..], &mut out[first * span..]);
                // SAFETY: the CPU has AVX-512 F, BW and VNNI.
                unsafe {
                    match g {
                        HEADS => scores_vnni::<HEADS>(qs, sc, keys, hd, out),
                        _ => scores_vnni::<1>(qs, sc, keys, hd, out),
                    }
                }
            });
        }
        scores(level, queries, keys, hd, out)
    }

    /// Whether [`scores_q8`] takes the integer path (which rounds the queries).
    pub fn integer_scores(level: Level, hd: usize) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            level == Level::Avx512
                && hd.is_multiple_of(64)
                && has!("avx512bw")
                && has!("avx512vnni")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (level, hd);
            false
        }
    }

    /// `vpdpbusd` multiplies unsigned by signed bytes: the keys are shifted
    /// to unsigned (k + 128, a flip of the top bit) and 128·Σq taken back off.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn scores_vnni<const G: usize>(
        q: &[i8],
        scale: &[f32],
        keys: &[i8],
        hd: usize,
        scores: &mut [f32],
    ) {
        use std::arch::x86_64::*;
        let span = keys.len() / hd;
        let flip = _mm512_set1_epi8(-128);
        let offset: [i32; G] = std::array::from_fn(|j| {
            128 * q[j * hd..(j + 1) * hd]
                .iter()
                .map(|&x| x as i32)
                .sum::<i32>()
        });
        for (s, key) in keys.chunks_exact(hd).enumerate() {
            let mut acc = [_mm512_setzero_si512(); G];
            for c in (0..hd).step_by(64) {
                let k = _mm512_xor_si512(_mm512_loadu_si512(key.as_ptr().add(c).cast()), flip);
                for (j, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_dpbusd_epi32(
                        *a,
                        k,
                        _mm512_loadu_si512(q.as_ptr().add(j * hd + c).cast()),
                    );
                }
            }
            for (j, a) in acc.iter().enumerate() {
                *scores.get_unchecked_mut(j * span + s) =
                    (_mm512_reduce_add_epi32(*a) - offset[j]) as f32 * scale[j];
            }
        }
    }

    /// `out[j] = Σ_s weights[j][s] · values[s]` for the `group` heads.
    pub fn mix<E: Elem>(level: Level, weights: &[f32], values: &[E], hd: usize, out: &mut [f32]) {
        out.fill(0.0);
        let span = values.len() / hd;
        #[cfg(target_arch = "x86_64")]
        {
            let (avx512, f16c) = (
                level == Level::Avx512 && hd.is_multiple_of(64),
                level >= Level::F16c && hd.is_multiple_of(32),
            );
            if avx512 || f16c {
                return by_groups(out.len() / hd, |first, g| {
                    let (w, o) = (&weights[first * span..], &mut out[first * hd..]);
                    // SAFETY: the CPU has the features each kernel needs.
                    unsafe {
                        match (avx512, g) {
                            (true, HEADS) => mix_512::<E, HEADS>(w, values, hd, o),
                            (true, _) => mix_512::<E, 1>(w, values, hd, o),
                            (false, HEADS) => mix_f16c::<E, HEADS>(w, values, hd, o),
                            (false, _) => mix_f16c::<E, 1>(w, values, hd, o),
                        }
                    }
                });
            }
        }
        let mut row = vec![0f32; hd];
        for (s, value) in values.chunks_exact(hd).enumerate() {
            E::widen_slice(value, &mut row);
            for (j, out) in out.chunks_exact_mut(hd).enumerate() {
                let w = weights[j * span + s];
                for (o, v) in out.iter_mut().zip(&row) {
                    *o += w * v;
                }
            }
        }
    }

    /// Runs `f(first, count)` over the group's heads, [`HEADS`] at a time
    /// and then one by one.
    #[cfg(target_arch = "x86_64")]
    fn by_groups(group: usize, mut f: impl FnMut(usize, usize)) {
        let mut first = 0;
        while first < group {
            let count = if group - first >= HEADS { HEADS } else { 1 };
            f(first, count);
            first += count;
        }
    }

    /// What the cache holds a value as.
    pub trait Elem: Copy + Sync {
        /// A row of values as f32.
        fn widen_slice(row: &[Self], out: &mut [f32]);
        /// `V::N` values from `p`, widened.
        #[cfg(target_arch = "x86_64")]
        #[allow(private_bounds)]
        unsafe fn widen<V: Lanes>(p: *const Self) -> V;
    }

    impl Elem for f16 {
        fn widen_slice(row: &[Self], out: &mut [f32]) {
            row.convert_to_f32_slice(out)
        }
        #[cfg(target_arch = "x86_64")]
        #[inline(always)]
        #[allow(private_bounds)]
        unsafe fn widen<V: Lanes>(p: *const Self) -> V {
            V::widen(p)
        }
    }

    impl Elem for i8 {
        fn widen_slice(row: &[Self], out: &mut [f32]) {
            for (o, &x) in out.iter_mut().zip(row) {
                *o = x as f32;
            }
        }
        #[cfg(target_arch = "x86_64")]
        #[inline(always)]
        #[allow(private_bounds)]
        unsafe fn widen<V: Lanes>(p: *const Self) -> V {
            V::widen_i8(p)
        }
    }

    /// f32 vectors of one width, for kernels written once for AVX2 (8 lanes)
    /// and AVX-512 (16 lanes). The methods inline into the callers below,
    /// whose `target_feature` lets the intrinsics compile as single instructions.
    #[cfg(target_arch = "x86_64")]
    trait Lanes: Copy {
        const N: usize;
        unsafe fn zero() -> Self;
        unsafe fn load(p: *const f32) -> Self;
        unsafe fn store(self, p: *mut f32);
        /// `N` f16 values, widened.
        unsafe fn widen(p: *const f16) -> Self;
        /// `N` i8 values, widened.
        unsafe fn widen_i8(p: *const i8) -> Self;
        unsafe fn splat(x: f32) -> Self;
        /// `a · b + self`.
        unsafe fn fma(self, a: Self, b: Self) -> Self;
        unsafe fn sum(self) -> f32;
    }

    #[cfg(target_arch = "x86_64")]
    impl Lanes for std::arch::x86_64::__m256 {
        const N: usize = 8;
        #[inline(always)]
        unsafe fn zero() -> Self {
            std::arch::x86_64::_mm256_setzero_ps()
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            std::arch::x86_64::_mm256_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            std::arch::x86_64::_mm256_storeu_ps(p, self)
        }
        #[inline(always)]
        unsafe fn widen(p: *const f16) -> Self {
            use std::arch::x86_64::*;
            _mm256_cvtph_ps(_mm_loadu_si128(p.cast()))
        }
        #[inline(always)]
        unsafe fn widen_i8(p: *const i8) -> Self {
            use std::arch::x86_64::*;
            _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p.cast())))
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> Self {
            std::arch::x86_64::_mm256_set1_ps(x)
        }
        #[inline(always)]
        unsafe fn fma(self, a: Self, b: Self) -> Self {
            std::arch::x86_64::_mm256_fmadd_ps(a, b, self)
        }
        #[inline(always)]
        unsafe fn sum(self) -> f32 {
            use std::arch::x86_64::*;
            let v = _mm_add_ps(_mm256_castps256_ps128(self), _mm256_extractf128_ps(self, 1));
            let v = _mm_add_ps(v, _mm_movehl_ps(v, v));
            _mm_cvtss_f32(_mm_add_ss(v, _mm_movehdup_ps(v)))
        }
    }

    #[cfg(target_arch = "x86_64")]
    impl Lanes for std::arch::x86_64::__m512 {
        const N: usize = 16;
        #[inline(always)]
        unsafe fn zero() -> Self {
            std::arch::x86_64::_mm512_setzero_ps()
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            std::arch::x86_64::_mm512_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            std::arch::x86_64::_mm512_storeu_ps(p, self)
        }
        #[inline(always)]
        unsafe fn widen(p: *const f16) -> Self {
            use std::arch::x86_64::*;
            _mm512_cvtph_ps(_mm256_loadu_si256(p.cast()))
        }
        #[inline(always)]
        unsafe fn widen_i8(p: *const i8) -> Self {
            use std::arch::x86_64::*;
            _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p.cast())))
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> Self {
            std::arch::x86_64::_mm512_set1_ps(x)
        }
        #[inline(always)]
        unsafe fn fma(self, a: Self, b: Self) -> Self {
            std::arch::x86_64::_mm512_fmadd_ps(a, b, self)
        }
        #[inline(always)]
        unsafe fn sum(self) -> f32 {
            std::arch::x86_64::_mm512_reduce_add_ps(self)
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn scores_f16c<E: Elem, const G: usize>(
        q: &[f32],
        keys: &[E],
        hd: usize,
        scores: &mut [f32],
    ) {
        scores_with::<E, std::arch::x86_64::__m256, G>(q, keys, hd, scores)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn scores_512<E: Elem, const G: usize>(
        q: &[f32],
        keys: &[E],
        hd: usize,
        scores: &mut [f32],
    ) {
        scores_with::<E, std::arch::x86_64::__m512, G>(q, keys, hd, scores)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn mix_f16c<E: Elem, const G: usize>(
        weights: &[f32],
        values: &[E],
        hd: usize,
        out: &mut [f32],
    ) {
        mix_with::<E, std::arch::x86_64::__m256, G>(weights, values, hd, out)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn mix_512<E: Elem, const G: usize>(
        weights: &[f32],
        values: &[E],
        hd: usize,
        out: &mut [f32],
    ) {
        mix_with::<E, std::arch::x86_64::__m512, G>(weights, values, hd, out)
    }

    /// Each key row is widened `V::N` values at a time and multiplied into
    /// one accumulator per query head, `G` heads per pass.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn scores_with<E: Elem, V: Lanes, const G: usize>(
        queries: &[f32],
        keys: &[E],
        hd: usize,
        scores: &mut [f32],
    ) {
        let span = keys.len() / hd;
        for (s, key) in keys.chunks_exact(hd).enumerate() {
            let mut acc = [V::zero(); G];
            for c in (0..hd).step_by(V::N) {
                let k = E::widen::<V>(key.as_ptr().add(c));
                for (j, a) in acc.iter_mut().enumerate() {
                    *a = a.fma(V::load(queries.as_ptr().add(j * hd + c)), k);
                }
            }
            for (j, a) in acc.iter().enumerate() {
                *scores.get_unchecked_mut(j * span + s) = a.sum();
            }
        }
    }

    /// Values are read `4·V::N` dimensions (one or two cache lines) at a
    /// time, with the sums of `G` heads for those dimensions in registers
    /// over [`ROWS_PER_PASS`] rows, which stay in L1 for the next slice of
    /// dimensions: memory is read once.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn mix_with<E: Elem, V: Lanes, const G: usize>(
        weights: &[f32],
        values: &[E],
        hd: usize,
        out: &mut [f32],
    ) {
        let span = values.len() / hd;
        let base = out.as_mut_ptr();
        for start in (0..span).step_by(ROWS_PER_PASS) {
            let rows = start..span.min(start + ROWS_PER_PASS);
            for c in (0..hd).step_by(4 * V::N) {
                let sums = |j: usize, l: usize| base.add(j * hd + c + l * V::N);
                let mut acc: [[V; 4]; G] =
                    std::array::from_fn(|j| std::array::from_fn(|l| V::load(sums(j, l))));
                for s in rows.clone() {
                    let row = values.as_ptr().add(s * hd + c);
                    let v: [V; 4] = std::array::from_fn(|l| E::widen::<V>(row.add(l * V::N)));
                    for (j, acc) in acc.iter_mut().enumerate() {
                        let w = V::splat(*weights.get_unchecked(j * span + s));
                        for l in 0..4 {
                            acc[l] = acc[l].fma(w, v[l]);
                        }
                    }
                }
                for (j, acc) in acc.iter().enumerate() {
                    for (l, a) in acc.iter().enumerate() {
                        a.store(sums(j, l));
                    }
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    const ROWS_PER_PASS: usize = 64;

    /// Query heads handled per pass over the cache.
    #[cfg(target_arch = "x86_64")]
    const HEADS: usize = 4;
}

/// softmax(scale · x), in place; eight lanes at a time, so that the
/// compiler may vectorise the reductions.
fn softmax(x: &mut [f32], scale: f32) {
    let larger = |a: f32, b: f32| if b > a { b } else { a };
    let mut lanes = [f32::NEG_INFINITY; 8];
    let mut chunks = x.chunks_exact(8);
    for chunk in &mut chunks {
        for l in 0..8 {
            lanes[l] = larger(lanes[l], chunk[l]);
        }
    }
    let max = chunks
        .remainder()
        .iter()
        .chain(&lanes)
        .fold(f32::NEG_INFINITY, |m, &v| larger(m, v));
    let mut sums = [0f32; 8];
    let mut chunks = x.chunks_exact_mut(8);
    for chunk in &mut chunks {
        for l in 0..8 {
            chunk[l] = exp((chunk[l] - max) * scale);
            sums[l] += chunk[l];
        }
    }
    let mut total: f32 = sums.iter().sum();
    for v in chunks.into_remainder() {
        *v = exp((*v - max) * scale);
        total += *v;
    }
    let inv = 1.0 / total;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// e^x for x ≤ 0, within 1.5e-7·(1 + |x|) relative, in plain arithmetic the compiler
/// vectorises (libm's expf is a call per value, and slow on underflow, which
/// far-away positions hit all the time): 2^n · 2^f with n = round(x·log2 e)
/// and 2^f = e^(f·ln 2) by its Taylor series to the 6th power (|f·ln 2| ≤ 0.35).
fn exp(x: f32) -> f32 {
    // Below e^-87 an f32 is subnormal; the weight of such a position is 0 to all intents.
    let t = x.max(-87.0) * std::f32::consts::LOG2_E;
    // Adding and taking away 1.5·2^23 rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let n = (t + ROUND) - ROUND;
    let u = (t - n) * std::f32::consts::LN_2;
    let p = 1.0
        + u * (1.0
            + u * (0.5 + u * (1.0 / 6.0 + u * (1.0 / 24.0 + u * (1.0 / 120.0 + u / 720.0)))));
    f32::from_bits(p.to_bits().wrapping_add(((n as i32) << 23) as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys or values (kv, t, hd) rounded as the cache of `kind` stores them.
    fn rounded(x: &[f32], hd: usize, kind: KvType) -> Vec<f32> {
        match kind {
            KvType::F16 => x.iter().map(|&x| f16::from_f32(x).to_f32()).collect(),
            KvType::Q8 => x
                .chunks_exact(hd)
                .flat_map(|row| {
                    let scale = row.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
                    row.iter().map(move |x| (x / scale).round() * scale)
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
            cache.append(&part(k), &part(v), n);
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
                let (kr, vr) = (rounded(&k, hd, kind), rounded(&v, hd, kind));
                let shape = (heads, kv, n, t, hd);
                let window_or_all = window.unwrap_or(usize::MAX);
                for level in kernels::levels() {
                    // Integer scores round the queries to i8 as well.
                    let q_used = match kind == KvType::Q8 && kernels::integer_scores(level, hd) {
                        true => rounded(&q, hd, kind),
                        false => q.clone(),
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

    #[test]
    fn exp_is_accurate_over_the_softmax_range() {
        for i in 0..=100_000 {
            let x = -90.0 * i as f32 / 100_000.0;
            let (got, want) = (exp(x), x.exp());
            assert!(
                (got - want).abs() <= 1.5e-7 * (1.0 - x) * want + 1e-37,
                "exp({x}) = {got}, not {want}"
            );
        }
    }

    #[test]
    fn truncate_rewinds_and_new_positions_overwrite() {
        let (kv, hd) = (1, 8);
        let mut cache = HostKvCache::new(kv, hd, KvType::F16);
        cache.append(&[1.0; 8 * 3], &[1.0; 8 * 3], 3);
        cache.truncate(1);
        cache.append(&[2.0; 8], &[2.0; 8], 1);
        assert_eq!(cache.positions(), 2);
        let Store::F16 { k, .. } = &cache.store else {
            panic!("an f16 cache")
        };
        assert_eq!(k[8..16], [f16::from_f32(2.0); 8]);
        cache.truncate(99);
        assert_eq!(cache.positions(), 2);
    }
}
