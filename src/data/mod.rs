//! Labelled image datasets: the in-memory [`Dataset`] type, the [`load`]
//! entry point that recognises a dataset's on-disk format and hands it to the
//! matching reader (IDX, CIFAR-10 binary, image folders, NPZ), the
//! preprocessing that turns images into model inputs, and [`DataError`], the
//! one error type of all of them. Readers never trust sizes written in a
//! file: they check them against the bytes actually present before
//! allocating, so a malformed file gives an error, not a panic or an abort.

mod cifar;
mod folder;
mod idx;
mod npz;
mod preprocess;

use std::fmt::Write as _;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use ndarray::{Array4, ArrayD, Axis};
use sha2::{Digest, Sha256};

pub use npz::{load_attack, write_npz, AttackColumns, NpzArrays};
pub use preprocess::{to_nchw, Layout, Preprocess};

/// Which half of a dataset that ships a train and a test part to read.
///
/// Used by the IDX, CIFAR-10 binary and image-folder readers; an NPZ file
/// holds a single set and ignores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Split {
    /// The training part (`train-*` IDX files, `data_batch_1..5.bin`, `train/`).
    #[default]
    Train,
    /// The test part (`t10k-*` IDX files, `test_batch.bin`, `test/`).
    Test,
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Split::Train => "train",
            Split::Test => "test",
        })
    }
}

/// How [`load`] reads a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LoadOptions {
    /// Which part to read where the format has several.
    pub split: Split,
    /// Read at most this many samples (the first ones, in the dataset's own
    /// order); readers stop decoding once they have them.
    pub limit: Option<usize>,
}

/// Image pixels as `[N, C, H, W]`, in one of two encodings that both mean
/// intensities in `[0, 1]`.
#[derive(Debug, Clone, PartialEq)]
pub enum Pixels {
    /// Bytes; the intensity is `value / 255`. Kept as bytes because that is
    /// four times smaller than `f32` for the common 8-bit datasets.
    U8(Array4<u8>),
    /// Intensities already in `[0, 1]`.
    F32(Array4<f32>),
}

impl Pixels {
    /// The shape `[N, C, H, W]`.
    pub fn dims(&self) -> [usize; 4] {
        let d = match self {
            Pixels::U8(a) => a.dim(),
            Pixels::F32(a) => a.dim(),
        };
        [d.0, d.1, d.2, d.3]
    }

    /// Samples `range` as `f32` intensities in `[0, 1]`, `[n, C, H, W]`.
    ///
    /// # Panics
    /// When `range` does not lie within the first axis (callers check it first).
    pub fn to_f32(&self, range: std::ops::Range<usize>) -> Array4<f32> {
        match self {
            Pixels::U8(a) => a.slice_axis(Axis(0), range.into()).mapv(|v| f32::from(v) / 255.0),
            Pixels::F32(a) => a.slice_axis(Axis(0), range.into()).to_owned(),
        }
    }
}

/// A labelled set of images.
///
/// `labels.len()` equals the first dimension of `pixels`; the readers
/// guarantee it, and code that builds a `Dataset` by hand must keep it.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// The images, `[N, C, H, W]`.
    pub pixels: Pixels,
    /// One class index (`>= 0`) per image.
    pub labels: Vec<i64>,
    /// Class names, index = label, where the format records them.
    pub classes: Option<Vec<String>>,
    /// The file or directory the dataset was read from.
    pub source: PathBuf,
}

impl Dataset {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.pixels.dims()[0]
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Shape of one image, `[C, H, W]`.
    pub fn image_shape(&self) -> [usize; 3] {
        let [_, c, h, w] = self.pixels.dims();
        [c, h, w]
    }

    /// Number of classes: the larger of the number of class names and
    /// the largest label + 1 (0 for an empty, unnamed set).
    pub fn n_classes(&self) -> usize {
        let from_labels = self
            .labels
            .iter()
            .max()
            .and_then(|&m| usize::try_from(m).ok())
            .map_or(0, |m| m + 1);
        let named = self.classes.as_ref().map_or(0, Vec::len);
        from_labels.max(named)
    }

    /// Fails, naming the first sample at fault, when a label is not a class index of a
    /// model with `classes` outputs.
    pub fn check_labels(&self, classes: usize) -> Result<(), DataError> {
        let bad = self
            .labels
            .iter()
            .enumerate()
            .find(|(_, &l)| usize::try_from(l).map_or(true, |l| l >= classes));
        match bad {
            Some((i, l)) => Err(DataError::malformed(
                &self.source,
                format!(
                    "sample {i} has label {l}, but the model has {classes} classes (0..={})",
                    classes.saturating_sub(1)
                ),
            )),
            None => Ok(()),
        }
    }

    /// Hex SHA-256 over the pixel encoding, the shape, the pixel values and
    /// the labels, so that a report can say exactly which data it used.
    /// Class names and the source path are left out: the same data read
    /// from another place or format with the same encoding hashes the same.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"nnmend-dataset-v1\0");
        h.update(match self.pixels {
            Pixels::U8(_) => b"u8\0",
            Pixels::F32(_) => b"f4\0",
        });
        for d in self.pixels.dims() {
            h.update((d as u64).to_le_bytes());
        }
        // Hashing value by value is slow for tens of millions of values,
        // so bytes are gathered into chunks first.
        const CHUNK: usize = 1 << 16;
        let mut buf: Vec<u8> = Vec::with_capacity(CHUNK + 8);
        let mut feed = |bytes: &[u8]| {
            buf.extend_from_slice(bytes);
            if buf.len() >= CHUNK {
                h.update(&buf);
                buf.clear();
            }
        };
        match &self.pixels {
            Pixels::U8(a) => match a.as_slice() {
                Some(s) => feed(s),
                None => a.iter().for_each(|v| feed(&[*v])),
            },
            Pixels::F32(a) => a.iter().for_each(|v| feed(&v.to_le_bytes())),
        }
        self.labels.iter().for_each(|l| feed(&l.to_le_bytes()));
        h.update(&buf);
        let mut hex = String::with_capacity(64);
        for b in h.finalize() {
            let _ = write!(hex, "{b:02x}");
        }
        hex
    }

    /// A copy holding the samples at `rows`, in that order, or `None` when a row is
    /// out of range.
    pub fn select(&self, rows: &[usize]) -> Option<Dataset> {
        if rows.iter().any(|&r| r >= self.len()) {
            return None;
        }
        let pixels = match &self.pixels {
            Pixels::U8(a) => Pixels::U8(a.select(Axis(0), rows)),
            Pixels::F32(a) => Pixels::F32(a.select(Axis(0), rows)),
        };
        Some(Dataset {
            pixels,
            labels: rows.iter().map(|&r| self.labels[r]).collect(),
            classes: self.classes.clone(),
            source: self.source.clone(),
        })
    }

    /// A data set of `images` (in a model's input `layout`, pixels in `[0, 1]`) with
    /// `labels`, its classes and source those of `like`, whose images it must match.
    pub fn from_layout(
        images: ArrayD<f32>,
        layout: Layout,
        labels: Vec<i64>,
        like: &Dataset,
    ) -> Result<Dataset, DataError> {
        let pixels = to_nchw(images.view(), layout, like.image_shape())?;
        Ok(Dataset {
            pixels: Pixels::F32(pixels),
            labels,
            classes: like.classes.clone(),
            source: like.source.clone(),
        })
    }

    /// A copy holding only the first `limit` samples (all of them if there
    /// are fewer).
    pub fn take(&self, limit: usize) -> Dataset {
        let k = limit.min(self.len());
        let pixels = match &self.pixels {
            Pixels::U8(a) => Pixels::U8(a.slice_axis(Axis(0), (..k).into()).to_owned()),
            Pixels::F32(a) => Pixels::F32(a.slice_axis(Axis(0), (..k).into()).to_owned()),
        };
        Dataset {
            pixels,
            labels: self.labels[..k.min(self.labels.len())].to_vec(),
            classes: self.classes.clone(),
            source: self.source.clone(),
        }
    }
}

/// What went wrong reading, writing or preprocessing a dataset.
///
/// Messages name the file and, where it applies, the sample or entry, and
/// include the underlying cause, so one line is enough to act on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// The operating system refused a read, write or directory listing.
    #[error("{}: {err}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The cause.
        err: io::Error,
    },
    /// A file's contents are not what its format requires.
    #[error("{}: {msg}", path.display())]
    Malformed {
        /// The offending file.
        path: PathBuf,
        /// What is wrong, with the sample index or entry name where known.
        msg: String,
    },
    /// A path that is none of the accepted dataset layouts.
    #[error("{}: not a dataset this tool reads; {}", path.display(), ACCEPTED)]
    Unrecognized {
        /// The path given to [`load`].
        path: PathBuf,
    },
    /// Arrays or parameters whose shapes or values do not fit together
    /// (preprocessing, layout conversion, arrays given to [`write_npz`]).
    #[error("{0}")]
    Shape(String),
}

/// The formats [`load`] accepts, for error messages.
const ACCEPTED: &str = "accepted: an .npz file with arrays x and y; a directory of IDX files \
     (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-... as for MNIST and \
     Fashion-MNIST); a directory of CIFAR-10 binary batches (data_batch_1..5.bin, test_batch.bin, \
     possibly in cifar-10-batches-bin/); or a directory with one sub-folder of PNG/JPEG images \
     per class (possibly under train/ and test/)";

impl DataError {
    pub(crate) fn io(path: &Path, err: io::Error) -> Self {
        DataError::Io {
            path: path.to_path_buf(),
            err,
        }
    }

    pub(crate) fn malformed(path: &Path, msg: impl Into<String>) -> Self {
        DataError::Malformed {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }
}

/// Reads the dataset at `path`, recognising its format:
///
/// * a file ending in `.npz`: arrays `x` and `y` (see [`write_npz`]);
/// * a directory holding IDX files (MNIST, Fashion-MNIST), gzipped or not;
/// * a directory holding CIFAR-10 binary batches, directly or in a
///   `cifar-10-batches-bin` sub-folder;
/// * a directory whose sub-folders (one per class, in name order) hold PNG
///   or JPEG images, or whose `train`/`test` sub-folders are such
///   directories.
///
/// `opts.split` picks the part for the directory formats. With
/// `opts.limit`, only the first samples in the dataset's order are decoded;
/// for image folders that order is by class, so a small limit covers only
/// the first classes.
pub fn load(path: &Path, opts: &LoadOptions) -> Result<Dataset, DataError> {
    let meta = std::fs::metadata(path).map_err(|e| DataError::io(path, e))?;
    if meta.is_file() {
        let is_npz = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("npz"));
        if is_npz {
            return npz::load(path, opts);
        }
    } else if meta.is_dir() {
        if idx::detect(path) {
            return idx::load(path, opts);
        }
        if let Some(dir) = cifar::detect(path) {
            return cifar::load(path, &dir, opts);
        }
        if folder::detect(path)? {
            return folder::load(path, opts);
        }
    }
    Err(DataError::Unrecognized {
        path: path.to_path_buf(),
    })
}

/// Reads up to `n` bytes, stopping early at end of stream.
///
/// The buffer grows with the data actually read (at most doubling), so a
/// header that claims terabytes cannot make it allocate more than the
/// stream really holds.
pub(crate) fn read_up_to<R: Read>(r: &mut R, n: usize) -> io::Result<Vec<u8>> {
    const FIRST: usize = 1 << 20;
    let mut buf: Vec<u8> = Vec::new();
    while buf.len() < n {
        let start = buf.len();
        let step = (n - start).min(start.max(FIRST));
        buf.reserve_exact(step);
        buf.resize(start + step, 0);
        let mut got = 0;
        while got < step {
            match r.read(&mut buf[start + got..]) {
                Ok(0) => break,
                Ok(k) => got += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf.truncate(start + got);
        if got < step {
            break;
        }
    }
    Ok(buf)
}

/// Whether `r` has any bytes left (used to reject trailing garbage).
pub(crate) fn has_more<R: Read>(r: &mut R) -> io::Result<bool> {
    let mut one = [0u8; 1];
    loop {
        match r.read(&mut one) {
            Ok(k) => return Ok(k > 0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use ndarray::Array4;

    fn tiny() -> Dataset {
        Dataset {
            pixels: Pixels::U8(Array4::from_shape_fn((4, 1, 2, 2), |(n, _, h, w)| {
                (n * 4 + h * 2 + w) as u8
            })),
            labels: vec![3, 0, 1, 2],
            classes: None,
            source: PathBuf::from("mem"),
        }
    }

    #[test]
    fn accessors() {
        let d = tiny();
        assert_eq!(d.len(), 4);
        assert!(!d.is_empty());
        assert_eq!(d.image_shape(), [1, 2, 2]);
        assert_eq!(d.n_classes(), 4);
        let mut named = d.clone();
        named.classes = Some((0..6).map(|i| i.to_string()).collect());
        assert_eq!(named.n_classes(), 6);
    }

    #[test]
    fn take_keeps_prefix() {
        let d = tiny();
        let t = d.take(2);
        assert_eq!(t.len(), 2);
        assert_eq!(t.labels, vec![3, 0]);
        match &t.pixels {
            Pixels::U8(a) => assert_eq!(a[[1, 0, 1, 1]], 7),
            Pixels::F32(_) => panic!("encoding changed"),
        }
        assert_eq!(d.take(100).len(), 4);
        assert!(d.take(0).is_empty());
    }

    #[test]
    fn fingerprint_tracks_content_and_encoding() {
        let d = tiny();
        let f = d.fingerprint();
        assert_eq!(f.len(), 64);
        assert_eq!(f, d.clone().fingerprint());
        let mut other = d.clone();
        other.labels[0] = 2;
        assert_ne!(f, other.fingerprint());
        let mut moved = d.clone();
        moved.source = PathBuf::from("elsewhere");
        assert_eq!(f, moved.fingerprint());
        let as_f32 = Dataset {
            pixels: Pixels::F32(d.pixels.to_f32(0..4)),
            ..d.clone()
        };
        assert_ne!(f, as_f32.fingerprint());
        // A non-contiguous array hashes like its contiguous copy.
        if let Pixels::U8(a) = &d.pixels {
            let mut t = a.clone();
            t.swap_axes(2, 3);
            let c = t.as_standard_layout().into_owned();
            let x = Dataset {
                pixels: Pixels::U8(t),
                ..d.clone()
            };
            let y = Dataset {
                pixels: Pixels::U8(c),
                ..d.clone()
            };
            assert_eq!(x.fingerprint(), y.fingerprint());
        }
    }

    #[test]
    fn read_up_to_stops_at_end() {
        let data = vec![7u8; 3_000_000];
        let got = read_up_to(&mut &data[..], 5_000_000).unwrap();
        assert_eq!(got.len(), 3_000_000);
        let got = read_up_to(&mut &data[..], 10).unwrap();
        assert_eq!(got, vec![7u8; 10]);
        let mut r = &data[..];
        let _ = read_up_to(&mut r, 2_999_999).unwrap();
        assert!(has_more(&mut r).unwrap());
        assert!(!has_more(&mut r).unwrap());
    }

    #[test]
    fn unknown_paths_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let err = load(dir.path(), &LoadOptions::default()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
        assert!(msg.contains("IDX") && msg.contains(".npz"), "{msg}");
        let txt = dir.path().join("notes.txt");
        std::fs::write(&txt, "hi").unwrap();
        assert!(matches!(
            load(&txt, &LoadOptions::default()),
            Err(DataError::Unrecognized { .. })
        ));
        let missing = dir.path().join("nope");
        assert!(matches!(
            load(&missing, &LoadOptions::default()),
            Err(DataError::Io { .. })
        ));
    }
}
