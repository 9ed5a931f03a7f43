//! `--remote`: `ask` and `chat` in front of an OpenAI-compatible server.
//! Against `greve serve`, the replies must be the local ones, persona and
//! all; against a small stub that plays back a stream in another server's
//! shape, chunk boundaries inside characters, keep-alive comments and
//! every kind of failure must come out right.

use crate::common::{self, stderr, stdout};
use crate::server::Server;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Output;

fn model() -> std::path::PathBuf {
    common::goldens().join("tiny-v3-f16.gguf")
}

fn ask(target: &[&str], args: &[&str], env: &[(&str, &str)]) -> Output {
    let all: Vec<&str> = ["ask", "--no-prompt-cache"]
        .iter()
        .chain(target)
        .chain(args)
        .copied()
        .collect();
    common::run(&all, b"", env)
}

/// The replies through the server are the replies of the model run here:
/// the persona's system prompt, letterhead and sign-off, JSON by
/// construction, and a scripted chat.
#[test]
fn remote_replies_are_the_local_ones() {
    let server = Server::start(&model(), &[]);
    let url = format!("http://{}", server.address);
    let path = model();
    let local = ["-m", path.to_str().unwrap()];
    let remote = ["--remote", url.as_str()];
    let greedy = ["--temperature", "0", "--max-tokens", "12"];
    for args in [
        vec!["Bonjour"],
        vec!["--system", "Sois bref.", "Bonjour"],
        vec!["--strike=raleuse", "--seed", "3", "Bonjour"],
    ] {
        let args: Vec<&str> = greedy.iter().chain(&args).copied().collect();
        let here = ask(&local, &args, &[]);
        let there = ask(&remote, &args, &[]);
        assert!(there.status.success(), "{}", stderr(&there));
        assert_eq!(stdout(&there), stdout(&here), "{args:?}");
    }
    let json = ask(
        &remote,
        &[
            "--format",
            "json",
            "--max-tokens",
            "200",
            "--temperature",
            "0",
            "Un objet",
        ],
        &[],
    );
    if json.status.success() {
        let value: serde_json::Value = serde_json::from_str(stdout(&json).trim()).unwrap();
        assert!(value.is_object());
    } else {
        // A string that runs past the limit: said, nothing printed.
        assert!(stderr(&json).contains("limit"), "{}", stderr(&json));
    }
    let script = b"Bonjour\nEt ensuite ?\n";
    let chat = |target: &[&str]| {
        let mut all = vec![
            "chat",
            "--no-prompt-cache",
            "--temperature",
            "0",
            "--max-tokens",
            "6",
        ];
        all.extend(target);
        common::run(&all, script, &[])
    };
    let (here, there) = (chat(&local), chat(&remote));
    assert!(there.status.success(), "{}", stderr(&there));
    assert_eq!(stdout(&there), stdout(&here));
    // The model defaults to the server's first.
    let listed = ask(&remote, &["--json", "--max-tokens", "1", "x"], &[]);
    let listed: serde_json::Value = serde_json::from_str(stdout(&listed).trim()).unwrap();
    assert_eq!(listed["model"], model().to_str().unwrap());
    assert!(server.stop().success());
}

/// A stub server: answers each connection with `response` (raw HTTP),
/// written in the pieces `cuts` marks, and reports the requests it read.
fn stub(response: Vec<u8>, cuts: Vec<usize>) -> (String, std::sync::mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let (requests, seen) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut request = Vec::new();
            let mut buf = [0; 4096];
            // Headers, then the body their Content-Length announces.
            while let Ok(n) = stream.read(&mut buf) {
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let length = head
                        .lines()
                        .find_map(|l| {
                            l.to_lowercase()
                                .strip_prefix("content-length: ")
                                .map(|v| v.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    if body.len() >= length {
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            let _ = requests.send(String::from_utf8_lossy(&request).to_string());
            let mut start = 0;
            for &cut in cuts.iter().chain([&response.len()]) {
                let _ = stream.write_all(&response[start..cut]);
                let _ = stream.flush();
                std::thread::sleep(std::time::Duration::from_millis(5));
                start = cut;
            }
        }
    });
    (address, seen)
}

/// `events` as a chunked HTTP response; `end`: the last chunk is sent.
fn chunked(status: &str, content_type: &str, body: &str, end: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    // Chunks of 7 bytes: boundaries fall inside multi-byte characters.
    for piece in body.as_bytes().chunks(7) {
        out.extend(format!("{:x}\r\n", piece.len()).bytes());
        out.extend(piece);
        out.extend(b"\r\n");
    }
    if end {
        out.extend(b"0\r\n\r\n");
    }
    out
}

/// A stream written in the shape llama-server sends (not recorded): `role`
/// first with null content, extra fields (`system_fingerprint`,
/// `timings`), a keep-alive comment, usage on the last chunk with the
/// finish reason.
const RECORDED: &str = concat!(
    r#"data: {"choices":[{"finish_reason":null,"index":0,"delta":{"role":"assistant","content":null}}],"created":1764979200,"id":"chatcmpl-Xq3","model":"mistral-7b","system_fingerprint":"b6400","object":"chat.completion.chunk"}"#,
    "\n\n: keep-alive\n\n",
    r#"data: {"choices":[{"finish_reason":null,"index":0,"delta":{"content":"La grève"}}],"created":1764979200,"id":"chatcmpl-Xq3","model":"mistral-7b","system_fingerprint":"b6400","object":"chat.completion.chunk"}"#,
    "\n\n",
    r#"data: {"choices":[{"finish_reason":null,"index":0,"delta":{"content":" continue — 🚩 jusqu'à"}}],"created":1764979200,"id":"chatcmpl-Xq3","model":"mistral-7b","system_fingerprint":"b6400","object":"chat.completion.chunk"}"#,
    "\r\n\r\n",
    r#"data: {"choices":[{"finish_reason":null,"index":0,"delta":{"content":" satisfaction."}}],"created":1764979200,"id":"chatcmpl-Xq3","model":"mistral-7b","system_fingerprint":"b6400","object":"chat.completion.chunk"}"#,
    "\n\n",
    r#"data: {"choices":[{"finish_reason":"stop","index":0,"delta":{}}],"created":1764979200,"id":"chatcmpl-Xq3","model":"mistral-7b","system_fingerprint":"b6400","object":"chat.completion.chunk","usage":{"completion_tokens":9,"prompt_tokens":12,"total_tokens":21},"timings":{"prompt_n":12,"predicted_n":9}}"#,
    "\n\n",
    "data: [DONE]\n\n",
);

#[test]
fn a_recorded_stream_plays_back_whole() {
    let response = chunked("200 OK", "text/event-stream", RECORDED, true);
    let cuts = (1..response.len()).step_by(11).collect();
    let (address, requests) = stub(response, cuts);
    let url = format!("http://{address}/v1");
    let o = ask(
        &["--remote", &url, "--model", "mistral-7b"],
        &["--json", "--seed", "4", "Et la grève ?"],
        &[("OPENAI_API_KEY", "sk-test")],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let reply: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(
        reply["reply"],
        "La grève continue — 🚩 jusqu'à satisfaction."
    );
    assert_eq!(
        (
            reply["prompt_tokens"].as_u64(),
            reply["generated_tokens"].as_u64()
        ),
        (Some(12), Some(9))
    );
    assert_eq!(reply["finish_reason"], "stop");
    let request = requests.recv().unwrap();
    assert!(
        request.starts_with("POST /v1/chat/completions"),
        "{request}"
    );
    assert!(request.contains("Bearer sk-test"), "{request}");
    let body: serde_json::Value =
        serde_json::from_str(request.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(
        (
            body["model"].as_str(),
            body["seed"].as_u64(),
            body["stream"].as_bool()
        ),
        (Some("mistral-7b"), Some(4), Some(true))
    );
    assert_eq!(body["messages"][0]["content"], "Et la grève ?");
}

/// Every failure: its exit code, one line on stderr, never a panic.
#[test]
fn remote_failures_have_their_exit_codes() {
    let one_line = |o: &Output, code: i32, words: &str| {
        let err = stderr(o);
        assert_eq!(o.status.code(), Some(code), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(words), "{words}: {err}");
        assert!(!err.contains("panicked"));
    };
    let m = ["--model", "m"];
    let play = |response: Vec<u8>| {
        let (address, _) = stub(response, vec![]);
        let url = format!("http://{address}");
        ask(&["--remote", &url], &[&m[..], &["hi"]].concat(), &[])
    };
    let json_error = |status: &str, message: &str| {
        let body = format!(r#"{{"error": {{"message": "{message}", "type": "x"}}}}"#);
        format!("HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).into_bytes()
    };
    for (status, said, code, words) in [
        ("429 Too Many Requests", "slow down", 6, "slow down"),
        ("500 Internal Server Error", "boom", 6, "boom"),
        ("400 Bad Request", "context too long", 2, "context too long"),
        ("401 Unauthorized", "bad key", 7, "GREVE_API_KEY"),
        ("404 Not Found", "no such model", 3, "no such model"),
    ] {
        one_line(&play(json_error(status, said)), code, words);
    }
    let cut = RECORDED
        .split("data: {\"choices\":[{\"finish_reason\":\"stop\"")
        .next()
        .unwrap();
    one_line(
        &play(chunked("200 OK", "text/event-stream", cut, false)),
        6,
        "cut",
    );
    one_line(
        &play(chunked("200 OK", "text/event-stream", cut, true)),
        6,
        "cut",
    );
    let bad = "data: {\"choices\": [{\"delta\": {\"content\": \"a\"}}]}\n\ndata: {nope\n\n";
    one_line(
        &play(chunked("200 OK", "text/event-stream", bad, true)),
        5,
        "malformed",
    );

    // Nothing listens.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    one_line(
        &ask(&["--remote", &url], &["hi"], &[]),
        6,
        "is the server running?",
    );
    one_line(
        &ask(&["--remote", "localhost:8080"], &["hi"], &[]),
        2,
        "URL",
    );
    let grammar = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(grammar.path(), r#"start: "oui" | "non""#).unwrap();
    let g = grammar.path().to_str().unwrap();
    let target = [
        "--remote",
        "http://127.0.0.1:1",
        "--model",
        "m",
        "--grammar",
        g,
    ];
    one_line(&ask(&target, &["hi"], &[]), 2, "--grammar cannot be sent");

    // greve serve with a key, and a model it does not serve.
    let server = Server::start(&model(), &["--api-key", "k-42"]);
    let url = format!("http://{}", server.address);
    one_line(&ask(&["--remote", &url], &["hi"], &[]), 7, "key");
    let ok = ask(
        &["--remote", &url],
        &["--max-tokens", "2", "hi"],
        &[("GREVE_API_KEY", "k-42")],
    );
    assert!(ok.status.success(), "{}", stderr(&ok));
    let other = ask(
        &["--remote", &url, "--model", "llama"],
        &["hi"],
        &[("OPENAI_API_KEY", "k-42")],
    );
    one_line(&other, 3, "llama");
}

/// A server that ignores `stream` and sends the reply whole.
#[test]
fn a_whole_reply_is_taken_too() {
    let body = r#"{"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": "Grève générale !"}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 5, "completion_tokens": 4}}"#;
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (address, _) = stub(response.into_bytes(), vec![]);
    let url = format!("http://{address}");
    let o = ask(&["--remote", &url, "--model", "m"], &["hi"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "Grève générale !\n");
}

/// Ctrl-C while the server is slow: the partial reply stays printed, the
/// stream is closed, greve exits 130 at once.
#[test]
fn ctrl_c_closes_the_stream() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut buf = [0; 65536];
        let _ = stream.read(&mut buf);
        let first = r#"data: {"choices": [{"delta": {"content": "On ne lâche rien"}}]}"#;
        let head =
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n";
        stream
            .write_all(format!("{head}{first}\n\n").as_bytes())
            .unwrap();
        // Then nothing, until greve closes the connection.
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        // What is left of the request, then the end.
        loop {
            match stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(_) => return false,
            }
        }
    });
    let mut child = common::command(&["ask", "--remote", &url, "--model", "m", "hi"], &[])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut seen = [0; 16];
    out.read_exact(&mut seen).unwrap();
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert_eq!(status.code(), Some(130));
    assert_eq!(
        format!("{}{rest}", String::from_utf8_lossy(&seen)),
        "On ne lâche rien\n"
    );
    assert!(server.join().unwrap(), "the connection stayed open");
}

/// A stream recorded from another server (llama-cpp-python's, serving the
/// tiny V1 model: tests/goldens/record_remote_stream.py) played back byte
/// for byte, cut every 13 bytes: greve prints the reply that server gave,
/// which is also the reply greve gives running the model itself.
#[test]
fn a_stream_recorded_from_llama_cpp_python_plays_back() {
    let recorded = std::fs::read(common::goldens().join("remote-stream.http")).unwrap();
    let golden = common::golden_json("remote-stream.json");
    let content = golden["content"].as_str().unwrap();
    let request = &golden["request"];
    let prompt = request["messages"][0]["content"].as_str().unwrap();
    let max = request["max_tokens"].to_string();
    let cuts = (13..recorded.len()).step_by(13).collect();
    let (address, _) = stub(recorded, cuts);
    let url = format!("http://{address}/v1");
    let greedy = ["--temperature", "0", "--max-tokens", max.as_str(), prompt];
    let o = ask(&["--remote", &url, "--model", "tiny"], &greedy, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), format!("{content}\n"));
    let path = common::goldens().join("tiny-v1-f16.gguf");
    let here = ask(&["-m", path.to_str().unwrap()], &greedy, &[]);
    assert_eq!(stdout(&here), stdout(&o), "greve and llama.cpp disagree");
}
