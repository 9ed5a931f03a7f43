//! What a turn takes and gives, whichever engine answers it (a model loaded
//! here, or a server): the options it runs with, the events it reports as
//! it goes, and the reply. Plain data, below the engines and the front ends.

use crate::generate::{Finish, Stats};
use crate::persona::{Mode, Prompts};
use crate::sampler::SamplingParams;
use crate::structured::Format;
use crate::template::ToolCall;
use crate::tools::Tools;

/// What happens during a turn, for a front end to show.
pub enum Event<'a> {
    /// The prompt the model is about to read: its text with the control
    /// tokens written out, and its ids (none for a remote engine, which
    /// renders its own).
    Prompt { text: String, ids: &'a [u32] },
    /// More of the reply's thinking, whole characters only.
    Thinking(String),
    /// More of the reply, whole characters only.
    Text(String),
}

/// A reply from an engine.
pub struct Reply {
    pub text: String,
    pub reasoning: Option<String>,
    pub tool_calls: Vec<ToolCall>,
    pub finish: Finish,
    pub stats: Stats,
}

/// A conversation's settings besides the model.
#[derive(Clone, Debug)]
pub struct Options {
    /// The user's own system prompt.
    pub system: Option<String>,
    pub mode: Mode,
    pub safe: bool,
    pub prompts: Prompts,
    pub sampling: SamplingParams,
    pub seed: u64,
    pub max_tokens: Option<usize>,
    /// Free text, or JSON by construction.
    pub format: Format,
    /// Functions the model may call.
    pub tools: Tools,
    /// The front end shows the model's thinking (on stderr), not only its
    /// answer.
    pub show_thinking: bool,
    /// A model that reasons is asked to (its reasoning system prompt), and
    /// JSON or calls may follow its thinking; off, neither.
    pub think: bool,
}
