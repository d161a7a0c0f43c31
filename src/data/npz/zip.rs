//! Reading the zip archive of an NPZ file: the central directory (through
//! the zip64 records when the classic ones overflow, as NumPy writes for
//! large arrays) and a stream of one entry's uncompressed bytes, stored or
//! deflate-compressed. Sizes in the directory are checked against the length
//! of the file before anything is read or allocated.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use flate2::read::DeflateDecoder;
use flate2::CrcReader;

use crate::data::{read_up_to, DataError};

/// Deflate's largest expansion: a 258-byte match costs at least 2 bits, so one
/// compressed byte gives at most 1032 bytes.
const MAX_DEFLATE_RATIO: u64 = 1032;

/// Entries larger than this (uncompressed) must not compress better than
/// [`BOMB_RATIO`]: image data compresses a few times, a zip bomb a thousand.
const BOMB_SIZE: u64 = 256 << 20;
/// See [`BOMB_SIZE`].
const BOMB_RATIO: u64 = 100;

/// Largest zip central directory accepted; an NPZ has a handful of entries.
const MAX_DIRECTORY: u64 = 1 << 24;

pub(super) fn le16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

pub(super) fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn le64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// One member of the zip archive, from the central directory.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub(super) name: String,
    method: u16,
    flags: u16,
    pub(super) crc: u32,
    compressed: u64,
    pub(super) size: u64,
    offset: u64,
}

/// An open NPZ file and its directory.
pub(super) struct Archive {
    pub(super) path: PathBuf,
    file: File,
    len: u64,
    entries: Vec<Entry>,
}

impl Archive {
    fn bad(&self, msg: impl Into<String>) -> DataError {
        DataError::malformed(&self.path, msg)
    }

    fn read_at(&mut self, offset: u64, n: usize) -> Result<Vec<u8>, DataError> {
        let path = self.path.clone();
        let io = |e| DataError::io(&path, e);
        self.file.seek(SeekFrom::Start(offset)).map_err(io)?;
        read_up_to(&mut self.file, n).map_err(io)
    }

    pub(super) fn open(path: &Path) -> Result<Archive, DataError> {
        let io = |e| DataError::io(path, e);
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let mut a = Archive {
            path: path.to_path_buf(),
            file,
            len,
            entries: Vec::new(),
        };
        a.entries = a.directory()?;
        Ok(a)
    }

    /// Reads the central directory, through the zip64 records when the
    /// classic ones overflow (NumPy writes zip64 for large arrays).
    fn directory(&mut self) -> Result<Vec<Entry>, DataError> {
        let not_zip = "not an NPZ file: no zip end-of-central-directory record (truncated or not a zip)";
        // The end record is 22 bytes plus a comment of at most 65535.
        let tail_len = self.len.min(22 + 65535);
        let tail_start = self.len - tail_len;
        let tail = self.read_at(tail_start, tail_len as usize)?;
        let eocd = (0..tail.len().saturating_sub(21))
            .rev()
            .find(|&i| tail[i..].starts_with(b"PK\x05\x06"))
            .ok_or_else(|| self.bad(not_zip))?;
        let field16 = |at| le16(&tail, eocd + at).unwrap_or(0);
        let field32 = |at| le32(&tail, eocd + at).unwrap_or(0);
        let (mut count, mut dir_size, mut dir_offset) =
            (u64::from(field16(10)), u64::from(field32(12)), u64::from(field32(16)));
        if count == 0xffff || dir_size == 0xffff_ffff || dir_offset == 0xffff_ffff {
            let locator = (tail_start + eocd as u64)
                .checked_sub(20)
                .ok_or_else(|| self.bad("zip64 end record locator missing"))?;
            let loc = self.read_at(locator, 20)?;
            let z64 = match (loc.starts_with(b"PK\x06\x07"), le64(&loc, 8)) {
                (true, Some(off)) => off,
                _ => return Err(self.bad("zip64 end record locator missing")),
            };
            let rec = self.read_at(z64, 56)?;
            match (
                rec.starts_with(b"PK\x06\x06"),
                le64(&rec, 32),
                le64(&rec, 40),
                le64(&rec, 48),
            ) {
                (true, Some(c), Some(s), Some(o)) => (count, dir_size, dir_offset) = (c, s, o),
                _ => return Err(self.bad("zip64 end record is corrupt")),
            }
        }
        if dir_size > MAX_DIRECTORY || dir_offset.saturating_add(dir_size) > self.len {
            return Err(self.bad(format!(
                "zip central directory ({dir_size} bytes at {dir_offset}) does not fit in the {}-byte file",
                self.len
            )));
        }
        let dir = self.read_at(dir_offset, dir_size as usize)?;
        let mut entries = Vec::new();
        let mut at = 0usize;
        for i in 0..count {
            let corrupt = || self.bad(format!("zip central directory entry {i} is corrupt"));
            if !dir.get(at..).is_some_and(|d| d.starts_with(b"PK\x01\x02")) {
                return Err(corrupt());
            }
            let u16_at = |o| le16(&dir, at + o).ok_or_else(corrupt);
            let u32_at = |o| le32(&dir, at + o).ok_or_else(corrupt);
            let (flags, method) = (u16_at(8)?, u16_at(10)?);
            let crc = u32_at(16)?;
            let (mut compressed, mut size) = (u64::from(u32_at(20)?), u64::from(u32_at(24)?));
            let (name_len, extra_len, comment_len) = (
                usize::from(u16_at(28)?),
                usize::from(u16_at(30)?),
                usize::from(u16_at(32)?),
            );
            let mut offset = u64::from(u32_at(42)?);
            let name_at = at + 46;
            let name = dir.get(name_at..name_at + name_len).ok_or_else(corrupt)?;
            let extra = dir
                .get(name_at + name_len..name_at + name_len + extra_len)
                .ok_or_else(corrupt)?;
            // The zip64 extra field holds, in this order, those of the three
            // values whose classic field is saturated.
            let mut x = 0usize;
            while x + 4 <= extra.len() {
                let (id, len) = (
                    le16(extra, x).unwrap_or(0),
                    usize::from(le16(extra, x + 2).unwrap_or(0)),
                );
                if id == 1 {
                    let mut p = x + 4;
                    for v in [&mut size, &mut compressed, &mut offset] {
                        if *v == 0xffff_ffff {
                            *v = le64(extra, p).ok_or_else(corrupt)?;
                            p += 8;
                        }
                    }
                }
                x += 4 + len;
            }
            entries.push(Entry {
                name: String::from_utf8_lossy(name).into_owned(),
                method,
                flags,
                crc,
                compressed,
                size,
                offset,
            });
            at = name_at + name_len + extra_len + comment_len;
        }
        Ok(entries)
    }

    /// The entry NumPy would load as array `name` (`name.npy`, or `name`).
    /// Whether the archive holds the array `name` (as `name.npy` or `name`).
    pub(super) fn contains(&self, name: &str) -> bool {
        let with_ext = format!("{name}.npy");
        self.entries.iter().any(|e| e.name == with_ext || e.name == name)
    }

    pub(super) fn find(&self, name: &str) -> Result<Entry, DataError> {
        let with_ext = format!("{name}.npy");
        self.entries
            .iter()
            .find(|e| e.name == with_ext)
            .or_else(|| self.entries.iter().find(|e| e.name == name))
            .cloned()
            .ok_or_else(|| {
                // A handful of names is enough to show what the file is.
                let mut names: Vec<&str> = self.entries.iter().take(10).map(|e| e.name.as_str()).collect();
                if self.entries.len() > names.len() {
                    names.push("...");
                }
                self.bad(format!(
                    "no array named {name:?} (the archive holds: {})",
                    if names.is_empty() {
                        "nothing".to_string()
                    } else {
                        names.join(", ")
                    }
                ))
            })
    }

    /// A stream of the entry's uncompressed bytes.
    pub(super) fn stream(&mut self, entry: &Entry) -> Result<CrcReader<Box<dyn Read>>, DataError> {
        let path = self.path.clone();
        let what = |m: String| DataError::malformed(&path, format!("{}: {m}", entry.name));
        if entry.flags & 1 != 0 {
            return Err(what("encrypted zip entries are not supported".into()));
        }
        let local = self.read_at(entry.offset, 30)?;
        let data_at = match (local.starts_with(b"PK\x03\x04"), le16(&local, 26), le16(&local, 28)) {
            (true, Some(n), Some(e)) => entry.offset + 30 + u64::from(n) + u64::from(e),
            _ => return Err(what("zip local header is corrupt".into())),
        };
        if data_at.saturating_add(entry.compressed) > self.len {
            return Err(what(format!(
                "zip entry data ({} bytes at {data_at}) runs past the end of the {}-byte file",
                entry.compressed, self.len
            )));
        }
        // A declared size that its compressed bytes cannot produce is a zip bomb's
        // claim (or damage): refused before a byte is inflated.
        let most = match entry.method {
            0 => entry.compressed,
            _ => entry.compressed.saturating_mul(MAX_DEFLATE_RATIO).saturating_add(1024),
        };
        if entry.size > most {
            return Err(what(format!(
                "zip entry declares {} bytes uncompressed from {} compressed bytes, more than {} can give \
                 (deflate expands at most {MAX_DEFLATE_RATIO}:1): a zip bomb or a damaged file",
                entry.size,
                entry.compressed,
                if entry.method == 0 { "stored data" } else { "deflate" }
            )));
        }
        // Image data never compresses like this; a large entry that does is the other
        // kind of bomb (one that keeps to deflate's limit), and inflating it would cost
        // gigabytes of memory.
        if entry.size > BOMB_SIZE && entry.size / entry.compressed.max(1) > BOMB_RATIO {
            return Err(what(format!(
                "zip entry inflates {} compressed bytes to {} ({}:1); arrays over {} MiB compressing more \
                 than {BOMB_RATIO}:1 are refused as a likely zip bomb (real images do not compress so well)",
                entry.compressed,
                entry.size,
                entry.size / entry.compressed.max(1),
                BOMB_SIZE >> 20
            )));
        }
        let mut file = File::open(&path).map_err(|e| DataError::io(&path, e))?;
        file.seek(SeekFrom::Start(data_at))
            .map_err(|e| DataError::io(&path, e))?;
        let raw = BufReader::new(file).take(entry.compressed);
        let inner: Box<dyn Read> = match entry.method {
            0 => Box::new(raw),
            8 => Box::new(DeflateDecoder::new(raw)),
            m => {
                return Err(what(format!(
                    "zip compression method {m} is not supported (only stored and deflate, as NumPy writes)"
                )))
            }
        };
        Ok(CrcReader::new(inner))
    }
}
