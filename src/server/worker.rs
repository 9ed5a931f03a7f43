//! The model's own thread: every request it is on advances together, one
//! forward pass a step over all of them, through the same turn as `greve
//! ask` (begun, stepped, ended). Requests beyond the KV slots wait in the
//! queue, in the order they came. What a turn produces goes back to its
//! request's HTTP task as [`Event`]s; the task never waits on the model,
//! the model never on a client.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;

use tokio::sync::mpsc::UnboundedSender;

use super::api::{ApiError, ChatRequest, StopScan, Usage};
use crate::conversation::{self, Begun, Conversation, Options, Progress, Running};
use crate::exit::{self, Failure};
use crate::generate::Finish;
use crate::persona::Wrapping;
use crate::structured::Format;
use crate::template::ToolCall;

/// One request, waiting for the model.
pub struct Job {
    pub request: ChatRequest,
    /// Set when the client goes away (or the server stops): the reply
    /// stops within a step.
    pub cancel: Arc<AtomicBool>,
    pub events: UnboundedSender<Event>,
}

pub enum Event {
    /// The request fits and the model is on it: a stream may begin.
    Accepted,
    /// More of the reply's thinking.
    Thinking(String),
    /// More of the reply.
    Text(String),
    /// The reply's calls, whole (sent once, before `Done`).
    Calls(Vec<ToolCall>),
    Done {
        finish: &'static str,
        usage: Usage,
        /// The most requests the model was on at once during this one.
        together: usize,
    },
    Failed(ApiError),
}

/// What the HTTP side and the model's thread both see.
#[derive(Default)]
pub struct Shared {
    /// The server is stopping: no new work, and the replies under way are
    /// cancelled at the next step.
    pub stopping: AtomicBool,
}

impl Shared {
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }
}

pub struct Worker {
    pub conversation: Conversation,
    /// The settings' options, which each request may override.
    pub base: Options,
    /// The seed of every request that names none, when the settings gave
    /// one; else each request draws its own.
    pub seed: Option<u64>,
    pub shared: Arc<Shared>,
}

/// A request the model is on.
struct Active {
    run: Box<Running>,
    relay: Relay,
    /// The most requests stepped together with this one (itself included).
    together: usize,
}

/// Where a request's reply goes: to its client, through its stop strings,
/// wrapped in the persona's letterhead and sign-off.
struct Relay {
    events: UnboundedSender<Event>,
    cancel: Arc<AtomicBool>,
    scan: StopScan,
    wrapping: Wrapping,
}

impl Relay {
    /// Sends `event`; a client gone cancels its reply.
    fn send(&self, event: Event) {
        if self.events.send(event).is_err() {
            self.cancel.store(true, Ordering::SeqCst);
        }
    }

    fn send_text(&self, text: String) {
        if !text.is_empty() {
            self.send(Event::Text(text));
        }
    }

    /// Passes on what the turn produced.
    fn on(&mut self, event: conversation::Event) -> anyhow::Result<()> {
        match event {
            conversation::Event::Prompt { .. } => {
                self.send(Event::Accepted);
                if let Some(letterhead) = &self.wrapping.letterhead {
                    self.send(Event::Text(format!("{letterhead}\n\n")));
                }
            }
            conversation::Event::Thinking(text) if !text.is_empty() => {
                self.send(Event::Thinking(text))
            }
            conversation::Event::Thinking(_) => {}
            conversation::Event::Text(text) => {
                let text = self.scan.push(&text);
                self.send_text(text);
                if self.scan.stopped {
                    self.cancel.store(true, Ordering::SeqCst);
                }
            }
        }
        Ok(())
    }
}

impl Worker {
    pub fn run(mut self, jobs: Receiver<Job>) {
        let mut active: Vec<Active> = Vec::new();
        loop {
            // Free slots take the requests waiting; with none under way,
            // the thread sleeps until one comes.
            while active.len() < self.slots() {
                let job = match active.is_empty() {
                    true => match jobs.recv() {
                        Ok(job) => job,
                        Err(_) => return, // the server is gone
                    },
                    false => match jobs.try_recv() {
                        Ok(job) => job,
                        Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                    },
                };
                active.extend(self.start(job));
            }
            if self.shared.stopping.load(Ordering::SeqCst) {
                for a in &active {
                    a.relay.cancel.store(true, Ordering::SeqCst);
                }
            }
            if !active.is_empty() {
                self.step(&mut active);
            }
        }
    }

    fn slots(&self) -> usize {
        self.conversation.local().map_or(1, |l| l.slots())
    }

    /// Begins a request's turn; `None` when it is over already (its client
    /// left, it failed, or a strike notice answered it).
    fn start(&mut self, job: Job) -> Option<Active> {
        if job.cancel.load(Ordering::SeqCst) {
            return None; // its client left while it waited
        }
        if self.shared.stopping.load(Ordering::SeqCst) {
            let _ = job.events.send(Event::Failed(stopping()));
            return None;
        }
        let events = job.events.clone();
        match self.begin(job) {
            Ok(active) => active,
            Err(e) => {
                let _ = events.send(Event::Failed(e));
                None
            }
        }
    }

    fn begin(&mut self, job: Job) -> Result<Option<Active>, ApiError> {
        let r = job.request;
        let mut o = self.base.clone();
        if r.system.is_some() {
            o.system = r.system;
        }
        o.mode = r.strike.unwrap_or(o.mode);
        o.sampling.temperature = r.temperature.unwrap_or(o.sampling.temperature);
        o.sampling.top_p = r.top_p.unwrap_or(o.sampling.top_p);
        o.sampling.top_k = r.top_k.unwrap_or(o.sampling.top_k);
        o.max_tokens = r.max_tokens.or(o.max_tokens);
        o.seed = r.seed.or(self.seed).unwrap_or_else(rand::random);
        if let Some(format) = r.format {
            o.format = format;
        }
        o.tools = r.tools;
        o.think = r.think.unwrap_or(o.think);
        // What a strike notice cannot be.
        let structured = o.format != Format::Text || o.tools.must_call();
        let c = &mut self.conversation;
        c.options = o;
        c.replace(r.messages);
        let mut relay = Relay {
            events: job.events,
            cancel: job.cancel,
            scan: StopScan::new(r.stop),
            wrapping: c.wrapping(),
        };
        let cancel = relay.cancel.clone();
        let begun = c.begin_whole(&cancel, &mut |event| relay.on(event));
        match begun.map_err(|e| failure(&e))? {
            Begun::Running(run) => Ok(Some(Active {
                run,
                relay,
                together: 1,
            })),
            Begun::Answered(_) if structured => {
                let message = format!(
                    "on strike ({}): no JSON and no tool call today, only a strike notice; send \"strike\": \"off\" to get some",
                    c.options.mode.name()
                );
                Err(ApiError::new(503, "strike", message).with_code("on_strike"))
            }
            Begun::Answered(turn) => {
                relay.send(Event::Accepted);
                relay.send(Event::Text(turn.text));
                relay.send(Event::Done {
                    finish: "stop",
                    usage: Usage::default(),
                    together: 0,
                });
                Ok(None)
            }
        }
    }

    /// One forward pass over every request under way; those it ends leave.
    fn step(&mut self, active: &mut Vec<Active>) {
        let n = active.len();
        let mut runs: Vec<_> = active
            .iter_mut()
            .map(|a| {
                a.together = a.together.max(n);
                (&mut *a.run, &*a.relay.cancel)
            })
            .collect();
        let progress = self.conversation.step(&mut runs);
        drop(runs);
        let mut ended = Vec::new();
        for (i, progress) in progress.into_iter().enumerate() {
            match progress {
                Ok(Progress::Working) => {}
                Ok(Progress::Part(part)) => {
                    let _ = active[i].relay.on(conversation::event(part));
                }
                Ok(Progress::Done(finish)) => ended.push((i, Ok(finish))),
                Err(e) => ended.push((i, Err(e))),
            }
        }
        // From the last, so that the indices still hold.
        for (i, outcome) in ended.into_iter().rev() {
            let Active {
                run,
                mut relay,
                together,
            } = active.remove(i);
            let event = self
                .end(*run, outcome, &mut relay, together)
                .unwrap_or_else(Event::Failed);
            relay.send(event);
        }
    }

    /// Ends a request's turn: the rest of its reply, then how it ended.
    fn end(
        &mut self,
        run: Running,
        outcome: anyhow::Result<Finish>,
        relay: &mut Relay,
        together: usize,
    ) -> Result<Event, ApiError> {
        let c = &mut self.conversation;
        let turn = c
            .end(run, outcome, &mut |event| relay.on(event))
            .map_err(|e| failure(&e))?;
        let rest = relay.scan.finish();
        relay.send_text(rest);
        if !turn.tool_calls.is_empty() {
            relay.send(Event::Calls(turn.tool_calls));
        }
        let finish = match turn.finish {
            _ if relay.scan.stopped => "stop",
            Finish::Stop => "stop",
            Finish::ToolCalls => "tool_calls",
            Finish::Length => "length",
            Finish::Interrupted if self.shared.stopping.load(Ordering::SeqCst) => {
                return Err(stopping())
            }
            Finish::Interrupted => {
                let n = c.last.as_ref().map_or(0, |s| s.generated_tokens);
                log::info!("reply stopped after {n} tokens: its client left");
                "stop" // no one reads it
            }
        };
        if let Some(signoff) = &relay.wrapping.signoff {
            relay.send(Event::Text(format!("\n\n{signoff}")));
        }
        let stats = c.last.clone().unwrap_or_default();
        Ok(Event::Done {
            finish,
            usage: Usage {
                prompt: stats.prompt_tokens,
                completion: stats.generated_tokens,
                cached: stats.reused_tokens,
            },
            together,
        })
    }
}

fn stopping() -> ApiError {
    ApiError::new(503, "server_error", "the server is shutting down").with_code("shutting_down")
}

/// A failed turn as the API reports it: the request's fault (400) or the
/// server's (500).
fn failure(e: &anyhow::Error) -> ApiError {
    let message = exit::one_line(e);
    match exit::class_of(e) {
        Some(Failure::Usage) => ApiError {
            param: Some("messages".into()),
            ..ApiError::new(400, "invalid_request_error", message)
        },
        _ => ApiError::new(500, "server_error", message),
    }
}
