//! # nnmend
//!
//! Repairs convolutional classifiers delivered as ONNX files, without retraining,
//! following and extending Guidotti & Leofante, *Repair of Convolutional Neural
//! Networks using Convex Optimization* (2020).
//!
//! The pipeline:
//! 1. **Load** an ONNX classifier from any exporter ([`onnx::load`]), external data included.
//! 2. **Cut** it at the last pooling layer ([`onnx::find_cut`]); the part before the cut
//!    is a fixed feature extractor ([`onnx::surgery::extractor`]).
//! 3. **Extract features** with an inference engine ([`engine`]: tract by default).
//! 4. **Fit** a one-vs-rest linear SVM on the features ([`svm`]) to get the hybrid
//!    ([`hybrid::fit`]), written back as extractor + Flatten + Gemm
//!    ([`onnx::surgery::hybrid`]), a drop-in replacement for the original; or the
//!    kernel hybrid ([`hybrid::fit_kernel`]), a linear SVM on the Nyström features of
//!    an RBF kernel ([`svm::kernel`]), written as extractor + Nyström map + Gemm
//!    ([`onnx::surgery::kernel_hybrid`]).
//!
//! Modules:
//! - [`onnx`]: protobuf messages, load/save, graph queries, the cut, surgery.
//! - [`engine`]: the engine trait and its tract implementation.
//! - [`data`]: IDX, CIFAR-10 binary, image folders and NPZ; scaling and layouts.
//! - [`svm`]: the linear SVM (dual coordinate descent, as in LIBLINEAR) and the
//!   Nyström RBF map.
//! - [`features`]: running a model over a data set in batches.
//! - [`hybrid`]: fitting the hybrid and measuring accuracy.
//! - [`inspect`]: a model summary with the detected cut.
//! - [`attack`]: FGSM and PGD through gradient graphs ([`onnx::grad`]).
//! - [`verify`]: interval bounds on the features over L∞ balls ([`onnx::bounds`]) and
//!   certified accuracy.
//! - [`repair`]: the repair LPs of a linear or kernel hybrid's head, solved with clarabel.
//! - [`experiment`]: the seed paper's whole experiment.
//! - [`report`]: its report: JSON, Markdown tables, figures (accuracy against ε, example grids).
//! - [`gate`]: bounds on a result that fail a pipeline step (exit code 3).
//! - [`atomic`]: atomic file output.
//! - [`provenance`]: the version, commit and features of this build, which models and
//!   reports record.

pub mod atomic;
pub mod attack;
pub mod data;
pub mod doc;
pub mod engine;
pub mod error;
pub mod experiment;
pub mod features;
pub mod gate;
pub mod head;
pub mod hybrid;
pub mod inspect;
pub mod onnx;
pub mod parallel;
pub mod progress;
pub mod provenance;
pub mod repair;
pub mod report;
pub mod svm;
pub mod verify;

pub use error::{Error, Result};
