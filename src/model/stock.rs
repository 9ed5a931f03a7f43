//! Candle's stock pipelines on the files greve runs: candle-transformers'
//! Mistral model for safetensors folders, and its quantised llama model for
//! GGUF files (llama.cpp writes Mistral as `llama`). Written by others, they
//! are an independent reference for greve's logits in the tests, and the
//! baseline `greve bench --baseline candle` measures greve's own transformer
//! and kernels against.

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::{mistral, quantized_llama};

use super::files::{ModelFiles, WeightFiles};
use crate::exit::{Classify, Failure};

pub struct Stock {
    model: Pipeline,
    device: Device,
}

enum Pipeline {
    Dense(mistral::Model),
    Quantized(quantized_llama::ModelWeights),
}

impl Stock {
    pub fn load(files: &ModelFiles, device: &Device, dtype: DType) -> anyhow::Result<Stock> {
        let failed = || format!("candle-transformers could not load {}", files.name);
        let model = match &files.weights {
            WeightFiles::Safetensors { config, shards } => {
                let text = crate::text_file::read_text(config)?;
                let config: mistral::Config = serde_json::from_str(&text)
                    .classify(Failure::ModelInvalid, || {
                        format!("{}: not a config candle's Mistral reads", config.display())
                    })?;
                // SAFETY: the shards are mapped read-only, as greve maps them;
                // they must not change while the model lives.
                let vb = unsafe { VarBuilder::from_mmaped_safetensors(shards, dtype, device) }
                    .classify(Failure::ModelInvalid, failed)?;
                let model =
                    mistral::Model::new(&config, vb).classify(Failure::ModelInvalid, failed)?;
                Pipeline::Dense(model)
            }
            WeightFiles::Gguf(path) => {
                let mut file = std::fs::File::open(path)
                    .classify(Failure::ModelNotFound, || {
                        format!("cannot open {}", path.display())
                    })?;
                let content =
                    gguf_file::Content::read(&mut file).classify(Failure::ModelInvalid, failed)?;
                let model = quantized_llama::ModelWeights::from_gguf(content, &mut file, device)
                    .classify(Failure::ModelInvalid, failed)?;
                Pipeline::Quantized(model)
            }
        };
        let device = device.clone();
        Ok(Stock { model, device })
    }

    /// The logits after the last of `tokens`, which follow `position`
    /// tokens already in the model's cache.
    pub fn forward(&mut self, tokens: &[u32], position: usize) -> anyhow::Result<Vec<f32>> {
        let input = Tensor::new(tokens, &self.device)?.unsqueeze(0)?;
        let logits = match &mut self.model {
            Pipeline::Dense(model) => model.forward(&input, position)?,
            Pipeline::Quantized(model) => model.forward(&input, position)?,
        };
        Ok(logits.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?)
    }

    /// Forgets every token: the next forward starts at position 0.
    pub fn clear(&mut self) {
        match &mut self.model {
            Pipeline::Dense(model) => model.clear_kv_cache(),
            Pipeline::Quantized(model) => model.clear_kv_cache(),
        }
    }
}
