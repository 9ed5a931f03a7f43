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
    let classes = (Failure::ModelNotFound, Failure::ModelInvalid);
    let name = path.display().to_string();
    read_whole(path, 256 << 20, classes, &name, "download it again")
}

/// A file the user names, read whole up to `most` bytes: `what` says what
/// it is in the errors, which are all usage errors (exit 2).
pub fn read_user(path: &Path, what: &str, most: u64) -> anyhow::Result<String> {
    let name = format!("{what} {}", path.display());
    let fix = "convert it, e.g. with iconv -t UTF-8";
    read_whole(path, most, (Failure::Usage, Failure::Usage), &name, fix)
}

/// `path` read whole, up to `most` bytes; `missing` and `invalid` class
/// the failures, `fix` says how to mend text that is not UTF-8.
fn read_whole(
    path: &Path,
    most: u64,
    (missing, invalid): (Failure, Failure),
    name: &str,
    fix: &str,
) -> anyhow::Result<String> {
    let too_large = || {
        invalid.err(format!(
            "{name} is over {} MB, more than greve reads; is it the right file?",
            (most >> 20).max(1)
        ))
    };
    // What the size tells is refused unread; the bound catches the rest.
    if std::fs::metadata(path).is_ok_and(|m| m.len() > most) {
        return Err(too_large());
    }
    let bytes = read_at_most(path, most).classify(missing, || format!("cannot read {name}"))?;
    if bytes.len() as u64 > most {
        return Err(too_large());
    }
    String::from_utf8(bytes).map_err(|e| {
        invalid.err(format!(
            "{name} is not UTF-8 text (bad byte at {}); {fix}",
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
