//! OpenAI's chat-completions API as greve reads and writes it: a request's
//! JSON checked into a [`ChatRequest`], and the JSON of replies, stream
//! chunks, model lists and errors. Plain functions over plain data: no
//! HTTP, no model.
//!
//! A request is refused (400, naming the field) rather than half-honoured:
//! a field greve does not know, or one it knows but cannot do (`n: 2`,
//! `logit_bias`), would otherwise change the reply without a word.
//! OpenAI's own API refuses unknown fields the same way.

use serde_json::{json, Map, Value};

use crate::persona::Mode;
use crate::structured::{self, Format};
use crate::template::{self, Message, Role, Tool, ToolCall};
use crate::tools::{Choice, Fault, Tools};

/// An error as OpenAI's API reports it, with its HTTP status.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    /// OpenAI's `type`: `invalid_request_error`, `authentication_error`, …
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    /// A 400 about `param`.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        let param = param.into();
        ApiError {
            status: 400,
            message: format!("{param}: {}", message.into()),
            kind: "invalid_request_error",
            param: Some(param),
            code: None,
        }
    }

    pub fn new(status: u16, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
        }
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

/// A chat-completions request, checked.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChatRequest {
    pub model: Option<String>,
    /// The system (or developer) messages before the conversation, joined.
    pub system: Option<String>,
    /// Alternating, from the user's first to the user's last.
    pub messages: Vec<Message>,
    pub stream: bool,
    /// `stream_options.include_usage`: a last chunk with the usage.
    pub include_usage: bool,
    pub max_tokens: Option<usize>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// An extension, as llama-server and vLLM take it.
    pub top_k: Option<usize>,
    pub seed: Option<u64>,
    /// Strings that end the reply (not returned).
    pub stop: Vec<String>,
    /// `response_format`, when given (else the server's `--format`).
    pub format: Option<Format>,
    /// An extension: this request's strike mode (`"strike": "totale"`).
    pub strike: Option<Mode>,
    /// Functions the model may call, and whether it must.
    pub tools: Tools,
    /// `reasoning_effort`: `none` asks a reasoning model not to think (its
    /// reasoning prompt left out); its models have no levels beyond that.
    pub think: Option<bool>,
}

/// The most stop strings a request may give: OpenAI allows 4, but some
/// clients send a template's worth, as llama-server takes them.
const MAX_STOPS: usize = 16;

/// Reads a request body.
pub fn parse_chat(body: &[u8]) -> Result<ChatRequest, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid("body", format!("not valid JSON ({e})")))?;
    let Value::Object(fields) = value else {
        return Err(ApiError::invalid("body", "a JSON object is expected"));
    };
    let mut r = ChatRequest::default();
    let mut messages = None;
    for (key, value) in &fields {
        let key = key.as_str();
        if value.is_null() && key != "messages" {
            continue; // OpenAI's clients send null for "not set".
        }
        match key {
            "model" => r.model = Some(string(key, value)?.to_string()),
            "messages" => messages = Some(value),
            "stream" => r.stream = boolean(key, value)?,
            "stream_options" => r.include_usage = stream_options(value)?,
            "max_tokens" | "max_completion_tokens" => {
                let n = integer(key, value, 1, u32::MAX as u64)? as usize;
                r.max_tokens = Some(r.max_tokens.map_or(n, |m| m.min(n)));
            }
            "temperature" => r.temperature = Some(number(key, value, 0.0, 2.0)?),
            "top_p" => {
                let p = number(key, value, 0.0, 1.0)?;
                if p == 0.0 {
                    return Err(ApiError::invalid(key, "must be above 0"));
                }
                r.top_p = Some(p);
            }
            "top_k" => r.top_k = Some(integer(key, value, 0, u32::MAX as u64)? as usize),
            "seed" => r.seed = Some(seed(value)?),
            "stop" => r.stop = stops(value)?,
            "response_format" => r.format = response_format(value)?,
            "strike" => {
                let mode = string(key, value)?.parse().map_err(|e| ApiError::invalid(key, e))?;
                r.strike = Some(mode);
            }
            "n" => must(key, value == &json!(1), "only 1 is supported")?,
            "presence_penalty" | "frequency_penalty" => must(
                key,
                value.as_f64() == Some(0.0),
                "only 0 is supported (the penalties change the reply)",
            )?,
            "logit_bias" => must(
                key,
                value.as_object().is_some_and(Map::is_empty),
                "not supported",
            )?,
            "logprobs" => must(key, value == &json!(false), "not supported")?,
            "top_logprobs" => must(key, value == &json!(0), "not supported")?,
            "tools" => r.tools.list = tools(value)?,
            "tool_choice" => r.tools.choice = tool_choice(value)?,
            "parallel_tool_calls" => r.tools.parallel = boolean(key, value)?,
            "functions" | "function_call" => {
                must(key, false, "deprecated by OpenAI: send tools and tool_choice")?
            }
            "modalities" => must(key, value == &json!(["text"]), "only [\"text\"] is supported")?,
            "reasoning_effort" => {
                r.think = match string(key, value)? {
                    "none" => Some(false),
                    "minimal" | "low" | "medium" | "high" => Some(true),
                    _ => return Err(ApiError::invalid(key, "none, minimal, low, medium or high is expected")),
                }
            }
            // They change nothing in the reply.
            "user" | "metadata" | "store" | "service_tier" | "safety_identifier"
            | "prompt_cache_key" => {}
            other => {
                return Err(ApiError::invalid(
                    other,
                    "unknown field (greve refuses what it cannot honour; docs/server.md lists the fields)",
                ))
            }
        }
    }
    r.tools.check().map_err(|fault| match fault {
        Fault::Choice(why) => ApiError::invalid("tool_choice", why),
        Fault::Schema { tool, why } => {
            ApiError::invalid(format!("tools[{tool}].function.parameters"), why)
        }
    })?;
    let Some(messages) = messages else {
        return Err(ApiError::invalid("messages", "missing"));
    };
    (r.system, r.messages) = self::messages(messages)?;
    match r.messages.last().map(|m| m.role) {
        Some(Role::User | Role::Tool) => {}
        Some(Role::Assistant) => return Err(ApiError::invalid(
            "messages",
            "the last message is the assistant's: end with a user message for the model to answer",
        )),
        None => return Err(ApiError::invalid("messages", "no user message to answer")),
    }
    Ok(r)
}

fn must(key: &str, ok: bool, why: &str) -> Result<(), ApiError> {
    match ok {
        true => Ok(()),
        false => Err(ApiError::invalid(key, why)),
    }
}

fn string<'a>(key: &str, value: &'a Value) -> Result<&'a str, ApiError> {
    value
        .as_str()
        .ok_or_else(|| ApiError::invalid(key, "a string is expected"))
}

fn boolean(key: &str, value: &Value) -> Result<bool, ApiError> {
    value
        .as_bool()
        .ok_or_else(|| ApiError::invalid(key, "true or false is expected"))
}

fn integer(key: &str, value: &Value, min: u64, max: u64) -> Result<u64, ApiError> {
    value
        .as_u64()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| {
            ApiError::invalid(key, format!("an integer from {min} to {max} is expected"))
        })
}

fn number(key: &str, value: &Value, min: f64, max: f64) -> Result<f32, ApiError> {
    value
        .as_f64()
        .filter(|x| (min..=max).contains(x))
        .map(|x| x as f32)
        .ok_or_else(|| ApiError::invalid(key, format!("a number from {min} to {max} is expected")))
}

/// Any JSON integer: OpenAI's seeds may be negative (they keep their bits).
fn seed(value: &Value) -> Result<u64, ApiError> {
    value
        .as_u64()
        .or_else(|| value.as_i64().map(|n| n as u64))
        .ok_or_else(|| ApiError::invalid("seed", "an integer is expected"))
}

fn stream_options(value: &Value) -> Result<bool, ApiError> {
    let Value::Object(options) = value else {
        return Err(ApiError::invalid("stream_options", "an object is expected"));
    };
    let mut usage = false;
    for (key, value) in options {
        match key.as_str() {
            "include_usage" => {
                usage = !value.is_null() && boolean("stream_options.include_usage", value)?
            }
            "include_obfuscation" => {}
            other => {
                return Err(ApiError::invalid(
                    format!("stream_options.{other}"),
                    "unknown field",
                ))
            }
        }
    }
    Ok(usage)
}

fn stops(value: &Value) -> Result<Vec<String>, ApiError> {
    let list = match value {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .map(|s| string("stop", s).map(str::to_string))
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(ApiError::invalid(
                "stop",
                "a string or a list of strings is expected",
            ))
        }
    };
    if list.len() > MAX_STOPS {
        return Err(ApiError::invalid(
            "stop",
            format!("at most {MAX_STOPS} strings"),
        ));
    }
    Ok(list.into_iter().filter(|s| !s.is_empty()).collect())
}

fn response_format(value: &Value) -> Result<Option<Format>, ApiError> {
    let kind = value.get("type").and_then(Value::as_str);
    let bad = |e: String| ApiError::invalid("response_format", e);
    match kind {
        Some("text") => Ok(Some(Format::Text)),
        Some("json_object") => Ok(Some(Format::Json)),
        Some("json_schema") => {
            let spec = value
                .get("json_schema")
                .filter(|s| s.is_object())
                .ok_or_else(|| bad("json_schema: an object with a schema is expected".into()))?;
            let schema = spec.get("schema").cloned().unwrap_or(json!({}));
            structured::schema(&schema.to_string())
                .map(Some)
                .map_err(bad)
        }
        Some(other) => Err(bad(format!(
            "type {} is not supported: use text, json_object or json_schema",
            crate::messages::short(other)
        ))),
        None => Err(bad("an object with a type is expected".into())),
    }
}

/// The system prompt and the conversation of `messages`.
pub fn messages(value: &Value) -> Result<(Option<String>, Vec<Message>), ApiError> {
    let Some(items) = value.as_array().filter(|a| !a.is_empty()) else {
        return Err(ApiError::invalid(
            "messages",
            "a non-empty list is expected",
        ));
    };
    let mut system: Vec<String> = Vec::new();
    let mut messages = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let param = format!("messages[{i}]");
        let Some(fields) = item.as_object() else {
            return Err(ApiError::invalid(param, "an object is expected"));
        };
        let role = fields.get("role").and_then(Value::as_str).unwrap_or("");
        // Clients send a reply's message back as they got it, with its
        // empty fields.
        let set = fields.iter().filter(|(_, v)| !v.is_null());
        for (key, _) in set {
            let known = match key.as_str() {
                "role" | "content" | "name" => true,
                "refusal" | "tool_calls" | "reasoning_content" | "reasoning" => role == "assistant",
                "tool_call_id" => role == "tool",
                _ => false,
            };
            if !known {
                return Err(ApiError::invalid(format!("{param}.{key}"), "unknown field"));
            }
        }
        let calls = match fields.get("tool_calls") {
            None | Some(Value::Null) => Vec::new(),
            Some(calls) => tool_calls(&format!("{param}.tool_calls"), calls)?,
        };
        let thinking = match role {
            "assistant" => reasoning(&param, fields)?,
            _ => None,
        };
        let content = match fields.get("content") {
            // An assistant that calls tools, or only thinks, may say nothing.
            None | Some(Value::Null) if !calls.is_empty() || thinking.is_some() => String::new(),
            c => content(&param, c)?,
        };
        let message = match role {
            "system" | "developer" if messages.is_empty() => {
                system.push(content);
                continue;
            }
            "system" | "developer" => {
                return Err(ApiError::invalid(
                    param,
                    "a system message may only come before the conversation",
                ))
            }
            "user" => Message::user(content),
            "assistant" => Message {
                tool_calls: calls,
                reasoning: thinking,
                ..Message::assistant(content)
            },
            "tool" => {
                let id = fields.get("tool_call_id").and_then(Value::as_str);
                let Some(id) = id.filter(|id| !id.is_empty()) else {
                    return Err(ApiError::invalid(
                        format!("{param}.tool_call_id"),
                        "the id of the call this answers is expected",
                    ));
                };
                Message {
                    tool_call_id: Some(id.to_string()),
                    ..Message::new(Role::Tool, content)
                }
            }
            _ => {
                return Err(ApiError::invalid(
                    format!("{param}.role"),
                    "system, developer, user, assistant or tool is expected",
                ))
            }
        };
        messages.push(message);
    }
    template::check_turns(&messages)
        .map_err(|e| ApiError::invalid("messages", crate::exit::one_line(&e)))?;
    let system = (!system.is_empty()).then(|| system.join("\n\n"));
    Ok((system, messages))
}

/// An assistant's thinking sent back: `reasoning_content` (llama-server,
/// vLLM, DeepSeek) or `reasoning` (newer vLLM), one or both the same.
fn reasoning(
    param: &str,
    fields: &serde_json::Map<String, Value>,
) -> Result<Option<String>, ApiError> {
    let mut found: Option<String> = None;
    for key in ["reasoning_content", "reasoning"] {
        let text = match fields.get(key) {
            None | Some(Value::Null) => continue,
            Some(Value::String(text)) => text,
            Some(_) => {
                return Err(ApiError::invalid(
                    format!("{param}.{key}"),
                    "a string is expected",
                ))
            }
        };
        if found.as_ref().is_some_and(|f| f != text) {
            return Err(ApiError::invalid(
                format!("{param}.reasoning"),
                "reasoning and reasoning_content differ: send one",
            ));
        }
        found = Some(text.clone());
    }
    Ok(found)
}

/// An assistant's `tool_calls`, as OpenAI shapes them.
fn tool_calls(param: &str, value: &Value) -> Result<Vec<ToolCall>, ApiError> {
    let Some(items) = value.as_array() else {
        return Err(ApiError::invalid(param, "a list of calls is expected"));
    };
    items
        .iter()
        .enumerate()
        .map(|(j, call)| {
            let param = format!("{param}[{j}]");
            let text = |v: &Value, what: &str| {
                v.as_str().map(str::to_string).ok_or_else(|| {
                    ApiError::invalid(format!("{param}.{what}"), "a string is expected")
                })
            };
            if call.get("type").is_some_and(|t| t != "function") {
                return Err(ApiError::invalid(
                    format!("{param}.type"),
                    "only function calls are supported",
                ));
            }
            let function = &call["function"];
            Ok(ToolCall {
                id: text(&call["id"], "id")?,
                name: text(&function["name"], "function.name")?,
                arguments: text(&function["arguments"], "function.arguments")?,
            })
        })
        .collect()
}

/// `tool_choice`: `"none"`, `"auto"`, `"required"`, or one function
/// (`{"type": "function", "function": {"name": "f"}}`).
fn tool_choice(value: &Value) -> Result<Choice, ApiError> {
    let bad = || {
        ApiError::invalid(
            "tool_choice",
            "\"none\", \"auto\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": NAME}} is expected",
        )
    };
    match value {
        Value::String(s) if ["none", "auto", "required"].contains(&s.as_str()) => {
            s.parse().map_err(|_| bad())
        }
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
            let name = value["function"]["name"].as_str().ok_or_else(bad)?;
            Ok(Choice::Named(name.to_string()))
        }
        _ => Err(bad()),
    }
}

/// The `tools` a request declares, as OpenAI shapes them: functions with
/// a name, a description and a JSON schema of their arguments.
pub fn tools(value: &Value) -> Result<Vec<Tool>, ApiError> {
    let Some(items) = value.as_array() else {
        return Err(ApiError::invalid("tools", "a list of tools is expected"));
    };
    let mut tools: Vec<Tool> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let param = format!("tools[{i}]");
        if item.get("type").and_then(Value::as_str) != Some("function") {
            return Err(ApiError::invalid(
                format!("{param}.type"),
                "\"function\" is expected",
            ));
        }
        let function = &item["function"];
        let name = function["name"].as_str().unwrap_or("");
        let valid = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
        if name.is_empty() || name.len() > 64 || !name.chars().all(valid) {
            return Err(ApiError::invalid(
                format!("{param}.function.name"),
                "1 to 64 letters, digits, _ or - are expected",
            ));
        }
        if tools.iter().any(|t| t.name == name) {
            return Err(ApiError::invalid(
                format!("{param}.function.name"),
                format!("{name} is declared twice"),
            ));
        }
        let description = match &function["description"] {
            Value::Null => String::new(),
            d => d
                .as_str()
                .ok_or_else(|| {
                    ApiError::invalid(
                        format!("{param}.function.description"),
                        "a string is expected",
                    )
                })?
                .to_string(),
        };
        let parameters = match &function["parameters"] {
            Value::Null => json!({"type": "object", "properties": {}}),
            p @ Value::Object(_) => p.clone(),
            _ => {
                return Err(ApiError::invalid(
                    format!("{param}.function.parameters"),
                    "a JSON schema (an object) is expected",
                ))
            }
        };
        tools.push(Tool {
            name: name.to_string(),
            description,
            parameters,
        });
    }
    Ok(tools)
}

/// A message's text: a string, or a list of text parts (joined).
fn content(param: &str, value: Option<&Value>) -> Result<String, ApiError> {
    let param = format!("{param}.content");
    match value {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                match (part.get("type").and_then(Value::as_str), part.get("text")) {
                    (Some("text"), Some(Value::String(s))) => text.push_str(s),
                    (Some("text"), _) => {
                        return Err(ApiError::invalid(
                            format!("{param}[{j}].text"),
                            "a string is expected",
                        ))
                    }
                    _ => {
                        return Err(ApiError::invalid(
                            format!("{param}[{j}]"),
                            "only text parts are supported",
                        ))
                    }
                }
            }
            Ok(text)
        }
        _ => Err(ApiError::invalid(
            param,
            "a string or a list of text parts is expected",
        )),
    }
}

/// Token counts, as `usage`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt: usize,
    pub completion: usize,
    /// Prompt tokens whose keys and values were kept from an earlier request.
    pub cached: usize,
}

impl Usage {
    pub fn json(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt,
            "completion_tokens": self.completion,
            "total_tokens": self.prompt + self.completion,
            "prompt_tokens_details": {"cached_tokens": self.cached},
        })
    }
}

/// What every reply and chunk of one completion carries.
#[derive(Clone, Debug)]
pub struct Header {
    pub id: String,
    pub created: u64,
    pub model: String,
}

/// A whole (non-streamed) reply.
/// A whole reply's message.
pub struct Answer<'a> {
    pub content: &'a str,
    /// The thinking, apart from the content, as `reasoning_content`.
    pub reasoning: Option<&'a str>,
    pub calls: &'a [ToolCall],
}

pub fn completion(h: &Header, answer: &Answer, finish: &str, usage: Usage) -> Value {
    let mut message = match answer.calls {
        [] => json!({"role": "assistant", "content": answer.content}),
        calls => {
            json!({"role": "assistant", "content": null, "tool_calls": self::calls(calls, false)})
        }
    };
    if let Some(thinking) = answer.reasoning {
        message["reasoning_content"] = thinking.into();
    }
    json!({
        "id": h.id,
        "object": "chat.completion",
        "created": h.created,
        "model": h.model,
        "choices": [{
            "index": 0,
            "message": message,
            "finish_reason": finish,
            "logprobs": null,
        }],
        "usage": usage.json(),
    })
}

/// A reply's calls, as OpenAI lists them; a stream's deltas number them.
pub fn calls(calls: &[ToolCall], numbered: bool) -> Value {
    calls
        .iter()
        .enumerate()
        .map(|(index, c)| {
            let mut call = json!({"id": c.id, "type": "function",
                "function": {"name": c.name, "arguments": c.arguments}});
            if numbered {
                call["index"] = index.into();
            }
            call
        })
        .collect()
}

/// One chunk of a streamed reply: a delta, or the end with its reason.
pub fn chunk(h: &Header, delta: Value, finish: Option<&str>) -> Value {
    json!({
        "id": h.id,
        "object": "chat.completion.chunk",
        "created": h.created,
        "model": h.model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}],
    })
}

/// The last chunk of a stream asked for with `include_usage`.
pub fn usage_chunk(h: &Header, usage: Usage) -> Value {
    json!({
        "id": h.id,
        "object": "chat.completion.chunk",
        "created": h.created,
        "model": h.model,
        "choices": [],
        "usage": usage.json(),
    })
}

/// The served model, as `/v1/models` lists it.
pub fn model(id: &str, created: u64, context: usize) -> Value {
    json!({
        "id": id,
        "object": "model",
        "created": created,
        "owned_by": "greve",
        "context_length": context,
    })
}

/// Holds back the end of a reply that may be the start of a stop string,
/// so that no stop string, nor any part of one, is ever sent.
#[derive(Debug, Default)]
pub struct StopScan {
    stops: Vec<String>,
    held: String,
    pub stopped: bool,
}

impl StopScan {
    pub fn new(stops: Vec<String>) -> Self {
        StopScan {
            stops,
            held: String::new(),
            stopped: false,
        }
    }

    /// Text that is safe to send after `text` arrives; once a stop string
    /// is seen, what precedes it, then nothing.
    pub fn push(&mut self, text: &str) -> String {
        if self.stopped {
            return String::new();
        }
        self.held.push_str(text);
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            self.stopped = true;
            self.held.truncate(at);
            return std::mem::take(&mut self.held);
        }
        // Keep the longest tail that begins some stop string.
        let keep = self
            .stops
            .iter()
            .flat_map(|s| {
                (1..s.len())
                    .filter(|&n| s.is_char_boundary(n))
                    .map(|n| &s[..n])
            })
            .filter(|prefix| self.held.ends_with(prefix))
            .map(str::len)
            .max()
            .unwrap_or(0);
        let sent = self.held.len() - keep;
        let rest = self.held.split_off(sent);
        std::mem::replace(&mut self.held, rest)
    }

    /// What is still held when the reply ends.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<ChatRequest, ApiError> {
        parse_chat(v.to_string().as_bytes())
    }

    fn user(text: &str) -> Value {
        json!({"role": "user", "content": text})
    }

    #[test]
    fn a_full_request_is_read() {
        let r = parse(json!({
            "model": "m",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Bon"}, {"type": "text", "text": "jour"}]},
                {"role": "assistant", "content": "Salut"},
                user("Ça va ?"),
            ],
            "stream": true,
            "stream_options": {"include_usage": true},
            "max_tokens": 50,
            "max_completion_tokens": 20,
            "temperature": 0,
            "top_p": 0.5,
            "seed": -1,
            "stop": ["\n\n", ""],
            "response_format": {"type": "json_object"},
            "strike": "totale",
            "n": 1,
            "user": "someone",
            "presence_penalty": 0,
            "logit_bias": {},
            "tools": null,
        }))
        .unwrap();
        assert_eq!(r.system.as_deref(), Some("Be brief."));
        assert_eq!(
            r.messages,
            vec![
                Message::user("Bonjour"),
                Message::assistant("Salut"),
                Message::user("Ça va ?")
            ]
        );
        assert!(r.stream && r.include_usage);
        assert_eq!(r.max_tokens, Some(20));
        assert_eq!(
            (r.temperature, r.top_p, r.seed),
            (Some(0.0), Some(0.5), Some(u64::MAX))
        );
        assert_eq!(r.stop, vec!["\n\n".to_string()]);
        assert_eq!(r.format, Some(Format::Json));
        assert_eq!(r.strike, Some(Mode::Totale));
    }

    /// Every refusal names the field at fault, as `param` and in the message.
    #[test]
    fn what_cannot_be_honoured_is_refused_by_name() {
        let one = |extra: Value| {
            let mut body = json!({"messages": [user("hi")]});
            for (k, v) in extra.as_object().unwrap() {
                body[k] = v.clone();
            }
            parse(body).unwrap_err()
        };
        for (field, value) in [
            ("n", json!(2)),
            ("logit_bias", json!({"42": 10})),
            ("frequency_penalty", json!(0.5)),
            ("logprobs", json!(true)),
            ("temperature", json!(3)),
            ("temperature", json!("hot")),
            ("top_p", json!(0)),
            ("max_tokens", json!(0)),
            ("max_tokens", json!(1.5)),
            ("stop", Value::from(vec!["s"; 17])),
            ("stream", json!("yes")),
            ("strike", json!("lundi")),
            ("frobnicate", json!(true)),
        ] {
            let e = one(json!({ field: value }));
            assert_eq!(
                (e.status, e.param.as_deref()),
                (400, Some(field)),
                "{field}: {e:?}"
            );
            assert!(e.message.starts_with(field), "{}", e.message);
        }
        let e = one(json!({"response_format": {"type": "xml"}}));
        assert_eq!(e.param.as_deref(), Some("response_format"));
        let e = one(
            json!({"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "nonsense"}}}}),
        );
        assert_eq!(e.param.as_deref(), Some("response_format"));
        let schema = json!({"type": "json_schema", "json_schema": {"name": "x", "strict": true,
            "schema": {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}}});
        assert!(matches!(
            parse(json!({"messages": [user("hi")], "response_format": schema}))
                .unwrap()
                .format,
            Some(Format::Schema(_))
        ));
    }

    #[test]
    fn conversations_must_be_ones_mistral_can_read() {
        let bad = |messages: Value| parse(json!({ "messages": messages })).unwrap_err();
        for (messages, param) in [
            (json!([]), "messages"),
            (json!("hi"), "messages"),
            (
                json!([user("a"), {"role": "assistant", "content": "b"}]),
                "messages",
            ),
            (json!([user("a"), user("b")]), "messages"),
            (json!([{"role": "assistant", "content": "a"}]), "messages"),
            (
                json!([user("a"), {"role": "system", "content": "s"}, user("b")]),
                "messages[1]",
            ),
            (
                json!([{"role": "robot", "content": "a"}]),
                "messages[0].role",
            ),
            (json!([{"role": "user"}]), "messages[0].content"),
            (
                json!([{"role": "user", "content": [{"type": "image_url"}]}]),
                "messages[0].content[0]",
            ),
            (
                json!([{"role": "tool", "content": "1"}]),
                "messages[0].tool_call_id",
            ),
            (
                json!([{"role": "tool", "content": "1", "tool_call_id": "a"}]),
                "messages",
            ),
            (
                json!([{"role": "user", "content": "a", "mood": "x"}]),
                "messages[0].mood",
            ),
        ] {
            let e = bad(messages.clone());
            assert_eq!(e.param.as_deref(), Some(param), "{messages}: {e:?}");
        }
        assert_eq!(
            parse(json!({})).unwrap_err().param.as_deref(),
            Some("messages")
        );
        assert_eq!(parse_chat(b"{").unwrap_err().param.as_deref(), Some("body"));
        assert_eq!(
            parse_chat(b"[1]").unwrap_err().param.as_deref(),
            Some("body")
        );
        // Nesting is bounded by the JSON reader itself.
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(parse_chat(deep.as_bytes()).unwrap_err().status, 400);
    }

    #[test]
    fn tools_and_calls_are_read_and_checked() {
        let meteo = json!({"type": "function", "function": {"name": "meteo", "parameters": {"type": "object"}}});
        let r = parse(json!({
            "tools": [meteo],
            "messages": [
                user("Lyon ?"),
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "abcDEF123", "type": "function", "function": {"name": "meteo", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "abcDEF123", "content": "gris"},
            ],
        }))
        .unwrap();
        assert_eq!(r.tools.list[0].name, "meteo");
        assert_eq!(r.tools.list[0].description, "");
        assert_eq!((&r.tools.choice, r.tools.parallel), (&Choice::Auto, true));
        assert_eq!(r.messages[1].tool_calls[0].arguments, "{}");
        assert_eq!(r.messages[2].tool_call_id.as_deref(), Some("abcDEF123"));
        let bad_tools = |tools: Value| tools_param(tools);
        assert_eq!(bad_tools(json!({"type": "function"})), "tools");
        assert_eq!(bad_tools(json!([{"type": "retrieval"}])), "tools[0].type");
        assert_eq!(
            bad_tools(json!([{"type": "function", "function": {"name": "a b"}}])),
            "tools[0].function.name"
        );
        assert_eq!(bad_tools(json!([meteo, meteo])), "tools[1].function.name");
        let bad = json!([{"type": "function", "function": {"name": "f", "parameters": []}}]);
        assert_eq!(bad_tools(bad), "tools[0].function.parameters");
        let unenforceable = json!([{"type": "function", "function": {"name": "f",
            "parameters": {"type": "object", "properties": {"a": {"type": "array", "uniqueItems": true}}}}}]);
        assert_eq!(bad_tools(unenforceable), "tools[0].function.parameters");

        let with = |extra: Value| {
            let mut body = json!({"messages": [user("x")], "tools": [meteo]});
            for (k, v) in extra.as_object().unwrap() {
                body[k] = v.clone();
            }
            parse(body).map(|r| r.tools)
        };
        let named = json!({"type": "function", "function": {"name": "meteo"}});
        let tools = with(json!({"tool_choice": named, "parallel_tool_calls": false})).unwrap();
        assert_eq!(tools.choice, Choice::Named("meteo".into()));
        assert!(!tools.parallel);
        assert_eq!(
            with(json!({"tool_choice": "required"})).unwrap().choice,
            Choice::Required
        );
        for choice in [
            json!("sometimes"),
            json!({"type": "function", "function": {"name": "pluie"}}),
            json!({"type": "function"}),
            json!(3),
        ] {
            let e = with(json!({ "tool_choice": choice })).unwrap_err();
            assert_eq!(e.param.as_deref(), Some("tool_choice"), "{choice}: {e:?}");
        }
        let e = parse(json!({"messages": [user("x")], "tool_choice": "required"})).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("tool_choice"));
        let e = with(json!({"function_call": "auto"})).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("function_call"));
    }

    /// Any body, however damaged, is read or refused, never a panic: a
    /// valid one cut, with bytes flipped, and with each field's value
    /// swapped for values of every other JSON type.
    #[test]
    fn damaged_bodies_are_refused_not_fatal() {
        use rand::{Rng, SeedableRng};
        let body = json!({
            "model": "m", "stream": true, "stream_options": {"include_usage": true},
            "max_tokens": 5, "temperature": 0.5, "top_p": 0.9, "top_k": 3, "seed": 1,
            "stop": ["x"], "response_format": {"type": "json_object"}, "strike": "off",
            "tools": [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object"}}}],
            "messages": [
                {"role": "system", "content": "s"},
                {"role": "user", "content": [{"type": "text", "text": "u"}]},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "abcDEF123", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "abcDEF123", "content": "r"},
            ],
        });
        assert!(parse(body.clone()).is_ok());
        let text = body.to_string().into_bytes();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for _ in 0..3000 {
            let mut damaged = text.clone();
            for _ in 0..rng.random_range(1..4) {
                let at = rng.random_range(0..damaged.len());
                damaged[at] = rng.random();
            }
            damaged.truncate(rng.random_range(0..=damaged.len()));
            let _ = parse_chat(&damaged);
        }
        let values = [
            json!(null),
            json!(true),
            json!(-1),
            json!(1e300),
            json!("s"),
            json!([]),
            json!([1]),
            json!({}),
            json!({"a": 1}),
        ];
        let mut paths: Vec<Vec<String>> = Vec::new();
        fn walk(v: &Value, at: Vec<String>, out: &mut Vec<Vec<String>>) {
            out.push(at.clone());
            match v {
                Value::Object(m) => m
                    .iter()
                    .for_each(|(k, v)| walk(v, [at.clone(), vec![k.clone()]].concat(), out)),
                Value::Array(a) => a
                    .iter()
                    .enumerate()
                    .for_each(|(i, v)| walk(v, [at.clone(), vec![i.to_string()]].concat(), out)),
                _ => {}
            }
        }
        walk(&body, Vec::new(), &mut paths);
        for path in &paths {
            for value in &values {
                let mut changed = body.clone();
                let mut slot = &mut changed;
                for key in path {
                    slot = match slot {
                        Value::Array(a) => &mut a[key.parse::<usize>().unwrap()],
                        v => &mut v[key.as_str()],
                    };
                }
                *slot = value.clone();
                let _ = parse(changed);
            }
        }
    }

    fn tools_param(tools: Value) -> String {
        let e = parse(json!({"messages": [user("x")], "tools": tools})).unwrap_err();
        e.param.unwrap()
    }

    #[test]
    fn reasoning_effort_none_asks_not_to_think() {
        let think = |effort: Value| {
            parse(json!({"messages": [user("x")], "reasoning_effort": effort})).map(|r| r.think)
        };
        assert_eq!(think(json!("none")).unwrap(), Some(false));
        assert_eq!(think(json!("high")).unwrap(), Some(true));
        assert_eq!(think(Value::Null).unwrap(), None);
        let e = think(json!("maximal")).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("reasoning_effort"));
    }

    #[test]
    fn system_and_developer_messages_lead() {
        let r = parse(json!({"messages": [
            {"role": "developer", "content": "A"}, {"role": "system", "content": "B"}, user("u")
        ]}))
        .unwrap();
        assert_eq!(r.system.as_deref(), Some("A\n\nB"));
    }

    #[test]
    fn stop_strings_are_held_back_never_sent() {
        let run = |stops: &[&str], pieces: &[&str]| {
            let mut s = StopScan::new(stops.iter().map(|s| s.to_string()).collect());
            let mut out: Vec<String> = pieces.iter().map(|p| s.push(p)).collect();
            if !s.stopped {
                out.push(s.finish());
            }
            (out.concat(), s.stopped)
        };
        assert_eq!(
            run(&["END"], &["Hello E", "N", "D world"]),
            ("Hello ".into(), true)
        );
        assert_eq!(
            run(&["END"], &["Hello E", "N", "d"]),
            ("Hello ENd".into(), false)
        );
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
        // The earliest stop wins: "abc" starts before "b".
        assert_eq!(run(&["b", "abc"], &["xa", "bc"]), ("x".into(), true));
        // Multi-byte stop strings are matched and held back on characters.
        assert_eq!(run(&["é!"], &["caf", "é", "!"]), ("caf".into(), true));
        assert_eq!(run(&["é!"], &["café", " ok"]), ("café ok".into(), false));
        let mut s = StopScan::new(vec!["STOP".into()]);
        assert_eq!(s.push("ab ST"), "ab ");
        assert_eq!(s.push("x"), "STx");
    }
}
