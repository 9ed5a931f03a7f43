//! Greedy continuations of tiny Mistral models against transformers, through
//! the same resolution and loading code as real weights: a sharded bf16
//! safetensors folder, and the GGUF files llama.cpp's converter made from
//! the same weights.

use crate::common;

use std::sync::atomic::AtomicBool;

use candle_core::{DType, Device};
use common::{device, golden_json, goldens, ids, until_eos, write_tiny_model};
use greve::generate::{generate, Limits, Prompt};
use greve::model::{self, Model};
use greve::resolve::resolve;
use greve::sampler::{argmax, Sampler, SamplingParams};

/// The model at `path` on the test device (`GREVE_TEST_DEVICE`), computing
/// in f32 there too, so a GPU owes the goldens what the CPU does.
fn load(path: &std::path::Path) -> Model {
    load_on(path, &device())
}

fn load_on(path: &std::path::Path, device: &Device) -> Model {
    let files = resolve(path.to_str().unwrap()).unwrap();
    model::load(&files, device, DType::F32).unwrap()
}

/// Logits after `prompt` run on an empty KV cache.
fn fresh_logits(model: &mut Model, prompt: &[u32]) -> Vec<f32> {
    model.transformer.truncate(0);
    model
        .transformer
        .forward(prompt)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

fn greedy(model: &mut Model, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut sampler = Sampler::new(SamplingParams::greedy(), 0);
    let stop = [model.tokenizer.eos()];
    let mut limits = Limits {
        max_tokens: n,
        stop: &stop,
        grammar: None,
    };
    let cancel = AtomicBool::new(false);
    generate(
        &mut model.transformer,
        Prompt::fresh(prompt),
        &mut sampler,
        &mut limits,
        &cancel,
        |_| Ok(()),
    )
    .unwrap()
    .tokens
}

/// Two replies generated step by step in turns, each sequence's KV cache
/// swapped in for its step (as a scheduler serving two clients will), are
/// each transformers' greedy continuation, as when generated alone.
#[test]
fn replies_taken_in_turns_are_the_ones_made_alone() {
    use greve::generate::{Generator, Step};
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), "v3");
    let mut model = load(dir.path());
    let golden = golden_json("tiny-v3.json");
    let n = golden["new_tokens"].as_u64().unwrap() as usize;
    let cases: Vec<(Vec<u32>, Vec<u32>)> = golden["continuations"].as_array().unwrap()[1..3]
        .iter()
        .map(|c| (ids(&c["prompt"]), until_eos(ids(&c["greedy"]))))
        .collect();
    let stop = [model.tokenizer.eos()];
    let cancel = AtomicBool::new(false);
    let kind = model.transformer.kv_type();
    let mut contexts = [
        model.transformer.new_context(kind),
        model.transformer.new_context(kind),
    ];
    let mut samplers = [0, 1].map(|_| Sampler::new(SamplingParams::greedy(), 0));
    let mut limits: Vec<Limits> = (0..2)
        .map(|_| Limits {
            max_tokens: n,
            stop: &stop,
            grammar: None,
        })
        .collect();
    let mut generators: Vec<Option<Generator>> = Vec::new();
    for (i, (prompt, _)) in cases.iter().enumerate() {
        model.transformer.swap_context(&mut contexts[i]);
        generators.push(Some(Generator::new(
            &mut model.transformer,
            Prompt::fresh(prompt),
        )));
        model.transformer.swap_context(&mut contexts[i]);
    }
    let mut got = [None, None];
    while generators.iter().any(Option::is_some) {
        for i in 0..2 {
            let Some(generator) = generators[i].as_mut() else {
                continue;
            };
            model.transformer.swap_context(&mut contexts[i]);
            let step = generator
                .step(
                    &mut model.transformer,
                    &mut samplers[i],
                    &mut limits[i],
                    &cancel,
                )
                .unwrap();
            model.transformer.swap_context(&mut contexts[i]);
            if let Step::Done(finish) = step {
                got[i] = Some(generators[i].take().unwrap().finish(finish).tokens);
            }
        }
    }
    for (i, (_, want)) in cases.iter().enumerate() {
        assert_eq!(got[i].as_ref().unwrap(), want, "sequence {i}");
    }
}

/// Every golden prompt: the continuation must equal transformers' token for
/// token, and the first logits must agree closely.
fn check(model: &mut Model, version: &str, what: &str, logit_tolerance: f32) {
    let golden = golden_json(&format!("tiny-{version}.json"));
    let n = golden["new_tokens"].as_u64().unwrap() as usize;
    for case in golden["continuations"].as_array().unwrap() {
        let prompt = ids(&case["prompt"]);
        let want = until_eos(ids(&case["greedy"]));
        assert_eq!(greedy(model, &prompt, n), want, "{what}, prompt {prompt:?}");

        let logits = fresh_logits(model, &prompt);
        for (i, want) in case["first_logits"].as_array().unwrap().iter().enumerate() {
            let want = want.as_f64().unwrap() as f32;
            assert!(
                (logits[i] - want).abs() <= logit_tolerance,
                "{what}: logit {i} is {} but transformers gives {want}",
                logits[i]
            );
        }
    }
}

#[test]
fn sharded_safetensors_match_transformers() {
    for version in ["v1", "v3"] {
        let dir = tempfile::tempdir().unwrap();
        write_tiny_model(dir.path(), version);
        let mut model = load(dir.path());
        check(&mut model, version, &format!("safetensors {version}"), 1e-3);
    }
}

/// Ministral 3's rope: YaRN frequencies and the llama-4 query scaling, with
/// a 16-position original window so that prompts of 6, 41 and 71 tokens and
/// their continuations run inside it and far past it. YaRN's attention
/// factor (1.14 here) magnifies the f16 KV cache's rounding, so the logits'
/// tolerance is twice the other models'; the greedy tokens are exact.
#[test]
fn ministral3_safetensors_match_transformers() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), "ministral3");
    let mut model = load(dir.path());
    check(&mut model, "ministral3", "safetensors ministral3", 2e-3);
}

/// The same model as a `Mistral3ForConditionalGeneration` checkpoint, as the
/// Hub's Ministral 3 and Small 3.1/3.2 repos hold it: the config inside
/// `text_config`, the tensors under `language_model.`, a vision tower beside
/// them that greve leaves unread.
#[test]
fn ministral3_inside_a_vision_checkpoint_reads_its_text_model() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), "ministral3");
    let mut index: serde_json::Value = read_json(&dir.path().join("model.safetensors.index.json"));
    let mut weight_map = serde_json::Map::new();
    for shard in [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ] {
        let path = dir.path().join(shard);
        let tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
        let mut renamed: std::collections::HashMap<_, _> = tensors
            .into_iter()
            .map(|(name, t)| (format!("language_model.{name}"), t))
            .collect();
        if shard.starts_with("model-00001") {
            let patch =
                candle_core::Tensor::zeros((4, 3, 2, 2), DType::BF16, &Device::Cpu).unwrap();
            renamed.insert("vision_tower.patch_conv.weight".into(), patch);
        }
        weight_map.extend(renamed.keys().map(|n| (n.clone(), shard.into())));
        candle_core::safetensors::save(&renamed, &path).unwrap();
    }
    index["weight_map"] = weight_map.into();
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let text: serde_json::Value = read_json(&dir.path().join("config.json"));
    let outer = serde_json::json!({"architectures": ["Mistral3ForConditionalGeneration"],
        "model_type": "mistral3", "text_config": text, "vision_config": {"hidden_size": 16}});
    std::fs::write(dir.path().join("config.json"), outer.to_string()).unwrap();
    let mut model = load(dir.path());
    check(
        &mut model,
        "ministral3",
        "Mistral3ForConditionalGeneration",
        2e-3,
    );
}

/// The tiny Ministral 3 as llama.cpp's converter writes it (arch
/// `mistral3`: YaRN and the query scaling in the metadata, the query and
/// key weights permuted as for `llama`): transformers' tokens, and
/// llama.cpp's own reply on the file (llamacpp.json), whose tokens are
/// transformers' too.
#[test]
fn ministral3_gguf_from_llama_cpp_converter_matches_transformers() {
    let name = "tiny-ministral3-f16.gguf";
    let mut model = load(&goldens().join(name));
    check(&mut model, "ministral3", "GGUF f16 ministral3", 2e-3);
    let llama_cpp = &golden_json("llamacpp.json")["files"][name];
    let transformers = &golden_json("tiny-ministral3.json")["continuations"];
    let cases = llama_cpp.as_array().unwrap();
    assert_eq!(cases.len(), 3);
    for (case, reference) in cases.iter().zip(transformers.as_array().unwrap()) {
        let prompt = ids(&case["prompt"]);
        assert_eq!(
            case["greedy"], reference["greedy"],
            "llama.cpp and transformers"
        );
        let logits = fresh_logits(&mut model, &prompt);
        for (i, want) in case["first_logits"].as_array().unwrap().iter().enumerate() {
            let want = want.as_f64().unwrap() as f32;
            assert!(
                (logits[i] - want).abs() < 5e-3,
                "{name}: logit {i} is {} but llama.cpp gives {want}",
                logits[i]
            );
        }
    }
}

fn read_json(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The GGUF files llama.cpp's converter made of the tiny models, NeMo's
/// shape among them ("tekken": heads × head size is not the hidden size, the
/// real Tekken vocabulary), prompted with mistral-common's renderings of
/// single- and multi-turn chats.
#[test]
fn gguf_from_llama_cpp_converter_matches_transformers() {
    for version in ["v1", "v3", "k", "tekken"] {
        let path = goldens().join(format!("tiny-{version}-f16.gguf"));
        let mut model = load(&path);
        check(&mut model, version, &format!("GGUF f16 {version}"), 1e-3);
    }
}

#[test]
fn generation_is_the_same_in_one_chunk_or_token_by_token() {
    // The KV cache must make incremental decoding equal to a full prefill.
    let mut model = load(&goldens().join("tiny-v1-f16.gguf"));
    let golden = golden_json("tiny-v1.json");
    let prompt = ids(&golden["continuations"][2]["prompt"]);
    let full = fresh_logits(&mut model, &prompt);
    model.transformer.truncate(0);
    let mut last = Vec::new();
    for &t in &prompt {
        last = model
            .transformer
            .forward(&[t])
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
    }
    let max_diff = full
        .iter()
        .zip(&last)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(max_diff < 1e-4, "{max_diff}");
}

/// Quantised files have no transformers reference: llama.cpp is the one.
/// llama.cpp and candle quantise activations for their integer dot products
/// in slightly different ways (both land a few hundredths from the exact
/// product, rarely 0.2 apart), so logits agree closely but not exactly: a
/// layout or dequantisation bug would be off by whole units. Every greedy
/// choice must agree, except where llama.cpp's two best logits are within
/// that noise; llama.cpp's tokens are fed back (teacher forcing) so that one
/// near-tie does not end the comparison. On a GPU, candle's kernels round
/// activations in blocks of 32 (as llama.cpp's CUDA backend does), not of
/// 256 as the CPU references: two logits closer than the noise may swap.
#[test]
fn quantized_gguf_matches_llama_cpp() {
    const NOISE: f32 = 0.25;
    let near_tie = if device().is_cpu() { 0.1 } else { NOISE };
    let golden = golden_json("llamacpp.json");
    let files = golden["files"].as_object().unwrap();
    let (mut compared, mut total) = (0, 0);
    for (name, cases) in files
        .iter()
        .filter(|(name, _)| !name.ends_with("-f16.gguf"))
    {
        let mut model = load(&goldens().join(name));
        for case in cases.as_array().unwrap() {
            let prompt = ids(&case["prompt"]);
            let mut logits = fresh_logits(&mut model, &prompt);
            for (i, want) in case["first_logits"].as_array().unwrap().iter().enumerate() {
                let want = want.as_f64().unwrap() as f32;
                let got = logits[i];
                assert!(
                    (got - want).abs() < NOISE,
                    "{name}: logit {i} is {got} but llama.cpp gives {want}"
                );
            }
            let margins = case["margins"].as_array().unwrap();
            for (step, (&want, margin)) in ids(&case["greedy"]).iter().zip(margins).enumerate() {
                total += 1;
                if margin.as_f64().unwrap() as f32 >= near_tie {
                    compared += 1;
                    assert_eq!(
                        argmax(&logits),
                        want,
                        "{name}, prompt {prompt:?}, step {step}"
                    );
                }
                logits = model
                    .transformer
                    .forward(&[want])
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
            }
        }
    }
    assert!(
        compared * 2 >= total,
        "only {compared} of {total} choices were clear enough to compare"
    );
}

/// bf16 and f16 compute (what GPUs use, and CPUs short of memory) stay
/// close to f32 on the same safetensors weights.
#[test]
fn half_precision_compute_stays_close_to_f32() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), "v3");
    let files = resolve(dir.path().to_str().unwrap()).unwrap();
    let golden = golden_json("tiny-v3.json");
    let prompt = ids(&golden["continuations"][1]["prompt"]);
    let mut logits = Vec::new();
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        let mut model = model::load(&files, &device(), dtype).unwrap();
        logits.push(
            model
                .transformer
                .forward(&prompt)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
        );
    }
    for half in &logits[1..] {
        let worst = logits[0]
            .iter()
            .zip(half)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(worst < 0.25, "{worst}");
    }
}

/// A prompt longer than one batch (512 tokens) gives the logits of the same
/// prompt fed in other cuts: batches, the KV cache and the repacked prefill
/// tiles (≥ 32 tokens) against the one-row kernels (a token at a time).
///
/// Not bit for bit: the tiles and the one-row kernels add the same products
/// in another order, and every product's activations are rounded to 8 bits,
/// so a last-bit difference can move a value across a rounding step and on
/// through the layers (how often depends on the build: a portable build
/// rounds differently from one for this CPU). The same greedy choice, and
/// logits within half a percent of their spread, is what the kernels owe.
/// On a GPU a percent: candle's CUDA kernels for a batch (MMQ) and for a
/// single token (MMVQ) round the activations to 8 bits in other ways.
#[test]
fn long_prompts_give_the_same_logits_however_they_are_cut() {
    let tolerance = if device().is_cpu() { 0.005 } else { 0.01 };
    let mut model = load(&goldens().join("tiny-k-q4_k_m.gguf"));
    let vocab = model.transformer.config.vocab_size as u32;
    let prompt: Vec<u32> = (0..700u32)
        .map(|i| 3 + (i * 37 + i / 7) % (vocab - 3))
        .collect();
    let whole = fresh_logits(&mut model, &prompt);

    model.transformer.truncate(0);
    for cut in [0, 40, 41, 300, 699].windows(2) {
        model.transformer.forward(&prompt[cut[0]..cut[1]]).unwrap();
    }
    let pieces = model
        .transformer
        .forward(&prompt[699..])
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();

    model.transformer.truncate(0);
    let mut one_by_one = Vec::new();
    for &token in &prompt {
        one_by_one = model
            .transformer
            .forward(&[token])
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
    }
    assert_eq!(model.transformer.cached(), prompt.len());
    let argmax = |v: &[f32]| {
        v.iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0
    };
    let spread = whole.iter().fold(f32::MIN, |m, x| m.max(*x))
        - whole.iter().fold(f32::MAX, |m, x| m.min(*x));
    for other in [&pieces, &one_by_one] {
        let worst = whole
            .iter()
            .zip(other)
            .map(|(a, b)| (a - b).abs())
            .fold(
                0f32,
                |m, d| if d.is_nan() { f32::INFINITY } else { m.max(d) },
            );
        assert!(
            worst < tolerance * spread,
            "logits differ by {worst} (spread {spread})"
        );
        assert_eq!(argmax(other), argmax(&whole));
    }
}

/// The 8-bit KV cache (the CPU's) stays close to the f16 one: the same
/// greedy choice after a long prompt, logits within a small fraction of
/// their range.
#[test]
fn an_8_bit_kv_cache_stays_close_to_f16() {
    let mut model = load_on(&goldens().join("tiny-k-q4_k_m.gguf"), &Device::Cpu);
    let vocab = model.transformer.config.vocab_size as u32;
    let prompt: Vec<u32> = (0..300u32)
        .map(|i| 3 + (i * 53 + i / 5) % (vocab - 3))
        .collect();
    let f16 = fresh_logits(&mut model, &prompt);
    model
        .transformer
        .set_kv_type(greve::model::attention::KvType::Q8);
    let q8 = fresh_logits(&mut model, &prompt);
    let range = f16.iter().fold(0f32, |m, x| m.max(x.abs()));
    let worst = f16
        .iter()
        .zip(&q8)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    eprintln!("q8 vs f16: worst {worst}, range {range}");
    assert!(
        worst < 0.02 * range,
        "q8 logits differ by {worst} (range {range})"
    );
    assert_eq!(argmax(&f16), argmax(&q8));
}

/// A conversation set aside with its KV cache (`swap_context`, as `greve
/// bench --depth` does) resumes where it was while another one ran.
#[test]
fn a_context_set_aside_resumes_where_it_was() {
    let mut model = load(&goldens().join("tiny-k-q4_k_m.gguf"));
    let vocab = model.transformer.config.vocab_size as u32;
    let prompt: Vec<u32> = (0..120u32)
        .map(|i| 3 + (i * 29 + 11) % (vocab - 3))
        .collect();
    let other: Vec<u32> = (0..50u32).map(|i| 3 + (i * 17 + 5) % (vocab - 3)).collect();
    let uninterrupted = fresh_logits(&mut model, &prompt);

    model.transformer.truncate(0);
    model.transformer.forward(&prompt[..100]).unwrap();
    let mut aside = model
        .transformer
        .new_context(greve::model::attention::KvType::F16);
    model.transformer.swap_context(&mut aside);
    assert_eq!(model.transformer.cached(), 0);
    model.transformer.forward(&other).unwrap();
    model.transformer.swap_context(&mut aside);
    assert_eq!(model.transformer.cached(), 100);
    let resumed = model
        .transformer
        .forward(&prompt[100..])
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let worst = uninterrupted
        .iter()
        .zip(&resumed)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst < 1e-3, "logits differ by {worst}");
    // The other conversation kept its positions too.
    model.transformer.swap_context(&mut aside);
    assert_eq!(model.transformer.cached(), 50);
}

/// greve's KV caches against llama.cpp's after a 300-token prompt on the
/// tiny Q4_K_M file (tests/goldens/llamacpp_kv_goldens.py): f16 against f16,
/// and `--kv-cache q8` against llama.cpp's `q8_0` (blocks of 32, a scale
/// each). Both pick llama.cpp's greedy tokens, and going from f16 to 8 bits
/// costs greve no more precision than it costs llama.cpp: the logits move
/// by as much (the rounding noise itself differs, as the two
/// implementations' keys and values differ in their last bits). These are
/// the CPU's caches.
#[test]
fn kv_caches_match_llama_cpp() {
    use greve::model::attention::KvType;
    const NEAR_TIE: f32 = 0.1;
    let golden = golden_json("llamacpp-kv.json");
    let path = goldens().join(golden["file"].as_str().unwrap());
    let mut model = load_on(&path, &Device::Cpu);
    let llama = |name: &str| -> Vec<f32> {
        let values = golden["caches"][name]["logits"].as_array().unwrap();
        values.iter().map(|x| x.as_f64().unwrap() as f32).collect()
    };
    let mut greve = Vec::new();
    for (name, kind) in [("f16", KvType::F16), ("q8_0", KvType::Q8)] {
        let case = &golden["caches"][name];
        let prompt = ids(&case["prompt"]);
        model.transformer.set_kv_type(kind);
        let mut logits = fresh_logits(&mut model, &prompt);
        greve.push(logits.clone());
        let margins = case["margins"].as_array().unwrap();
        for (step, (&want, margin)) in ids(&case["greedy"]).iter().zip(margins).enumerate() {
            if margin.as_f64().unwrap() as f32 >= NEAR_TIE {
                assert_eq!(argmax(&logits), want, "{name} cache, step {step}");
            }
            let next = model.transformer.forward(&[want]).unwrap();
            logits = next.to_vec1::<f32>().unwrap();
        }
    }
    let moves = |from: &[f32], to: &[f32]| -> Vec<f32> {
        to.iter().zip(from).map(|(a, b)| a - b).collect()
    };
    let rms = |v: &[f32]| (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt();
    let ours = rms(&moves(&greve[0], &greve[1]));
    let theirs = rms(&moves(&llama("f16"), &llama("q8_0")));
    eprintln!("8-bit cache moves the logits by {ours} (rms), llama.cpp's by {theirs}");
    assert!(
        ours > 0.0 && ours < 1.5 * theirs,
        "greve's 8-bit cache moves the logits by {ours} (rms), llama.cpp's q8_0 by {theirs}"
    );
}

/// Decoding's one-row products, where greve has its own kernels (the CPU's
/// 16-bit loop, the GPU's matvec), against sums in f64 over the same
/// rounded inputs: every dtype, shapes on and off the kernels' 16-byte
/// alignment and unrolling.
#[test]
fn one_row_products_match_exact_sums() {
    use candle_core::quantized::QMatMul;
    use candle_core::Tensor;
    use greve::model::linear::Linear;

    let device = device();
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        for (n, k) in [(1, 8), (37, 64), (300, 4104), (9, 1032), (5, 100)] {
            let rounded = |t: Tensor| t.to_dtype(dtype).unwrap();
            let w = rounded(Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap());
            let x = rounded(Tensor::randn(0f32, 1.0, (1, 1, k), &Device::Cpu).unwrap());
            let linear = Linear::Candle(QMatMul::Tensor(w.to_device(&device).unwrap()));
            let y = linear
                .forward(&x.to_device(&device).unwrap(), &[1])
                .unwrap();
            assert_eq!(y.dims(), [1, 1, n]);
            let f32s = |t: &Tensor| t.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
            let y: Vec<f32> = f32s(&y).to_vec1().unwrap();
            let w: Vec<f32> = f32s(&w).to_vec1().unwrap();
            let x: Vec<f32> = f32s(&x).to_vec1().unwrap();
            for (r, got) in y.iter().enumerate() {
                let terms = w[r * k..(r + 1) * k]
                    .iter()
                    .zip(&x)
                    .map(|(a, b)| *a as f64 * *b as f64);
                let (sum, size) = terms.fold((0.0, 0.0), |(s, m), t| (s + t, m + t.abs()));
                // The result is rounded to the dtype once; the sums are f32.
                let unit = if dtype == DType::F32 {
                    0.0
                } else {
                    1.0 / 128.0
                };
                let tolerance = unit * sum.abs() + 1e-5 * size;
                assert!(
                    (*got as f64 - sum).abs() <= tolerance,
                    "{dtype:?} ({n}, {k}) row {r}: {got} but the exact sum is {sum}"
                );
            }
        }
    }
}

/// candle-transformers' stock pipelines, written by others on the same
/// candle, give greve's logits on the same files: its Mistral model on a
/// safetensors folder, its quantised llama model on GGUF files, f16 and
/// quantised, after the prompt and at each greedy step after it.
#[test]
fn candle_transformers_gives_the_same_logits() {
    use greve::model::stock::Stock;
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), "v3");
    let prompts = |version: &str| -> Vec<Vec<u32>> {
        let golden = golden_json(&format!("tiny-{version}.json"));
        let cases = golden["continuations"].as_array().unwrap().clone();
        cases.iter().map(|c| ids(&c["prompt"])).collect()
    };
    // Full-precision weights differ by greve's f16 KV cache (candle's is
    // f32); quantised ones also by how each engine quantises the
    // activations for its products, as much as greve and llama.cpp differ
    // (`quantized_gguf_matches_llama_cpp`).
    for (path, version, tolerance) in [
        (dir.path().to_path_buf(), "v3", 2e-3),
        (goldens().join("tiny-v1-f16.gguf"), "v1", 2e-3),
        (goldens().join("tiny-v3-f16.gguf"), "v3", 2e-3),
        (goldens().join("tiny-v1-q8_0.gguf"), "v1", 0.3),
        (goldens().join("tiny-k-q4_k_m.gguf"), "k", 0.3),
        (goldens().join("tiny-k-q6_k.gguf"), "k", 0.3),
    ] {
        let files = resolve(path.to_str().unwrap()).unwrap();
        let mut greve = model::load(&files, &Device::Cpu, DType::F32).unwrap();
        let mut stock = Stock::load(&files, &Device::Cpu, DType::F32).unwrap();
        for prompt in prompts(version) {
            let name = format!("{} {prompt:?}", path.display());
            let mut ours = fresh_logits(&mut greve, &prompt);
            stock.clear();
            let mut theirs = stock.forward(&prompt, 0).unwrap();
            for step in 0..4 {
                assert_eq!(ours.len(), theirs.len());
                let worst = ours
                    .iter()
                    .zip(&theirs)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(
                    worst <= tolerance,
                    "{name}, step {step}: logits {worst} apart"
                );
                let next = argmax(&ours);
                ours = greve
                    .transformer
                    .forward(&[next])
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                theirs = stock.forward(&[next], prompt.len() + step).unwrap();
            }
        }
    }
}

/// Several sequences through one forward pass, each with its own KV cache
/// and position: one joining with its whole prompt while the others decode,
/// long prompts (the repacked tiles) beside short ones (the compact
/// kernels). Each sequence's logits are the ones it gets alone, bit for
/// bit (alone is held to transformers and llama.cpp above).
#[test]
fn sequences_run_together_get_what_they_get_alone() {
    use greve::model::transformer::Sequence;
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), "v3");
    let mut models = vec![("safetensors v3".to_string(), load(dir.path()))];
    for name in [
        "tiny-k-q4_k_m.gguf",
        "tiny-k-q6_k.gguf",
        "tiny-k-q8_0.gguf",
        "tiny-tekken-f16.gguf",
        "tiny-ministral3-f16.gguf",
    ] {
        models.push((name.to_string(), load(&goldens().join(name))));
    }
    for (name, mut model) in models {
        let vocab = model.transformer.config.vocab_size as u32;
        let long = |len: u32, seed: u32| -> Vec<u32> {
            (0..len)
                .map(|i| 3 + (i * 37 + seed * 11 + i / 7) % (vocab - 3))
                .collect()
        };
        let prompts = [long(5, 1), long(70, 2), long(3, 3), long(40, 4)];
        // Alone: each prompt at once, then greedy steps.
        let steps = 6;
        let alone: Vec<Vec<Vec<f32>>> = prompts
            .iter()
            .map(|p| {
                let mut logits = vec![fresh_logits(&mut model, p)];
                for _ in 0..steps {
                    let next = argmax(logits.last().unwrap()) as u32;
                    let l = model.transformer.forward(&[next]).unwrap();
                    logits.push(l.to_vec1::<f32>().unwrap());
                }
                logits
            })
            .collect();
        // Together: the first two start at once, the others join one and
        // two steps later, while the first ones decode.
        let kind = model.transformer.kv_type();
        let mut contexts: Vec<_> = prompts
            .iter()
            .map(|_| model.transformer.new_context(kind))
            .collect();
        let mut got: Vec<Vec<Vec<f32>>> = vec![Vec::new(); prompts.len()];
        let joins = [0, 0, 1, 2];
        for step in 0..steps + 3 {
            let mut inputs: Vec<(usize, Vec<u32>)> = Vec::new();
            for (i, prompt) in prompts.iter().enumerate() {
                match got[i].last() {
                    None if joins[i] == step => inputs.push((i, prompt.clone())),
                    Some(l) if got[i].len() <= steps => inputs.push((i, vec![argmax(l) as u32])),
                    _ => {}
                }
            }
            let order: Vec<usize> = inputs.iter().map(|(i, _)| *i).collect();
            let mut seqs: Vec<Sequence> = contexts
                .iter_mut()
                .enumerate()
                .filter_map(|(i, context)| {
                    let (_, tokens) = inputs.iter().find(|(j, _)| *j == i)?;
                    Some(Sequence { context, tokens })
                })
                .collect();
            let logits = model.transformer.forward_together(&mut seqs).unwrap();
            for (i, l) in order.into_iter().zip(logits) {
                got[i].push(l.to_vec1::<f32>().unwrap());
            }
        }
        for (i, (got, want)) in got.iter().zip(&alone).enumerate() {
            assert_eq!(got.len(), want.len(), "{name}: sequence {i}");
            for (step, (g, w)) in got.iter().zip(want).enumerate() {
                let same = g.iter().zip(w).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(
                    same,
                    "{name}: sequence {i} differs from alone at step {step}"
                );
            }
        }
    }
}
