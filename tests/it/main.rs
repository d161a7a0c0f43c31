//! Integration tests: one binary, one module per area. Tests that need the shared
//! datasets or models fail (never skip) when `../shared` is missing; tests that
//! cross-check against onnx/onnxruntime call the Python scripts in `tools/`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod attack;
mod cli;
mod common;
mod cut;
mod data;
mod determinism;
mod engines;
mod external;
mod golden;
mod grad;
mod hostile;
mod hybrid;
mod kernel;
mod plot;
mod regression;
mod repair;
mod robustness;
mod roundtrip;
mod run;
mod svm;
