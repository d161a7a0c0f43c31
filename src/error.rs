//! The crate-level error: one variant per layer, each keeping that layer's message
//! (which already names the file, node, tensor or sample at fault).

use crate::attack::AttackError;
use crate::data::DataError;
use crate::engine::EngineError;
use crate::experiment::ExperimentError;
use crate::features::FeedError;
use crate::hybrid::FitError;
use crate::onnx::OnnxError;
use crate::repair::RepairError;
use crate::report::ReportError;
use crate::svm::SvmError;
use crate::verify::VerifyError;

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
    /// Feeding a data set to a model.
    #[error(transparent)]
    Feed(#[from] FeedError),
    /// Fitting a hybrid's head.
    #[error(transparent)]
    Fit(#[from] FitError),
    /// Fitting the SVM.
    #[error(transparent)]
    Svm(#[from] SvmError),
    /// Setting up or running an attack.
    #[error(transparent)]
    Attack(#[from] AttackError),
    /// Setting up a repair.
    #[error(transparent)]
    Repair(#[from] RepairError),
    /// Computing bounds or certificates.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// Setting up or running the experiment.
    #[error(transparent)]
    Experiment(#[from] ExperimentError),
    /// Writing the experiment's report.
    #[error(transparent)]
    Report(#[from] ReportError),
    /// A file nnmend writes could not be written.
    #[error("{path}")]
    Write {
        /// The file being written.
        path: std::path::PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Shorthand for results of pipeline steps.
pub type Result<T, E = Error> = std::result::Result<T, E>;
