//! The fast gradient sign method (Goodfellow et al., 2015), L∞:
//! `x' = clip(x + ε · sign(∇ₓ L(x, y)), 0, 1)`, one gradient per image.
//!
//! The gradient does not depend on ε, so one gradient run serves every ε.

use ndarray::{ArrayD, ArrayViewD, Zip};

/// `clip(x + ε · direction · sign(g), 0, 1)`; `direction` is +1 to ascend the loss,
/// −1 to descend it. sign(0) = 0, as in PyTorch.
pub fn step(x: ArrayViewD<f32>, g: ArrayViewD<f32>, eps: f32, direction: f32) -> ArrayD<f32> {
    let mut out = x.to_owned();
    Zip::from(&mut out).and(&g).for_each(|v, &gi| {
        *v = (*v + eps * direction * sign(gi)).clamp(0.0, 1.0);
    });
    out
}

/// −1, 0 or 1 (NaN gives 0, so a broken gradient moves nothing).
pub fn sign(v: f32) -> f32 {
    if v > 0.0 {
        1.0
    } else if v < 0.0 {
        -1.0
    } else {
        0.0
    }
}
