//! What a fit of the linear SVM reports: per class, the solver that ran, its stopping
//! measure and the primal and dual objectives that certify the result; for the whole
//! fit, C, the choice of C when it was searched, and the standardisation when asked.

use super::select::Selection;

/// A solver that ran on a one-vs-rest problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Solver {
    /// The primal trust-region Newton method (squared hinge only).
    Primal,
    /// Dual coordinate descent.
    Dual,
}

impl Solver {
    /// `primal` or `dual`.
    pub fn name(self) -> &'static str {
        match self {
            Solver::Primal => "primal",
            Solver::Dual => "dual",
        }
    }

    /// What [`ClassReport::violation`] measures for this solver.
    pub fn measure(self) -> &'static str {
        match self {
            Solver::Primal => "relative_gradient_norm",
            Solver::Dual => "projected_gradient_spread",
        }
    }
}

/// Solver diagnostics for one one-vs-rest class.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassReport {
    /// Class index (row of [`super::LinearSvm::weights`]).
    pub class: usize,
    /// The solver that produced the class's weights.
    pub solver: Solver,
    /// Iterations of that solver: passes over the (active) samples for the dual,
    /// Newton iterations for the primal.
    pub iterations: usize,
    /// Whether the solver's stopping rule was met before its iteration limit.
    pub converged: bool,
    /// The stopping measure at the returned weights. Dual: max PG − min PG over all
    /// samples, recomputed at the final α (the stopping test uses the values seen
    /// during the last pass, while α still moved, so this can exceed the threshold
    /// slightly even when `converged` is true). Primal: ‖∇f(w)‖ / ‖∇f(0)‖.
    pub violation: f64,
    /// What `violation` is compared with: `tol` for the dual;
    /// `tol` · max(min(#pos, #neg), 1) / n for the primal (LIBLINEAR's rule).
    pub threshold: f64,
    /// Primal objective ½(‖w‖² + b²) + C Σ ξ_i.
    pub primal: f64,
    /// Dual objective eᵀα − ½αᵀQ̄α as a maximisation: `primal - dual` is the duality
    /// gap, ≥ 0, and bounds how far `primal` is from the optimum. For the primal
    /// solver, α is the dual point its weights map to, α_i = 2C max(0, 1 − y_i wᵀx_i).
    pub dual: f64,
    /// Number of samples with α_i > 0 (for the squared hinge: with a positive loss).
    pub support_vectors: usize,
    /// Subspace Newton steps taken to accelerate dual coordinate descent.
    pub newton_steps: usize,
    /// Conjugate-gradient iterations (Hessian-vector products) of the primal solver.
    pub cg_iterations: usize,
    /// With the automatic choice: the dual's passes before it was judged stalled and
    /// the primal took over from its weights; `None` when one solver ran alone.
    pub switched_after: Option<usize>,
}

impl ClassReport {
    /// The duality gap `primal - dual`.
    pub fn gap(&self) -> f64 {
        self.primal - self.dual
    }
}

/// The standardisation applied before the fit ([`super::scale::Standardizer`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ScalingReport {
    /// Features constant over the training set: centred to zero, not divided.
    pub constant_features: usize,
}

/// Diagnostics of a whole fit.
#[derive(Debug, Clone, PartialEq)]
pub struct FitReport {
    /// One entry per class, in class order.
    pub classes: Vec<ClassReport>,
    /// Wall-clock seconds of the fit; with a search for C, of the search and the
    /// final fit together.
    pub seconds: f64,
    /// The C the weights were fitted with (the chosen one after a search).
    pub c: f64,
    /// The choice of C on a validation split, when C was searched.
    pub selection: Option<Selection>,
    /// The standardisation of the features, when asked for; the weights are then
    /// folded back so that they act on the features as given.
    pub scaling: Option<ScalingReport>,
}

impl FitReport {
    /// Sum of the per-class primal objectives.
    pub fn objective(&self) -> f64 {
        self.classes.iter().map(|c| c.primal).sum()
    }

    /// Whether every class met its stopping rule.
    pub fn converged(&self) -> bool {
        self.classes.iter().all(|c| c.converged)
    }

    /// Largest per-class duality gap `primal - dual` (0 with no classes).
    pub fn max_gap(&self) -> f64 {
        self.classes.iter().map(ClassReport::gap).fold(0.0, f64::max)
    }

    /// The solver that produced every class, or `None` when the classes differ (the
    /// automatic choice handed some over to the primal) or there are none.
    pub fn solver(&self) -> Option<Solver> {
        let first = self.classes.first()?.solver;
        self.classes.iter().all(|c| c.solver == first).then_some(first)
    }

    /// Largest ‖∇f‖ / ‖∇f(0)‖ over the classes the primal solved (`None` if none).
    pub fn max_relative_gradient(&self) -> Option<f64> {
        self.classes
            .iter()
            .filter(|c| c.solver == Solver::Primal)
            .map(|c| c.violation)
            .reduce(f64::max)
    }

    /// Largest violation relative to its threshold over the classes: ≤ 1 when every
    /// stopping rule holds at the returned weights.
    pub fn worst_violation(&self) -> Option<&ClassReport> {
        self.classes.iter().max_by(|a, b| {
            let ra = a.violation / a.threshold.max(f64::MIN_POSITIVE);
            let rb = b.violation / b.threshold.max(f64::MIN_POSITIVE);
            ra.total_cmp(&rb)
        })
    }
}
