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
//! applied to those features directly, and the repair works on features too. NN runs
//! the same way. Everything is seeded, so a rerun gives the same numbers. The result
//! is a [`Report`] (every number) with the models and examples to write;
//! [`crate::report`] renders it.

mod clock;
mod repairer;
pub mod report;
mod robust;
mod samples;

use std::path::Path;
use std::time::Instant;

use crate::attack::{self, Loss, Target};
use crate::data::Dataset;
use crate::engine::Engine;
use crate::error::Result;
use crate::features::{collect, Accuracy};
use crate::gate::Gate;
use crate::head::Head;
use crate::hybrid::{check_validation, fit_on_features, fit_on_features_validated, FitSettings, Fitted};
use crate::onnx::surgery::extractor;
use crate::onnx::{find_cut, ModelProto};
use crate::repair;
use crate::repair::rounds::RoundSettings;
use crate::svm::NystromSettings;

use clock::Clock;
use repairer::Repairer;
pub use report::{model_file, Cell, Model, Report, TestSet};
pub use robust::Robust;
use samples::{examples, predict, repair_samples, Replaced};

/// What can stop the experiment before it starts, or break inside it.
#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    /// No radius to attack at.
    #[error("no ε to attack at")]
    NoEps,
    /// Zero repair samples asked for.
    #[error("the repair needs at least one sample per ε")]
    NoRepairSamples,
    /// Training and test (or validation) images of different shapes.
    #[error("{train} holds {train_shape:?} images but {other} holds {other_shape:?}")]
    Shapes {
        /// The training set.
        train: String,
        /// Its image shape.
        train_shape: [usize; 3],
        /// The test or validation set.
        other: String,
        /// Its image shape.
        other_shape: [usize; 3],
    },
    /// Validation images given, but C fixed: there is no search for them to score.
    #[error("validation images only score a search for C, and C is fixed")]
    ValidationWithoutSearch,
    /// A broken invariant (a bug).
    #[error("internal error: {0}")]
    Invariant(&'static str),
}

/// How to run the experiment.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The radii, in `[0, 1]` pixel space.
    pub eps: Vec<f32>,
    /// The attack (its `eps` is ignored: [`Settings::eps`] is used).
    pub attack: attack::Settings,
    /// The loss the attacks follow.
    pub loss: Loss,
    /// The hybrids' fit (cut, SVM, feed); its `kernel` is not used (see below).
    pub fit: FitSettings,
    /// The kernel hybrid's Nyström map; `None` leaves KH out.
    pub kernel: Option<NystromSettings>,
    /// Repair samples per ε (1 reproduces the paper).
    pub repair_samples: usize,
    /// The repair's formulation and solve.
    pub repair: repair::Settings,
    /// The repair's loop (its attack's `eps` and feed are set per ε); one round is a
    /// single repair.
    pub rounds: RoundSettings,
    /// Robust accuracy under a strong attack, measured of every model at every ε;
    /// `None` leaves it out.
    pub protocol: Option<robust::Robust>,
    /// Seed of the choice of training images attacked for repair samples.
    pub seed: u64,
    /// Test images shown in the example grid.
    pub examples: usize,
    /// Print a line on stderr as each phase starts.
    pub log: bool,
    /// Bounds on the repairs' results, checked at the end ([`Report::gates`]).
    pub gates: Vec<Gate>,
}

/// The data of an experiment.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// The network (NN).
    pub model: &'a ModelProto,
    /// Where it was read from, for the report.
    pub path: &'a Path,
    /// Training images: the hybrids are fitted on them, repair samples made from them.
    pub train: &'a Dataset,
    /// Test images: every model is measured on them.
    pub test: &'a Dataset,
    /// Images that score the candidates of the search for C (`--c auto`) instead of a
    /// held-out share of `train`: held out of the network's training, say.
    pub validation: Option<&'a Dataset>,
}

/// One repaired hybrid.
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

/// The settings that matter for reproducing the numbers, as the report records them.
fn settings_json(settings: &Settings, validation: bool) -> serde_json::Value {
    let a = &settings.attack;
    let pgd = a.method == attack::Method::Pgd;
    let svm = &settings.fit.svm;
    let margin = settings.repair.margin.is_some();
    serde_json::json!({
        "eps": settings.eps,
        "attack": {
            "method": a.method,
            "loss": settings.loss,
            "steps": pgd.then_some(a.steps),
            "step_ratio": pgd.then_some(a.step_ratio),
            "random_start": pgd.then_some(a.random_start),
            "early_stop": pgd.then_some(a.early_stop),
        },
        "svm": {
            "c": if settings.fit.tuning.search.is_some() { serde_json::json!("auto") } else { serde_json::json!(svm.c) },
            "c_grid": settings.fit.tuning.search.as_ref().map(|s| s.grid.clone()),
            "holdout": settings.fit.tuning.search.as_ref().filter(|_| !validation).map(|s| s.holdout),
            "scale": settings.fit.tuning.scale,
            "solver": format!("{:?}", svm.solver).to_lowercase(),
            "loss": format!("{:?}", svm.loss),
            "tol": svm.tol,
            "max_iter": svm.max_iter,
        },
        "repair": {
            "mode": settings.repair.mode(),
            "samples": settings.repair_samples,
            "repair_bias": settings.repair.class.repair_bias,
            "preserve": margin.then_some(settings.repair.preserve),
            "rounds": settings.rounds.rounds,
            "pool": (settings.rounds.rounds > 1).then_some(settings.rounds.pool),
            "round_steps": (settings.rounds.rounds > 1).then_some(settings.rounds.attack.steps),
        },
        "robustness": settings.protocol.as_ref().map(|r| serde_json::json!({
            "protocol": r.protocol, "limit": r.limit,
        })),
        "kernel": settings.kernel.as_ref().map(|k| serde_json::json!({
            "landmarks": k.landmarks, "gamma": k.gamma, "seed": k.seed,
        })),
        "seed": settings.seed,
        "batch": settings.fit.feed.batch,
        "threads": settings.fit.feed.threads,
        "mean": settings.fit.feed.mean,
        "std": settings.fit.feed.std,
    })
}

/// The report's figures of a fit that started at `started`.
fn figures(fitted: &Fitted, started: Instant) -> report::FitFigures {
    let r = &fitted.report;
    report::FitFigures {
        train_accuracy: fitted.train_accuracy,
        converged: r.converged(),
        objective: r.objective(),
        seconds: started.elapsed().as_secs_f64(),
        c: r.c,
        solver: r.solver().map_or("mixed", |s| s.name()),
        max_gap: r.max_gap(),
        standardised: r.scaling.is_some(),
        c_selection: r.selection.clone(),
    }
}

/// Runs the whole experiment of the seed paper on `inputs` with `engine`.
pub fn run(inputs: &Inputs, engine: &dyn Engine, settings: &Settings) -> Result<Outcome> {
    let Inputs {
        model,
        train,
        test,
        validation,
        ..
    } = *inputs;
    if settings.eps.is_empty() {
        return Err(ExperimentError::NoEps.into());
    }
    if settings.repair_samples == 0 {
        return Err(ExperimentError::NoRepairSamples.into());
    }
    for other in std::iter::once(test).chain(validation) {
        if train.image_shape() != other.image_shape() {
            return Err(ExperimentError::Shapes {
                train: train.source.display().to_string(),
                train_shape: train.image_shape(),
                other: other.source.display().to_string(),
                other_shape: other.image_shape(),
            }
            .into());
        }
    }
    if let Some(v) = validation {
        if settings.fit.tuning.search.is_none() {
            return Err(ExperimentError::ValidationWithoutSearch.into());
        }
        check_validation(model, train, v)?;
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
    let f_validation = match validation {
        Some(v) => {
            clock.phase(
                "features.validation",
                &format!("features of {} validation images", v.len()),
            );
            Some((collect(extractor_session.as_ref(), v, feed, 0, "features")?, v))
        }
        None => None,
    };
    // LH and KH alike: with validation images, the search for C scores on them.
    let fit_head = |settings: &FitSettings| match &f_validation {
        Some((held, v)) => fit_on_features_validated(model, &cut, f_train.view(), train, held.view(), v, settings),
        None => fit_on_features(model, &cut, f_train.view(), train, settings),
    };

    clock.phase("fit.LH", "fitting LH (linear SVM)");
    let started = Instant::now();
    let linear = FitSettings {
        kernel: None,
        ..settings.fit.clone()
    };
    let lh = fit_head(&linear)?;
    let mut fits = vec![(Model::LH, figures(&lh, started))];
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
        let kernel = FitSettings {
            kernel: Some(nystrom.clone()),
            ..settings.fit.clone()
        };
        let fitted = fit_head(&kernel)?;
        fits.push((Model::KH, figures(&fitted, started)));
        kh = Some(fitted);
    }
    drop(f_validation);
    drop(f_train);

    clock.phase(
        "features.test",
        &format!("NN and features on {} test images", test.len()),
    );
    let f_test = collect(extractor_session.as_ref(), test, feed, 0, "features")?;
    let nn_test = predict(nn_session.as_ref(), test, feed, "NN")?;
    let mut heads: Vec<(Model, &Head)> = vec![(Model::LH, &lh.head)];
    if let Some(k) = &kh {
        heads.push((Model::KH, &k.head));
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
    let lh_target = Target::new(&lh.model, engine, test, feed, settings.loss)?;
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

    let mut report = Report {
        model: inputs.path.display().to_string(),
        engine: engine.describe(),
        versions: report::versions(),
        provenance: crate::provenance::Provenance::current(),
        settings: settings_json(settings, validation.is_some()),
        train: report::DataFigures::of(train),
        test: report::DataFigures::of(test),
        validation: validation.map(report::DataFigures::of),
        cut: report::CutFigures {
            tensor: cut.tensor.clone(),
            feature_dim: f_test.ncols(),
            rule: cut.rule,
            warning: cut.warning.clone(),
        },
        fits: fits.into_iter().collect(),
        cells: Vec::new(),
        attacks: Vec::new(),
        repairs: Vec::new(),
        robustness: Vec::new(),
        transfer: Vec::new(),
        timings: Vec::new(),
        gates: Vec::new(),
    };
    let repairer = Repairer::new(
        &lh.model,
        &lh.head,
        train,
        extractor_session.as_ref(),
        engine,
        feed,
        &settings.repair,
        &settings.rounds,
    )?;
    let mut repaired = Vec::with_capacity(settings.eps.len());
    let replace = |adv: &attack::Adversarial, label: &str| -> Result<Replaced> {
        Replaced::new(
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
    let nn_data = Accuracy::of(&nn_test, &test.labels);
    if let Some(robust) = &settings.protocol {
        clock.phase(
            "robustness",
            &format!(
                "PGD robust accuracy of NN, LH and KH on {} test images",
                robust.limit.min(test.len())
            ),
        );
        let nn_robust = robust.measure(model, engine, test, &settings.eps, feed)?;
        let lh_robust = robust.measure(&lh.model, engine, test, &settings.eps, feed)?;
        report.push_robustness(Model::NN, &nn_robust);
        report.push_robustness(Model::LH, &lh_robust);
        if let (Some(k), Some(kh_clean)) = (&kh, clean.get(1)) {
            report.push_robustness(Model::KH, &robust.measure(&k.model, engine, test, &settings.eps, feed)?);
            let first = test.take(robust.limit);
            for (source, measured) in [(Model::NN, &nn_robust), (Model::LH, &lh_robust)] {
                for m in measured.iter() {
                    let accuracy = robust::transfer(
                        m,
                        (&first, layout),
                        kh_clean,
                        (extractor_session.as_ref(), &k.head),
                        feed,
                    )?;
                    report.transfer.push(report::TransferFigures {
                        source,
                        target: Model::KH,
                        eps: m.robustness.eps,
                        n: accuracy.n,
                        accuracy: accuracy.accuracy,
                    });
                }
            }
        }
    }
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
            clock.note(&format!(
                "the attack at ε = {eps} flipped none of the training images it tried: RLH is LH unchanged at \
                 this ε (a larger ε or --attack pgd finds repair samples)"
            ));
            None
        } else {
            let mut rounds = settings.rounds.clone();
            rounds.attack.eps = vec![eps];
            rounds.train.eps = eps;
            rounds.attack.feed = feed.clone();
            Some(repairer.repair(adv_rows, index, &rounds)?)
        };
        // A stalled or infeasible LP's last iterate is no repair: RLH stays LH.
        let usable = done.as_ref().filter(|d| d.fix.repair.status.usable());
        let rlh_head = match usable {
            Some(d) => lh.head.with_linear(d.fix.linear.clone()),
            None => lh.head.clone(),
        };
        let rlh_model = match usable {
            Some(d) => d.model.clone(),
            None => lh.model.clone(),
        };

        clock.phase("attack.RLH", &format!("ε = {eps}: attacking RLH on the test set"));
        let rlh_target = Target::new(&rlh_model, engine, test, feed, settings.loss)?;
        let mut one = attack_settings.clone();
        one.eps = vec![eps];
        let rlh_attack = attack::run(&rlh_target, test, &one)?;
        drop(rlh_target);

        clock.phase(
            "evaluate",
            &format!("ε = {eps}: evaluating every model on every test set"),
        );
        let rlh_adv = rlh_attack
            .adversarial
            .first()
            .ok_or(ExperimentError::Invariant("the attack on RLH returned nothing"))?;
        let sets = [
            (TestSet::NADV, replace(&nn_attack.adversarial[ei], "NADV")?),
            (TestSet::HADV, replace(&lh_attack.adversarial[ei], "HADV")?),
            (TestSet::RHADV, replace(rlh_adv, "RHADV")?),
        ];
        let rlh_clean = rlh_head.predict(f_test.view());
        report.push_cell(Model::NN, TestSet::Data, eps, nn_data, 0);
        for ((name, _), predicted) in heads.iter().zip(&clean) {
            report.push_cell(*name, TestSet::Data, eps, Accuracy::of(predicted, &test.labels), 0);
        }
        let rlh_data = Accuracy::of(&rlh_clean, &test.labels);
        report.push_cell(Model::RLH, TestSet::Data, eps, rlh_data, 0);
        let rlh_entry = (Model::RLH, &rlh_head);
        for (set_name, set) in &sets {
            let adversarial = set.replaced.len();
            let nn = set.merge(&nn_test, &set.nn);
            report.push_cell(Model::NN, *set_name, eps, Accuracy::of(&nn, &test.labels), adversarial);
            let all = heads.iter().zip(&clean).chain([(&rlh_entry, &rlh_clean)]);
            for ((name, head), clean) in all {
                let predicted = set.merge(clean, &head.predict(set.features.view()));
                report.push_cell(
                    *name,
                    *set_name,
                    eps,
                    Accuracy::of(&predicted, &test.labels),
                    adversarial,
                );
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
        let lh_data = Accuracy::of(&clean[0], &test.labels).accuracy;
        report.push_attack(eps, Model::NN, &nn_attack.results[ei]);
        report.push_attack(eps, Model::LH, &lh_attack.results[ei]);
        if let Some(r) = rlh_attack.results.first() {
            report.push_attack(eps, Model::RLH, r);
        }
        report.push_repair(
            eps,
            done.as_ref(),
            lh_data - rlh_data.accuracy,
            generalisation,
            hadv.replaced.len(),
        );
        if let Some(robust) = &settings.protocol {
            clock.phase("robustness", &format!("ε = {eps}: PGD robust accuracy of RLH"));
            report.push_robustness(Model::RLH, &robust.measure(&rlh_model, engine, test, &[eps], feed)?);
        }
        repaired.push(Repaired {
            eps,
            model: rlh_model,
            index: index.clone(),
        });
    }
    report.timings = clock.finish();
    report.gates = report.check(&settings.gates);
    let examples = examples(test, &nn_attack, &nn_test, layout, settings.examples);
    Ok(Outcome {
        report,
        lh: lh.model,
        kh: kh.map(|k| k.model),
        repaired,
        examples,
    })
}
