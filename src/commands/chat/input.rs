//! What the user types: messages over several lines, slash commands, and
//! their completion in the terminal.

use std::path::PathBuf;

use clap::ValueEnum;
use rustyline::completion::Completer;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::validate::Validator;
use rustyline::{Context, Helper};

use crate::commands::reply::Think;

/// A message from its first line: `"""` opens a block closed by a line
/// ending in `"""`; a trailing backslash continues on the next line. A
/// first line that holds newlines was pasted whole: it is the message.
pub fn collect_message(first: String, mut next: impl FnMut() -> Option<String>) -> String {
    if first.contains('\n') {
        return first;
    }
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
    /// Whether a reasoning model thinks, and whether its thinking shows.
    Think(Think),
    Bye,
    /// A known command used wrongly: what it needs.
    Usage(&'static str),
    Unknown(String),
}

/// The keys `/set` takes, for its usage line and its error.
macro_rules! set_keys {
    () => {
        "temperature, top_p, top_k, seed, max_tokens, repeat_penalty, repeat_last_n, format, schema, grammar"
    };
}
pub(crate) use set_keys;

pub const COMMANDS: [&str; 15] = [
    "/help", "/system", "/reset", "/retry", "/undo", "/set", "/show", "/stats", "/save", "/load",
    "/strike", "/greve", "/think", "/bye", "/exit",
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
        ("set", arg) => match arg.and_then(|a| a.split_once(char::is_whitespace)) {
            Some((key, value)) => Slash::Set(key.to_string(), value.trim().to_string()),
            None => Slash::Usage(concat!("/set KEY VALUE (", set_keys!(), ")")),
        },
        ("show", _) => Slash::Show,
        ("stats", _) => Slash::Stats,
        ("save", Some(path)) => Slash::Save(path.into()),
        ("save", None) => Slash::Usage("/save FILE"),
        ("load", Some(path)) => Slash::Load(path.into()),
        ("load", None) => Slash::Usage("/load FILE"),
        ("strike" | "greve" | "grève", arg) => Slash::Strike(arg.map(String::from)),
        ("think", Some(arg)) => match Think::from_str(arg, true) {
            Ok(think) => Slash::Think(think),
            Err(_) => Slash::Usage("/think on|off|show|hide"),
        },
        ("think", None) => Slash::Usage("/think on|off|show|hide"),
        ("bye" | "exit" | "quit", _) => Slash::Bye,
        (other, _) => Slash::Unknown(other.to_string()),
    })
}

pub const HELP: &str = "\
/help                  this list
/system [TEXT]         show the system prompt, or set it (/system - removes it)
/reset                 start a new conversation
/retry                 answer the last message again
/undo                  drop the last exchange
/set KEY VALUE         temperature, top_p, top_k, seed, max_tokens (0: no limit),
                       repeat_penalty, repeat_last_n, format (json, text), schema FILE (JSON a schema allows),
                       grammar FILE (text a Lark grammar derives)
/show                  model, persona, context used, sampling
/stats                 speed of the last reply and tokens reused from the cache
/save FILE, /load FILE write or read the conversation (JSON)
/strike [MODE]         go on strike: râleuse, totale, perlée, off (/greve too)
/think on|off          let a reasoning model think first, or not (its reasoning prompt left out)
/think show|hide       show its thinking, dimmed, or only a count (show then shows the last one)
/bye                   quit (Ctrl-D too)
Multi-line: start with \"\"\" and end with \"\"\", or end lines with \\.";

/// Tab completion of slash commands.
pub struct SlashCompleter;

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
        assert_eq!(parse_slash("/think hide"), Some(Slash::Think(Think::Hide)));
        assert_eq!(parse_slash("/think OFF"), Some(Slash::Think(Think::Off)));
        assert!(matches!(parse_slash("/think maybe"), Some(Slash::Usage(_))));
        assert!(matches!(parse_slash("/think"), Some(Slash::Usage(_))));
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
