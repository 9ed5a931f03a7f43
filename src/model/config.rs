//! The transformer's hyperparameters, from `config.json` or GGUF metadata.
//!
//! The three Apache-2.0 Mistral 7B Instruct releases differ only here:
//! v0.1 has a 4096-token sliding window and rope θ = 10⁴, v0.2 and v0.3 use
//! θ = 10⁶ and full attention over 32k tokens, v0.3 has 32768 tokens in its
//! vocabulary. Nothing in greve assumes one of them.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use serde::Deserialize;

use crate::exit::{Classify, Failure};

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f32,
    /// The longest sequence the model was trained for: prompt plus reply.
    pub context_length: usize,
    /// Each position attends to at most this many positions (itself included).
    pub sliding_window: Option<usize>,
}

/// The fields of a Hugging Face `config.json` that greve reads.
#[derive(Deserialize)]
struct HfConfig {
    #[serde(default)]
    architectures: Vec<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    rope_theta: f32,
    max_position_embeddings: usize,
    sliding_window: Option<usize>,
    #[serde(default)]
    tie_word_embeddings: bool,
}

fn default_eps() -> f64 {
    1e-5
}

fn default_theta() -> f32 {
    10_000.0
}

impl Config {
    pub fn from_json_file(path: &Path) -> anyhow::Result<Self> {
        let text = crate::text_file::read_text(path)?;
        let hf: HfConfig = serde_json::from_str(&text).classify(Failure::ModelInvalid, || {
            format!("{} is not a valid model config", path.display())
        })?;
        let supported = ["MistralForCausalLM", "LlamaForCausalLM"];
        if let Some(arch) = hf
            .architectures
            .iter()
            .find(|a| !supported.contains(&a.as_str()))
        {
            return Err(Failure::ModelInvalid.err(format!(
                "{}: architecture {} is not supported; greve runs MistralForCausalLM models",
                path.display(),
                crate::messages::short(arch)
            )));
        }
        if hf.tie_word_embeddings {
            return Err(Failure::ModelInvalid.err(format!(
                "{}: tie_word_embeddings is set, but Mistral 7B has its own lm_head",
                path.display()
            )));
        }
        let config = Config {
            vocab_size: hf.vocab_size,
            hidden_size: hf.hidden_size,
            intermediate_size: hf.intermediate_size,
            num_layers: hf.num_hidden_layers,
            num_heads: hf.num_attention_heads,
            num_kv_heads: hf.num_key_value_heads.unwrap_or(hf.num_attention_heads),
            head_dim: hf
                .head_dim
                .unwrap_or(hf.hidden_size / hf.num_attention_heads.max(1)),
            rms_norm_eps: hf.rms_norm_eps,
            rope_theta: hf.rope_theta,
            context_length: hf.max_position_embeddings,
            sliding_window: hf.sliding_window,
        };
        config.validate().classify(Failure::ModelInvalid, || {
            format!("{} is inconsistent", path.display())
        })?;
        Ok(config)
    }

    /// Reads llama.cpp's `llama.*` keys (`convert_hf_to_gguf.py` writes
    /// Mistral 7B with the `llama` architecture). `vocab_size` comes from the
    /// embedding table when the metadata does not say.
    pub fn from_gguf(md: &HashMap<String, Value>, vocab_size: usize) -> anyhow::Result<Self> {
        let arch = md
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .map(String::as_str)
            .unwrap_or("(none)");
        if arch != "llama" {
            return Err(Failure::ModelInvalid.err(format!(
                "the GGUF architecture is {}; greve runs Mistral 7B files, whose architecture is \"llama\"",
                crate::messages::short(arch)
            )));
        }
        let get = |key: &str| -> anyhow::Result<&Value> {
            md.get(&format!("llama.{key}")).ok_or_else(|| {
                Failure::ModelInvalid.err(format!("the GGUF metadata has no llama.{key}"))
            })
        };
        let int = |key: &str| -> anyhow::Result<usize> {
            let v = get(key)?;
            v.to_u32()
                .map(|x| x as usize)
                .or_else(|_| v.to_u64().map(|x| x as usize))
                .map_err(|_| Failure::ModelInvalid.err(format!("llama.{key} is not an integer")))
        };
        let float = |key: &str, default: f32| -> anyhow::Result<f32> {
            match md.get(&format!("llama.{key}")) {
                None => Ok(default),
                Some(v) => v
                    .to_f32()
                    .map_err(|_| Failure::ModelInvalid.err(format!("llama.{key} is not a number"))),
            }
        };
        let hidden_size = int("embedding_length")?;
        let num_heads = int("attention.head_count")?;
        let head_dim = match md.get("llama.rope.dimension_count") {
            Some(_) => int("rope.dimension_count")?,
            None => hidden_size / num_heads.max(1),
        };
        let config = Config {
            vocab_size: match md.get("llama.vocab_size") {
                Some(_) => int("vocab_size")?,
                None => vocab_size,
            },
            hidden_size,
            intermediate_size: int("feed_forward_length")?,
            num_layers: int("block_count")?,
            num_heads,
            num_kv_heads: match md.get("llama.attention.head_count_kv") {
                Some(_) => int("attention.head_count_kv")?,
                None => num_heads,
            },
            head_dim,
            rms_norm_eps: float("attention.layer_norm_rms_epsilon", 1e-5)? as f64,
            rope_theta: float("rope.freq_base", 10_000.0)?,
            context_length: int("context_length")?,
            // llama.cpp's llama architecture has no sliding window; greve
            // follows the file so that it computes what llama.cpp computes.
            sliding_window: None,
        };
        config.validate().classify(Failure::ModelInvalid, || {
            "the GGUF metadata is inconsistent".into()
        })?;
        Ok(config)
    }

    /// Each size positive and within bounds far above any real model, so
    /// that no product of them overflows and nothing is sized from a forged
    /// number before the weights' own shapes are compared with them.
    /// The f16 KV cache a token takes: keys and values of every layer.
    pub fn kv_bytes_per_token(&self) -> u64 {
        [self.num_layers, self.num_kv_heads, self.head_dim, 2, 2]
            .iter()
            .map(|&n| n as u64)
            .product()
    }

    fn validate(&self) -> anyhow::Result<()> {
        let sizes = [
            ("vocab_size", self.vocab_size, 1 << 24),
            ("hidden_size", self.hidden_size, 1 << 16),
            ("intermediate_size", self.intermediate_size, 1 << 20),
            ("num_hidden_layers", self.num_layers, 1 << 10),
            ("num_attention_heads", self.num_heads, 1 << 10),
            ("num_key_value_heads", self.num_kv_heads, 1 << 10),
            ("head_dim", self.head_dim, 1 << 12),
            ("max_position_embeddings", self.context_length, 1 << 24),
            ("sliding_window", self.sliding_window.unwrap_or(1), 1 << 24),
        ];
        for (name, value, most) in sizes {
            if value == 0 || value > most {
                anyhow::bail!("{name} is {value}; it must be between 1 and {most}");
            }
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            anyhow::bail!(
                "rope_theta is {}; it must be a positive number",
                self.rope_theta
            );
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps >= 0.0) {
            anyhow::bail!(
                "rms_norm_eps is {}; it must be a number >= 0",
                self.rms_norm_eps
            );
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            anyhow::bail!(
                "{} attention heads cannot share {} key/value heads evenly",
                self.num_heads,
                self.num_kv_heads
            );
        }
        if !self.head_dim.is_multiple_of(2) {
            anyhow::bail!(
                "head_dim {} is odd; rotary embeddings need pairs",
                self.head_dim
            );
        }
        Ok(())
    }
}
