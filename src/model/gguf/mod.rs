//! Weights from a GGUF file as llama.cpp writes it for Mistral 7B: the
//! `llama` architecture, `blk.N.*` tensor names, Q and K rows permuted for
//! interleaved rotary pairs, any of the quantisations candle implements
//! (Q4_0 … Q8_0 and the k-quants).
//!
//! The file is memory-mapped: on a CPU the quantised matrices are used where
//! they lie (see [`crate::model::linear`]), so loading costs page cache, not a copy.

use std::borrow::Cow;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod header;

use header::Header;

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{DType, Device, Tensor};
use memmap2::{Mmap, MmapOptions};

use crate::exit::{Classify, Failure};
use crate::model::linear::{Linear, MappedMatrix};
use crate::model::weights::{Embedding, RopeLayout, Weight, WeightSource};

pub struct GgufSource {
    map: Arc<Mmap>,
    path: PathBuf,
    header: Header,
    device: Device,
}

impl GgufSource {
    /// Maps the file and checks its header whole (see [`header`]), so that
    /// a truncated download or a corrupt file is refused before any work.
    pub fn open(path: &Path, device: &Device) -> anyhow::Result<Self> {
        let file = File::open(path).classify(Failure::ModelNotFound, || {
            format!("cannot open {}", path.display())
        })?;
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len == 0 {
            return Err(Failure::ModelInvalid
                .err(format!("{} is empty; download it again", path.display())));
        }
        // SAFETY: the map is read-only; like llama.cpp, greve assumes nobody
        // rewrites a model file while it runs.
        let map = unsafe { MmapOptions::new().map(&file) }
            .classify(Failure::ModelInvalid, || {
                format!("cannot map {} into memory", path.display())
            })?;
        let header = header::parse(&map).map_err(|reason| {
            Failure::ModelInvalid.err(format!(
                "{} is not a GGUF file greve can use: {reason}; download or convert it again",
                path.display()
            ))
        })?;
        Ok(GgufSource {
            map: Arc::new(map),
            path: path.to_path_buf(),
            header,
            device: device.clone(),
        })
    }

    /// Reads the whole file into the map now, at load, rather than page
    /// fault by page fault during the first prompt. Best effort: an older
    /// kernel without MADV_POPULATE_READ faults lazily instead.
    pub fn prefault(&self) {
        #[cfg(target_os = "linux")]
        if let Err(e) = self.map.advise(memmap2::Advice::PopulateRead) {
            log::debug!("cannot prefault {}: {e}", self.path.display());
        }
    }

    pub fn metadata(&self) -> &std::collections::HashMap<String, Value> {
        &self.header.metadata
    }

    /// How many tensors of each type the file holds, most common first.
    pub fn tensor_types(&self) -> Vec<(String, usize)> {
        let mut counts = std::collections::BTreeMap::new();
        for info in self.header.tensors.values() {
            *counts.entry(format!("{:?}", info.dtype)).or_insert(0) += 1;
        }
        let mut counts: Vec<(String, usize)> = counts.into_iter().collect();
        counts.sort_by_key(|c| std::cmp::Reverse(c.1));
        counts
    }

    /// Rows of the embedding table: the vocabulary the weights were made for.
    pub fn vocab_size(&self) -> anyhow::Result<usize> {
        if self.header.tensors.is_empty() {
            return Err(Failure::ModelInvalid.err(format!(
                "{} holds no weights (a vocabulary-only GGUF): `greve tokenize` can use it, answering needs a model file",
                self.path.display()
            )));
        }
        let name = Self::name(Weight::TokenEmbedding);
        match self.header.tensors.get(&name).map(|i| i.dims.as_slice()) {
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

    fn load(&self, w: Weight, shape: &[usize]) -> anyhow::Result<QTensor> {
        self.load_on(w, shape, &self.device)
    }

    /// The bytes of tensor `w` in the file and its type, once its shape is checked.
    fn locate(&self, w: Weight, shape: &[usize]) -> anyhow::Result<(Range<usize>, GgmlDType)> {
        let name = Self::name(w);
        let Some(info) = self.header.tensors.get(&name) else {
            return Err(Failure::ModelInvalid.err(format!(
                "{} has no tensor {name}; is it a Mistral 7B GGUF?",
                self.path.display()
            )));
        };
        if info.dims != shape {
            return Err(Failure::ModelInvalid.err(format!(
                "tensor {name} in {} has shape {:?}, but the metadata implies {shape:?}",
                self.path.display(),
                info.dims
            )));
        }
        Ok((info.bytes.clone(), info.dtype))
    }

    fn load_on(&self, w: Weight, shape: &[usize], device: &Device) -> anyhow::Result<QTensor> {
        let (range, dtype) = self.locate(w, shape)?;
        let storage = QStorage::from_data(Cow::Borrowed(&self.map[range]), device, dtype)?;
        Ok(QTensor::new(storage, shape)?)
    }

    /// Matrix `w` in place in the map, when the kernels take its format.
    fn mapped(&self, w: Weight, shape: (usize, usize)) -> anyhow::Result<Option<MappedMatrix>> {
        let (range, dtype) = self.locate(w, &[shape.0, shape.1])?;
        Ok(MappedMatrix::new(self.map.clone(), range, dtype, shape))
    }
}

impl WeightSource for GgufSource {
    fn matrix(&mut self, w: Weight, (rows, cols): (usize, usize)) -> anyhow::Result<Linear> {
        if self.device.is_cpu() {
            if let Some(m) = self.mapped(w, (rows, cols))? {
                return Ok(Linear::Mapped(m));
            }
        }
        Ok(Linear::Candle(QMatMul::from_qtensor(
            self.load(w, &[rows, cols])?,
        )?))
    }

    fn dense(&mut self, w: Weight, shape: &[usize]) -> anyhow::Result<Tensor> {
        let device = self.device.clone();
        Ok(self
            .load(w, shape)?
            .dequantize(&device)?
            .to_dtype(DType::F32)?)
    }

    fn embedding(&mut self, (vocab, d): (usize, usize)) -> anyhow::Result<Embedding> {
        if let Some(table) = self.mapped(Weight::TokenEmbedding, (vocab, d))? {
            return Ok(Embedding::Quantized(table));
        }
        let table = self.load_on(Weight::TokenEmbedding, &[vocab, d], &Device::Cpu)?;
        Ok(Embedding::Dense(table.dequantize(&self.device)?))
    }

    fn shape(&self, w: Weight) -> Option<Vec<usize>> {
        Some(self.header.tensors.get(&Self::name(w))?.dims.clone())
    }

    fn tensor_name(&self, w: Weight) -> String {
        Self::name(w)
    }

    fn layers(&self) -> usize {
        crate::model::weights::layer_count(self.header.tensors.keys(), "blk.")
    }

    fn rope_layout(&self) -> RopeLayout {
        RopeLayout::Interleaved
    }

    fn output_may_be_tied(&self) -> bool {
        true
    }
}
