//! Helpers shared by the integration tests: the goldens, and tiny Mistral
//! models written in the exact layout of a Hugging Face repo.
#![allow(dead_code)] // each test binary uses its own subset

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub mod gguf;

use candle_core::{DType, Device, Tensor};
use serde_json::Value;

/// Runs the greve binary with `stdin` and extra `env`, in an environment
/// cleaned of the machine's own settings: no GREVE_* or HF_* variables, no
/// user prompt folder or config file. RUST_BACKTRACE is set: candle then appends
/// backtraces to its errors, and greve's must stay one line all the same.
pub fn run(args: &[&str], stdin: &[u8], env: &[(&str, &str)]) -> Output {
    let mut child = command(args, env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The child may exit before reading stdin; a broken pipe here is fine.
    let _ = child.stdin.take().unwrap().write_all(stdin);
    child.wait_with_output().unwrap()
}

/// The greve binary with `args`, in the environment [`run`] describes.
pub fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_greve"));
    cmd.args(args)
        .env("RUST_BACKTRACE", "1")
        .env("XDG_CONFIG_HOME", "/nonexistent-greve-test-config");
    for (var, _) in std::env::vars().filter(|(k, _)| k.starts_with("GREVE_")) {
        cmd.env_remove(var);
    }
    cmd.env("GREVE_CONFIG", "/nonexistent-greve-test-config/config.toml");
    // The prompt cache is on, as for users, in a folder of this test run's.
    cmd.env("XDG_CACHE_HOME", test_cache());
    for var in [
        "HF_HUB_OFFLINE",
        "HF_TOKEN",
        "HF_HUB_CACHE",
        "HUGGINGFACE_HUB_CACHE",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// This test process's cache folder, in the target directory.
fn test_cache() -> &'static Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        tempfile::Builder::new()
            .prefix("cache")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap()
    })
    .path()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The checkout's goldens; CARGO_MANIFEST_DIR at run time wins over the
/// compiled-in path, so a test binary carried to another machine (the GPU
/// check, benches/gpu-check.sh) finds them in its copy of the checkout.
pub fn goldens() -> PathBuf {
    let root = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    root.join("tests/goldens")
}

/// Where the engine tests run: GREVE_TEST_DEVICE=cuda (or metal, any
/// `--device` value) moves them to a GPU, opened as greve opens it; the CPU
/// otherwise.
pub fn device() -> Device {
    let wanted = std::env::var("GREVE_TEST_DEVICE").unwrap_or_default();
    match wanted.as_str() {
        "" => Device::Cpu,
        spec => spec
            .parse::<greve::settings::DeviceSpec>()
            .map_err(anyhow::Error::msg)
            .and_then(|d| d.open())
            .unwrap_or_else(|e| panic!("GREVE_TEST_DEVICE={spec}: {e}")),
    }
}

pub fn golden_json(name: &str) -> Value {
    let text = std::fs::read_to_string(goldens().join(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// The golden greedy continuation, cut before EOS (greve does not emit it).
pub fn until_eos(tokens: Vec<u32>) -> Vec<u32> {
    tokens.into_iter().take_while(|&t| t != 2).collect()
}

/// `weight_values` of tests/goldens/make_goldens.py: offset + scale·k/64 with
/// k in [-64, 64] drawn by splitmix64 from the tensor's name.
fn weight_values(name: &str, n: usize, scale: f32, offset: f32) -> Vec<f32> {
    let mut seed: u64 = 0xCBF29CE484222325;
    for b in name.bytes() {
        seed ^= b as u64;
        seed = seed.wrapping_mul(0x100000001B3);
    }
    (1..=n as u64)
        .map(|i| {
            let mut z = seed.wrapping_add(i.wrapping_mul(0x9E3779B97F4A7C15));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
            z ^= z >> 31;
            let k = (z % 129) as i64 - 64;
            (offset as f64 + scale as f64 * k as f64 / 64.0) as f32
        })
        .collect()
}

fn scale_of(name: &str) -> (f32, f32) {
    if name.ends_with("norm.weight") {
        (0.5, 1.0)
    } else if name.contains("embed_tokens") {
        (1.0, 0.0)
    } else if name.contains("lm_head") {
        (0.5, 0.0)
    } else {
        (0.25, 0.0)
    }
}

/// Writes the tiny model of `tiny-{version}.json` into `dir` as a Hub repo
/// holds it: config.json, two bf16 safetensors shards with their index,
/// tokenizer.json, tokenizer_config.json, generation_config.json.
pub fn write_tiny_model(dir: &Path, version: &str) {
    let golden = golden_json(&format!("tiny-{version}.json"));
    let cfg = &golden["config"];
    let get = |k: &str| cfg[k].as_u64().unwrap() as usize;
    let vocab = golden["vocab_size"].as_u64().unwrap() as usize;
    let (h, f, hd) = (
        get("hidden_size"),
        get("intermediate_size"),
        get("head_dim"),
    );
    let (q, kv) = (
        get("num_attention_heads") * hd,
        get("num_key_value_heads") * hd,
    );
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        ("model.embed_tokens.weight".into(), vec![vocab, h]),
        ("model.norm.weight".into(), vec![h]),
        ("lm_head.weight".into(), vec![vocab, h]),
    ];
    for l in 0..get("num_hidden_layers") {
        let p = format!("model.layers.{l}.");
        for (name, shape) in [
            ("input_layernorm.weight", vec![h]),
            ("post_attention_layernorm.weight", vec![h]),
            ("self_attn.q_proj.weight", vec![q, h]),
            ("self_attn.k_proj.weight", vec![kv, h]),
            ("self_attn.v_proj.weight", vec![kv, h]),
            ("self_attn.o_proj.weight", vec![h, q]),
            ("mlp.gate_proj.weight", vec![f, h]),
            ("mlp.up_proj.weight", vec![f, h]),
            ("mlp.down_proj.weight", vec![h, f]),
        ] {
            shapes.push((format!("{p}{name}"), shape));
        }
    }
    let mut shards: [HashMap<String, Tensor>; 2] = Default::default();
    let mut weight_map = serde_json::Map::new();
    for (name, shape) in shapes {
        let (scale, offset) = scale_of(&name);
        let n = shape.iter().product();
        let t = Tensor::from_vec(weight_values(&name, n, scale, offset), shape, &Device::Cpu)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let shard = usize::from(name.contains("layers.1."));
        weight_map.insert(
            name.clone(),
            format!("model-0000{}-of-00002.safetensors", shard + 1).into(),
        );
        shards[shard].insert(name, t);
    }
    for (i, shard) in shards.iter().enumerate() {
        let file = dir.join(format!("model-0000{}-of-00002.safetensors", i + 1));
        candle_core::safetensors::save(shard, file).unwrap();
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    // A golden that gives its whole config.json (a Ministral 3 one) is
    // written as it is.
    let mut config = match golden.get("hf_config") {
        Some(hf) => hf.as_object().unwrap().clone(),
        None => cfg.as_object().unwrap().clone(),
    };
    let missing: Vec<_> = [
        ("architectures", serde_json::json!(["MistralForCausalLM"])),
        ("model_type", "mistral".into()),
        ("vocab_size", vocab.into()),
        ("hidden_act", "silu".into()),
        ("tie_word_embeddings", false.into()),
        ("torch_dtype", "bfloat16".into()),
    ]
    .into_iter()
    .filter(|(k, _)| {
        golden
            .get("hf_config")
            .is_none_or(|hf| hf.get(*k).is_none())
    })
    .collect();
    for (k, v) in missing {
        config.insert(k.into(), v);
    }
    std::fs::write(dir.join("config.json"), Value::Object(config).to_string()).unwrap();
    let tokenizer = golden
        .get("tokenizer")
        .and_then(Value::as_str)
        .unwrap_or(version);
    std::fs::copy(
        goldens().join(format!("tokenizer-{tokenizer}.json")),
        dir.join("tokenizer.json"),
    )
    .unwrap();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"add_bos_token": true, "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("generation_config.json"),
        r#"{"bos_token_id": 1, "eos_token_id": 2}"#,
    )
    .unwrap();
}
