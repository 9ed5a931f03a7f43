//! `greve serve`: OpenAI's chat-completions API over HTTP/1.1, so that every
//! editor, agent and client library that speaks it can use greve.
//!
//! hyper serves the connections on tokio's current-thread runtime; the
//! model runs on a thread of its own ([`worker`]), fed by a bounded queue,
//! stepping every request it is on together.
//! A full queue is answered at once (503), never waited on. `api.rs` reads
//! requests and writes replies; this file is the HTTP around them: routes,
//! the API key, limits on what a client may send and for how long, CORS,
//! the log line, and stopping on a signal.

pub mod api;
mod worker;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::exit::{Classify, Failure};
use crate::messages;
use crate::settings::{Settings, Source};
use api::{ApiError, Header, Usage};
use worker::{Event, Job, Shared, Worker};

/// How `greve serve` listens, besides the settings every turn has.
#[derive(Clone, Debug)]
pub struct Options {
    pub host: String,
    pub port: u16,
    /// Requests must carry `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
    /// The origin browsers may call from (`*` for any).
    pub cors: Option<String>,
    /// Requests that may wait for the model; more are refused (503).
    pub queue: usize,
    /// Requests answered together, each conversation's KV cache kept
    /// between requests.
    pub parallel: usize,
    /// How long a client may take to send a request's headers, then its body.
    pub timeout: Duration,
}

/// Request bodies above this are refused (413): a context's worth of text
/// is well under it.
const MAX_BODY: usize = 8 << 20;
/// Connections served at once; more are closed on arrival.
const MAX_CONNECTIONS: usize = 256;
/// How long in-flight replies get to end once a signal stops the server.
const GRACE: Duration = Duration::from_secs(5);

type Body = UnsyncBoxBody<Bytes, Infallible>;

struct State {
    model: String,
    context: usize,
    created: u64,
    api_key: Option<String>,
    cors: Option<HeaderValue>,
    timeout: Duration,
    queue: usize,
    jobs: SyncSender<Job>,
    shared: Arc<Shared>,
}

/// Loads the model named by `settings` and serves it until a signal sets
/// `cancel`.
pub fn run(mut settings: Settings, options: &Options, cancel: &AtomicBool) -> anyhow::Result<()> {
    // The config file's `remote` is for ask and chat: this serves a model.
    settings.remote.value = None;
    let listener = listen(options)?;
    let address = listener.local_addr()?;
    let start = crate::conversation::start(settings)?;
    let seed = (start.settings.seed.from != Source::Default).then_some(start.settings.seed.value);
    let mut conversation = start.open()?;
    if let crate::conversation::Engine::Local(local) = &mut conversation.engine {
        local.keep_slots(options.parallel);
    }
    let local = conversation.local().expect("no remote: a model is loaded");
    let (model, context) = (
        local.model.name.clone(),
        local.model.transformer.config.context_length,
    );
    let base = conversation.options.clone();
    let (jobs, queue) = sync_channel(options.queue);
    let shared = Arc::new(Shared::default());
    let state = Arc::new(State {
        model,
        context,
        created: now(),
        api_key: options.api_key.clone().filter(|k| !k.is_empty()),
        cors: options
            .cors
            .as_deref()
            .map(HeaderValue::from_str)
            .transpose()
            .map_err(|_| Failure::Usage.err("--cors: not a valid origin"))?,
        timeout: options.timeout,
        queue: options.queue,
        jobs,
        shared: shared.clone(),
    });
    let worker = Worker {
        conversation,
        base,
        seed,
        shared,
    };
    let model_thread = std::thread::Builder::new()
        .name("greve-model".into())
        .spawn(move || worker.run(queue))?;
    messages::note(format!(
        "serving {} on http://{address}/v1 (OpenAI's chat completions); Ctrl-C stops",
        state.model
    ));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let served = crate::interrupt::stoppable(|| runtime.block_on(serve(listener, state, cancel)));
    // With the runtime go the connections left and the last holder of the
    // queue's sender: the model's thread ends.
    drop(runtime);
    let _ = model_thread.join();
    served
}

fn listen(options: &Options) -> anyhow::Result<TcpListener> {
    let host = match options.host.trim_start_matches('[').trim_end_matches(']') {
        "localhost" => "127.0.0.1",
        host => host,
    };
    let ip: IpAddr = host.parse().map_err(|_| {
        Failure::Usage.err(format!(
            "--host {}: an IP address is expected, such as 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)",
            messages::short(host)
        ))
    })?;
    if !ip.is_loopback() && options.api_key.as_deref().is_none_or(str::is_empty) {
        messages::warn(format!(
            "listening on {ip} with no API key: anyone who can reach this machine can use the model; set --api-key or GREVE_API_KEY"
        ));
    }
    let listener =
        TcpListener::bind(SocketAddr::new(ip, options.port)).classify(Failure::Usage, || {
            format!(
                "cannot listen on {ip} port {}; is another server there? choose another --port",
                options.port
            )
        })?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    cancel: &AtomicBool,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of descriptors, say: give the others time to end.
                        log::info!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    continue; // dropped: closed at once
                };
                let _ = stream.set_nodelay(true);
                let timeout = state.timeout;
                let state = state.clone();
                let service = hyper::service::service_fn(move |req| handle(state.clone(), req));
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(timeout)
                    .serve_connection(TokioIo::new(stream), service);
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    let _ = connection.await;
                    drop(slot);
                });
            }
            _ = tick.tick() => {
                if cancel.load(Ordering::SeqCst) {
                    break;
                }
            }
        }
    }
    drop(listener);
    messages::note("stopping: no new requests; replies under way are cancelled");
    state.shared.stop();
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(GRACE) => {}
    }
    Ok(())
}

/// One log line per request, printed when the response is over (for a
/// stream, when it ends or its client leaves).
struct Log {
    request: String,
    start: Instant,
    status: u16,
    usage: Option<Usage>,
    /// When the reply's first token reached this side, from the request's
    /// arrival (its wait in the queue included).
    first: Option<Duration>,
    /// The most requests the model was on at once during this one's reply.
    together: usize,
    /// A stream that ended before its last chunk.
    cut: bool,
    /// Its line is the stream's to print.
    handed_over: bool,
}

impl Log {
    fn first_token(&mut self) {
        self.first.get_or_insert_with(|| self.start.elapsed());
    }

    /// The log of a stream, which outlives the request's handler.
    fn hand_over(&mut self) -> Log {
        self.handed_over = true;
        Log {
            request: self.request.clone(),
            start: self.start,
            status: 200,
            usage: None,
            first: self.first,
            together: 0,
            cut: true,
            handed_over: false,
        }
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        if self.handed_over {
            return;
        }
        let tokens = self.usage.map_or(String::new(), |u| {
            format!(
                " | prompt {} tokens ({} cached), reply {}",
                u.prompt, u.cached, u.completion
            )
        });
        let first = self.first.map_or(String::new(), |t| {
            format!(" | first token after {:.2} s", t.as_secs_f64())
        });
        let together = match self.together {
            0 | 1 => String::new(),
            n => format!(" | {n} at once"),
        };
        let cut = if self.cut { " | client gone" } else { "" };
        // Dropped before its response: the client left while it waited.
        let status = match self.status {
            0 => "- | client gone".to_string(),
            s => s.to_string(),
        };
        messages::note(format!(
            "{} {status}{tokens}{together}{cut}{first} | {:.2} s",
            self.request,
            self.start.elapsed().as_secs_f64()
        ));
    }
}

/// Sets the request's cancel flag when dropped before [`CancelOnDrop::done`]:
/// hyper drops a response whose client went away.
struct CancelOnDrop(Option<Arc<AtomicBool>>);

impl CancelOnDrop {
    fn done(&mut self) {
        self.0 = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(cancel) = &self.0 {
            cancel.store(true, Ordering::SeqCst);
        }
    }
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let mut log = Log {
        request: format!(
            "{} {}",
            req.method(),
            messages::short(&path).trim_matches('"')
        ),
        start: Instant::now(),
        status: 0,
        usage: None,
        first: None,
        together: 0,
        cut: false,
        handed_over: false,
    };
    let mut response = match route(&state, req, &path, &mut log).await {
        Ok(Reply::Json(value)) => json(StatusCode::OK, &value),
        Ok(Reply::Stream(response)) => response,
        Err(e) => error(&e),
    };
    if let Some(origin) = &state.cors {
        response
            .headers_mut()
            .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    }
    log.status = response.status().as_u16();
    Ok(response)
}

enum Reply {
    Json(serde_json::Value),
    Stream(Response<Body>),
}

async fn route(
    state: &Arc<State>,
    req: Request<Incoming>,
    path: &str,
    log: &mut Log,
) -> Result<Reply, ApiError> {
    let method = req.method().clone();
    let path = path.strip_prefix("/v1").unwrap_or(path);
    if method == Method::OPTIONS && state.cors.is_some() {
        return Ok(Reply::Stream(preflight()));
    }
    if path != "/health" {
        authorize(state, &req)?;
    }
    match (method.clone(), path) {
        (Method::GET, "/health") => Ok(Reply::Json(serde_json::json!({"status": "ok"}))),
        (Method::GET, "/models") => Ok(Reply::Json(serde_json::json!({
            "object": "list",
            "data": [api::model(&state.model, state.created, state.context)],
        }))),
        (Method::GET, p) if p.starts_with("/models/") => {
            let id = &p["/models/".len()..];
            state.serves(id)?;
            Ok(Reply::Json(api::model(&state.model, state.created, state.context)))
        }
        (Method::POST, "/chat/completions") => chat(state, req, log).await,
        (_, "/health" | "/models" | "/chat/completions") => Err(ApiError::new(
            405,
            "invalid_request_error",
            format!("{method} is not allowed here"),
        )),
        _ => Err(ApiError::new(
            404,
            "invalid_request_error",
            format!(
                "no such route: {method} {}; greve serves POST /v1/chat/completions, GET /v1/models and GET /health",
                messages::short(path)
            ),
        )
        .with_code("not_found")),
    }
}

impl State {
    /// Whether `name` names the model served: its name, the last part of
    /// it, or `default`.
    fn serves(&self, name: &str) -> Result<(), ApiError> {
        let last = self.model.rsplit(['/', '\\']).next().unwrap_or(&self.model);
        if name.is_empty() || name == "default" || name == self.model || name == last {
            return Ok(());
        }
        Err(ApiError {
            param: Some("model".into()),
            ..ApiError::new(
                404,
                "invalid_request_error",
                format!(
                    "model {} is not served here; this server serves {} (GET /v1/models)",
                    messages::short(name),
                    messages::short(&self.model)
                ),
            )
            .with_code("model_not_found")
        })
    }
}

/// Checks the bearer token, in constant time, when a key is set.
fn authorize(state: &State, req: &Request<Incoming>) -> Result<(), ApiError> {
    let Some(key) = &state.api_key else {
        return Ok(());
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if same(given.trim().as_bytes(), key.as_bytes()) {
        return Ok(());
    }
    Err(ApiError::new(
        401,
        "authentication_error",
        "missing or wrong API key: send the server's key as `Authorization: Bearer KEY`",
    )
    .with_code("invalid_api_key"))
}

/// Equality whose time does not depend on where the inputs differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    let diff = a
        .iter()
        .zip(b)
        .fold(a.len() ^ b.len(), |acc, (x, y)| acc | usize::from(x ^ y));
    std::hint::black_box(diff) == 0
}

async fn chat(
    state: &Arc<State>,
    req: Request<Incoming>,
    log: &mut Log,
) -> Result<Reply, ApiError> {
    let body = read_body(req, state.timeout).await?;
    let request = api::parse_chat(&body)?;
    if let Some(model) = &request.model {
        state.serves(model)?;
    }
    let stream = request.stream;
    let include_usage = request.include_usage;
    let header = Header {
        id: format!("chatcmpl-{:016x}", rand::random::<u64>()),
        created: now(),
        model: state.model.clone(),
    };
    if state.shared.stopping.load(Ordering::SeqCst) {
        return Err(ApiError::new(
            503,
            "server_error",
            "the server is shutting down",
        ));
    }
    let (events, mut rx) = unbounded_channel();
    let cancel = Arc::new(AtomicBool::new(false));
    let mut guard = CancelOnDrop(Some(cancel.clone()));
    let job = Job {
        request,
        cancel,
        events,
    };
    match state.jobs.try_send(job) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => {
            return Err(ApiError::new(
                503,
                "server_error",
                format!(
                    "the server is busy: {} requests already wait for the model; retry later",
                    state.queue
                ),
            )
            .with_code("queue_full"))
        }
        Err(TrySendError::Disconnected(_)) => {
            return Err(ApiError::new(
                500,
                "server_error",
                "the model's thread has stopped",
            ))
        }
    }
    // The first event says whether the request was taken: only then may a
    // stream's 200 go out.
    match rx.recv().await {
        Some(Event::Accepted) => {}
        Some(Event::Failed(e)) => return Err(e),
        _ => {
            return Err(ApiError::new(
                500,
                "server_error",
                "the model's thread has stopped",
            ))
        }
    }
    if stream {
        let body = Sse {
            events: rx,
            header,
            include_usage,
            started: false,
            over: false,
            guard,
            log: log.hand_over(),
        };
        let response = Response::builder()
            .header(header::CONTENT_TYPE, "text/event-stream")
            .header(header::CACHE_CONTROL, "no-cache")
            .body(body.boxed_unsync())
            .expect("static headers are valid");
        return Ok(Reply::Stream(response));
    }
    let (mut content, mut calls) = (String::new(), Vec::new());
    let mut reasoning: Option<String> = None;
    loop {
        let event = rx.recv().await;
        if matches!(
            event,
            Some(Event::Thinking(_) | Event::Text(_) | Event::Calls(_))
        ) {
            log.first_token();
        }
        match event {
            Some(Event::Thinking(text)) => {
                reasoning.get_or_insert_with(String::new).push_str(&text)
            }
            Some(Event::Text(text)) => content.push_str(&text),
            Some(Event::Calls(list)) => calls = list,
            Some(Event::Done {
                finish,
                usage,
                together,
            }) => {
                guard.done();
                (log.usage, log.together) = (Some(usage), together);
                let message = api::Answer {
                    content: &content,
                    reasoning: reasoning.as_deref(),
                    calls: &calls,
                };
                return Ok(Reply::Json(api::completion(
                    &header, &message, finish, usage,
                )));
            }
            Some(Event::Failed(e)) => return Err(e),
            Some(Event::Accepted) => {}
            None => {
                return Err(ApiError::new(
                    500,
                    "server_error",
                    "the model's thread has stopped",
                ))
            }
        }
    }
}

/// The body, whole: within the size limit (413) and the time limit (408).
async fn read_body(req: Request<Incoming>, timeout: Duration) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            413,
            "invalid_request_error",
            format!("the request body is over {} MiB", MAX_BODY >> 20),
        )
        .with_code("request_too_large")
    };
    // What the length announces is refused before anything is read.
    if hyper::body::Body::size_hint(req.body()).lower() > MAX_BODY as u64 {
        return Err(too_large());
    }
    let limited = Limited::new(req.into_body(), MAX_BODY);
    match tokio::time::timeout(timeout, limited.collect()).await {
        Ok(Ok(body)) => Ok(body.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(e)) => Err(ApiError::new(
            400,
            "invalid_request_error",
            format!("cannot read the request body: {e}"),
        )),
        Err(_) => Err(ApiError::new(
            408,
            "invalid_request_error",
            format!(
                "the request body did not arrive within {} s",
                timeout.as_secs_f64()
            ),
        )
        .with_code("timeout")),
    }
}

/// A streamed reply: server-sent events, one chunk per piece of text, then
/// the finish reason, the usage if asked, and `[DONE]`.
struct Sse {
    events: UnboundedReceiver<Event>,
    header: Header,
    include_usage: bool,
    started: bool,
    over: bool,
    guard: CancelOnDrop,
    log: Log,
}

fn event(value: &serde_json::Value) -> String {
    format!("data: {value}\n\n")
}

impl hyper::body::Body for Sse {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        let data = |text: String| Poll::Ready(Some(Ok(Frame::data(Bytes::from(text)))));
        if this.over {
            return Poll::Ready(None);
        }
        if !this.started {
            this.started = true;
            let delta = serde_json::json!({"role": "assistant", "content": ""});
            return data(event(&api::chunk(&this.header, delta, None)));
        }
        loop {
            let next = std::task::ready!(this.events.poll_recv(cx));
            if matches!(
                next,
                Some(Event::Thinking(_) | Event::Text(_) | Event::Calls(_))
            ) {
                this.log.first_token();
            }
            match next {
                Some(Event::Accepted) => continue,
                Some(Event::Thinking(text)) => {
                    // Where llama-server, vLLM and DeepSeek's API send it.
                    let delta = serde_json::json!({ "reasoning_content": text });
                    return data(event(&api::chunk(&this.header, delta, None)));
                }
                Some(Event::Text(text)) => {
                    let delta = serde_json::json!({ "content": text });
                    return data(event(&api::chunk(&this.header, delta, None)));
                }
                Some(Event::Calls(calls)) => {
                    // Whole calls in one delta: clients add up the pieces
                    // of each call's arguments, and one piece is a sum.
                    let delta = serde_json::json!({ "tool_calls": api::calls(&calls, true) });
                    return data(event(&api::chunk(&this.header, delta, None)));
                }
                Some(Event::Done {
                    finish,
                    usage,
                    together,
                }) => {
                    this.over = true;
                    this.guard.done();
                    (this.log.usage, this.log.cut) = (Some(usage), false);
                    this.log.together = together;
                    let end = serde_json::json!({});
                    let mut text = event(&api::chunk(&this.header, end, Some(finish)));
                    if this.include_usage {
                        text += &event(&api::usage_chunk(&this.header, usage));
                    }
                    text += "data: [DONE]\n\n";
                    return data(text);
                }
                Some(Event::Failed(e)) => {
                    // As OpenAI reports an error in the middle of a stream.
                    this.over = true;
                    this.log.cut = false;
                    this.log.status = e.status;
                    return data(event(&e.body()));
                }
                None => {
                    this.over = true;
                    return Poll::Ready(None);
                }
            }
        }
    }
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(value.to_string())).boxed_unsync())
        .expect("static headers are valid")
}

fn error(e: &ApiError) -> Response<Body> {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = json(status, &e.body());
    if e.status == 503 || e.status == 429 {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    response
}

/// The answer to a browser's CORS preflight.
fn preflight() -> Response<Body> {
    Response::builder()
        .status(StatusCode::NO_CONTENT)
        .header(header::ACCESS_CONTROL_ALLOW_METHODS, "GET, POST, OPTIONS")
        .header(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            "authorization, content-type",
        )
        .header(header::ACCESS_CONTROL_MAX_AGE, "600")
        .body(Full::new(Bytes::new()).boxed_unsync())
        .expect("static headers are valid")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_compare_whole() {
        assert!(same(b"secret", b"secret"));
        assert!(!same(b"secret", b"secreT"));
        assert!(!same(b"secret", b"secret2"));
        assert!(!same(b"", b"x"));
        assert!(same(b"", b""));
    }
}
