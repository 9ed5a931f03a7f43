//! Conversations: cache reuse must change the speed, never the text; the
//! scripted front end, transcripts, commands and the context window.

use crate::common;

use std::process::Output;
use std::sync::atomic::AtomicBool;

use candle_core::Device;
use common::{goldens, write_tiny_model};
use greve::conversation::{Conversation, Options};
use greve::generate::{generate, Limits, Prompt};
use greve::model::{self, Model};
use greve::persona::{Mode, Prompts};
use greve::resolve::resolve;
use greve::sampler::{Sampler, SamplingParams};
use greve::structured::Format;
use greve::template::{self, Message};

fn load(name: &str) -> Model {
    let files = resolve(goldens().join(name).to_str().unwrap()).unwrap();
    model::load(&files, &Device::Cpu, candle_core::DType::F32).unwrap()
}

fn chat(name: &str, max_tokens: usize) -> Conversation {
    chat_with(name, max_tokens, Some("Réponds brièvement."))
}

fn chat_with(name: &str, max_tokens: usize, system: Option<&str>) -> Conversation {
    let config = Options {
        system: system.map(String::from),
        mode: Mode::Off,
        safe: false,
        prompts: Prompts::load::<&std::path::Path>(&[]).unwrap(),
        sampling: SamplingParams::greedy(),
        seed: 0,
        max_tokens: Some(max_tokens),
        format: Format::Text,
        tools: greve::tools::Tools::default(),
        show_thinking: false,
        think: true,
    };
    Conversation::new(load(name), config)
}

/// The reply a model with an empty cache gives to the whole conversation.
fn fresh_reply(
    model: &mut Model,
    system: Option<&str>,
    messages: &[Message],
    n: usize,
) -> (String, usize) {
    let system = template::System::text(system);
    let pieces = template::render(model.tokenizer.format(), &system, messages).unwrap();
    let ids = model.tokenizer.encode_pieces(&pieces).unwrap();
    let stop = [model.tokenizer.eos()];
    let mut limits = Limits {
        max_tokens: n,
        stop: &stop,
        grammar: None,
    };
    let mut sampler = Sampler::new(SamplingParams::greedy(), 0);
    model.transformer.truncate(0);
    let g = generate(
        &mut model.transformer,
        Prompt::fresh(&ids),
        &mut sampler,
        &mut limits,
        &AtomicBool::new(false),
        |_| Ok(()),
    )
    .unwrap();
    (model.tokenizer.decode(&g.tokens).unwrap(), ids.len())
}

/// Each turn prefills only what is new: the previous prompt is a prefix of
/// the next one (the reply in between is tokenised again from its text, so
/// it is reused only where that gives the generated tokens back). V3 puts
/// the system prompt in the *last* user turn, which moves every turn, so it
/// is tested without one; V1 keeps it in the first.
#[test]
fn follow_up_turns_reuse_the_cache_and_give_the_same_text() {
    for (name, system) in [
        ("tiny-v1-f16.gguf", Some("Réponds brièvement.")),
        ("tiny-v3-f16.gguf", None),
    ] {
        let mut c = chat_with(name, 12, system);
        let mut reference = load(name);
        let cancel = AtomicBool::new(false);
        let mut previous_prompt = 0;
        for (i, text) in [
            "Bonjour !",
            "Pourquoi la grève ?",
            "Et la caisse de grève ?",
        ]
        .iter()
        .enumerate()
        {
            let turn = c.send(text.to_string(), &cancel, |_| Ok(())).unwrap();
            let history = &c.messages()[..c.messages().len() - 1];
            let (want, prompt_len) = fresh_reply(&mut reference, system, history, 12);
            assert_eq!(turn.text, want, "{name}, turn {i}");
            let stats = c.last.clone().unwrap();
            assert_eq!(stats.prompt_tokens, prompt_len);
            assert!(
                stats.reused_tokens >= previous_prompt,
                "{name} turn {i}: {stats:?}"
            );
            assert_eq!(stats.prefilled_tokens(), prompt_len - stats.reused_tokens);
            previous_prompt = prompt_len;
        }
    }
}

#[test]
fn retry_undo_and_reset() {
    let mut c = chat("tiny-v1-q8_0.gguf", 6);
    let cancel = AtomicBool::new(false);
    let first = c.send("Salut".into(), &cancel, |_| Ok(())).unwrap().text;
    // Greedy: the retried reply is the same text, and nothing is duplicated.
    assert_eq!(c.retry(&cancel, |_| Ok(())).unwrap().text, first);
    assert_eq!(c.messages().len(), 2);
    c.send("Encore".into(), &cancel, |_| Ok(())).unwrap();
    assert!(c.undo());
    assert_eq!(c.messages().len(), 2);
    c.reset();
    assert!(c.messages().is_empty() && !c.undo());
    assert!(c.retry(&cancel, |_| Ok(())).is_err());
}

fn greve(args: &[&str], stdin: &str) -> Output {
    common::run(args, stdin.as_bytes(), &[])
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[test]
fn scripted_chat_answers_each_line_like_ask() {
    let model = goldens().join("tiny-v1-f16.gguf");
    let m = model.to_str().unwrap();
    let ask = greve(
        &["ask", "-m", m, "--temperature", "0", "-n", "6", "Salut !"],
        "",
    );
    let o = greve(
        &["chat", "-m", m, "--temperature", "0", "-n", "6"],
        "Salut !\n\n/stats\n",
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    // The first reply is ask's, then a blank line, then the stats line.
    assert!(
        out.starts_with(&format!("{}\n", text(&ask.stdout))),
        "{out:?}"
    );
    assert!(out.contains("reused from the cache"), "{out}");
}

#[test]
fn multi_line_blocks_are_one_message() {
    let model = goldens().join("tiny-v3-f16.gguf");
    let o = greve(
        &[
            "chat",
            "-m",
            model.to_str().unwrap(),
            "-n",
            "2",
            "--temperature",
            "0",
        ],
        "\"\"\"\nligne 1\nligne 2\n\"\"\"\n/show\n",
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("messages     2"),
        "{}",
        text(&o.stdout)
    );
}

#[test]
fn save_and_load_a_transcript() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("grève.json");
    let p = path.to_str().unwrap();
    let model = goldens().join("tiny-v1-q8_0.gguf");
    let m = model.to_str().unwrap();
    let o = greve(
        &["chat", "-m", m, "-n", "3", "--strike"],
        &format!("Salut\n/save {p}\n"),
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(saved["format"], "greve-transcript");
    assert_eq!(saved["persona"], "râleuse");
    assert_eq!(saved["messages"][0]["content"], "Salut");
    assert_eq!(saved["messages"].as_array().unwrap().len(), 2);

    let o = greve(&["chat", "-m", m, "--load", p], "/show\n");
    let out = text(&o.stdout);
    assert!(
        out.contains("messages     2") && out.contains("strike       râleuse"),
        "{out}"
    );

    let o = greve(&["chat", "-m", m, "--load", "/no/such.json"], "");
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn strike_toggles_mid_chat_and_bad_commands_do_not_end_it() {
    let model = goldens().join("tiny-v1-q8_0.gguf");
    let o = greve(
        &["chat", "-m", model.to_str().unwrap(), "-n", "3"],
        "/greve totale\nUn poème ?\n/frobnicate\n/set temperature -1\n/strike off\nMerci\n/show\n",
    );
    // The conversation goes on; the first failure decides the exit code.
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr)
            .contains("2 of the messages and commands on stdin failed, the first on line 3"),
        "{}",
        text(&o.stderr)
    );
    let out = text(&o.stdout);
    assert!(out.contains("Objet : Annonce de grève illimitée"), "{out}");
    assert!(out.contains("« Un poème ? »"), "{out}");
    assert!(out.contains("messages     4"), "{out}");
    let err = text(&o.stderr);
    assert!(err.contains("unknown command /frobnicate"), "{err}");
    assert!(
        err.contains("temperature \"-1\": must be 0 or more"),
        "{err}"
    );
}

#[test]
fn a_long_conversation_drops_its_oldest_exchanges() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), "v1");
    let config = dir.path().join("config.json");
    let cfg = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, cfg.replace("32768", "96")).unwrap();
    let messages: String = (0..8)
        .map(|i| format!("Message numéro {i}, assez long pour remplir.\n"))
        .collect();
    let o = greve(
        &[
            "chat",
            "-m",
            dir.path().to_str().unwrap(),
            "-n",
            "8",
            "--temperature",
            "0",
        ],
        &messages,
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("left the model's context window"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn ask_continues_a_saved_conversation_like_chat() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("conv.json");
    let f = file.to_str().unwrap();
    let model = goldens().join("tiny-v1-f16.gguf");
    let m = model.to_str().unwrap();
    let common = [
        "-m",
        m,
        "-n",
        "4",
        "--temperature",
        "0",
        "--system",
        "Sois bref.",
    ];

    let first = greve(
        &[&["ask"], &common[..], &["--save", f, "Salut"]].concat(),
        "",
    );
    assert_eq!(first.status.code(), Some(0), "{}", text(&first.stderr));
    let second = greve(
        &[
            &["ask", "--verbose-prompt"],
            &common[..],
            &["--load", f, "--save", f, "Encore"],
        ]
        .concat(),
        "",
    );
    assert_eq!(second.status.code(), Some(0), "{}", text(&second.stderr));
    let reply1 = text(&first.stdout).trim_end_matches('\n').to_string();
    let want_prompt =
        format!("<s>[INST] Sois bref.\n\nSalut [/INST]{reply1}</s>[INST] Encore [/INST]");
    assert!(
        text(&second.stderr).starts_with(&want_prompt),
        "{}",
        text(&second.stderr)
    );

    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(saved["messages"].as_array().unwrap().len(), 4);
    assert_eq!(saved["system"], "Sois bref.");

    // The same two turns in a chat give the same replies.
    let chat = greve(&[&["chat"], &common[..]].concat(), "Salut\nEncore\n");
    assert_eq!(
        text(&chat.stdout),
        format!("{}\n{}\n", text(&first.stdout), text(&second.stdout))
    );
}

/// `--ctx-size` bounds the conversation below the model's own context
/// (here a model's 32768 tokens to 64), and never past it.
#[test]
fn ctx_size_bounds_the_conversation() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), "v1");
    let model = dir.path().to_str().unwrap();
    let long = "grève ".repeat(100);
    let ask = |ctx: &str| {
        greve(
            &["ask", "-m", model, "-n", "2", "--ctx-size", ctx, &long],
            "",
        )
    };
    let o = ask("64");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("more than the model's context of 64"),
        "{}",
        text(&o.stderr)
    );
    assert!(ask("4096").status.success());
    let o = ask("100000");
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("it keeps 32768"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn a_message_longer_than_the_context_is_refused_and_the_chat_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), "v1");
    let config = dir.path().join("config.json");
    let cfg = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, cfg.replace("32768", "64")).unwrap();
    let long = "grève ".repeat(100);
    let o = greve(
        &[
            "chat",
            "-m",
            dir.path().to_str().unwrap(),
            "-n",
            "2",
            "--temperature",
            "0",
        ],
        &format!("{long}\nSalut\n/show\n"),
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("more than the model's context"),
        "{}",
        text(&o.stderr)
    );
    assert!(
        text(&o.stdout).contains("messages     2"),
        "{}",
        text(&o.stdout)
    );
}

#[test]
fn unwritable_saves_and_malformed_loads_leave_the_conversation_intact() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{ not json").unwrap();
    let model = goldens().join("tiny-v1-q8_0.gguf");
    let script = format!(
        "Salut\n/save /nonexistent-dir/x.json\n/load {}\n/load /nonexistent-dir/y.json\n/show\n",
        bad.display()
    );
    let o = greve(&["chat", "-m", model.to_str().unwrap(), "-n", "2"], &script);
    assert_ne!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(
        err.contains("3 of the messages and commands on stdin failed, the first on line 2"),
        "{err}"
    );
    assert!(
        err.contains("cannot save the transcript to /nonexistent-dir/x.json"),
        "{err}"
    );
    assert!(err.contains("bad.json is not a greve transcript"), "{err}");
    assert!(
        err.contains("cannot read the transcript /nonexistent-dir/y.json"),
        "{err}"
    );
    assert!(
        text(&o.stdout).contains("messages     2"),
        "{}",
        text(&o.stdout)
    );
}

/// `--load` brings the saved persona and system prompt, but a flag or a
/// variable wins over them, in `ask` as in `chat` (they used to disagree).
#[test]
fn flags_and_environment_beat_a_loaded_transcript_in_ask_and_chat() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("saved.json");
    let saved = serde_json::json!({
        "format": "greve-transcript", "version": 1, "system": "Sauvé.", "persona": "totale",
        "messages": [{"role": "user", "content": "Salut"}, {"role": "assistant", "content": "Non."}],
    });
    std::fs::write(&path, saved.to_string()).unwrap();
    let p = path.to_str().unwrap();
    let model = goldens().join("tiny-v1-f16.gguf");
    let m = model.to_str().unwrap();

    // Without flags, the transcript's persona: totale answers with the notice.
    let chat = greve(&["chat", "-m", m, "--load", p], "/show\n/system\n");
    let out = text(&chat.stdout);
    assert!(
        out.contains("strike       totale") && out.contains("Sauvé."),
        "{out}"
    );
    let ask = greve(&["ask", "-m", m, "--load", p, "Encore"], "");
    assert!(text(&ask.stdout).contains("grève"), "{}", text(&ask.stdout));

    // Flags win, in both commands.
    let flags = [
        "--strike=off",
        "--system",
        "Drapeau.",
        "-n",
        "2",
        "--temperature",
        "0",
    ];
    let chat = greve(
        &[&["chat", "-m", m, "--load", p][..], &flags].concat(),
        "/show\n/system\n",
    );
    let out = text(&chat.stdout);
    assert!(
        out.contains("strike       off") && out.contains("Drapeau."),
        "{out}"
    );
    let ask = greve(
        &[
            &["ask", "--verbose-prompt", "-m", m, "--load", p][..],
            &flags,
            &["Encore"],
        ]
        .concat(),
        "",
    );
    let err = text(&ask.stderr);
    assert!(
        err.starts_with("<s>[INST] Drapeau.\n\nSalut [/INST]Non.</s>"),
        "{err}"
    );

    // So does the environment, and the config file does not.
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "strike = \"râleuse\"\nsystem = \"Fichier.\"\n").unwrap();
    let env = [
        ("GREVE_CONFIG", config.to_str().unwrap()),
        ("GREVE_STRIKE", "off"),
    ];
    let o = common::run(&["chat", "-m", m, "--load", p], b"/show\n/system\n", &env);
    let out = text(&o.stdout);
    assert!(
        out.contains("strike       off") && out.contains("Sauvé."),
        "{out}"
    );
}

/// Both commands honour the model's `max_new_tokens`, and a flag beats it.
#[test]
fn ask_and_chat_honour_the_models_reply_limit() {
    let dir = tempfile::tempdir().unwrap();
    common::write_tiny_model(dir.path(), "v1");
    std::fs::write(
        dir.path().join("generation_config.json"),
        r#"{"bos_token_id": 1, "eos_token_id": 2, "max_new_tokens": 3, "temperature": 0.0}"#,
    )
    .unwrap();
    let m = dir.path().to_str().unwrap();
    // Random weights rarely stop on their own: a reply that stops at the
    // limit shows the limit is applied.
    let ask = greve(&["ask", "--json", "-m", m, "Bonjour"], "");
    assert_eq!(ask.status.code(), Some(0), "{}", text(&ask.stderr));
    let json: serde_json::Value = serde_json::from_str(&text(&ask.stdout)).unwrap();
    assert_eq!(json["generated_tokens"], 3, "{json}");
    assert_eq!(json["finish_reason"], "length", "{json}");
    let chat = greve(&["chat", "-m", m], "Bonjour\n/stats\n");
    let out = text(&chat.stdout);
    assert!(
        out.starts_with(&format!("{}\n", json["reply"].as_str().unwrap())),
        "{out}"
    );
    assert!(out.contains("reply 3 tokens"), "{out}");
    let longer = greve(&["chat", "-m", m, "-n", "5"], "Bonjour\n/stats\n");
    assert!(
        text(&longer.stdout).contains("reply 5 tokens"),
        "{}",
        text(&longer.stdout)
    );
}

#[test]
fn unknown_commands_in_any_script_and_input_not_in_utf8_are_usage_errors() {
    let model = goldens().join("tiny-v1-q8_0.gguf");
    let m = model.to_str().unwrap();
    let o = greve(&["chat", "-m", m, "-n", "2"], "/résumé\n/\n");
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains("unknown command /résumé; /help"), "{err}");

    // The line that is not UTF-8 ends the input; what came before is answered.
    let o = common::run(&["chat", "-m", m, "-n", "2"], b"Salut\n\xff\nEncore\n", &[]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("line 2 of stdin"), "{err}");
    assert_eq!(text(&o.stdout).matches("\n\n").count(), 1, "one reply");
}
