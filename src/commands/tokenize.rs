//! `greve tokenize`: the exact token ids the model sees, for a text or a
//! whole conversation, from any tokenizer source, without loading weights.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::exit::{Classify, Failure};
use crate::server::api::{self, ApiError};
use crate::settings::Settings;
use crate::template::{self, Message, Tool};
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
            let (system, tools, messages) = read_chat(path)?;
            let format = tokenizer.format();
            let pieces = template::render_conversation(
                format,
                &template::System::text(system.as_deref()),
                &tools,
                &messages,
            )
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

/// A conversation file: a transcript saved by `/save`, an OpenAI request
/// body (`messages`, and `tools` if any), or a plain JSON list of messages;
/// `system` messages make the system prompt (joined by blank lines, as
/// mistral-common does).
fn read_chat(path: &Path) -> anyhow::Result<(Option<String>, Vec<Tool>, Vec<Message>)> {
    let text = crate::text_file::read_user(path, "the conversation", 256 << 20)?;
    let value: Value = serde_json::from_str(&text)
        .classify(Failure::Usage, || format!("{} is not JSON", path.display()))?;
    if value.get("format").is_some() {
        let t = Transcript::parse(&text, path)?;
        return Ok((t.system, Vec::new(), t.messages));
    }
    let bad = |e: ApiError| Failure::Usage.err(format!("{}: {}", path.display(), e.message));
    let (messages, tools) = match &value {
        Value::Object(body) => (
            body.get("messages").unwrap_or(&Value::Null),
            body.get("tools"),
        ),
        list => (list, None),
    };
    let (system, messages) = api::messages(messages).map_err(bad)?;
    let tools = tools.map(api::tools).transpose().map_err(bad)?;
    Ok((system, tools.unwrap_or_default(), messages))
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
