//! Projected gradient descent in L∞ (Madry et al., 2018):
//! `x_{t+1} = Π(x_t + α · sign(∇ₓ L(x_t, y)))`, where Π projects onto the ε-ball
//! around the clean image and onto `[0, 1]`, optionally from a uniform random start
//! in the ball. By default an image stops moving once it is misclassified, so the
//! result is the first adversarial iterate found (and later steps cost nothing for
//! it); without early stopping every step runs and the last iterate counts.

use ndarray::{ArrayD, ArrayViewD, ArrayViewMutD, Zip};
use rand::Rng;

use super::fgsm::sign;

/// One projected step on the rows of `x` whose `active` flag is set.
pub fn step(
    mut x: ArrayViewMutD<f32>,
    clean: ArrayViewD<f32>,
    g: ArrayViewD<f32>,
    active: &[bool],
    alpha: f32,
    eps: f32,
    direction: f32,
) {
    for (i, ((mut xi, ci), gi)) in x
        .outer_iter_mut()
        .zip(clean.outer_iter())
        .zip(g.outer_iter())
        .enumerate()
    {
        if !active[i] {
            continue;
        }
        Zip::from(&mut xi).and(&ci).and(&gi).for_each(|v, &c, &gv| {
            let moved = *v + alpha * direction * sign(gv);
            *v = moved.clamp(c - eps, c + eps).clamp(0.0, 1.0);
        });
    }
}

/// The clean images moved uniformly at random within the ε-ball (and `[0, 1]`).
pub fn random_start(clean: ArrayViewD<f32>, eps: f32, rng: &mut impl Rng) -> ArrayD<f32> {
    let mut x = clean.to_owned();
    if eps > 0.0 {
        x.mapv_inplace(|v| (v + rng.random_range(-eps..=eps)).clamp(0.0, 1.0));
    }
    x
}
