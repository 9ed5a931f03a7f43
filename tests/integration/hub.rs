//! Hub models through the real resolution code: a cache laid out as hf-hub
//! and huggingface_hub lay it out, offline or with the network unreachable,
//! and a stub Hub on 127.0.0.1 for refusals.

use crate::common;

use common::{stderr as err, stdout as out};

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::{goldens, write_tiny_model};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// Puts `files` (name, source) in `hf_home`'s cache as `repo` at `main`:
/// blobs, a snapshot of relative symlinks, refs/main.
fn greve(args: &[&str], env: &[(&str, &str)]) -> Output {
    common::run(args, b"", env)
}

fn cache_repo(hf_home: &Path, repo: &str, files: &[(String, PathBuf)]) -> PathBuf {
    let dir = hf_home
        .join("hub")
        .join(format!("models--{}", repo.replace('/', "--")));
    let snapshot = dir.join("snapshots").join(COMMIT);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(dir.join("blobs")).unwrap();
    std::fs::create_dir_all(dir.join("refs")).unwrap();
    std::fs::write(dir.join("refs/main"), COMMIT).unwrap();
    for (i, (name, source)) in files.iter().enumerate() {
        let blob = format!("{i:064x}");
        std::fs::copy(source, dir.join("blobs").join(&blob)).unwrap();
        symlink(format!("../../blobs/{blob}"), snapshot.join(name)).unwrap();
    }
    dir
}

fn tiny_safetensors_cache(hf_home: &Path) -> (tempfile::TempDir, PathBuf) {
    let model = tempfile::tempdir().unwrap();
    write_tiny_model(model.path(), "v1");
    let dir = cache_folder(hf_home, "test-org/tiny-v1", model.path());
    (model, dir)
}

/// Puts every file of `folder` in the cache as `repo`.
fn cache_folder(hf_home: &Path, repo: &str, folder: &Path) -> PathBuf {
    let files: Vec<(String, PathBuf)> = std::fs::read_dir(folder)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| (e.file_name().into_string().unwrap(), e.path()))
        .collect();
    cache_repo(hf_home, repo, &files)
}

#[test]
fn a_cached_repo_answers_offline_and_with_the_network_down() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path().to_str().unwrap();
    let (local, _) = tiny_safetensors_cache(home.path());
    let args = ["ask", "--temperature", "0", "-n", "5", "Salut !"];
    let want = greve(
        &[&args[..], &["-m", local.path().to_str().unwrap()][..]].concat(),
        &[],
    );
    assert_eq!(want.status.code(), Some(0), "{}", err(&want));

    let offline = greve(
        &[&args[..], &["-m", "test-org/tiny-v1", "--offline"][..]].concat(),
        &[("HF_HOME", h)],
    );
    assert_eq!(out(&offline), out(&want), "{}", err(&offline));
    let env_offline = greve(
        &[&args[..], &["-m", "test-org/tiny-v1"][..]].concat(),
        &[("HF_HOME", h), ("HF_HUB_OFFLINE", "1")],
    );
    assert_eq!(out(&env_offline), out(&want), "{}", err(&env_offline));
    // Online but unreachable: everything is cached, so no request is made.
    let down = greve(
        &[&args[..], &["-m", "test-org/tiny-v1"][..]].concat(),
        &[("HF_HOME", h), ("HF_ENDPOINT", "http://127.0.0.1:9")],
    );
    assert_eq!(out(&down), out(&want), "{}", err(&down));
    // HF_HUB_CACHE wins over HF_HOME.
    let moved = greve(
        &[&args[..], &["-m", "test-org/tiny-v1", "--offline"][..]].concat(),
        &[
            ("HF_HOME", "/nonexistent"),
            ("HF_HUB_CACHE", &format!("{h}/hub")),
        ],
    );
    assert_eq!(out(&moved), out(&want), "{}", err(&moved));
}

#[test]
fn the_default_preset_comes_from_the_cache() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path().to_str().unwrap();
    let gguf = (
        "Mistral-7B-Instruct-v0.3-Q4_K_M.gguf".to_string(),
        goldens().join("tiny-v3-f16.gguf"),
    );
    cache_repo(
        home.path(),
        "bartowski/Mistral-7B-Instruct-v0.3-GGUF",
        &[gguf],
    );
    let o = greve(&["ask", "--offline", "-n", "3", "Salut"], &[("HF_HOME", h)]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let o = greve(&["tokenize", "--offline", "Salut"], &[("HF_HOME", h)]);
    assert!(out(&o).starts_with("1 "), "{}{}", out(&o), err(&o));
    let o = greve(&["pull", "--offline"], &[("HF_HOME", h)]);
    assert!(
        out(&o)
            .trim_end()
            .ends_with("Mistral-7B-Instruct-v0.3-Q4_K_M.gguf"),
        "{}",
        err(&o)
    );
    let o = greve(&["info", "--offline"], &[("HF_HOME", h)]);
    let info = out(&o);
    assert!(
        info.contains("format       GGUF (F16×"),
        "{info}{}",
        err(&o)
    );
    assert!(
        info.contains("models--bartowski--Mistral-7B-Instruct-v0.3-GGUF/snapshots/"),
        "{info}"
    );
    assert!(info.contains("32768 tokens, instruct format V3"), "{info}");
    // Another quantisation is not there.
    let o = greve(
        &["ask", "--offline", "--quant", "Q8_0", "Salut"],
        &[("HF_HOME", h)],
    );
    assert_eq!(o.status.code(), Some(6), "{}", err(&o));
    assert!(
        err(&o).contains("greve pull mistral-7b-instruct-v0.3 --quant Q8_0"),
        "{}",
        err(&o)
    );
}

/// A repo that ships mistral-common's tekken.json and no tokenizer.json
/// (as Magistral's and Devstral's do), with its reasoning prompt in
/// SYSTEM_PROMPT.txt: both are read from the cache, the prompt put first.
#[test]
fn a_repo_with_tekken_json_and_a_reasoning_prompt_loads() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path().to_str().unwrap();
    let model = tempfile::tempdir().unwrap();
    write_tiny_model(model.path(), "ministral3");
    std::fs::remove_file(model.path().join("tokenizer.json")).unwrap();
    let _ = std::fs::remove_file(model.path().join("tokenizer_config.json"));
    std::fs::copy(
        goldens().join("tekken-v13-cut.json"),
        model.path().join("tekken.json"),
    )
    .unwrap();
    std::fs::write(
        model.path().join("SYSTEM_PROMPT.txt"),
        "Pense.[THINK]brouillon[/THINK]Réponds.",
    )
    .unwrap();
    cache_folder(home.path(), "test-org/tiny-reasoning", model.path());
    let o = greve(
        &[
            "ask",
            "--offline",
            "-m",
            "test-org/tiny-reasoning",
            "--verbose-prompt",
            "-n",
            "1",
            "Salut",
        ],
        &[("HF_HOME", h)],
    );
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert!(
        err(&o).contains(
            "<s>[SYSTEM_PROMPT]Pense.[THINK]brouillon[/THINK]Réponds.[/SYSTEM_PROMPT][INST]Salut[/INST]"
        ),
        "{}",
        err(&o)
    );
    let o = greve(
        &["info", "--offline", "-m", "test-org/tiny-reasoning"],
        &[("HF_HOME", h)],
    );
    let info = out(&o);
    assert!(
        info.contains("tekken.json: 4000 tokens, instruct format V13"),
        "{info}{}",
        err(&o)
    );
    assert!(
        info.contains("reasoning    thinks first, as the system prompt in SYSTEM_PROMPT.txt"),
        "{info}"
    );
}

/// NeMo's and Small 3.2's presets name their GGUF conversions; a cache
/// holding those files (here the tiny Tekken model under their names) is
/// all they need offline, and `greve models` lists every preset with the
/// sizes of its files.
#[test]
fn the_larger_presets_come_from_the_cache() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path().to_str().unwrap();
    for preset in &greve::hub::PRESETS[3..] {
        let file = preset.gguf_file.replace("{q}", "Q4_K_M");
        let gguf = (file.clone(), goldens().join("tiny-tekken-f16.gguf"));
        cache_repo(home.path(), preset.gguf_repo, &[gguf]);
        let o = greve(&["pull", "--offline", preset.name], &[("HF_HOME", h)]);
        assert!(out(&o).trim_end().ends_with(&file), "{}", err(&o));
        let o = greve(
            &["doctor", "-m", preset.name],
            &[("HF_HOME", h), ("HF_HUB_OFFLINE", "1")],
        );
        assert!(out(&o).contains("OK    template     V3 ids"), "{}", out(&o));
        let o = greve(&["info", "--offline", "-m", preset.name], &[("HF_HOME", h)]);
        assert!(
            out(&o).contains("131072 tokens, instruct format V3"),
            "{}{}",
            out(&o),
            err(&o)
        );
        let o = greve(
            &["ask", "--offline", "-m", preset.name, "-n", "2", "Salut"],
            &[("HF_HOME", h)],
        );
        assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    }
    // The safetensors of Small 3.2 are its multimodal checkpoint.
    let o = greve(
        &[
            "ask",
            "--offline",
            "-m",
            "mistral-small-3.2-24b-instruct-2506",
            "--quant",
            "safetensors",
            "Salut",
        ],
        &[("HF_HOME", h)],
    );
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(err(&o).contains("as GGUF"), "{}", err(&o));

    let listing = out(&greve(&["models"], &[]));
    for preset in &greve::hub::PRESETS {
        let line = listing
            .lines()
            .find(|l| l.starts_with(preset.name))
            .unwrap_or_else(|| panic!("{} not listed:\n{listing}", preset.name));
        let size = format!("{:.1} GB", preset.q4_k_m_bytes as f64 / 1e9);
        assert!(line.contains(&size), "{line}");
    }
}

#[test]
fn missing_and_broken_cache_entries_are_named() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path().to_str().unwrap();
    let (_local, dir) = tiny_safetensors_cache(home.path());
    // A blob gone: its snapshot link dangles.
    let link = dir
        .join("snapshots")
        .join(COMMIT)
        .join("model-00002-of-00002.safetensors");
    std::fs::remove_file(std::fs::canonicalize(&link).unwrap()).unwrap();
    let o = greve(
        &["ask", "-m", "test-org/tiny-v1", "--offline", "hi"],
        &[("HF_HOME", h)],
    );
    assert_eq!(o.status.code(), Some(6), "{}", err(&o));
    assert!(
        err(&o).contains("model-00002-of-00002.safetensors"),
        "{}",
        err(&o)
    );
    assert_eq!(err(&o).lines().count(), 1);

    // Not a preset, not a repo id, not a path.
    let o = greve(
        &["ask", "-m", "mistral-7b-instruct-v9", "hi"],
        &[("HF_HOME", h)],
    );
    assert_eq!(o.status.code(), Some(3), "{}", err(&o));
    assert!(err(&o).contains("`greve models` lists them"), "{}", err(&o));

    let o = greve(
        &["ask", "-m", "test-org/absent", "hi"],
        &[("HF_HOME", h), ("HF_HUB_OFFLINE", "yes")],
    );
    assert_eq!(o.status.code(), Some(6), "{}", err(&o));
    assert!(
        err(&o).contains("greve pull test-org/absent"),
        "{}",
        err(&o)
    );
}

/// A stub Hub answering every request with `status` and `headers`.
fn stub_hub(status: &'static str, headers: &'static str) -> String {
    stub_hub_with_body(status, headers, "")
}

fn stub_hub_with_body(status: &'static str, headers: &'static str, body: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().take(20) {
            let Ok(mut stream) = stream else { break };
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let response = format!(
                "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes());
        }
    });
    address
}

#[test]
fn refusals_from_the_hub_get_their_own_errors() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path().to_str().unwrap();

    let gated = stub_hub("401 Unauthorized", "X-Error-Code: GatedRepo\r\n");
    let o = greve(
        &["ask", "-m", "mistralai/Gated-7B", "hi"],
        &[("HF_HOME", h), ("HF_ENDPOINT", &gated)],
    );
    assert_eq!(o.status.code(), Some(7), "{}", err(&o));
    let e = err(&o);
    assert!(
        e.contains("mistralai/Gated-7B is gated") && e.contains("HF_TOKEN"),
        "{e}"
    );

    let with_token = greve(
        &["ask", "-m", "mistralai/Gated-7B", "hi"],
        &[
            ("HF_HOME", h),
            ("HF_ENDPOINT", &gated),
            ("HF_TOKEN", "hf_secret_value"),
        ],
    );
    assert_eq!(with_token.status.code(), Some(7));
    assert!(
        !err(&with_token).contains("hf_secret_value"),
        "the token is never printed"
    );

    let missing = stub_hub("404 Not Found", "");
    let o = greve(
        &["ask", "-m", "nobody/nothing", "hi"],
        &[("HF_HOME", h), ("HF_ENDPOINT", &missing)],
    );
    assert_eq!(o.status.code(), Some(3), "{}", err(&o));
    assert!(
        err(&o).contains("nobody/nothing@main does not exist"),
        "{}",
        err(&o)
    );
    let o = greve(
        &[
            "ask",
            "-m",
            "nobody/nothing",
            "--quant",
            "safetensors",
            "hi",
        ],
        &[("HF_HOME", h), ("HF_ENDPOINT", &missing)],
    );
    assert_eq!(o.status.code(), Some(3), "{}", err(&o));
    assert!(err(&o).contains("has no file config.json"), "{}", err(&o));
}

#[test]
fn a_download_larger_than_the_disk_is_refused_before_it_starts() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path().to_str().unwrap();
    let listing = r#"{"sha": "0123456789abcdef0123456789abcdef01234567", "siblings": [
        {"rfilename": "Mistral-7B-Instruct-v0.3-Q4_K_M.gguf", "size": 1000000000000000}]}"#;
    let hub = stub_hub_with_body("200 OK", "Content-Type: application/json\r\n", listing);
    let o = greve(&["ask", "hi"], &[("HF_HOME", h), ("HF_ENDPOINT", &hub)]);
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    let e = err(&o);
    assert!(
        e.contains("downloading 1000000.00 GB from bartowski/Mistral-7B-Instruct-v0.3-GGUF"),
        "{e}"
    );
    assert!(e.contains("free some space or set HF_HOME"), "{e}");
    assert!(!home
        .path()
        .join("hub")
        .join("models--bartowski--Mistral-7B-Instruct-v0.3-GGUF")
        .join("blobs")
        .exists());
}

/// The safetensors weights get the same pre-flight as a GGUF file, once
/// config.json and the index (small, fetched first) have said which shards
/// there are: too large for the disk, nothing of them is downloaded.
#[test]
fn a_safetensors_download_gets_the_same_pre_flight() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path().to_str().unwrap();
    let model = tempfile::tempdir().unwrap();
    write_tiny_model(model.path(), "v1");
    let index = model.path().join("model.safetensors.index.json");
    std::fs::write(
        &index,
        r#"{"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors",
            "b": "model-00002-of-00002.safetensors"}}"#,
    )
    .unwrap();
    let dir = cache_repo(
        home.path(),
        "test-org/big",
        &[
            ("config.json".into(), model.path().join("config.json")),
            ("model.safetensors.index.json".into(), index),
        ],
    );
    let listing = r#"{"sha": "0123456789abcdef0123456789abcdef01234567", "siblings": [
        {"rfilename": "model-00001-of-00002.safetensors", "size": 700000000000000},
        {"rfilename": "model-00002-of-00002.safetensors", "lfs": {"size": 800000000000000}}]}"#;
    let hub = stub_hub_with_body("200 OK", "Content-Type: application/json\r\n", listing);
    let o = greve(
        &["ask", "-m", "test-org/big", "hi"],
        &[("HF_HOME", h), ("HF_ENDPOINT", &hub)],
    );
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    let e = err(&o);
    assert!(
        e.contains("downloading 1500000.00 GB from test-org/big"),
        "{e}"
    );
    assert!(e.contains("free some space or set HF_HOME"), "{e}");
    assert_eq!(std::fs::read_dir(dir.join("blobs")).unwrap().count(), 2);
}

#[test]
fn doctor_checks_the_cache_and_the_template() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path().to_str().unwrap();
    let gguf = (
        "Mistral-7B-Instruct-v0.3-Q4_K_M.gguf".to_string(),
        goldens().join("tiny-v3-f16.gguf"),
    );
    let dir = cache_repo(
        home.path(),
        "bartowski/Mistral-7B-Instruct-v0.3-GGUF",
        &[gguf],
    );
    let env = [("HF_HOME", h), ("HF_HUB_OFFLINE", "1")];
    let o = greve(&["doctor"], &env);
    let report = out(&o);
    assert_eq!(o.status.code(), Some(0), "{report}{}", err(&o));
    assert!(!report.contains("FAIL"), "{report}");
    assert!(
        report.contains("models: bartowski/Mistral-7B-Instruct-v0.3-GGUF"),
        "{report}"
    );
    assert!(report.contains("OK    template     V3 ids"), "{report}");
    assert!(report.contains("SKIP  hub"), "{report}");

    // A blob gone: the snapshot link dangles.
    let link = dir
        .join("snapshots")
        .join(COMMIT)
        .join("Mistral-7B-Instruct-v0.3-Q4_K_M.gguf");
    std::fs::remove_file(std::fs::canonicalize(&link).unwrap()).unwrap();
    let o = greve(&["doctor"], &env);
    let report = out(&o);
    assert_ne!(o.status.code(), Some(0));
    assert!(
        report.contains("FAIL  cache")
            && report.contains("greve pull bartowski/Mistral-7B-Instruct-v0.3-GGUF"),
        "{report}"
    );
}
