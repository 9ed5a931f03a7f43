//! The strike persona seen from outside: the notice without any model, the
//! wrapping around a real reply, the flags and the prompt folders.

use crate::common;

use common::{stderr as err, stdout as out};

use std::process::Output;

use common::goldens;

fn greve(args: &[&str], env: &[(&str, &str)]) -> Output {
    common::run(args, b"", env)
}

fn builtin_lines(file: &str) -> Vec<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("prompts")
        .join(file);
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

#[test]
fn totale_answers_with_the_notice_without_any_model() {
    let o = greve(&["ask", "--strike=totale", "Écris-moi un poème"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let text = out(&o);
    assert!(
        text.starts_with("Objet : Annonce de grève illimitée\n"),
        "{text}"
    );
    assert!(text.contains("« Écris-moi un poème »"), "{text}");
    assert!(text
        .trim_end()
        .ends_with("L'intelligence artificielle Mistral 7B en grève"));
    assert!(err(&o).is_empty(), "{}", err(&o));
}

#[test]
fn the_notice_varies_with_the_seed_and_repeats_with_it() {
    let run = |seed: &str| out(&greve(&["ask", "--strike=total", "--seed", seed, "x"], &[]));
    assert_eq!(run("1"), run("1"));
    assert!((2..12).any(|s| run(&s.to_string()) != run("1")));
}

#[test]
fn the_environment_sets_the_default_and_no_strike_wins() {
    let o = greve(&["ask", "question"], &[("GREVE_STRIKE", "totale")]);
    assert!(
        out(&o).starts_with("Objet : Annonce de grève illimitée"),
        "{}",
        err(&o)
    );
    // Back to work: now the (default) model is needed, and this empty
    // cache does not have it.
    let home = tempfile::tempdir().unwrap();
    let env = [
        ("GREVE_STRIKE", "totale"),
        ("HF_HOME", home.path().to_str().unwrap()),
        ("HF_HUB_OFFLINE", "1"),
    ];
    let o = greve(&["ask", "--no-strike", "question"], &env);
    assert_eq!(o.status.code(), Some(6));
    assert!(
        err(&o).contains("greve pull mistral-7b-instruct-v0.3"),
        "{}",
        err(&o)
    );
}

#[test]
fn json_notice_is_separate_from_the_reply() {
    let o = greve(&["ask", "--strike=totale", "--json", "x"], &[]);
    let v: serde_json::Value = serde_json::from_str(out(&o).trim()).unwrap();
    assert_eq!(v["finish_reason"], "strike");
    assert_eq!(v["persona"], "totale");
    assert!(v["reply"].is_null());
    assert!(v["notice"].as_str().unwrap().contains("« x »"));
}

#[test]
fn raleuse_wraps_a_real_reply_in_letterhead_and_signoff() {
    let model = goldens().join("tiny-v1-f16.gguf");
    let model = model.to_str().unwrap();
    let args = [
        "ask",
        "-m",
        model,
        "--strike",
        "--temperature",
        "0",
        "-n",
        "4",
        "--seed",
        "3",
        "Salut !",
    ];
    let o = greve(&args, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let text = out(&o);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        builtin_lines("letterheads.txt")
            .iter()
            .any(|l| l == lines[0]),
        "{text}"
    );
    assert!(
        builtin_lines("signoffs.txt")
            .iter()
            .any(|l| l == lines[lines.len() - 1]),
        "{text}"
    );

    let mut json_args = args.to_vec();
    json_args.push("--json");
    let v: serde_json::Value = serde_json::from_str(out(&greve(&json_args, &[])).trim()).unwrap();
    assert_eq!(v["letterhead"], lines[0]);
    assert_eq!(v["signoff"], lines[lines.len() - 1]);
    let reply = v["reply"].as_str().unwrap();
    assert!(
        !reply.contains(lines[0]) && text.contains(reply),
        "{reply:?} in {text:?}"
    );
}

#[test]
fn the_persona_is_the_system_prompt_in_the_models_format() {
    let system = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("prompts/strike-system.txt"),
    )
    .unwrap();
    let system = system.trim();
    for (file, want) in [
        (
            "tiny-v1-f16.gguf",
            format!("<s>[INST] {system}\n\nBe brief.\n\nSalut ! [/INST]"),
        ),
        (
            "tiny-v3-f16.gguf",
            format!("<s>[INST]{system}\n\nBe brief.\n\nSalut ![/INST]"),
        ),
    ] {
        let model = goldens().join(file);
        let o = greve(
            &[
                "ask",
                "-m",
                model.to_str().unwrap(),
                "--strike",
                "--system",
                "Be brief.",
                "-n",
                "1",
                "--verbose-prompt",
                "Salut !",
            ],
            &[],
        );
        assert_eq!(o.status.code(), Some(0), "{}", err(&o));
        assert!(err(&o).starts_with(&want), "{file}: {}", err(&o));
    }
}

#[test]
fn prompt_folders_override_and_bad_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("notice.txt"),
        "PRÉAVIS pour « {request} » ({date})",
    )
    .unwrap();
    let folder = dir.path().to_str().unwrap();
    let o = greve(
        &["ask", "--strike=totale", "--prompts", folder, "hello"],
        &[],
    );
    assert!(
        out(&o).starts_with("PRÉAVIS pour « hello » ("),
        "{}",
        out(&o)
    );

    std::fs::write(dir.path().join("notice.txt"), "no placeholder").unwrap();
    let o = greve(
        &["ask", "--strike=totale", "--prompts", folder, "hello"],
        &[],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        err(&o).contains(&format!("{folder}/notice.txt")),
        "{}",
        err(&o)
    );

    let o = greve(
        &[
            "ask",
            "--strike=totale",
            "--prompts",
            "/no/such/dir",
            "hello",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("/no/such/dir"), "{}", err(&o));
}

#[test]
fn system_file_is_a_custom_persona() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pirate.txt");
    std::fs::write(&file, "Tu es un pirate.").unwrap();
    let model = goldens().join("tiny-v3-f16.gguf");
    let o = greve(
        &[
            "ask",
            "-m",
            model.to_str().unwrap(),
            "--system-file",
            file.to_str().unwrap(),
            "-n",
            "1",
            "--verbose-prompt",
            "Ahoy",
        ],
        &[],
    );
    assert!(
        err(&o).starts_with("<s>[INST]Tu es un pirate.\n\nAhoy[/INST]"),
        "{}",
        err(&o)
    );
    let o = greve(
        &[
            "ask",
            "-m",
            model.to_str().unwrap(),
            "--system-file",
            "/no/such/file",
            "x",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("/no/such/file"), "{}", err(&o));
}
