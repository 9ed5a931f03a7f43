//! Black-box runs of the `greve` binary: what a script sees on stdout, on
//! stderr and in the exit code, for good and bad input.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{golden_json, goldens, ids, stderr, stdout, until_eos, write_tiny_model};
use greve::tokenizer::{SpecialTokens, Tokenizer};

fn greve(args: &[&str], stdin: &[u8]) -> Output {
    common::run(args, stdin, &[])
}

/// A failure: the expected exit code, one line on stderr that mentions
/// `needle`, nothing on stdout, and no panic.
fn assert_fails(o: &Output, code: i32, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "stderr: {err}");
    assert!(o.stdout.is_empty(), "stdout: {}", stdout(o));
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(err.starts_with("greve: "), "{err}");
    assert!(err.contains(needle), "{needle:?} not in: {err}");
}

fn gguf(name: &str) -> String {
    goldens().join(name).to_str().unwrap().to_string()
}

/// The reply greve should print for golden prompt 0 ("Salut !", no system).
fn expected_reply(n: usize) -> String {
    let golden = golden_json("tiny-v1.json");
    let tokens: Vec<u32> = until_eos(ids(&golden["continuations"][0]["greedy"]))
        .into_iter()
        .take(n)
        .collect();
    let tok = Tokenizer::from_json_file(
        &goldens().join("tokenizer-v1.json"),
        &SpecialTokens::default(),
    )
    .unwrap();
    tok.decode(&tokens).unwrap()
}

#[test]
fn ask_prints_the_reply_alone_on_stdout() {
    let model = gguf("tiny-v1-f16.gguf");
    let o = greve(
        &[
            "ask",
            "-m",
            &model,
            "--temperature",
            "0",
            "-n",
            "10",
            "Salut",
            "!",
        ],
        b"",
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), format!("{}\n", expected_reply(10)));
}

#[test]
fn ask_reads_the_prompt_from_stdin() {
    let model = gguf("tiny-v1-f16.gguf");
    for args in [vec!["ask", "-m", &model], vec!["ask", "-m", &model, "-"]] {
        let mut args = args.clone();
        args.extend(["--temperature", "0", "-n", "6"]);
        let o = greve(&args, b"Salut !\n");
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert_eq!(stdout(&o), format!("{}\n", expected_reply(6)));
    }
}

#[test]
fn json_output_is_one_object_with_counts() {
    let model = gguf("tiny-v1-f16.gguf");
    let o = greve(
        &[
            "ask",
            "-m",
            &model,
            "--temperature",
            "0",
            "-n",
            "5",
            "--json",
            "Salut !",
        ],
        b"",
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["reply"], expected_reply(5));
    assert_eq!(v["finish_reason"], "length");
    assert_eq!(v["generated_tokens"], 5);
    let golden = golden_json("tiny-v1.json");
    let prompt_len = golden["continuations"][0]["prompt"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(v["prompt_tokens"], prompt_len);
}

#[test]
fn verbose_prompt_and_stats_go_to_stderr() {
    let model = gguf("tiny-v3-f16.gguf");
    let o = greve(
        &[
            "ask",
            "-m",
            &model,
            "--temperature",
            "0",
            "-n",
            "3",
            "--verbose-prompt",
            "--stats",
            "--system",
            "S",
            "3",
        ],
        b"",
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("<s>[INST]S\n\n3[/INST]"), "{err}");
    // mistral-common's ids for the last turn of golden chat 4 (system "S", user "3").
    let chat = ids(&golden_json("tokens-v3.json")["chats"][4]["ids"]);
    let last_turn = &chat[chat.iter().rposition(|&t| t == 3).unwrap()..];
    let want: Vec<String> = std::iter::once(1)
        .chain(last_turn.iter().copied())
        .map(|t| t.to_string())
        .collect();
    assert!(err.lines().any(|l| l == want.join(" ")), "{err}");
    assert!(
        err.contains("reply 3 tokens") && err.contains("| seed "),
        "{err}"
    );
}

#[test]
fn the_same_seed_gives_the_same_reply() {
    let model = gguf("tiny-v1-q8_0.gguf");
    let run = |seed: &str| {
        stdout(&greve(
            &[
                "ask",
                "-m",
                &model,
                "--seed",
                seed,
                "--temperature",
                "1",
                "-n",
                "12",
                "hi",
            ],
            b"",
        ))
    };
    assert_eq!(run("7"), run("7"));
    assert_ne!(run("7"), run("8"));
}

#[test]
fn missing_model_is_exit_3() {
    let o = greve(&["ask", "-m", "/nonexistent/model", "hi"], b"");
    assert_fails(&o, 3, "/nonexistent/model");
}

#[test]
fn empty_prompt_and_invalid_utf8_are_usage_errors() {
    let model = gguf("tiny-v1-f16.gguf");
    assert_fails(&greve(&["ask", "-m", &model], b"  \n"), 2, "empty");
    assert_fails(&greve(&["ask", "-m", &model], b"caf\xe9"), 2, "UTF-8");
}

fn tiny_folder() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), "v1");
    dir
}

fn ask_folder(dir: &Path) -> Output {
    greve(
        &[
            "ask",
            "-m",
            dir.to_str().unwrap(),
            "--temperature",
            "0",
            "-n",
            "2",
            "hi",
        ],
        b"",
    )
}

#[test]
fn safetensors_folder_answers() {
    let dir = tiny_folder();
    let o = ask_folder(dir.path());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!stdout(&o).trim().is_empty());
}

#[test]
fn broken_model_folders_are_exit_4() {
    let dir = tiny_folder();
    let p = dir.path();
    let index = p.join("model.safetensors.index.json");
    let original_index = std::fs::read_to_string(&index).unwrap();

    // A shard named in the index is missing.
    std::fs::write(
        &index,
        original_index.replace("model-00002-of-00002", "model-00003-of-00002"),
    )
    .unwrap();
    assert_fails(&ask_folder(p), 4, "model-00003-of-00002.safetensors");

    // The index points outside the folder.
    std::fs::write(
        &index,
        original_index.replace("model-00002-of-00002", "../model-00002-of-00002"),
    )
    .unwrap();
    assert_fails(&ask_folder(p), 4, "not a file in the model folder");
    std::fs::write(&index, &original_index).unwrap();

    // A truncated shard.
    let shard = p.join("model-00002-of-00002.safetensors");
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() / 2]).unwrap();
    assert_fails(&ask_folder(p), 4, "safetensors");
    std::fs::write(&shard, &bytes).unwrap();

    // A tokenizer from another vocabulary.
    std::fs::copy(
        goldens().join("tokenizer-v3.json"),
        p.join("tokenizer.json"),
    )
    .unwrap();
    assert_fails(&ask_folder(p), 4, "tokenizer");
}

#[test]
fn folder_without_config_is_exit_4() {
    let dir = tempfile::tempdir().unwrap();
    assert_fails(&ask_folder(dir.path()), 4, "config.json");
}

#[test]
fn prompt_longer_than_the_context_is_a_usage_error() {
    let dir = tiny_folder();
    let config = dir.path().join("config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("32768", "8")).unwrap();
    assert_fails(&ask_folder(dir.path()), 2, "context");
}

fn broken_gguf(edit: impl Fn(&mut Vec<u8>)) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(goldens().join("tiny-v1-q8_0.gguf")).unwrap();
    edit(&mut bytes);
    let path = dir.path().join("broken.gguf");
    std::fs::write(&path, bytes).unwrap();
    (dir, path)
}

#[test]
fn broken_gguf_files_are_exit_4() {
    let (_d, path) = broken_gguf(|b| b[..4].copy_from_slice(b"GGUX"));
    assert_fails(
        &greve(&["ask", "-m", path.to_str().unwrap(), "hi"], b""),
        4,
        "not a GGUF file",
    );

    let (_d, path) = broken_gguf(|b| b.truncate(b.len() - 1000));
    assert_fails(
        &greve(&["ask", "-m", path.to_str().unwrap(), "hi"], b""),
        4,
        "truncated",
    );

    let (_d, path) = broken_gguf(|b| b.truncate(100));
    assert_fails(
        &greve(&["ask", "-m", path.to_str().unwrap(), "hi"], b""),
        4,
        "broken.gguf",
    );

    // Another architecture: rewrite the value of general.architecture.
    let (_d, path) = broken_gguf(|b| {
        let at = b.windows(5).position(|w| w == b"llama").unwrap();
        b[at..at + 5].copy_from_slice(b"gemma");
    });
    assert_fails(
        &greve(&["ask", "-m", path.to_str().unwrap(), "hi"], b""),
        4,
        "gemma",
    );
}

#[test]
fn closing_stdout_early_is_not_an_error() {
    let model = gguf("tiny-v1-f16.gguf");
    let mut child = Command::new(env!("CARGO_BIN_EXE_greve"))
        .args(["ask", "-m", &model, "--temperature", "0", "-n", "200", "hi"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).is_empty(), "{}", stderr(&o));
}

/// Starts a long generation, sends `signal` once output has come, and
/// returns the run with what was printed after the signal.
fn interrupted(signal: &str) -> (Output, Vec<u8>) {
    use std::io::Read;
    let model = gguf("tiny-v1-f16.gguf");
    // Long enough that it is still generating when the signal comes.
    let args = [
        "ask",
        "-m",
        &model,
        "--temperature",
        "1",
        "--seed",
        "1",
        "Raconte une histoire",
    ];
    let mut child = Command::new(env!("CARGO_BIN_EXE_greve"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut first = [0u8; 16];
    assert!(
        out.read(&mut first).unwrap() > 0,
        "no output before the signal"
    );
    let killed = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let mut rest = Vec::new();
    out.read_to_end(&mut rest).unwrap();
    (child.wait_with_output().unwrap(), rest)
}

#[test]
fn ctrl_c_stops_generation_prints_the_partial_reply_and_exits_130() {
    let (o, rest) = interrupted("-INT");
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    assert!(
        rest.ends_with(b"\n"),
        "the partial reply ends with a newline"
    );
    assert_eq!(stderr(&o), "greve: interrupted\n");
}

#[test]
fn completions_man_page_and_version_come_from_the_clap_definitions() {
    let subcommands = [
        "ask",
        "chat",
        "tokenize",
        "models",
        "pull",
        "info",
        "bench",
        "completions",
        "man",
    ];
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        let o = greve(&["completions", shell], b"");
        assert_eq!(o.status.code(), Some(0), "{shell}: {}", stderr(&o));
        let script = stdout(&o);
        for sub in subcommands {
            assert!(script.contains(sub), "{shell} completions lack {sub}");
        }
    }
    assert_eq!(greve(&["completions", "tcsh"], b"").status.code(), Some(2));
    let man = stdout(&greve(&["man"], b""));
    assert!(
        man.contains(".TH greve 1") && man.contains("tokenize"),
        "{man}"
    );
    let version = stdout(&greve(&["--version"], b""));
    assert!(version.contains("CPU features:"), "{version}");
}

/// Waits until process `pid` catches SIGINT (its handler is installed):
/// a signal before that would kill it the default way.
fn wait_for_signal_handler(pid: u32) {
    let started = std::time::Instant::now();
    loop {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let caught = status
            .lines()
            .find_map(|l| l.strip_prefix("SigCgt:"))
            .map(|hex| u64::from_str_radix(hex.trim(), 16).unwrap())
            .unwrap();
        if caught & (1 << (2 - 1)) != 0 {
            return;
        }
        assert!(started.elapsed().as_secs() < 60, "no handler for SIGINT");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A signal while greve waits for its input (a prompt on stdin, a chat's
/// next message) quits at once: nothing reads a request to stop there.
#[test]
fn a_signal_while_waiting_for_input_quits_at_once() {
    use std::io::{BufRead, Write};
    let model = gguf("tiny-k-q4_k_m.gguf");
    for (args, signal) in [
        (vec!["ask", "-m", &model], "-INT"),
        (vec!["chat", "-m", &model], "-TERM"),
        (vec!["chat", "-m", &model], "-HUP"),
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_greve"))
            .args(&args)
            .env("GREVE_CONFIG", "/nonexistent-greve-test-config/config.toml")
            .stdin(Stdio::piped()) // held open, never written
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Kept open until it has exited (`wait` would close it).
        let mut stdin = child.stdin.take().unwrap();
        wait_for_signal_handler(child.id());
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        if args[0] == "chat" {
            // Its answer to a command, and the blank line after it: it is
            // waiting for the next line.
            writeln!(stdin, "/show").unwrap();
            let mut line = String::new();
            while line != "\n" {
                line.clear();
                assert!(out.read_line(&mut line).unwrap() > 0, "no answer to /show");
            }
        }
        let killed = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let started = std::time::Instant::now();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(130), "{args:?} {signal}");
        assert!(started.elapsed().as_secs() < 10, "{args:?} {signal}");
    }
}

#[test]
fn arguments_not_in_utf8_and_clap_errors_are_one_line_usage_errors() {
    use std::os::unix::ffi::OsStrExt;
    let bad = std::ffi::OsStr::from_bytes(b"caf\xe9");
    let o = Command::new(env!("CARGO_BIN_EXE_greve"))
        .arg("ask")
        .arg(bad)
        .env("GREVE_CONFIG", "/nonexistent-greve-test-config/config.toml")
        .output()
        .unwrap();
    assert_fails(&o, 2, "invalid UTF-8");
    assert_fails(
        &greve(&["ask", "--frobnicate", "x"], b""),
        2,
        "'--frobnicate'",
    );
    assert_fails(
        &greve(&["ask", "--temperature", "-1", "x"], b""),
        2,
        "must be 0 or more",
    );
}

#[test]
fn sigterm_stops_generation_like_ctrl_c() {
    let (o, rest) = interrupted("-TERM");
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    assert!(rest.ends_with(b"\n"));
}

#[test]
fn colours_only_where_asked_or_on_a_terminal() {
    let missing = ["ask", "-m", "/nonexistent/model", "hi"];
    // Not a terminal: plain.
    let plain = stderr(&greve(&missing, b""));
    assert!(!plain.contains('\x1b'), "{plain:?}");
    let forced = common::run(&[&["--color", "always"], &missing[..]].concat(), b"", &[]);
    assert!(
        stderr(&forced).starts_with("\x1b["),
        "{:?}",
        stderr(&forced)
    );
    let env_forced = common::run(&missing, b"", &[("CLICOLOR_FORCE", "1")]);
    assert!(
        stderr(&env_forced).contains('\x1b'),
        "{:?}",
        stderr(&env_forced)
    );
    let no_color = common::run(
        &[&["--color", "never"], &missing[..]].concat(),
        b"",
        &[("CLICOLOR_FORCE", "1")],
    );
    assert!(!stderr(&no_color).contains('\x1b'));
    // The error text itself is the same, colours aside.
    assert_eq!(plain.trim_end().lines().count(), 1);
}

#[test]
fn quiet_leaves_only_the_reply_and_errors() {
    let model = gguf("tiny-v1-f16.gguf");
    let chat = |quiet: &[&str]| {
        greve(
            &[&["chat", "-m", &model, "-n", "2"], quiet].concat(),
            b"Salut\n/reset\n/frob\n",
        )
    };
    assert!(stderr(&chat(&[])).contains("new conversation"));
    let quiet = chat(&["--quiet"]);
    assert_eq!(quiet.status.code(), Some(2), "/frob failed");
    // The note is gone, the error stays; the reply is still there.
    assert!(
        !stderr(&quiet).contains("new conversation"),
        "{}",
        stderr(&quiet)
    );
    assert!(stderr(&quiet).contains("unknown command /frob"));
    assert!(!stdout(&quiet).trim().is_empty());
}

#[test]
fn verbose_logs_the_main_steps_on_stderr_only() {
    let model = gguf("tiny-v1-q8_0.gguf");
    let quiet = greve(
        &["ask", "-m", &model, "--temperature", "0", "-n", "2", "hi"],
        b"",
    );
    let loud = greve(
        &[
            "ask",
            "-v",
            "-m",
            &model,
            "--temperature",
            "0",
            "-n",
            "2",
            "hi",
        ],
        b"",
    );
    assert_eq!(stdout(&quiet), stdout(&loud), "logs never reach stdout");
    assert!(stderr(&quiet).is_empty());
    assert!(
        stderr(&loud).contains("greve: [info] loaded"),
        "{}",
        stderr(&loud)
    );
    let debug = greve(&["ask", "-vv", "-m", &model, "-n", "1", "hi"], b"");
    assert!(
        stderr(&debug).contains("[debug] model config"),
        "{}",
        stderr(&debug)
    );
}

#[test]
fn bash_completes_model_presets_and_paths() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("greve.bash");
    std::fs::write(&script, stdout(&greve(&["completions", "bash"], b""))).unwrap();
    std::fs::write(dir.path().join("mistral-7b-instruct-v0.9.gguf"), b"").unwrap();
    let complete = |word: &str| {
        let program = format!(
            "source {}; cd {}; COMP_WORDS=(greve ask --model {word}); COMP_CWORD=3; \
             COMP_LINE=\"greve ask --model {word}\"; COMP_POINT=${{#COMP_LINE}}; \
             _greve greve {word} --model; echo \"${{COMPREPLY[@]}}\"",
            script.display(),
            dir.path().display()
        );
        let o = Command::new("bash")
            .args(["-c", &program])
            .output()
            .unwrap();
        String::from_utf8(o.stdout).unwrap()
    };
    let found = complete("mistral-7b-instruct-v0.");
    for name in [
        "mistral-7b-instruct-v0.1",
        "mistral-7b-instruct-v0.3",
        "mistral-7b-instruct-v0.9.gguf",
    ] {
        assert!(found.contains(name), "{name} not offered: {found}");
    }
}

/// Every instruction set of the quantised kernels (capped with
/// GREVE_KERNELS) writes the same greedy reply, for a prompt long enough to
/// go through the repacked prefill tiles too; a value it does not know is
/// a warning, not a failure. The reply is short: this random model's logits
/// are nearly flat, and a longer one meets near-ties (a few tokens further)
/// that rounding differences between kernels decide either way.
#[test]
fn every_kernel_level_gives_the_same_reply() {
    let prompt = "Tell me about the strike in Paris and why the trains stop, ".repeat(3);
    let args = [
        "ask",
        "-m",
        &gguf("tiny-k-q4_k_m.gguf"),
        "--temperature",
        "0",
        "-n",
        "5",
        &prompt,
    ];
    let reply = |kernels: &str| {
        let out = common::run(&args, b"", &[("GREVE_KERNELS", kernels)]);
        assert!(out.status.success(), "{kernels}: {}", stderr(&out));
        (stdout(&out), stderr(&out))
    };
    let (best, _) = reply("");
    assert!(!best.trim().is_empty());
    for kernels in ["scalar", "avx2"] {
        assert_eq!(reply(kernels).0, best, "GREVE_KERNELS={kernels}");
    }
    let (text, warning) = reply("avx9");
    assert_eq!(text, best);
    assert!(warning.contains("GREVE_KERNELS=avx9"), "{warning}");
}

#[test]
fn kv_cache_types_from_flag_and_env() {
    let model = gguf("tiny-k-q4_k_m.gguf");
    let out = greve(
        &[
            "ask",
            "-m",
            &model,
            "--kv-cache",
            "q8",
            "-n",
            "4",
            "Salut !",
        ],
        b"",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stdout(&out).trim().is_empty());
    // clap's own message for a bad value, with the possible values.
    let bad = greve(&["ask", "-m", &model, "--kv-cache", "q4", "hi"], b"");
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        stderr(&bad).contains("'q4'") && stderr(&bad).contains("f16, q8"),
        "{}",
        stderr(&bad)
    );
    let shown = common::run(&["config"], b"", &[("GREVE_KV_CACHE", "q8")]);
    assert!(
        stdout(&shown)
            .lines()
            .any(|l| l.starts_with("kv_cache") && l.contains("q8") && l.contains("(env)")),
        "{}",
        stdout(&shown)
    );
}

/// `greve bench` on the tiny GGUF: the JSON report has one figure per
/// measurement, and with --depth the same prompt's figures after more
/// context, with their ratio to the plain run's.
#[test]
fn bench_reports_plain_and_deep_runs() {
    let model = gguf("tiny-k-q4_k_m.gguf");
    let args = [
        "bench",
        "-m",
        &model,
        "--prompt-tokens",
        "8",
        "--gen-tokens",
        "4",
        "-r",
        "2",
        "-d",
        "40",
    ];
    let o = greve(&[&args[..], &["--json"]].concat(), b"");
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("one JSON object");
    assert_eq!(report["repetitions"], 2);
    assert_eq!(report["prompt_tokens"], 8);
    for speed in [
        &report["prefill_tok_s"],
        &report["decode_tok_s"],
        &report["at_depth"]["prefill_tok_s"],
        &report["at_depth"]["decode_tok_s"],
        &report["at_depth"]["decode_ratio"],
    ] {
        assert!(speed.as_f64().is_some_and(|s| s > 0.0), "{report}");
    }
    assert_eq!(report["at_depth"]["depth"], 40);

    let table = stdout(&greve(&args, b""));
    assert!(table.contains("tg4") && table.contains("@ d40"), "{table}");
    let plain = stdout(&greve(&[&args[..8], &["--json"]].concat(), b""));
    assert!(!plain.contains("at_depth"), "{plain}");

    let o = greve(&[&args[..10], &["1000000"]].concat(), b"");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("do not fit the model's context"),
        "{}",
        stderr(&o)
    );
}

/// `--breakdown` times a decode part by part: the parts and the rest add up
/// to the token's time, and a Q4_K_M file spends some of it in each of its
/// block types' products; with --depth, a deep run is broken down too.
/// `--baseline candle` runs candle's stock pipeline
/// beside greve and reports both speeds and their ratios.
#[test]
fn bench_breaks_a_token_down_and_runs_a_baseline() {
    let model = gguf("tiny-k-q4_k_m.gguf");
    let o = greve(
        &[
            "bench",
            "-m",
            &model,
            "--prompt-tokens",
            "8",
            "--gen-tokens",
            "16",
            "-r",
            "1",
            "--breakdown",
            "-d",
            "32",
            "--baseline",
            "candle",
            "--json",
        ],
        b"",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("one JSON object");
    for b in [&report["breakdown"], &report["at_depth"]["breakdown"]] {
        let token_ms = b["token_ms"].as_f64().unwrap();
        let parts = b["parts"].as_array().unwrap();
        let ms = |name: &str| {
            parts.iter().find(|p| p["part"] == name).unwrap()["ms"]
                .as_f64()
                .unwrap()
        };
        assert!(
            token_ms > 0.0
                && ms("Q4_K products") > 0.0
                && ms("Q6_K products") > 0.0
                && ms("attention") > 0.0,
            "{b}"
        );
        let sum: f64 = parts.iter().map(|p| p["ms"].as_f64().unwrap()).sum();
        assert!((sum - token_ms).abs() <= token_ms * 1e-9, "{b}");
    }
    let candle = &report["baseline"];
    assert_eq!(candle["engine"], "candle-transformers");
    for figure in [
        "prefill_tok_s",
        "decode_tok_s",
        "prefill_ratio",
        "decode_ratio",
    ] {
        assert!(candle[figure].as_f64().is_some_and(|x| x > 0.0), "{candle}");
    }
}

/// `GREVE_KERNELS=candle` hands the Q4_K and Q6_K products to candle's
/// kernels, to measure greve's against them: the model still answers as
/// with greve's (greedy, a short reply; candle quantises the activations
/// with another rounding, so long ones part), and doctor names them.
#[test]
fn candle_s_kernels_answer_when_asked_for() {
    let model = gguf("tiny-k-q4_k_m.gguf");
    let ask = [
        "ask",
        "-m",
        &model,
        "--temperature",
        "0",
        "-n",
        "12",
        "Bonjour",
    ];
    let greve_s = common::run(&ask, b"", &[("GREVE_KERNELS", "")]);
    let candle_s = common::run(&ask, b"", &[("GREVE_KERNELS", "candle")]);
    assert_eq!(candle_s.status.code(), Some(0), "{}", stderr(&candle_s));
    assert!(!stdout(&greve_s).trim().is_empty());
    assert_eq!(stdout(&candle_s), stdout(&greve_s));
    let doctor = common::run(&["doctor"], b"", &[("GREVE_KERNELS", "candle")]);
    assert!(
        stdout(&doctor).contains("Q4_K/Q6_K products with candle's kernels"),
        "{}",
        stdout(&doctor)
    );
}

/// Files the user names are read whole but bounded: an endless one (a
/// device, a FIFO) or one not UTF-8 is one line and exit 2, at once.
#[test]
fn endless_and_binary_user_files_are_refused() {
    let model = gguf("tiny-v1-f16.gguf");
    let dir = tempfile::tempdir().unwrap();
    let latin1 = dir.path().join("latin1.txt");
    std::fs::write(&latin1, b"caf\xe9").unwrap();
    let latin1 = latin1.to_str().unwrap();
    for (args, needle) in [
        (
            vec!["ask", "-m", &model, "--system-file", "/dev/zero", "hi"],
            "over 1 MB",
        ),
        (
            vec!["ask", "-m", &model, "--json-schema", "/dev/zero", "hi"],
            "over 16 MB",
        ),
        (
            vec!["ask", "-m", &model, "--load", "/dev/zero", "hi"],
            "over 256 MB",
        ),
        (
            vec!["tokenize", "-m", &model, "--chat", "/dev/zero"],
            "over 256 MB",
        ),
        (
            vec!["ask", "-m", &model, "--system-file", latin1, "hi"],
            "not UTF-8 text (bad byte at 3)",
        ),
    ] {
        assert_fails(&greve(&args, b""), 2, needle);
    }
    let o = common::run(&["config"], b"", &[("GREVE_CONFIG", "/dev/zero")]);
    assert_fails(&o, 2, "the config file /dev/zero is over 1 MB");
}
