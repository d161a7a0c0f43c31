//! Integration tests: one binary, one module per area. Tests that need the shared
//! datasets or models (`../shared`) are skipped, saying so on stderr, when it is
//! missing, and fail instead with `NNMEND_REQUIRE_SHARED=1` (see `common::shared`);
//! tests that cross-check against onnx, onnxruntime, scikit-learn and scipy call the
//! Python scripts in `tools/reference/`. `tools/test.sh` installs what they need.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod attack;
mod certify;
mod ci_example;
mod cli;
mod common;
mod cut;
mod data;
mod determinism;
mod engines;
mod external;
mod gates;
mod golden;
mod grad;
mod hostile;
mod hybrid;
mod kernel;
mod patterns;
mod plot;
mod regression;
mod repair;
mod robustness;
mod roundtrip;
mod run;
mod svm;
mod version;
