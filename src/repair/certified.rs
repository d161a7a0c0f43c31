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
//! pairs those rows name) is solved by clarabel, every (sample, class) is then checked
//! with the exact worst margin, and the violated ones join until none is left. The
//! restricted program is a relaxation whose solution is feasible for the whole one, so
//! it is the whole one's optimum.

use std::time::Instant;

use clarabel::algebra::CscMatrix;
use clarabel::solver::SupportedConeT::NonnegativeConeT;
use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis};

use super::{RepairError, Status};
use crate::data::Dataset;
use crate::engine::Engine;
use crate::error::Result;
use crate::features::{collect, Feed};
use crate::head::HeadKind;
use crate::onnx::bounds::Margin;
use crate::onnx::head;
use crate::onnx::surgery::extractor;
use crate::onnx::{find_cut, ModelProto};
use crate::svm::LinearSvm;
use crate::verify::Bounder;

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
    /// clarabel's iteration limit per solve.
    pub max_iter: u32,
    /// A weight joins when moving it would lower the Lagrangian by more than this per
    /// unit.
    pub column_tol: f64,
    /// Weights that join per round, at most (the most negative reduced costs).
    pub columns_per_round: usize,
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
    /// clarabel's iterations over all rounds.
    pub iterations: u32,
    /// Rounds of row and weight generation.
    pub rounds: usize,
    /// Rows (sample, class) of the last restricted program, of N·(K − 1).
    pub rows: usize,
    /// Weights it could change, of K·d (the bias aside).
    pub columns: usize,
    /// Seconds in all.
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

/// Column-compressed form of `(row, column, value)` entries.
fn csc(rows: usize, cols: usize, mut entries: Vec<(usize, usize, f64)>) -> CscMatrix<f64> {
    entries.sort_unstable_by_key(|&(r, c, _)| (c, r));
    let mut colptr = vec![0usize; cols + 1];
    for &(_, c, _) in &entries {
        colptr[c + 1] += 1;
    }
    for c in 0..cols {
        colptr[c + 1] += colptr[c];
    }
    let rowval = entries.iter().map(|e| e.0).collect();
    let nzval = entries.iter().map(|e| e.2).collect();
    CscMatrix::new(rows, cols, colptr, rowval, nzval)
}

struct Restricted {
    weights: Array2<f64>,
    bias: Array1<f64>,
    status: Status,
    iterations: u32,
    /// clarabel's dual of every row, laid out as [`Layout`] says.
    z: Vec<f64>,
}

/// Where the rows of a restricted program sit.
struct Layout {
    /// Per class pair `t·K + c`, its index among the pairs with auxiliary vectors.
    pair_of: Vec<usize>,
    /// Per pair, per feature: the index of its auxiliary variable's first row
    /// (`usize::MAX` when the feature is fixed for that pair).
    pair_rows: Vec<Vec<usize>>,
    /// The first margin row; margin row `i` is `rows[i]`.
    margin0: usize,
}

/// Whether feature `j` can change for the pair `(t, c)`: either class's weight can.
fn free(working: &[bool], d: usize, t: usize, c: usize, j: usize) -> bool {
    working[t * d + j] || working[c * d + j]
}

/// Solves the program restricted to `rows` (sample, class) and to the weights
/// `working` (`[K·d]`, row-major) with clarabel. A feature fixed for a pair keeps its
/// exact term `|d⁰|·r` on the right-hand side.
fn solve_restricted(
    p: &CertifiedProblem,
    rows: &[(usize, usize)],
    working: &[bool],
    settings: &CertifiedSettings,
) -> (Restricted, Layout) {
    let (k, d) = p.weights.dim();
    let n = p.labels.len();
    // Variables: (γ, g) per working weight (and the bias), ξ per sample, then the pairs'
    // auxiliary variables over their free features.
    let mut gamma_of = vec![usize::MAX; k * (d + 1)];
    let mut gammas = 0;
    for c in 0..k {
        for j in 0..d {
            if working[c * d + j] {
                gamma_of[c * (d + 1) + j] = gammas;
                gammas += 1;
            }
        }
        if p.repair_bias {
            gamma_of[c * (d + 1) + d] = gammas;
            gammas += 1;
        }
    }
    let xi0 = 2 * gammas;
    let mut vars = xi0 + n;
    let mut pair_of = vec![usize::MAX; k * k];
    let mut pair_list: Vec<(usize, usize)> = Vec::new();
    let mut aux: Vec<Vec<usize>> = Vec::new();
    for &(s, c) in rows {
        let t = p.labels[s];
        if pair_of[t * k + c] == usize::MAX && p.radius.row(s).iter().any(|&v| v != 0.0) {
            pair_of[t * k + c] = pair_list.len();
            pair_list.push((t, c));
            aux.push(
                (0..d)
                    .map(|j| {
                        if free(working, d, t, c, j) {
                            vars += 1;
                            vars - 1
                        } else {
                            usize::MAX
                        }
                    })
                    .collect(),
            );
        }
    }
    let mut q = vec![0.0; vars];
    q[gammas..xi0].fill(1.0);
    q[xi0..xi0 + n].copy_from_slice(p.price);
    let mut entries: Vec<(usize, usize, f64)> = Vec::new();
    let mut b: Vec<f64> = Vec::new();
    let mut row = 0;
    for v in 0..gammas {
        // |γ| ≤ g.
        entries.extend([
            (row, v, 1.0),
            (row, gammas + v, -1.0),
            (row + 1, v, -1.0),
            (row + 1, gammas + v, -1.0),
        ]);
        b.extend([0.0, 0.0]);
        row += 2;
    }
    for s in 0..n {
        entries.push((row, xi0 + s, -1.0));
        b.push(0.0);
        row += 1;
    }
    let g = |c: usize, j: usize| gamma_of[c * (d + 1) + j];
    let mut pair_rows = Vec::with_capacity(pair_list.len());
    for (i, &(t, c)) in pair_list.iter().enumerate() {
        // |d⁰ + γ_t − γ_c| ≤ a over the pair's free features.
        let mut first = vec![usize::MAX; d];
        for j in (0..d).filter(|&j| aux[i][j] != usize::MAX) {
            let d0 = p.weights[[t, j]] - p.weights[[c, j]];
            for (r, sign) in [(row, 1.0), (row + 1, -1.0)] {
                if g(t, j) != usize::MAX {
                    entries.push((r, g(t, j), sign));
                }
                if g(c, j) != usize::MAX {
                    entries.push((r, g(c, j), -sign));
                }
                entries.push((r, aux[i][j], -1.0));
            }
            b.extend([-d0, d0]);
            first[j] = row;
            row += 2;
        }
        pair_rows.push(first);
    }
    let margin0 = row;
    let z = |s: usize, c: usize| p.centre.row(s).dot(&p.weights.row(c)) + p.bias[c];
    for &(s, c) in rows {
        // The margin row, negated into ≤ form.
        let t = p.labels[s];
        let pair = pair_of[t * k + c];
        let mut need = p.margin[s] - (z(s, t) - z(s, c));
        let variable = |j: usize| aux.get(pair).map_or(usize::MAX, |a| a[j]);
        for j in 0..d {
            let (v, r) = (p.centre[[s, j]], p.radius[[s, j]]);
            if variable(j) != usize::MAX {
                if r != 0.0 {
                    entries.push((row, variable(j), r));
                }
            } else if r != 0.0 {
                need += (p.weights[[t, j]] - p.weights[[c, j]]).abs() * r;
            }
            if v != 0.0 {
                if g(t, j) != usize::MAX {
                    entries.push((row, g(t, j), -v));
                }
                if g(c, j) != usize::MAX {
                    entries.push((row, g(c, j), v));
                }
            }
        }
        if p.repair_bias {
            entries.extend([(row, g(t, d), -1.0), (row, g(c, d), 1.0)]);
        }
        entries.push((row, xi0 + s, -1.0));
        b.push(-need);
        row += 1;
    }
    let a = csc(row, vars, entries);
    let cones = [NonnegativeConeT(row)];
    let layout = Layout {
        pair_of,
        pair_rows,
        margin0,
    };
    let unchanged = |status, iterations| Restricted {
        weights: p.weights.to_owned(),
        bias: p.bias.to_owned(),
        status,
        iterations,
        z: vec![0.0; row],
    };
    let Some((sol, status)) = super::paper::clarabel_lp(&q, &a, &b, &cones, settings.threads, settings.max_iter) else {
        return (unchanged(Status::Stalled, 0), layout);
    };
    if !status.usable() {
        return (unchanged(status, sol.iterations), layout);
    }
    let at = |c: usize, j: usize| if g(c, j) == usize::MAX { 0.0 } else { sol.x[g(c, j)] };
    let weights = Array2::from_shape_fn((k, d), |(c, j)| p.weights[[c, j]] + at(c, j));
    let bias = Array1::from_shape_fn(k, |c| p.bias[c] + if p.repair_bias { at(c, d) } else { 0.0 });
    (
        Restricted {
            weights,
            bias,
            status,
            iterations: sol.iterations,
            z: sol.z,
        },
        layout,
    )
}

/// The weights outside `working` whose change would lower the objective, priced
/// with the restricted program's duals: moving weight (c, j) by δ in either direction
/// changes the Lagrangian by δ·(1 + Σ_rows z·∂row), where a fixed feature's term
/// `|d|·r` moves with the sign of `d⁰` (or grows either way at `d⁰ = 0`).
fn entering_columns(
    p: &CertifiedProblem,
    rows: &[(usize, usize)],
    working: &[bool],
    layout: &Layout,
    z: &[f64],
    (tol, limit): (f64, usize),
) -> Vec<usize> {
    let (k, d) = p.weights.dim();
    // Per weight and direction, Σ z·(change of the ≤-form row per unit step).
    let mut up = vec![0.0f64; k * d];
    let mut down = vec![0.0f64; k * d];
    for (i, &(s, other)) in rows.iter().enumerate() {
        let y = z[layout.margin0 + i];
        if y <= 0.0 {
            continue;
        }
        let t = p.labels[s];
        let pair = layout.pair_of[t * k + other];
        for j in 0..d {
            let (v, r) = (p.centre[[s, j]], p.radius[[s, j]]);
            let fixed = pair == usize::MAX || layout.pair_rows[pair][j] == usize::MAX;
            for (class, role) in [(t, 1.0), (other, -1.0)] {
                let w = class * d + j;
                if working[w] {
                    continue;
                }
                // ε: the sign of d's change per unit step of the weight, up then down.
                for (acc, step) in [(&mut up, 1.0), (&mut down, -1.0)] {
                    let eps = role * step;
                    let spread = if !fixed || r == 0.0 {
                        0.0
                    } else {
                        let d0 = p.weights[[t, j]] - p.weights[[other, j]];
                        if d0 == 0.0 {
                            r
                        } else {
                            d0.signum() * eps * r
                        }
                    };
                    // The margin row's left side (≥ form) changes by ε·v − spread.
                    acc[w] -= y * (eps * v - spread);
                }
            }
        }
    }
    // A fixed weight of a pair with auxiliary variables also sits in that pair's
    // |d| ≤ a rows when the other class's weight is free there.
    for t in 0..k {
        for c in (0..k).filter(|&c| c != t) {
            let pair = layout.pair_of[t * k + c];
            if pair == usize::MAX {
                continue;
            }
            for j in 0..d {
                let first = layout.pair_rows[pair][j];
                if first == usize::MAX {
                    continue;
                }
                let (zp, zm) = (z[first], z[first + 1]);
                for (class, role) in [(t, 1.0), (c, -1.0)] {
                    let w = class * d + j;
                    if !working[w] {
                        up[w] += role * (zp - zm);
                        down[w] -= role * (zp - zm);
                    }
                }
            }
        }
    }
    let mut priced: Vec<(f64, usize)> = (0..k * d)
        .filter(|&w| !working[w])
        .map(|w| (1.0 + up[w].min(down[w]), w))
        .filter(|&(reduced, _)| reduced < -tol)
        .collect();
    // The most negative first, and few at a time: at the start every weight of a
    // short ball prices in, while the change that certifies touches few of them.
    priced.sort_by(|a, b| a.0.total_cmp(&b.0));
    priced.truncate(limit);
    priced.into_iter().map(|(_, w)| w).collect()
}

/// Solves the certified program (see the module's documentation): rows and weights
/// are both generated. The restricted program holds the rows that bind and the
/// weights worth changing; every row is then checked with the exact worst margin,
/// every other weight is priced with the duals, and what violates joins. A changed
/// head is sparse (a few hundred of thousands of weights), so the restricted program
/// stays small though its rows are dense over the features.
pub fn solve(p: &CertifiedProblem, settings: &CertifiedSettings) -> CertifiedSolution {
    solve_with(p, settings, &vec![false; p.weights.len()])
}

/// [`solve`] from the working weights `working` (`[K·d]`, row-major; all `true`: no
/// weight generation).
pub fn solve_with(p: &CertifiedProblem, settings: &CertifiedSettings, working: &[bool]) -> CertifiedSolution {
    let started = Instant::now();
    let (k, _) = p.weights.dim();
    let n = p.labels.len();
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
    loop {
        rounds += 1;
        let (sol, layout) = solve_restricted(p, &rows, &working, settings);
        iterations += sol.iterations;
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
        let columns = if failed {
            Vec::new()
        } else {
            entering_columns(
                p,
                &rows,
                &working,
                &layout,
                &sol.z,
                (settings.column_tol, settings.columns_per_round),
            )
        };
        let done = entering.is_empty() && columns.is_empty();
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
            };
        }
        for (s, c) in entering.into_iter().chain(near) {
            active[s * k + c] = true;
            rows.push((s, c));
        }
        for w in columns {
            working[w] = true;
        }
    }
}

/// What a certified repair of a hybrid does.
#[derive(Debug, Clone, Copy)]
pub struct CertifiedRepairSettings {
    /// The radius of the balls, in `[0, 1]` pixel units.
    pub eps: f32,
    /// The worst margin wanted over each ball.
    pub margin: f64,
    /// Price of a unit of a ball's shortfall.
    pub ball_price: f64,
    /// Price of a unit of a preserved image's loss of margin.
    pub keep_price: f64,
    /// Training images, evenly spaced, whose margins are kept
    /// ([`super::preservation_rows`]).
    pub preserve: usize,
    /// Whether the bias may change.
    pub repair_bias: bool,
    /// The rounding margin of the bounds.
    pub bounds: Margin,
    /// The solve.
    pub solve: CertifiedSettings,
}

/// A hybrid repaired so that its balls are certified, and the figures of its repair.
#[derive(Debug, Clone)]
pub struct CertifiedRepair {
    /// The repaired model.
    pub model: ModelProto,
    /// Linear or kernel hybrid.
    pub head: HeadKind,
    /// Width of the features the head reads.
    pub features: usize,
    /// Balls.
    pub balls: usize,
    /// Preserved images.
    pub preserved: usize,
    /// The program's solution.
    pub solution: CertifiedSolution,
    /// The balls `certify` certifies before the repair.
    pub certified_before: usize,
    /// The balls `certify` certifies in the written model.
    pub certified_after: usize,
    /// Σ|ΔW| + Σ|Δb| of the written (f32) head.
    pub l1: f64,
    /// max |ΔW|, |Δb|.
    pub linf: f64,
    /// Seconds spent on the balls' feature bounds.
    pub bounds_seconds: f64,
    /// Seconds in all, the checks included.
    pub seconds: f64,
}

/// Repairs the head of `hybrid` so that the ε-ball (clipped to `[0, 1]`) around every
/// image of `balls` is classified right with `settings.margin` over its feature box,
/// while `settings.preserve` images of `clean` keep their margins (see the module
/// docs). The written model is then certified on `balls` as `nnmend certify` would:
/// [`CertifiedRepair::certified_after`] counts what that check found, not what the
/// program promised.
pub fn repair_certified(
    hybrid: &ModelProto,
    balls: &Dataset,
    clean: &Dataset,
    engine: &dyn Engine,
    feed: &Feed,
    settings: &CertifiedRepairSettings,
) -> Result<CertifiedRepair> {
    let started = Instant::now();
    let site = head::find(hybrid)?;
    let (k, d) = site.weights.dim();
    if balls.is_empty() {
        return Err(RepairError::NoSamples.into());
    }
    let ball_labels = super::class_indices(&balls.labels, k)?;
    let bounder = Bounder::new(hybrid, &site.input, engine, balls, feed, settings.bounds)?;
    let boxes = bounder.bounds(balls, settings.eps, feed)?;
    let bounds_seconds = started.elapsed().as_secs_f64();
    if boxes.lower.dim() != (balls.len(), d) {
        return Err(RepairError::Shape(format!(
            "the feature bounds are {:?}, the head reads {d} features",
            boxes.lower.dim()
        ))
        .into());
    }
    let kept = clean
        .select(&super::preservation_rows(clean.len(), settings.preserve))
        .ok_or_else(|| RepairError::Shape("a preserved row is out of range".into()))?;
    let kept_features = if kept.is_empty() {
        Array2::zeros((0, d))
    } else {
        let cut = find_cut(hybrid, Some(&site.input))?;
        let session = engine.prepare(&extractor(hybrid, &cut, None)?)?;
        collect(session.as_ref(), &kept, feed, 0, "features")?
    };
    let kept_labels = super::class_indices(&kept.labels, k)?;
    let lower = boxes.lower.mapv(f64::from);
    let upper = boxes.upper.mapv(f64::from);
    let points = kept_features.mapv(f64::from);
    let centre = ndarray::concatenate(Axis(0), &[((&lower + &upper) / 2.0).view(), points.view()])
        .map_err(|e| RepairError::Shape(format!("stacking the balls and the preserved images: {e}")))?;
    let mut radius = Array2::<f64>::zeros(centre.dim());
    radius
        .slice_mut(ndarray::s![..balls.len(), ..])
        .assign(&((&upper - &lower) / 2.0));
    let labels: Vec<usize> = ball_labels.iter().chain(&kept_labels).copied().collect();
    let w = site.weights.mapv(f64::from);
    let b = site.bias.mapv(f64::from);
    let current = super::margin::margins((points.dot(&w.t()) + &b).view(), &kept_labels);
    let margin: Vec<f64> = std::iter::repeat_n(settings.margin, balls.len())
        .chain(current.iter().map(|&m| m.min(settings.margin)))
        .collect();
    let price: Vec<f64> = std::iter::repeat_n(settings.ball_price, balls.len())
        .chain(std::iter::repeat_n(settings.keep_price, kept.len()))
        .collect();
    let problem = CertifiedProblem {
        weights: w.view(),
        bias: b.view(),
        centre: centre.view(),
        radius: radius.view(),
        labels: &labels,
        margin: &margin,
        price: &price,
        repair_bias: settings.repair_bias,
    };
    let mut solve_settings = settings.solve;
    if solve_settings.threads == 0 {
        solve_settings.threads = u32::try_from(feed.threads.max(1)).unwrap_or(1);
    }
    // A solve that did not end usable leaves the head as it was; the caller reads
    // its status and decides (`repair` writes no model then).
    let solution = solve(&problem, &solve_settings);
    let repaired = LinearSvm {
        weights: solution.weights.mapv(|v| v as f32),
        bias: solution.bias.mapv(|v| v as f32),
    };
    let (l1, linf) = super::change(&repaired, &site.linear());
    let provenance = vec![
        ("nnmend.repair.mode", "certified".to_string()),
        ("nnmend.repair.head", site.kind.name().to_string()),
        ("nnmend.repair.eps", settings.eps.to_string()),
        ("nnmend.repair.balls", balls.len().to_string()),
        ("nnmend.repair.objective", format!("{}", solution.objective)),
        ("nnmend.repair.status", format!("{:?}", solution.status).to_lowercase()),
        ("nnmend.repair.bias", settings.repair_bias.to_string()),
        ("nnmend.repair.version", crate::provenance::VERSION.to_string()),
        ("nnmend.repair.commit", crate::provenance::COMMIT.to_string()),
    ];
    let model = head::replace(hybrid, &site, &repaired.weights, &repaired.bias, &provenance)?;
    // The check is `certify`'s own, on the written model and on the original.
    let count = |m: &ModelProto| -> Result<usize> {
        Ok(crate::verify::certify_at(m, engine, balls, settings.eps, settings.bounds, feed)?.certified)
    };
    Ok(CertifiedRepair {
        certified_before: count(hybrid)?,
        certified_after: count(&model)?,
        model,
        head: site.kind,
        features: d,
        balls: balls.len(),
        preserved: kept.len(),
        solution,
        l1,
        linf,
        bounds_seconds,
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use ndarray::{array, Array2};

    use super::*;

    /// Worst margins by enumerating the box's corners (small d only).
    fn corners(w: &Array2<f64>, b: &[f64], lo: &[f64], hi: &[f64], t: usize, c: usize) -> f64 {
        let d = lo.len();
        (0..1usize << d)
            .map(|mask| {
                (0..d)
                    .map(|j| {
                        let f = if mask >> j & 1 == 1 { hi[j] } else { lo[j] };
                        (w[[t, j]] - w[[c, j]]) * f
                    })
                    .sum::<f64>()
                    + b[t]
                    - b[c]
            })
            .fold(f64::INFINITY, f64::min)
    }

    #[test]
    fn the_worst_margin_is_the_worst_corner() {
        let w = array![[1.0, -2.0, 0.5], [0.3, 0.1, -1.0], [-0.4, 0.9, 0.2]];
        let b = array![0.1, -0.2, 0.3];
        let lo = array![[0.0, 0.5, -1.0]];
        let hi = array![[1.0, 0.7, 2.0]];
        let centre = (&lo + &hi) / 2.0;
        let radius = (&hi - &lo) / 2.0;
        let p = CertifiedProblem {
            weights: w.view(),
            bias: b.view(),
            centre: centre.view(),
            radius: radius.view(),
            labels: &[0],
            margin: &[0.0],
            price: &[1.0],
            repair_bias: false,
        };
        let worst = worst_margins(&p, w.view(), b.view());
        for c in 1..3 {
            let expected = corners(
                &w,
                b.as_slice().unwrap(),
                lo.as_slice().unwrap(),
                hi.as_slice().unwrap(),
                0,
                c,
            );
            assert!((worst[[0, c]] - expected).abs() < 1e-12, "class {c}");
        }
    }

    #[test]
    fn a_repair_certifies_its_balls_and_keeps_its_points() {
        // Three classes in two features; ball 0 around (0.6, 0.5) labelled 0 overlaps
        // the boundary of the head x₀ − x₁ for class 0 against 1.
        let w = array![[1.0, -1.0], [-1.0, 1.0], [0.0, 0.0]];
        let b = array![0.0, 0.0, -0.5];
        let centre = array![[0.6, 0.5], [0.9, 0.1], [0.1, 0.9]];
        let radius = array![[0.2, 0.2], [0.0, 0.0], [0.0, 0.0]];
        let labels = [0, 0, 1];
        let margin = [0.1, 0.1, 0.1];
        let price = [10.0, 10.0, 10.0];
        let p = CertifiedProblem {
            weights: w.view(),
            bias: b.view(),
            centre: centre.view(),
            radius: radius.view(),
            labels: &labels,
            margin: &margin,
            price: &price,
            repair_bias: true,
        };
        let before = worst_margins(&p, w.view(), b.view());
        assert!(before[[0, 1]] < 0.0, "the ball is not certified before");
        let sol = solve(&p, &CertifiedSettings::default());
        assert_eq!(sol.status, Status::Solved);
        let after = worst_margins(&p, sol.weights.view(), sol.bias.view());
        for s in 0..3 {
            for c in (0..3).filter(|&c| c != labels[s]) {
                assert!(
                    after[[s, c]] >= margin[s] - 1e-6,
                    "sample {s} class {c}: {}",
                    after[[s, c]]
                );
                let lo: Vec<f64> = (0..2).map(|j| centre[[s, j]] - radius[[s, j]]).collect();
                let hi: Vec<f64> = (0..2).map(|j| centre[[s, j]] + radius[[s, j]]).collect();
                let exact = corners(&sol.weights, sol.bias.as_slice().unwrap(), &lo, &hi, labels[s], c);
                assert!((after[[s, c]] - exact).abs() < 1e-9);
            }
        }
        assert!(sol.shortfall.iter().all(|&x| x < 1e-6));
        let change: f64 = (&sol.weights - &w)
            .iter()
            .chain((&sol.bias - &b).iter())
            .map(|v| v.abs())
            .sum();
        assert!((sol.objective - change).abs() < 1e-6);
        assert!(change > 0.0);
    }

    /// A seeded problem of `n` balls and `points` points in `d` features, `k` classes.
    fn random_problem(seed: u64, (n, points, d, k): (usize, usize, usize, usize)) -> [Array2<f64>; 4] {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let w = Array2::from_shape_fn((k, d), |_| rng.random_range(-1.0..1.0));
        let bias = Array2::from_shape_fn((1, k), |_| rng.random_range(-0.1..0.1));
        let centre = Array2::from_shape_fn((n + points, d), |_| rng.random_range(0.0..1.0));
        let radius = Array2::from_shape_fn((n + points, d), |(s, j)| {
            if s < n && j % 3 != 0 {
                rng.random_range(0.0..0.05)
            } else {
                0.0
            }
        });
        [w, bias, centre, radius]
    }

    #[test]
    fn generating_the_weights_reaches_the_whole_programs_optimum() {
        for seed in 0..4 {
            let (n, points, d, k) = (12, 8, 10, 4);
            let [w, bias, centre, radius] = random_problem(seed, (n, points, d, k));
            let b = bias.row(0);
            let labels: Vec<usize> = (0..n + points).map(|s| s % k).collect();
            let probe = CertifiedProblem {
                weights: w.view(),
                bias: b,
                centre: centre.view(),
                radius: radius.view(),
                labels: &labels,
                margin: &vec![0.0; n + points],
                price: &vec![1.0; n + points],
                repair_bias: seed % 2 == 0,
            };
            // Points keep what margin they have (up to 0.2); balls want 0.2.
            let now = worst_margins(&probe, w.view(), b);
            let margin: Vec<f64> = (0..n + points)
                .map(|s| {
                    let own = (0..k)
                        .filter(|&c| c != labels[s])
                        .map(|c| now[[s, c]])
                        .fold(f64::INFINITY, f64::min);
                    if s < n {
                        0.2
                    } else {
                        own.min(0.2)
                    }
                })
                .collect();
            let price: Vec<f64> = (0..n + points).map(|s| if s < n { 2.0 } else { 5.0 }).collect();
            let p = CertifiedProblem {
                margin: &margin,
                price: &price,
                ..probe
            };
            let generated = solve(&p, &CertifiedSettings::default());
            let whole = solve_with(&p, &CertifiedSettings::default(), &vec![true; k * d]);
            assert_eq!(generated.status, Status::Solved, "seed {seed}");
            assert_eq!(whole.status, Status::Solved, "seed {seed}");
            assert!(
                (generated.objective - whole.objective).abs() <= 1e-5 * (1.0 + whole.objective),
                "seed {seed}: {} against {}",
                generated.objective,
                whole.objective
            );
            assert!(generated.columns < k * d, "seed {seed}: every weight was generated");
            assert!(whole.objective > 0.0, "seed {seed}: nothing to repair");
        }
    }
}
