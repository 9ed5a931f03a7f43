//! `greve doctor`: what a user runs when something is wrong, and pastes into
//! a bug report. Each line is OK, WARN, FAIL or SKIP with what to do; the
//! exit code is 0 only when nothing fails. It never prints the token.

use std::io::Write;
use std::path::Path;

use crate::exit::Failure;
use crate::hub::{Hub, HubOptions};
use crate::model;
use crate::settings::Settings;
use crate::template::{self, Instruct, Message};

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Status {
    Ok,
    Skip,
    Warn,
    Fail,
}

struct Report {
    worst: Status,
    out: std::io::StdoutLock<'static>,
}

impl Report {
    fn line(
        &mut self,
        status: Status,
        what: &str,
        detail: impl std::fmt::Display,
    ) -> std::io::Result<()> {
        self.worst = self.worst.max(status);
        let tag = match status {
            Status::Ok => "OK  ",
            Status::Skip => "SKIP",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        };
        writeln!(self.out, "{tag}  {what:<12} {detail}")
    }
}

/// The sample conversation of the template self-check and mistral-common
/// 1.13.1's ids for it (tests/goldens/tokens-v*.json, chat 2).
const SAMPLE_SYSTEM: &str = "Réponds en français.";
const SAMPLE: [(&str, bool); 3] = [
    ("Bonjour", true),
    ("Bonjour ! Comment puis-je vous aider ?", false),
    ("Fais grève.", true),
];
const V1_IDS: [u32; 42] = [
    1, 733, 16289, 28793, 15417, 766, 3673, 481, 14299, 28723, 13, 13, 28244, 18777, 733, 28748,
    16289, 28793, 8500, 18777, 918, 19479, 12410, 28733, 2099, 16906, 264, 1184, 1550, 2, 733,
    16289, 28793, 401, 1555, 847, 24893, 28723, 733, 28748, 16289, 28793,
];
const V3_IDS: [u32; 32] = [
    1, 3, 9268, 19545, 4, 9268, 19545, 1686, 20247, 13178, 29501, 2867, 17674, 1032, 1952, 2318, 2,
    3, 16185, 1534, 4441, 1249, 15067, 29491, 781, 781, 29533, 2323, 1615, 25661, 29491, 4,
];
/// Tekken (NeMo's V3, Small 3.x's V7): tests/goldens/tokens-tekken*.json.
/// V11 and V13 render a chat without tools or thinking as V7 does.
const TEKKEN_V3_IDS: [u32; 27] = [
    1, 3, 48227, 47010, 4, 48227, 47010, 2662, 24715, 8306, 22665, 6790, 66398, 3082, 2, 3, 92894,
    3869, 1115, 1418, 13570, 1338, 1070, 2449, 116989, 1046, 4,
];
const TEKKEN_V7_IDS: [u32; 29] = [
    1, 17, 92894, 3869, 1115, 1418, 13570, 1046, 18, 3, 48227, 47010, 4, 48227, 47010, 2662, 24715,
    8306, 22665, 6790, 66398, 3082, 2, 3, 1070, 2449, 116989, 1046, 4,
];
const V7_IDS: [u32; 32] = [
    1, 16, 16185, 1534, 4441, 1249, 15067, 29491, 17, 3, 9268, 19545, 4, 9268, 19545, 1686, 20247,
    13178, 29501, 2867, 17674, 1032, 1952, 2318, 2, 3, 1169, 2323, 1615, 25661, 29491, 4,
];

pub fn run(settings: &Settings) -> anyhow::Result<()> {
    let mut r = Report {
        worst: Status::Ok,
        out: std::io::stdout().lock(),
    };
    r.line(
        Status::Ok,
        "version",
        crate::system::long_version().replace('\n', "; "),
    )?;
    cpu_features(&mut r)?;
    let capped = match std::env::var("GREVE_KERNELS") {
        Ok(cap) if !cap.is_empty() && cap != "candle" => format!(", capped by GREVE_KERNELS={cap}"),
        _ => String::new(),
    };
    let products = match crate::model::isa::candle_products() {
        true => "candle's kernels (GREVE_KERNELS=candle)".to_string(),
        false => format!("{:?} instructions", crate::model::quant::isa()),
    };
    r.line(
        Status::Ok,
        "kernels",
        format!(
            "Q4_K/Q6_K products with {products}, attention with {:?} (chosen at run time{capped})",
            crate::model::isa::best()
        ),
    )?;

    prompt_cache(&mut r, settings)?;

    let cores = crate::system::cores();
    let threads = settings.threads.value.map_or(cores, usize::from);
    r.line(Status::Ok, "threads", format!("{threads} of {cores} cores"))?;
    let default = crate::hub::default_preset();
    let needed = model::memory_needed(
        default.q4_k_m_bytes,
        default.kv_per_token,
        model::PLANNED_CONTEXT,
    );
    match crate::system::available_memory() {
        Some(m) if m < needed => r.line(
            Status::Warn,
            "memory",
            format!(
                "{:.1} GB available; Mistral 7B Q4_K_M needs about {:.1} GB with a {}-token conversation: close programs or use a smaller quantisation (--quant Q3_K_M)",
                m as f64 / 1e9,
                needed as f64 / 1e9,
                model::PLANNED_CONTEXT
            ),
        )?,
        Some(m) => r.line(Status::Ok, "memory", format!("{:.1} GB available", m as f64 / 1e9))?,
        None => r.line(Status::Skip, "memory", "not readable on this system")?,
    }
    let gpu = if cfg!(feature = "cuda") {
        match candle_core::Device::new_cuda(0) {
            Ok(d) => (
                Status::Ok,
                crate::system::gpu_line(&d).unwrap_or_else(|| "CUDA device 0 is usable".into()),
            ),
            Err(e) => (
                Status::Warn,
                format!(
                    "built with CUDA but no device opens ({}); greve will use the CPU",
                    crate::system::first_line(&e)
                ),
            ),
        }
    } else if cfg!(feature = "metal") {
        (Status::Ok, "built with Metal".to_string())
    } else {
        (
            Status::Ok,
            "none in this build (CPU only; cargo features cuda, metal)".to_string(),
        )
    };
    r.line(gpu.0, "gpu", gpu.1)?;

    let offline = settings.offline;
    let hub = Hub::from_env(offline);
    cache(&mut r, &hub.cache)?;
    r.line(
        Status::Ok,
        "token",
        if hub.has_token() {
            "configured (HF_TOKEN or the token file)"
        } else {
            "none (needed only for gated repos)"
        },
    )?;
    if hub.offline {
        r.line(Status::Skip, "hub", "offline (--offline or HF_HUB_OFFLINE)")?;
    } else {
        match ureq::AgentBuilder::new()
            .timeout(std::time::Duration::from_secs(5))
            .build()
            .head(&format!("{}/api/models", hub.endpoint))
            .call()
        {
            Ok(_) | Err(ureq::Error::Status(..)) => r.line(Status::Ok, "hub", format!("{} answers", hub.endpoint))?,
            Err(e) => r.line(
                Status::Warn,
                "hub",
                format!("{} does not answer ({e}); downloads will fail, cached models still work (--offline)", hub.endpoint),
            )?,
        }
    }
    template_check(&mut r, settings)?;
    drop(r.out);
    if r.worst == Status::Fail {
        return Err(Failure::Usage.err("doctor found problems (the FAIL lines above)"));
    }
    Ok(())
}

fn cpu_features(r: &mut Report) -> std::io::Result<()> {
    #[cfg(target_arch = "x86_64")]
    {
        let features = [
            (
                "avx2",
                std::is_x86_feature_detected!("avx2"),
                cfg!(target_feature = "avx2"),
            ),
            (
                "fma",
                std::is_x86_feature_detected!("fma"),
                cfg!(target_feature = "fma"),
            ),
            (
                "f16c",
                std::is_x86_feature_detected!("f16c"),
                cfg!(target_feature = "f16c"),
            ),
        ];
        let missing: Vec<&str> = features
            .iter()
            .filter(|f| f.1 && !f.2)
            .map(|f| f.0)
            .collect();
        // greve's own kernels (the Q4_K/Q6_K products and attention) choose
        // at run time; only candle's code is fixed when greve is built.
        let have: Vec<&str> = features.iter().filter(|f| f.1).map(|f| f.0).collect();
        if have.is_empty() {
            r.line(
                Status::Ok,
                "cpu",
                "no AVX2, FMA or F16C: every kernel runs its portable version",
            )
        } else if missing.is_empty() {
            r.line(
                Status::Ok,
                "cpu",
                format!("compiled for what this CPU has ({})", have.join(" ")),
            )
        } else {
            r.line(
                Status::Ok,
                "cpu",
                format!(
                    "portable build: candle's kernels (GGUF types other than Q4_K/Q6_K, safetensors) run without this CPU's {}; a build for this machine alone takes them: RUSTFLAGS=\"-C target-cpu=native\" cargo build --release",
                    missing.join(" ")
                ),
            )
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    r.line(Status::Ok, "cpu", std::env::consts::ARCH)
}

/// The cache's size, its models, and any snapshot link whose file is gone.
fn cache(r: &mut Report, cache: &Path) -> std::io::Result<()> {
    let Ok(entries) = std::fs::read_dir(cache) else {
        return r.line(
            Status::Ok,
            "cache",
            format!("{} (empty: nothing downloaded yet)", cache.display()),
        );
    };
    let mut size = 0u64;
    let mut models = Vec::new();
    let mut broken = Vec::new();
    for repo in entries.filter_map(|e| e.ok()).map(|e| e.path()) {
        let Some(name) = repo
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("models--"))
        else {
            continue;
        };
        let name = name.replacen("--", "/", 1);
        size += folder_size(&repo.join("blobs"));
        let snapshots = std::fs::read_dir(repo.join("snapshots"))
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok());
        for snapshot in snapshots {
            for file in std::fs::read_dir(snapshot.path())
                .into_iter()
                .flatten()
                .filter_map(|e| e.ok())
            {
                if !file.path().exists() {
                    broken.push(format!("{name}: {}", file.file_name().to_string_lossy()));
                }
            }
        }
        let lower = name.to_lowercase();
        if lower.contains("mistral") || lower.contains("greve") {
            models.push(name);
        }
    }
    r.line(
        Status::Ok,
        "cache",
        format!(
            "{} ({:.2} GB; models: {})",
            cache.display(),
            size as f64 / 1e9,
            if models.is_empty() {
                "none".into()
            } else {
                models.join(", ")
            }
        ),
    )?;
    for entry in broken {
        let repo = entry.split(':').next().unwrap_or_default().to_string();
        r.line(
            Status::Fail,
            "cache",
            format!("{entry} is a broken link: run `greve pull {repo}` again"),
        )?;
    }
    Ok(())
}

fn prompt_cache(r: &mut Report, settings: &Settings) -> std::io::Result<()> {
    match settings.prompt_cache_dir() {
        Some(dir) => {
            let (entries, bytes) = crate::prompt_cache::usage(&dir);
            r.line(
                Status::Ok,
                "prompt cache",
                format!(
                    "{}: {entries} entries, {} of {} (CPU only; `greve cache clear` empties it)",
                    dir.display(),
                    crate::messages::size(bytes),
                    crate::messages::size(settings.prompt_cache_size.value)
                ),
            )
        }
        None => r.line(
            Status::Skip,
            "prompt cache",
            "off (prompt_cache = false, or no cache folder)",
        ),
    }
}

fn folder_size(folder: &Path) -> u64 {
    std::fs::read_dir(folder)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// The instruct template, rendered with the model's tokenizer (from the
/// cache only), must give mistral-common's ids for the sample conversation.
fn template_check(r: &mut Report, settings: &Settings) -> std::io::Result<()> {
    let spec = settings.model.value.as_str();
    let opts = HubOptions {
        offline: true,
        ..settings.hub_options()
    };
    let tokenizer = match crate::resolve::open_tokenizer(spec, &opts) {
        Ok(t) => t,
        Err(_) => {
            return r.line(
                Status::Skip,
                "template",
                format!("{spec} is not in the cache; `greve pull` it to check the template"),
            )
        }
    };
    let messages: Vec<Message> = SAMPLE
        .iter()
        .map(|&(text, user)| {
            if user {
                Message::user(text)
            } else {
                Message::assistant(text)
            }
        })
        .collect();
    // The references are for Mistral's vocabularies: SentencePiece, Tekken.
    let want: &[u32] = match (tokenizer.format(), tokenizer.vocab_size()) {
        (Instruct::V1, 32000) => &V1_IDS,
        (Instruct::V3, 32768) => &V3_IDS,
        (Instruct::V7, 32768) => &V7_IDS,
        (Instruct::V3, 131072) => &TEKKEN_V3_IDS,
        (Instruct::V7 | Instruct::V11 | Instruct::V13, 131072) => &TEKKEN_V7_IDS,
        (format, size) => {
            return r.line(
                Status::Skip,
                "template",
                format!("greve holds no mistral-common ids for {spec}'s vocabulary ({size} tokens, {format:?})"),
            )
        }
    };
    let got = template::render(
        tokenizer.format(),
        &template::System::text(Some(SAMPLE_SYSTEM)),
        &messages,
    )
    .and_then(|pieces| tokenizer.encode_pieces(&pieces));
    match got {
        Ok(ids) if ids == want => r.line(Status::Ok, "template", format!("{:?} ids of {spec} equal mistral-common's", tokenizer.format())),
        Ok(_) => r.line(
            Status::Fail,
            "template",
            format!("{spec}'s {:?} ids differ from mistral-common's: its tokenizer is not Mistral's; use an official release", tokenizer.format()),
        ),
        Err(e) => r.line(Status::Fail, "template", format!("cannot render the sample with {spec}: {e:#}")),
    }
}
