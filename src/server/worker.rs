//! The model's own thread: requests one at a time, in the order they came,
//! through the same [`Conversation`] as `greve ask`. What it produces goes
//! back to the request's HTTP task as [`Event`]s; the task never waits on
//! the model, the model never on a client.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc::UnboundedSender;

use super::api::{ApiError, ChatRequest, StopScan, Usage};
use crate::conversation::{self, Conversation, Options};
use crate::exit::{self, Failure};
use crate::generate::Finish;
use crate::structured::Format;
use crate::template::ToolCall;

/// One request, waiting for the model.
pub struct Job {
    pub request: ChatRequest,
    /// Set when the client goes away (or the server stops): the reply
    /// stops within a token.
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
    },
    Failed(ApiError),
}

/// What the HTTP side and the model's thread both see.
#[derive(Default)]
pub struct Shared {
    /// The server is stopping: no new work.
    pub stopping: AtomicBool,
    /// The job the model is on.
    running: Mutex<Option<Arc<AtomicBool>>>,
}

impl Shared {
    /// Stops taking work and cancels the reply under way.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        if let Some(cancel) = &*self.running.lock().unwrap_or_else(|e| e.into_inner()) {
            cancel.store(true, Ordering::SeqCst);
        }
    }

    fn set_running(&self, job: Option<&Job>) {
        *self.running.lock().unwrap_or_else(|e| e.into_inner()) = job.map(|j| j.cancel.clone());
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

impl Worker {
    pub fn run(mut self, jobs: Receiver<Job>) {
        for job in jobs {
            if job.cancel.load(Ordering::SeqCst) {
                continue; // its client left while it waited
            }
            if self.shared.stopping.load(Ordering::SeqCst) {
                let _ = job.events.send(Event::Failed(stopping()));
                continue;
            }
            self.shared.set_running(Some(&job));
            // A stop that came just before it was registered.
            if self.shared.stopping.load(Ordering::SeqCst) {
                job.cancel.store(true, Ordering::SeqCst);
            }
            let outcome = self.answer(&job);
            self.shared.set_running(None);
            let event = match outcome {
                Ok(done) => done,
                Err(e) => Event::Failed(e),
            };
            let _ = job.events.send(event);
        }
    }

    fn answer(&mut self, job: &Job) -> Result<Event, ApiError> {
        let r = &job.request;
        let mut o = self.base.clone();
        if r.system.is_some() {
            o.system.clone_from(&r.system);
        }
        o.mode = r.strike.unwrap_or(o.mode);
        o.sampling.temperature = r.temperature.unwrap_or(o.sampling.temperature);
        o.sampling.top_p = r.top_p.unwrap_or(o.sampling.top_p);
        o.sampling.top_k = r.top_k.unwrap_or(o.sampling.top_k);
        o.max_tokens = r.max_tokens.or(o.max_tokens);
        o.seed = r.seed.or(self.seed).unwrap_or_else(rand::random);
        if let Some(format) = &r.format {
            o.format = format.clone();
        }
        o.tools = r.tools.clone();
        o.think = r.think.unwrap_or(o.think);
        // What a strike notice cannot be.
        let structured = o.format != Format::Text || o.tools.must_call();
        let c = &mut self.conversation;
        c.options = o;
        c.replace(r.messages.clone());
        let wrapping = c.wrapping();
        let mut scan = StopScan::new(r.stop.clone());
        let send = |event| {
            if job.events.send(event).is_err() {
                job.cancel.store(true, Ordering::SeqCst);
            }
        };
        let turn = c.answer_whole(&job.cancel, |event| {
            match event {
                conversation::Event::Prompt { .. } => {
                    send(Event::Accepted);
                    if let Some(letterhead) = &wrapping.letterhead {
                        send(Event::Text(format!("{letterhead}\n\n")));
                    }
                }
                conversation::Event::Thinking(text) if !text.is_empty() => {
                    send(Event::Thinking(text))
                }
                conversation::Event::Thinking(_) => {}
                conversation::Event::Text(text) => {
                    send_text(&send, scan.push(&text));
                    if scan.stopped {
                        job.cancel.store(true, Ordering::SeqCst);
                    }
                }
            }
            Ok(())
        });
        let turn = turn.map_err(|e| failure(&e))?;
        if turn.notice {
            if structured {
                let message = format!(
                    "on strike ({}): no JSON and no tool call today, only a strike notice; send \"strike\": \"off\" to get some",
                    c.options.mode.name()
                );
                return Err(ApiError::new(503, "strike", message).with_code("on_strike"));
            }
            send(Event::Accepted);
            send(Event::Text(turn.text));
            return Ok(Event::Done {
                finish: "stop",
                usage: Usage::default(),
            });
        }
        send_text(&send, scan.finish());
        if !turn.tool_calls.is_empty() {
            send(Event::Calls(turn.tool_calls));
        }
        let finish = match turn.finish {
            _ if scan.stopped => "stop",
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
        if let Some(signoff) = &wrapping.signoff {
            send(Event::Text(format!("\n\n{signoff}")));
        }
        let stats = c.last.clone().unwrap_or_default();
        Ok(Event::Done {
            finish,
            usage: Usage {
                prompt: stats.prompt_tokens,
                completion: stats.generated_tokens,
                cached: stats.reused_tokens,
            },
        })
    }
}

fn send_text(send: &impl Fn(Event), text: String) {
    if !text.is_empty() {
        send(Event::Text(text));
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
