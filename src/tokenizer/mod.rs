//! Text ⇄ token ids, from a `tokenizer.json` or rebuilt from a GGUF file's
//! `tokenizer.ggml.*` metadata (`gguf.rs`), and the streaming decoder that
//! turns a growing list of ids into printable text (`stream.rs`).
//!
//! Both sources end up as one `tokenizers::Tokenizer`, so there is a single
//! encoding path. Text is always encoded as plain text, even when it looks
//! like a control token (`</s>`, `[INST]`): that is what `mistral-common`
//! does, and it keeps a user from forging turns inside their message.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use candle_core::quantized::gguf_file::Value;
use serde_json::json;

use crate::exit::{Classify, Failure};
use crate::template::{self, instruct_format, Instruct, Piece};

mod gguf;
mod stream;
mod tekken;

use gguf::GgufVocab;
pub use stream::StreamDecoder;

#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos: u32,
    eos: u32,
    /// Whether the model expects BOS at the start of a text.
    add_bos: bool,
    /// The `[INST]` and `[/INST]` control tokens of V3 vocabularies.
    inst: Option<(u32, u32)>,
    /// `[SYSTEM_PROMPT]` and `[/SYSTEM_PROMPT]`, where the format uses them.
    system: Option<(u32, u32)>,
    /// The function-calling control tokens, where the vocabulary has them.
    tools: Option<ToolTokens>,
    /// `[THINK]` and `[/THINK]`, in the vocabularies of models that reason.
    think: Option<(u32, u32)>,
    format: Instruct,
    /// The system prompt the chat template gives a conversation that has
    /// none, where it is a constant.
    default_system: Option<String>,
    /// One past the largest id: a damaged tokenizer.json may skip ids.
    vocab_size: usize,
}

/// `[AVAILABLE_TOOLS]`, `[/AVAILABLE_TOOLS]`, `[TOOL_CALLS]`,
/// `[TOOL_RESULTS]` and `[/TOOL_RESULTS]`, V7's `[TOOL_CONTENT]`, and
/// V11's `[CALL_ID]` and `[ARGS]`.
#[derive(Clone, Copy)]
struct ToolTokens {
    begin_tools: u32,
    end_tools: u32,
    calls: u32,
    begin_results: u32,
    end_results: u32,
    content: Option<u32>,
    call_id: Option<u32>,
    args: Option<u32>,
}

/// Whether a tokenizer's pieces are byte-level (GPT-2 kind: Tekken), not
/// SentencePiece's.
fn byte_level(inner: &tokenizers::Tokenizer) -> bool {
    matches!(
        inner.get_decoder(),
        Some(tokenizers::DecoderWrapper::ByteLevel(_))
    )
}

/// What `tokenizer_config.json` says about special tokens.
#[derive(Default)]
pub struct SpecialTokens {
    pub bos: Option<String>,
    pub eos: Option<String>,
    /// `add_bos_token`; true when absent, as for every Mistral release.
    pub add_bos: Option<bool>,
    /// `chat_template`: it tells V7 from V3 where the vocabulary cannot.
    pub chat_template: Option<String>,
}

impl Tokenizer {
    /// Loads a Hugging Face `tokenizer.json`.
    pub fn from_json_file(path: &Path, special: &SpecialTokens) -> anyhow::Result<Self> {
        let invalid = || format!("cannot read the tokenizer {}", path.display());
        let text = crate::text_file::read_text(path)?;
        let mut json: serde_json::Value =
            serde_json::from_str(&text).classify(Failure::ModelInvalid, invalid)?;
        use_sentencepiece_spacing(&mut json);
        check_json_piece_lengths(&json)?;
        let inner: tokenizers::Tokenizer = json
            .to_string()
            .parse()
            .map_err(|e| anyhow::anyhow!("{e}"))
            .classify(Failure::ModelInvalid, invalid)?;
        let id = |name: &Option<String>, default: &str| -> anyhow::Result<u32> {
            let name = name.as_deref().unwrap_or(default);
            inner.token_to_id(name).ok_or_else(|| {
                Failure::ModelInvalid.err(format!(
                    "the tokenizer {} has no token {}; is it a Mistral tokenizer?",
                    path.display(),
                    crate::messages::short(name)
                ))
            })
        };
        let bos = id(&special.bos, "<s>")?;
        let eos = id(&special.eos, "</s>")?;
        Ok(Self::finish(
            inner,
            bos,
            eos,
            special.add_bos.unwrap_or(true),
            special.chat_template.as_deref(),
            None,
        ))
    }

    /// Loads mistral-common's `tekken.json`, whose version names the
    /// instruct format (`template`, a chat template beside it, may hold a
    /// default system prompt).
    pub fn from_tekken_file(path: &Path, template: Option<&str>) -> anyhow::Result<Self> {
        let text = crate::text_file::read_text(path)?;
        let tekken = tekken::read(&text, &path.display().to_string())?;
        let inner: tokenizers::Tokenizer = tekken
            .json
            .to_string()
            .parse()
            .map_err(|e| anyhow::anyhow!("{e}"))
            .classify(Failure::ModelInvalid, || {
                format!("cannot build a tokenizer from {}", path.display())
            })?;
        let id = |name: &str| {
            inner.token_to_id(name).ok_or_else(|| {
                Failure::ModelInvalid.err(format!(
                    "{} has no special token {name}; is it a Mistral tokenizer?",
                    path.display()
                ))
            })
        };
        let (bos, eos) = (id("<s>")?, id("</s>")?);
        Ok(Self::finish(
            inner,
            bos,
            eos,
            true,
            template,
            Some(tekken.format),
        ))
    }

    /// Rebuilds the tokenizer that llama.cpp stores in a GGUF file: a
    /// SentencePiece BPE model with byte fallback (`tokenizer.ggml.model =
    /// llama`), from its pieces, scores and token types.
    pub fn from_gguf(metadata: &HashMap<String, Value>) -> anyhow::Result<Self> {
        let spec = GgufVocab::read(metadata)?;
        let json = spec.to_tokenizer_json();
        let inner: tokenizers::Tokenizer = json
            .to_string()
            .parse()
            .map_err(|e| anyhow::anyhow!("{e}"))
            .classify(Failure::ModelInvalid, || {
                "cannot build a tokenizer from the GGUF metadata".to_string()
            })?;
        let template = match metadata.get("tokenizer.chat_template") {
            Some(Value::String(t)) => Some(t.as_str()),
            _ => None,
        };
        Ok(Self::finish(
            inner,
            spec.bos,
            spec.eos,
            spec.add_bos,
            template,
            None,
        ))
    }

    fn finish(
        mut inner: tokenizers::Tokenizer,
        bos: u32,
        eos: u32,
        add_bos: bool,
        template: Option<&str>,
        format: Option<Instruct>,
    ) -> Self {
        inner.set_encode_special_tokens(true);
        let control = inner.get_added_tokens_decoder();
        let control_id = |name: &str| {
            control
                .iter()
                .find(|(_, t)| t.special && t.content == name)
                .map(|(&id, _)| id)
        };
        let inst = control_id("[INST]").zip(control_id("[/INST]"));
        let system = control_id("[SYSTEM_PROMPT]").zip(control_id("[/SYSTEM_PROMPT]"));
        let tools = (|| {
            Some(ToolTokens {
                begin_tools: control_id("[AVAILABLE_TOOLS]")?,
                end_tools: control_id("[/AVAILABLE_TOOLS]")?,
                calls: control_id("[TOOL_CALLS]")?,
                begin_results: control_id("[TOOL_RESULTS]")?,
                end_results: control_id("[/TOOL_RESULTS]")?,
                content: control_id("[TOOL_CONTENT]"),
                call_id: control_id("[CALL_ID]"),
                args: control_id("[ARGS]"),
            })
        })();
        let think = control_id("[THINK]").zip(control_id("[/THINK]"));
        let format = format.unwrap_or_else(|| {
            instruct_format(
                inst.is_some(),
                system.is_some(),
                byte_level(&inner),
                template,
            )
        });
        let vocab_size = inner
            .get_vocab(true)
            .values()
            .max()
            .map_or(0, |&id| id as usize + 1);
        Tokenizer {
            vocab_size,
            inner,
            bos,
            eos,
            add_bos,
            inst,
            system: system.filter(|_| format.system_alone()),
            tools,
            think,
            format,
            default_system: template.and_then(template::default_system),
        }
    }

    /// The system prompt the chat template gives a conversation that has
    /// none, where it is a constant.
    pub fn default_system(&self) -> Option<&str> {
        self.default_system.as_deref()
    }

    /// The instruct format this vocabulary and template were made for.
    pub fn format(&self) -> Instruct {
        self.format
    }

    /// `[TOOL_CALLS]`, which starts a reply that calls functions, where
    /// the vocabulary has the function-calling tokens.
    pub fn tool_calls_token(&self) -> Option<u32> {
        self.tools.map(|t| t.calls)
    }

    /// `[ARGS]`, between a call's name and its arguments (V11, V13).
    pub fn args_token(&self) -> Option<u32> {
        self.tools.and_then(|t| t.args)
    }

    /// `[CALL_ID]`, before a call's id (V11).
    pub fn call_id_token(&self) -> Option<u32> {
        self.tools.and_then(|t| t.call_id)
    }

    /// `[THINK]` and `[/THINK]`, where the model reasons before it answers.
    pub fn think_tokens(&self) -> Option<(u32, u32)> {
        self.think
    }

    pub fn eos(&self) -> u32 {
        self.eos
    }

    /// Ids run from 0 to this, excluded.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    pub fn bos(&self) -> u32 {
        self.bos
    }

    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Encodes text in which control tokens written out (`</s>`, `[INST]`)
    /// are parsed as those tokens, for `greve tokenize --special`.
    pub fn encode_with_special(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        let mut parsing = self.inner.clone();
        parsing.set_encode_special_tokens(false);
        let encoding = parsing
            .encode(text, false)
            .map_err(|e| anyhow::anyhow!("cannot tokenize the text: {e}"))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The vocabulary's piece for an id (`▁word`, `<0xE2>`).
    pub fn piece(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Encodes text as one SentencePiece call (with its dummy-prefix space),
    /// without BOS.
    pub fn encode(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .context("cannot tokenize the text")?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The ids of a rendered prompt.
    pub fn encode_pieces(&self, pieces: &[Piece]) -> anyhow::Result<Vec<u32>> {
        let mut ids = Vec::new();
        for piece in pieces {
            match piece {
                Piece::Bos => ids.push(self.bos),
                Piece::Eos => ids.push(self.eos),
                Piece::BeginInst | Piece::EndInst | Piece::BeginSystem | Piece::EndSystem => {
                    let (pair, name) = match piece {
                        Piece::BeginInst | Piece::EndInst => (self.inst, "[INST]"),
                        _ => (self.system, "[SYSTEM_PROMPT]"),
                    };
                    let (begin, end) = pair.ok_or_else(|| {
                        anyhow::anyhow!("this vocabulary has no {name} control token")
                    })?;
                    let opens = matches!(piece, Piece::BeginInst | Piece::BeginSystem);
                    ids.push(if opens { begin } else { end });
                }
                Piece::BeginThink | Piece::EndThink => {
                    let (begin, end) = self.think.ok_or_else(|| {
                        Failure::Usage.err("this model's vocabulary has no [THINK] token")
                    })?;
                    ids.push(if *piece == Piece::BeginThink {
                        begin
                    } else {
                        end
                    });
                }
                Piece::BeginTools
                | Piece::EndTools
                | Piece::ToolCalls
                | Piece::CallId
                | Piece::Args
                | Piece::BeginToolResults
                | Piece::BeginToolContent
                | Piece::EndToolResults => {
                    let t = self.tools.ok_or_else(|| {
                        Failure::Usage.err(
                            "tools: this model's vocabulary has no function-calling tokens ([TOOL_CALLS])",
                        )
                    })?;
                    ids.push(match piece {
                        Piece::BeginTools => t.begin_tools,
                        Piece::EndTools => t.end_tools,
                        Piece::ToolCalls => t.calls,
                        Piece::BeginToolResults => t.begin_results,
                        Piece::BeginToolContent => t.content.ok_or_else(|| {
                            Failure::Usage.err("tools: this model's vocabulary has no [TOOL_CONTENT] token, which its format (V7) needs")
                        })?,
                        Piece::CallId | Piece::Args => {
                            let (token, name) = match piece {
                                Piece::CallId => (t.call_id, "[CALL_ID]"),
                                _ => (t.args, "[ARGS]"),
                            };
                            token.ok_or_else(|| {
                                Failure::Usage.err(format!("tools: this model's vocabulary has no {name} token, which its format ({:?}) needs", self.format))
                            })?
                        }
                        _ => t.end_results,
                    });
                }
                Piece::Text(text) => ids.extend(self.encode(text)?),
            }
        }
        Ok(ids)
    }

    /// Decodes ids to text, leaving out control tokens.
    pub fn decode(&self, ids: &[u32]) -> anyhow::Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| anyhow::anyhow!("cannot decode tokens: {e}"))
    }

    /// Each token's bytes, by id, as constrained decoding matches them
    /// against a grammar: `▁` is a space, `<0xHH>` the byte HH, a
    /// byte-level (GPT-2 kind) piece its bytes, and a control token its
    /// name after a 0xFF byte (never valid UTF-8, so no text can match it).
    pub fn token_bytes(&self) -> Vec<Vec<u8>> {
        let control = self.inner.get_added_tokens_decoder();
        let byte_level = byte_level(&self.inner);
        let from_char = byte_level_chars();
        (0..self.vocab_size() as u32)
            .map(|id| {
                let piece = self.inner.id_to_token(id).unwrap_or_default();
                if control.get(&id).is_some_and(|t| t.special) {
                    return [&[0xFF], piece.as_bytes()].concat();
                }
                if let Some(byte) = byte_fallback(&piece) {
                    return vec![byte];
                }
                if byte_level {
                    piece
                        .chars()
                        .filter_map(|c| from_char.get(&c).copied())
                        .collect()
                } else {
                    piece.replace('▁', " ").into_bytes()
                }
            })
            .collect()
    }
}

/// SentencePiece puts its dummy-prefix space in front of every text, even
/// one that starts with a space. The `Metaspace` pre-tokenizer of newer
/// tokenizer.json files (transformers' `legacy: false`) skips it in that
/// case, so `" hi"` loses a space that `mistral-common` keeps. For such
/// files greve swaps in the equivalent of SentencePiece's own normalisation,
/// the layout older tokenizer.json files have (Prepend + Replace).
fn use_sentencepiece_spacing(json: &mut serde_json::Value) {
    let pre = &json["pre_tokenizer"];
    if pre["type"] == "Metaspace" && pre["replacement"] == "▁" && json["normalizer"].is_null() {
        json["pre_tokenizer"] = serde_json::Value::Null;
        json["normalizer"] = sentencepiece_normalizer();
    }
}

fn sentencepiece_normalizer() -> serde_json::Value {
    json!({"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "▁"},
        {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}
    ]})
}

/// SentencePiece's byte-fallback pieces, `<0x0A>`.
fn byte_fallback(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    (hex.len() == 2).then(|| u8::from_str_radix(hex, 16).ok())?
}

/// GPT-2's byte-level alphabet: each byte as the printable character that
/// stands for it in the vocabulary, reversed.
fn byte_level_chars() -> HashMap<char, u8> {
    let alphabet = byte_level_alphabet();
    (0..=255u8).map(|b| (alphabet[b as usize], b)).collect()
}

/// The character GPT-2's byte-level BPE spells each byte with: printable
/// ones as themselves, the others from U+0100 on.
fn byte_level_alphabet() -> [char; 256] {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut next = 256u32;
    std::array::from_fn(|b| {
        let b = b as u8;
        if printable(b) {
            char::from(b)
        } else {
            next += 1;
            char::from_u32(next - 1).unwrap_or('?')
        }
    })
}

/// Longer than any piece of a real vocabulary (Mistral's run to a few
/// dozen bytes): a longer one is damage, and building a tokenizer takes
/// time quadratic in a piece's length (160 kB: 18 s of CPU).
const MAX_PIECE_BYTES: usize = 1024;

fn check_piece_length(id: usize, piece: &str) -> anyhow::Result<()> {
    if piece.len() > MAX_PIECE_BYTES {
        return Err(Failure::ModelInvalid.err(format!(
            "token {id} of the vocabulary is {} bytes long, where real ones take a few dozen (at most {MAX_PIECE_BYTES}): the tokenizer is damaged",
            piece.len()
        )));
    }
    Ok(())
}

/// [`check_piece_length`] over a tokenizer.json's vocabulary and added
/// tokens, before the tokenizer is built from them.
fn check_json_piece_lengths(json: &serde_json::Value) -> anyhow::Result<()> {
    let id = |v: &serde_json::Value| v.as_u64().unwrap_or(0) as usize;
    let added = json["added_tokens"].as_array().into_iter().flatten();
    let added = added.filter_map(|t| Some((id(&t["id"]), t["content"].as_str()?)));
    let vocab = json["model"]["vocab"].as_object().into_iter().flatten();
    let vocab = vocab.map(|(piece, v)| (id(v), piece.as_str()));
    added
        .chain(vocab)
        .try_for_each(|(id, piece)| check_piece_length(id, piece))
}
