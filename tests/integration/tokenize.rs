//! `greve tokenize` against mistral-common's ids, from every tokenizer
//! source, without weights.

use crate::common;

use std::process::Output;

use common::{golden_json, goldens, ids};

fn greve(args: &[&str], stdin: &[u8]) -> Output {
    common::run(args, stdin, &[])
}

fn line_ids(o: &Output) -> Vec<u32> {
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone())
        .unwrap()
        .split_whitespace()
        .map(|t| t.parse().unwrap())
        .collect()
}

fn path(name: &str) -> String {
    goldens().join(name).to_str().unwrap().to_string()
}

#[test]
fn texts_match_mistral_common_from_every_source() {
    let golden = golden_json("tokens-v1.json");
    for source in ["tokenizer-v1.json", "tiny-v1-q8_0.gguf", "vocab-v1.gguf"] {
        for case in golden["texts"].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            // stdin is taken byte for byte: trailing newlines and spaces count.
            let o = greve(
                &["tokenize", "-m", &path(source), "--no-bos"],
                text.as_bytes(),
            );
            assert_eq!(line_ids(&o), ids(&case["ids"]), "{source}: {text:?}");
        }
        // BOS by default, as the model's tokenizer says.
        let o = greve(&["tokenize", "-m", &path(source), "Salut"], b"");
        assert_eq!(line_ids(&o)[0], 1);
    }
}

#[test]
fn chats_match_mistral_common_for_v1_and_v3() {
    for version in ["v1", "v3"] {
        let golden = golden_json(&format!("tokens-{version}.json"));
        for chat in golden["chats"].as_array().unwrap() {
            let mut list: Vec<serde_json::Value> = Vec::new();
            if let Some(system) = chat["system"].as_str() {
                list.push(serde_json::json!({"role": "system", "content": system}));
            }
            for m in chat["messages"].as_array().unwrap() {
                list.push(serde_json::json!({"role": m[0], "content": m[1]}));
            }
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("chat.json");
            std::fs::write(&file, serde_json::to_string(&list).unwrap()).unwrap();
            let o = greve(
                &[
                    "tokenize",
                    "-m",
                    &path(&format!("tiny-{version}-f16.gguf")),
                    "--chat",
                    file.to_str().unwrap(),
                ],
                b"",
            );
            assert_eq!(
                line_ids(&o),
                ids(&chat["ids"]),
                "{version}: {}",
                chat["messages"]
            );
        }
    }
}

#[test]
fn pieces_json_special_and_decode() {
    let model = path("tiny-v3-f16.gguf");
    let o = greve(
        &["tokenize", "-m", &model, "--pieces", "--no-bos", "é\n"],
        b"",
    );
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(out.lines().all(|l| l.split('\t').count() == 2), "{out}");
    assert!(
        out.contains("\t<0x0A>"),
        "byte-fallback pieces show as <0xNN>: {out}"
    );

    let o = greve(&["tokenize", "-m", &model, "--json", "[INST]"], b"");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v["ids"].as_array().unwrap().len(),
        v["pieces"].as_array().unwrap().len()
    );
    // As plain text "[INST]" is several tokens; with --special it is control token 3.
    assert!(v["ids"].as_array().unwrap().len() > 2);
    let o = greve(
        &["tokenize", "-m", &model, "--special", "--no-bos", "[INST]"],
        b"",
    );
    assert_eq!(line_ids(&o), [3]);

    let o = greve(
        &["tokenize", "-m", &model, "--no-bos", "Grève générale"],
        b"",
    );
    let ids: Vec<String> = line_ids(&o).iter().map(u32::to_string).collect();
    let mut args = vec!["tokenize", "-m", &model, "--decode"];
    args.extend(ids.iter().map(String::as_str));
    let o = greve(&args, b"");
    assert_eq!(String::from_utf8(o.stdout).unwrap(), "Grève générale\n");
}

#[test]
fn bad_input_is_a_clear_error() {
    let cases: [(&[&str], &[u8], i32, &str); 5] = [
        (
            &[
                "tokenize",
                "-m",
                &path("vocab-v1.gguf"),
                "--decode",
                "32000",
            ],
            b"",
            2,
            "out of range",
        ),
        (
            &["tokenize", "-m", &path("vocab-gpt2-kind.gguf"), "x"],
            b"",
            4,
            "pre-tokenizer is \"default\"",
        ),
        (
            &["tokenize", "-m", "/no/such/model", "x"],
            b"",
            3,
            "/no/such/model",
        ),
        (
            &["tokenize", "-m", &path("vocab-v1.gguf")],
            b"\xff\xfe",
            2,
            "UTF-8",
        ),
        (
            &[
                "tokenize",
                "-m",
                &path("vocab-v1.gguf"),
                "--chat",
                &path("tokenizer-v1.json"),
            ],
            b"",
            2,
            "tokenizer-v1.json",
        ),
    ];
    for (args, stdin, code, needle) in cases {
        let o = greve(args, stdin);
        let err = String::from_utf8(o.stderr).unwrap();
        assert_eq!(o.status.code(), Some(code), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(needle), "{needle:?} not in {err}");
    }
}

/// `greve tokenize` on a vocabulary-only GGUF gives llama.cpp's ids for the
/// same file (tests/tokenizer.rs holds Tekken's file to them too).
#[test]
fn gguf_vocabulary_encodes_like_llama_cpp() {
    let golden = golden_json("llamacpp.json");
    let vocabulary = &golden["tokenize"][0];
    let file = path(vocabulary["file"].as_str().unwrap());
    assert!(file.ends_with("vocab-v1.gguf"));
    let cases = vocabulary["texts"].as_array().unwrap();
    assert!(cases.len() >= 20);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let o = greve(&["tokenize", "-m", &file, "--no-bos"], text.as_bytes());
        assert_eq!(line_ids(&o), ids(&case["ids"]), "{text:?}");
    }
}

/// `--chat` takes an OpenAI request body with tools: the ids the model
/// sees, mistral-common's.
#[test]
fn chats_with_tools_give_mistral_commons_ids() {
    let golden = golden_json("tools.json");
    for case in golden["v3"].as_array().unwrap() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("request.json");
        std::fs::write(&file, case["request"].to_string()).unwrap();
        let model = path("tiny-v3-f16.gguf");
        let o = greve(
            &["tokenize", "-m", &model, "--chat", file.to_str().unwrap()],
            b"",
        );
        assert_eq!(line_ids(&o), ids(&case["ids"]), "{}", case["text"]);
    }
    // A format without tool tokens says so.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("request.json");
    std::fs::write(&file, golden["v3"][0]["request"].to_string()).unwrap();
    let o = greve(
        &[
            "tokenize",
            "-m",
            &path("tiny-v1-f16.gguf"),
            "--chat",
            file.to_str().unwrap(),
        ],
        b"",
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no tool tokens"));
}
