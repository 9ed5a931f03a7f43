//! Hostile and damaged inputs, one test per fault found by a mutation
//! campaign over greve's inputs, each named after it: every one must end in
//! one line on stderr naming the problem and the documented exit code, never
//! a panic, an abort, a hang or a reply computed from the wrong bytes.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::gguf::{string_value, Gguf, U64};
use common::{goldens, stderr, stdout, write_tiny_model};

fn assert_refused(o: &Output, code: i32, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "stderr: {err}");
    assert!(o.stdout.is_empty(), "stdout: {}", stdout(o));
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(err.len() < 600, "{} bytes of error", err.len());
    assert!(err.contains(needle), "{needle:?} not in: {err}");
}

fn ask(model: &Path) -> Output {
    common::run(
        &["ask", "-m", model.to_str().unwrap(), "-n", "2", "hi"],
        b"",
        &[],
    )
}

fn golden(name: &str) -> Gguf {
    Gguf::read(&std::fs::read(goldens().join(name)).unwrap())
}

/// Writes `bytes` as a .gguf in a fresh folder and asks it a question.
fn ask_gguf(bytes: &[u8]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    std::fs::write(&path, bytes).unwrap();
    ask(&path)
}

#[test]
fn the_rebuilt_golden_is_accepted() {
    // The editor below reproduces the golden byte for byte, so each fault
    // in the other tests is the only change.
    let original = std::fs::read(goldens().join("tiny-k-q4_k_m.gguf")).unwrap();
    assert_eq!(Gguf::read(&original).write(), original);
    let o = ask_gguf(&original);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn gguf_alignment_zero_is_refused() {
    let mut g = golden("tiny-k-q4_k_m.gguf");
    g.set_u32("general.alignment", 0);
    assert_refused(&ask_gguf(&g.write_padded(32)), 4, "general.alignment is 0");
}

#[test]
fn gguf_alignment_not_a_power_of_two_is_refused() {
    let mut g = golden("tiny-k-q4_k_m.gguf");
    g.set_u32("general.alignment", 48);
    assert_refused(&ask_gguf(&g.write_padded(32)), 4, "power of two");
}

#[test]
fn gguf_alignment_changed_without_the_layout_is_refused() {
    // With an alignment of 1 the data would start right after the header,
    // in the padding: every tensor read a few bytes early.
    let mut g = golden("tiny-k-q4_k_m.gguf");
    g.set_u32("general.alignment", 1);
    assert_refused(&ask_gguf(&g.write_padded(32)), 4, "not a multiple of 4");
}

#[test]
fn gguf_q8_0_tensor_moved_off_its_alignment_is_refused() {
    let mut g = golden("tiny-k-q8_0.gguf");
    g.tensor("blk.0.attn_q.weight").offset += 2;
    assert_refused(&ask_gguf(&g.write()), 4, "not a multiple of the alignment");
}

#[test]
fn gguf_tensor_offset_near_2_pow_64_is_refused() {
    let mut g = golden("tiny-k-q4_k_m.gguf");
    g.tensor("blk.1.ffn_down.weight").offset = u64::MAX - 31;
    assert_refused(&ask_gguf(&g.write()), 4, "past the end of the file");
}

#[test]
fn gguf_dimensions_whose_product_wraps_are_refused() {
    let mut g = golden("tiny-k-q4_k_m.gguf");
    // 2^32 × 2^32 × 256 wraps 2^64 to 0.
    g.tensor("blk.0.attn_k.weight").dims = vec![256, 1 << 32, 1 << 32];
    assert_refused(&ask_gguf(&g.write()), 4, "too large to exist");
}

#[test]
fn gguf_overlapping_tensors_are_refused() {
    let mut g = golden("tiny-k-q4_k_m.gguf");
    let offset = g.tensor("blk.0.attn_q.weight").offset;
    g.tensor("blk.0.attn_k.weight").offset = offset + 32;
    assert_refused(&ask_gguf(&g.write()), 4, "overlaps");
}

#[test]
fn gguf_duplicate_tensor_names_are_refused() {
    let mut g = golden("tiny-k-q4_k_m.gguf");
    g.tensor("blk.1.attn_q.weight").name = "blk.0.attn_q.weight".into();
    assert_refused(&ask_gguf(&g.write()), 4, "appears twice");
}

#[test]
fn gguf_tensor_type_changed_without_its_data_is_refused() {
    let mut g = golden("tiny-k-q4_k_m.gguf");
    // Q4_K (144 bytes a block) read as Q2_K (84): the data no longer tiles.
    let t = g.tensor("blk.0.attn_q.weight");
    assert_eq!(t.ty, 12);
    t.ty = 10;
    assert_refused(&ask_gguf(&g.write()), 4, "does not match its data");
    // And as Q8_0, larger: it runs into the next tensor.
    let mut g = golden("tiny-k-q4_k_m.gguf");
    g.tensor("blk.0.attn_q.weight").ty = 8;
    assert_refused(&ask_gguf(&g.write()), 4, "overlaps");
}

#[test]
fn gguf_unknown_tensor_type_is_refused() {
    let mut g = golden("tiny-k-q4_k_m.gguf");
    g.tensor("output.weight").ty = 16;
    assert_refused(&ask_gguf(&g.write()), 4, "ggml type 16");
}

#[test]
fn gguf_invalid_utf8_in_the_vocabulary_is_refused() {
    let mut g = golden("tiny-k-q4_k_m.gguf");
    let key = "tokenizer.ggml.tokens";
    let mut tokens = g.get(key).unwrap().to_vec();
    // Item type, count, then the first string's length and bytes.
    tokens[4 + 8 + 8] = 0xff;
    g.set(key, common::gguf::ARRAY, tokens);
    assert_refused(&ask_gguf(&g.write()), 4, "is not valid UTF-8");
}

#[test]
fn gguf_block_count_of_2_pow_32_is_refused() {
    let mut g = golden("tiny-k-q4_k_m.gguf");
    g.set(
        "llama.block_count",
        U64,
        (1u64 << 32).to_le_bytes().to_vec(),
    );
    assert_refused(&ask_gguf(&g.write()), 4, "4294967296");
}

#[test]
fn gguf_block_count_below_the_layers_present_is_refused() {
    let mut g = golden("tiny-k-q4_k_m.gguf");
    g.set_u32("llama.block_count", 1);
    assert_refused(
        &ask_gguf(&g.write()),
        4,
        "declares 1 layers but the weights hold 2",
    );
}

#[test]
fn gguf_string_longer_than_the_file_is_refused() {
    let mut g = golden("tiny-k-q4_k_m.gguf");
    let mut forged = string_value(b"llama");
    forged[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    g.set("general.architecture", common::gguf::STRING, forged);
    assert_refused(&ask_gguf(&g.write()), 4, "runs past the end of the file");
}

#[test]
fn gguf_metadata_count_beyond_the_file_is_refused() {
    let mut bytes = std::fs::read(goldens().join("tiny-k-q4_k_m.gguf")).unwrap();
    bytes[16..24].copy_from_slice(&(1u64 << 61).to_le_bytes());
    assert_refused(&ask_gguf(&bytes), 4, "more than the file's");
}

#[test]
fn truncated_gguf_is_refused() {
    let bytes = std::fs::read(goldens().join("tiny-k-q4_k_m.gguf")).unwrap();
    for len in [0, 3, 20, 100, bytes.len() / 2, bytes.len() - 1] {
        let o = ask_gguf(&bytes[..len]);
        assert_eq!(o.status.code(), Some(4), "{len}: {}", stderr(&o));
        assert_eq!(stderr(&o).trim_end().lines().count(), 1, "{}", stderr(&o));
    }
}

fn tiny_folder() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), "k");
    dir
}

fn edit_json(path: PathBuf, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(path, v.to_string()).unwrap();
}

#[test]
fn config_json_layer_counts_of_2_pow_62_and_2_pow_32_are_refused() {
    for layers in [1u64 << 62, 1 << 32] {
        let dir = tiny_folder();
        edit_json(dir.path().join("config.json"), |c| {
            c["num_hidden_layers"] = layers.into()
        });
        assert_refused(&ask(dir.path()), 4, &layers.to_string());
    }
}

#[test]
fn config_json_with_fewer_layers_than_the_weights_is_refused() {
    let dir = tiny_folder();
    edit_json(dir.path().join("config.json"), |c| {
        c["num_hidden_layers"] = 1.into()
    });
    assert_refused(
        &ask(dir.path()),
        4,
        "declares 1 layers but the weights hold 2",
    );
}

#[test]
fn config_json_and_tokenizer_json_not_utf8_are_invalid_not_missing() {
    for file in ["config.json", "tokenizer.json"] {
        let dir = tiny_folder();
        let path = dir.path().join(file);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.insert(1, 0xff);
        std::fs::write(&path, bytes).unwrap();
        assert_refused(&ask(dir.path()), 4, "is not UTF-8");
    }
}

#[test]
fn a_100_000_character_bos_token_is_quoted_short() {
    let dir = tiny_folder();
    let long = "x".repeat(100_000);
    edit_json(dir.path().join("tokenizer_config.json"), |c| {
        c["bos_token"] = long.into()
    });
    assert_refused(&ask(dir.path()), 4, "xxx\"…");
}

#[test]
fn safetensors_in_f8_exit_4_naming_the_dtype() {
    use candle_core::{DType, Device};
    let dir = tiny_folder();
    let shard = dir.path().join("model-00001-of-00002.safetensors");
    let mut tensors = candle_core::safetensors::load(&shard, &Device::Cpu).unwrap();
    let norm = tensors.get_mut("model.norm.weight").unwrap();
    *norm = norm.to_dtype(DType::F8E4M3).unwrap();
    candle_core::safetensors::save(&tensors, &shard).unwrap();
    assert_refused(&ask(dir.path()), 4, "\"model.norm.weight\" in");
    assert_refused(&ask(dir.path()), 4, "is stored as F8_E4M3");
}

/// A dtype candle cannot even name (4-bit floats): the header is edited so
/// that the norm's 512 bytes read as 1024 F4 values.
#[test]
fn safetensors_in_f4_exit_4() {
    let dir = tiny_folder();
    let shard = dir.path().join("model-00001-of-00002.safetensors");
    let bytes = std::fs::read(&shard).unwrap();
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + len]).unwrap();
    let norm = &mut header["model.norm.weight"];
    assert_eq!(norm["dtype"], "BF16");
    norm["dtype"] = "F4".into();
    norm["shape"] = serde_json::json!([1024]);
    let mut text = header.to_string().into_bytes();
    text.resize(text.len().next_multiple_of(8), b' ');
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text);
    out.extend(&bytes[8 + len..]);
    std::fs::write(&shard, out).unwrap();
    assert_refused(&ask(dir.path()), 4, "is stored as F4");
}

#[test]
fn threads_beyond_4_per_core_are_a_usage_error() {
    let model = goldens().join("tiny-k-q4_k_m.gguf");
    // A bad flag gets clap's usage message (the error, then where to read more).
    let args = [
        "ask",
        "-m",
        model.to_str().unwrap(),
        "--threads",
        "65535",
        "hi",
    ];
    let o = common::run(&args, b"", &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).lines().next().unwrap().contains("4 per core"),
        "{}",
        stderr(&o)
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "threads = 65535\n").unwrap();
    let args = ["ask", "-m", model.to_str().unwrap(), "hi"];
    let o = common::run(&args, b"", &[("GREVE_CONFIG", config.to_str().unwrap())]);
    assert_refused(&o, 2, "4 per core");
}

/// 20,000 saved messages, far more than the context holds: the window is
/// found with a few renderings (the old walk re-tokenised the conversation
/// for every exchange it dropped and ran for many minutes).
#[test]
fn a_transcript_of_20000_messages_is_fitted_at_once() {
    let messages: Vec<serde_json::Value> = (0..20_000)
        .map(|i| {
            let role = if i % 2 == 0 { "user" } else { "assistant" };
            serde_json::json!({"role": role, "content": format!("message {i} about the strike")})
        })
        .collect();
    let transcript = serde_json::json!({
        "format": "greve-transcript", "version": 1, "system": null, "persona": null,
        "messages": messages,
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("long.json");
    std::fs::write(&path, transcript.to_string()).unwrap();
    // A context of 512 tokens keeps the prefill of what fits short.
    let mut g = golden("tiny-k-q4_k_m.gguf");
    g.set_u32("llama.context_length", 512);
    let model = dir.path().join("m.gguf");
    std::fs::write(&model, g.write()).unwrap();
    let args = [
        "ask",
        "-m",
        model.to_str().unwrap(),
        "--load",
        path.to_str().unwrap(),
        "-n",
        "1",
        "and now?",
    ];
    let o = common::run(&args, b"", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("oldest 19986 messages left the model's context window"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_fifo_or_a_device_as_the_model_is_refused_not_waited_on() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("m.gguf");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    for path in [fifo.as_path(), Path::new("/dev/zero")] {
        assert_refused(&ask(path), 4, "is not a regular file");
    }
}

/// The GGUF's string array `key` with item `index` replaced by `with`.
fn replace_string(g: &mut Gguf, key: &str, index: usize, with: &str) {
    let array = g.get(key).unwrap();
    let count = u64::from_le_bytes(array[4..12].try_into().unwrap()) as usize;
    let (mut at, mut out) = (12, array[..12].to_vec());
    for i in 0..count {
        let len = u64::from_le_bytes(array[at..at + 8].try_into().unwrap()) as usize;
        let item = &array[at + 8..at + 8 + len];
        out.extend(string_value(if i == index {
            with.as_bytes()
        } else {
            item
        }));
        at += 8 + len;
    }
    g.set(key, common::gguf::ARRAY, out);
}

/// Building a tokenizer takes time quadratic in a piece's length: a 160 kB
/// piece took 18 s of CPU.
#[test]
fn vocabulary_pieces_of_100_kb_are_refused_at_once() {
    let long = "a".repeat(100_000);
    let mut g = golden("tiny-k-q4_k_m.gguf");
    replace_string(&mut g, "tokenizer.ggml.tokens", 300, &long);
    assert_refused(
        &ask_gguf(&g.write()),
        4,
        "token 300 of the vocabulary is 100000 bytes",
    );

    let dir = tiny_folder();
    edit_json(dir.path().join("tokenizer.json"), |t| {
        t["added_tokens"][0]["content"] = long.into()
    });
    assert_refused(&ask(dir.path()), 4, "is 100000 bytes long");
}

#[test]
fn a_tokenizer_id_past_the_models_vocabulary_is_refused_at_load() {
    let dir = tiny_folder();
    edit_json(dir.path().join("tokenizer.json"), |t| {
        let vocab = t["model"]["vocab"].as_object_mut().unwrap();
        let (piece, _) = vocab.iter().find(|(_, id)| id == &300).unwrap();
        let piece = piece.clone();
        vocab.insert(piece, 100_000.into());
    });
    assert_refused(&ask(dir.path()), 4, "do not belong together");
}

/// Sampling would turn NaN logits into some token or other, without a word.
#[test]
fn non_finite_weights_fail_the_reply_instead_of_answering_garbage() {
    use candle_core::Device;
    let dir = tiny_folder();
    let shard = dir.path().join("model-00001-of-00002.safetensors");
    let mut tensors = candle_core::safetensors::load(&shard, &Device::Cpu).unwrap();
    let norm = tensors.get_mut("model.norm.weight").unwrap();
    *norm = (norm.clone() * f64::NAN).unwrap();
    candle_core::safetensors::save(&tensors, &shard).unwrap();
    assert_refused(&ask(dir.path()), 5, "computed a logit of NaN");
}

/// A GGUF may leave out a tied output matrix; a safetensors checkpoint
/// whose config says its weights are untied may not.
#[test]
fn safetensors_without_lm_head_are_refused() {
    use candle_core::Device;
    let dir = tiny_folder();
    let index = dir.path().join("model.safetensors.index.json");
    edit_json(index, |i| {
        i["weight_map"]
            .as_object_mut()
            .unwrap()
            .remove("lm_head.weight");
    });
    let shard = dir.path().join("model-00001-of-00002.safetensors");
    let mut tensors = candle_core::safetensors::load(&shard, &Device::Cpu).unwrap();
    assert!(tensors.remove("lm_head.weight").is_some());
    candle_core::safetensors::save(&tensors, &shard).unwrap();
    assert_refused(&ask(dir.path()), 4, "tensor lm_head.weight is missing");
}

#[test]
fn generation_config_values_out_of_the_flags_ranges_are_refused() {
    for (field, value) in [
        ("temperature", 1e39),
        ("top_p", 5.0),
        ("repetition_penalty", 0.0),
    ] {
        let dir = tiny_folder();
        let config = serde_json::json!({ field: value });
        std::fs::write(
            dir.path().join("generation_config.json"),
            config.to_string(),
        )
        .unwrap();
        assert_refused(
            &ask(dir.path()),
            4,
            &format!("generation_config.json: {field}"),
        );
    }
}
