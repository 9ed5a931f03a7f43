//! Weights from a GGUF file as llama.cpp writes it for Mistral 7B: the
//! `llama` architecture, `blk.N.*` tensor names, Q and K rows permuted for
//! interleaved rotary pairs, any of the quantisations candle implements
//! (Q4_0 … Q8_0 and the k-quants).

use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Tensor};

use super::transformer::{Embedding, RopeLayout, Weight, WeightSource};
use crate::exit::{Classify, Failure};

pub struct GgufSource {
    file: File,
    path: PathBuf,
    content: gguf_file::Content,
    device: Device,
}

impl GgufSource {
    /// Reads the header and metadata, and checks that every tensor lies
    /// inside the file, so a truncated download is caught before any work.
    pub fn open(path: &Path, device: &Device) -> anyhow::Result<Self> {
        let mut file = File::open(path).classify(Failure::ModelNotFound, || {
            format!("cannot open {}", path.display())
        })?;
        let content = read_header(&mut file, path)?;
        let len = file.metadata()?.len();
        for (name, info) in &content.tensor_infos {
            let dtype = info.ggml_dtype;
            let bytes = (info.shape.elem_count() / dtype.block_size() * dtype.type_size()) as u64;
            let end = content.tensor_data_offset + info.offset + bytes;
            if end > len {
                return Err(Failure::ModelInvalid.err(format!(
                    "{} is truncated: tensor {name} ends at byte {end} but the file has {len}; download it again",
                    path.display()
                )));
            }
        }
        Ok(GgufSource {
            file,
            path: path.to_path_buf(),
            content,
            device: device.clone(),
        })
    }

    pub fn metadata(&self) -> &std::collections::HashMap<String, gguf_file::Value> {
        &self.content.metadata
    }

    /// How many tensors of each type the file holds, most common first.
    pub fn tensor_types(&self) -> Vec<(String, usize)> {
        let mut counts = std::collections::BTreeMap::new();
        for info in self.content.tensor_infos.values() {
            *counts.entry(format!("{:?}", info.ggml_dtype)).or_insert(0) += 1;
        }
        let mut counts: Vec<(String, usize)> = counts.into_iter().collect();
        counts.sort_by_key(|c| std::cmp::Reverse(c.1));
        counts
    }

    /// Rows of the embedding table: the vocabulary the weights were made for.
    pub fn vocab_size(&self) -> anyhow::Result<usize> {
        if self.content.tensor_infos.is_empty() {
            return Err(Failure::ModelInvalid.err(format!(
                "{} holds no weights (a vocabulary-only GGUF): `greve tokenize` can use it, answering needs a model file",
                self.path.display()
            )));
        }
        let name = Self::name(Weight::TokenEmbedding);
        match self.content.tensor_infos.get(&name).map(|i| i.shape.dims()) {
            Some(&[vocab, _]) => Ok(vocab),
            _ => Err(Failure::ModelInvalid.err(format!(
                "{} has no two-dimensional {name}; is it a Mistral 7B GGUF?",
                self.path.display()
            ))),
        }
    }

    fn name(w: Weight) -> String {
        let layer = |l: usize, rest: &str| format!("blk.{l}.{rest}.weight");
        match w {
            Weight::TokenEmbedding => "token_embd.weight".into(),
            Weight::OutputNorm => "output_norm.weight".into(),
            Weight::Output => "output.weight".into(),
            Weight::AttnNorm(l) => layer(l, "attn_norm"),
            Weight::Q(l) => layer(l, "attn_q"),
            Weight::K(l) => layer(l, "attn_k"),
            Weight::V(l) => layer(l, "attn_v"),
            Weight::O(l) => layer(l, "attn_output"),
            Weight::FfnNorm(l) => layer(l, "ffn_norm"),
            Weight::Gate(l) => layer(l, "ffn_gate"),
            Weight::Up(l) => layer(l, "ffn_up"),
            Weight::Down(l) => layer(l, "ffn_down"),
        }
    }

    fn load(&mut self, w: Weight, shape: &[usize]) -> anyhow::Result<QTensor> {
        let device = self.device.clone();
        self.load_on(w, shape, &device)
    }

    fn load_on(&mut self, w: Weight, shape: &[usize], device: &Device) -> anyhow::Result<QTensor> {
        let name = Self::name(w);
        let Some(info) = self.content.tensor_infos.get(&name) else {
            return Err(Failure::ModelInvalid.err(format!(
                "{} has no tensor {name}; is it a Mistral 7B GGUF?",
                self.path.display()
            )));
        };
        if info.shape.dims() != shape {
            return Err(Failure::ModelInvalid.err(format!(
                "tensor {name} in {} has shape {:?}, but the metadata implies {shape:?}",
                self.path.display(),
                info.shape.dims()
            )));
        }
        let path = &self.path;
        self.content
            .tensor(&mut self.file, &name, device)
            .classify(Failure::ModelInvalid, || {
                format!("cannot read tensor {name} from {}", path.display())
            })
    }
}

fn read_header(file: &mut File, path: &Path) -> anyhow::Result<gguf_file::Content> {
    gguf_file::Content::read(file).classify(Failure::ModelInvalid, || {
        format!(
            "{} is not a GGUF file greve can read (bad magic, truncated header or an unsupported tensor type)",
            path.display()
        )
    })
}

impl WeightSource for GgufSource {
    fn matrix(&mut self, w: Weight, (rows, cols): (usize, usize)) -> anyhow::Result<QMatMul> {
        Ok(QMatMul::from_qtensor(self.load(w, &[rows, cols])?)?)
    }

    fn dense(&mut self, w: Weight, shape: &[usize]) -> anyhow::Result<Tensor> {
        let device = self.device.clone();
        Ok(self
            .load(w, shape)?
            .dequantize(&device)?
            .to_dtype(DType::F32)?)
    }

    fn embedding(&mut self, (vocab, d): (usize, usize)) -> anyhow::Result<Embedding> {
        let table = self.load_on(Weight::TokenEmbedding, &[vocab, d], &Device::Cpu)?;
        Ok(match table.dtype() {
            GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => {
                let device = self.device.clone();
                Embedding::Dense(table.dequantize(&device)?)
            }
            _ => Embedding::Quantized(std::sync::Arc::new(table)),
        })
    }

    fn has(&self, w: Weight) -> bool {
        self.content.tensor_infos.contains_key(&Self::name(w))
    }

    fn rope_layout(&self) -> RopeLayout {
        RopeLayout::Interleaved
    }
}
