//! The config file (`config.toml` in greve's config folder, or the file
//! named by `GREVE_CONFIG`): defaults a user would otherwise retype. It
//! fills only what neither a flag nor a `GREVE_*` variable set (see
//! `settings.rs` for the whole order). Its keys are [`Layer`]'s fields. A
//! missing file is fine; an unknown key or a bad value is an error naming
//! the file, the line and the key.
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
//! safe = true
//! format = "json"            # or json_schema = "person.json"
//! system = "Réponds en français."
//! history = false
//! prompt_cache = true        # keys and values of system prompts on disk
//! prompt_cache_size = "2G"   # its bound, least recently used out first
//! ```

use std::path::{Path, PathBuf};

use crate::exit::Failure;
use crate::settings::Layer;

/// `GREVE_CONFIG`, else `config.toml` in the platform's config folder.
pub fn path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("GREVE_CONFIG").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    directories::ProjectDirs::from("", "", "greve").map(|d| d.config_dir().join("config.toml"))
}

/// The config file's settings; none when there is no file.
pub fn load(path: Option<&Path>) -> anyhow::Result<Layer> {
    let Some(path) = path.filter(|p| p.exists()) else {
        log::debug!(
            "no config file ({})",
            path.map_or("no config folder".into(), |p| p.display().to_string())
        );
        return Ok(Layer::default());
    };
    log::info!("config file {}", path.display());
    let text = crate::text_file::read_user(path, "the config file", 1 << 20)?;
    let mut layer =
        parse(&text).map_err(|e| Failure::Usage.err(format!("{}:{e}", path.display())))?;
    if let Some(schema) = layer.json_schema.take() {
        // A relative path is the config folder's.
        let schema = path.parent().unwrap_or(Path::new(".")).join(schema);
        let format =
            crate::structured::from_file(&schema, crate::structured::schema).map_err(|e| {
                Failure::Usage.err(format!(
                    "json_schema in the config file {}: {e}",
                    path.display()
                ))
            })?;
        layer.format = Some(format);
    }
    Ok(layer)
}

/// Parses a config file's text; an error reads "LINE: key: what is wrong".
pub fn parse(text: &str) -> Result<Layer, String> {
    toml::from_str(text).map_err(|e| {
        let line = e.span().map_or(1, |span| {
            text[..span.start.min(text.len())].matches('\n').count() + 1
        });
        let key = e.span().and_then(|span| {
            let start = text[..span.start.min(text.len())]
                .rfind('\n')
                .map_or(0, |i| i + 1);
            text[start..]
                .lines()
                .next()?
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::persona::Mode;

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
        assert_eq!(parse("").unwrap(), Layer::default());
        let c = parse("prompt_cache = false\nprompt_cache_size = \"512M\"").unwrap();
        assert_eq!(
            (c.prompt_cache, c.prompt_cache_size),
            (Some(false), Some(512 << 20))
        );
        assert_eq!(
            parse("prompt_cache_size = 1000").unwrap().prompt_cache_size,
            Some(1000)
        );
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
        let e = parse("prompt_cache_size = \"lots\"").unwrap_err();
        assert!(
            e.starts_with("1: prompt_cache_size") && e.contains("not a size"),
            "{e}"
        );
        assert!(parse("model = ").is_err());
        assert!(!parse("a = 1\nb = [\n").unwrap_err().contains('\n'));
        // Flag-only settings are not config file keys.
        assert!(parse("load = \"x.json\"").unwrap_err().contains("load"));
        assert!(parse("kv_cache = \"q4\"")
            .unwrap_err()
            .contains("f16 or q8"));
    }
}
