//! The CIFAR-10 binary reader through `data::load` on a folder of batches.
//!
//! Input: a flags byte (bit 0: test split, bit 1: batches in `cifar-10-batches-bin/`,
//! bit 2: write `batches.meta.txt`, bit 7: a limit), the limit byte, then up to five
//! batch files (u16 length, bytes each; a missing one is not written), then the
//! class-name file (the rest). A split reads `data_batch_1..5.bin` or `test_batch.bin`;
//! the test split takes the first chunk as `test_batch.bin`.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use nnmend::data::{self, LoadOptions, Split};

fuzz_target!(|data: &[u8]| {
    let mut input = common::Cursor::new(data);
    let flags = input.byte();
    let limit = common::limit(flags, input.byte());
    let root = common::fresh("cifar");
    let dir = if flags & 2 != 0 {
        root.join("cifar-10-batches-bin")
    } else {
        root.clone()
    };
    std::fs::create_dir_all(&dir).unwrap();
    let split = if flags & 1 != 0 { Split::Test } else { Split::Train };
    for i in 1..=5 {
        if input.is_empty() {
            break;
        }
        let name = match split {
            Split::Test if i == 1 => "test_batch.bin".to_string(),
            _ => format!("data_batch_{i}.bin"),
        };
        std::fs::write(dir.join(name), input.chunk()).unwrap();
    }
    if flags & 4 != 0 {
        std::fs::write(dir.join("batches.meta.txt"), input.rest()).unwrap();
    }
    if let Ok(ds) = data::load(&root, &LoadOptions { split, limit }) {
        assert_eq!(ds.len(), ds.labels.len());
        assert_eq!(ds.image_shape(), [3, 32, 32]);
        assert!(ds.labels.iter().all(|&l| (0..10).contains(&l)));
    }
});
