//! The JSON inside a prompt (tools, calls, arguments), written as
//! mistral-common writes it: Python's `json.dumps`, not serde's.

use super::{Tool, ToolCall};

impl Tool {
    /// As OpenAI's API declares it, which is also how mistral-common lists
    /// it to the model.
    pub fn openai(&self) -> serde_json::Value {
        serde_json::json!({"type": "function", "function": {
            "name": self.name, "description": self.description, "parameters": self.parameters,
        }})
    }
}

/// The tools as mistral-common lists them (`[AVAILABLE_TOOLS]`).
pub(super) fn tools_json(tools: &[Tool]) -> String {
    python_json(&tools.iter().map(Tool::openai).collect())
}

/// An assistant's calls as mistral-common writes them (`[TOOL_CALLS]`).
pub(super) fn calls_json(calls: &[ToolCall]) -> String {
    let list: Vec<serde_json::Value> = calls
        .iter()
        .map(|c| {
            let mut call =
                serde_json::json!({"name": c.name, "arguments": json_or_text(&c.arguments)});
            if !c.id.is_empty() && c.id != "null" {
                call["id"] = c.id.clone().into();
            }
            call
        })
        .collect();
    python_json(&serde_json::Value::Array(list))
}

/// `text` parsed when it is JSON, else as it is, as mistral-common reads
/// arguments and results.
pub(super) fn json_or_text(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|_| text.into())
}

/// JSON as Python's `json.dumps(value, ensure_ascii=False)` writes it, which
/// is what the models were trained on: `, ` and `: ` between items, keys
/// in their order, non-ASCII as it is. (Floats in exponent form are the one
/// difference left: Python writes `1e-05`, this `1e-5`.)
pub fn python_json(value: &serde_json::Value) -> String {
    struct Python;
    impl serde_json::ser::Formatter for Python {
        fn begin_array_value<W: ?Sized + std::io::Write>(
            &mut self,
            writer: &mut W,
            first: bool,
        ) -> std::io::Result<()> {
            if first {
                Ok(())
            } else {
                writer.write_all(b", ")
            }
        }

        fn begin_object_key<W: ?Sized + std::io::Write>(
            &mut self,
            writer: &mut W,
            first: bool,
        ) -> std::io::Result<()> {
            self.begin_array_value(writer, first)
        }

        fn begin_object_value<W: ?Sized + std::io::Write>(
            &mut self,
            writer: &mut W,
        ) -> std::io::Result<()> {
            writer.write_all(b": ")
        }
    }
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, Python);
    serde::Serialize::serialize(value, &mut serializer).expect("a JSON value serialises");
    String::from_utf8(out).expect("serde_json writes UTF-8")
}
