//! A system prompt as mistral-common encodes it: chunks, each encoded on its
//! own. Most prompts are one text. The ones reasoning releases ship
//! (Magistral Small 1.2, Ministral 3 Reasoning: `SYSTEM_PROMPT.txt`, or the
//! chat template's default) hold an example of thinking that the model must
//! see between the `[THINK]` and `[/THINK]` control tokens (a ThinkChunk),
//! not as the text "[THINK]": it is what makes those models think first.

use crate::exit::Failure;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct System(Vec<Chunk>);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Chunk {
    Text(String),
    Thinking(String),
}

impl System {
    /// A plain prompt; none when the text is empty.
    pub fn text(text: Option<&str>) -> Self {
        let text = text.filter(|t| !t.is_empty());
        System(
            text.map(|t| Chunk::Text(t.to_string()))
                .into_iter()
                .collect(),
        )
    }

    /// A reasoning release's prompt, cut at its first `[THINK]` and the
    /// `[/THINK]` after it, as the model cards cut `SYSTEM_PROMPT.txt`;
    /// `None` when it holds no such pair.
    pub fn reasoning(prompt: &str) -> Option<Self> {
        let (before, rest) = prompt.split_once("[THINK]")?;
        let (thinking, after) = rest.split_once("[/THINK]")?;
        let chunks = [
            Chunk::Text(before.to_string()),
            Chunk::Thinking(thinking.to_string()),
            Chunk::Text(after.to_string()),
        ];
        let empty = |c: &Chunk| matches!(c, Chunk::Text(t) if t.is_empty());
        Some(System(chunks.into_iter().filter(|c| !empty(c)).collect()))
    }

    /// This prompt, then `text` after a blank line: the user's instructions
    /// follow the model's own, which keep it reasoning.
    pub fn then(mut self, text: Option<&str>) -> Self {
        let Some(text) = text.filter(|t| !t.is_empty()) else {
            return self;
        };
        match self.0.last_mut() {
            Some(Chunk::Text(last)) => {
                last.truncate(last.trim_end().len());
                last.push_str("\n\n");
                last.push_str(text);
            }
            Some(Chunk::Thinking(_)) => self.0.push(Chunk::Text(text.to_string())),
            None => return System::text(Some(text)),
        }
        self
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn chunks(&self) -> &[Chunk] {
        &self.0
    }

    /// Whether the prompt shows the model how to think.
    pub fn reasons(&self) -> bool {
        self.0.iter().any(|c| matches!(c, Chunk::Thinking(_)))
    }

    /// The prompt as one text, for the formats that put it inside a user's
    /// turn (V1, V3), which have no thinking to show.
    pub(super) fn plain(&self) -> anyhow::Result<Option<String>> {
        let mut text = String::new();
        for chunk in &self.0 {
            match chunk {
                Chunk::Text(t) => text.push_str(t),
                Chunk::Thinking(_) => return Err(no_thinking()),
            }
        }
        Ok(Some(text).filter(|t| !t.is_empty()))
    }
}

pub(super) fn no_thinking() -> anyhow::Error {
    Failure::Usage.err(
        "the system prompt shows thinking ([THINK]), which only a model that reasons (the V13 format) can read; use --think off or a plain --system",
    )
}

/// The default system prompt a chat template sets when the conversation has
/// none (`{% set default_system_message = '…' %}`, or a `{% set … %}…{%
/// endset %}` block), where it is a constant; `None` when the template has
/// none or builds it (dates and the like).
pub fn default_system(template: &str) -> Option<String> {
    const NAME: &str = "default_system_message";
    let at = template.find(&format!("set {NAME}"))?;
    let rest = template[at + 4 + NAME.len()..].trim_start();
    if let Some(literal) = rest.strip_prefix('=') {
        let (value, after) = string_literal(literal.trim_start())?;
        let after = after.trim_start();
        return (after.starts_with("%}") || after.starts_with("-%}")).then_some(value);
    }
    // The block form: everything up to the closing tag, as written.
    let body = rest
        .strip_prefix("-%}")
        .or_else(|| rest.strip_prefix("%}"))?;
    let end = body.find("{%")?;
    let closing = body[end + 2..].trim_start_matches('-').trim_start();
    if !closing.starts_with("endset") || body[..end].contains("{{") {
        return None;
    }
    let value = &body[..end];
    // `-%}` and `{%-` strip the whitespace beside them.
    let value = if rest.starts_with("-%}") {
        value.trim_start()
    } else {
        value
    };
    let value = if body[end..].starts_with("{%-") {
        value.trim_end()
    } else {
        value
    };
    Some(value.to_string())
}

/// A Jinja string literal at the start of `text` (Python's escapes), and
/// what follows it.
fn string_literal(text: &str) -> Option<(String, &str)> {
    let quote = text.chars().next().filter(|c| *c == '\'' || *c == '"')?;
    let mut value = String::new();
    let mut chars = text[1..].char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => {
                let (_, escaped) = chars.next()?;
                value.push(match escaped {
                    'n' => '\n',
                    't' => '\t',
                    'r' => '\r',
                    other => other,
                });
            }
            c if c == quote => return Some((value, &text[1 + i + 1..])),
            c => value.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reasoning_prompt_shows_its_thinking_between_the_tokens() {
        let p = System::reasoning("Think first.[THINK]scratch[/THINK]Then answer.").unwrap();
        assert_eq!(
            p.chunks(),
            [
                Chunk::Text("Think first.".into()),
                Chunk::Thinking("scratch".into()),
                Chunk::Text("Then answer.".into())
            ]
        );
        assert!(p.reasons());
        assert_eq!(System::reasoning("no thinking here"), None);
        assert_eq!(System::reasoning("[/THINK] before [THINK]"), None);
        // The user's prompt follows the model's, after a blank line.
        let with = p.clone().then(Some("Be brief."));
        assert_eq!(
            with.chunks()[2],
            Chunk::Text("Then answer.\n\nBe brief.".into())
        );
        assert_eq!(p.clone().then(None), p);
        let ends_thinking = System::reasoning("a[THINK]b[/THINK]").unwrap();
        assert_eq!(
            ends_thinking.then(Some("c")).chunks().last(),
            Some(&Chunk::Text("c".into()))
        );
        assert_eq!(System::default().then(Some("x")), System::text(Some("x")));
        assert!(System::text(Some("")).is_empty());
    }

    #[test]
    fn only_plain_prompts_join_a_users_turn() {
        assert_eq!(
            System::text(Some("s")).plain().unwrap().as_deref(),
            Some("s")
        );
        assert_eq!(System::default().plain().unwrap(), None);
        let p = System::reasoning("a[THINK]b[/THINK]c").unwrap();
        assert!(p.plain().is_err());
    }

    #[test]
    fn a_templates_constant_default_is_read() {
        let quoted = r#"{#- Default #}
{%- set default_system_message = 'Draft first.\n\nIt\'s [THINK]scratch[/THINK]then "answer".' %}
{{- bos_token }}"#;
        assert_eq!(
            default_system(quoted).as_deref(),
            Some("Draft first.\n\nIt's [THINK]scratch[/THINK]then \"answer\".")
        );
        let double = r#"{%- set default_system_message = "a\"b" -%}"#;
        assert_eq!(default_system(double).as_deref(), Some("a\"b"));
        let block = "{%- set default_system_message -%}\nLine one.\nLine two.\n{%- endset %}";
        assert_eq!(
            default_system(block).as_deref(),
            Some("Line one.\nLine two.")
        );
        // Built from the date, or absent: no constant to read.
        let built = r#"{%- set default_system_message = "Today is " + today + "." %}"#;
        assert_eq!(default_system(built), None);
        let dated = "{%- set default_system_message -%}The date is {{ today }}.{%- endset %}";
        assert_eq!(default_system(dated), None);
        assert_eq!(default_system("{{ bos_token }}"), None);
        assert_eq!(
            default_system("{% set default_system_message = 'open"),
            None
        );
    }
}
