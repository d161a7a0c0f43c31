//! Reader and writer for NPZ datasets: a zip archive of `.npy` arrays with
//! images `x` and labels `y` (other arrays, such as the ones attack results
//! add, are ignored). The reader parses the zip directory and the `.npy`
//! headers itself instead of using `ndarray_npy::NpzReader`, because that
//! allocates whatever a header claims before reading, and cannot stop after
//! the first `limit` samples; here sizes are checked against the archive
//! directory first and buffers grow only with data actually decompressed.
//! Writing uses `ndarray_npy`, through a temporary file renamed into place.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use flate2::read::DeflateDecoder;
use flate2::CrcReader;
use ndarray::{Array4, ArrayD, ArrayView1, ArrayViewD, Axis, IxDyn};
use ndarray_npy::NpzWriter;

use super::{has_more, read_up_to, DataError, Dataset, LoadOptions, Pixels};

/// Largest `.npy` header accepted; real ones are a few hundred bytes.
const MAX_HEADER: usize = 1 << 20;
/// Largest zip central directory accepted; an NPZ has a handful of entries.
const MAX_DIRECTORY: u64 = 1 << 24;

fn le16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn le64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// One member of the zip archive, from the central directory.
#[derive(Debug, Clone)]
struct Entry {
    name: String,
    method: u16,
    flags: u16,
    crc: u32,
    compressed: u64,
    size: u64,
    offset: u64,
}

/// An open NPZ file and its directory.
struct Archive {
    path: PathBuf,
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

    fn open(path: &Path) -> Result<Archive, DataError> {
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
    fn find(&self, name: &str) -> Result<Entry, DataError> {
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
    fn stream(&mut self, entry: &Entry) -> Result<CrcReader<Box<dyn Read>>, DataError> {
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

/// Element type of an array, from a NumPy `descr` such as `<f4`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Dtype {
    kind: u8,
    size: usize,
    big_endian: bool,
}

impl Dtype {
    fn parse(descr: &str) -> Option<Dtype> {
        let b = descr.as_bytes();
        let (big_endian, rest) = match b.first()? {
            b'>' => (true, &b[1..]),
            b'<' | b'|' => (false, &b[1..]),
            b'=' => (cfg!(target_endian = "big"), &b[1..]),
            _ => (false, b),
        };
        let (&kind, digits) = rest.split_first()?;
        let size = std::str::from_utf8(digits).ok()?.parse().ok()?;
        Some(Dtype { kind, size, big_endian })
    }
}

/// The parts of a `.npy` header that matter here.
#[derive(Debug, Clone, PartialEq)]
struct NpyHeader {
    descr: String,
    fortran: bool,
    shape: Vec<usize>,
}

/// A Python literal, as far as `.npy` headers use them.
#[derive(Debug, Clone, PartialEq)]
enum Lit {
    Str(String),
    Bool(bool),
    Int(u64),
    Seq(Vec<Lit>),
    Dict(Vec<(Lit, Lit)>),
    None,
}

/// A recursive-descent parser for the dict literal of a `.npy` header.
struct LitParser<'a> {
    s: &'a [u8],
    i: usize,
}

impl LitParser<'_> {
    fn ws(&mut self) {
        while self.s.get(self.i).is_some_and(u8::is_ascii_whitespace) {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.s.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        let hit = self.peek() == Some(c);
        if hit {
            self.i += 1;
        }
        hit
    }

    /// Items up to `close`, each parsed by `item`, commas between and
    /// optionally after the last.
    fn items<T>(&mut self, close: u8, mut item: impl FnMut(&mut Self) -> Result<T, String>) -> Result<Vec<T>, String> {
        let mut out = Vec::new();
        loop {
            if self.eat(close) {
                return Ok(out);
            }
            out.push(item(self)?);
            if !self.eat(b',') {
                return if self.eat(close) {
                    Ok(out)
                } else {
                    Err(format!("expected ',' or '{}' at byte {}", close as char, self.i))
                };
            }
        }
    }

    fn value(&mut self) -> Result<Lit, String> {
        match self.peek() {
            Some(q @ (b'\'' | b'"')) => {
                let start = self.i + 1;
                let len = self.s[start..]
                    .iter()
                    .position(|&c| c == q)
                    .ok_or("unterminated string")?;
                self.i = start + len + 1;
                Ok(Lit::Str(
                    String::from_utf8_lossy(&self.s[start..start + len]).into_owned(),
                ))
            }
            Some(b'(') => {
                self.i += 1;
                Ok(Lit::Seq(self.items(b')', Self::value)?))
            }
            Some(b'[') => {
                self.i += 1;
                Ok(Lit::Seq(self.items(b']', Self::value)?))
            }
            Some(b'{') => {
                self.i += 1;
                Ok(Lit::Dict(self.items(b'}', |p| {
                    let k = p.value()?;
                    if !p.eat(b':') {
                        return Err(format!("expected ':' at byte {}", p.i));
                    }
                    Ok((k, p.value()?))
                })?))
            }
            Some(c) if c.is_ascii_alphanumeric() => {
                let start = self.i;
                while self
                    .s
                    .get(self.i)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
                {
                    self.i += 1;
                }
                let word = std::str::from_utf8(&self.s[start..self.i]).unwrap_or("");
                match word {
                    "True" => Ok(Lit::Bool(true)),
                    "False" => Ok(Lit::Bool(false)),
                    "None" => Ok(Lit::None),
                    // Python 2 wrote longs as `3L`.
                    w => w
                        .trim_end_matches('L')
                        .parse()
                        .map(Lit::Int)
                        .map_err(|_| format!("unexpected {w:?}")),
                }
            }
            Some(c) => Err(format!("unexpected {:?} at byte {}", c as char, self.i)),
            None => Err("header ends early".into()),
        }
    }
}

impl NpyHeader {
    fn parse(text: &[u8]) -> Result<NpyHeader, String> {
        let mut p = LitParser { s: text, i: 0 };
        let Lit::Dict(items) = p.value()? else {
            return Err("header is not a dict".into());
        };
        let get = |key: &str| {
            items
                .iter()
                .find(|(k, _)| *k == Lit::Str(key.into()))
                .map(|(_, v)| v)
                .ok_or_else(|| format!("header has no {key:?}"))
        };
        let descr = match get("descr")? {
            Lit::Str(s) => s.clone(),
            other => return Err(format!("structured dtype {other:?} is not supported")),
        };
        let fortran = match get("fortran_order")? {
            Lit::Bool(b) => *b,
            other => return Err(format!("fortran_order is {other:?}, not a bool")),
        };
        let shape = match get("shape")? {
            Lit::Seq(dims) => dims
                .iter()
                .map(|d| match d {
                    Lit::Int(v) => usize::try_from(*v).map_err(|_| format!("dimension {v} too large")),
                    other => Err(format!("shape holds {other:?}, not an integer")),
                })
                .collect::<Result<_, _>>()?,
            other => return Err(format!("shape is {other:?}, not a tuple")),
        };
        Ok(NpyHeader { descr, fortran, shape })
    }
}

/// One array of the archive, opened past its `.npy` header.
struct NpyStream {
    path: PathBuf,
    entry: Entry,
    reader: CrcReader<Box<dyn Read>>,
    header: NpyHeader,
    dtype: Dtype,
    /// Number of elements.
    count: usize,
}

impl NpyStream {
    fn bad(&self, msg: impl std::fmt::Display) -> DataError {
        DataError::malformed(&self.path, format!("{}: {msg}", self.entry.name))
    }

    fn open(archive: &mut Archive, name: &str) -> Result<NpyStream, DataError> {
        let entry = archive.find(name)?;
        let mut reader = archive.stream(&entry)?;
        let bad = |m: String| DataError::malformed(&archive.path, format!("{}: {m}", entry.name));
        let io = |e: std::io::Error| bad(format!("cannot decompress: {e}"));
        let pre = read_up_to(&mut reader, 12).map_err(io)?;
        if pre.len() < 10 || !pre.starts_with(b"\x93NUMPY") {
            return Err(bad("not an .npy array (bad magic)".into()));
        }
        let (header_len, pre_len) = match pre[6] {
            1 => (usize::from(le16(&pre, 8).unwrap_or(0)), 10),
            2 | 3 => (le32(&pre, 8).unwrap_or(0) as usize, 12),
            v => return Err(bad(format!(".npy format version {v} is not supported"))),
        };
        if header_len > MAX_HEADER {
            return Err(bad(format!(".npy header of {header_len} bytes is implausibly large")));
        }
        // Part of the header may already be in `pre`.
        let mut text = pre[pre_len.min(pre.len())..].to_vec();
        let rest = read_up_to(&mut reader, header_len.saturating_sub(text.len())).map_err(io)?;
        text.extend_from_slice(&rest);
        if text.len() < header_len {
            return Err(bad("entry ends inside the .npy header".into()));
        }
        let header = NpyHeader::parse(&text).map_err(|m| bad(format!("cannot parse .npy header: {m}")))?;
        let dtype = Dtype::parse(&header.descr)
            .filter(|d| d.size > 0)
            .ok_or_else(|| bad(format!("unknown dtype {:?}", header.descr)))?;
        let count = header
            .shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| bad(format!("shape {:?} is too large", header.shape)))?;
        let claimed = (count as u64).checked_mul(dtype.size as u64);
        let data = entry.size.checked_sub((pre_len + header_len) as u64);
        if claimed.is_none() || claimed != data {
            return Err(bad(format!(
                ".npy header says shape {:?} of {} ({} bytes) but the entry holds {} bytes of data",
                header.shape,
                header.descr,
                claimed.map_or("too many".into(), |c| c.to_string()),
                data.unwrap_or(0)
            )));
        }
        Ok(NpyStream {
            path: archive.path.clone(),
            entry,
            reader,
            header,
            dtype,
            count,
        })
    }

    /// Reads the first `n` elements, converting each with `conv`; when that
    /// is all of them, also checks the length and CRC of the entry.
    fn read<T>(&mut self, n: usize, conv: impl Fn(&[u8]) -> T) -> Result<Vec<T>, DataError> {
        let size = self.dtype.size;
        let chunk_elems = (1 << 16) / size.max(1);
        let mut out: Vec<T> = Vec::new();
        while out.len() < n {
            let k = chunk_elems.min(n - out.len());
            let bytes =
                read_up_to(&mut self.reader, k * size).map_err(|e| self.bad(format!("cannot decompress: {e}")))?;
            if bytes.len() < k * size {
                let got = out.len() * size + bytes.len();
                return Err(self.bad(format!(
                    "array data ends after {got} of {} bytes (truncated or corrupt)",
                    self.count * size
                )));
            }
            // Grow by at most doubling, so memory follows the data read.
            if out.capacity() - out.len() < k {
                let grow = (n - out.len()).min(out.len().max(1 << 16));
                out.reserve_exact(grow.max(k));
            }
            out.extend(bytes.chunks_exact(size).map(&conv));
        }
        if n == self.count {
            let extra = has_more(&mut self.reader).map_err(|e| self.bad(format!("cannot decompress: {e}")))?;
            if extra {
                return Err(self.bad("more data than the .npy header says"));
            }
            if self.reader.crc().sum() != self.entry.crc {
                return Err(self.bad("CRC mismatch: the archive is corrupt"));
            }
        }
        Ok(out)
    }

    /// The first `n` elements as `i64` labels (any integer dtype).
    fn read_labels(&mut self, n: usize) -> Result<Vec<i64>, DataError> {
        let Dtype { kind, size, big_endian } = self.dtype;
        if !matches!(kind, b'i' | b'u') || !matches!(size, 1 | 2 | 4 | 8) {
            return Err(self.bad(format!(
                "labels have dtype {}; expected an integer type (int64, int32, uint8, ...)",
                self.header.descr
            )));
        }
        // Values are widened to 128 bits so that every integer type, signed
        // or not, converts without overflow; range is checked after.
        let raw = self.read(n, |b| {
            let mut buf = [0u8; 16];
            if big_endian {
                buf[16 - size..].copy_from_slice(b);
                buf.reverse();
            } else {
                buf[..size].copy_from_slice(b);
            }
            let negative = kind == b'i' && buf[size - 1] & 0x80 != 0;
            if negative {
                buf[size..].fill(0xff);
            }
            i128::from_le_bytes(buf)
        })?;
        raw.into_iter()
            .enumerate()
            .map(|(i, v)| {
                i64::try_from(v)
                    .ok()
                    .filter(|&v| v >= 0)
                    .ok_or_else(|| self.bad(format!("label of sample {i} is {v}; labels must be >= 0")))
            })
            .collect()
    }
}

/// How an `x` shape maps to images: `(N, [C, H, W], channels_last)`.
fn image_layout(shape: &[usize]) -> Result<(usize, [usize; 3], bool), String> {
    let (n, chw, last) = layout_of(shape)?;
    if chw.contains(&0) {
        return Err(format!("x has shape {shape:?}: images cannot be empty"));
    }
    Ok((n, chw, last))
}

fn layout_of(shape: &[usize]) -> Result<(usize, [usize; 3], bool), String> {
    let is_c = |d: usize| d == 1 || d == 3;
    match *shape {
        [n, h, w, c] if is_c(c) => Ok((n, [c, h, w], true)),
        [n, c, h, w] if is_c(c) => Ok((n, [c, h, w], false)),
        [n, h, w] => Ok((n, [1, h, w], false)),
        [n, d] => {
            let side = |d: usize| {
                let s = (d as f64).sqrt().round() as usize;
                (s.checked_mul(s) == Some(d)).then_some(s)
            };
            if let Some(s) = side(d) {
                Ok((n, [1, s, s], false))
            } else if let Some(s) = (d % 3 == 0).then(|| side(d / 3)).flatten() {
                Ok((n, [3, s, s], false))
            } else {
                Ok((n, [1, 1, d], false))
            }
        }
        [_, _, _, _] => Err(format!(
            "x has shape {shape:?}: neither axis 1 nor axis 3 has 1 or 3 channels"
        )),
        _ => Err(format!(
            "x has shape {shape:?}; expected [N,C,H,W], [N,H,W,C], [N,H,W] or [N,D]"
        )),
    }
}

/// Arranges `data` (the first `take` samples of an array of `shape`, or
/// all of it when `fortran`) into `[take, C, H, W]`.
fn to_images<T: Clone>(
    data: Vec<T>,
    shape: &[usize],
    fortran: bool,
    take: usize,
    chw: [usize; 3],
    channels_last: bool,
) -> Result<Array4<T>, String> {
    let a = if fortran {
        // Fortran order is C order of the reversed shape.
        let rev: Vec<usize> = shape.iter().rev().copied().collect();
        let mut a = ArrayD::from_shape_vec(IxDyn(&rev), data)
            .map_err(|e| e.to_string())?
            .reversed_axes();
        a.slice_axis_inplace(Axis(0), (..take).into());
        a.as_standard_layout().into_owned()
    } else {
        let mut stored = shape.to_vec();
        stored[0] = take;
        ArrayD::from_shape_vec(IxDyn(&stored), data).map_err(|e| e.to_string())?
    };
    let [c, h, w] = chw;
    if channels_last {
        Ok(a.into_shape_with_order((take, h, w, c))
            .map_err(|e| e.to_string())?
            .permuted_axes([0, 3, 1, 2])
            .as_standard_layout()
            .into_owned())
    } else {
        // Standard layout, so this reshapes without copying.
        a.into_shape_with_order((take, c, h, w)).map_err(|e| e.to_string())
    }
}

/// Where the samples read from `x` go: see [`to_images`].
struct Arrange {
    take: usize,
    chw: [usize; 3],
    channels_last: bool,
}

impl Arrange {
    fn apply<T: Clone>(&self, data: Vec<T>, x: &NpyStream) -> Result<Array4<T>, DataError> {
        let h = &x.header;
        to_images(data, &h.shape, h.fortran, self.take, self.chw, self.channels_last).map_err(|m| x.bad(m))
    }
}

/// Reads the dataset in the NPZ file at `path` (arrays `x` and `y`).
pub(crate) fn load(path: &Path, opts: &LoadOptions) -> Result<Dataset, DataError> {
    let mut archive = Archive::open(path)?;
    let mut x = NpyStream::open(&mut archive, "x")?;
    let mut y = NpyStream::open(&mut archive, "y")?;
    let (n, chw, channels_last) = image_layout(&x.header.shape).map_err(|m| x.bad(m))?;
    let n_labels = match y.header.shape[..] {
        [m] | [m, 1] => m,
        _ => {
            return Err(y.bad(format!(
                "labels have shape {:?}; expected [N] or [N, 1]",
                y.header.shape
            )))
        }
    };
    if n_labels != n {
        return Err(DataError::malformed(
            path,
            format!("x holds {n} samples but y holds {n_labels} labels"),
        ));
    }
    let take = opts.limit.map_or(n, |l| l.min(n));
    let per_sample = chw.iter().product::<usize>();
    // Fortran-ordered samples are not contiguous, so all is read then.
    let want = if x.header.fortran { x.count } else { take * per_sample };
    let Dtype { kind, size, big_endian } = x.dtype;
    let arrange = Arrange {
        take,
        chw,
        channels_last,
    };
    let pixels = match (kind, size) {
        (b'u', 1) => {
            let data = x.read(want, |b| b[0])?;
            Pixels::U8(arrange.apply(data, &x)?)
        }
        (b'f', 4) => {
            let data = x.read(want, |b| {
                let b = [b[0], b[1], b[2], b[3]];
                if big_endian {
                    f32::from_be_bytes(b)
                } else {
                    f32::from_le_bytes(b)
                }
            })?;
            Pixels::F32(check_unit(arrange.apply(data, &x)?, &x)?)
        }
        (b'f', 8) => {
            let data = x.read(want, |b| {
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                let v = if big_endian {
                    f64::from_be_bytes(a)
                } else {
                    f64::from_le_bytes(a)
                };
                v as f32
            })?;
            Pixels::F32(check_unit(arrange.apply(data, &x)?, &x)?)
        }
        _ => {
            return Err(x.bad(format!(
                "images have dtype {}; expected uint8, float32 or float64",
                x.header.descr
            )))
        }
    };
    // y is [N] or [N, 1], the same bytes in either order.
    let labels = y.read_labels(take)?;
    Ok(Dataset {
        pixels,
        labels,
        classes: None,
        source: path.to_path_buf(),
    })
}

/// Checks that float pixels lie in `[0, 1]` (NaN does not), naming the
/// first offending sample.
fn check_unit(a: Array4<f32>, x: &NpyStream) -> Result<Array4<f32>, DataError> {
    for (i, sample) in a.axis_iter(Axis(0)).enumerate() {
        if let Some(v) = sample.iter().find(|v| !(0.0..=1.0).contains(*v)) {
            return Err(DataError::malformed(
                &x.path,
                format!(
                    "{}: sample {i} has pixel value {v}; float images must lie in [0, 1]",
                    x.entry.name
                ),
            ));
        }
    }
    Ok(a)
}

/// The arrays [`write_npz`] stores. `x` and `y` make a dataset [`load`]
/// reads back; the optional per-sample arrays record attack results and
/// are ignored by the reader.
///
/// [`load`]: super::load
#[derive(Debug, Clone)]
pub struct NpzArrays<'a> {
    /// Images in `[0, 1]`, `N` first, in any shape the reader accepts
    /// (`[N,C,H,W]`, `[N,H,W,C]`, `[N,H,W]`, `[N,D]`).
    pub x: ArrayViewD<'a, f32>,
    /// One label (`>= 0`) per image.
    pub y: &'a [i64],
    /// Per image, its index in the dataset it came from.
    pub index: Option<&'a [i64]>,
    /// Per image, the perturbation size used.
    pub eps: Option<&'a [f32]>,
    /// Per image, whether the attack changed the prediction.
    pub success: Option<&'a [bool]>,
}

impl<'a> NpzArrays<'a> {
    /// Just a dataset, without attack arrays.
    pub fn new(x: ArrayViewD<'a, f32>, y: &'a [i64]) -> Self {
        NpzArrays {
            x,
            y,
            index: None,
            eps: None,
            success: None,
        }
    }

    fn validate(&self) -> Result<(), DataError> {
        let shape = self.x.shape();
        let (n, _, _) = image_layout(shape).map_err(DataError::Shape)?;
        let lens = [
            ("y", Some(self.y.len())),
            ("index", self.index.map(<[i64]>::len)),
            ("eps", self.eps.map(<[f32]>::len)),
            ("success", self.success.map(<[bool]>::len)),
        ];
        for (name, len) in lens {
            if let Some(len) = len.filter(|&l| l != n) {
                return Err(DataError::Shape(format!(
                    "x holds {n} samples but {name} has {len} entries"
                )));
            }
        }
        if let Some(i) = self.y.iter().position(|&l| l < 0) {
            return Err(DataError::Shape(format!(
                "label of sample {i} is {}; labels must be >= 0",
                self.y[i]
            )));
        }
        for (i, sample) in self.x.axis_iter(Axis(0)).enumerate() {
            if let Some(v) = sample.iter().find(|v| !(0.0..=1.0).contains(*v)) {
                return Err(DataError::Shape(format!(
                    "sample {i} has pixel value {v}; x must lie in [0, 1]"
                )));
            }
        }
        Ok(())
    }
}

/// Writes `arrays` to the NPZ file `path` (deflate-compressed, as
/// `numpy.savez_compressed`; arrays `x` as float32, `y` and `index` as int64,
/// `eps` as float32, `success` as bool).
///
/// The arrays are checked first (lengths agree, `x` in `[0, 1]` and of a
/// shape [`load`](super::load) accepts, labels `>= 0`). The file is written
/// to a temporary name in the same directory and renamed over `path`, so a
/// reader never sees a half-written file and a failure leaves any old file
/// in place.
pub fn write_npz(path: &Path, arrays: &NpzArrays<'_>) -> Result<(), DataError> {
    arrays.validate()?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| DataError::Shape(format!("{}: not a file path", path.display())))?
        .to_string_lossy();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = dir.join(format!(".{file_name}.{}.{nanos}.tmp", std::process::id()));
    let result = write_to(&tmp, arrays).and_then(|()| std::fs::rename(&tmp, path).map_err(|e| DataError::io(path, e)));
    if result.is_err() {
        // Best effort: the temporary file is garbage either way.
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn write_to(tmp: &Path, a: &NpzArrays<'_>) -> Result<(), DataError> {
    let io = |e| DataError::io(tmp, e);
    let npz_err = |e: ndarray_npy::WriteNpzError| DataError::io(tmp, std::io::Error::other(e));
    let file = File::options().write(true).create_new(true).open(tmp).map_err(io)?;
    let mut npz = NpzWriter::new_compressed(BufWriter::new(file));
    npz.add_array("x", &a.x).map_err(npz_err)?;
    npz.add_array("y", &ArrayView1::from(a.y)).map_err(npz_err)?;
    if let Some(index) = a.index {
        npz.add_array("index", &ArrayView1::from(index)).map_err(npz_err)?;
    }
    if let Some(eps) = a.eps {
        npz.add_array("eps", &ArrayView1::from(eps)).map_err(npz_err)?;
    }
    if let Some(success) = a.success {
        npz.add_array("success", &ArrayView1::from(success)).map_err(npz_err)?;
    }
    let mut writer = npz.finish().map_err(npz_err)?;
    writer.flush().map_err(io)?;
    let file = writer.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use ndarray::{Array, Array2, ArrayD};

    fn opts(limit: Option<usize>) -> LoadOptions {
        LoadOptions {
            limit,
            ..LoadOptions::default()
        }
    }

    /// Writes arrays with ndarray_npy directly, for dtypes `write_npz` does
    /// not produce.
    fn raw_npz(path: &Path, compressed: bool, add: impl FnOnce(&mut NpzWriter<File>)) {
        let f = File::create(path).unwrap();
        let mut w = if compressed {
            NpzWriter::new_compressed(f)
        } else {
            NpzWriter::new(f)
        };
        add(&mut w);
        w.finish().unwrap();
    }

    #[test]
    fn write_then_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("adv.npz");
        let x = Array::from_shape_fn((5, 1, 4, 4), |(n, _, h, w)| (n * 16 + h * 4 + w) as f32 / 80.0).into_dyn();
        let y = [3, 1, 4, 1, 5];
        let arrays = NpzArrays {
            index: Some(&[10, 11, 12, 13, 14]),
            eps: Some(&[0.1; 5]),
            success: Some(&[true, false, true, true, false]),
            ..NpzArrays::new(x.view(), &y)
        };
        write_npz(&path, &arrays).unwrap();
        let ds = super::super::load(&path, &opts(None)).unwrap();
        assert_eq!(ds.labels, y.to_vec());
        assert_eq!(ds.image_shape(), [1, 4, 4]);
        assert_eq!(ds.pixels, Pixels::F32(x.clone().into_dimensionality().unwrap()));
        let part = load(&path, &opts(Some(2))).unwrap();
        assert_eq!(part.labels, vec![3, 1]);
        assert_eq!(part.len(), 2);
        // overwriting works and leaves no temporary files behind
        write_npz(&path, &NpzArrays::new(x.view(), &y)).unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn write_rejects_inconsistent_arrays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.npz");
        let x = ArrayD::<f32>::zeros(IxDyn(&[2, 3, 4, 4]));
        let e = write_npz(&path, &NpzArrays::new(x.view(), &[1])).unwrap_err();
        assert!(e.to_string().contains("y has 1 entries"), "{e}");
        let mut hot = x.clone();
        hot[[1, 0, 0, 0]] = 1.5;
        let e = write_npz(&path, &NpzArrays::new(hot.view(), &[1, 2])).unwrap_err();
        assert!(e.to_string().contains("sample 1"), "{e}");
        assert!(!path.exists());
    }

    #[test]
    fn dtypes_and_layouts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.npz");
        // uint8 NHWC with int32 labels: channel 2 of image 1, row 0, col 1 is 42
        let mut x = Array::from_elem((2, 2, 3, 3), 0u8);
        x[[1, 0, 1, 2]] = 42;
        let y = ndarray::arr1(&[7i32, 0]);
        raw_npz(&path, false, |w| {
            w.add_array("x", &x).unwrap();
            w.add_array("y", &y).unwrap();
            w.add_array("extra", &ndarray::arr1(&[1.5f64])).unwrap();
        });
        let ds = load(&path, &opts(None)).unwrap();
        assert_eq!(ds.image_shape(), [3, 2, 3]);
        assert_eq!(ds.labels, vec![7, 0]);
        let Pixels::U8(a) = &ds.pixels else {
            panic!("uint8 stays bytes")
        };
        assert_eq!(a[[1, 2, 0, 1]], 42);

        // float64 flat rows of 12 = 3 * 2 * 2, Fortran order, uint8 labels
        let flat = Array2::from_shape_fn((3, 12), |(n, d)| (n * 12 + d) as f64 / 36.0);
        let fort = flat.t().as_standard_layout().into_owned().reversed_axes();
        assert!(!fort.is_standard_layout());
        raw_npz(&path, true, |w| {
            w.add_array("x", &fort).unwrap();
            w.add_array("y", &ndarray::arr1(&[2u8, 1, 0])).unwrap();
        });
        for limit in [None, Some(2)] {
            let ds = load(&path, &opts(limit)).unwrap();
            assert_eq!(ds.image_shape(), [3, 2, 2]);
            let Pixels::F32(a) = &ds.pixels else {
                panic!("floats stay floats")
            };
            assert_eq!(a[[1, 2, 1, 0]], (12 + 10) as f32 / 36.0);
            assert_eq!(ds.labels, vec![2, 1, 0][..ds.len()].to_vec());
        }

        // [N, H, W] and a non-square [N, D]
        raw_npz(&path, false, |w| {
            w.add_array("x", &Array::from_elem((4, 5, 6), 1.0f32)).unwrap();
            w.add_array("y", &ndarray::arr1(&[0i64, 1, 2, 3])).unwrap();
        });
        assert_eq!(load(&path, &opts(None)).unwrap().image_shape(), [1, 5, 6]);
        assert_eq!(image_layout(&[9, 7]).unwrap(), (9, [1, 1, 7], false));
        assert_eq!(image_layout(&[9, 49]).unwrap(), (9, [1, 7, 7], false));
        assert_eq!(image_layout(&[9, 3, 32, 32]).unwrap(), (9, [3, 32, 32], false));
        assert_eq!(image_layout(&[9, 32, 32, 1]).unwrap(), (9, [1, 32, 32], true));
        assert!(image_layout(&[9, 5, 5, 5]).is_err());
    }

    #[test]
    fn malformed_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.npz");
        let x = Array::from_elem((3, 1, 2, 2), 0.5f32);
        raw_npz(&path, true, |w| w.add_array("x", &x).unwrap());
        let msg = load(&path, &opts(None)).unwrap_err().to_string();
        assert!(msg.contains("no array named \"y\"") && msg.contains("x.npy"), "{msg}");

        let mut hot = x.clone();
        hot[[2, 0, 1, 1]] = -0.25;
        raw_npz(&path, true, |w| {
            w.add_array("x", &hot).unwrap();
            w.add_array("y", &ndarray::arr1(&[0i64, 1, 2])).unwrap();
        });
        let msg = load(&path, &opts(None)).unwrap_err().to_string();
        assert!(msg.contains("sample 2 has pixel value -0.25"), "{msg}");
        assert!(load(&path, &opts(Some(2))).is_ok(), "limit stops first");

        raw_npz(&path, false, |w| {
            w.add_array("x", &x).unwrap();
            w.add_array("y", &ndarray::arr1(&[0i64, -1, 2])).unwrap();
        });
        let msg = load(&path, &opts(None)).unwrap_err().to_string();
        assert!(msg.contains("label of sample 1 is -1"), "{msg}");

        raw_npz(&path, false, |w| {
            w.add_array("x", &x).unwrap();
            w.add_array("y", &ndarray::arr1(&[0i64, 1])).unwrap();
        });
        let msg = load(&path, &opts(None)).unwrap_err().to_string();
        assert!(msg.contains("x holds 3 samples but y holds 2"), "{msg}");

        raw_npz(&path, false, |w| {
            w.add_array("x", &x.mapv(|v| v as i16)).unwrap();
            w.add_array("y", &ndarray::arr1(&[0i64, 1, 2])).unwrap();
        });
        let msg = load(&path, &opts(None)).unwrap_err().to_string();
        assert!(msg.contains("dtype <i2"), "{msg}");

        raw_npz(&path, false, |w| {
            w.add_array("x", &x).unwrap();
            w.add_array("y", &ndarray::arr1(&[0.0f32, 1.0, 2.0])).unwrap();
        });
        let msg = load(&path, &opts(None)).unwrap_err().to_string();
        assert!(msg.contains("y.npy") && msg.contains("integer"), "{msg}");
    }

    #[test]
    fn corrupt_archives() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.npz");
        let x = Array::from_shape_fn((50, 1, 8, 8), |(n, _, h, w)| ((n + h + w) % 2) as u8);
        let y = Array::from_elem(50, 1i64);
        raw_npz(&path, false, |w| {
            w.add_array("x", &x).unwrap();
            w.add_array("y", &y).unwrap();
        });
        let good = std::fs::read(&path).unwrap();
        assert!(load(&path, &opts(None)).is_ok());

        // truncated: the directory at the end is gone
        std::fs::write(&path, &good[..good.len() / 2]).unwrap();
        let msg = load(&path, &opts(None)).unwrap_err().to_string();
        assert!(msg.contains("c.npz") && msg.contains("not an NPZ"), "{msg}");

        // a flipped data byte: CRC catches it
        let mut flipped = good.clone();
        let at = good.windows(6).position(|w| w == b"\x93NUMPY").unwrap() + 200;
        flipped[at] ^= 0x55;
        std::fs::write(&path, &flipped).unwrap();
        let msg = load(&path, &opts(None)).unwrap_err().to_string();
        assert!(msg.contains("CRC"), "{msg}");

        // a header claiming a huge shape, in an otherwise valid archive
        let header_at = good.windows(9).position(|w| w == b"'shape': ").unwrap() + 9;
        let mut huge = good.clone();
        huge[header_at..header_at + 3].copy_from_slice(b"(9,");
        huge[header_at + 3..header_at + 5].copy_from_slice(b"99");
        std::fs::write(&path, &huge).unwrap();
        let msg = load(&path, &opts(None)).unwrap_err().to_string();
        assert!(msg.contains("header says shape") && msg.contains("x.npy"), "{msg}");

        std::fs::write(&path, b"PK\x05\x06 not really").unwrap();
        assert!(load(&path, &opts(None)).is_err());
        std::fs::write(&path, b"").unwrap();
        assert!(load(&path, &opts(None)).is_err());
    }

    #[test]
    fn header_parser() {
        let h =
            NpyHeader::parse(b"{'descr': '<f4', 'fortran_order': False, 'shape': (60000, 1, 28, 28), }   \n").unwrap();
        assert_eq!(h.shape, vec![60000, 1, 28, 28]);
        assert_eq!(h.descr, "<f4");
        let h = NpyHeader::parse(b"{\"descr\":\"|u1\",\"fortran_order\":True,\"shape\":(5L,)}").unwrap();
        assert!(h.fortran);
        assert_eq!(h.shape, vec![5]);
        assert!(NpyHeader::parse(b"{'descr': [('a', '<i4')], 'fortran_order': False, 'shape': (1,)}").is_err());
        assert!(NpyHeader::parse(b"{'descr': '<f4', 'shape': (1,").is_err());
        assert_eq!(
            Dtype::parse(">i8"),
            Some(Dtype {
                kind: b'i',
                size: 8,
                big_endian: true
            })
        );
    }
}
