//! The hybrid model (LH in Guidotti & Leofante, 2020): the classifier's convolutional
//! feature extractor followed by a one-vs-rest linear SVM fitted on its features,
//! written back as extractor + Flatten + Gemm; and the kernel hybrid (KH), whose head
//! is a linear SVM on the Nyström features of an RBF kernel ([`crate::svm::kernel`]),
//! written back as extractor + Flatten + Nyström map + Gemm.
//!
//! The `*_on_features` functions fit on features already extracted, so that one
//! extraction serves both hybrids.

use std::path::{Path, PathBuf};
use std::time::Instant;

use ndarray::{Array2, ArrayView2};

use crate::data::Dataset;
use crate::engine::Engine;
use crate::error::Result;
use crate::features::{argmax_rows, collect, Accuracy, Feed};
use crate::head::Head;
use crate::onnx::surgery::{extractor, hybrid, kernel_hybrid, set_metadata, KernelMap};
use crate::onnx::{find_cut, Cut, ModelProto};
use crate::svm::{self, FitReport, LinearSvm, Nystrom, NystromSettings, SvmParams, Tuning};

/// Training data a head cannot be fitted on.
#[derive(Debug, thiserror::Error)]
pub enum FitError {
    /// No training image.
    #[error("{}: the training set is empty", .0.display())]
    Empty(PathBuf),
    /// Fewer than two classes present.
    #[error(
        "{}: the {n} training images hold {only}; a linear head needs samples of at least two classes (image \
         folders list their images class by class, so the first images of one hold the first classes only)",
        .data.display()
    )]
    OneClass {
        /// The training set.
        data: PathBuf,
        /// Its images.
        n: usize,
        /// The one class present, or `none`.
        only: String,
    },
    /// Features that do not match their data set (training or validation) row for row.
    #[error("{}: {rows} feature rows for {n} images", .data.display())]
    Rows {
        /// The data set.
        data: PathBuf,
        /// Feature rows given.
        rows: usize,
        /// Its images.
        n: usize,
    },
    /// The same features for every image: nothing to separate.
    #[error(
        "{}: the extractor gives every one of the {n} training images the same features at {tensor} ({what}), so \
         an SVM has nothing to separate",
        .data.display()
    )]
    Degenerate {
        /// The training set.
        data: PathBuf,
        /// Its images.
        n: usize,
        /// The cut tensor.
        tensor: String,
        /// `all zero` or `identical rows`.
        what: &'static str,
    },
    /// Validation images that the search for C cannot score on.
    #[error("{}: {error}", .data.display())]
    Validation {
        /// The validation set.
        data: PathBuf,
        /// Why.
        error: crate::svm::SvmError,
    },
    /// The Nyström map could not be fitted.
    #[error("{}: features at '{tensor}': {error}", .data.display())]
    Kernel {
        /// The training set.
        data: PathBuf,
        /// The cut tensor.
        tensor: String,
        /// Why.
        error: crate::svm::KernelError,
    },
}

/// Settings of a hybrid fit.
#[derive(Debug, Clone, Default)]
pub struct FitSettings {
    /// Cut at this tensor instead of the last pooling output.
    pub at: Option<String>,
    /// The SVM's settings (C, loss, tolerance, seed, solver).
    pub svm: SvmParams,
    /// The choice of C on a validation split and the standardisation of what the SVM
    /// reads (the features, or a kernel head's Nyström features), folded into the
    /// written Gemm.
    pub tuning: Tuning,
    /// How images are fed to the extractor.
    pub feed: Feed,
    /// The kernel hybrid's Nyström map; `None` fits the linear hybrid.
    pub kernel: Option<NystromSettings>,
}

/// A fitted hybrid, linear or kernel, and how it was obtained.
#[derive(Debug)]
pub struct Fitted {
    /// The hybrid ONNX model, ready to save.
    pub model: ModelProto,
    /// Its head, as the model holds it (a kernel head in the model's units).
    pub head: Head,
    /// Where the original was cut.
    pub cut: Cut,
    /// Number of extractor features D.
    pub feature_dim: usize,
    /// The SVM solver's report (iterations, violations, duality gaps).
    pub report: FitReport,
    /// Accuracy of the hybrid on the training set.
    pub train_accuracy: f64,
    /// Seconds spent extracting features (0 when they were given).
    pub extract_seconds: f64,
    /// Seconds spent fitting the Nyström map and mapping the training features (0 for
    /// a linear head).
    pub map_seconds: f64,
    /// Training samples used.
    pub n_train: usize,
    /// Classes of the head with no training sample (their hyperplanes only push
    /// away: such a hybrid never predicts them).
    pub missing_classes: Vec<usize>,
}

/// Cuts `model`, extracts features of `train` with `engine`, fits the head
/// ([`fit_on_features`]) and builds the hybrid. The hybrid records its provenance in
/// `metadata_props`.
pub fn fit(model: &ModelProto, train: &Dataset, engine: &dyn Engine, settings: &FitSettings) -> Result<Fitted> {
    fit_images(model, train, None, engine, settings)
}

/// [`fit`] with the search for C (`settings.tuning.search`, which must be set)
/// scoring its candidates on `validation`, images given apart (say, images the
/// network was not trained on), instead of on a held-out share of `train`: each
/// candidate is fitted on all of `train`, and the chosen one is the head
/// ([`svm::train_validated`]). `extract_seconds` covers both extractions.
pub fn fit_validated(
    model: &ModelProto,
    train: &Dataset,
    validation: &Dataset,
    engine: &dyn Engine,
    settings: &FitSettings,
) -> Result<Fitted> {
    fit_images(model, train, Some(validation), engine, settings)
}

fn fit_images(
    model: &ModelProto,
    train: &Dataset,
    validation: Option<&Dataset>,
    engine: &dyn Engine,
    settings: &FitSettings,
) -> Result<Fitted> {
    // Checked before the (long) extraction too.
    match validation {
        Some(v) => check_validation(model, train, v)?,
        None => {
            class_counts(model, train)?;
        }
    }
    let (cut, features, mut extract_seconds) = extract(model, train, engine, settings.at.as_deref(), &settings.feed)?;
    let held = match validation {
        Some(v) => {
            let (_, held, seconds) = extract(model, v, engine, Some(&cut.tensor), &settings.feed)?;
            extract_seconds += seconds;
            Some((held, v))
        }
        None => None,
    };
    let held = held.as_ref().map(|(x, v)| (x.view(), *v));
    let mut fitted = fit_features(model, &cut, features.view(), train, held, settings)?;
    fitted.extract_seconds = extract_seconds;
    Ok(fitted)
}

/// What [`fit`] does after the extraction, on `features` `[N, D]` (the extractor of
/// `model` at `cut` run over `train`, row i being image i): the linear SVM on the
/// features (LH), or with `settings.kernel` the Nyström map of the RBF kernel and the
/// linear SVM on the mapped features (KH, written extractor → Nyström map → Gemm by
/// [`crate::onnx::surgery::kernel_hybrid`]; the landmarks are drawn with the kernel
/// settings' seed). `extract_seconds` is 0 in the outcome; `settings.at` is not used
/// (the cut is given).
pub fn fit_on_features(
    model: &ModelProto,
    cut: &Cut,
    features: ArrayView2<f32>,
    train: &Dataset,
    settings: &FitSettings,
) -> Result<Fitted> {
    fit_features(model, cut, features, train, None, settings)
}

/// [`fit_on_features`] with the search for C (`settings.tuning.search`, which must be
/// set) scoring its candidates on `features_validation` `[M, D]`, the same extractor
/// run over `validation`, images given apart: what [`fit_validated`] does after its
/// extractions.
pub fn fit_on_features_validated(
    model: &ModelProto,
    cut: &Cut,
    features: ArrayView2<f32>,
    train: &Dataset,
    features_validation: ArrayView2<f32>,
    validation: &Dataset,
    settings: &FitSettings,
) -> Result<Fitted> {
    fit_features(
        model,
        cut,
        features,
        train,
        Some((features_validation, validation)),
        settings,
    )
}

/// Refuses validation images that the search for C could not score: none, or labels
/// outside the classes of the hybrid `model` and `train` make. Checked by the fits;
/// callers with a long extraction ahead check first.
pub fn check_validation(model: &ModelProto, train: &Dataset, validation: &Dataset) -> Result<()> {
    check_validation_classes(class_counts(model, train)?.len(), validation)
}

/// [`check_validation`] for a hybrid of `classes` classes.
fn check_validation_classes(classes: usize, validation: &Dataset) -> Result<()> {
    if validation.is_empty() {
        return Err(FitError::Empty(validation.source.clone()).into());
    }
    validation.check_labels(classes)?;
    Ok(())
}

/// [`fit_on_features`], with the features of validation images given apart for the
/// search for C.
fn fit_features(
    model: &ModelProto,
    cut: &Cut,
    features: ArrayView2<f32>,
    train: &Dataset,
    validation: Option<(ArrayView2<f32>, &Dataset)>,
    settings: &FitSettings,
) -> Result<Fitted> {
    let counts = class_counts(model, train)?;
    check_rows(features, train, cut)?;
    if let Some((held, ds)) = validation {
        check_validation_classes(counts.len(), ds)?;
        check_count(held, ds)?;
    }
    let n_classes = counts.len();
    let labels = class_indices(train);
    let started = Instant::now();
    let map = match &settings.kernel {
        Some(nystrom) => Some(Nystrom::fit(features, nystrom).map_err(|error| FitError::Kernel {
            data: train.source.clone(),
            tensor: cut.tensor.clone(),
            error,
        })?),
        None => None,
    };
    let phi = map.as_ref().map(|m| m.transform(features));
    // The validation images as the SVM reads them: mapped like the training images.
    let held = validation.map(|(held, ds)| (map.as_ref().map(|m| m.transform(held)), held, class_indices(ds), ds));
    let map_seconds = if map.is_some() {
        started.elapsed().as_secs_f64()
    } else {
        0.0
    };
    let x = phi.as_ref().map_or(features, |phi| phi.view());
    let validation = held.as_ref().map(|(mapped, held, labels, ds)| {
        let x = mapped.as_ref().map_or(*held, |m| m.view());
        (svm::Validation { x, y: labels }, ds.source.as_path())
    });
    let (svm, report) = fit_svm(x, &labels, validation, n_classes, settings)?;
    let train_accuracy = Accuracy::of(&svm.predict(x), &train.labels).accuracy;
    let head = match map {
        Some(map) => Head::kernel(map, svm),
        None => Head::linear(svm),
    };
    let out = match &head.map {
        Some(kernel) => {
            let map = &kernel.nystrom;
            let projection = map.projection().mapv(|v| v * kernel.scale);
            let onnx_map = KernelMap {
                landmarks: map.landmark_matrix(),
                landmark_norms: map.landmark_norms(),
                gamma: map.gamma(),
                projection: projection.view(),
            };
            let mut out = kernel_hybrid(
                model,
                cut,
                &onnx_map,
                head.linear.weights.view(),
                head.linear.bias.view(),
            )?;
            set_provenance(&mut out, KERNEL_HEAD, cut, train, settings, &report);
            let seed = settings.kernel.as_ref().map_or(0, |k| k.seed);
            for (key, value) in [
                ("nnmend.kernel", "rbf".to_string()),
                ("nnmend.kernel.landmarks", map.landmarks().to_string()),
                ("nnmend.kernel.gamma", map.gamma().to_string()),
                ("nnmend.kernel.dim", map.dim().to_string()),
                ("nnmend.kernel.seed", seed.to_string()),
                ("nnmend.kernel.scale", kernel.scale.to_string()),
            ] {
                set_metadata(&mut out, key, &value);
            }
            out
        }
        None => {
            let mut out = hybrid(model, cut, head.linear.weights.view(), head.linear.bias.view())?;
            set_provenance(&mut out, "linear-svm", cut, train, settings, &report);
            out
        }
    };
    Ok(Fitted {
        missing_classes: missing(&counts),
        model: out,
        head,
        feature_dim: features.ncols(),
        cut: cut.clone(),
        report,
        train_accuracy,
        extract_seconds: 0.0,
        map_seconds,
        n_train: labels.len(),
    })
}

/// The value of `nnmend.head` in a kernel hybrid's `metadata_props`.
pub const KERNEL_HEAD: &str = "kernel-svm-nystrom";

/// Training images per class of `model`; refuses an empty set, labels outside the
/// model's classes, or fewer than two classes present.
fn class_counts(model: &ModelProto, train: &Dataset) -> Result<Vec<usize>> {
    if train.is_empty() {
        return Err(FitError::Empty(train.source.clone()).into());
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
        return Err(FitError::OneClass {
            data: train.source.clone(),
            n: train.len(),
            only,
        }
        .into());
    }
    Ok(counts)
}

/// Refuses features with another number of rows than `ds` has images.
fn check_count(features: ArrayView2<f32>, ds: &Dataset) -> Result<()> {
    if features.nrows() == ds.len() {
        return Ok(());
    }
    Err(FitError::Rows {
        data: ds.source.clone(),
        rows: features.nrows(),
        n: ds.len(),
    }
    .into())
}

/// Refuses features that do not match `train` row for row, or that are the same for
/// every image (nothing to separate).
fn check_rows(features: ArrayView2<f32>, train: &Dataset, cut: &Cut) -> Result<()> {
    check_count(features, train)?;
    if let Some(zero) = identical_rows(features) {
        let what = if zero { "all zero" } else { "identical rows" };
        return Err(FitError::Degenerate {
            data: train.source.clone(),
            n: train.len(),
            tensor: cut.tensor.clone(),
            what,
        }
        .into());
    }
    Ok(())
}

/// The SVM on `x`, its search for C scored on `validation` (the rows as the SVM reads
/// them, and the file they came from) when one is given.
fn fit_svm(
    x: ArrayView2<f32>,
    labels: &[usize],
    validation: Option<(svm::Validation<'_>, &Path)>,
    n_classes: usize,
    settings: &FitSettings,
) -> Result<(LinearSvm, FitReport)> {
    let spinner = crate::progress::spinner("svm", settings.feed.progress);
    // The SVM's classes are shared out among as many workers as the extraction's.
    let params = SvmParams {
        threads: settings.svm.threads.or(Some(settings.feed.threads)),
        ..settings.svm.clone()
    };
    let fitted = match validation {
        Some((v, source)) => {
            svm::train_validated(x, labels, v, n_classes, &params, &settings.tuning).map_err(|e| match e {
                svm::SvmError::Validation(error) => FitError::Validation {
                    data: source.to_path_buf(),
                    error: *error,
                }
                .into(),
                e => crate::Error::from(e),
            })
        }
        None => svm::train(x, labels, n_classes, &params, &settings.tuning).map_err(crate::Error::from),
    };
    spinner.finish_and_clear();
    fitted
}

/// The labels of `ds` as class indices (checked against the classes before).
fn class_indices(ds: &Dataset) -> Vec<usize> {
    ds.labels.iter().map(|&l| l as usize).collect()
}

fn missing(counts: &[usize]) -> Vec<usize> {
    (0..counts.len()).filter(|&c| counts[c] == 0).collect()
}

fn set_provenance(
    out: &mut ModelProto,
    head: &str,
    cut: &Cut,
    train: &Dataset,
    settings: &FitSettings,
    report: &FitReport,
) {
    set_metadata(out, "nnmend.version", crate::provenance::VERSION);
    set_metadata(out, "nnmend.commit", crate::provenance::COMMIT);
    set_metadata(out, "nnmend.head", head);
    set_metadata(out, "nnmend.svm.c", &report.c.to_string());
    set_metadata(out, "nnmend.svm.loss", &format!("{:?}", settings.svm.loss));
    if let Some(solver) = report.solver() {
        set_metadata(out, "nnmend.svm.solver", solver.name());
    }
    if let Some(selection) = &report.selection {
        match selection.holdout {
            Some(share) => set_metadata(out, "nnmend.svm.c.holdout", &share.to_string()),
            None => set_metadata(
                out,
                "nnmend.svm.c.validation.samples",
                &selection.n_validation.to_string(),
            ),
        }
    }
    if report.scaling.is_some() {
        set_metadata(out, "nnmend.svm.standardised", "true");
    }
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

/// Runs `model` on every image of `ds` and counts correct argmax predictions.
pub fn evaluate(model: &ModelProto, ds: &Dataset, engine: &dyn Engine, feed: &Feed) -> Result<(Accuracy, Vec<usize>)> {
    let session = engine.prepare(model)?;
    let scores = collect(session.as_ref(), ds, feed, 0, "eval")?;
    ds.check_labels(scores.ncols())?;
    let predicted = argmax_rows(&scores);
    Ok((Accuracy::of(&predicted, &ds.labels), predicted))
}
