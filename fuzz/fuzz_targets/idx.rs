//! The IDX reader (MNIST, Fashion-MNIST) through `data::load` on a folder: an images
//! and a labels file, each plain or gzipped, read whole or up to a limit.
//!
//! Input: a flags byte (bit 0: images file named `.gz`, bit 1: labels file named
//! `.gz`, bit 2: dotted `.idx3-ubyte` names, bit 3: test split, bit 7: a limit),
//! the limit byte, the images file (u16 length, bytes), then the labels file (the
//! rest). The reader tells gzip by content, so the names only steer which file it finds.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use nnmend::data::{self, LoadOptions, Split};

fuzz_target!(|data: &[u8]| {
    let mut input = common::Cursor::new(data);
    let flags = input.byte();
    let limit = common::limit(flags, input.byte());
    let images = input.chunk();
    let labels = input.rest();

    let dir = common::fresh("idx");
    let (prefix, split) = if flags & 8 != 0 {
        ("t10k", Split::Test)
    } else {
        ("train", Split::Train)
    };
    let sep = if flags & 4 != 0 { '.' } else { '-' };
    let gz = |bit: u8| if flags & bit != 0 { ".gz" } else { "" };
    std::fs::write(dir.join(format!("{prefix}-images{sep}idx3-ubyte{}", gz(1))), images).unwrap();
    std::fs::write(dir.join(format!("{prefix}-labels{sep}idx1-ubyte{}", gz(2))), labels).unwrap();
    if let Ok(ds) = data::load(&dir, &LoadOptions { split, limit }) {
        assert_eq!(ds.len(), ds.labels.len());
        if let Some(l) = limit {
            assert!(ds.len() <= l);
        }
    }
});
