//! Zeroed arrays straight from the OS (an anonymous mapping), for the KV
//! cache. Its room for growth must cost nothing until it is written: from
//! malloc, a big block is fresh zero pages only while glibc maps it on its
//! own; once a freed block has raised glibc's mapping threshold, `calloc`
//! recycles heap memory and zeroes it by writing, so the whole room becomes
//! resident (200 MB of an f16 cache at 8k positions), and freed blocks stay
//! with the process.

use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};

use half::f16;

/// Types without padding for which any bytes, all-zero ones among them,
/// are a valid value.
pub trait Plain: Copy {}
impl Plain for i8 {}
impl Plain for f16 {}
impl Plain for f32 {}

/// The bytes of `x`, as they lie in memory.
pub fn bytes<T: Plain>(x: &[T]) -> &[u8] {
    // SAFETY: `Plain` types have no padding, so every byte is initialised.
    unsafe { std::slice::from_raw_parts(x.as_ptr().cast(), size_of_val(x)) }
}

/// The bytes of `x`, to write any values into.
pub fn bytes_mut<T: Plain>(x: &mut [T]) -> &mut [u8] {
    // SAFETY: as for `bytes`, and any bytes are a `T` (`Plain`).
    unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr().cast(), size_of_val(x)) }
}

pub struct Zeroed<T: Plain> {
    map: Option<memmap2::MmapMut>,
    len: usize,
    _type: PhantomData<T>,
}

impl<T: Plain> Zeroed<T> {
    /// `len` zeroes; no memory is used until they are written. Fails when
    /// the OS grants no such mapping (an address-space limit, `ulimit -v`).
    pub fn new(len: usize) -> std::io::Result<Self> {
        let no_memory =
            |why: String| std::io::Error::other(format!("no memory for KV cache: {why}"));
        let bytes = len
            .checked_mul(size_of::<T>())
            .ok_or_else(|| no_memory(format!("{len} values do not fit in an address")))?;
        let map = match bytes {
            0 => None,
            _ => Some(
                memmap2::MmapOptions::new()
                    .len(bytes)
                    .map_anon()
                    .map_err(|e| no_memory(format!("{bytes} bytes: {e}")))?,
            ),
        };
        Ok(Zeroed {
            map,
            len,
            _type: PhantomData,
        })
    }
}

impl<T: Plain> Default for Zeroed<T> {
    fn default() -> Self {
        Zeroed {
            map: None,
            len: 0,
            _type: PhantomData,
        }
    }
}

impl<T: Plain> Deref for Zeroed<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match &self.map {
            // SAFETY: the mapping is page-aligned, `len · size_of::<T>()`
            // bytes long, and any bytes are a `T` (`Plain`).
            Some(map) => unsafe { std::slice::from_raw_parts(map.as_ptr().cast(), self.len) },
            None => &[],
        }
    }
}

impl<T: Plain> DerefMut for Zeroed<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        match &mut self.map {
            // SAFETY: as for `deref`, and the mapping is borrowed mutably.
            Some(map) => unsafe {
                std::slice::from_raw_parts_mut(map.as_mut_ptr().cast(), self.len)
            },
            None => &mut [],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_zeroed_and_keeps_what_is_written() {
        let mut a = Zeroed::<f32>::new(3000).unwrap();
        assert_eq!(a.len(), 3000);
        assert!(a.iter().all(|&x| x == 0.0));
        a[2999] = 1.5;
        assert_eq!(a[2999], 1.5);
        assert!(Zeroed::<i8>::new(0).unwrap().is_empty());
        // More than any address space: an error to report, not a panic.
        let err = Zeroed::<f32>::new(1 << 60).err().unwrap();
        assert!(
            err.to_string().starts_with("no memory for KV cache"),
            "{err}"
        );
        assert!(Zeroed::<f32>::new(usize::MAX).is_err());
    }
}
