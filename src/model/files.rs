//! The files a model is made of, as `resolve.rs` finds them.

use std::path::PathBuf;

#[derive(Clone, Debug, PartialEq)]
pub struct ModelFiles {
    /// What the user named, for messages.
    pub name: String,
    pub weights: WeightFiles,
    pub tokenizer: Option<PathBuf>,
    pub tokenizer_config: Option<PathBuf>,
    pub generation_config: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum WeightFiles {
    Safetensors {
        config: PathBuf,
        shards: Vec<PathBuf>,
    },
    Gguf(PathBuf),
}
