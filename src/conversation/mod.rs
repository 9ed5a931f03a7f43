//! A conversation: the messages, the system prompt and persona, and the
//! engine that answers them — a model loaded here ([`Local`]), whose KV
//! cache each turn reuses, or an OpenAI-compatible server ([`Remote`]).
//!
//! No terminal here: the front ends (`commands/chat.rs`, and
//! `commands/ask.rs` for a conversation of one turn, `server/` for a
//! request) read and print, this module decides what the model sees. Each
//! turn renders the whole conversation with the instruct template, keeps
//! the cached tokens it shares with the previous rendering and prefills
//! only the rest, so the text never depends on the cache, only the speed
//! (`local.rs`). When the conversation outgrows the context, the oldest
//! whole exchanges leave the model's window (`window.rs`; they stay in the
//! transcript). `start.rs` makes a conversation from the settings.

mod local;
mod start;
mod window;

use std::sync::atomic::AtomicBool;

use crate::exit::Failure;
use crate::generate::{Finish, Stats};
use crate::model::Model;
use crate::persona::{self, Mode, Wrapping};
use crate::remote::Remote;
use crate::structured::Format;
use crate::template::{Message, Role, ToolCall};
use crate::transcript::Transcript;
pub use crate::turn::{Event, Options, Reply};
use local::LocalTurn;
pub use local::{event, Local, Progress, Running};
pub use start::{start, Start};
pub use window::fit_window;

pub struct Conversation {
    /// What answers.
    pub engine: Engine,
    /// Settings that commands may change between turns.
    pub options: Options,
    /// The whole conversation, alternating user and assistant.
    messages: Vec<Message>,
    /// Index of the first message still in the model's window (a user's).
    first: usize,
    /// Replies so far: each one samples with its own seed.
    turns: u64,
    /// The messages go on from a saved conversation (the prompt cache may
    /// hold its keys and values).
    resumed: bool,
    pub last: Option<Stats>,
}

pub enum Engine {
    Local(Box<Local>),
    Remote(Remote),
}

/// A turn begun: answered already (a strike notice, a server's reply), or
/// running on the model here, for [`Conversation::step`] to take on.
pub enum Begun {
    Answered(Turn),
    Running(Box<Running>),
}

/// One answered message.
pub struct Turn {
    pub text: String,
    /// What the model thought before its answer, for the models that do.
    pub reasoning: Option<String>,
    /// The functions the reply calls (its text then empty).
    pub tool_calls: Vec<ToolCall>,
    pub finish: Finish,
    /// The persona answered with its strike notice instead of the model.
    pub notice: bool,
    /// Messages that left the model's window to make room.
    pub dropped: usize,
}

impl Conversation {
    /// A conversation with a model loaded here.
    pub fn new(model: Model, options: Options) -> Self {
        Self::with_engine(Engine::Local(Box::new(Local::new(model))), options)
    }

    pub fn with_engine(engine: Engine, options: Options) -> Self {
        Conversation {
            engine,
            options,
            messages: Vec::new(),
            first: 0,
            turns: 0,
            resumed: false,
            last: None,
        }
    }

    /// The model loaded here; `None` when a server answers.
    pub fn local(&self) -> Option<&Local> {
        match &self.engine {
            Engine::Local(local) => Some(local.as_ref()),
            Engine::Remote(_) => None,
        }
    }

    /// The model's name, as the user gave it (or the server's).
    pub fn model_name(&self) -> &str {
        match &self.engine {
            Engine::Local(local) => &local.model.name,
            Engine::Remote(remote) => &remote.model,
        }
    }

    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// Tokens in the KV cache, and the model's context length; `None`
    /// when a server holds them.
    pub fn context(&self) -> Option<(usize, usize)> {
        self.local()
            .map(|l| (l.cached().len(), l.model.transformer.config.context_length))
    }

    /// The seed of the next reply.
    pub fn turn_seed(&self) -> u64 {
        self.options.seed.wrapping_add(self.turns)
    }

    /// The seed of the last reply.
    pub fn last_seed(&self) -> u64 {
        self.turn_seed().wrapping_sub(1)
    }

    /// Answers `text`. `on_event` sees the reply as it comes.
    /// On an error the message is taken back, so the conversation is as it was.
    pub fn send(
        &mut self,
        text: String,
        cancel: &AtomicBool,
        on_event: impl FnMut(Event) -> anyhow::Result<()>,
    ) -> anyhow::Result<Turn> {
        if self.messages.last().is_some_and(|m| m.role == Role::User) {
            // A reply that came out empty left the user's turn open: replace it.
            self.messages.pop();
        }
        self.messages.push(Message::user(text));
        let turn = self.answer(cancel, on_event);
        if turn.is_err() {
            self.messages.pop();
        }
        turn
    }

    /// Answers the calls of the last reply with their results, in the
    /// order of the calls, and goes on. On an error the results are taken
    /// back.
    pub fn send_results(
        &mut self,
        results: Vec<String>,
        cancel: &AtomicBool,
        on_event: impl FnMut(Event) -> anyhow::Result<()>,
    ) -> anyhow::Result<Turn> {
        let calls = match self.messages.last() {
            Some(m) if !m.tool_calls.is_empty() => m.tool_calls.clone(),
            _ => {
                return Err(Failure::Usage.err(
                    "no tool call to answer: the conversation's last message is not a call (load the transcript that holds it)",
                ))
            }
        };
        if results.len() != calls.len() {
            return Err(Failure::Usage.err(format!(
                "the last reply made {} tool calls, and {} results were given: give one per call, in their order",
                calls.len(),
                results.len()
            )));
        }
        let n = self.messages.len();
        self.messages
            .extend(calls.iter().zip(results).map(|(call, result)| Message {
                tool_call_id: Some(call.id.clone()),
                ..Message::new(Role::Tool, result)
            }));
        let turn = self.answer(cancel, on_event);
        if turn.is_err() {
            self.messages.truncate(n);
        }
        turn
    }

    /// Answers the last message again (a new seed, so a new reply when sampling).
    pub fn retry(
        &mut self,
        cancel: &AtomicBool,
        on_event: impl FnMut(Event) -> anyhow::Result<()>,
    ) -> anyhow::Result<Turn> {
        match self.messages.last().map(|m| m.role) {
            Some(Role::Assistant) => {
                let reply = self.messages.pop();
                let turn = self.answer(cancel, on_event);
                if turn.is_err() {
                    self.messages.extend(reply);
                }
                turn
            }
            Some(Role::User | Role::Tool) => self.answer(cancel, on_event),
            None => Err(Failure::Usage.err("nothing to retry: the conversation is empty")),
        }
    }

    /// Drops the last exchange; false when there is none.
    pub fn undo(&mut self) -> bool {
        if self.messages.is_empty() {
            return false;
        }
        // Back to before the last user message, with the calls and results
        // that answered it.
        let keep = self
            .messages
            .iter()
            .rposition(|m| m.role == Role::User)
            .unwrap_or(0);
        self.messages.truncate(keep);
        self.first = self.first.min(keep);
        true
    }

    /// A new conversation; the settings stay.
    pub fn reset(&mut self) {
        self.messages.clear();
        self.first = 0;
        self.resumed = false;
    }

    pub fn transcript(&self) -> Transcript {
        Transcript {
            system: self.options.system.clone(),
            persona: (self.options.mode != Mode::Off).then_some(self.options.mode),
            messages: self.messages.clone(),
        }
    }

    /// Goes on from saved messages (their settings are applied by the
    /// caller: see [`Settings::follow`]).
    pub fn restore(&mut self, messages: Vec<Message>) {
        self.resumed = !messages.is_empty();
        self.messages = messages;
        self.first = 0;
    }

    /// Replaces the conversation and its settings with a saved one.
    pub fn load(&mut self, t: Transcript) {
        self.options.mode = t.mode();
        self.options.system = t.system;
        self.restore(t.messages);
    }

    /// Replaces the conversation with `messages`, a whole one of its own
    /// (a server's request), answered as a first turn: same seed, same
    /// window as `ask` would give it. The KV cache stays, for the next
    /// answer to reuse as far as its prompt shares it.
    pub fn replace(&mut self, messages: Vec<Message>) {
        self.messages = messages;
        self.first = 0;
        self.turns = 0;
        self.resumed = false;
    }

    /// Begins answering the conversation whole, or fails when it does not
    /// fit the context: a client that sent it expects every message read.
    /// The reply's limit shrinks to the room left.
    pub fn begin_whole(
        &mut self,
        cancel: &AtomicBool,
        on_event: &mut impl FnMut(Event) -> anyhow::Result<()>,
    ) -> anyhow::Result<Begun> {
        if let Engine::Local(local) = &self.engine {
            let system = local.system(self.system_prompt().as_deref(), self.options.think);
            let n = local
                .encode(&system, &self.options.tools, &self.messages)?
                .len();
            let context = local.model.transformer.config.context_length;
            if n >= context {
                return Err(Failure::Usage.err(format!(
                    "the messages take {n} tokens with the system prompt, more than the model's context of {context} leaves for a reply; shorten them"
                )));
            }
            let room = context - n;
            self.options.max_tokens = Some(self.options.max_tokens.map_or(room, |m| m.min(room)));
        }
        self.begin(cancel, on_event)
    }

    fn answer(
        &mut self,
        cancel: &AtomicBool,
        mut on_event: impl FnMut(Event) -> anyhow::Result<()>,
    ) -> anyhow::Result<Turn> {
        let run = match self.begin(cancel, &mut on_event)? {
            Begun::Answered(turn) => return Ok(turn),
            Begun::Running(run) => *run,
        };
        let Engine::Local(local) = &mut self.engine else {
            unreachable!("only a model here runs a turn");
        };
        let dropped = run.dropped;
        let reply = local.run(run, cancel, &mut on_event)?;
        Ok(self.record(reply, dropped))
    }

    /// Begins answering the conversation: the persona's strike notice, a
    /// server's whole reply, or a turn for the model here to run.
    pub fn begin(
        &mut self,
        cancel: &AtomicBool,
        on_event: &mut impl FnMut(Event) -> anyhow::Result<()>,
    ) -> anyhow::Result<Begun> {
        let seed = self.turn_seed();
        self.turns += 1;
        let request = self.messages.last().map_or("", |m| m.content.as_str());
        if let Some(notice) =
            persona::strike_notice(self.options.mode, &self.options.prompts, request, seed)
        {
            self.messages.push(Message::assistant(notice.clone()));
            return Ok(Begun::Answered(Turn {
                text: notice,
                reasoning: None,
                tool_calls: Vec::new(),
                finish: Finish::Stop,
                notice: true,
                dropped: 0,
            }));
        }
        let system = self.system_prompt();
        match &mut self.engine {
            Engine::Local(local) => {
                let system = local.system(system.as_deref(), self.options.think);
                let (first, ids) =
                    local.fit(&self.messages, self.first, &system, &self.options, cancel)?;
                let dropped = first - self.first;
                self.first = first;
                let turn = LocalTurn {
                    ids,
                    system: &system,
                    window: &self.messages[first..],
                    options: &self.options,
                    seed,
                    resumed: self.resumed,
                };
                let mut run = local.begin(turn, on_event)?;
                run.dropped = dropped;
                Ok(Begun::Running(Box::new(run)))
            }
            Engine::Remote(remote) => {
                let reply = remote.answer(
                    system.as_deref(),
                    &self.messages[self.first..],
                    &self.options,
                    seed,
                    cancel,
                    on_event,
                )?;
                Ok(Begun::Answered(self.record(reply, 0)))
            }
        }
    }

    /// One step of several turns begun here, together (see [`Local::step`]).
    pub fn step(
        &mut self,
        runs: &mut [(&mut Running, &AtomicBool)],
    ) -> Vec<anyhow::Result<Progress>> {
        match &mut self.engine {
            Engine::Local(local) => local.step(runs),
            Engine::Remote(_) => unreachable!("only a model here runs a turn"),
        }
    }

    /// Ends a turn begun here with its outcome (see [`Local::end`]).
    pub fn end(
        &mut self,
        run: Running,
        outcome: anyhow::Result<Finish>,
        on_event: &mut impl FnMut(Event) -> anyhow::Result<()>,
    ) -> anyhow::Result<Turn> {
        let Engine::Local(local) = &mut self.engine else {
            unreachable!("only a model here runs a turn");
        };
        let dropped = run.dropped;
        let reply = local.end(run, outcome, on_event)?;
        Ok(self.record(reply, dropped))
    }

    /// The reply, added to the conversation.
    fn record(&mut self, reply: Reply, dropped: usize) -> Turn {
        if !reply.tool_calls.is_empty() || !reply.text.trim().is_empty() {
            self.messages.push(Message {
                tool_calls: reply.tool_calls.clone(),
                reasoning: reply.reasoning.clone(),
                ..Message::assistant(reply.text.clone())
            });
        }
        self.last = Some(reply.stats);
        Turn {
            text: reply.text,
            reasoning: reply.reasoning,
            tool_calls: reply.tool_calls,
            finish: reply.finish,
            notice: false,
            dropped,
        }
    }

    /// Saves the keys and values of the conversation so far in the prompt
    /// cache, for a run that resumes it (`--save`, `/save`).
    pub fn save_context(&mut self) {
        if let Engine::Local(local) = &mut self.engine {
            local.save_conversation();
        }
    }

    /// What goes around the next reply: the persona's letterhead and
    /// sign-off, never around JSON, nor around a reply that may be a call.
    pub fn wrapping(&self) -> Wrapping {
        let o = &self.options;
        match o.format {
            Format::Text if !o.tools.may_call() => {
                persona::wrapping(o.mode, self.turn_seed(), &o.prompts)
            }
            _ => Wrapping::default(),
        }
    }

    fn system_prompt(&self) -> Option<String> {
        let o = &self.options;
        persona::system_prompt(o.mode, o.safe, o.system.as_deref(), &o.prompts)
    }
}
