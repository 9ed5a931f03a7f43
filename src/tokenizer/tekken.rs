//! mistral-common's own vocabulary file, `tekken.json`, which some
//! repositories (Magistral, Devstral) ship without a tokenizer.json: the
//! byte-level BPE ranks of tiktoken, the special tokens before them, the
//! pre-tokenizer's regex and the instruct version.
//!
//! Its ids are mistral-common's: the special tokens take the first
//! `default_num_special_tokens` ids, by rank, and the vocabulary the rest, cut
//! at `default_vocab_size`. It becomes a tokenizer.json as Hugging Face's
//! converter makes one from tiktoken ranks (a merge per way a piece splits in
//! two known pieces, ranked by the piece), which picks the same pieces.

use std::collections::HashMap;

use base64::Engine as _;
use serde::Deserialize;

use crate::exit::Failure;
use crate::template::Instruct;

#[derive(Deserialize)]
struct File {
    config: Config,
    vocab: Vec<Piece>,
    /// Listed from v7 on; older files use the ones mistral-common names.
    special_tokens: Option<Vec<Special>>,
}

#[derive(Deserialize)]
struct Config {
    pattern: String,
    default_vocab_size: usize,
    default_num_special_tokens: usize,
    version: String,
}

#[derive(Deserialize)]
struct Piece {
    rank: usize,
    token_bytes: String,
}

#[derive(Deserialize)]
struct Special {
    rank: usize,
    token_str: String,
}

/// The special tokens of files before v7, which list none (mistral-common's
/// `Tekkenizer.DEPRECATED_SPECIAL_TOKENS`); the rest are `<SPECIAL_{id}>`.
const OLD_SPECIALS: [&str; 20] = [
    "<unk>",
    "<s>",
    "</s>",
    "[INST]",
    "[/INST]",
    "[AVAILABLE_TOOLS]",
    "[/AVAILABLE_TOOLS]",
    "[TOOL_RESULTS]",
    "[/TOOL_RESULTS]",
    "[TOOL_CALLS]",
    "[IMG]",
    "<pad>",
    "[IMG_BREAK]",
    "[IMG_END]",
    "[PREFIX]",
    "[MIDDLE]",
    "[SUFFIX]",
    "[SYSTEM_PROMPT]",
    "[/SYSTEM_PROMPT]",
    "[TOOL_CONTENT]",
];

/// A tekken.json, read: the equivalent tokenizer.json and the instruct
/// format its version names.
pub(super) struct Tekken {
    pub(super) json: serde_json::Value,
    pub(super) format: Instruct,
}

pub(super) fn read(text: &str, name: &str) -> anyhow::Result<Tekken> {
    let bad = |what: String| Failure::ModelInvalid.err(format!("{name}: {what}"));
    let file: File = serde_json::from_str(text)
        .map_err(|e| bad(format!("not a tekken.json ({e}); download it again")))?;
    let config = &file.config;
    let format = match config.version.as_str() {
        "v3" => Instruct::V3,
        "v7" => Instruct::V7,
        "v11" => Instruct::V11,
        "v13" => Instruct::V13,
        other => {
            return Err(bad(format!(
                "its instruct version is {}; greve reads Tekken v3, v7, v11 and v13 (v15, Mistral Small 4's, is not supported yet)",
                crate::messages::short(other)
            )))
        }
    };
    let specials = config.default_num_special_tokens;
    let Some(inner) = config.default_vocab_size.checked_sub(specials) else {
        return Err(bad(format!(
            "default_vocab_size {} is below default_num_special_tokens {specials}",
            config.default_vocab_size
        )));
    };
    if file.vocab.len() < inner {
        return Err(bad(format!(
            "it lists {} pieces, fewer than the {inner} its config asks for",
            file.vocab.len()
        )));
    }

    let mut names: Vec<String> = (0..specials).map(|i| format!("<SPECIAL_{i}>")).collect();
    let listed: Vec<(usize, String)> = match file.special_tokens {
        Some(list) => list.into_iter().map(|s| (s.rank, s.token_str)).collect(),
        None => OLD_SPECIALS
            .iter()
            .enumerate()
            .map(|(rank, s)| (rank, s.to_string()))
            .collect(),
    };
    for (rank, token) in listed {
        let slot = names.get_mut(rank).ok_or_else(|| {
            bad(format!(
                "special token {} has rank {rank}, past its {specials} special ids",
                crate::messages::short(&token)
            ))
        })?;
        *slot = token;
    }

    // The pieces, as bytes and as the byte-level spelling tokenizer.json uses.
    let alphabet = super::byte_level_alphabet();
    let mut ranks: HashMap<Vec<u8>, usize> = HashMap::with_capacity(inner);
    let mut pieces: Vec<String> = Vec::with_capacity(inner);
    let engine = base64::engine::general_purpose::STANDARD;
    for (i, piece) in file.vocab.iter().take(inner).enumerate() {
        let bytes = engine
            .decode(&piece.token_bytes)
            .map_err(|e| bad(format!("piece {i} is not base64 ({e})")))?;
        super::check_piece_length(i, &String::from_utf8_lossy(&bytes))?;
        let single_byte = i >= 256 || bytes == [i as u8];
        if piece.rank != i || !single_byte || ranks.insert(bytes.clone(), i).is_some() {
            return Err(bad(format!(
                "piece {i} is out of order or repeated: the file is damaged"
            )));
        }
        pieces.push(bytes.iter().map(|&b| alphabet[b as usize]).collect());
    }

    // A merge for each way a piece splits into two others, the piece's rank
    // first, then its halves' (as Hugging Face's tiktoken converter orders them).
    let mut merges: Vec<(usize, usize, usize)> = Vec::new();
    for (bytes, &rank) in &ranks {
        for split in 1..bytes.len() {
            let (left, right) = bytes.split_at(split);
            if let (Some(&l), Some(&r)) = (ranks.get(left), ranks.get(right)) {
                merges.push((rank, l, r));
            }
        }
    }
    merges.sort_unstable();
    let merges: Vec<(String, String)> = merges
        .into_iter()
        .map(|(_, l, r)| (pieces[l].clone(), pieces[r].clone()))
        .collect();

    let tokens: Vec<String> = names.into_iter().chain(pieces).collect();
    let json = super::gguf::byte_level_json(&tokens, |id| id < specials, &merges, &config.pattern);
    Ok(Tekken { json, format })
}
