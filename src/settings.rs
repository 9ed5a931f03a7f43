//! From parsed flags to the values the work uses: defaults filled in from
//! the model's `generation_config.json` or greve's own, device and dtype
//! resolved. Plain functions over plain data.

use std::path::PathBuf;

use candle_core::{DType, Device};

use crate::cli::{DtypeArg, HubArgs, KvCacheArg, ModelArgs, PersonaArgs, SamplingArgs, SystemArgs};
use crate::exit::{Classify, Failure};
use crate::model::attention::KvType;
use crate::model::GenerationDefaults;
use crate::persona::Mode;
use crate::sampler::SamplingParams;

/// greve's defaults where the model ships none: Mistral's recommended
/// temperature for its 7B instruct models, nucleus sampling at 0.95, no
/// top-k and no repeat penalty (as `mistral-inference` samples).
pub const DEFAULT_TEMPERATURE: f32 = 0.7;
pub const DEFAULT_TOP_P: f32 = 0.95;
/// The repeat penalty's window, as llama.cpp's.
pub const DEFAULT_REPEAT_LAST_N: usize = 64;

pub fn sampling_params(args: &SamplingArgs, model: &GenerationDefaults) -> SamplingParams {
    SamplingParams {
        temperature: args
            .temperature
            .or(model.temperature)
            .unwrap_or(DEFAULT_TEMPERATURE),
        top_k: args.top_k.or(model.top_k).unwrap_or(0),
        top_p: args.top_p.or(model.top_p).unwrap_or(DEFAULT_TOP_P),
        repeat_penalty: args.repeat_penalty.or(model.repeat_penalty).unwrap_or(1.0),
        repeat_last_n: args.repeat_last_n.unwrap_or(DEFAULT_REPEAT_LAST_N),
    }
}

/// The sampling seed: `--seed`, else a new one each run (shown by `--stats`
/// and `--json`, so a reply can be reproduced).
pub fn seed(args: &SamplingArgs) -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    args.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    })
}

/// How many tokens may be generated: the user's limit (else the model's),
/// never past the end of the context window.
pub fn max_tokens(
    args: &SamplingArgs,
    model: &GenerationDefaults,
    prompt: usize,
    context: usize,
) -> usize {
    let room = context.saturating_sub(prompt);
    args.max_tokens
        .or(model.max_tokens)
        .map_or(room, |n| n.min(room))
}

/// The model to load: `--model` (or GREVE_MODEL), else the default preset.
pub fn model_spec(model: Option<&str>) -> &str {
    model.unwrap_or(crate::hub::DEFAULT_MODEL)
}

pub fn hub_options(args: &HubArgs) -> crate::hub::HubOptions {
    crate::hub::HubOptions {
        quant: args.quant.clone(),
        revision: args.revision.clone(),
        offline: args.offline,
        quiet: crate::messages::quiet(),
    }
}

/// `--no-strike` wins over `--strike` and `GREVE_STRIKE`; off by default.
pub fn strike_mode(args: &PersonaArgs) -> Mode {
    if args.no_strike {
        Mode::Off
    } else {
        args.strike.unwrap_or(Mode::Off)
    }
}

/// Where prompt files may override the built-in ones, in increasing
/// priority: `prompts/` in greve's config folder (when it exists), then
/// `--prompts DIR` (which must exist).
pub fn prompt_folders(args: &PersonaArgs) -> anyhow::Result<Vec<PathBuf>> {
    let mut folders: Vec<PathBuf> = directories::ProjectDirs::from("", "", "greve")
        .map(|d| d.config_dir().join("prompts"))
        .filter(|d| d.is_dir())
        .into_iter()
        .collect();
    if let Some(dir) = &args.prompts {
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

/// The user's own system prompt, from `--system` or `--system-file`.
pub fn user_system(args: &SystemArgs) -> anyhow::Result<Option<String>> {
    match (args.system.as_deref(), args.system_file.as_deref()) {
        (Some(text), _) => Ok(Some(text.to_string())),
        (None, Some(path)) => {
            let bytes = std::fs::read(path).classify(Failure::Usage, || {
                format!("cannot read --system-file {}", path.display())
            })?;
            String::from_utf8(bytes).map(Some).map_err(|_| {
                Failure::Usage.err(format!(
                    "--system-file {} is not valid UTF-8",
                    path.display()
                ))
            })
        }
        (None, None) => Ok(None),
    }
}

/// The model `--model` and its companions name, on the device they ask for,
/// with the KV cache type they ask for.
pub fn open_model(args: &ModelArgs) -> anyhow::Result<crate::model::Model> {
    let device = device(args.device.as_deref())?;
    let mut model = crate::model::open(
        model_spec(args.model.as_deref()),
        &hub_options(&args.hub),
        &device,
        dtype(args.dtype),
    )?;
    model.transformer.set_kv_type(kv_type(args.kv_cache));
    Ok(model)
}

pub fn kv_type(arg: Option<KvCacheArg>) -> KvType {
    match arg {
        None | Some(KvCacheArg::F16) => KvType::F16,
        Some(KvCacheArg::Q8) => KvType::Q8,
    }
}

pub fn dtype(arg: Option<DtypeArg>) -> Option<DType> {
    arg.map(|d| match d {
        DtypeArg::F32 => DType::F32,
        DtypeArg::F16 => DType::F16,
        DtypeArg::Bf16 => DType::BF16,
    })
}

/// `auto` (also when no device is given) takes the GPU this build supports
/// when one is there, else the CPU.
pub fn device(spec: Option<&str>) -> anyhow::Result<Device> {
    let spec = spec.unwrap_or("auto");
    let unknown = || {
        Failure::Usage.err(format!(
            "--device {spec:?} is not a device: use auto, cpu, cuda, cuda:N or metal"
        ))
    };
    match spec {
        "auto" => Ok(auto_device()),
        "cpu" => Ok(Device::Cpu),
        "metal" => gpu("metal", cfg!(feature = "metal"), || Device::new_metal(0)),
        "cuda" => gpu("cuda", cfg!(feature = "cuda"), || Device::new_cuda(0)),
        _ => {
            let ordinal = spec.strip_prefix("cuda:").ok_or_else(unknown)?;
            let n: usize = ordinal.parse().map_err(|_| unknown())?;
            gpu("cuda", cfg!(feature = "cuda"), || Device::new_cuda(n))
        }
    }
}

fn auto_device() -> Device {
    if cfg!(feature = "cuda") {
        if let Ok(d) = Device::new_cuda(0) {
            return d;
        }
    }
    if cfg!(feature = "metal") {
        if let Ok(d) = Device::new_metal(0) {
            return d;
        }
    }
    Device::Cpu
}

fn gpu(
    feature: &str,
    built: bool,
    open: impl FnOnce() -> candle_core::Result<Device>,
) -> anyhow::Result<Device> {
    if !built {
        return Err(Failure::Usage.err(format!(
            "this greve was built without {feature} support; rebuild with `cargo install --path . --features {feature}` or use --device cpu"
        )));
    }
    open().map_err(|e| Failure::Usage.err(format!("cannot open the {feature} device: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> SamplingArgs {
        SamplingArgs {
            temperature: None,
            top_p: None,
            top_k: None,
            repeat_penalty: None,
            repeat_last_n: None,
            seed: None,
            max_tokens: None,
        }
    }

    #[test]
    fn flags_beat_the_model_which_beats_greve() {
        let model = GenerationDefaults {
            temperature: Some(0.3),
            top_p: Some(0.5),
            ..Default::default()
        };
        let mut a = args();
        a.top_p = Some(0.9);
        let p = sampling_params(&a, &model);
        assert_eq!(
            (p.temperature, p.top_p, p.top_k, p.repeat_penalty),
            (0.3, 0.9, 0, 1.0)
        );
        let p = sampling_params(&args(), &GenerationDefaults::default());
        assert_eq!(p.temperature, DEFAULT_TEMPERATURE);
    }

    #[test]
    fn max_tokens_stays_inside_the_context() {
        let mut a = args();
        let none = GenerationDefaults::default();
        assert_eq!(max_tokens(&a, &none, 10, 100), 90);
        a.max_tokens = Some(5);
        assert_eq!(max_tokens(&a, &none, 10, 100), 5);
        a.max_tokens = Some(500);
        assert_eq!(max_tokens(&a, &none, 10, 100), 90);
    }

    #[test]
    fn devices_are_parsed_and_missing_features_explained() {
        assert!(device(Some("cpu")).unwrap().is_cpu());
        assert!(device(None).is_ok());
        assert!(device(Some("auto")).is_ok());
        assert!(device(Some("gpu")).is_err());
        assert!(device(Some("cuda:x")).is_err());
        if !cfg!(feature = "cuda") {
            let err = device(Some("cuda:1")).unwrap_err();
            assert!(format!("{err}").contains("--features cuda"));
        }
    }
}
