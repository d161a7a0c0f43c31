//! Inference engines behind one small trait.
//!
//! nnmend hands an engine an in-memory ONNX model (an extractor, a hybrid, a gradient
//! graph later) and runs it on batches. tract is the embedded default and needs nothing
//! installed; ONNX Runtime comes behind the `ort` feature. Asking for a backend that
//! was not compiled in is an error that says so, rather than a missing option.

pub mod tract;

use ndarray::{ArrayD, ArrayViewD};

use crate::onnx::ModelProto;

/// Which engine runs the models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// tract, on the CPU (embedded, the default).
    #[default]
    Tract,
    /// ONNX Runtime with its CPU execution provider.
    Ort,
    /// ONNX Runtime with its CUDA execution provider.
    OrtCuda,
}

/// What can go wrong while preparing or running a model.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The engine could not build a runnable plan from the model.
    #[error("{engine}: preparing the model: {reason}")]
    Prepare {
        /// The engine's name.
        engine: &'static str,
        /// The engine's own message, with its context chain.
        reason: String,
    },
    /// A run failed.
    #[error("{engine}: running a batch of {batch}: {reason}")]
    Run {
        /// The engine's name.
        engine: &'static str,
        /// The batch size that failed.
        batch: usize,
        /// The engine's own message.
        reason: String,
    },
    /// The backend was not compiled into this build.
    #[error(
        "backend '{0}' is not available: nnmend was built without ONNX Runtime support (rebuild with `--features ort`)"
    )]
    NotCompiled(&'static str),
    /// The model's input cannot be fed as given.
    #[error("input '{name}': {reason}")]
    Input {
        /// The model input.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

/// A model prepared for repeated batched runs.
pub trait Session: Send + Sync {
    /// Runs one batch of every data input, in the model's input order, and returns
    /// every output. All inputs share the batch size.
    fn run_many(&self, inputs: &[ArrayViewD<f32>]) -> Result<Vec<ArrayD<f32>>, EngineError>;
    /// Runs one batch (in the model's own input layout) of a single-input model.
    fn run(&self, input: ArrayViewD<f32>) -> Result<Vec<ArrayD<f32>>, EngineError> {
        self.run_many(&[input])
    }
    /// The first input's shape with the batch left out (`[C, H, W]`, `[H, W, C]`, `[D]`).
    fn sample_shape(&self) -> &[usize];
}

/// An inference engine.
pub trait Engine: Send + Sync {
    /// A short name for logs and reports.
    fn name(&self) -> &'static str;
    /// Prepares `model` (f32 data inputs, each batched on axis 0) for batched runs; a
    /// fixed batch of 1 on the first input is relaxed to a symbolic batch first.
    fn prepare(&self, model: &ModelProto) -> Result<Box<dyn Session>, EngineError>;
}

/// The engine for `backend`.
pub fn engine(backend: Backend) -> Result<Box<dyn Engine>, EngineError> {
    match backend {
        Backend::Tract => Ok(Box::new(tract::Tract)),
        Backend::Ort => Err(EngineError::NotCompiled("ort")),
        Backend::OrtCuda => Err(EngineError::NotCompiled("ort-cuda")),
    }
}
