//! The crate-level error: one variant per layer, each keeping that layer's message
//! (which already names the file, node, tensor or sample at fault).

use crate::data::DataError;
use crate::engine::EngineError;
use crate::onnx::OnnxError;
use crate::svm::SvmError;

/// Anything a pipeline step can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading, querying or rewriting an ONNX model.
    #[error(transparent)]
    Onnx(#[from] OnnxError),
    /// Preparing or running a model in an engine.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// Reading or preprocessing data.
    #[error(transparent)]
    Data(#[from] DataError),
    /// Fitting the SVM.
    #[error(transparent)]
    Svm(#[from] SvmError),
    /// A file nnmend writes could not be written.
    #[error("{path}: {source}")]
    Write {
        /// The file being written.
        path: std::path::PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A model and a data set that do not fit together.
    #[error("{0}")]
    Mismatch(String),
}

/// Shorthand for results of pipeline steps.
pub type Result<T, E = Error> = std::result::Result<T, E>;
