//! `greve ask`: one prompt in, one reply out. The reply streams to stdout as
//! it is generated and nothing else goes there; notes and stats go to stderr.

use std::io::{Read, Write};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use crate::chat::fit_window;
use crate::cli::AskArgs;
use crate::exit::{Classify, Failure};
use crate::generate::{generate, Finish, Generation, Limits};
use crate::model::Model;
use crate::persona::{self, Mode, Prompts, Wrapping};
use crate::sampler::Sampler;
use crate::settings;
use crate::template::{self, Message, Role};
use crate::tokenizer::StreamDecoder;
use crate::transcript::Transcript;

pub fn run(args: &AskArgs, cancel: &AtomicBool) -> anyhow::Result<()> {
    let prompt = read_prompt(&args.prompt)?;
    let seed = settings::seed(&args.sampling);
    // A saved conversation brings its system prompt and persona; flags win.
    let transcript = args.load.as_deref().map(Transcript::load).transpose()?;
    let persona_flag = args.persona.strike.is_some() || args.persona.no_strike;
    let mode = match transcript.as_ref().map(|t| &t.persona) {
        Some(Some(name)) if !persona_flag => {
            name.parse().map_err(|e: String| Failure::Usage.err(e))?
        }
        Some(None) if !persona_flag => Mode::Off,
        _ => settings::strike_mode(&args.persona),
    };
    let prompts = Prompts::load(&settings::prompt_folders(&args.persona)?)?;
    if mode.strikes(seed) {
        // No model is needed, or even loaded, to go on strike.
        let notice = persona::notice(
            &prompts,
            &prompt,
            &persona::french_date(persona::today()),
            seed,
        );
        return print_notice(&notice, mode, seed, args.json);
    }
    let user_system = match settings::user_system(&args.system)? {
        Some(text) => Some(text),
        None => transcript.as_ref().and_then(|t| t.system.clone()),
    };
    let system = persona::system_prompt(mode, args.persona.safe, user_system.as_deref(), &prompts);
    let wrapping = persona::wrapping(mode, seed, &prompts);
    let mut messages = transcript.map(|t| t.messages).unwrap_or_default();
    if messages.last().is_some_and(|m| m.role == Role::User) {
        // The saved conversation ended unanswered: the new prompt replaces that turn.
        messages.pop();
    }
    messages.push(Message::user(prompt));

    let loading = Instant::now();
    let mut model = settings::open_model(&args.model)?;
    let load_time = loading.elapsed();

    let context = model.transformer.config.context_length;
    let format = model.tokenizer.format();
    let render = |window: &[Message]| template::render(format, system.as_deref(), window);
    let measure = |window: &[Message]| model.tokenizer.encode_pieces(&render(window)?);
    let reserve = args
        .sampling
        .max_tokens
        .unwrap_or(context / 8)
        .min(context / 2);
    let (first, ids) = fit_window(&messages, 0, context - reserve, measure, cancel)?;
    if first > 0 {
        crate::messages::warn(format!("the oldest {first} messages of the conversation do not fit the context and were left out"));
    }
    if args.verbose_prompt {
        eprintln!("{}", template::to_text(&render(&messages[first..])?));
        eprintln!("{}", join(&ids));
    }
    if ids.len() >= context {
        return Err(Failure::Usage.err(format!(
            "the prompt is {} tokens but {} holds {context} tokens of context, reply included; shorten the prompt",
            ids.len(),
            model.name
        )));
    }

    let params = settings::sampling_params(&args.sampling, &model.defaults);
    let mut sampler = Sampler::new(params, seed);
    let mut stop = model.defaults.eos_token_id.clone();
    stop.push(model.tokenizer.eos());
    let limits = Limits {
        max_tokens: settings::max_tokens(&args.sampling, &model.defaults, ids.len(), context),
        stop: &stop,
    };

    let generation = if args.json {
        generate(
            &mut model.transformer,
            &ids,
            0,
            &mut sampler,
            &limits,
            cancel,
            |_| Ok(()),
        )?
    } else {
        stream(&mut model, &ids, &mut sampler, &limits, cancel, &wrapping)?
    };
    let reply = model.tokenizer.decode(&generation.tokens)?;
    if args.json {
        let run = Run {
            model: &model,
            generation: &generation,
            reply: &reply,
            seed,
            load_time,
            mode,
            wrapping: &wrapping,
        };
        print_json(&run)?;
    }
    if args.stats {
        print_stats(&generation, seed);
    }
    if let Some(path) = &args.save {
        if !reply.trim().is_empty() {
            messages.push(Message::assistant(reply.clone()));
        }
        let transcript = Transcript {
            system: user_system,
            persona: (mode != Mode::Off).then(|| mode.name().to_string()),
            messages,
        };
        transcript.save(path)?;
    }
    if generation.finish == Finish::Interrupted {
        return Err(Failure::Interrupted.err("interrupted"));
    }
    Ok(())
}

/// Generates while printing each piece of text as soon as it is complete.
/// The persona's letterhead and sign-off go around the reply.
fn stream(
    model: &mut Model,
    ids: &[u32],
    sampler: &mut Sampler,
    limits: &Limits,
    cancel: &AtomicBool,
    wrapping: &Wrapping,
) -> anyhow::Result<Generation> {
    let mut out = std::io::stdout().lock();
    if let Some(letterhead) = &wrapping.letterhead {
        let letterhead =
            crate::messages::for_stdout(letterhead, crate::messages::letterhead_style());
        write!(out, "{letterhead}\n\n")?;
        out.flush()?;
    }
    let mut decoder = StreamDecoder::default();
    let tokenizer = &model.tokenizer;
    let generation = generate(
        &mut model.transformer,
        ids,
        0,
        sampler,
        limits,
        cancel,
        |token| {
            if let Some(text) = decoder.push(tokenizer, token)? {
                out.write_all(text.as_bytes())?;
                out.flush()?;
            }
            Ok(())
        },
    )?;
    if let Some(text) = decoder.finish(tokenizer)? {
        out.write_all(text.as_bytes())?;
    }
    out.write_all(b"\n")?;
    if let Some(signoff) = &wrapping.signoff {
        let signoff = crate::messages::for_stdout(signoff, crate::messages::signoff_style());
        write!(out, "\n{signoff}\n")?;
    }
    out.flush()?;
    Ok(generation)
}

/// The prompt from the arguments, or stdin when there are none or the only
/// one is `-`. Trailing whitespace (the newline of `echo`) is dropped.
fn read_prompt(args: &[String]) -> anyhow::Result<String> {
    let text = if args.is_empty() || args == ["-"] {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .classify(Failure::Usage, || {
                "cannot read the prompt from stdin".into()
            })?;
        String::from_utf8(bytes).map_err(|e| {
            Failure::Usage.err(format!(
                "the prompt on stdin is not valid UTF-8 (at byte {}); convert it, e.g. with iconv -t UTF-8",
                e.utf8_error().valid_up_to()
            ))
        })?
    } else {
        args.join(" ")
    };
    let text = text.trim_end().to_string();
    if text.trim().is_empty() {
        return Err(Failure::Usage
            .err("the prompt is empty: write it after `greve ask`, or pipe it on stdin"));
    }
    Ok(text)
}

fn join(ids: &[u32]) -> String {
    ids.iter().map(u32::to_string).collect::<Vec<_>>().join(" ")
}

fn print_stats(g: &Generation, seed: u64) {
    let s = &g.stats;
    eprintln!(
        "prompt: {} tokens, {:.1} tokens/s | reply: {} tokens, {:.1} tokens/s | first token after {:.0} ms | seed {seed}",
        s.prompt_tokens,
        s.prefill_tokens_per_second(),
        s.generated_tokens,
        s.decode_tokens_per_second(),
        s.time_to_first_token.as_secs_f64() * 1e3,
    );
}

/// What `--json` reports about one answered prompt.
struct Run<'a> {
    model: &'a Model,
    generation: &'a Generation,
    reply: &'a str,
    seed: u64,
    load_time: std::time::Duration,
    mode: Mode,
    wrapping: &'a Wrapping,
}

fn print_json(run: &Run) -> anyhow::Result<()> {
    let s = &run.generation.stats;
    let value = serde_json::json!({
        "model": run.model.name,
        "persona": run.mode.name(),
        "letterhead": run.wrapping.letterhead,
        "reply": run.reply,
        "signoff": run.wrapping.signoff,
        "finish_reason": run.generation.finish,
        "prompt_tokens": s.prompt_tokens,
        "generated_tokens": s.generated_tokens,
        "seed": run.seed,
        "load_ms": run.load_time.as_secs_f64() * 1e3,
        "ttft_ms": s.time_to_first_token.as_secs_f64() * 1e3,
        "prefill_tok_s": s.prefill_tokens_per_second(),
        "decode_tok_s": s.decode_tokens_per_second(),
    });
    print_line(&value.to_string())
}

/// The strike notice, in place of a reply.
fn print_notice(notice: &str, mode: Mode, seed: u64, json: bool) -> anyhow::Result<()> {
    if json {
        let value = serde_json::json!({
            "persona": mode.name(),
            "notice": notice,
            "reply": null,
            "finish_reason": "strike",
            "seed": seed,
        });
        print_line(&value.to_string())
    } else {
        print_line(notice)
    }
}

fn print_line(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")?;
    out.flush()?;
    Ok(())
}
