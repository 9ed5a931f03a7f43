//! Replies that are valid JSON (or follow a grammar) by construction: at each step only the
//! tokens that keep the reply a valid prefix of the language may be
//! sampled, and the end of the reply is allowed only once the value is
//! complete. The grammar engine is llguidance (as in mistral.rs and
//! llama.cpp); the token mask comes from greve's own vocabulary
//! ([`Tokenizer::token_bytes`]), so tokenizer.json and a vocabulary rebuilt
//! from GGUF behave alike.

use std::path::Path;
use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, TokEnv, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};
use serde_json::{json, Value};

use crate::exit::Failure;
use crate::tokenizer::Tokenizer;

/// The shape a reply must take.
#[derive(Clone, Debug, PartialEq)]
pub enum Format {
    /// Free text.
    Text,
    /// Any JSON object.
    Json,
    /// A JSON value the schema allows.
    Schema(Value),
    /// Text that a Lark grammar (llguidance's dialect) derives.
    Lark(String),
}

impl Format {
    pub fn name(&self) -> &'static str {
        match self {
            Format::Text => "text",
            Format::Json => "json",
            Format::Schema(_) => "schema",
            Format::Lark(_) => "grammar",
        }
    }

    /// The grammar llguidance compiles.
    fn grammar(&self) -> Option<TopLevelGrammar> {
        let mut schema = match self {
            Format::Text => return None,
            Format::Lark(grammar) => return Some(TopLevelGrammar::from_lark(grammar.clone())),
            Format::Json => json!({"type": "object"}),
            Format::Schema(schema) => schema.clone(),
        };
        with_spacing(&mut schema);
        Some(TopLevelGrammar::from_json_schema(schema))
    }
}

/// Unless the schema says otherwise (`x-guidance`), the JSON has a space
/// after each `,` and `:` and no other whitespace, as Python's `json.dumps`
/// writes it (and Mistral's tool calls): free whitespace lets a model pad a
/// reply forever.
pub fn with_spacing(schema: &mut Value) {
    if let Some(object) = schema.as_object_mut() {
        object.entry("x-guidance").or_insert(json!({
            "whitespace_flexible": false,
            "item_separator": ", ",
            "key_separator": ": ",
        }));
    }
}

/// A schema from its JSON text, checked (see [`check`]).
pub fn schema(text: &str) -> Result<Format, String> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| format!("the JSON schema is not JSON: {e}"))?;
    if !(value.is_object() || value.is_boolean()) {
        return Err("a JSON schema is an object, such as {\"type\": \"object\"}".into());
    }
    let format = Format::Schema(value);
    check(&format).map_err(|e| format!("the JSON schema cannot be enforced: {e}"))?;
    Ok(format)
}

/// A schema or a grammar from a file; `parse` is [`schema`] or [`lark`].
/// Errors name the file.
pub fn from_file(path: &Path, parse: fn(&str) -> Result<Format, String>) -> Result<Format, String> {
    let text = crate::text_file::read_user(path, "the file", 16 << 20)
        .map_err(|e| crate::exit::one_line(&e))?;
    parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// A Lark grammar from its text, checked (see [`check`]).
pub fn lark(text: &str) -> Result<Format, String> {
    let format = Format::Lark(text.to_string());
    check(&format).map_err(|e| format!("the grammar cannot be enforced: {e}"))?;
    Ok(format)
}

/// Checks that greve can enforce `format`: its schema compiles, against a
/// vocabulary of single bytes, so an unsupported keyword or a schema no
/// value satisfies is found before any model is loaded.
pub fn check(format: &Format) -> Result<(), String> {
    let Some(grammar) = format.grammar() else {
        return Ok(());
    };
    let env: TokEnv = Arc::new(ApproximateTokEnv::single_byte());
    let factory = quiet_factory(&env).map_err(|e| e.to_string())?;
    let first_line = |e: anyhow::Error| e.to_string().lines().next().unwrap_or("").to_string();
    let parser = factory.create_parser(grammar).map_err(first_line)?;
    // A grammar that compiles may still derive nothing (a `$ref` to
    // itself): then not even its first byte has a way forward.
    let mut matcher = Matcher::new(Ok(parser));
    match matcher.compute_mask() {
        Ok(mask) if !mask.is_zero() => Ok(()),
        _ => Err("no value satisfies it".into()),
    }
}

/// A format compiled for one model's vocabulary: each reply starts a
/// [`Constraint`] from it.
pub struct Grammar {
    factory: ParserFactory,
    grammar: TopLevelGrammar,
}

impl Grammar {
    /// `None` for free text.
    pub fn new(format: &Format, tokenizer: &Tokenizer) -> anyhow::Result<Option<Grammar>> {
        let Some(grammar) = format.grammar() else {
            return Ok(None);
        };
        let words = tokenizer.token_bytes();
        let info = TokRxInfo::new(words.len() as u32, tokenizer.eos());
        let env: TokEnv = Arc::new(ApproximateTokEnv::new(TokTrie::from(&info, &words)));
        let factory = quiet_factory(&env)?;
        Ok(Some(Grammar { factory, grammar }))
    }

    pub fn start(&self) -> anyhow::Result<Constraint> {
        let parser = self
            .factory
            .create_parser(self.grammar.clone())
            .map_err(|e| Failure::Usage.err(format!("the JSON schema: {e}")))?;
        Ok(Constraint {
            matcher: Matcher::new(Ok(parser)),
        })
    }
}

fn quiet_factory(env: &TokEnv) -> anyhow::Result<ParserFactory> {
    let mut factory = ParserFactory::new_simple(env)?;
    factory.set_stderr_log_level(0);
    Ok(factory)
}

/// Where one reply stands in the grammar.
pub struct Constraint {
    matcher: Matcher,
}

impl Constraint {
    /// Rules out every token that would leave the grammar (and the end of
    /// the reply until the value is complete).
    pub fn mask(&mut self, logits: &mut [f32]) -> anyhow::Result<()> {
        let allowed = self.matcher.compute_mask_or_eos().map_err(grammar_error)?;
        for (id, logit) in logits.iter_mut().enumerate() {
            if id >= allowed.len() || !allowed.is_allowed(id as u32) {
                *logit = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }

    /// Moves past a token the mask allowed.
    pub fn accept(&mut self, token: u32) -> anyhow::Result<()> {
        self.matcher.consume_token(token).map_err(grammar_error)
    }
}

fn grammar_error(e: anyhow::Error) -> anyhow::Error {
    Failure::Generation.err(format!("constrained decoding failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(v: Value) -> Result<(), String> {
        check(&Format::Schema(v))
    }

    #[test]
    fn supported_schemas_compile_and_others_name_the_keyword() {
        assert_eq!(check(&Format::Json), Ok(()));
        assert_eq!(check(&Format::Text), Ok(()));
        let person = json!({"type": "object", "properties": {
            "name": {"type": "string", "maxLength": 20, "pattern": "^[A-Z]"},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
            "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "minItems": 1, "maxItems": 3},
            "kind": {"anyOf": [{"const": "x"}, {"type": "number", "exclusiveMaximum": 1}]},
        }, "required": ["name", "age"]});
        assert_eq!(schema(person), Ok(()));
        let e = schema(json!({"type": "array", "uniqueItems": true})).unwrap_err();
        assert!(e.contains("uniqueItems"), "{e}");
        assert!(schema(json!({"type": "frobnicate"})).is_err());
        let endless = json!({"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/a"}}});
        assert!(schema(endless)
            .unwrap_err()
            .contains("no value satisfies it"));
        assert!(lark("start: \"oui\" | \"non\"").is_ok());
        assert!(lark("start: undefined_rule").is_err());
    }
}
