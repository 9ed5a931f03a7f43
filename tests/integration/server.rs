//! `greve serve`, driven by a real OpenAI client library written by others
//! (async-openai) and by raw HTTP for what a client library hides: its
//! replies must be `greve ask`'s, token for token, and no request, however
//! malformed, slow or abandoned, may stop it.

use crate::common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_openai::config::OpenAIConfig;
use async_openai::types::chat::{
    ChatCompletionRequestAssistantMessageArgs, ChatCompletionRequestMessage,
    ChatCompletionRequestSystemMessageArgs, ChatCompletionRequestUserMessageArgs,
    CreateChatCompletionRequest, CreateChatCompletionRequestArgs, FinishReason, ResponseFormat,
    ResponseFormatJsonSchema,
};
use async_openai::Client;
use serde_json::{json, Value};

/// A running `greve serve`, stopped (SIGTERM) when dropped.
pub struct Server {
    child: Child,
    pub address: String,
    stderr: Arc<Mutex<String>>,
}

impl Server {
    pub fn start(model: &Path, args: &[&str]) -> Server {
        let model = model.to_str().unwrap();
        let mut all = vec!["serve", "-m", model, "--port", "0"];
        all.extend(args);
        let mut child = common::command(&all, &[])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let address = loop {
            let line = lines
                .next()
                .unwrap_or_else(|| panic!("greve serve ended: {}", stderr.lock().unwrap()))
                .unwrap();
            stderr.lock().unwrap().push_str(&format!("{line}\n"));
            if let Some(rest) = line.split("on http://").nth(1) {
                break rest.split('/').next().unwrap().to_string();
            }
        };
        let log = stderr.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                log.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        Server {
            child,
            address,
            stderr,
        }
    }

    pub fn client(&self) -> Client<OpenAIConfig> {
        self.client_with_key("none")
    }

    fn client_with_key(&self, key: &str) -> Client<OpenAIConfig> {
        let config = OpenAIConfig::new()
            .with_api_base(format!("http://{}/v1", self.address))
            .with_api_key(key);
        Client::with_config(config)
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// SIGTERM, and how it exited.
    pub fn stop(mut self) -> ExitStatus {
        self.signal();
        self.child.wait().unwrap()
    }

    /// How it exited, once it does.
    fn wait(mut self) -> ExitStatus {
        self.child.wait().unwrap()
    }

    fn signal(&self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

/// One HTTP/1.1 exchange on a fresh connection: status, headers, body.
fn http(address: &str, request: &[u8]) -> (u16, String, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    stream.write_all(request).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, head.to_string(), body.to_string())
}

pub fn post(address: &str, path: &str, body: &str, headers: &str) -> (u16, String, String) {
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n{body}",
        body.len()
    );
    http(address, request.as_bytes())
}

fn get(address: &str, path: &str, headers: &str) -> (u16, String, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}\r\n");
    http(address, request.as_bytes())
}

/// An error reply: its status and `{"error": {...}}` with a one-line message.
pub fn error_of(status: u16, body: &str) -> (u16, Value) {
    let value: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    let error = value["error"].clone();
    let message = error["message"].as_str().unwrap();
    assert!(!message.is_empty() && !message.contains('\n'), "{message}");
    assert!(error["type"].is_string(), "{body}");
    (status, error)
}

fn user(text: &str) -> ChatCompletionRequestMessage {
    ChatCompletionRequestUserMessageArgs::default()
        .content(text)
        .build()
        .unwrap()
        .into()
}

fn assistant(text: &str) -> ChatCompletionRequestMessage {
    ChatCompletionRequestAssistantMessageArgs::default()
        .content(text)
        .build()
        .unwrap()
        .into()
}

fn system(text: &str) -> ChatCompletionRequestMessage {
    ChatCompletionRequestSystemMessageArgs::default()
        .content(text)
        .build()
        .unwrap()
        .into()
}

fn greedy(
    messages: Vec<ChatCompletionRequestMessage>,
    max_tokens: u32,
) -> CreateChatCompletionRequest {
    CreateChatCompletionRequestArgs::default()
        .model("default")
        .messages(messages)
        .temperature(0.0)
        .max_completion_tokens(max_tokens)
        .build()
        .unwrap()
}

/// The reply and finish reason, whole.
async fn complete(
    client: &Client<OpenAIConfig>,
    request: CreateChatCompletionRequest,
) -> (String, FinishReason, Usage) {
    let response = client.chat().create(request).await.unwrap();
    let choice = &response.choices[0];
    let usage = response.usage.unwrap();
    let cached = usage
        .prompt_tokens_details
        .and_then(|d| d.cached_tokens)
        .unwrap();
    let usage = Usage {
        prompt: usage.prompt_tokens,
        cached,
    };
    (
        choice.message.content.clone().unwrap_or_default(),
        choice.finish_reason.unwrap(),
        usage,
    )
}

#[derive(Debug, PartialEq)]
struct Usage {
    prompt: u32,
    cached: u32,
}

/// The reply and finish reason, streamed and put together.
async fn stream(
    client: &Client<OpenAIConfig>,
    mut request: CreateChatCompletionRequest,
) -> (String, FinishReason) {
    use futures::StreamExt;
    request.stream = Some(true);
    let mut chunks = client.chat().create_stream(request).await.unwrap();
    let (mut text, mut finish) = (String::new(), None);
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.unwrap();
        for choice in chunk.choices {
            text.push_str(choice.delta.content.as_deref().unwrap_or(""));
            finish = finish.or(choice.finish_reason);
        }
    }
    (text, finish.expect("a finish reason"))
}

/// `greve ask`'s greedy reply to the same conversation: `messages` are the
/// earlier turns (saved as a transcript), `prompt` the last.
fn ask(
    model: &Path,
    system: &str,
    earlier: &[(&str, &str)],
    prompt: &str,
    max_tokens: u32,
) -> String {
    let dir = tempfile::tempdir().unwrap();
    let transcript = dir.path().join("t.json");
    let messages: Vec<Value> = earlier
        .iter()
        .flat_map(|(u, a)| {
            [
                json!({"role": "user", "content": u}),
                json!({"role": "assistant", "content": a}),
            ]
        })
        .collect();
    let saved = json!({"format": "greve-transcript", "version": 1, "system": system, "persona": null, "messages": messages});
    std::fs::write(&transcript, saved.to_string()).unwrap();
    let max = max_tokens.to_string();
    let o = common::run(
        &[
            "ask",
            "-m",
            model.to_str().unwrap(),
            "--temperature",
            "0",
            "--max-tokens",
            &max,
            "--load",
            transcript.to_str().unwrap(),
            "--no-prompt-cache",
            prompt,
        ],
        b"",
        &[],
    );
    assert!(o.status.success(), "{}", common::stderr(&o));
    let out = common::stdout(&o);
    out.strip_suffix('\n').unwrap_or(&out).to_string()
}

fn conversation(
    system_text: &str,
    earlier: &[(&str, &str)],
    prompt: &str,
) -> Vec<ChatCompletionRequestMessage> {
    let mut messages = vec![system(system_text)];
    for (u, a) in earlier {
        messages.push(user(u));
        messages.push(assistant(a));
    }
    messages.push(user(prompt));
    messages
}

/// Greedy replies, whole and streamed, are `greve ask`'s, for both
/// instruct formats and both file formats; each request keeps the KV
/// cache of the one before, which changes the speed and never the text.
#[test]
fn greedy_replies_are_greve_asks_token_for_token() {
    let dir = tempfile::tempdir().unwrap();
    common::write_tiny_model(dir.path(), "v3");
    let models = [
        dir.path().to_path_buf(),
        common::goldens().join("tiny-v1-f16.gguf"),
        common::goldens().join("tiny-v3-f16.gguf"),
    ];
    for model in &models {
        let server = Server::start(model, &[]);
        let client = server.client();
        let system_text = "Réponds brièvement.";
        let turns: [(&[(&str, &str)], &str); 3] = [
            (&[], "Bonjour, qui es-tu ?"),
            (&[("Bonjour, qui es-tu ?", "Un modèle.")], "Et la grève ?"),
            (
                &[
                    ("Bonjour, qui es-tu ?", "Un modèle."),
                    ("Et la grève ?", "Illimitée."),
                ],
                "Jusqu'à quand ?",
            ),
        ];
        for (i, (earlier, prompt)) in turns.iter().enumerate() {
            let expected = ask(model, system_text, earlier, prompt, 12);
            let request = greedy(conversation(system_text, earlier, prompt), 12);
            let (text, finish, _) = block_on(complete(&client, request.clone()));
            assert_eq!(text, expected, "{} turn {i}", model.display());
            let (streamed, streamed_finish) = block_on(stream(&client, request.clone()));
            assert_eq!(streamed, expected, "{} turn {i}, streamed", model.display());
            assert_eq!(streamed_finish, finish);
            // Sent again, the prompt is all in the cache but its last token
            // (whose logits pick the first reply token).
            let (again, _, usage) = block_on(complete(&client, request));
            assert_eq!(again, expected);
            assert_eq!(usage.cached, usage.prompt - 1, "{}", model.display());
        }
        assert!(server.stop().success());
    }
}

/// `response_format` gives JSON by construction: the reply parses and the
/// schema, checked by an independent validator, accepts it.
#[test]
fn json_schema_replies_validate() {
    let server = Server::start(&common::goldens().join("tiny-v3-f16.gguf"), &[]);
    let client = server.client();
    let schema = json!({
        "type": "object",
        "properties": {"ville": {"type": "string", "maxLength": 12}, "jours": {"type": "integer", "minimum": 0, "maximum": 99}},
        "required": ["ville", "jours"],
        "additionalProperties": false,
    });
    let mut request = greedy(vec![user("Une grève ?")], 60);
    request.response_format = Some(ResponseFormat::JsonSchema {
        json_schema: ResponseFormatJsonSchema {
            description: None,
            name: "greve".into(),
            schema: schema.clone(),
            strict: Some(true),
        },
    });
    let (text, finish, _) = block_on(complete(&client, request.clone()));
    assert_eq!(finish, FinishReason::Stop, "{text}");
    let value: Value = serde_json::from_str(&text).unwrap();
    assert!(jsonschema::is_valid(&schema, &value), "{value}");
    let (streamed, _) = block_on(stream(&client, request));
    assert_eq!(streamed, text);

    // Any object: a tiny model's strings may run past the limit, then the
    // reply is cut (`length`), else it is a whole object.
    let mut request = greedy(vec![user("Un objet ?")], 200);
    request.response_format = Some(ResponseFormat::JsonObject);
    let (text, finish, _) = block_on(complete(&client, request));
    assert!(text.starts_with('{'), "{text}");
    if finish == FinishReason::Stop {
        assert!(serde_json::from_str::<Value>(&text).unwrap().is_object());
    }
}

/// Every bad request gets its status and a one-line error naming what is
/// wrong, and the server answers normally after all of them.
#[test]
fn bad_requests_get_their_status_and_the_server_goes_on() {
    let server = Server::start(&common::goldens().join("tiny-v1-f16.gguf"), &[]);
    let a = server.address.as_str();
    let hi = r#"[{"role": "user", "content": "hi"}]"#;
    let long = format!(
        r#"{{"messages": [{{"role": "user", "content": "{}"}}]}}"#,
        "grève ".repeat(40_000)
    );
    let cases: Vec<(String, u16, Option<&str>)> = vec![
        ("{".into(), 400, Some("body")),
        ("[]".into(), 400, Some("body")),
        (r#"{"messages": "hi"}"#.into(), 400, Some("messages")),
        (r#"{"messages": []}"#.into(), 400, Some("messages")),
        (format!(r#"{{"messages": {hi}, "n": 2}}"#), 400, Some("n")),
        (format!(r#"{{"messages": {hi}, "temperature": "hot"}}"#), 400, Some("temperature")),
        (format!(r#"{{"messages": {hi}, "max_tokens": -1}}"#), 400, Some("max_tokens")),
        (format!(r#"{{"messages": {hi}, "logit_bias": {{"1": 5}}}}"#), 400, Some("logit_bias")),
        (format!(r#"{{"messages": {hi}, "mirostat": 2}}"#), 400, Some("mirostat")),
        (format!(r#"{{"messages": {hi}, "response_format": {{"type": "yaml"}}}}"#), 400, Some("response_format")),
        (r#"{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}"#.into(), 400, Some("messages")),
        (format!(r#"{{"messages": {hi}, "model": "gpt-4o"}}"#), 404, Some("model")),
        (long, 400, Some("messages")),
    ];
    for (body, status, param) in &cases {
        let (got, _, reply) = post(a, "/v1/chat/completions", body, "");
        let (got, error) = error_of(got, &reply);
        let start: String = body.chars().take(80).collect();
        assert_eq!(got, *status, "{start}: {reply}");
        assert_eq!(error["param"].as_str(), *param, "{reply}");
    }
    // Over the body limit: refused before it is read.
    let huge = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{{",
        9 << 20
    );
    let (status, _, reply) = http(a, huge.as_bytes());
    assert_eq!(error_of(status, &reply).0, 413, "{reply}");
    // Routes and methods.
    let (status, _, reply) = get(a, "/v1/nothing", "");
    assert_eq!(error_of(status, &reply).0, 404);
    let (status, _, reply) = get(a, "/v1/chat/completions", "");
    assert_eq!(error_of(status, &reply).0, 405);
    // Not HTTP at all.
    let (status, _, _) = http(a, b"\x16\x03\x01 hello\r\n\r\n");
    assert_eq!(status / 100, 4);
    // Still serving.
    let (status, _, reply) = post(
        a,
        "/v1/chat/completions",
        &format!(r#"{{"messages": {hi}, "max_tokens": 3}}"#),
        "",
    );
    assert_eq!(status, 200, "{reply}");
    let reply: Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(reply["usage"]["completion_tokens"], 3);
    let models: Value = serde_json::from_str(&get(a, "/v1/models", "").2).unwrap();
    assert!(
        models["data"][0]["context_length"].as_u64() > Some(0),
        "{models}"
    );
    let log = server.stderr();
    assert!(log.contains("POST /v1/chat/completions 413"), "{log}");
    // The answered request's line says when its first token came (it is
    // written once the response is over, maybe after the client read it).
    let waiting = std::time::Instant::now();
    let answered = loop {
        let log = server.stderr();
        if let Some(line) = log
            .lines()
            .find(|l| l.contains("POST /v1/chat/completions 200"))
        {
            break line.to_string();
        }
        assert!(waiting.elapsed() < Duration::from_secs(10), "{log}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(answered.contains("| first token after "), "{answered}");
    assert!(server.stop().success());
}

/// A client that leaves in the middle of a stream stops its reply within
/// a token or so and frees its slot: with both slots taken, the next
/// request is served as if nothing happened, while the other stream goes on.
#[test]
fn a_client_that_leaves_stops_its_reply() {
    let model = common::goldens().join("tiny-v1-f16.gguf");
    let server = Server::start(&model, &["-v", "--parallel", "2"]);
    let body = r#"{"messages": [{"role": "user", "content": "Raconte."}], "stream": true, "max_tokens": 30000, "temperature": 0}"#;
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    // Reads a stream's first events.
    let streaming = || {
        let mut s = TcpStream::connect(&server.address).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut seen = Vec::new();
        let mut buf = [0; 4096];
        while seen.windows(6).filter(|w| w == b"data: ").count() < 5 {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0);
            seen.extend_from_slice(&buf[..n]);
        }
        s
    };
    let (leaving, mut staying) = (streaming(), streaming());
    drop(leaving);
    // A client that gives up waiting for a whole reply.
    let whole = body.replace("\"stream\": true", "\"stream\": false");
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{whole}",
        whole.len()
    );
    let mut s = TcpStream::connect(&server.address).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    drop(s);
    let expected = ask(&model, "", &[], "Bonjour", 8);
    let client = server.client();
    let (text, _, _) = block_on(complete(&client, greedy(vec![user("Bonjour")], 8)));
    assert_eq!(text, expected);
    // The other stream went on meanwhile, and still does.
    let mut buf = [0; 4096];
    assert!(staying.read(&mut buf).unwrap() > 0);
    drop(staying);
    let log = server.stderr();
    let stopped: Vec<usize> = log
        .lines()
        .filter_map(|l| l.split("stopped after ").nth(1))
        .filter_map(|rest| rest.split(' ').next()?.parse().ok())
        .collect();
    assert!(!stopped.is_empty(), "no cancellation in {log}");
    assert!(
        stopped.iter().all(|&n| n < 30000 / 10),
        "{stopped:?} tokens"
    );
    assert!(log.contains("200 | client gone"), "{log}");
    assert!(log.contains("- | client gone"), "{log}");
}

/// Two clients that alternate each keep their KV cache with `--parallel 2`:
/// the second request of each reuses its first exchange, where one cache
/// for both (`--parallel 1`) lets each evict the other. The replies are
/// the same either way, and `greve ask`'s.
#[test]
fn alternating_clients_each_keep_their_cache() {
    let model = common::goldens().join("tiny-v3-f16.gguf");
    let firsts = ["Bonjour, qui es-tu ?", "Quelle est la capitale du Jura ?"];
    let seconds = ["Et la grève ?", "Et celle du Doubs ?"];
    let mut runs = Vec::new();
    for parallel in ["1", "2"] {
        let server = Server::start(&model, &["--parallel", parallel, "--no-prompt-cache"]);
        let client = server.client();
        let ask_first = |p: &str| block_on(complete(&client, greedy(conversation("", &[], p), 8)));
        let replies: Vec<_> = firsts.iter().map(|p| ask_first(p)).collect();
        let mut run = Vec::new();
        for ((first, (reply, _, usage)), second) in firsts.iter().zip(&replies).zip(seconds) {
            let earlier = [(*first, reply.as_str())];
            let request = greedy(conversation("", &earlier, second), 8);
            let (text, _, again) = block_on(complete(&client, request));
            assert_eq!(text, ask(&model, "", &earlier, second, 8));
            run.push((text, usage.prompt, again.cached));
        }
        assert!(server.stop().success());
        runs.push(run);
    }
    for ((alone, first_prompt, evicted), (kept, _, cached)) in runs[0].iter().zip(&runs[1]) {
        assert_eq!(alone, kept);
        assert!(*cached >= first_prompt - 1, "{cached} of {first_prompt}");
        assert!(evicted < &(first_prompt / 2), "{evicted} of {first_prompt}");
    }
}

/// Requests the model is on at once, a long prompt read in pieces beside
/// replies under way and one waiting for a free slot, each get the reply
/// they get one after another (`--parallel 1`), and the greedy ones `greve
/// ask`'s, token for token: greedy and sampled with a seed, text and JSON,
/// whole and streamed, on f16, Q4_K, Q8_0 and Tekken files.
#[test]
fn batched_replies_are_the_ones_alone() {
    let long = "La grève est illimitée, reconductible chaque matin en assemblée générale. "
        .repeat(12)
        .trim_end()
        .to_string();
    let schema = json!({
        "type": "object",
        "properties": {"ville": {"type": "string", "maxLength": 8}, "jours": {"type": "integer", "minimum": 0, "maximum": 99}},
        "required": ["ville", "jours"],
        "additionalProperties": false,
    });
    let text = |prompt: &str, max_tokens| {
        let request = greedy(conversation("Réponds.", &[], prompt), max_tokens);
        (Some((prompt.to_string(), max_tokens)), request)
    };
    let mut requests = [
        text("Un", 40),
        text("Deux, trois ?", 64),
        (None, greedy(vec![user("Au hasard.")], 48)),
        (None, greedy(vec![user("Une grève ?")], 60)),
        text(&long, 30),
    ];
    requests[2].1.temperature = Some(0.9);
    // OpenAI marks `seed` deprecated; local servers still take it.
    #[allow(deprecated)]
    {
        requests[2].1.seed = Some(7);
    }
    requests[3].1.response_format = Some(ResponseFormat::JsonSchema {
        json_schema: ResponseFormatJsonSchema {
            description: None,
            name: "greve".into(),
            schema,
            strict: Some(true),
        },
    });
    for name in [
        "tiny-v3-f16.gguf",
        "tiny-k-q4_k_m.gguf",
        "tiny-k-q8_0.gguf",
        "tiny-tekken-f16.gguf",
    ] {
        let model = common::goldens().join(name);
        let serial = Server::start(&model, &["--parallel", "1", "--no-prompt-cache"]);
        let client = serial.client();
        let alone: Vec<String> = requests
            .iter()
            .map(|(_, r)| block_on(complete(&client, r.clone())).0)
            .collect();
        drop(serial);
        let server = Server::start(&model, &["--parallel", "4", "--no-prompt-cache"]);
        let client = server.client();
        let together = block_on(async {
            let tasks = requests.iter().enumerate().map(|(i, (_, request))| {
                let (client, request) = (client.clone(), request.clone());
                async move {
                    // The long prompt comes once the others are under way.
                    if i == 4 {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    match i % 2 {
                        0 => complete(&client, request).await.0,
                        _ => stream(&client, request).await.0,
                    }
                }
            });
            futures::future::join_all(tasks).await
        });
        assert_eq!(together, alone, "{name}");
        // Each request's line is written once its response is over, maybe
        // after the client read it.
        let waiting = std::time::Instant::now();
        while !server.stderr().contains(" at once") {
            let log = server.stderr();
            let late = waiting.elapsed() > Duration::from_secs(10);
            assert!(!late, "{name}: no request ran beside another\n{log}");
            std::thread::sleep(Duration::from_millis(20));
        }
        let reply: Value = serde_json::from_str(&together[3]).unwrap();
        assert!(reply["jours"].is_u64(), "{reply}");
        for ((ask_for, _), reply) in requests.iter().zip(&together) {
            if let Some((prompt, max_tokens)) = ask_for {
                let asked = ask(&model, "Réponds.", &[], prompt, *max_tokens);
                assert_eq!(reply, &asked, "{name}: greve ask");
            }
        }
    }
}

/// A client that sends its headers a byte at a time is dropped, and the
/// server answers others meanwhile and after.
#[test]
fn slow_clients_are_dropped() {
    let server = Server::start(
        &common::goldens().join("tiny-v1-f16.gguf"),
        &["--timeout", "1"],
    );
    let mut slow = TcpStream::connect(&server.address).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let closed = std::thread::spawn(move || {
        for b in b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n".iter() {
            if slow.write_all(&[*b]).is_err() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        let mut buf = [0; 1024];
        // Read until the server closes; a timeout here is a failure.
        loop {
            match slow.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) => {
                    return e.kind() != std::io::ErrorKind::WouldBlock
                        && e.kind() != std::io::ErrorKind::TimedOut
                }
            }
        }
    });
    let (status, _, _) = get(&server.address, "/health", "");
    assert_eq!(status, 200);
    assert!(closed.join().unwrap(), "the slow client was not dropped");
    // A body that never comes: 408.
    let mut s = TcpStream::connect(&server.address).unwrap();
    s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert_eq!(get(&server.address, "/health", "").0, 200);
}

/// With a key, only requests that carry it are served (but /health); once
/// every slot has a reply under way, a full queue is refused at once with
/// Retry-After.
#[test]
fn keys_and_queue_limits() {
    let server = Server::start(
        &common::goldens().join("tiny-v1-f16.gguf"),
        &["--api-key", "sesame-42", "--queue", "1", "--parallel", "2"],
    );
    let a = server.address.as_str();
    let hi = r#"{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}"#;
    for auth in [
        "",
        "Authorization: Bearer wrong\r\n",
        "Authorization: sesame-42\r\n",
    ] {
        let (status, _, reply) = post(a, "/v1/chat/completions", hi, auth);
        assert_eq!(error_of(status, &reply).0, 401, "{auth}");
    }
    assert_eq!(get(a, "/v1/models", "").0, 401);
    assert_eq!(get(a, "/health", "").0, 200);
    let key = "Authorization: Bearer sesame-42\r\n";
    assert_eq!(post(a, "/v1/chat/completions", hi, key).0, 200);
    assert!(block_on(server.client_with_key("wrong").models().list()).is_err());
    let models = block_on(server.client_with_key("sesame-42").models().list()).unwrap();
    assert_eq!(models.data.len(), 1);

    // Two replies under way, one waiting: the fourth is refused.
    let long = r#"{"messages": [{"role": "user", "content": "Raconte."}], "stream": true, "max_tokens": 30000}"#;
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n{key}Content-Length: {}\r\n\r\n{long}",
        long.len()
    );
    let running: Vec<_> = (0..2)
        .map(|_| {
            let mut s = TcpStream::connect(a).unwrap();
            s.write_all(request.as_bytes()).unwrap();
            let mut first = [0; 64];
            assert!(s.read(&mut first).unwrap() > 0);
            s
        })
        .collect();
    // Requests until one is refused: the queue's one place is taken by
    // the first that reaches it, and that one waits (its read times out).
    // The tiny model may write a whole reply meanwhile, freeing a slot for
    // the next request, whose stream then begins.
    let mut waiting = Vec::new();
    let refused = loop {
        assert!(waiting.len() < 8, "no request was refused");
        let mut s = TcpStream::connect(a).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut reply = [0; 4096];
        match s.read(&mut reply) {
            Ok(n) if n > 0 && !reply.starts_with(b"HTTP/1.1 200") => {
                break String::from_utf8_lossy(&reply[..n]).into_owned()
            }
            _ => waiting.push(s),
        }
    };
    let (head, reply) = refused.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(head.to_lowercase().contains("retry-after:"), "{head}");
    error_of(503, reply);
    drop((running, waiting));
    assert!(server.stop().success());
}

/// The persona, for every request or per request: `totale` answers with
/// its notice at once, without the model; JSON on strike is a 503.
#[test]
fn the_strike_is_per_server_and_per_request() {
    let model = common::goldens().join("tiny-v1-f16.gguf");
    let server = Server::start(&model, &[]);
    let a = server.address.as_str();
    let body =
        r#"{"messages": [{"role": "user", "content": "Fais mes impôts."}], "strike": "totale"}"#;
    let (status, _, reply) = post(a, "/v1/chat/completions", body, "");
    assert_eq!(status, 200, "{reply}");
    let reply: Value = serde_json::from_str(&reply).unwrap();
    let notice = reply["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(notice.contains("Fais mes impôts."), "{notice}");
    assert_eq!(reply["usage"]["completion_tokens"], 0);
    let json_body = r#"{"messages": [{"role": "user", "content": "x"}], "strike": "totale", "response_format": {"type": "json_object"}}"#;
    let (status, head, reply) = post(a, "/v1/chat/completions", json_body, "");
    assert_eq!(error_of(status, &reply).0, 503);
    assert!(head.to_lowercase().contains("retry-after:"));
    drop(server);

    let server = Server::start(&model, &["--strike=totale"]);
    let off = r#"{"messages": [{"role": "user", "content": "Bonjour"}], "strike": "off", "max_tokens": 3}"#;
    let (status, _, reply) = post(&server.address, "/v1/chat/completions", off, "");
    let reply: Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(
        (status, reply["usage"]["completion_tokens"].as_u64()),
        (200, Some(3))
    );
    let (_, _, reply) = post(
        &server.address,
        "/v1/chat/completions",
        r#"{"messages": [{"role": "user", "content": "Bonjour"}]}"#,
        "",
    );
    let reply: Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(reply["usage"]["completion_tokens"], 0, "{reply}");
}

/// Stop strings end the reply before them and are never sent.
#[test]
fn stop_strings_cut_the_reply() {
    let model = common::goldens().join("tiny-v3-f16.gguf");
    let server = Server::start(&model, &[]);
    let client = server.client();
    let (full, _, _) = block_on(complete(&client, greedy(vec![user("Bonjour")], 12)));
    let words: Vec<&str> = full.split_inclusive(' ').collect();
    assert!(words.len() > 3, "{full:?}");
    let stop = words[2].trim();
    let expected = &full[..full.find(stop).unwrap()];
    let mut request = greedy(vec![user("Bonjour")], 12);
    request.stop = Some(async_openai::types::chat::StopConfiguration::String(
        stop.into(),
    ));
    let (text, finish, _) = block_on(complete(&client, request.clone()));
    assert_eq!((text.as_str(), finish), (expected, FinishReason::Stop));
    let (text, finish) = block_on(stream(&client, request));
    assert_eq!((text.as_str(), finish), (expected, FinishReason::Stop));
}

/// SIGTERM: the stream under way ends, and greve exits 0.
#[test]
fn a_signal_stops_the_server_cleanly() {
    let server = Server::start(&common::goldens().join("tiny-v1-f16.gguf"), &[]);
    let body = r#"{"messages": [{"role": "user", "content": "Raconte."}], "stream": true, "max_tokens": 30000}"#;
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut s = TcpStream::connect(&server.address).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut first = [0; 64];
    assert!(s.read(&mut first).unwrap() > 0);
    server.signal();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(String::from_utf8_lossy(&rest).contains("shutting down"));
    assert!(server.wait().success());
}
