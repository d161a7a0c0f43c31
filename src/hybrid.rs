//! The hybrid model (LH in Guidotti & Leofante, 2020): the classifier's convolutional
//! feature extractor followed by a one-vs-rest linear SVM fitted on its features,
//! written back as extractor + Flatten + Gemm.

use std::time::Instant;

use ndarray::Array2;

use crate::data::Dataset;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::features::{argmax_rows, collect, Feed};
use crate::onnx::surgery::{extractor, hybrid, set_metadata};
use crate::onnx::{find_cut, Cut, ModelProto};
use crate::svm::{self, FitReport, LinearSvm, SvmParams};

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
    let (cut, features, extract_seconds) = extract(model, train, engine, settings.at.as_deref(), &settings.feed)?;
    if let Some(zero) = identical_rows(&features) {
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
    let labels: Vec<usize> = train.labels.iter().map(|&l| l as usize).collect();
    let spinner = crate::progress::spinner("svm", settings.feed.progress);
    let fitted = svm::fit(features.view(), &labels, n_classes, &settings.svm);
    spinner.finish_and_clear();
    let (svm, report) = fitted?;
    let predicted = svm.predict(features.view());
    let correct = predicted.iter().zip(&labels).filter(|(p, l)| p == l).count();
    let mut out = hybrid(model, &cut, svm.weights.view(), svm.bias.view())?;
    set_metadata(&mut out, "nnmend.version", env!("CARGO_PKG_VERSION"));
    set_metadata(&mut out, "nnmend.head", "linear-svm");
    set_metadata(&mut out, "nnmend.svm.c", &settings.svm.c.to_string());
    set_metadata(&mut out, "nnmend.svm.loss", &format!("{:?}", settings.svm.loss));
    set_metadata(&mut out, "nnmend.cut.tensor", &cut.tensor);
    set_metadata(&mut out, "nnmend.train.samples", &train.len().to_string());
    set_metadata(&mut out, "nnmend.train.fingerprint", &train.fingerprint());
    let missing_classes = (0..n_classes).filter(|&c| counts[c] == 0).collect();
    Ok(FitOutcome {
        missing_classes,
        model: out,
        feature_dim: features.ncols(),
        cut,
        svm,
        report,
        train_accuracy: correct as f64 / labels.len() as f64,
        extract_seconds,
        n_train: labels.len(),
    })
}

/// Whether every sample has the same features (a dead extractor, blank images): a
/// degenerate training set. Says whether those features are all zero.
fn identical_rows(features: &Array2<f32>) -> Option<bool> {
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
