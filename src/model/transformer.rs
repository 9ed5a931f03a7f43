//! The Mistral 7B transformer, in the order of the paper (Jiang et al. 2023,
//! "Mistral 7B"): token embedding, then per layer pre-norm grouped-query
//! attention with rotary positions and a SwiGLU feed-forward, each around a
//! residual; a final RMSNorm and the vocabulary projection.
//!
//! Weights come from a [`WeightSource`] (safetensors or GGUF): the model
//! neither knows nor cares which file format, dtype or quantisation holds
//! them. Shapes in comments use the checkpoint's names: `d` hidden size,
//! `h`/`kv` query and key/value heads, `hd` head size, `f` feed-forward size.

use candle_core::{DType, Device, Result, Tensor};

use super::attention::KvType;
use super::config::{Config, LongRope};
use super::kv_cache::KvCache;
use super::linear::{Linear, Projections};
use super::ops;
use super::weights::check_weights;
use super::weights::{Embedding, RopeLayout, Weight, WeightSource};
use crate::exit::{Classify, Failure};

pub struct Transformer {
    pub config: Config,
    embed_tokens: Embedding, // (vocab, d)
    layers: Vec<Block>,
    norm: RmsNorm,
    lm_head: Linear, // (vocab, d)
    rope: Rope,
    /// The KV caches of the conversation in use, a layer each.
    context: Context,
    dtype: DType,
    device: Device,
    /// How the CPU keeps keys and values ([`Self::set_kv_type`]).
    kv_type: KvType,
}

impl Transformer {
    pub fn load(
        config: Config,
        src: &mut dyn WeightSource,
        dtype: DType,
        device: &Device,
    ) -> anyhow::Result<Self> {
        let c = &config;
        check_weights(c, src).classify(Failure::ModelInvalid, || {
            "the weights do not match the model's config".into()
        })?;
        let d = c.hidden_size;
        let matrix = |src: &mut dyn WeightSource, w: Weight| src.matrix(w, w.matrix_shape(c));
        let stack = |parts| Projections::new(parts, device);
        let mut layers = Vec::with_capacity(c.num_layers);
        for l in 0..c.num_layers {
            layers.push(Block {
                attn_norm: RmsNorm::new(src.dense(Weight::AttnNorm(l), &[d])?, c.rms_norm_eps),
                attn: Attention {
                    qkv: stack(vec![
                        matrix(src, Weight::Q(l))?,
                        matrix(src, Weight::K(l))?,
                        matrix(src, Weight::V(l))?,
                    ])?,
                    o: matrix(src, Weight::O(l))?,
                    heads: c.num_heads,
                    kv_heads: c.num_kv_heads,
                    head_dim: c.head_dim,
                    rope: src.rope_layout(),
                    window: c.sliding_window,
                },
                ffn_norm: RmsNorm::new(src.dense(Weight::FfnNorm(l), &[d])?, c.rms_norm_eps),
                ffn: FeedForward {
                    gate_up: stack(vec![
                        matrix(src, Weight::Gate(l))?,
                        matrix(src, Weight::Up(l))?,
                    ])?,
                    down: matrix(src, Weight::Down(l))?,
                },
            });
        }
        let embed_tokens = src.embedding(Weight::TokenEmbedding.matrix_shape(c))?;
        let lm_head = match src.shape(Weight::Output) {
            Some(_) => matrix(src, Weight::Output)?,
            None => embed_tokens.as_matmul(),
        };
        Ok(Transformer {
            embed_tokens,
            layers,
            norm: RmsNorm::new(src.dense(Weight::OutputNorm, &[d])?, c.rms_norm_eps),
            lm_head,
            rope: Rope {
                theta: c.rope_theta,
                head_dim: c.head_dim,
                long: c.long_rope,
            },
            context: Context(
                (0..c.num_layers)
                    .map(|_| KvCache::new(c, device, KvType::default()))
                    .collect(),
            ),
            dtype,
            device: device.clone(),
            kv_type: KvType::default(),
            config,
        })
    }

    /// Positions already in the KV cache.
    pub fn cached(&self) -> usize {
        self.context.positions()
    }

    /// Stores the CPU KV cache as `kind` from now on (a GPU keeps its own);
    /// what was cached is forgotten.
    pub fn set_kv_type(&mut self, kind: KvType) {
        let mut fresh = self.new_context(kind);
        self.swap_context(&mut fresh);
        self.kv_type = kind;
    }

    pub fn kv_type(&self) -> KvType {
        self.kv_type
    }

    /// Empty KV caches for every layer, to hold another conversation.
    pub fn new_context(&self, kind: KvType) -> Context {
        let caches = self.layers.iter();
        Context(
            caches
                .map(|_| KvCache::new(&self.config, &self.device, kind))
                .collect(),
        )
    }

    /// Plans the KV cache in use for `positions` in all (see [`KvCache::reserve`]).
    pub fn reserve(&mut self, positions: usize) {
        for cache in &mut self.context.0 {
            cache.reserve(positions);
        }
    }

    /// Puts `other`'s caches in use and sets this one's aside in it: a
    /// conversation can wait, cached, while another runs (`greve bench`
    /// alternates a short context with a long one without refilling it).
    pub fn swap_context(&mut self, other: &mut Context) {
        std::mem::swap(&mut self.context, other);
    }

    /// Forgets every cached position from `len` on.
    pub fn truncate(&mut self, len: usize) {
        for cache in &mut self.context.0 {
            cache.truncate(len);
        }
    }

    /// The bytes [`save_context`](Self::save_context) writes for `len`
    /// positions; `None` where the cache cannot be saved yet (on a GPU).
    pub fn saved_context_bytes(&self, len: usize) -> Option<u64> {
        let caches = self.context.0.iter();
        caches.map(|cache| cache.saved_bytes(len)).sum()
    }

    /// Writes the keys and values of the first `len` cached positions,
    /// layer by layer, bit for bit as cached.
    pub fn save_context(&self, len: usize, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        for cache in &self.context.0 {
            cache.save(len, out)?;
        }
        Ok(())
    }

    /// Replaces the cached positions with `len` read as
    /// [`save_context`](Self::save_context) wrote them, in a model of the
    /// same shape and KV type. On an error nothing stays cached.
    pub fn restore_context(
        &mut self,
        len: usize,
        input: &mut dyn std::io::Read,
    ) -> std::io::Result<()> {
        let mut result = Ok(());
        for cache in &mut self.context.0 {
            result = result.and_then(|()| cache.restore(len, input));
        }
        if result.is_err() {
            self.truncate(0);
        }
        result
    }

    /// Runs `tokens`, which follow the cached positions, and returns the
    /// logits for the token after the last one: (vocab) in f32.
    pub fn forward(&mut self, tokens: &[u32]) -> Result<Tensor> {
        // A long prompt goes through in batches, so the activations of one
        // batch, not of the whole prompt (1.4 GB for 8k tokens), are what
        // memory holds; the cache makes the result the same.
        let mut context = std::mem::take(&mut self.context);
        let mut logits = Ok(None);
        for batch in tokens.chunks(BATCH) {
            let mut one = [Sequence {
                context: &mut context,
                tokens: batch,
            }];
            logits = self.forward_together(&mut one).map(|mut l| l.pop());
            if logits.is_err() {
                break;
            }
        }
        self.context = context;
        logits?.ok_or_else(|| candle_core::Error::Msg("no tokens to run".into()))
    }

    /// One forward pass over several sequences, each with its KV cache and
    /// the tokens that follow what it holds (at most [`BATCH`] in all, none
    /// empty): the logits for each one's next token, (vocab) in f32. The
    /// products weigh every sequence's tokens together, so a decoding
    /// sequence costs little more than one; each gets the same numbers as
    /// alone (see [`Linear::forward`]).
    pub fn forward_together(&mut self, seqs: &mut [Sequence]) -> Result<Vec<Tensor>> {
        let rows: Vec<usize> = seqs.iter().map(|s| s.tokens.len()).collect();
        if rows.contains(&0) {
            candle_core::bail!("no tokens to run");
        }
        let tokens: Vec<u32> = seqs.iter().flat_map(|s| s.tokens).copied().collect();
        let mut x = self
            .embed_tokens
            .rows(&tokens, self.dtype, &self.device)?
            .unsqueeze(0)?; // (1, n, d)
        let starts: Vec<usize> = seqs.iter().map(|s| s.context.positions()).collect();
        let positions = self
            .rope
            .positions(&starts, &rows, self.dtype, &self.device)?;
        let mut delta = None;
        for (l, layer) in self.layers.iter().enumerate() {
            let mut caches: Vec<&mut KvCache> =
                seqs.iter_mut().map(|s| &mut s.context.0[l]).collect();
            let (stream, output) = layer.forward(&x, delta.as_ref(), &positions, &mut caches)?;
            (x, delta) = (stream, Some(output));
        }
        // Each sequence's last row picks its next token.
        let ends: Vec<u32> = rows
            .iter()
            .scan(0, |end, r| {
                *end += r;
                Some(*end as u32 - 1)
            })
            .collect();
        let ends = Tensor::new(ends, &self.device)?;
        let last = |t: &Tensor| t.index_select(&ends, 1);
        let delta = delta.as_ref().map(last).transpose()?;
        let (_, normed) = self.norm.after_residual(&last(&x)?, delta.as_ref())?;
        let logits = self.lm_head.forward(&normed, &vec![1; seqs.len()])?; // (1, seqs, vocab)
        let logits = logits.squeeze(0)?.to_dtype(DType::F32)?;
        (0..seqs.len()).map(|i| logits.get(i)).collect()
    }
}

/// Tokens per forward pass over the layers: enough to keep the repacked
/// prefill tiles busy, few enough that activations (and a GPU's attention
/// scores, heads × batch × context) stay small.
pub const BATCH: usize = 512;

/// The rows of a sequence from which its products take greve's repacked
/// tiles, which round apart from the compact kernels: a prompt cut in
/// pieces gets the numbers it gets whole only where no piece is shorter.
pub const TILED_ROWS: usize = super::quant::packed::MIN_TOKENS;

/// A sequence's part in [`Transformer::forward_together`].
pub struct Sequence<'a> {
    pub context: &'a mut Context,
    pub tokens: &'a [u32],
}

/// Where the new tokens sit: the rows of each sequence, their rotary
/// angles, and the queries' scale where the model has one that is not 1
/// there.
struct Positions {
    rows: Vec<usize>,
    cos: Tensor,                 // (n, hd/2)
    sin: Tensor,                 // (n, hd/2)
    query_scale: Option<Tensor>, // (1, 1, n, 1)
}

struct Block {
    attn_norm: RmsNorm,
    attn: Attention,
    ffn_norm: RmsNorm,
    ffn: FeedForward,
}

impl Block {
    /// The residual stream `x`, with the previous block's output `delta`
    /// still to be added (the add is done with this block's first norm, one
    /// kernel on a GPU): the stream and this block's output.
    fn forward(
        &self,
        x: &Tensor,
        delta: Option<&Tensor>,
        positions: &Positions,
        caches: &mut [&mut KvCache],
    ) -> Result<(Tensor, Tensor)> {
        let (x, normed) = self.attn_norm.after_residual(x, delta)?;
        let attended = self.attn.forward(&normed, positions, caches)?;
        let (x, normed) = self.ffn_norm.after_residual(&x, Some(&attended))?;
        Ok((x, self.ffn.forward(&normed, &positions.rows)?))
    }
}

struct Attention {
    qkv: Projections, // (h·hd, d), (kv·hd, d), (kv·hd, d)
    o: Linear,        // (d, h·hd)
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    rope: RopeLayout,
    window: Option<usize>,
}

/// The KV caches of every layer, a conversation's: see [`Transformer::swap_context`].
#[derive(Default)]
pub struct Context(Vec<KvCache>);

impl Context {
    /// Positions cached.
    pub fn positions(&self) -> usize {
        self.0.first().map_or(0, KvCache::positions)
    }
}

impl Attention {
    /// Attention for the rows of each sequence over its own cache, which
    /// takes in their keys and values.
    fn forward(
        &self,
        x: &Tensor,
        positions: &Positions,
        caches: &mut [&mut KvCache],
    ) -> Result<Tensor> {
        let (h, kv, hd) = (self.heads, self.kv_heads, self.head_dim);
        let rows = &positions.rows;
        let [q, k, v] = self.qkv.forward(x, rows)?;
        let mut ys = Vec::with_capacity(rows.len());
        let mut start = 0;
        for (&n, cache) in rows.iter().zip(caches) {
            let (cos, sin) = (
                &positions.cos.narrow(0, start, n)?,
                &positions.sin.narrow(0, start, n)?,
            );
            let split = |t: &Tensor, heads| {
                let t = t.narrow(1, start, n)?;
                t.reshape((1, n, heads, hd))?.transpose(1, 2)?.contiguous()
            };
            let mut q = ops::rope(split(&q, h)?, cos, sin, self.rope)?; // (1, h, n, hd)
            if let Some(scale) = &positions.query_scale {
                q = q.broadcast_mul(&scale.narrow(2, start, n)?)?;
            }
            let k = ops::rope(split(&k, kv)?, cos, sin, self.rope)?; // (1, kv, n, hd)
            let v = split(&v, kv)?;
            ys.push(cache.attend(&q, &k, &v, self.window)?); // (1, n, h·hd)
            start += n;
        }
        self.o.forward(&Tensor::cat(&ys, 1)?, rows)
    }
}

/// SwiGLU: `down(silu(gate(x)) * up(x))`.
struct FeedForward {
    gate_up: Projections, // (f, d), (f, d)
    down: Linear,         // (d, f)
}

impl FeedForward {
    fn forward(&self, x: &Tensor, rows: &[usize]) -> Result<Tensor> {
        self.down.forward(&self.gate_up.swiglu(x, rows)?, rows)
    }
}

struct RmsNorm {
    weight: Tensor, // (d)
    eps: f64,
}

impl RmsNorm {
    fn new(weight: Tensor, eps: f64) -> Self {
        RmsNorm { weight, eps }
    }

    /// `x + residual` (the residual stream after a sublayer) and its norm
    /// (the next sublayer's input).
    fn after_residual(&self, x: &Tensor, residual: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
        match residual {
            Some(residual) => ops::add_rms_norm(x, residual, &self.weight, self.eps),
            None => Ok((x.clone(), ops::rms_norm(x, &self.weight, self.eps)?)),
        }
    }
}

/// Rotary position embedding (Su et al. 2021). The angles are computed for
/// the positions at hand on every call, so no table caps the context length.
struct Rope {
    theta: f32,
    head_dim: usize,
    long: Option<LongRope>,
}

impl Rope {
    /// The angles and query scales of sequences whose `rows` new tokens
    /// follow `starts` cached positions, their rows one after another.
    fn positions(
        &self,
        starts: &[usize],
        rows: &[usize],
        dtype: DType,
        device: &Device,
    ) -> Result<Positions> {
        let mut cos = Vec::with_capacity(rows.len());
        let mut sin = Vec::with_capacity(rows.len());
        let mut scales = Vec::with_capacity(rows.len());
        for (&pos, &n) in starts.iter().zip(rows) {
            let (c, s) = self.tables(pos, n, dtype, device)?;
            cos.push(c);
            sin.push(s);
            scales.push(self.query_scale(pos, n, dtype, device)?);
        }
        // A sequence without a scale beside one with: ×1 changes no bit.
        let query_scale = match scales.iter().any(Option::is_some) {
            false => None,
            true => {
                let ones = |n| Tensor::ones((1, 1, n, 1), dtype, device);
                let scales: Vec<Tensor> = scales
                    .into_iter()
                    .zip(rows)
                    .map(|(s, &n)| s.map_or_else(|| ones(n), Ok))
                    .collect::<Result<_>>()?;
                Some(Tensor::cat(&scales, 2)?)
            }
        };
        Ok(Positions {
            rows: rows.to_vec(),
            cos: Tensor::cat(&cos, 0)?,
            sin: Tensor::cat(&sin, 0)?,
            query_scale,
        })
    }

    /// cos and sin of position × frequency, (n, hd/2) each, for positions
    /// `pos..pos + n`. Computed in f32 as transformers does, so the rounding
    /// matches the reference implementation.
    fn tables(
        &self,
        pos: usize,
        n: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let half = self.head_dim / 2;
        let inv_freq = self.inv_freq();
        let angles: Vec<f32> = (pos..pos + n)
            .flat_map(|p| inv_freq.iter().map(move |f| p as f32 * f))
            .collect();
        let angles = Tensor::from_vec(angles, (n, half), device)?;
        let (mut cos, mut sin) = (angles.cos()?, angles.sin()?);
        if let Some(long) = self.long.filter(|l| l.attention_factor != 1.0) {
            let factor = long.attention_factor as f64;
            (cos, sin) = ((cos * factor)?, (sin * factor)?);
        }
        Ok((cos.to_dtype(dtype)?, sin.to_dtype(dtype)?))
    }

    /// The rotation's frequencies, hd/2 of them. With YaRN the fast ones
    /// (many turns within the original window) stay, the slow ones are
    /// divided by the factor, and a linear ramp blends those between.
    fn inv_freq(&self) -> Vec<f32> {
        let dim = self.head_dim as f32;
        let base = |i: usize| self.theta.powf((2 * i) as f32 / dim);
        let half = self.head_dim / 2;
        let Some(long) = self.long else {
            return (0..half).map(|i| 1.0 / base(i)).collect();
        };
        // The dimension whose wavelength fits `turns` times in the original
        // window (transformers' find_correction_dim), in f64 as Python does.
        let (theta, dim64) = (self.theta as f64, self.head_dim as f64);
        let original = long.original_context as f64;
        let correction = |turns: f32| {
            let turns = turns as f64;
            dim64 * (original / (turns * 2.0 * std::f64::consts::PI)).ln() / (2.0 * theta.ln())
        };
        let low = correction(long.beta_fast).floor().max(0.0) as f32;
        let high = correction(long.beta_slow).ceil().min(dim64 - 1.0) as f32;
        let high = if low == high { high + 0.001 } else { high };
        (0..half)
            .map(|i| {
                let ramp = ((i as f32 - low) / (high - low)).clamp(0.0, 1.0);
                let stretched = 1.0 / (long.factor * base(i));
                stretched * ramp + (1.0 / base(i)) * (1.0 - ramp)
            })
            .collect()
    }

    /// Ministral 3's query scale `1 + β·ln(1 + ⌊pos / original⌋)` for
    /// positions `pos..pos + n`, (1, 1, n, 1); `None` where it is 1 for all
    /// of them (every position inside the original window), which skips
    /// the multiply and keeps the other models' arithmetic as it was.
    fn query_scale(
        &self,
        pos: usize,
        n: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Option<Tensor>> {
        let Some(long) = self.long.filter(|l| l.query_beta != 0.0) else {
            return Ok(None);
        };
        if pos + n <= long.original_context {
            return Ok(None);
        }
        let original = long.original_context as f32;
        let scale: Vec<f32> = (pos..pos + n)
            .map(|p| 1.0 + long.query_beta * (1.0 + (p as f32 / original).floor()).ln())
            .collect();
        let scale = Tensor::from_vec(scale, (1, 1, n, 1), device)?;
        Ok(Some(scale.to_dtype(dtype)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_angles_start_at_the_cached_position() {
        let rope = Rope {
            theta: 10_000.0,
            head_dim: 4,
            long: None,
        };
        let (cos, sin) = rope.tables(3, 2, DType::F32, &Device::Cpu).unwrap();
        let cos = cos.to_vec2::<f32>().unwrap();
        let sin = sin.to_vec2::<f32>().unwrap();
        // Frequencies 1 and 1/100 for head_dim 4.
        assert!((cos[0][0] - 3f32.cos()).abs() < 1e-6);
        assert!((sin[1][1] - 0.04f32.sin()).abs() < 1e-6);
    }

    /// transformers' `_compute_yarn_parameters` for tests/goldens/tiny-ministral3.json's
    /// rope (head_dim 16, θ 1e6, factor 4, original window 16).
    #[test]
    fn yarn_frequencies_are_transformers_ones() {
        let long = LongRope {
            factor: 4.0,
            original_context: 16,
            beta_fast: 32.0,
            beta_slow: 1.0,
            attention_factor: 1.138_629_4,
            query_beta: 0.1,
        };
        let rope = Rope {
            theta: 1e6,
            head_dim: 16,
            long: Some(long),
        };
        let want = [
            1.0,
            0.044_456_985,
            0.007_905_695,
            0.001_405_853_3,
            0.000_25,
            4.445_698_5e-5,
            7.905_694e-6,
            1.405_853_4e-6,
        ];
        for (got, want) in rope.inv_freq().iter().zip(want) {
            assert!((got - want).abs() <= want * 1e-6, "{got} against {want}");
        }
        // The query scale: 1 inside the window, then 1 + 0.1·ln(1 + ⌊p/16⌋).
        assert!(rope
            .query_scale(0, 16, DType::F32, &Device::Cpu)
            .unwrap()
            .is_none());
        let scale = rope
            .query_scale(15, 18, DType::F32, &Device::Cpu)
            .unwrap()
            .unwrap();
        let scale = scale.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(scale[0], 1.0);
        assert!((scale[1] - (1.0 + 0.1 * 2f32.ln())).abs() < 1e-7);
        assert!((scale[17] - (1.0 + 0.1 * 3f32.ln())).abs() < 1e-7);
    }
}
