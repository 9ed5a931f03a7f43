//! `--format json` and `--json-schema`: tiny models with random weights
//! produce noise unless constrained, so every reply that parses and fits
//! its schema shows the constraint at work. Replies are checked with the
//! `jsonschema` crate, independently of llguidance.

use crate::common;

use common::{goldens, run, stderr, stdout, write_tiny_model};
use serde_json::{json, Value};

/// Every path through it closes within a few dozen tokens, whatever the
/// model picks: bounded strings, integers and arrays, no free properties.
fn person() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 6},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "member": {"type": "boolean"},
            "demands": {"type": "array", "items": {"enum": ["salaires", "retraites", "35h"]}, "maxItems": 3},
            "mood": {"anyOf": [{"const": "en grève"}, {"type": "integer", "minimum": 0, "maximum": 9}]},
        },
        "required": ["name", "age", "member", "demands", "mood"],
        "additionalProperties": false,
    })
}

fn ask(model: &str, extra: &[&str]) -> std::process::Output {
    let args = [
        &["ask", "-m", model, "-n", "120"],
        extra,
        &["Une personne en grève ?"],
    ]
    .concat();
    run(&args, b"", &[])
}

/// The models' vocabularies, from tokenizer.json (V1) and rebuilt from
/// GGUF metadata (V1, V3 with control tokens).
fn models() -> (tempfile::TempDir, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), "v1");
    let mut models = vec![dir.path().to_str().unwrap().to_string()];
    for file in ["tiny-v1-q8_0.gguf", "tiny-v3-f16.gguf"] {
        models.push(goldens().join(file).to_str().unwrap().to_string());
    }
    (dir, models)
}

#[test]
fn every_sampled_reply_is_json_that_fits_the_schema() {
    let schema = person();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let text = schema.to_string();
    let (_dir, models) = models();
    for model in &models {
        for seed in 0..8 {
            let seed = seed.to_string();
            let o = ask(
                model,
                &[
                    "--json-schema",
                    &text,
                    "--temperature",
                    "1",
                    "--seed",
                    &seed,
                ],
            );
            assert_eq!(
                o.status.code(),
                Some(0),
                "{model} seed {seed}: {}",
                stderr(&o)
            );
            let out = stdout(&o);
            let reply: Value = serde_json::from_str(&out)
                .unwrap_or_else(|e| panic!("{model} seed {seed}: {e}: {out:?}"));
            assert!(validator.is_valid(&reply), "{model} seed {seed}: {reply}");
        }
    }
}

#[test]
fn greedy_replies_repeat_and_fixed_values_come_out_exactly() {
    let model = goldens().join("tiny-v3-f16.gguf");
    let m = model.to_str().unwrap();
    let schema = person().to_string();
    let greedy = ["--json-schema", &schema, "--temperature", "0"];
    let (a, b) = (ask(m, &greedy), ask(m, &greedy));
    assert_eq!(a.status.code(), Some(0), "{}", stderr(&a));
    assert_eq!(stdout(&a), stdout(&b));

    let fixed = json!({"grève": ["illimitée", 1, true, null], "taux": 0.5});
    for schema in [json!({"const": fixed}), json!({"enum": [fixed]})] {
        let schema = schema.to_string();
        let o = ask(m, &["--json-schema", &schema, "--temperature", "1"]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let reply: Value = serde_json::from_str(&stdout(&o)).unwrap();
        assert_eq!(reply, fixed);
    }
}

/// A reply cut by the token limit is never printed as if it were JSON:
/// stdout stays empty, the exit code is 5, and `--json` says `length`.
#[test]
fn a_reply_cut_short_is_reported_not_printed() {
    let model = goldens().join("tiny-v3-f16.gguf");
    let m = model.to_str().unwrap();
    // Five tokens cannot hold all five properties.
    let schema = person().to_string();
    let o = run(
        &["ask", "-m", m, "--json-schema", &schema, "-n", "5", "x"],
        b"",
        &[],
    );
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert_eq!(stdout(&o), "");
    assert!(
        stderr(&o).contains("before it was complete (schema)"),
        "{}",
        stderr(&o)
    );

    let o = run(
        &[
            "ask",
            "-m",
            m,
            "--json-schema",
            &schema,
            "-n",
            "5",
            "--json",
            "x",
        ],
        b"",
        &[],
    );
    assert_eq!(o.status.code(), Some(5));
    let envelope: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(envelope["finish_reason"], "length");
    assert!(
        envelope["reply"].as_str().unwrap().starts_with('{'),
        "{envelope}"
    );
}

/// Unsupported or broken schemas are usage errors naming the problem,
/// found before any model is looked for.
#[test]
fn bad_schemas_are_refused_before_the_model_is_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.json");
    std::fs::write(&file, r#"{"type": "array", "uniqueItems": true}"#).unwrap();
    let cases = [
        (file.to_str().unwrap(), "uniqueItems"),
        (r#"{"type": "object""#, "not JSON"),
        ("/no/such/schema.json", "cannot read"),
    ];
    for (schema, needle) in cases {
        let o = run(
            &["ask", "-m", "/no/such/model", "--json-schema", schema, "x"],
            b"",
            &[],
        );
        assert_eq!(o.status.code(), Some(2), "{schema}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(
            err.contains(needle) && err.lines().count() == 1,
            "{schema}: {err}"
        );
    }
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "json_schema = \"s.json\"\n").unwrap();
    let o = run(
        &["ask", "-m", "/no/such/model", "x"],
        b"",
        &[("GREVE_CONFIG", config.to_str().unwrap())],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("uniqueItems"), "{}", stderr(&o));
}

/// The persona shapes the words, never the format: no letterhead or
/// sign-off around JSON, and a strike notice is no JSON (stderr, exit 5).
#[test]
fn the_strike_persona_stays_off_stdout() {
    let model = goldens().join("tiny-v1-q8_0.gguf");
    let m = model.to_str().unwrap();
    let schema = person().to_string();
    let o = ask(
        m,
        &[
            "--strike",
            "--json-schema",
            &schema,
            "--json",
            "--seed",
            "3",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let envelope: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(envelope["persona"], "râleuse");
    assert!(envelope["letterhead"].is_null() && envelope["signoff"].is_null());
    let reply: Value = serde_json::from_str(envelope["reply"].as_str().unwrap()).unwrap();
    assert!(jsonschema::is_valid(&person(), &reply), "{reply}");

    let o = ask(m, &["--strike=totale", "--format", "json"]);
    assert_eq!(o.status.code(), Some(5));
    assert_eq!(stdout(&o), "");
    assert!(
        stderr(&o).contains("Objet : Annonce de grève illimitée"),
        "{}",
        stderr(&o)
    );
    // With --json the envelope carries the notice; still no JSON reply.
    let o = ask(m, &["--strike=totale", "--format", "json", "--json"]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    let envelope: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(envelope["reply"].is_null(), "{envelope}");
    // A chat's notice goes to stderr too.
    let o = run(
        &["chat", "-m", m, "--strike=totale", "--format", "json"],
        "Un poème ?\n".as_bytes(),
        &[],
    );
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert_eq!(stdout(&o), "");
    assert!(stderr(&o).contains("Objet : Annonce de grève illimitée"));
}

/// `/set schema`, `/set format` in a chat, and `format` in the config file.
#[test]
fn chat_switches_format_mid_conversation() {
    let dir = tempfile::tempdir().unwrap();
    let schema = dir.path().join("person.json");
    std::fs::write(&schema, person().to_string()).unwrap();
    let model = goldens().join("tiny-v3-f16.gguf");
    let m = model.to_str().unwrap();
    let script = format!(
        "/set schema {}\nQui ?\n/set format text\n/set max_tokens 4\nEt alors ?\n/show\n",
        schema.display()
    );
    let o = run(
        &["chat", "-m", m, "-n", "120", "--seed", "2"],
        script.as_bytes(),
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    // Each line of a script, command or message, is followed by a blank line.
    let first = out.lines().find(|l| !l.is_empty()).unwrap();
    let reply: Value = serde_json::from_str(first).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert!(jsonschema::is_valid(&person(), &reply), "{reply}");
    assert!(out.contains("format       text"), "{out}");

    let config = dir.path().join("config.toml");
    std::fs::write(&config, "format = \"json\"\n").unwrap();
    let env = [("GREVE_CONFIG", config.to_str().unwrap())];
    let o = run(&["config"], b"", &env);
    assert!(
        stdout(&o)
            .lines()
            .any(|l| l.starts_with("format") && l.contains("json") && l.contains("(file)")),
        "{}",
        stdout(&o)
    );
}

/// `--grammar`: llguidance's Lark dialect, for replies that are not JSON.
#[test]
fn a_lark_grammar_shapes_free_text() {
    let dir = tempfile::tempdir().unwrap();
    let grammar = dir.path().join("vote.lark");
    std::fs::write(
        &grammar,
        "start: \"grève \" (\"reconduite\" | \"suspendue\") \".\"\n",
    )
    .unwrap();
    let model = goldens().join("tiny-v1-q8_0.gguf");
    let m = model.to_str().unwrap();
    for seed in ["1", "2", "3"] {
        let o = ask(
            m,
            &[
                "--grammar",
                grammar.to_str().unwrap(),
                "--temperature",
                "1",
                "--seed",
                seed,
            ],
        );
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let out = stdout(&o);
        assert!(
            ["grève reconduite.\n", "grève suspendue.\n"].contains(&out.as_str()),
            "{out:?}"
        );
    }
    std::fs::write(&grammar, "start: nowhere\n").unwrap();
    let o = run(
        &["ask", "-m", m, "--grammar", grammar.to_str().unwrap(), "x"],
        b"",
        &[],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}
