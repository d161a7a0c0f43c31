//! Repairing the linear head of a hybrid by convex optimisation.
//!
//! The hybrid's last layer is `z = W f + b` on the extractor's features f. Given
//! repair samples (the features of adversarial images) and the decision values they
//! should have, the repair changes W (and, if asked, b) as little as possible in L1,
//! paying for what it cannot fix with slack. [`paper`] is the seed paper's formulation,
//! separable by class and solved class by class with clarabel.

pub mod paper;
pub mod wilcoxon;

use std::time::Instant;

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis};

use crate::error::{Error, Result};
pub use paper::{ClassSettings, ClassSolution, Status};

/// A repaired head and how it was found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Repair {
    /// The repaired weights `[k, d]`.
    #[serde(skip)]
    pub weights: Array2<f32>,
    /// The repaired bias `[k]`.
    #[serde(skip)]
    pub bias: Array1<f32>,
    /// One solution per class.
    pub classes: Vec<ClassSolution>,
    /// The total objective, Σ over classes.
    pub objective: f64,
    /// The worst status over the classes.
    pub status: Status,
    /// Σ|ΔW| + Σ|Δb|.
    pub l1: f64,
    /// max |ΔW|, |Δb|.
    pub linf: f64,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// The paper's repair for every class: `weights` `[k, d]` and `bias` `[k]` of the head,
/// `features` `[S, d]` of the repair samples, `targets` `[S, k]` their wanted decision
/// values. With `allowed`, only those features' weights may change (the Wilcoxon
/// selection, [`wilcoxon::select`]). The classes are independent and run on
/// `threads` threads.
pub fn paper(
    weights: ArrayView2<f32>,
    bias: ArrayView1<f32>,
    features: ArrayView2<f32>,
    targets: ArrayView2<f32>,
    allowed: Option<&[usize]>,
    settings: &ClassSettings,
    threads: usize,
) -> Result<Repair> {
    let (k, d) = weights.dim();
    let s = features.nrows();
    if features.ncols() != d || bias.len() != k || targets.dim() != (s, k) {
        return Err(Error::Mismatch(format!(
            "head [{k}, {d}] with bias of {}, features {:?} and targets {:?} do not fit together",
            bias.len(),
            features.dim(),
            targets.dim()
        )));
    }
    if let Some((i, _)) = features.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(Error::Mismatch(format!(
            "repair sample {}: feature {} is not finite",
            i / d.max(1),
            i % d.max(1)
        )));
    }
    let started = Instant::now();
    let x = features.mapv(f64::from);
    let w = weights.mapv(f64::from);
    let scores = x.dot(&w.t()) + &bias.mapv(f64::from);
    let residuals = targets.mapv(f64::from) - &scores;
    let columns: Vec<usize> = match allowed {
        Some(cols) => {
            if let Some(bad) = cols.iter().find(|&&j| j >= d) {
                return Err(Error::Mismatch(format!(
                    "feature {bad} is out of range for {d} features"
                )));
            }
            cols.to_vec()
        }
        None => (0..d).collect(),
    };
    let x = if allowed.is_some() {
        x.select(Axis(1), &columns)
    } else {
        x
    };
    let workers = threads.clamp(1, k.max(1));
    let mut classes: Vec<Option<ClassSolution>> = vec![None; k];
    std::thread::scope(|scope| {
        let chunks: Vec<_> = classes.chunks_mut(k.div_ceil(workers).max(1)).collect();
        let mut first = 0;
        for chunk in chunks {
            let (x, residuals) = (&x, &residuals);
            let start = first;
            first += chunk.len();
            scope.spawn(move || {
                for (offset, slot) in chunk.iter_mut().enumerate() {
                    let r = residuals.index_axis(Axis(1), start + offset);
                    *slot = Some(paper::solve_class(x.view(), r, settings));
                }
            });
        }
    });
    let classes: Vec<ClassSolution> = classes.into_iter().flatten().collect();
    if classes.len() != k {
        return Err(Error::Mismatch("a class's repair did not finish".into()));
    }
    let mut new_w = weights.to_owned();
    let mut new_b = bias.to_owned();
    let (mut l1, mut linf) = (0.0f64, 0.0f64);
    let mut classes = classes;
    for (i, c) in classes.iter_mut().enumerate() {
        // Back from the allowed columns to all d features.
        let mut full = vec![0.0; d];
        for (&j, g) in columns.iter().zip(&c.gamma) {
            full[j] = *g;
        }
        c.gamma = full;
        for (j, g) in c.gamma.iter().enumerate() {
            new_w[[i, j]] += *g as f32;
            l1 += g.abs();
            linf = linf.max(g.abs());
        }
        new_b[i] += c.beta as f32;
        l1 += c.beta.abs();
        linf = linf.max(c.beta.abs());
    }
    let status = classes
        .iter()
        .map(|c| c.status)
        .max_by_key(|s| match s {
            Status::Solved => 0,
            Status::AlmostSolved => 1,
            Status::Stalled => 2,
            Status::Infeasible => 3,
        })
        .unwrap_or(Status::Solved);
    Ok(Repair {
        weights: new_w,
        bias: new_b,
        objective: classes.iter().map(|c| c.objective).sum(),
        classes,
        status,
        l1,
        linf,
        seconds: started.elapsed().as_secs_f64(),
    })
}
