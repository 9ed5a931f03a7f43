//! `greve chat`: the interactive front end (rustyline) and its scripted twin
//! for when stdin is not a terminal. Both read messages and slash commands,
//! hand them to a [`Conversation`], and print what comes back; the
//! conversation logic lives in `conversation.rs`.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use rustyline::completion::Completer;
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::{FileHistory, History};
use rustyline::validate::Validator;
use rustyline::{Context, Editor, Helper};

use super::reply::{self, speak};
use crate::conversation::{Conversation, Turn};
use crate::exit::Failure;
use crate::generate::Finish;
use crate::persona::Mode;
use crate::settings::{check, Settings};
use crate::transcript::Transcript;

pub fn run(settings: Settings, cancel: &AtomicBool) -> anyhow::Result<()> {
    let keep_history = settings.history.value;
    let mut chat = reply::start(settings)?.open()?;
    if std::io::stdin().is_terminal() && std::io::stdout().is_terminal() {
        interactive(&mut chat, cancel, keep_history)
    } else {
        scripted(&mut chat, cancel)
    }
}

/// One message per line, or per `"""` block; each reply is followed by a
/// blank line.
fn scripted(chat: &mut Conversation, cancel: &AtomicBool) -> anyhow::Result<()> {
    let mut lines = std::io::stdin().lines().map_while(Result::ok);
    let mut out = std::io::stdout().lock();
    while let Some(first) = lines.next() {
        let message = collect_message(first, || lines.next());
        if message.trim().is_empty() {
            continue;
        }
        if handle(chat, &message, &mut out, cancel)? == Flow::Quit {
            break;
        }
        writeln!(out)?;
        if cancel.load(Ordering::Relaxed) {
            return Err(Failure::Interrupted.err("interrupted"));
        }
    }
    Ok(())
}

fn interactive(
    chat: &mut Conversation,
    cancel: &AtomicBool,
    keep_history: bool,
) -> anyhow::Result<()> {
    let mut editor: Editor<SlashCompleter, FileHistory> = Editor::new()?;
    editor.set_helper(Some(SlashCompleter));
    let history = keep_history.then(history_path).flatten();
    if let Some(path) = &history {
        // A missing history file is the first run, not an error.
        let _ = editor.load_history(path);
    }
    crate::messages::note(format!(
        "chatting with {}. /help for commands, /bye or Ctrl-D to quit.",
        chat.model.name
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
        let message = collect_message(first, || editor.readline("... ").ok());
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
        if handle(chat, &message, &mut out, cancel)? == Flow::Quit {
            break;
        }
        // Ctrl-C stopped this reply; the next one starts afresh.
        cancel.store(false, Ordering::Relaxed);
    }
    Ok(())
}

fn history_path() -> Option<PathBuf> {
    let dirs = directories::ProjectDirs::from("", "", "greve")?;
    let dir = dirs.data_dir();
    std::fs::create_dir_all(dir).ok()?;
    Some(dir.join("history.txt"))
}

/// A message from its first line: `"""` opens a block closed by a line
/// ending in `"""`; a trailing backslash continues on the next line.
pub fn collect_message(first: String, mut next: impl FnMut() -> Option<String>) -> String {
    if let Some(rest) = first.trim_start().strip_prefix("\"\"\"") {
        if let Some(done) = rest.strip_suffix("\"\"\"") {
            return done.to_string();
        }
        let mut lines = vec![rest.to_string()];
        while let Some(line) = next() {
            if let Some(last) = line.trim_end().strip_suffix("\"\"\"") {
                lines.push(last.to_string());
                break;
            }
            lines.push(line);
        }
        return lines.join("\n").trim_matches('\n').to_string();
    }
    let mut message = first;
    while message.ends_with('\\') {
        message.pop();
        match next() {
            Some(line) => {
                message.push('\n');
                message.push_str(&line);
            }
            None => break,
        }
    }
    message
}

#[derive(Debug, PartialEq)]
pub enum Slash {
    Help,
    System(Option<String>),
    Reset,
    Retry,
    Undo,
    Set(String, String),
    Show,
    Stats,
    Save(PathBuf),
    Load(PathBuf),
    Strike(Option<String>),
    Bye,
    /// A known command used wrongly: what it needs.
    Usage(&'static str),
    Unknown(String),
}

pub const COMMANDS: [&str; 14] = [
    "/help", "/system", "/reset", "/retry", "/undo", "/set", "/show", "/stats", "/save", "/load",
    "/strike", "/greve", "/bye", "/exit",
];

/// A slash command, or `None` for a message to the model.
pub fn parse_slash(line: &str) -> Option<Slash> {
    let line = line.trim();
    let rest = line.strip_prefix('/')?;
    let (name, arg) = match rest.split_once(char::is_whitespace) {
        Some((n, a)) => (n, Some(a.trim()).filter(|a| !a.is_empty())),
        None => (rest, None),
    };
    Some(match (name, arg) {
        ("help" | "?", _) => Slash::Help,
        ("system", arg) => Slash::System(arg.map(String::from)),
        ("reset" | "clear", _) => Slash::Reset,
        ("retry", _) => Slash::Retry,
        ("undo", _) => Slash::Undo,
        ("set", Some(arg)) => match arg.split_once(char::is_whitespace) {
            Some((key, value)) => Slash::Set(key.to_string(), value.trim().to_string()),
            None => Slash::Usage(
                "/set KEY VALUE (temperature, top_p, top_k, seed, max_tokens, repeat_penalty)",
            ),
        },
        ("set", None) => Slash::Usage(
            "/set KEY VALUE (temperature, top_p, top_k, seed, max_tokens, repeat_penalty)",
        ),
        ("show", _) => Slash::Show,
        ("stats", _) => Slash::Stats,
        ("save", Some(path)) => Slash::Save(path.into()),
        ("save", None) => Slash::Usage("/save FILE"),
        ("load", Some(path)) => Slash::Load(path.into()),
        ("load", None) => Slash::Usage("/load FILE"),
        ("strike" | "greve" | "grève", arg) => Slash::Strike(arg.map(String::from)),
        ("bye" | "exit" | "quit", _) => Slash::Bye,
        (other, _) => Slash::Unknown(other.to_string()),
    })
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
        });
        match turn {
            Ok(turn) => report(&turn),
            Err(e) if crate::exit::is_broken_pipe(&e) => return Err(e),
            // The message was taken back; the conversation goes on.
            Err(e) => crate::messages::error(format!("{e:#}")),
        }
        return Ok(Flow::Continue);
    };
    match command(chat, slash, out, cancel) {
        Ok(true) => Ok(Flow::Quit),
        Ok(false) => Ok(Flow::Continue),
        Err(e) if crate::exit::is_broken_pipe(&e) => Err(e),
        // A bad command is a note, not the end of the conversation.
        Err(e) => {
            crate::messages::error(format!("{e:#}"));
            Ok(Flow::Continue)
        }
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
            report(&turn);
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
            Some(s) => writeln!(out, "{}", reply::stats_line(s, chat.last_seed()))?,
            None => writeln!(out, "(no reply yet)")?,
        },
        Slash::Save(path) => {
            chat.transcript().save(&path)?;
            crate::messages::note(format!("saved to {}", path.display()));
        }
        Slash::Load(path) => {
            chat.load(Transcript::load(&path)?)?;
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
        Slash::Bye => return Ok(true),
        Slash::Usage(usage) => return Err(Failure::Usage.err(format!("usage: {usage}"))),
        Slash::Unknown(name) => {
            let hint = COMMANDS
                .iter()
                .find(|c| c[1..].starts_with(&name[..name.len().min(2)]))
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
        "seed" => chat.options.seed = whole()?,
        // 0: no limit but the context.
        "max_tokens" => chat.options.max_tokens = Some(whole()? as usize).filter(|&n| n > 0),
        _ => {
            return Err(Failure::Usage.err(format!(
            "no setting {key:?}: use temperature, top_p, top_k, seed, max_tokens or repeat_penalty"
        )))
        }
    }
    Ok(())
}

fn show(chat: &Conversation, out: &mut impl Write) -> anyhow::Result<()> {
    let (used, context) = chat.context();
    let p = &chat.options.sampling;
    writeln!(out, "model        {}", chat.model.name)?;
    writeln!(out, "strike       {}", chat.options.mode.name())?;
    writeln!(out, "context      {used} of {context} tokens in the cache")?;
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

fn report(turn: &Turn) {
    reply::report_dropped(turn);
    if turn.finish == Finish::Interrupted {
        crate::messages::warn("reply interrupted; it stays in the conversation");
    } else if turn.text.trim().is_empty() {
        crate::messages::warn("the model gave an empty reply; /retry or write again");
    }
}

const HELP: &str = "\
/help                  this list
/system [TEXT]         show the system prompt, or set it (/system - removes it)
/reset                 start a new conversation
/retry                 answer the last message again
/undo                  drop the last exchange
/set KEY VALUE         temperature, top_p, top_k, seed, max_tokens, repeat_penalty
/show                  model, persona, context used, sampling
/stats                 speed of the last reply and tokens reused from the cache
/save FILE, /load FILE write or read the conversation (JSON)
/strike [MODE]         go on strike: râleuse, totale, perlée, off (/greve too)
/bye                   quit (Ctrl-D too)
Multi-line: start with \"\"\" and end with \"\"\", or end lines with \\.";

/// Tab completion of slash commands.
struct SlashCompleter;

impl Completer for SlashCompleter {
    type Candidate = String;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<String>)> {
        let typed = &line[..pos];
        if !typed.starts_with('/') || typed.contains(char::is_whitespace) {
            return Ok((pos, Vec::new()));
        }
        let found = COMMANDS
            .iter()
            .filter(|c| c.starts_with(typed))
            .map(|c| c.to_string())
            .collect();
        Ok((0, found))
    }
}

impl Hinter for SlashCompleter {
    type Hint = String;
}
impl Highlighter for SlashCompleter {
    /// The prompt in colour, when stdout takes colours.
    fn highlight_prompt<'b, 's: 'b, 'p: 'b>(
        &'s self,
        prompt: &'p str,
        _default: bool,
    ) -> std::borrow::Cow<'b, str> {
        std::borrow::Cow::Owned(crate::messages::for_stdout(
            prompt,
            crate::messages::prompt_style(),
        ))
    }
}
impl Validator for SlashCompleter {}
impl Helper for SlashCompleter {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slash_commands_parse() {
        assert_eq!(parse_slash("hello"), None);
        assert_eq!(parse_slash("/help"), Some(Slash::Help));
        assert_eq!(
            parse_slash("  /system  Be brief. "),
            Some(Slash::System(Some("Be brief.".into())))
        );
        assert_eq!(parse_slash("/system"), Some(Slash::System(None)));
        assert_eq!(
            parse_slash("/set temperature 0.2"),
            Some(Slash::Set("temperature".into(), "0.2".into()))
        );
        assert!(matches!(
            parse_slash("/set temperature"),
            Some(Slash::Usage(_))
        ));
        assert_eq!(
            parse_slash("/save a b.json"),
            Some(Slash::Save("a b.json".into()))
        );
        assert!(matches!(parse_slash("/load"), Some(Slash::Usage(_))));
        assert_eq!(
            parse_slash("/greve totale"),
            Some(Slash::Strike(Some("totale".into())))
        );
        assert_eq!(parse_slash("/strike"), Some(Slash::Strike(None)));
        assert_eq!(parse_slash("/exit"), Some(Slash::Bye));
        assert_eq!(
            parse_slash("/frobnicate"),
            Some(Slash::Unknown("frobnicate".into()))
        );
    }

    fn collect(lines: &[&str]) -> String {
        let mut rest = lines[1..].iter().map(|s| s.to_string());
        collect_message(lines[0].to_string(), || rest.next())
    }

    #[test]
    fn multi_line_messages() {
        assert_eq!(collect(&["one line"]), "one line");
        assert_eq!(collect(&["first \\", "second"]), "first \nsecond");
        assert_eq!(collect(&["\"\"\"", "a", "", "b", "\"\"\""]), "a\n\nb");
        assert_eq!(collect(&["\"\"\"start", "end\"\"\""]), "start\nend");
        assert_eq!(collect(&["\"\"\"inline\"\"\""]), "inline");
        // An unterminated block takes everything left.
        assert_eq!(collect(&["\"\"\"", "x"]), "x");
    }

    #[test]
    fn completion_offers_matching_commands() {
        let history = rustyline::history::DefaultHistory::new();
        let ctx = Context::new(&history);
        let (start, found) = SlashCompleter.complete("/st", 3, &ctx).unwrap();
        assert_eq!(start, 0);
        assert_eq!(found, ["/stats", "/strike"]);
        assert!(SlashCompleter
            .complete("hello", 5, &ctx)
            .unwrap()
            .1
            .is_empty());
    }
}
