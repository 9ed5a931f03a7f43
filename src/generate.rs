//! The generation loop: prefill the prompt, then sample, stream and feed back
//! one token at a time until EOS, the token limit or Ctrl-C; as a loop
//! ([`generate`]) or step by step ([`Generator`]).
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
    let mut generator = Generator::new(model, prompt);
    loop {
        match generator.step(model, sampler, limits, cancel)? {
            Step::Prefilled | Step::Waiting => {}
            Step::Token(token) => on_token(token)?,
            Step::Done(finish) => return Ok(generator.finish(finish)),
        }
    }
}

/// A reply being generated one step at a time, so that a scheduler can
/// run several together: a step runs a piece of the prompt through the
/// model, or feeds back the last token, and samples the next. The model
/// pass is the caller's ([`Generator::input`], then [`Generator::ran`]),
/// over this sequence alone ([`Generator::step`]) or beside others.
pub struct Generator {
    prompt: Vec<u32>,
    /// The prompt's positions computed so far.
    done: usize,
    checkpoint: usize,
    /// Where the prompt's batch under way ends, as a prefill alone cuts it.
    batch_end: usize,
    /// Tokens of the input being run.
    running: usize,
    logits: Option<Vec<f32>>,
    /// The token sampled last, not yet fed back.
    unfed: Option<u32>,
    tokens: Vec<u32>,
    /// The prompt and the reply so far, for the repeat penalty.
    history: Vec<u32>,
    stats: Stats,
    start: Instant,
}

/// What one step did.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// A piece of the prompt went through the model.
    Prefilled,
    /// Left out of a pass over several sequences that had no room for its
    /// piece: it runs at a later step.
    Waiting,
    /// The reply's next token (not a stop token).
    Token(u32),
    Done(Finish),
}

/// What a step needs of the model.
pub enum Input<'g> {
    /// These tokens run, after the sequence's cached ones.
    Run(&'g [u32]),
    /// Nothing: the next token is sampled from the logits at hand.
    Sample,
    Done(Finish),
}

/// The fewest prompt tokens a piece is cut to, where the prompt's batch
/// has more: what takes the repacked tiles alone must take them in pieces.
pub const MIN_PIECE: usize = crate::model::transformer::TILED_ROWS;

impl Generator {
    /// Keeps the cached positions the prompt reuses and forgets the rest.
    pub fn new(model: &mut Transformer, prompt: Prompt) -> Self {
        // The last prompt token always runs: its logits pick the first token.
        let reuse = prompt
            .reuse
            .min(prompt.tokens.len().saturating_sub(1))
            .min(model.cached());
        model.truncate(reuse);
        Generator {
            prompt: prompt.tokens.to_vec(),
            done: reuse,
            checkpoint: prompt.checkpoint,
            batch_end: reuse,
            running: 0,
            logits: None,
            unfed: None,
            tokens: Vec::new(),
            history: prompt.tokens.to_vec(),
            stats: Stats {
                prompt_tokens: prompt.tokens.len(),
                reused_tokens: reuse,
                ..Stats::default()
            },
            start: Instant::now(),
        }
    }

    /// One step with the model to itself.
    pub fn step(
        &mut self,
        model: &mut Transformer,
        sampler: &mut Sampler,
        limits: &mut Limits,
        cancel: &AtomicBool,
    ) -> anyhow::Result<Step> {
        match self.input(limits.max_tokens, cancel, transformer::BATCH) {
            Input::Done(finish) => return Ok(Step::Done(finish)),
            Input::Run(tokens) => {
                let took = Instant::now();
                let logits = model.forward(tokens);
                if let Some(step) = self.ran(logits, took.elapsed())? {
                    return Ok(step);
                }
            }
            Input::Sample => {}
        }
        self.sample(sampler, limits, cancel)
    }

    /// What the next step runs: a piece of the prompt (at most `piece`
    /// tokens of the batch a prefill alone would run, and never a rest
    /// too short for the tiles), the last token, or nothing.
    pub fn input(&mut self, max_tokens: usize, cancel: &AtomicBool, piece: usize) -> Input<'_> {
        let cancelled = cancel.load(Ordering::Relaxed);
        if self.done < self.prompt.len() {
            if cancelled {
                return Input::Done(Finish::Interrupted);
            }
            if self.done == self.batch_end {
                // Broken at the checkpoint, so that the cache holds its
                // first positions as those tokens alone compute them.
                let end = match self.checkpoint {
                    c if c > self.done && c < self.prompt.len() => c,
                    _ => self.prompt.len(),
                };
                self.batch_end = end.min(self.done + transformer::BATCH);
            }
            let left = self.batch_end - self.done;
            let piece = piece.max(MIN_PIECE);
            self.running = if left < piece + MIN_PIECE {
                left
            } else {
                piece
            };
            return Input::Run(&self.prompt[self.done..][..self.running]);
        }
        if self.tokens.len() >= max_tokens {
            return Input::Done(Finish::Length);
        }
        if cancelled {
            return Input::Done(Finish::Interrupted);
        }
        // Fed back only now: a stop seen after the last token (a stop
        // string, the limit) saves a forward pass.
        match &self.unfed {
            Some(token) => {
                self.running = 1;
                Input::Run(std::slice::from_ref(token))
            }
            None => Input::Sample,
        }
    }

    /// Takes the logits of the input run, which took `took`: a step that
    /// prefilled a piece of the prompt is done; one that ran its last piece,
    /// or fed a token back, goes on to sample.
    pub fn ran(
        &mut self,
        logits: candle_core::Result<candle_core::Tensor>,
        took: Duration,
    ) -> anyhow::Result<Option<Step>> {
        self.logits = Some(checked(logits)?);
        if self.done < self.prompt.len() {
            self.done += self.running;
            if self.done < self.prompt.len() {
                return Ok(Some(Step::Prefilled));
            }
            // The prompt's last logits: its first token is sampled now,
            // not a step later.
            self.stats.prefill_time = self.start.elapsed();
            return Ok(None);
        }
        self.unfed = None;
        self.stats.decode_time += took;
        self.stats.decode_steps += 1;
        Ok(None)
    }

    /// Samples the next token from the logits at hand.
    pub fn sample(
        &mut self,
        sampler: &mut Sampler,
        limits: &mut Limits,
        cancel: &AtomicBool,
    ) -> anyhow::Result<Step> {
        if self.tokens.len() >= limits.max_tokens {
            return Ok(Step::Done(Finish::Length));
        }
        if cancel.load(Ordering::Relaxed) {
            return Ok(Step::Done(Finish::Interrupted));
        }
        let Some(logits) = self.logits.as_mut() else {
            return Err(Failure::Usage.err("the prompt has no tokens"));
        };
        if let Some(grammar) = limits.grammar.as_deref_mut() {
            grammar.mask(logits)?;
        }
        let token = sampler.sample(logits, &self.history);
        if self.tokens.is_empty() {
            self.stats.time_to_first_token = self.start.elapsed();
        }
        if limits.stop.contains(&token) {
            return Ok(Step::Done(Finish::Stop));
        }
        if let Some(grammar) = limits.grammar.as_deref_mut() {
            grammar.accept(token)?;
        }
        self.tokens.push(token);
        self.history.push(token);
        self.stats.generated_tokens = self.tokens.len();
        self.unfed = Some(token);
        Ok(Step::Token(token))
    }

    /// Tokens generated so far.
    pub fn generated(&self) -> usize {
        self.tokens.len()
    }

    pub fn finish(self, finish: Finish) -> Generation {
        Generation {
            tokens: self.tokens,
            finish,
            stats: self.stats,
        }
    }
}

/// A forward pass's logits, refused when it failed or computed a value
/// that is not finite.
fn checked(logits: candle_core::Result<candle_core::Tensor>) -> anyhow::Result<Vec<f32>> {
    let logits = logits
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
