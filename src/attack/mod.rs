//! Adversarial attacks on any classifier nnmend handles: the original network (NN),
//! the hybrid (LH) and the repaired hybrid (RLH).
//!
//! Gradients come from the model's gradient graph ([`crate::onnx::grad`]), run by the
//! same engine as everything else, so the attacks run wherever inference runs. ε is
//! measured in `[0, 1]` pixel space; a mean/std normalisation sits inside the
//! differentiated graph.
//!
//! Counting follows the seed paper's adversarial test sets: an image is replaced by
//! its adversarial example when the clean image was classified correctly and the
//! adversarial one is not (a *success*). So the robust accuracy is the share of images
//! classified correctly both clean and attacked, and the success rate is the share of
//! correctly classified images the attack flips.

mod error;
pub mod fgsm;
pub mod file;
pub mod pgd;
pub mod protocol;
mod target;

use std::ops::Range;
use std::time::Instant;

use ndarray::{ArrayD, Axis, Slice};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::data::{to_nchw, Dataset, Layout, Pixels};
use crate::error::Result;
use crate::features::{argmax_rows, Feed};
pub use crate::onnx::grad::Loss;
pub use error::AttackError;
pub use file::AdversarialFile;
pub use target::{forward_and_shapes, gradient_model, normalization, Gradient, HeadTarget, Target};

/// The attack to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// One signed-gradient step of size ε.
    #[default]
    Fgsm,
    /// Projected gradient descent in the L∞ ball.
    Pgd,
}

/// The PGD step, as a multiple of ε, for `steps` iterations: 2.5 / steps, so that the
/// steps together could cross the ball's diameter and a quarter more.
pub fn step_ratio(steps: usize) -> f32 {
    2.5 / steps.max(1) as f32
}

/// How to attack.
#[derive(Debug, Clone)]
pub struct Settings {
    /// FGSM or PGD.
    pub method: Method,
    /// The radii to attack at, each in `[0, 1]`.
    pub eps: Vec<f32>,
    /// PGD iterations.
    pub steps: usize,
    /// PGD step size as a multiple of ε (the step is `step_ratio · ε`).
    pub step_ratio: f32,
    /// Start PGD from a uniform random point of the ε-ball.
    pub random_start: bool,
    /// Stop moving an image once PGD has misclassified it (its first adversarial
    /// iterate is kept); otherwise every step runs and the last iterate counts.
    pub early_stop: bool,
    /// Seed of the random starts.
    pub seed: u64,
    /// Batching, threads and progress.
    pub feed: Feed,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            method: Method::Fgsm,
            eps: vec![0.1],
            steps: 40,
            step_ratio: step_ratio(40),
            random_start: false,
            early_stop: true,
            seed: 0,
            feed: Feed::default(),
        }
    }
}

/// The figures for one ε.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EpsResult {
    /// The radius.
    pub eps: f32,
    /// Images attacked.
    pub n: usize,
    /// Share of images classified correctly before the attack.
    pub clean_accuracy: f64,
    /// Share classified correctly both before and after the attack.
    pub robust_accuracy: f64,
    /// Share of the correctly classified images the attack flipped.
    pub success_rate: f64,
    /// Correctly classified clean images.
    pub clean_correct: usize,
    /// Images still correct after the attack.
    pub robust_correct: usize,
    /// Successful attacks.
    pub successes: usize,
    /// Seconds spent on this ε (the shared clean pass is counted apart).
    pub seconds: f64,
}

/// The adversarial images found at one ε.
#[derive(Debug, Clone)]
pub struct Adversarial {
    /// The radius.
    pub eps: f32,
    /// One image per input image, in the model's input layout, in `[0, 1]`: the
    /// attack's result whether or not it succeeded.
    pub images: ArrayD<f32>,
    /// The model's prediction on each attacked image.
    pub predicted: Vec<usize>,
    /// Whether the clean image was right and the attacked one is wrong.
    pub success: Vec<bool>,
}

/// What an attack run found.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// One entry per ε, in the order given.
    pub results: Vec<EpsResult>,
    /// The adversarial images per ε, same order.
    pub adversarial: Vec<Adversarial>,
    /// The model's predictions on the clean images.
    pub clean_predicted: Vec<usize>,
    /// Seconds of the clean pass (predictions, and FGSM's gradients).
    pub clean_seconds: f64,
    /// Seconds in all.
    pub seconds: f64,
}

fn check(settings: &Settings) -> Result<()> {
    if settings.eps.is_empty() {
        return Err(AttackError::NoEps.into());
    }
    if let Some(bad) = settings.eps.iter().find(|e| !(0.0..=1.0).contains(*e)) {
        return Err(AttackError::EpsRange(*bad).into());
    }
    if settings.method == Method::Pgd && settings.steps == 0 {
        return Err(AttackError::NoSteps.into());
    }
    if !(settings.step_ratio.is_finite() && settings.step_ratio > 0.0) {
        return Err(AttackError::StepRatio(settings.step_ratio).into());
    }
    Ok(())
}

/// Runs `work` on every batch of `0..n`, in contiguous shards whose boundaries fall on
/// batch boundaries, one shard per thread; returns the batches' results in order.
fn for_batches<T: Send>(
    n: usize,
    feed: &Feed,
    label: &str,
    work: impl Fn(Range<usize>) -> Result<T> + Sync,
) -> Result<Vec<(Range<usize>, T)>> {
    let batch = feed.batch.max(1);
    let batches = n.div_ceil(batch);
    let workers = feed.threads.clamp(1, batches.max(1));
    let per_worker = batches.div_ceil(workers.max(1)) * batch;
    let bar = crate::progress::bar(n as u64, label, feed.progress);
    type Shard<T> = Result<Vec<(Range<usize>, T)>>;
    let shards: Vec<Shard<T>> = std::thread::scope(|scope| {
        let mut handles = Vec::new();
        let mut start = 0;
        while start < n {
            let shard = start..(start + per_worker).min(n);
            let (work, bar) = (&work, &bar);
            handles.push(scope.spawn(move || {
                let mut out = Vec::new();
                let mut s = shard.start;
                while s < shard.end {
                    let e = (s + batch).min(shard.end);
                    out.push((s..e, work(s..e)?));
                    bar.inc((e - s) as u64);
                    s = e;
                }
                Ok(out)
            }));
            start = shard.end;
        }
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(AttackError::Invariant("an attack worker panicked").into()))
            })
            .collect()
    });
    bar.finish_and_clear();
    let mut all = Vec::new();
    for s in shards {
        all.extend(s?);
    }
    Ok(all)
}

/// The direction that increases the attacker's objective: up the cross-entropy, down
/// the margin.
fn direction(loss: Loss) -> f32 {
    match loss {
        Loss::Ce => 1.0,
        Loss::Margin => -1.0,
    }
}

/// Attacks every image of `ds` at every ε of `settings`.
pub fn run(target: &Target, ds: &Dataset, settings: &Settings) -> Result<Outcome> {
    check(settings)?;
    let n = ds.len();
    let started = Instant::now();
    target.one_hot(&ds.labels, 0)?;
    let feed = &settings.feed;
    let dir = direction(target.loss);
    let labels = &ds.labels;

    // The clean pass: predictions, and for FGSM the gradients every ε shares.
    let fgsm = settings.method == Method::Fgsm;
    let clean = for_batches(n, feed, "clean", |r| {
        let x = target.pixels.batch(ds, r.clone())?;
        if fgsm {
            let t = target.one_hot(&labels[r.clone()], r.start)?;
            let g = target.gradient(x.view(), &t)?;
            Ok((argmax_rows(&g.logits), Some(g.grad)))
        } else {
            Ok((argmax_rows(&target.logits(x.view())?), None))
        }
    })?;
    let clean_seconds = started.elapsed().as_secs_f64();
    let mut clean_predicted = Vec::with_capacity(n);
    for (_, (p, _)) in &clean {
        clean_predicted.extend_from_slice(p);
    }
    let correct: Vec<bool> = clean_predicted
        .iter()
        .zip(labels)
        .map(|(&p, &l)| p as i64 == l)
        .collect();
    let clean_correct = correct.iter().filter(|&&c| c).count();

    let mut results = Vec::with_capacity(settings.eps.len());
    let mut adversarial = Vec::with_capacity(settings.eps.len());
    for (ei, &eps) in settings.eps.iter().enumerate() {
        let t0 = Instant::now();
        let label = format!("{:?} ε={eps}", settings.method).to_lowercase();
        let batches = for_batches(n, feed, &label, |r| {
            let x = target.pixels.batch(ds, r.clone())?;
            let adv = match (settings.method, &clean_gradient(&clean, &r)) {
                (Method::Fgsm, Some(g)) => fgsm::step(x.view(), g.view(), eps, dir),
                _ => pgd_batch(target, ds, settings, &x, &correct[r.clone()], r.start, ei, eps)?,
            };
            let predicted = argmax_rows(&target.logits(adv.view())?);
            Ok((adv, predicted))
        })?;
        let mut dims = vec![n];
        dims.extend(target.pixels_shape(ds));
        let mut images = ArrayD::<f32>::zeros(dims);
        let mut predicted = Vec::with_capacity(n);
        for (r, (adv, p)) in batches {
            images.slice_axis_mut(Axis(0), Slice::from(r.clone())).assign(&adv);
            predicted.extend(p);
        }
        let success: Vec<bool> = (0..n).map(|i| correct[i] && predicted[i] as i64 != labels[i]).collect();
        let successes = success.iter().filter(|&&s| s).count();
        let robust_correct = clean_correct - successes;
        let frac = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        results.push(EpsResult {
            eps,
            n,
            clean_accuracy: frac(clean_correct, n),
            robust_accuracy: frac(robust_correct, n),
            success_rate: frac(successes, clean_correct),
            clean_correct,
            robust_correct,
            successes,
            seconds: t0.elapsed().as_secs_f64(),
        });
        adversarial.push(Adversarial {
            eps,
            images,
            predicted,
            success,
        });
    }
    Ok(Outcome {
        results,
        adversarial,
        clean_predicted,
        clean_seconds,
        seconds: started.elapsed().as_secs_f64(),
    })
}

type CleanBatch = (Range<usize>, (Vec<usize>, Option<ArrayD<f32>>));

fn clean_gradient<'a>(clean: &'a [CleanBatch], r: &Range<usize>) -> Option<&'a ArrayD<f32>> {
    clean.iter().find(|(cr, _)| cr == r).and_then(|(_, (_, g))| g.as_ref())
}

/// PGD on one batch: images misclassified when clean are left alone, and, with
/// `early_stop`, images stop at their first misclassified iterate.
#[allow(clippy::too_many_arguments)]
fn pgd_batch(
    target: &Target,
    ds: &Dataset,
    settings: &Settings,
    clean: &ArrayD<f32>,
    correct: &[bool],
    first: usize,
    eps_index: usize,
    eps: f32,
) -> Result<ArrayD<f32>> {
    let labels = &ds.labels[first..first + correct.len()];
    let alpha = settings.step_ratio * eps;
    let dir = direction(target.loss);
    // One stream per (ε, batch), so results do not depend on the thread count.
    let mut rng = ChaCha8Rng::seed_from_u64(settings.seed);
    rng.set_stream(((eps_index as u64) << 40) | first as u64);
    let mut x = if settings.random_start {
        pgd::random_start(clean.view(), eps, &mut rng)
    } else {
        clean.clone()
    };
    let mut active: Vec<bool> = correct.to_vec();
    for _ in 0..settings.steps {
        let rows: Vec<usize> = (0..active.len()).filter(|&i| active[i]).collect();
        if rows.is_empty() {
            break;
        }
        let xs = x.select(Axis(0), &rows);
        let cs = clean.select(Axis(0), &rows);
        let ls: Vec<i64> = rows.iter().map(|&i| labels[i]).collect();
        let t = target.one_hot(&ls, first)?;
        let g = target.gradient(xs.view(), &t)?;
        let pred = argmax_rows(&g.logits);
        let still: Vec<bool> = pred
            .iter()
            .zip(&ls)
            .map(|(&p, &l)| !settings.early_stop || p as i64 == l)
            .collect();
        let mut moved = xs;
        pgd::step(moved.view_mut(), cs.view(), g.grad.view(), &still, alpha, eps, dir);
        for (k, &i) in rows.iter().enumerate() {
            if still[k] {
                x.index_axis_mut(Axis(0), i).assign(&moved.index_axis(Axis(0), k));
            } else {
                active[i] = false;
            }
        }
    }
    Ok(x)
}

impl Target {
    /// The model's prediction for every image of `ds`.
    pub fn predict(&self, ds: &Dataset, feed: &Feed) -> Result<Vec<usize>> {
        let batches = for_batches(ds.len(), feed, "predict", |r| {
            let x = self.pixels.batch(ds, r)?;
            Ok(argmax_rows(&self.logits(x.view())?))
        })?;
        Ok(batches.into_iter().flat_map(|(_, p)| p).collect())
    }

    /// The shape of one sample of `ds` as this model takes it.
    pub fn pixels_shape(&self, ds: &Dataset) -> Vec<usize> {
        let [c, h, w] = ds.image_shape();
        match self.layout {
            Layout::Nchw => vec![c, h, w],
            Layout::Nhwc => vec![h, w, c],
            Layout::Flat => vec![c * h * w],
        }
    }
}

/// The seed paper's adversarial test set: `ds` with every image the attack flipped
/// replaced by its adversarial example (pixels as `f32`, NCHW).
pub fn adversarial_test_set(ds: &Dataset, adv: &Adversarial, layout: Layout) -> Result<Dataset> {
    let n = ds.len();
    if adv.success.len() != n || adv.images.len_of(Axis(0)) != n {
        return Err(AttackError::Rows {
            rows: adv.success.len(),
            images: n,
        }
        .into());
    }
    let mut pixels = ds.pixels.to_f32(0..n);
    let images = to_nchw(adv.images.view(), layout, ds.image_shape())?;
    for (i, _) in adv.success.iter().enumerate().filter(|(_, &s)| s) {
        pixels.index_axis_mut(Axis(0), i).assign(&images.index_axis(Axis(0), i));
    }
    Ok(Dataset {
        pixels: Pixels::F32(pixels),
        labels: ds.labels.clone(),
        classes: ds.classes.clone(),
        source: ds.source.clone(),
    })
}
