//! The generation loop: prefill the prompt, then sample, stream and feed back
//! one token at a time until EOS, the token limit or Ctrl-C.
//!
//! It sees a model, a sampler and a callback, never a terminal: the front
//! ends (`ask`, later `chat`) decide what to do with each token.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::exit::{Classify, Failure};
use crate::model::transformer::{self, Transformer};
use crate::sampler::Sampler;
use crate::structured::Constraint;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Finish {
    /// The model ended its reply (EOS).
    Stop,
    /// The token limit or the context window was reached.
    Length,
    /// Ctrl-C.
    Interrupted,
    /// The reply is a call to functions (set by the conversation, which
    /// reads the calls).
    #[serde(rename = "tool_calls")]
    ToolCalls,
}

#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Tokens of the prompt.
    pub prompt_tokens: usize,
    /// Of those, the ones already in the KV cache, not computed again.
    pub reused_tokens: usize,
    /// Of those, the ones read from the prompt cache on disk.
    pub loaded_tokens: usize,
    /// Looking them up and reading them (counted in `time_to_first_token`).
    pub cache_read_time: Duration,
    pub generated_tokens: usize,
    /// From the start of the turn's work on the model (a read from the
    /// prompt cache, then prefill) to the first sampled token.
    pub time_to_first_token: Duration,
    pub prefill_time: Duration,
    /// Forward passes after the first token, and their time.
    pub decode_steps: usize,
    pub decode_time: Duration,
}

impl Stats {
    /// Tokens actually prefilled for this reply.
    pub fn prefilled_tokens(&self) -> usize {
        self.prompt_tokens - self.reused_tokens
    }

    pub fn prefill_tokens_per_second(&self) -> f64 {
        rate(self.prefilled_tokens(), self.prefill_time)
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
    /// The grammar the reply must follow, if any.
    pub grammar: Option<&'a mut Constraint>,
}

/// A prompt, and how much of it the KV cache holds already.
#[derive(Clone, Copy)]
pub struct Prompt<'a> {
    pub tokens: &'a [u32],
    /// The first `reuse` tokens are the ones at the start of the KV cache
    /// (a chat's earlier turns, a saved prefix): they are kept, and only the
    /// rest is prefilled. 0 starts afresh.
    pub reuse: usize,
    /// Where the prefill breaks, so that the cache holds the first
    /// `checkpoint` positions exactly as those tokens alone compute them:
    /// the same bits whether they are prefilled now or were saved by an
    /// earlier run (see `prompt_cache.rs`). 0 for no break.
    pub checkpoint: usize,
}

impl<'a> Prompt<'a> {
    /// All of `tokens`, computed afresh.
    pub fn fresh(tokens: &'a [u32]) -> Self {
        Prompt {
            tokens,
            reuse: 0,
            checkpoint: 0,
        }
    }
}

/// Generates a reply to `prompt`, calling `on_token` with each token as it
/// is sampled.
///
/// When it returns, the cache holds the prompt and every emitted token but
/// the last (which was never fed back): see [`Transformer::cached`].
pub fn generate(
    model: &mut Transformer,
    prompt: Prompt,
    sampler: &mut Sampler,
    limits: &mut Limits,
    cancel: &AtomicBool,
    mut on_token: impl FnMut(u32) -> anyhow::Result<()>,
) -> anyhow::Result<Generation> {
    let start = Instant::now();
    let Prompt {
        tokens: prompt,
        reuse,
        checkpoint,
    } = prompt;
    // The last prompt token always runs: its logits pick the first token.
    let reuse = reuse
        .min(prompt.len().saturating_sub(1))
        .min(model.cached());
    let mut stats = Stats {
        prompt_tokens: prompt.len(),
        reused_tokens: reuse,
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

    model.truncate(reuse);
    let parts = match checkpoint {
        c if c > reuse && c < prompt.len() => [&prompt[reuse..c], &prompt[c..]],
        _ => [&prompt[reuse..], &[][..]],
    };
    let mut logits = None;
    // Batch by batch, as the transformer would anyway, to hear Ctrl-C between them.
    for chunk in parts
        .iter()
        .flat_map(|part| part.chunks(transformer::BATCH))
    {
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
        if let Some(grammar) = limits.grammar.as_deref_mut() {
            grammar.mask(&mut logits)?;
        }
        let token = sampler.sample(&mut logits, &history);
        if tokens.is_empty() {
            stats.time_to_first_token = start.elapsed();
        }
        if limits.stop.contains(&token) {
            return finished(tokens, Finish::Stop, stats);
        }
        if let Some(grammar) = limits.grammar.as_deref_mut() {
            grammar.accept(token)?;
        }
        tokens.push(token);
        history.push(token);
        stats.generated_tokens = tokens.len();
        on_token(token)?;
        // A stop seen in `on_token` (a stop string) saves a forward pass.
        if tokens.len() < limits.max_tokens && !cancel.load(Ordering::Relaxed) {
            let step = Instant::now();
            logits = forward(model, &[token])?;
            stats.decode_time += step.elapsed();
            stats.decode_steps += 1;
        }
    }
}

fn forward(model: &mut Transformer, tokens: &[u32]) -> anyhow::Result<Vec<f32>> {
    let logits = model
        .forward(tokens)
        .and_then(|l| l.to_vec1::<f32>())
        .classify(Failure::Generation, || "the forward pass failed".into())?;
    // Sampling would turn them into some token or other, without a word.
    if let Some(bad) = logits.iter().find(|x| !x.is_finite()) {
        return Err(Failure::Generation.err(format!(
            "the forward pass computed a logit of {bad}: the weights hold non-finite or damaged values, or overflow in this dtype (--dtype f32 rules that out)"
        )));
    }
    Ok(logits)
}
