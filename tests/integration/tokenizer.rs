//! Token ids against mistral-common: plain text and whole chats, for the V1,
//! V3 and V7 vocabularies, from tokenizer.json and from GGUF metadata.

use crate::common;

use common::{golden_json, goldens, ids};
use greve::model::gguf::GgufSource;
use greve::template::{self, Instruct, Message, Role};
use greve::tokenizer::{SpecialTokens, StreamDecoder, Tokenizer};

fn from_json(version: &str) -> Tokenizer {
    let path = goldens().join(format!("tokenizer-{version}.json"));
    Tokenizer::from_json_file(&path, &SpecialTokens::default()).unwrap()
}

fn from_gguf(version: &str) -> Tokenizer {
    from_gguf_file(&format!("tiny-{version}-f16.gguf"))
}

fn from_gguf_file(name: &str) -> Tokenizer {
    let src = GgufSource::open(&goldens().join(name), &candle_core::Device::Cpu).unwrap();
    Tokenizer::from_gguf(src.metadata()).unwrap()
}

fn messages(chat: &serde_json::Value) -> Vec<Message> {
    chat["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let role = if m[0] == "user" {
                Role::User
            } else {
                Role::Assistant
            };
            Message::new(role, m[1].as_str().unwrap())
        })
        .collect()
}

fn check_against_mistral_common(tok: &Tokenizer, version: &str, source: &str) {
    let golden = golden_json(&format!("tokens-{version}.json"));
    let mut failures = Vec::new();
    for case in golden["texts"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let got = tok.encode(text).unwrap();
        if got != ids(&case["ids"]) {
            failures.push(format!(
                "text {text:?}: got {got:?}, want {:?}",
                ids(&case["ids"])
            ));
        }
    }
    for chat in golden["chats"].as_array().unwrap() {
        let pieces = template::render(
            tok.format(),
            &template::System::text(chat["system"].as_str()),
            &messages(chat),
        )
        .unwrap();
        let got = tok.encode_pieces(&pieces).unwrap();
        if got != ids(&chat["ids"]) {
            failures.push(format!(
                "chat {}: got {got:?}, want {:?}",
                chat["messages"],
                ids(&chat["ids"])
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{source} {version}:\n{}",
        failures.join("\n")
    );
}

#[test]
fn tokenizer_json_encodes_like_mistral_common() {
    for version in ["v1", "v3", "v7"] {
        check_against_mistral_common(&from_json(version), version, "tokenizer.json");
    }
}

#[test]
fn gguf_vocabulary_encodes_like_mistral_common() {
    for version in ["v1", "v3"] {
        check_against_mistral_common(&from_gguf(version), version, "GGUF");
    }
}

/// NeMo's Tekken vocabulary as llama.cpp's converter writes it (`gpt2`,
/// byte-level BPE with merges), rebuilt from the GGUF metadata alone: the
/// ids of mistral-common and of llama.cpp's own tokenizer on the file.
#[test]
fn tekken_gguf_vocabulary_encodes_like_mistral_common() {
    let tok = from_gguf_file("tiny-tekken-f16.gguf");
    assert_eq!(tok.format(), Instruct::V3);
    assert_eq!(tok.vocab_size(), 131072);
    check_against_mistral_common(&tok, "tekken", "GGUF");
    let golden = golden_json("tokens-tekken.json");
    for case in golden["texts"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(tok.decode(&ids(&case["ids"])).unwrap(), text);
    }
    // llama.cpp's own tokenizer on the same file.
    let llama_cpp = &golden_json("llamacpp.json")["tokenize"][1];
    assert_eq!(llama_cpp["file"], "tiny-tekken-f16.gguf");
    let cases = llama_cpp["texts"].as_array().unwrap();
    assert!(cases.len() >= 20);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        assert_eq!(tok.encode(text).unwrap(), ids(&case["ids"]), "{text:?}");
    }
}

/// mistral-common's own file, tekken.json (v13, cut to 3000 pieces by
/// tests/goldens/tekken_goldens.py): its ids for texts and chats, its
/// format from the file's version, its control tokens by name; a folder
/// holding only a tekken.json reads it.
#[test]
fn a_tekken_json_encodes_like_mistral_common() {
    let path = goldens().join("tekken-v13-cut.json");
    let tok = greve::model::tokenizer_json_at(&path).unwrap().unwrap();
    assert_eq!(tok.format(), Instruct::V13);
    assert_eq!(tok.vocab_size(), 4000);
    assert_eq!((tok.bos(), tok.eos()), (1, 2));
    assert_eq!(tok.think_tokens(), Some((34, 35)));
    assert_eq!(tok.args_token(), Some(32));
    check_against_mistral_common(&tok, "tekken-v13-cut", "tekken.json");
    let golden = golden_json("tokens-tekken-v13-cut.json");
    for case in golden["texts"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(tok.decode(&ids(&case["ids"])).unwrap(), text);
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(&path, dir.path().join("tekken.json")).unwrap();
    // Read as a folder's (no binary run: this test also runs under qemu).
    let folder = greve::model::tokenizer_json_at(dir.path())
        .unwrap()
        .unwrap();
    let want = &golden["texts"][0];
    assert_eq!(want["text"], "Bonjour");
    assert_eq!(folder.encode("Bonjour").unwrap(), ids(&want["ids"]));
    assert_eq!(folder.format(), Instruct::V13);
}

/// A damaged or unknown tekken.json is refused in one line that names it.
#[test]
fn a_bad_tekken_json_is_refused_clearly() {
    let good: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(goldens().join("tekken-v13-cut.json")).unwrap(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cases: Vec<(serde_json::Value, &str)> = Vec::new();
    let mut v15 = good.clone();
    v15["config"]["version"] = "v15".into();
    cases.push((v15, "v15"));
    let mut short = good.clone();
    short["config"]["default_vocab_size"] = 9000.into();
    cases.push((short, "fewer than"));
    let mut base64 = good.clone();
    base64["vocab"][300]["token_bytes"] = "@@@".into();
    cases.push((base64, "base64"));
    let mut order = good.clone();
    order["vocab"][5]["token_bytes"] = "QQ==".into();
    cases.push((order, "damaged"));
    cases.push((serde_json::json!({"vocab": []}), "not a tekken.json"));
    for (i, (file, want)) in cases.into_iter().enumerate() {
        let path = dir.path().join(format!("tekken-{i}.json"));
        std::fs::write(&path, file.to_string()).unwrap();
        let e = greve::model::tokenizer_json_at(&path)
            .unwrap()
            .err()
            .unwrap();
        let e = e.to_string();
        assert!(
            e.contains(want) && e.contains(&format!("tekken-{i}.json")),
            "{e}"
        );
        assert_eq!(e.lines().count(), 1, "{e}");
    }
}

/// Mistral Small 3.x: the V7 format over the Tekken vocabulary, chosen by
/// its chat template (here Small's in place of NeMo's in the tiny model's
/// GGUF metadata), renders chats as mistral-common does.
#[test]
fn tekken_with_small_s_template_renders_v7_like_mistral_common() {
    let tok = tekken_as_small();
    assert_eq!(tok.format(), Instruct::V7);
    check_against_mistral_common(&tok, "tekken-v7", "GGUF with Small's template");
}

/// The tiny Tekken model's vocabulary with Small's chat template in place
/// of NeMo's.
fn tekken_as_small() -> Tokenizer {
    tekken_with("{{- bos_token }}[SYSTEM_PROMPT]{{ system_message }}[/SYSTEM_PROMPT]")
}

/// The tiny Tekken model's vocabulary with another chat template, and the
/// control tokens of the v11 and v13 releases named at their ranks (as
/// tests/goldens/vocabularies.py names them for mistral-common).
fn tekken_with(template: &str) -> Tokenizer {
    use candle_core::quantized::gguf_file::Value;
    let path = goldens().join("tiny-tekken-f16.gguf");
    let src = GgufSource::open(&path, &candle_core::Device::Cpu).unwrap();
    let mut metadata = src.metadata().clone();
    metadata.insert(
        "tokenizer.chat_template".into(),
        Value::String(template.into()),
    );
    if template.contains("[ARGS]") {
        let Some(Value::Array(tokens)) = metadata.get_mut("tokenizer.ggml.tokens") else {
            panic!("no tokens in {}", path.display());
        };
        for (rank, name) in [
            (32, "[ARGS]"),
            (33, "[CALL_ID]"),
            (34, "[THINK]"),
            (35, "[/THINK]"),
        ] {
            tokens[rank] = Value::String(name.into());
        }
    }
    Tokenizer::from_gguf(&metadata).unwrap()
}

/// Bits of the chat templates of the v11 releases (Small 3.2) and the v13
/// ones (Magistral Small 1.2, Ministral 3), which tell the formats apart.
const V11_TEMPLATE: &str = "[SYSTEM_PROMPT]{{ s }}[/SYSTEM_PROMPT]{{ '[TOOL_CALLS]' + name + '[CALL_ID]' + id + '[ARGS]' + args }}";
const V13_TEMPLATE: &str =
    "[SYSTEM_PROMPT]{{ s }}[/SYSTEM_PROMPT]{{ '[TOOL_CALLS]' + name + '[ARGS]' + args }}[THINK]";

#[test]
fn the_instruct_format_follows_the_vocabulary() {
    assert_eq!(from_json("v1").format(), Instruct::V1);
    assert_eq!(from_json("v3").format(), Instruct::V3);
    assert_eq!(from_json("v7").format(), Instruct::V7);
    assert_eq!(from_gguf("v1").format(), Instruct::V1);
    assert_eq!(from_gguf("v3").format(), Instruct::V3);
}

#[test]
fn streamed_text_equals_the_full_decode() {
    let golden = golden_json("tokens-v1.json");
    for tok in [from_json("v1"), from_gguf("v1")] {
        for case in golden["texts"].as_array().unwrap() {
            let ids = ids(&case["ids"]);
            let mut decoder = StreamDecoder::default();
            let mut streamed = String::new();
            for &id in &ids {
                if let Some(piece) = decoder.push(&tok, id).unwrap() {
                    assert!(
                        !piece.contains('\u{FFFD}'),
                        "incomplete character streamed: {piece:?}"
                    );
                    streamed.push_str(&piece);
                }
            }
            if let Some(rest) = decoder.finish(&tok).unwrap() {
                streamed.push_str(&rest);
            }
            assert_eq!(streamed, tok.decode(&ids).unwrap(), "{:?}", case["text"]);
        }
    }
}

#[test]
fn an_accented_letter_split_over_byte_tokens_comes_out_whole() {
    let tok = from_json("v1");
    // "🦀" has no piece of its own: four byte-fallback tokens.
    let ids = tok.encode("🦀!").unwrap();
    let mut decoder = StreamDecoder::default();
    let out: Vec<Option<String>> = ids
        .iter()
        .map(|&id| decoder.push(&tok, id).unwrap())
        .collect();
    let emitted: Vec<&String> = out.iter().flatten().collect();
    assert!(emitted.iter().any(|s| s.contains('🦀')), "{out:?}");
    assert_eq!(
        out.last().unwrap().as_deref(),
        Some("!"),
        "punctuation is not held back"
    );
}

#[test]
fn the_template_tells_v7_from_nemos_v3() {
    use greve::template::instruct_format;
    use Instruct::*;
    // SentencePiece: the control tokens settle it.
    assert_eq!(instruct_format(false, false, false, None), V1);
    assert_eq!(instruct_format(true, false, false, None), V3);
    assert_eq!(instruct_format(true, true, false, None), V7);
    // Tekken has [SYSTEM_PROMPT] whether V3 (NeMo) or V7 (Small 3.x).
    assert_eq!(instruct_format(true, true, true, None), V3);
    let nemo = "{%- for message in loop_messages %}[INST]{{ message['content'] }}[/INST]";
    let small = "{{- bos_token }}[SYSTEM_PROMPT]{{ system_message }}[/SYSTEM_PROMPT]";
    assert_eq!(instruct_format(true, true, true, Some(nemo)), V3);
    assert_eq!(instruct_format(true, true, true, Some(small)), V7);
    // A template that writes [ARGS] is V11 with call ids, V13 without.
    assert_eq!(instruct_format(true, true, true, Some(V11_TEMPLATE)), V11);
    assert_eq!(instruct_format(true, true, true, Some(V13_TEMPLATE)), V13);
    // A template cannot conjure control tokens the vocabulary lacks.
    assert_eq!(instruct_format(true, false, false, Some(small)), V3);
}

/// A byte-level vocabulary with `[SYSTEM_PROMPT]` (Tekken's kind) is V3
/// unless its chat template uses the token: from tokenizer_config.json, or
/// from chat_template.jinja beside it (newer repositories).
#[test]
fn a_tekken_folder_takes_its_format_from_the_chat_template() {
    let controls = [
        "<unk>",
        "<s>",
        "</s>",
        "[INST]",
        "[/INST]",
        "[SYSTEM_PROMPT]",
        "[/SYSTEM_PROMPT]",
    ];
    let mut vocab = serde_json::Map::new();
    for (id, t) in controls.iter().chain(&["a"]).enumerate() {
        vocab.insert(t.to_string(), id.into());
    }
    let added: Vec<_> = controls
        .iter()
        .enumerate()
        .map(|(id, t)| serde_json::json!({"id": id, "content": t, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}))
        .collect();
    let tokenizer = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "post_processor": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": true, "vocab": vocab, "merges": []}
    });
    let v7 = "{{ bos_token }}[SYSTEM_PROMPT]{{ system }}[/SYSTEM_PROMPT]";
    let format = |config: Option<&str>, jinja: Option<&str>| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tokenizer.json"), tokenizer.to_string()).unwrap();
        if let Some(template) = config {
            let config = serde_json::json!({"chat_template": template});
            std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).unwrap();
        }
        if let Some(template) = jinja {
            std::fs::write(dir.path().join("chat_template.jinja"), template).unwrap();
        }
        greve::model::tokenizer_json_at(dir.path())
            .unwrap()
            .unwrap()
            .format()
    };
    assert_eq!(format(None, None), Instruct::V3);
    assert_eq!(format(Some("[INST]{{ m }}[/INST]"), None), Instruct::V3);
    assert_eq!(format(Some(v7), None), Instruct::V7);
    assert_eq!(format(None, Some(v7)), Instruct::V7);
}

/// Conversations with tools (declared, called, answered; two calls in one
/// turn; results as JSON and as text; calls in the history of a chat that
/// declares none), read from OpenAI request bodies by greve's API parser:
/// mistral-common's ids, with v0.3's vocabulary (tokenizer.json and GGUF),
/// NeMo's Tekken (GGUF), and Tekken as V7, V11 and V13 (thinking in the
/// history). tests/goldens/tools_goldens.py made them.
#[test]
fn tool_conversations_encode_like_mistral_common() {
    use greve::server::api;
    let golden = golden_json("tools.json");
    let vocabularies = [
        ("v3", from_json("v3"), Instruct::V3),
        ("v3", from_gguf("v3"), Instruct::V3),
        (
            "tekken",
            from_gguf_file("tiny-tekken-f16.gguf"),
            Instruct::V3,
        ),
        ("v7", from_json("v7"), Instruct::V7),
        ("tekken-v7", tekken_as_small(), Instruct::V7),
        ("tekken-v11", tekken_with(V11_TEMPLATE), Instruct::V11),
        ("tekken-v13", tekken_with(V13_TEMPLATE), Instruct::V13),
    ];
    for (version, tok, format) in &vocabularies {
        assert_eq!(tok.format(), *format);
        for (i, case) in golden[version].as_array().unwrap().iter().enumerate() {
            let request = &case["request"];
            let (system, messages) = api::messages(&request["messages"]).unwrap();
            let tools = match request.get("tools") {
                Some(tools) => api::tools(tools).unwrap(),
                None => Vec::new(),
            };
            let pieces = template::render_with_tools(
                tok.format(),
                &template::System::text(system.as_deref()),
                &tools,
                &messages,
            )
            .unwrap();
            let got = tok.encode_pieces(&pieces).unwrap();
            assert_eq!(
                got,
                ids(&case["ids"]),
                "{version} case {i}: {}\n{}",
                template::to_text(&pieces),
                case["text"]
            );
        }
    }
}

/// The system prompt a reasoning release ships, its example of thinking
/// between `[THINK]` and `[/THINK]`, alone and with a user's system prompt
/// after it: mistral-common's ids (tests/goldens/tools_goldens.py).
#[test]
fn a_reasoning_prompt_encodes_like_mistral_common() {
    use greve::server::api;
    let golden = &golden_json("tools.json")["reasoning_prompt"];
    let file = goldens().join(golden["file"].as_str().unwrap());
    let shipped = std::fs::read_to_string(file).unwrap();
    let tok = tekken_with(V13_TEMPLATE);
    for (i, case) in golden["cases"].as_array().unwrap().iter().enumerate() {
        let system = template::System::reasoning(&shipped)
            .unwrap()
            .then(case["system"].as_str());
        let (_, messages) = api::messages(&case["messages"]).unwrap();
        let pieces = template::render(tok.format(), &system, &messages).unwrap();
        let got = tok.encode_pieces(&pieces).unwrap();
        assert_eq!(
            got,
            ids(&case["ids"]),
            "case {i}: {}",
            template::to_text(&pieces)
        );
    }
}

/// Formats without tool tokens refuse tools rather than drop them.
#[test]
fn tools_need_a_format_that_has_them() {
    let tools = [template::Tool {
        name: "f".into(),
        description: String::new(),
        parameters: serde_json::json!({"type": "object"}),
    }];
    let messages = [Message::user("x")];
    let e = template::render_with_tools(
        Instruct::V1,
        &template::System::default(),
        &tools,
        &messages,
    )
    .unwrap_err();
    assert!(format!("{e}").starts_with("tools:"), "{e}");
    let e = from_json("v1")
        .encode_pieces(&[template::Piece::ToolCalls])
        .unwrap_err();
    assert!(format!("{e}").contains("[TOOL_CALLS]"), "{e}");
}
