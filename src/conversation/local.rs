//! A model loaded in this process answering a conversation's turns: the
//! prompt rendered and fitted to the context, the KV cache (and the prompt
//! cache on disk) reused, the reply generated under its limits and
//! grammar, then read into text or calls.

use std::cmp::Reverse;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use super::window::fit_window;
use crate::batch::{self, Member};
use crate::exit::Failure;
use crate::generate::{Finish, Generation, Generator, Limits, Prompt, Step};
use crate::model::transformer::Context;
use crate::model::Model;
use crate::prompt_cache::{self, common_prefix, Kind, Lookup, PromptCache};
use crate::reply::{self, Part, Read};
use crate::sampler::Sampler;
use crate::structured::{Constraint, Format, Grammar};
use crate::template::{self, Message, System};
use crate::tokenizer::Tokenizer;
use crate::tools::{self, Markers, Tools};
use crate::turn::{Event, Options, Reply};

/// A model loaded in this process, and what its turns leave for the next.
pub struct Local {
    pub model: Model,
    /// The output format compiled for this model's vocabulary, kept while
    /// the format stays the same.
    grammar: Option<(Format, Grammar)>,
    /// Keys and values on disk, to start from where an earlier run left.
    pub prompt_cache: Option<PromptCache>,
    /// The conversations' KV caches: one for `ask` and `chat`, one per
    /// request answered at once by `greve serve --parallel`. Each keeps
    /// what its last turn left, for the next turn that shares it.
    slots: Vec<Slot>,
    /// Turns begun so far, and the slot of the last.
    clock: u64,
    last: usize,
}

/// A conversation's KV cache, and the tokens it holds.
struct Slot {
    cached: Vec<u32>,
    /// Out while a turn runs on it.
    context: Option<Context>,
    /// When a turn last began on it: the least recent gives way first.
    used: u64,
}

/// A turn under way on the model: its prompt and limits, where its reply
/// stands, and its slot's KV cache. Several step together ([`Local::step`]).
pub struct Running {
    ready: Ready,
    generator: Generator,
    reader: reply::Reader,
    context: Context,
    slot: usize,
    seed: u64,
    /// Messages that left the model's window to make room.
    pub(super) dropped: usize,
}

/// What a step did for a turn.
pub enum Progress {
    /// Some of the prompt was read (or waits for room in the batch), or a
    /// token that shows nothing yet.
    Working,
    /// More of the reply.
    Part(Part),
    Done(Finish),
}

/// What a local turn needs of the conversation.
pub(super) struct LocalTurn<'a> {
    /// The window's prompt.
    pub(super) ids: Vec<u32>,
    pub(super) system: &'a System,
    /// The messages in the model's window, the last the user's.
    pub(super) window: &'a [Message],
    pub(super) options: &'a Options,
    pub(super) seed: u64,
    pub(super) resumed: bool,
}

impl Local {
    pub fn new(mut model: Model) -> Self {
        let planned = crate::model::PLANNED_CONTEXT.min(model.transformer.config.context_length);
        model.transformer.reserve(planned);
        // The first slot takes the planned cache; the transformer keeps an
        // empty one while no turn has its slot's in.
        let mut first = model.transformer.new_context(model.transformer.kv_type());
        model.transformer.swap_context(&mut first);
        Local {
            model,
            grammar: None,
            prompt_cache: None,
            slots: vec![Slot {
                cached: Vec::new(),
                context: Some(first),
                used: 0,
            }],
            clock: 0,
            last: 0,
        }
    }

    /// Keeps the KV caches of `n` conversations: clients that alternate
    /// each find theirs, and `n` turns may run at once. Each grows as its
    /// conversation does, within the context.
    pub fn keep_slots(&mut self, n: usize) {
        let transformer = &self.model.transformer;
        let kind = transformer.kv_type();
        self.slots.truncate(n.max(1));
        while self.slots.len() < n {
            self.slots.push(Slot {
                cached: Vec::new(),
                context: Some(transformer.new_context(kind)),
                used: 0,
            });
        }
    }

    /// Turns that may run at once.
    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// The free slot whose KV cache holds the longest prefix of `ids`,
    /// among those that `ids` would reuse more than half of, and else the
    /// least recently used one (an empty one first).
    fn pick_slot(&mut self, ids: &[u32]) -> anyhow::Result<usize> {
        self.clock += 1;
        let best = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.context.is_some())
            .map(|(i, s)| (suitability(&s.cached, s.used, ids), i))
            .max();
        let Some((score, i)) = best else {
            return Err(Failure::Generation.err("every KV cache is in use: no turn can begin"));
        };
        log::debug!("KV cache {i} holds {} tokens of the prompt", score.1);
        self.slots[i].used = self.clock;
        Ok(i)
    }

    /// The tokens whose keys and values are in the last turn's KV cache,
    /// in order.
    pub(super) fn cached(&self) -> &[u32] {
        &self.slots[self.last].cached
    }

    /// Runs `f` with slot `i`'s KV cache in the transformer, as the prompt
    /// cache and a prompt's reuse expect it.
    fn in_slot<R>(&mut self, context: &mut Context, f: impl FnOnce(&mut Self) -> R) -> R {
        self.model.transformer.swap_context(context);
        let r = f(self);
        self.model.transformer.swap_context(context);
        r
    }

    /// Saves the last turn's conversation in the prompt cache on disk.
    pub(super) fn save_conversation(&mut self) {
        let i = self.last;
        let Some(mut context) = self.slots[i].context.take() else {
            return;
        };
        self.in_slot(&mut context, |local| {
            if let Some(disk) = &local.prompt_cache {
                disk.save(
                    &local.slots[i].cached,
                    Kind::Conversation,
                    &local.model.transformer,
                );
            }
        });
        self.slots[i].context = Some(context);
    }

    /// The ids of a conversation rendered with the model's instruct format.
    /// The system prompt of a turn: the model's reasoning prompt when it
    /// has one and is to think, then `text` (the user's and the persona's).
    pub(super) fn system(&self, text: Option<&str>, think: bool) -> System {
        match (&self.model.reasoning, think) {
            (Some(reasoning), true) => reasoning.clone().then(text),
            _ => System::text(text),
        }
    }

    pub(super) fn encode(
        &self,
        system: &System,
        tools: &Tools,
        messages: &[Message],
    ) -> anyhow::Result<Vec<u32>> {
        let format = self.model.tokenizer.format();
        let pieces = template::render_with_tools(format, system, &tools.list, messages)?;
        self.model.tokenizer.encode_pieces(&pieces)
    }

    /// Runs a turn begun here alone, to its end.
    pub(super) fn run(
        &mut self,
        mut run: Running,
        cancel: &AtomicBool,
        on_event: &mut impl FnMut(Event) -> anyhow::Result<()>,
    ) -> anyhow::Result<Reply> {
        let outcome = loop {
            let progress = self.step(&mut [(&mut run, cancel)]);
            match progress.into_iter().next().expect("one progress a turn") {
                Ok(Progress::Done(finish)) => break Ok(finish),
                Ok(Progress::Part(part)) => {
                    if let Err(e) = on_event(event(part)) {
                        break Err(e);
                    }
                }
                Ok(Progress::Working) => {}
                Err(e) => break Err(e),
            }
        };
        self.end(run, outcome, on_event)
    }

    /// Begins a turn on the free KV cache that suits it best: everything
    /// decided before the first forward pass.
    pub(super) fn begin(
        &mut self,
        turn: LocalTurn,
        on_event: &mut impl FnMut(Event) -> anyhow::Result<()>,
    ) -> anyhow::Result<Running> {
        let slot = self.pick_slot(&turn.ids)?;
        let seed = turn.seed;
        let mut context = self.slots[slot].context.take().expect("a free slot");
        let begun = self.in_slot(&mut context, |local| {
            let ready = local.prepare(slot, turn, on_event)?;
            let prompt = Prompt {
                tokens: &ready.ids,
                reuse: ready.reuse,
                checkpoint: ready.checkpoint,
            };
            let generator = Generator::new(&mut local.model.transformer, prompt);
            anyhow::Ok((ready, generator))
        });
        let (ready, generator) = match begun {
            Ok(begun) => begun,
            Err(e) => {
                self.slots[slot].context = Some(context);
                return Err(e);
            }
        };
        Ok(Running {
            ready,
            generator,
            reader: reply::Reader::new(&self.model.tokenizer),
            context,
            slot,
            seed,
            dropped: 0,
        })
    }

    /// One step of each turn in `runs`, with the cancel flag of each (see
    /// [`batch::step`]), then a token sampled for each that needs one. What
    /// each turn did, in their order.
    pub(super) fn step(
        &mut self,
        runs: &mut [(&mut Running, &AtomicBool)],
    ) -> Vec<anyhow::Result<Progress>> {
        let mut members: Vec<_> = runs
            .iter_mut()
            .map(|(run, cancel)| {
                let Running {
                    generator,
                    context,
                    ready,
                    ..
                } = &mut **run;
                Member {
                    generator,
                    context,
                    max_tokens: ready.max_tokens,
                    cancel,
                }
            })
            .collect();
        let steps = batch::step(&mut self.model.transformer, &mut members);
        drop(members);
        let tokenizer = &self.model.tokenizer;
        runs.iter_mut()
            .zip(steps)
            .map(|((run, cancel), step)| match step? {
                None => run.sample(tokenizer, cancel),
                Some(Step::Done(finish)) => Ok(Progress::Done(finish)),
                Some(_) => Ok(Progress::Working),
            })
            .collect()
    }

    /// Ends a turn with its `outcome` (how its generation finished, or why
    /// it failed): the rest of its reply shown, its KV cache given back with
    /// what it holds, the reply read.
    pub(super) fn end(
        &mut self,
        run: Running,
        outcome: anyhow::Result<Finish>,
        on_event: &mut impl FnMut(Event) -> anyhow::Result<()>,
    ) -> anyhow::Result<Reply> {
        let Running {
            ready,
            generator,
            reader,
            mut context,
            slot,
            seed,
            ..
        } = run;
        let tokenizer = self.model.tokenizer.clone();
        let read = outcome.and_then(|finish| {
            let (rest, read) = reader.finish(&tokenizer)?;
            if let Some(part) = rest {
                on_event(event(part))?;
            }
            Ok((finish, read))
        });
        self.last = slot;
        let (finish, read) = match read {
            Ok(read) => read,
            Err(e) => {
                // Until a generation succeeds its cache holds an unknown mix.
                self.slots[slot].context = Some(context);
                return Err(e);
            }
        };
        let mut g = generator.finish(finish);
        g.stats.loaded_tokens = ready.loaded;
        // The wait for the first token includes the read.
        (g.stats.cache_read_time, g.stats.time_to_first_token) = (
            ready.read_time,
            g.stats.time_to_first_token + ready.read_time,
        );
        self.in_slot(&mut context, |local| local.keep(slot, ready, &g));
        self.slots[slot].context = Some(context);
        reply(read, g, &tokenizer, seed)
    }

    /// Everything decided before the first forward pass, with the slot's
    /// KV cache in the transformer: the prompt shown, what the caches hold
    /// of it, the reply's limits, grammar and sampler.
    fn prepare(
        &mut self,
        slot: usize,
        turn: LocalTurn,
        on_event: &mut impl FnMut(Event) -> anyhow::Result<()>,
    ) -> anyhow::Result<Ready> {
        let ids = turn.ids;
        let format = self.model.tokenizer.format();
        let tools = &turn.options.tools;
        let pieces = template::render_with_tools(format, turn.system, &tools.list, turn.window)?;
        let text = template::to_text(&pieces);
        on_event(Event::Prompt { text, ids: &ids })?;
        let checkpoint = self.fixed_prefix(turn.system, tools, &ids)?;
        let room = self.model.transformer.config.context_length - ids.len();
        let max_tokens = turn.options.max_tokens.map_or(room, |n| n.min(room));
        self.check_memory(ids.len(), max_tokens)?;
        let mut stop = self.model.defaults.eos_token_id.clone();
        stop.push(self.model.tokenizer.eos());
        let constraint = self.reply_constraint(turn.options)?;
        let sampler = Sampler::new(turn.options.sampling.clone(), turn.seed);
        let reuse = common_prefix(&self.slots[slot].cached, &ids);
        // Until generation succeeds the cache holds an unknown mix.
        self.slots[slot].cached.clear();
        let reading = Instant::now();
        let (reuse, loaded) = self.restore(&ids, reuse, checkpoint, turn.resumed);
        log::debug!(
            "{} prompt tokens, {reuse} in the KV cache ({loaded} from disk), {checkpoint} fixed",
            ids.len()
        );
        Ok(Ready {
            reuse,
            ids,
            checkpoint,
            loaded,
            read_time: reading.elapsed(),
            max_tokens,
            stop,
            constraint,
            sampler,
        })
    }

    /// The grammar the reply follows, if any: the format's, or the calls'
    /// (after the thinking, for a model that may think).
    fn reply_constraint(&mut self, options: &Options) -> anyhow::Result<Option<Constraint>> {
        let tokenizer = &self.model.tokenizer;
        let markers = Markers {
            think: Markers::of(tokenizer).think.filter(|_| options.think),
            ..Markers::of(tokenizer)
        };
        let format = options
            .tools
            .reply_format(&options.format, &markers)
            .map_err(|e| Failure::Usage.err(format!("tools: {e}")))?;
        self.constraint(&format)
    }

    /// Reads from the prompt cache on disk the positions of `ids` it holds
    /// beyond the `reuse` ones the KV cache has: the positions of `ids` the
    /// KV cache then holds, and how many were read.
    fn restore(
        &mut self,
        ids: &[u32],
        reuse: usize,
        checkpoint: usize,
        resumed: bool,
    ) -> (usize, usize) {
        let Some(disk) = &self.prompt_cache else {
            return (reuse, 0);
        };
        let lookup = Lookup {
            prompt: ids,
            fixed: checkpoint,
            resumed,
        };
        // A damaged entry is removed, and the KV cache left empty.
        match disk.restore(&lookup, reuse, &mut self.model.transformer) {
            unchanged if unchanged == reuse => (reuse, 0),
            restored => (restored, restored),
        }
    }

    /// What the turn leaves for the next: the tokens in the KV cache, and
    /// on disk the prompt's fixed prefix, when it was computed from nothing
    /// (as a run that finds it saved would compute it).
    fn keep(&mut self, slot: usize, ready: Ready, g: &Generation) {
        if let (Some(disk), 0) = (&self.prompt_cache, g.stats.reused_tokens) {
            disk.save(
                &ready.ids[..ready.checkpoint],
                Kind::Prefix,
                &self.model.transformer,
            );
        }
        let mut cached = ready.ids;
        cached.extend(&g.tokens);
        cached.truncate(self.model.transformer.cached());
        self.slots[slot].cached = cached;
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
    pub(super) fn fit(
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

/// How well a KV cache holding `cached`, last used at turn `used`, suits
/// the prompt `ids`, the best the greatest: one that `ids` reuses more than
/// half of, by the prefix it holds; else the least recently used.
fn suitability(cached: &[u32], used: u64, ids: &[u32]) -> (bool, usize, Reverse<u64>) {
    let shared = common_prefix(cached, ids);
    let reused = shared * 2 > cached.len();
    (reused, if reused { shared } else { 0 }, Reverse(used))
}

impl Running {
    /// Samples the turn's next token and reads it.
    fn sample(&mut self, tokenizer: &Tokenizer, cancel: &AtomicBool) -> anyhow::Result<Progress> {
        let ready = &mut self.ready;
        let mut limits = Limits {
            max_tokens: ready.max_tokens,
            stop: &ready.stop,
            grammar: ready.constraint.as_mut(),
        };
        Ok(
            match self
                .generator
                .sample(&mut ready.sampler, &mut limits, cancel)?
            {
                Step::Done(finish) => Progress::Done(finish),
                Step::Prefilled | Step::Waiting => Progress::Working,
                Step::Token(token) => match self.reader.push(tokenizer, token)? {
                    Some(part) => Progress::Part(part),
                    None => Progress::Working,
                },
            },
        )
    }
}

/// A part of a reply as the front ends see it.
pub fn event(part: Part) -> Event<'static> {
    match part {
        Part::Thinking(text) => Event::Thinking(text),
        Part::Text(text) => Event::Text(text),
    }
}

/// A turn made ready for the model: its prompt and what the caches hold
/// of it, and what bounds its reply.
struct Ready {
    ids: Vec<u32>,
    /// Positions of `ids` in the KV cache (some read from disk).
    reuse: usize,
    /// The system prompt's fixed prefix, which the prompt cache keeps.
    checkpoint: usize,
    /// Positions read from the prompt cache on disk, and the time it took.
    loaded: usize,
    read_time: Duration,
    max_tokens: usize,
    stop: Vec<u32>,
    constraint: Option<Constraint>,
    sampler: Sampler,
}

/// A generation read into the reply: its text, or the calls it makes (none
/// when they were cut short: the token limit, Ctrl-C).
fn reply(read: Read, g: Generation, tokenizer: &Tokenizer, seed: u64) -> anyhow::Result<Reply> {
    let Some(calls) = read.calls else {
        return Ok(Reply {
            text: read.text,
            reasoning: read.reasoning,
            tool_calls: Vec::new(),
            finish: g.finish,
            stats: g.stats,
        });
    };
    let (tool_calls, finish) = match g.finish {
        Finish::Stop => {
            let calls = tools::read_calls(tokenizer, &calls, seed)
                .map_err(|e| Failure::Generation.err(e))?;
            (calls, Finish::ToolCalls)
        }
        other => (Vec::new(), other),
    };
    Ok(Reply {
        text: String::new(),
        reasoning: read.reasoning,
        tool_calls,
        finish,
        stats: g.stats,
    })
}

/// The bytes a KV cache needs beyond the `cached` it holds to reach
/// `needed`, when that is more than the memory `available` leaves (a tenth
/// kept for the rest).
fn kv_shortfall(needed: u64, cached: u64, available: u64) -> Option<u64> {
    let more = needed.saturating_sub(cached);
    (more > available / 10 * 9).then_some(more)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client's own cache suits its next request; another client's,
    /// which it would mostly throw away, does not, and an empty cache (or
    /// the least recently used) takes the request instead.
    #[test]
    fn a_request_takes_the_cache_it_reuses() {
        let a: Vec<u32> = (1..=40).collect();
        let a_next: Vec<u32> = (1..=50).collect();
        let b_next: Vec<u32> = [1, 2].into_iter().chain(100..130).collect();
        let own = suitability(&a, 5, &a_next);
        assert!(own > suitability(&[], 0, &a_next));
        let other = suitability(&a, 5, &b_next);
        assert!(suitability(&[], 0, &b_next) > other);
        assert!(suitability(&[7], 1, &b_next) > suitability(&[8], 2, &b_next));
        // The longer of two reused prefixes wins, however recent.
        let half: Vec<u32> = (1..=30).collect();
        assert!(suitability(&a, 1, &a_next) > suitability(&half, 9, &a_next));
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
}
