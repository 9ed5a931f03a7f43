//! `greve models` and `greve pull`: the presets, and fetching a model into
//! the Hub cache without chatting.

use std::io::Write;

use crate::cli::PullArgs;
use crate::hub::{self, DEFAULT_MODEL, DEFAULT_QUANT, PRESETS};
use crate::resolve::{resolve_any, WeightFiles};
use crate::settings;

/// Lists the presets; sizes are those of the Hub files.
pub fn list() -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<26} {:<12} {:>8} {:>10}  needs",
        "preset", "format", "size", "RAM"
    )?;
    for p in &PRESETS {
        let default = if p.name == DEFAULT_MODEL {
            " (default)"
        } else {
            ""
        };
        let token = if p.gated {
            format!(
                "a token, and its licence accepted on huggingface.co/{}",
                p.repo
            )
        } else {
            "no account".to_string()
        };
        // Measured: greve holds a Q4_K_M file twice today (see the README).
        writeln!(
            out,
            "{:<26} {:<12} {:>8} {:>10}  no account{default}",
            p.name, "GGUF Q4_K_M", "4.4 GB", "~10 GB"
        )?;
        writeln!(
            out,
            "{:<26} {:<12} {:>8} {:>10}  {token}",
            "", "safetensors", "14.5 GB", "~16 GB"
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "--quant picks another GGUF file (Q5_K_M, Q8_0, …) or the safetensors (--quant safetensors); default {DEFAULT_QUANT}."
    )?;
    writeln!(out, "Any Hub repo id (org/name[@revision]) works too.")?;
    Ok(())
}

/// Downloads what `--model` would load, and says where it is.
pub fn pull(args: &PullArgs) -> anyhow::Result<()> {
    let spec = settings::model_spec(args.model.as_deref());
    let files = resolve_any(spec, &settings::hub_options(&args.hub))?;
    let path = match &files.weights {
        WeightFiles::Gguf(path) => path.clone(),
        WeightFiles::Safetensors { config, .. } => {
            config.parent().map(|p| p.to_path_buf()).unwrap_or_default()
        }
    };
    writeln!(std::io::stdout().lock(), "{}", path.display())?;
    if hub::parse(spec, &settings::hub_options(&args.hub)).is_none() {
        eprintln!("greve: {spec} is a local model: nothing to download");
    }
    Ok(())
}
