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
    /// Ministral 3's long-context rope: YaRN frequencies and the llama-4
    /// query scaling, both set by `rope_parameters`.
    pub long_rope: Option<LongRope>,
    /// The output projection is the embedding table (Ministral 3 3B).
    pub tie_word_embeddings: bool,
}

/// YaRN (Peng et al. 2023) stretches the slow rotary frequencies by
/// `factor` so that positions past the trained window stay in range, and
/// Ministral 3 also scales each query by `1 + beta·ln(1 + ⌊pos / original⌋)`
/// (llama 4's fix for attention that flattens far out). Both are computed as
/// transformers' `ministral3` computes them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LongRope {
    pub factor: f32,
    pub original_context: usize,
    pub beta_fast: f32,
    pub beta_slow: f32,
    /// Multiplies cos and sin.
    pub attention_factor: f32,
    /// The llama-4 query scaling's beta; 0 turns it off.
    pub query_beta: f32,
}

/// `rope_parameters` (transformers 5) or `rope_scaling` (4.x) of a config.
#[derive(Deserialize)]
struct HfRope {
    rope_type: Option<String>,
    /// transformers 4.x's name of `rope_type`; Hub configs often hold both.
    #[serde(rename = "type")]
    old_type: Option<String>,
    rope_theta: Option<f32>,
    factor: Option<f32>,
    original_max_position_embeddings: Option<usize>,
    beta_fast: Option<f32>,
    beta_slow: Option<f32>,
    attention_factor: Option<f32>,
    mscale: Option<f32>,
    mscale_all_dim: Option<f32>,
    llama_4_scaling_beta: Option<f32>,
}

impl HfRope {
    /// The rope in transformers' terms (`_compute_yarn_parameters`): the
    /// missing betas are 32 and 1, the attention factor comes from mscale.
    fn long_rope(&self, context: usize) -> anyhow::Result<Option<LongRope>> {
        let kind = self.rope_type.as_ref().or(self.old_type.as_ref());
        let kind = kind.map_or("default", String::as_str);
        let query_beta = self.llama_4_scaling_beta.unwrap_or(0.0);
        match kind {
            "default" if query_beta == 0.0 => return Ok(None),
            "default" | "yarn" => {}
            other => anyhow::bail!(
                "rope type {} is not supported; greve runs the default rope and YaRN",
                crate::messages::short(other)
            ),
        }
        let original = self.original_max_position_embeddings.unwrap_or(context);
        // The default rope with the query scaling alone is YaRN stretched by 1.
        let factor = match kind {
            "default" => 1.0,
            _ => self
                .factor
                .unwrap_or(context as f32 / original.max(1) as f32),
        };
        let mscale = |scale: f32, m: f32| {
            if scale <= 1.0 {
                1.0
            } else {
                0.1 * m * scale.ln() + 1.0
            }
        };
        let attention_factor = match (self.attention_factor, self.mscale, self.mscale_all_dim) {
            (Some(a), _, _) => a,
            (None, Some(m), Some(all)) if m != 0.0 && all != 0.0 => {
                mscale(factor, m) / mscale(factor, all)
            }
            _ => mscale(factor, 1.0),
        };
        let nonzero = |v: Option<f32>, default| v.filter(|&b| b != 0.0).unwrap_or(default);
        let rope = LongRope {
            factor,
            original_context: original,
            beta_fast: nonzero(self.beta_fast, 32.0),
            beta_slow: nonzero(self.beta_slow, 1.0),
            attention_factor,
            query_beta,
        };
        let numbers = [
            rope.factor,
            rope.beta_fast,
            rope.beta_slow,
            rope.attention_factor,
        ];
        if numbers.iter().any(|x| !x.is_finite() || *x <= 0.0) || !query_beta.is_finite() {
            anyhow::bail!("rope_parameters hold a number that is not positive and finite");
        }
        if original == 0 {
            anyhow::bail!("original_max_position_embeddings is 0");
        }
        Ok(Some(rope))
    }
}

/// The fields of a Hugging Face `config.json` that greve reads.
#[derive(Deserialize)]
struct HfConfig {
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
    rope_parameters: Option<HfRope>,
    rope_scaling: Option<HfRope>,
    #[serde(default)]
    tie_word_embeddings: bool,
}

/// A `Mistral3ForConditionalGeneration` config holds the text model in
/// `text_config`; its vision tower is another issue's.
#[derive(Deserialize)]
struct HfOuter {
    #[serde(default)]
    architectures: Vec<String>,
    text_config: Option<serde_json::Value>,
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
        let invalid = || format!("{} is not a valid model config", path.display());
        let outer: HfOuter =
            serde_json::from_str(&text).classify(Failure::ModelInvalid, invalid)?;
        let supported = [
            "MistralForCausalLM",
            "LlamaForCausalLM",
            "Ministral3ForCausalLM",
            "Mistral3ForConditionalGeneration",
        ];
        if let Some(arch) = outer
            .architectures
            .iter()
            .find(|a| !supported.contains(&a.as_str()))
        {
            return Err(Failure::ModelInvalid.err(format!(
                "{}: architecture {} is not supported; greve runs Mistral, Ministral 3 and Mistral 3 models",
                path.display(),
                crate::messages::short(arch)
            )));
        }
        let hf: HfConfig = match outer.text_config {
            Some(inner) => serde_json::from_value(inner),
            None => serde_json::from_str(&text),
        }
        .classify(Failure::ModelInvalid, invalid)?;
        let rope = hf.rope_parameters.as_ref().or(hf.rope_scaling.as_ref());
        let long_rope = match rope {
            Some(rope) => rope.long_rope(hf.max_position_embeddings),
            None => Ok(None),
        }
        .classify(Failure::ModelInvalid, || {
            format!("{} has a rope greve cannot run", path.display())
        })?;
        let rope_theta = rope.and_then(|r| r.rope_theta).unwrap_or(hf.rope_theta);
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
            rope_theta,
            context_length: hf.max_position_embeddings,
            sliding_window: hf.sliding_window,
            long_rope,
            tie_word_embeddings: hf.tie_word_embeddings,
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
        // Mistral 7B, NeMo and Small files are `llama`; Ministral 3,
        // Magistral and Devstral Small 2 are `mistral3` (the same blocks,
        // with YaRN and the llama-4 query scaling).
        if arch != "llama" && arch != "mistral3" {
            return Err(Failure::ModelInvalid.err(format!(
                "the GGUF architecture is {}; greve runs Mistral's, whose architectures are \"llama\" and \"mistral3\"",
                crate::messages::short(arch)
            )));
        }
        let key = |name: &str| format!("{arch}.{name}");
        let get = |name: &str| -> anyhow::Result<&Value> {
            md.get(&key(name)).ok_or_else(|| {
                Failure::ModelInvalid.err(format!("the GGUF metadata has no {}", key(name)))
            })
        };
        let int = |name: &str| -> anyhow::Result<usize> {
            let v = get(name)?;
            v.to_u32()
                .map(|x| x as usize)
                .or_else(|_| v.to_u64().map(|x| x as usize))
                .map_err(|_| Failure::ModelInvalid.err(format!("{} is not an integer", key(name))))
        };
        let keys = ArchKeys { md, arch };
        let float = |name: &str, default: f32| {
            Ok::<_, anyhow::Error>(keys.number(name)?.unwrap_or(default))
        };
        let hidden_size = int("embedding_length")?;
        let num_heads = int("attention.head_count")?;
        let head_dim = match md.get(&key("rope.dimension_count")) {
            Some(_) => int("rope.dimension_count")?,
            None => hidden_size / num_heads.max(1),
        };
        let context_length = int("context_length")?;
        let long_rope = gguf_rope(&keys, context_length)?;
        let config = Config {
            vocab_size: match md.get(&key("vocab_size")) {
                Some(_) => int("vocab_size")?,
                None => vocab_size,
            },
            hidden_size,
            intermediate_size: int("feed_forward_length")?,
            num_layers: int("block_count")?,
            num_heads,
            num_kv_heads: match md.get(&key("attention.head_count_kv")) {
                Some(_) => int("attention.head_count_kv")?,
                None => num_heads,
            },
            head_dim,
            rms_norm_eps: float("attention.layer_norm_rms_epsilon", 1e-5)? as f64,
            rope_theta: float("rope.freq_base", 10_000.0)?,
            context_length,
            // llama.cpp's architectures have no sliding window; greve
            // follows the file so that it computes what llama.cpp computes.
            sliding_window: None,
            long_rope,
            tie_word_embeddings: false,
        };
        config.validate().classify(Failure::ModelInvalid, || {
            "the GGUF metadata is inconsistent".into()
        })?;
        Ok(config)
    }
}

/// A GGUF file's metadata under one architecture's prefix (`llama.`,
/// `mistral3.`).
struct ArchKeys<'a> {
    md: &'a HashMap<String, Value>,
    arch: &'a str,
}

impl ArchKeys<'_> {
    fn key(&self, name: &str) -> String {
        format!("{}.{name}", self.arch)
    }

    fn number(&self, name: &str) -> anyhow::Result<Option<f32>> {
        self.md
            .get(&self.key(name))
            .map(|v| {
                v.to_f32().map_err(|_| {
                    Failure::ModelInvalid.err(format!("{} is not a number", self.key(name)))
                })
            })
            .transpose()
    }
}

/// The rope of a `mistral3` GGUF file as llama.cpp reads it
/// (`llama-context.cpp`): YaRN's numbers under `rope.scaling.*`, mscale
/// taken as 1 and `yarn_log_multiplier` as mscale_all_dim, the query
/// scaling's beta as `attention.temperature_scale`; the same rope as the
/// config.json they were converted from.
fn gguf_rope(keys: &ArchKeys, context: usize) -> anyhow::Result<Option<LongRope>> {
    let (md, key) = (keys.md, |name: &str| keys.key(name));
    let number = |name: &str| keys.number(name);
    let kind = match md.get(&key("rope.scaling.type")).map(Value::to_string) {
        None => None,
        Some(Ok(kind)) if kind == "none" => None,
        Some(Ok(kind)) => Some(kind.clone()),
        Some(Err(_)) => {
            return Err(
                Failure::ModelInvalid.err(format!("{} is not a string", key("rope.scaling.type")))
            )
        }
    };
    let original = match md.get(&key("rope.scaling.original_context_length")) {
        None => None,
        Some(v) => Some(v.to_u32().map(|x| x as usize).map_err(|_| {
            Failure::ModelInvalid.err(format!(
                "{} is not an integer",
                key("rope.scaling.original_context_length")
            ))
        })?),
    };
    let rope = HfRope {
        rope_type: kind,
        old_type: None,
        rope_theta: None,
        factor: number("rope.scaling.factor")?,
        original_max_position_embeddings: original,
        beta_fast: number("rope.scaling.yarn_beta_fast")?,
        beta_slow: number("rope.scaling.yarn_beta_slow")?,
        attention_factor: None,
        mscale: Some(1.0),
        mscale_all_dim: number("rope.scaling.yarn_log_multiplier")?,
        llama_4_scaling_beta: number("attention.temperature_scale")?,
    };
    let long = rope
        .long_rope(context)
        .classify(Failure::ModelInvalid, || "the GGUF rope metadata".into())?;
    // llama.cpp multiplies YaRN's factor by this one.
    let extra = number("rope.scaling.attn_factor")?.unwrap_or(1.0);
    Ok(long.map(|l| LongRope {
        attention_factor: l.attention_factor * extra,
        ..l
    }))
}

impl Config {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> anyhow::Result<Config> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, json).unwrap();
        Config::from_json_file(&path)
    }

    /// Ministral 3 8B's config.json as its Hub repo holds it, shortened:
    /// the text model inside a Mistral3ForConditionalGeneration, YaRN with
    /// mscale = mscale_all_dim (so an attention factor of 1).
    #[test]
    fn a_mistral3_config_gives_its_text_model_and_yarn() {
        let c = parse(
            r#"{"architectures": ["Mistral3ForConditionalGeneration"], "model_type": "mistral3",
            "text_config": {"model_type": "ministral3", "vocab_size": 131072, "hidden_size": 4096,
              "intermediate_size": 14336, "num_hidden_layers": 34, "num_attention_heads": 32,
              "num_key_value_heads": 8, "head_dim": 128, "max_position_embeddings": 262144,
              "rms_norm_eps": 1e-5, "tie_word_embeddings": false, "sliding_window": null,
              "rope_parameters": {"rope_type": "yarn", "type": "yarn", "rope_theta": 1000000.0,
                "factor": 16.0, "original_max_position_embeddings": 16384, "beta_fast": 32.0,
                "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0, "llama_4_scaling_beta": 0.1}},
            "vision_config": {"hidden_size": 1024}}"#,
        )
        .unwrap();
        assert_eq!(
            (c.hidden_size, c.num_layers, c.context_length),
            (4096, 34, 262144)
        );
        assert_eq!(c.rope_theta, 1e6);
        let long = c.long_rope.unwrap();
        assert_eq!((long.factor, long.original_context), (16.0, 16384));
        assert_eq!((long.attention_factor, long.query_beta), (1.0, 0.1));
    }

    /// The metadata llama.cpp's converter writes for Ministral 3 8B
    /// (arch `mistral3`) gives the rope its config.json gives.
    #[test]
    fn a_mistral3_gguf_gives_the_same_rope() {
        let mut md: HashMap<String, Value> = [
            ("general.architecture", Value::String("mistral3".into())),
            ("mistral3.rope.scaling.type", Value::String("yarn".into())),
            ("mistral3.rope.scaling.factor", Value::F32(16.0)),
            (
                "mistral3.rope.scaling.original_context_length",
                Value::U32(16384),
            ),
            ("mistral3.rope.scaling.yarn_beta_fast", Value::F32(32.0)),
            ("mistral3.rope.scaling.yarn_beta_slow", Value::F32(1.0)),
            ("mistral3.rope.scaling.yarn_log_multiplier", Value::F32(1.0)),
            ("mistral3.attention.temperature_scale", Value::F32(0.1)),
            ("mistral3.rope.freq_base", Value::F32(1e6)),
            ("mistral3.context_length", Value::U32(262144)),
            ("mistral3.embedding_length", Value::U32(4096)),
            ("mistral3.feed_forward_length", Value::U32(14336)),
            ("mistral3.block_count", Value::U32(34)),
            ("mistral3.attention.head_count", Value::U32(32)),
            ("mistral3.attention.head_count_kv", Value::U32(8)),
            ("mistral3.rope.dimension_count", Value::U32(128)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let c = Config::from_gguf(&md, 131072).unwrap();
        let long = c.long_rope.unwrap();
        assert_eq!((long.factor, long.original_context), (16.0, 16384));
        assert_eq!((long.attention_factor, long.query_beta), (1.0, 0.1));
        md.insert(
            "mistral3.rope.scaling.type".into(),
            Value::String("longrope".into()),
        );
        assert!(Config::from_gguf(&md, 131072).is_err());
        md.insert("general.architecture".into(), Value::String("qwen3".into()));
        let err = Config::from_gguf(&md, 131072).unwrap_err();
        assert!(format!("{err}").contains("\"qwen3\""), "{err}");
    }

    #[test]
    fn a_rope_greve_does_not_run_is_refused() {
        let err = parse(
            r#"{"vocab_size": 8, "hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 1,
            "num_attention_heads": 2, "max_position_embeddings": 64,
            "rope_scaling": {"rope_type": "longrope", "factor": 2.0}}"#,
        )
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("rope type \"longrope\" is not supported"),
            "{err:#}"
        );
    }
}
