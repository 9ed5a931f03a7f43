//! A reply read as the model writes it, token by token: its thinking
//! (between `[THINK]` and `[/THINK]`, for the models that reason), then its
//! answer, which is either text or, when it starts with `[TOOL_CALLS]`,
//! calls to read whole at the end.
//!
//! Thinking and text stream out as they complete; calls never do. Plain
//! logic over ids and the vocabulary: the model only feeds it.

use crate::tokenizer::{StreamDecoder, Tokenizer};

/// More of a reply, whole characters only.
#[derive(Debug, PartialEq, Eq)]
pub enum Part {
    Thinking(String),
    Text(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Nothing yet: the reply may open its thinking, or call.
    Start,
    Thinking,
    /// Just after the thinking: the answer may still be calls.
    Thought,
    Text,
    Calls,
}

pub struct Reader {
    phase: Phase,
    decoder: StreamDecoder,
    think: Option<(u32, u32)>,
    calls_token: Option<u32>,
    /// The reply opened its thinking.
    thought: bool,
    thinking: Vec<u32>,
    answer: Vec<u32>,
}

/// A whole reply, split.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Read {
    /// What the model thought, if it did (cut short when the reply was).
    pub reasoning: Option<String>,
    pub text: String,
    /// The ids after the calls token, when the answer is calls.
    pub calls: Option<Vec<u32>>,
}

impl Reader {
    pub fn new(tokenizer: &Tokenizer) -> Self {
        Reader {
            phase: Phase::Start,
            decoder: StreamDecoder::default(),
            think: tokenizer.think_tokens(),
            calls_token: tokenizer.tool_calls_token(),
            thought: false,
            thinking: Vec::new(),
            answer: Vec::new(),
        }
    }

    /// Reads the next token; returns the text it completes, if any.
    pub fn push(&mut self, tokenizer: &Tokenizer, token: u32) -> anyhow::Result<Option<Part>> {
        let opens = self.think.map(|(open, _)| open) == Some(token);
        let closes = self.think.map(|(_, close)| close) == Some(token);
        match self.phase {
            Phase::Start if opens => {
                (self.phase, self.thought) = (Phase::Thinking, true);
                Ok(None)
            }
            Phase::Thinking if closes => {
                self.phase = Phase::Thought;
                let rest = self.decoder.finish(tokenizer)?;
                self.decoder = StreamDecoder::default();
                Ok(rest.map(Part::Thinking))
            }
            // One part for each token of thinking, empty while a character
            // is incomplete, so that a front end can count them.
            Phase::Thinking => {
                self.thinking.push(token);
                let text = self.decoder.push(tokenizer, token)?.unwrap_or_default();
                Ok(Some(Part::Thinking(text)))
            }
            Phase::Start | Phase::Thought if Some(token) == self.calls_token => {
                self.phase = Phase::Calls;
                Ok(None)
            }
            Phase::Calls => {
                self.answer.push(token);
                Ok(None)
            }
            Phase::Start | Phase::Thought | Phase::Text => {
                self.phase = Phase::Text;
                self.answer.push(token);
                Ok(self.decoder.push(tokenizer, token)?.map(Part::Text))
            }
        }
    }

    /// The end of the reply: what is left to stream, and the reply split.
    pub fn finish(mut self, tokenizer: &Tokenizer) -> anyhow::Result<(Option<Part>, Read)> {
        let rest = match self.phase {
            Phase::Thinking => self.decoder.finish(tokenizer)?.map(Part::Thinking),
            Phase::Text => self.decoder.finish(tokenizer)?.map(Part::Text),
            _ => None,
        };
        let reasoning = match self.thought {
            true => Some(tokenizer.decode(&self.thinking)?),
            false => None,
        };
        let read = match self.phase {
            Phase::Calls => Read {
                reasoning,
                text: String::new(),
                calls: Some(self.answer),
            },
            _ => Read {
                reasoning,
                text: tokenizer.decode(&self.answer)?,
                calls: None,
            },
        };
        Ok((rest, read))
    }
}
