//! The readers agree with each other on the committed fixtures and read the shared
//! datasets as published.

use super::common::*;
use nnmend::data::{self, Layout, LoadOptions, Preprocess, Split};

#[test]
fn idx_and_npz_fixtures_hold_the_same_images() {
    let idx = data::load(
        &fixture("mnist-small"),
        &LoadOptions {
            split: Split::Test,
            limit: None,
        },
    )
    .unwrap();
    let npz = data::load(&fixture("mnist-small-test.npz"), &LoadOptions::default()).unwrap();
    assert_eq!(idx.len(), 500);
    assert_eq!(idx.labels, npz.labels);
    assert_eq!(idx.image_shape(), npz.image_shape());
    let pre = Preprocess {
        mean: vec![],
        std: vec![],
        layout: Layout::Nchw,
    };
    let a = pre.batch(&idx, 0..500).unwrap();
    let b = pre.batch(&npz, 0..500).unwrap();
    let diff = a
        .iter()
        .zip(b.iter())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(diff < 1e-6, "{diff}");
}

#[test]
fn the_shared_mnist_has_its_published_class_counts() {
    let Some(shared) = shared() else { return };
    let train = data::load(
        &shared.path("datasets/mnist"),
        &LoadOptions {
            split: Split::Train,
            limit: None,
        },
    )
    .unwrap();
    let mut counts = [0usize; 10];
    for &l in &train.labels {
        counts[l as usize] += 1;
    }
    assert_eq!(counts, [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]);
    let test = data::load(
        &shared.path("datasets/mnist"),
        &LoadOptions {
            split: Split::Test,
            limit: Some(10),
        },
    )
    .unwrap();
    assert_eq!(test.len(), 10);
    assert_eq!(&test.labels[..5], &[7, 2, 1, 0, 4]);
}

#[test]
fn the_first_shared_mnist_images_read_as_published() {
    let Some(shared) = shared() else { return };
    let dir = shared.path("datasets/mnist");
    let train = data::load(
        &dir,
        &LoadOptions {
            split: Split::Train,
            limit: Some(100),
        },
    )
    .unwrap();
    assert_eq!(train.len(), 100);
    assert_eq!(train.image_shape(), [1, 28, 28]);
    assert_eq!(&train.labels[..5], &[5, 0, 4, 1, 9]);
    let mut counts = [0usize; 10];
    for &l in &train.labels {
        counts[l as usize] += 1;
    }
    assert_eq!(counts, [13, 14, 6, 11, 11, 5, 11, 10, 8, 11]);
    let data::Pixels::U8(a) = &train.pixels else {
        panic!("IDX gives bytes")
    };
    // The first digit has ink in the middle and none in the corners.
    assert_eq!(a[[0, 0, 0, 0]], 0);
    assert!(a.iter().any(|&v| v == 255));
}

#[test]
fn mean_and_std_normalise_after_scaling() {
    let ds = data::load(&fixture("mnist-small-test.npz"), &LoadOptions::default()).unwrap();
    let raw = Preprocess {
        mean: vec![],
        std: vec![],
        layout: Layout::Flat,
    }
    .batch(&ds, 0..4)
    .unwrap();
    let norm = Preprocess {
        mean: vec![0.1307],
        std: vec![0.3081],
        layout: Layout::Flat,
    }
    .batch(&ds, 0..4)
    .unwrap();
    for (r, n) in raw.iter().zip(norm.iter()) {
        assert!(((r - 0.1307) / 0.3081 - n).abs() < 1e-5);
    }
}

#[test]
fn the_shared_cifar10_image_folders_read_as_published() {
    let Some(shared) = shared() else { return };
    let tmp = tempdir();
    let archive = shared.path("datasets/cifar10-jpeg.tar.gz");
    let mut tar = std::process::Command::new("tar");
    tar.arg("xzf")
        .arg(&archive)
        .arg("-C")
        .arg(tmp.path())
        .arg("cifar10/test");
    ok(tar);
    let ds = data::load(
        &tmp.path().join("cifar10"),
        &LoadOptions {
            split: Split::Test,
            limit: None,
        },
    )
    .unwrap();
    assert_eq!(ds.len(), 10_000);
    assert_eq!(ds.image_shape(), [3, 32, 32]);
    let classes = ds.classes.clone().unwrap();
    assert_eq!(classes.first().map(String::as_str), Some("airplane"));
    assert_eq!(classes.last().map(String::as_str), Some("truck"));
    let mut counts = [0usize; 10];
    for &l in &ds.labels {
        counts[l as usize] += 1;
    }
    assert_eq!(counts, [1000; 10]);
}
