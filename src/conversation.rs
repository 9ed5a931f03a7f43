//! A conversation: the messages, the system prompt and persona, and the
//! engine that answers them — a model loaded here ([`Local`]), whose KV
//! cache each turn reuses, or an OpenAI-compatible server ([`Remote`]).
//!
//! No terminal here: the front ends (`commands/chat.rs`, and
//! `commands/ask.rs` for a conversation of one turn, `server/` for a
//! request) read and print, this file decides what the model sees. Each
//! turn renders the whole conversation with the instruct template, keeps
//! the cached tokens it shares with the previous rendering and prefills
//! only the rest, so the text never depends on the cache, only the speed.
//! When the conversation outgrows the context, the oldest whole exchanges
//! leave the model's window (they stay in the transcript).

use std::sync::atomic::{AtomicBool, Ordering};

use crate::exit::Failure;
use crate::generate::{generate, Finish, Limits, Prompt, Stats};
use crate::model::Model;
use crate::persona::{self, Mode, Prompts};
use crate::prompt_cache::{self, common_prefix, Kind, Lookup, PromptCache};
use crate::remote::Remote;
use crate::reply::{self, Part};
use crate::sampler::{Sampler, SamplingParams};
use crate::settings::Settings;
use crate::structured::{Constraint, Format, Grammar};
use crate::template::{self, Message, Role, System, ToolCall};
use crate::tools::{self, Markers, Tools};
use crate::transcript::Transcript;

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

/// A model loaded in this process, and what its turns leave for the next.
pub struct Local {
    pub model: Model,
    /// The tokens whose keys and values are in the KV cache, in order.
    cached: Vec<u32>,
    /// The output format compiled for this model's vocabulary, kept while
    /// the format stays the same.
    grammar: Option<(Format, Grammar)>,
    /// Keys and values on disk, to start from where an earlier run left.
    pub prompt_cache: Option<PromptCache>,
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

impl Options {
    /// The resolved settings, the model's defaults (none for a remote
    /// one) filling what they leave.
    pub fn new(
        settings: &Settings,
        prompts: Prompts,
        defaults: &crate::model::GenerationDefaults,
    ) -> Self {
        Options {
            system: settings.system.value.clone(),
            mode: settings.strike.value,
            safe: settings.safe.value,
            prompts,
            sampling: settings.sampling(defaults),
            seed: settings.seed.value,
            max_tokens: settings.reply_limit(defaults),
            format: settings.format.value.clone(),
            tools: settings.tools.clone(),
            show_thinking: false,
            think: true,
        }
    }
}

impl Conversation {
    /// A conversation with a model loaded here.
    pub fn new(mut model: Model, options: Options) -> Self {
        let planned = crate::model::PLANNED_CONTEXT.min(model.transformer.config.context_length);
        model.transformer.reserve(planned);
        let local = Local {
            model,
            cached: Vec::new(),
            grammar: None,
            prompt_cache: None,
        };
        Self::with_engine(Engine::Local(Box::new(local)), options)
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
            .map(|l| (l.cached.len(), l.model.transformer.config.context_length))
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

    /// Answers the conversation whole, or fails when it does not fit the
    /// context: a client that sent it expects every message read. The
    /// reply's limit shrinks to the room left.
    pub fn answer_whole(
        &mut self,
        cancel: &AtomicBool,
        on_event: impl FnMut(Event) -> anyhow::Result<()>,
    ) -> anyhow::Result<Turn> {
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
        self.answer(cancel, on_event)
    }

    fn answer(
        &mut self,
        cancel: &AtomicBool,
        mut on_event: impl FnMut(Event) -> anyhow::Result<()>,
    ) -> anyhow::Result<Turn> {
        let seed = self.turn_seed();
        self.turns += 1;
        let request = self.messages.last().map_or("", |m| m.content.as_str());
        if let Some(notice) =
            persona::strike_notice(self.options.mode, &self.options.prompts, request, seed)
        {
            self.messages.push(Message::assistant(notice.clone()));
            return Ok(Turn {
                text: notice,
                reasoning: None,
                tool_calls: Vec::new(),
                finish: Finish::Stop,
                notice: true,
                dropped: 0,
            });
        }
        let system = self.system_prompt();
        let (reply, dropped) = match &mut self.engine {
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
                (local.answer(turn, cancel, &mut on_event)?, dropped)
            }
            Engine::Remote(remote) => {
                let reply = remote.answer(
                    system.as_deref(),
                    &self.messages[self.first..],
                    &self.options,
                    seed,
                    cancel,
                    &mut on_event,
                )?;
                (reply, 0)
            }
        };
        if !reply.tool_calls.is_empty() || !reply.text.trim().is_empty() {
            self.messages.push(Message {
                tool_calls: reply.tool_calls.clone(),
                reasoning: reply.reasoning.clone(),
                ..Message::assistant(reply.text.clone())
            });
        }
        self.last = Some(reply.stats);
        Ok(Turn {
            text: reply.text,
            reasoning: reply.reasoning,
            tool_calls: reply.tool_calls,
            finish: reply.finish,
            notice: false,
            dropped,
        })
    }

    /// Saves the keys and values of the conversation so far in the prompt
    /// cache, for a run that resumes it (`--save`, `/save`).
    pub fn save_context(&self) {
        if let Some(local) = self.local() {
            if let Some(disk) = &local.prompt_cache {
                disk.save(&local.cached, Kind::Conversation, &local.model.transformer);
            }
        }
    }

    fn system_prompt(&self) -> Option<String> {
        let o = &self.options;
        persona::system_prompt(o.mode, o.safe, o.system.as_deref(), &o.prompts)
    }
}

/// What a local turn needs of the conversation.
struct LocalTurn<'a> {
    /// The window's prompt.
    ids: Vec<u32>,
    system: &'a System,
    /// The messages in the model's window, the last the user's.
    window: &'a [Message],
    options: &'a Options,
    seed: u64,
    resumed: bool,
}

impl Local {
    /// The ids of a conversation rendered with the model's instruct format.
    /// The system prompt of a turn: the model's reasoning prompt when it
    /// has one and is to think, then `text` (the user's and the persona's).
    fn system(&self, text: Option<&str>, think: bool) -> System {
        match (&self.model.reasoning, think) {
            (Some(reasoning), true) => reasoning.clone().then(text),
            _ => System::text(text),
        }
    }

    fn encode(
        &self,
        system: &System,
        tools: &Tools,
        messages: &[Message],
    ) -> anyhow::Result<Vec<u32>> {
        let format = self.model.tokenizer.format();
        let pieces = template::render_with_tools(format, system, &tools.list, messages)?;
        self.model.tokenizer.encode_pieces(&pieces)
    }

    fn answer(
        &mut self,
        turn: LocalTurn,
        cancel: &AtomicBool,
        on_event: &mut impl FnMut(Event) -> anyhow::Result<()>,
    ) -> anyhow::Result<Reply> {
        let ids = turn.ids;
        let format = self.model.tokenizer.format();
        let tools = &turn.options.tools;
        let pieces = template::render_with_tools(format, turn.system, &tools.list, turn.window)?;
        let text = template::to_text(&pieces);
        on_event(Event::Prompt { text, ids: &ids })?;
        let mut reuse = common_prefix(&self.cached, &ids);
        let checkpoint = self.fixed_prefix(turn.system, tools, &ids)?;
        let context = self.model.transformer.config.context_length;
        let room = context - ids.len();
        let max_tokens = turn.options.max_tokens.map_or(room, |n| n.min(room));
        self.check_memory(ids.len(), max_tokens)?;
        let mut stop = self.model.defaults.eos_token_id.clone();
        stop.push(self.model.tokenizer.eos());
        let markers = Markers {
            think: Markers::of(&self.model.tokenizer)
                .think
                .filter(|_| turn.options.think),
            ..Markers::of(&self.model.tokenizer)
        };
        let format = tools
            .reply_format(&turn.options.format, &markers)
            .map_err(|e| Failure::Usage.err(format!("tools: {e}")))?;
        let mut constraint = self.constraint(&format)?;
        let mut limits = Limits {
            max_tokens,
            stop: &stop,
            grammar: constraint.as_mut(),
        };
        let mut sampler = Sampler::new(turn.options.sampling.clone(), turn.seed);
        // Until generation succeeds the cache holds an unknown mix.
        self.cached.clear();
        let (mut loaded, reading) = (0, std::time::Instant::now());
        if let Some(disk) = &self.prompt_cache {
            let lookup = Lookup {
                prompt: &ids,
                fixed: checkpoint,
                resumed: turn.resumed,
            };
            let restored = disk.restore(&lookup, reuse, &mut self.model.transformer);
            if restored != reuse {
                (loaded, reuse) = (restored, restored);
            }
        }
        let read_time = reading.elapsed();
        log::debug!(
            "{} prompt tokens, {reuse} in the KV cache ({loaded} from disk), {checkpoint} fixed",
            ids.len()
        );
        let prompt = Prompt {
            tokens: &ids,
            reuse,
            checkpoint,
        };
        let tokenizer = self.model.tokenizer.clone();
        let mut reader = reply::Reader::new(&tokenizer);
        let mut show = |part: Option<Part>| match part {
            Some(Part::Thinking(text)) => on_event(Event::Thinking(text)),
            Some(Part::Text(text)) => on_event(Event::Text(text)),
            None => Ok(()),
        };
        let mut g = generate(
            &mut self.model.transformer,
            prompt,
            &mut sampler,
            &mut limits,
            cancel,
            |token| show(reader.push(&tokenizer, token)?),
        )?;
        let (rest, read) = reader.finish(&tokenizer)?;
        show(rest)?;
        g.stats.loaded_tokens = loaded;
        // The wait for the first token includes the read.
        (g.stats.cache_read_time, g.stats.time_to_first_token) =
            (read_time, g.stats.time_to_first_token + read_time);
        if let (Some(disk), 0) = (&self.prompt_cache, g.stats.reused_tokens) {
            // Computed from nothing, as a run that finds it saved would.
            disk.save(&ids[..checkpoint], Kind::Prefix, &self.model.transformer);
        }
        let mut cached = ids;
        cached.extend(&g.tokens);
        cached.truncate(self.model.transformer.cached());
        self.cached = cached;
        let Some(calls) = read.calls else {
            return Ok(Reply {
                text: read.text,
                reasoning: read.reasoning,
                tool_calls: Vec::new(),
                finish: g.finish,
                stats: g.stats,
            });
        };
        // A list of calls cut short (the token limit, Ctrl-C) is no call.
        let tool_calls = match g.finish {
            Finish::Stop => tools::read_calls(&tokenizer, &calls, turn.seed)
                .map_err(|e| Failure::Generation.err(e))?,
            _ => Vec::new(),
        };
        let finish = match g.finish {
            Finish::Stop => Finish::ToolCalls,
            other => other,
        };
        Ok(Reply {
            text: String::new(),
            reasoning: read.reasoning,
            tool_calls,
            finish,
            stats: g.stats,
        })
    }

    /// Refuses a turn whose KV cache would outgrow the memory left: the
    /// prompt's positions and the reply's (its limit, or a long reply's
    /// worth), beyond those cached already. A 256k context in f16 takes
    /// tens of GB; the cache only grows as a conversation does, so most
    /// turns never come near. A GPU's cache is its own (not checked here).
    fn check_memory(&self, prompt: usize, reply: usize) -> anyhow::Result<()> {
        let transformer = &self.model.transformer;
        let positions = prompt + reply.min(crate::model::PLANNED_CONTEXT);
        let held = transformer.cached();
        let (Some(needed), Some(cached), Some(available)) = (
            transformer.saved_context_bytes(positions),
            transformer.saved_context_bytes(held),
            crate::system::available_memory(),
        ) else {
            return Ok(());
        };
        let Some(more) = kv_shortfall(needed, cached, available) else {
            return Ok(());
        };
        let gb = |b: u64| b as f64 / 1e9;
        Err(Failure::Usage.err(format!(
            "this turn's KV cache needs {:.1} GB more for {positions} tokens, and {:.1} GB of memory are available; shorten the conversation, use --kv-cache q8 (half the size) or a smaller --ctx-size",
            gb(more),
            gb(available)
        )))
    }

    /// A fresh constraint for the reply, when the format asks for one.
    fn constraint(&mut self, format: &Format) -> anyhow::Result<Option<Constraint>> {
        if !self.grammar.as_ref().is_some_and(|(f, _)| f == format) {
            self.grammar =
                Grammar::new(format, &self.model.tokenizer)?.map(|g| (format.clone(), g));
        }
        self.grammar.as_ref().map(|(_, g)| g.start()).transpose()
    }

    /// How many of `ids` stay the same whatever the last message says: the
    /// system prompt (the persona's too) and what comes before it. The
    /// prompt cache keeps them; 0 when there is none, or it is short.
    fn fixed_prefix(&self, system: &System, tools: &Tools, ids: &[u32]) -> anyhow::Result<usize> {
        if system.is_empty() {
            return Ok(0);
        }
        let alone = |text: &str| self.encode(system, tools, &[Message::user(text)]);
        let a = alone("a")?;
        let fixed = common_prefix(&a[..common_prefix(&a, &alone("b")?)], ids);
        Ok(if fixed < prompt_cache::MIN_TOKENS {
            0
        } else {
            fixed
        })
    }

    /// The first message of the window from `first` on that leaves room
    /// for a reply, and the window's prompt.
    fn fit(
        &self,
        messages: &[Message],
        first: usize,
        system: &System,
        options: &Options,
        cancel: &AtomicBool,
    ) -> anyhow::Result<(usize, Vec<u32>)> {
        let context = self.model.transformer.config.context_length;
        // Room kept for the reply: the limit asked for, else an eighth of
        // the context, never more than half of it.
        let reserve = options
            .max_tokens
            .unwrap_or(context / 8)
            .min(context / 2)
            .max(1);
        let measure = |window: &[Message]| self.encode(system, &options.tools, window);
        let (first, ids) = fit_window(messages, first, context - reserve, measure, cancel)?;
        if ids.len() >= context {
            return Err(Failure::Usage.err(format!(
                "this message needs {} tokens with the system prompt, more than the model's context of {context}; shorten it",
                ids.len()
            )));
        }
        Ok((first, ids))
    }
}

/// The bytes a KV cache needs beyond the `cached` it holds to reach
/// `needed`, when that is more than the memory `available` leaves (a tenth
/// kept for the rest).
fn kv_shortfall(needed: u64, cached: u64, available: u64) -> Option<u64> {
    let more = needed.saturating_sub(cached);
    (more > available / 10 * 9).then_some(more)
}

/// The first user message from `first` on whose window (it and all that
/// follows) renders within `budget` tokens, never past the last user
/// message, with that rendering: the window moves by whole exchanges (a
/// user's message, and the replies, calls and results that answer it).
///
/// A rendering only shrinks as its window starts later, so the start is
/// found by bisection, and no window longer than `budget` messages is ever
/// rendered (each message takes at least one token): a handful of
/// renderings of at most a context's worth, however long the saved
/// conversation. `cancel` (Ctrl-C, SIGTERM) is honoured between them.
pub fn fit_window(
    messages: &[Message],
    first: usize,
    budget: usize,
    render: impl Fn(&[Message]) -> anyhow::Result<Vec<u32>>,
    cancel: &AtomicBool,
) -> anyhow::Result<(usize, Vec<u32>)> {
    let mut starts: Vec<usize> = (first..messages.len())
        .filter(|&i| messages[i].role == Role::User)
        .collect();
    if starts.first() != Some(&first) {
        starts.insert(0, first);
    }
    let measure = |k: usize| -> anyhow::Result<Vec<u32>> {
        if cancel.load(Ordering::Relaxed) {
            return Err(
                Failure::Interrupted.err("stopped while fitting the conversation into the context")
            );
        }
        render(&messages[starts[k].min(messages.len())..])
    };
    // A window of more messages than `budget` cannot fit.
    let too_many = messages.len().saturating_sub(budget);
    let last = starts.len() - 1;
    let (mut lo, hi) = (starts.partition_point(|&i| i < too_many).min(last), last);
    // Most turns fit whole: one rendering, no search.
    let ids = measure(lo)?;
    if ids.len() <= budget || lo == hi {
        return Ok((starts[lo], ids));
    }
    let mut hi = hi;
    let mut fitting: Option<(usize, Vec<u32>)> = None;
    lo += 1;
    while lo < hi {
        let mid = (lo + hi) / 2;
        let ids = measure(mid)?;
        if ids.len() <= budget {
            hi = mid;
            fitting = Some((mid, ids));
        } else {
            lo = mid + 1;
        }
    }
    let ids = match fitting {
        Some((k, ids)) if k == lo => ids,
        _ => measure(lo)?,
    };
    Ok((starts[lo], ids))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conversation(n: usize) -> Vec<Message> {
        (0..n)
            .map(|i| {
                if i % 2 == 0 {
                    Message::user(format!("u{i}"))
                } else {
                    Message::assistant(format!("a{i}"))
                }
            })
            .collect()
    }

    /// Ten tokens per message, plus one for BOS.
    fn tokens(window: &[Message]) -> anyhow::Result<Vec<u32>> {
        Ok(vec![0; 1 + 10 * window.len()])
    }

    fn fit(m: &[Message], first: usize, budget: usize) -> usize {
        fit_window(m, first, budget, tokens, &AtomicBool::new(false))
            .unwrap()
            .0
    }

    /// Ministral 3 8B's whole context (256k tokens) in 24 GB: its f16 KV
    /// cache (36.5 GB) is refused, q8's (20.5 GB) fits, and what the cache
    /// holds already counts.
    #[test]
    fn a_long_context_is_refused_unless_it_fits() {
        use crate::model::attention::{HostKvCache, KvType};
        let bytes = |kind| 34 * HostKvCache::new(8, 128, kind).saved_bytes(262_144);
        let memory = 24_000_000_000;
        assert!(kv_shortfall(bytes(KvType::F16), 0, memory).is_some());
        assert!(kv_shortfall(bytes(KvType::Q8), 0, memory).is_none());
        let held = bytes(KvType::F16) - 10_000_000_000;
        assert_eq!(kv_shortfall(bytes(KvType::F16), held, memory), None);
    }

    #[test]
    fn the_window_drops_whole_exchanges_from_the_start() {
        let m = conversation(7);
        assert_eq!(fit(&m, 0, 71), 0);
        assert_eq!(fit(&m, 0, 70), 2);
        assert_eq!(fit(&m, 0, 30), 6);
        // The last user message always stays, even when it alone is too long.
        assert_eq!(fit(&m, 0, 5), 6);
        // The window never moves back.
        assert_eq!(fit(&m, 4, 1000), 4);
    }

    /// The bisection gives the first fitting start that the plain walk
    /// (try each exchange in turn) gives, for every size and budget.
    #[test]
    fn the_window_is_the_one_a_plain_walk_finds() {
        let walk = |m: &[Message], mut first: usize, budget: usize| loop {
            let next = (first + 1..m.len()).find(|&i| m[i].role == Role::User);
            match next {
                Some(next) if tokens(&m[first..]).unwrap().len() > budget => first = next,
                _ => return first,
            }
        };
        for n in 0..12 {
            let m = conversation(n);
            for first in (0..n.max(1)).step_by(2) {
                for budget in 0..130 {
                    assert_eq!(
                        fit(&m, first, budget),
                        walk(&m, first, budget),
                        "{n} {first} {budget}"
                    );
                }
            }
        }
    }

    /// A saved conversation of 20,000 messages is fitted with a handful of
    /// renderings, none longer than the budget allows, and Ctrl-C stops it.
    #[test]
    fn long_conversations_fit_in_few_small_renderings() {
        let m = conversation(20_001);
        let rendered = std::cell::Cell::new(0);
        let counting = |w: &[Message]| {
            rendered.set(rendered.get() + w.len());
            tokens(w)
        };
        let (first, ids) = fit_window(&m, 0, 4096, counting, &AtomicBool::new(false)).unwrap();
        assert_eq!((first, ids.len()), (20_001 - 409, 4091));
        assert!(
            rendered.get() < 20 * 4096,
            "{} messages rendered",
            rendered.get()
        );
        let stopped = fit_window(&m, 0, 4096, tokens, &AtomicBool::new(true)).unwrap_err();
        assert_eq!(crate::exit::code_for(&stopped), 130);
    }
}
