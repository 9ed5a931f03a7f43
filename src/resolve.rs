//! From what the user typed after `--model` to the files of a model.
//!
//! A local path (a folder laid out like a Hugging Face repo, or a `.gguf`
//! file) is read as it is; anything else that names a Hub repo or a preset
//! is fetched into the Hub cache by `hub.rs`, and its snapshot is then read
//! as a local folder. The result names files and nothing else.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use crate::exit::{Classify, Failure};
use crate::hub::{self, Hub, HubOptions};
use crate::model::{ModelFiles, WeightFiles};
use crate::tokenizer::Tokenizer;

const INDEX: &str = "model.safetensors.index.json";

/// A local path, a Hub repo id (`org/name[@revision]`) or a preset name.
pub fn resolve_any(spec: &str, opts: &HubOptions) -> anyhow::Result<ModelFiles> {
    if Path::new(spec).exists() {
        return resolve(spec);
    }
    let Some(wanted) = hub::parse(spec, opts)? else {
        return resolve(spec);
    };
    let local = Hub::from_env(opts.offline).fetch(&wanted, opts)?;
    let mut files = resolve(&local.to_string_lossy())?;
    files.name = spec.to_string();
    Ok(files)
}

/// The tokenizer alone, without weights (`greve tokenize`, `info`,
/// `doctor`): a tokenizer.json (with the tokenizer_config.json beside it),
/// or any model `spec` names, whose tokenizer.json or GGUF metadata is read
/// (a vocabulary-only GGUF will do).
pub fn open_tokenizer(spec: &str, opts: &HubOptions) -> anyhow::Result<Tokenizer> {
    match crate::model::tokenizer_json_at(Path::new(spec)) {
        Some(tokenizer) => tokenizer,
        None => crate::model::load_tokenizer(&resolve_any(spec, opts)?),
    }
}

/// A local model folder or GGUF file.
pub fn resolve(spec: &str) -> anyhow::Result<ModelFiles> {
    let path = Path::new(spec);
    let meta = std::fs::metadata(path).classify(Failure::ModelNotFound, || {
        format!(
            "model {spec:?} not found: --model takes a folder with config.json and *.safetensors, a .gguf file, a Hub repo (org/name) or a preset (`greve models` lists them)"
        )
    })?;
    let files = if meta.is_dir() {
        resolve_folder(path, spec)?
    } else {
        gguf_file(path, spec)?
    };
    Ok(files)
}

fn gguf_file(path: &Path, spec: &str) -> anyhow::Result<ModelFiles> {
    // Opening a FIFO would wait for a writer, and a device never ends.
    if !path.is_file() {
        return Err(Failure::ModelInvalid.err(format!(
            "{spec} is not a regular file (a FIFO or a device?); pass a .gguf file or a model folder"
        )));
    }
    if !has_gguf_magic(path)? {
        return Err(Failure::ModelInvalid.err(format!(
            "{spec} is not a GGUF file (it does not start with \"GGUF\"); pass a .gguf file or a model folder"
        )));
    }
    let beside = |name: &str| path.parent().map(|p| p.join(name)).filter(|p| p.is_file());
    Ok(ModelFiles {
        name: spec.to_string(),
        weights: WeightFiles::Gguf(path.to_path_buf()),
        tokenizer: None,
        tokenizer_config: None,
        // A GGUF file carries its vocabulary and chat template.
        tekken: None,
        system_prompt: None,
        generation_config: beside("generation_config.json"),
    })
}

fn has_gguf_magic(path: &Path) -> anyhow::Result<bool> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    let mut file = std::fs::File::open(path).classify(Failure::ModelNotFound, || {
        format!("cannot open {}", path.display())
    })?;
    Ok(file.read_exact(&mut magic).is_ok() && &magic == b"GGUF")
}

fn resolve_folder(dir: &Path, spec: &str) -> anyhow::Result<ModelFiles> {
    let optional = |name: &str| Some(dir.join(name)).filter(|p| p.is_file());
    let config = dir.join("config.json");
    if !config.is_file() {
        // A folder holding a single GGUF (as `huggingface-cli download` of a
        // GGUF repo leaves it) is that file.
        let ggufs = list(dir, |name| name.ends_with(".gguf"))?;
        return match ggufs.as_slice() {
            [one] => gguf_file(one, &one.display().to_string()),
            [] => Err(Failure::ModelInvalid.err(format!(
                "{spec} has no config.json and no .gguf file: it is not a model folder"
            ))),
            many => Err(Failure::Usage.err(format!(
                "{spec} holds {} GGUF files; pass one of them to --model, e.g. {}",
                many.len(),
                many[0].display()
            ))),
        };
    }
    let shards = safetensors_shards(dir, spec)?;
    Ok(ModelFiles {
        name: spec.to_string(),
        weights: WeightFiles::Safetensors { config, shards },
        tokenizer: optional("tokenizer.json"),
        tokenizer_config: optional("tokenizer_config.json"),
        tekken: optional("tekken.json"),
        system_prompt: optional("SYSTEM_PROMPT.txt"),
        generation_config: optional("generation_config.json"),
    })
}

/// The shard list from `model.safetensors.index.json`, else `model.safetensors`.
fn safetensors_shards(dir: &Path, spec: &str) -> anyhow::Result<Vec<PathBuf>> {
    let index = dir.join(INDEX);
    if index.is_file() {
        #[derive(Deserialize)]
        struct Index {
            weight_map: std::collections::HashMap<String, String>,
        }
        let text = crate::text_file::read_text(&index)?;
        let parsed: Index = serde_json::from_str(&text).classify(Failure::ModelInvalid, || {
            format!("{} is not a valid index", index.display())
        })?;
        let names: BTreeSet<String> = parsed.weight_map.into_values().collect();
        if names.is_empty() {
            return Err(Failure::ModelInvalid.err(format!("{} lists no weights", index.display())));
        }
        return names
            .into_iter()
            .map(|name| {
                if !is_plain_file_name(&name) {
                    return Err(Failure::ModelInvalid.err(format!(
                        "{} names shard {}, which is not a file in the model folder; the index is corrupt or hostile",
                        index.display(),
                        crate::messages::short(&name)
                    )));
                }
                let shard = dir.join(&name);
                if !shard.is_file() {
                    return Err(Failure::ModelInvalid.err(format!(
                        "{} names shard {}, which is missing from {spec}; download it again",
                        index.display(),
                        crate::messages::short(&name)
                    )));
                }
                Ok(shard)
            })
            .collect();
    }
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let hint = if dir.join("consolidated.safetensors").is_file() {
        " (consolidated.safetensors is Mistral's own layout, which greve does not read: use the Hugging Face files model-*.safetensors)"
    } else {
        ""
    };
    Err(Failure::ModelInvalid.err(format!(
        "{spec} has config.json but no {INDEX} or model.safetensors{hint}"
    )))
}

/// A bare file name: no folder part, not `..`, not absolute.
fn is_plain_file_name(name: &str) -> bool {
    let mut components = Path::new(name).components();
    matches!(components.next(), Some(Component::Normal(_))) && components.next().is_none()
}

fn list(dir: &Path, keep: impl Fn(&str) -> bool) -> anyhow::Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).classify(Failure::ModelNotFound, || {
        format!("cannot list {}", dir.display())
    })?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.file_name().and_then(|n| n.to_str()).is_some_and(&keep))
        .collect();
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_names_must_stay_in_the_folder() {
        assert!(is_plain_file_name("model-00001-of-00002.safetensors"));
        assert!(!is_plain_file_name("../secret.safetensors"));
        assert!(!is_plain_file_name("/etc/passwd"));
        assert!(!is_plain_file_name("sub/model.safetensors"));
        assert!(!is_plain_file_name(".."));
        assert!(!is_plain_file_name(""));
    }
}
