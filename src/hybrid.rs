//! The hybrid model (LH in Guidotti & Leofante, 2020): the classifier's convolutional
//! feature extractor followed by a one-vs-rest linear SVM fitted on its features,
//! written back as extractor + Flatten + Gemm; and the kernel hybrid (KH), whose head
//! is a linear SVM on the Nyström features of an RBF kernel ([`crate::svm::kernel`]),
//! written back as extractor + Flatten + Nyström map + Gemm.
//!
//! The `*_on_features` functions fit on features already extracted, so that one
//! extraction serves both hybrids.

use std::time::Instant;

use ndarray::{Array2, ArrayView2};

use crate::data::Dataset;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::features::{argmax_rows, collect, Feed};
use crate::onnx::surgery::{extractor, hybrid, kernel_hybrid, set_metadata, KernelMap};
use crate::onnx::{find_cut, Cut, ModelProto};
use crate::svm::{self, FitReport, LinearSvm, Nystrom, NystromSettings, SvmParams};

/// Settings of a hybrid fit.
#[derive(Debug, Clone, Default)]
pub struct FitSettings {
    /// Cut at this tensor instead of the last pooling output.
    pub at: Option<String>,
    /// The SVM's settings (C, loss, tolerance, seed).
    pub svm: SvmParams,
    /// How images are fed to the extractor.
    pub feed: Feed,
}

/// A fitted hybrid and how it was obtained.
#[derive(Debug)]
pub struct FitOutcome {
    /// The hybrid ONNX model, ready to save.
    pub model: ModelProto,
    /// Where the original was cut.
    pub cut: Cut,
    /// Number of features D.
    pub feature_dim: usize,
    /// The SVM head.
    pub svm: LinearSvm,
    /// The SVM solver's report (iterations, violations, duality gaps).
    pub report: FitReport,
    /// Accuracy of the hybrid on the training set.
    pub train_accuracy: f64,
    /// Seconds spent extracting features.
    pub extract_seconds: f64,
    /// Training samples used.
    pub n_train: usize,
    /// Classes of the head with no training sample (their hyperplanes only push
    /// away: such a hybrid never predicts them).
    pub missing_classes: Vec<usize>,
}

/// Cuts `model`, extracts features of `train` with `engine`, fits the SVM and builds
/// the hybrid. The hybrid records its provenance in `metadata_props`.
pub fn fit(model: &ModelProto, train: &Dataset, engine: &dyn Engine, settings: &FitSettings) -> Result<FitOutcome> {
    // Checked before the (long) extraction too.
    class_counts(model, train)?;
    let (cut, features, extract_seconds) = extract(model, train, engine, settings.at.as_deref(), &settings.feed)?;
    let mut outcome = fit_linear_on_features(model, &cut, features.view(), train, settings)?;
    outcome.extract_seconds = extract_seconds;
    Ok(outcome)
}

/// What [`fit`] does after the extraction: fits the linear SVM on `features` `[N, D]`
/// (the extractor of `model` at `cut` run over `train`, row i being image i) and builds
/// the hybrid. `extract_seconds` is 0 in the outcome; `settings.at` is not used (the
/// cut is given).
pub fn fit_linear_on_features(
    model: &ModelProto,
    cut: &Cut,
    features: ArrayView2<f32>,
    train: &Dataset,
    settings: &FitSettings,
) -> Result<FitOutcome> {
    let counts = class_counts(model, train)?;
    check_rows(features, train, cut)?;
    let n_classes = counts.len();
    let labels: Vec<usize> = train.labels.iter().map(|&l| l as usize).collect();
    let (svm, report) = fit_svm(features, &labels, n_classes, settings)?;
    let train_accuracy = accuracy(&svm.predict(features), &labels);
    let mut out = hybrid(model, cut, svm.weights.view(), svm.bias.view())?;
    set_provenance(&mut out, "linear-svm", cut, train, settings);
    Ok(FitOutcome {
        missing_classes: missing(&counts),
        model: out,
        feature_dim: features.ncols(),
        cut: cut.clone(),
        svm,
        report,
        train_accuracy,
        extract_seconds: 0.0,
        n_train: labels.len(),
    })
}

/// A fitted kernel hybrid (KH) and how it was obtained.
#[derive(Debug)]
pub struct KernelFitOutcome {
    /// The kernel hybrid ONNX model, ready to save.
    pub model: ModelProto,
    /// Where the original was cut.
    pub cut: Cut,
    /// Number of extractor features D.
    pub feature_dim: usize,
    /// The Nyström map from the D features to the head's [`Nystrom::dim`] inputs.
    pub nystrom: Nystrom,
    /// The linear SVM on the Nyström features `nystrom.transform(x)`. The ONNX model
    /// writes the same head in other units (φ·s and W/s, see `nnmend.kernel.scale`):
    /// the same scores.
    pub svm: LinearSvm,
    /// The SVM solver's report.
    pub report: FitReport,
    /// Accuracy of the kernel hybrid on the training set.
    pub train_accuracy: f64,
    /// Seconds spent extracting features (0 when they were given).
    pub extract_seconds: f64,
    /// Seconds spent fitting the Nyström map and mapping the training features.
    pub map_seconds: f64,
    /// Training samples used.
    pub n_train: usize,
    /// Classes with no training sample (never predicted).
    pub missing_classes: Vec<usize>,
}

/// The kernel hybrid on precomputed `features` `[N, D]` (the extractor of `model` at
/// `cut` run over `train`): fits the Nyström map of the RBF kernel on them, the linear
/// SVM on the mapped features φ, and writes extractor → Nyström map → Gemm
/// ([`crate::onnx::surgery::kernel_hybrid`]). The landmarks are drawn with
/// `nystrom.seed`; the SVM uses `settings.svm`.
pub fn fit_kernel_on_features(
    model: &ModelProto,
    cut: &Cut,
    features: ArrayView2<f32>,
    train: &Dataset,
    settings: &FitSettings,
    nystrom: &NystromSettings,
) -> Result<KernelFitOutcome> {
    let counts = class_counts(model, train)?;
    check_rows(features, train, cut)?;
    let n_classes = counts.len();
    let labels: Vec<usize> = train.labels.iter().map(|&l| l as usize).collect();
    let started = Instant::now();
    let map = Nystrom::fit(features, nystrom)
        .map_err(|e| Error::Mismatch(format!("{}: features at '{}': {e}", train.source.display(), cut.tensor)))?;
    let phi = map.transform(features);
    let map_seconds = started.elapsed().as_secs_f64();
    let (svm, report) = fit_svm(phi.view(), &labels, n_classes, settings)?;
    let train_accuracy = accuracy(&svm.predict(phi.view()), &labels);
    let scale = export_scale(map.dim());
    let projection = map.projection().mapv(|v| v * scale);
    let weights = svm.weights.mapv(|v| v / scale);
    let kernel = KernelMap {
        landmarks: map.landmark_matrix(),
        landmark_norms: map.landmark_norms(),
        gamma: map.gamma(),
        projection: projection.view(),
    };
    let mut out = kernel_hybrid(model, cut, &kernel, weights.view(), svm.bias.view())?;
    set_provenance(&mut out, KERNEL_HEAD, cut, train, settings);
    set_metadata(&mut out, "nnmend.kernel", "rbf");
    set_metadata(&mut out, "nnmend.kernel.landmarks", &map.landmarks().to_string());
    set_metadata(&mut out, "nnmend.kernel.gamma", &map.gamma().to_string());
    set_metadata(&mut out, "nnmend.kernel.dim", &map.dim().to_string());
    set_metadata(&mut out, "nnmend.kernel.seed", &nystrom.seed.to_string());
    set_metadata(&mut out, "nnmend.kernel.scale", &scale.to_string());
    Ok(KernelFitOutcome {
        missing_classes: missing(&counts),
        model: out,
        feature_dim: features.ncols(),
        cut: cut.clone(),
        nystrom: map,
        svm,
        report,
        train_accuracy,
        extract_seconds: 0.0,
        map_seconds,
        n_train: labels.len(),
    })
}

/// Cuts `model`, extracts features of `train` with `engine`, and fits the kernel
/// hybrid on them ([`fit_kernel_on_features`]).
pub fn fit_kernel(
    model: &ModelProto,
    train: &Dataset,
    engine: &dyn Engine,
    settings: &FitSettings,
    nystrom: &NystromSettings,
) -> Result<KernelFitOutcome> {
    class_counts(model, train)?;
    let (cut, features, extract_seconds) = extract(model, train, engine, settings.at.as_deref(), &settings.feed)?;
    let mut outcome = fit_kernel_on_features(model, &cut, features.view(), train, settings, nystrom)?;
    outcome.extract_seconds = extract_seconds;
    Ok(outcome)
}

/// The unit in which the kernel hybrid writes its Nyström features: the power of two
/// nearest √r for r features. φ·φ ≈ k(x, x) = 1, so φ's components are of order 1/√r;
/// the repair LPs price a unit of weight change like a unit of slack, and on features
/// that small every change costs more than the slack it saves (nothing would be
/// repaired). The graph computes s·φ with P·s and the Gemm holds W/s: a power of two
/// scales f32 values exactly, so the scores are bit for bit those of W on φ.
fn export_scale(r: usize) -> f32 {
    let exponent = (r.max(1) as f64).sqrt().log2().round();
    // r ≤ usize::MAX keeps the exponent below 33.
    2f32.powi(exponent as i32)
}

/// The value of `nnmend.head` in a kernel hybrid's `metadata_props`.
pub const KERNEL_HEAD: &str = "kernel-svm-nystrom";

/// Training images per class of `model`; refuses an empty set, labels outside the
/// model's classes, or fewer than two classes present.
fn class_counts(model: &ModelProto, train: &Dataset) -> Result<Vec<usize>> {
    if train.is_empty() {
        return Err(Error::Mismatch(format!(
            "{}: the training set is empty",
            train.source.display()
        )));
    }
    // The hybrid replaces the model, so it keeps the model's classes: a label outside
    // them is an error in the data (and a label of 10⁹ must not size the head).
    let n_classes = match model_classes(model) {
        Some(k) => {
            train.check_labels(k)?;
            k
        }
        None => {
            train.check_labels(MAX_CLASSES)?;
            train.n_classes()
        }
    };
    let mut counts = vec![0usize; n_classes];
    for &l in &train.labels {
        if let Some(c) = usize::try_from(l).ok().and_then(|l| counts.get_mut(l)) {
            *c += 1;
        }
    }
    let present: Vec<usize> = (0..n_classes).filter(|&c| counts[c] > 0).collect();
    if present.len() < 2 {
        let only = present.first().map_or("none".to_string(), |&c| {
            let name = train
                .classes
                .as_ref()
                .and_then(|n| n.get(c))
                .map_or(String::new(), |n| format!(" ({n})"));
            format!("only class {c}{name}")
        });
        return Err(Error::Mismatch(format!(
            "{}: the {} training images hold {only}; a linear head needs samples of at least two classes \
             (image folders list their images class by class, so --limit N keeps the first classes only: \
             use all of the data, or an .npz of a shuffled subset)",
            train.source.display(),
            train.len()
        )));
    }
    Ok(counts)
}

/// Refuses features that do not match `train` row for row, or that are the same for
/// every image (nothing to separate).
fn check_rows(features: ArrayView2<f32>, train: &Dataset, cut: &Cut) -> Result<()> {
    if features.nrows() != train.len() {
        return Err(Error::Mismatch(format!(
            "{}: {} feature rows for {} training images",
            train.source.display(),
            features.nrows(),
            train.len()
        )));
    }
    if let Some(zero) = identical_rows(features) {
        let what = if zero { "all zero" } else { "identical rows" };
        return Err(Error::Mismatch(format!(
            "{}: the extractor gives every one of the {} training images the same features at {} ({what}), \
             so an SVM has nothing to separate; check --mean/--std against the model's training, and that the \
             images are not blank (or cut elsewhere with --at)",
            train.source.display(),
            train.len(),
            cut.tensor
        )));
    }
    Ok(())
}

fn fit_svm(
    x: ArrayView2<f32>,
    labels: &[usize],
    n_classes: usize,
    settings: &FitSettings,
) -> Result<(LinearSvm, FitReport)> {
    let spinner = crate::progress::spinner("svm", settings.feed.progress);
    let fitted = svm::fit(x, labels, n_classes, &settings.svm);
    spinner.finish_and_clear();
    Ok(fitted?)
}

fn accuracy(predicted: &[usize], labels: &[usize]) -> f64 {
    let correct = predicted.iter().zip(labels).filter(|(p, l)| p == l).count();
    correct as f64 / labels.len().max(1) as f64
}

fn missing(counts: &[usize]) -> Vec<usize> {
    (0..counts.len()).filter(|&c| counts[c] == 0).collect()
}

fn set_provenance(out: &mut ModelProto, head: &str, cut: &Cut, train: &Dataset, settings: &FitSettings) {
    set_metadata(out, "nnmend.version", env!("CARGO_PKG_VERSION"));
    set_metadata(out, "nnmend.head", head);
    set_metadata(out, "nnmend.svm.c", &settings.svm.c.to_string());
    set_metadata(out, "nnmend.svm.loss", &format!("{:?}", settings.svm.loss));
    set_metadata(out, "nnmend.cut.tensor", &cut.tensor);
    set_metadata(out, "nnmend.train.samples", &train.len().to_string());
    set_metadata(out, "nnmend.train.fingerprint", &train.fingerprint());
}

/// Whether every sample has the same features (a dead extractor, blank images): a
/// degenerate training set. Says whether those features are all zero.
fn identical_rows(features: ArrayView2<f32>) -> Option<bool> {
    let mut rows = features.rows().into_iter();
    let first = rows.next()?;
    rows.all(|r| r == first).then(|| first.iter().all(|&v| v == 0.0))
}

/// The most classes a head may have when the model does not declare its own count.
const MAX_CLASSES: usize = 1 << 16;

/// The number of classes `model` declares: the product of its first output's
/// dimensions after the batch (`[N, 10]` and `[N, 10, 1, 1]` both give 10), when they
/// are all fixed.
pub fn model_classes(model: &ModelProto) -> Option<usize> {
    let output = model.graph.as_ref()?.output.first()?;
    let dims = crate::onnx::graph::dims(output)?;
    dims.get(1..)?
        .iter()
        .try_fold(1usize, |acc, d| match d {
            crate::onnx::graph::Dim::Fixed(k) => usize::try_from(*k).ok().and_then(|k| acc.checked_mul(k)),
            _ => None,
        })
        .filter(|&k| k > 0 && dims.len() > 1)
}

/// Cuts `model` (at `at`, or by the default rule) and runs its extractor over `ds`:
/// the cut, the `[N, D]` features, and the seconds the extraction took.
pub fn extract(
    model: &ModelProto,
    ds: &Dataset,
    engine: &dyn Engine,
    at: Option<&str>,
    feed: &Feed,
) -> Result<(Cut, Array2<f32>, f64)> {
    let cut = find_cut(model, at)?;
    let session = engine.prepare(&extractor(model, &cut, None)?)?;
    let started = Instant::now();
    let features = collect(session.as_ref(), ds, feed, 0, "features")?;
    Ok((cut, features, started.elapsed().as_secs_f64()))
}

/// Accuracy of a classifier: how many of `ds`'s images its first output's argmax gets right.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Accuracy {
    /// Images evaluated.
    pub n: usize,
    /// Correctly classified images.
    pub correct: usize,
    /// `correct / n`.
    pub accuracy: f64,
}

/// Runs `model` on every image of `ds` and counts correct argmax predictions.
pub fn evaluate(model: &ModelProto, ds: &Dataset, engine: &dyn Engine, feed: &Feed) -> Result<(Accuracy, Vec<usize>)> {
    let session = engine.prepare(model)?;
    let scores = collect(session.as_ref(), ds, feed, 0, "eval")?;
    ds.check_labels(scores.ncols())?;
    let predicted = argmax_rows(&scores);
    let correct = predicted
        .iter()
        .zip(&ds.labels)
        .filter(|(&p, &l)| p as i64 == l)
        .count();
    let n = ds.len();
    Ok((
        Accuracy {
            n,
            correct,
            accuracy: if n == 0 { 0.0 } else { correct as f64 / n as f64 },
        },
        predicted,
    ))
}
