//! What `greve ask` and `greve chat` share: a conversation started from the
//! settings, and the printer of its replies.

use std::io::Write;

use crate::conversation::{Conversation, Event, Options, Turn};
use crate::exit::Failure;
use crate::generate::{Finish, Stats};
use crate::messages;
use crate::persona;
use crate::structured::Format;
use crate::template::ToolCall;

/// Prints one reply to `out` as it streams, with the persona's letterhead
/// and sign-off around its answer; a strike notice comes whole. A JSON
/// reply (`--format`, `--json-schema`) comes alone and only once complete,
/// so a reply cut short is never printed as if it were valid. The model's
/// thinking goes to stderr, dimmed, when the options show it: `out` has
/// the answer alone. With `show_prompt`, the prompt's text and ids go to
/// stderr first.
pub fn speak(
    conversation: &mut Conversation,
    out: &mut impl Write,
    show_prompt: bool,
    answer: impl FnOnce(
        &mut Conversation,
        &mut dyn FnMut(Event) -> anyhow::Result<()>,
    ) -> anyhow::Result<Turn>,
) -> anyhow::Result<Turn> {
    let o = &conversation.options;
    let structured = o.format != Format::Text || o.tools.must_call();
    let show_thinking = o.show_thinking;
    let wrapping = conversation.wrapping();
    // The letterhead heads the answer, after the thinking.
    let mut letterhead = wrapping.letterhead.clone();
    let mut thinking = Thinking {
        shown: show_thinking,
        count: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        tokens: 0,
    };
    let mut head = |out: &mut dyn Write, thinking: &mut Thinking| -> anyhow::Result<()> {
        thinking.end();
        if let Some(letterhead) = letterhead.take() {
            let letterhead = messages::for_stdout(&letterhead, messages::letterhead_style());
            write!(out, "{letterhead}\n\n")?;
        }
        Ok(())
    };
    let mut on_event = |event: Event| -> anyhow::Result<()> {
        match event {
            Event::Prompt { text, ids } => {
                if show_prompt {
                    let ids: Vec<String> = ids.iter().map(u32::to_string).collect();
                    eprintln!("{text}\n{}", ids.join(" "));
                }
            }
            Event::Thinking(text) => thinking.push(&text),
            Event::Text(text) if !structured => {
                head(out, &mut thinking)?;
                out.write_all(text.as_bytes())?;
                out.flush()?;
            }
            Event::Text(_) => {}
        }
        Ok(())
    };
    let turn = answer(conversation, &mut on_event)?;
    if !turn.notice {
        head(out, &mut thinking)?;
    }
    if !turn.tool_calls.is_empty() {
        for call in &turn.tool_calls {
            writeln!(out, "{}", call_json(call))?;
        }
        out.flush()?;
        return Ok(turn);
    }
    if turn.notice && structured {
        eprintln!("{}", turn.text);
        return Err(not_json(conversation.options.mode));
    }
    if turn.notice || structured {
        if turn.notice || turn.finish == Finish::Stop {
            writeln!(out, "{}", turn.text)?;
        }
    } else {
        writeln!(out)?;
    }
    if let (false, Some(signoff)) = (turn.notice, &wrapping.signoff) {
        let signoff = messages::for_stdout(signoff, messages::signoff_style());
        writeln!(out, "\n{signoff}")?;
    }
    out.flush()?;
    Ok(turn)
}

/// The model's thinking on stderr as it streams: the text, dimmed, or on
/// a terminal a one-line count of its tokens.
struct Thinking {
    shown: bool,
    count: bool,
    tokens: usize,
}

impl Thinking {
    /// One token of thinking (its text empty while a character is
    /// incomplete).
    fn push(&mut self, text: &str) {
        self.tokens += 1;
        let style = messages::thinking_style();
        if self.shown {
            anstream::eprint!("{style}{text}{style:#}");
        } else if self.count {
            anstream::eprint!("\r{style}thinking… {} tokens{style:#}", self.tokens);
        }
    }

    /// The answer begins: the thinking's line ends.
    fn end(&mut self) {
        let tokens = std::mem::take(&mut self.tokens);
        if tokens == 0 {
            return;
        }
        if self.shown {
            eprintln!();
        } else if self.count {
            let style = messages::thinking_style();
            anstream::eprintln!("\r{style}thought for {tokens} tokens{style:#}");
        }
    }
}

/// What `--think` and `/think` ask of a model that reasons: to think (`on`)
/// or not (`off`: its reasoning prompt is left out, and JSON or calls may
/// not follow thinking), and to show the thinking (`show`, dimmed on
/// stderr) or only count it (`hide`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Think {
    On,
    Off,
    Show,
    #[default]
    Hide,
}

impl Think {
    pub fn apply(self, o: &mut Options) {
        match self {
            Think::On => o.think = true,
            Think::Off => o.think = false,
            Think::Show => (o.think, o.show_thinking) = (true, true),
            Think::Hide => o.show_thinking = false,
        }
    }
}

/// A call as `greve ask` prints it: one line of JSON, its arguments an
/// object (OpenAI's API sends them as a string).
pub fn call_json(call: &ToolCall) -> serde_json::Value {
    let arguments: serde_json::Value =
        serde_json::from_str(&call.arguments).unwrap_or_else(|_| call.arguments.clone().into());
    serde_json::json!({"id": call.id, "name": call.name, "arguments": arguments})
}

/// A strike notice where JSON or a call was asked for: the notice goes to
/// stderr.
pub fn not_json(mode: persona::Mode) -> anyhow::Error {
    Failure::Generation.err(format!(
        "on strike ({}): the notice above is no JSON and calls no tool; --strike=off (in a chat, /strike off) to get some",
        mode.name()
    ))
}

/// Says when the oldest messages left the model's window to make room.
pub fn report_dropped(turn: &Turn) {
    if turn.dropped > 0 {
        messages::warn(format!(
            "the oldest {} messages left the model's context window (still in the transcript)",
            turn.dropped
        ));
    }
}

/// One line on a reply's speed: `--stats` and `/stats`. A remote
/// server's prefill is not seen from here: its counts are the server's.
pub fn stats_line(conversation: &Conversation, s: &Stats, seed: u64) -> String {
    if conversation.local().is_none() {
        // A server that sends no usage leaves the prompt's size unknown.
        let prompt = match s.prompt_tokens {
            0 => "prompt size not reported by the server".to_string(),
            n => format!(
                "prompt {n} tokens ({} cached by the server; its prefill speed is not known here)",
                s.reused_tokens
            ),
        };
        return format!(
            "{prompt} | reply {} tokens, {:.1} tokens/s | first token after {:.0} ms | seed {seed}",
            s.generated_tokens,
            s.decode_tokens_per_second(),
            s.time_to_first_token.as_secs_f64() * 1e3
        );
    }
    format!(
        "prompt {} tokens ({} prefilled, {} reused from the cache, {} of them from disk), {:.1} tokens/s | reply {} tokens, {:.1} tokens/s | first token after {:.0} ms | seed {seed}",
        s.prompt_tokens,
        s.prefilled_tokens(),
        s.reused_tokens,
        s.loaded_tokens,
        s.prefill_tokens_per_second(),
        s.generated_tokens,
        s.decode_tokens_per_second(),
        s.time_to_first_token.as_secs_f64() * 1e3
    )
}
