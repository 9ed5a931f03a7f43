//! Models from the Hugging Face Hub: the named presets, repo ids, the cache
//! shared with Python tools, offline mode, and downloads through `hf-hub`.
//!
//! Everything here ends in a local path (a snapshot folder or a `.gguf`
//! file in the cache) that `resolve.rs` then reads like any local model.
//! The cache is always looked at first, by greve itself: a file already
//! there is used without a request, so a model downloaded once (by greve
//! or by Python's `huggingface_hub`) works offline and without delay.

mod session;

use std::path::{Path, PathBuf};

use session::{shard_names, Session};

use crate::exit::Failure;

/// An official Apache-2.0 Mistral Instruct release.
#[derive(Debug, PartialEq)]
pub struct Preset {
    pub name: &'static str,
    /// The `mistralai` repo: safetensors and tokenizer files.
    pub repo: &'static str,
    pub gated: bool,
    /// A widely used GGUF conversion of it, and its file names with the
    /// quantisation in place of `{q}`.
    pub gguf_repo: &'static str,
    pub gguf_file: &'static str,
    /// The Hub's file sizes: the Q4_K_M GGUF, and the bf16 safetensors
    /// where greve reads them (from Small 3.1 on they hold a vision model
    /// around the text one, Mistral3ForConditionalGeneration).
    pub q4_k_m_bytes: u64,
    pub bf16_bytes: Option<u64>,
    /// The f16 KV cache a token, for planning memory before a header is read.
    pub kv_per_token: u64,
}

/// The f16 KV cache a token: K and V, 2 bytes each.
const fn kv_per_token(layers: u64, kv_heads: u64, head_dim: u64) -> u64 {
    layers * kv_heads * head_dim * 2 * 2
}

/// Every 7B release has the same shapes, so the same sizes.
const fn mistral_7b(
    name: &'static str,
    repo: &'static str,
    gated: bool,
    gguf_repo: &'static str,
    gguf_file: &'static str,
) -> Preset {
    Preset {
        name,
        repo,
        gated,
        gguf_repo,
        gguf_file,
        q4_k_m_bytes: 4_370_000_000,
        bf16_bytes: Some(14_500_000_000),
        kv_per_token: kv_per_token(32, 8, 128),
    }
}

/// A Mistral 3 release (Ministral 3, Magistral, Devstral Small 2): the text
/// model inside a Mistral3ForConditionalGeneration checkpoint, converted by
/// bartowski as `mistralai_{name}`; 8 KV heads of 128. Sizes are estimated
/// from the parameter counts (text and vision for the safetensors, text
/// alone for the GGUF).
const fn mistral_3(
    name: &'static str,
    repo: &'static str,
    gguf_repo: &'static str,
    gguf_file: &'static str,
    q4_k_m_bytes: u64,
    bf16_bytes: u64,
    layers: u64,
) -> Preset {
    Preset {
        name,
        repo,
        gated: false,
        gguf_repo,
        gguf_file,
        q4_k_m_bytes,
        bf16_bytes: Some(bf16_bytes),
        kv_per_token: kv_per_token(layers, 8, 128),
    }
}

pub static PRESETS: [Preset; 13] = [
    mistral_7b(
        "mistral-7b-instruct-v0.1",
        "mistralai/Mistral-7B-Instruct-v0.1",
        true,
        "TheBloke/Mistral-7B-Instruct-v0.1-GGUF",
        "mistral-7b-instruct-v0.1.{q}.gguf",
    ),
    mistral_7b(
        "mistral-7b-instruct-v0.2",
        "mistralai/Mistral-7B-Instruct-v0.2",
        true,
        "TheBloke/Mistral-7B-Instruct-v0.2-GGUF",
        "mistral-7b-instruct-v0.2.{q}.gguf",
    ),
    mistral_7b(
        "mistral-7b-instruct-v0.3",
        "mistralai/Mistral-7B-Instruct-v0.3",
        false,
        "bartowski/Mistral-7B-Instruct-v0.3-GGUF",
        "Mistral-7B-Instruct-v0.3-{q}.gguf",
    ),
    // 40 layers, hidden 5120, head size 128, 8 KV heads, Tekken vocabulary.
    Preset {
        name: "mistral-nemo-instruct-2407",
        repo: "mistralai/Mistral-Nemo-Instruct-2407",
        gated: false,
        gguf_repo: "bartowski/Mistral-Nemo-Instruct-2407-GGUF",
        gguf_file: "Mistral-Nemo-Instruct-2407-{q}.gguf",
        q4_k_m_bytes: 7_480_000_000,
        bf16_bytes: Some(24_500_000_000),
        kv_per_token: kv_per_token(40, 8, 128),
    },
    // NeMo's attention shapes with a wider MLP; the V7-Tekken format.
    Preset {
        name: "mistral-small-3.2-24b-instruct-2506",
        repo: "mistralai/Mistral-Small-3.2-24B-Instruct-2506",
        gated: false,
        gguf_repo: "bartowski/mistralai_Mistral-Small-3.2-24B-Instruct-2506-GGUF",
        gguf_file: "mistralai_Mistral-Small-3.2-24B-Instruct-2506-{q}.gguf",
        q4_k_m_bytes: 14_330_000_000,
        bf16_bytes: None,
        kv_per_token: kv_per_token(40, 8, 128),
    },
    // Ministral 3: 26, 34 and 40 layers; the Instruct repos hold FP8
    // weights, their -BF16 twins the original ones.
    mistral_3(
        "ministral-3-3b-instruct-2512",
        "mistralai/Ministral-3-3B-Instruct-2512-BF16",
        "bartowski/mistralai_Ministral-3-3B-Instruct-2512-GGUF",
        "mistralai_Ministral-3-3B-Instruct-2512-{q}.gguf",
        2_100_000_000,
        7_700_000_000,
        26,
    ),
    mistral_3(
        "ministral-3-3b-reasoning-2512",
        "mistralai/Ministral-3-3B-Reasoning-2512",
        "bartowski/mistralai_Ministral-3-3B-Reasoning-2512-GGUF",
        "mistralai_Ministral-3-3B-Reasoning-2512-{q}.gguf",
        2_100_000_000,
        7_700_000_000,
        26,
    ),
    mistral_3(
        "ministral-3-8b-instruct-2512",
        "mistralai/Ministral-3-8B-Instruct-2512-BF16",
        "bartowski/mistralai_Ministral-3-8B-Instruct-2512-GGUF",
        "mistralai_Ministral-3-8B-Instruct-2512-{q}.gguf",
        5_100_000_000,
        17_700_000_000,
        34,
    ),
    mistral_3(
        "ministral-3-8b-reasoning-2512",
        "mistralai/Ministral-3-8B-Reasoning-2512",
        "bartowski/mistralai_Ministral-3-8B-Reasoning-2512-GGUF",
        "mistralai_Ministral-3-8B-Reasoning-2512-{q}.gguf",
        5_100_000_000,
        17_700_000_000,
        34,
    ),
    mistral_3(
        "ministral-3-14b-instruct-2512",
        "mistralai/Ministral-3-14B-Instruct-2512-BF16",
        "bartowski/mistralai_Ministral-3-14B-Instruct-2512-GGUF",
        "mistralai_Ministral-3-14B-Instruct-2512-{q}.gguf",
        8_200_000_000,
        27_800_000_000,
        40,
    ),
    mistral_3(
        "ministral-3-14b-reasoning-2512",
        "mistralai/Ministral-3-14B-Reasoning-2512",
        "bartowski/mistralai_Ministral-3-14B-Reasoning-2512-GGUF",
        "mistralai_Ministral-3-14B-Reasoning-2512-{q}.gguf",
        8_200_000_000,
        27_800_000_000,
        40,
    ),
    // Small 3.2's shapes, thinking between [THINK] and [/THINK].
    mistral_3(
        "magistral-small-2509",
        "mistralai/Magistral-Small-2509",
        "bartowski/mistralai_Magistral-Small-2509-GGUF",
        "mistralai_Magistral-Small-2509-{q}.gguf",
        14_330_000_000,
        48_000_000_000,
        40,
    ),
    mistral_3(
        "devstral-small-2-24b-instruct-2512",
        "mistralai/Devstral-Small-2-24B-Instruct-2512",
        "bartowski/mistralai_Devstral-Small-2-24B-Instruct-2512-GGUF",
        "mistralai_Devstral-Small-2-24B-Instruct-2512-{q}.gguf",
        14_330_000_000,
        48_000_000_000,
        40,
    ),
];

/// What `--model` means when it is not given: v0.3, whose repo needs no
/// account; as Q4_K_M GGUF on a CPU (4.4 GB, the practical choice there).
pub const DEFAULT_MODEL: &str = "mistral-7b-instruct-v0.3";
pub const DEFAULT_QUANT: &str = "Q4_K_M";

pub fn preset(name: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.name.eq_ignore_ascii_case(name))
}

pub fn default_preset() -> &'static Preset {
    preset(DEFAULT_MODEL).expect("the default model is a preset")
}

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
    /// The preset it comes from, whose shapes plan the memory before the
    /// files are read; the default model's otherwise.
    pub preset: Option<&'static Preset>,
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
pub fn parse(spec: &str, opts: &HubOptions) -> anyhow::Result<Option<Wanted>> {
    let quant = opts.quant.as_deref();
    let safetensors =
        |q: &str| ["safetensors", "bf16", "f16", "f32"].contains(&q.to_lowercase().as_str());
    let wanted = |repo: &str, revision: String, layout, preset| Wanted {
        spec: spec.to_string(),
        repo: repo.to_string(),
        revision,
        layout,
        preset,
    };
    if let Some(p) = preset(spec) {
        let revision = opts.revision.clone().unwrap_or_else(|| "main".into());
        // A GPU build runs the original weights by default, where greve reads them.
        let gpu = cfg!(any(feature = "cuda", feature = "metal")) && p.bf16_bytes.is_some();
        let gguf = |q: Option<&str>| {
            let file = p
                .gguf_file
                .replace("{q}", &q.unwrap_or(DEFAULT_QUANT).to_uppercase());
            wanted(p.gguf_repo, revision.clone(), Layout::Gguf(file), Some(p))
        };
        return Ok(Some(match quant {
            Some(q) if safetensors(q) && p.bf16_bytes.is_none() => {
                return Err(Failure::Usage.err(format!(
                    "{} holds a vision model around the text one, which greve does not read: run {} as GGUF (the default, or --quant Q8_0, …)",
                    p.repo, p.name
                )))
            }
            Some(q) if safetensors(q) => wanted(p.repo, revision, Layout::Safetensors, Some(p)),
            None if gpu => wanted(p.repo, revision, Layout::Safetensors, Some(p)),
            q => gguf(q),
        }));
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
    let Some((org, name)) = id.split_once('/') else {
        return Ok(None);
    };
    if !valid(org) || !valid(name) {
        return Ok(None);
    }
    let revision = at
        .or_else(|| opts.revision.clone())
        .unwrap_or_else(|| "main".into());
    let layout = match quant {
        Some(q) if safetensors(q) => Layout::Safetensors,
        Some(q) => Layout::Gguf(q.to_string()),
        None => Layout::Unknown,
    };
    Ok(Some(wanted(id, revision, layout, None)))
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
                // The header is not read yet: the cache planned for is the
                // preset's, or the default model's.
                let kv_per_token = wanted.preset.unwrap_or(default_preset()).kv_per_token;
                session.preflight(std::slice::from_ref(&name), kv_per_token)?;
                session.get(&name)
            }
            _ => {
                let config = session.get("config.json")?;
                let index = session.get("model.safetensors.index.json");
                let shards = match &index {
                    Ok(path) => shard_names(path)?,
                    Err(_) => vec!["model.safetensors".to_string()],
                };
                // Some repos (Magistral, Devstral) ship mistral-common's
                // tekken.json alone; the others are not in every repo, and
                // what they would say then has its defaults.
                let needed: Vec<&str> = shards.iter().map(String::as_str).collect();
                let tokenizers = ["tokenizer.json", "tekken.json"];
                match tokenizers.iter().any(|t| session.has(t)) {
                    true => session.list_unless_cached(&needed),
                    false => session.list_unless_cached(&tokenizers),
                }
                let tokenizer = match session.has("tokenizer.json") || !session.has("tekken.json") {
                    true => "tokenizer.json",
                    false => "tekken.json",
                };
                let optional = [
                    "tokenizer_config.json",
                    "chat_template.jinja",
                    "SYSTEM_PROMPT.txt",
                    "generation_config.json",
                ];
                let optional: Vec<&str> = optional.into_iter().filter(|f| session.has(f)).collect();
                let files: Vec<String> = std::iter::once(tokenizer)
                    .chain(optional)
                    .map(String::from)
                    .chain(shards)
                    .collect();
                let kv_per_token =
                    crate::model::config::Config::from_json_file(&config)?.kv_bytes_per_token();
                session.preflight(&files, kv_per_token)?;
                for file in &files {
                    session.get(file)?;
                }
                session.finish()?;
                Ok(config.parent().unwrap_or(Path::new(".")).to_path_buf())
            }
        }
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

    fn wanted(spec: &str, quant: Option<&str>) -> Option<Wanted> {
        parse(spec, &opts(quant)).unwrap()
    }

    #[test]
    fn presets_and_repo_ids() {
        let w = wanted("mistral-7b-instruct-v0.3", None).unwrap();
        if !cfg!(any(feature = "cuda", feature = "metal")) {
            assert_eq!(w.repo, "bartowski/Mistral-7B-Instruct-v0.3-GGUF");
            assert_eq!(
                w.layout,
                Layout::Gguf("Mistral-7B-Instruct-v0.3-Q4_K_M.gguf".into())
            );
        }
        let w = wanted("Mistral-7B-Instruct-v0.2", Some("q8_0")).unwrap();
        assert_eq!(
            w.layout,
            Layout::Gguf("mistral-7b-instruct-v0.2.Q8_0.gguf".into())
        );
        let w = wanted("mistral-7b-instruct-v0.1", Some("safetensors")).unwrap();
        assert_eq!(
            (w.repo.as_str(), w.layout),
            ("mistralai/Mistral-7B-Instruct-v0.1", Layout::Safetensors)
        );
        let w = wanted("mistralai/Mistral-7B-Instruct-v0.3@abc", None).unwrap();
        assert_eq!((w.revision.as_str(), w.layout), ("abc", Layout::Unknown));
        assert_eq!(w.preset, None);
        assert_eq!(wanted("./model", None), None);
        assert_eq!(wanted("a/b/c", None), None);
        assert_eq!(wanted("../x", None), None);
        assert_eq!(wanted("mistral-7b", None), None);
    }

    #[test]
    fn the_larger_presets_plan_for_their_own_cache() {
        let nemo = wanted("mistral-nemo-instruct-2407", Some("Q5_K_M")).unwrap();
        assert_eq!(
            (nemo.repo.as_str(), &nemo.layout),
            (
                "bartowski/Mistral-Nemo-Instruct-2407-GGUF",
                &Layout::Gguf("Mistral-Nemo-Instruct-2407-Q5_K_M.gguf".into())
            )
        );
        // 40 layers against 7B's 32, the same KV heads and head size.
        let nemo = nemo.preset.unwrap();
        assert_eq!(nemo.kv_per_token * 32, default_preset().kv_per_token * 40);
        let small = wanted("mistral-small-3.2-24b-instruct-2506", Some("q4_k_m")).unwrap();
        assert_eq!(
            small.layout,
            Layout::Gguf("mistralai_Mistral-Small-3.2-24B-Instruct-2506-Q4_K_M.gguf".into())
        );
        // Its safetensors are the multimodal checkpoint: GGUF only, and
        // a GPU build's default is GGUF too.
        let refused = parse(
            "mistral-small-3.2-24b-instruct-2506",
            &opts(Some("safetensors")),
        )
        .unwrap_err();
        assert!(refused.to_string().contains("as GGUF"), "{refused}");
        let default = wanted("mistral-small-3.2-24b-instruct-2506", None).unwrap();
        assert!(matches!(default.layout, Layout::Gguf(_)));
    }
}
