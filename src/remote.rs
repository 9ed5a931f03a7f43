//! `--remote URL`: an OpenAI-compatible server answers instead of a model
//! loaded here (vLLM, TGI, llama-server, ollama, `greve serve`). greve
//! stays the front end: the persona's system prompt, letterhead, sign-off
//! and notices, the REPL, transcripts and exit codes are its own.
//!
//! Replies stream as server-sent events, read on a thread of their own so
//! that Ctrl-C is heard while the server thinks. Failures map to greve's
//! exit codes: the network (6), a refused key (7), a model the server lacks
//! (3), a request it refuses (2), a cut or malformed stream (5).

use std::io::{BufRead, BufReader};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::exit::Failure;
use crate::generate::{Finish, Stats};
use crate::messages::short;
use crate::reply::Part;
use crate::structured::Format;
use crate::template::{Message, Role, Tool, ToolCall};
use crate::tools::Choice;
use crate::turn::{Event, Options, Reply};

/// A server, and the model it is asked for.
pub struct Remote {
    /// Its API's base, such as `http://127.0.0.1:8080/v1`.
    base: String,
    key: Option<String>,
    pub model: String,
    agent: ureq::Agent,
}

/// How long a server may take to accept a connection, and then between
/// two pieces of a reply (a long prompt's prefill comes before the first).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const READ_TIMEOUT: Duration = Duration::from_secs(600);

impl Remote {
    /// Reaches the server at `url`; `model` names the model to ask for,
    /// else the first the server lists. The key, if any, comes from
    /// GREVE_API_KEY or OPENAI_API_KEY.
    pub fn connect(url: &str, model: Option<&str>) -> anyhow::Result<Remote> {
        let key = ["GREVE_API_KEY", "OPENAI_API_KEY"]
            .iter()
            .find_map(|v| std::env::var(v).ok().filter(|k| !k.is_empty()));
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(CONNECT_TIMEOUT)
            .timeout_read(READ_TIMEOUT)
            .build();
        let mut remote = Remote {
            base: api_base(url)?,
            key,
            model: model.unwrap_or_default().to_string(),
            agent,
        };
        if remote.model.is_empty() {
            remote.model = remote.first_model()?;
        }
        log::info!("remote: {} at {}", remote.model, remote.base);
        Ok(remote)
    }

    fn first_model(&self) -> anyhow::Result<String> {
        let url = format!("{}/models", self.base);
        let response = self.authorized(self.agent.get(&url)).call();
        let response = response.map_err(|e| failure(&url, e))?;
        let list: Value = serde_json::from_reader(response.into_reader())
            .map_err(|e| Failure::Generation.err(format!("{url} sent no JSON model list: {e}")))?;
        list["data"][0]["id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| {
                Failure::ModelNotFound.err(format!("{url} lists no model; name one with --model"))
            })
    }

    fn authorized(&self, request: ureq::Request) -> ureq::Request {
        match &self.key {
            Some(key) => request.set("Authorization", &format!("Bearer {key}")),
            None => request,
        }
    }

    /// Asks for the reply to `messages`, streaming it to `on_event`.
    pub fn answer(
        &self,
        system: Option<&str>,
        messages: &[Message],
        options: &Options,
        seed: u64,
        cancel: &AtomicBool,
        on_event: &mut impl FnMut(Event) -> anyhow::Result<()>,
    ) -> anyhow::Result<Reply> {
        let body = request_body(&self.model, system, messages, options, seed)?;
        on_event(Event::Prompt {
            text: serde_json::to_string_pretty(&body).unwrap_or_default(),
            ids: &[],
        })?;
        let url = format!("{}/chat/completions", self.base);
        let start = Instant::now();
        let request = self
            .authorized(self.agent.post(&url))
            .set("Content-Type", "application/json")
            .set("Accept", "text/event-stream");
        let response = request
            .send_string(&body.to_string())
            .map_err(|e| failure(&url, e))?;
        let mut stream = Stream::default();
        let first_text = match response.content_type() {
            // A server that does not stream sends the reply whole.
            "application/json" => {
                let whole = response.into_string().map_err(|e| {
                    Failure::Network
                        .err(format!("the reply from {url} was cut before its end: {e}"))
                })?;
                stream
                    .event(&whole)
                    .map_err(|e| Failure::Generation.err(format!("{url}: {e}")))?;
                if let Some(thinking) = &stream.reasoning {
                    on_event(Event::Thinking(thinking.clone()))?;
                }
                on_event(Event::Text(stream.text.clone()))?;
                Instant::now()
            }
            _ => read_events(response, &url, &mut stream, cancel, on_event)?,
        };
        let Some(finish) = stream.finish else {
            return Err(Failure::Network.err(format!(
                "the reply from {url} was cut before its end (no finish reason, no [DONE])"
            )));
        };
        let first = first_text;
        let generated = stream.usage.map_or(stream.pieces, |u| u.1);
        let stats = Stats {
            prompt_tokens: stream.usage.map_or(0, |u| u.0),
            reused_tokens: stream.usage.map_or(0, |u| u.2),
            generated_tokens: generated,
            time_to_first_token: first - start,
            decode_steps: generated.saturating_sub(1),
            decode_time: first.elapsed(),
            ..Stats::default()
        };
        Ok(Reply {
            // Some servers end a reply of calls with "stop".
            finish: match stream.calls.is_empty() {
                true => finish,
                false => Finish::ToolCalls,
            },
            tool_calls: stream.calls,
            text: stream.text,
            reasoning: stream.reasoning,
            stats,
        })
    }
}

/// Reads server-sent events into `stream`, passing on the text as it
/// comes, until `[DONE]`, the end or `cancel`; returns when the first text
/// came.
fn read_events(
    response: ureq::Response,
    url: &str,
    stream: &mut Stream,
    cancel: &AtomicBool,
    on_event: &mut impl FnMut(Event) -> anyhow::Result<()>,
) -> anyhow::Result<Instant> {
    let (lines, incoming) = channel();
    let mut reader = BufReader::new(response.into_reader());
    // Blocking reads, on their own thread: the loop below hears Ctrl-C.
    std::thread::spawn(move || loop {
        let mut line = Vec::new();
        let read = reader.read_until(b'\n', &mut line);
        let end = !matches!(read, Ok(n) if n > 0);
        if lines.send(read.map(|_| line)).is_err() || end {
            break;
        }
    });
    let mut first_text = None;
    while !stream.done {
        if cancel.load(Ordering::SeqCst) {
            stream.finish = Some(Finish::Interrupted);
            break;
        }
        let line = match incoming.recv_timeout(Duration::from_millis(50)) {
            Ok(Ok(line)) if line.is_empty() => break,
            Ok(Ok(line)) => line,
            Ok(Err(e)) => {
                return Err(Failure::Network
                    .err(format!("the reply from {url} was cut before its end: {e}")))
            }
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let line = String::from_utf8(line)
            .map_err(|_| Failure::Generation.err(format!("{url} sent a line that is not UTF-8")))?;
        let text = stream
            .line(&line)
            .map_err(|e| Failure::Generation.err(format!("{url}: {e}")))?;
        match text {
            Some(Part::Thinking(text)) => {
                first_text.get_or_insert_with(Instant::now);
                on_event(Event::Thinking(text))?;
            }
            Some(Part::Text(text)) => {
                first_text.get_or_insert_with(Instant::now);
                on_event(Event::Text(text))?;
            }
            None => {}
        }
    }
    Ok(first_text.unwrap_or_else(Instant::now))
}

/// The base of the API at `url`: as given, or with `/v1` when it names a
/// server alone (`http://host:8080`).
fn api_base(url: &str) -> anyhow::Result<String> {
    let url = url.trim().trim_end_matches('/');
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(Failure::Usage.err(format!(
            "--remote {}: a URL such as http://127.0.0.1:8080/v1 is expected",
            short(url)
        )));
    };
    if !matches!(scheme, "http" | "https") || rest.is_empty() {
        return Err(Failure::Usage.err(format!(
            "--remote {}: only http:// and https:// URLs are supported",
            short(url)
        )));
    }
    Ok(match rest.contains('/') {
        true => url.to_string(),
        false => format!("{url}/v1"),
    })
}

/// The chat-completions request for a conversation and its settings.
pub fn request_body(
    model: &str,
    system: Option<&str>,
    messages: &[Message],
    o: &Options,
    seed: u64,
) -> anyhow::Result<Value> {
    let mut list: Vec<Value> = system
        .map(|s| json!({"role": "system", "content": s}))
        .into_iter()
        .collect();
    list.extend(messages.iter().map(|m| {
        let mut message = match m.role {
            Role::User => json!({"role": "user", "content": m.content}),
            Role::Assistant if !m.tool_calls.is_empty() => {
                let calls: Vec<Value> = m
                    .tool_calls
                    .iter()
                    .map(|c| {
                        json!({"id": c.id, "type": "function",
                        "function": {"name": c.name, "arguments": c.arguments}})
                    })
                    .collect();
                json!({"role": "assistant", "content": null, "tool_calls": calls})
            }
            Role::Assistant => json!({"role": "assistant", "content": m.content}),
            Role::Tool => {
                json!({"role": "tool", "content": m.content, "tool_call_id": m.tool_call_id})
            }
        };
        // Sent back, for the server to show the model what it thought.
        if let Some(thinking) = &m.reasoning {
            message["reasoning_content"] = thinking.as_str().into();
        }
        message
    }));
    let s = &o.sampling;
    let mut body = json!({
        "model": model,
        "messages": list,
        "stream": true,
        "stream_options": {"include_usage": true},
        "temperature": s.temperature,
        "top_p": s.top_p,
        "seed": seed,
    });
    if s.top_k > 0 {
        body["top_k"] = s.top_k.into();
    }
    if let Some(n) = o.max_tokens {
        body["max_tokens"] = n.into();
    }
    let tools = &o.tools;
    if !tools.list.is_empty() {
        body["tools"] = tools.list.iter().map(Tool::openai).collect();
        body["tool_choice"] = match &tools.choice {
            Choice::None => "none".into(),
            Choice::Auto => "auto".into(),
            Choice::Required => "required".into(),
            Choice::Named(name) => json!({"type": "function", "function": {"name": name}}),
        };
        if !tools.parallel {
            body["parallel_tool_calls"] = false.into();
        }
    }
    body["response_format"] = match &o.format {
        Format::Text => return Ok(body),
        Format::Json => json!({"type": "json_object"}),
        Format::Schema(schema) => json!({"type": "json_schema",
            "json_schema": {"name": "greve", "schema": schema, "strict": true}}),
        Format::Lark(_) => {
            return Err(Failure::Usage.err(
                "--grammar cannot be sent to a remote server (OpenAI's API has no grammars); use --json-schema",
            ))
        }
    };
    Ok(body)
}

/// A streamed reply as it is read: server-sent events, then the chunks
/// they carry.
#[derive(Debug, Default)]
pub struct Stream {
    /// The `data:` lines of the event being read.
    data: Vec<String>,
    pub text: String,
    /// The thinking received (`reasoning_content`, or vLLM's `reasoning`).
    pub reasoning: Option<String>,
    /// Pieces of text and thinking received.
    pub pieces: usize,
    /// The calls, as their pieces add up.
    pub calls: Vec<ToolCall>,
    pub finish: Option<Finish>,
    /// Prompt, completion and cached tokens, when the server says.
    pub usage: Option<(usize, usize, usize)>,
    /// `[DONE]` came.
    pub done: bool,
}

impl Stream {
    /// Takes one line; returns the text or thinking it completes, if any.
    pub fn line(&mut self, line: &str) -> Result<Option<Part>, String> {
        let line = line.trim_end_matches(['\n', '\r']);
        if !line.is_empty() {
            // Comments (keep-alives), event names and ids carry no text.
            if let Some(data) = line.strip_prefix("data:") {
                self.data
                    .push(data.strip_prefix(' ').unwrap_or(data).to_string());
            }
            return Ok(None);
        }
        if self.data.is_empty() {
            return Ok(None);
        }
        let data = std::mem::take(&mut self.data).join("\n");
        self.event(&data)
    }

    fn event(&mut self, data: &str) -> Result<Option<Part>, String> {
        if data.trim() == "[DONE]" {
            self.done = true;
            return Ok(None);
        }
        let chunk: Value = serde_json::from_str(data)
            .map_err(|e| format!("a malformed chunk in the stream ({e}): {}", short(data)))?;
        if let Some(error) = chunk.get("error") {
            let message = error["message"].as_str().or(error.as_str()).unwrap_or("");
            return Err(format!(
                "the server failed in the middle of the reply: {}",
                short(message)
            ));
        }
        if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
            let n = |v: &Value| v.as_u64().unwrap_or(0) as usize;
            self.usage = Some((
                n(&usage["prompt_tokens"]),
                n(&usage["completion_tokens"]),
                n(&usage["prompt_tokens_details"]["cached_tokens"]),
            ));
        }
        let Some(choice) = chunk["choices"].get(0) else {
            return Ok(None);
        };
        if let Some(reason) = choice["finish_reason"].as_str() {
            self.finish = Some(match reason {
                "length" => Finish::Length,
                "tool_calls" | "function_call" => Finish::ToolCalls,
                _ => Finish::Stop,
            });
        }
        // A chunk's delta, or a whole reply's message.
        let content = choice.get("delta").or(choice.get("message"));
        if let Some(Value::Array(calls)) = content.map(|c| &c["tool_calls"]) {
            self.add_calls(calls)?;
        }
        let field = |name: &str| {
            content
                .and_then(|c| c[name].as_str())
                .filter(|t| !t.is_empty())
        };
        if let Some(thinking) = field("reasoning_content").or(field("reasoning")) {
            self.reasoning
                .get_or_insert_with(String::new)
                .push_str(thinking);
            self.pieces += 1;
            return Ok(Some(Part::Thinking(thinking.to_string())));
        }
        match field("content") {
            Some(text) => {
                self.text.push_str(text);
                self.pieces += 1;
                Ok(Some(Part::Text(text.to_string())))
            }
            None => Ok(None),
        }
    }
}

impl Stream {
    /// Pieces of calls: a whole reply's calls, or a stream's deltas, each
    /// numbered by `index`, its id and name coming once, its arguments in
    /// pieces to add up.
    fn add_calls(&mut self, calls: &[Value]) -> Result<(), String> {
        for (position, call) in calls.iter().enumerate() {
            let index = call["index"].as_u64().map_or(position, |i| i as usize);
            if index > self.calls.len() || index > 1024 {
                return Err(format!(
                    "a tool call out of order: {}",
                    short(&call.to_string())
                ));
            }
            if index == self.calls.len() {
                self.calls.push(ToolCall {
                    id: String::new(),
                    name: String::new(),
                    arguments: String::new(),
                });
            }
            let c = &mut self.calls[index];
            let text = |v: &Value| v.as_str().unwrap_or("").to_string();
            if let Some(id) = call["id"].as_str() {
                c.id = id.to_string();
            }
            c.name += &text(&call["function"]["name"]);
            c.arguments += &text(&call["function"]["arguments"]);
        }
        Ok(())
    }
}

/// A failed request as greve reports it: its class and one line.
fn failure(url: &str, e: ureq::Error) -> anyhow::Error {
    match e {
        ureq::Error::Status(code, response) => {
            let body = response.into_string().unwrap_or_default();
            let said = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| {
                    let e = &v["error"];
                    e["message"].as_str().or(e.as_str()).map(str::to_string)
                })
                .unwrap_or(body);
            // The server's words, escaped: they reach the user's terminal.
            let said = crate::messages::quoted(said.lines().next().unwrap_or(""), 200);
            match code {
                401 | 403 => Failure::Access.err(format!(
                    "{url} refused the key ({code}): {said}; set GREVE_API_KEY or OPENAI_API_KEY"
                )),
                404 => Failure::ModelNotFound.err(format!(
                    "{url} answered 404: {said}; check --remote and --model (GET /v1/models lists the models)"
                )),
                429 | 503 => Failure::Network.err(format!(
                    "{url} is busy ({code}): {said}; retry in a moment"
                )),
                400..=499 => Failure::Usage.err(format!(
                    "{url} refused the request ({code}): {said}"
                )),
                _ => Failure::Network.err(format!("{url} failed ({code}): {said}")),
            }
        }
        ureq::Error::Transport(t) => {
            use ureq::ErrorKind::*;
            let what = match std::error::Error::source(&t) {
                Some(cause) => cause.to_string(),
                None => t.message().unwrap_or("no detail").to_string(),
            };
            match t.kind() {
                InvalidUrl | UnknownScheme => {
                    Failure::Usage.err(format!("--remote: {url} is not a valid URL: {what}"))
                }
                Dns => Failure::Network.err(format!(
                    "cannot find the server of {url}: {what}; check the host name"
                )),
                ConnectionFailed => Failure::Network.err(format!(
                    "cannot connect to {url}: {what}; is the server running?"
                )),
                _ => Failure::Network.err(format!("the request to {url} failed: {what}")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(lines: &[&str]) -> (Stream, Vec<String>) {
        let mut s = Stream::default();
        let texts = lines
            .iter()
            .filter_map(|l| match s.line(l).unwrap() {
                Some(Part::Text(text)) => Some(text),
                _ => None,
            })
            .collect();
        (s, texts)
    }

    #[test]
    fn events_are_read_as_servers_send_them() {
        let (s, texts) = read(&[
            ": keep-alive\n",
            "event: message\r\n",
            r#"data: {"choices": [{"delta": {"role": "assistant", "content": ""}}]}"#,
            "\r\n",
            r#"data:{"choices": [{"delta": {"content": "Gr"}}]}"#,
            "",
            r#"data: {"choices": [{"delta": {"content": "ève"}, "finish_reason": null}]}"#,
            "",
            r#"data: {"choices": [{"delta": {}, "finish_reason": "length"}]}"#,
            "",
            r#"data: {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 5}}}"#,
            "",
            "data: [DONE]",
            "",
        ]);
        assert_eq!(texts, ["Gr", "ève"]);
        assert_eq!(
            (s.text.as_str(), s.finish, s.usage, s.done),
            ("Grève", Some(Finish::Length), Some((7, 2, 5)), true)
        );
    }

    /// Calls come whole or in pieces, numbered; their arguments add up.
    #[test]
    fn calls_are_read_whole_and_in_pieces() {
        let (s, texts) = read(&[
            r#"data: {"choices": [{"delta": {"role": "assistant", "tool_calls": [{"index": 0, "id": "abcDEF123", "type": "function", "function": {"name": "meteo", "arguments": ""}}]}}]}"#,
            "",
            r#"data: {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"ville\": "}}]}}]}"#,
            "",
            r#"data: {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": "\"Lyon\"}"}}, {"index": 1, "id": "x", "function": {"name": "heure", "arguments": "{}"}}]}}]}"#,
            "",
            r#"data: {"choices": [{"delta": {}, "finish_reason": "tool_calls"}]}"#,
            "",
        ]);
        assert!(texts.is_empty());
        assert_eq!(s.finish, Some(Finish::ToolCalls));
        let calls: Vec<_> = s
            .calls
            .iter()
            .map(|c| (c.id.as_str(), c.name.as_str(), c.arguments.as_str()))
            .collect();
        assert_eq!(
            calls,
            [
                ("abcDEF123", "meteo", r#"{"ville": "Lyon"}"#),
                ("x", "heure", "{}")
            ]
        );
        let mut whole = Stream::default();
        whole
            .event(r#"{"choices": [{"message": {"content": null, "tool_calls": [{"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}, "finish_reason": "tool_calls"}]}"#)
            .unwrap();
        assert_eq!(whole.calls[0].name, "f");
        let mut skipping = Stream::default();
        assert!(skipping
            .event(r#"{"choices": [{"delta": {"tool_calls": [{"index": 3}]}}]}"#)
            .is_err());
    }

    #[test]
    fn errors_in_a_stream_are_reported() {
        let mut s = Stream::default();
        s.line(r#"data: {"error": {"message": "out of memory"}}"#)
            .unwrap();
        assert!(s.line("").unwrap_err().contains("out of memory"));
        let mut s = Stream::default();
        s.line("data: {oops").unwrap();
        assert!(s.line("").unwrap_err().contains("malformed"));
    }

    #[test]
    fn urls_get_their_api_base() {
        assert_eq!(api_base("http://h:8080").unwrap(), "http://h:8080/v1");
        assert_eq!(api_base("http://h:8080/").unwrap(), "http://h:8080/v1");
        assert_eq!(api_base("https://h/api/v1/").unwrap(), "https://h/api/v1");
        assert!(api_base("h:8080").is_err());
        assert!(api_base("ftp://h").is_err());
    }

    #[test]
    fn requests_carry_the_settings() {
        let o = Options {
            system: None,
            mode: crate::persona::Mode::Off,
            safe: false,
            prompts: crate::persona::Prompts::load::<&std::path::Path>(&[]).unwrap(),
            sampling: crate::sampler::SamplingParams {
                temperature: 0.0,
                top_k: 0,
                top_p: 0.9,
                repeat_penalty: 1.0,
                repeat_last_n: 64,
            },
            seed: 1,
            max_tokens: Some(5),
            format: Format::Json,
            tools: crate::tools::Tools::default(),
            show_thinking: false,
            think: true,
        };
        let body = request_body("m", Some("S"), &[Message::user("u")], &o, 9).unwrap();
        assert_eq!(
            body["messages"],
            json!([{"role": "system", "content": "S"}, {"role": "user", "content": "u"}])
        );
        assert_eq!(
            (body["seed"].as_u64(), body["max_tokens"].as_u64()),
            (Some(9), Some(5))
        );
        assert_eq!(body["response_format"]["type"], "json_object");
        assert!(body.get("top_k").is_none());
        let tools = Options {
            tools: crate::tools::Tools {
                list: vec![Tool {
                    name: "f".into(),
                    description: "d".into(),
                    parameters: json!({"type": "object"}),
                }],
                choice: Choice::Named("f".into()),
                parallel: false,
            },
            ..o.clone()
        };
        let body = request_body("m", None, &[Message::user("u")], &tools, 9).unwrap();
        assert_eq!(body["tools"][0]["function"]["name"], "f");
        assert_eq!(body["tool_choice"]["function"]["name"], "f");
        assert_eq!(body["parallel_tool_calls"], false);
        let lark = Options {
            format: Format::Lark("start: \"a\"".into()),
            ..o
        };
        assert!(request_body("m", None, &[Message::user("u")], &lark, 9).is_err());
    }
}
