//! What the experiment measured: every number [`super::run`] produced, as types that
//! serialise to `report.json` (the keys scripts rely on are in the CLI contract).
//! Rendering it for people is [`crate::report`]'s job.
//!
//! Definitions (Guidotti & Leofante, 2020): *efficacy* is the share of repair samples
//! RLH classifies correctly; *drawdown* is LH's accuracy on Data minus RLH's;
//! *generalisation* is the share of HADV's adversarial examples (made against LH on
//! test images, never seen by the repair) that RLH classifies correctly.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::attack::protocol::{Measured, Robustness};
use crate::attack::EpsResult;
use crate::data::Dataset;
use crate::features::Accuracy;
use crate::gate::{Check, Gate, Quantity};
use crate::provenance::Provenance;
use crate::repair::adversarial::Epoch;
use crate::repair::rounds::{self, Round};
use crate::repair::{LpSize, Status};

/// A model of the experiment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Model {
    /// The original network.
    NN,
    /// The linear hybrid.
    LH,
    /// The kernel hybrid.
    KH,
    /// The repaired linear hybrid (one per ε).
    RLH,
}

impl Model {
    /// Every model, in report order.
    pub const ALL: [Model; 4] = [Model::NN, Model::LH, Model::KH, Model::RLH];

    /// The model's name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Model::NN => "NN",
            Model::LH => "LH",
            Model::KH => "KH",
            Model::RLH => "RLH",
        }
    }
}

impl std::fmt::Display for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A test set of the experiment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum TestSet {
    /// The clean test images.
    Data,
    /// The test images the attack on NN flips, replaced by their adversarial examples.
    NADV,
    /// The same with the attack on LH.
    HADV,
    /// The same with the attack on RLH.
    RHADV,
}

impl TestSet {
    /// Every test set, in report order.
    pub const ALL: [TestSet; 4] = [TestSet::Data, TestSet::NADV, TestSet::HADV, TestSet::RHADV];

    /// The test set's name in the report.
    pub fn name(self) -> &'static str {
        match self {
            TestSet::Data => "Data",
            TestSet::NADV => "NADV",
            TestSet::HADV => "HADV",
            TestSet::RHADV => "RHADV",
        }
    }

    /// What it is, in words.
    pub fn describe(self) -> &'static str {
        match self {
            TestSet::Data => "the clean test images",
            TestSet::NADV => "test images flipped by the attack on NN replaced",
            TestSet::HADV => "test images flipped by the attack on LH replaced",
            TestSet::RHADV => "test images flipped by the attack on RLH replaced",
        }
    }
}

impl std::fmt::Display for TestSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One accuracy: a model on a test set at an ε.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    /// The model.
    pub model: Model,
    /// The test set.
    pub test_set: TestSet,
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
    /// The SVM's C (the chosen one with `--c auto`).
    pub c: f64,
    /// The solver that ran: `primal`, `dual`, or `mixed`.
    pub solver: &'static str,
    /// The largest per-class duality gap.
    pub max_gap: f64,
    /// Whether the SVM read standardised features (folded into the head).
    pub standardised: bool,
    /// The search for C with `--c auto` (`null` otherwise).
    pub c_selection: Option<crate::svm::Selection>,
}

/// One attack at one ε.
#[derive(Debug, Clone, Serialize)]
pub struct AttackFigures {
    /// The radius.
    pub eps: f32,
    /// The model attacked: NN, LH or RLH.
    pub target: Model,
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
    /// The adversarial training's epochs before the LPs (empty without).
    pub training: Vec<Epoch>,
    /// Every round of the repair's loop (empty without a repair).
    pub rounds: Vec<Round>,
    /// The round whose model RLH is.
    pub chosen_round: usize,
}

/// A model's robust accuracy at one ε, under the protocol of the report's settings
/// (for RLH, the radius it was repaired at too).
#[derive(Debug, Clone, Serialize)]
pub struct RobustFigures {
    /// The model, attacked itself.
    pub model: Model,
    /// What the protocol measured.
    #[serde(flatten)]
    pub figures: Robustness,
}

/// How a model fares on another model's adversarial examples.
#[derive(Debug, Clone, Serialize)]
pub struct TransferFigures {
    /// The model attacked.
    pub source: Model,
    /// The model measured on the source's adversarial examples.
    pub target: Model,
    /// The radius.
    pub eps: f32,
    /// Test images.
    pub n: usize,
    /// Share the target classifies right, with the source's flipped images replaced
    /// by their adversarial examples.
    pub accuracy: f64,
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
    /// The figures of `ds`.
    pub fn of(ds: &Dataset) -> Self {
        Self {
            source: ds.source.display().to_string(),
            n: ds.len(),
            classes: ds.n_classes(),
            fingerprint: ds.fingerprint(),
        }
    }
}

/// Where the model was cut.
#[derive(Debug, Clone, Serialize)]
pub struct CutFigures {
    /// The tensor the extractor ends at.
    pub tensor: String,
    /// Features D.
    pub feature_dim: usize,
    /// The rule that chose the cut.
    pub rule: crate::onnx::cut::CutRule,
    /// Why the cut fell back from the last pooling output, when it did.
    pub warning: Option<String>,
}

/// Everything the experiment measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The model's path, as given.
    pub model: String,
    /// The engine that ran it.
    pub engine: serde_json::Value,
    /// Versions of nnmend and its engine and solver.
    pub versions: BTreeMap<String, String>,
    /// The build that made the report: version, commit, features (as `--version --json`).
    pub provenance: Provenance,
    /// The settings that matter for reproducing the numbers.
    pub settings: serde_json::Value,
    /// The training set.
    pub train: DataFigures,
    /// The test set.
    pub test: DataFigures,
    /// The images the search for C scored its candidates on, when given apart.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validation: Option<DataFigures>,
    /// Where the model was cut and the feature count.
    pub cut: CutFigures,
    /// The hybrids' fits, by model.
    pub fits: BTreeMap<Model, FitFigures>,
    /// Every model × test set × ε.
    pub cells: Vec<Cell>,
    /// Every attack.
    pub attacks: Vec<AttackFigures>,
    /// The repair per ε.
    pub repairs: Vec<RepairFigures>,
    /// Robust accuracy of every model at every ε (empty when not measured).
    pub robustness: Vec<RobustFigures>,
    /// NN's and LH's adversarial examples (from the robust accuracy's attacks) on KH.
    pub transfer: Vec<TransferFigures>,
    /// Seconds per phase, in the order they ran.
    #[serde(serialize_with = "ordered_map")]
    pub timings: Vec<(String, f64)>,
    /// The gates given, each judged on its worst value over ε (empty without gates).
    pub gates: Vec<Check>,
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

/// The versions a report records.
pub fn versions() -> BTreeMap<String, String> {
    [
        ("nnmend", env!("CARGO_PKG_VERSION")),
        ("tract", crate::engine::tract::VERSION),
        ("clarabel", "0.11"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

impl Report {
    pub(super) fn push_cell(
        &mut self,
        model: Model,
        test_set: TestSet,
        eps: f32,
        accuracy: Accuracy,
        adversarial: usize,
    ) {
        self.cells.push(Cell {
            model,
            test_set,
            eps,
            accuracy: accuracy.accuracy,
            correct: accuracy.correct,
            n: self.test.n,
            adversarial,
        });
    }

    pub(super) fn push_attack(&mut self, eps: f32, target: Model, r: &EpsResult) {
        self.attacks.push(AttackFigures {
            eps,
            target,
            success_rate: r.success_rate,
            successes: r.successes,
            clean_correct: r.clean_correct,
            seconds: r.seconds,
        });
    }

    pub(super) fn push_repair(
        &mut self,
        eps: f32,
        looped: Option<&rounds::Outcome>,
        drawdown: f64,
        generalisation: Option<f64>,
        held_out: usize,
    ) {
        let done = looped.map(|l| &l.fix);
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
            training: looped.map_or_else(Vec::new, |l| l.epochs.clone()),
            rounds: looped.map_or_else(Vec::new, |l| l.rounds.clone()),
            chosen_round: looped.map_or(0, |l| l.chosen),
        });
    }

    pub(super) fn push_robustness(&mut self, model: Model, measured: &[Measured]) {
        for m in measured {
            self.robustness.push(RobustFigures {
                model,
                figures: m.robustness.clone(),
            });
        }
    }

    /// Each gate judged on RLH at every ε: its efficacy (LH's, when the repair's LP
    /// stalled and RLH is LH unchanged), its drawdown and its robust accuracy (not
    /// measured without the protocol: that gate fails).
    pub fn check(&self, gates: &[Gate]) -> Vec<Check> {
        let at = |eps: f32| Some(format!("at ε = {eps}"));
        let efficacy = |r: &RepairFigures| {
            if r.used || r.status.is_none() {
                r.efficacy
            } else {
                r.efficacy_before
            }
        };
        gates
            .iter()
            .map(|gate| match gate.quantity {
                Quantity::Efficacy => gate.check(self.repairs.iter().map(|r| (efficacy(r), at(r.eps)))),
                Quantity::Drawdown => gate.check(self.repairs.iter().map(|r| (r.drawdown, at(r.eps)))),
                Quantity::RobustAccuracy => gate.check(
                    self.robustness
                        .iter()
                        .filter(|r| r.model == Model::RLH)
                        .map(|r| (r.figures.robust_accuracy, at(r.figures.eps))),
                ),
                // Accuracy gates are eval's; the experiment has no single accuracy.
                Quantity::Accuracy => gate.check([]),
            })
            .collect()
    }

    /// The robust accuracy of `model` at `eps`, if measured.
    pub fn robust_accuracy(&self, model: Model, eps: f32) -> Option<f64> {
        self.robustness
            .iter()
            .find(|r| r.model == model && r.figures.eps == eps)
            .map(|r| r.figures.robust_accuracy)
    }

    /// The accuracy of `model` on `test_set` at `eps`, if measured.
    pub fn accuracy(&self, model: Model, test_set: TestSet, eps: f32) -> Option<f64> {
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

    /// The summary `run` prints: the paper's six accuracies (in percent) at each ε.
    pub fn write_text(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        writeln!(out, "eps      NN/Data  LH/Data  RLH/Data NN/NADV  LH/HADV  RLH/RHADV")?;
        for e in self.eps() {
            let a = |m: Model, s: TestSet| self.accuracy(m, s, e).map_or(f64::NAN, |v| 100.0 * v);
            writeln!(
                out,
                "{:<8} {:<8.2} {:<8.2} {:<8.2} {:<8.2} {:<8.2} {:.2}",
                e,
                a(Model::NN, TestSet::Data),
                a(Model::LH, TestSet::Data),
                a(Model::RLH, TestSet::Data),
                a(Model::NN, TestSet::NADV),
                a(Model::LH, TestSet::HADV),
                a(Model::RLH, TestSet::RHADV)
            )?;
        }
        Ok(())
    }

    /// The models measured, in report order.
    pub fn models(&self) -> Vec<Model> {
        Model::ALL
            .into_iter()
            .filter(|m| self.cells.iter().any(|c| c.model == *m))
            .collect()
    }
}

/// The file name of RLH at `eps` in the output folder.
pub fn model_file(eps: f32) -> String {
    format!("models/RLH_eps{eps}.onnx")
}
