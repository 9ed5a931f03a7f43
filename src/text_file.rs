//! A model's text files (config.json, tokenizer.json, an index…): read
//! whole, bounded, UTF-8, with the exit code each failure deserves.

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
    let bytes = std::fs::read(path).classify(Failure::ModelNotFound, || {
        format!("cannot read {}", path.display())
    })?;
    String::from_utf8(bytes).map_err(|e| {
        Failure::ModelInvalid.err(format!(
            "{} is not UTF-8 text (bad byte at {}); download it again",
            path.display(),
            e.utf8_error().valid_up_to()
        ))
    })
}
