//! The prompt cache: the keys and values of prompts greve has computed,
//! kept on disk so that a fixed prefix (the persona's or a user's system
//! prompt) and a saved conversation are prefilled once, not on every run.
//!
//! An entry is one file, named by hashes of what it depends on (the
//! [`identity`]: the model's files, compute dtype, device, KV type, kernels,
//! threads and greve build) and of its tokens; it holds both in full, and is
//! used only where they match exactly and its checksum holds. An entry is a
//! fixed prefix, used whole by the prompts it begins, or a saved
//! conversation, used by a run that goes on from it ([`Kind`]); the prompt
//! takes the one that gives it most and prefills the rest. Anything wrong
//! with a file (cut, flipped, foreign, not a file) makes
//! it a miss, with a line under `-v`, and the file is replaced; a cache that
//! cannot be written costs one warning, never an answer.
//!
//! Replies do not depend on the cache: an entry holds the exact bits the
//! KV cache had, and a prefix that is saved is prefilled on its own (see
//! `generate::Prompt::checkpoint`), as a run that finds it must.
//!
//! A file: `GREVEKV1`, the header's length (u32), the header (JSON:
//! identity, kind, tokens, payload bytes), the payload
//! ([`Transformer::save_context`]), a CRC-32 of all of it before (u32).
//! Numbers are little-endian; the payload is in the machine's order, which
//! the identity names.

use std::fs::{self, File};
use std::hash::{Hash, Hasher};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::model::transformer::Transformer;

const MAGIC: &[u8; 8] = b"GREVEKV1";
/// Far above any real header (a token takes at most 11 bytes of JSON, and
/// contexts are 128k at most): a longer one is damage, not a prompt.
const MAX_HEADER: u64 = 16 << 20;
/// Shorter prefixes are quicker to prefill than to look up and read.
pub const MIN_TOKENS: usize = 32;
/// The size greve keeps the cache under unless the config file says
/// otherwise: four 4,000-token conversations of Mistral 7B in f16.
pub const DEFAULT_LIMIT: u64 = 2 << 30;
/// A temporary file this old was left by a process that died writing it.
const STALE: Duration = Duration::from_secs(3600);

/// The cache's folder: `prompt-cache` in the platform's cache folder
/// (`$XDG_CACHE_HOME/greve` on Linux).
pub fn default_dir() -> Option<PathBuf> {
    directories::ProjectDirs::from("", "", "greve").map(|d| d.cache_dir().join("prompt-cache"))
}

/// What a model's keys and values depend on, besides the tokens: `model`
/// (its files' identity, dtype and device: `Model::fingerprint`), the KV
/// type, the kernels and thread count (they set the order of the sums) and
/// this build of greve.
pub fn identity(model: &str, kv: &str, threads: usize) -> String {
    format!(
        "{model}; kv {kv}; kernels {:?} {}; threads {threads}; {} {}; greve {}",
        crate::model::isa::best(),
        std::env::var("GREVE_KERNELS").unwrap_or_default(),
        std::env::consts::ARCH,
        if cfg!(target_endian = "little") {
            "le"
        } else {
            "be"
        },
        build_id()
    )
}

/// This greve: its version and its executable's size and time, so that a
/// rebuild is another greve.
fn build_id() -> String {
    let exe = std::env::current_exe().and_then(fs::metadata);
    let stamp = exe.map_or_else(
        |_| "unknown".into(),
        |m| format!("{} {:?}", m.len(), m.modified().ok()),
    );
    format!("{} {stamp}", env!("CARGO_PKG_VERSION"))
}

fn hash(x: impl Hash) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    x.hash(&mut h);
    h.finish()
}

fn entry_name(identity: &str, kind: Kind, tokens: &[u32]) -> String {
    format!("{:016x}-{:016x}.kv", hash(identity), hash((kind, tokens)))
}

/// What an entry holds, which says what it may be used for.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A fixed prefix computed alone from nothing: used whole, by a prompt
    /// whose fixed prefix it is, it holds exactly what that prompt's own
    /// run computes.
    Prefix,
    /// A saved conversation: used by a run that goes on from it (`--load`),
    /// as far as the prompt follows it, as the same chat would have gone on.
    Conversation,
}

/// What a prompt may take from the cache.
pub struct Lookup<'a> {
    pub prompt: &'a [u32],
    /// The length of its fixed prefix (see [`Kind::Prefix`]); 0 for none.
    pub fixed: usize,
    /// Whether it goes on from a saved conversation.
    pub resumed: bool,
}

impl Lookup<'_> {
    /// How many of the prompt's positions an entry of `kind` holding
    /// `tokens` may give; 0 when it may not be used. Never the last
    /// position: its logits pick the reply's first token.
    fn usable(&self, kind: Kind, tokens: &[u32]) -> usize {
        let most = self.prompt.len().saturating_sub(1);
        let shared = common_prefix(tokens, self.prompt).min(most);
        match kind {
            // Whole, or not at all.
            Kind::Prefix
                if self.fixed >= MIN_TOKENS
                    && tokens.len() == self.fixed
                    && shared == self.fixed =>
            {
                shared
            }
            Kind::Conversation if self.resumed && shared >= self.fixed.max(MIN_TOKENS) => shared,
            _ => 0,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Header {
    identity: String,
    kind: Kind,
    tokens: Vec<u32>,
    payload: u64,
}

/// The prompt cache of one model, as the settings ask for it.
pub struct PromptCache {
    dir: PathBuf,
    limit: u64,
    identity: String,
}

/// Said once a process: the cache cannot be written.
static WARNED: AtomicBool = AtomicBool::new(false);

impl PromptCache {
    pub fn new(dir: PathBuf, limit: u64, identity: String) -> Self {
        PromptCache {
            dir,
            limit,
            identity,
        }
    }

    /// Puts in `model`'s KV cache the entry that gives the most positions of
    /// the prompt, when that is more than the `have` it holds; returns the
    /// positions of the prompt it now holds: `have` when no entry was
    /// loaded, 0 when a damaged one was (it is removed).
    pub fn restore(&self, lookup: &Lookup, have: usize, model: &mut Transformer) -> usize {
        let prefix = format!("{:016x}-", hash(&self.identity));
        let mut best: Option<(PathBuf, usize)> = None;
        for path in self.entries().filter(|p| name_of(p).starts_with(&prefix)) {
            match read_header(&path) {
                Ok(entry) if entry.header.identity == self.identity => {
                    let usable = lookup.usable(entry.header.kind, &entry.header.tokens);
                    if usable > best.as_ref().map_or(have, |b| b.1) {
                        best = Some((path, usable));
                    }
                }
                Ok(_) => self.discard(&path, "written for another model or greve"),
                Err(why) => self.discard(&path, &why),
            }
        }
        let Some((path, used)) = best else {
            return have;
        };
        let start = std::time::Instant::now();
        match self.load(&path, model) {
            Ok(bytes) => {
                model.truncate(used);
                let time = start.elapsed().as_secs_f64();
                log::info!(
                    "prompt cache: {used} tokens from {} ({:.1} MB in {:.0} ms, {:.2} GB/s)",
                    path.display(),
                    bytes as f64 / 1e6,
                    time * 1e3,
                    bytes as f64 / 1e9 / time
                );
                // Recently used, for eviction.
                let _ = File::options()
                    .append(true)
                    .open(&path)
                    .and_then(|f| f.set_modified(SystemTime::now()));
                used
            }
            Err(why) => {
                model.truncate(0);
                self.discard(&path, &why);
                0
            }
        }
    }

    /// Reads the entry at `path` into `model`; returns its size.
    fn load(&self, path: &Path, model: &mut Transformer) -> Result<u64, String> {
        let entry = read_header(path)?;
        let header = &entry.header;
        if header.identity != self.identity {
            return Err("written for another model or greve".into());
        }
        let len = header.tokens.len();
        let context = model.config.context_length;
        if len == 0 || len > context {
            return Err(format!("{len} positions, for a context of {context}"));
        }
        let expected = model
            .saved_context_bytes(len)
            .ok_or("this device's KV cache cannot be restored")?;
        if header.payload != expected {
            return Err(format!(
                "a payload of {} bytes where {len} positions take {expected}",
                header.payload
            ));
        }
        if entry.len != whole_size(entry.header_bytes, expected) {
            return Err(format!("{} bytes: cut short or padded", entry.len));
        }
        let mut input = Crc {
            inner: BufReader::with_capacity(1 << 20, entry.file),
            crc: entry.crc,
        };
        model
            .restore_context(len, &mut input)
            .map_err(|e| format!("reading its keys and values: {e}"))?;
        let computed = input.crc.finalize();
        let mut stored = [0u8; 4];
        input
            .inner
            .read_exact(&mut stored)
            .map_err(|e| e.to_string())?;
        if u32::from_le_bytes(stored) != computed {
            model.truncate(0);
            return Err("its checksum does not match: the file is damaged".into());
        }
        Ok(entry.len)
    }

    /// Saves the keys and values of `tokens`, the first positions of
    /// `model`'s KV cache, as an entry of `kind`, unless the cache has it.
    pub fn save(&self, tokens: &[u32], kind: Kind, model: &Transformer) {
        if tokens.len() < MIN_TOKENS || tokens.len() > model.cached() {
            return;
        }
        let Some(payload) = model.saved_context_bytes(tokens.len()) else {
            return;
        };
        let path = self.dir.join(entry_name(&self.identity, kind, tokens));
        if let Ok(entry) = read_header(&path) {
            let h = &entry.header;
            if h.identity == self.identity && h.kind == kind && h.tokens == tokens {
                return;
            }
        }
        let header = Header {
            identity: self.identity.clone(),
            kind,
            tokens: tokens.to_vec(),
            payload,
        };
        let written = self.write(&path, &header, model);
        match written {
            Ok(false) => log::info!(
                "prompt cache: {} tokens would take more than its limit of {} bytes",
                tokens.len(),
                self.limit
            ),
            Ok(true) => {
                log::info!("prompt cache: saved {} tokens to {}", tokens.len(), path.display());
                self.evict(&path);
            }
            Err(e) if !WARNED.swap(true, Ordering::Relaxed) => crate::messages::warn(format!(
                "cannot write the prompt cache in {} ({e}); answers go on without it (--no-prompt-cache silences this)",
                self.dir.display()
            )),
            Err(_) => {}
        }
    }

    /// Writes the entry at `path` through a temporary file, so that readers
    /// see all of it or nothing; false when it would not fit in the limit.
    fn write(&self, path: &Path, header: &Header, model: &Transformer) -> std::io::Result<bool> {
        let header_bytes = serde_json::to_vec(header)?;
        if whole_size(header_bytes.len() as u64, header.payload) > self.limit {
            return Ok(false);
        }
        fs::create_dir_all(&self.dir)?;
        let temp = tempfile::Builder::new()
            .prefix(".tmp")
            .tempfile_in(&self.dir)?;
        let mut out = Crc::new(BufWriter::with_capacity(1 << 20, temp));
        out.write_all(MAGIC)?;
        out.write_all(&(header_bytes.len() as u32).to_le_bytes())?;
        out.write_all(&header_bytes)?;
        model.save_context(header.tokens.len(), &mut out)?;
        let crc = out.crc.clone().finalize();
        out.write_all(&crc.to_le_bytes())?;
        let temp = out.inner.into_inner().map_err(|e| e.into_error())?;
        // Something else in the entry's place (a folder, a FIFO) goes.
        if fs::symlink_metadata(path).is_ok_and(|m| !m.is_file()) {
            remove(path);
        }
        temp.persist(path).map_err(|e| e.error)?;
        Ok(true)
    }

    /// Removes the least recently used entries, `keep` last, until the
    /// cache is within its limit; and what dead writers left.
    fn evict(&self, keep: &Path) {
        let now = SystemTime::now();
        let mut entries = Vec::new();
        for (path, meta) in listing(&self.dir) {
            let age = meta
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok());
            if name_of(&path).starts_with(".tmp") {
                if age.is_some_and(|a| a > STALE) {
                    let _ = fs::remove_file(&path);
                }
                continue;
            }
            let used = match path == keep {
                true => now,
                false => meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            };
            entries.push((path, meta.len(), used));
        }
        for path in to_evict(entries, self.limit) {
            log::info!("prompt cache: evicting {}", path.display());
            let _ = fs::remove_file(path);
        }
    }

    /// Every name an entry could have, whatever is there (a folder, a
    /// FIFO: damage to be seen and replaced).
    fn entries(&self) -> impl Iterator<Item = PathBuf> {
        let names = fs::read_dir(&self.dir).into_iter().flatten().flatten();
        names
            .map(|e| e.path())
            .filter(|p| name_of(p).ends_with(".kv"))
    }

    fn discard(&self, path: &Path, why: &str) {
        log::info!(
            "prompt cache: ignoring {}: {why}; it will be replaced",
            path.display()
        );
        remove(path);
    }
}

/// Whatever is at `path` in the cache's folder, a folder too; gone already is fine.
fn remove(path: &Path) {
    let _ = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        _ => fs::remove_file(path),
    };
}

/// The regular files in `dir`, with their metadata; none if it is missing.
fn listing(dir: &Path) -> Vec<(PathBuf, fs::Metadata)> {
    let Ok(read) = fs::read_dir(dir) else {
        return Vec::new();
    };
    read.flatten()
        .filter_map(|e| Some((e.path(), e.metadata().ok()?)))
        .filter(|(_, m)| m.is_file())
        .collect()
}

fn name_of(path: &Path) -> &str {
    path.file_name().and_then(|n| n.to_str()).unwrap_or("")
}

/// The bytes of an entry whose header and payload take these.
fn whole_size(header: u64, payload: u64) -> u64 {
    MAGIC.len() as u64 + 4 + header + payload + 4
}

/// An entry's file, read up to the end of its header.
struct Entry {
    file: File,
    header: Header,
    header_bytes: u64,
    /// The file's length.
    len: u64,
    /// The checksum of what was read.
    crc: crc32fast::Hasher,
}

/// The entry at `path`, read up to its payload; an error says what is
/// wrong with it.
fn read_header(path: &Path) -> Result<Entry, String> {
    let mut options = File::options();
    options.read(true);
    #[cfg(unix)]
    {
        // A FIFO in the entry's place would block the open.
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let mut file = options.open(path).map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    let mut start = [0u8; 12];
    file.read_exact(&mut start)
        .map_err(|_| "shorter than a header".to_string())?;
    if &start[..8] != MAGIC {
        return Err("not a greve prompt cache file of this version".into());
    }
    let header_bytes = u32::from_le_bytes(start[8..].try_into().expect("4 bytes")) as u64;
    if header_bytes > MAX_HEADER || header_bytes + 12 > meta.len() {
        return Err(format!(
            "a header of {header_bytes} bytes in {} bytes",
            meta.len()
        ));
    }
    let mut bytes = vec![0u8; header_bytes as usize];
    file.read_exact(&mut bytes).map_err(|e| e.to_string())?;
    let header = serde_json::from_slice(&bytes).map_err(|e| format!("its header: {e}"))?;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&start);
    crc.update(&bytes);
    Ok(Entry {
        file,
        header,
        header_bytes,
        len: meta.len(),
        crc,
    })
}

/// Which of `entries` (path, bytes, last used) to remove, least recently
/// used first, so that the rest take at most `limit` bytes.
fn to_evict(mut entries: Vec<(PathBuf, u64, SystemTime)>, limit: u64) -> Vec<PathBuf> {
    let mut total: u64 = entries.iter().map(|e| e.1).sum();
    entries.sort_by_key(|e| e.2);
    let mut gone = Vec::new();
    for (path, size, _) in entries {
        if total <= limit {
            break;
        }
        total -= size;
        gone.push(path);
    }
    gone
}

/// How many tokens `a` and `b` share from their start.
pub fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// What the cache holds: its entries and their bytes.
pub fn usage(dir: &Path) -> (usize, u64) {
    listing(dir)
        .iter()
        .filter(|(p, _)| name_of(p).ends_with(".kv"))
        .fold((0, 0), |(n, bytes), (_, m)| (n + 1, bytes + m.len()))
}

/// Empties the cache; returns what it held.
pub fn clear(dir: &Path) -> std::io::Result<(usize, u64)> {
    let held = usage(dir);
    for (path, _) in listing(dir) {
        let name = name_of(&path);
        if name.ends_with(".kv") || name.starts_with(".tmp") {
            match fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
    }
    Ok(held)
}

/// A reader or writer that keeps the CRC-32 of the bytes through it.
struct Crc<T> {
    inner: T,
    crc: crc32fast::Hasher,
}

impl<T> Crc<T> {
    fn new(inner: T) -> Self {
        let crc = crc32fast::Hasher::new();
        Crc { inner, crc }
    }
}

impl<T: Read> Read for Crc<T> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
}

impl<T: Write> Write for Crc<T> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eviction_drops_the_least_recently_used_until_within_the_limit() {
        let t = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        let entries = vec![
            (PathBuf::from("new"), 40, t(30)),
            (PathBuf::from("old"), 40, t(10)),
            (PathBuf::from("mid"), 40, t(20)),
        ];
        assert!(to_evict(entries.clone(), 120).is_empty());
        assert_eq!(to_evict(entries.clone(), 119), [PathBuf::from("old")]);
        assert_eq!(
            to_evict(entries.clone(), 40),
            [PathBuf::from("old"), PathBuf::from("mid")]
        );
        assert_eq!(to_evict(entries, 0).len(), 3);
    }

    #[test]
    fn common_prefix_counts_shared_leading_tokens() {
        assert_eq!(common_prefix(&[1, 2, 3], &[1, 2, 4, 5]), 2);
        assert_eq!(common_prefix(&[], &[1]), 0);
        assert_eq!(common_prefix(&[1, 2], &[1, 2, 3]), 2);
    }

    #[test]
    fn entries_are_named_by_identity_kind_and_tokens() {
        let name = |model, kind, tokens: &[u32]| entry_name(model, kind, tokens);
        let a = name("model a", Kind::Prefix, &[1, 2, 3]);
        assert_eq!(a, name("model a", Kind::Prefix, &[1, 2, 3]));
        assert_ne!(a, name("model b", Kind::Prefix, &[1, 2, 3]));
        assert_ne!(a, name("model a", Kind::Prefix, &[1, 2, 4]));
        assert_ne!(a, name("model a", Kind::Conversation, &[1, 2, 3]));
        // Entries of one model share the first half of their names.
        assert_eq!(a[..17], name("model a", Kind::Conversation, &[9])[..17]);
    }

    /// A prefix is used whole, by the prompt whose fixed prefix it is; a
    /// conversation as far as a resumed prompt follows it, past its fixed
    /// prefix; neither for a few tokens a prompt shares by chance.
    #[test]
    fn entries_are_used_only_where_a_miss_computes_the_same() {
        let prompt: Vec<u32> = (0..100).collect();
        let lookup = |fixed, resumed| Lookup {
            prompt: &prompt,
            fixed,
            resumed,
        };
        let prefix = &prompt[..40];
        assert_eq!(lookup(40, false).usable(Kind::Prefix, prefix), 40);
        assert_eq!(lookup(40, true).usable(Kind::Prefix, prefix), 40);
        // Another fixed prefix, even one that this one starts.
        assert_eq!(lookup(50, false).usable(Kind::Prefix, prefix), 0);
        assert_eq!(lookup(30, false).usable(Kind::Prefix, prefix), 0);
        assert_eq!(lookup(0, false).usable(Kind::Prefix, prefix), 0);
        let mut edited = prefix.to_vec();
        edited[39] += 1000;
        assert_eq!(lookup(40, false).usable(Kind::Prefix, &edited), 0);

        let mut saved: Vec<u32> = prompt[..70].to_vec();
        saved.push(7777);
        assert_eq!(lookup(40, true).usable(Kind::Conversation, &saved), 70);
        assert_eq!(lookup(0, true).usable(Kind::Conversation, &saved), 70);
        assert_eq!(lookup(40, false).usable(Kind::Conversation, &saved), 0);
        assert_eq!(lookup(80, true).usable(Kind::Conversation, &saved), 0);
        // Short shares are chance, not a conversation going on.
        assert_eq!(lookup(0, true).usable(Kind::Conversation, &prompt[..20]), 0);
        // Never the prompt's last position.
        assert_eq!(lookup(0, true).usable(Kind::Conversation, &prompt), 99);
    }
}
