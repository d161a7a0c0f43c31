//! A primal–dual interior-point method for the restricted certified program with every
//! weight free, built on the program's structure.
//!
//! Over a set of R margin rows, the program (see the parent module) is
//!
//! ```text
//! minimise qᵀx  subject to  A x + s = b,  s ≥ 0
//! ```
//!
//! with x = (γ, g, ξ, a): the change of every weight (and of the bias, as a feature
//! constant 1), its bound g ≥ |γ|, each row's sample's shortfall ξ ≥ 0, and per class
//! pair (t, k) with a ball among the rows the vector a ≥ |d⁰ + γ_t − γ_k|. Each Newton
//! step of Mehrotra's predictor–corrector method (with up to two of Gondzio's
//! centrality correctors) solves a system in N = H + Cᵀ W C, where C is the margin
//! rows and H everything else:
//!
//! - g only meets γ (its two rows |γ| ≤ g), a pair's a_j only the same feature's γ_t,j
//!   and γ_k,j, and ξ only itself, so H is block diagonal over the features: after g and
//!   a are eliminated, feature j leaves a K × K matrix M_j = diag(h_j) + Σ_pairs φ Δ Δᵀ
//!   (Δ = e_t − e_k), inverted once per step;
//! - a margin row of pair p and sample s reads the features as −α_j Δ_p with
//!   α_j = c_s,j + σ_p,j r_s,j (σ from a's elimination), so the R × R matrix
//!   S = W⁻¹ + C H⁻¹ Cᵀ is, between the rows of pairs p and p′,
//!   A_p diag(Δ_pᵀ M_j⁻¹ Δ_p′) A_p′ᵀ plus a's own term within a pair and ξ's within a
//!   sample: about R²·d/2 multiply–adds for its lower half, in blocks of a few dozen
//!   rows by a few dozen (pair p's rows scaled, against pair p′'s), computed in
//!   register tiles ([`gram`]), the pairs split between two threads.
//!
//! S is factored densely (faer's Cholesky), and each system is solved in its augmented
//! form [H Cᵀ; C −W⁻¹] (Δx, Δy), Δy the margin rows' dual step, by eliminating Δx:
//! Δy = S⁻¹ (C H⁻¹ r₁ − r₂), Δx = H⁻¹ (r₁ − Cᵀ Δy). H⁻¹ grows without bound for the
//! weights that change, so the elimination loses digits near the optimum; the solution
//! is refined with its residual, A and W applied exactly. A general sparse solver meets
//! the same system as one sparse LDLᵀ in which the dense margin rows couple every
//! feature.
//!
//! The method is resumable ([`Solver`]): stopped once its iterate is within a factor
//! of the tolerances (a round of row generation whose rows will change anyway), it
//! goes on from that iterate, as if it had not stopped, when the rows turn out final.
//! The products by the margin rows (C x and Cᵀ λ, a dozen per iteration for the
//! directions and their refinement) are split between two threads, Cᵀ λ class by
//! class, so that each weight takes its rows' terms in the rows' order whatever the
//! split.

mod gram;
mod program;
mod step;
#[cfg(test)]
mod tests;

use faer::Par;
use ndarray::{Array1, Array2};

use super::CertifiedProblem;
use crate::repair::ipm::{inf_norm, max_step};
use crate::repair::Status;
use program::Program;
use step::Step;

/// The method stops when the relative residuals are below this...
const TOL_FEASIBLE: f64 = 1e-8;
/// ...and the duality gap below this fraction of the objective.
const TOL_GAP: f64 = 1e-6;
/// Solved, when it stops within this factor of both: on repairs of a thousand balls
/// (10⁵ constraints, the products s∘z about 10⁻⁸ each) the Newton systems sometimes
/// stop resolving the steps just short of the tolerances, and a gap of 10⁻⁵ of the
/// optimum is far below what the head's f32 weights keep.
const SOLVED: f64 = 10.0;
/// Good enough (within this factor of the tolerances), when the iteration limit or
/// the precision runs out first.
const ALMOST: f64 = 100.0;
/// Iterations without a new best iterate before the method gives up...
const PATIENCE: u32 = 5;
/// ...once the best iterate is within this factor of the tolerances: far from them
/// the gap can stay put for a few steps while the residuals fall.
const NEAR: f64 = 1e3;
/// Fraction of the step to the boundary taken.
const STEP: f64 = 0.99;
/// Centrality correctors per step, at most.
const CORRECTORS: usize = 2;
/// How far the start's a lies above |d⁰|.
const A_START: f64 = 0.01;
/// Refinements of a Newton system's solution, at most...
const REFINE: usize = 8;
/// ...until its residual is this fraction of the system's right side: far below what
/// the steps need, whose targets are met to 10⁻⁸ of the data at the closest.
const REFINED: f64 = 1e-10;
/// The least curvature H gives a variable: a weight that changes has one side of
/// |γ| ≤ g slack, and its curvature falls to 0 with the barrier, which would make H⁻¹
/// unbounded. The refinement corrects for the floor.
const FLOOR: f64 = 1e-12;
/// The parallelism of the dense products, whatever the thread count asked for: a
/// fixed split keeps the rounding, and so the repair, the same.
const THREADS: usize = 2;
/// Programs with at least this many margin rows have their products by the rows split
/// between two threads.
const PARALLEL_ROWS: usize = 256;

/// The restricted program's solution.
pub(super) struct Solution {
    pub weights: Array2<f64>,
    pub bias: Array1<f64>,
    pub status: Status,
    pub iterations: u32,
    /// Its optimum, qᵀx.
    pub objective: f64,
    /// The margin rows' duals, in the order of the rows given.
    pub y: Vec<f64>,
    /// Variables, constraints and non-zero coefficients of the program.
    pub size: (usize, usize, usize),
}

/// A dual start that satisfies Aᵀz + q = 0 (but where a feature has no radius in
/// any row of a pair): each sample's price split between its rows and its ξ ≥ 0, the
/// margin rows' share scaled so that what they ask of a weight lies within its bound's
/// duals, and |d| ≤ a's duals matching what the rows ask of a.
fn dual_start(program: &Program) -> Vec<f64> {
    let (xa, sa, d) = (program.x_at(), program.s_at(), program.d);
    let kd = program.k * program.db;
    let mut z = vec![0.0; sa.len];
    for (i, &local) in program.sample.iter().enumerate() {
        z[sa.c + i] = program.q[xa.xi + local] / (2 * program.members[local].len()) as f64;
    }
    let mut v = vec![0.0; xa.len];
    program.margin_t(&z[sa.c..], &mut v);
    let theta = (0.5 / inf_norm(&v[..kd]).max(f64::MIN_POSITIVE)).min(1.0);
    for zi in &mut z[sa.c..] {
        *zi *= theta;
    }
    for vi in &mut v {
        *vi *= theta;
    }
    for u in 0..kd {
        z[u] = 0.5 - v[u] / 2.0;
        z[kd + u] = 0.5 + v[u] / 2.0;
    }
    for (local, rows) in program.members.iter().enumerate() {
        let share: f64 = rows.iter().map(|&i| z[sa.c + i]).sum();
        z[sa.m + local] = program.q[xa.xi + local] - share;
    }
    for i in 0..program.with_aux.len() * d {
        let half = (v[xa.a + i] / 2.0).max(1e-3);
        z[sa.p4 + i] = half;
        z[sa.p5 + i] = half;
    }
    z
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(a, b)| a * b).sum()
}

/// The method on one restricted program, resumable: [`Solver::run`] stops once the
/// iterate is within a given factor of the tolerances, and a later call goes on from
/// there, towards a tighter factor.
pub(super) struct Solver {
    program: Program,
    /// The rows' order in the program, as indices into the rows given.
    order: Vec<usize>,
    /// Weights and bias of the head the changes apply to.
    weights: Array2<f64>,
    bias: Array1<f64>,
    repair_bias: bool,
    x: Vec<f64>,
    s: Vec<f64>,
    z: Vec<f64>,
    /// The best iterate so far: its distance to the tolerances (as a multiple of them),
    /// x, z and the iteration it came at.
    best: Option<(f64, Vec<f64>, Vec<f64>, u32)>,
    iterations: u32,
    /// Whether the method can go on: false once it broke down or gave up.
    alive: bool,
}

impl Solver {
    /// The method at its start on the certified program over the margin rows `rows`
    /// (sample, class), every weight free.
    pub fn new(p: &CertifiedProblem, rows: &[(usize, usize)]) -> Self {
        let d = p.weights.ncols();
        let labels = p.labels;
        let mut order: Vec<usize> = (0..rows.len()).collect();
        order.sort_by_key(|&o| (labels[rows[o].0], rows[o].1, o));
        let program = Program::new(p, rows, &order);
        let (xa, sa) = (program.x_at(), program.s_at());
        // A strictly feasible start: γ = 0, g = 1, a = |d⁰| + 0.01 and each ξ large
        // enough that every margin row's slack is at least 1 (ξ is then about the balls'
        // shortfalls under the head as it is).
        let mut x = vec![0.0; xa.len];
        x[xa.g..xa.xi].fill(1.0);
        for i in 0..program.with_aux.len() * d {
            x[xa.a + i] = program.b[sa.p5 + i].abs() + A_START;
        }
        let lhs = program.margin(&x);
        for (i, v) in lhs.iter().enumerate() {
            let s = xa.xi + program.sample[i];
            x[s] = x[s].max(v - program.b[sa.c + i] + 1.0);
        }
        let ax = program.a_mul(&x);
        let mut s: Vec<f64> = program.b.iter().zip(&ax).map(|(b, a)| (b - a).max(A_START)).collect();
        let mut z = dual_start(&program);
        // Mehrotra's shift: the same amount added to every slack, and to every multiplier,
        // so that no product s∘z starts far below the others.
        let sz = dot(&s, &z);
        let (ds, dz) = (0.5 * sz / z.iter().sum::<f64>(), 0.5 * sz / s.iter().sum::<f64>());
        s.iter_mut().for_each(|v| *v += ds);
        z.iter_mut().for_each(|v| *v += dz);
        Self {
            program,
            order,
            weights: p.weights.to_owned(),
            bias: p.bias.to_owned(),
            repair_bias: p.repair_bias,
            x,
            s,
            z,
            best: None,
            iterations: 0,
            alive: true,
        }
    }

    /// Iterations so far.
    pub fn iterations(&self) -> u32 {
        self.iterations
    }

    /// Iterates until the iterate is within `within` times the tolerances (1: the
    /// tolerances themselves), the method stalls, or `max_iter` iterations in all; the
    /// best iterate so far as a solution, its status judged at the tolerances.
    pub fn run(&mut self, within: f64, max_iter: u32) -> Solution {
        let program = &self.program;
        let (x, s, z) = (&mut self.x, &mut self.s, &mut self.z);
        let best = &mut self.best;
        let iterations = &mut self.iterations;
        let par = Par::rayon(THREADS);
        let sa = program.s_at();
        let m = sa.len as f64;
        let scale_b = 1.0 + inf_norm(&program.b);
        let scale_q = 1.0 + inf_norm(&program.q);
        while self.alive {
            let ax = program.a_mul(x);
            let rp: Vec<f64> = (0..sa.len).map(|i| ax[i] + s[i] - program.b[i]).collect();
            let atz = program.at_mul(z);
            let rd: Vec<f64> = atz.iter().zip(&program.q).map(|(a, q)| a + q).collect();
            let mu = dot(s, z) / m;
            let primal = dot(&program.q, x);
            let dual = -dot(&program.b, z);
            let gap = (primal - dual).abs() / (1.0 + primal.abs());
            // The worst of the three, as a multiple of its tolerance.
            let worst = [
                inf_norm(&rp) / scale_b / TOL_FEASIBLE,
                inf_norm(&rd) / scale_q / TOL_FEASIBLE,
                gap / TOL_GAP,
            ]
            .into_iter()
            .fold(0.0f64, |m, v| if v.is_nan() { v } else { m.max(v) });
            if !worst.is_finite() {
                self.alive = false;
                break;
            }
            if best.as_ref().is_none_or(|b| worst < b.0) {
                *best = Some((worst, x.clone(), z.clone(), *iterations));
            }
            let stuck = best
                .as_ref()
                .is_some_and(|b| b.0 <= NEAR && *iterations >= b.3 + PATIENCE);
            if stuck || worst <= 1.0 {
                self.alive = false;
            }
            if !self.alive || worst <= within || *iterations >= max_iter {
                break;
            }
            *iterations += 1;
            let w: Vec<f64> = z.iter().zip(s.iter()).map(|(z, s)| z / s).collect();
            let Some(step) = Step::new(program, &w, par) else {
                self.alive = false;
                break;
            };
            // One Newton direction for the complementarity target rc (s∘z = rc wanted).
            let direction = |rc: &[f64]| -> (Vec<f64>, Vec<f64>, Vec<f64>) {
                // With e = W r_p − rc/s: r₁ = −r_d − A_Bᵀ e_B and r₂ = −W⁻¹ e_C over the
                // margin rows; then Δz_B = W (A Δx + r_p) − rc/s and Δz_C = Δy.
                let mut e: Vec<f64> = (0..sa.len).map(|i| w[i] * rp[i] - rc[i] / s[i]).collect();
                let r2: Vec<f64> = (sa.c..sa.len).map(|i| -e[i] / w[i]).collect();
                e[sa.c..].fill(0.0);
                let at = program.at_mul(&e);
                let r1: Vec<f64> = rd.iter().zip(&at).map(|(a, b)| -a - b).collect();
                let (dx, dy) = step.solve(&r1, &r2, &w, par);
                let adx = program.a_mul_bounds(&dx);
                let mut dz: Vec<f64> = (0..sa.c).map(|i| w[i] * (adx[i] + rp[i]) - rc[i] / s[i]).collect();
                dz.extend(dy);
                let ds: Vec<f64> = (0..sa.len).map(|i| -(rc[i] + s[i] * dz[i]) / z[i]).collect();
                (dx, ds, dz)
            };
            let sz: Vec<f64> = s.iter().zip(z.iter()).map(|(a, b)| a * b).collect();
            let (_, ds_aff, dz_aff) = direction(&sz);
            let ap = max_step(s.as_slice(), &ds_aff);
            let ad = max_step(z.as_slice(), &dz_aff);
            let mu_aff = (0..sa.len)
                .map(|i| (s[i] + ap * ds_aff[i]) * (z[i] + ad * dz_aff[i]))
                .sum::<f64>()
                / m;
            let sigma = (mu_aff / mu).clamp(0.0, 1.0).powi(3);
            let rc: Vec<f64> = (0..sa.len)
                .map(|i| sz[i] + ds_aff[i] * dz_aff[i] - sigma * mu)
                .collect();
            let (mut dx, mut ds, mut dz) = direction(&rc);
            let mut ap = max_step(s.as_slice(), &ds);
            let mut ad = max_step(z.as_slice(), &dz);
            // Gondzio's centrality correctors: aim at a longer step, and pull the products
            // s∘z of the point it reaches back into [β_min, β_max]·σμ; keep the corrected
            // direction while it lengthens the step enough.
            let target = sigma * mu;
            let mut rc = rc;
            for _ in 0..CORRECTORS {
                if ap.min(ad) >= 1.0 {
                    break;
                }
                let (tp, td) = ((ap + 0.2).min(1.0), (ad + 0.2).min(1.0));
                let t: Vec<f64> = (0..sa.len)
                    .map(|i| {
                        let v = (s[i] + tp * ds[i]) * (z[i] + td * dz[i]);
                        let lo = 0.1 * target;
                        let hi = 10.0 * target;
                        if v < lo {
                            lo - v
                        } else if v > hi {
                            (hi - v).max(-hi)
                        } else {
                            0.0
                        }
                    })
                    .collect();
                let trial: Vec<f64> = rc.iter().zip(&t).map(|(a, b)| a - b).collect();
                let (cx, cs, cz) = direction(&trial);
                let (cp, cd) = (max_step(s.as_slice(), &cs), max_step(z.as_slice(), &cz));
                if cp.min(cd) < ap.min(ad) + 0.1 * 0.2 {
                    break;
                }
                (dx, ds, dz, ap, ad, rc) = (cx, cs, cz, cp, cd, trial);
            }
            let ap = (STEP * ap).min(1.0);
            let ad = (STEP * ad).min(1.0);
            for (v, dv) in x.iter_mut().zip(&dx) {
                *v += ap * dv;
            }
            for (v, dv) in s.iter_mut().zip(&ds) {
                *v += ap * dv;
            }
            for (v, dv) in z.iter_mut().zip(&dz) {
                *v += ad * dv;
            }
        }
        self.solution(within)
    }

    /// The best iterate so far as a solution, its status judged at `within` times the
    /// tolerances (short of them, "solved" or "stalled" only).
    fn solution(&self, within: f64) -> Solution {
        let program = &self.program;
        let (xa, sa) = (program.x_at(), program.s_at());
        let size = (xa.len, sa.len, program.nonzeros());
        let (k, d) = self.weights.dim();
        let db = program.db;
        let Some((worst, x, z, _)) = &self.best else {
            return Solution {
                weights: self.weights.clone(),
                bias: self.bias.clone(),
                status: Status::Stalled,
                iterations: self.iterations,
                objective: f64::NAN,
                y: vec![0.0; self.order.len()],
                size,
            };
        };
        // Short of the tolerances, only an iterate within the factor asked counts.
        let (worst, almost) = if within > 1.0 {
            (worst / within, SOLVED)
        } else {
            (*worst, ALMOST)
        };
        let status = if worst <= SOLVED {
            Status::Solved
        } else if worst <= almost {
            Status::AlmostSolved
        } else {
            Status::Stalled
        };
        let weights = Array2::from_shape_fn((k, d), |(c, j)| self.weights[[c, j]] + x[c * db + j]);
        let bias = Array1::from_shape_fn(k, |c| self.bias[c] + if self.repair_bias { x[c * db + d] } else { 0.0 });
        let mut y = vec![0.0; self.order.len()];
        for (i, &o) in self.order.iter().enumerate() {
            y[o] = z[sa.c + i];
        }
        Solution {
            weights,
            bias,
            status,
            iterations: self.iterations,
            objective: dot(&program.q, x),
            y,
            size,
        }
    }
}
