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
//! * **V11** (Small 3.2, Magistral Small 1.1): as V7, but each call is its
//!   own `[TOOL_CALLS]name[CALL_ID]id[ARGS]{arguments}`.
//! * **V13** (Magistral Small 1.2, Devstral Small 2, Ministral 3): calls
//!   without ids, results without them, the tools before the *first* user
//!   message (so that a long chat keeps one prefix), and an assistant's
//!   thinking between `[THINK]` and `[/THINK]`.
//!
//! All start with exactly one BOS and close every assistant reply with EOS.

use crate::exit::Failure;

mod json;
mod system;

pub use json::python_json;
use json::{calls_json, json_or_text, tools_json};
pub use system::{default_system, Chunk, System};

/// Which instruct format a model was trained on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Instruct {
    V1,
    V3,
    V7,
    V11,
    V13,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
    /// A tool's result, answering an assistant's call.
    Tool,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
    /// An assistant's calls to tools (its content then empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// A tool message's: the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// An assistant's thinking before its answer or calls. Only V13 shows
    /// it to the model; older formats have no place for it and leave it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<String>,
}

/// A call the model made to a tool.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// A JSON object, as text.
    pub arguments: String,
}

/// A function the model may call.
#[derive(Clone, Debug, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: String,
    /// A JSON schema of its arguments.
    pub parameters: serde_json::Value,
}

impl Message {
    pub fn user(content: impl Into<String>) -> Self {
        Self::new(Role::User, content)
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new(Role::Assistant, content)
    }

    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Message {
            role,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
            reasoning: None,
        }
    }
}

/// The instruct format of a vocabulary: V1 spells `[INST]` out as text, V3
/// has it as a control token, V7 also `[SYSTEM_PROMPT]`. NeMo's Tekken
/// vocabulary (V3) has `[SYSTEM_PROMPT]` too, unused, so where the tokens do
/// not settle it the chat template does (`tokenizer_config.json`, GGUF
/// `tokenizer.chat_template`); with no template, only Mistral's V7
/// SentencePiece vocabulary has the token and uses it. A V7 template that
/// writes `[ARGS]` is V11 when it also writes call ids, else V13.
pub fn instruct_format(
    inst: bool,
    system_tokens: bool,
    byte_level: bool,
    template: Option<&str>,
) -> Instruct {
    match (inst, system_tokens, template) {
        (false, _, _) => Instruct::V1,
        (true, false, _) => Instruct::V3,
        (true, true, Some(t)) if t.contains("[SYSTEM_PROMPT]") && t.contains("[ARGS]") => {
            if t.contains("[CALL_ID]") {
                Instruct::V11
            } else {
                Instruct::V13
            }
        }
        (true, true, Some(t)) if t.contains("[SYSTEM_PROMPT]") => Instruct::V7,
        (true, true, Some(_)) => Instruct::V3,
        (true, true, None) if byte_level => Instruct::V3,
        (true, true, None) => Instruct::V7,
    }
}

impl Instruct {
    /// Whether the system prompt stands alone after BOS (V7 on).
    pub fn system_alone(self) -> bool {
        matches!(self, Instruct::V7 | Instruct::V11 | Instruct::V13)
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
    BeginTools,
    EndTools,
    ToolCalls,
    /// V11: before a call's id.
    CallId,
    /// V11, V13: between a call's name and its arguments.
    Args,
    BeginToolResults,
    /// V7: between a result's call id and its content.
    BeginToolContent,
    EndToolResults,
    BeginThink,
    EndThink,
    /// Text encoded on its own, as one SentencePiece call.
    Text(String),
}

/// Renders a conversation that ends with the user's turn, ready for the model
/// to answer. Messages must alternate, starting and ending with the user.
pub fn render(
    format: Instruct,
    system: &System,
    messages: &[Message],
) -> anyhow::Result<Vec<Piece>> {
    render_with_tools(format, system, &[], messages)
}

/// Renders a conversation for the model to answer: one that ends with the
/// user's turn or with tools' results, the tools it may call announced.
pub fn render_with_tools(
    format: Instruct,
    system: &System,
    tools: &[Tool],
    messages: &[Message],
) -> anyhow::Result<Vec<Piece>> {
    if messages.last().is_some_and(|m| m.role == Role::Assistant) {
        return Err(Failure::Usage
            .err("the conversation ends with the assistant: add a user message for it to answer"));
    }
    pieces(format, system, tools, messages)
}

/// Renders any alternating conversation starting with the user; one that
/// ends with the assistant ends with EOS, as `mistral-common` encodes it.
pub fn render_conversation(
    format: Instruct,
    system: &System,
    tools: &[Tool],
    messages: &[Message],
) -> anyhow::Result<Vec<Piece>> {
    pieces(format, system, tools, messages)
}

fn pieces(
    format: Instruct,
    system: &System,
    tools: &[Tool],
    messages: &[Message],
) -> anyhow::Result<Vec<Piece>> {
    check_alternation(messages)?;
    let calls = messages.iter().any(|m| m.role == Role::Tool);
    if (calls || !tools.is_empty()) && format == Instruct::V1 {
        return Err(Failure::Usage.err(
            "tools: Mistral 7B v0.1 and v0.2 have no tool tokens in their format; function calling needs v0.3, NeMo or Small 3.x",
        ));
    }
    // V7 on write an assistant's text before its calls; V3 has no room for both.
    let both = |m: &Message| !m.content.is_empty() && !m.tool_calls.is_empty();
    if let (Instruct::V3, Some(i)) = (format, messages.iter().position(both)) {
        return Err(Failure::Usage.err(format!(
            "message {} has both text and tool calls, which this model's format (V3) cannot carry in one turn",
            i + 1
        )));
    }
    if system.reasons() && format != Instruct::V13 {
        return Err(system::no_thinking());
    }
    // V1 and V3 put it inside a user's turn, as text.
    let merged = match format.system_alone() {
        true => None,
        false => system.plain()?,
    };
    let users: Vec<usize> = (0..messages.len())
        .filter(|&i| messages[i].role == Role::User)
        .collect();
    // V1 puts the system prompt in the first user turn, V3 in the last one
    // (with the tools), V7 on before every turn.
    let system_turn = match format {
        Instruct::V1 => users.first(),
        Instruct::V3 => users.last(),
        Instruct::V7 | Instruct::V11 | Instruct::V13 => None,
    }
    .copied();
    let tools_turn = match format {
        Instruct::V13 => users.first(),
        _ => users.last(),
    }
    .copied();

    let mut pieces = vec![Piece::Bos];
    if format.system_alone() && !system.is_empty() {
        pieces.push(Piece::BeginSystem);
        for chunk in system.chunks() {
            match chunk {
                Chunk::Text(text) => pieces.push(Piece::Text(text.clone())),
                Chunk::Thinking(text) => {
                    pieces.push(Piece::BeginThink);
                    pieces.push(Piece::Text(text.clone()));
                    pieces.push(Piece::EndThink);
                }
            }
        }
        pieces.push(Piece::EndSystem);
    }
    for (i, message) in messages.iter().enumerate() {
        match message.role {
            Role::User => {
                if tools_turn == Some(i) && !tools.is_empty() {
                    pieces.push(Piece::BeginTools);
                    pieces.push(Piece::Text(tools_json(tools)));
                    pieces.push(Piece::EndTools);
                }
                let text = match &merged {
                    Some(system) if Some(i) == system_turn => {
                        format!("{system}\n\n{}", message.content)
                    }
                    _ => message.content.clone(),
                };
                match format {
                    Instruct::V1 => pieces.push(Piece::Text(format!("[INST] {text} [/INST]"))),
                    _ => {
                        pieces.push(Piece::BeginInst);
                        pieces.push(Piece::Text(text));
                        pieces.push(Piece::EndInst);
                    }
                }
            }
            Role::Assistant => assistant(format, message, &mut pieces),
            Role::Tool if format == Instruct::V13 => {
                pieces.push(Piece::BeginToolResults);
                pieces.push(Piece::Text(message.content.clone()));
                pieces.push(Piece::EndToolResults);
            }
            Role::Tool if format.system_alone() => {
                pieces.push(Piece::BeginToolResults);
                let id = message.tool_call_id.as_deref().unwrap_or("");
                pieces.push(Piece::Text(id.to_string()));
                pieces.push(Piece::BeginToolContent);
                pieces.push(Piece::Text(message.content.clone()));
                pieces.push(Piece::EndToolResults);
            }
            Role::Tool => {
                let result = serde_json::json!({
                    "content": json_or_text(&message.content),
                    "call_id": message.tool_call_id.as_deref().unwrap_or(""),
                });
                pieces.push(Piece::BeginToolResults);
                pieces.push(Piece::Text(python_json(&result)));
                pieces.push(Piece::EndToolResults);
            }
        }
    }
    Ok(pieces)
}

/// An assistant's turn: its thinking (V13), its text, its calls, EOS.
fn assistant(format: Instruct, message: &Message, pieces: &mut Vec<Piece>) {
    let thinking = message
        .reasoning
        .as_ref()
        .filter(|_| format == Instruct::V13);
    if let Some(thinking) = thinking {
        pieces.push(Piece::BeginThink);
        pieces.push(Piece::Text(thinking.clone()));
        pieces.push(Piece::EndThink);
    }
    // mistral-common trims the spaces that end a plain reply, not those of
    // the text after thinking (a list of chunks to it).
    let text = match (format, thinking) {
        (Instruct::V1, _) | (_, Some(_)) => message.content.as_str(),
        _ => message.content.trim_end_matches(' '),
    };
    // A reply that calls tools may say nothing first; a plain one always
    // has its text, which an older format's thinking alone may leave empty.
    if !text.is_empty() || (message.tool_calls.is_empty() && thinking.is_none()) {
        pieces.push(Piece::Text(text.to_string()));
    }
    if !message.tool_calls.is_empty() {
        match format {
            Instruct::V11 | Instruct::V13 => {
                for call in &message.tool_calls {
                    pieces.push(Piece::ToolCalls);
                    pieces.push(Piece::Text(call.name.clone()));
                    if format == Instruct::V11 && !call.id.is_empty() && call.id != "null" {
                        pieces.push(Piece::CallId);
                        pieces.push(Piece::Text(call.id.clone()));
                    }
                    pieces.push(Piece::Args);
                    pieces.push(Piece::Text(python_json(&json_or_text(&call.arguments))));
                }
            }
            _ => {
                pieces.push(Piece::ToolCalls);
                pieces.push(Piece::Text(calls_json(&message.tool_calls)));
            }
        }
    }
    pieces.push(Piece::Eos);
}

fn check_alternation(messages: &[Message]) -> anyhow::Result<()> {
    if messages.is_empty() {
        return Err(Failure::Usage.err("the conversation has no message to answer"));
    }
    check_turns(messages)?;
    let empty =
        |m: &Message| m.content.is_empty() && m.tool_calls.is_empty() && m.reasoning.is_none();
    if let Some(i) = messages.iter().position(empty) {
        return Err(Failure::Usage.err(format!("message {} is empty", i + 1)));
    }
    Ok(())
}

/// Turns alternate, starting with the user, as Mistral's format requires;
/// an assistant's tool calls are followed by the tools' results, then the
/// assistant again.
pub fn check_turns(messages: &[Message]) -> anyhow::Result<()> {
    let mut before: Option<(Role, bool)> = None;
    for (i, message) in messages.iter().enumerate() {
        let calls = !message.tool_calls.is_empty();
        let expected: &[Role] = match before {
            None | Some((Role::Assistant, false)) => &[Role::User],
            Some((Role::User, _)) => &[Role::Assistant],
            Some((Role::Assistant, true)) => &[Role::Tool],
            Some((Role::Tool, _)) => &[Role::Tool, Role::Assistant],
        };
        if !expected.contains(&message.role) || (calls && message.role != Role::Assistant) {
            let names: Vec<String> = expected.iter().map(|r| format!("{r:?}")).collect();
            return Err(Failure::Usage.err(format!(
                "message {} is from the {:?} but the {} should speak: turns must alternate, starting with the user (tool results after the assistant's calls)",
                i + 1,
                message.role,
                names.join(" or the ")
            )));
        }
        before = Some((message.role, calls));
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
            Piece::BeginTools => "[AVAILABLE_TOOLS]",
            Piece::EndTools => "[/AVAILABLE_TOOLS]",
            Piece::ToolCalls => "[TOOL_CALLS]",
            Piece::CallId => "[CALL_ID]",
            Piece::Args => "[ARGS]",
            Piece::BeginToolResults => "[TOOL_RESULTS]",
            Piece::BeginToolContent => "[TOOL_CONTENT]",
            Piece::EndToolResults => "[/TOOL_RESULTS]",
            Piece::BeginThink => "[THINK]",
            Piece::EndThink => "[/THINK]",
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
        let pieces = render(Instruct::V1, &System::text(Some("sys")), &messages).unwrap();
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
        let pieces = render(Instruct::V3, &System::text(Some("sys")), &messages).unwrap();
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
        let pieces = render(Instruct::V7, &System::text(Some("Sois bref.")), &messages).unwrap();
        // mistral-common 1.13.1, InstructTokenizerV7.
        assert_eq!(
            to_text(&pieces),
            "<s>[SYSTEM_PROMPT]Sois bref.[/SYSTEM_PROMPT][INST]Bonjour[/INST]Salut !</s>[INST]Et ensuite ?[/INST]"
        );
        assert_eq!(pieces[1], Piece::BeginSystem);
        let without = render(Instruct::V7, &System::default(), &messages).unwrap();
        assert_eq!(without[1], Piece::BeginInst);
    }

    #[test]
    fn an_empty_system_prompt_is_no_system_prompt() {
        let messages = [Message::user("a")];
        assert_eq!(
            render(Instruct::V1, &System::text(Some("")), &messages).unwrap(),
            render(Instruct::V1, &System::default(), &messages).unwrap()
        );
    }

    #[test]
    fn turns_must_alternate_and_end_with_the_user() {
        assert!(render(Instruct::V1, &System::default(), &[]).is_err());
        assert!(render(Instruct::V1, &System::default(), &[Message::assistant("x")]).is_err());
        assert!(render(
            Instruct::V1,
            &System::default(),
            &[Message::user("x"), Message::user("y")]
        )
        .is_err());
        assert!(render(
            Instruct::V1,
            &System::default(),
            &[Message::user("x"), Message::assistant("y")]
        )
        .is_err());
        assert!(render(Instruct::V1, &System::default(), &[Message::user("")]).is_err());
    }

    #[test]
    fn json_is_written_as_python_writes_it() {
        let value = serde_json::json!({"b": [1, 2.5, "é\n"], "a": {"x": null, "y": true}});
        assert_eq!(
            python_json(&value),
            r#"{"b": [1, 2.5, "é\n"], "a": {"x": null, "y": true}}"#
        );
    }

    #[test]
    fn tool_calls_and_results_take_their_turns() {
        let call = ToolCall {
            id: "abcDEF123".into(),
            name: "f".into(),
            arguments: "{\"x\": 1}".into(),
        };
        let calling = Message {
            tool_calls: vec![call],
            ..Message::assistant("")
        };
        let result = Message {
            tool_call_id: Some("abcDEF123".into()),
            ..Message::new(Role::Tool, "ok")
        };
        let good = [Message::user("a"), calling.clone(), result.clone()];
        assert!(check_turns(&good).is_ok());
        assert!(check_turns(&[Message::user("a"), calling.clone(), Message::user("b")]).is_err());
        assert!(check_turns(&[Message::user("a"), Message::assistant("b"), result]).is_err());
        let both = Message {
            content: "text".into(),
            ..calling
        };
        assert!(render_with_tools(
            Instruct::V3,
            &System::default(),
            &[],
            &[Message::user("a"), both]
        )
        .is_err());
    }

    #[test]
    fn only_v13_shows_the_model_its_thinking() {
        let thought = Message {
            reasoning: Some("hmm".into()),
            ..Message::assistant("4  ")
        };
        let messages = [Message::user("2+2"), thought, Message::user("3+3")];
        let v13 = render(Instruct::V13, &System::default(), &messages).unwrap();
        assert_eq!(
            to_text(&v13),
            "<s>[INST]2+2[/INST][THINK]hmm[/THINK]4  </s>[INST]3+3[/INST]"
        );
        let v7 = render(Instruct::V7, &System::default(), &messages).unwrap();
        assert_eq!(to_text(&v7), "<s>[INST]2+2[/INST]4</s>[INST]3+3[/INST]");
    }

    #[test]
    fn a_reasoning_prompt_shows_its_example_of_thinking() {
        let system = System::reasoning("Draft.[THINK]scratch[/THINK]Answer.").unwrap();
        let messages = [Message::user("hi")];
        let v13 = render(Instruct::V13, &system, &messages).unwrap();
        assert_eq!(
            to_text(&v13),
            "<s>[SYSTEM_PROMPT]Draft.[THINK]scratch[/THINK]Answer.[/SYSTEM_PROMPT][INST]hi[/INST]"
        );
        // Each chunk is its own span, as mistral-common encodes them.
        assert_eq!(v13[2], text("Draft."));
        for format in [Instruct::V1, Instruct::V3, Instruct::V7, Instruct::V11] {
            assert!(render(format, &system, &messages).is_err(), "{format:?}");
        }
    }

    #[test]
    fn text_form_spells_out_control_tokens() {
        let pieces = render(Instruct::V3, &System::default(), &[Message::user("hi")]).unwrap();
        assert_eq!(to_text(&pieces), "<s>[INST]hi[/INST]");
    }
}
