//! Robust accuracy under a strong, fixed attack, as robustness results are reported:
//! each model is attacked itself, with PGD from random starts, following both the
//! cross-entropy and the margin loss, several times; an image counts as robust only
//! if it is classified right clean and no run flips it.
//!
//! The default protocol: 40 steps of 2.5·ε/40, a uniformly random start in the ε-ball,
//! the losses CE and margin (Carlini–Wagner's), 3 restarts each, seeded. The runs are
//! done one after the other on the images still unbroken, so the work shrinks as
//! images fall.

use std::time::Instant;

use ndarray::{ArrayD, Axis};

use crate::data::Dataset;
use crate::engine::Engine;
use crate::error::Result;
use crate::features::Feed;
use crate::onnx::ModelProto;

use super::{Loss, Method, Settings, Target};

/// How robust accuracy is measured.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Protocol {
    /// PGD iterations per run.
    pub steps: usize,
    /// The step as a multiple of ε.
    pub step_ratio: f32,
    /// Runs per loss, each from its own random start.
    pub restarts: usize,
    /// The losses followed, one set of restarts each.
    pub losses: Vec<Loss>,
    /// Seed of the random starts.
    pub seed: u64,
}

impl Default for Protocol {
    fn default() -> Self {
        Self {
            steps: 40,
            step_ratio: super::step_ratio(40),
            restarts: 3,
            losses: vec![Loss::Ce, Loss::Margin],
            seed: 0,
        }
    }
}

/// Robust accuracy at one ε.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Robustness {
    /// The radius.
    pub eps: f32,
    /// Images attacked.
    pub n: usize,
    /// Share classified right clean.
    pub clean_accuracy: f64,
    /// Share classified right clean and unbroken by every run.
    pub robust_accuracy: f64,
    /// Images robust.
    pub robust_correct: usize,
    /// Seconds.
    pub seconds: f64,
}

/// The robust accuracy at one ε, and the adversarial test set it leaves: every image
/// some run flipped replaced by that run's adversarial example (the others clean).
#[derive(Debug, Clone)]
pub struct Measured {
    /// The figures.
    pub robustness: Robustness,
    /// `[N, …]` in the model's input layout, in `[0, 1]`.
    pub images: ArrayD<f32>,
    /// Which images were flipped.
    pub broken: Vec<bool>,
}

/// Measures `model`'s robust accuracy on `ds` at each of `eps` under `protocol`.
pub fn measure(
    model: &ModelProto,
    engine: &dyn Engine,
    ds: &Dataset,
    eps: &[f32],
    protocol: &Protocol,
    feed: &Feed,
) -> Result<Vec<Measured>> {
    let targets = protocol
        .losses
        .iter()
        .map(|&loss| Target::new(model, engine, ds, feed, loss))
        .collect::<Result<Vec<_>>>()?;
    let Some(first) = targets.first() else {
        return Ok(Vec::new());
    };
    let n = ds.len();
    let clean = first.predict(ds, feed)?;
    let correct: Vec<bool> = clean.iter().zip(&ds.labels).map(|(&p, &l)| p as i64 == l).collect();
    let clean_correct = correct.iter().filter(|&&c| c).count();
    let mut out = Vec::with_capacity(eps.len());
    for (ei, &e) in eps.iter().enumerate() {
        let started = Instant::now();
        let mut images = first.pixels.batch(ds, 0..n)?;
        let mut broken = vec![false; n];
        for (li, target) in targets.iter().enumerate() {
            for restart in 0..protocol.restarts {
                let alive: Vec<usize> = (0..n).filter(|&i| correct[i] && !broken[i]).collect();
                if alive.is_empty() {
                    break;
                }
                let subset = ds
                    .select(&alive)
                    .ok_or(super::AttackError::Invariant("an image index is out of range"))?;
                let settings = Settings {
                    method: Method::Pgd,
                    eps: vec![e],
                    steps: protocol.steps,
                    step_ratio: protocol.step_ratio,
                    random_start: true,
                    early_stop: true,
                    seed: protocol.seed ^ ((ei as u64) << 32 | (li as u64) << 16 | restart as u64),
                    feed: feed.clone(),
                };
                let run = super::run(target, &subset, &settings)?;
                let Some(adv) = run.adversarial.first() else { continue };
                for (k, &i) in alive.iter().enumerate() {
                    if adv.success[k] {
                        broken[i] = true;
                        images
                            .index_axis_mut(Axis(0), i)
                            .assign(&adv.images.index_axis(Axis(0), k));
                    }
                }
            }
        }
        let robust_correct = (0..n).filter(|&i| correct[i] && !broken[i]).count();
        let share = |a: usize| if n == 0 { 0.0 } else { a as f64 / n as f64 };
        out.push(Measured {
            robustness: Robustness {
                eps: e,
                n,
                clean_accuracy: share(clean_correct),
                robust_accuracy: share(robust_correct),
                robust_correct,
                seconds: started.elapsed().as_secs_f64(),
            },
            images,
            broken,
        });
    }
    Ok(out)
}
