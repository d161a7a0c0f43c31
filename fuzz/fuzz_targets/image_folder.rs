//! The image-folder reader through `data::load` on a folder tree: class sub-folders
//! of PNG/JPEG files, plain or under `train/` and `test/`.
//!
//! Input: a flags byte (bit 0: put the classes under `train/` and `test/`, bit 1:
//! read the test split, bit 7: a limit), the limit byte, then files, each a header
//! byte (bits 0-1: class folder `a`..`d`, bit 2: under `test/` rather than `train/`,
//! bits 4-5: name ending `.png`, `.jpg`, `.txt` or none) and a chunk (u16 length,
//! bytes). The reader tells formats by content; names only decide whether a
//! non-image is an error or skipped.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use nnmend::data::{self, LoadOptions, Split};

fuzz_target!(|data: &[u8]| {
    let mut input = common::Cursor::new(data);
    let flags = input.byte();
    let limit = common::limit(flags, input.byte());
    let root = common::fresh("folder");
    let split = if flags & 2 != 0 { Split::Test } else { Split::Train };
    let mut i = 0;
    while !input.is_empty() && i < 16 {
        let header = input.byte();
        let bytes = input.chunk();
        let class = ["a", "b", "c", "d"][usize::from(header & 3)];
        let ext = [".png", ".jpg", ".txt", ""][usize::from((header >> 4) & 3)];
        let dir = match (flags & 1 != 0, header & 4 != 0) {
            (false, _) => root.join(class),
            (true, false) => root.join("train").join(class),
            (true, true) => root.join("test").join(class),
        };
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("img{i:02}{ext}")), bytes).unwrap();
        i += 1;
    }
    if let Ok(ds) = data::load(&root, &LoadOptions { split, limit }) {
        assert_eq!(ds.len(), ds.labels.len());
        let [c, _, _] = ds.image_shape();
        assert!(ds.is_empty() || c == 1 || c == 3);
    }
});
