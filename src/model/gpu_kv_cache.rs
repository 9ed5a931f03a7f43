//! Per-layer keys and values of the positions seen so far, written in
//! place, as candle tensors on a GPU; and attention over them.
//!
//! Storage is allocated once for the length the caller plans (`reserve`:
//! the conversation's planned context, or a benchmark's exact length), so
//! appending a token copies nothing; a conversation that outgrows it grows
//! by doubling, so the copies stay amortised. Memory stays proportional to
//! the conversation, not to the model's 32k-token context. `truncate`
//! rewinds it (a retried reply, a Ctrl-C).

use candle_core::{DType, Device, Result, Tensor};

use super::cuda;

/// The least room allocated, when nothing was reserved.
const INITIAL_CAPACITY: usize = 256;

#[derive(Default)]
pub struct GpuKvCache {
    /// Keys and values, (2, batch, kv_heads, capacity, head_dim): one tensor,
    /// so that a token's keys and values are written by one kernel. The
    /// first `len` positions are valid.
    storage: Option<Tensor>,
    len: usize,
    /// Positions the storage is to hold from its first allocation.
    reserved: usize,
}

impl GpuKvCache {
    pub fn positions(&self) -> usize {
        self.len
    }

    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Plans for `positions` in all: storage allocated from now on holds at
    /// least that many.
    pub fn reserve(&mut self, positions: usize) {
        self.reserved = positions;
    }

    /// Appends (batch, kv_heads, n, head_dim) keys and values and returns
    /// views of all positions so far.
    fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let needed = self.len + k.dim(2)?;
        let kv = match self.storage.take() {
            Some(kv) if kv.dim(3)? >= needed => kv,
            old => {
                let capacity = old.as_ref().map_or(Ok(0), |kv| kv.dim(3))?;
                let capacity = needed
                    .max(capacity * 2)
                    .max(self.reserved)
                    .max(INITIAL_CAPACITY);
                grow(old.as_ref(), k, self.len, capacity)?
            }
        };
        let (keys, values) = (kv.get(0)?, kv.get(1)?);
        if !cuda::write_kv(&kv, k, v, self.len)? {
            keys.slice_set(&k.contiguous()?, 2, self.len)?;
            values.slice_set(&v.contiguous()?, 2, self.len)?;
        }
        self.len = needed;
        self.storage = Some(kv);
        Ok((keys.narrow(2, 0, needed)?, values.narrow(2, 0, needed)?))
    }

    /// [`KvCache::attend`](super::kv_cache::KvCache::attend) in tensors: the
    /// decoding kernel of greve's for one new token on a GPU, candle's
    /// products with a mask otherwise.
    pub fn attend(
        &mut self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        window: Option<usize>,
    ) -> Result<Tensor> {
        let (b, h, n, hd) = q.dims4()?;
        let pos = self.len;
        let (k, v) = self.append(k, v)?; // (b, kv, t, hd)
        if let Some(y) = cuda::decode_attention(q, &k, &v, window)? {
            return y.reshape((b, n, h * hd));
        }
        let (kv, t) = (k.dim(1)?, k.dim(2)?);

        // Grouped-query attention without copying K and V per query head:
        // the h/kv query heads that share a key/value head are stacked along
        // the sequence axis, so one matmul per kv head serves them all.
        let group = h / kv;
        let q = q.reshape((b, kv, group * n, hd))?;
        let scores = (q.matmul(&k.t()?)? * (1.0 / (hd as f64).sqrt()))?; // (b, kv, group·n, t)
        let scores = match attention_mask(pos, n, window, q.dtype(), q.device())? {
            Some(m) => scores.reshape((b, kv, group, n, t))?.broadcast_add(&m)?,
            None => scores,
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores.reshape((b, kv, group * n, t))?)?;
        let y = probs.matmul(&v)?; // (b, kv, group·n, hd)
        y.reshape((b, h, n, hd))?
            .transpose(1, 2)?
            .reshape((b, n, h * hd))
    }
}

/// The additive mask for `n` new positions after `pos` cached ones:
/// (n, pos + n), 0 where attention is allowed and -inf elsewhere. A position
/// sees itself and earlier positions, at most `window` of them. `None` when
/// nothing is masked (one new token within the window).
fn attention_mask(
    pos: usize,
    n: usize,
    window: Option<usize>,
    dtype: DType,
    device: &Device,
) -> Result<Option<Tensor>> {
    let t = pos + n;
    let window = window.unwrap_or(usize::MAX);
    if n == 1 && t <= window {
        return Ok(None);
    }
    let mask: Vec<f32> = (0..n)
        .flat_map(|i| {
            let query = pos + i;
            (0..t).map(move |key| {
                if key <= query && query - key < window {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    Tensor::from_vec(mask, (n, t), device)?
        .to_dtype(dtype)
        .map(Some)
}

/// New storage of `capacity` positions holding the first `len` of `old`.
fn grow(old: Option<&Tensor>, like: &Tensor, len: usize, capacity: usize) -> Result<Tensor> {
    let (b, h, _, d) = like.dims4()?;
    let fresh = Tensor::zeros((2, b, h, capacity, d), like.dtype(), like.device())?;
    if let Some(old) = old {
        if len > 0 {
            fresh.slice_set(&old.narrow(3, 0, len)?.contiguous()?, 3, 0)?;
        }
    }
    Ok(fresh)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(pos: usize, n: usize, window: Option<usize>) -> Vec<Vec<bool>> {
        let m = attention_mask(pos, n, window, DType::F32, &Device::Cpu).unwrap();
        match m {
            None => vec![vec![true; pos + n]; n],
            Some(m) => m
                .to_vec2::<f32>()
                .unwrap()
                .into_iter()
                .map(|row| row.into_iter().map(|x| x == 0.0).collect())
                .collect(),
        }
    }

    #[test]
    fn causal_mask_over_the_cache() {
        // Two new positions (2, 3) after two cached ones:
        //        keys 0 1 2 3
        //  query 2:   x x x .
        //  query 3:   x x x x
        assert_eq!(
            mask(2, 2, None),
            vec![vec![true, true, true, false], vec![true, true, true, true]]
        );
    }

    #[test]
    fn sliding_window_hides_old_positions() {
        // Window 2: each position sees itself and the one before.
        assert_eq!(
            mask(0, 3, Some(2)),
            vec![
                vec![true, false, false],
                vec![true, true, false],
                vec![false, true, true]
            ]
        );
        // A single decoded token past the window still gets a mask.
        assert_eq!(mask(3, 1, Some(2)), vec![vec![false, false, true, true]]);
        assert_eq!(mask(1, 1, Some(2)), vec![vec![true, true]]);
    }

    fn block(start: usize, n: usize) -> Tensor {
        Tensor::arange(start as u32, (start + n) as u32, &Device::Cpu)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .reshape((1, 1, n, 1))
            .unwrap()
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn appends_past_the_initial_capacity_and_keeps_order() {
        let mut cache = GpuKvCache::default();
        let mut expected = Vec::new();
        let mut pos = 0;
        for n in [200, 100, 1, 300] {
            let (k, v) = cache.append(&block(pos, n), &block(pos, n)).unwrap();
            pos += n;
            expected.extend((0..pos).map(|x| x as f32).skip(expected.len()));
            assert_eq!(values(&k), expected);
            assert_eq!(values(&v), expected);
        }
        assert_eq!(cache.positions(), 601);
    }

    fn capacity(cache: &GpuKvCache) -> usize {
        cache.storage.as_ref().map_or(0, |kv| kv.dim(3).unwrap())
    }

    #[test]
    fn a_reserved_length_is_allocated_at_once_and_grown_past() {
        let mut cache = GpuKvCache::default();
        cache.reserve(1000);
        cache.append(&block(0, 1), &block(0, 1)).unwrap();
        assert_eq!(capacity(&cache), 1000);
        for pos in 1..1000 {
            cache.append(&block(pos, 1), &block(pos, 1)).unwrap();
        }
        assert_eq!(capacity(&cache), 1000);
        let (k, _) = cache.append(&block(1000, 1), &block(1000, 1)).unwrap();
        assert_eq!(capacity(&cache), 2000);
        assert_eq!(values(&k), (0..1001).map(|x| x as f32).collect::<Vec<_>>());
    }

    #[test]
    fn truncate_rewinds_and_new_tokens_overwrite() {
        let mut cache = GpuKvCache::default();
        cache.append(&block(0, 5), &block(0, 5)).unwrap();
        cache.truncate(2);
        let (k, _) = cache.append(&block(10, 2), &block(10, 2)).unwrap();
        assert_eq!(values(&k), vec![0.0, 1.0, 10.0, 11.0]);
        cache.truncate(99);
        assert_eq!(cache.positions(), 4);
    }
}
