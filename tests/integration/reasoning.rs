//! Models that think before they answer (V13: Magistral Small 1.2,
//! Ministral 3 Reasoning): the tiny Tekken model made one, its control
//! tokens named as those releases name them. A random model never closes
//! its thinking by itself, so the end-to-end tests make it think with a
//! grammar; what is checked is where each part of the reply goes.

use crate::common::gguf::{string_value, Gguf, STRING};
use crate::common::{self, goldens, stderr, stdout};
use crate::server::{post, Server};

use std::path::{Path, PathBuf};

use greve::model::gguf::GgufSource;
use greve::structured::{Constraint, Format, Grammar};
use greve::template::{self, Piece};
use greve::tokenizer::Tokenizer;
use greve::tools::{self, Choice, Markers, Tools};
use serde_json::{json, Value};

/// Bits of a v13 chat template (Magistral Small 1.2, Ministral 3): the
/// system prompt's tokens, calls without ids, thinking.
const V13_TEMPLATE: &str =
    "[SYSTEM_PROMPT]{{ s }}[/SYSTEM_PROMPT]{{ '[TOOL_CALLS]' + name + '[ARGS]' + args }}[THINK]";
const THINK: u32 = 34;
const END_THINK: u32 = 35;

/// The tiny Tekken model as a V13 one, in `dir`.
pub(crate) fn v13_model(dir: &Path) -> PathBuf {
    v13_model_with(dir, V13_TEMPLATE)
}

fn v13_model_with(dir: &Path, template: &str) -> PathBuf {
    let mut gguf = Gguf::read(&std::fs::read(goldens().join("tiny-tekken-f16.gguf")).unwrap());
    gguf.set(
        "tokenizer.chat_template",
        STRING,
        string_value(template.as_bytes()),
    );
    gguf.rename_tokens(&[
        (32, "[ARGS]"),
        (33, "[CALL_ID]"),
        (34, "[THINK]"),
        (35, "[/THINK]"),
    ]);
    let path = dir.join("v13.gguf");
    std::fs::write(&path, gguf.write()).unwrap();
    path
}

fn tokenizer(model: &Path) -> Tokenizer {
    let src = GgufSource::open(model, &candle_core::Device::Cpu).unwrap();
    Tokenizer::from_gguf(src.metadata()).unwrap()
}

fn allowed(tok: &Tokenizer, c: &mut Constraint, token: u32) -> bool {
    let mut logits = vec![0f32; tok.vocab_size()];
    c.mask(&mut logits).unwrap();
    logits[token as usize].is_finite()
}

/// A reply's grammar lets the model open its thinking, write anything in
/// it, close it, and then holds what follows to the schema.
#[test]
fn the_grammar_holds_the_answer_after_the_thinking() {
    let dir = tempfile::tempdir().unwrap();
    let tok = tokenizer(&v13_model(dir.path()));
    assert_eq!(tok.format(), template::Instruct::V13);
    let markers = Markers::of(&tok);
    assert_eq!(markers.think, Some((THINK, END_THINK)));
    let schema = Format::Schema(json!({"enum": ["oui", "non"]}));
    let format = Tools::default().reply_format(&schema, &markers).unwrap();
    let grammar = Grammar::new(&format, &tok).unwrap().unwrap();
    let quote = tok.encode("\"").unwrap()[0];
    let letters = tok.encode("zut").unwrap();

    let mut c = grammar.start().unwrap();
    assert!(allowed(&tok, &mut c, THINK));
    assert!(allowed(&tok, &mut c, quote), "thinking is not required");
    assert!(!allowed(&tok, &mut c, END_THINK));
    assert!(!allowed(&tok, &mut c, letters[0]));
    c.accept(THINK).unwrap();
    // Thinking is free text: letters, even a quote.
    for &t in letters.iter().chain(&[quote]) {
        assert!(allowed(&tok, &mut c, t));
        c.accept(t).unwrap();
    }
    c.accept(END_THINK).unwrap();
    assert!(!allowed(&tok, &mut c, letters[0]));
    assert!(!allowed(&tok, &mut c, THINK));
    assert!(allowed(&tok, &mut c, quote));
    // A model that does not think gets no grammar without a format.
    let free = Tools::default()
        .reply_format(&Format::Text, &markers)
        .unwrap();
    assert_eq!(free, Format::Text);
}

/// V13's calls are `[TOOL_CALLS]name[ARGS]{arguments}`, each: the grammar
/// allows that shape after the thinking (not V7's JSON list), and the
/// reader takes the calls from it.
#[test]
fn v13_calls_are_written_and_read_in_their_own_syntax() {
    let dir = tempfile::tempdir().unwrap();
    let tok = tokenizer(&v13_model(dir.path()));
    let list = json!([{"type": "function", "function": {"name": "meteo", "description": "",
        "parameters": {"type": "object", "properties": {"ville": {"enum": ["Brest", "Lyon"]}},
                       "required": ["ville"], "additionalProperties": false}}}]);
    let tools = Tools {
        list: greve::server::api::tools(&list).unwrap(),
        choice: Choice::Required,
        parallel: true,
    };
    let grammar = tools
        .reply_format(&Format::Text, &Markers::of(&tok))
        .unwrap();
    let grammar = Grammar::new(&grammar, &tok).unwrap().unwrap();
    let call = |city: &str| {
        vec![
            Piece::ToolCalls,
            Piece::Text("meteo".into()),
            Piece::Args,
            Piece::Text(format!("{{\"ville\": \"{city}\"}}")),
        ]
    };
    let mut pieces = vec![
        Piece::BeginThink,
        Piece::Text("Voyons.".into()),
        Piece::EndThink,
    ];
    pieces.extend(call("Brest"));
    pieces.extend(call("Lyon"));
    let ids = tok.encode_pieces(&pieces).unwrap();
    let mut c = grammar.start().unwrap();
    for &id in &ids {
        assert!(
            allowed(&tok, &mut c, id),
            "{id} ({:?}) is refused",
            tok.piece(id)
        );
        c.accept(id).unwrap();
    }
    assert!(allowed(&tok, &mut c, tok.eos()));
    // V7's list is not this format's.
    let mut c = grammar.start().unwrap();
    c.accept(tok.tool_calls_token().unwrap()).unwrap();
    assert!(!allowed(&tok, &mut c, tok.encode("[").unwrap()[0]));

    let mut reader = greve::reply::Reader::new(&tok);
    let mut thought = String::new();
    for &id in &ids {
        match reader.push(&tok, id).unwrap() {
            Some(greve::reply::Part::Thinking(t)) => thought.push_str(&t),
            Some(greve::reply::Part::Text(t)) => panic!("calls streamed as text: {t}"),
            None => {}
        }
    }
    let (rest, read) = reader.finish(&tok).unwrap();
    assert_eq!(rest, None);
    assert_eq!(read.reasoning.as_deref(), Some("Voyons."));
    assert_eq!(thought, "Voyons.");
    let calls = tools::read_calls(&tok, &read.calls.unwrap(), 1).unwrap();
    let got: Vec<(&str, &str)> = calls
        .iter()
        .map(|c| (c.name.as_str(), c.arguments.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("meteo", r#"{"ville":"Brest"}"#),
            ("meteo", r#"{"ville":"Lyon"}"#)
        ]
    );
}

/// A grammar that makes the tiny model think, then answer "oui".
pub(crate) fn thinking_grammar(dir: &Path) -> String {
    let path = dir.join("think.lark");
    let lark =
        format!("start: <[{THINK}]> THOUGHT <[{END_THINK}]> \"oui\"\nTHOUGHT: /[a-z]{{1,12}}/\n");
    std::fs::write(&path, lark).unwrap();
    path.to_str().unwrap().to_string()
}

/// The server's whole reply to a chat request, which must succeed.
fn complete(server: &Server, body: &Value) -> Value {
    let (status, _, text) = post(
        &server.address,
        "/v1/chat/completions",
        &body.to_string(),
        "",
    );
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).unwrap()
}

fn ask(model: &Path, args: &[&str]) -> std::process::Output {
    let model = model.to_str().unwrap();
    let all = [
        &["ask", "-m", model, "--no-prompt-cache", "--seed", "5"],
        args,
    ]
    .concat();
    common::run(&all, b"", &[])
}

/// `greve ask` prints the answer alone, the thinking on stderr with
/// `--think show`, both apart in `--json`; a transcript keeps the thinking
/// and shows it to the model again as mistral-common renders it; `greve
/// serve` returns it as `reasoning_content`, whole and in deltas, never in
/// `content`; and `--remote` reads it back.
#[test]
fn the_thinking_is_kept_apart_from_the_answer_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let model = v13_model(dir.path());
    let grammar = thinking_grammar(dir.path());
    let base = ["--grammar", grammar.as_str(), "-n", "40"];

    let json = ask(&model, &[&base[..], &["--json", "Bonjour"]].concat());
    assert!(json.status.success(), "{}", stderr(&json));
    let reply: Value = serde_json::from_str(stdout(&json).trim()).unwrap();
    assert_eq!(reply["reply"], "oui", "{reply}");
    let thought = reply["reasoning"].as_str().unwrap().to_string();
    assert!(
        !thought.is_empty() && thought.chars().all(|c| c.is_ascii_lowercase()),
        "{thought:?}"
    );

    let saved = dir.path().join("t.json");
    let plain = ask(
        &model,
        &[&base[..], &["--save", saved.to_str().unwrap(), "Bonjour"]].concat(),
    );
    assert!(plain.status.success(), "{}", stderr(&plain));
    assert_eq!(stdout(&plain), "oui\n");
    assert!(!stderr(&plain).contains(&thought), "{}", stderr(&plain));
    let shown = ask(
        &model,
        &[&base[..], &["--think", "show", "Bonjour"]].concat(),
    );
    assert_eq!(stdout(&shown), "oui\n");
    assert!(stderr(&shown).contains(&thought), "{}", stderr(&shown));

    let transcript: Value =
        serde_json::from_str(&std::fs::read_to_string(&saved).unwrap()).unwrap();
    assert!(transcript.to_string().contains(&thought), "{transcript}");
    let again = ask(
        &model,
        &[
            "--load",
            saved.to_str().unwrap(),
            "-n",
            "1",
            "--verbose-prompt",
            "Encore",
        ],
    );
    assert!(again.status.success(), "{}", stderr(&again));
    let history = format!("[INST]Bonjour[/INST][THINK]{thought}[/THINK]oui</s>[INST]Encore[/INST]");
    assert!(stderr(&again).contains(&history), "{}", stderr(&again));

    let server = Server::start(&model, &["--seed", "5", "--grammar", &grammar]);
    let body = |stream: bool| {
        json!({"model": "default", "stream": stream, "max_tokens": 40,
               "messages": [{"role": "user", "content": "Bonjour"}]})
        .to_string()
    };
    let (status, _, text) = post(&server.address, "/v1/chat/completions", &body(false), "");
    assert_eq!(status, 200, "{text}");
    let whole: Value = serde_json::from_str(&text).unwrap();
    let message = &whole["choices"][0]["message"];
    assert_eq!(message["content"], "oui", "{whole}");
    assert_eq!(message["reasoning_content"], thought.as_str(), "{whole}");

    let (status, _, text) = post(&server.address, "/v1/chat/completions", &body(true), "");
    assert_eq!(status, 200, "{text}");
    let (mut content, mut reasoning) = (String::new(), String::new());
    for data in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
        let Ok(chunk) = serde_json::from_str::<Value>(data) else {
            continue;
        };
        let delta = &chunk["choices"][0]["delta"];
        content += delta["content"].as_str().unwrap_or("");
        reasoning += delta["reasoning_content"].as_str().unwrap_or("");
    }
    assert_eq!(
        (content.as_str(), reasoning.as_str()),
        ("oui", thought.as_str())
    );

    // The server holds the reply to its grammar; the client only asks.
    let url = format!("http://{}", server.address);
    let remote = common::run(
        &["ask", "--remote", &url, "-n", "40", "--json", "Bonjour"],
        b"",
        &[],
    );
    assert!(remote.status.success(), "{}", stderr(&remote));
    let back: Value = serde_json::from_str(stdout(&remote).trim()).unwrap();
    assert_eq!(back["reply"], "oui", "{back}");
    let thought = back["reasoning"].as_str().unwrap();
    assert!(
        !thought.is_empty() && thought.chars().all(|c| c.is_ascii_lowercase()),
        "{back}"
    );
}

/// A reply cut inside its thinking has no answer, and says why.
#[test]
fn a_reply_cut_while_thinking_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let model = v13_model(dir.path());
    let grammar = thinking_grammar(dir.path());
    let server = Server::start(&model, &["--grammar", &grammar]);
    let body = json!({"model": "default", "max_tokens": 2,
                      "messages": [{"role": "user", "content": "Bonjour"}]});
    let reply = complete(&server, &body);
    let choice = &reply["choices"][0];
    assert_eq!(choice["finish_reason"], "length", "{reply}");
    assert_eq!(choice["message"]["content"], "", "{reply}");
    let thought = choice["message"]["reasoning_content"].as_str().unwrap();
    assert!(!thought.is_empty(), "{reply}");
}

/// A reasoning release's prompt (here its chat template's default) comes
/// first, its example of thinking between the control tokens, and the
/// user's system prompt after it; `--think off` leaves it out.
#[test]
fn a_reasoning_release_is_asked_to_think() {
    let dir = tempfile::tempdir().unwrap();
    let template = format!(
        "{{%- set default_system_message = 'Pense d\\'abord.[THINK]brouillon[/THINK]Puis réponds.' %}}{V13_TEMPLATE}"
    );
    let model = v13_model_with(dir.path(), &template);
    let prompt = |args: &[&str]| {
        let out = ask(
            &model,
            &[&["-n", "1", "--verbose-prompt"], args, &["Bonjour"]].concat(),
        );
        assert!(out.status.success(), "{}", stderr(&out));
        stderr(&out)
    };
    let reasoning = "[SYSTEM_PROMPT]Pense d'abord.[THINK]brouillon[/THINK]Puis réponds.";
    let alone = prompt(&[]);
    assert!(
        alone.contains(&format!(
            "<s>{reasoning}[/SYSTEM_PROMPT][INST]Bonjour[/INST]"
        )),
        "{alone}"
    );
    // The thinking's markers are the control tokens, not their spelling.
    let ids: Vec<&str> = alone.lines().nth(1).unwrap().split(' ').collect();
    let at = |id: u32| ids.iter().position(|i| *i == id.to_string());
    assert!(at(THINK).unwrap() < at(END_THINK).unwrap(), "{alone}");
    let with = prompt(&["--system", "Sois bref."]);
    assert!(
        with.contains(&format!("{reasoning}\n\nSois bref.[/SYSTEM_PROMPT]")),
        "{with}"
    );
    let off = prompt(&["--think", "off", "--system", "Sois bref."]);
    assert!(
        off.contains("<s>[SYSTEM_PROMPT]Sois bref.[/SYSTEM_PROMPT][INST]Bonjour[/INST]"),
        "{off}"
    );
    assert!(!off.contains("brouillon"), "{off}");

    // The server's requests: `reasoning_effort: none` leaves it out.
    let server = Server::start(&model, &["--no-prompt-cache"]);
    let prompt_tokens = |effort: &str| {
        let mut body = json!({"model": "default", "max_tokens": 1,
                              "messages": [{"role": "user", "content": "Bonjour"}]});
        if !effort.is_empty() {
            body["reasoning_effort"] = effort.into();
        }
        complete(&server, &body)["usage"]["prompt_tokens"]
            .as_u64()
            .unwrap()
    };
    let plain = ask(&model, &["--think", "off", "-n", "1", "--json", "Bonjour"]);
    let plain: Value = serde_json::from_str(stdout(&plain).trim()).unwrap();
    assert_eq!(
        prompt_tokens("none"),
        plain["prompt_tokens"].as_u64().unwrap()
    );
    assert!(prompt_tokens("high") > prompt_tokens("none") + 5);
    assert_eq!(prompt_tokens(""), prompt_tokens("high"));
}
