//! `greve ask`: one prompt in, one reply out. The reply streams to stdout as
//! it is generated and nothing else goes there; notes and stats go to stderr.
//! It is a conversation of one turn, through the same code as `greve chat`.

use std::io::{Read, Write};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use super::reply::{self, speak};
use crate::conversation::{Conversation, Event, Turn};
use crate::exit::{Classify, Failure};
use crate::generate::Finish;
use crate::persona::{self, Mode, Wrapping};
use crate::settings::Settings;
use crate::structured::Format;

/// What `greve ask` was asked, besides the settings.
#[derive(Clone, Debug, Default)]
pub struct Request {
    /// The prompt's words; stdin when empty or `-`.
    pub prompt: Vec<String>,
    /// Print one JSON object instead of streaming text.
    pub json: bool,
    /// Token counts and speeds on stderr after the reply.
    pub stats: bool,
    /// The rendered prompt and its ids on stderr before the reply.
    pub verbose_prompt: bool,
    /// Whether the model thinks, and shows it on stderr as it goes.
    pub think: super::reply::Think,
    /// Results of the loaded conversation's last calls, answered instead
    /// of a prompt.
    pub tool_results: Vec<String>,
}

/// What the turn answers.
enum Input {
    Prompt(String),
    /// The results of the loaded conversation's last calls.
    Results(Vec<String>),
}

/// A conversation of one turn: `greve chat`'s, printed the same way.
pub fn run(settings: Settings, request: &Request, cancel: &AtomicBool) -> anyhow::Result<()> {
    let input = match request.tool_results.is_empty() {
        true => Input::Prompt(read_prompt(&request.prompt)?),
        false => Input::Results(request.tool_results.clone()),
    };
    let start = crate::conversation::start(settings)?;
    let (mode, seed) = (start.settings.strike.value, start.settings.seed.value);
    let structured =
        start.settings.format.value != Format::Text || start.settings.tools.must_call();
    // No model is needed, or even loaded, to go on strike.
    let notice = match &input {
        Input::Prompt(prompt) => persona::strike_notice(mode, &start.prompts, prompt, seed),
        Input::Results(_) => None,
    };
    if let Some(notice) = notice {
        match (structured, request.json) {
            (true, false) => eprintln!("{notice}"),
            (_, json) => print_notice(&notice, mode, seed, json)?,
        }
        return match structured {
            true => Err(reply::not_json(mode)),
            false => Ok(()),
        };
    }
    let save = start.settings.save.clone();
    let loading = Instant::now();
    let mut conversation = start.open()?;
    request.think.apply(&mut conversation.options);
    conversation.options.show_thinking &= !request.json;
    let load_time = loading.elapsed();

    let wrapping = conversation.wrapping();
    let send =
        |c: &mut Conversation, on_event: &mut dyn FnMut(Event) -> anyhow::Result<()>| match input {
            Input::Prompt(prompt) => c.send(prompt, cancel, on_event),
            Input::Results(results) => c.send_results(results, cancel, on_event),
        };
    let turn = crate::interrupt::stoppable(|| match request.json {
        true => speak(
            &mut conversation,
            &mut std::io::sink(),
            request.verbose_prompt,
            send,
        ),
        false => speak(
            &mut conversation,
            &mut std::io::stdout().lock(),
            request.verbose_prompt,
            send,
        ),
    })?;
    reply::report_dropped(&turn);
    if request.json {
        print_json(&conversation, &turn, &wrapping, load_time)?;
    }
    if let (true, Some(stats)) = (request.stats, &conversation.last) {
        eprintln!("{}", reply::stats_line(&conversation, stats, seed));
    }
    if let Some(path) = &save {
        conversation.transcript().save(path)?;
        conversation.save_context();
    }
    let options = &conversation.options;
    // A list of calls cut short leaves no text.
    let call = options.tools.may_call() && turn.text.is_empty();
    match turn.finish {
        Finish::Interrupted => Err(Failure::Interrupted.err("interrupted")),
        Finish::Length if structured || call => Err(Failure::Generation.err(format!(
            "the reply reached its limit of {} tokens before it was complete ({}), so none was printed; raise --max-tokens",
            conversation.last.map_or(0, |s| s.generated_tokens),
            if call { "a tool call" } else { options.format.name() }
        ))),
        _ => Ok(()),
    }
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

/// What `--json` reports about one answered prompt.
fn print_json(
    conversation: &Conversation,
    turn: &Turn,
    wrapping: &Wrapping,
    load_time: Duration,
) -> anyhow::Result<()> {
    let s = conversation.last.clone().unwrap_or_default();
    let value = serde_json::json!({
        "model": conversation.model_name(),
        "persona": conversation.options.mode.name(),
        "letterhead": wrapping.letterhead,
        "reply": turn.text,
        "reasoning": turn.reasoning,
        "tool_calls": turn.tool_calls.iter().map(reply::call_json).collect::<Vec<_>>(),
        "signoff": wrapping.signoff,
        "finish_reason": turn.finish,
        "prompt_tokens": s.prompt_tokens,
        "prefilled_tokens": s.prefilled_tokens(),
        "loaded_tokens": s.loaded_tokens,
        "generated_tokens": s.generated_tokens,
        "seed": conversation.options.seed,
        "load_ms": load_time.as_secs_f64() * 1e3,
        "ttft_ms": s.time_to_first_token.as_secs_f64() * 1e3,
        "cache_read_ms": s.cache_read_time.as_secs_f64() * 1e3,
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
