//! Function calling: `greve serve` driven by a real OpenAI client library
//! (async-openai), `greve ask --tools`, and `--remote` between them. Tiny
//! models with random weights call whatever they sample, so every call
//! that names a declared function with arguments its schema allows shows
//! the constraint at work; the arguments are checked with the `jsonschema`
//! crate, independently of llguidance.

use crate::common::{self, goldens, stderr, stdout, write_tiny_model};
use crate::server::{block_on, error_of, post, Server};

use std::path::{Path, PathBuf};

use async_openai::types::chat::{
    ChatCompletionMessageToolCalls, CreateChatCompletionRequest, CreateChatCompletionResponse,
    FinishReason,
};
use serde_json::{json, Value};

/// Two functions whose calls close within a few dozen tokens, whatever the
/// model samples: bounded strings and integers, no free properties.
fn tools() -> Value {
    json!([
        {"type": "function", "function": {
            "name": "meteo",
            "description": "La météo d'une ville",
            "parameters": {"type": "object", "properties": {
                "ville": {"type": "string", "minLength": 1, "maxLength": 8},
                "jours": {"type": "integer", "minimum": 1, "maximum": 7},
                "unite": {"enum": ["celsius", "fahrenheit"]},
            }, "required": ["ville", "unite"], "additionalProperties": false},
        }},
        {"type": "function", "function": {
            "name": "heure",
            "description": "L'heure qu'il est",
            "parameters": {"type": "object", "properties": {}, "additionalProperties": false},
        }},
    ])
}

/// `tools()` in a file in `dir`, as `--tools` reads it.
fn tools_file(dir: &Path) -> String {
    let file = dir.join("tools.json");
    std::fs::write(&file, tools().to_string()).unwrap();
    file.to_str().unwrap().to_string()
}

/// The schema of a declared function's arguments.
fn schema_of(name: &str) -> Option<Value> {
    tools()
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["function"]["name"] == name)
        .map(|t| t["function"]["parameters"].clone())
}

/// Checks a call as a client would use it: a declared function, arguments
/// that are JSON its schema allows, an id of nine letters and digits.
fn check_call(id: &str, name: &str, arguments: &str) {
    let schema = schema_of(name).unwrap_or_else(|| panic!("{name} is not declared"));
    let arguments: Value = serde_json::from_str(arguments)
        .unwrap_or_else(|e| panic!("{name}'s arguments are not JSON ({e}): {arguments}"));
    let validator = jsonschema::validator_for(&schema).unwrap();
    assert!(
        validator.is_valid(&arguments),
        "{name}({arguments}) does not fit {schema}"
    );
    assert!(
        id.len() == 9 && id.chars().all(|c| c.is_ascii_alphanumeric()),
        "{id}"
    );
}

/// A tiny V3 model in a Hub layout (safetensors, tokenizer.json), and the
/// Tekken one (GGUF, its vocabulary rebuilt from the metadata).
fn models() -> (tempfile::TempDir, Vec<PathBuf>) {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), "v3");
    let models = vec![
        dir.path().to_path_buf(),
        goldens().join("tiny-tekken-f16.gguf"),
    ];
    (dir, models)
}

fn request(extra: Value) -> CreateChatCompletionRequest {
    let mut body = json!({
        "model": "default",
        "messages": [{"role": "user", "content": "Quel temps fait-il à Lyon ?"}],
        "tools": tools(),
        "temperature": 1.0,
        "max_completion_tokens": 120,
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    serde_json::from_value(body).unwrap()
}

/// The calls of a reply, as (id, name, arguments).
fn calls_of(response: &CreateChatCompletionResponse) -> Vec<(String, String, String)> {
    let message = &response.choices[0].message;
    message
        .tool_calls
        .iter()
        .flatten()
        .map(|call| match call {
            ChatCompletionMessageToolCalls::Function(c) => (
                c.id.clone(),
                c.function.name.clone(),
                c.function.arguments.clone(),
            ),
            other => panic!("not a function call: {other:?}"),
        })
        .collect()
}

/// At temperature 1, over many seeds: with `required` every reply is calls,
/// with a named function one call to it, with `auto` text or calls; and
/// every call is one a client can make. A stream's deltas add up to the
/// whole reply of the same seed.
#[test]
fn sampled_calls_always_name_a_tool_and_fit_its_schema() {
    let (_dir, models) = models();
    let named = json!({"type": "function", "function": {"name": "meteo"}});
    for model in &models {
        let server = Server::start(model, &[]);
        let client = server.client();
        let (mut calls, mut texts) = (0, 0);
        for (choice, parallel) in [
            (json!("required"), false),
            (named.clone(), true),
            (json!("auto"), false),
        ] {
            for seed in 0..6 {
                let r = request(json!({"tool_choice": choice, "seed": seed,
                    "parallel_tool_calls": parallel}));
                let whole = block_on(client.chat().create(r.clone())).unwrap();
                let finish = whole.choices[0].finish_reason.unwrap();
                let made = calls_of(&whole);
                for (id, name, arguments) in &made {
                    check_call(id, name, arguments);
                }
                if choice == "auto" && made.is_empty() {
                    texts += 1;
                    let text = whole.choices[0].message.content.clone().unwrap();
                    assert!(!text.is_empty() && finish != FinishReason::ToolCalls);
                    continue;
                }
                calls += made.len();
                assert_eq!(finish, FinishReason::ToolCalls, "{choice} {seed}");
                assert!(whole.choices[0].message.content.is_none());
                if choice != "required" || !parallel {
                    assert_eq!(made.len(), 1, "{choice} {seed}: {made:?}");
                }
                if choice == named {
                    assert_eq!(made[0].1, "meteo");
                }
                if seed == 0 {
                    assert_eq!(streamed_calls(&client, r), made, "{choice}");
                }
            }
        }
        assert!(calls >= 12, "{calls} calls");
        eprintln!("{}: {calls} calls, {texts} text replies", model.display());
    }
}

/// One call or more, required and in parallel: each one fits too.
#[test]
fn parallel_calls_each_fit() {
    let server = Server::start(&goldens().join("tiny-v3-f16.gguf"), &[]);
    let client = server.client();
    let mut most = 0;
    for seed in 0..4 {
        let r =
            request(json!({"tool_choice": "required", "seed": seed, "max_completion_tokens": 600}));
        let whole = block_on(client.chat().create(r)).unwrap();
        assert_eq!(
            whole.choices[0].finish_reason,
            Some(FinishReason::ToolCalls)
        );
        let made = calls_of(&whole);
        for (id, name, arguments) in &made {
            check_call(id, name, arguments);
        }
        let ids: std::collections::HashSet<_> = made.iter().map(|c| &c.0).collect();
        assert_eq!(ids.len(), made.len(), "ids are distinct: {made:?}");
        most = most.max(made.len());
    }
    assert!(most >= 2, "no reply made several calls");
}

/// The calls a stream's deltas add up to.
fn streamed_calls(
    client: &async_openai::Client<async_openai::config::OpenAIConfig>,
    mut r: CreateChatCompletionRequest,
) -> Vec<(String, String, String)> {
    use futures::StreamExt;
    r.stream = Some(true);
    block_on(async {
        let mut chunks = client.chat().create_stream(r).await.unwrap();
        let mut calls: Vec<(String, String, String)> = Vec::new();
        let mut finish = None;
        while let Some(chunk) = chunks.next().await {
            for choice in chunk.unwrap().choices {
                for delta in choice.delta.tool_calls.into_iter().flatten() {
                    let i = delta.index as usize;
                    if i == calls.len() {
                        calls.push(Default::default());
                    }
                    let call = &mut calls[i];
                    call.0 += delta.id.as_deref().unwrap_or("");
                    if let Some(f) = delta.function {
                        call.1 += f.name.as_deref().unwrap_or("");
                        call.2 += f.arguments.as_deref().unwrap_or("");
                    }
                }
                finish = finish.or(choice.finish_reason);
            }
        }
        assert_eq!(finish, Some(FinishReason::ToolCalls));
        calls
    })
}

fn ask(model: &Path, args: &[&str]) -> std::process::Output {
    let all = [
        &["ask", "-m", model.to_str().unwrap(), "--no-prompt-cache"],
        args,
    ]
    .concat();
    common::run(&all, b"", &[])
}

/// A request with tools, its call, the tool's result, and the answer:
/// through `greve serve` with async-openai, and through `greve ask` with a
/// saved transcript, the same calls (ids included) and the same answer.
#[test]
fn a_call_and_its_result_round_trip_through_the_server_and_ask() {
    let model = goldens().join("tiny-v3-f16.gguf");
    let dir = tempfile::tempdir().unwrap();
    let tools_path = &tools_file(dir.path());
    let transcript = dir.path().join("t.json");
    let saved = transcript.to_str().unwrap();

    let server = Server::start(&model, &[]);
    let client = server.client();
    let first = block_on(
        client
            .chat()
            .create(request(json!({"tool_choice": "required", "seed": 11}))),
    )
    .unwrap();
    let calls = calls_of(&first);
    assert!(!calls.is_empty());
    let results: Vec<String> = (0..calls.len())
        .map(|i| json!({"temperature": 12 + i, "ciel": "gris"}).to_string())
        .collect();
    let mut messages = vec![
        json!({"role": "user", "content": "Quel temps fait-il à Lyon ?"}),
        serde_json::to_value(&first.choices[0].message).unwrap(),
    ];
    for ((id, _, _), result) in calls.iter().zip(&results) {
        messages.push(json!({"role": "tool", "tool_call_id": id, "content": result}));
    }
    let second = block_on(client.chat().create(request(json!({
        "messages": messages, "tool_choice": "none", "temperature": 0, "max_completion_tokens": 16,
    }))))
    .unwrap();
    let answer = second.choices[0].message.content.clone().unwrap();
    assert!(second.choices[0].message.tool_calls.is_none());
    let cached = second.usage.unwrap().prompt_tokens_details.unwrap();
    assert!(
        cached.cached_tokens.unwrap() > 0,
        "the call's prompt is reused"
    );

    let o = ask(
        &model,
        &[
            "--tools",
            tools_path,
            "--tool-choice",
            "required",
            "--temperature",
            "1",
            "--seed",
            "11",
            "-n",
            "120",
            "--save",
            saved,
            "Quel temps fait-il à Lyon ?",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let printed: Vec<(String, String, String)> = stdout(&o)
        .lines()
        .map(|line| {
            let call: Value = serde_json::from_str(line).unwrap();
            let arguments = &call["arguments"];
            assert!(arguments.is_object(), "{line}");
            let name = call["name"].as_str().unwrap().to_string();
            (
                call["id"].as_str().unwrap().into(),
                name,
                arguments.to_string(),
            )
        })
        .collect();
    assert_eq!(printed, calls, "ask's calls are the server's");

    let mut args = vec![
        "--tools",
        tools_path,
        "--tool-choice",
        "none",
        "--temperature",
        "0",
        "-n",
        "16",
        "--load",
        saved,
        "--save",
        saved,
        "--json",
    ];
    for result in &results {
        args.extend(["--tool-result", result.as_str()]);
    }
    let o = ask(&model, &args);
    assert!(o.status.success(), "{}", stderr(&o));
    let reply: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(
        reply["reply"],
        answer.as_str(),
        "ask's answer is the server's"
    );
    assert_ne!(reply["finish_reason"], "tool_calls");

    // The transcript keeps the calls and their results.
    let t: Value = serde_json::from_str(&std::fs::read_to_string(&transcript).unwrap()).unwrap();
    let roles: Vec<&str> = t["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    let expected = [
        &["user", "assistant"][..],
        &vec!["tool"; calls.len()],
        &["assistant"],
    ]
    .concat();
    assert_eq!(roles, expected);
    assert_eq!(t["messages"][2]["tool_call_id"], calls[0].0.as_str());

    // Results that do not match the calls, or no call to answer.
    let o = ask(&model, &["--load", saved, "--tool-result", "x"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("no tool call to answer"),
        "{}",
        stderr(&o)
    );
}

/// `ask --tools --json` says that the reply is calls, and a call goes to
/// `--remote` and back as the same call.
#[test]
fn ask_reports_calls_locally_and_through_a_remote_server() {
    let model = goldens().join("tiny-tekken-f16.gguf");
    let dir = tempfile::tempdir().unwrap();
    let tools_file = dir.path().join("tools.json");
    // A request body holding the list is read too.
    std::fs::write(&tools_file, json!({"tools": tools()}).to_string()).unwrap();
    let args = [
        "--tools",
        tools_file.to_str().unwrap(),
        "--tool-choice",
        "heure",
        "--seed",
        "3",
        "-n",
        "60",
        "Quelle heure est-il ?",
    ];
    let local = ask(&model, &args);
    assert!(local.status.success(), "{}", stderr(&local));
    let call: Value = serde_json::from_str(stdout(&local).trim()).unwrap();
    assert_eq!(
        (&call["name"], &call["arguments"]),
        (&json!("heure"), &json!({}))
    );

    let json = ask(&model, &[&args[..], &["--json"]].concat());
    let reply: Value = serde_json::from_str(stdout(&json).trim()).unwrap();
    assert_eq!(reply["finish_reason"], "tool_calls");
    assert_eq!(reply["tool_calls"][0], call);
    assert_eq!(reply["reply"], "");

    let server = Server::start(&model, &[]);
    let url = format!("http://{}", server.address);
    let all = [&["ask", "--remote", url.as_str()][..], &args[..]].concat();
    let remote = common::run(&all, b"", &[]);
    assert!(remote.status.success(), "{}", stderr(&remote));
    assert_eq!(stdout(&remote), stdout(&local));
}

/// Tool definitions that cannot be honoured are usage errors before any
/// model is loaded (the model named does not exist), each naming what is
/// wrong; a format without tool tokens says so.
#[test]
fn bad_tools_are_refused_before_generation() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tools.json");
    let fine = tools();
    let mut twice = fine.clone();
    twice[1]["function"]["name"] = "meteo".into();
    let mut spaced = fine.clone();
    spaced[1]["function"]["name"] = "quelle heure".into();
    let mut unique = fine.clone();
    unique[1]["function"]["parameters"] = json!({"type": "array", "uniqueItems": true});
    let mut invalid = fine.clone();
    invalid[1]["function"]["parameters"] = json!({"type": "objet"});
    for (tools, choice, says) in [
        ("[{".to_string(), "auto", "not JSON"),
        (twice.to_string(), "auto", "meteo is declared twice"),
        (spaced.to_string(), "auto", "tools[1].function.name"),
        (unique.to_string(), "auto", "uniqueItems"),
        (invalid.to_string(), "auto", "tools[1].function.parameters"),
        (fine.to_string(), "pluie", "--tool-choice"),
        ("[]".to_string(), "required", "--tool-choice"),
    ] {
        std::fs::write(&file, tools).unwrap();
        let o = common::run(
            &[
                "ask",
                "-m",
                "/nonexistent/model",
                "--tools",
                file.to_str().unwrap(),
                "--tool-choice",
                choice,
                "hi",
            ],
            b"",
            &[],
        );
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{says}: {err}");
        assert!(
            err.contains(says) && err.lines().count() == 1,
            "{says}: {err}"
        );
    }

    // v0.1 and v0.2 have no tool tokens: an error, not a prompt without tools.
    std::fs::write(&file, fine.to_string()).unwrap();
    let v1 = goldens().join("tiny-v1-f16.gguf");
    let o = ask(&v1, &["--tools", file.to_str().unwrap(), "hi"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("no tool tokens"), "{}", stderr(&o));
    let server = Server::start(&v1, &[]);
    let body = json!({"messages": [{"role": "user", "content": "hi"}], "tools": fine});
    let (status, _, text) = post(
        &server.address,
        "/v1/chat/completions",
        &body.to_string(),
        "",
    );
    let (status, error) = error_of(status, &text);
    assert_eq!(status, 400);
    assert!(error["message"]
        .as_str()
        .unwrap()
        .contains("no tool tokens"));
}

/// The persona never wraps a call: no letterhead, no sign-off; and a strike
/// that answers every request with its notice makes no fake call.
#[test]
fn the_strike_never_dresses_up_a_call() {
    let model = goldens().join("tiny-v3-f16.gguf");
    let dir = tempfile::tempdir().unwrap();
    let tools_path = &tools_file(dir.path());
    let common = ["--tools", tools_path, "--seed", "5", "-n", "120"];
    let o = ask(
        &model,
        &[
            &common[..],
            &["--strike=raleuse", "--tool-choice", "required", "Lyon ?"],
        ]
        .concat(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    for line in stdout(&o).lines() {
        let call: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        check_call(
            call["id"].as_str().unwrap(),
            call["name"].as_str().unwrap(),
            &call["arguments"].to_string(),
        );
    }
    let o = ask(
        &model,
        &[
            &common[..],
            &["--strike=totale", "--tool-choice", "required", "Lyon ?"],
        ]
        .concat(),
    );
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(stdout(&o).is_empty());
    assert!(stderr(&o).contains("calls no tool"), "{}", stderr(&o));

    let server = Server::start(&model, &["--strike=totale"]);
    let body = json!({"messages": [{"role": "user", "content": "Lyon ?"}], "tools": tools(),
        "tool_choice": "required"});
    let (status, _, text) = post(
        &server.address,
        "/v1/chat/completions",
        &body.to_string(),
        "",
    );
    let (status, error) = error_of(status, &text);
    assert_eq!((status, &error["code"]), (503, &json!("on_strike")));
}

/// Mistral Small 3.x's format (V7): the tiny Tekken model with Small's chat
/// template calls, takes the results between `[TOOL_RESULTS]` and
/// `[TOOL_CONTENT]`, and answers.
#[test]
fn small_s_format_calls_and_reads_results() {
    use crate::common::gguf::{string_value, Gguf, STRING};
    let dir = tempfile::tempdir().unwrap();
    let mut gguf = Gguf::read(&std::fs::read(goldens().join("tiny-tekken-f16.gguf")).unwrap());
    let small = b"{{- bos_token }}[SYSTEM_PROMPT]{{ system_message }}[/SYSTEM_PROMPT]";
    gguf.set("tokenizer.chat_template", STRING, string_value(small));
    let model = dir.path().join("small.gguf");
    std::fs::write(&model, gguf.write()).unwrap();
    let tools_path = &tools_file(dir.path());
    let saved = dir.path().join("t.json");
    let saved = saved.to_str().unwrap();
    let o = ask(
        &model,
        &[
            "--tools",
            tools_path,
            "--tool-choice",
            "required",
            "--no-parallel-tool-calls",
            "--seed",
            "2",
            "-n",
            "120",
            "--save",
            saved,
            "--system",
            "Sois bref.",
            "Lyon ?",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let call: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    let id = call["id"].as_str().unwrap();
    check_call(
        id,
        call["name"].as_str().unwrap(),
        &call["arguments"].to_string(),
    );
    let o = ask(
        &model,
        &[
            "--tools",
            tools_path,
            "--tool-choice",
            "none",
            "-n",
            "8",
            "--load",
            saved,
            "--tool-result",
            "Crachin.",
            "--verbose-prompt",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let prompt = stderr(&o);
    let expected = format!("[TOOL_RESULTS]{id}[TOOL_CONTENT]Crachin.[/TOOL_RESULTS]");
    assert!(prompt.contains(&expected), "{prompt}");
    assert!(
        prompt.starts_with("<s>[SYSTEM_PROMPT]Sois bref.[/SYSTEM_PROMPT]"),
        "{prompt}"
    );
    assert!(!stdout(&o).trim().is_empty());
}

/// With `auto`, on v0.3's real vocabulary: a reply may open with text or
/// with the calls token, never put the calls token after text, and a call
/// goes only where the grammar of the declared functions lets it (each
/// token of a text checked against the mask, as sampling would meet it).
#[test]
fn auto_means_text_or_a_valid_call_never_a_mix() {
    use greve::structured::{Format, Grammar};
    use greve::tokenizer::{SpecialTokens, Tokenizer};
    use greve::tools::{Choice, Tools};
    let path = goldens().join("tokenizer-v3.json");
    let tok = Tokenizer::from_json_file(&path, &SpecialTokens::default()).unwrap();
    let markers = greve::tools::Markers::of(&tok);
    let calls = markers.calls.unwrap();
    let tools = Tools {
        list: greve::server::api::tools(&tools()).unwrap(),
        choice: Choice::Auto,
        parallel: true,
    };
    let grammar = Grammar::new(&tools.reply_format(&Format::Text, &markers).unwrap(), &tok)
        .unwrap()
        .unwrap();
    let allowed = |c: &mut greve::structured::Constraint, token: u32| {
        let mut logits = vec![0f32; tok.vocab_size()];
        c.mask(&mut logits).unwrap();
        logits[token as usize].is_finite()
    };
    // Whether the reply `text` (after the calls token, when `call`) can be
    // sampled, to its end.
    let follows = |call: bool, text: &str| {
        let mut c = grammar.start().unwrap();
        let ids = [
            call.then_some(calls).into_iter().collect(),
            tok.encode(text).unwrap(),
        ]
        .concat();
        for id in ids {
            if !allowed(&mut c, id) {
                return false;
            }
            c.accept(id).unwrap();
        }
        allowed(&mut c, tok.eos())
    };
    assert!(follows(false, "Il fait beau."));
    assert!(follows(true, r#"[{"name": "heure", "arguments": {}}]"#));
    assert!(follows(
        true,
        r#"[{"name": "meteo", "arguments": {"ville": "Lyon", "unite": "celsius"}}, {"name": "heure", "arguments": {}}]"#
    ));
    for bad in [
        r#"[{"name": "pluie", "arguments": {}}]"#,
        r#"[{"name": "meteo", "arguments": {"ville": "Lyon"}}]"#,
        r#"[{"name": "meteo", "arguments": {"ville": 3, "unite": "celsius"}}]"#,
        r#"[{"name": "heure", "arguments": {"x": 1}}]"#,
        r#"[{"name": "heure", "arguments": {}}] et voilà"#,
        r#"[{"name": "heure", "arguments": {}}"#,
    ] {
        assert!(!follows(true, bad), "{bad}");
    }
    // Text first: the calls token is ruled out from then on.
    let mut c = grammar.start().unwrap();
    assert!(allowed(&mut c, calls));
    for id in tok.encode("Je regarde").unwrap() {
        c.accept(id).unwrap();
    }
    assert!(!allowed(&mut c, calls));
}
