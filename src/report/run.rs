//! The report of `nnmend run`: every number [`crate::experiment::run`] measured, as JSON for
//! machines (`report.json`) and as Markdown tables laid out like the paper's for
//! people (`report.md`).
//!
//! Definitions (Guidotti & Leofante, 2020): *efficacy* is the share of repair samples
//! RLH classifies correctly; *drawdown* is LH's accuracy on Data minus RLH's;
//! *generalisation* is the share of HADV's adversarial examples (made against LH on
//! test images, never seen by the repair) that RLH classifies correctly.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::attack::EpsResult;
use crate::data::Dataset;
use crate::onnx::Cut;
use crate::repair::{HybridRepair, LpSize, Status};

use crate::experiment::{Settings, MODELS, TEST_SETS};

/// tract's version (pinned in Cargo.toml; a test keeps the two equal).
pub const TRACT_VERSION: &str = "0.23.9";

/// One accuracy: a model on a test set at an ε.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    /// `NN`, `LH`, `KH` or `RLH`.
    pub model: String,
    /// `Data`, `NADV`, `HADV` or `RHADV`.
    pub test_set: String,
    /// The radius.
    pub eps: f32,
    /// Share classified correctly.
    pub accuracy: f64,
    /// Images classified correctly.
    pub correct: usize,
    /// Images in the test set.
    pub n: usize,
    /// Images of the test set that are adversarial examples.
    pub adversarial: usize,
}

/// How a hybrid's head was fitted.
#[derive(Debug, Clone, Serialize)]
pub struct FitFigures {
    /// Accuracy on the training features.
    pub train_accuracy: f64,
    /// Whether the SVM met its tolerance.
    pub converged: bool,
    /// The SVM's primal objective.
    pub objective: f64,
    /// Seconds.
    pub seconds: f64,
}

/// One attack at one ε.
#[derive(Debug, Clone, Serialize)]
pub struct AttackFigures {
    /// The radius.
    pub eps: f32,
    /// `NN`, `LH` or `RLH`.
    pub target: String,
    /// Share of correctly classified test images the attack flipped.
    pub success_rate: f64,
    /// Flipped images.
    pub successes: usize,
    /// Correctly classified clean images.
    pub clean_correct: usize,
    /// Seconds.
    pub seconds: f64,
}

/// The repair at one ε.
#[derive(Debug, Clone, Serialize)]
pub struct RepairFigures {
    /// The radius.
    pub eps: f32,
    /// Repair samples (adversarial training images); 0 when the attack flipped no
    /// training image, and RLH is then LH unchanged.
    pub samples: usize,
    /// The LP's status (the worst over classes); `null` when there was no LP.
    pub status: Option<Status>,
    /// Whether RLH is this repair's result; false when there was no LP, or when it
    /// stalled or was infeasible (RLH is then LH unchanged).
    pub used: bool,
    /// The LP's optimum.
    pub objective: f64,
    /// Seconds in the solver.
    pub seconds: f64,
    /// The LP's size.
    pub lp: Option<LpSize>,
    /// Σ|ΔW| (+ Σ|Δb|).
    pub l1: f64,
    /// max |ΔW|.
    pub linf: f64,
    /// Share of repair samples RLH classifies correctly.
    pub efficacy: f64,
    /// The same share for LH.
    pub efficacy_before: f64,
    /// LH's accuracy on Data minus RLH's.
    pub drawdown: f64,
    /// Share of HADV's adversarial examples RLH classifies correctly (`null` when
    /// the attack on LH flipped no test image).
    pub generalisation: Option<f64>,
    /// HADV's adversarial examples.
    pub held_out: usize,
    /// The repaired model's file, relative to the output folder.
    pub model_file: String,
}

/// A data set as the report names it.
#[derive(Debug, Clone, Serialize)]
pub struct DataFigures {
    /// Where it was read from.
    pub source: String,
    /// Images.
    pub n: usize,
    /// Classes.
    pub classes: usize,
    /// SHA-256 of its pixels and labels.
    pub fingerprint: String,
}

impl DataFigures {
    fn of(ds: &Dataset) -> Self {
        Self {
            source: ds.source.display().to_string(),
            n: ds.len(),
            classes: ds.n_classes(),
            fingerprint: ds.fingerprint(),
        }
    }
}

/// Everything the experiment measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Versions of nnmend and its engine and solver.
    pub versions: BTreeMap<String, String>,
    /// The settings that matter for reproducing the numbers.
    pub settings: serde_json::Value,
    /// The training set.
    pub train: DataFigures,
    /// The test set.
    pub test: DataFigures,
    /// Where the model was cut and the feature count.
    pub cut: serde_json::Value,
    /// The hybrids' fits, by model.
    pub fits: BTreeMap<String, FitFigures>,
    /// Every model × test set × ε.
    pub cells: Vec<Cell>,
    /// Every attack.
    pub attacks: Vec<AttackFigures>,
    /// The repair per ε.
    pub repairs: Vec<RepairFigures>,
    /// Seconds per phase, in the order they ran.
    #[serde(serialize_with = "ordered_map")]
    pub timings: Vec<(String, f64)>,
}

fn ordered_map<S: serde::Serializer>(pairs: &[(String, f64)], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = s.serialize_map(Some(pairs.len() + 1))?;
    for (k, v) in pairs {
        map.serialize_entry(k, v)?;
    }
    map.serialize_entry("total", &pairs.iter().map(|(_, v)| v).sum::<f64>())?;
    map.end()
}

impl Report {
    pub(crate) fn new(
        settings: &Settings,
        train: &Dataset,
        test: &Dataset,
        cut: &Cut,
        feature_dim: usize,
        fits: Vec<(&str, FitFigures)>,
    ) -> Self {
        let versions = [
            ("nnmend", env!("CARGO_PKG_VERSION")),
            ("tract", TRACT_VERSION),
            ("clarabel", "0.11"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let a = &settings.attack;
        let pgd = a.method == crate::attack::Method::Pgd;
        let svm = &settings.fit.svm;
        let settings_json = serde_json::json!({
            "eps": settings.eps,
            "attack": {
                "method": a.method,
                "loss": settings.loss,
                "steps": pgd.then_some(a.steps),
                "step_ratio": pgd.then_some(a.step_ratio),
                "random_start": pgd.then_some(a.random_start),
                "early_stop": pgd.then_some(a.early_stop),
            },
            "svm": {"c": svm.c, "loss": format!("{:?}", svm.loss), "tol": svm.tol, "max_iter": svm.max_iter},
            "repair": {
                "mode": if settings.repair.margin.is_some() { "margin" } else { "paper" },
                "samples": settings.repair_samples,
                "repair_bias": settings.repair.class.repair_bias,
                "preserve": settings.repair.margin.is_some().then_some(settings.repair.preserve),
            },
            "kernel": settings.kernel.as_ref().map(|k| serde_json::json!({
                "landmarks": k.landmarks, "gamma": k.gamma, "seed": k.seed,
            })),
            "seed": settings.seed,
            "batch": settings.fit.feed.batch,
            "threads": settings.fit.feed.threads,
            "mean": settings.fit.feed.mean,
            "std": settings.fit.feed.std,
        });
        Self {
            versions,
            settings: settings_json,
            train: DataFigures::of(train),
            test: DataFigures::of(test),
            cut: serde_json::json!({"tensor": cut.tensor, "feature_dim": feature_dim}),
            fits: fits.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            cells: Vec::new(),
            attacks: Vec::new(),
            repairs: Vec::new(),
            timings: Vec::new(),
        }
    }

    pub(crate) fn push_cell(
        &mut self,
        model: &str,
        test_set: &str,
        eps: f32,
        (correct, accuracy): (usize, f64),
        adversarial: usize,
    ) {
        self.cells.push(Cell {
            model: model.into(),
            test_set: test_set.into(),
            eps,
            accuracy,
            correct,
            n: self.test.n,
            adversarial,
        });
    }

    pub(crate) fn push_attack(&mut self, eps: f32, target: &str, r: &EpsResult) {
        self.attacks.push(AttackFigures {
            eps,
            target: target.into(),
            success_rate: r.success_rate,
            successes: r.successes,
            clean_correct: r.clean_correct,
            seconds: r.seconds,
        });
    }

    pub(crate) fn push_repair(
        &mut self,
        eps: f32,
        done: Option<&HybridRepair>,
        drawdown: f64,
        generalisation: Option<f64>,
        held_out: usize,
    ) {
        let r = done.map(|d| &d.repair);
        self.repairs.push(RepairFigures {
            eps,
            samples: done.map_or(0, |d| d.samples),
            status: r.map(|r| r.status),
            used: r.is_some_and(|r| r.status.usable()),
            objective: r.map_or(0.0, |r| r.objective),
            seconds: r.map_or(0.0, |r| r.seconds),
            lp: done.map(|d| d.lp),
            l1: r.map_or(0.0, |r| r.l1),
            linf: r.map_or(0.0, |r| r.linf),
            efficacy: done.map_or(1.0, |d| d.efficacy),
            efficacy_before: done.map_or(1.0, |d| d.efficacy_before),
            drawdown,
            generalisation,
            held_out,
            model_file: model_file(eps),
        });
    }

    /// The accuracy of `model` on `test_set` at `eps`, if measured.
    pub fn accuracy(&self, model: &str, test_set: &str, eps: f32) -> Option<f64> {
        self.cells
            .iter()
            .find(|c| c.model == model && c.test_set == test_set && c.eps == eps)
            .map(|c| c.accuracy)
    }

    /// The ε values, in the order run.
    pub fn eps(&self) -> Vec<f32> {
        let mut out: Vec<f32> = Vec::new();
        for c in &self.cells {
            if !out.contains(&c.eps) {
                out.push(c.eps);
            }
        }
        out
    }

    /// The models measured, in report order.
    pub fn models(&self) -> Vec<&'static str> {
        MODELS
            .into_iter()
            .filter(|m| self.cells.iter().any(|c| c.model == *m))
            .collect()
    }

    /// The report for people: the paper's tables, the repair's figures, the timings,
    /// and the `figures` (title, file) as images.
    pub fn markdown(&self, title: &str, figures: &[(String, String)]) -> String {
        let mut md = String::new();
        let eps = self.eps();
        let models = self.models();
        let pct = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{:.2}", 100.0 * v));
        let _ = writeln!(md, "# {title}\n");
        let _ = writeln!(
            md,
            "Training set: `{}` ({} images). Test set: `{}` ({} images). Cut at `{}` ({} features). \
             Attack: {}. Repair: {} mode, {} sample(s) per ε. Seed {}.\n",
            self.train.source,
            self.train.n,
            self.test.source,
            self.test.n,
            self.cut["tensor"].as_str().unwrap_or("?"),
            self.cut["feature_dim"],
            self.settings["attack"]["method"].as_str().unwrap_or("?").to_uppercase(),
            self.settings["repair"]["mode"].as_str().unwrap_or("?"),
            self.settings["repair"]["samples"],
            self.settings["seed"],
        );
        let _ = writeln!(
            md,
            "Accuracies are percentages of the {} test images. ε is the L∞ radius in [0, 1] pixel space. \
             NADV, HADV and RHADV are the test set with every image that the attack on NN, LH or RLH flips \
             replaced by its adversarial example.\n",
            self.test.n
        );
        let _ = writeln!(md, "## Clean test accuracy (Data)\n");
        let _ = writeln!(md, "| model | accuracy (%) |\n| --- | --- |");
        for m in models.iter().filter(|m| **m != "RLH") {
            let _ = writeln!(
                md,
                "| {m} | {} |",
                pct(eps.first().and_then(|&e| self.accuracy(m, "Data", e)))
            );
        }
        for &e in &eps {
            let _ = writeln!(md, "| RLH (ε = {e}) | {} |", pct(self.accuracy("RLH", "Data", e)));
        }
        for set in TEST_SETS.iter().skip(1) {
            let _ = writeln!(md, "\n## Accuracy on {set} (%)\n");
            let _ = writeln!(md, "| ε | {} |", models.join(" | "));
            let _ = writeln!(md, "| --- |{}", " --- |".repeat(models.len()));
            for &e in &eps {
                let row: Vec<String> = models.iter().map(|m| pct(self.accuracy(m, set, e))).collect();
                let _ = writeln!(md, "| {e} | {} |", row.join(" | "));
            }
        }
        let _ = writeln!(md, "\n## Repair\n");
        let _ = writeln!(
            md,
            "| ε | samples | status | efficacy (%) | drawdown (pp) | generalisation (%) | LP variables | LP constraints | LP time (s) | ‖ΔW‖₁ | ‖ΔW‖∞ |"
        );
        let _ = writeln!(md, "| --- |{}", " --- |".repeat(10));
        for r in &self.repairs {
            let generalisation = r.generalisation.map_or("– (no HADV example)".into(), |g| {
                format!("{:.2} of {}", 100.0 * g, r.held_out)
            });
            let _ = match (&r.status, &r.lp) {
                (Some(status), Some(lp)) => writeln!(
                    md,
                    "| {} | {} | {} | {:.2} | {:.2} | {generalisation} | {} | {} | {:.2} | {:.4} | {:.4} |",
                    r.eps,
                    r.samples,
                    if r.used {
                        format!("{status:?}").to_lowercase()
                    } else {
                        format!("{status:?}: not used, RLH = LH").to_lowercase()
                    },
                    100.0 * r.efficacy,
                    100.0 * r.drawdown,
                    lp.variables,
                    lp.constraints,
                    r.seconds,
                    r.l1,
                    r.linf
                ),
                _ => writeln!(
                    md,
                    "| {} | 0 | no repair: the attack flipped no training image, RLH = LH | – | 0.00 | {generalisation} | – | – | – | 0 | 0 |",
                    r.eps
                ),
            };
        }
        let _ = writeln!(md, "\n## Attack success rates (%)\n");
        let _ = writeln!(md, "| ε | NN | LH | RLH |\n| --- | --- | --- | --- |");
        for &e in &eps {
            let rate = |t: &str| {
                self.attacks
                    .iter()
                    .find(|a| a.eps == e && a.target == t)
                    .map_or("–".into(), |a| format!("{:.2}", 100.0 * a.success_rate))
            };
            let _ = writeln!(md, "| {e} | {} | {} | {} |", rate("NN"), rate("LH"), rate("RLH"));
        }
        if !figures.is_empty() {
            let _ = writeln!(md, "\n## Figures\n");
            for (caption, file) in figures {
                let _ = writeln!(md, "![{caption}]({file})");
            }
        }
        let _ = writeln!(md, "\n## Timings\n\n| phase | seconds |\n| --- | --- |");
        for (phase, s) in &self.timings {
            let _ = writeln!(md, "| {phase} | {s:.1} |");
        }
        let total: f64 = self.timings.iter().map(|(_, s)| s).sum();
        let _ = writeln!(md, "| total | {total:.1} |");
        let _ = writeln!(
            md,
            "\nnnmend {}, tract {}, clarabel {}.",
            self.versions.get("nnmend").map_or("?", String::as_str),
            self.versions.get("tract").map_or("?", String::as_str),
            self.versions.get("clarabel").map_or("?", String::as_str),
        );
        md
    }
}

/// The file name of RLH at `eps` in the output folder.
pub fn model_file(eps: f32) -> String {
    format!("models/RLH_eps{eps}.onnx")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_tract_version_is_the_pinned_one() {
        let manifest = include_str!("../../Cargo.toml");
        assert!(
            manifest.contains(&format!("tract-onnx = {{ version = \"={}\"", super::TRACT_VERSION)),
            "Cargo.toml pins another tract"
        );
    }
}
