//! One fetch from the Hub: each file from the cache or downloaded, the
//! pre-flight before a download, and the Hub's refusals turned into errors
//! that say what to do.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use super::{Hub, HubOptions, Layout, Wanted, DEFAULT_QUANT};
use crate::exit::Failure;

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
pub(super) fn shard_names(index: &Path) -> anyhow::Result<Vec<String>> {
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
pub(super) struct Session<'a> {
    hub: &'a Hub,
    wanted: &'a Wanted,
    snapshot: Option<PathBuf>,
    api: Option<hf_hub::api::sync::ApiRepo>,
    missing: Vec<String>,
    opts_quant: Option<String>,
    /// File sizes from the Hub's listing, once read.
    sizes: std::collections::HashMap<String, u64>,
    /// The listing was asked for (it may have failed: the network down).
    listed: bool,
}

impl<'a> Session<'a> {
    pub(super) fn new(hub: &'a Hub, wanted: &'a Wanted, opts: &HubOptions) -> anyhow::Result<Self> {
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
            listed: false,
        })
    }

    fn cached(&self, file: &str) -> bool {
        self.snapshot
            .as_ref()
            .is_some_and(|s| s.join(file).is_file())
    }

    /// Reads the Hub's listing when one of `files` is not in the cache (a
    /// model in the cache needs no request), once; offline or unreachable,
    /// only the cache counts.
    pub(super) fn list_unless_cached(&mut self, files: &[&str]) {
        if self.listed || self.api.is_none() || files.iter().all(|f| self.cached(f)) {
            return;
        }
        self.listed = true;
        match self.listing() {
            Ok(listing) => self.sizes = sibling_sizes(&listing),
            Err(e) => log::info!("{}: no listing ({e})", self.wanted.repo),
        }
    }

    /// Whether the repo has `file`: in the cache, or in the listing read.
    pub(super) fn has(&self, file: &str) -> bool {
        self.cached(file) || self.sizes.contains_key(file)
    }

    /// The Hub's listing of the repo, with each file's size.
    fn listing(&self) -> anyhow::Result<serde_json::Value> {
        let Some(api) = &self.api else {
            return Err(self.offline_error());
        };
        api.info_request()
            .query("blobs", "true")
            .call()
            .map_err(|e| self.explain(Box::new(e).into(), ""))?
            .into_json()
            .map_err(|e| {
                Failure::Network.err(format!(
                    "the Hub's answer for {} is unreadable: {e}",
                    self.wanted.repo
                ))
            })
    }

    /// A file from the cache, else from the Hub.
    pub(super) fn get(&mut self, file: &str) -> anyhow::Result<PathBuf> {
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
    pub(super) fn preflight(&mut self, files: &[String], kv_per_token: u64) -> anyhow::Result<()> {
        if self.api.is_none() {
            return Ok(());
        }
        let missing: Vec<&String> = files.iter().filter(|f| !self.cached(f)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        if self.sizes.is_empty() {
            self.sizes = sibling_sizes(&self.listing()?);
            self.listed = true;
        }
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

    pub(super) fn finish(&self) -> anyhow::Result<()> {
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
    pub(super) fn guess_layout(&self) -> anyhow::Result<Layout> {
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
    pub(super) fn pick_gguf(&self, pattern: &str) -> anyhow::Result<String> {
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
