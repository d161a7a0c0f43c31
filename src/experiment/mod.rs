//! The seed paper's whole experiment in one call ([`run`]): fit the hybrids, attack,
//! repair, and measure every model on every test set at every ε.
//!
//! Models (Guidotti & Leofante, 2020): the original network **NN**; the linear hybrid
//! **LH** (NN's extractor + a one-vs-rest linear SVM); the kernel hybrid **KH** (the
//! extractor + an RBF SVM, here through a Nyström map); and, per ε, the repaired linear
//! hybrid **RLH** (LH's head repaired with adversarial examples of LH taken from the
//! *training* set). Test sets: **Data**, the clean test images; and per ε the
//! adversarial test sets **NADV**, **HADV** and **RHADV**, in which every test image
//! that an FGSM/PGD attack on NN, LH or RLH flips is replaced by its adversarial
//! example.
//!
//! The extractor is the expensive part, and every hybrid shares it, so it runs once on
//! the clean test images and then only on the images an attack replaced; the heads are
//! applied to those features directly. NN runs the same way. Everything is seeded, so
//! a rerun gives the same numbers.

use std::time::Instant;

use ndarray::{Array2, ArrayD, ArrayView2, Axis};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::attack::{self, Adversarial, Loss, Target};
use crate::data::{to_nchw, Dataset, Layout, Pixels};
use crate::engine::{Engine, Session};
use crate::error::{Error, Result};
use crate::features::{argmax_rows, collect, Feed};
use crate::hybrid::{fit_kernel_on_features, fit_linear_on_features, FitSettings};
use crate::onnx::surgery::extractor;
use crate::onnx::{find_cut, ModelProto};
use crate::repair::{repair_hybrid, HybridSettings};
use crate::report::run::FitFigures;
use crate::svm::{FitReport, LinearSvm, Nystrom, NystromSettings};

pub use crate::report::run::{Cell, Report};

/// The models of the experiment, in report order.
pub const MODELS: [&str; 4] = ["NN", "LH", "KH", "RLH"];
/// The test sets of the experiment, in report order.
pub const TEST_SETS: [&str; 4] = ["Data", "NADV", "HADV", "RHADV"];

/// How to run the experiment.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The radii, in `[0, 1]` pixel space.
    pub eps: Vec<f32>,
    /// The attack (its `eps` is ignored: [`Settings::eps`] is used).
    pub attack: attack::Settings,
    /// The loss the attacks follow.
    pub loss: Loss,
    /// The hybrids' fit (cut, SVM, feed).
    pub fit: FitSettings,
    /// The kernel hybrid's Nyström map; `None` leaves KH out.
    pub kernel: Option<NystromSettings>,
    /// Repair samples per ε (1 reproduces the paper).
    pub repair_samples: usize,
    /// The repair's formulation and solve.
    pub repair: HybridSettings,
    /// Seed of the choice of training images attacked for repair samples.
    pub seed: u64,
    /// Test images shown in the example grid.
    pub examples: usize,
    /// Print a line on stderr as each phase starts.
    pub log: bool,
}

/// A head applied to extractor features.
#[derive(Debug, Clone)]
enum Head {
    /// `z = W f + b`.
    Linear(LinearSvm),
    /// `z = W φ(f) + b`, φ the Nyström map of the RBF kernel.
    Kernel(Box<Nystrom>, LinearSvm),
}

impl Head {
    fn predict(&self, features: ArrayView2<f32>) -> Vec<usize> {
        match self {
            Head::Linear(svm) => svm.predict(features),
            Head::Kernel(map, svm) => svm.predict(map.transform(features).view()),
        }
    }
}

/// An adversarial test set as what differs from the clean one: the rows replaced by
/// adversarial examples, with their extractor features and NN's predictions.
struct TestSet {
    /// The rows replaced.
    replaced: Vec<usize>,
    /// `[replaced, D]` extractor features of the adversarial examples.
    features: Array2<f32>,
    /// NN's prediction for each adversarial example.
    nn: Vec<usize>,
}

impl TestSet {
    /// Predictions on the whole set: `clean` (on the clean test set) with the
    /// replaced rows' predictions `rows` put in.
    fn merge(&self, clean: &[usize], rows: &[usize]) -> Vec<usize> {
        let mut out = clean.to_vec();
        for (&i, &p) in self.replaced.iter().zip(rows) {
            out[i] = p;
        }
        out
    }
}

/// One repaired hybrid and what was measured of it.
#[derive(Debug, Clone)]
pub struct Repaired {
    /// The radius its repair samples were made at.
    pub eps: f32,
    /// The repaired model (drop-in ONNX); LH itself when there was no repair sample
    /// or the LP did not solve. Its figures are in the report's `repairs`.
    pub model: ModelProto,
    /// The training images the repair samples came from.
    pub index: Vec<i64>,
}

/// An example for the grid: a test image, clean and attacked at each ε.
#[derive(Debug, Clone)]
pub struct Example {
    /// The image's index in the test set.
    pub index: usize,
    /// Its label.
    pub label: i64,
    /// `[C, H, W]` in `[0, 1]`: the clean image, then NN's adversarial example per ε.
    pub images: Vec<ndarray::Array3<f32>>,
    /// NN's prediction for each image.
    pub predicted: Vec<usize>,
}

/// What [`run`] produced: the report, the models to write, the examples to draw.
#[derive(Debug)]
pub struct Outcome {
    /// Every number.
    pub report: Report,
    /// The linear hybrid.
    pub lh: ModelProto,
    /// The kernel hybrid, unless left out.
    pub kh: Option<ModelProto>,
    /// The repaired linear hybrids, one per ε.
    pub repaired: Vec<Repaired>,
    /// Examples for the grid.
    pub examples: Vec<Example>,
}

/// Times the phases.
struct Clock {
    log: bool,
    phases: Vec<(String, f64)>,
    current: Option<(String, Instant)>,
    step: usize,
}

impl Clock {
    fn new(log: bool) -> Self {
        Self {
            log,
            phases: Vec::new(),
            current: None,
            step: 0,
        }
    }

    fn phase(&mut self, name: &str, what: &str) {
        self.stop();
        self.step += 1;
        if self.log {
            eprintln!("nnmend run [{}] {what}", self.step);
        }
        self.current = Some((name.to_string(), Instant::now()));
    }

    fn stop(&mut self) {
        if let Some((name, started)) = self.current.take() {
            let seconds = started.elapsed().as_secs_f64();
            match self.phases.iter_mut().find(|(n, _)| *n == name) {
                Some((_, s)) => *s += seconds,
                None => self.phases.push((name, seconds)),
            }
        }
    }
}

/// A data set of `images` (in `layout`, `[0, 1]`) with `labels`, shaped like `like`.
fn images_dataset(images: ArrayD<f32>, layout: Layout, labels: Vec<i64>, like: &Dataset) -> Result<Dataset> {
    let pixels = to_nchw(images.view(), layout, like.image_shape())?;
    Ok(Dataset {
        pixels: Pixels::F32(pixels),
        labels,
        classes: like.classes.clone(),
        source: like.source.clone(),
    })
}

/// Predictions of a prepared classifier on every image of `ds`.
fn predict(session: &dyn Session, ds: &Dataset, feed: &Feed, label: &str) -> Result<Vec<usize>> {
    if ds.is_empty() {
        return Ok(Vec::new());
    }
    Ok(argmax_rows(&collect(session, ds, feed, 0, label)?))
}

fn accuracy(predicted: &[usize], labels: &[i64]) -> (usize, f64) {
    let correct = predicted.iter().zip(labels).filter(|(&p, &l)| p as i64 == l).count();
    let n = labels.len();
    (correct, if n == 0 { 0.0 } else { correct as f64 / n as f64 })
}

/// Runs the whole experiment of the seed paper on `model` with `train` and `test`.
pub fn run(
    model: &ModelProto,
    train: &Dataset,
    test: &Dataset,
    engine: &dyn Engine,
    settings: &Settings,
) -> Result<Outcome> {
    if settings.eps.is_empty() {
        return Err(Error::Mismatch("no ε to attack at".into()));
    }
    if settings.repair_samples == 0 {
        return Err(Error::Mismatch("the repair needs at least one sample per ε".into()));
    }
    if train.image_shape() != test.image_shape() {
        return Err(Error::Mismatch(format!(
            "{} holds {:?} images but {} holds {:?}",
            train.source.display(),
            train.image_shape(),
            test.source.display(),
            test.image_shape()
        )));
    }
    let feed = &settings.fit.feed;
    let mut clock = Clock::new(settings.log);

    // The extractor and NN, prepared once.
    clock.phase(
        "features.train",
        &format!("features of {} training images", train.len()),
    );
    let cut = find_cut(model, settings.fit.at.as_deref())?;
    let extractor_session = engine.prepare(&extractor(model, &cut, None)?)?;
    let nn_session = engine.prepare(model)?;
    let f_train = collect(extractor_session.as_ref(), train, feed, 0, "features")?;

    clock.phase("fit.LH", "fitting LH (linear SVM)");
    let started = Instant::now();
    let lh_fit = fit_linear_on_features(model, &cut, f_train.view(), train, &settings.fit)?;
    let mut fits = vec![("LH", figures(&lh_fit.report, lh_fit.train_accuracy, started))];
    let (lh_model, lh) = (lh_fit.model, Head::Linear(lh_fit.svm));
    let mut kh = None;
    if let Some(nystrom) = &settings.kernel {
        clock.phase(
            "fit.KH",
            &format!(
                "fitting KH (Nyström map, {} landmarks, and a linear SVM)",
                nystrom.landmarks
            ),
        );
        let started = Instant::now();
        let k = fit_kernel_on_features(model, &cut, f_train.view(), train, &settings.fit, nystrom)?;
        fits.push(("KH", figures(&k.report, k.train_accuracy, started)));
        kh = Some((k.model, Head::Kernel(Box::new(k.nystrom), k.svm)));
    }
    drop(f_train);

    clock.phase(
        "features.test",
        &format!("NN and features on {} test images", test.len()),
    );
    let f_test = collect(extractor_session.as_ref(), test, feed, 0, "features")?;
    let nn_test = predict(nn_session.as_ref(), test, feed, "NN")?;
    let mut heads: Vec<(&str, &Head)> = vec![("LH", &lh)];
    if let Some((_, head)) = &kh {
        heads.push(("KH", head));
    }

    // Attacks on NN and LH over the test set, all ε at once (FGSM shares the
    // gradient of the clean pass).
    let mut attack_settings = settings.attack.clone();
    attack_settings.eps = settings.eps.clone();
    attack_settings.feed = feed.clone();
    clock.phase("attack.NN", "attacking NN on the test set");
    let nn_target = Target::new(model, engine, test, feed, settings.loss)?;
    let nn_attack = attack::run(&nn_target, test, &attack_settings)?;
    // Every model here takes the same input, so the attacks' images share a layout.
    let layout = nn_target.layout;
    drop(nn_target);
    clock.phase("attack.LH", "attacking LH on the test set");
    let lh_target = Target::new(&lh_model, engine, test, feed, settings.loss)?;
    let lh_attack = attack::run(&lh_target, test, &attack_settings)?;

    clock.phase("repair.samples", "attacking LH on training images for repair samples");
    let samples = repair_samples(
        &lh_target,
        train,
        &attack_settings,
        settings.repair_samples,
        settings.seed,
    )?;
    drop(lh_target);

    let mut report = Report::new(settings, train, test, &cut, f_test.ncols(), fits);
    let mut repaired = Vec::with_capacity(settings.eps.len());
    let replace = |adv: &Adversarial, label: &str| -> Result<TestSet> {
        replaced_set(
            adv,
            (test, f_test.ncols()),
            layout,
            (extractor_session.as_ref(), nn_session.as_ref()),
            feed,
            label,
        )
    };
    // Each head's predictions on the clean test set, made once.
    let clean: Vec<Vec<usize>> = heads.iter().map(|(_, h)| h.predict(f_test.view())).collect();
    for (ei, &eps) in settings.eps.iter().enumerate() {
        let (adv_rows, index) = &samples[ei];
        clock.phase(
            "repair",
            &format!(
                "ε = {eps}: repairing LH with {} adversarial training images",
                adv_rows.len()
            ),
        );
        let done = if adv_rows.is_empty() {
            // Nothing to repair with: RLH is LH, and the report says why.
            if settings.log {
                eprintln!(
                    "nnmend run: the attack at ε = {eps} flipped none of the training images it tried: \
                     RLH is LH unchanged at this ε (a larger ε or --attack pgd finds repair samples)"
                );
            }
            None
        } else {
            Some(repair_hybrid(
                &lh_model,
                adv_rows,
                index,
                train,
                engine,
                feed,
                &settings.repair,
            )?)
        };
        // A stalled or infeasible LP's last iterate is no repair: RLH stays LH.
        let usable = done.as_ref().filter(|d| d.repair.status.usable());
        let (rlh_model, rlh_head) = match usable {
            Some(d) => (
                &d.model,
                Head::Linear(LinearSvm {
                    weights: d.repair.weights.clone(),
                    bias: d.repair.bias.clone(),
                }),
            ),
            None => (&lh_model, lh.clone()),
        };

        clock.phase("attack.RLH", &format!("ε = {eps}: attacking RLH on the test set"));
        let rlh_target = Target::new(rlh_model, engine, test, feed, settings.loss)?;
        let mut one = attack_settings.clone();
        one.eps = vec![eps];
        let rlh_attack = attack::run(&rlh_target, test, &one)?;
        drop(rlh_target);

        clock.phase(
            "evaluate",
            &format!("ε = {eps}: evaluating every model on every test set"),
        );
        let nn_adv = &nn_attack.adversarial[ei];
        let lh_adv = &lh_attack.adversarial[ei];
        let rlh_adv = rlh_attack
            .adversarial
            .first()
            .ok_or_else(|| Error::Mismatch("the attack on RLH returned nothing".into()))?;
        let sets = [
            ("NADV", replace(nn_adv, "NADV")?),
            ("HADV", replace(lh_adv, "HADV")?),
            ("RHADV", replace(rlh_adv, "RHADV")?),
        ];
        let rlh_clean = rlh_head.predict(f_test.view());
        report.push_cell("NN", "Data", eps, accuracy(&nn_test, &test.labels), 0);
        for ((name, _), predicted) in heads.iter().zip(&clean) {
            report.push_cell(name, "Data", eps, accuracy(predicted, &test.labels), 0);
        }
        report.push_cell("RLH", "Data", eps, accuracy(&rlh_clean, &test.labels), 0);
        let rlh_entry = ("RLH", &rlh_head);
        for (set_name, set) in &sets {
            let adversarial = set.replaced.len();
            let nn = set.merge(&nn_test, &set.nn);
            report.push_cell("NN", set_name, eps, accuracy(&nn, &test.labels), adversarial);
            let all = heads.iter().zip(&clean).chain([(&rlh_entry, &rlh_clean)]);
            for ((name, head), clean) in all {
                let predicted = set.merge(clean, &head.predict(set.features.view()));
                report.push_cell(name, set_name, eps, accuracy(&predicted, &test.labels), adversarial);
            }
        }
        // Generalisation: the share of HADV's adversarial examples that RLH gets right.
        let hadv = &sets[1].1;
        let fixed = hadv
            .replaced
            .iter()
            .zip(rlh_head.predict(hadv.features.view()))
            .filter(|(&i, p)| *p as i64 == test.labels[i])
            .count();
        let generalisation = (!hadv.replaced.is_empty()).then(|| fixed as f64 / hadv.replaced.len() as f64);
        let lh_data = accuracy(&clean[0], &test.labels).1;
        let rlh_data = accuracy(&rlh_clean, &test.labels).1;
        report.push_attack(eps, "NN", &nn_attack.results[ei]);
        report.push_attack(eps, "LH", &lh_attack.results[ei]);
        if let Some(r) = rlh_attack.results.first() {
            report.push_attack(eps, "RLH", r);
        }
        report.push_repair(
            eps,
            done.as_ref(),
            lh_data - rlh_data,
            generalisation,
            hadv.replaced.len(),
        );
        let model = match done {
            Some(d) if d.repair.status.usable() => d.model,
            _ => lh_model.clone(),
        };
        repaired.push(Repaired {
            eps,
            model,
            index: index.clone(),
        });
    }
    clock.stop();
    let examples = examples(test, &nn_attack, &nn_test, layout, settings.examples);
    report.timings = clock.phases;
    Ok(Outcome {
        report,
        lh: lh_model,
        kh: kh.map(|(m, _)| m),
        repaired,
        examples,
    })
}

fn successes(adv: &Adversarial) -> Vec<usize> {
    adv.success
        .iter()
        .enumerate()
        .filter(|(_, &s)| s)
        .map(|(i, _)| i)
        .collect()
}

/// The test set with the images `adv`'s attack flipped replaced by its adversarial
/// examples: features and NN's predictions are computed for those rows only.
fn replaced_set(
    adv: &Adversarial,
    (test, dim): (&Dataset, usize),
    layout: Layout,
    (extractor, nn): (&dyn Session, &dyn Session),
    feed: &Feed,
    label: &str,
) -> Result<TestSet> {
    let replaced = successes(adv);
    if replaced.is_empty() {
        return Ok(TestSet {
            replaced,
            features: Array2::zeros((0, dim)),
            nn: Vec::new(),
        });
    }
    let images = adv.images.select(Axis(0), &replaced);
    let labels = replaced.iter().map(|&i| test.labels[i]).collect();
    let ds = images_dataset(images, layout, labels, test)?;
    Ok(TestSet {
        features: collect(extractor, &ds, feed, 0, label)?,
        nn: predict(nn, &ds, feed, label)?,
        replaced,
    })
}

/// The report's figures of a fit that started at `started`.
fn figures(report: &FitReport, train_accuracy: f64, started: Instant) -> FitFigures {
    FitFigures {
        train_accuracy,
        converged: report.converged(),
        objective: report.objective(),
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// Per ε, up to `wanted` adversarial examples of LH made from training images, with
/// those images' indices. The training images are tried in a seeded random order, in
/// chunks that grow fourfold, each attacked only at the radii still short of samples.
fn repair_samples(
    target: &Target,
    train: &Dataset,
    settings: &attack::Settings,
    wanted: usize,
    seed: u64,
) -> Result<Vec<(Dataset, Vec<i64>)>> {
    let n = train.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let k = settings.eps.len();
    let mut images: Vec<Vec<ArrayD<f32>>> = vec![Vec::new(); k];
    let mut index: Vec<Vec<i64>> = vec![Vec::new(); k];
    let (mut start, mut chunk) = (0, wanted.saturating_mul(4).max(256));
    while start < n {
        let short: Vec<usize> = (0..k).filter(|&e| index[e].len() < wanted).collect();
        if short.is_empty() {
            break;
        }
        let end = n.min(start.saturating_add(chunk));
        let pool = train
            .select(&order[start..end])
            .ok_or_else(|| Error::Mismatch("a training index is out of range".into()))?;
        let mut s = settings.clone();
        s.eps = short.iter().map(|&e| settings.eps[e]).collect();
        let outcome = attack::run(target, &pool, &s)?;
        for (&e, adv) in short.iter().zip(&outcome.adversarial) {
            for r in successes(adv).into_iter().take(wanted - index[e].len()) {
                images[e].push(adv.images.index_axis(Axis(0), r).to_owned());
                index[e].push(order[start + r] as i64);
            }
        }
        start = end;
        chunk = chunk.saturating_mul(4);
    }
    let mut out = Vec::with_capacity(k);
    for (imgs, idx) in images.into_iter().zip(index) {
        let mut dims = vec![imgs.len()];
        dims.extend(target.pixels_shape(train));
        let views: Vec<_> = imgs.iter().map(|a| a.view().insert_axis(Axis(0))).collect();
        let stacked = if views.is_empty() {
            ArrayD::zeros(dims)
        } else {
            ndarray::concatenate(Axis(0), &views)
                .map_err(|e| Error::Mismatch(format!("stacking repair samples: {e}")))?
        };
        let labels = idx.iter().map(|&i| train.labels[i as usize]).collect();
        out.push((images_dataset(stacked, target.layout, labels, train)?, idx));
    }
    Ok(out)
}

/// Up to `count` test images that NN's attack flips at the largest ε (or any, if it
/// flips fewer), clean and attacked at every ε.
fn examples(
    test: &Dataset,
    outcome: &attack::Outcome,
    nn_test: &[usize],
    layout: Layout,
    count: usize,
) -> Vec<Example> {
    let Some(last) = outcome.adversarial.last() else {
        return Vec::new();
    };
    let mut rows: Vec<usize> = successes(last).into_iter().take(count).collect();
    for i in 0..test.len() {
        if rows.len() >= count {
            break;
        }
        if !rows.contains(&i) {
            rows.push(i);
        }
    }
    rows.into_iter()
        .filter_map(|i| {
            let clean = test.pixels.to_f32(i..i + 1).index_axis(Axis(0), 0).to_owned();
            let mut images = vec![clean];
            let mut predicted = vec![*nn_test.get(i)?];
            for adv in &outcome.adversarial {
                let one = adv.images.select(Axis(0), &[i]);
                let nchw = to_nchw(one.view(), layout, test.image_shape()).ok()?;
                images.push(nchw.index_axis(Axis(0), 0).to_owned());
                predicted.push(*adv.predicted.get(i)?);
            }
            Some(Example {
                index: i,
                label: test.labels[i],
                images,
                predicted,
            })
        })
        .collect()
}
