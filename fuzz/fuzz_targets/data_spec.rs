//! What the CLI does with its data options (`DataArgs` in `src/cli/mod.rs`, private
//! to the binary): a data path whose kind `data::load` detects (a `.npz` file, an IDX,
//! CIFAR-binary or image-folder directory, or something it must refuse), `--split`,
//! `--limit`, `--mean` and `--std`, then the `Feed` those make and
//! `features::preprocess_for` + `Preprocess::batch`, which check the images against
//! the model's input shape and apply the normalisation.
//!
//! Input: text, one option per line, parsed with the same `FromStr`s as clap does:
//! the path (relative to a prepared tree of small data sets; `..` and absolute paths
//! are dropped), the split (`train`, `test` or empty), the limit (empty for none),
//! the mean and the std (comma-separated f32s), and the model's input shape without
//! the batch (comma-separated, e.g. `1,28,28`). A value clap would refuse ends the run.
#![no_main]

#[path = "common.rs"]
mod common;

use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use ndarray::ArrayD;
use nnmend::data::{self, LoadOptions, NpzArrays, Split};
use nnmend::features::{self, Feed};

/// A tree holding one small data set of each kind, and things that are none.
fn tree() -> &'static PathBuf {
    static TREE: OnceLock<PathBuf> = OnceLock::new();
    TREE.get_or_init(|| {
        let root = common::base().join("spec");
        std::fs::create_dir_all(&root).unwrap();

        // .npz: three 1x4x4 images, and one with [N, D] images.
        let x = ArrayD::from_shape_fn(vec![3, 1, 4, 4], |i| (i[0] + i[2] + i[3]) as f32 / 10.0);
        data::write_npz(&root.join("small.npz"), &NpzArrays::new(x.view(), &[0, 1, 2])).unwrap();
        let flat = ArrayD::from_shape_fn(vec![2, 12], |i| i[1] as f32 / 12.0);
        data::write_npz(&root.join("flat.npz"), &NpzArrays::new(flat.view(), &[1, 0])).unwrap();

        // IDX: three 4x4 images per split.
        let idx = root.join("idx");
        std::fs::create_dir_all(&idx).unwrap();
        for prefix in ["train", "t10k"] {
            let mut images = vec![0, 0, 8, 3, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0, 4];
            images.extend((0..48).map(|i| (i * 5) as u8));
            std::fs::write(idx.join(format!("{prefix}-images-idx3-ubyte")), images).unwrap();
            let labels = [0, 0, 8, 1, 0, 0, 0, 3, 7, 1, 9];
            std::fs::write(idx.join(format!("{prefix}-labels-idx1-ubyte")), labels).unwrap();
        }

        // CIFAR-10 binary: one record per training batch, two test records.
        let batches = root.join("cifar").join("cifar-10-batches-bin");
        std::fs::create_dir_all(&batches).unwrap();
        let record = |label: u8| {
            let mut r = vec![label];
            r.extend((0..3072).map(|i| (i % 251) as u8));
            r
        };
        for i in 1..=5 {
            std::fs::write(batches.join(format!("data_batch_{i}.bin")), record(i)).unwrap();
        }
        std::fs::write(batches.join("test_batch.bin"), [record(3), record(9)].concat()).unwrap();
        std::fs::write(batches.join("batches.meta.txt"), "airplane\nautomobile\nbird\n").unwrap();

        // Image folders: plain, and split into train/ and test/.
        let png = |path: &Path, shade: u8, colour: bool| {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            if colour {
                image::RgbImage::from_pixel(4, 4, image::Rgb([shade, 0, 255 - shade]))
                    .save(path)
                    .unwrap();
            } else {
                image::GrayImage::from_pixel(4, 4, image::Luma([shade]))
                    .save(path)
                    .unwrap();
            }
        };
        let folder = root.join("folder");
        png(&folder.join("cat").join("1.png"), 10, true);
        png(&folder.join("cat").join("2.png"), 20, true);
        png(&folder.join("dog").join("1.png"), 30, true);
        let split = root.join("split");
        png(&split.join("train").join("0").join("a.png"), 40, false);
        png(&split.join("train").join("1").join("b.png"), 50, false);
        png(&split.join("test").join("1").join("c.png"), 60, false);

        std::fs::write(root.join("notes.txt"), "not data").unwrap();
        std::fs::create_dir_all(root.join("empty")).unwrap();
        root
    })
}

/// `text` as a path inside the tree, or the tree itself for an empty line; `None`
/// for a path that would leave it.
fn inside(text: &str) -> Option<PathBuf> {
    let rel = Path::new(text);
    rel.components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        .then(|| tree().join(rel))
}

/// Comma-separated values, as clap's `value_delimiter = ','` splits them; an empty
/// line is the option not given.
fn list<T: std::str::FromStr>(text: &str) -> Option<Vec<T>> {
    if text.is_empty() {
        return Some(Vec::new());
    }
    text.split(',').map(|v| v.parse().ok()).collect()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let mut next = || lines.next().unwrap_or("");
    let Some(path) = inside(next()) else {
        return;
    };
    let split = match next() {
        "" | "train" => Split::Train,
        "test" => Split::Test,
        _ => return,
    };
    let limit = match next() {
        "" => None,
        l => match l.parse::<usize>() {
            Ok(v) => Some(v),
            Err(_) => return,
        },
    };
    let (Some(mean), Some(std), Some(shape)) = (list::<f32>(next()), list::<f32>(next()), list::<usize>(next())) else {
        return;
    };

    let Ok(ds) = data::load(&path, &LoadOptions { split, limit }) else {
        return;
    };
    assert_eq!(ds.len(), ds.labels.len());
    if let Some(l) = limit {
        assert!(ds.len() <= l);
    }
    let feed = Feed {
        batch: 2,
        mean,
        std,
        progress: false,
        threads: 1,
    };
    let Ok(pre) = features::preprocess_for(&ds, &shape, &feed) else {
        return;
    };
    let n = ds.len().min(feed.batch);
    if let Ok(batch) = pre.batch(&ds, 0..n) {
        // Pixels lie in [0, 1] and the normalisation was accepted, so every input
        // the model gets must be a finite number.
        assert!(batch.iter().all(|v| v.is_finite()), "normalised inputs hold NaN or Inf");
        assert_eq!(batch.shape()[0], n);
        let pixels = ds.pixels.to_f32(0..n);
        let back = data::to_nchw(batch.view(), pre.layout, ds.image_shape());
        if pre.mean.is_empty() && pre.std.is_empty() {
            assert_eq!(back.ok(), Some(pixels));
        }
    }
});
