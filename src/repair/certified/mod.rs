//! Certified repair: the head changed, as little as possible in L1, so that every
//! point of each repair ball is classified right with a margin.
//!
//! The extractor is frozen, so the features of a ball lie in a box `[l, u]`
//! ([`crate::verify::feature_bounds`]), with centre `c = (l + u)/2` and radius
//! `r = (u − l)/2`. Over that box the head's worst margin of the label `t` over a
//! class `k` is exact (see [`crate::verify`]):
//!
//! ```text
//! min over f ∈ [l, u] of (w_t − w_k)·f + b_t − b_k  =  d·c − |d|·r + b_t − b_k,   d = w_t − w_k
//! ```
//!
//! concave in the weights, so "at least m" is a convex constraint. With one auxiliary
//! vector a_tk ≥ |d| per class pair, shared by every ball of that pair (the bound is
//! tight for each at a_tk = |d|), it is linear. The program, over changes γ of the
//! weights (and, with `repair_bias`, of the bias, as a feature constant 1 with radius
//! 0):
//!
//! ```text
//! minimise  Σ |γ| + Σ_s price_s ξ_s
//! subject to  (γ_t − γ_k)·c_s − a_tk·r_s + ξ_s ≥ m_s − (z_t(c_s) − z_k(c_s))   for every k ≠ t_s,
//!             −a_tk ≤ d⁰_tk + γ_t − γ_k ≤ a_tk,   ξ ≥ 0
//! ```
//!
//! A point (radius 0: the preservation set) is the same row without a. The rows are
//! dense, so they are generated: the restricted program (the rows that bind, and the
//! pairs those rows name) is solved, every (sample, class) is then checked with the
//! exact worst margin, and the violated ones join until none is left; rows that
//! neither bind nor come near their margin leave it between rounds. The restricted
//! program is a relaxation whose solution is feasible for the whole one, so it is the
//! whole one's optimum.
//!
//! By default nnmend's interior-point method solves it ([`ipm`]), every weight free:
//! its Newton systems reduce to one dense matrix over the margin rows, formed block by
//! block in register tiles (`gram`), so the thousands of weights cost little. It solves each round's
//! program to a thousand times its tolerances only, since an early round's optimum is
//! only a step towards the rows that bind; when no row is left to add at such a
//! solution, it takes the same program on from where it stopped to its tolerances, and
//! checks the rows again. With clarabel
//! ([`MarginSolver::Clarabel`]), whose sparse factorisation pays for every weight the
//! dense rows couple, the weights are generated too: the restricted program holds the
//! weights worth changing, every other weight is priced with the duals, and weights
//! the optimum leaves unchanged leave it between rounds.

mod hybrid;
mod ipm;
mod program;

use std::time::Instant;

use ndarray::{Array1, Array2, ArrayView1, ArrayView2};

use super::margin::MarginSolver;
use super::Status;
use program::{entering_columns, solve_restricted, Layout, Restricted};

pub use hybrid::{
    assess_certified, balls, repair_certified, CertifiedRepair, CertifiedRepairSettings, HeldOut, BALL_PRICE,
    CERTIFY_MARGIN, CERTIFY_PRESERVE, KEEP_MARGIN,
};

/// The samples of a certified repair: balls (and points, with radius 0).
#[derive(Debug, Clone, Copy)]
pub struct CertifiedProblem<'a> {
    /// The head's weights `[K, d]`.
    pub weights: ArrayView2<'a, f64>,
    /// The head's bias `[K]`.
    pub bias: ArrayView1<'a, f64>,
    /// Each sample's box centre `[N, d]`.
    pub centre: ArrayView2<'a, f64>,
    /// Each sample's box radius `[N, d]`, ≥ 0 (a row of zeros: a point).
    pub radius: ArrayView2<'a, f64>,
    /// Labels, `< K`.
    pub labels: &'a [usize],
    /// The worst margin wanted per sample.
    pub margin: &'a [f64],
    /// Price of one unit of a sample's shortfall.
    pub price: &'a [f64],
    /// Whether the bias may change.
    pub repair_bias: bool,
}

/// How the certified program is solved.
#[derive(Debug, Clone, Copy)]
pub struct CertifiedSettings {
    /// A row joins when violated by more than this (relative to 1 + its need).
    pub tol: f64,
    /// Rounds of row generation, at most.
    pub max_rounds: usize,
    /// Rows within this fraction of their margin of being violated join with the
    /// violated ones, to save rounds.
    pub lookahead: f64,
    /// clarabel's threads.
    pub threads: u32,
    /// The solver's iteration limit per solve.
    pub max_iter: u32,
    /// A weight joins when moving it would lower the Lagrangian by more than this per
    /// unit.
    pub column_tol: f64,
    /// Weights that join per round, at most (the most negative reduced costs)...
    pub columns_per_round: usize,
    /// ...or this fraction of the weights already working, when that is more: a
    /// large repair changes thousands of weights, and a fixed number per round would
    /// take dozens of rounds to bring them in.
    pub column_growth: f64,
    /// Rows with no dual weight and a slack beyond `lookahead` leave the restricted
    /// program after each round (they are checked every round like the others and join
    /// again when broken): an early solution breaks many preserved images' rows that
    /// the optimum leaves slack, and each row kept makes every later solve dearer.
    pub drop_rows: bool,
    /// Weights the restricted optimum leaves unchanged leave the working set after
    /// each round, with the rows (they are priced every round and join again when
    /// worth changing): every working weight makes each later solve dearer, and many
    /// that an early round priced in end unused.
    pub drop_columns: bool,
    /// The solver of the restricted programs: nnmend's interior-point method on the
    /// program's structure ([`ipm`]), every weight free (only rows are generated; when
    /// it cannot finish a program, [`solve`] starts again with clarabel), or clarabel,
    /// with the weights generated too.
    pub solver: MarginSolver,
    /// The interior-point method solves each round's program to this many times its
    /// tolerances only (an early round's optimum is only a step towards the rows that
    /// bind), and takes the program on to the tolerances themselves, from where it
    /// stopped, once no row is left to add (1: every round to the tolerances).
    pub loose: f64,
}

impl Default for CertifiedSettings {
    fn default() -> Self {
        Self {
            tol: 1e-7,
            max_rounds: 30,
            lookahead: 0.1,
            threads: 0,
            max_iter: super::DEFAULT_MAX_ITER,
            column_tol: 1e-7,
            columns_per_round: 200,
            column_growth: 0.5,
            drop_rows: true,
            drop_columns: true,
            solver: MarginSolver::Ipm,
            loose: 1000.0,
        }
    }
}

/// The solution of a certified repair.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CertifiedSolution {
    /// The repaired weights `[K, d]`.
    #[serde(skip)]
    pub weights: Array2<f64>,
    /// The repaired bias `[K]`.
    #[serde(skip)]
    pub bias: Array1<f64>,
    /// Each sample's shortfall from its wanted worst margin after the change.
    #[serde(skip)]
    pub shortfall: Vec<f64>,
    /// Σ|γ| + Σ price·shortfall.
    pub objective: f64,
    /// How the last solve ended.
    pub status: Status,
    /// The solvers' iterations over all rounds.
    pub iterations: u32,
    /// Rounds of row (and weight) generation.
    pub rounds: usize,
    /// Rows (sample, class) of the last restricted program, of N·(K − 1).
    pub rows: usize,
    /// Weights it could change, of K·d (the bias aside).
    pub columns: usize,
    /// Seconds in all.
    pub seconds: f64,
    /// Each round's restricted program and its solve, in order.
    pub history: Vec<RoundFigures>,
}

/// One round of a certified repair's program: the restricted program solved, and what
/// its solve cost.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct RoundFigures {
    /// Margin rows (sample, class).
    pub rows: usize,
    /// Weights it could change.
    pub columns: usize,
    /// The solver that solved it.
    pub solver: MarginSolver,
    /// Whether the round took the last round's program on from where its solve stopped
    /// (the interior-point method, from its loose tolerances to its own), rather than
    /// solving a new one.
    pub resumed: bool,
    /// Variables of the program: each working weight's change and its bound, each
    /// sample's shortfall, each class pair's `|w_t − w_c|` per feature.
    pub variables: usize,
    /// Its constraints (inequalities), the margin rows among them.
    pub constraints: usize,
    /// Non-zero coefficients of those constraints.
    pub nonzeros: usize,
    /// The restricted program's optimum (NaN, `null` in JSON, when the solve failed).
    pub objective: f64,
    /// The solver's iterations.
    pub iterations: u32,
    /// Seconds of the solve, the program's assembly included.
    pub seconds: f64,
}

/// Worst margins `[N, K]` of every sample's label over each class under `(w, b)`
/// (the label's own column is +∞).
pub fn worst_margins(p: &CertifiedProblem, w: ArrayView2<f64>, b: ArrayView1<f64>) -> Array2<f64> {
    let (n, k) = (p.labels.len(), w.nrows());
    let z = p.centre.dot(&w.t()) + b; // [N, K] at the centres
    let mut out = Array2::from_elem((n, k), f64::INFINITY);
    for s in 0..n {
        let t = p.labels[s];
        let r = p.radius.row(s);
        let ball = r.iter().any(|&v| v != 0.0);
        for c in (0..k).filter(|&c| c != t) {
            let spread = if ball {
                let (wt, wc) = (w.row(t), w.row(c));
                r.iter()
                    .zip(wt.iter().zip(wc))
                    .map(|(&ri, (&a, &bb))| if ri == 0.0 { 0.0 } else { (a - bb).abs() * ri })
                    .sum()
            } else {
                0.0
            };
            out[[s, c]] = z[[s, t]] - z[[s, c]] - spread;
        }
    }
    out
}

/// Solves the certified program (see the module's documentation): rows are generated,
/// and with clarabel the weights too. The restricted program holds the rows that bind
/// (and, with clarabel, the weights worth changing); every row is then checked with
/// the exact worst margin (every other weight priced with the duals), and what
/// violates joins. When the interior-point method cannot finish a round's program
/// (out of precision or iterations), the solve starts again with clarabel, weights
/// generated; the history holds both.
pub fn solve(p: &CertifiedProblem, settings: &CertifiedSettings) -> CertifiedSolution {
    let structured = settings.solver == MarginSolver::Ipm;
    let sol = solve_with(p, settings, &vec![structured; p.weights.len()]);
    if !structured || sol.status.usable() {
        return sol;
    }
    let clarabel = CertifiedSettings {
        solver: MarginSolver::Clarabel,
        ..*settings
    };
    let mut again = solve_with(p, &clarabel, &vec![false; p.weights.len()]);
    again.history.splice(0..0, sol.history);
    again.iterations += sol.iterations;
    again.rounds += sol.rounds;
    again.seconds += sol.seconds;
    again
}

/// [`solve`] from the working weights `working` (`[K·d]`, row-major; all `true`: no
/// weight generation). Any other working set is solved by clarabel, whatever
/// `settings.solver` says.
pub fn solve_with(p: &CertifiedProblem, settings: &CertifiedSettings, working: &[bool]) -> CertifiedSolution {
    let started = Instant::now();
    let (k, _) = p.weights.dim();
    let n = p.labels.len();
    // All weights working from the start: no weight generation, and none leaves.
    let generating = working.iter().any(|&w| !w);
    let mut working = working.to_vec();
    let need = |worst: &Array2<f64>, s: usize, c: usize| p.margin[s] - worst[[s, c]];
    // Start with each ball's worst class, when it is short of its margin: the rows are
    // dense, and most of a ball's other classes stop binding once that one is met. A
    // point's wanted margin is at most its current one, so it joins only once a change
    // would break it.
    let worst = worst_margins(p, p.weights, p.bias);
    let mut active = vec![false; n * k];
    let mut rows: Vec<(usize, usize)> = Vec::new();
    for s in (0..n).filter(|&s| p.price[s] > 0.0) {
        let classes = (0..k).filter(|&c| c != p.labels[s]);
        if let Some(c) = classes.max_by(|&a, &b| need(&worst, s, a).total_cmp(&need(&worst, s, b))) {
            if need(&worst, s, c) > 0.0 {
                active[s * k + c] = true;
                rows.push((s, c));
            }
        }
    }
    let mut iterations = 0;
    let mut rounds = 0;
    let mut history = Vec::new();
    // The interior-point method of the rows as they stand, resumed when a loose solve
    // leaves no row to add: then it goes on to the tolerances.
    let mut ipm_state: Option<ipm::Solver> = None;
    let mut tighten = false;
    let loose = settings.loose.max(1.0);
    loop {
        rounds += 1;
        let solving = Instant::now();
        // How far short of its tolerances the interior-point method stops this round: a
        // program without rows is solved to them at once (its optimum is the head as it
        // is), as is a program taken on from where it stopped.
        let structured = settings.solver == MarginSolver::Ipm && !generating;
        let within = if structured && !tighten && !rows.is_empty() {
            loose
        } else {
            1.0
        };
        let (sol, layout, solver) = if structured {
            let solver = ipm_state.get_or_insert_with(|| ipm::Solver::new(p, &rows));
            let before = solver.iterations();
            let mut sol = solver.run(within, settings.max_iter);
            sol.iterations -= before;
            // A solve that did not finish leaves the weights as they were, and the
            // repair ends here ([`solve`] then hands it to clarabel).
            let usable = sol.status.usable();
            let restricted = Restricted {
                weights: if usable { sol.weights } else { p.weights.to_owned() },
                bias: if usable { sol.bias } else { p.bias.to_owned() },
                status: sol.status,
                iterations: sol.iterations,
                objective: if usable { sol.objective } else { f64::NAN },
                z: sol.y,
            };
            (restricted, Layout::margins_only(sol.size), MarginSolver::Ipm)
        } else {
            let (restricted, layout) = solve_restricted(p, &rows, &working, settings);
            (restricted, layout, MarginSolver::Clarabel)
        };
        iterations += sol.iterations;
        history.push(RoundFigures {
            solver,
            resumed: tighten,
            rows: rows.len(),
            columns: working.iter().filter(|&&w| w).count(),
            variables: layout.variables,
            constraints: layout.constraints,
            nonzeros: layout.nonzeros,
            objective: sol.objective,
            iterations: sol.iterations,
            seconds: solving.elapsed().as_secs_f64(),
        });
        let worst = worst_margins(p, sol.weights.view(), sol.bias.view());
        let shortfall: Vec<f64> = (0..n)
            .map(|s| {
                (0..k)
                    .filter(|&c| c != p.labels[s])
                    .map(|c| need(&worst, s, c))
                    .fold(0.0f64, f64::max)
            })
            .collect();
        let mut paid = vec![0.0f64; n];
        for &(s, c) in &rows {
            paid[s] = paid[s].max(need(&worst, s, c));
        }
        let mut entering = Vec::new();
        let mut near = Vec::new();
        for s in (0..n).filter(|&s| p.price[s] > 0.0) {
            for c in (0..k).filter(|&c| c != p.labels[s] && !active[s * k + c]) {
                let short = need(&worst, s, c) - paid[s];
                if short > settings.tol * (1.0 + p.margin[s].abs()) {
                    entering.push((s, c));
                } else if short > -settings.lookahead * p.margin[s].abs().max(settings.tol) {
                    near.push((s, c));
                }
            }
        }
        let failed = !sol.status.usable();
        let columns = if failed || !generating {
            Vec::new()
        } else {
            let now = working.iter().filter(|&&w| w).count() as f64;
            let limit = settings.columns_per_round.max((settings.column_growth * now) as usize);
            entering_columns(p, &rows, &working, &layout, &sol.z, (settings.column_tol, limit))
        };
        let done = entering.is_empty() && columns.is_empty();
        if done && !failed && within > 1.0 {
            tighten = true;
            continue;
        }
        if done || failed || rounds >= settings.max_rounds {
            let change: f64 = (&sol.weights - &p.weights)
                .iter()
                .chain((&sol.bias - &p.bias).iter())
                .map(|v| v.abs())
                .sum();
            let objective = change + shortfall.iter().zip(p.price).map(|(x, c)| x * c).sum::<f64>();
            let status = if failed || done { sol.status } else { Status::Stalled };
            return CertifiedSolution {
                weights: sol.weights,
                bias: sol.bias,
                shortfall,
                objective,
                status,
                iterations,
                rounds,
                rows: rows.len(),
                columns: working.iter().filter(|&&w| w).count(),
                seconds: started.elapsed().as_secs_f64(),
                history,
            };
        }
        // Rows leave only in the first half of the rounds: from then on the rounds
        // only add, and end as plain row generation does.
        if settings.drop_rows && rounds < settings.max_rounds / 2 {
            // Rows that neither bind (no dual weight) nor come near their margin leave
            // the restricted program; they are checked every round like any other and
            // join again when a later solution breaks them.
            let top = (0..rows.len())
                .map(|i| sol.z[layout.margin0 + i])
                .fold(0.0f64, f64::max);
            let mut kept = Vec::with_capacity(rows.len());
            for (i, &(s, c)) in rows.iter().enumerate() {
                let slack = -need(&worst, s, c);
                if sol.z[layout.margin0 + i] <= 1e-6 * top
                    && slack > settings.lookahead * p.margin[s].abs().max(settings.tol)
                {
                    active[s * k + c] = false;
                } else {
                    kept.push((s, c));
                }
            }
            rows = kept;
        }
        if generating && settings.drop_columns && rounds < settings.max_rounds / 2 {
            // A weight the optimum leaves where it was leaves too: the restricted
            // optimum stays what it was without it, and its reduced cost, priced
            // again each round, brings it back when moving it pays.
            // `working` is laid out as the weights are iterated: row-major.
            for ((on, new), old) in working.iter_mut().zip(&sol.weights).zip(p.weights) {
                if (new - old).abs() <= 1e-9 * (1.0 + old.abs()) {
                    *on = false;
                }
            }
        }
        for (s, c) in entering.into_iter().chain(near) {
            active[s * k + c] = true;
            rows.push((s, c));
        }
        ipm_state = None;
        tighten = false;
        for w in columns {
            working[w] = true;
        }
    }
}

#[cfg(test)]
mod tests;
