//! `greve chat`: the interactive front end (rustyline) and its scripted twin
//! for when stdin is not a terminal. Both read messages and slash commands,
//! hand them to a [`Conversation`], and print what comes back; the
//! conversation logic lives in `conversation.rs`.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use rustyline::error::ReadlineError;
use rustyline::history::{FileHistory, History};
use rustyline::Editor;

mod input;

use input::{collect_message, parse_slash, Slash, SlashCompleter, COMMANDS, HELP};

use super::reply::{self, speak, Think};
use crate::conversation::{Conversation, Turn};
use crate::exit::Failure;
use crate::generate::Finish;
use crate::persona::Mode;
use crate::settings::{check, Settings};
use crate::structured::{self, Format};
use crate::transcript::Transcript;

pub fn run(settings: Settings, cancel: &AtomicBool) -> anyhow::Result<()> {
    let keep_history = settings.history.value;
    let mut chat = crate::conversation::start(settings)?.open()?;
    chat.options.show_thinking = true;
    if std::io::stdin().is_terminal() && std::io::stdout().is_terminal() {
        interactive(&mut chat, cancel, keep_history)
    } else {
        scripted(&mut chat, cancel)
    }
}

/// One message per line, or per `"""` block; each reply is followed by a
/// blank line. A failure (a message that does not fit, a bad command) is
/// reported and the conversation goes on, as at a terminal; the first one
/// decides the exit code. Input that is not UTF-8 ends it.
fn scripted(chat: &mut Conversation, cancel: &AtomicBool) -> anyhow::Result<()> {
    let mut lines = std::io::stdin().lines();
    let read = std::cell::Cell::new(0);
    let mut unreadable = None;
    let mut next = || {
        let line = lines.next()?;
        read.set(read.get() + 1);
        line.map_err(|e| {
            unreadable = Some(Failure::Usage.err(format!(
                "line {} of stdin: {e}; a chat's input is UTF-8 text",
                read.get()
            )))
        })
        .ok()
    };
    let mut out = std::io::stdout().lock();
    let (mut failed, mut first_failure) = (0, None);
    while let Some(first) = next() {
        let line = read.get();
        let message = collect_message(first, &mut next);
        if message.trim().is_empty() {
            continue;
        }
        match crate::interrupt::stoppable(|| handle(chat, &message, &mut out, cancel)) {
            Ok(Flow::Quit) => break,
            Ok(Flow::Continue) => writeln!(out)?,
            Err(e) if crate::exit::is_broken_pipe(&e) => return Err(e),
            Err(e) => {
                crate::messages::error(crate::exit::one_line(&e));
                failed += 1;
                first_failure.get_or_insert((line, crate::exit::class_of(&e)));
            }
        }
        if cancel.load(Ordering::Relaxed) {
            return Err(Failure::Interrupted.err("interrupted"));
        }
    }
    if let Some(e) = unreadable {
        return Err(e);
    }
    match first_failure {
        None => Ok(()),
        Some((line, class)) => {
            let summary = format!(
                "{failed} of the messages and commands on stdin failed, the first on line {line} (above)"
            );
            Err(match class {
                Some(class) => class.err(summary),
                None => anyhow::anyhow!(summary),
            })
        }
    }
}

fn interactive(
    chat: &mut Conversation,
    cancel: &AtomicBool,
    keep_history: bool,
) -> anyhow::Result<()> {
    crate::interrupt::terminal::save();
    let mut editor: Editor<SlashCompleter, FileHistory> = Editor::new()?;
    editor.set_helper(Some(SlashCompleter));
    let history = keep_history.then(history_path).flatten();
    if let Some(path) = &history {
        // A missing history file is the first run, not an error.
        let _ = editor.load_history(path);
    }
    crate::messages::note(format!(
        "chatting with {}. /help for commands, /bye or Ctrl-D to quit.",
        chat.model_name()
    ));
    let mut out = std::io::stdout();
    loop {
        let marker = match chat.options.mode {
            Mode::Off => String::new(),
            mode => format!(" ✊ {}", mode.name()),
        };
        let first = match editor.readline(&format!("greve{marker}> ")) {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => {
                eprintln!("(Ctrl-D or /bye to quit)");
                continue;
            }
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        };
        // Ctrl-C or Ctrl-D inside a block drops it, as Ctrl-C does a line.
        let mut dropped = false;
        let message = collect_message(first, || {
            editor.readline("... ").map_err(|_| dropped = true).ok()
        });
        if dropped {
            eprintln!("(message dropped)");
            continue;
        }
        if message.trim().is_empty() {
            continue;
        }
        let _ = editor.add_history_entry(message.as_str());
        if let Some(path) = &history {
            if let Err(e) = editor.history_mut().save(path) {
                crate::messages::warn(format!(
                    "cannot save the history to {}: {e}",
                    path.display()
                ));
            }
        }
        match crate::interrupt::stoppable(|| handle(chat, &message, &mut out, cancel)) {
            Ok(Flow::Quit) => break,
            Ok(Flow::Continue) => {}
            Err(e) if crate::exit::is_broken_pipe(&e) => return Err(e),
            // The message was taken back, or the command did nothing; the
            // conversation goes on.
            Err(e) => crate::messages::error(crate::exit::one_line(&e)),
        }
    }
    Ok(())
}

fn history_path() -> Option<PathBuf> {
    let dirs = directories::ProjectDirs::from("", "", "greve")?;
    let dir = dirs.data_dir();
    std::fs::create_dir_all(dir).ok()?;
    Some(dir.join("history.txt"))
}

#[derive(PartialEq)]
enum Flow {
    Continue,
    Quit,
}

/// A line from the user: a command, or a message for the model.
fn handle(
    chat: &mut Conversation,
    line: &str,
    out: &mut impl Write,
    cancel: &AtomicBool,
) -> anyhow::Result<Flow> {
    let Some(slash) = parse_slash(line) else {
        let turn = speak(chat, out, false, |chat, on_event| {
            chat.send(line.to_string(), cancel, on_event)
        })?;
        report(&turn, &chat.options.format);
        return Ok(Flow::Continue);
    };
    match command(chat, slash, out, cancel)? {
        true => Ok(Flow::Quit),
        false => Ok(Flow::Continue),
    }
}

/// Runs a command; true when it ends the chat.
fn command(
    chat: &mut Conversation,
    slash: Slash,
    out: &mut impl Write,
    cancel: &AtomicBool,
) -> anyhow::Result<bool> {
    match slash {
        Slash::Help => writeln!(out, "{HELP}")?,
        Slash::System(None) => match &chat.options.system {
            Some(s) => writeln!(out, "{s}")?,
            None => writeln!(out, "(no system prompt)")?,
        },
        Slash::System(Some(text)) => {
            chat.options.system = Some(text).filter(|t| t != "-");
            crate::messages::note(format!(
                "system prompt {}",
                if chat.options.system.is_some() {
                    "set"
                } else {
                    "removed"
                }
            ));
        }
        Slash::Reset => {
            chat.reset();
            crate::messages::note("new conversation");
        }
        Slash::Retry => {
            let turn = speak(chat, out, false, |chat, on_event| {
                chat.retry(cancel, on_event)
            })?;
            report(&turn, &chat.options.format);
        }
        Slash::Undo => {
            let undone = chat.undo();
            crate::messages::note(if undone {
                "last exchange removed"
            } else {
                "nothing to undo"
            });
        }
        Slash::Set(key, value) => {
            set(chat, &key, &value)?;
            crate::messages::note(format!("{key} = {value}"));
        }
        Slash::Show => show(chat, out)?,
        Slash::Stats => match &chat.last {
            Some(s) => writeln!(out, "{}", reply::stats_line(chat, s, chat.last_seed()))?,
            None => writeln!(out, "(no reply yet)")?,
        },
        Slash::Save(path) => {
            chat.transcript().save(&path)?;
            chat.save_context();
            crate::messages::note(format!("saved to {}", path.display()));
        }
        Slash::Load(path) => {
            chat.load(Transcript::load(&path)?);
            crate::messages::note(format!(
                "loaded {} messages from {}",
                chat.messages().len(),
                path.display()
            ));
        }
        Slash::Strike(arg) => {
            let mode: Mode = match arg.as_deref() {
                None => Mode::Raleuse,
                Some(a) => a.parse().map_err(|e: String| Failure::Usage.err(e))?,
            };
            chat.options.mode = mode;
            crate::messages::note(format!("strike {}", mode.name()));
        }
        Slash::Think(think) => {
            let was_shown = chat.options.show_thinking;
            think.apply(&mut chat.options);
            let o = &chat.options;
            let what = match (o.think, o.show_thinking) {
                (false, _) => "the model is not asked to think",
                (true, true) => "the model thinks first, its thinking shown",
                (true, false) => "the model thinks first, its thinking counted, not shown",
            };
            crate::messages::note(what);
            // What was only counted is shown now: the last reply's thinking.
            let last = chat.messages().last().and_then(|m| m.reasoning.as_deref());
            if let (Think::Show, false, Some(thinking)) = (think, was_shown, last) {
                let style = crate::messages::thinking_style();
                anstream::eprintln!("{style}{thinking}{style:#}");
            }
        }
        Slash::Bye => return Ok(true),
        Slash::Usage(usage) => return Err(Failure::Usage.err(format!("usage: {usage}"))),
        Slash::Unknown(name) => {
            let start: String = name.chars().take(2).collect();
            let hint = COMMANDS
                .iter()
                .find(|c| !start.is_empty() && c[1..].starts_with(&start))
                .map_or(String::new(), |c| format!(" (did you mean {c}?)"));
            return Err(
                Failure::Usage.err(format!("unknown command /{name}{hint}; /help lists them"))
            );
        }
    }
    Ok(false)
}

fn set(chat: &mut Conversation, key: &str, value: &str) -> anyhow::Result<()> {
    let bad = |why: String| Failure::Usage.err(format!("{key} {value:?}: {why}"));
    let number = |check: fn(f32) -> Result<f32, String>| {
        value
            .parse::<f32>()
            .map_err(|_| "not a number".to_string())
            .and_then(check)
            .map_err(bad)
    };
    let whole = || {
        value
            .parse::<u64>()
            .map_err(|_| bad("not a whole number".into()))
    };
    let p = &mut chat.options.sampling;
    match key {
        "temperature" => p.temperature = number(check::non_negative)?,
        "top_p" => p.top_p = number(check::probability)?,
        "repeat_penalty" => p.repeat_penalty = number(check::positive)?,
        "top_k" => p.top_k = whole()? as usize,
        "repeat_last_n" => p.repeat_last_n = whole()? as usize,
        "seed" => chat.options.seed = whole()?,
        // 0: no limit but the context.
        "max_tokens" => chat.options.max_tokens = Some(whole()? as usize).filter(|&n| n > 0),
        "format" => {
            chat.options.format = match value {
                "json" => Format::Json,
                "text" | "off" => Format::Text,
                _ => return Err(bad("use json, text or off".into())),
            }
        }
        "schema" | "grammar" => {
            let parse = match key {
                "schema" => structured::schema,
                _ => structured::lark,
            };
            chat.options.format = structured::from_file(Path::new(value), parse)
                .map_err(|e| Failure::Usage.err(format!("/set {key}: {e}")))?;
        }
        _ => {
            return Err(Failure::Usage.err(format!(
                "no setting {key:?}: use one of {}",
                input::set_keys!()
            )))
        }
    }
    Ok(())
}

fn show(chat: &Conversation, out: &mut impl Write) -> anyhow::Result<()> {
    let p = &chat.options.sampling;
    writeln!(out, "model        {}", chat.model_name())?;
    writeln!(out, "strike       {}", chat.options.mode.name())?;
    writeln!(out, "format       {}", chat.options.format.name())?;
    match chat.context() {
        Some((used, context)) => {
            writeln!(out, "context      {used} of {context} tokens in the cache")?
        }
        None => writeln!(
            out,
            "context      held by the remote server (not known here)"
        )?,
    }
    writeln!(out, "messages     {}", chat.messages().len())?;
    writeln!(
        out,
        "sampling     temperature {}, top_p {}, top_k {}, repeat_penalty {}, seed {}, max_tokens {}",
        p.temperature,
        p.top_p,
        p.top_k,
        p.repeat_penalty,
        chat.options.seed,
        chat.options.max_tokens.map_or("none".to_string(), |n| n.to_string())
    )?;
    Ok(())
}

fn report(turn: &Turn, format: &Format) {
    reply::report_dropped(turn);
    if turn.finish == Finish::Length && *format != Format::Text {
        crate::messages::warn(
            "the reply reached max_tokens before it was complete, so none was printed; /set max_tokens N and /retry",
        );
    } else if turn.finish == Finish::Interrupted {
        crate::messages::warn("reply interrupted; it stays in the conversation");
    } else if turn.text.trim().is_empty() {
        crate::messages::warn("the model gave an empty reply; /retry or write again");
    }
}
