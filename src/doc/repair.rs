//! `repair --json`.

use std::path::PathBuf;

use serde::Serialize;

use crate::attack::protocol::Robustness;
use crate::gate::{Check, Gate, Quantity};
use crate::head::HeadKind;
use crate::repair::adversarial::Epoch;
use crate::repair::rounds::Round;
use crate::repair::{Assessment, HybridRepair, LpSize, Settings, Status};

use super::LpClassDoc;

/// The weights' change.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ChangeDoc {
    /// Σ|ΔW| (+ Σ|Δb|).
    pub l1: f64,
    /// max |ΔW|.
    pub linf: f64,
}

/// Clean accuracy before and after a repair.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct BeforeAfter {
    /// The hybrid's.
    pub before: f64,
    /// The repaired hybrid's.
    pub after: f64,
}

/// The margin program's figures.
#[derive(Debug, Clone, Serialize)]
pub struct MarginDoc {
    /// The margin wanted.
    pub margin: f64,
    /// Price of a repair sample's slack.
    pub slack_price: f64,
    /// Price of a preserved sample's slack.
    pub keep_price: f64,
    /// Training images preserved (besides the originals).
    pub preserve: usize,
    /// clarabel's iterations.
    pub iterations: u32,
    /// Constraint-generation rounds.
    pub rounds: usize,
    /// Constraints in the final active set.
    pub active_constraints: usize,
    /// The certified gap.
    pub gap: f64,
    /// Repair samples short of their margin.
    pub short_repair_samples: usize,
    /// Preserved samples short of theirs.
    pub short_preservation_samples: usize,
}

/// Robust accuracy before and after a repair.
#[derive(Debug, Clone, Serialize)]
pub struct RobustDoc {
    /// The hybrid's.
    pub before: Robustness,
    /// The repaired hybrid's.
    pub after: Robustness,
}

/// `repair --json`.
#[derive(Debug, Clone, Serialize)]
pub struct RepairDoc {
    /// How the LP ended (the worst class).
    pub status: Status,
    /// Its optimum.
    pub objective: f64,
    /// Seconds of the solve.
    pub seconds: f64,
    /// The LP's size.
    pub lp: LpSize,
    /// The weights' change.
    pub change: ChangeDoc,
    /// Share of repair samples classified right after the repair.
    pub efficacy: f64,
    /// The same before it.
    pub efficacy_before: f64,
    /// Clean accuracy before minus after (`null` without `--test`).
    pub drawdown: Option<f64>,
    /// Clean accuracy before and after (`null` without `--test`).
    pub accuracy: Option<BeforeAfter>,
    /// Share of held-out adversarial examples classified right (`null` without
    /// `--adv-test`, or when it holds none).
    pub generalisation: Option<f64>,
    /// Held-out adversarial examples.
    pub held_out: Option<usize>,
    /// PGD robust accuracy on the test images before and after (`null` without
    /// `--test`).
    pub robustness: Option<RobustDoc>,
    /// Seconds for the whole repair (features, training, every round), beside the
    /// LP's own `seconds`.
    pub repair_seconds: f64,
    /// The adversarial training's epochs before the LPs (`--epochs`; empty without).
    pub training: Vec<Epoch>,
    /// Every round of the loop (one for a single repair).
    pub rounds: Vec<Round>,
    /// The round whose model was written.
    pub chosen_round: usize,
    /// Repair samples.
    pub samples: usize,
    /// The repair samples still wrong, by `index`.
    pub unfixed: Vec<i64>,
    /// Changeable and total features.
    pub features: serde_json::Value,
    /// `paper` or `margin`.
    pub mode: &'static str,
    /// Linear or kernel hybrid.
    pub head: HeadKind,
    /// Margin mode's figures.
    pub margin: Option<MarginDoc>,
    /// Paper mode's classes.
    pub classes: Vec<LpClassDoc>,
    /// The engine.
    pub engine: serde_json::Value,
    /// The repaired model.
    pub output: PathBuf,
    /// The gates given (`--min-efficacy`, `--max-drawdown`, `--min-robust-accuracy`).
    pub gates: Vec<Check>,
}

impl RepairDoc {
    /// The document of `done`, repaired with `settings`, with `gates` judged on it.
    pub fn new(
        done: &HybridRepair,
        settings: &Settings,
        facts: &Assessment,
        engine: serde_json::Value,
        output: PathBuf,
        gates: &[Gate],
    ) -> Self {
        let fix = &done.fix;
        let r = &fix.repair;
        let options = settings.margin.unwrap_or_default();
        Self {
            status: r.status,
            objective: r.objective,
            seconds: r.seconds,
            lp: fix.lp,
            change: ChangeDoc { l1: r.l1, linf: r.linf },
            efficacy: fix.efficacy,
            efficacy_before: fix.efficacy_before,
            drawdown: facts.accuracy.map(|(before, after)| before - after),
            accuracy: facts.accuracy.map(|(before, after)| BeforeAfter { before, after }),
            generalisation: facts.generalisation.map(|g| g.0),
            held_out: facts.generalisation.map(|g| g.1),
            robustness: facts
                .robustness
                .clone()
                .map(|(before, after)| RobustDoc { before, after }),
            repair_seconds: done.seconds,
            training: done.epochs.clone(),
            rounds: done.rounds.clone(),
            chosen_round: done.chosen,
            samples: fix.samples,
            unfixed: done.unfixed.clone(),
            features: serde_json::json!({"changeable": fix.changeable, "total": fix.feature_dim}),
            mode: settings.mode(),
            head: done.head,
            margin: r.margin.as_ref().map(|m| MarginDoc {
                margin: options.margin,
                slack_price: options.slack_price,
                keep_price: options.keep_price,
                preserve: settings.preserve,
                iterations: m.iterations,
                rounds: m.rounds,
                active_constraints: m.active,
                gap: m.gap,
                short_repair_samples: m.xi.iter().take(fix.samples).filter(|v| **v > 1e-6).count(),
                short_preservation_samples: m.xi.iter().skip(fix.samples).filter(|v| **v > 1e-6).count(),
            }),
            classes: r.classes.iter().map(|c| LpClassDoc::new(c, true)).collect(),
            engine,
            output,
            gates: Vec::new(),
        }
        .judged(gates)
    }

    /// The text `nnmend repair` prints: the LP's outcome, what was measured, every
    /// epoch and round.
    pub fn write_text(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        writeln!(
            out,
            "{:?}: objective {:.6}, |ΔW|₁ {:.4}, |ΔW|∞ {:.4}, {} samples, efficacy {:.4} (was {:.4}), {:.1} s",
            self.status,
            self.objective,
            self.change.l1,
            self.change.linf,
            self.samples,
            self.efficacy,
            self.efficacy_before,
            self.seconds
        )?;
        if let (Some(a), Some(d)) = (&self.accuracy, self.drawdown) {
            writeln!(
                out,
                "clean accuracy {:.4} -> {:.4} (drawdown {d:.4})",
                a.before, a.after
            )?;
        }
        if let (Some(g), Some(n)) = (self.generalisation, self.held_out) {
            writeln!(out, "held-out adversarials fixed: {g:.4} of {n}")?;
        }
        if let Some(r) = &self.robustness {
            writeln!(
                out,
                "PGD robust accuracy at ε = {} on {} test images: {:.4} -> {:.4}",
                r.after.eps, r.after.n, r.before.robust_accuracy, r.after.robust_accuracy
            )?;
        }
        for e in &self.training {
            writeln!(
                out,
                "epoch {}: pool robust accuracy {:.4} (during the epoch), hinge {:.4}, {:.1} s",
                e.epoch, e.pool_robust_accuracy, e.loss, e.seconds
            )?;
        }
        for r in &self.rounds {
            writeln!(
                out,
                "round {}: {} samples (+{}), {:?}, objective {:.4}, efficacy {:.4}, pool robust accuracy {}, LP \
                 {:.1} s, attack {:.1} s",
                r.round,
                r.samples,
                r.new_samples,
                r.status,
                r.objective,
                r.efficacy,
                r.pool_robust_accuracy.map_or("-".into(), |a| format!("{a:.4}")),
                r.lp_seconds,
                r.attack_seconds
            )?;
        }
        writeln!(out, "repair {:.1} s in all", self.repair_seconds)?;
        writeln!(out, "wrote {}", self.output.display())
    }

    /// With each of `gates` judged: the efficacy, the drawdown, and the repaired
    /// model's robust accuracy (a gate whose value was not measured fails).
    fn judged(mut self, gates: &[Gate]) -> Self {
        let robust = self.robustness.as_ref().map(|r| &r.after);
        self.gates = gates
            .iter()
            .map(|gate| match gate.quantity {
                Quantity::Efficacy => gate.check([(self.efficacy, None)]),
                Quantity::Drawdown => gate.check(self.drawdown.map(|d| (d, None))),
                Quantity::RobustAccuracy => {
                    gate.check(robust.map(|r| (r.robust_accuracy, Some(format!("at ε = {}", r.eps)))))
                }
                Quantity::Accuracy => gate.check(self.accuracy.as_ref().map(|a| (a.after, None))),
            })
            .collect();
        self
    }
}
