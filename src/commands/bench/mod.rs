//! `greve bench`: how fast this machine runs a model, measured through the
//! same generation loop as `ask`, on random prompt tokens (so a GGUF file
//! needs no tokenizer). Prints a small table, or JSON for scripts such as
//! `benches/bench-vs-llamacpp.py`.

mod parallel;

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::exit::Failure;
use crate::generate::{generate, Limits, Prompt, Stats};
use crate::model;
use crate::model::profile::{self, Part};
use crate::model::stock::Stock;
use crate::resolve;
use crate::sampler::{Sampler, SamplingParams};
use crate::settings::Settings;
use crate::structured::{Format, Grammar};

/// What to measure, as llama-bench's flags say it.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Prompt length, prefilled in one go (pp).
    pub prompt_tokens: usize,
    /// Tokens generated after the prompt (tg).
    pub gen_tokens: usize,
    /// Timed runs after the warm-up.
    pub repetitions: usize,
    /// Tokens already in the context for the second measurement (0: none).
    pub depth: usize,
    /// Also run candle-transformers' stock pipeline, alternating with greve.
    pub candle: bool,
    /// One more run whose decode is timed part by part.
    pub breakdown: bool,
    /// Streams decoded together, beside one alone (1: the plain bench).
    pub parallel: usize,
    pub json: bool,
}

pub fn run(settings: &Settings, args: &Plan, cancel: &AtomicBool) -> anyhow::Result<()> {
    if args.prompt_tokens == 0 {
        return Err(Failure::Usage.err("--prompt-tokens must be at least 1"));
    }
    let plain = args.depth == 0 && !args.candle && !args.breakdown;
    if args.parallel > 1 && !(plain && settings.format.value == Format::Text) {
        return Err(Failure::Usage.err(
            "--parallel measures plain streams: not with --depth, --baseline, --breakdown or a --format",
        ));
    }
    // The model as `ask` resolves it, without its tokenizer: the prompt is
    // random ids, so a bare GGUF will do.
    let files = crate::resolve::resolve_any(&settings.model.value, &settings.hub_options())?;
    let device = settings.device.value.open()?;
    let dtype = model::compute_dtype(&files, &device, settings.dtype);
    let loading = Instant::now();
    let mut transformer = model::load_transformer(&files, &device, dtype)?;
    let kv_type = settings.kv_cache.value;
    transformer.set_kv_type(kv_type);
    let load_s = loading.elapsed().as_secs_f64();
    let config = &transformer.config;
    if args.depth + args.prompt_tokens + args.gen_tokens > config.context_length {
        return Err(Failure::Usage.err(format!(
            "{} + {} + {} tokens (depth, prompt, generated) do not fit the model's context of {}",
            args.depth, args.prompt_tokens, args.gen_tokens, config.context_length
        )));
    }

    // Random ids past the three SentencePiece specials, the same every run.
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let vocab = config.vocab_size as u32;
    let mut random_tokens = |n| -> Vec<u32> {
        (0..n)
            .map(|_| rng.random_range(3.min(vocab - 1)..vocab))
            .collect()
    };
    let prompt = random_tokens(args.prompt_tokens);
    if args.parallel > 1 {
        // Each stream its own prompt, the first the plain bench's.
        let mut prompts = vec![prompt];
        prompts.extend((1..args.parallel).map(|_| random_tokens(args.prompt_tokens)));
        return parallel::bench(
            &mut transformer,
            kv_type,
            &files.name,
            &prompts,
            args,
            cancel,
        );
    }
    // At depth: the same prompt after `depth` other tokens, kept in the cache.
    let deep = [random_tokens(args.depth), prompt.clone()].concat();
    // With --format or --json-schema, each token is masked as in `ask`
    // (the vocabulary comes from the model's tokenizer), to measure what
    // the mask costs.
    // A finished value allows only the end of the reply, which then stops it.
    let (grammar, stop) = match settings.format.value {
        Format::Text => (None, vec![]),
        ref format => {
            let tokenizer =
                resolve::open_tokenizer(&settings.model.value, &settings.hub_options())?;
            (Grammar::new(format, &tokenizer)?, vec![tokenizer.eos()])
        }
    };
    let run_with = |transformer: &mut model::transformer::Transformer,
                    prompt: &[u32],
                    reuse: usize,
                    gen: usize,
                    on_token: &mut dyn FnMut(u32) -> anyhow::Result<()>| {
        let mut constraint = grammar.as_ref().map(Grammar::start).transpose()?;
        let mut limits = Limits {
            max_tokens: gen,
            stop: &stop,
            grammar: constraint.as_mut(),
        };
        let mut sampler = Sampler::new(SamplingParams::greedy(), 0);
        let prompt = Prompt {
            tokens: prompt,
            reuse,
            checkpoint: 0,
        };
        generate(
            transformer,
            prompt,
            &mut sampler,
            &mut limits,
            cancel,
            on_token,
        )
        .map(|g| g.stats)
    };
    let run_once =
        |transformer: &mut model::transformer::Transformer,
         prompt: &[u32],
         reuse: usize,
         gen: usize| { run_with(transformer, prompt, reuse, gen, &mut |_| Ok(())) };

    // Warm-up: fault the weights in and start the thread pools.
    transformer.reserve(args.prompt_tokens + args.gen_tokens);
    run_once(&mut transformer, &prompt[..prompt.len().min(8)], 0, 2)?;
    // The long context is filled once and kept aside between its runs.
    let mut deep_context = transformer.new_context(kv_type);
    if args.depth > 0 {
        transformer.swap_context(&mut deep_context);
        transformer.reserve(deep.len() + args.gen_tokens);
        run_once(&mut transformer, &deep[..args.depth], 0, 0)?;
        transformer.swap_context(&mut deep_context);
    }
    let mut stock = match args.candle {
        true => {
            let mut stock = Stock::load(&files, &device, dtype)?;
            stock_run(&mut stock, &prompt[..prompt.len().min(8)], 2, cancel)?;
            Some(stock)
        }
        false => None,
    };
    let (mut runs, mut deep_runs, mut stock_runs) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.repetitions.max(1) {
        runs.push(run_once(&mut transformer, &prompt, 0, args.gen_tokens)?);
        if let Some(stock) = &mut stock {
            stock_runs.push(stock_run(stock, &prompt, args.gen_tokens, cancel)?);
        }
        if args.depth > 0 {
            transformer.swap_context(&mut deep_context);
            let run = run_once(&mut transformer, &deep, args.depth, args.gen_tokens);
            transformer.swap_context(&mut deep_context);
            deep_runs.push(run?);
        }
    }
    // One more run whose decode is timed part by part (and with a depth,
    // one more after it): the timing starts with the first sampled token,
    // after the prefill.
    let timed_run = |transformer: &mut model::transformer::Transformer,
                     prompt: &[u32],
                     reuse: usize|
     -> anyhow::Result<Breakdown> {
        let mut started = false;
        let stats = run_with(transformer, prompt, reuse, args.gen_tokens, &mut |_| {
            if !started {
                profile::set(true);
                started = true;
            }
            Ok(())
        });
        let spent = profile::spent();
        profile::set(false);
        Ok(Breakdown::new(&stats?, spent))
    };
    let (breakdown, deep_breakdown) = match args.breakdown {
        true => {
            let plain = timed_run(&mut transformer, &prompt, 0)?;
            let deep = match args.depth > 0 {
                true => {
                    transformer.swap_context(&mut deep_context);
                    let run = timed_run(&mut transformer, &deep, args.depth);
                    transformer.swap_context(&mut deep_context);
                    Some(run?)
                }
                false => None,
            };
            (Some(plain), deep)
        }
        false => (None, None),
    };
    let each = |runs: &[Stats], figure: fn(&Stats) -> f64| -> Vec<f64> {
        runs.iter().map(figure).collect()
    };
    let (pp, tg) = (
        each(&runs, Stats::prefill_tokens_per_second),
        each(&runs, Stats::decode_tokens_per_second),
    );
    let (deep_pp, deep_tg) = (
        each(&deep_runs, Stats::prefill_tokens_per_second),
        each(&deep_runs, Stats::decode_tokens_per_second),
    );
    let ratios: Vec<f64> = deep_tg.iter().zip(&tg).map(|(d, s)| d / s).collect();
    let ttft = each(&runs, |s| s.time_to_first_token.as_secs_f64());
    let candle = (!stock_runs.is_empty()).then(|| {
        let (stock_pp, stock_tg) = (
            each(&stock_runs, Stats::prefill_tokens_per_second),
            each(&stock_runs, Stats::decode_tokens_per_second),
        );
        let over =
            |a: &[f64], b: &[f64]| -> Vec<f64> { a.iter().zip(b).map(|(a, b)| a / b).collect() };
        Baseline {
            engine: "candle-transformers",
            prefill_tok_s: mean(&stock_pp),
            decode_tok_s: mean(&stock_tg),
            prefill_ratio: mean(&over(&pp, &stock_pp)),
            decode_ratio: mean(&over(&tg, &stock_tg)),
        }
    });
    let report = Report {
        model: files.name.clone(),
        format: settings.format.value.name(),
        threads: threads(),
        prompt_tokens: args.prompt_tokens,
        gen_tokens: args.gen_tokens,
        repetitions: runs.len(),
        load_s,
        prefill_tok_s: mean(&pp),
        prefill_tok_s_sd: sd(&pp),
        decode_tok_s: mean(&tg),
        decode_tok_s_sd: sd(&tg),
        ttft_s: mean(&ttft),
        at_depth: (args.depth > 0).then(|| AtDepth {
            depth: args.depth,
            prefill_tok_s: mean(&deep_pp),
            prefill_tok_s_sd: sd(&deep_pp),
            decode_tok_s: mean(&deep_tg),
            decode_tok_s_sd: sd(&deep_tg),
            decode_ratio: mean(&ratios),
            decode_ratio_sd: sd(&ratios),
            breakdown: deep_breakdown,
        }),
        baseline: candle,
        breakdown,
        peak_rss_mib: crate::system::peak_rss().map(|b| b as f64 / (1 << 20) as f64),
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        report.print();
    }
    Ok(())
}

#[derive(serde::Serialize)]
struct Report {
    model: String,
    format: &'static str,
    threads: usize,
    prompt_tokens: usize,
    gen_tokens: usize,
    repetitions: usize,
    load_s: f64,
    prefill_tok_s: f64,
    prefill_tok_s_sd: f64,
    decode_tok_s: f64,
    decode_tok_s_sd: f64,
    ttft_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    at_depth: Option<AtDepth>,
    #[serde(skip_serializing_if = "Option::is_none")]
    baseline: Option<Baseline>,
    #[serde(skip_serializing_if = "Option::is_none")]
    breakdown: Option<Breakdown>,
    peak_rss_mib: Option<f64>,
}

/// Where a decoded token's time went, in one more run.
#[derive(serde::Serialize)]
struct Breakdown {
    /// Milliseconds per decoded token, in all.
    token_ms: f64,
    /// Each part's, the rest (norms, rope, the sampler, threads waiting
    /// between products) last.
    parts: Vec<PartTime>,
}

#[derive(serde::Serialize)]
struct PartTime {
    part: &'static str,
    ms: f64,
    share: f64,
}

impl Breakdown {
    fn new(stats: &Stats, spent: [std::time::Duration; 4]) -> Self {
        let steps = stats.decode_steps.max(1) as f64;
        let token_ms = stats.decode_time.as_secs_f64() * 1e3 / steps;
        let mut parts: Vec<(&'static str, f64)> = Part::ALL
            .iter()
            .zip(spent)
            .map(|(part, t)| (part.name(), t.as_secs_f64() * 1e3 / steps))
            .collect();
        let timed: f64 = parts.iter().map(|p| p.1).sum();
        parts.push(("the rest", (token_ms - timed).max(0.0)));
        let parts = parts
            .into_iter()
            .map(|(part, ms)| PartTime {
                part,
                ms,
                share: ms / token_ms.max(f64::MIN_POSITIVE),
            })
            .collect();
        Breakdown { token_ms, parts }
    }

    fn print(&self, at: &str) {
        println!("decode      {:.1} ms a token{at}:", self.token_ms);
        for p in &self.parts {
            println!(
                "  {:<16} {:>7.2} ms {:>5.1} %",
                p.part,
                p.ms,
                p.share * 100.0
            );
        }
    }
}

/// Another engine on the same file and tokens, run by run after greve's.
#[derive(serde::Serialize)]
struct Baseline {
    engine: &'static str,
    prefill_tok_s: f64,
    decode_tok_s: f64,
    /// greve's speed over the baseline's, run by run.
    prefill_ratio: f64,
    decode_ratio: f64,
}

/// The same prompt and generation after `depth` tokens of context.
#[derive(serde::Serialize)]
struct AtDepth {
    depth: usize,
    prefill_tok_s: f64,
    prefill_tok_s_sd: f64,
    decode_tok_s: f64,
    decode_tok_s_sd: f64,
    /// Decode speed at depth over the plain run's, run by run.
    decode_ratio: f64,
    decode_ratio_sd: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    breakdown: Option<Breakdown>,
}

impl Report {
    fn print(&self) {
        println!("model       {}", self.model);
        if self.format != "text" {
            println!("format      {} (every token masked)", self.format);
        }
        println!(
            "threads     {}, {} repetitions",
            self.threads, self.repetitions
        );
        println!("load        {:.2} s", self.load_s);
        println!(
            "pp{:<8} {:.2} ± {:.2} tokens/s",
            self.prompt_tokens, self.prefill_tok_s, self.prefill_tok_s_sd
        );
        println!(
            "tg{:<8} {:.2} ± {:.2} tokens/s",
            self.gen_tokens, self.decode_tok_s, self.decode_tok_s_sd
        );
        println!("ttft        {:.2} s", self.ttft_s);
        if let Some(d) = &self.at_depth {
            let at = format!("@ d{}", d.depth);
            println!(
                "pp{:<8} {:.2} ± {:.2} tokens/s {at}",
                self.prompt_tokens, d.prefill_tok_s, d.prefill_tok_s_sd
            );
            println!(
                "tg{:<8} {:.2} ± {:.2} tokens/s {at}: {:.2} ± {:.2} × the plain run's",
                self.gen_tokens,
                d.decode_tok_s,
                d.decode_tok_s_sd,
                d.decode_ratio,
                d.decode_ratio_sd
            );
        }
        if let Some(b) = &self.baseline {
            println!(
                "{}  pp{} {:.2} tokens/s, tg{} {:.2} tokens/s: greve {:.2}× and {:.2}× as fast",
                b.engine,
                self.prompt_tokens,
                b.prefill_tok_s,
                self.gen_tokens,
                b.decode_tok_s,
                b.prefill_ratio,
                b.decode_ratio
            );
        }
        if let Some(b) = &self.breakdown {
            b.print("");
        }
        if let Some(d) = &self.at_depth {
            if let Some(b) = &d.breakdown {
                b.print(&format!(" @ d{}", d.depth));
            }
        }
        if let Some(rss) = self.peak_rss_mib {
            println!("peak RSS    {rss:.0} MiB");
        }
    }
}

/// The stock pipeline's prefill of `prompt` and `gen` greedy tokens after
/// it, timed as `generate` times greve's.
fn stock_run(
    stock: &mut Stock,
    prompt: &[u32],
    gen: usize,
    cancel: &AtomicBool,
) -> anyhow::Result<Stats> {
    let failed = |e: anyhow::Error| Failure::Generation.err(format!("candle-transformers: {e}"));
    stock.clear();
    let start = Instant::now();
    let mut logits = stock.forward(prompt, 0).map_err(failed)?;
    let mut stats = Stats {
        prompt_tokens: prompt.len(),
        prefill_time: start.elapsed(),
        generated_tokens: gen,
        ..Stats::default()
    };
    for step in 1..gen {
        if cancel.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(Failure::Interrupted.err("interrupted"));
        }
        let token = crate::sampler::argmax(&logits);
        let timed = Instant::now();
        logits = stock
            .forward(&[token], prompt.len() + step - 1)
            .map_err(failed)?;
        stats.decode_time += timed.elapsed();
        stats.decode_steps += 1;
    }
    Ok(stats)
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len().max(1) as f64
}

/// Sample standard deviation; 0 for a single run.
fn sd(xs: &[f64]) -> f64 {
    if xs.len() < 2 {
        return 0.0;
    }
    let m = mean(xs);
    (xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (xs.len() - 1) as f64).sqrt()
}

/// The threads candle's kernels use: `RAYON_NUM_THREADS` (set from
/// `--threads`), else every core.
fn threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(crate::system::cores)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_of_runs() {
        assert_eq!(mean(&[1.0, 2.0, 3.0]), 2.0);
        assert_eq!(sd(&[1.0, 2.0, 3.0]), 1.0);
        assert_eq!(sd(&[5.0]), 0.0);
    }
}
