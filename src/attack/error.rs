//! What an attack can fail with, before or while it runs. An attack that flips no image
//! is not an error: it is a result.

/// Why an attack could not be set up or run.
#[derive(Debug, thiserror::Error)]
pub enum AttackError {
    /// No radius given.
    #[error("no ε given")]
    NoEps,
    /// A radius outside pixel space.
    #[error("ε = {0} is outside [0, 1]; ε is measured in [0, 1] pixel space")]
    EpsRange(f32),
    /// PGD with zero steps.
    #[error("PGD needs at least one step")]
    NoSteps,
    /// A PGD step ratio that is not a positive number.
    #[error("the PGD step ratio {0} must be a positive number")]
    StepRatio(f32),
    /// A mean or std with neither one value nor one per channel.
    #[error("{name} has {values} values but the images have {channels} channel(s); give one value or one per channel")]
    Channels {
        /// `the mean` or `the std`.
        name: &'static str,
        /// Values given.
        values: usize,
        /// The images' channels.
        channels: usize,
    },
    /// A standard deviation that would divide by zero or is not finite.
    #[error("std {0} is not a finite non-zero number")]
    Std(f32),
    /// A mean that is not finite.
    #[error("mean {0} is not finite")]
    Mean(f32),
    /// A model with fewer than two class scores.
    #[error("the model returns {0} class score(s); an attack needs at least 2")]
    Classes(usize),
    /// A label outside the model's classes.
    #[error("sample {sample} has label {label}, but the model has {classes} classes (0..{})", .classes - 1)]
    Label {
        /// The sample.
        sample: usize,
        /// Its label.
        label: i64,
        /// The model's classes.
        classes: usize,
    },
    /// Attack results that do not match the data set they are applied to.
    #[error("{rows} adversarial rows for a data set of {images} images")]
    Rows {
        /// Rows of the attack.
        rows: usize,
        /// Images of the data set.
        images: usize,
    },
    /// A gradient or forward graph whose output is missing or misshapen.
    #[error("the gradient graph returned no usable '{0}'")]
    Output(&'static str),
    /// A broken invariant (a bug).
    #[error("internal error: {0}")]
    Invariant(&'static str),
}
