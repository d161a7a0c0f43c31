//! The `.npy` format of the arrays in an NPZ archive: the header (a Python
//! dict literal giving dtype, order and shape), parsed here instead of by
//! `ndarray_npy`, and a stream of the array's elements. The shape a header
//! claims is checked against the entry's size in the zip directory before
//! anything is allocated, buffers grow only with data actually decompressed,
//! and reading a whole array also checks its length and CRC.

use std::io::Read;
use std::path::PathBuf;

use flate2::CrcReader;

use super::zip::{le16, le32, Archive, Entry};
use crate::data::{has_more, read_up_to, DataError};

/// Largest `.npy` header accepted; real ones are a few hundred bytes.
const MAX_HEADER: usize = 1 << 20;

/// Element type of an array, from a NumPy `descr` such as `<f4`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Dtype {
    pub(super) kind: u8,
    pub(super) size: usize,
    pub(super) big_endian: bool,
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
pub(super) struct NpyHeader {
    pub(super) descr: String,
    pub(super) fortran: bool,
    pub(super) shape: Vec<usize>,
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

/// How deeply a header's literals may nest. Real headers nest three deep (the dict,
/// the shape tuple, its integers; a structured dtype adds two); the bound keeps a
/// hostile header of a million `[` (1 KB once deflated) from overflowing the stack.
const MAX_DEPTH: usize = 16;

/// A recursive-descent parser for the dict literal of a `.npy` header.
struct LitParser<'a> {
    s: &'a [u8],
    i: usize,
    depth: usize,
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
        if self.depth >= MAX_DEPTH {
            return Err(format!("literals nest more than {MAX_DEPTH} deep at byte {}", self.i));
        }
        self.depth += 1;
        let lit = self.literal();
        self.depth -= 1;
        lit
    }

    fn literal(&mut self) -> Result<Lit, String> {
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
        let mut p = LitParser {
            s: text,
            i: 0,
            depth: 0,
        };
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
pub(super) struct NpyStream {
    pub(super) path: PathBuf,
    pub(super) entry: Entry,
    reader: CrcReader<Box<dyn Read>>,
    pub(super) header: NpyHeader,
    pub(super) dtype: Dtype,
    /// Number of elements.
    pub(super) count: usize,
}

impl NpyStream {
    pub(super) fn bad(&self, msg: impl std::fmt::Display) -> DataError {
        DataError::malformed(&self.path, format!("{}: {msg}", self.entry.name))
    }

    pub(super) fn open(archive: &mut Archive, name: &str) -> Result<NpyStream, DataError> {
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
    pub(super) fn read<T>(&mut self, n: usize, conv: impl Fn(&[u8]) -> T) -> Result<Vec<T>, DataError> {
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

    /// The first `n` elements as `bool` (NumPy's `|b1`: one byte, non-zero is true).
    pub(super) fn read_bools(&mut self, n: usize) -> Result<Vec<bool>, DataError> {
        if self.dtype.kind != b'b' || self.dtype.size != 1 {
            return Err(self.bad(format!("has dtype {}; expected bool", self.header.descr)));
        }
        self.read(n, |b| b[0] != 0)
    }

    /// The first `n` elements as `f32` (float32 or float64).
    pub(super) fn read_f32(&mut self, n: usize) -> Result<Vec<f32>, DataError> {
        let Dtype { kind, size, big_endian } = self.dtype;
        match (kind, size) {
            (b'f', 4) => self.read(n, |b| {
                let b = [b[0], b[1], b[2], b[3]];
                if big_endian {
                    f32::from_be_bytes(b)
                } else {
                    f32::from_le_bytes(b)
                }
            }),
            (b'f', 8) => self.read(n, |b| {
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                (if big_endian {
                    f64::from_be_bytes(a)
                } else {
                    f64::from_le_bytes(a)
                }) as f32
            }),
            _ => Err(self.bad(format!("has dtype {}; expected float32 or float64", self.header.descr))),
        }
    }

    /// The first `n` elements as `i64` labels (any integer dtype).
    pub(super) fn read_labels(&mut self, n: usize) -> Result<Vec<i64>, DataError> {
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

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

    #[test]
    fn npy_header_nested_a_million_deep_is_refused() {
        // Found by review, not by the fuzzer: a fuzz input cannot grow to the
        // megabyte this takes, but a deflated NPZ entry holds it in 1 KB.
        for open in [b'[', b'(', b'{'] {
            let err = NpyHeader::parse(&vec![open; 1 << 20]).unwrap_err();
            assert!(err.contains("nest more than 16 deep"), "{err}");
        }
        let h = NpyHeader::parse(b"{'descr': '<f4', 'fortran_order': False, 'shape': (((((1,),),),),), 'x': [[[[]]]]}");
        assert!(h.unwrap_err().contains("not an integer"));
    }
}
