//! The prompt cache on disk: a hit must change the speed, never a logit;
//! whatever is in its folder (damage, another model's entries, a folder or a
//! FIFO, a full bound, two writers) the reply stays the one a miss gives.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::AtomicBool;

use candle_core::{DType, Device};
use common::{goldens, stderr, stdout, write_tiny_model};
use greve::conversation::{Conversation, Options};
use greve::model::{self, attention::KvType, Model};
use greve::persona::{Mode, Prompts};
use greve::prompt_cache::{Kind, Lookup, PromptCache};
use greve::resolve::resolve;
use greve::sampler::SamplingParams;
use greve::structured::Format;
use greve::template::{self, Message};
use serde_json::Value;

/// Long enough to be cached (over 32 tokens in every tiny vocabulary).
const SYSTEM: &str = "Tu es un assistant syndiqué. Réponds en français, brièvement, \
    et rappelle à chaque réponse que la grève continue jusqu'à nouvel ordre.";

fn load(path: &Path, kv: KvType) -> Model {
    let files = resolve(path.to_str().unwrap()).unwrap();
    let mut model = model::load(&files, &Device::Cpu, DType::F32).unwrap();
    model.transformer.set_kv_type(kv);
    model
}

fn logits(model: &mut Model, tokens: &[u32]) -> Vec<u32> {
    let out = model.transformer.forward(tokens).unwrap();
    let values = out.to_vec1::<f32>().unwrap();
    values.iter().map(|x| x.to_bits()).collect()
}

fn models() -> Vec<(String, PathBuf, tempfile::TempDir)> {
    let folder = tempfile::tempdir().unwrap();
    write_tiny_model(folder.path(), "v3");
    let mut models: Vec<_> = [
        "tiny-v1-f16.gguf",
        "tiny-v3-f16.gguf",
        "tiny-tekken-f16.gguf",
        "tiny-k-q4_k_m.gguf",
    ]
    .iter()
    .map(|name| {
        (
            name.to_string(),
            goldens().join(name),
            tempfile::tempdir().unwrap(),
        )
    })
    .collect();
    models.push(("v3 safetensors".into(), folder.path().to_path_buf(), folder));
    models
}

/// The logits after a prefix restored from disk are the bits of those after
/// the prefix computed: V1, V3 and Tekken vocabularies, GGUF and
/// safetensors, f16 and q8 caches.
#[test]
fn restored_prefixes_give_bit_identical_logits() {
    for (name, path, _keep) in models() {
        for kv in [KvType::F16, KvType::Q8] {
            let dir = tempfile::tempdir().unwrap();
            let cache = PromptCache::new(dir.path().into(), 1 << 30, format!("{name} {kv:?}"));
            let mut model = load(&path, kv);
            let vocab = model.transformer.config.vocab_size as u32;
            let prompt: Vec<u32> = (0..90u32).map(|i| 3 + (i * 37) % (vocab - 3)).collect();
            let (prefix, rest) = prompt.split_at(70);
            logits(&mut model, prefix);
            let computed = logits(&mut model, rest);
            cache.save(prefix, Kind::Prefix, &model.transformer);
            cache.save(&prompt[..80], Kind::Conversation, &model.transformer);

            let lookup = |prompt, fixed, resumed| Lookup {
                prompt,
                fixed,
                resumed,
            };
            let mut fresh = load(&path, kv);
            let fixed = lookup(&prompt, 70, false);
            assert_eq!(cache.restore(&fixed, 0, &mut fresh.transformer), 70);
            assert_eq!(fresh.transformer.cached(), 70);
            assert!(logits(&mut fresh, rest) == computed, "{name} {kv:?}");

            // A resumed prompt takes the conversation as far as it follows it.
            let mut other = prompt[..75].to_vec();
            other.extend([prompt[75] ^ 1, 5]);
            let resumed = lookup(&other, 70, true);
            assert_eq!(cache.restore(&resumed, 0, &mut fresh.transformer), 75);
            assert_eq!(fresh.transformer.cached(), 75);
            // Nothing when the model holds more already: it keeps that.
            assert_eq!(cache.restore(&resumed, 76, &mut fresh.transformer), 76);
            // A prompt that leaves the prefix early takes nothing.
            let early = lookup(&other[..60], 0, false);
            assert_eq!(cache.restore(&early, 0, &mut fresh.transformer), 0);
        }
    }
}

/// `greve ask` with a cache folder and more: its `--json` object.
fn ask(cache: &Path, model: &str, extra: &[&str]) -> (Value, Output) {
    let cache = cache.to_str().unwrap();
    let args = [
        &["ask", "-m", model, "--json", "-v", "-n", "12"],
        extra,
        &["--temperature", "1", "--seed", "7", "Bonjour, ça va ?"],
    ]
    .concat();
    let o = common::run(&args, b"", &[("XDG_CACHE_HOME", cache)]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    let json = serde_json::from_str(stdout(&o).trim()).unwrap();
    (json, o)
}

fn loaded(v: &Value) -> u64 {
    v["loaded_tokens"].as_u64().unwrap()
}

fn entries(cache: &Path) -> Vec<PathBuf> {
    let dir = cache.join("greve/prompt-cache");
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    found.sort();
    found
}

/// Sampled replies (temperature 1, a seed) are the same with the cache
/// off, on a miss and on a hit; the hit prefills only what follows the
/// system prompt. The persona's system prompt is cached as a user's.
#[test]
fn a_hit_answers_as_a_miss_and_no_cache_do() {
    let user = &["--system", SYSTEM][..];
    let persona = &["--strike=râleuse"][..];
    // Each model once, each KV type and both system prompts on some.
    let cases = [
        (user, &["f16"][..]),
        (user, &["f16", "q8"]),
        (persona, &["f16"]),
        (user, &["q8"]),
        (persona, &["f16"]),
    ];
    for ((name, path, _keep), (system, kvs)) in models().into_iter().zip(cases) {
        let model = path.to_str().unwrap();
        for &kv in kvs {
            let cache = tempfile::tempdir().unwrap();
            let flags = [system, &["--kv-cache", kv]].concat();
            let off = ask(
                cache.path(),
                model,
                &[&flags[..], &["--no-prompt-cache"]].concat(),
            );
            assert!(entries(cache.path()).is_empty());
            let miss = ask(cache.path(), model, &flags).0;
            assert_eq!(entries(cache.path()).len(), 1, "{name}");
            let hit = ask(cache.path(), model, &flags).0;
            let what = format!("{name}, {system:?}, {kv}");
            assert_eq!(loaded(&off.0), 0);
            assert_eq!(loaded(&miss), 0, "{what}");
            assert!(loaded(&hit) >= 32, "{what}: {hit}");
            assert_eq!(
                hit["prefilled_tokens"].as_u64().unwrap() + loaded(&hit),
                hit["prompt_tokens"].as_u64().unwrap()
            );
            for other in [&miss, &hit] {
                assert_eq!(other["reply"], off.0["reply"], "{what}");
                assert_eq!(other["prompt_tokens"], off.0["prompt_tokens"]);
            }
        }
    }
}

/// A prompt that shares a few tokens with an entry by chance (the instruct
/// format's opening, a saved conversation's first message) takes nothing
/// from it: the keys and values it shares were computed as part of
/// another prompt, which a run without the cache would not do.
#[test]
fn unrelated_prompts_take_nothing() {
    let cache = tempfile::tempdir().unwrap();
    let model = goldens().join("tiny-v1-f16.gguf");
    let model = model.to_str().unwrap();
    let saved = cache.path().join("saved.json");
    let save = ["--strike=râleuse", "--save", saved.to_str().unwrap()];
    ask(cache.path(), model, &save);
    let kept = entries(cache.path()).len();
    assert_eq!(kept, 2, "the persona's and the conversation's");
    let (plain, _) = ask(cache.path(), model, &[]);
    assert_eq!(loaded(&plain), 0);
    let off = ask(cache.path(), model, &["--no-prompt-cache"]).0;
    assert_eq!(plain["reply"], off["reply"]);
}

fn conversation(path: &Path) -> Conversation {
    let options = Options {
        system: None,
        mode: Mode::Off,
        safe: false,
        prompts: Prompts::load::<&Path>(&[]).unwrap(),
        sampling: SamplingParams::greedy(),
        seed: 0,
        max_tokens: Some(12),
        format: Format::Text,
        tools: greve::tools::Tools::default(),
        show_thinking: false,
        think: true,
    };
    Conversation::new(load(path, KvType::F16), options)
}

const FIRST: &str = "Bonjour ! Je voudrais comprendre pourquoi la grève continue encore, \
    et ce que les délégués ont décidé hier soir.";

/// `ask --save` keeps the keys and values of the whole conversation, and
/// `ask --load` resumes from them: it reuses what the same chat going on in
/// one process reuses, prefills only the rest, and answers as that chat.
#[test]
fn a_saved_conversation_resumes_without_recomputing() {
    let path = goldens().join("tiny-v1-f16.gguf");
    let model = path.to_str().unwrap();
    let cancel = AtomicBool::new(false);
    let mut chat = conversation(&path);
    chat.send(FIRST.into(), &cancel, |_| Ok(())).unwrap();
    let second = chat
        .send("Et ensuite ?".into(), &cancel, |_| Ok(()))
        .unwrap();

    let cache = tempfile::tempdir().unwrap();
    let saved = cache.path().join("chat.json");
    let greedy = ["--temperature", "0", "-n", "12"];
    let args = [
        &["ask", "-m", model][..],
        &greedy,
        &["--save", saved.to_str().unwrap(), FIRST],
    ];
    let env = [("XDG_CACHE_HOME", cache.path().to_str().unwrap())];
    let o = common::run(&args.concat(), b"", &env);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // No system prompt: the conversation's entry alone.
    assert_eq!(entries(cache.path()).len(), 1);

    let args = [
        &["ask", "-m", model, "--json"][..],
        &greedy,
        &["--load", saved.to_str().unwrap(), "Et ensuite ?"],
    ];
    let o = common::run(&args.concat(), b"", &env);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let resumed: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(resumed["reply"].as_str().unwrap(), second.text);
    // At least the first turn, and as much as the chat kept in memory.
    let tokenizer = &chat.local().unwrap().model.tokenizer;
    let first = template::render(
        tokenizer.format(),
        &template::System::default(),
        &[Message::user(FIRST)],
    )
    .unwrap();
    let first = tokenizer.encode_pieces(&first).unwrap();
    assert!(loaded(&resumed) as usize >= first.len(), "{resumed}");
    let in_memory = chat.last.as_ref().unwrap();
    assert_eq!(loaded(&resumed) as usize, in_memory.reused_tokens);
    let prefilled = resumed["prefilled_tokens"].as_u64().unwrap();
    assert_eq!(prefilled as usize, in_memory.prefilled_tokens());
}

/// A damaged entry is a miss, said under -v, and replaced by a good one.
#[test]
fn damaged_entries_are_ignored_and_replaced() {
    let model = goldens().join("tiny-v3-f16.gguf");
    let model = model.to_str().unwrap();
    let flags = ["--system", SYSTEM];
    type Damage = fn(&Path);
    let damages: [(&str, Damage); 9] = [
        ("truncated", |p| {
            let bytes = std::fs::read(p).unwrap();
            std::fs::write(p, &bytes[..bytes.len() / 2]).unwrap();
        }),
        ("last byte gone", |p| {
            let bytes = std::fs::read(p).unwrap();
            std::fs::write(p, &bytes[..bytes.len() - 1]).unwrap();
        }),
        ("a flipped byte in the keys", |p| {
            let mut bytes = std::fs::read(p).unwrap();
            let at = bytes.len() * 2 / 3;
            bytes[at] ^= 0x40;
            std::fs::write(p, bytes).unwrap();
        }),
        ("empty", |p| std::fs::write(p, b"").unwrap()),
        ("another version", |p| {
            let mut bytes = std::fs::read(p).unwrap();
            bytes[7] = b'9';
            std::fs::write(p, bytes).unwrap();
        }),
        ("another model", |p| {
            let mut bytes = std::fs::read(p).unwrap();
            let at = find(&bytes, b"; kv f16").unwrap() + 5;
            bytes[at] = b'x';
            std::fs::write(p, bytes).unwrap();
        }),
        ("a header of 4 GB", |p| {
            let mut bytes = std::fs::read(p).unwrap();
            bytes[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
            std::fs::write(p, bytes).unwrap();
        }),
        ("a folder", |p| {
            std::fs::remove_file(p).unwrap();
            std::fs::create_dir_all(p.join("inside")).unwrap();
        }),
        ("a FIFO", |p| {
            std::fs::remove_file(p).unwrap();
            let made = std::process::Command::new("mkfifo")
                .arg(p)
                .status()
                .unwrap();
            assert!(made.success());
        }),
    ];
    let cache = tempfile::tempdir().unwrap();
    let reference = ask(
        cache.path(),
        model,
        &[&flags[..], &["--no-prompt-cache"]].concat(),
    )
    .0;
    for (what, damage) in damages {
        let cache = tempfile::tempdir().unwrap();
        ask(cache.path(), model, &flags);
        let [entry] = &entries(cache.path())[..] else {
            panic!("one entry expected")
        };
        damage(entry);
        let (after, o) = ask(cache.path(), model, &flags);
        assert_eq!(after["reply"], reference["reply"], "{what}");
        assert_eq!(loaded(&after), 0, "{what}");
        assert!(
            stderr(&o).contains("prompt cache: ignoring"),
            "{what}: {}",
            stderr(&o)
        );
        assert!(entry.is_file(), "{what}: not replaced");
        let again = ask(cache.path(), model, &flags).0;
        assert!(loaded(&again) >= 32, "{what}: the replacement is not used");
        assert_eq!(again["reply"], reference["reply"], "{what}");
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A model file changed at the same path is another model: a miss.
#[test]
fn a_model_replaced_at_the_same_path_misses() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.gguf");
    std::fs::copy(goldens().join("tiny-v1-f16.gguf"), &model).unwrap();
    let model = model.to_str().unwrap();
    let flags = ["--system", SYSTEM];
    ask(dir.path(), model, &flags);
    assert!(loaded(&ask(dir.path(), model, &flags).0) > 0);
    // The same bytes written again: a write all the same.
    std::fs::write(model, std::fs::read(model).unwrap()).unwrap();
    assert_eq!(loaded(&ask(dir.path(), model, &flags).0), 0);
    assert!(loaded(&ask(dir.path(), model, &flags).0) > 0);
}

/// Past `prompt_cache_size` the least recently used entries go, the newest
/// stays.
#[test]
fn eviction_keeps_the_cache_within_its_bound() {
    let cache = tempfile::tempdir().unwrap();
    let config = cache.path().join("config.toml");
    let model = goldens().join("tiny-v1-f16.gguf");
    let model = model.to_str().unwrap();
    let one_entry = {
        ask(cache.path(), model, &["--system", SYSTEM]);
        let size = std::fs::metadata(&entries(cache.path())[0]).unwrap().len();
        greve_cache(cache.path(), &["clear"]);
        size
    };
    let limit = one_entry * 5 / 2;
    std::fs::write(&config, format!("prompt_cache_size = {limit}\n")).unwrap();
    let env = [
        ("XDG_CACHE_HOME", cache.path().to_str().unwrap()),
        ("GREVE_CONFIG", config.to_str().unwrap()),
    ];
    for i in 0..5 {
        let system = format!("{SYSTEM} Consigne numéro {i}.");
        let o = common::run(
            &["ask", "-m", model, "-n", "2", "--system", &system, "Salut"],
            b"",
            &env,
        );
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let sizes: u64 = entries(cache.path())
            .iter()
            .map(|e| e.metadata().unwrap().len())
            .sum();
        assert!(sizes <= limit, "{sizes} bytes over the limit of {limit}");
    }
    assert_eq!(entries(cache.path()).len(), 2);
    let last = format!("{SYSTEM} Consigne numéro 4.");
    let args = [
        "ask", "-m", model, "-n", "2", "--json", "--system", &last, "Salut",
    ];
    let o = common::run(&args, b"", &env);
    let json: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert!(loaded(&json) > 0, "the newest entry was evicted");
}

/// Processes that write the same entry at once all answer alike, and leave
/// one good entry and no temporary file.
#[test]
fn concurrent_writers_leave_one_good_entry() {
    let cache = tempfile::tempdir().unwrap();
    let model = goldens().join("tiny-k-q4_k_m.gguf");
    let model = model.to_str().unwrap();
    let flags = ["--system", SYSTEM];
    let replies: Vec<Value> = std::thread::scope(|s| {
        let runs: Vec<_> = (0..4)
            .map(|_| s.spawn(|| ask(cache.path(), model, &flags).0))
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    assert!(replies.iter().all(|r| r["reply"] == replies[0]["reply"]));
    let found = entries(cache.path());
    assert_eq!(found.len(), 1, "{found:?}");
    let hit = ask(cache.path(), model, &flags).0;
    assert!(loaded(&hit) > 0);
    assert_eq!(hit["reply"], replies[0]["reply"]);
}

/// A cache that cannot be written costs one warning, not the answer.
#[test]
fn an_unwritable_cache_warns_once_and_answers() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_folder = dir.path().join("file");
    std::fs::write(&not_a_folder, b"").unwrap();
    let model = goldens().join("tiny-v1-f16.gguf");
    let (json, o) = ask(
        &not_a_folder,
        model.to_str().unwrap(),
        &["--system", SYSTEM],
    );
    assert!(json["reply"].is_string());
    let warnings = stderr(&o).matches("cannot write the prompt cache").count();
    assert_eq!(warnings, 1, "{}", stderr(&o));
}

fn greve_cache(cache: &Path, args: &[&str]) -> String {
    let args = [&["cache"], args].concat();
    let o = common::run(&args, b"", &[("XDG_CACHE_HOME", cache.to_str().unwrap())]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    stdout(&o)
}

#[test]
fn greve_cache_shows_and_clears_the_cache() {
    let cache = tempfile::tempdir().unwrap();
    let model = goldens().join("tiny-v1-f16.gguf");
    ask(cache.path(), model.to_str().unwrap(), &["--system", SYSTEM]);
    let shown = greve_cache(cache.path(), &[]);
    assert!(shown.contains("greve/prompt-cache"), "{shown}");
    assert!(shown.contains("1 entries"), "{shown}");
    let cleared = greve_cache(cache.path(), &["clear"]);
    assert!(cleared.starts_with("removed 1 entries"), "{cleared}");
    assert!(entries(cache.path()).is_empty());
    assert!(greve_cache(cache.path(), &[]).contains("0 entries"));
}
