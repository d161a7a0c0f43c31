//! Reader and writer for NPZ datasets: a zip archive of `.npy` arrays with
//! images `x` and labels `y` (other arrays, such as the ones attack results
//! add, are ignored). The reader parses the zip directory and the `.npy`
//! headers itself instead of using `ndarray_npy::NpzReader`, because that
//! allocates whatever a header claims before reading, and cannot stop after
//! the first `limit` samples; here sizes are checked against the archive
//! directory first and buffers grow only with data actually decompressed.
//! Writing uses `ndarray_npy`, through a temporary file renamed into place.
//!
//! This file holds the dataset-level part: how `x` maps to images, `load`
//! and `write_npz`. The zip archive is read in `zip`, the `.npy` arrays in
//! `npy`.

mod npy;
mod zip;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use ndarray::{Array4, ArrayD, ArrayView1, ArrayViewD, Axis, IxDyn};
use ndarray_npy::NpzWriter;

use self::npy::{Dtype, NpyStream};
use self::zip::Archive;
use super::{DataError, Dataset, LoadOptions, Pixels};

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

/// The per-sample arrays an attack file (`nnmend attack -o`) stores beside `x` and `y`.
#[derive(Debug, Clone, PartialEq)]
pub struct AttackColumns {
    /// Each row's image index in the data set the attack ran on.
    pub index: Vec<i64>,
    /// Each row's radius, when stored.
    pub eps: Option<Vec<f32>>,
    /// Whether each row is a successful adversarial example, when stored.
    pub success: Option<Vec<bool>>,
}

/// Reads an attack file: the data set of its rows, and its `index` (required), `eps`
/// and `success` arrays, each checked to hold one entry per row.
pub fn load_attack(path: &Path) -> Result<(Dataset, AttackColumns), DataError> {
    let ds = load(path, &LoadOptions::default())?;
    let n = ds.len();
    let mut archive = Archive::open(path)?;
    let column = |archive: &mut Archive, name: &str| -> Result<Option<NpyStream>, DataError> {
        if !archive.contains(name) {
            return Ok(None);
        }
        let stream = NpyStream::open(archive, name)?;
        if stream.count != n {
            return Err(stream.bad(format!("holds {} entries for {n} images", stream.count)));
        }
        Ok(Some(stream))
    };
    let index = match column(&mut archive, "index")? {
        Some(mut s) => s.read_labels(n)?,
        None => {
            return Err(DataError::malformed(
                path,
                "no 'index' array: an attack file (written by `nnmend attack -o`) has one".to_string(),
            ))
        }
    };
    let eps = column(&mut archive, "eps")?.map(|mut s| s.read_f32(n)).transpose()?;
    let success = column(&mut archive, "success")?
        .map(|mut s| s.read_bools(n))
        .transpose()?;
    Ok((ds, AttackColumns { index, eps, success }))
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
    let io = |e| DataError::io(path, e);
    crate::atomic::write_with(path, io, |file| write_to(file, arrays).map_err(io))
}

fn write_to(file: &mut File, a: &NpzArrays<'_>) -> std::io::Result<()> {
    let npz_err = std::io::Error::other;
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
    writer.flush()?;
    writer.into_inner().map_err(|e| e.into_error())?;
    Ok(())
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
}
