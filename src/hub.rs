//! Models from the Hugging Face Hub: the named presets, repo ids, the cache
//! shared with Python tools, offline mode, and downloads through `hf-hub`.
//!
//! Everything here ends in a local path (a snapshot folder or a `.gguf`
//! file in the cache) that `resolve.rs` then reads like any local model.
//! The cache is always looked at first, by greve itself: a file already
//! there is used without a request, so a model downloaded once (by greve
//! or by Python's `huggingface_hub`) works offline and without delay.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use crate::exit::Failure;

/// An official Apache-2.0 Mistral 7B Instruct release.
pub struct Preset {
    pub name: &'static str,
    /// The `mistralai` repo: safetensors and tokenizer files.
    pub repo: &'static str,
    pub gated: bool,
    /// A widely used GGUF conversion of it, and its file names with the
    /// quantisation in place of `{q}`.
    pub gguf_repo: &'static str,
    pub gguf_file: &'static str,
}

pub const PRESETS: [Preset; 3] = [
    Preset {
        name: "mistral-7b-instruct-v0.1",
        repo: "mistralai/Mistral-7B-Instruct-v0.1",
        gated: true,
        gguf_repo: "TheBloke/Mistral-7B-Instruct-v0.1-GGUF",
        gguf_file: "mistral-7b-instruct-v0.1.{q}.gguf",
    },
    Preset {
        name: "mistral-7b-instruct-v0.2",
        repo: "mistralai/Mistral-7B-Instruct-v0.2",
        gated: true,
        gguf_repo: "TheBloke/Mistral-7B-Instruct-v0.2-GGUF",
        gguf_file: "mistral-7b-instruct-v0.2.{q}.gguf",
    },
    Preset {
        name: "mistral-7b-instruct-v0.3",
        repo: "mistralai/Mistral-7B-Instruct-v0.3",
        gated: false,
        gguf_repo: "bartowski/Mistral-7B-Instruct-v0.3-GGUF",
        gguf_file: "Mistral-7B-Instruct-v0.3-{q}.gguf",
    },
];

/// What `--model` means when it is not given: v0.3, whose repo needs no
/// account; as Q4_K_M GGUF on a CPU (4.4 GB, the practical choice there).
pub const DEFAULT_MODEL: &str = "mistral-7b-instruct-v0.3";
pub const DEFAULT_QUANT: &str = "Q4_K_M";

/// How to reach the Hub, from the flags and the environment.
#[derive(Clone, Debug, Default)]
pub struct HubOptions {
    /// `--quant`: a GGUF quantisation (`Q4_K_M`, …) or `safetensors`.
    pub quant: Option<String>,
    pub revision: Option<String>,
    /// `--offline`, or `HF_HUB_OFFLINE`: never make a request.
    pub offline: bool,
    pub quiet: bool,
}

/// A model on the Hub: a repo at a revision, and the files greve needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Wanted {
    /// What the user typed, for the commands messages suggest.
    pub spec: String,
    pub repo: String,
    pub revision: String,
    pub layout: Layout,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Layout {
    /// config.json, tokenizer files and the safetensors shards.
    Safetensors,
    /// One GGUF file.
    Gguf(String),
    /// A repo id without `--quant`: decided from the files it holds.
    Unknown,
}

/// What `spec` names on the Hub, if anything: a preset or `org/name[@rev]`.
pub fn parse(spec: &str, opts: &HubOptions) -> Option<Wanted> {
    let quant = opts.quant.as_deref();
    let safetensors =
        |q: &str| ["safetensors", "bf16", "f16", "f32"].contains(&q.to_lowercase().as_str());
    let wanted = |repo: &str, revision: String, layout| Wanted {
        spec: spec.to_string(),
        repo: repo.to_string(),
        revision,
        layout,
    };
    if let Some(p) = PRESETS.iter().find(|p| p.name.eq_ignore_ascii_case(spec)) {
        let revision = opts.revision.clone().unwrap_or_else(|| "main".into());
        // A GPU build runs the original weights by default.
        let gpu = cfg!(any(feature = "cuda", feature = "metal"));
        return Some(match quant {
            Some(q) if safetensors(q) => wanted(p.repo, revision, Layout::Safetensors),
            None if gpu => wanted(p.repo, revision, Layout::Safetensors),
            q => {
                let file = p
                    .gguf_file
                    .replace("{q}", &q.unwrap_or(DEFAULT_QUANT).to_uppercase());
                wanted(p.gguf_repo, revision, Layout::Gguf(file))
            }
        });
    }
    let (id, at) = match spec.split_once('@') {
        Some((id, rev)) => (id, Some(rev.to_string())),
        None => (spec, None),
    };
    let valid = |part: &str| {
        !part.is_empty()
            && !part.starts_with('.')
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    let (org, name) = id.split_once('/')?;
    if !valid(org) || !valid(name) {
        return None;
    }
    let revision = at
        .or_else(|| opts.revision.clone())
        .unwrap_or_else(|| "main".into());
    let layout = match quant {
        Some(q) if safetensors(q) => Layout::Safetensors,
        Some(q) => Layout::Gguf(q.to_string()),
        None => Layout::Unknown,
    };
    Some(wanted(id, revision, layout))
}

/// Where the Hub lives for this user: the cache, the endpoint and the token,
/// resolved in the same order as Python's `huggingface_hub`.
#[derive(Clone, Debug)]
pub struct Hub {
    pub cache: PathBuf,
    pub endpoint: String,
    token: Option<String>,
    pub offline: bool,
}

impl Hub {
    pub fn from_env(offline_flag: bool) -> Self {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let home = env("HOME").map(PathBuf::from).unwrap_or_default();
        let hf_home = env("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
            env("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| home.join(".cache"))
                .join("huggingface")
        });
        let cache = env("HF_HUB_CACHE")
            .or_else(|| env("HUGGINGFACE_HUB_CACHE"))
            .map(PathBuf::from)
            .unwrap_or_else(|| hf_home.join("hub"));
        let token = env("HF_TOKEN").or_else(|| {
            let file = env("HF_TOKEN_PATH")
                .map(PathBuf::from)
                .unwrap_or_else(|| hf_home.join("token"));
            std::fs::read_to_string(file)
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
        });
        // Python's truthy values for HF_HUB_OFFLINE.
        let offline_env = env("HF_HUB_OFFLINE")
            .is_some_and(|v| ["1", "ON", "YES", "TRUE"].contains(&v.to_uppercase().as_str()));
        Hub {
            cache,
            endpoint: env("HF_ENDPOINT").unwrap_or_else(|| "https://huggingface.co".into()),
            token,
            offline: offline_flag || offline_env,
        }
    }

    /// Whether a token is configured (it is never shown).
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// The cache folder of a repo, as both hf-hub and Python lay it out.
    fn repo_dir(&self, repo: &str) -> PathBuf {
        self.cache
            .join(format!("models--{}", repo.replace('/', "--")))
    }

    /// The cached snapshot for a revision: a commit hash names it directly,
    /// a branch or tag through `refs/`.
    pub fn snapshot(&self, repo: &str, revision: &str) -> Option<PathBuf> {
        let dir = self.repo_dir(repo);
        let is_commit = revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit());
        let commit = if is_commit {
            revision.to_string()
        } else {
            std::fs::read_to_string(dir.join("refs").join(revision))
                .ok()?
                .trim()
                .to_string()
        };
        Some(dir.join("snapshots").join(commit)).filter(|p| p.is_dir())
    }

    /// Brings the model's files into the cache (or finds them there) and
    /// returns the local path to load: the snapshot folder, or the GGUF file.
    pub fn fetch(&self, wanted: &Wanted, opts: &HubOptions) -> anyhow::Result<PathBuf> {
        let mut session = Session::new(self, wanted, opts)?;
        let layout = match &wanted.layout {
            Layout::Unknown => session.guess_layout()?,
            known => known.clone(),
        };
        match layout {
            Layout::Gguf(pattern) => {
                let name = session.pick_gguf(&pattern)?;
                // The header is not read yet: the cache planned for is 7B's.
                session.preflight(std::slice::from_ref(&name), crate::model::KV_PER_TOKEN_7B)?;
                session.get(&name)
            }
            _ => {
                let config = session.get("config.json")?;
                let index = session.get("model.safetensors.index.json");
                let shards = match &index {
                    Ok(path) => shard_names(path)?,
                    Err(_) => vec!["model.safetensors".to_string()],
                };
                let files: Vec<String> = ["tokenizer.json", "tokenizer_config.json"]
                    .iter()
                    .map(|s| s.to_string())
                    .chain(shards)
                    .collect();
                let kv_per_token =
                    crate::model::config::Config::from_json_file(&config)?.kv_bytes_per_token();
                session.preflight(&files, kv_per_token)?;
                for file in &files {
                    session.get(file)?;
                }
                // Not every repo has one; the defaults then apply.
                let _ = session.get("generation_config.json");
                session.finish()?;
                Ok(config.parent().unwrap_or(Path::new(".")).to_path_buf())
            }
        }
    }
}

/// File sizes from the Hub's repo listing with `blobs=true` (LFS files
/// give theirs under `lfs.size`).
fn sibling_sizes(listing: &serde_json::Value) -> std::collections::HashMap<String, u64> {
    let siblings = listing["siblings"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    siblings
        .iter()
        .filter_map(|s| {
            let name = s["rfilename"].as_str()?;
            let size = s["size"].as_u64().or_else(|| s["lfs"]["size"].as_u64())?;
            Some((name.to_string(), size))
        })
        .collect()
}

/// The cache folder, or the nearest folder above it that exists (where it
/// will be created).
fn existing_ancestor(path: &Path) -> PathBuf {
    path.ancestors()
        .find(|p| p.is_dir())
        .unwrap_or(Path::new("/"))
        .to_path_buf()
}

/// The shard files listed by a safetensors index.
fn shard_names(index: &Path) -> anyhow::Result<Vec<String>> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: std::collections::HashMap<String, String>,
    }
    let text = std::fs::read_to_string(index)?;
    let parsed: Index = serde_json::from_str(&text).map_err(|e| {
        Failure::ModelInvalid.err(format!("{} is not a valid index: {e}", index.display()))
    })?;
    let names: std::collections::BTreeSet<String> = parsed.weight_map.into_values().collect();
    Ok(names.into_iter().collect())
}

/// One fetch: the cached snapshot, the API when online, and the files that
/// could not be had offline (reported together at the end).
struct Session<'a> {
    hub: &'a Hub,
    wanted: &'a Wanted,
    snapshot: Option<PathBuf>,
    api: Option<hf_hub::api::sync::ApiRepo>,
    missing: Vec<String>,
    opts_quant: Option<String>,
    /// File sizes from the Hub's listing, once the pre-flight has read it.
    sizes: std::collections::HashMap<String, u64>,
}

impl<'a> Session<'a> {
    fn new(hub: &'a Hub, wanted: &'a Wanted, opts: &HubOptions) -> anyhow::Result<Self> {
        let api = if hub.offline {
            None
        } else {
            let api = hf_hub::api::sync::ApiBuilder::new()
                .with_cache_dir(hub.cache.clone())
                .with_endpoint(hub.endpoint.clone())
                .with_token(hub.token.clone())
                .with_progress(!opts.quiet && std::io::stderr().is_terminal())
                .with_retries(3)
                .build()
                .map_err(|e| Failure::Network.err(format!("cannot set up the Hub client: {e}")))?;
            Some(api.repo(hf_hub::Repo::with_revision(
                wanted.repo.clone(),
                hf_hub::RepoType::Model,
                wanted.revision.clone(),
            )))
        };
        Ok(Session {
            hub,
            wanted,
            snapshot: hub.snapshot(&wanted.repo, &wanted.revision),
            api,
            missing: Vec::new(),
            opts_quant: opts.quant.clone(),
            sizes: std::collections::HashMap::new(),
        })
    }

    /// A file from the cache, else from the Hub.
    fn get(&mut self, file: &str) -> anyhow::Result<PathBuf> {
        if let Some(path) = self
            .snapshot
            .as_ref()
            .map(|s| s.join(file))
            .filter(|p| p.is_file())
        {
            log::info!(
                "{}: {file} from the cache ({})",
                self.wanted.repo,
                path.display()
            );
            return Ok(path);
        }
        log::info!("{}: {file} is not in the cache", self.wanted.repo);
        let Some(api) = &self.api else {
            self.missing.push(file.to_string());
            return Err(self.offline_error());
        };
        let path = api.download(file).map_err(|e| self.explain(e, file))?;
        // hf-hub resumes a broken download by appending to its partial file
        // and does not check the result: a file of the wrong size is removed
        // rather than trusted.
        let got = path.metadata().map_or(0, |m| m.len());
        if let Some(&want) = self.sizes.get(file).filter(|&&want| want != got) {
            if let Ok(blob) = std::fs::canonicalize(&path) {
                let _ = std::fs::remove_file(blob);
            }
            let _ = std::fs::remove_file(&path);
            return Err(Failure::Network.err(format!(
                "the download of {file} from {} is corrupt ({got} bytes instead of {want}) and was removed; run the command again",
                self.wanted.repo
            )));
        }
        if self.snapshot.is_none() {
            self.snapshot = path.parent().map(Path::to_path_buf);
        }
        Ok(path)
    }

    /// Before a download: the total size, the free disk and the memory the
    /// model will need, on one line; a disk too small is refused, too little
    /// memory is a warning. Nothing to say when everything is cached.
    fn preflight(&mut self, files: &[String], kv_per_token: u64) -> anyhow::Result<()> {
        let Some(api) = &self.api else { return Ok(()) };
        let missing: Vec<&String> = files
            .iter()
            .filter(|f| !self.snapshot.as_ref().is_some_and(|s| s.join(f).is_file()))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let listing: serde_json::Value = api
            .info_request()
            .query("blobs", "true")
            .call()
            .map_err(|e| self.explain(Box::new(e).into(), ""))?
            .into_json()
            .map_err(|e| {
                Failure::Network.err(format!(
                    "the Hub's answer for {} is unreadable: {e}",
                    self.wanted.repo
                ))
            })?;
        self.sizes = sibling_sizes(&listing);
        let total: u64 = missing
            .iter()
            .filter_map(|f| self.sizes.get(f.as_str()))
            .sum();
        let folder = existing_ancestor(&self.hub.cache);
        let free = fs4::available_space(&folder).ok();
        let gb = |b: u64| b as f64 / 1e9;
        crate::messages::note(format!(
            "downloading {:.2} GB from {} into {} ({} free)",
            gb(total),
            self.wanted.repo,
            self.hub.cache.display(),
            free.map_or("? GB".into(), |f| format!("{:.1} GB", gb(f)))
        ));
        let ram = crate::model::memory_needed(total, kv_per_token, crate::model::PLANNED_CONTEXT);
        if let Some(available) = crate::system::available_memory().filter(|&a| a < ram) {
            crate::messages::warn(format!(
                "this model needs about {:.1} GB of memory and {:.1} GB are available; it may swap or fail",
                gb(ram),
                gb(available)
            ));
        }
        if let Some(free) = free.filter(|&f| f < total) {
            return Err(Failure::Usage.err(format!(
                "{} needs {:.2} GB but {} has {:.2} GB free; free some space or set HF_HOME to a larger disk",
                self.wanted.repo,
                gb(total),
                folder.display(),
                gb(free)
            )));
        }
        Ok(())
    }

    fn finish(&self) -> anyhow::Result<()> {
        if self.missing.is_empty() {
            Ok(())
        } else {
            Err(self.offline_error())
        }
    }

    fn offline_error(&self) -> anyhow::Error {
        Failure::Network.err(format!(
            "offline, and {} is not all in the cache at {} (missing: {}); connect and run `{}` first",
            self.wanted.repo,
            self.hub.cache.display(),
            self.missing.join(", "),
            self.pull_command()
        ))
    }

    fn pull_command(&self) -> String {
        let quant = self
            .opts_quant
            .as_deref()
            .map_or(String::new(), |q| format!(" --quant {q}"));
        format!("greve pull {}{quant}", self.wanted.spec)
    }

    /// The files of the cached snapshot, if there is one.
    fn cached_files(&self) -> Vec<String> {
        let Some(entries) = self
            .snapshot
            .as_ref()
            .and_then(|s| std::fs::read_dir(s).ok())
        else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect()
    }

    /// The files of the repo on the Hub (offline: those of the snapshot).
    fn listed_files(&self) -> anyhow::Result<Vec<String>> {
        match &self.api {
            Some(api) => {
                let info = api.info().map_err(|e| self.explain(e, ""))?;
                Ok(info.siblings.into_iter().map(|s| s.rfilename).collect())
            }
            None if self.snapshot.is_some() => Ok(self.cached_files()),
            None => Err(Failure::Network.err(format!(
                "offline, and {} is not in the cache at {}; connect and run `{}` first",
                self.wanted.repo,
                self.hub.cache.display(),
                self.pull_command()
            ))),
        }
    }

    /// Safetensors or GGUF, from the cached snapshot when it says, else
    /// from the Hub's listing: a cached model needs no request.
    fn guess_layout(&self) -> anyhow::Result<Layout> {
        let decide = |files: &[String]| {
            if files.iter().any(|f| f == "config.json") {
                Some(Layout::Safetensors)
            } else if files.iter().filter(|f| f.ends_with(".gguf")).count() == 1 {
                Some(Layout::Gguf(".gguf".into()))
            } else {
                None
            }
        };
        if let Some(layout) = decide(&self.cached_files()) {
            return Ok(layout);
        }
        let files = self.listed_files()?;
        decide(&files).ok_or_else(
            || match files.iter().filter(|f| f.ends_with(".gguf")).count() {
                0 => Failure::ModelInvalid.err(format!(
                    "{} has neither config.json nor a .gguf file: it is not a model greve can run",
                    self.wanted.repo
                )),
                _ => Failure::Usage.err(format!(
                "{} holds several GGUF files; pick one with --quant, e.g. --quant {DEFAULT_QUANT}",
                self.wanted.repo
            )),
            },
        )
    }

    /// The GGUF file: the exact name, else the one whose name holds the
    /// quantisation, looked for in the cache first.
    fn pick_gguf(&self, pattern: &str) -> anyhow::Result<String> {
        if pattern.ends_with(".gguf") && pattern.len() > ".gguf".len() {
            return Ok(pattern.to_string());
        }
        let matching = |files: &[String]| -> Vec<String> {
            files
                .iter()
                .filter(|f| {
                    f.ends_with(".gguf") && f.to_uppercase().contains(&pattern.to_uppercase())
                })
                .cloned()
                .collect()
        };
        if let [one] = matching(&self.cached_files()).as_slice() {
            return Ok(one.clone());
        }
        let files = self.listed_files()?;
        match matching(&files).as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(Failure::Usage.err(format!(
                "{} has no GGUF file for {pattern:?}; it has: {}",
                self.wanted.repo,
                files
                    .iter()
                    .filter(|f| f.ends_with(".gguf"))
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
            many => Err(Failure::Usage.err(format!(
                "{} has several files for {pattern:?}: {}; name one with --quant",
                self.wanted.repo,
                many.join(", ")
            ))),
        }
    }

    /// One line for a failed request: what, where, and what to do.
    fn explain(&self, e: hf_hub::api::sync::ApiError, file: &str) -> anyhow::Error {
        use hf_hub::api::sync::ApiError;
        let repo = &self.wanted.repo;
        let page = format!("{}/{repo}", self.hub.endpoint);
        if let ApiError::RequestError(boxed) = &e {
            match boxed.as_ref() {
                ureq::Error::Status(401 | 403, response) => {
                    let gated = response.header("x-error-code") == Some("GatedRepo");
                    let how = if self.hub.token.is_some() {
                        "the token in HF_TOKEN (or the HF token file) has no access to it"
                    } else {
                        "no token is set: create one at https://huggingface.co/settings/tokens and export HF_TOKEN"
                    };
                    let what = if gated {
                        format!("{repo} is gated: accept its licence on {page}")
                    } else {
                        format!("{repo} refused access (it may be gated or private; see {page})")
                    };
                    return Failure::Access.err(format!("{what}; {how}"));
                }
                ureq::Error::Status(404, _) if file.is_empty() => {
                    return Failure::ModelNotFound.err(format!(
                        "{repo}@{} does not exist on the Hub (see {page})",
                        self.wanted.revision
                    ));
                }
                ureq::Error::Status(404, _) => {
                    return Failure::ModelNotFound.err(format!(
                        "{repo}@{} has no file {file}, or the repo or revision does not exist (see {page})",
                        self.wanted.revision
                    ));
                }
                ureq::Error::Status(code, _) => {
                    return Failure::Network.err(format!(
                        "the Hub answered {code} for {repo}/{file}; try again later"
                    ));
                }
                ureq::Error::Transport(t) => {
                    return Failure::Network.err(format!(
                        "cannot reach the Hub at {} ({t}); check the network, or use --offline with models already in the cache",
                        self.hub.endpoint
                    ));
                }
            }
        }
        Failure::Network.err(format!(
            "downloading {file} from {repo} failed: {e}; run the command again to resume"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(quant: Option<&str>) -> HubOptions {
        HubOptions {
            quant: quant.map(String::from),
            ..Default::default()
        }
    }

    #[test]
    fn presets_and_repo_ids() {
        let w = parse("mistral-7b-instruct-v0.3", &opts(None)).unwrap();
        if !cfg!(any(feature = "cuda", feature = "metal")) {
            assert_eq!(w.repo, "bartowski/Mistral-7B-Instruct-v0.3-GGUF");
            assert_eq!(
                w.layout,
                Layout::Gguf("Mistral-7B-Instruct-v0.3-Q4_K_M.gguf".into())
            );
        }
        let w = parse("Mistral-7B-Instruct-v0.2", &opts(Some("q8_0"))).unwrap();
        assert_eq!(
            w.layout,
            Layout::Gguf("mistral-7b-instruct-v0.2.Q8_0.gguf".into())
        );
        let w = parse("mistral-7b-instruct-v0.1", &opts(Some("safetensors"))).unwrap();
        assert_eq!(
            (w.repo.as_str(), w.layout),
            ("mistralai/Mistral-7B-Instruct-v0.1", Layout::Safetensors)
        );
        let w = parse("mistralai/Mistral-7B-Instruct-v0.3@abc", &opts(None)).unwrap();
        assert_eq!((w.revision.as_str(), w.layout), ("abc", Layout::Unknown));
        assert_eq!(parse("./model", &opts(None)), None);
        assert_eq!(parse("a/b/c", &opts(None)), None);
        assert_eq!(parse("../x", &opts(None)), None);
        assert_eq!(parse("mistral-7b", &opts(None)), None);
    }
}
