//! The NPZ reader (the zip directory, stored and deflated entries, `.npy` headers,
//! dtypes, C and Fortran order, labels) through `data::load` on a `.npz` file.
//!
//! Input: the file itself. Each input is read twice, whole and with a limit of one
//! sample, since the reader stops early under a limit and checks the CRC and the
//! length only when it reads everything.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use nnmend::data::{self, LoadOptions};

fuzz_target!(|data: &[u8]| {
    let path = common::base().join("data.npz");
    std::fs::write(&path, data).unwrap();
    for limit in [None, Some(1)] {
        if let Ok(ds) = data::load(
            &path,
            &LoadOptions {
                limit,
                ..LoadOptions::default()
            },
        ) {
            assert_eq!(ds.len(), ds.labels.len());
            assert!(ds.labels.iter().all(|&l| l >= 0));
            if let data::Pixels::F32(a) = &ds.pixels {
                assert!(a.iter().all(|v| (0.0..=1.0).contains(v)));
            }
        }
    }
});
