//! The vocabulary llama.cpp stores in a GGUF file (`tokenizer.ggml.*`),
//! rebuilt as the tokenizer.json it came from: SentencePiece BPE with byte
//! fallback (Mistral 7B), or Tekken's byte-level BPE (NeMo, Small 3.x).

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;
use serde_json::json;

use super::{check_piece_length, sentencepiece_normalizer};
use crate::exit::Failure;

/// llama.cpp's token types (`llama_token_type` / gguf-py `TokenType`).
const TOKEN_NORMAL: i32 = 1;
const TOKEN_UNKNOWN: i32 = 2;
const TOKEN_CONTROL: i32 = 3;

pub(super) struct GgufVocab {
    pub(super) add_bos: bool,
    tokens: Vec<String>,
    types: Vec<i32>,
    pub(super) bos: u32,
    pub(super) eos: u32,
    unk: u32,
    kind: VocabKind,
}

/// The two kinds of vocabulary llama.cpp writes for Mistral's models.
enum VocabKind {
    /// `llama`: SentencePiece BPE with byte fallback (7B), ranked by scores.
    SentencePiece { scores: Vec<f32> },
    /// `gpt2`: byte-level BPE with its merges, after a pre-tokenizer regex
    /// (Tekken: NeMo, Small 3.x).
    ByteLevel {
        merges: Vec<(String, String)>,
        pattern: &'static str,
    },
}

/// mistral-common's Tekken pre-tokenizer (`tekken_*.json`, `config.pattern`),
/// which llama.cpp names `tekken`.
const TEKKEN_PATTERN: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

impl GgufVocab {
    pub(super) fn read(md: &HashMap<String, Value>) -> anyhow::Result<Self> {
        let missing = |key: &str| {
            Failure::ModelInvalid.err(format!(
                "the GGUF metadata has no {key}: the file carries no tokenizer, and greve reads a GGUF model's tokenizer from the file itself; use a GGUF converted with its tokenizer"
            ))
        };
        let model = md
            .get("tokenizer.ggml.model")
            .ok_or_else(|| missing("tokenizer.ggml.model"))?
            .to_string()
            .map_err(|e| Failure::ModelInvalid.err(format!("tokenizer.ggml.model: {e}")))?;
        if model != "llama" && model != "gpt2" {
            return Err(Failure::ModelInvalid.err(format!(
                "the GGUF tokenizer is of kind {}; greve reads SentencePiece (\"llama\", Mistral 7B) and byte-level BPE (\"gpt2\", Tekken) vocabularies",
                crate::messages::short(model)
            )));
        }
        let array = |key: &str| -> anyhow::Result<&Vec<Value>> {
            md.get(key)
                .ok_or_else(|| missing(key))?
                .to_vec()
                .map_err(|e| Failure::ModelInvalid.err(format!("{key}: {e}")))
        };
        let bad =
            |key: &str| Failure::ModelInvalid.err(format!("{key} has an entry of the wrong type"));
        let tokens = array("tokenizer.ggml.tokens")?
            .iter()
            .enumerate()
            .map(|(id, v)| {
                let piece = v.to_string().map_err(|_| bad("tokenizer.ggml.tokens"))?;
                check_piece_length(id, piece)?;
                Ok(piece.clone())
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let kind = if model == "llama" {
            let scores = array("tokenizer.ggml.scores")?
                .iter()
                .map(|v| v.to_f32().map_err(|_| bad("tokenizer.ggml.scores")))
                .collect::<anyhow::Result<Vec<_>>>()?;
            if scores.len() != tokens.len() {
                return Err(Failure::ModelInvalid.err(format!(
                    "the GGUF tokenizer has {} tokens but {} scores",
                    tokens.len(),
                    scores.len()
                )));
            }
            VocabKind::SentencePiece { scores }
        } else {
            let pre = match md.get("tokenizer.ggml.pre") {
                Some(v) => v
                    .to_string()
                    .map_err(|_| bad("tokenizer.ggml.pre"))?
                    .as_str(),
                None => "default",
            };
            // llama.cpp's converter names a Tekken vocabulary by a hash of
            // its encodings: `tekken` (NeMo's own file), `pixtral` (the one
            // transformers makes of mistral-common's); the same pattern.
            let pattern = match pre {
                "tekken" | "pixtral" => TEKKEN_PATTERN,
                other => {
                    return Err(Failure::ModelInvalid.err(format!(
                    "the GGUF tokenizer's pre-tokenizer is {}; greve knows Mistral's (\"tekken\")",
                    crate::messages::short(other)
                )))
                }
            };
            // Byte-level pieces spell a space Ġ, so one space parts a merge.
            let merges = array("tokenizer.ggml.merges")?
                .iter()
                .map(|v| {
                    let merge = v.to_string().map_err(|_| bad("tokenizer.ggml.merges"))?;
                    let (l, r) = merge
                        .split_once(' ')
                        .ok_or_else(|| bad("tokenizer.ggml.merges"))?;
                    Ok((l.to_string(), r.to_string()))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            VocabKind::ByteLevel { merges, pattern }
        };
        let types = match md.get("tokenizer.ggml.token_type") {
            Some(_) => array("tokenizer.ggml.token_type")?
                .iter()
                .map(|v| v.to_i32().map_err(|_| bad("tokenizer.ggml.token_type")))
                .collect::<anyhow::Result<Vec<_>>>()?,
            None => vec![TOKEN_NORMAL; tokens.len()],
        };
        if types.len() != tokens.len() {
            return Err(Failure::ModelInvalid.err(format!(
                "the GGUF tokenizer has {} tokens but {} types",
                tokens.len(),
                types.len()
            )));
        }
        let id = |key: &str, default: u32| -> anyhow::Result<u32> {
            let id = match md.get(key) {
                Some(v) => v.to_u32().map_err(|_| bad(key))?,
                None => default,
            };
            if id as usize >= tokens.len() {
                return Err(Failure::ModelInvalid.err(format!(
                    "{key} is {id}, past the {} tokens of the vocabulary",
                    tokens.len()
                )));
            }
            Ok(id)
        };
        // Defaults are SentencePiece's, which Mistral's vocabularies follow.
        let bos = id("tokenizer.ggml.bos_token_id", 1)?;
        let eos = id("tokenizer.ggml.eos_token_id", 2)?;
        let unk = id("tokenizer.ggml.unknown_token_id", 0)?;
        let add_bos = match md.get("tokenizer.ggml.add_bos_token") {
            Some(v) => v
                .to_bool()
                .map_err(|_| bad("tokenizer.ggml.add_bos_token"))?,
            None => true,
        };
        Ok(GgufVocab {
            add_bos,
            tokens,
            types,
            bos,
            eos,
            unk,
            kind,
        })
    }

    /// The equivalent `tokenizer.json`: the layouts Hugging Face's converters
    /// give SentencePiece models (Prepend + Replace normaliser, BPE with byte
    /// fallback, the matching decoder) and Tekken (the regex split, then
    /// byte-level BPE that takes a piece in the vocabulary whole, as
    /// mistral-common's tiktoken does).
    pub(super) fn to_tokenizer_json(&self) -> serde_json::Value {
        let special = |id: usize| matches!(self.types[id], TOKEN_CONTROL | TOKEN_UNKNOWN);
        let scores = match &self.kind {
            VocabKind::SentencePiece { scores } => scores,
            VocabKind::ByteLevel { merges, pattern } => {
                return byte_level_json(&self.tokens, special, merges, pattern)
            }
        };
        json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added_tokens(&self.tokens, special),
            "normalizer": sentencepiece_normalizer(),
            "pre_tokenizer": null,
            "post_processor": null,
            "decoder": {"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                {"type": "ByteFallback"},
                {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0}
            ]},
            "model": {
                "type": "BPE", "dropout": null, "unk_token": self.tokens[self.unk as usize],
                "continuing_subword_prefix": null, "end_of_word_suffix": null,
                "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                "vocab": vocab(&self.tokens), "merges": self.merges(scores)
            }
        })
    }

    /// SentencePiece BPE merges the adjacent pair whose union has the best
    /// score; a merge list ranked by that score makes a BPE model that picks
    /// the same pairs. Only normal pieces take part, as in SentencePiece.
    fn merges(&self, scores: &[f32]) -> Vec<(String, String)> {
        let normal: HashMap<&str, usize> = (0..self.tokens.len())
            .filter(|&id| self.types[id] == TOKEN_NORMAL)
            .map(|id| (self.tokens[id].as_str(), id))
            .collect();
        let mut merges: Vec<(f32, usize, usize, usize)> = Vec::new();
        for (&piece, &id) in &normal {
            for (split, _) in piece.char_indices().skip(1) {
                let (left, right) = piece.split_at(split);
                if let (Some(&l), Some(&r)) = (normal.get(left), normal.get(right)) {
                    merges.push((scores[id], id, l, r));
                }
            }
        }
        // Best score first; ties by the merged piece's id, then by its parts,
        // so the order never depends on hashing.
        merges.sort_by(|a, b| {
            b.0.total_cmp(&a.0)
                .then(a.1.cmp(&b.1))
                .then(a.2.cmp(&b.2))
                .then(a.3.cmp(&b.3))
        });
        merges
            .into_iter()
            .map(|(_, _, l, r)| (self.tokens[l].clone(), self.tokens[r].clone()))
            .collect()
    }
}

/// Tekken's tokenizer.json (from a GGUF vocabulary or a tekken.json): the
/// regex split, then byte-level BPE that takes a piece in the vocabulary
/// whole, as mistral-common's tiktoken does.
pub(super) fn byte_level_json(
    tokens: &[String],
    special: impl Fn(usize) -> bool,
    merges: &[(String, String)],
    pattern: &str,
) -> serde_json::Value {
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens(tokens, special),
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
        ]},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": false, "byte_fallback": false, "ignore_merges": true,
            "vocab": vocab(tokens), "merges": merges
        }
    })
}

fn vocab(tokens: &[String]) -> serde_json::Map<String, serde_json::Value> {
    tokens
        .iter()
        .enumerate()
        .map(|(id, t)| (t.clone(), json!(id)))
        .collect()
}

/// The control tokens, never parsed from text.
fn added_tokens(tokens: &[String], special: impl Fn(usize) -> bool) -> Vec<serde_json::Value> {
    (0..tokens.len())
        .filter(|&id| special(id))
        .map(|id| {
            json!({"id": id, "content": tokens[id], "single_word": false,
                   "lstrip": false, "rstrip": false, "normalized": false, "special": true})
        })
        .collect()
}
