//! Certification: bounds on a hybrid's features over L∞ balls, and the images whose
//! whole ball the head classifies right.
//!
//! The bounds come from the interval graph of [`crate::onnx::bounds`], built up to the
//! tensor the head's Gemm reads (`features` in a linear hybrid, the Nyström features
//! φ in a kernel hybrid) and run in the engine. Over a feature box `[l, u]` the head
//! `z = W f + b` is linear, so the worst margin of class `y` over `j` is exact:
//!
//! ```text
//! min over f ∈ [l, u] of (w_y − w_j)·f + b_y − b_j  =  Σᵢ min(dᵢ lᵢ, dᵢ uᵢ) + b_y − b_j,   d = w_y − w_j
//! ```
//!
//! An image is certified at ε when it is classified right and that margin is positive
//! for every `j ≠ y` by more than the head's own f32 rounding can take away
//! (`γ_{D+2}` of `Σᵢ (|w_{y,i}| + |w_{j,i}|) max(|lᵢ|, |uᵢ|) + |b_y| + |b_j|`), so the
//! deployed model, as the engine computes it, labels every point of the ball `y`.
//! [`certify`] puts that beside clean accuracy and the robust accuracy of the PGD
//! protocol ([`crate::attack::protocol`]), and counts the certified images that PGD
//! broke anyway: that count must be zero, or the bounds are wrong.

mod bounder;
mod error;
pub mod linear;
pub mod vnnlib;

use std::sync::Arc;
use std::time::Instant;

use ndarray::{Array1, Array2};

use crate::attack::protocol::{self, Protocol};
use crate::data::Dataset;
use crate::engine::Engine;
use crate::error::Result;
use crate::features::{layout_of, Feed};
use crate::head::HeadKind;
use crate::onnx::bounds::Margin;
use crate::onnx::head::{self, HeadSite};
use crate::onnx::ModelProto;

pub use bounder::{bounds_model, feature_bounds, worst_margin, Bounder, Bounds};
pub use error::VerifyError;
pub use linear::BoxCache;

/// What [`certify`] does.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The radii, in `[0, 1]` pixel units.
    pub eps: Vec<f32>,
    /// How many of the first images PGD attacks (0: none).
    pub pgd_limit: usize,
    /// The PGD protocol.
    pub protocol: Protocol,
    /// The rounding margin of the bounds.
    pub margin: Margin,
    /// Also bound a linear hybrid's margins by back-substitution ([`linear`]).
    pub linear: bool,
    /// With `linear`, tighten the boxes of the layers in between by back-substitution
    /// too (CROWN rather than CROWN-IBP).
    pub refine: bool,
    /// With `linear`, keep the balls' boxes here and reuse those kept (another head on
    /// the same extractor bounds the same balls: [`linear::BoxCache`]).
    pub boxes: Option<Arc<BoxCache>>,
}

impl Settings {
    /// One radius, no PGD; the interval bounds alone, or with `crown` the CROWN bounds
    /// too.
    fn one(eps: f32, margin: Margin, crown: bool, boxes: Option<Arc<BoxCache>>) -> Self {
        Self {
            eps: vec![eps],
            pgd_limit: 0,
            protocol: Protocol::default(),
            margin,
            linear: crown,
            refine: crown,
            boxes,
        }
    }
}

/// PGD on the first images, beside the certificates.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PgdCheck {
    /// Images attacked.
    pub n: usize,
    /// Share classified right clean and unbroken by every run.
    pub robust_accuracy: f64,
    /// Of those images, how many were certified.
    pub certified: usize,
    /// Certified images that PGD broke: must be 0 (else the bounds are wrong). With
    /// linear bounds, `certified` and this count the images either bound certified.
    pub certified_but_broken: usize,
    /// Seconds.
    pub seconds: f64,
}

/// Certified accuracy at one ε.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EpsCertificate {
    /// The radius.
    pub eps: f32,
    /// Images.
    pub n: usize,
    /// Share classified right.
    pub clean_accuracy: f64,
    /// Share certified.
    pub certified_accuracy: f64,
    /// Images certified.
    pub certified: usize,
    /// Robust accuracy of the PGD protocol on the first images (`None` without PGD).
    pub pgd_accuracy: Option<f64>,
    /// The PGD figures.
    pub pgd: Option<PgdCheck>,
    /// Mean over images and features of `upper − lower`.
    pub mean_width: f64,
    /// Seconds spent on the bounds and certificates.
    pub seconds: f64,
    /// The linear bounds' certificates (`None` when not computed).
    pub linear: Option<LinearCertificate>,
}

/// Certified accuracy at one ε with the linear bounds of [`linear`] (an image counts
/// when either they or the interval bounds certify it).
#[derive(Debug, Clone, serde::Serialize)]
pub struct LinearCertificate {
    /// Share certified.
    pub certified_accuracy: f64,
    /// Images certified.
    pub certified: usize,
    /// Seconds spent on the linear bounds.
    pub seconds: f64,
}

/// What [`certify`] found.
#[derive(Debug, Clone)]
pub struct Certification {
    /// Linear or kernel hybrid.
    pub kind: HeadKind,
    /// Width of the features the head reads.
    pub features: usize,
    /// One entry per ε.
    pub results: Vec<EpsCertificate>,
    /// Per ε, which images the interval bounds certified.
    pub certified: Vec<Vec<bool>>,
    /// Per ε, which images the linear or the interval bounds certified (empty when the
    /// linear bounds were not computed).
    pub certified_linear: Vec<Vec<bool>>,
    /// Why the linear bounds were not computed, when they were asked for.
    pub linear_note: Option<String>,
    /// Whether the boxes in between were tightened by back-substitution.
    pub refined: bool,
    /// Images classified right.
    pub clean_correct: usize,
}

impl Certification {
    /// Certified images that PGD broke, over every ε.
    pub fn certified_but_broken(&self) -> usize {
        self.results
            .iter()
            .filter_map(|r| r.pgd.as_ref())
            .map(|p| p.certified_but_broken)
            .sum()
    }
}

/// Certified accuracy of the hybrid `model` on `ds` at each radius, beside its clean
/// accuracy and, on the first `settings.pgd_limit` images, its robust accuracy under
/// PGD (see the module docs).
pub fn certify(
    model: &ModelProto,
    engine: &dyn Engine,
    ds: &Dataset,
    settings: &Settings,
    feed: &Feed,
) -> Result<Certification> {
    let head = head::find(model)?;
    let (k, d) = head.weights.dim();
    ds.check_labels(k)?;
    let (_, predicted) = crate::hybrid::evaluate(model, ds, engine, feed)?;
    let correct: Vec<bool> = predicted.iter().zip(&ds.labels).map(|(&p, &y)| p as i64 == y).collect();
    let clean_correct = correct.iter().filter(|&&c| c).count();
    let n = ds.len();
    let share = |a: usize| if n == 0 { 0.0 } else { a as f64 / n as f64 };
    let bounder = Bounder::new(
        &bounds_model(model, &head.input, engine, ds, feed, settings.margin)?,
        engine,
        ds,
    )?;
    let (linear, linear_note) = if settings.linear {
        match linear_bounder(model, &head, engine, ds, feed, settings.margin.roundoff) {
            Ok(b) => (Some(b.refined(settings.refine).cached(settings.boxes.clone())), None),
            Err(why) => (None, Some(why)),
        }
    } else {
        (None, None)
    };
    let mut results = Vec::with_capacity(settings.eps.len());
    let mut certified_all = Vec::with_capacity(settings.eps.len());
    let mut certified_linear = Vec::new();
    for &eps in &settings.eps {
        let started = Instant::now();
        let b = bounder.bounds(ds, eps, feed)?;
        if b.lower.dim() != (n, d) || b.upper.dim() != (n, d) {
            return Err(VerifyError::Width {
                found: b.lower.ncols(),
                head: d,
            }
            .into());
        }
        let certified: Vec<bool> = (0..n)
            .map(|i| {
                correct[i]
                    && worst_margin(
                        &head,
                        b.lower.row(i),
                        b.upper.row(i),
                        ds.labels[i] as usize,
                        settings.margin.roundoff,
                    )
                    .is_some_and(|m| m > 0.0)
            })
            .collect();
        let count = certified.iter().filter(|&&c| c).count();
        let width: Array2<f32> = &b.upper - &b.lower;
        let mean_width = if width.is_empty() {
            0.0
        } else {
            width.iter().map(|&w| f64::from(w)).sum::<f64>() / width.len() as f64
        };
        results.push(EpsCertificate {
            eps,
            n,
            clean_accuracy: share(clean_correct),
            certified_accuracy: share(count),
            certified: count,
            pgd_accuracy: None,
            pgd: None,
            mean_width,
            seconds: started.elapsed().as_secs_f64(),
            linear: None,
        });
        if let Some(lb) = &linear {
            let started = Instant::now();
            let flags = linear_certified(lb, ds, &correct, &certified, eps, feed.threads);
            let count = flags.iter().filter(|&&c| c).count();
            if let Some(r) = results.last_mut() {
                r.linear = Some(LinearCertificate {
                    certified_accuracy: share(count),
                    certified: count,
                    seconds: started.elapsed().as_secs_f64(),
                });
            }
            certified_linear.push(flags);
        }
        certified_all.push(certified);
    }
    let m = settings.pgd_limit.min(n);
    if m > 0 && !settings.eps.is_empty() {
        let subset = ds.take(m);
        let measured = protocol::measure(model, engine, &subset, &settings.eps, &settings.protocol, feed)?;
        let best = if certified_linear.is_empty() {
            &certified_all
        } else {
            &certified_linear
        };
        for ((r, cert), meas) in results.iter_mut().zip(best).zip(&measured) {
            let certified = cert[..m].iter().filter(|&&c| c).count();
            let certified_but_broken = (0..m).filter(|&i| cert[i] && meas.broken[i]).count();
            r.pgd_accuracy = Some(meas.robustness.robust_accuracy);
            r.pgd = Some(PgdCheck {
                n: m,
                robust_accuracy: meas.robustness.robust_accuracy,
                certified,
                certified_but_broken,
                seconds: meas.robustness.seconds,
            });
        }
    }
    Ok(Certification {
        kind: head.kind,
        features: d,
        results,
        certified: certified_all,
        refined: settings.refine && !certified_linear.is_empty(),
        certified_linear,
        linear_note,
        clean_correct,
    })
}

/// The linear bounder of a linear hybrid, or why there is none.
fn linear_bounder(
    model: &ModelProto,
    head: &HeadSite,
    engine: &dyn Engine,
    ds: &Dataset,
    feed: &Feed,
    roundoff: f64,
) -> std::result::Result<linear::LinearBounder, String> {
    if head.kind != HeadKind::Linear {
        return Err("linear bounds cover linear hybrids; a kernel hybrid's head reads Nyström features".into());
    }
    let sample = engine
        .prepare(model)
        .map_err(|e| e.to_string())?
        .sample_shape()
        .to_vec();
    let layout = layout_of(&sample).map_err(|e| e.to_string())?;
    let chain = linear::Chain::new(
        model,
        &head.input,
        ds.image_shape(),
        layout,
        &feed.mean,
        &feed.std,
        roundoff,
    )
    .map_err(|e| e.to_string())?;
    linear::LinearBounder::new(chain, head, roundoff).map_err(|e| e.to_string())
}

/// Which images the linear bounds certify at `eps`, or the interval bounds did
/// (`interval`); only images classified right (`correct`) are tried.
fn linear_certified(
    bounder: &linear::LinearBounder,
    ds: &Dataset,
    correct: &[bool],
    interval: &[bool],
    eps: f32,
    threads: usize,
) -> Vec<bool> {
    let todo: Vec<usize> = (0..ds.len()).filter(|&i| correct[i] && !interval[i]).collect();
    let found = crate::parallel::map_indices(todo.len(), threads, |t| {
        let i = todo[t];
        bounder.certifies(image(ds, i).view(), ds.labels[i] as usize, f64::from(eps))
    });
    let mut flags = interval.to_vec();
    for (&i, certified) in todo.iter().zip(found) {
        flags[i] |= certified;
    }
    flags
}

/// Image `i` of `ds`, flat (`[C·H·W]`, intensities in `[0, 1]`).
fn image(ds: &Dataset, i: usize) -> Array1<f32> {
    ds.pixels.to_f32(i..i + 1).into_iter().collect()
}

/// How many images of `ds` are certified at `eps`: by the interval bounds, or with
/// `crown`, by those or the CROWN bounds of [`linear`] (the boxes in between and the
/// features refined), for a linear hybrid, with their boxes kept in `boxes`.
#[allow(clippy::too_many_arguments)]
pub fn certified_count(
    model: &ModelProto,
    engine: &dyn Engine,
    ds: &Dataset,
    eps: f32,
    margin: Margin,
    crown: bool,
    feed: &Feed,
    boxes: Option<Arc<BoxCache>>,
) -> Result<usize> {
    let c = certify(model, engine, ds, &Settings::one(eps, margin, crown, boxes), feed)?;
    if let Some(note) = c.linear_note.filter(|_| crown) {
        return Err(VerifyError::Linear(note).into());
    }
    let r = c
        .results
        .first()
        .ok_or(VerifyError::Invariant("certify returned no result for its one radius"))?;
    Ok(r.linear.as_ref().map_or(r.certified, |l| l.certified))
}

/// Feature boxes `[n, D]` of a linear hybrid over the ε-balls around the images of
/// `ds` from the CROWN bounds of [`linear`] (sound for the engine's f32 features,
/// rounded outward to f32), on `feed.threads` workers; the boxes of every layer are
/// kept in `boxes`.
pub fn crown_feature_bounds(
    model: &ModelProto,
    engine: &dyn Engine,
    ds: &Dataset,
    eps: f32,
    margin: Margin,
    feed: &Feed,
    boxes: Option<Arc<BoxCache>>,
) -> Result<(Array2<f32>, Array2<f32>)> {
    let head = head::find(model)?;
    let bounder = linear_bounder(model, &head, engine, ds, feed, margin.roundoff)
        .map_err(VerifyError::Linear)?
        .refined(true)
        .cached(boxes);
    let d = head.weights.ncols();
    let n = ds.len();
    let boxes = crate::parallel::map_indices(n, feed.threads, |i| {
        bounder.feature_box(image(ds, i).view(), f64::from(eps))
    });
    let mut lower = Array2::<f32>::zeros((n, d));
    let mut upper = Array2::<f32>::zeros((n, d));
    for (i, b) in boxes.into_iter().enumerate() {
        let Some((l, u)) = b.filter(|(l, u)| l.len() == d && u.len() == d) else {
            return Err(VerifyError::Invariant("a feature box is missing").into());
        };
        for k in 0..d {
            let (lo, hi) = (l[k] as f32, u[k] as f32);
            lower[[i, k]] = if f64::from(lo) > l[k] { f32_below(lo) } else { lo };
            upper[[i, k]] = if f64::from(hi) < u[k] { -f32_below(-hi) } else { hi };
        }
    }
    Ok((lower, upper))
}

/// The largest f32 below a finite `v`.
fn f32_below(v: f32) -> f32 {
    if v == 0.0 {
        -f32::from_bits(1)
    } else if v > 0.0 {
        f32::from_bits(v.to_bits() - 1)
    } else {
        f32::from_bits(v.to_bits() + 1)
    }
}

/// The head's scores `[n, K]` at feature rows `f` `[n, D]`, in f64 (for checks).
pub fn scores(head: &HeadSite, f: &Array2<f32>) -> Array2<f64> {
    let w = head.weights.mapv(f64::from);
    let b: Array1<f64> = head.bias.mapv(f64::from);
    f.mapv(f64::from).dot(&w.t()) + &b
}

#[cfg(test)]
mod tests {
    use super::f32_below;

    #[test]
    fn f32_below_steps_down_one_unit_in_the_last_place() {
        for v in [1.0f32, -1.0, 3.5e-3, -7.25e4, f32::MIN_POSITIVE, -f32::MIN_POSITIVE] {
            let b = f32_below(v);
            assert!(b < v, "{b} !< {v}");
            assert!(f64::from(v) - f64::from(b) <= f64::from(v).abs() * 2.0 * f64::from(f32::EPSILON));
        }
        assert!(f32_below(0.0) < 0.0 && f32_below(0.0) > -1e-44);
    }
}
