//! The files a model is made of, as `resolve.rs` finds them.

use std::path::PathBuf;

#[derive(Clone, Debug, PartialEq)]
pub struct ModelFiles {
    /// What the user named, for messages.
    pub name: String,
    pub weights: WeightFiles,
    pub tokenizer: Option<PathBuf>,
    pub tokenizer_config: Option<PathBuf>,
    /// mistral-common's own vocabulary file, read where no tokenizer.json is.
    pub tekken: Option<PathBuf>,
    /// The system prompt a reasoning release ships (`SYSTEM_PROMPT.txt`).
    pub system_prompt: Option<PathBuf>,
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

impl ModelFiles {
    /// The files whose contents the model's outputs depend on.
    fn contents(&self) -> Vec<&PathBuf> {
        match &self.weights {
            WeightFiles::Safetensors { config, shards } => {
                std::iter::once(config).chain(shards).collect()
            }
            WeightFiles::Gguf(path) => vec![path],
        }
    }

    /// Tells these files' contents apart from any others': each file's
    /// device, inode, size, and times of change, which any write moves (a
    /// model replaced at the same path, updated in the Hub cache). Only
    /// a file's metadata is read, not its gigabytes.
    pub fn fingerprint(&self) -> String {
        let stamp = |path: &PathBuf| -> String {
            let Ok(m) = std::fs::metadata(path) else {
                return format!("{} unreadable", path.display());
            };
            #[cfg(unix)]
            {
                use std::os::unix::fs::MetadataExt;
                let (ctime, mtime) = ((m.ctime(), m.ctime_nsec()), (m.mtime(), m.mtime_nsec()));
                format!("{}:{} {} {ctime:?} {mtime:?}", m.dev(), m.ino(), m.len())
            }
            #[cfg(not(unix))]
            format!("{} {} {:?}", path.display(), m.len(), m.modified().ok())
        };
        let stamps: Vec<String> = self.contents().into_iter().map(stamp).collect();
        stamps.join(", ")
    }
}
