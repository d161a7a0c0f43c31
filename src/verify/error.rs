//! What certification can fail with. An image that is not certified is a result, not
//! an error.

/// Why bounds or certificates could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// A radius outside pixel space.
    #[error("ε = {0} is outside [0, 1]; ε is measured in [0, 1] pixel space")]
    Eps(f32),
    /// The bounds graph returned something other than one row per image.
    #[error("the bounds graph's output is malformed: {0}")]
    Output(&'static str),
    /// Bounds of another width than the head reads.
    #[error("the bounds have {found} features but the head reads {head}")]
    Width {
        /// Width of the bounds.
        found: usize,
        /// Width of the head's input.
        head: usize,
    },
    /// Linear bounds asked for where they do not apply.
    #[error("linear bounds: {0}")]
    Linear(String),
    /// A broken invariant (a bug).
    #[error("internal error: {0}")]
    Invariant(&'static str),
}
