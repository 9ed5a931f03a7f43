//! `greve chat` in a real terminal (a tmux pane): typing, streaming, a
//! command, Ctrl-C during a long reply, /save, Ctrl-D; a model's thinking
//! shown, counted and shown again.

use crate::common;

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::goldens;

struct Pane {
    name: String,
}

impl Pane {
    fn start(command: &str) -> Pane {
        // Tests run side by side in one process: each pane its own name.
        static PANES: AtomicUsize = AtomicUsize::new(0);
        let n = PANES.fetch_add(1, Ordering::Relaxed);
        let name = format!("greve-test-{}-{n}", std::process::id());
        let status = Command::new("tmux")
            .args([
                "new-session",
                "-d",
                "-s",
                &name,
                "-x",
                "120",
                "-y",
                "50",
                command,
            ])
            .status()
            .expect("tmux is needed for this test (.ci/run installs it)");
        assert!(status.success());
        Pane { name }
    }

    fn keys(&self, keys: &[&str]) {
        let status = Command::new("tmux")
            .args(["send-keys", "-t", &self.name])
            .args(keys)
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.name, "-S", "-2000"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until the screen satisfies `done`, or fails after 30 s.
    fn wait(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let screen = self.screen();
            if done(&screen) {
                return screen;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "waited for {what}; screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Pane {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.name])
            .status();
    }
}

/// Prompts shown so far (tmux drops the trailing space of an empty one).
fn prompts(screen: &str) -> usize {
    screen.lines().filter(|l| l.starts_with("greve>")).count()
}

#[test]
fn chat_in_a_real_terminal() {
    if !greve::system::test_tool("tmux", "apt install tmux") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let model = goldens().join("tiny-v1-q8_0.gguf");
    let saved = dir.path().join("saved.json");
    let command = format!(
        "env XDG_DATA_HOME={d}/data XDG_CONFIG_HOME={d}/config {} chat -m {} --seed 4 -n 6; echo EXIT=$?; sleep 30",
        env!("CARGO_BIN_EXE_greve"),
        model.display()
    );
    let pane = Pane::start(&command);
    pane.wait("the prompt", |s| prompts(s) == 1);

    pane.keys(&["Bonjour", "Enter"]);
    pane.wait("a reply and a new prompt", |s| prompts(s) == 2);

    pane.keys(&["/set max_tokens 30000", "Enter"]);
    pane.wait("the setting", |s| {
        s.contains("max_tokens = 30000") && prompts(s) == 3
    });

    // A long reply, stopped by Ctrl-C: the chat goes on.
    pane.keys(&["Raconte une longue histoire", "Enter"]);
    std::thread::sleep(Duration::from_millis(800));
    pane.keys(&["C-c"]);
    pane.wait("the interrupted reply", |s| {
        s.contains("reply interrupted") && prompts(s) == 4
    });

    pane.keys(&[&format!("/save {}", saved.display()), "Enter"]);
    pane.wait("the save", |s| s.contains("saved to") && prompts(s) == 5);
    pane.keys(&["C-d"]);
    pane.wait("the exit", |s| s.contains("EXIT=0"));

    let t: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&saved).unwrap()).unwrap();
    let messages = t["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 4, "{t}");
    assert_eq!(messages[2]["content"], "Raconte une longue histoire");
    assert!(
        !messages[3]["content"].as_str().unwrap().is_empty(),
        "the partial reply is kept"
    );
    // The history file remembers what was typed.
    let history = std::fs::read_to_string(dir.path().join("data/greve/history.txt")).unwrap();
    assert!(history.contains("Raconte une longue histoire"), "{history}");
}

/// A model that thinks (the tiny V13 one, made to think by a grammar): its
/// thinking shows dimmed before the answer; `/think hide` leaves a one-line
/// count instead; `/think show` then shows the last reply's; `/think off`
/// says the model is no longer asked to think.
#[test]
fn thinking_in_a_real_terminal() {
    if !greve::system::test_tool("tmux", "apt install tmux") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let model = crate::reasoning::v13_model(dir.path());
    let grammar = crate::reasoning::thinking_grammar(dir.path());
    let saved = dir.path().join("saved.json");
    let command = format!(
        "env XDG_DATA_HOME={d}/data XDG_CONFIG_HOME={d}/config {} chat -m {} --seed 4 -n 40 --grammar {grammar} --no-prompt-cache; echo EXIT=$?; sleep 30",
        env!("CARGO_BIN_EXE_greve"),
        model.display()
    );
    let pane = Pane::start(&command);
    pane.wait("the prompt", |s| prompts(s) == 1);
    pane.keys(&["Bonjour", "Enter"]);
    pane.wait("a reply", |s| prompts(s) == 2);
    pane.keys(&["/think hide", "Enter"]);
    pane.wait("the note", |s| {
        s.contains("counted, not shown") && prompts(s) == 3
    });
    pane.keys(&["Salut", "Enter"]);
    let counted = pane.wait("a counted reply", |s| prompts(s) == 4);
    pane.keys(&[&format!("/save {}", saved.display()), "Enter"]);
    pane.wait("the save", |s| s.contains("saved to") && prompts(s) == 5);
    let t: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&saved).unwrap()).unwrap();
    let first = t["messages"][1]["reasoning"].as_str().unwrap().to_string();
    let second = t["messages"][3]["reasoning"].as_str().unwrap().to_string();
    assert!(counted.lines().any(|l| l == first), "{counted}");
    assert!(!counted.lines().any(|l| l == second), "{counted}");
    let tokens = counted
        .lines()
        .find_map(|l| l.strip_prefix("thought for ")?.strip_suffix(" tokens"))
        .unwrap_or_else(|| panic!("no count:\n{counted}"));
    assert!(tokens.parse::<usize>().unwrap() >= 1, "{counted}");
    pane.keys(&["/think show", "Enter"]);
    pane.wait("the last thinking", |s| {
        s.lines().any(|l| l == second) && prompts(s) == 6
    });
    pane.keys(&["/think off", "Enter"]);
    pane.wait("the note", |s| {
        s.contains("not asked to think") && prompts(s) == 7
    });
    pane.keys(&["C-d"]);
    pane.wait("the exit", |s| s.contains("EXIT=0"));
}
