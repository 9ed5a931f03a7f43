//! The config file (`config.toml` in greve's config folder, or the file
//! named by `GREVE_CONFIG`): defaults a user would otherwise retype. It
//! fills only what neither a flag nor a `GREVE_*` variable set, so the
//! precedence is flags > environment > file > built-in defaults. A missing
//! file is fine; an unknown key or a bad value is an error naming the file,
//! the line and the key.
//!
//! ```toml
//! model = "mistral-7b-instruct-v0.3"
//! quant = "Q5_K_M"
//! device = "cpu"
//! threads = 2
//! kv_cache = "q8"
//! strike = "râleuse"
//! temperature = 0.5
//! top_p = 0.9
//! max_tokens = 512
//! prompts = "/home/me/mes-prompts"
//! history = false
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

use crate::cli::{self, Command, ModelArgs, PersonaArgs, SamplingArgs};
use crate::exit::Failure;
use crate::persona::Mode;

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub model: Option<String>,
    pub quant: Option<String>,
    pub device: Option<String>,
    #[serde(default, deserialize_with = "threads")]
    pub threads: Option<u16>,
    pub kv_cache: Option<cli::KvCacheArg>,
    #[serde(default, deserialize_with = "mode")]
    pub strike: Option<Mode>,
    #[serde(default, deserialize_with = "temperature")]
    pub temperature: Option<f32>,
    #[serde(default, deserialize_with = "probability")]
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    #[serde(default, deserialize_with = "positive")]
    pub repeat_penalty: Option<f32>,
    pub repeat_last_n: Option<usize>,
    pub max_tokens: Option<usize>,
    pub seed: Option<u64>,
    pub system: Option<String>,
    pub prompts: Option<PathBuf>,
    pub history: Option<bool>,
}

fn checked<'de, D: Deserializer<'de>>(
    d: D,
    check: fn(f32) -> Result<f32, String>,
) -> Result<Option<f32>, D::Error> {
    let x = f32::deserialize(d)?;
    check(x).map(Some).map_err(serde::de::Error::custom)
}

fn temperature<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f32>, D::Error> {
    checked(d, cli::check_non_negative)
}

fn probability<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f32>, D::Error> {
    checked(d, cli::check_probability)
}

fn positive<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f32>, D::Error> {
    checked(d, cli::check_positive)
}

fn threads<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    let n = u64::deserialize(d)?;
    cli::check_threads(n)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

fn mode<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Mode>, D::Error> {
    let name = String::deserialize(d)?;
    name.parse().map(Some).map_err(serde::de::Error::custom)
}

/// `GREVE_CONFIG`, else `config.toml` in the platform's config folder.
pub fn path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("GREVE_CONFIG").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    directories::ProjectDirs::from("", "", "greve").map(|d| d.config_dir().join("config.toml"))
}

/// The config file's settings; none when there is no file.
pub fn load(path: Option<&Path>) -> anyhow::Result<FileConfig> {
    let Some(path) = path.filter(|p| p.exists()) else {
        log::debug!(
            "no config file ({})",
            path.map_or("no config folder".into(), |p| p.display().to_string())
        );
        return Ok(FileConfig::default());
    };
    log::info!("config file {}", path.display());
    let text = std::fs::read_to_string(path).map_err(|e| {
        Failure::Usage.err(format!(
            "cannot read the config file {}: {e}",
            path.display()
        ))
    })?;
    parse(&text).map_err(|e| Failure::Usage.err(format!("{}:{e}", path.display())))
}

/// Parses a config file's text; an error reads "LINE: key: what is wrong".
pub fn parse(text: &str) -> Result<FileConfig, String> {
    toml::from_str(text).map_err(|e| {
        let line = e.span().map_or(1, |span| {
            text[..span.start.min(text.len())].matches('\n').count() + 1
        });
        let key = e.span().and_then(|span| {
            let start = text[..span.start.min(text.len())]
                .rfind('\n')
                .map_or(0, |i| i + 1);
            text[start..]
                .split('=')
                .next()
                .map(|k| k.trim().to_string())
        });
        let message = e.message().replace('\n', " ");
        match key {
            Some(key) if !key.is_empty() => format!("{line}: {key}: {message}"),
            _ => format!("{line}: {message}"),
        }
    })
}

impl FileConfig {
    /// Fills what flags and environment left unset.
    pub fn apply(&self, command: &mut Command) {
        match command {
            Command::Ask(a) => {
                self.model_args(&mut a.model);
                self.sampling(&mut a.sampling);
                self.persona(&mut a.persona);
                if a.system.system.is_none() && a.system.system_file.is_none() {
                    a.system.system = self.system.clone();
                }
            }
            Command::Chat(a) => {
                self.model_args(&mut a.model);
                self.sampling(&mut a.sampling);
                self.persona(&mut a.persona);
                if a.system.system.is_none() && a.system.system_file.is_none() {
                    a.system.system = self.system.clone();
                }
                if self.history == Some(false) {
                    a.no_history = true;
                }
            }
            Command::Config(a) => {
                self.model_args(&mut a.model);
                self.sampling(&mut a.sampling);
                self.persona(&mut a.persona);
            }
            Command::Bench(a) => self.model_args(&mut a.model),
            Command::Info(a) => self.model_args(&mut a.model),
            Command::Doctor(a) => self.model_args(&mut a.model),
            Command::Tokenize(a) => {
                fill(&mut a.model, &self.model);
                fill(&mut a.hub.quant, &self.quant);
            }
            Command::Pull(a) => {
                fill(&mut a.model, &self.model);
                fill(&mut a.hub.quant, &self.quant);
            }
            Command::Models | Command::Completions(_) | Command::Man => {}
        }
    }

    fn model_args(&self, m: &mut ModelArgs) {
        fill(&mut m.model, &self.model);
        fill(&mut m.hub.quant, &self.quant);
        fill(&mut m.device, &self.device);
        fill(&mut m.threads, &self.threads);
        fill(&mut m.kv_cache, &self.kv_cache);
    }

    fn sampling(&self, s: &mut SamplingArgs) {
        fill(&mut s.temperature, &self.temperature);
        fill(&mut s.top_p, &self.top_p);
        fill(&mut s.top_k, &self.top_k);
        fill(&mut s.repeat_penalty, &self.repeat_penalty);
        fill(&mut s.repeat_last_n, &self.repeat_last_n);
        fill(&mut s.max_tokens, &self.max_tokens);
        fill(&mut s.seed, &self.seed);
    }

    fn persona(&self, p: &mut PersonaArgs) {
        if !p.no_strike {
            fill(&mut p.strike, &self.strike);
        }
        fill(&mut p.prompts, &self.prompts);
    }
}

fn fill<T: Clone>(slot: &mut Option<T>, from: &Option<T>) {
    if slot.is_none() {
        slot.clone_from(from);
    }
}

/// `greve config`: every setting, its effective value and where it came
/// from; `greve config path`: the file's path.
pub fn show(
    args: &cli::ConfigArgs,
    matches: &clap::ArgMatches,
    file: &FileConfig,
    path: Option<&Path>,
) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let path_text = path.map_or("(no config folder on this system)".into(), |p| {
        p.display().to_string()
    });
    if args.action.as_deref() == Some("path") {
        writeln!(out, "{path_text}")?;
        return Ok(());
    }
    let exists = path.is_some_and(Path::exists);
    writeln!(
        out,
        "# config file: {path_text}{}",
        if exists { "" } else { " (absent)" }
    )?;
    let source = |id: &str, in_file: bool| -> &'static str {
        match matches.value_source(id) {
            Some(clap::parser::ValueSource::CommandLine) => "flag",
            Some(clap::parser::ValueSource::EnvVariable) => "env",
            _ if in_file => "file",
            _ => "default",
        }
    };
    let show = |v: Option<String>, default: &str| v.unwrap_or_else(|| default.to_string());
    let s = &args.sampling;
    let rows: Vec<(&str, String, &str)> = vec![
        (
            "model",
            show(args.model.model.clone(), crate::hub::DEFAULT_MODEL),
            source("model", file.model.is_some()),
        ),
        (
            "quant",
            show(args.model.hub.quant.clone(), crate::hub::DEFAULT_QUANT),
            source("quant", file.quant.is_some()),
        ),
        (
            "device",
            show(args.model.device.clone(), "auto"),
            source("device", file.device.is_some()),
        ),
        (
            "threads",
            show(args.model.threads.map(|t| t.to_string()), "all cores"),
            source("threads", file.threads.is_some()),
        ),
        (
            "kv_cache",
            show(
                args.model.kv_cache.map(|k| format!("{k:?}").to_lowercase()),
                "f16",
            ),
            source("kv_cache", file.kv_cache.is_some()),
        ),
        (
            "strike",
            show(args.persona.strike.map(|m| m.name().to_string()), "off"),
            source("strike", file.strike.is_some()),
        ),
        (
            "prompts",
            show(
                args.persona
                    .prompts
                    .as_ref()
                    .map(|p| p.display().to_string()),
                "built in",
            ),
            source("prompts", file.prompts.is_some()),
        ),
        (
            "temperature",
            show(
                s.temperature.map(|x| x.to_string()),
                "the model's, else 0.7",
            ),
            source("temperature", file.temperature.is_some()),
        ),
        (
            "top_p",
            show(s.top_p.map(|x| x.to_string()), "the model's, else 0.95"),
            source("top_p", file.top_p.is_some()),
        ),
        (
            "top_k",
            show(s.top_k.map(|x| x.to_string()), "the model's, else 0 (off)"),
            source("top_k", file.top_k.is_some()),
        ),
        (
            "repeat_penalty",
            show(
                s.repeat_penalty.map(|x| x.to_string()),
                "the model's, else 1 (off)",
            ),
            source("repeat_penalty", file.repeat_penalty.is_some()),
        ),
        (
            "repeat_last_n",
            show(s.repeat_last_n.map(|x| x.to_string()), "64"),
            source("repeat_last_n", file.repeat_last_n.is_some()),
        ),
        (
            "max_tokens",
            show(
                s.max_tokens.map(|x| x.to_string()),
                "until EOS or the context is full",
            ),
            source("max_tokens", file.max_tokens.is_some()),
        ),
        (
            "seed",
            show(s.seed.map(|x| x.to_string()), "random"),
            source("seed", file.seed.is_some()),
        ),
        (
            "system",
            show(file.system.clone(), "none"),
            if file.system.is_some() {
                "file"
            } else {
                "default"
            },
        ),
        (
            "history",
            show(file.history.map(|h| h.to_string()), "true"),
            if file.history.is_some() {
                "file"
            } else {
                "default"
            },
        ),
    ];
    for (key, value, from) in rows {
        writeln!(out, "{key:<15} {value:<40} ({from})")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_file_parses() {
        let c = parse(
            "model = \"m\"\ntemperature = 0.5\nstrike = \"totale\"\nhistory = false\nthreads = 2\n",
        )
        .unwrap();
        assert_eq!(c.model.as_deref(), Some("m"));
        assert_eq!(c.temperature, Some(0.5));
        assert_eq!(c.strike, Some(Mode::Totale));
        assert_eq!(c.history, Some(false));
        assert_eq!(parse("").unwrap(), FileConfig::default());
    }

    #[test]
    fn errors_name_the_line_and_the_key() {
        let e = parse("model = \"m\"\ntemprature = 0.5\n").unwrap_err();
        assert!(e.starts_with("2: temprature"), "{e}");
        let e = parse("\n\ntemperature = -1\n").unwrap_err();
        assert!(
            e.starts_with("3: temperature") && e.contains("0 or more"),
            "{e}"
        );
        let e = parse("top_p = \"high\"").unwrap_err();
        assert!(e.starts_with("1: top_p"), "{e}");
        let e = parse("strike = \"lundi\"").unwrap_err();
        assert!(e.contains("not a strike mode"), "{e}");
        assert!(parse("threads = 0").is_err());
        assert!(parse("model = ").is_err());
        assert!(!parse("a = 1\nb = [\n").unwrap_err().contains('\n'));
    }
}
