//! A GGUF file taken apart and put back together, so that tests can forge
//! exactly the fault they pin (a field changed, a tensor moved) in a real
//! file. It trusts its input: it is only ever given the goldens.

pub const U32: u32 = 4;
pub const U64: u32 = 10;
pub const STRING: u32 = 8;
pub const ARRAY: u32 = 9;

#[derive(Clone)]
pub struct Gguf {
    pub version: u32,
    /// Key, value type, the value's bytes as stored.
    pub metadata: Vec<(String, u32, Vec<u8>)>,
    pub tensors: Vec<TensorEntry>,
    /// Everything after the header's padding.
    pub data: Vec<u8>,
}

#[derive(Clone)]
pub struct TensorEntry {
    pub name: String,
    /// Innermost first, as stored.
    pub dims: Vec<u64>,
    pub ty: u32,
    pub offset: u64,
}

struct Cursor<'a>(&'a [u8], usize);

impl Cursor<'_> {
    fn bytes(&mut self, n: usize) -> &[u8] {
        self.1 += n;
        &self.0[self.1 - n..self.1]
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.bytes(4).try_into().unwrap())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.bytes(8).try_into().unwrap())
    }
    fn string(&mut self) -> String {
        let n = self.u64() as usize;
        String::from_utf8(self.bytes(n).to_vec()).unwrap()
    }
    /// Skips one value of type `ty`.
    fn skip(&mut self, ty: u32) {
        match ty {
            0 | 1 | 7 => self.1 += 1,
            2 | 3 => self.1 += 2,
            4..=6 => self.1 += 4,
            10..=12 => self.1 += 8,
            STRING => {
                let n = self.u64() as usize;
                self.1 += n;
            }
            ARRAY => {
                let (item, n) = (self.u32(), self.u64());
                for _ in 0..n {
                    self.skip(item);
                }
            }
            _ => panic!("unknown type {ty}"),
        }
    }
}

impl Gguf {
    pub fn read(file: &[u8]) -> Gguf {
        let mut c = Cursor(file, 4);
        let version = c.u32();
        let (n_tensors, n_kv) = (c.u64(), c.u64());
        let metadata = (0..n_kv)
            .map(|_| {
                let key = c.string();
                let ty = c.u32();
                let start = c.1;
                c.skip(ty);
                (key, ty, file[start..c.1].to_vec())
            })
            .collect();
        let tensors = (0..n_tensors)
            .map(|_| {
                let name = c.string();
                let n = c.u32();
                let dims = (0..n).map(|_| c.u64()).collect();
                let (ty, offset) = (c.u32(), c.u64());
                TensorEntry {
                    name,
                    dims,
                    ty,
                    offset,
                }
            })
            .collect();
        let mut g = Gguf {
            version,
            metadata,
            tensors,
            data: vec![],
        };
        let start = c.1.next_multiple_of(g.alignment());
        g.data = file[start..].to_vec();
        g
    }

    pub fn alignment(&self) -> usize {
        self.get("general.alignment").map_or(32, |v| {
            u32::from_le_bytes(v[..4].try_into().unwrap()) as usize
        })
    }

    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.metadata
            .iter()
            .find(|(k, _, _)| k == key)
            .map(|(_, _, v)| v.as_slice())
    }

    /// Sets `key` to a value of type `ty`, adding it when absent.
    pub fn set(&mut self, key: &str, ty: u32, value: Vec<u8>) {
        match self.metadata.iter_mut().find(|(k, _, _)| k == key) {
            Some(entry) => *entry = (key.into(), ty, value),
            None => self.metadata.push((key.into(), ty, value)),
        }
    }

    pub fn set_u32(&mut self, key: &str, value: u32) {
        self.set(key, U32, value.to_le_bytes().to_vec());
    }

    pub fn tensor(&mut self, name: &str) -> &mut TensorEntry {
        self.tensors.iter_mut().find(|t| t.name == name).unwrap()
    }

    /// The header, padded with `padding` (the alignment the data was laid
    /// out for, whatever the metadata now says), then the data.
    pub fn write_padded(&self, padding: usize) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(self.version.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.metadata.len() as u64).to_le_bytes());
        let string = |out: &mut Vec<u8>, s: &str| {
            out.extend((s.len() as u64).to_le_bytes());
            out.extend(s.as_bytes());
        };
        for (key, ty, value) in &self.metadata {
            string(&mut out, key);
            out.extend(ty.to_le_bytes());
            out.extend(value);
        }
        for t in &self.tensors {
            string(&mut out, &t.name);
            out.extend((t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(t.ty.to_le_bytes());
            out.extend(t.offset.to_le_bytes());
        }
        out.resize(out.len().next_multiple_of(padding.max(1)), 0);
        out.extend(&self.data);
        out
    }

    pub fn write(&self) -> Vec<u8> {
        self.write_padded(self.alignment())
    }
}

/// A string value as GGUF stores it.
pub fn string_value(s: &[u8]) -> Vec<u8> {
    let mut v = (s.len() as u64).to_le_bytes().to_vec();
    v.extend(s);
    v
}

impl Gguf {
    /// Renames tokens of the vocabulary (`tokenizer.ggml.tokens`).
    pub fn rename_tokens(&mut self, names: &[(usize, &str)]) {
        let key = "tokenizer.ggml.tokens";
        let mut c = Cursor(self.get(key).unwrap(), 0);
        let (item, n) = (c.u32(), c.u64());
        assert_eq!(item, STRING);
        let mut tokens: Vec<String> = (0..n).map(|_| c.string()).collect();
        for &(id, name) in names {
            tokens[id] = name.into();
        }
        let mut value = STRING.to_le_bytes().to_vec();
        value.extend(n.to_le_bytes());
        for token in &tokens {
            value.extend(string_value(token.as_bytes()));
        }
        self.set(key, ARRAY, value);
    }
}
