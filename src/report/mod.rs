//! Rendering the experiment's report ([`crate::experiment::Report`]): [`markdown`] for
//! people, [`figures`] (drawn by [`plot`]: accuracy against ε, grids of adversarial
//! examples) as SVG and PNG, and [`folder`], the output folder written atomically.

pub mod figures;
pub mod folder;
pub mod markdown;
pub mod plot;

use std::path::PathBuf;

/// Why the report's folder could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The output folder exists and may not be replaced.
    #[error("{}: already exists", .0.display())]
    Exists(PathBuf),
    /// The output path exists and is not a folder.
    #[error("{}: exists and is not a folder", .0.display())]
    NotAFolder(PathBuf),
    /// Replacing the output folder would delete one of the inputs.
    #[error("{}: replacing it would delete the input {} inside it", .out.display(), .input.display())]
    HoldsInput {
        /// The output folder.
        out: PathBuf,
        /// The input inside it.
        input: PathBuf,
    },
    /// A figure could not be drawn or written.
    #[error(transparent)]
    Plot(#[from] plot::PlotError),
    /// The output folder could not be read.
    #[error("{}", .path.display())]
    Io {
        /// The folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}
