//! What a repair can fail with. An LP that stalls or is infeasible is not an error: it
//! is reported through [`super::Status`], and the caller decides what to do with it.

/// Why a repair could not be set up or carried out.
#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    /// No repair sample was given.
    #[error("no repair samples: nothing to repair")]
    NoSamples,
    /// An attack file none of whose rows is a successful adversarial example.
    #[error("{}: no row has success = true, so there is no adversarial example to repair", .0.display())]
    NoSuccess(std::path::PathBuf),
    /// Arrays that do not fit together (a caller's mistake, or a broken file).
    #[error("{0}")]
    Shape(String),
    /// A repair sample's feature is NaN or infinite.
    #[error("repair sample {sample}: feature {feature} is not finite")]
    NonFinite {
        /// The sample's row.
        sample: usize,
        /// The feature's column.
        feature: usize,
    },
    /// A label outside the head's classes.
    #[error("label {label} is out of range for a head of {classes} classes")]
    Label {
        /// The label.
        label: i64,
        /// The head's classes.
        classes: usize,
    },
    /// A repair sample's `index` points past the data it should come from.
    #[error(
        "repair sample {sample} comes from image {index}, but {data} holds {len} images: is it the data the attack \
         ran on?"
    )]
    Index {
        /// The sample's row.
        sample: usize,
        /// Its `index`.
        index: i64,
        /// The data set.
        data: String,
        /// Its size.
        len: usize,
    },
    /// A repair sample's label differs from its clean original's.
    #[error(
        "repair sample {sample} has label {label}, but image {index} of {data} has label {original}: is it the data \
         the attack ran on?"
    )]
    Original {
        /// The sample's row.
        sample: usize,
        /// Its label.
        label: i64,
        /// Its `index`.
        index: usize,
        /// The data set.
        data: String,
        /// The clean image's label.
        original: i64,
    },
    /// An LP dump that cannot be read or is inconsistent.
    #[error("{path}: {reason}")]
    Dump {
        /// The dump file.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
}
