//! Mutation fuzzing of every file greve takes from strangers or from hand
//! edits: GGUF models, safetensors folders (weights, index, config.json,
//! generation_config.json, tokenizer files), transcripts and the config
//! file. Each case mutates a real seed (the test goldens, a tiny model
//! folder) and hands it to the code that reads such files for real; a model
//! that loads also runs a token, so what passed the checks is computed on.
//!
//! Every case must end in Ok or in an error of the documented class (exit 3
//! or 4 for a model, 5 for a forward pass, 2 for a transcript or config
//! file). A panic, an unclassified error, an abort (the test binary dies) or
//! a case running past `HANG` fails the run, and the offending input is
//! saved for `GREVE_FUZZ_REPLAY`.
//!
//! `cargo test` runs a short campaign with a fixed seed. A long one:
//!
//! ```sh
//! GREVE_FUZZ_CASES=5000 GREVE_FUZZ_SEED=7 cargo test --test fuzz -- --nocapture
//! ```
//!
//! runs that many cases per target and prints the tally of each.

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use candle_core::{DType, Device};
use common::gguf::Gguf;
use common::{goldens, write_tiny_model};
use greve::exit::{code_for, Classify, Failure};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// No case may take longer: a hang, not a slow case, in a debug build.
const HANG: Duration = Duration::from_secs(60);

/// Small and large numbers, powers of two and their neighbours, the values
/// where checked and unchecked arithmetic part ways.
const INTERESTING: &[u64] = &[
    0,
    1,
    2,
    3,
    7,
    8,
    31,
    32,
    33,
    255,
    256,
    4096,
    65535,
    65536,
    (1 << 31) - 1,
    1 << 31,
    (1 << 32) - 1,
    1 << 32,
    1 << 40,
    1 << 62,
    1 << 63,
    i64::MAX as u64,
    u64::MAX - 31,
    u64::MAX,
];

const NUMBERS: &[&str] = &[
    "0",
    "-1",
    "1",
    "65535",
    "4294967296",
    "4611686018427387904",
    "99999999999999999999999",
    "1e309",
    "-0.0",
    "0.5",
    "NaN",
    "\"7\"",
    "null",
    "[]",
];

fn interesting(rng: &mut ChaCha8Rng) -> u64 {
    INTERESTING[rng.random_range(0..INTERESTING.len())]
}

/// One to three byte-level mutations; `hot` is where the seed's structure
/// lies (a GGUF's tensor table), hit more often than the rest.
fn mutate_bytes(seed: &[u8], hot: &std::ops::Range<usize>, rng: &mut ChaCha8Rng) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..rng.random_range(1..=3) {
        if b.is_empty() {
            b.push(rng.random());
            continue;
        }
        let pos = if !hot.is_empty() && hot.end <= b.len() && rng.random_bool(0.6) {
            rng.random_range(hot.clone())
        } else {
            rng.random_range(0..b.len())
        };
        match rng.random_range(0..9) {
            0 => b[pos] ^= 1 << rng.random_range(0..8),
            1 => b[pos] = [0, 0xff, 0x7f, 0x80, 1][rng.random_range(0..5)],
            2 => {
                let v = (interesting(rng) as u32).to_le_bytes();
                let end = (pos + 4).min(b.len());
                b[pos..end].copy_from_slice(&v[..end - pos]);
            }
            3 => {
                let v = interesting(rng).to_le_bytes();
                let end = (pos + 8).min(b.len());
                b[pos..end].copy_from_slice(&v[..end - pos]);
            }
            4 => b.truncate(pos),
            5 => {
                let end = (pos + rng.random_range(1..64)).min(b.len());
                b.drain(pos..end);
            }
            6 => {
                let end = (pos + rng.random_range(1..64)).min(b.len());
                let copy = b[pos..end].to_vec();
                b.splice(pos..pos, copy);
            }
            7 => {
                let junk: Vec<u8> = (0..rng.random_range(1..16)).map(|_| rng.random()).collect();
                b.splice(pos..pos, junk);
            }
            _ => replace_number(&mut b, pos, rng),
        }
    }
    b
}

/// Replaces the run of digits at or after `pos` by another number (or
/// something that is not one): the text files' fields are mostly numbers.
fn replace_number(b: &mut Vec<u8>, pos: usize, rng: &mut ChaCha8Rng) {
    let Some(start) = b[pos..]
        .iter()
        .position(u8::is_ascii_digit)
        .map(|i| pos + i)
    else {
        return;
    };
    let len = b[start..]
        .iter()
        .take_while(|c| c.is_ascii_digit() || **c == b'.')
        .count();
    let with = NUMBERS[rng.random_range(0..NUMBERS.len())];
    b.splice(start..start + len, with.bytes());
}

/// A mutation of a GGUF's structure: a tensor's dimensions, type, offset or
/// name, or a metadata value or type, written back as a well-formed file.
fn mutate_gguf(seed: &Gguf, rng: &mut ChaCha8Rng) -> Vec<u8> {
    let mut g = seed.clone();
    let padding = g.alignment();
    match rng.random_range(0..7) {
        0 | 1 => {
            let i = rng.random_range(0..g.tensors.len());
            let t = &mut g.tensors[i];
            let d = rng.random_range(0..t.dims.len());
            t.dims[d] = interesting(rng);
        }
        2 => {
            let i = rng.random_range(0..g.tensors.len());
            g.tensors[i].ty = rng.random_range(0..40);
        }
        3 => {
            let i = rng.random_range(0..g.tensors.len());
            let t = &mut g.tensors[i];
            t.offset = if rng.random_bool(0.5) {
                t.offset.wrapping_add(rng.random_range(1..64))
            } else {
                interesting(rng)
            };
        }
        4 => {
            let (i, j) = (
                rng.random_range(0..g.tensors.len()),
                rng.random_range(0..g.tensors.len()),
            );
            g.tensors[i].name = g.tensors[j].name.clone();
        }
        5 => {
            let i = rng.random_range(0..g.metadata.len());
            let (_, ty, value) = &mut g.metadata[i];
            match *ty {
                common::gguf::U32 => *value = (interesting(rng) as u32).to_le_bytes().to_vec(),
                common::gguf::U64 => *value = interesting(rng).to_le_bytes().to_vec(),
                _ => *ty = rng.random_range(0..14),
            }
        }
        _ => g.version = rng.random_range(0..5),
    }
    g.write_padded(padding)
}

/// Where a GGUF's tensor table lies: from the first tensor name to the data.
fn tensor_table(file: &[u8], g: &Gguf) -> std::ops::Range<usize> {
    let name = g.tensors[0].name.as_bytes();
    let start = file
        .windows(name.len())
        .position(|w| w == name)
        .map_or(0, |p| p.saturating_sub(8));
    start..file.len() - g.data.len()
}

/// A model file or folder loaded as greve loads one, then one token run.
fn load_and_run(spec: &Path) -> anyhow::Result<()> {
    let files = greve::resolve::resolve(spec.to_str().unwrap())?;
    let mut model = greve::model::load(&files, &Device::Cpu, DType::F32)?;
    let bos = model.tokenizer.bos();
    model
        .transformer
        .forward(&[bos])
        .classify(Failure::Generation, || "the forward pass".into())?;
    Ok(())
}

#[derive(Default)]
struct Tally {
    ok: usize,
    refused: usize,
    slowest: Duration,
}

/// Runs `cases` cases of one target on a worker thread, so that a hang is
/// reported (with its input saved) instead of stalling the test run.
fn campaign(
    target: &str,
    cases: usize,
    allowed: &'static [u8],
    mut case: impl FnMut(&mut ChaCha8Rng, &Path) -> (Vec<u8>, Box<dyn FnOnce() -> anyhow::Result<()>>)
        + Send
        + 'static,
) {
    let seed = std::env::var("GREVE_FUZZ_SEED").map_or(1, |s| s.parse().unwrap());
    let saved = std::env::temp_dir().join(format!("greve-fuzz-{target}-{seed}"));
    let (tx, rx) = mpsc::channel::<Result<Tally, String>>();
    let target_name = target.to_string();
    let worker_saved = saved.clone();
    std::thread::spawn(move || {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ hash(&target_name));
        let work = tempfile::tempdir().unwrap();
        let mut tally = Tally::default();
        for i in 0..cases {
            let (input, run) = case(&mut rng, work.path());
            std::fs::write(&worker_saved, &input).unwrap();
            let start = Instant::now();
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run));
            tally.slowest = tally.slowest.max(start.elapsed());
            let verdict = match outcome {
                Ok(Ok(())) => {
                    tally.ok += 1;
                    Ok(())
                }
                Ok(Err(e)) if allowed.contains(&code_for(&e)) => {
                    tally.refused += 1;
                    Ok(())
                }
                Ok(Err(e)) => Err(format!("exit {} ({e:#})", code_for(&e))),
                Err(panic) => Err(format!("panic: {}", panic_message(&panic))),
            };
            if let Err(what) = verdict {
                let _ = tx.send(Err(format!(
                    "{target_name} case {i}: {what}; input saved as {}",
                    worker_saved.display()
                )));
                return;
            }
            let _ = tx.send(Ok(Tally::default()));
        }
        let _ = std::fs::remove_file(&worker_saved);
        let _ = tx.send(Ok(tally));
    });
    for _ in 0..=cases {
        match rx.recv_timeout(HANG) {
            Ok(Ok(tally)) if tally.ok + tally.refused == cases => {
                println!(
                    "fuzz {target}: {cases} cases, {} loaded, {} refused, 0 panics, slowest {:.0} ms",
                    tally.ok,
                    tally.refused,
                    tally.slowest.as_secs_f64() * 1e3
                );
                return;
            }
            Ok(Ok(_)) => {}
            Ok(Err(failure)) => panic!("{failure}"),
            Err(_) => panic!(
                "fuzz {target}: a case ran past {HANG:?}; input saved as {}",
                saved.display()
            ),
        }
    }
}

fn hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

fn cases(short: usize) -> usize {
    std::env::var("GREVE_FUZZ_CASES").map_or(short, |s| s.parse().unwrap())
}

fn gguf_campaign(target: &str, golden: &str, short: usize) {
    let file = std::fs::read(goldens().join(golden)).unwrap();
    let parsed = Gguf::read(&file);
    let hot = tensor_table(&file, &parsed);
    campaign(target, cases(short), &[3, 4, 5], move |rng, dir| {
        let input = if rng.random_bool(0.5) {
            mutate_gguf(&parsed, rng)
        } else {
            mutate_bytes(&file, &hot, rng)
        };
        let path = dir.join("m.gguf");
        std::fs::write(&path, &input).unwrap();
        (input, Box::new(move || load_and_run(&path)))
    });
}

#[test]
fn fuzz_gguf_k_quants() {
    gguf_campaign("gguf-q4_k_m", "tiny-k-q4_k_m.gguf", 400);
}

#[test]
fn fuzz_gguf_q8_0() {
    gguf_campaign("gguf-q8_0", "tiny-k-q8_0.gguf", 300);
}

#[test]
fn fuzz_safetensors_folder() {
    let folder = tempfile::tempdir().unwrap();
    write_tiny_model(folder.path(), "k");
    let names = [
        "model-00001-of-00002.safetensors",
        "model.safetensors.index.json",
        "config.json",
        "generation_config.json",
        "tokenizer_config.json",
        "tokenizer.json",
    ];
    let seeds: Vec<(PathBuf, Vec<u8>)> = names
        .iter()
        .map(|n| {
            let p = folder.path().join(n);
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    // The safetensors header: its length and JSON come first.
    let header = 0..(8 + u64::from_le_bytes(seeds[0].1[..8].try_into().unwrap()) as usize);
    campaign("safetensors", cases(400), &[3, 4, 5], move |rng, _| {
        let _keep = &folder;
        let (path, seed) = &seeds[rng.random_range(0..seeds.len())];
        let hot = if path.extension().is_some_and(|e| e == "safetensors") {
            header.clone()
        } else {
            0..seed.len()
        };
        for (p, original) in &seeds {
            std::fs::write(p, original).unwrap();
        }
        let input = mutate_bytes(seed, &hot, rng);
        std::fs::write(path, &input).unwrap();
        let dir = path.parent().unwrap().to_path_buf();
        (input, Box::new(move || load_and_run(&dir)))
    });
}

#[test]
fn fuzz_transcript() {
    let seed = serde_json::json!({
        "format": "greve-transcript", "version": 1, "system": "Sois bref.", "persona": "râleuse",
        "messages": [
            {"role": "user", "content": "Salut, tu peux m'aider ?"},
            {"role": "assistant", "content": "Non. Grève illimitée depuis 1995."},
            {"role": "user", "content": "Même pour 2 minutes ?"},
        ],
    })
    .to_string()
    .into_bytes();
    campaign("transcript", cases(1000), &[2], move |rng, dir| {
        let input = mutate_bytes(&seed, &(0..seed.len()), rng);
        let path = dir.join("t.json");
        std::fs::write(&path, &input).unwrap();
        (
            input,
            Box::new(move || {
                let t = greve::transcript::Transcript::load(&path)?;
                let tokens = |w: &[greve::template::Message]| -> anyhow::Result<Vec<u32>> {
                    Ok(vec![
                        0;
                        w.iter().map(|m| m.content.len() + 3).sum::<usize>() + 1
                    ])
                };
                greve::conversation::fit_window(
                    &t.messages,
                    0,
                    64,
                    tokens,
                    &AtomicBool::new(false),
                )?;
                Ok(())
            }),
        )
    });
}

#[test]
fn fuzz_config_file() {
    let seed = b"model = \"mistral-7b-instruct-v0.3\"\nquant = \"Q4_K_M\"\ntemperature = 0.7\ntop_p = 0.9\ntop_k = 40\nrepeat_penalty = 1.1\nmax_tokens = 512\nthreads = 2\nstrike = \"totale\"\nhistory = false\nkv_cache = \"q8\"\n".to_vec();
    campaign("config-file", cases(1000), &[2], move |rng, dir| {
        let input = mutate_bytes(&seed, &(0..seed.len()), rng);
        let path = dir.join("config.toml");
        std::fs::write(&path, &input).unwrap();
        (
            input,
            Box::new(move || greve::config_file::load(Some(&path)).map(|_| ())),
        )
    });
}

/// Not a test: replays a saved input, `GREVE_FUZZ_REPLAY=FILE
/// GREVE_FUZZ_TARGET=gguf cargo test --test fuzz replay -- --ignored
/// --nocapture` (targets: gguf, transcript, config-file), printing the outcome.
#[test]
#[ignore = "a tool: replays GREVE_FUZZ_REPLAY"]
fn replay() {
    let file = std::env::var("GREVE_FUZZ_REPLAY").expect("GREVE_FUZZ_REPLAY names the input");
    let target = std::env::var("GREVE_FUZZ_TARGET").unwrap_or_else(|_| "gguf".into());
    let dir = tempfile::tempdir().unwrap();
    let ext = if target == "gguf" { "gguf" } else { "json" };
    let path = dir.path().join(format!("input.{ext}"));
    std::fs::copy(&file, &path).unwrap();
    let result = match target.as_str() {
        "gguf" => load_and_run(&path),
        "transcript" => greve::transcript::Transcript::load(&path).map(|_| ()),
        _ => greve::config_file::load(Some(&path)).map(|_| ()),
    };
    println!(
        "{target}: {:?}",
        result.map_err(|e| format!("exit {}: {e:#}", code_for(&e)))
    );
}
