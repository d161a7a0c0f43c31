//! Gates: bounds on a result that turn a command into a pass/fail step of a pipeline
//! (`eval --min-accuracy`, `repair` and `run` with `--min-efficacy`, `--max-drawdown`,
//! `--min-robust-accuracy`). A gate is checked against every value measured (one per
//! model, or one per ε) and judged on the worst; the command writes its outputs first
//! and exits 3 when a gate fails.
//!
//! Bounds and values are fractions, as in the JSON (0.003 is 0.3 points). A value is
//! compared with a tolerance of [`TOLERANCE`], so that a drawdown of 0.91 − 0.908
//! (0.0020000000000000018 in floating point) meets `--max-drawdown 0.002`.

use std::fmt;

use serde::Serialize;

/// Rounding allowed when a value is compared with its bound.
pub const TOLERANCE: f64 = 1e-9;

/// What a gate bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Quantity {
    /// A model's accuracy on a data set (at least the bound).
    Accuracy,
    /// The share of repair samples the repaired model classifies correctly (at least).
    Efficacy,
    /// The clean accuracy lost by the repair (at most).
    Drawdown,
    /// The repaired model's PGD robust accuracy under the evaluation protocol, the
    /// minimum over the ε values run (at least).
    RobustAccuracy,
}

impl Quantity {
    /// The quantity in words.
    pub fn name(self) -> &'static str {
        match self {
            Quantity::Accuracy => "accuracy",
            Quantity::Efficacy => "efficacy",
            Quantity::Drawdown => "drawdown",
            Quantity::RobustAccuracy => "robust accuracy",
        }
    }

    /// The command-line option that sets its bound.
    pub fn flag(self) -> &'static str {
        match self {
            Quantity::Accuracy => "--min-accuracy",
            Quantity::Efficacy => "--min-efficacy",
            Quantity::Drawdown => "--max-drawdown",
            Quantity::RobustAccuracy => "--min-robust-accuracy",
        }
    }

    /// Whether the bound is an upper bound (the value must not exceed it).
    pub fn is_upper(self) -> bool {
        matches!(self, Quantity::Drawdown)
    }
}

/// A bound on a quantity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gate {
    /// What is bounded.
    pub quantity: Quantity,
    /// The bound, a fraction.
    pub bound: f64,
}

/// A gate checked against the values measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    /// What was bounded.
    pub gate: Quantity,
    /// The option that set the bound.
    pub flag: &'static str,
    /// The bound.
    pub bound: f64,
    /// The worst value measured.
    pub value: f64,
    /// Where the worst value was measured ("at ε = 0.1", "for m.onnx"), if it matters.
    pub at: Option<String>,
    /// Whether the value meets the bound.
    pub passed: bool,
}

impl Gate {
    /// Whether `value` meets the bound, within [`TOLERANCE`].
    pub fn meets(&self, value: f64) -> bool {
        if self.quantity.is_upper() {
            value <= self.bound + TOLERANCE
        } else {
            value >= self.bound - TOLERANCE
        }
    }

    /// The gate judged on the worst of `values` (each with where it was measured). A
    /// NaN value fails, and so does a gate with no value at all: its value is NaN.
    pub fn check(&self, values: impl IntoIterator<Item = (f64, Option<String>)>) -> Check {
        let worse = |a: f64, b: f64| {
            if a.is_nan() {
                false
            } else if b.is_nan() {
                true
            } else if self.quantity.is_upper() {
                b > a
            } else {
                b < a
            }
        };
        let (value, at) = values
            .into_iter()
            .reduce(|a, b| if worse(a.0, b.0) { b } else { a })
            .unwrap_or((f64::NAN, None));
        Check {
            gate: self.quantity,
            flag: self.quantity.flag(),
            bound: self.bound,
            value,
            at,
            passed: !value.is_nan() && self.meets(value),
        }
    }
}

/// A fraction as people read it: at most six decimals, trailing zeros dropped.
fn fraction(v: f64) -> String {
    let s = format!("{v:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".to_string()
    } else {
        s.to_string()
    }
}

impl fmt::Display for Check {
    /// One line: `gate failed: efficacy 0.6 below 0.9 (--min-efficacy) at ε = 0.1`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.passed { "passed" } else { "failed" };
        if self.value.is_nan() {
            return write!(
                f,
                "gate {verdict}: {} was not measured ({} {})",
                self.gate.name(),
                self.flag,
                fraction(self.bound)
            );
        }
        let relation = match (self.gate.is_upper(), self.passed) {
            (true, false) => "above",
            (true, true) => "within",
            (false, false) => "below",
            (false, true) => "meets",
        };
        write!(
            f,
            "gate {verdict}: {} {} {relation} {} ({})",
            self.gate.name(),
            fraction(self.value),
            fraction(self.bound),
            self.flag
        )?;
        if let Some(at) = &self.at {
            write!(f, " {at}")?;
        }
        Ok(())
    }
}

/// Parses a gate's bound: a fraction in [0, 1], as in the JSON.
pub fn parse_bound(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|_| format!("'{s}' is not a number"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!(
            "{v} is outside [0, 1]; gates take fractions, as the JSON does (0.003 is 0.3 points)"
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_lower_bound_is_judged_on_the_smallest_value() {
        let gate = Gate {
            quantity: Quantity::RobustAccuracy,
            bound: 0.5,
        };
        let c = gate.check([(0.7, Some("at ε = 0.1".into())), (0.4, Some("at ε = 0.2".into()))]);
        assert!(!c.passed);
        assert_eq!(c.value, 0.4);
        assert_eq!(
            c.to_string(),
            "gate failed: robust accuracy 0.4 below 0.5 (--min-robust-accuracy) at ε = 0.2"
        );
        assert!(gate.check([(0.5, None)]).passed, "the bound itself passes");
        assert!(!gate.check([(0.9, None), (f64::NAN, None)]).passed);
        let missing = gate.check([]);
        assert!(!missing.passed);
        assert_eq!(
            missing.to_string(),
            "gate failed: robust accuracy was not measured (--min-robust-accuracy 0.5)"
        );
    }

    #[test]
    fn an_upper_bound_is_judged_on_the_largest_value_within_rounding() {
        let gate = Gate {
            quantity: Quantity::Drawdown,
            bound: 0.002,
        };
        let rounded = 0.91 - 0.908;
        assert!(rounded > 0.002, "the case this tolerance is for");
        assert!(gate.check([(rounded, None)]).passed);
        let c = gate.check([(-0.01, None), (0.0025, None), (0.001, None)]);
        assert!(!c.passed);
        assert_eq!(
            c.to_string(),
            "gate failed: drawdown 0.0025 above 0.002 (--max-drawdown)"
        );
        assert_eq!(
            gate.check([(-0.004, None)]).to_string(),
            "gate passed: drawdown -0.004 within 0.002 (--max-drawdown)"
        );
    }

    #[test]
    fn bounds_are_fractions() {
        assert_eq!(parse_bound("0.003"), Ok(0.003));
        assert!(parse_bound("90").unwrap_err().contains("0.003 is 0.3 points"));
        assert!(parse_bound("-0.1").is_err());
        assert!(parse_bound("NaN").is_err());
        assert!(parse_bound("x").unwrap_err().contains("not a number"));
    }
}
