//! Several generations stepped together: one forward pass a step over every
//! sequence that needs one, the decoding ones a token each, the prefilling
//! ones a piece of their prompt. The server's turns and `greve bench
//! --parallel` run through here; a turn alone is a batch of one.

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use crate::generate::{Generator, Input, Step, MIN_PIECE};
use crate::model::transformer::{Context, Sequence, Transformer, BATCH};

/// A sequence's part in a step: its generation, its KV cache, its limit
/// and cancel flag.
pub struct Member<'a> {
    pub generator: &'a mut Generator,
    pub context: &'a mut Context,
    pub max_tokens: usize,
    pub cancel: &'a AtomicBool,
}

/// One step of each member: one forward pass over those that need one,
/// within [`BATCH`] tokens in all, decoded tokens first. What each did, in
/// their order: `None` where its next token is to be sampled now (with
/// [`Generator::sample`]), else the step it took without sampling
/// (prefilled, waiting for room, or done).
pub fn step(model: &mut Transformer, members: &mut [Member]) -> Vec<anyhow::Result<Option<Step>>> {
    // Alone, a prompt runs in whole batches; beside replies under way, in
    // small pieces, so that none of them waits long for its next token.
    let decoding = members.iter().any(|m| m.generator.generated() > 0);
    let piece = if decoding { MIN_PIECE } else { BATCH };
    let mut steps: Vec<Option<anyhow::Result<Option<Step>>>> =
        members.iter().map(|_| None).collect();
    let mut inputs = Vec::new();
    for (i, m) in members.iter_mut().enumerate() {
        match m.generator.input(m.max_tokens, m.cancel, piece) {
            Input::Done(finish) => steps[i] = Some(Ok(Some(Step::Done(finish)))),
            Input::Sample => steps[i] = Some(Ok(None)),
            Input::Run(tokens) => inputs.push((
                i,
                Sequence {
                    context: &mut *m.context,
                    tokens,
                },
            )),
        }
    }
    // Decoded tokens first, then pieces of prompts while they fit, the
    // oldest request's first; beside streams under way only one piece, so
    // that their steps stay short. One left out waits for the next step.
    inputs.sort_by_key(|(_, s)| s.tokens.len() > 1);
    let mut budget = BATCH;
    let mut pieces = if decoding { 1 } else { inputs.len() };
    let (mut ran, mut seqs) = (Vec::new(), Vec::new());
    for (i, seq) in inputs {
        let piece = seq.tokens.len() > 1;
        if (seq.tokens.len() > budget || piece && pieces == 0) && !seqs.is_empty() {
            steps[i] = Some(Ok(Some(Step::Waiting)));
            continue;
        }
        pieces = pieces.saturating_sub(usize::from(piece));
        budget = budget.saturating_sub(seq.tokens.len());
        ran.push(i);
        seqs.push(seq);
    }
    let took = Instant::now();
    let logits = match seqs.is_empty() {
        true => Ok(Vec::new()),
        false => model.forward_together(&mut seqs),
    };
    let took = took.elapsed();
    drop(seqs);
    let mut logits = match logits {
        Ok(logits) => logits.into_iter().map(Ok).collect(),
        // The same failure for each.
        Err(e) => ran
            .iter()
            .map(|_| Err(candle_core::Error::Msg(e.to_string())))
            .collect::<Vec<_>>(),
    }
    .into_iter();
    for &i in &ran {
        let logits = logits.next().expect("logits for every sequence run");
        steps[i] = Some(members[i].generator.ran(logits, took));
    }
    steps
        .into_iter()
        .map(|s| s.expect("a step for every member"))
        .collect()
}
