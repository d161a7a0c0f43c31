//! The seed paper's repair (Guidotti & Leofante 2020, eq. 3), for many samples, one
//! class at a time.
//!
//! For class i with weights w and bias b, repair samples with features x_s and target
//! decision values y_s (by default the hybrid's own values on the clean images), the
//! residuals are r_s = y_s − (w·x_s + b), and the program is
//!
//! ```text
//! minimise  Σ_j |γ_j| + Σ_s δ_s
//! subject to  −δ_s ≤ x_s·γ (+ β) − r_s ≤ δ_s,   δ ≥ 0
//! ```
//!
//! (β, the bias change, only with `repair_bias`; it is not in the objective, as in
//! the paper). As an LP: γ = γ⁺ − γ⁻ with γ± ≥ 0. Its dual is
//!
//! ```text
//! maximise  r·π   subject to  |X_jᵀ π| ≤ 1 for every feature j,  |π_s| ≤ 1  (Σ π = 0 with β)
//! ```
//!
//! An L1-optimal γ has at most about S non-zeros, so the program is solved by column
//! generation: clarabel solves the problem restricted to a set F of features (δ keeps
//! it feasible), the dual π prices every other feature, and features with
//! |X_jᵀ π| > 1 join F until none is left. The final π is dual feasible for the full
//! problem, so the restricted optimum is the full problem's optimum; the largest
//! |X_jᵀ π| − 1 over all features is reported as the certificate.

use std::time::Instant;

use clarabel::algebra::CscMatrix;
use clarabel::solver::{
    DefaultSettingsBuilder, DefaultSolver, IPSolver, SolverStatus, SupportedConeT::NonnegativeConeT,
};
use ndarray::{ArrayView1, ArrayView2};

/// How one class is solved.
#[derive(Debug, Clone, Copy)]
pub struct ClassSettings {
    /// Let the bias change too.
    pub repair_bias: bool,
    /// Dual feasibility tolerance of the pricing: |X_jᵀ π| ≤ 1 + tol.
    pub price_tol: f64,
    /// Columns added per round, at most.
    pub batch: usize,
    /// Rounds of column generation before the full problem is solved instead.
    pub max_rounds: usize,
}

impl Default for ClassSettings {
    fn default() -> Self {
        Self {
            repair_bias: false,
            price_tol: 1e-7,
            batch: 64,
            max_rounds: 60,
        }
    }
}

/// How a solve ended, in clarabel's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Optimal (and certified for the full problem).
    Solved,
    /// Optimal to reduced accuracy.
    AlmostSolved,
    /// clarabel stopped without a solution (iterations, time, numerical trouble).
    Stalled,
    /// The program has no solution (cannot happen for this formulation: δ = |r| is
    /// always feasible; kept so that a solver failure is still reported as such).
    Infeasible,
}

/// One class's repair.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClassSolution {
    /// Weight changes γ, one per feature.
    pub gamma: Vec<f64>,
    /// Bias change β (0 without `repair_bias`).
    pub beta: f64,
    /// Remaining violations δ, one per sample.
    pub delta: Vec<f64>,
    /// Σ|γ| + Σδ.
    pub objective: f64,
    /// How the last solve ended.
    pub status: Status,
    /// clarabel's iterations over all rounds.
    pub iterations: u32,
    /// Column-generation rounds.
    pub rounds: usize,
    /// Features in the final restricted problem.
    pub columns: usize,
    /// max_j (|X_jᵀ π| − 1): ≤ 0 (within tolerance) certifies optimality.
    pub dual_violation: f64,
    /// Seconds in all.
    pub seconds: f64,
}

/// The restricted LP over the features `cols`: solves it and returns (γ on `cols`, β,
/// δ, π, status, iterations).
struct Restricted {
    gamma: Vec<f64>,
    beta: f64,
    delta: Vec<f64>,
    pi: Vec<f64>,
    status: Status,
    iterations: u32,
}

fn solve_restricted(x: ArrayView2<f64>, r: ArrayView1<f64>, cols: &[usize], bias: bool) -> Restricted {
    let s = x.nrows();
    let f = cols.len();
    let nb = if bias { 2 } else { 0 };
    // Variables: γ⁺ (f), γ⁻ (f), β⁺, β⁻ (nb), δ (s); all ≥ 0.
    let n = 2 * f + nb + s;
    // Rows: s of  Xγ + β − δ ≤ r,  s of  −Xγ − β − δ ≤ −r,  n of  −v ≤ 0.
    let m = 2 * s + n;
    let mut colptr = Vec::with_capacity(n + 1);
    let mut rowval = Vec::new();
    let mut nzval = Vec::new();
    colptr.push(0);
    let mut push_column = |entries: &mut dyn Iterator<Item = (usize, f64)>, own: usize| {
        for (row, v) in entries {
            if v != 0.0 {
                rowval.push(row);
                nzval.push(v);
            }
        }
        rowval.push(2 * s + own);
        nzval.push(-1.0);
        colptr.push(rowval.len());
    };
    for (k, sign) in [(0usize, 1.0f64), (1, -1.0)] {
        for (c, &j) in cols.iter().enumerate() {
            let column = x.column(j);
            let mut it = (0..s)
                .map(|i| (i, sign * column[i]))
                .chain((0..s).map(|i| (s + i, -sign * column[i])));
            push_column(&mut it, k * f + c);
        }
    }
    if bias {
        for (k, sign) in [(0usize, 1.0f64), (1, -1.0)] {
            let mut it = (0..s).map(|i| (i, sign)).chain((0..s).map(|i| (s + i, -sign)));
            push_column(&mut it, 2 * f + k);
        }
    }
    for i in 0..s {
        let mut it = [(i, -1.0), (s + i, -1.0)].into_iter();
        push_column(&mut it, 2 * f + nb + i);
    }
    let a = CscMatrix::new(m, n, colptr, rowval, nzval);
    let p = CscMatrix::<f64>::zeros((n, n));
    let mut q = vec![1.0; n];
    for v in q.iter_mut().skip(2 * f).take(nb) {
        *v = 0.0;
    }
    let mut b = Vec::with_capacity(m);
    b.extend(r.iter().copied());
    b.extend(r.iter().map(|v| -v));
    b.extend(std::iter::repeat_n(0.0, n));
    // clarabel's default tolerances (1e-8); tighter ones ended in AlmostSolved on
    // instances of a few hundred features.
    let settings = DefaultSettingsBuilder::default()
        .verbose(false)
        .build()
        .unwrap_or_default();
    let cones = [NonnegativeConeT(m)];
    let solved = DefaultSolver::new(&p, &q, &a, &b, &cones, settings).map(|mut solver| {
        solver.solve();
        solver.solution
    });
    let Ok(sol) = solved else {
        return Restricted {
            gamma: vec![0.0; f],
            beta: 0.0,
            delta: r.iter().map(|v| v.abs()).collect(),
            pi: vec![0.0; s],
            status: Status::Stalled,
            iterations: 0,
        };
    };
    let status = match sol.status {
        SolverStatus::Solved => Status::Solved,
        SolverStatus::AlmostSolved => Status::AlmostSolved,
        SolverStatus::PrimalInfeasible | SolverStatus::AlmostPrimalInfeasible => Status::Infeasible,
        _ => Status::Stalled,
    };
    let xs = &sol.x;
    Restricted {
        gamma: (0..f).map(|c| xs[c] - xs[f + c]).collect(),
        beta: if bias { xs[2 * f] - xs[2 * f + 1] } else { 0.0 },
        delta: xs[2 * f + nb..].to_vec(),
        pi: (0..s).map(|i| sol.z[s + i] - sol.z[i]).collect(),
        status,
        iterations: sol.iterations,
    }
}

/// max over features not in `inside` of |X_jᵀ π| − 1, and the features above `tol`,
/// most violated first.
fn price(x: ArrayView2<f64>, pi: &[f64], inside: &[bool], tol: f64) -> (f64, Vec<usize>) {
    let pi = ArrayView1::from(pi);
    let mut worst = f64::NEG_INFINITY;
    let mut out: Vec<(f64, usize)> = Vec::new();
    for (j, (column, &taken)) in x.columns().into_iter().zip(inside).enumerate() {
        let v = column.dot(&pi).abs() - 1.0;
        worst = worst.max(v);
        if !taken && v > tol {
            out.push((v, j));
        }
    }
    out.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    (worst, out.into_iter().map(|(_, j)| j).collect())
}

/// Solves one class's repair by column generation. `x` is `[S, d]`, `r` the residuals.
pub fn solve_class(x: ArrayView2<f64>, r: ArrayView1<f64>, settings: &ClassSettings) -> ClassSolution {
    let started = Instant::now();
    let (s, d) = x.dim();
    let mut inside = vec![false; d];
    let mut cols: Vec<usize> = Vec::new();
    // The δ-only problem's dual: π = sign(r) (any value in [−1, 1] where r = 0).
    let pi0: Vec<f64> = r.iter().map(|v| v.signum() * f64::from(u8::from(*v != 0.0))).collect();
    let (_, first) = price(x, &pi0, &inside, settings.price_tol);
    let add = settings.batch.max(s.min(d)).max(1);
    for &j in first.iter().take(add) {
        inside[j] = true;
        cols.push(j);
    }
    let mut iterations = 0;
    let mut rounds = 0;
    loop {
        rounds += 1;
        let full = rounds > settings.max_rounds;
        if full {
            cols = (0..d).collect();
            inside.iter_mut().for_each(|v| *v = true);
        }
        let sol = solve_restricted(x, r, &cols, settings.repair_bias);
        iterations += sol.iterations;
        let (worst, entering) = price(x, &sol.pi, &inside, settings.price_tol);
        let done = entering.is_empty() || full || !matches!(sol.status, Status::Solved | Status::AlmostSolved);
        if done {
            let mut gamma = vec![0.0; d];
            for (c, &j) in cols.iter().enumerate() {
                gamma[j] = sol.gamma[c];
            }
            let objective = gamma.iter().map(|g| g.abs()).sum::<f64>() + sol.delta.iter().sum::<f64>();
            return ClassSolution {
                gamma,
                beta: sol.beta,
                delta: sol.delta,
                objective,
                status: sol.status,
                iterations,
                rounds,
                columns: cols.len(),
                dual_violation: worst.max(-1.0),
                seconds: started.elapsed().as_secs_f64(),
            };
        }
        for &j in entering.iter().take(settings.batch.max(1)) {
            inside[j] = true;
            cols.push(j);
        }
    }
}
