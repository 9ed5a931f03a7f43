//! What a run does, resolved once from everywhere a user can say it, each
//! value with where it came from (`greve config` prints both).
//!
//! Precedence, highest first, applied here and nowhere else:
//! 1. a flag;
//! 2. an environment variable (`GREVE_MODEL`, `GREVE_TEMPERATURE`, …);
//! 3. with `--load`, the saved conversation (its persona and system prompt);
//! 4. the config file;
//! 5. the model's `generation_config.json` (sampling and the reply limit);
//! 6. greve's default.
//!
//! Flags and environment arrive as [`Layer`]s from `cli.rs`, the config file
//! as one from `config_file.rs`; the transcript and the model's defaults are
//! applied once they have been read. Plain data: no clap type leaves this
//! module and `cli.rs`.

pub mod check;
mod de;
mod device;

use crate::tools::Tools;
use std::path::PathBuf;

use candle_core::DType;
use serde::Deserialize;

pub use device::DeviceSpec;

use crate::exit::Failure;
use crate::hub::{HubOptions, DEFAULT_MODEL, DEFAULT_QUANT};
use crate::model::attention::KvType;
use crate::model::GenerationDefaults;
use crate::persona::Mode;
use crate::prompt_cache::{self, PromptCache};
use crate::sampler::SamplingParams;
use crate::structured::Format;
use crate::transcript::Transcript;

/// greve's defaults where the model ships none: Mistral's recommended
/// temperature for its 7B instruct models, nucleus sampling at 0.95, no
/// top-k and no repeat penalty (as `mistral-inference` samples).
pub const DEFAULT_TEMPERATURE: f32 = 0.7;
pub const DEFAULT_TOP_P: f32 = 0.95;
/// The repeat penalty's window, as llama.cpp's.
pub const DEFAULT_REPEAT_LAST_N: usize = 64;

/// Where a value came from, in decreasing priority.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    Flag,
    Env,
    Transcript,
    File,
    Model,
    Default,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Flag => "flag",
            Source::Env => "env",
            Source::Transcript => "transcript",
            Source::File => "file",
            Source::Model => "model",
            Source::Default => "default",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Sourced<T> {
    pub value: T,
    pub from: Source,
}

/// What one place (the flags, the environment, the config file) says; what
/// it leaves unsaid is `None`. The config file's keys are these fields,
/// less the flag-only ones.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layer {
    pub model: Option<String>,
    /// An OpenAI-compatible server that answers instead of a local model.
    pub remote: Option<String>,
    pub quant: Option<String>,
    #[serde(skip)]
    pub revision: Option<String>,
    #[serde(skip)]
    pub offline: Option<bool>,
    pub device: Option<DeviceSpec>,
    #[serde(skip)]
    pub dtype: Option<DType>,
    #[serde(default, deserialize_with = "de::threads")]
    pub threads: Option<u16>,
    #[serde(default, deserialize_with = "de::kv_cache")]
    pub kv_cache: Option<KvType>,
    pub ctx_size: Option<usize>,
    #[serde(default, deserialize_with = "de::temperature")]
    pub temperature: Option<f32>,
    #[serde(default, deserialize_with = "de::probability")]
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    #[serde(default, deserialize_with = "de::positive")]
    pub repeat_penalty: Option<f32>,
    pub repeat_last_n: Option<usize>,
    pub seed: Option<u64>,
    pub max_tokens: Option<usize>,
    #[serde(default)]
    pub strike: Option<Mode>,
    pub safe: Option<bool>,
    pub system: Option<String>,
    pub prompts: Option<PathBuf>,
    pub history: Option<bool>,
    /// Keys and values of prompts kept on disk (`--no-prompt-cache`).
    pub prompt_cache: Option<bool>,
    /// The most the prompt cache may take on disk, in bytes.
    #[serde(default, deserialize_with = "de::size")]
    pub prompt_cache_size: Option<u64>,
    /// Free text or JSON (`format = "json"` in the config file).
    #[serde(default, deserialize_with = "de::format")]
    pub format: Option<Format>,
    /// The config file's `json_schema = "PATH"`, read into `format` when the
    /// file is loaded.
    #[serde(default)]
    pub json_schema: Option<PathBuf>,
    /// A saved conversation to go on from.
    #[serde(skip)]
    pub load: Option<PathBuf>,
    /// Where to save the conversation after the reply (`greve ask`).
    #[serde(skip)]
    pub save: Option<PathBuf>,
    /// Functions the model may call (`greve ask --tools`).
    #[serde(skip)]
    pub tools: Option<Tools>,
}

/// Everything a command needs to know, resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub model: Sourced<String>,
    /// The server's URL, when one answers (`--remote`).
    pub remote: Sourced<Option<String>>,
    /// A GGUF quantisation or `safetensors`; `None`: the preset's default.
    pub quant: Sourced<Option<String>>,
    pub revision: Option<String>,
    pub offline: bool,
    pub device: Sourced<DeviceSpec>,
    /// `None`: chosen from the device and the memory at load time.
    pub dtype: Option<DType>,
    /// `None`: all cores.
    pub threads: Sourced<Option<u16>>,
    pub kv_cache: Sourced<KvType>,
    /// `None`: the model's context.
    pub ctx_size: Sourced<Option<usize>>,
    /// Sampling values left `None` come from the model, else greve.
    pub temperature: Sourced<Option<f32>>,
    pub top_p: Sourced<Option<f32>>,
    pub top_k: Sourced<Option<usize>>,
    pub repeat_penalty: Sourced<Option<f32>>,
    pub repeat_last_n: Sourced<usize>,
    /// Chosen at random when no one gives it (shown by `--stats`, `--json`
    /// and `/show`, so a reply can be reproduced).
    pub seed: Sourced<u64>,
    /// `None`: the model's `max_new_tokens`, else until the context is full.
    pub max_tokens: Sourced<Option<usize>>,
    pub strike: Sourced<Mode>,
    /// The guardrail system prompt (prompts/safe-system.txt).
    pub safe: Sourced<bool>,
    /// The user's own system prompt (the persona's is added to it).
    pub system: Sourced<Option<String>>,
    /// A folder of prompt files overriding the built-in ones.
    pub prompts: Sourced<Option<PathBuf>>,
    /// Whether `greve chat` keeps its input history on disk.
    pub history: Sourced<bool>,
    pub prompt_cache: Sourced<bool>,
    pub prompt_cache_size: Sourced<u64>,
    /// Free text, or JSON by construction (`--format`, `--json-schema`).
    pub format: Sourced<Format>,
    pub load: Option<PathBuf>,
    pub save: Option<PathBuf>,
    pub tools: Tools,
}

impl Settings {
    /// Flags over environment over the config file over greve's defaults.
    pub fn resolve(flags: &Layer, env: &Layer, file: &Layer) -> Settings {
        let layers = Layers([
            (flags, Source::Flag),
            (env, Source::Env),
            (file, Source::File),
        ]);
        Settings {
            model: layers.or(|l| &l.model, DEFAULT_MODEL.to_string()),
            remote: layers.maybe(|l| &l.remote),
            quant: layers.maybe(|l| &l.quant),
            revision: flags.revision.clone(),
            offline: flags.offline.unwrap_or(false),
            device: layers.or(|l| &l.device, DeviceSpec::Auto),
            dtype: flags.dtype,
            threads: layers.maybe(|l| &l.threads),
            kv_cache: layers.or(|l| &l.kv_cache, KvType::F16),
            ctx_size: layers.maybe(|l| &l.ctx_size),
            temperature: layers.maybe(|l| &l.temperature),
            top_p: layers.maybe(|l| &l.top_p),
            top_k: layers.maybe(|l| &l.top_k),
            repeat_penalty: layers.maybe(|l| &l.repeat_penalty),
            repeat_last_n: layers.or(|l| &l.repeat_last_n, DEFAULT_REPEAT_LAST_N),
            seed: layers.or(|l| &l.seed, random_seed()),
            max_tokens: layers.maybe(|l| &l.max_tokens),
            strike: layers.or(|l| &l.strike, Mode::Off),
            safe: layers.or(|l| &l.safe, false),
            system: layers.maybe(|l| &l.system),
            prompts: layers.maybe(|l| &l.prompts),
            history: layers.or(|l| &l.history, true),
            prompt_cache: layers.or(|l| &l.prompt_cache, true),
            prompt_cache_size: layers.or(|l| &l.prompt_cache_size, prompt_cache::DEFAULT_LIMIT),
            format: layers.or(|l| &l.format, Format::Text),
            load: flags.load.clone(),
            save: flags.save.clone(),
            tools: flags.tools.clone().unwrap_or_default(),
        }
    }

    /// A saved conversation's persona and system prompt, where neither a
    /// flag nor the environment chose them.
    pub fn follow(&mut self, transcript: &Transcript) {
        if self.strike.from > Source::Transcript {
            self.strike = Sourced {
                value: transcript.mode(),
                from: Source::Transcript,
            };
        }
        if self.system.from > Source::Transcript {
            self.system = Sourced {
                value: transcript.system.clone(),
                from: Source::Transcript,
            };
        }
    }

    /// The sampling values, the model's filling what no one set.
    pub fn sampling(&self, model: &GenerationDefaults) -> SamplingParams {
        SamplingParams {
            temperature: self
                .temperature
                .value
                .or(model.temperature)
                .unwrap_or(DEFAULT_TEMPERATURE),
            top_k: self.top_k.value.or(model.top_k).unwrap_or(0),
            top_p: self.top_p.value.or(model.top_p).unwrap_or(DEFAULT_TOP_P),
            repeat_penalty: self
                .repeat_penalty
                .value
                .or(model.repeat_penalty)
                .unwrap_or(1.0),
            repeat_last_n: self.repeat_last_n.value,
        }
    }

    /// The most tokens a reply may have (the context caps it further); 0
    /// asks for no limit, as `/set max_tokens 0` does.
    pub fn reply_limit(&self, model: &GenerationDefaults) -> Option<usize> {
        match self.max_tokens.value {
            Some(0) => None,
            Some(n) => Some(n),
            None => model.max_tokens,
        }
    }

    pub fn hub_options(&self) -> HubOptions {
        HubOptions {
            quant: self.quant.value.clone(),
            revision: self.revision.clone(),
            offline: self.offline,
            quiet: crate::messages::quiet(),
        }
    }

    /// Where prompt files may override the built-in ones, in increasing
    /// priority: `prompts/` in greve's config folder (when it exists), then
    /// the `prompts` setting (which must be a folder).
    pub fn prompt_folders(&self) -> anyhow::Result<Vec<PathBuf>> {
        let mut folders: Vec<PathBuf> = directories::ProjectDirs::from("", "", "greve")
            .map(|d| d.config_dir().join("prompts"))
            .filter(|d| d.is_dir())
            .into_iter()
            .collect();
        if let Some(dir) = &self.prompts.value {
            if !dir.is_dir() {
                return Err(Failure::Usage.err(format!(
                    "the prompts folder {} (from --prompts, GREVE_PROMPTS or the config file) is not a folder; give a folder of prompt files (see prompts/README.md)",
                    dir.display()
                )));
            }
            folders.push(dir.clone());
        }
        Ok(folders)
    }

    /// Where the prompt cache is, when it is on and the platform has a
    /// cache folder.
    pub fn prompt_cache_dir(&self) -> Option<PathBuf> {
        self.prompt_cache
            .value
            .then(prompt_cache::default_dir)
            .flatten()
    }

    /// The prompt cache for `model`, opened with these settings.
    pub fn prompt_cache(&self, model: &crate::model::Model) -> Option<PromptCache> {
        let dir = self.prompt_cache_dir()?;
        if model.transformer.saved_context_bytes(1).is_none() {
            log::info!("prompt cache: off on this device (its KV cache cannot be saved yet)");
            return None;
        }
        let kv = self.kv_cache.value.name();
        let threads = candle_core::utils::get_num_threads();
        let identity = prompt_cache::identity(&model.fingerprint, kv, threads);
        Some(PromptCache::new(
            dir,
            self.prompt_cache_size.value,
            identity,
        ))
    }

    /// The server these settings name, and the model to ask it for (the
    /// server's first unless `--model` names one). What only a local model
    /// has is said to be ignored.
    pub fn open_remote(&self, url: &str) -> anyhow::Result<crate::remote::Remote> {
        let local_only = [
            ("--device", self.device.from),
            ("--threads", self.threads.from),
            ("--kv-cache", self.kv_cache.from),
            ("--ctx-size", self.ctx_size.from),
            ("--quant", self.quant.from),
        ];
        for (flag, from) in local_only {
            if from != Source::Default {
                crate::messages::warn(format!(
                    "{flag} does not apply with --remote: the server runs the model"
                ));
            }
        }
        if self.repeat_penalty.value.is_some_and(|p| p != 1.0) {
            crate::messages::warn(
                "--repeat-penalty is not part of OpenAI's API: it is not sent to the server",
            );
        }
        let model = (self.model.from != Source::Default).then_some(self.model.value.as_str());
        crate::remote::Remote::connect(url, model)
    }

    /// The resolved settings, the model's defaults (none for a remote
    /// one) filling what they leave.
    /// A conversation's options: these settings, the model's defaults (none
    /// for a remote one) filling what they leave.
    pub fn options(
        &self,
        prompts: crate::persona::Prompts,
        defaults: &crate::model::GenerationDefaults,
    ) -> crate::turn::Options {
        crate::turn::Options {
            system: self.system.value.clone(),
            mode: self.strike.value,
            safe: self.safe.value,
            prompts,
            sampling: self.sampling(defaults),
            seed: self.seed.value,
            max_tokens: self.reply_limit(defaults),
            format: self.format.value.clone(),
            tools: self.tools.clone(),
            show_thinking: false,
            think: true,
        }
    }

    /// The model these settings name, on their device, with their KV cache.
    pub fn open_model(&self) -> anyhow::Result<crate::model::Model> {
        let device = self.device.value.open()?;
        let files = crate::resolve::resolve_any(&self.model.value, &self.hub_options())?;
        let mut model = crate::model::open(&files, &device, self.dtype)?;
        model.transformer.set_kv_type(self.kv_cache.value);
        if let Some(n) = self.ctx_size.value {
            let trained = model.transformer.config.context_length;
            if n > trained {
                crate::messages::warn(format!(
                    "--ctx-size {n} is more than the {trained} tokens {} was trained for; it keeps {trained}",
                    model.name
                ));
            }
            model.transformer.config.context_length = n.min(trained);
        }
        Ok(model)
    }

    /// Each setting as `greve config` shows it: key, value, source. A value
    /// left to the model or to the machine says so.
    pub fn rows(&self) -> Vec<(&'static str, String, Source)> {
        fn row<T>(
            key: &'static str,
            s: &Sourced<T>,
            show: impl Fn(&T) -> String,
        ) -> (&'static str, String, Source) {
            (key, show(&s.value), s.from)
        }
        fn or_else<T: ToString>(fallback: String) -> impl Fn(&Option<T>) -> String {
            move |v| v.as_ref().map_or_else(|| fallback.clone(), T::to_string)
        }
        fn model_or<T: ToString>(greve: impl std::fmt::Display) -> impl Fn(&Option<T>) -> String {
            or_else(format!("the model's, else {greve}"))
        }
        vec![
            row("model", &self.model, String::clone),
            row(
                "remote",
                &self.remote,
                or_else("none: the model runs here".into()),
            ),
            row("quant", &self.quant, or_else(DEFAULT_QUANT.into())),
            row("device", &self.device, DeviceSpec::to_string),
            row("threads", &self.threads, or_else("all cores".into())),
            row("kv_cache", &self.kv_cache, |k| k.name().into()),
            row(
                "ctx_size",
                &self.ctx_size,
                or_else("the model's context".into()),
            ),
            row("strike", &self.strike, |m| m.name().into()),
            row("safe", &self.safe, bool::to_string),
            row("system", &self.system, |s| {
                s.as_deref().map_or("none".into(), crate::messages::short)
            }),
            row("prompts", &self.prompts, |p| {
                p.as_ref()
                    .map_or("built in".into(), |p| p.display().to_string())
            }),
            row(
                "temperature",
                &self.temperature,
                model_or(DEFAULT_TEMPERATURE),
            ),
            row("top_p", &self.top_p, model_or(DEFAULT_TOP_P)),
            row("top_k", &self.top_k, model_or("0 (off)")),
            row("repeat_penalty", &self.repeat_penalty, model_or("1 (off)")),
            row("repeat_last_n", &self.repeat_last_n, usize::to_string),
            row(
                "max_tokens",
                &self.max_tokens,
                model_or("up to the context"),
            ),
            row("seed", &self.seed, |s| {
                if self.seed.from == Source::Default {
                    "random".into()
                } else {
                    s.to_string()
                }
            }),
            row("history", &self.history, bool::to_string),
            row("prompt_cache", &self.prompt_cache, |on| {
                match (on, self.prompt_cache_dir()) {
                    (true, Some(dir)) => dir.display().to_string(),
                    _ => "off".into(),
                }
            }),
            row("prompt_cache_size", &self.prompt_cache_size, |b| {
                crate::messages::size(*b)
            }),
            row("format", &self.format, |f| match f {
                Format::Schema(schema) => crate::messages::short(&schema.to_string()),
                Format::Lark(grammar) => crate::messages::short(grammar),
                other => other.name().into(),
            }),
        ]
    }
}

/// The layers in priority order.
struct Layers<'a>([(&'a Layer, Source); 3]);

impl Layers<'_> {
    fn pick<T: Clone>(&self, get: impl Fn(&Layer) -> &Option<T>) -> Option<Sourced<T>> {
        self.0
            .iter()
            .find_map(|&(layer, from)| get(layer).clone().map(|value| Sourced { value, from }))
    }

    fn or<T: Clone>(&self, get: impl Fn(&Layer) -> &Option<T>, default: T) -> Sourced<T> {
        self.pick(get).unwrap_or(Sourced {
            value: default,
            from: Source::Default,
        })
    }

    fn maybe<T: Clone>(&self, get: impl Fn(&Layer) -> &Option<T>) -> Sourced<Option<T>> {
        match self.pick(get) {
            Some(Sourced { value, from }) => Sourced {
                value: Some(value),
                from,
            },
            None => Sourced {
                value: None,
                from: Source::Default,
            },
        }
    }
}

fn random_seed() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(flags: Layer, env: Layer, file: Layer) -> Settings {
        Settings::resolve(&flags, &env, &file)
    }

    #[test]
    fn flags_beat_the_environment_which_beats_the_file() {
        let flags = Layer {
            temperature: Some(0.1),
            ..Layer::default()
        };
        let env = Layer {
            temperature: Some(0.2),
            top_p: Some(0.2),
            ..Layer::default()
        };
        let file = Layer {
            temperature: Some(0.3),
            top_p: Some(0.3),
            top_k: Some(3),
            ..Layer::default()
        };
        let s = resolve(flags, env, file);
        assert_eq!(
            (s.temperature.clone(), s.top_p.clone(), s.top_k.clone()),
            (
                Sourced {
                    value: Some(0.1),
                    from: Source::Flag
                },
                Sourced {
                    value: Some(0.2),
                    from: Source::Env
                },
                Sourced {
                    value: Some(3),
                    from: Source::File
                }
            )
        );
        assert_eq!(s.repeat_penalty.from, Source::Default);
        assert_eq!(s.model.value, DEFAULT_MODEL);
    }

    #[test]
    fn settings_beat_the_model_which_beats_greve() {
        let model = GenerationDefaults {
            temperature: Some(0.3),
            top_p: Some(0.5),
            max_tokens: Some(7),
            ..Default::default()
        };
        let file = Layer {
            top_p: Some(0.9),
            ..Layer::default()
        };
        let s = resolve(Layer::default(), Layer::default(), file);
        let p = s.sampling(&model);
        assert_eq!(
            (p.temperature, p.top_p, p.top_k, p.repeat_penalty),
            (0.3, 0.9, 0, 1.0)
        );
        assert_eq!(s.reply_limit(&model), Some(7));
        let p = s.sampling(&GenerationDefaults::default());
        assert_eq!(p.temperature, DEFAULT_TEMPERATURE);
        assert_eq!(s.reply_limit(&GenerationDefaults::default()), None);
    }

    #[test]
    fn a_transcript_beats_the_file_but_not_flags_or_environment() {
        let t = Transcript {
            system: Some("saved".into()),
            persona: Some(Mode::Totale),
            messages: Vec::new(),
        };
        let file = Layer {
            system: Some("file".into()),
            strike: Some(Mode::Raleuse),
            ..Layer::default()
        };
        let mut s = resolve(Layer::default(), Layer::default(), file.clone());
        s.follow(&t);
        assert_eq!(s.system.value.as_deref(), Some("saved"));
        assert_eq!(
            (s.strike.value, s.strike.from),
            (Mode::Totale, Source::Transcript)
        );

        let flags = Layer {
            strike: Some(Mode::Off),
            ..Layer::default()
        };
        let env = Layer {
            system: Some("env".into()),
            ..Layer::default()
        };
        let mut s = resolve(flags, env, file);
        s.follow(&t);
        assert_eq!(s.system.value.as_deref(), Some("env"));
        assert_eq!((s.strike.value, s.strike.from), (Mode::Off, Source::Flag));
    }

    #[test]
    fn every_row_names_its_source() {
        let env = Layer {
            kv_cache: Some(KvType::Q8),
            seed: Some(5),
            ..Layer::default()
        };
        let s = resolve(Layer::default(), env, Layer::default());
        let rows = s.rows();
        let find = |k: &str| rows.iter().find(|r| r.0 == k).unwrap().clone();
        assert_eq!(find("kv_cache"), ("kv_cache", "q8".into(), Source::Env));
        assert_eq!(find("seed"), ("seed", "5".into(), Source::Env));
        assert_eq!(
            find("temperature"),
            (
                "temperature",
                "the model's, else 0.7".into(),
                Source::Default
            )
        );
        let random = resolve(Layer::default(), Layer::default(), Layer::default());
        assert_eq!(
            random.rows().iter().find(|r| r.0 == "seed").unwrap().1,
            "random"
        );
    }

    #[test]
    fn devices_are_parsed_and_missing_features_explained() {
        let device = |s: &str| s.parse::<DeviceSpec>();
        assert!(device("cpu").unwrap().open().unwrap().is_cpu());
        assert!(device("auto").unwrap().open().is_ok());
        assert_eq!(device("cuda:2"), Ok(DeviceSpec::Cuda(2)));
        assert!(device("gpu")
            .unwrap_err()
            .contains("auto, cpu, cuda, cuda:N or metal"));
        assert!(device("cuda:x").is_err());
        for name in ["auto", "cpu", "cuda", "cuda:3", "metal"] {
            assert_eq!(device(name).unwrap().to_string(), name);
        }
        if !cfg!(feature = "cuda") {
            let err = DeviceSpec::Cuda(1).open().unwrap_err();
            assert!(format!("{err}").contains("--features cuda"));
        }
    }
}
