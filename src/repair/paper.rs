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
    DefaultSettingsBuilder, DefaultSolution, DefaultSolver, IPSolver, SolverStatus, SupportedConeT,
    SupportedConeT::{NonnegativeConeT, SecondOrderConeT, ZeroConeT},
};
use ndarray::{ArrayView1, ArrayView2, Axis};

use super::{Repair, RepairError};

/// How one class is solved.
#[derive(Debug, Clone, Copy)]
pub struct ClassSettings {
    /// Let the bias change too.
    pub repair_bias: bool,
    /// Dual feasibility tolerance of the pricing: |X_jᵀ π| ≤ 1 + tol.
    pub price_tol: f64,
    /// Columns added per round, at most (at least S are added each round).
    pub batch: usize,
    /// Rounds of column generation before the full problem is solved instead; 0
    /// solves the full problem at once.
    pub max_rounds: usize,
    /// Column generation is tried only with at least this many features per sample
    /// (d ≥ ratio · S); below it the full problem is solved at once, which measured
    /// faster (docs/BENCHMARKS.md). Generation also gives way to the full problem when a
    /// round prices out more than S/2 columns, or would take in more than d/2.
    pub generation_ratio: usize,
    /// Let column generation give way to the full problem (see `generation_ratio`).
    pub give_way: bool,
    /// clarabel's threads per class (0: its default, all cores).
    pub solver_threads: u32,
    /// clarabel's iteration limit per solve; a solve that reaches it ends `Stalled`.
    pub solver_max_iter: u32,
}

impl Default for ClassSettings {
    fn default() -> Self {
        Self {
            repair_bias: false,
            price_tol: 1e-7,
            batch: 64,
            max_rounds: 60,
            generation_ratio: 8,
            give_way: true,
            solver_threads: 0,
            solver_max_iter: DEFAULT_MAX_ITER,
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

impl Status {
    /// Whether the solve gave weights to use: solved, or solved to reduced accuracy.
    /// A stalled or infeasible solve's last iterate is no repair.
    pub fn usable(self) -> bool {
        matches!(self, Status::Solved | Status::AlmostSolved)
    }

    /// The worst of several solves' statuses (solved < almost solved < stalled <
    /// infeasible); `Solved` when there are none.
    pub fn worst(statuses: impl IntoIterator<Item = Status>) -> Status {
        statuses
            .into_iter()
            .max_by_key(|s| match s {
                Status::Solved => 0,
                Status::AlmostSolved => 1,
                Status::Stalled => 2,
                Status::Infeasible => 3,
            })
            .unwrap_or(Status::Solved)
    }
}

/// clarabel's own default iteration limit.
pub const DEFAULT_MAX_ITER: u32 = 200;

/// Which sparse LDLᵀ factorises clarabel's KKT systems.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ldl {
    /// clarabel's choice: faer's supernodal LDLᵀ when the `faer` feature is on (the
    /// default) and the ordering predicts enough work per entry of the factor, qdldl
    /// otherwise.
    Auto,
    /// qdldl, whatever the prediction.
    Qdldl,
}

/// Runs clarabel on the LP `minimise qᵀx subject to Ax + s = b, s ∈ cones` with
/// `threads` factorisation threads, at most `max_iter` iterations and the
/// factorisation `ldl`: its solution and how it ended, or `None` when clarabel
/// refuses the data.
pub(crate) fn clarabel_lp(
    q: &[f64],
    a: &CscMatrix<f64>,
    b: &[f64],
    cones: &[SupportedConeT<f64>],
    threads: u32,
    max_iter: u32,
    ldl: Ldl,
) -> Option<(DefaultSolution<f64>, Status)> {
    let method = match ldl {
        Ldl::Auto => "auto",
        Ldl::Qdldl => "qdldl",
    };
    let settings = DefaultSettingsBuilder::default()
        .verbose(false)
        .max_threads(threads)
        .max_iter(max_iter)
        .direct_solve_method(method.to_string())
        .build()
        .unwrap_or_default();
    let p = CscMatrix::<f64>::zeros((q.len(), q.len()));
    let mut solver = DefaultSolver::new(&p, q, a, b, cones, settings).ok()?;
    solver.solve();
    let status = match solver.solution.status {
        SolverStatus::Solved => Status::Solved,
        SolverStatus::AlmostSolved => Status::AlmostSolved,
        SolverStatus::DualInfeasible | SolverStatus::AlmostDualInfeasible => Status::Infeasible,
        _ => Status::Stalled,
    };
    Some((solver.solution, status))
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
    /// The certified relative duality gap for the full problem (see
    /// [`certified_gap`]): the objective is within this fraction of the optimum.
    pub gap: f64,
    /// Seconds in all.
    pub seconds: f64,
}

/// The restricted LP over the features `cols`, solved in its dual form: returns (γ on
/// `cols`, β, δ, π, status, iterations).
struct Restricted {
    gamma: Vec<f64>,
    beta: f64,
    delta: Vec<f64>,
    pi: Vec<f64>,
    status: Status,
    iterations: u32,
}

/// Solves the restricted program through its dual,
///
/// ```text
/// minimise −r·π  subject to  (1, X_jᵀπ) ∈ SOC₂ for j ∈ F  (i.e. |X_jᵀπ| ≤ 1),
///                            π ≤ 1,  −π ≤ 1,  (1ᵀπ = 0 with β)
/// ```
///
/// which has S unknowns in place of 2|F| + S, and one dense row per feature. Measured
/// before choosing (docs/BENCHMARKS.md): the dual is several times faster than the primal
/// with clarabel, and writing |X_jᵀπ| ≤ 1 as a two-dimensional second-order cone
/// (one dense row) in place of two inequalities (two dense rows) halves the work of
/// each factorisation again. clarabel's multipliers of the rows are the primal: the
/// cone's second multiplier is γ_j, the sample rows' z₃ − z₄ is the residual r − Xγ − β,
/// and the multiplier of 1ᵀπ = 0 is β.
fn solve_restricted(
    x: ArrayView2<f64>,
    r: ArrayView1<f64>,
    cols: &[usize],
    bias: bool,
    threads: u32,
    max_iter: u32,
) -> Restricted {
    let s = x.nrows();
    let f = cols.len();
    let nb = usize::from(bias);
    // Rows: (0, X_jᵀ) per feature in F, s of π ≤ 1, s of −π ≤ 1, then 1ᵀπ = 0.
    let m = 2 * f + 2 * s + nb;
    let mut colptr = Vec::with_capacity(s + 1);
    let mut rowval = Vec::with_capacity(f * s + 3 * s);
    let mut nzval = Vec::with_capacity(f * s + 3 * s);
    colptr.push(0);
    for i in 0..s {
        let row = x.row(i);
        for (c, &j) in cols.iter().enumerate() {
            let v = row[j];
            if v != 0.0 {
                rowval.push(2 * c + 1);
                nzval.push(v);
            }
        }
        rowval.extend([2 * f + i, 2 * f + s + i]);
        nzval.extend([1.0, -1.0]);
        if bias {
            rowval.push(2 * f + 2 * s);
            nzval.push(1.0);
        }
        colptr.push(rowval.len());
    }
    let a = CscMatrix::new(m, s, colptr, rowval, nzval);
    let q: Vec<f64> = r.iter().map(|v| -v).collect();
    let mut b: Vec<f64> = (0..2 * f).map(|i| if i % 2 == 0 { 1.0 } else { 0.0 }).collect();
    b.extend(std::iter::repeat_n(1.0, 2 * s));
    b.extend(std::iter::repeat_n(0.0, nb));
    let mut cones = vec![SecondOrderConeT(2); f];
    cones.push(NonnegativeConeT(2 * s));
    if bias {
        cones.push(ZeroConeT(1));
    }
    let Some((sol, status)) = clarabel_lp(&q, &a, &b, &cones, threads, max_iter, Ldl::Auto) else {
        return Restricted {
            gamma: vec![0.0; f],
            beta: 0.0,
            delta: r.iter().map(|v| v.abs()).collect(),
            pi: vec![0.0; s],
            status: Status::Stalled,
            iterations: 0,
        };
    };
    let z = &sol.z;
    // With the cones (1, X_jᵀπ) ∈ SOC, γ_j is the second multiplier.
    let gamma: Vec<f64> = (0..f).map(|c| z[2 * c + 1]).collect();
    // β is the equality's multiplier, with clarabel's sign convention (A'z = −q).
    let beta = if bias { z[2 * f + 2 * s] } else { 0.0 };
    let mut fitted = vec![beta; s];
    for (i, v) in fitted.iter_mut().enumerate() {
        let row = x.row(i);
        *v += cols.iter().zip(&gamma).map(|(&j, g)| row[j] * g).sum::<f64>();
    }
    Restricted {
        delta: fitted.iter().zip(r).map(|(v, r)| (v - r).abs()).collect(),
        gamma,
        beta,
        pi: sol.x.clone(),
        status,
        iterations: sol.iterations,
    }
}

/// max over features not in `inside` of |X_jᵀ π| − 1, and the features above `tol`,
/// most violated first.
fn price(x: ArrayView2<f64>, pi: &[f64], inside: &[bool], tol: f64) -> (f64, Vec<usize>) {
    let products = x.t().dot(&ArrayView1::from(pi));
    let mut worst = f64::NEG_INFINITY;
    let mut out: Vec<(f64, usize)> = Vec::new();
    for (j, (p, &taken)) in products.iter().zip(inside).enumerate() {
        let v = p.abs() - 1.0;
        worst = worst.max(v);
        if !taken && v > tol {
            out.push((v, j));
        }
    }
    out.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    (worst, out.into_iter().map(|(_, j)| j).collect())
}

/// The certified relative duality gap of (γ, β) against π, for the full problem:
/// π is made exactly dual feasible (centred when the bias is free, then scaled into
/// |π| ≤ 1 and |Xᵀπ| ≤ 1), so r·π is a lower bound on the optimum and
/// (primal − bound) / max(1, primal) bounds the distance to it.
fn certified_gap(x: ArrayView2<f64>, r: ArrayView1<f64>, gamma: &[f64], beta: f64, pi: &[f64], bias: bool) -> f64 {
    let gamma = ArrayView1::from(gamma);
    let residual = x.dot(&gamma) + beta - r;
    let primal = gamma.iter().map(|g| g.abs()).sum::<f64>() + residual.iter().map(|v| v.abs()).sum::<f64>();
    let mut p = ndarray::Array1::from(pi.to_vec());
    if bias && !p.is_empty() {
        let mean = p.mean().unwrap_or(0.0);
        p -= mean;
    }
    let box_max = p.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let feat_max = x.t().dot(&p).iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let scale = box_max.max(feat_max).max(1.0);
    let bound = r.dot(&p) / scale;
    (primal - bound).max(0.0) / primal.abs().max(1.0)
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
    let mut whole = settings.max_rounds == 0 || d < settings.generation_ratio.saturating_mul(s);
    for &j in first.iter().take(add) {
        inside[j] = true;
        cols.push(j);
    }
    let mut iterations = 0;
    let mut rounds = 0;
    loop {
        rounds += 1;
        let full = whole || rounds > settings.max_rounds;
        if full {
            cols = (0..d).collect();
            inside.iter_mut().for_each(|v| *v = true);
        }
        let sol = solve_restricted(
            x,
            r,
            &cols,
            settings.repair_bias,
            settings.solver_threads,
            settings.solver_max_iter,
        );
        iterations += sol.iterations;
        let (worst, entering) = price(x, &sol.pi, &inside, settings.price_tol);
        let done = entering.is_empty() || full || !matches!(sol.status, Status::Solved | Status::AlmostSolved);
        if done {
            let mut gamma = vec![0.0; d];
            for (c, &j) in cols.iter().enumerate() {
                gamma[j] = sol.gamma[c];
            }
            let objective = gamma.iter().map(|g| g.abs()).sum::<f64>() + sol.delta.iter().sum::<f64>();
            let gap = certified_gap(x, r, &gamma, sol.beta, &sol.pi, settings.repair_bias);
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
                gap,
                seconds: started.elapsed().as_secs_f64(),
            };
        }
        // Many violated columns mean many rounds ahead, each a full solve: the whole
        // problem is cheaper then.
        if settings.give_way && (entering.len() > s / 2 || cols.len() + entering.len() > d / 2) {
            whole = true;
            continue;
        }
        for &j in entering.iter().take(settings.batch.max(s).max(1)) {
            inside[j] = true;
            cols.push(j);
        }
    }
}

/// The paper's repair for every class: `weights` `[k, d]` and `bias` `[k]` of the head,
/// `features` `[S, d]` of the repair samples, `targets` `[S, k]` their wanted decision
/// values. With `allowed`, only those features' weights may change (the Wilcoxon
/// selection, [`wilcoxon::select`]). The classes are independent and run on
/// `threads` threads.
pub fn repair(
    weights: ArrayView2<f32>,
    bias: ArrayView1<f32>,
    features: ArrayView2<f32>,
    targets: ArrayView2<f32>,
    allowed: Option<&[usize]>,
    settings: &ClassSettings,
    threads: usize,
) -> Result<Repair, RepairError> {
    let (k, d) = weights.dim();
    let s = features.nrows();
    if features.ncols() != d || bias.len() != k || targets.dim() != (s, k) {
        return Err(RepairError::Shape(format!(
            "head [{k}, {d}] with bias of {}, features {:?} and targets {:?} do not fit together",
            bias.len(),
            features.dim(),
            targets.dim()
        )));
    }
    if let Some((i, _)) = features.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(RepairError::NonFinite {
            sample: i / d.max(1),
            feature: i % d.max(1),
        });
    }
    let started = Instant::now();
    let x = features.mapv(f64::from);
    let w = weights.mapv(f64::from);
    let scores = x.dot(&w.t()) + &bias.mapv(f64::from);
    let residuals = targets.mapv(f64::from) - &scores;
    let columns: Vec<usize> = match allowed {
        Some(cols) => {
            if let Some(bad) = cols.iter().find(|&&j| j >= d) {
                return Err(RepairError::Shape(format!(
                    "feature {bad} is out of range for {d} features"
                )));
            }
            cols.to_vec()
        }
        None => (0..d).collect(),
    };
    let x = if allowed.is_some() {
        x.select(Axis(1), &columns)
    } else {
        x
    };
    let classes = solve_classes(x.view(), residuals.view(), settings, threads)?;
    let mut new_w = weights.to_owned();
    let mut new_b = bias.to_owned();
    let (mut l1, mut linf) = (0.0f64, 0.0f64);
    let mut classes = classes;
    for (i, c) in classes.iter_mut().enumerate() {
        // Back from the allowed columns to all d features.
        let mut full = vec![0.0; d];
        for (&j, g) in columns.iter().zip(&c.gamma) {
            full[j] = *g;
        }
        c.gamma = full;
        for (j, g) in c.gamma.iter().enumerate() {
            new_w[[i, j]] += *g as f32;
            l1 += g.abs();
            linf = linf.max(g.abs());
        }
        new_b[i] += c.beta as f32;
        l1 += c.beta.abs();
        linf = linf.max(c.beta.abs());
    }
    let status = Status::worst(classes.iter().map(|c| c.status));
    Ok(Repair {
        weights: new_w,
        bias: new_b,
        objective: classes.iter().map(|c| c.objective).sum(),
        classes,
        margin: None,
        status,
        l1,
        linf,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Solves the paper's program for every class: `x` `[S, d]` the repair samples'
/// (changeable) features, `residuals` `[S, k]`. The classes are independent and run on
/// `threads` threads.
pub fn solve_classes(
    x: ArrayView2<f64>,
    residuals: ArrayView2<f64>,
    settings: &ClassSettings,
    threads: usize,
) -> Result<Vec<ClassSolution>, RepairError> {
    let k = residuals.ncols();
    if residuals.nrows() != x.nrows() {
        return Err(RepairError::Shape(format!(
            "{} repair samples but {} rows of residuals",
            x.nrows(),
            residuals.nrows()
        )));
    }
    let workers = threads.clamp(1, k.max(1));
    // The cores left over by the class workers go to each solve's factorisation.
    let mut settings = *settings;
    if settings.solver_threads == 0 {
        settings.solver_threads = u32::try_from((threads / workers).max(1)).unwrap_or(1);
    }
    let settings = &settings;
    Ok(crate::parallel::map_indices(k, workers, |i| {
        solve_class(x, residuals.index_axis(Axis(1), i), settings)
    }))
}
