//! `greve tokenize`: the exact token ids the model sees, for a text or a
//! whole conversation, from any tokenizer source, without loading weights.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::exit::{Classify, Failure};
use crate::settings::Settings;
use crate::template::{self, Message, Role};
use crate::tokenizer::Tokenizer;
use crate::transcript::Transcript;

/// What to tokenize and how to show it (`greve tokenize --help`).
#[derive(Clone, Debug, Default)]
pub struct Request {
    /// The text (stdin when empty or `-`), or with `decode` the ids.
    pub text: Vec<String>,
    pub no_bos: bool,
    /// Control tokens written out are those tokens.
    pub special: bool,
    /// `id<TAB>piece` per line.
    pub pieces: bool,
    pub json: bool,
    pub decode: bool,
    /// A conversation to render with the instruct format.
    pub chat: Option<PathBuf>,
    /// With `chat`, the rendered text before the ids.
    pub text_out: bool,
}

pub fn run(settings: &Settings, args: &Request) -> anyhow::Result<()> {
    let tokenizer = crate::resolve::open_tokenizer(&settings.model.value, &settings.hub_options())?;
    let mut out = std::io::stdout().lock();
    if args.decode {
        let ids = parse_ids(&args.text, tokenizer.vocab_size())?;
        writeln!(out, "{}", tokenizer.decode(&ids)?)?;
        return Ok(());
    }
    let (ids, text) = match &args.chat {
        Some(path) => {
            let (system, messages) = read_chat(path)?;
            let pieces =
                template::render_conversation(tokenizer.format(), system.as_deref(), &messages)
                    .classify(Failure::Usage, || path.display().to_string())?;
            (
                tokenizer.encode_pieces(&pieces)?,
                Some(template::to_text(&pieces)),
            )
        }
        None => (
            encode_text(&tokenizer, &read_text(&args.text)?, args)?,
            None,
        ),
    };
    if args.json {
        let pieces: Vec<Option<String>> = ids.iter().map(|&id| tokenizer.piece(id)).collect();
        let value = serde_json::json!({"ids": ids, "pieces": pieces});
        writeln!(out, "{value}")?;
    } else if args.pieces {
        for &id in &ids {
            writeln!(out, "{id}\t{}", tokenizer.piece(id).unwrap_or_default())?;
        }
    } else {
        if let (true, Some(text)) = (args.text_out, &text) {
            writeln!(out, "{text}")?;
        }
        let line: Vec<String> = ids.iter().map(u32::to_string).collect();
        writeln!(out, "{}", line.join(" "))?;
    }
    Ok(())
}

fn encode_text(tokenizer: &Tokenizer, text: &str, args: &Request) -> anyhow::Result<Vec<u32>> {
    let mut ids = Vec::new();
    if tokenizer.add_bos() && !args.no_bos {
        ids.push(tokenizer.bos());
    }
    ids.extend(if args.special {
        tokenizer.encode_with_special(text)?
    } else {
        tokenizer.encode(text)?
    });
    Ok(ids)
}

/// The text from the arguments, or stdin byte for byte (nothing stripped)
/// when there is none or it is `-`.
fn read_text(args: &[String]) -> anyhow::Result<String> {
    if !args.is_empty() && args != ["-"] {
        return Ok(args.join(" "));
    }
    let mut bytes = Vec::new();
    std::io::stdin()
        .read_to_end(&mut bytes)
        .classify(Failure::Usage, || "cannot read the text from stdin".into())?;
    String::from_utf8(bytes).map_err(|e| {
        Failure::Usage.err(format!(
            "the text on stdin is not valid UTF-8 (at byte {})",
            e.utf8_error().valid_up_to()
        ))
    })
}

fn parse_ids(args: &[String], vocab: usize) -> anyhow::Result<Vec<u32>> {
    args.iter()
        .flat_map(|a| a.split([' ', ',']))
        .filter(|a| !a.is_empty())
        .map(|a| {
            let id: u32 = a
                .parse()
                .map_err(|_| Failure::Usage.err(format!("--decode: {a:?} is not a token id")))?;
            if id as usize >= vocab {
                return Err(Failure::Usage.err(format!(
                    "--decode: token id {id} is out of range: the vocabulary has {vocab} tokens (0 to {})",
                    vocab - 1
                )));
            }
            Ok(id)
        })
        .collect()
}

/// A conversation file: a transcript saved by `/save`, or a plain JSON list
/// of `{role, content}` messages where `system` messages make the system
/// prompt (joined by blank lines, as mistral-common does).
fn read_chat(path: &Path) -> anyhow::Result<(Option<String>, Vec<Message>)> {
    let text = std::fs::read_to_string(path)
        .classify(Failure::Usage, || format!("cannot read {}", path.display()))?;
    if text.trim_start().starts_with('{') {
        let t = Transcript::load(path)?;
        return Ok((t.system, t.messages));
    }
    #[derive(Deserialize)]
    struct Plain {
        role: String,
        content: String,
    }
    let plain: Vec<Plain> = serde_json::from_str(&text).classify(Failure::Usage, || {
        format!(
            "{} is neither a greve transcript nor a JSON list of {{\"role\", \"content\"}} messages",
            path.display()
        )
    })?;
    let mut system = Vec::new();
    let mut messages = Vec::new();
    for (i, m) in plain.into_iter().enumerate() {
        let role = match m.role.as_str() {
            "system" => {
                system.push(m.content);
                continue;
            }
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => {
                return Err(Failure::Usage.err(format!(
                    "{}: message {} has role {}; use system, user or assistant",
                    path.display(),
                    i + 1,
                    crate::messages::short(other)
                )))
            }
        };
        messages.push(Message {
            role,
            content: m.content,
        });
    }
    Ok(((!system.is_empty()).then(|| system.join("\n\n")), messages))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_with_spaces_or_commas_and_stay_in_range() {
        let args = vec!["1 2,3".to_string(), "4".to_string()];
        assert_eq!(parse_ids(&args, 10).unwrap(), [1, 2, 3, 4]);
        assert!(parse_ids(&["10".into()], 10).is_err());
        assert!(parse_ids(&["x".into()], 10).is_err());
    }
}
