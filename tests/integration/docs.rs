//! The README and docs/ stay true to the command line: every `greve`
//! command in their shell examples parses with greve's own parser (its
//! subcommands, flags and values exist), without running it, since most
//! need a model. Placeholders (`MODEL`, `FILE`) are values like any other,
//! `N` stands for a number, and a synopsis's `[optional]` parts are taken
//! as given.

use clap::Parser;
use greve::cli::Cli;

/// The lines of each ```bash block, continuation lines joined, with the
/// file and line where each starts.
fn shell_lines(name: &str, text: &str) -> Vec<(String, String)> {
    let mut lines = Vec::new();
    let (mut inside, mut pending, mut start) = (false, String::new(), 0);
    for (n, line) in text.lines().enumerate() {
        if line.starts_with("```") {
            inside = line == "```bash";
            continue;
        }
        if !inside {
            continue;
        }
        if pending.is_empty() {
            start = n + 1;
        }
        match line.strip_suffix('\\') {
            Some(head) => pending.push_str(head),
            None => {
                pending.push_str(line);
                lines.push((format!("{name}:{start}"), std::mem::take(&mut pending)));
            }
        }
    }
    lines
}

/// A shell line's words, as far as these examples need: quotes, `$(…)`
/// inside double quotes kept whole, and `|`, `;`, `&&`, `>` and `#` ending
/// a command. Each command is a list of words.
fn commands(line: &str) -> Vec<Vec<String>> {
    let (mut commands, mut words, mut word) = (Vec::new(), Vec::new(), None::<String>);
    let mut chars = line.chars().peekable();
    fn end_word(words: &mut Vec<String>, word: &mut Option<String>) {
        words.extend(word.take());
    }
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                w.extend(chars.by_ref().take_while(|&c| c != '\''));
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                let mut depth = 0;
                for c in chars.by_ref() {
                    match c {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        '"' if depth == 0 => break,
                        _ => {}
                    }
                    w.push(c);
                }
            }
            ' ' | '\t' => end_word(&mut words, &mut word),
            '#' if word.is_none() => break,
            '|' | ';' | '&' | '>' | '<' => {
                end_word(&mut words, &mut word);
                commands.push(std::mem::take(&mut words));
                // The rest of a redirection or of `&&` is no command.
                if c == '>' || c == '<' {
                    while chars.peek().is_some_and(|&c| c != '|' && c != ';') {
                        chars.next();
                    }
                }
            }
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    end_word(&mut words, &mut word);
    commands.push(words);
    commands.retain(|c| !c.is_empty());
    commands
}

#[test]
fn every_greve_command_in_the_docs_parses() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut pages = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        pages.push(entry.unwrap().path());
    }
    let mut checked = 0;
    for page in pages
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
    {
        let name = page.strip_prefix(root).unwrap().display().to_string();
        let text = std::fs::read_to_string(page).unwrap();
        for (at, line) in shell_lines(&name, &text) {
            for words in commands(&line) {
                // Environment assignments before the command.
                let words: Vec<&String> = words.iter().skip_while(|w| w.contains('=')).collect();
                let Some(program) = words.first() else {
                    continue;
                };
                if *program != "greve" && !program.ends_with("/greve") {
                    continue;
                }
                // A synopsis writes optional parts in brackets.
                let args = words[1..].iter().map(|w| {
                    match w.trim_start_matches('[').trim_end_matches(']') {
                        // A one-letter placeholder stands for a number.
                        n if n.len() == 1 && n.chars().all(|c| c.is_ascii_uppercase()) => "1",
                        w => w,
                    }
                });
                let args = std::iter::once("greve").chain(args);
                if let Err(e) = Cli::try_parse_from(args) {
                    use clap::error::ErrorKind::*;
                    assert!(
                        matches!(e.kind(), DisplayHelp | DisplayVersion),
                        "{at}: `{line}` does not parse: {}",
                        e.to_string().lines().next().unwrap_or("")
                    );
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 40, "only {checked} commands found");
}

#[test]
fn shell_lines_are_cut_into_commands() {
    let words =
        commands(r#"FOO=1 greve ask --tool-result "$(curl -s "x?a=3")" 'a b' > out.json # note"#);
    assert_eq!(
        words,
        [vec![
            "FOO=1",
            "greve",
            "ask",
            "--tool-result",
            r#"$(curl -s "x?a=3")"#,
            "a b"
        ]]
    );
    assert_eq!(
        commands("cat q.txt | greve ask -m M && echo ok"),
        [
            vec!["cat", "q.txt"],
            vec!["greve", "ask", "-m", "M"],
            vec!["echo", "ok"]
        ]
    );
}
