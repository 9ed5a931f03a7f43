//! A loaded model: the transformer with its weights, the tokenizer that
//! matches it, and the generation defaults its authors shipped.
//!
//! Both file formats end in the same [`Transformer`]; the only difference
//! past this file is the [`weights::WeightSource`] that fed it.

pub mod attention;
pub mod config;
mod cuda;
pub mod dense;
mod files;
pub mod gguf;
pub mod gpu_kv_cache;
pub mod isa;
mod kv_cache;
pub mod linear;
mod ops;
pub mod profile;
pub mod quant;
pub mod safetensors;
pub mod stock;
pub mod transformer;
pub mod weights;

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device};
use serde::Deserialize;

use crate::exit::{Classify, Failure};
use crate::template::{Instruct, System};
use crate::text_file::read_json;
use crate::tokenizer::{SpecialTokens, Tokenizer};
use config::Config;
pub use files::{ModelFiles, WeightFiles};
use transformer::Transformer;

/// A buffer the work items of one parallel loop write in disjoint parts
/// (each element by one item only), shared with all of them.
pub(crate) struct Disjoint<T>(*mut T);

impl<T> Disjoint<T> {
    pub(crate) fn new(buffer: &mut [T]) -> Self {
        Disjoint(buffer.as_mut_ptr())
    }

    /// Element `i`. The caller keeps `i` in the buffer and writes it from one item only.
    pub(crate) fn at(&self, i: usize) -> *mut T {
        self.0.wrapping_add(i)
    }
}

// SAFETY: the work items write disjoint elements (see `at`), and the buffer
// outlives the loop that shares it.
unsafe impl<T: Send> Sync for Disjoint<T> {}

/// Runs `f` over ranges that cover `0..items` once, on every thread of
/// candle's pool. Each thread takes the next range as it finishes one, a
/// share of what is left (guided scheduling): large ranges while the work
/// lasts, single items at the end, so that the threads finish together. In
/// a decoded token's ~225 products a thread waiting for the other's last
/// range is bandwidth unused. Not for use inside `f` of another call: the
/// pool runs one loop at a time, and would wait for itself.
pub(crate) fn in_parallel(items: usize, f: impl Fn(std::ops::Range<usize>) + Sync) {
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    let pool = candle_core::utils::barrier_pool();
    let threads = pool.n_workers() + 1;
    if items == 0 {
        return;
    }
    if threads == 1 || items == 1 {
        return f(0..items);
    }
    let next = AtomicUsize::new(0);
    pool.execute(|_| {
        let mut start = next.load(Relaxed);
        while start < items {
            let end = start + (items - start).div_ceil(2 * threads);
            match next.compare_exchange_weak(start, end, Relaxed, Relaxed) {
                Ok(_) => {
                    f(start..end);
                    start = next.load(Relaxed);
                }
                Err(now) => start = now,
            }
        }
    });
}

pub struct Model {
    pub transformer: Transformer,
    /// Shared, so a front end can decode while the model generates.
    pub tokenizer: Arc<Tokenizer>,
    pub defaults: GenerationDefaults,
    /// What the user named, for messages and `--json`.
    pub name: String,
    /// What its outputs depend on besides the tokens and the KV type: its
    /// files' contents ([`ModelFiles::fingerprint`]), dtype and device.
    pub fingerprint: String,
    /// The system prompt that makes a reasoning release think, where it
    /// ships one.
    pub reasoning: Option<System>,
}

/// Sampling defaults from `generation_config.json`; absent fields stay `None`
/// and the caller's defaults apply.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct GenerationDefaults {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    #[serde(rename = "repetition_penalty")]
    pub repeat_penalty: Option<f32>,
    #[serde(rename = "max_new_tokens")]
    pub max_tokens: Option<usize>,
    /// One id or a list in the file.
    #[serde(default, deserialize_with = "one_or_many")]
    pub eos_token_id: Vec<u32>,
}

impl GenerationDefaults {
    /// Held to the ranges the same settings have as flags: out of them a
    /// value makes sampling uniform (a temperature of 1e39) or greedy.
    fn checked(self, path: &Path) -> anyhow::Result<Self> {
        use crate::settings::check;
        type Check = fn(f32) -> Result<f32, String>;
        let fields: [(&str, Option<f32>, Check); 3] = [
            ("temperature", self.temperature, check::non_negative),
            ("top_p", self.top_p, check::probability),
            ("repetition_penalty", self.repeat_penalty, check::positive),
        ];
        for (name, value, check) in fields {
            if let Some(Err(why)) = value.map(check) {
                return Err(Failure::ModelInvalid.err(format!(
                    "{}: {name} {}: {why}; fix or remove the file",
                    path.display(),
                    value.unwrap_or_default()
                )));
            }
        }
        Ok(self)
    }
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u32>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(u32),
        Many(Vec<u32>),
        Null,
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(id) => vec![id],
        OneOrMany::Many(ids) => ids,
        OneOrMany::Null => vec![],
    })
}

/// The compute dtype: what the user asked for, else bf16 on GPUs and on a
/// CPU f32 (candle's CPU kernels are fastest in f32) when the f32 copy fits
/// in the memory available, bf16 when it does not (Mistral 7B: 29 GB in f32,
/// 14.5 GB in bf16). GGUF files always compute in f32: candle's quantised
/// matmuls take f32 activations.
pub fn compute_dtype(files: &ModelFiles, device: &Device, requested: Option<DType>) -> DType {
    match (&files.weights, requested) {
        (WeightFiles::Gguf(_), _) => DType::F32,
        (_, Some(dtype)) => dtype,
        (WeightFiles::Safetensors { shards, .. }, None) if device.is_cpu() => {
            let on_disk: u64 = shards
                .iter()
                .filter_map(|p| p.metadata().ok())
                .map(|m| m.len())
                .sum();
            cpu_dtype(on_disk, crate::system::available_memory())
        }
        _ => DType::BF16,
    }
}

/// f32 unless twice the (16-bit) weights on disk would take more than 80 %
/// of the available memory.
fn cpu_dtype(weights_on_disk: u64, available: Option<u64>) -> DType {
    match available {
        Some(free) if weights_on_disk.saturating_mul(2) > free / 5 * 4 => DType::BF16,
        _ => DType::F32,
    }
}

/// The context `memory_needed` plans for when the user has not said: a
/// long conversation, well short of the 32k the models allow.
pub const PLANNED_CONTEXT: usize = 4096;

/// What running a model takes in memory, in bytes: the weights as they are
/// on disk (a GGUF file is used where it is mapped; safetensors are copied
/// into bf16, or into f32 only where twice that fits), the f16 KV cache for
/// `context` tokens ([`Config::kv_bytes_per_token`]) and about 300 MB of
/// activations and runtime. The one place this figure is computed: the
/// download pre-flight, `greve models`, `greve info` and `greve doctor`
/// use it, and the README quotes it.
pub fn memory_needed(weights_on_disk: u64, kv_per_token: u64, context: usize) -> u64 {
    const RUNTIME: u64 = 300_000_000;
    weights_on_disk + kv_per_token * context as u64 + RUNTIME
}

/// Loads a model's files with the dtype [`compute_dtype`] picks, with a
/// note on stderr when it is a terminal (loading 4 GB takes a few seconds).
pub fn open(
    files: &ModelFiles,
    device: &Device,
    requested: Option<DType>,
) -> anyhow::Result<Model> {
    let dtype = compute_dtype(files, device, requested);
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        crate::messages::note(format!("loading {} ({dtype:?} on {device:?})", files.name));
    }
    let start = std::time::Instant::now();
    let model = load(files, device, dtype)?;
    log::info!(
        "loaded {} in {:.2} s: {:?} compute on {device:?}, context {}, vocabulary {} ({:?} format)",
        files.name,
        start.elapsed().as_secs_f64(),
        dtype,
        model.transformer.config.context_length,
        model.tokenizer.vocab_size(),
        model.tokenizer.format()
    );
    log::debug!("model config: {:?}", model.transformer.config);
    Ok(model)
}

pub fn load(files: &ModelFiles, device: &Device, dtype: DType) -> anyhow::Result<Model> {
    let (tokenizer, transformer) = match &files.weights {
        WeightFiles::Safetensors { .. } => {
            let tokenizer = load_tokenizer_json(files)?;
            (tokenizer, load_transformer(files, device, dtype)?)
        }
        WeightFiles::Gguf(path) => {
            let mut src = gguf::GgufSource::open(path, device)?;
            let tokenizer = gguf_tokenizer(&src, path)?;
            (tokenizer, gguf_transformer(&mut src, path, device, dtype)?)
        }
    };
    if tokenizer.vocab_size() > transformer.config.vocab_size {
        return Err(Failure::ModelInvalid.err(format!(
            "the tokenizer of {} has ids up to {} but the model only {} tokens: they do not belong together",
            files.name,
            tokenizer.vocab_size() - 1,
            transformer.config.vocab_size
        )));
    }
    let defaults = match &files.generation_config {
        Some(path) => read_json::<GenerationDefaults>(path)?.checked(path)?,
        None => GenerationDefaults::default(),
    };
    let reasoning = reasoning_prompt(files, &tokenizer)?;
    Ok(Model {
        reasoning,
        transformer,
        tokenizer: Arc::new(tokenizer),
        defaults,
        name: files.name.clone(),
        fingerprint: format!("{}; {dtype:?} on {device:?}", files.fingerprint()),
    })
}

/// The prompt that makes a reasoning release think: the `SYSTEM_PROMPT.txt`
/// beside its weights, else its chat template's default, where it shows
/// thinking and the model's format (V13) can show it.
pub fn reasoning_prompt(
    files: &ModelFiles,
    tokenizer: &Tokenizer,
) -> anyhow::Result<Option<System>> {
    if tokenizer.format() != Instruct::V13 || tokenizer.think_tokens().is_none() {
        return Ok(None);
    }
    let shipped = match &files.system_prompt {
        Some(path) => Some(crate::text_file::read_text(path)?),
        None => None,
    };
    let prompt = shipped.or_else(|| tokenizer.default_system().map(String::from));
    Ok(prompt.as_deref().and_then(System::reasoning))
}

/// The weights alone, for work that needs no text (`greve bench`).
pub fn load_transformer(
    files: &ModelFiles,
    device: &Device,
    dtype: DType,
) -> anyhow::Result<Transformer> {
    match &files.weights {
        WeightFiles::Safetensors { config, shards } => {
            let config = Config::from_json_file(config)?;
            let mut src = safetensors::SafetensorsSource::open(shards, dtype, device)?;
            Transformer::load(config, &mut src, dtype, device)
        }
        WeightFiles::Gguf(path) => gguf_transformer(
            &mut gguf::GgufSource::open(path, device)?,
            path,
            device,
            dtype,
        ),
    }
}

fn gguf_tokenizer(src: &gguf::GgufSource, path: &Path) -> anyhow::Result<Tokenizer> {
    Tokenizer::from_gguf(src.metadata()).classify(Failure::ModelInvalid, || {
        format!("the tokenizer in {}", path.display())
    })
}

fn gguf_transformer(
    src: &mut gguf::GgufSource,
    path: &Path,
    device: &Device,
    dtype: DType,
) -> anyhow::Result<Transformer> {
    let config = Config::from_gguf(src.metadata(), src.vocab_size()?)
        .classify(Failure::ModelInvalid, || path.display().to_string())?;
    if device.is_cpu() {
        src.prefault();
    }
    Transformer::load(config, src, dtype, device)
}

fn load_tokenizer_json(files: &ModelFiles) -> anyhow::Result<Tokenizer> {
    match (&files.tokenizer, &files.tekken) {
        (Some(json), _) => tokenizer_from_json(json, files.tokenizer_config.as_deref()),
        (None, Some(tekken)) => tokenizer_from_tekken(tekken, files.tokenizer_config.as_deref()),
        (None, None) => Err(Failure::ModelInvalid.err(format!(
            "{} has no tokenizer.json or tekken.json; copy the one from the model's Hub repo beside config.json",
            files.name
        ))),
    }
}

/// The tokenizer of a path that is a tokenizer.json or a tekken.json, or a
/// folder holding one (with the tokenizer_config.json beside it); `None`
/// for anything else.
pub fn tokenizer_json_at(path: &Path) -> Option<anyhow::Result<Tokenizer>> {
    let (file, folder) = if path.is_dir() {
        let json = path.join("tokenizer.json");
        let tekken = path.join("tekken.json");
        (if json.is_file() { json } else { tekken }, path)
    } else {
        (path.to_path_buf(), path.parent().unwrap_or(Path::new(".")))
    };
    let is_json = file.extension().is_some_and(|e| e == "json");
    if !(file.is_file() && is_json) {
        return None;
    }
    let config = Some(folder.join("tokenizer_config.json")).filter(|p| p.is_file());
    let tekken = file
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("tekken"));
    Some(match tekken {
        true => tokenizer_from_tekken(&file, config.as_deref()),
        false => tokenizer_from_json(&file, config.as_deref()),
    })
}

/// The tokenizer of a model's files: its tokenizer.json (or tekken.json),
/// or its GGUF metadata.
pub fn load_tokenizer(files: &ModelFiles) -> anyhow::Result<Tokenizer> {
    match &files.weights {
        WeightFiles::Safetensors { .. } => load_tokenizer_json(files),
        WeightFiles::Gguf(path) => {
            let src = gguf::GgufSource::open(path, &Device::Cpu)?;
            gguf_tokenizer(&src, path)
        }
    }
}

fn tokenizer_from_json(path: &Path, config: Option<&Path>) -> anyhow::Result<Tokenizer> {
    Tokenizer::from_json_file(path, &special_tokens(path, config)?)
}

fn tokenizer_from_tekken(path: &Path, config: Option<&Path>) -> anyhow::Result<Tokenizer> {
    let special = special_tokens(path, config)?;
    Tokenizer::from_tekken_file(path, special.chat_template.as_deref())
}

/// What tokenizer_config.json (and the chat_template.jinja beside the
/// tokenizer) say about its special tokens.
fn special_tokens(path: &Path, config: Option<&Path>) -> anyhow::Result<SpecialTokens> {
    #[derive(Deserialize, Default)]
    struct TokenizerConfig {
        bos_token: Option<TokenName>,
        eos_token: Option<TokenName>,
        add_bos_token: Option<bool>,
        /// A string; some repositories keep a list of named templates.
        chat_template: Option<serde_json::Value>,
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum TokenName {
        Plain(String),
        Added { content: String },
    }
    let name = |t: Option<TokenName>| {
        t.map(|t| match t {
            TokenName::Plain(s) | TokenName::Added { content: s } => s,
        })
    };
    let config = match config {
        Some(p) => read_json::<TokenizerConfig>(p)?,
        None => TokenizerConfig::default(),
    };
    // Newer repositories keep the template in its own file beside them.
    let jinja = path.with_file_name("chat_template.jinja");
    let chat_template = match config.chat_template {
        Some(serde_json::Value::String(t)) => Some(t),
        Some(t) => Some(t.to_string()),
        None if jinja.is_file() => Some(crate::text_file::read_text(&jinja)?),
        None => None,
    };
    Ok(SpecialTokens {
        bos: name(config.bos_token),
        eos: name(config.eos_token),
        add_bos: config.add_bos_token,
        chat_template,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_needed_is_the_weights_the_kv_cache_and_the_runtime() {
        let kv_per_token_7b = crate::hub::default_preset().kv_per_token;
        // The 7B Q4_K_M file (4.37 GB) with 4096 tokens: 512 MiB of KV cache.
        assert_eq!(
            memory_needed(4_370_000_000, kv_per_token_7b, 4096),
            4_370_000_000 + (512 << 20) + 300_000_000
        );
        // Measured (README, Performance): peak RSS 4364 MiB at 640 tokens.
        let measured = 4364u64 << 20;
        let planned = memory_needed(4_368_000_000, kv_per_token_7b, 640);
        assert!(
            planned.abs_diff(measured) < measured / 20,
            "{planned} vs {measured}"
        );
    }

    /// Every item is run once, and (with more than one thread) the last ones
    /// one at a time.
    #[test]
    fn in_parallel_covers_every_item_once_and_ends_on_single_items() {
        for items in [0, 1, 2, 3, 7, 64, 1000, 2048] {
            let ranges = std::sync::Mutex::new(Vec::new());
            in_parallel(items, |r| ranges.lock().unwrap().push(r));
            let mut ranges = ranges.into_inner().unwrap();
            ranges.sort_by_key(|r| r.start);
            let mut next = 0;
            for r in &ranges {
                assert_eq!(r.start, next, "{items} items: {ranges:?}");
                assert!(r.end > r.start);
                next = r.end;
            }
            assert_eq!(next, items);
            let shared = candle_core::utils::barrier_pool().n_workers() > 0;
            if let (true, Some(last)) = (shared, ranges.last()) {
                assert_eq!(last.len(), 1, "{items} items: {ranges:?}");
            }
        }
    }

    #[test]
    fn cpu_dtype_falls_back_to_bf16_when_f32_does_not_fit() {
        const GB: u64 = 1 << 30;
        // Mistral 7B in bf16 (14.5 GB) on a 24 GB machine with 22 GB free.
        assert_eq!(cpu_dtype(14 * GB + GB / 2, Some(22 * GB)), DType::BF16);
        assert_eq!(cpu_dtype(GB, Some(22 * GB)), DType::F32);
        assert_eq!(cpu_dtype(14 * GB, None), DType::F32);
    }
}
