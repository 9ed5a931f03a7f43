//! Mistral's instruct prompt format, exactly as `mistral-common` encodes it.
//!
//! A conversation becomes a list of [`Piece`]s: control tokens and text spans.
//! The tokenizer turns each text span into ids on its own (with
//! SentencePiece's dummy-prefix space, as `mistral-common` does), so this file
//! knows nothing of vocabularies and is tested on plain data. Two formats cover
//! the Apache-2.0 Mistral 7B releases, a third the later ones (mistral-common
//! 1.x, `tokens/tokenizers/instruct.py`):
//!
//! * **V1** (v0.1, v0.2): `[INST]` and `[/INST]` are ordinary text, a user turn is
//!   the one span `"[INST] {text} [/INST]"`, and the system prompt is put in
//!   front of the *first* user message.
//! * **V3** (v0.3): `[INST]`/`[/INST]` are control tokens around the user text,
//!   the system prompt goes in front of the *last* user message, and assistant
//!   replies lose their trailing spaces. NeMo's Tekken vocabulary uses it
//!   too (byte-level pieces: no dummy-prefix space, which is the tokenizer's
//!   business, not this file's).
//! * **V7** (Mistral Small 3.x): as V3, but the system prompt stands alone
//!   after BOS, between `[SYSTEM_PROMPT]` and `[/SYSTEM_PROMPT]` control
//!   tokens.
//!
//! All start with exactly one BOS and close every assistant reply with EOS.

use crate::exit::Failure;

/// Which instruct format a model was trained on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    V1,
    V3,
    V7,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

impl Message {
    pub fn user(content: impl Into<String>) -> Self {
        Message {
            role: Role::User,
            content: content.into(),
        }
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        Message {
            role: Role::Assistant,
            content: content.into(),
        }
    }
}

/// One unit of a rendered prompt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    Bos,
    Eos,
    BeginInst,
    EndInst,
    BeginSystem,
    EndSystem,
    /// Text encoded on its own, as one SentencePiece call.
    Text(String),
}

/// Renders a conversation that ends with the user's turn, ready for the model
/// to answer. Messages must alternate, starting and ending with the user.
pub fn render(
    format: Format,
    system: Option<&str>,
    messages: &[Message],
) -> anyhow::Result<Vec<Piece>> {
    if messages.len().is_multiple_of(2) && !messages.is_empty() {
        return Err(Failure::Usage
            .err("the conversation ends with the assistant: add a user message for it to answer"));
    }
    render_conversation(format, system, messages)
}

/// Renders any alternating conversation starting with the user; one that
/// ends with the assistant ends with EOS, as `mistral-common` encodes it.
pub fn render_conversation(
    format: Format,
    system: Option<&str>,
    messages: &[Message],
) -> anyhow::Result<Vec<Piece>> {
    check_alternation(messages)?;
    let system = system.filter(|s| !s.is_empty());
    let users: Vec<usize> = (0..messages.len())
        .filter(|&i| messages[i].role == Role::User)
        .collect();
    // V1 puts the system prompt in the first user turn, V3 in the last one,
    // V7 before every turn.
    let system_turn = match format {
        Format::V1 => users.first(),
        Format::V3 => users.last(),
        Format::V7 => None,
    }
    .copied();

    let mut pieces = vec![Piece::Bos];
    if let (Format::V7, Some(system)) = (format, system) {
        pieces.push(Piece::BeginSystem);
        pieces.push(Piece::Text(system.to_string()));
        pieces.push(Piece::EndSystem);
    }
    for (i, message) in messages.iter().enumerate() {
        match message.role {
            Role::User => {
                let text = match system {
                    Some(system) if Some(i) == system_turn => {
                        format!("{system}\n\n{}", message.content)
                    }
                    _ => message.content.clone(),
                };
                match format {
                    Format::V1 => pieces.push(Piece::Text(format!("[INST] {text} [/INST]"))),
                    Format::V3 | Format::V7 => {
                        pieces.push(Piece::BeginInst);
                        pieces.push(Piece::Text(text));
                        pieces.push(Piece::EndInst);
                    }
                }
            }
            Role::Assistant => {
                let text = match format {
                    Format::V1 => message.content.as_str(),
                    Format::V3 | Format::V7 => message.content.trim_end_matches(' '),
                };
                pieces.push(Piece::Text(text.to_string()));
                pieces.push(Piece::Eos);
            }
        }
    }
    Ok(pieces)
}

fn check_alternation(messages: &[Message]) -> anyhow::Result<()> {
    if messages.is_empty() {
        return Err(Failure::Usage.err("the conversation has no message to answer"));
    }
    check_turns(messages)?;
    if let Some(i) = messages.iter().position(|m| m.content.is_empty()) {
        return Err(Failure::Usage.err(format!("message {} is empty", i + 1)));
    }
    Ok(())
}

/// Turns alternate, starting with the user, as Mistral's format requires.
pub fn check_turns(messages: &[Message]) -> anyhow::Result<()> {
    for (i, message) in messages.iter().enumerate() {
        let expected = if i % 2 == 0 {
            Role::User
        } else {
            Role::Assistant
        };
        if message.role != expected {
            return Err(Failure::Usage.err(format!(
                "message {} is from the {:?} but the {:?} should speak: turns must alternate, starting with the user",
                i + 1,
                message.role,
                expected
            )));
        }
    }
    Ok(())
}

/// The prompt as text, control tokens spelled out, for `--verbose-prompt`.
pub fn to_text(pieces: &[Piece]) -> String {
    pieces
        .iter()
        .map(|p| match p {
            Piece::Bos => "<s>",
            Piece::Eos => "</s>",
            Piece::BeginInst => "[INST]",
            Piece::EndInst => "[/INST]",
            Piece::BeginSystem => "[SYSTEM_PROMPT]",
            Piece::EndSystem => "[/SYSTEM_PROMPT]",
            Piece::Text(t) => t.as_str(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Piece {
        Piece::Text(s.to_string())
    }

    #[test]
    fn v1_puts_the_system_prompt_in_the_first_turn() {
        let messages = [
            Message::user("a"),
            Message::assistant("b "),
            Message::user("c"),
        ];
        let pieces = render(Format::V1, Some("sys"), &messages).unwrap();
        assert_eq!(
            pieces,
            vec![
                Piece::Bos,
                text("[INST] sys\n\na [/INST]"),
                text("b "),
                Piece::Eos,
                text("[INST] c [/INST]"),
            ]
        );
    }

    #[test]
    fn v3_puts_the_system_prompt_in_the_last_turn_and_trims_replies() {
        let messages = [
            Message::user("a"),
            Message::assistant("b  "),
            Message::user("c"),
        ];
        let pieces = render(Format::V3, Some("sys"), &messages).unwrap();
        assert_eq!(
            pieces,
            vec![
                Piece::Bos,
                Piece::BeginInst,
                text("a"),
                Piece::EndInst,
                text("b"),
                Piece::Eos,
                Piece::BeginInst,
                text("sys\n\nc"),
                Piece::EndInst,
            ]
        );
    }

    #[test]
    fn v7_puts_the_system_prompt_alone_before_the_turns() {
        let messages = [
            Message::user("Bonjour"),
            Message::assistant("Salut !  "),
            Message::user("Et ensuite ?"),
        ];
        let pieces = render(Format::V7, Some("Sois bref."), &messages).unwrap();
        // mistral-common 1.13.1, InstructTokenizerV7.
        assert_eq!(
            to_text(&pieces),
            "<s>[SYSTEM_PROMPT]Sois bref.[/SYSTEM_PROMPT][INST]Bonjour[/INST]Salut !</s>[INST]Et ensuite ?[/INST]"
        );
        assert_eq!(pieces[1], Piece::BeginSystem);
        let without = render(Format::V7, None, &messages).unwrap();
        assert_eq!(without[1], Piece::BeginInst);
    }

    #[test]
    fn an_empty_system_prompt_is_no_system_prompt() {
        let messages = [Message::user("a")];
        assert_eq!(
            render(Format::V1, Some(""), &messages).unwrap(),
            render(Format::V1, None, &messages).unwrap()
        );
    }

    #[test]
    fn turns_must_alternate_and_end_with_the_user() {
        assert!(render(Format::V1, None, &[]).is_err());
        assert!(render(Format::V1, None, &[Message::assistant("x")]).is_err());
        assert!(render(Format::V1, None, &[Message::user("x"), Message::user("y")]).is_err());
        assert!(render(
            Format::V1,
            None,
            &[Message::user("x"), Message::assistant("y")]
        )
        .is_err());
        assert!(render(Format::V1, None, &[Message::user("")]).is_err());
    }

    #[test]
    fn text_form_spells_out_control_tokens() {
        let pieces = render(Format::V3, None, &[Message::user("hi")]).unwrap();
        assert_eq!(to_text(&pieces), "<s>[INST]hi[/INST]");
    }
}
