//! The generation loop: prefill the prompt, then sample, stream and feed back
//! one token at a time until EOS, the token limit or Ctrl-C.
//!
//! It sees a model, a sampler and a callback, never a terminal: the front
//! ends (`ask`, later `chat`) decide what to do with each token.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::exit::{Classify, Failure};
use crate::model::transformer::Transformer;
use crate::sampler::Sampler;

/// Long prompts are prefilled in chunks so that the attention scores of one
/// chunk (heads × chunk × context floats) stay small.
const PREFILL_CHUNK: usize = 512;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Finish {
    /// The model ended its reply (EOS).
    Stop,
    /// The token limit or the context window was reached.
    Length,
    /// Ctrl-C.
    Interrupted,
}

#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    /// From the start of prefill to the first sampled token.
    pub time_to_first_token: Duration,
    pub prefill_time: Duration,
    /// Forward passes after the first token, and their time.
    pub decode_steps: usize,
    pub decode_time: Duration,
}

impl Stats {
    pub fn prefill_tokens_per_second(&self) -> f64 {
        rate(self.prompt_tokens, self.prefill_time)
    }

    pub fn decode_tokens_per_second(&self) -> f64 {
        rate(self.decode_steps, self.decode_time)
    }
}

fn rate(n: usize, t: Duration) -> f64 {
    if t.is_zero() {
        0.0
    } else {
        n as f64 / t.as_secs_f64()
    }
}

pub struct Generation {
    pub tokens: Vec<u32>,
    pub finish: Finish,
    pub stats: Stats,
}

pub struct Limits<'a> {
    /// Most tokens to generate; the caller keeps it within the context.
    pub max_tokens: usize,
    /// Tokens that end the reply (not emitted).
    pub stop: &'a [u32],
}

/// Generates a reply to `prompt`, calling `on_token` with each token as it
/// is sampled. The KV cache is reset first.
pub fn generate(
    model: &mut Transformer,
    prompt: &[u32],
    sampler: &mut Sampler,
    limits: &Limits,
    cancel: &AtomicBool,
    mut on_token: impl FnMut(u32) -> anyhow::Result<()>,
) -> anyhow::Result<Generation> {
    let start = Instant::now();
    let mut stats = Stats {
        prompt_tokens: prompt.len(),
        ..Stats::default()
    };
    let mut tokens = Vec::new();
    let finished = |tokens, finish, stats| {
        Ok(Generation {
            tokens,
            finish,
            stats,
        })
    };

    model.truncate(0);
    let mut logits = None;
    for chunk in prompt.chunks(PREFILL_CHUNK) {
        if cancel.load(Ordering::Relaxed) {
            return finished(tokens, Finish::Interrupted, stats);
        }
        logits = Some(forward(model, chunk)?);
    }
    let Some(mut logits) = logits else {
        return Err(Failure::Usage.err("the prompt has no tokens"));
    };
    stats.prefill_time = start.elapsed();

    let mut history = prompt.to_vec();
    loop {
        if tokens.len() >= limits.max_tokens {
            return finished(tokens, Finish::Length, stats);
        }
        if cancel.load(Ordering::Relaxed) {
            return finished(tokens, Finish::Interrupted, stats);
        }
        let token = sampler.sample(&mut logits, &history);
        if tokens.is_empty() {
            stats.time_to_first_token = start.elapsed();
        }
        if limits.stop.contains(&token) {
            return finished(tokens, Finish::Stop, stats);
        }
        tokens.push(token);
        history.push(token);
        stats.generated_tokens = tokens.len();
        on_token(token)?;
        if tokens.len() < limits.max_tokens {
            let step = Instant::now();
            logits = forward(model, &[token])?;
            stats.decode_time += step.elapsed();
            stats.decode_steps += 1;
        }
    }
}

fn forward(model: &mut Transformer, tokens: &[u32]) -> anyhow::Result<Vec<f32>> {
    model
        .forward(tokens)
        .and_then(|l| l.to_vec1::<f32>())
        .classify(Failure::Generation, || "the forward pass failed".into())
}
