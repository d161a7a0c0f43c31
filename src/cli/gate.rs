//! The gate options of `repair` and `run` (`--min-efficacy`, `--max-drawdown`,
//! `--min-robust-accuracy`), and the verdict every gated command gives: one line on
//! stderr per failed gate, naming it, the value and the bound, and exit code 3.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use nnmend::gate::{parse_bound, Check, Gate, Quantity};

use super::{usage, EXIT_GATE};

/// Bounds on a repair's result; a command given one writes its outputs, then exits 3
/// when the result misses it.
#[derive(Debug, Args)]
pub(super) struct GateArgs {
    /// Fail with exit code 3 when the efficacy (share of repair samples the repaired
    /// model classifies correctly; with `run`, the lowest over ε) is below this fraction.
    #[arg(long, value_name = "FRACTION", value_parser = parse_bound)]
    pub min_efficacy: Option<f64>,
    /// Fail with exit code 3 when the drawdown (clean test accuracy lost; with `run`,
    /// the largest over ε) is above this fraction (0.003 is 0.3 points).
    #[arg(long, value_name = "FRACTION", value_parser = parse_bound)]
    pub max_drawdown: Option<f64>,
    /// Fail with exit code 3 when the repaired model's PGD robust accuracy on the test
    /// images (see --pgd-limit; with `run`, the lowest over ε) is below this fraction.
    #[arg(long, value_name = "FRACTION", value_parser = parse_bound)]
    pub min_robust_accuracy: Option<f64>,
}

impl GateArgs {
    /// The gates given, in the order above.
    pub fn gates(&self) -> Vec<Gate> {
        [
            (Quantity::Efficacy, self.min_efficacy),
            (Quantity::Drawdown, self.max_drawdown),
            (Quantity::RobustAccuracy, self.min_robust_accuracy),
        ]
        .into_iter()
        .filter_map(|(quantity, bound)| bound.map(|bound| Gate { quantity, bound }))
        .collect()
    }

    /// Whether a gate on `quantity` was given.
    pub fn has(&self, quantity: Quantity) -> bool {
        self.gates().iter().any(|g| g.quantity == quantity)
    }

    /// Refuses `--min-robust-accuracy` when `--pgd-limit` is 0 and nothing is attacked.
    pub fn refuse_unmeasured_robustness(&self, pgd_limit: usize) -> Result<()> {
        if self.has(Quantity::RobustAccuracy) && pgd_limit == 0 {
            usage!(
                "{} needs --pgd-limit N above 0: the robust accuracy is measured on the first N test images",
                Quantity::RobustAccuracy.flag()
            );
        }
        Ok(())
    }
}

/// Prints a line on stderr for each failed check; exit code 3 if any failed.
pub(super) fn verdict(checks: &[Check]) -> ExitCode {
    let mut err = std::io::stderr().lock();
    let mut failed = false;
    for c in checks.iter().filter(|c| !c.passed) {
        let _ = writeln!(err, "{c}");
        failed = true;
    }
    if failed {
        ExitCode::from(EXIT_GATE)
    } else {
        ExitCode::SUCCESS
    }
}
