//! `repair --certify E --json`.

use std::io::Write;
use std::path::PathBuf;

use serde::Serialize;

use crate::gate::{Check, Gate, Quantity};
use crate::head::HeadKind;
use crate::repair::certified::{CertifiedRepair, CertifiedRepairSettings, CertifiedSolution, HeldOut};

use super::{BeforeAfter, ChangeDoc};

/// `repair --certify E --json`: a repair that certifies balls rather than fixing points.
#[derive(Debug, Clone, Serialize)]
pub struct CertifiedRepairDoc {
    /// Always `certified`.
    pub mode: &'static str,
    /// How the feature bounds were computed: `ibp` (interval bounds) or `crown`.
    pub method: &'static str,
    /// Linear or kernel hybrid.
    pub head: HeadKind,
    /// Width of the features the head reads.
    pub features: usize,
    /// The balls' radius.
    pub eps: f32,
    /// The worst margin wanted over each ball.
    pub margin: f64,
    /// Price of a ball's shortfall.
    pub ball_price: f64,
    /// Price of a preserved image's loss of margin.
    pub keep_price: f64,
    /// The margin a preserved image keeps (its own when smaller).
    pub keep_margin: f64,
    /// Balls repaired.
    pub balls: usize,
    /// Training images preserved.
    pub preserved: usize,
    /// Balls certified (as `certify` checks) before the repair.
    pub certified_before: usize,
    /// Balls certified in the written model.
    pub certified_after: usize,
    /// `certified_after / balls`.
    pub efficacy: f64,
    /// How the program ended.
    pub status: crate::repair::Status,
    /// The program's figures.
    pub lp: CertifiedSolution,
    /// The weights' change.
    pub change: ChangeDoc,
    /// Clean test accuracy before and after (with `--test`).
    pub accuracy: Option<BeforeAfter>,
    /// Clean accuracy lost.
    pub drawdown: Option<f64>,
    /// Certified accuracy of the first test images' balls before and after.
    pub held_out: Option<HeldOut>,
    /// Seconds of the balls' bounds.
    pub bounds_seconds: f64,
    /// Seconds of the repair: bounds, program, write and check.
    pub repair_seconds: f64,
    /// The engine.
    pub engine: serde_json::Value,
    /// The repaired model.
    pub output: PathBuf,
    /// The gates given (`--min-efficacy`, `--max-drawdown`).
    pub gates: Vec<Check>,
}

impl CertifiedRepairDoc {
    /// The document of `done`, repaired with `settings` and measured on test images
    /// ([`crate::repair::certified::assess_certified`]), with `gates` judged on it.
    pub fn new(
        done: &CertifiedRepair,
        settings: &CertifiedRepairSettings,
        test: Option<((f64, f64), Option<HeldOut>)>,
        engine: serde_json::Value,
        output: PathBuf,
        gates: &[Gate],
    ) -> Self {
        let efficacy = if done.balls == 0 {
            0.0
        } else {
            done.certified_after as f64 / done.balls as f64
        };
        let (accuracy, held_out) = match test {
            Some((accuracy, held_out)) => (Some(accuracy), held_out),
            None => (None, None),
        };
        let drawdown = accuracy.map(|(before, after)| before - after);
        let checks = gates
            .iter()
            .map(|gate| match gate.quantity {
                Quantity::Efficacy => gate.check([(efficacy, None)]),
                Quantity::Drawdown => gate.check(drawdown.map(|d| (d, None))),
                Quantity::Accuracy => gate.check(accuracy.map(|(_, after)| (after, None))),
                Quantity::RobustAccuracy => gate.check(None),
            })
            .collect();
        Self {
            mode: "certified",
            method: if settings.crown { "crown" } else { "ibp" },
            head: done.head,
            features: done.features,
            eps: settings.eps,
            margin: settings.margin,
            ball_price: settings.ball_price,
            keep_price: settings.keep_price,
            keep_margin: settings.keep_margin,
            balls: done.balls,
            preserved: done.preserved,
            certified_before: done.certified_before,
            certified_after: done.certified_after,
            efficacy,
            status: done.solution.status,
            lp: done.solution.clone(),
            change: ChangeDoc {
                l1: done.l1,
                linf: done.linf,
            },
            accuracy: accuracy.map(|(before, after)| BeforeAfter { before, after }),
            drawdown,
            held_out,
            bounds_seconds: done.bounds_seconds,
            repair_seconds: done.seconds,
            engine,
            output,
            gates: checks,
        }
    }

    /// The document as text.
    pub fn write_text(&self, out: &mut impl Write) -> std::io::Result<()> {
        let share = |a: usize| {
            if self.balls == 0 {
                0.0
            } else {
                a as f64 / self.balls as f64
            }
        };
        writeln!(
            out,
            "certified repair of a {} hybrid at eps = {} ({} features): {} balls, {} preserved images",
            self.head.name(),
            self.eps,
            self.features,
            self.balls,
            self.preserved
        )?;
        writeln!(
            out,
            "balls certified ({} bounds): {} ({:.4}) before, {} ({:.4}) after",
            if self.method == "crown" { "CROWN" } else { "interval" },
            self.certified_before,
            share(self.certified_before),
            self.certified_after,
            share(self.certified_after)
        )?;
        writeln!(
            out,
            "LP: {:?}, objective {:.6}, {} rounds, {} rows, {} changeable weights, {} iterations, {:.1} s",
            self.status,
            self.lp.objective,
            self.lp.rounds,
            self.lp.rows,
            self.lp.columns,
            self.lp.iterations,
            self.lp.seconds
        )?;
        writeln!(out, "change: L1 {:.6}, Linf {:.6}", self.change.l1, self.change.linf)?;
        if let (Some(a), Some(d)) = (self.accuracy, self.drawdown) {
            writeln!(
                out,
                "test accuracy: {:.4} -> {:.4} (drawdown {:.2} pp)",
                a.before,
                a.after,
                100.0 * d
            )?;
        }
        if let Some(h) = self.held_out {
            writeln!(
                out,
                "certified accuracy of the first {} test images: {:.4} -> {:.4}",
                h.n, h.before, h.after
            )?;
        }
        writeln!(
            out,
            "repair {:.1} s in all (bounds {:.1} s)",
            self.repair_seconds, self.bounds_seconds
        )?;
        writeln!(out, "wrote {}", self.output.display())
    }
}
