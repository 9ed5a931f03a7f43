//! The config file and the precedence flag > environment > file > default.

use crate::common;

use common::{run, stderr, stdout};

fn config_file(text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).unwrap();
    let p = path.to_str().unwrap().to_string();
    (dir, p)
}

/// The value and source `greve config` reports for `key`.
fn setting(out: &str, key: &str) -> (String, String) {
    let line = out
        .lines()
        .find(|l| l.split_whitespace().next() == Some(key))
        .unwrap();
    let rest = line[key.len()..].trim();
    let (value, source) = rest.rsplit_once('(').unwrap();
    (
        value.trim().to_string(),
        source.trim_end_matches(')').to_string(),
    )
}

#[test]
fn flags_beat_the_environment_which_beats_the_file_which_beats_the_default() {
    let (_d, file) = config_file("temperature = 0.3\ntop_p = 0.5\nmax_tokens = 40\n");
    // (flags, environment, expected value, expected source)
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str, &'a str);
    let cases: [Case; 4] = [
        (&[], &[], "0.3", "file"),
        (&[], &[("GREVE_TEMPERATURE", "0.6")], "0.6", "env"),
        (
            &["--temperature", "0.9"],
            &[("GREVE_TEMPERATURE", "0.6")],
            "0.9",
            "flag",
        ),
        (&["--temperature", "0.9"], &[], "0.9", "flag"),
    ];
    for (flags, env, value, source) in cases {
        let mut all_env = vec![("GREVE_CONFIG", file.as_str())];
        all_env.extend_from_slice(env);
        let o = run(&[&["config"], flags].concat(), b"", &all_env);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let out = stdout(&o);
        assert_eq!(
            setting(&out, "temperature"),
            (value.to_string(), source.to_string()),
            "{out}"
        );
        assert_eq!(
            setting(&out, "top_p"),
            ("0.5".to_string(), "file".to_string())
        );
        assert_eq!(
            setting(&out, "seed"),
            ("random".to_string(), "default".to_string())
        );
    }
    let o = run(&["config", "path"], b"", &[("GREVE_CONFIG", file.as_str())]);
    assert_eq!(stdout(&o).trim(), file);
}

#[test]
fn the_file_changes_what_commands_do() {
    // The persona from the file: a notice, without any model.
    let (_d, file) = config_file("strike = \"totale\"\n");
    let o = run(
        &["ask", "Un poème ?"],
        b"",
        &[("GREVE_CONFIG", file.as_str())],
    );
    assert!(
        stdout(&o).starts_with("Objet : Annonce de grève illimitée"),
        "{}",
        stderr(&o)
    );
    // --no-strike still wins over the file.
    let home = tempfile::tempdir().unwrap();
    let env = [
        ("GREVE_CONFIG", file.as_str()),
        ("HF_HOME", home.path().to_str().unwrap()),
        ("HF_HUB_OFFLINE", "1"),
    ];
    let o = run(&["ask", "--no-strike", "Un poème ?"], b"", &env);
    assert_eq!(o.status.code(), Some(6), "{}", stderr(&o));
}

#[test]
fn bad_config_files_are_one_line_errors_naming_file_line_and_key() {
    for (text, needle) in [
        ("temperature = 0.3\ntemprature = 1\n", ":2: temprature"),
        ("\ntop_p = 3\n", ":2: top_p: must be in (0, 1]"),
        ("threads = \"many\"\n", ":1: threads"),
        ("kv_cache = \"q4\"\n", ":1: kv_cache"),
        ("strike = \"lundi\"\n", "not a strike mode"),
        ("model = [\n", ":1"),
    ] {
        let (_d, file) = config_file(text);
        let o = run(
            &["ask", "--strike=totale", "x"],
            b"",
            &[("GREVE_CONFIG", file.as_str())],
        );
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{text}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(
            err.contains(&file) && err.contains(needle),
            "{needle:?} not in {err}"
        );
        assert!(o.stdout.is_empty());
    }
}
