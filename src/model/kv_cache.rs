//! A layer's keys and values, and attention over them, wherever they live:
//! in host memory for greve's CPU kernels ([`super::attention`]), as candle
//! tensors on a GPU ([`super::gpu_kv_cache`]). The transformer hands it a
//! layer's rotated queries, keys and values and gets the attention output.

use candle_core::{DType, Device, Result, Tensor};

use super::attention::{self, HostKvCache, KvType};
use super::config::Config;
use super::gpu_kv_cache::GpuKvCache;
use super::profile::{self, Part};

pub enum KvCache {
    /// f16 or i8, laid out for the CPU kernels.
    Host(HostKvCache),
    /// Tensors in the model's dtype (a GPU keeps its own).
    Device(GpuKvCache),
}

impl KvCache {
    pub fn new(c: &Config, device: &Device, kind: KvType) -> Self {
        match device.is_cpu() {
            true => KvCache::Host(HostKvCache::new(c.num_kv_heads, c.head_dim, kind)),
            false => KvCache::Device(GpuKvCache::default()),
        }
    }

    pub fn positions(&self) -> usize {
        match self {
            KvCache::Host(c) => c.positions(),
            KvCache::Device(c) => c.positions(),
        }
    }

    /// Forgets every cached position from `len` on.
    pub fn truncate(&mut self, len: usize) {
        match self {
            KvCache::Host(c) => c.truncate(len),
            KvCache::Device(c) => c.truncate(len),
        }
    }

    /// Plans for `positions` in all, so that a GPU allocates its cache once
    /// rather than growing it (each growth copies the cache and briefly
    /// holds it twice). The CPU's grows as it fills.
    pub fn reserve(&mut self, positions: usize) {
        if let KvCache::Device(c) = self {
            c.reserve(positions);
        }
    }

    /// The bytes [`save`](Self::save) writes for `len` positions; `None`
    /// where the cache cannot be saved yet (on a GPU).
    pub fn saved_bytes(&self, len: usize) -> Option<u64> {
        match self {
            KvCache::Host(c) => Some(c.saved_bytes(len)),
            KvCache::Device(_) => None,
        }
    }

    /// Writes the first `len` positions, bit for bit as cached.
    pub fn save(&self, len: usize, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        match self {
            KvCache::Host(c) => c.save(len, out),
            KvCache::Device(_) => Err(on_gpu()),
        }
    }

    /// Replaces the cached positions with `len` read as [`save`](Self::save)
    /// wrote them.
    pub fn restore(&mut self, len: usize, input: &mut dyn std::io::Read) -> std::io::Result<()> {
        match self {
            KvCache::Host(c) => c.restore(len, input),
            KvCache::Device(_) => Err(on_gpu()),
        }
    }

    /// Caches the keys and values `k`, `v` (b, kv, n, hd) of `n` new
    /// positions and returns the attention of their queries `q` (b, h, n,
    /// hd) over every cached position, (b, n, h·hd). A position sees itself
    /// and the earlier ones, at most `window` of them.
    pub fn attend(
        &mut self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        window: Option<usize>,
    ) -> Result<Tensor> {
        let cache = match self {
            KvCache::Device(cache) => return cache.attend(q, k, v, window),
            KvCache::Host(cache) => cache,
        };
        let (b, h, n, hd) = q.dims4()?;
        let flat = |t: &Tensor| t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>();
        cache
            .append(&flat(k)?, &flat(v)?, n)
            .map_err(candle_core::Error::wrap)?;
        let queries = flat(q)?;
        let y = profile::time(Part::Attention, || {
            attention::attend(&queries, h, n, cache, window)
        });
        Tensor::from_vec(y, (b, n, h * hd), q.device())?.to_dtype(q.dtype())
    }
}

fn on_gpu() -> std::io::Error {
    std::io::Error::other("a GPU's KV cache cannot be saved or restored yet")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(kv_heads: usize, head_dim: usize) -> Config {
        Config {
            vocab_size: 1,
            hidden_size: 1,
            intermediate_size: 1,
            num_layers: 1,
            num_heads: 1,
            num_kv_heads: kv_heads,
            head_dim,
            rms_norm_eps: 1e-5,
            rope_theta: 1e4,
            context_length: 64,
            sliding_window: None,
            long_rope: None,
            tie_word_embeddings: false,
        }
    }

    /// The two ways of attending, greve's CPU kernels over an f16 cache and
    /// candle's tensors (a GPU's way, run here on the CPU), agree over a
    /// prompt and the tokens decoded after it, inside and past the window.
    #[test]
    fn host_and_tensor_attention_agree() {
        let (h, kv, hd) = (4, 2, 32);
        for window in [None, Some(6)] {
            let mut host = KvCache::new(&config(kv, hd), &Device::Cpu, KvType::F16);
            let mut tensors = KvCache::Device(GpuKvCache::default());
            assert!(matches!(host, KvCache::Host(_)));
            for n in [5, 1, 1, 3, 1] {
                let rand = |heads| Tensor::randn(0f32, 1.0, (1, heads, n, hd), &Device::Cpu);
                let (q, k, v) = (rand(h).unwrap(), rand(kv).unwrap(), rand(kv).unwrap());
                let want = tensors.attend(&q, &k, &v, window).unwrap();
                let got = host.attend(&q, &k, &v, window).unwrap();
                assert_eq!(got.dims(), &[1, n, h * hd]);
                let diff = (want - got).unwrap().abs().unwrap().max_all().unwrap();
                assert!(diff.to_scalar::<f32>().unwrap() < 1e-2, "window {window:?}");
            }
            assert_eq!(host.positions(), 11);
            assert_eq!(tensors.positions(), 11);
        }
    }
}
