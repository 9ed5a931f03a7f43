//! `greve bench --parallel N`: N streams arriving at once and decoded
//! together, as `greve serve` runs concurrent requests (what llama.cpp's
//! `llama-batched-bench` measures), beside one stream alone, in the same
//! run: their ratio is what batching buys on this machine.

use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use crate::batch::{self, Member};
use crate::generate::{Generator, Limits, Prompt, Step};
use crate::model::attention::KvType;
use crate::model::transformer::{Context, Transformer};
use crate::sampler::{Sampler, SamplingParams};

/// What one run of some streams measured.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Run {
    pub streams: usize,
    /// Tokens a second, all streams together, over the steps in which every
    /// stream decoded.
    pub aggregate_tok_s: f64,
    /// The same, per stream.
    pub per_stream_tok_s: f64,
    /// From the start, when every prompt arrived, to each stream's first
    /// token: the mean and the longest.
    pub ttft_mean_s: f64,
    pub ttft_max_s: f64,
    /// The longest wait of a stream between two of its tokens, in steps of
    /// all streams decoding (the median one's time): what a prompt read
    /// beside the others costs them.
    pub longest_gap_steps: f64,
}

/// One stream: its generation and KV cache, and when its tokens came.
struct Stream {
    generator: Generator,
    context: Context,
    sampler: Sampler,
    first: Option<Duration>,
    last: Option<Duration>,
    longest_gap: Duration,
    done: bool,
}

/// Runs `prompts` together, `gen` greedy tokens each (no stop token), from
/// empty KV caches of `kind`.
pub fn run(
    transformer: &mut Transformer,
    kind: KvType,
    prompts: &[Vec<u32>],
    gen: usize,
    cancel: &AtomicBool,
) -> anyhow::Result<Run> {
    let start = Instant::now();
    let mut streams: Vec<Stream> = prompts
        .iter()
        .map(|tokens| {
            let mut context = transformer.new_context(kind);
            transformer.swap_context(&mut context);
            let prompt = Prompt {
                tokens,
                reuse: 0,
                checkpoint: 0,
            };
            let generator = Generator::new(transformer, prompt);
            transformer.swap_context(&mut context);
            Stream {
                generator,
                context,
                sampler: Sampler::new(SamplingParams::greedy(), 0),
                first: None,
                last: None,
                longest_gap: Duration::ZERO,
                done: false,
            }
        })
        .collect();
    // The steps in which every stream decoded: their times and tokens.
    let (mut full_steps, mut full_tokens) = (Vec::new(), 0);
    while streams.iter().any(|s| !s.done) {
        // A step counts as decoding only when every stream was past its
        // prompt before it: the one that reads a prompt's last piece
        // samples a first token too.
        let started = streams.iter().all(|s| s.first.is_some());
        let took = Instant::now();
        let mut members: Vec<Member> = streams
            .iter_mut()
            .filter(|s| !s.done)
            .map(|s| Member {
                generator: &mut s.generator,
                context: &mut s.context,
                max_tokens: gen,
                cancel,
            })
            .collect();
        let steps = batch::step(transformer, &mut members);
        drop(members);
        let mut tokens = 0;
        for (s, step) in streams.iter_mut().filter(|s| !s.done).zip(steps) {
            let mut limits = Limits {
                max_tokens: gen,
                stop: &[],
                grammar: None,
            };
            let step = match step? {
                None => s.generator.sample(&mut s.sampler, &mut limits, cancel)?,
                Some(step) => step,
            };
            match step {
                Step::Token(_) => {
                    let now = start.elapsed();
                    s.first.get_or_insert(now);
                    if let Some(last) = s.last {
                        s.longest_gap = s.longest_gap.max(now - last);
                    }
                    s.last = Some(now);
                    tokens += 1;
                }
                Step::Done(_) => s.done = true,
                Step::Prefilled | Step::Waiting => {}
            }
        }
        if started && tokens == prompts.len() {
            full_steps.push(took.elapsed());
            full_tokens += tokens;
        }
    }
    let full_time: Duration = full_steps.iter().sum();
    full_steps.sort();
    let median = full_steps.get(full_steps.len() / 2).copied();
    let ttft: Vec<f64> = streams
        .iter()
        .map(|s| s.first.unwrap_or_default().as_secs_f64())
        .collect();
    let aggregate = full_tokens as f64 / full_time.as_secs_f64().max(f64::MIN_POSITIVE);
    let longest = streams
        .iter()
        .map(|s| s.longest_gap)
        .max()
        .unwrap_or_default();
    Ok(Run {
        streams: prompts.len(),
        aggregate_tok_s: aggregate,
        per_stream_tok_s: aggregate / prompts.len() as f64,
        ttft_mean_s: ttft.iter().sum::<f64>() / ttft.len().max(1) as f64,
        ttft_max_s: ttft.iter().copied().fold(0.0, f64::max),
        longest_gap_steps: median.map_or(0.0, |m| {
            longest.as_secs_f64() / m.as_secs_f64().max(f64::MIN_POSITIVE)
        }),
    })
}

/// The runs of one stream and of N, alternated, and what N bought.
#[derive(serde::Serialize)]
struct Report {
    pub model: String,
    pub threads: usize,
    pub prompt_tokens: usize,
    pub gen_tokens: usize,
    pub repetitions: usize,
    pub one: Run,
    pub together: Run,
    /// The streams' aggregate decode over one stream's, run by run.
    pub aggregate_ratio: f64,
    pub aggregate_ratio_sd: f64,
}

/// `greve bench --parallel`: a warm-up, the runs, their report printed.
pub fn bench(
    transformer: &mut Transformer,
    kind: KvType,
    model: &str,
    prompts: &[Vec<u32>],
    plan: &super::Plan,
    cancel: &AtomicBool,
) -> anyhow::Result<()> {
    transformer.reserve(plan.prompt_tokens + plan.gen_tokens);
    run(transformer, kind, &prompts[..1], 2, cancel)?;
    let (one, together, ratios) = measure(
        transformer,
        kind,
        prompts,
        plan.gen_tokens,
        plan.repetitions,
        cancel,
    )?;
    let report = Report {
        model: model.to_string(),
        threads: super::threads(),
        prompt_tokens: plan.prompt_tokens,
        gen_tokens: plan.gen_tokens,
        repetitions: ratios.len(),
        one,
        together,
        aggregate_ratio: super::mean(&ratios),
        aggregate_ratio_sd: super::sd(&ratios),
    };
    match plan.json {
        true => println!("{}", serde_json::to_string(&report)?),
        false => report.print(),
    }
    Ok(())
}

/// Alternates one stream (the first prompt) and all of `prompts`,
/// `repetitions` times, and averages each figure.
fn measure(
    transformer: &mut Transformer,
    kind: KvType,
    prompts: &[Vec<u32>],
    gen: usize,
    repetitions: usize,
    cancel: &AtomicBool,
) -> anyhow::Result<(Run, Run, Vec<f64>)> {
    let (mut ones, mut togethers) = (Vec::new(), Vec::new());
    for _ in 0..repetitions.max(1) {
        ones.push(run(transformer, kind, &prompts[..1], gen, cancel)?);
        togethers.push(run(transformer, kind, prompts, gen, cancel)?);
    }
    let ratios = ones
        .iter()
        .zip(&togethers)
        .map(|(o, t)| t.aggregate_tok_s / o.aggregate_tok_s)
        .collect();
    Ok((average(&ones), average(&togethers), ratios))
}

fn average(runs: &[Run]) -> Run {
    let mean = |f: fn(&Run) -> f64| super::mean(&runs.iter().map(f).collect::<Vec<_>>());
    Run {
        streams: runs[0].streams,
        aggregate_tok_s: mean(|r| r.aggregate_tok_s),
        per_stream_tok_s: mean(|r| r.per_stream_tok_s),
        ttft_mean_s: mean(|r| r.ttft_mean_s),
        ttft_max_s: mean(|r| r.ttft_max_s),
        longest_gap_steps: mean(|r| r.longest_gap_steps),
    }
}

impl Report {
    fn print(&self) {
        println!(
            "{}: {} threads, prompts of {} tokens arriving at once, {} tokens each, {} runs",
            self.model, self.threads, self.prompt_tokens, self.gen_tokens, self.repetitions
        );
        println!(
            "{:>8} {:>16} {:>12} {:>18} {:>20}",
            "streams", "aggregate tok/s", "per stream", "first token mean", "longest gap, steps"
        );
        for r in [&self.one, &self.together] {
            println!(
                "{:>8} {:>16.2} {:>12.2} {:>16.2} s {:>20.1}",
                r.streams,
                r.aggregate_tok_s,
                r.per_stream_tok_s,
                r.ttft_mean_s,
                r.longest_gap_steps
            );
        }
        println!(
            "{} streams decode {:.2}× ± {:.2} one stream's tokens a second, in all",
            self.together.streams, self.aggregate_ratio, self.aggregate_ratio_sd
        );
    }
}
