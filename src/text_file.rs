//! Text files read whole, bounded and UTF-8, with the exit code each
//! failure deserves: a model's (config.json, tokenizer.json, an index…)
//! and the user's (a system prompt, a schema, a transcript, the config
//! file). The bound holds for what the file's size does not tell: a FIFO,
//! `/dev/zero`.

use std::io::Read;
use std::path::Path;

use crate::exit::{Classify, Failure};

/// A JSON file of the model, parsed; one that does not parse is "invalid".
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let text = read_text(path)?;
    serde_json::from_str(&text).classify(Failure::ModelInvalid, || {
        format!("{} is not valid", path.display())
    })
}

/// A model's text file (config.json, tokenizer.json, an index…), read
/// whole: one that cannot be read is "not found" (exit 3), one too large
/// or not UTF-8 is "invalid" (exit 4).
pub fn read_text(path: &Path) -> anyhow::Result<String> {
    // The largest real one, a Tekken tokenizer.json, is under 20 MB.
    const MOST: u64 = 256 << 20;
    let len = std::fs::metadata(path).map_or(0, |m| m.len());
    if len > MOST {
        return Err(Failure::ModelInvalid.err(format!(
            "{} is {} MB, larger than any model's text file ({} MB at most); is it the right file?",
            path.display(),
            len >> 20,
            MOST >> 20
        )));
    }
    let bytes = read_at_most(path, MOST).classify(Failure::ModelNotFound, || {
        format!("cannot read {}", path.display())
    })?;
    if bytes.len() as u64 > MOST {
        return Err(Failure::ModelInvalid.err(format!(
            "{} is larger than any model's text file ({} MB at most); is it the right file?",
            path.display(),
            MOST >> 20
        )));
    }
    String::from_utf8(bytes).map_err(|e| {
        Failure::ModelInvalid.err(format!(
            "{} is not UTF-8 text (bad byte at {}); download it again",
            path.display(),
            e.utf8_error().valid_up_to()
        ))
    })
}

/// A file the user names, read whole up to `most` bytes: `what` says what
/// it is in the errors, which are all usage errors (exit 2).
pub fn read_user(path: &Path, what: &str, most: u64) -> anyhow::Result<String> {
    let bytes = read_at_most(path, most).classify(Failure::Usage, || {
        format!("cannot read {what} {}", path.display())
    })?;
    if bytes.len() as u64 > most {
        return Err(Failure::Usage.err(format!(
            "{what} {} is over {} MB, more than greve reads; is it the right file?",
            path.display(),
            (most >> 20).max(1)
        )));
    }
    String::from_utf8(bytes).map_err(|e| {
        Failure::Usage.err(format!(
            "{what} {} is not valid UTF-8 (bad byte at {}); convert it, e.g. with iconv -t UTF-8",
            path.display(),
            e.utf8_error().valid_up_to()
        ))
    })
}

/// Up to `most` + 1 bytes of the file: one more than allowed tells it is
/// too large without reading on.
fn read_at_most(path: &Path, most: u64) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(most + 1)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}
