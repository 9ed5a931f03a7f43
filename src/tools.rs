//! Function calling, as Mistral's instruct formats carry it: the reply is
//! either text, or the `[TOOL_CALLS]` control token followed by a JSON list
//! of calls (`[{"name": "f", "arguments": {...}}]`), then EOS.
//!
//! A call is made valid by construction: the reply follows a grammar in
//! which the list can only name declared functions, and each one's
//! arguments are a JSON value its schema allows (the same llguidance
//! constraint as `--json-schema`). Whether the model may, must or must not
//! call, and which function, is a choice between the grammar's branches.
//! The ids of calls are greve's to give, nine letters and digits as
//! mistral-common requires of the v0.3 and NeMo formats. Plain functions
//! over plain data: the model only sees the grammar.

use std::str::FromStr;

use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::structured::{self, Format};
use crate::template::{Instruct, Tool, ToolCall};
use crate::tokenizer::Tokenizer;

/// Whether the reply may, must, or must not call a function.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Choice {
    /// Text only: the tools are announced, never called.
    None,
    /// Text, or calls: the model decides.
    #[default]
    Auto,
    /// One call or more, to any of the tools.
    Required,
    /// One call to this function.
    Named(String),
}

impl FromStr for Choice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "none" => Choice::None,
            "auto" => Choice::Auto,
            "required" => Choice::Required,
            "" => return Err("none, auto, required or a function's name is expected".into()),
            name => Choice::Named(name.to_string()),
        })
    }
}

/// The functions a reply may call, and how.
#[derive(Clone, Debug, PartialEq)]
pub struct Tools {
    pub list: Vec<Tool>,
    pub choice: Choice,
    /// Several calls in one reply (`parallel_tool_calls`).
    pub parallel: bool,
}

impl Default for Tools {
    fn default() -> Self {
        Tools {
            list: Vec::new(),
            choice: Choice::Auto,
            parallel: true,
        }
    }
}

/// Why a set of tools cannot be honoured, for the caller to name the
/// fault as its interface does (a flag, a request's field).
#[derive(Debug, PartialEq)]
pub enum Fault {
    /// The choice names no declared function, or requires one of none.
    Choice(String),
    /// The schema of the `tool`th function's arguments.
    Schema { tool: usize, why: String },
}

impl Tools {
    /// Whether the reply may be a call.
    pub fn may_call(&self) -> bool {
        !self.list.is_empty() && self.choice != Choice::None
    }

    /// Whether the reply must be a call.
    pub fn must_call(&self) -> bool {
        matches!(self.choice, Choice::Required | Choice::Named(_))
    }

    /// Checks that the choice can be honoured with these tools, and that
    /// every schema of arguments can be enforced.
    pub fn check(&self) -> Result<(), Fault> {
        match &self.choice {
            Choice::Required if self.list.is_empty() => {
                return Err(Fault::Choice("\"required\" needs tools to call".into()))
            }
            Choice::Named(name) if !self.list.iter().any(|t| &t.name == name) => {
                let name = crate::messages::short(name);
                return Err(Fault::Choice(format!("{name} is not one of the tools")));
            }
            _ => {}
        }
        for (tool, t) in self.list.iter().enumerate() {
            let schema = Format::Schema(arguments_schema(&t.parameters));
            structured::check(&schema).map_err(|e| Fault::Schema {
                tool,
                why: format!("the schema cannot be enforced: {e}"),
            })?;
        }
        Ok(())
    }

    /// The shape of a reply that may call these tools, after its thinking
    /// where the model thinks: a grammar whose branches are `format` (the
    /// text alternative, when calls are not required) and the calls, in
    /// the syntax of the model's format. `format` as it is when nothing
    /// needs combining; a Lark grammar cannot be combined.
    pub fn reply_format(&self, format: &Format, markers: &Markers) -> Result<Format, String> {
        let calls = markers.calls.filter(|_| !self.list.is_empty());
        let think = markers
            .think
            .filter(|_| *format != Format::Text || calls.is_some());
        if calls.is_none() && think.is_none() {
            return Ok(format.clone());
        }
        let text = match format {
            Format::Text => "TEXT\nTEXT: /(.|\\n)+/".to_string(),
            Format::Json => json_rule(&json!({"type": "object"})),
            Format::Schema(schema) => json_rule(schema),
            Format::Lark(_) if calls.is_some() => {
                return Err("a grammar cannot be combined with tools; give one or the other".into())
            }
            Format::Lark(_) => return Ok(format.clone()),
        };
        let answer = match (calls, &self.choice) {
            (None, _) | (_, Choice::None) => "text",
            (Some(_), Choice::Auto) => "calls | text",
            (Some(_), Choice::Required | Choice::Named(_)) => "calls",
        };
        // The model may think first; what follows its thinking is held.
        let mut grammar = match think {
            Some((open, close)) => format!(
                "start: thinking? answer\nthinking: <[{open}]> THOUGHT? <[{close}]>\nTHOUGHT: /(.|\\n)+/\nanswer: {answer}\n"
            ),
            None => format!("start: {answer}\n"),
        };
        grammar += &format!("text: {text}\n");
        if let Some(calls) = calls {
            grammar += &self.calls_grammar(calls, markers.args);
        }
        Ok(Format::Lark(grammar))
    }

    /// The rules of the calls: V3 and V7 write the calls token, then a JSON
    /// list of `{"name", "arguments"}`; V11 and V13 the calls token, the
    /// name, `[ARGS]` and the arguments, for each call.
    fn calls_grammar(&self, calls_token: u32, args_token: Option<u32>) -> String {
        let functions: Vec<&Tool> = match &self.choice {
            Choice::Named(name) => self.list.iter().filter(|t| &t.name == name).collect(),
            _ => self.list.iter().collect(),
        };
        let several = self.parallel && matches!(self.choice, Choice::Required | Choice::Auto);
        let alternatives = (0..functions.len())
            .map(|i| format!("call_{i}"))
            .collect::<Vec<_>>()
            .join(" | ");
        let mut grammar = match (args_token, several) {
            // SentencePiece puts a space before the list, Tekken does not.
            (None, true) => {
                format!("calls: <[{calls_token}]> \" \"? \"[\" call (\", \" call)* \"]\"\n")
            }
            (None, false) => format!("calls: <[{calls_token}]> \" \"? \"[\" call \"]\"\n"),
            (Some(_), true) => format!("calls: (<[{calls_token}]> call)+\n"),
            (Some(_), false) => format!("calls: <[{calls_token}]> call\n"),
        };
        grammar += &format!("call: {alternatives}\n");
        for (i, tool) in functions.iter().enumerate() {
            // Names are letters, digits, `_` and `-`: nothing to escape.
            let name = &tool.name;
            grammar += &match args_token {
                None => format!(
                    "call_{i}: \"{{\\\"name\\\": \\\"{name}\\\", \\\"arguments\\\": \" args_{i} \"}}\"\n"
                ),
                Some(args) => format!("call_{i}: \"{name}\" <[{args}]> args_{i}\n"),
            };
            grammar += &format!(
                "args_{i}: {}\n",
                json_rule(&arguments_schema(&tool.parameters))
            );
        }
        grammar
    }
}

/// The control tokens a reply's grammar writes, from the vocabulary.
#[derive(Clone, Copy, Debug, Default)]
pub struct Markers {
    /// `[TOOL_CALLS]`, where the model can call.
    pub calls: Option<u32>,
    /// `[ARGS]`, in the formats that name each call (V11, V13).
    pub args: Option<u32>,
    /// `[THINK]` and `[/THINK]`, where the model thinks.
    pub think: Option<(u32, u32)>,
}

impl Markers {
    pub fn of(tokenizer: &Tokenizer) -> Self {
        let named = matches!(tokenizer.format(), Instruct::V11 | Instruct::V13);
        Markers {
            calls: tokenizer.tool_calls_token(),
            args: tokenizer.args_token().filter(|_| named),
            think: tokenizer
                .think_tokens()
                .filter(|_| tokenizer.format() == Instruct::V13),
        }
    }
}

/// A tool's `parameters` as the schema of its arguments: an object, which
/// is what Mistral's format writes, whatever the schema leaves open.
fn arguments_schema(parameters: &Value) -> Value {
    let mut schema = parameters.clone();
    if let Some(object) = schema.as_object_mut() {
        object.entry("type").or_insert("object".into());
    }
    schema
}

/// A JSON schema inlined in a Lark grammar, with greve's spacing.
fn json_rule(schema: &Value) -> String {
    let mut schema = schema.clone();
    structured::with_spacing(&mut schema);
    format!("%json {schema}")
}

/// The calls of a reply that began with the calls token: `ids` are what
/// follows it (the grammar made sure of their shape). Each call gets an id
/// drawn from `seed`, so that a reply reproduced with its seed has the
/// same ids.
pub fn read_calls(tokenizer: &Tokenizer, ids: &[u32], seed: u64) -> Result<Vec<ToolCall>, String> {
    let decode = |ids: &[u32]| tokenizer.decode(ids).map_err(|e| format!("{e:#}"));
    let Some(args) = Markers::of(tokenizer).args else {
        return parse_calls(&decode(ids)?, seed);
    };
    // V11 and V13: name [CALL_ID] id [ARGS] arguments, after each calls token.
    let calls = tokenizer.tool_calls_token();
    let mut list = Vec::new();
    for call in ids.split(|&id| Some(id) == calls) {
        let Some(at) = call.iter().position(|&id| id == args) else {
            return Err(format!(
                "a tool call without arguments: {}",
                crate::messages::short(&decode(call)?)
            ));
        };
        let name = &call[..at];
        let name = match name
            .iter()
            .position(|&id| Some(id) == tokenizer.call_id_token())
        {
            Some(end) => &name[..end],
            None => name,
        };
        let arguments: Value = serde_json::from_str(decode(&call[at + 1..])?.trim())
            .map_err(|e| format!("the model's tool call arguments are not JSON: {e}"))?;
        list.push(json!({"name": decode(name)?.trim(), "arguments": arguments}));
    }
    with_ids(&list, seed)
}

/// The calls of a V3 or V7 reply: `text` after the calls token, a JSON
/// list of `{"name", "arguments"}`.
pub fn parse_calls(text: &str, seed: u64) -> Result<Vec<ToolCall>, String> {
    let list: Vec<Value> = serde_json::from_str(text.trim())
        .map_err(|e| format!("the model's tool calls are not a JSON list: {e}"))?;
    with_ids(&list, seed)
}

fn with_ids(list: &[Value], seed: u64) -> Result<Vec<ToolCall>, String> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x746f_6f6c_5f69_6473);
    list.iter()
        .map(|call| {
            let name = call.get("name").and_then(Value::as_str);
            let arguments = call.get("arguments").filter(|a| a.is_object());
            match (name, arguments) {
                (Some(name), Some(arguments)) => Ok(ToolCall {
                    id: call_id(&mut rng),
                    name: name.to_string(),
                    arguments: arguments.to_string(),
                }),
                _ => Err(format!(
                    "a tool call without a name or arguments: {}",
                    crate::messages::short(&call.to_string())
                )),
            }
        })
        .collect()
}

/// Nine letters and digits: the only ids mistral-common accepts in the
/// v0.3 and NeMo formats.
fn call_id(rng: &mut impl Rng) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    (0..9)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(name: &str, parameters: Value) -> Tool {
        Tool {
            name: name.into(),
            description: String::new(),
            parameters,
        }
    }

    fn v7(calls: u32) -> Markers {
        Markers {
            calls: Some(calls),
            ..Markers::default()
        }
    }

    fn meteo() -> Tools {
        let city = json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]});
        Tools {
            list: vec![tool("meteo", city), tool("heure", json!({}))],
            ..Tools::default()
        }
    }

    #[test]
    fn choices_are_read_and_checked_against_the_tools() {
        assert_eq!("auto".parse(), Ok(Choice::Auto));
        assert_eq!("meteo".parse(), Ok(Choice::Named("meteo".into())));
        assert!("".parse::<Choice>().is_err());
        let mut tools = meteo();
        assert_eq!(tools.check(), Ok(()));
        tools.choice = Choice::Named("pluie".into());
        assert!(matches!(tools.check(), Err(Fault::Choice(_))));
        tools.choice = Choice::Required;
        tools.list[1].parameters = json!({"type": "array", "uniqueItems": true});
        let Err(Fault::Schema { tool: 1, why }) = tools.check() else {
            panic!("the second tool's schema is at fault")
        };
        assert!(why.contains("uniqueItems"), "{why}");
        let none = Tools {
            choice: Choice::Required,
            ..Tools::default()
        };
        assert!(matches!(none.check(), Err(Fault::Choice(_))));
    }

    /// Every grammar compiles; a choice of none leaves out the calls, a
    /// named one the other functions, a required one the text.
    #[test]
    fn grammars_follow_the_choice() {
        let mut tools = meteo();
        for (choice, calls, text, heure) in [
            (Choice::Auto, true, true, true),
            (Choice::None, false, true, true),
            (Choice::Required, true, false, true),
            (Choice::Named("meteo".into()), true, false, false),
        ] {
            tools.choice = choice.clone();
            for format in [Format::Text, Format::Json] {
                let grammar = tools.reply_format(&format, &v7(5)).unwrap();
                assert_eq!(structured::check(&grammar), Ok(()), "{choice:?}");
                let Format::Lark(lark) = grammar else {
                    panic!("{grammar:?}")
                };
                let start = lark.lines().next().unwrap();
                assert_eq!(start.contains("calls"), calls, "{start}");
                assert_eq!(start.contains("text"), text, "{start}");
                assert_eq!(lark.contains("heure"), heure, "{lark}");
            }
        }
        assert_eq!(
            Tools::default().reply_format(&Format::Json, &v7(5)),
            Ok(Format::Json)
        );
        assert!(meteo()
            .reply_format(&Format::Lark("start: \"a\"".into()), &v7(5))
            .is_err());
    }

    #[test]
    fn calls_are_read_with_ids_drawn_from_the_seed() {
        let text = r#" [{"name": "meteo", "arguments": {"city": "Lyon"}}, {"name": "heure", "arguments": {}}]"#;
        let calls = parse_calls(text, 7).unwrap();
        assert_eq!(calls.len(), 2);
        assert_eq!(
            (calls[0].name.as_str(), calls[0].arguments.as_str()),
            ("meteo", r#"{"city":"Lyon"}"#)
        );
        for call in &calls {
            assert_eq!(call.id.len(), 9);
            assert!(call.id.chars().all(|c| c.is_ascii_alphanumeric()));
        }
        assert_ne!(calls[0].id, calls[1].id);
        assert_eq!(parse_calls(text, 7).unwrap(), calls);
        assert_ne!(parse_calls(text, 8).unwrap()[0].id, calls[0].id);
        assert!(parse_calls("[{\"name\": \"meteo\"}]", 7).is_err());
        assert!(parse_calls("meteo", 7).is_err());
    }
}
