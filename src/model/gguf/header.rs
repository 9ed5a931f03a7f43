//! The GGUF header, read from the file's bytes and checked whole before any
//! tensor is used: a model file is a stranger's upload, and a reader that
//! trusts it panics, allocates terabytes, or computes on the wrong bytes.
//!
//! Every length and count is checked against the bytes that remain before
//! anything is allocated, all arithmetic on file numbers is checked, and
//! the tensor data must tile the end of the file exactly as GGUF writers
//! lay it out: each tensor at an aligned offset, in bounds, not overlapping
//! another, with nothing but padding between them. A tensor whose type or
//! shape was edited without its data fails that tiling, so it is caught
//! here instead of being read as plausible garbage.

use std::collections::HashMap;
use std::ops::Range;

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::GgmlDType;

use crate::messages::short;

/// Tensors have at most this many dimensions (ggml's GGML_MAX_DIMS).
const MAX_DIMS: u32 = 4;
/// general.alignment beyond this is not a layout any writer uses.
const MAX_ALIGNMENT: u64 = 1 << 20;
/// Metadata values in all (array elements included). The largest real
/// vocabularies (Tekken: 131072 tokens, with scores, types and merges) hold
/// well under a million; the cap keeps a forged count from allocating
/// gigabytes of values from a file of the same size.
const MAX_VALUES: usize = 1 << 22;
/// candle reads tensor data as slices of f32, f16 or blocks holding them.
const DATA_ALIGNMENT: usize = 4;

pub struct Header {
    pub metadata: HashMap<String, Value>,
    pub tensors: HashMap<String, TensorInfo>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    /// Outermost first (rows, then columns), as candle and greve index them;
    /// the file stores them innermost first.
    pub dims: Vec<usize>,
    pub dtype: GgmlDType,
    /// Where the data lies in the file.
    pub bytes: Range<usize>,
}

/// Reads and checks the header of a whole GGUF file. The error says what is
/// wrong, without the file's name (the caller adds it).
pub fn parse(file: &[u8]) -> Result<Header, String> {
    let mut r = Reader {
        bytes: file,
        pos: 0,
        values: 0,
    };
    if r.take(4, || "the magic number".into())? != b"GGUF" {
        return Err("it does not start with \"GGUF\"".into());
    }
    let version = r.u32(|| "the version".into())?;
    if version != 2 && version != 3 {
        let hint = if (1..=3).contains(&version.swap_bytes()) {
            " (it looks big-endian; greve reads little-endian files)"
        } else {
            ""
        };
        return Err(format!(
            "GGUF version {version} is not supported{hint}; greve reads versions 2 and 3"
        ));
    }
    let n_tensors = r.u64(|| "the tensor count".into())?;
    let n_kv = r.u64(|| "the metadata count".into())?;
    // The least each entry can take: a key or name length, a type, and one
    // byte of value; a name length, one dimension, a type and an offset.
    let least = n_kv
        .checked_mul(8 + 4 + 1)
        .zip(n_tensors.checked_mul(8 + 4 + 8 + 4 + 8))
        .and_then(|(a, b)| a.checked_add(b));
    if least.is_none_or(|least| least > r.remaining() as u64) {
        return Err(format!(
            "the header announces {n_kv} metadata entries and {n_tensors} tensors, more than the file's {} bytes can hold",
            file.len()
        ));
    }

    let mut metadata = HashMap::new();
    for i in 0..n_kv {
        let key = r.string(|| format!("metadata key {i}"))?;
        let what = || format!("metadata {}", short(&key));
        let ty = r.u32(what)?;
        let value = r.value(ty, &what)?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(format!("metadata {} appears twice", short(&key)));
        }
    }

    let mut entries = Vec::new();
    for i in 0..n_tensors {
        let name = r.string(|| format!("the name of tensor {i}"))?;
        let what = || format!("tensor {}", short(&name));
        let n_dims = r.u32(what)?;
        if !(1..=MAX_DIMS).contains(&n_dims) {
            return Err(format!(
                "{} has {n_dims} dimensions (GGUF allows 1 to {MAX_DIMS})",
                what()
            ));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            let d = r.u64(what)?;
            match usize::try_from(d) {
                Ok(d) if d > 0 && d <= i64::MAX as usize => dims.push(d),
                _ => return Err(format!("{} has a dimension of {d}", what())),
            }
        }
        dims.reverse();
        let ty = r.u32(what)?;
        let dtype = dtype(ty).map_err(|e| format!("{}: {e}", what()))?;
        let offset = r.u64(what)?;
        entries.push((name, dims, dtype, offset));
    }

    let alignment = alignment(&metadata)?;
    // Where the data starts depends on the header's length, known only now.
    let data_start = (r.pos as u64).next_multiple_of(alignment);
    let mut tensors = HashMap::with_capacity(entries.len());
    for (name, dims, dtype, offset) in entries {
        let bytes = place(
            &name,
            &dims,
            dtype,
            offset,
            data_start,
            alignment,
            file.len(),
        )?;
        if tensors.contains_key(&name) {
            return Err(format!("tensor {} appears twice", short(&name)));
        }
        tensors.insert(name, TensorInfo { dims, dtype, bytes });
    }
    if !tensors.is_empty() {
        check_tiling(&tensors, data_start, alignment, file.len())?;
    }
    Ok(Header { metadata, tensors })
}

/// The bytes of one tensor in the file, in bounds and aligned.
fn place(
    name: &str,
    dims: &[usize],
    dtype: GgmlDType,
    offset: u64,
    data_start: u64,
    alignment: u64,
    file_len: usize,
) -> Result<Range<usize>, String> {
    let what = || format!("tensor {}", short(name));
    let (block, size) = (dtype.block_size(), dtype.type_size());
    let columns = *dims
        .last()
        .expect("the header's reader allows 1 to MAX_DIMS dimensions");
    if !columns.is_multiple_of(block) {
        return Err(format!(
            "{} has rows of {columns} values, not whole {:?} blocks of {block}",
            what(),
            dtype
        ));
    }
    let len = dims
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .and_then(|n| (n / block).checked_mul(size))
        .ok_or_else(|| format!("{} has dimensions {:?} too large to exist", what(), dims))?;
    if !offset.is_multiple_of(alignment) {
        return Err(format!(
            "{} starts at offset {offset}, not a multiple of the alignment {alignment}",
            what()
        ));
    }
    let range = data_start
        .checked_add(offset)
        .and_then(|start| Some(start..start.checked_add(len as u64)?))
        .filter(|r| r.end <= file_len as u64)
        .ok_or_else(|| {
            format!(
                "{} ({len} bytes at offset {offset}) lies past the end of the file ({file_len} bytes): the file is truncated or corrupt",
                what()
            )
        })?;
    let range = range.start as usize..range.end as usize;
    if !range.start.is_multiple_of(DATA_ALIGNMENT) {
        return Err(format!(
            "{} starts at byte {}, not a multiple of {DATA_ALIGNMENT}",
            what(),
            range.start
        ));
    }
    Ok(range)
}

/// The tensors, in file order, must follow each other with only padding
/// between them, from the first aligned byte after the header to the end:
/// first no two may share a byte, then no byte may go unaccounted for.
fn check_tiling(
    tensors: &HashMap<String, TensorInfo>,
    data_start: u64,
    alignment: u64,
    file_len: usize,
) -> Result<(), String> {
    let mut order: Vec<(&String, &Range<usize>)> =
        tensors.iter().map(|(n, t)| (n, &t.bytes)).collect();
    order.sort_by_key(|(n, r)| (r.start, r.end, n.as_str()));
    for pair in order.windows(2) {
        let ((a, ra), (b, rb)) = (pair[0], pair[1]);
        if rb.start < ra.end {
            return Err(format!(
                "tensor {} overlaps tensor {} (bytes {}..{} and {}..{})",
                short(b),
                short(a),
                rb.start,
                rb.end,
                ra.start,
                ra.end
            ));
        }
    }
    let mut expected = data_start as usize;
    let mut previous: Option<&str> = None;
    for (name, range) in order {
        if range.start != expected {
            let after =
                previous.map_or("the header".to_string(), |p| format!("tensor {}", short(p)));
            return Err(format!(
                "{} unused bytes lie between {after} and tensor {}: a tensor's type or shape does not match its data",
                range.start.abs_diff(expected),
                short(name)
            ));
        }
        expected = (range.end as u64).next_multiple_of(alignment) as usize;
        previous = Some(name);
    }
    // `expected` is now the last tensor's end, padded: the file may stop
    // at either.
    if file_len > expected {
        return Err(format!(
            "{} bytes follow the last tensor's data: a tensor's type or shape does not match its data",
            file_len - expected
        ));
    }
    Ok(())
}

fn alignment(metadata: &HashMap<String, Value>) -> Result<u64, String> {
    let value = match metadata.get("general.alignment") {
        None => return Ok(32),
        Some(Value::U8(v)) => u64::from(*v),
        Some(Value::U16(v)) => u64::from(*v),
        Some(Value::U32(v)) => u64::from(*v),
        Some(Value::U64(v)) => *v,
        Some(other) => {
            return Err(format!(
                "general.alignment is {:?}, not an unsigned integer",
                other.value_type()
            ))
        }
    };
    if !value.is_power_of_two() || value > MAX_ALIGNMENT {
        return Err(format!(
            "general.alignment is {value}; it must be a power of two up to {MAX_ALIGNMENT}"
        ));
    }
    Ok(value)
}

/// ggml's type numbers, for the types candle can hold.
fn dtype(ty: u32) -> Result<GgmlDType, String> {
    Ok(match ty {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        9 => GgmlDType::Q8_1,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        15 => GgmlDType::Q8K,
        30 => GgmlDType::BF16,
        _ => {
            return Err(format!(
                "ggml type {ty} is not one greve reads (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and the K-quants Q2_K to Q8_K; the IQ types are not supported)"
            ))
        }
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// Metadata values read so far.
    values: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: u64, what: impl Fn() -> String) -> Result<&'a [u8], String> {
        match usize::try_from(n) {
            Ok(n) if n <= self.remaining() => {
                let bytes = &self.bytes[self.pos..self.pos + n];
                self.pos += n;
                Ok(bytes)
            }
            _ => Err(format!(
                "{} ({n} bytes at byte {}) runs past the end of the file ({} bytes): the file is truncated or corrupt",
                what(),
                self.pos,
                self.bytes.len()
            )),
        }
    }

    fn array<const N: usize>(&mut self, what: impl Fn() -> String) -> Result<[u8; N], String> {
        Ok(self
            .take(N as u64, what)?
            .try_into()
            .expect("take returns N bytes"))
    }

    fn u32(&mut self, what: impl Fn() -> String) -> Result<u32, String> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: impl Fn() -> String) -> Result<u64, String> {
        self.array(what).map(u64::from_le_bytes)
    }

    fn string(&mut self, what: impl Fn() -> String) -> Result<String, String> {
        let len = self.u64(&what)?;
        let bytes = self.take(len, &what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| format!("{} is not valid UTF-8", what()))
    }

    /// One value of GGUF type `ty`; arrays hold scalars or strings, as
    /// llama.cpp's reader requires.
    fn value(&mut self, ty: u32, what: &dyn Fn() -> String) -> Result<Value, String> {
        self.values += 1;
        if self.values > MAX_VALUES {
            return Err(too_many_values());
        }
        Ok(match ty {
            0 => Value::U8(self.array::<1>(what)?[0]),
            1 => Value::I8(self.array::<1>(what)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(what)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(what)?)),
            4 => Value::U32(self.u32(what)?),
            5 => Value::I32(i32::from_le_bytes(self.array(what)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(what)?)),
            7 => match self.array::<1>(what)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(format!("{} is a boolean of value {b}", what())),
            },
            8 => Value::String(self.string(what)?),
            9 => {
                let item = self.u32(what)?;
                let len = self.u64(what)?;
                let least = match item {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    _ => return Err(format!("{} has an unknown element type {item}", what())),
                };
                if len
                    .checked_mul(least)
                    .is_none_or(|n| n > self.remaining() as u64)
                {
                    return Err(format!(
                        "{} announces {len} elements, more than the rest of the file can hold",
                        what()
                    ));
                }
                if self.values.saturating_add(len as usize) > MAX_VALUES {
                    return Err(too_many_values());
                }
                let mut items = Vec::with_capacity(len as usize);
                for i in 0..len {
                    items.push(self.value(item, &|| format!("{} element {i}", what()))?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(what)?),
            11 => Value::I64(i64::from_le_bytes(self.array(what)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(what)?)),
            _ => return Err(format!("{} has an unknown value type {ty}", what())),
        })
    }
}

fn too_many_values() -> String {
    format!("the metadata holds more than {MAX_VALUES} values; no model needs that many")
}
