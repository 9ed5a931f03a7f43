//! `greve models`, `greve pull` and `greve info`: the presets, fetching a
//! model into the Hub cache without chatting, and what a model resolves to.

use std::io::Write;

use crate::hub::{self, DEFAULT_MODEL, DEFAULT_QUANT, PRESETS};
use crate::model::WeightFiles;
use crate::model::{self, config::Config, gguf::GgufSource};
use crate::resolve::resolve_any;
use crate::settings::Settings;

/// Lists the presets; sizes are those of the Hub files, memory what
/// [`model::memory_needed`] says for a conversation of
/// [`model::PLANNED_CONTEXT`] tokens.
pub fn list() -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let mut row = |[name, format, size, ram, needs]: [&str; 5]| {
        writeln!(out, "{name:<36} {format:<12} {size:>8} {ram:>10}  {needs}")
    };
    row(["preset", "format", "size", "RAM", "needs"])?;
    let gb = |bytes: u64| format!("{:.1} GB", bytes as f64 / 1e9);
    for p in &PRESETS {
        let default = if p.name == DEFAULT_MODEL {
            " (default)"
        } else {
            ""
        };
        let needs = |bytes: u64| {
            gb(model::memory_needed(
                bytes,
                p.kv_per_token,
                model::PLANNED_CONTEXT,
            ))
        };
        let q4 = p.q4_k_m_bytes;
        row([
            p.name,
            "GGUF Q4_K_M",
            &gb(q4),
            &needs(q4),
            &format!("no account{default}"),
        ])?;
        match p.bf16_bytes {
            Some(bf16) => {
                let token = if p.gated {
                    format!(
                        "a token, and its licence accepted on huggingface.co/{}",
                        p.repo
                    )
                } else {
                    "no account".to_string()
                };
                row(["", "safetensors", &gb(bf16), &needs(bf16), &token])?
            }
            None => row([
                "",
                "safetensors",
                "-",
                "-",
                &format!("not read by greve: {} holds a vision model too", p.repo),
            ])?,
        }
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
pub fn pull(settings: &Settings) -> anyhow::Result<()> {
    let spec = settings.model.value.as_str();
    let files = resolve_any(spec, &settings.hub_options())?;
    let path = match &files.weights {
        WeightFiles::Gguf(path) => path.clone(),
        WeightFiles::Safetensors { config, .. } => {
            config.parent().map(|p| p.to_path_buf()).unwrap_or_default()
        }
    };
    writeln!(std::io::stdout().lock(), "{}", path.display())?;
    if hub::parse(spec, &settings.hub_options())?.is_none() {
        crate::messages::note(format!("{spec} is a local model: nothing to download"));
    }
    Ok(())
}

/// What `--model` resolves to, without loading the weights.
pub fn info(settings: &Settings) -> anyhow::Result<()> {
    let spec = settings.model.value.as_str();
    let hub_opts = settings.hub_options();
    let files = resolve_any(spec, &hub_opts)?;
    let device = settings.device.value.open()?;
    let dtype = model::compute_dtype(&files, &device, settings.dtype);
    let tokenizer = crate::resolve::open_tokenizer(spec, &hub_opts)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "model        {spec}")?;
    let (config, format, paths, tokenizer_source) = match &files.weights {
        WeightFiles::Gguf(path) => {
            let src = GgufSource::open(path, &device)?;
            let config = Config::from_gguf(src.metadata(), src.vocab_size()?)?;
            let types: Vec<String> = src
                .tensor_types()
                .iter()
                .map(|(t, n)| format!("{t}×{n}"))
                .collect();
            (
                config,
                format!("GGUF ({})", types.join(", ")),
                vec![path.clone()],
                "GGUF metadata".to_string(),
            )
        }
        WeightFiles::Safetensors { config, shards } => {
            let mut paths = vec![config.clone()];
            paths.extend(shards.iter().cloned());
            let tokenizer = files.tokenizer.as_ref().or(files.tekken.as_ref());
            paths.extend(tokenizer.cloned());
            let source = tokenizer.map_or("none".into(), |p| p.display().to_string());
            (
                Config::from_json_file(config)?,
                format!("safetensors, {} shard(s)", shards.len()),
                paths,
                source,
            )
        }
    };
    writeln!(out, "format       {format}")?;
    for path in &paths {
        let size = file_size(path);
        writeln!(
            out,
            "file         {} ({:.2} GB)",
            path.display(),
            size as f64 / 1e9
        )?;
    }
    let kv = config.kv_bytes_per_token();
    let per_token = match kv {
        b if b < 1024 => format!("{b} bytes"),
        b => format!("{} KiB", b / 1024),
    };
    writeln!(
        out,
        "context      {} tokens (KV cache {per_token} a token in f16, {} for the whole context; --kv-cache q8 takes 56 %)",
        config.context_length,
        crate::messages::size(kv * config.context_length as u64)
    )?;
    writeln!(
        out,
        "shape        {} layers, hidden {}, {} heads ({} for keys/values), rope θ {}, sliding window {}",
        config.num_layers,
        config.hidden_size,
        config.num_heads,
        config.num_kv_heads,
        config.rope_theta,
        config.sliding_window.map_or("none".into(), |w| w.to_string())
    )?;
    writeln!(
        out,
        "tokenizer    {tokenizer_source}: {} tokens, instruct format {:?}",
        tokenizer.vocab_size(),
        tokenizer.format()
    )?;
    if model::reasoning_prompt(&files, &tokenizer)?.is_some() {
        let source = match files.system_prompt {
            Some(_) => "SYSTEM_PROMPT.txt",
            None => "its chat template's",
        };
        writeln!(
            out,
            "reasoning    thinks first, as the system prompt in {source} shows it (--think off leaves that out)"
        )?;
    }
    writeln!(out, "compute      {dtype:?} on {device:?}")?;
    let weights: u64 = match &files.weights {
        WeightFiles::Gguf(path) => file_size(path),
        WeightFiles::Safetensors { shards, .. } => shards.iter().map(|p| file_size(p)).sum(),
    };
    let context = model::PLANNED_CONTEXT.min(config.context_length);
    let needed = model::memory_needed(weights, config.kv_bytes_per_token(), context);
    writeln!(
        out,
        "memory       about {:.1} GB with a {context}-token conversation",
        needed as f64 / 1e9
    )?;
    Ok(())
}

fn file_size(path: &std::path::Path) -> u64 {
    path.metadata().map_or(0, |m| m.len())
}
