//! Where the transformer's weights come from: each weight by role, the one
//! small interface every file format implements, the check of a file
//! against its config before anything is loaded, and the embedding table.

use std::borrow::Cow;

use candle_core::quantized::{QMatMul, QStorage, QTensor};
use candle_core::{DType, Device, Result, Tensor};

use super::config::Config;
use super::linear::{Linear, MappedMatrix};

/// A weight by role; each backend maps it to its file's tensor name.
#[derive(Clone, Copy, Debug)]
pub enum Weight {
    TokenEmbedding,
    OutputNorm,
    Output,
    AttnNorm(usize),
    Q(usize),
    K(usize),
    V(usize),
    O(usize),
    FfnNorm(usize),
    Gate(usize),
    Up(usize),
    Down(usize),
}

/// How a checkpoint lays out the two halves of each rotary pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeLayout {
    /// Hugging Face: dimension i pairs with i + hd/2 (`rotate_half`).
    Halves,
    /// llama.cpp's converter permutes the rows of Q and K so that dimension
    /// 2i pairs with 2i + 1.
    Interleaved,
}

/// Where the weights come from: one small interface for every file format.
pub trait WeightSource {
    /// A projection matrix, (out, in) as stored in the checkpoints.
    fn matrix(&mut self, w: Weight, shape: (usize, usize)) -> anyhow::Result<Linear>;
    /// A tensor used whole, in the compute dtype: the norms.
    fn dense(&mut self, w: Weight, shape: &[usize]) -> anyhow::Result<Tensor>;
    /// The token embedding table, (vocab, d).
    fn embedding(&mut self, shape: (usize, usize)) -> anyhow::Result<Embedding>;
    /// The shape of `w` in the file, outermost first, or None when the
    /// file lacks it (a missing output matrix is tied to the embedding).
    fn shape(&self, w: Weight) -> Option<Vec<usize>>;
    /// The tensor's name in the file, for messages.
    fn tensor_name(&self, w: Weight) -> String;
    /// How many layers the file holds tensors for: one past the highest
    /// layer number in its tensor names.
    fn layers(&self) -> usize;
    fn rope_layout(&self) -> RopeLayout;
    /// Whether a missing output matrix means the embedding's (llama.cpp
    /// drops a tied one from GGUF files), or a damaged file (a safetensors
    /// checkpoint, whose config.json greve holds to untied weights).
    fn output_may_be_tied(&self) -> bool;
}

impl Weight {
    /// The nine weights of layer `l`.
    fn of_layer(l: usize) -> [Weight; 9] {
        use Weight::*;
        [
            AttnNorm(l),
            Q(l),
            K(l),
            V(l),
            O(l),
            FfnNorm(l),
            Gate(l),
            Up(l),
            Down(l),
        ]
    }

    /// The shape the config gives this weight: (out, in) for matrices.
    fn shape(self, c: &Config) -> Vec<usize> {
        use Weight::*;
        let (d, f) = (c.hidden_size, c.intermediate_size);
        let (q, kv) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
        match self {
            TokenEmbedding | Output => vec![c.vocab_size, d],
            OutputNorm | AttnNorm(_) | FfnNorm(_) => vec![d],
            Q(_) => vec![q, d],
            K(_) | V(_) => vec![kv, d],
            O(_) => vec![d, q],
            Gate(_) | Up(_) => vec![f, d],
            Down(_) => vec![d, f],
        }
    }

    pub(super) fn matrix_shape(self, c: &Config) -> (usize, usize) {
        match self.shape(c)[..] {
            [rows, cols] => (rows, cols),
            _ => unreachable!("{self:?} is not a matrix"),
        }
    }
}

/// One past the highest layer number in tensor names `{prefix}N.…`.
pub(crate) fn layer_count<S: AsRef<str>>(
    names: impl IntoIterator<Item = S>,
    prefix: &str,
) -> usize {
    names
        .into_iter()
        .filter_map(|n| {
            n.as_ref()
                .strip_prefix(prefix)?
                .split('.')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .map(|l| l.saturating_add(1))
        .max()
        .unwrap_or(0)
}

/// Checks every weight the config implies against the file before any is
/// loaded: the layer count, each tensor's presence and shape. A file that
/// disagrees with its own metadata (or config.json with its weights) is
/// refused here, naming the tensor, instead of running on part of it.
pub(super) fn check_weights(c: &Config, src: &dyn WeightSource) -> anyhow::Result<()> {
    let present = src.layers();
    if present != c.num_layers {
        anyhow::bail!(
            "the config declares {} layers but the weights hold {present}",
            c.num_layers
        );
    }
    let may_tie = c.tie_word_embeddings || src.output_may_be_tied();
    let tied = src.shape(Weight::Output).is_none() && may_tie;
    let output = (!tied).then_some(Weight::Output);
    let globals = [Weight::TokenEmbedding, Weight::OutputNorm]
        .into_iter()
        .chain(output);
    for w in globals.chain((0..c.num_layers).flat_map(Weight::of_layer)) {
        let want = w.shape(c);
        match src.shape(w) {
            None => anyhow::bail!("tensor {} is missing", src.tensor_name(w)),
            Some(got) if got != want => anyhow::bail!(
                "tensor {} has shape {got:?}, but the config implies {want:?}",
                src.tensor_name(w)
            ),
            Some(_) => {}
        }
    }
    Ok(())
}

/// The token embedding table. GGUF files quantise it like the other
/// matrices; dequantising it whole would cost vocab × d × 4 bytes (500 MB
/// for Mistral 7B) for a table of which a prompt reads a few rows, so only
/// the rows of the tokens at hand are dequantised, from the mapped file.
pub enum Embedding {
    Dense(Tensor),
    Quantized(MappedMatrix),
}

impl Embedding {
    /// The rows of `ids`, (n, d), in `dtype` on `device`.
    pub(super) fn rows(&self, ids: &[u32], dtype: DType, device: &Device) -> Result<Tensor> {
        match self {
            Embedding::Dense(table) => table.index_select(&Tensor::new(ids, device)?, 0),
            Embedding::Quantized(table) => {
                let (vocab, d) = table.shape;
                let data = table.bytes();
                let row_bytes = data.len() / vocab;
                let rows = ids
                    .iter()
                    .map(|&id| {
                        let id = id as usize;
                        if id >= vocab {
                            candle_core::bail!("token id {id} is past the vocabulary of {vocab}");
                        }
                        let bytes = &data[id * row_bytes..(id + 1) * row_bytes];
                        let storage =
                            QStorage::from_data(Cow::Borrowed(bytes), &Device::Cpu, table.dtype)?;
                        QTensor::new(storage, (1, d))?.dequantize(&Device::Cpu)
                    })
                    .collect::<Result<Vec<_>>>()?;
                Tensor::cat(&rows, 0)?.to_dtype(dtype)?.to_device(device)
            }
        }
    }

    /// The same table as a matmul, for models whose output projection is tied to it.
    pub(super) fn as_matmul(&self) -> Linear {
        match self {
            Embedding::Dense(table) => Linear::Candle(QMatMul::Tensor(table.clone())),
            Embedding::Quantized(table) => Linear::Mapped(table.clone()),
        }
    }
}
