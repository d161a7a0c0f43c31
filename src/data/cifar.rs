//! Reader for the CIFAR-10 binary release: files of 3073-byte records, each
//! a label byte followed by a 32x32 red plane, green plane and blue plane.
//! The training split is `data_batch_1.bin` to `data_batch_5.bin` in that
//! order, the test split `test_batch.bin`; class names come from
//! `batches.meta.txt` when present. The files may sit in the given directory
//! or in its `cifar-10-batches-bin` sub-folder, as the archive unpacks.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use ndarray::Array4;

use super::{DataError, Dataset, LoadOptions, Pixels, Split};

/// Side of a CIFAR image.
const SIDE: usize = 32;
/// Bytes of one image: three planes.
const IMAGE: usize = 3 * SIDE * SIDE;
/// Bytes of one record: label, then image.
const RECORD: usize = 1 + IMAGE;
/// CIFAR-10 has ten classes, so larger labels mean a corrupt file (or
/// CIFAR-100, whose records are laid out differently).
const N_CLASSES: u8 = 10;
/// The sub-folder the official archive unpacks into.
const SUBDIR: &str = "cifar-10-batches-bin";

/// Batch file names of a split, in reading order.
fn batch_names(split: Split) -> Vec<String> {
    match split {
        Split::Train => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
        Split::Test => vec!["test_batch.bin".to_string()],
    }
}

/// The directory holding CIFAR-10 batches: `dir` or its
/// `cifar-10-batches-bin` sub-folder, whichever has a batch of either split.
pub(crate) fn detect(dir: &Path) -> Option<PathBuf> {
    let has_batch = |d: &Path| {
        ["data_batch_1.bin", "test_batch.bin"]
            .iter()
            .any(|n| d.join(n).is_file())
    };
    [dir.to_path_buf(), dir.join(SUBDIR)].into_iter().find(|d| has_batch(d))
}

/// Class names, one per non-empty line of `batches.meta.txt`, if present.
fn class_names(dir: &Path) -> Result<Option<Vec<String>>, DataError> {
    let path = dir.join("batches.meta.txt");
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| DataError::io(&path, e))?;
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    Ok((!names.is_empty()).then_some(names))
}

/// Reads the `opts.split` batches found in `batches` (from [`detect`]);
/// `source` is the path the caller asked for.
pub(crate) fn load(source: &Path, batches: &Path, opts: &LoadOptions) -> Result<Dataset, DataError> {
    // Sizes are checked for every file before reading any, so that a bad
    // last batch fails fast and the buffer is sized from real file lengths.
    let mut files = Vec::new();
    let mut total = 0usize;
    for name in batch_names(opts.split) {
        let path = batches.join(&name);
        let len = std::fs::metadata(&path).map_err(|e| DataError::io(&path, e))?.len();
        if len % RECORD as u64 != 0 {
            return Err(DataError::malformed(
                &path,
                format!(
                    "length {len} bytes is not a multiple of the CIFAR-10 record size {RECORD} \
                     (1 label byte + 3x32x32 pixels)"
                ),
            ));
        }
        let records = usize::try_from(len / RECORD as u64).unwrap_or(usize::MAX);
        total = total.saturating_add(records);
        files.push((path, records));
    }
    let take = opts.limit.map_or(total, |l| l.min(total));

    let mut pixels = Vec::with_capacity(take.saturating_mul(IMAGE));
    let mut labels = Vec::with_capacity(take);
    for (path, records) in files {
        if labels.len() == take {
            break;
        }
        let want = records.min(take - labels.len());
        let mut reader = BufReader::new(File::open(&path).map_err(|e| DataError::io(&path, e))?);
        for i in 0..want {
            let mut record = [0u8; RECORD];
            if let Err(e) = reader.read_exact(&mut record) {
                return Err(DataError::malformed(
                    &path,
                    format!("record {i}: {e} (file shrank while being read?)"),
                ));
            }
            if record[0] >= N_CLASSES {
                return Err(DataError::malformed(
                    &path,
                    format!(
                        "record {i} has label {}; CIFAR-10 labels are 0..={}",
                        record[0],
                        N_CLASSES - 1
                    ),
                ));
            }
            labels.push(i64::from(record[0]));
            // The planes are already in C, H, W order.
            pixels.extend_from_slice(&record[1..]);
        }
    }
    let n = labels.len();
    let pixels =
        Array4::from_shape_vec((n, 3, SIDE, SIDE), pixels).map_err(|e| DataError::malformed(batches, e.to_string()))?;
    Ok(Dataset {
        pixels: Pixels::U8(pixels),
        labels,
        classes: class_names(batches)?,
        source: source.to_path_buf(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// `n` records; record `i` has label `labels[i]` and pixel value
    /// `(i + plane) mod 256` in plane `plane`, except pixel (1, 2) of each
    /// plane which is `100 + plane`.
    fn records(labels: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        for (i, &l) in labels.iter().enumerate() {
            v.push(l);
            for plane in 0..3 {
                for p in 0..SIDE * SIDE {
                    v.push(if p == SIDE + 2 {
                        100 + plane as u8
                    } else {
                        (i + plane) as u8
                    });
                }
            }
        }
        v
    }

    fn opts(split: Split, limit: Option<usize>) -> LoadOptions {
        LoadOptions { split, limit }
    }

    #[test]
    fn reads_train_and_test_in_order() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join(SUBDIR);
        std::fs::create_dir(&dir).unwrap();
        for b in 1..=5u8 {
            let name = format!("data_batch_{b}.bin");
            // batch b holds b-1 and b (so 2 records each, 10 in all)
            std::fs::write(dir.join(name), records(&[b - 1, b % 10])).unwrap();
        }
        std::fs::write(dir.join("test_batch.bin"), records(&[3, 1, 4])).unwrap();
        std::fs::write(dir.join("batches.meta.txt"), "airplane\nautomobile\n\n").unwrap();

        assert_eq!(detect(root.path()), Some(dir.clone()));
        let ds = super::super::load(root.path(), &opts(Split::Train, None)).unwrap();
        assert_eq!(ds.len(), 10);
        assert_eq!(ds.labels, vec![0, 1, 1, 2, 2, 3, 3, 4, 4, 5]);
        assert_eq!(ds.image_shape(), [3, 32, 32]);
        assert_eq!(ds.classes, Some(vec!["airplane".to_string(), "automobile".to_string()]));
        assert_eq!(ds.n_classes(), 6);
        let Pixels::U8(a) = &ds.pixels else {
            panic!("CIFAR gives bytes")
        };
        // planes map to channels, rows to H, columns to W
        assert_eq!(a[[3, 2, 1, 2]], 102);
        assert_eq!(a[[3, 1, 0, 0]], 2);
        assert_eq!(a[[0, 0, 31, 31]], 0);

        let test = super::super::load(root.path(), &opts(Split::Test, Some(2))).unwrap();
        assert_eq!(test.labels, vec![3, 1]);
        let part = load(root.path(), &dir, &opts(Split::Train, Some(3))).unwrap();
        assert_eq!(part.labels, vec![0, 1, 1]);
    }

    #[test]
    fn bad_length_and_label() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = records(&[1, 2, 3]);
        bytes.pop();
        std::fs::write(dir.path().join("test_batch.bin"), &bytes).unwrap();
        let msg = load(dir.path(), dir.path(), &opts(Split::Test, None))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("test_batch.bin") && msg.contains("not a multiple of"),
            "{msg}"
        );

        std::fs::write(dir.path().join("test_batch.bin"), records(&[1, 12, 3])).unwrap();
        let msg = load(dir.path(), dir.path(), &opts(Split::Test, None))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("record 1 has label 12"), "{msg}");
        // a limit that stops before the bad record does not see it
        assert!(load(dir.path(), dir.path(), &opts(Split::Test, Some(1))).is_ok());
    }

    #[test]
    fn missing_batch_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("data_batch_1.bin"), records(&[1])).unwrap();
        let msg = super::super::load(dir.path(), &opts(Split::Train, None))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("data_batch_2.bin"), "{msg}");
    }
}
