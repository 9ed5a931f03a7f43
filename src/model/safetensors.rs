//! Weights from Hugging Face safetensors files (one file or sharded), named
//! as in `MistralForCausalLM` checkpoints, or under the language model's
//! prefix in `Mistral3ForConditionalGeneration` ones (whose vision tower is
//! left unread). The files are memory-mapped; each
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
    names: Names,
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
        let names = Names::of(|name| files.get(name).is_ok());
        Ok(SafetensorsSource {
            files,
            names,
            folder: folder_of(shards).to_path_buf(),
            dtype,
            device: device.clone(),
        })
    }

    fn name(&self, w: Weight) -> String {
        let Names { model, lm_head } = self.names;
        let layer = |l: usize, rest: &str| format!("{model}layers.{l}.{rest}.weight");
        match w {
            Weight::TokenEmbedding => format!("{model}embed_tokens.weight"),
            Weight::OutputNorm => format!("{model}norm.weight"),
            Weight::Output => lm_head.into(),
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
        let name = self.name(w);
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
        Some(self.files.get(&self.name(w)).ok()?.shape().to_vec())
    }

    fn tensor_name(&self, w: Weight) -> String {
        self.name(w)
    }

    fn layers(&self) -> usize {
        let names = self.files.tensors().into_iter().map(|(name, _)| name);
        super::weights::layer_count(names, &format!("{}layers.", self.names.model))
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

/// Where a checkpoint keeps the text model's tensors.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Names {
    /// Before `layers.N.`, `embed_tokens` and `norm`.
    model: &'static str,
    lm_head: &'static str,
}

impl Names {
    /// The layouts of the Hub's checkpoints: a causal LM's, and a
    /// `Mistral3ForConditionalGeneration`'s as transformers 4.x and 5.x save it.
    const LAYOUTS: [Names; 3] = [
        Names {
            model: "model.",
            lm_head: "lm_head.weight",
        },
        Names {
            model: "model.language_model.",
            lm_head: "lm_head.weight",
        },
        Names {
            model: "language_model.model.",
            lm_head: "language_model.lm_head.weight",
        },
    ];

    /// The layout whose embedding table the file holds; the first one when
    /// none does, so that the missing tensor is named as a causal LM names it.
    fn of(holds: impl Fn(&str) -> bool) -> Names {
        let mut layouts = Self::LAYOUTS.into_iter();
        let found = layouts.find(|l| holds(&format!("{}embed_tokens.weight", l.model)));
        found.unwrap_or(Self::LAYOUTS[0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_is_found_from_the_embedding_table() {
        let of = |names: &[&str]| Names::of(|name| names.contains(&name));
        let vision = [
            "vision_tower.patch_conv.weight",
            "multi_modal_projector.linear_1.weight",
        ];
        let mut old = vec!["language_model.model.embed_tokens.weight"];
        old.extend(vision);
        assert_eq!(of(&old), Names::LAYOUTS[2]);
        assert_eq!(
            of(&["model.language_model.embed_tokens.weight"]),
            Names::LAYOUTS[1]
        );
        assert_eq!(of(&["model.embed_tokens.weight"]), Names::LAYOUTS[0]);
        assert_eq!(of(&vision), Names::LAYOUTS[0]);
    }
}
