//! What [`super::fit`] refuses.

/// Invalid input to [`fit`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SvmError {
    /// No training samples.
    #[error("no training samples")]
    Empty,
    /// Feature rows and labels differ in number.
    #[error("{samples} feature rows but {labels} labels")]
    LengthMismatch {
        /// Number of feature rows.
        samples: usize,
        /// Number of labels.
        labels: usize,
    },
    /// A label is not a valid class index.
    #[error("label {label} of sample {sample} is not below n_classes = {n_classes}")]
    LabelOutOfRange {
        /// Sample index.
        sample: usize,
        /// Offending label.
        label: usize,
        /// Number of classes requested.
        n_classes: usize,
    },
    /// A feature value is NaN or infinite.
    #[error("feature {feature} of sample {sample} is not finite ({value})")]
    NonFinite {
        /// Sample index.
        sample: usize,
        /// Feature index.
        feature: usize,
        /// Offending value.
        value: f32,
    },
    /// C is not a positive finite number.
    #[error("C must be positive and finite, got {0}")]
    InvalidC(f64),
    /// The primal solver was asked for with the hinge loss.
    #[error("the primal solver needs the squared hinge loss (the hinge loss is solved in the dual)")]
    PrimalHinge,
    /// A search for C without candidates.
    #[error("the grid of C values to search is empty")]
    EmptyGrid,
    /// A held-out share outside (0, 1).
    #[error("the held-out share must be between 0 and 1 (exclusive), got {0}")]
    InvalidHoldout(f64),
    /// Feature rows of another width than the training set's.
    #[error("{features} features per row, but the training set has {expected}")]
    Width {
        /// Features per row.
        features: usize,
        /// The training set's.
        expected: usize,
    },
    /// Validation rows given apart that cannot be used.
    #[error("validation set: {0}")]
    Validation(Box<SvmError>),
    /// Validation rows given apart without a search for C to score.
    #[error("validation rows are only used by a search for C")]
    ValidationWithoutSearch,
    /// No class has enough samples to hold any out.
    #[error(
        "holding out {holdout} of each class of {samples} samples leaves no validation sample (every class has a \
         single sample)"
    )]
    NoValidation {
        /// Training samples.
        samples: usize,
        /// The held-out share.
        holdout: f64,
    },
}
