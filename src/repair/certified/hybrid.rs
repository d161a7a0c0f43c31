//! The certified repair of a hybrid: the balls' feature boxes, the preserved images'
//! features, the program, and the written model checked as `certify` checks it.

use std::sync::Arc;
use std::time::Instant;

use ndarray::{Array2, Axis};

use super::{solve, CertifiedProblem, CertifiedSettings, CertifiedSolution};
use crate::attack::file::Successful;
use crate::data::Dataset;
use crate::engine::Engine;
use crate::error::Result;
use crate::features::{collect, Feed};
use crate::head::HeadKind;
use crate::hybrid::evaluate;
use crate::onnx::bounds::Margin;
use crate::onnx::head;
use crate::onnx::surgery::extractor;
use crate::onnx::{find_cut, ModelProto};
use crate::repair::hybrid::{originals, pool};
use crate::repair::RepairError;
use crate::svm::LinearSvm;
use crate::verify::BoxCache;

/// What a certified repair of a hybrid does.
#[derive(Debug, Clone, Copy)]
pub struct CertifiedRepairSettings {
    /// The radius of the balls, in `[0, 1]` pixel units.
    pub eps: f32,
    /// The worst margin wanted over each ball.
    pub margin: f64,
    /// Price of a unit of a ball's shortfall.
    pub ball_price: f64,
    /// Price of a unit of a preserved image's loss of margin.
    pub keep_price: f64,
    /// The margin a preserved image keeps: this, or its own when that is smaller.
    pub keep_margin: f64,
    /// Training images, evenly spaced, whose margins are kept
    /// ([`crate::repair::preservation_rows`]).
    pub preserve: usize,
    /// Whether the bias may change.
    pub repair_bias: bool,
    /// The rounding margin of the bounds.
    pub bounds: Margin,
    /// Feature boxes from CROWN (back-substitution through the extractor, a linear
    /// hybrid only) instead of interval bounds; the check then certifies as
    /// `certify --bounds crown` does.
    pub crown: bool,
    /// The solve.
    pub solve: CertifiedSettings,
}

/// The worst margin a certified repair asks of each ball by default: small, since the
/// boxes are wide and any positive margin certifies; it covers the head's own f32
/// rounding, which the check subtracts.
pub const CERTIFY_MARGIN: f64 = 0.1;

/// The price of a unit of a ball's shortfall by default: high enough that a ball stays
/// uncertified only when certifying it costs far more than the others did (chosen on a
/// validation split, docs/RESULTS.md).
pub const BALL_PRICE: f64 = 10.0;

/// Training images a certified repair preserves by default: ten times a margin
/// repair's, since its change is larger and reaches more unseen images; on the
/// validation split they lowered the drawdown at the price of three to four times the
/// LP (docs/RESULTS.md).
pub const CERTIFY_PRESERVE: usize = 10_000;

/// The margin a preserved image keeps by default (its own when smaller): the gap
/// between the label's score and another's that a one-vs-rest SVM's hinges ask of its
/// training images (+1 against −1), so that the repair does not wear down what the fit
/// left. On the validation split, with 10,000 preserved images, 2 lost fewer unseen
/// images than 0.1 or 1, and 3 no fewer (docs/RESULTS.md).
pub const KEEP_MARGIN: f64 = 2.0;

impl CertifiedRepairSettings {
    /// The defaults at radius `eps`: the constants above, preserved images' slack
    /// priced as a margin repair's ([`crate::repair::MarginOptions`]), the weights alone
    /// changing, interval boxes, the default rounding margin and solve.
    pub fn new(eps: f32) -> Self {
        Self {
            eps,
            margin: CERTIFY_MARGIN,
            ball_price: BALL_PRICE,
            keep_price: crate::repair::MarginOptions::default().keep_price,
            keep_margin: KEEP_MARGIN,
            preserve: CERTIFY_PRESERVE,
            repair_bias: false,
            bounds: Margin::default(),
            crown: false,
            solve: CertifiedSettings::default(),
        }
    }
}

/// A hybrid repaired so that its balls are certified, and the figures of its repair.
#[derive(Debug, Clone)]
pub struct CertifiedRepair {
    /// The repaired model.
    pub model: ModelProto,
    /// Linear or kernel hybrid.
    pub head: HeadKind,
    /// Width of the features the head reads.
    pub features: usize,
    /// Balls.
    pub balls: usize,
    /// Preserved images.
    pub preserved: usize,
    /// The program's solution.
    pub solution: CertifiedSolution,
    /// The balls `certify` certifies before the repair.
    pub certified_before: usize,
    /// The balls `certify` certifies in the written model.
    pub certified_after: usize,
    /// Σ|ΔW| + Σ|Δb| of the written (f32) head.
    pub l1: f64,
    /// max |ΔW|, |Δb|.
    pub linf: f64,
    /// Seconds spent on the balls' feature bounds.
    pub bounds_seconds: f64,
    /// Seconds in all, the checks included.
    pub seconds: f64,
}

/// Repairs the head of `hybrid` so that the ε-ball (clipped to `[0, 1]`) around every
/// image of `balls` is classified right with `settings.margin` over its feature box,
/// while `settings.preserve` images of `clean` keep their margins (see the module
/// docs). The written model is then certified on `balls` as `nnmend certify` would:
/// [`CertifiedRepair::certified_after`] counts what that check found, not what the
/// program promised.
pub fn repair_certified(
    hybrid: &ModelProto,
    balls: &Dataset,
    clean: &Dataset,
    engine: &dyn Engine,
    feed: &Feed,
    settings: &CertifiedRepairSettings,
) -> Result<CertifiedRepair> {
    let started = Instant::now();
    let site = head::find(hybrid)?;
    let (k, d) = site.weights.dim();
    if balls.is_empty() {
        return Err(RepairError::NoSamples.into());
    }
    let ball_labels = crate::repair::class_indices(&balls.labels, k)?;
    // The balls' CROWN boxes serve the program and both checks below.
    let cache = settings.crown.then(|| Arc::new(BoxCache::default()));
    let boxes = if settings.crown {
        let (lower, upper) = crate::verify::crown_feature_bounds(
            hybrid,
            engine,
            balls,
            settings.eps,
            settings.bounds,
            feed,
            cache.clone(),
        )?;
        crate::verify::Bounds {
            value: Array2::zeros((0, d)),
            lower,
            upper,
        }
    } else {
        crate::verify::feature_bounds(hybrid, engine, balls, settings.eps, feed, settings.bounds)?
    };
    let bounds_seconds = started.elapsed().as_secs_f64();
    if boxes.lower.dim() != (balls.len(), d) {
        return Err(RepairError::Shape(format!(
            "the feature bounds are {:?}, the head reads {d} features",
            boxes.lower.dim()
        ))
        .into());
    }
    let kept = clean
        .select(&crate::repair::preservation_rows(clean.len(), settings.preserve))
        .ok_or_else(|| RepairError::Shape("a preserved row is out of range".into()))?;
    let kept_features = if kept.is_empty() {
        Array2::zeros((0, d))
    } else {
        let cut = find_cut(hybrid, Some(&site.input))?;
        let session = engine.prepare(&extractor(hybrid, &cut, None)?)?;
        collect(session.as_ref(), &kept, feed, 0, "features")?
    };
    let kept_labels = crate::repair::class_indices(&kept.labels, k)?;
    let lower = boxes.lower.mapv(f64::from);
    let upper = boxes.upper.mapv(f64::from);
    let points = kept_features.mapv(f64::from);
    let centre = ndarray::concatenate(Axis(0), &[((&lower + &upper) / 2.0).view(), points.view()])
        .map_err(|e| RepairError::Shape(format!("stacking the balls and the preserved images: {e}")))?;
    let mut radius = Array2::<f64>::zeros(centre.dim());
    radius
        .slice_mut(ndarray::s![..balls.len(), ..])
        .assign(&((&upper - &lower) / 2.0));
    let labels: Vec<usize> = ball_labels.iter().chain(&kept_labels).copied().collect();
    let w = site.weights.mapv(f64::from);
    let b = site.bias.mapv(f64::from);
    let current = crate::repair::margin::margins((points.dot(&w.t()) + &b).view(), &kept_labels);
    let margin: Vec<f64> = std::iter::repeat_n(settings.margin, balls.len())
        .chain(current.iter().map(|&m| m.min(settings.keep_margin)))
        .collect();
    let price: Vec<f64> = std::iter::repeat_n(settings.ball_price, balls.len())
        .chain(std::iter::repeat_n(settings.keep_price, kept.len()))
        .collect();
    let problem = CertifiedProblem {
        weights: w.view(),
        bias: b.view(),
        centre: centre.view(),
        radius: radius.view(),
        labels: &labels,
        margin: &margin,
        price: &price,
        repair_bias: settings.repair_bias,
    };
    let mut solve_settings = settings.solve;
    if solve_settings.threads == 0 {
        solve_settings.threads = u32::try_from(feed.threads.max(1)).unwrap_or(1);
    }
    // A solve that did not end usable leaves the head as it was; the caller reads
    // its status and decides (`repair` writes no model then).
    let solution = solve(&problem, &solve_settings);
    let repaired = LinearSvm {
        weights: solution.weights.mapv(|v| v as f32),
        bias: solution.bias.mapv(|v| v as f32),
    };
    let (l1, linf) = crate::repair::change(&repaired, &site.linear());
    let provenance = vec![
        ("nnmend.repair.mode", "certified".to_string()),
        ("nnmend.repair.head", site.kind.name().to_string()),
        ("nnmend.repair.eps", settings.eps.to_string()),
        ("nnmend.repair.balls", balls.len().to_string()),
        ("nnmend.repair.objective", format!("{}", solution.objective)),
        ("nnmend.repair.status", format!("{:?}", solution.status).to_lowercase()),
        ("nnmend.repair.bias", settings.repair_bias.to_string()),
        ("nnmend.repair.version", crate::provenance::VERSION.to_string()),
        ("nnmend.repair.commit", crate::provenance::COMMIT.to_string()),
    ];
    let model = head::replace(hybrid, &site, &repaired.weights, &repaired.bias, &provenance)?;
    // The check is `certify`'s own, on the written model and on the original.
    let count = |m: &ModelProto| -> Result<usize> {
        crate::verify::certified_count(
            m,
            engine,
            balls,
            settings.eps,
            settings.bounds,
            settings.crown,
            feed,
            cache.clone(),
        )
    };
    Ok(CertifiedRepair {
        certified_before: count(hybrid)?,
        certified_after: count(&model)?,
        model,
        head: site.kind,
        features: d,
        balls: balls.len(),
        preserved: kept.len(),
        solution,
        l1,
        linf,
        bounds_seconds,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The balls of a certified repair: the clean originals (in `clean`) of the repair
/// samples `adv`, or without them `count` images of `clean` in a seeded random order.
pub fn balls(adv: Option<&Successful>, clean: &Dataset, count: usize, seed: u64) -> Result<Dataset> {
    match adv {
        Some(adv) => {
            let rows = originals(&adv.index, &adv.images.labels, clean)?;
            Ok(clean
                .select(&rows)
                .ok_or_else(|| RepairError::Shape("a repair sample's image is out of range of the data".into()))?)
        }
        None => Ok(pool(clean, count, seed)?.0),
    }
}

/// The certified share of the balls around the first test images, before and after a
/// certified repair.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct HeldOut {
    /// Test images whose balls were checked (the first ones).
    pub n: usize,
    /// The hybrid's certified accuracy on them.
    pub before: f64,
    /// The repaired hybrid's.
    pub after: f64,
}

/// A certified repair measured on test images: the clean accuracy of `hybrid` and of
/// `repaired` on all of `test`, and the share of the balls around the first `limit`
/// test images that each certifies, by the repair's own check (`None` for a limit of 0).
pub fn assess_certified(
    hybrid: &ModelProto,
    repaired: &ModelProto,
    test: &Dataset,
    limit: usize,
    engine: &dyn Engine,
    feed: &Feed,
    settings: &CertifiedRepairSettings,
) -> Result<((f64, f64), Option<HeldOut>)> {
    let accuracy = (
        evaluate(hybrid, test, engine, feed)?.0.accuracy,
        evaluate(repaired, test, engine, feed)?.0.accuracy,
    );
    let first = test.take(limit);
    if first.is_empty() {
        return Ok((accuracy, None));
    }
    let cache = settings.crown.then(|| Arc::new(BoxCache::default()));
    let share = |m: &ModelProto| -> Result<f64> {
        let n = crate::verify::certified_count(
            m,
            engine,
            &first,
            settings.eps,
            settings.bounds,
            settings.crown,
            feed,
            cache.clone(),
        )?;
        Ok(n as f64 / first.len() as f64)
    };
    let held_out = HeldOut {
        n: first.len(),
        before: share(hybrid)?,
        after: share(repaired)?,
    };
    Ok((accuracy, Some(held_out)))
}
