//! Weights from Hugging Face safetensors files (one file or sharded), named
//! as in `MistralForCausalLM` checkpoints. The files are memory-mapped; each
//! tensor is converted to the compute dtype as it is loaded.

use std::path::{Path, PathBuf};

use candle_core::quantized::QMatMul;
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use super::linear::Linear;
use super::weights::{Embedding, RopeLayout, Weight, WeightSource};
use crate::exit::{Classify, Failure};

pub struct SafetensorsSource {
    files: MmapedSafetensors,
    folder: PathBuf,
    dtype: DType,
    device: Device,
}

impl SafetensorsSource {
    pub fn open(shards: &[PathBuf], dtype: DType, device: &Device) -> anyhow::Result<Self> {
        // SAFETY: the mapped files are only read. If another process truncates
        // them while greve runs, reads may fault; every tool that maps model
        // weights (candle, llama.cpp, safetensors in Python) accepts this.
        let files = unsafe { MmapedSafetensors::multi(shards) }.classify(Failure::ModelInvalid, || {
            format!(
                "cannot read the safetensors weights in {}: a file is truncated or not safetensors; download it again",
                folder_of(shards).display()
            )
        })?;
        // Every tensor's type, before any is used: candle cannot convert
        // the 8-, 6- and 4-bit float types to the compute dtype.
        for (name, view) in files.tensors() {
            let dtype = DType::try_from(view.dtype()).ok();
            if !matches!(dtype, Some(DType::F32 | DType::F16 | DType::BF16)) {
                return Err(Failure::ModelInvalid.err(format!(
                    "tensor {} in {} is stored as {:?}; greve reads f32, f16 and bf16 safetensors (or a GGUF file)",
                    crate::messages::short(&name),
                    folder_of(shards).display(),
                    view.dtype()
                )));
            }
        }
        Ok(SafetensorsSource {
            files,
            folder: folder_of(shards).to_path_buf(),
            dtype,
            device: device.clone(),
        })
    }

    fn name(w: Weight) -> String {
        let layer = |l: usize, rest: &str| format!("model.layers.{l}.{rest}.weight");
        match w {
            Weight::TokenEmbedding => "model.embed_tokens.weight".into(),
            Weight::OutputNorm => "model.norm.weight".into(),
            Weight::Output => "lm_head.weight".into(),
            Weight::AttnNorm(l) => layer(l, "input_layernorm"),
            Weight::Q(l) => layer(l, "self_attn.q_proj"),
            Weight::K(l) => layer(l, "self_attn.k_proj"),
            Weight::V(l) => layer(l, "self_attn.v_proj"),
            Weight::O(l) => layer(l, "self_attn.o_proj"),
            Weight::FfnNorm(l) => layer(l, "post_attention_layernorm"),
            Weight::Gate(l) => layer(l, "mlp.gate_proj"),
            Weight::Up(l) => layer(l, "mlp.up_proj"),
            Weight::Down(l) => layer(l, "mlp.down_proj"),
        }
    }

    fn load(&self, w: Weight, shape: &[usize]) -> anyhow::Result<Tensor> {
        let name = Self::name(w);
        let tensor = self
            .files
            .load(&name, &self.device)
            .classify(Failure::ModelInvalid, || {
                format!("cannot load tensor {name} from {}", self.folder.display())
            })?;
        if tensor.dims() != shape {
            return Err(Failure::ModelInvalid.err(format!(
                "tensor {name} in {} has shape {:?}, but config.json implies {shape:?}",
                self.folder.display(),
                tensor.dims()
            )));
        }
        Ok(tensor.to_dtype(self.dtype)?)
    }
}

impl WeightSource for SafetensorsSource {
    fn matrix(&mut self, w: Weight, (rows, cols): (usize, usize)) -> anyhow::Result<Linear> {
        Ok(Linear::Candle(QMatMul::Tensor(
            self.load(w, &[rows, cols])?,
        )))
    }

    fn dense(&mut self, w: Weight, shape: &[usize]) -> anyhow::Result<Tensor> {
        self.load(w, shape)
    }

    fn embedding(&mut self, (vocab, d): (usize, usize)) -> anyhow::Result<Embedding> {
        Ok(Embedding::Dense(
            self.load(Weight::TokenEmbedding, &[vocab, d])?,
        ))
    }

    fn shape(&self, w: Weight) -> Option<Vec<usize>> {
        Some(self.files.get(&Self::name(w)).ok()?.shape().to_vec())
    }

    fn tensor_name(&self, w: Weight) -> String {
        Self::name(w)
    }

    fn layers(&self) -> usize {
        let names = self.files.tensors().into_iter().map(|(name, _)| name);
        super::weights::layer_count(names, "model.layers.")
    }

    fn rope_layout(&self) -> RopeLayout {
        RopeLayout::Halves
    }

    fn output_may_be_tied(&self) -> bool {
        false
    }
}

fn folder_of(shards: &[PathBuf]) -> &Path {
    shards
        .first()
        .and_then(|p| p.parent())
        .unwrap_or(Path::new("."))
}
