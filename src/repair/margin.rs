//! Margin repair: every repair sample classified correctly with a margin, and a
//! preservation set of clean samples kept correct, at the least L1 change of the head.
//!
//! With current decision values z_s (all features, all classes), changeable features
//! x_s, labels t_s, a wanted margin m_s per sample and a slack price c_s, the program is
//!
//! ```text
//! minimise  Σ_cj |γ_cj| + Σ_s c_s ξ_s
//! subject to  (γ_t − γ_k)·x_s + ξ_s ≥ h_sk := m_s − (z_st − z_sk)   for every k ≠ t_s,
//!             ξ ≥ 0
//! ```
//!
//! Repair samples want m_s = m; preservation samples want min(m, their current margin)
//! with a higher price, so a clean sample is never asked to become more confident than
//! it is, but may not get less so without paying for it. A changed bias is one more
//! feature, constant 1, in the same L1 norm.
//!
//! The classes are coupled: one sample's constraints involve two classes' weights. The
//! program is solved through its dual, with one unknown y_sk ≥ 0 per constraint:
//!
//! ```text
//! maximise  Σ h_sk y_sk  subject to  |(Mᵀy)_cj| ≤ 1 for every weight,  Σ_k y_sk ≤ c_s
//! ```
//!
//! where (Mᵀy)_cj = Σ_{s: t_s = c} x_sj Σ_k y_sk − Σ_{s, k = c} x_sj y_sk. Most of the
//! (K − 1) constraints of a sample are slack (the runner-up class is what binds), so
//! they are generated: the dual is solved over an active set of pairs (s, k), the
//! primal (its multipliers) is checked against every pair, and violated pairs join the
//! set until none is left. Each restricted dual is solved by a structured
//! interior-point method ([`MarginSolver::Ipm`], the default) or by clarabel. The
//! restricted problem is a relaxation whose solution is feasible for the full one, so
//! it is the full problem's optimum; the dual gives a certified bound
//! ([`MarginSolution::gap`]).

use std::time::Instant;

use clarabel::algebra::CscMatrix;
use clarabel::solver::SupportedConeT::{NonnegativeConeT, SecondOrderConeT};
use ndarray::{Array2, ArrayView2};

use super::Status;

/// How the margin program is solved.
#[derive(Debug, Clone, Copy)]
pub struct MarginSettings {
    /// A constraint joins the active set when violated by more than this.
    pub tol: f64,
    /// Rounds of constraint generation, at most.
    pub max_rounds: usize,
    /// When violated constraints enter, those within this fraction of their sample's
    /// margin of being violated enter too, to save rounds.
    pub lookahead: f64,
    /// clarabel's threads (0: its default, all cores). The interior-point method
    /// always splits its work the same way ([`super::ipm`]), so that its result does
    /// not depend on the thread count.
    pub solver_threads: u32,
    /// The solver's iteration limit per solve; a solve that reaches it ends `Stalled`.
    pub solver_max_iter: u32,
    /// Which solver solves each restricted program.
    pub solver: MarginSolver,
}

/// The solver of the margin program's restricted duals (`repair --lp-solver`). The
/// structured one ([`super::ipm`]) forms dense normal equations over the active pairs,
/// class by class at GEMM speed; clarabel factorises the general conic form (sparse LDLᵀ).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum MarginSolver {
    /// The structured interior-point method.
    #[default]
    Ipm,
    /// clarabel.
    Clarabel,
}

impl Default for MarginSettings {
    fn default() -> Self {
        Self {
            tol: 1e-6,
            max_rounds: 30,
            lookahead: 0.1,
            solver_threads: 0,
            solver_max_iter: super::paper::DEFAULT_MAX_ITER,
            solver: MarginSolver::default(),
        }
    }
}

/// The samples of a margin repair.
#[derive(Debug, Clone, Copy)]
pub struct MarginProblem<'a> {
    /// Changeable features `[N, d]` (with a column of ones last if the bias changes).
    pub x: ArrayView2<'a, f64>,
    /// Current decision values `[N, K]`.
    pub scores: ArrayView2<'a, f64>,
    /// Labels, `< K`.
    pub labels: &'a [usize],
    /// Wanted margin per sample.
    pub margin: &'a [f64],
    /// Price of one unit of slack per sample.
    pub price: &'a [f64],
}

/// The solution of a margin repair.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MarginSolution {
    /// Weight changes `[K, d]` over the changeable features.
    #[serde(skip)]
    pub gamma: Array2<f64>,
    /// Slack per sample: how far short of its wanted margin it stays.
    pub xi: Vec<f64>,
    /// Σ|γ| + Σ c_s ξ_s.
    pub objective: f64,
    /// How the last solve ended.
    pub status: Status,
    /// clarabel's iterations over all rounds.
    pub iterations: u32,
    /// Constraint-generation rounds.
    pub rounds: usize,
    /// Constraints (s, k) in the final active set, of N·(K − 1).
    pub active: usize,
    /// That active set: a later solve of a grown problem may start from it.
    #[serde(skip)]
    pub pairs: Vec<(usize, usize)>,
    /// Certified relative gap: (objective − dual bound) / max(1, objective).
    pub gap: f64,
    /// Seconds in all.
    pub seconds: f64,
}

/// h_sk: how much (γ_t − γ_k)·x_s must add for pair (s, k).
fn need(p: &MarginProblem, s: usize, k: usize) -> f64 {
    let t = p.labels[s];
    p.margin[s] - (p.scores[[s, t]] - p.scores[[s, k]])
}

struct Restricted {
    gamma: Array2<f64>,
    y: Vec<f64>,
    status: Status,
    iterations: u32,
}

/// Solves the dual over the active pairs with the chosen solver.
fn solve_restricted(p: &MarginProblem, pairs: &[(usize, usize)], settings: &MarginSettings) -> Restricted {
    match settings.solver {
        MarginSolver::Clarabel => solve_clarabel(p, pairs, settings.solver_threads, settings.solver_max_iter),
        MarginSolver::Ipm => {
            // A sample priced at 0 has free slack: its pairs never bind (y = 0).
            let priced: Vec<usize> = (0..pairs.len()).filter(|&a| p.price[pairs[a].0] > 0.0).collect();
            let kept: Vec<(usize, usize)> = priced.iter().map(|&a| pairs[a]).collect();
            if kept.is_empty() {
                return Restricted {
                    gamma: Array2::zeros((p.scores.ncols(), p.x.ncols())),
                    y: vec![0.0; pairs.len()],
                    status: Status::Solved,
                    iterations: 0,
                };
            }
            let sol = super::ipm::solve(p, &kept, settings.solver_max_iter);
            if sol.status != Status::Solved {
                // The interior-point method runs out of precision on some degenerate
                // programs; clarabel's general method (one thread, so that the result
                // does not depend on the thread count) takes those over.
                let mut fallback = solve_clarabel(p, pairs, 1, settings.solver_max_iter);
                fallback.iterations += sol.iterations;
                if fallback.status.usable() && (fallback.status == Status::Solved || !sol.status.usable()) {
                    return fallback;
                }
            }
            let mut y = vec![0.0; pairs.len()];
            for (&a, &v) in priced.iter().zip(&sol.y) {
                y[a] = v;
            }
            Restricted {
                gamma: sol.gamma,
                y,
                status: sol.status,
                iterations: sol.iterations,
            }
        }
    }
}

/// Solves the dual over the active pairs with clarabel.
fn solve_clarabel(p: &MarginProblem, pairs: &[(usize, usize)], threads: u32, max_iter: u32) -> Restricted {
    let (n, d) = p.x.dim();
    let k = p.scores.ncols();
    if pairs.is_empty() {
        // Nothing to push against: no change is the optimum.
        return Restricted {
            gamma: Array2::zeros((k, d)),
            y: Vec::new(),
            status: Status::Solved,
            iterations: 0,
        };
    }
    let r = pairs.len();
    let weights = k * d;
    // Rows: (1, (Mᵀy)_cj) ∈ SOC₂ per weight; Σ_k y_sk ≤ c_s per sample; −y ≤ 0.
    let m = 2 * weights + n + r;
    let mut colptr = Vec::with_capacity(r + 1);
    let mut rowval = Vec::new();
    let mut nzval = Vec::new();
    colptr.push(0);
    for (a, &(s, other)) in pairs.iter().enumerate() {
        let t = p.labels[s];
        let row = p.x.row(s);
        let (first, second, sign) = if t < other { (t, other, 1.0) } else { (other, t, -1.0) };
        for (block, sgn) in [(first, sign), (second, -sign)] {
            for (j, &v) in row.iter().enumerate() {
                if v != 0.0 {
                    rowval.push(2 * (block * d + j) + 1);
                    nzval.push(sgn * v);
                }
            }
        }
        rowval.extend([2 * weights + s, 2 * weights + n + a]);
        nzval.extend([1.0, -1.0]);
        colptr.push(rowval.len());
    }
    let a = CscMatrix::new(m, r, colptr, rowval, nzval);
    let q: Vec<f64> = pairs.iter().map(|&(s, other)| -need(p, s, other)).collect();
    let mut b: Vec<f64> = (0..2 * weights).map(|i| if i % 2 == 0 { 1.0 } else { 0.0 }).collect();
    b.extend(p.price.iter().copied());
    b.extend(std::iter::repeat_n(0.0, r));
    let mut cones = vec![SecondOrderConeT(2); weights];
    cones.push(NonnegativeConeT(n + r));
    let Some((sol, status)) = super::paper::clarabel_lp(&q, &a, &b, &cones, threads, max_iter, super::paper::Ldl::Auto)
    else {
        return Restricted {
            gamma: Array2::zeros((k, d)),
            y: vec![0.0; r],
            status: Status::Stalled,
            iterations: 0,
        };
    };
    // clarabel's A'z = −q: the SOC's second multiplier of weight (c, j) is γ_cj.
    let gamma = Array2::from_shape_fn((k, d), |(c, j)| sol.z[2 * (c * d + j) + 1]);
    Restricted {
        gamma,
        y: sol.x.clone(),
        status,
        iterations: sol.iterations,
    }
}

/// (γ_t − γ_k)·x_s for every sample and class k: `[N, K]` of the change in margin
/// against each class.
fn gains(p: &MarginProblem, gamma: &Array2<f64>) -> Array2<f64> {
    let delta = p.x.dot(&gamma.t()); // [N, K]: γ_c·x_s
    Array2::from_shape_fn(delta.dim(), |(s, c)| delta[[s, p.labels[s]]] - delta[[s, c]])
}

/// The smallest slack each sample needs for `gamma` to satisfy all its constraints.
fn slacks(p: &MarginProblem, gains: &Array2<f64>) -> Vec<f64> {
    let k = p.scores.ncols();
    (0..p.labels.len())
        .map(|s| {
            (0..k)
                .filter(|&c| c != p.labels[s])
                .map(|c| need(p, s, c) - gains[[s, c]])
                .fold(0.0f64, f64::max)
        })
        .collect()
}

/// The dual bound of `y` over `pairs`, after scaling it into feasibility.
fn dual_bound(p: &MarginProblem, pairs: &[(usize, usize)], y: &[f64]) -> f64 {
    let n = p.x.nrows();
    let k = p.scores.ncols();
    let y: Vec<f64> = y.iter().map(|v| v.max(0.0)).collect();
    // Mᵀy as [K, d]: per sample, a row of coefficients over classes, then Xᵀ.
    let mut coef = Array2::<f64>::zeros((n, k));
    let mut per_sample = vec![0.0; n];
    for (&(s, other), &v) in pairs.iter().zip(&y) {
        coef[[s, p.labels[s]]] += v;
        coef[[s, other]] -= v;
        per_sample[s] += v;
    }
    let mty = coef.t().dot(&p.x); // [K, d]
    let mut scale = mty.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    for (s, total) in per_sample.iter().enumerate() {
        if p.price[s] > 0.0 {
            scale = scale.max(total / p.price[s]);
        } else if *total > 0.0 {
            return f64::NEG_INFINITY;
        }
    }
    pairs
        .iter()
        .zip(&y)
        .map(|(&(s, other), v)| need(p, s, other) * v)
        .sum::<f64>()
        / scale
}

/// Solves the margin program (see the module's documentation).
pub fn solve(p: &MarginProblem, settings: &MarginSettings) -> MarginSolution {
    solve_from(p, settings, &[])
}

/// [`solve`], with the pairs `warm` (sample, class) in the active set from the start:
/// clarabel cannot warm-start its iterates, but the constraints that bound a similar
/// problem (the same samples with more added, in an attack-in-the-loop repair) spare
/// the rounds that would find them again. Out-of-range pairs are ignored.
pub fn solve_from(p: &MarginProblem, settings: &MarginSettings, warm: &[(usize, usize)]) -> MarginSolution {
    let started = Instant::now();
    let n = p.x.nrows();
    let k = p.scores.ncols();
    // Start with the constraints not met now: each repair sample's runner-up class
    // and any other class it is not ahead of by its margin. A preservation sample's
    // constraints all hold at γ = 0 (its wanted margin is at most its current one),
    // so it joins only once a change would break it: a large preservation set costs
    // little more than the samples the repair actually pushes against.
    let mut active = vec![false; n * k];
    let mut pairs: Vec<(usize, usize)> = Vec::new();
    for s in 0..n {
        let t = p.labels[s];
        let mut runner = None;
        for c in (0..k).filter(|&c| c != t) {
            if runner.is_none_or(|r: usize| p.scores[[s, c]] > p.scores[[s, r]]) {
                runner = Some(c);
            }
        }
        let Some(runner) = runner else { continue };
        if need(p, s, runner) <= 0.0 {
            continue;
        }
        for c in (0..k).filter(|&c| c != t) {
            if c == runner || need(p, s, c) > 0.0 {
                active[s * k + c] = true;
                pairs.push((s, c));
            }
        }
    }
    for &(s, c) in warm {
        if s < n && c < k && c != p.labels[s] && !active[s * k + c] {
            active[s * k + c] = true;
            pairs.push((s, c));
        }
    }
    let mut iterations = 0;
    let mut rounds = 0;
    loop {
        rounds += 1;
        let sol = solve_restricted(p, &pairs, settings);
        iterations += sol.iterations;
        let g = gains(p, &sol.gamma);
        let xi = slacks(p, &g);
        // Slack the restricted solution pays: the largest need over the active pairs.
        let mut paid = vec![0.0f64; n];
        for &(s, c) in &pairs {
            paid[s] = paid[s].max(need(p, s, c) - g[[s, c]]);
        }
        let mut entering = Vec::new();
        // Pairs that hold, but barely: they join with the violated ones (the restricted
        // problem stays a relaxation, so this only saves rounds).
        let mut near = Vec::new();
        for s in 0..n {
            for c in (0..k).filter(|&c| c != p.labels[s] && !active[s * k + c]) {
                let short = need(p, s, c) - g[[s, c]] - paid[s];
                if short > settings.tol * (1.0 + need(p, s, c).abs()) {
                    entering.push((s, c));
                } else if short > -settings.lookahead * p.margin[s].abs().max(settings.tol) {
                    near.push((s, c));
                }
            }
        }
        let failed = !matches!(sol.status, Status::Solved | Status::AlmostSolved);
        if entering.is_empty() || failed || rounds >= settings.max_rounds {
            let objective = sol.gamma.iter().map(|v| v.abs()).sum::<f64>()
                + xi.iter().zip(p.price).map(|(x, c)| x * c).sum::<f64>();
            let bound = dual_bound(p, &pairs, &sol.y);
            let status = if failed || entering.is_empty() {
                sol.status
            } else {
                Status::Stalled
            };
            return MarginSolution {
                gamma: sol.gamma,
                xi,
                objective,
                status,
                iterations,
                rounds,
                active: pairs.len(),
                gap: ((objective - bound).max(0.0) / objective.abs().max(1.0)),
                seconds: started.elapsed().as_secs_f64(),
                pairs,
            };
        }
        for (s, c) in entering.into_iter().chain(near) {
            active[s * k + c] = true;
            pairs.push((s, c));
        }
    }
}

/// Each sample's wanted margin: `margin` for repair samples, min(`margin`, current
/// margin) for preservation samples (`keep[s]`).
pub fn wanted_margins(scores: ArrayView2<f64>, labels: &[usize], keep: &[bool], margin: f64) -> Vec<f64> {
    scores
        .rows()
        .into_iter()
        .zip(labels)
        .zip(keep)
        .map(|((row, &t), &kept)| {
            if !kept {
                return margin;
            }
            let runner = row
                .iter()
                .enumerate()
                .filter(|&(c, _)| c != t)
                .fold(f64::NEG_INFINITY, |m, (_, &v)| m.max(v));
            margin.min(row[t] - runner)
        })
        .collect()
}

/// Whether every sample meets its wanted margin within `tol` after the change.
pub fn satisfied(p: &MarginProblem, gamma: &Array2<f64>, xi: &[f64], tol: f64) -> bool {
    let g = gains(p, gamma);
    let k = p.scores.ncols();
    (0..p.labels.len()).all(|s| {
        (0..k)
            .filter(|&c| c != p.labels[s])
            .all(|c| g[[s, c]] + xi[s] >= need(p, s, c) - tol)
    })
}

/// The current margin of each sample: its label's score minus the best other.
pub fn margins(scores: ArrayView2<f64>, labels: &[usize]) -> Vec<f64> {
    wanted_margins(scores, labels, &vec![true; labels.len()], f64::INFINITY)
}
