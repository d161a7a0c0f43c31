//! Reader for IDX files, the format of MNIST and Fashion-MNIST: a big-endian
//! header (magic number, then one `u32` per dimension) followed by raw
//! bytes. A directory holds an images file (`*-images-idx3-ubyte`) and a
//! labels file (`*-labels-idx1-ubyte`) per split, each possibly gzipped
//! (recognised by its magic bytes, whatever its name). The header is checked
//! against the data before anything is allocated for it, and with a limit
//! the stream is read only as far as needed.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;
use ndarray::Array4;

use super::{has_more, read_up_to, DataError, Dataset, LoadOptions, Pixels, Split};

/// Magic number of an IDX file of unsigned bytes with 3 dimensions.
const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Deflate's largest expansion (one compressed byte gives at most 1032).
const MAX_GZIP_RATIO: u64 = 1032;
/// Magic number of an IDX file of unsigned bytes with 1 dimension.
const LABELS_MAGIC: u32 = 0x0000_0801;

/// The names a split's images (`ndim` 3) or labels (`ndim` 1) file may
/// have: the canonical `-idx3-ubyte` form, the dotted `.idx3-ubyte` form
/// some mirrors use, each plain or gzipped.
fn candidates(split: Split, kind: &str, ndim: u8) -> Vec<String> {
    let prefix = match split {
        Split::Train => "train",
        Split::Test => "t10k",
    };
    let mut names = Vec::with_capacity(4);
    for sep in ['-', '.'] {
        let base = format!("{prefix}-{kind}{sep}idx{ndim}-ubyte");
        names.push(format!("{base}.gz"));
        names.push(base);
    }
    names
}

/// Whether `dir` holds an IDX images file of either split.
pub(crate) fn detect(dir: &Path) -> bool {
    [Split::Train, Split::Test]
        .iter()
        .any(|&s| candidates(s, "images", 3).iter().any(|n| dir.join(n).is_file()))
}

/// The first existing file among the candidate names.
fn find(dir: &Path, split: Split, kind: &str, ndim: u8) -> Result<PathBuf, DataError> {
    let names = candidates(split, kind, ndim);
    names.iter().map(|n| dir.join(n)).find(|p| p.is_file()).ok_or_else(|| {
        DataError::malformed(
            dir,
            format!(
                "IDX directory has no {split} {kind} file (looked for {})",
                names.join(", ")
            ),
        )
    })
}

/// An IDX file opened past its header.
struct IdxFile {
    path: PathBuf,
    reader: Box<dyn Read>,
    dims: Vec<u32>,
    /// Bytes after the header, known up front for uncompressed files only.
    data_len: Option<u64>,
    /// Size of the file on disk (compressed, for a gzipped one).
    file_len: u64,
    gzipped: bool,
}

impl IdxFile {
    fn open(path: &Path, magic: u32, what: &str) -> Result<Self, DataError> {
        let io = |e| DataError::io(path, e);
        let mut file = File::open(path).map_err(io)?;
        let file_len = file.metadata().map_err(io)?.len();
        let head = read_up_to(&mut file, 2).map_err(io)?;
        let gzipped = head == [0x1f, 0x8b];
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        let mut reader: Box<dyn Read> = if gzipped {
            // Multi-member, because gzip tools may write several members.
            Box::new(BufReader::new(MultiGzDecoder::new(BufReader::new(file))))
        } else {
            Box::new(BufReader::new(file))
        };
        let ndim = (magic & 0xff) as usize;
        let header_len = 4 + 4 * ndim;
        let header = read_up_to(&mut reader, header_len).map_err(io)?;
        let decompressed = if gzipped { "decompressed " } else { "" };
        if header.len() < header_len {
            return Err(DataError::malformed(
                path,
                format!(
                    "{decompressed}file is {} bytes long, too short for an IDX {what} header ({header_len} bytes)",
                    header.len()
                ),
            ));
        }
        let words: Vec<u32> = header
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if words[0] != magic {
            return Err(DataError::malformed(
                path,
                format!(
                    "magic number 0x{:08x} is not 0x{magic:08x} (IDX unsigned-byte {what}, {ndim} dimension{})",
                    words[0],
                    if ndim == 1 { "" } else { "s" }
                ),
            ));
        }
        Ok(IdxFile {
            path: path.to_path_buf(),
            reader,
            dims: words[1..].to_vec(),
            data_len: (!gzipped).then(|| file_len.saturating_sub(header_len as u64)),
            file_len,
            gzipped,
        })
    }

    /// Checks that the data after the header is `claimed` bytes long,
    /// where that is known without reading it; `says` describes the header.
    /// A gzipped file's data is known only once inflated, but deflate expands at most
    /// 1032:1, so a header claiming more than that is refused before inflating.
    fn check_len(&self, claimed: u64, says: &str) -> Result<(), DataError> {
        match self.data_len {
            Some(have) if have != claimed => Err(self.size_error(says, have)),
            None if claimed > self.file_len.saturating_mul(MAX_GZIP_RATIO) => Err(DataError::malformed(
                &self.path,
                format!(
                    "IDX header says {says} ({claimed} bytes), but a gzip file of {} bytes inflates to at \
                     most {MAX_GZIP_RATIO} times that",
                    self.file_len
                ),
            )),
            _ => Ok(()),
        }
    }

    fn size_error(&self, says: &str, have: u64) -> DataError {
        let file = if self.gzipped {
            "the decompressed file"
        } else {
            "the file"
        };
        DataError::malformed(
            &self.path,
            format!("IDX header says {says} but {file} holds {have} bytes of data"),
        )
    }

    /// Reads `want` data bytes, of `claimed` in all; when reading all of
    /// them, also checks that nothing follows.
    fn read(&mut self, want: usize, claimed: u64, says: &str) -> Result<Vec<u8>, DataError> {
        let path = self.path.clone();
        let io = |e| DataError::io(&path, e);
        let data = read_up_to(&mut self.reader, want).map_err(io)?;
        if data.len() < want {
            return Err(self.size_error(says, data.len() as u64));
        }
        if want as u64 == claimed && has_more(&mut self.reader).map_err(io)? {
            let rest = std::io::copy(&mut self.reader, &mut std::io::sink()).map_err(io)?;
            return Err(self.size_error(says, claimed + 1 + rest));
        }
        Ok(data)
    }
}

/// Reads the `opts.split` images and labels from the IDX files in `dir`.
pub(crate) fn load(dir: &Path, opts: &LoadOptions) -> Result<Dataset, DataError> {
    let images_path = find(dir, opts.split, "images", 3)?;
    let labels_path = find(dir, opts.split, "labels", 1)?;

    let mut images = IdxFile::open(&images_path, IMAGES_MAGIC, "images")?;
    let (n, rows, cols) = (images.dims[0], images.dims[1], images.dims[2]);
    let says_images = format!("{n} images of {rows}x{cols}");
    if rows == 0 || cols == 0 {
        return Err(DataError::malformed(
            &images_path,
            format!("IDX header says {says_images}; images cannot be empty"),
        ));
    }
    // Three u32 factors fit in u128 without overflow.
    let per_image = u64::from(rows) * u64::from(cols);
    let image_bytes = u128::from(n) * u128::from(per_image);
    let image_bytes = u64::try_from(image_bytes)
        .map_err(|_| DataError::malformed(&images_path, format!("IDX header says {says_images}, too large")))?;
    images.check_len(image_bytes, &says_images)?;

    let mut labels = IdxFile::open(&labels_path, LABELS_MAGIC, "labels")?;
    let n_labels = labels.dims[0];
    if n_labels != n {
        return Err(DataError::malformed(
            &labels_path,
            format!(
                "IDX header says {n_labels} labels but {} holds {n} images",
                images_path.display()
            ),
        ));
    }
    let says_labels = format!("{n_labels} labels");
    labels.check_len(u64::from(n_labels), &says_labels)?;

    let take = opts.limit.map_or(n as usize, |l| l.min(n as usize));
    let want = (take as u64)
        .checked_mul(per_image)
        .and_then(|b| usize::try_from(b).ok())
        .ok_or_else(|| {
            DataError::malformed(
                &images_path,
                format!("{take} images of {rows}x{cols} do not fit in memory"),
            )
        })?;
    let pixels = images.read(want, image_bytes, &says_images)?;
    let label_bytes = labels.read(take, u64::from(n_labels), &says_labels)?;

    let pixels = Array4::from_shape_vec((take, 1, rows as usize, cols as usize), pixels)
        .map_err(|e| DataError::malformed(&images_path, e.to_string()))?;
    Ok(Dataset {
        pixels: Pixels::U8(pixels),
        labels: label_bytes.into_iter().map(i64::from).collect(),
        classes: None,
        source: dir.to_path_buf(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use flate2::Compression;
    use std::io::Write;

    fn images_file(n: u32, rows: u32, cols: u32, data: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        for w in [IMAGES_MAGIC, n, rows, cols] {
            v.extend_from_slice(&w.to_be_bytes());
        }
        v.extend_from_slice(data);
        v
    }

    fn labels_file(n: u32, data: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        for w in [LABELS_MAGIC, n] {
            v.extend_from_slice(&w.to_be_bytes());
        }
        v.extend_from_slice(data);
        v
    }

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// Three 2x3 images with pixel value = 10*image + position.
    fn three() -> (Vec<u8>, Vec<u8>) {
        let px: Vec<u8> = (0..3u8).flat_map(|i| (0..6u8).map(move |p| 10 * i + p)).collect();
        (images_file(3, 2, 3, &px), labels_file(3, &[7, 1, 9]))
    }

    fn opts(split: Split, limit: Option<usize>) -> LoadOptions {
        LoadOptions { split, limit }
    }

    fn check_three(d: &Dataset, k: usize) {
        assert_eq!(d.len(), k);
        assert_eq!(d.image_shape(), [1, 2, 3]);
        assert_eq!(d.labels, [7, 1, 9][..k].to_vec());
        let Pixels::U8(a) = &d.pixels else {
            panic!("IDX gives bytes")
        };
        assert_eq!(a[[k - 1, 0, 1, 2]], 10 * (k as u8 - 1) + 5);
    }

    #[test]
    fn plain_and_gzip_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let (img, lab) = three();
        std::fs::write(dir.path().join("train-images-idx3-ubyte"), &img).unwrap();
        std::fs::write(dir.path().join("train-labels-idx1-ubyte"), &lab).unwrap();
        // gzip by content under the dotted names, without a .gz suffix
        std::fs::write(dir.path().join("t10k-images.idx3-ubyte"), gz(&img)).unwrap();
        std::fs::write(dir.path().join("t10k-labels.idx1-ubyte"), gz(&lab)).unwrap();
        assert!(detect(dir.path()));
        for split in [Split::Train, Split::Test] {
            check_three(&load(dir.path(), &opts(split, None)).unwrap(), 3);
            check_three(&load(dir.path(), &opts(split, Some(2))).unwrap(), 2);
            check_three(&load(dir.path(), &opts(split, Some(99))).unwrap(), 3);
        }
    }

    fn load_pair(img: &[u8], lab: &[u8], limit: Option<usize>) -> DataError {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("train-images-idx3-ubyte.gz"), img).unwrap();
        std::fs::write(dir.path().join("train-labels-idx1-ubyte.gz"), lab).unwrap();
        load(dir.path(), &opts(Split::Train, limit)).unwrap_err()
    }

    #[test]
    fn header_claiming_more_than_the_file_holds() {
        let (_, lab) = three();
        let img = images_file(60000, 28, 28, &[0u8; 1234]);
        let msg = load_pair(&img, &lab, None).to_string();
        assert!(
            msg.contains("train-images-idx3-ubyte.gz")
                && msg.contains("says 60000 images of 28x28 but the file holds 1234 bytes"),
            "{msg}"
        );
        // Compressed, the check happens while reading, with the same message.
        let img = images_file(3, 28, 28, &[0u8; 1234]);
        let msg = load_pair(&gz(&img), &gz(&lab), None).to_string();
        assert!(
            msg.contains("says 3 images of 28x28 but the decompressed file holds 1234 bytes"),
            "{msg}"
        );
        // A huge claim in a gzip file fails without inflating it: more than the
        // compressed bytes can give.
        let img = images_file(u32::MAX, 4096, 4096, &[0u8; 10]);
        let lab = labels_file(u32::MAX, &[]);
        let msg = load_pair(&gz(&img), &gz(&lab), Some(1_000_000)).to_string();
        assert!(msg.contains("inflates to at most 1032 times that"), "{msg}");
        // A claim the compressed bytes could give fails while reading, without
        // allocating for it.
        let img = images_file(20, 28, 28, &[0u8; 10]);
        let lab = labels_file(20, &[0u8; 20]);
        let msg = load_pair(&gz(&img), &gz(&lab), None).to_string();
        assert!(msg.contains("holds 10 bytes"), "{msg}");
    }

    #[test]
    fn trailing_data_is_rejected() {
        let (img, lab) = three();
        let mut long = img.clone();
        long.extend_from_slice(&[1, 2]);
        let msg = load_pair(&gz(&long), &gz(&lab), None).to_string();
        assert!(msg.contains("holds 20 bytes"), "{msg}");
        // With a limit the rest is not read, so this passes.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("train-images-idx3-ubyte.gz"), gz(&long)).unwrap();
        std::fs::write(dir.path().join("train-labels-idx1-ubyte.gz"), gz(&lab)).unwrap();
        assert!(load(dir.path(), &opts(Split::Train, Some(2))).is_ok());
    }

    #[test]
    fn truncated_and_bad_magic() {
        let (img, lab) = three();
        let msg = load_pair(&img[..10], &lab, None).to_string();
        assert!(msg.contains("too short for an IDX images header"), "{msg}");
        let msg = load_pair(&img[..30], &lab, None).to_string();
        assert!(
            msg.contains("says 3 images of 2x3 but the file holds 14 bytes"),
            "{msg}"
        );
        // truncated gzip stream
        let z = gz(&img);
        let err = load_pair(&z[..z.len() - 12], &lab, None);
        assert!(err.to_string().contains("train-images-idx3-ubyte.gz"), "{err}");
        let mut bad = img.clone();
        bad[3] = 0x01;
        let msg = load_pair(&bad, &lab, None).to_string();
        assert!(msg.contains("magic number 0x00000801 is not 0x00000803"), "{msg}");
        let msg = load_pair(&img, &img, None).to_string();
        assert!(msg.contains("train-labels") && msg.contains("magic"), "{msg}");
    }

    #[test]
    fn counts_must_agree() {
        let (img, _) = three();
        let msg = load_pair(&img, &labels_file(2, &[1, 2]), None).to_string();
        assert!(
            msg.contains("says 2 labels but") && msg.contains("holds 3 images"),
            "{msg}"
        );
        let msg = load_pair(&img, &labels_file(3, &[1, 2]), None).to_string();
        assert!(msg.contains("says 3 labels but the file holds 2 bytes"), "{msg}");
    }

    #[test]
    fn missing_split_names_the_expected_files() {
        let dir = tempfile::tempdir().unwrap();
        let (img, lab) = three();
        std::fs::write(dir.path().join("train-images-idx3-ubyte"), &img).unwrap();
        std::fs::write(dir.path().join("train-labels-idx1-ubyte"), &lab).unwrap();
        let msg = load(dir.path(), &opts(Split::Test, None)).unwrap_err().to_string();
        assert!(msg.contains("t10k-images-idx3-ubyte"), "{msg}");
    }
}
