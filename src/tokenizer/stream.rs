//! Generated ids to text as it completes.

use super::Tokenizer;

/// Turns generated ids into text as soon as it is complete: a character
/// split over several byte-fallback tokens comes out whole, and nothing else
/// is held back. What it emits, concatenated, equals the decode of all ids.
///
/// Decoding from a moving offset rather than from the start keeps each step
/// cheap, and decoding the overlap twice lets SentencePiece's space handling
/// (the leading `▁` is dropped at the start of a decode) cancel out.
#[derive(Default)]
pub struct StreamDecoder {
    ids: Vec<u32>,
    prefix: usize,
    read: usize,
}

impl StreamDecoder {
    /// Adds a token; returns the text it completes, if any.
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> anyhow::Result<Option<String>> {
        self.ids.push(id);
        self.flush(tokenizer, false)
    }

    /// Whatever is left at the end, even an incomplete character (shown as
    /// U+FFFD, as a full decode would).
    pub fn finish(&mut self, tokenizer: &Tokenizer) -> anyhow::Result<Option<String>> {
        self.flush(tokenizer, true)
    }

    fn flush(&mut self, tokenizer: &Tokenizer, last: bool) -> anyhow::Result<Option<String>> {
        let before = tokenizer.decode(&self.ids[self.prefix..self.read])?;
        let now = tokenizer.decode(&self.ids[self.prefix..])?;
        if now.len() <= before.len() || (!last && now.ends_with('\u{FFFD}')) {
            return Ok(None);
        }
        let Some(new) = now.get(before.len()..) else {
            return Ok(None);
        };
        let new = new.to_string();
        self.prefix = self.read;
        self.read = self.ids.len();
        Ok(Some(new))
    }
}
