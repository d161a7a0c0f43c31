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
//!   register tiles ([`super::gram`]), the pairs split between two threads.
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

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt::factor::{cholesky_in_place, cholesky_in_place_scratch, LltRegularization};
use faer::linalg::triangular_solve::{solve_lower_triangular_in_place, solve_upper_triangular_in_place};
use faer::{Mat, Par};
use ndarray::{Array1, Array2};

use super::{gram, CertifiedProblem};
use crate::repair::ipm::{inf_norm, max_step};
use crate::repair::Status;
use crate::svm::dot4;

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
/// The partial sums of [`dot_diff`].
const LANES: usize = 4;
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

/// The program over a set of rows, grouped by class pair.
struct Program {
    k: usize,
    d: usize,
    /// Features with a weight change: d, and the bias as feature d.
    db: usize,
    /// Per row (in the program's order): its pair and its sample's local index.
    pair: Vec<usize>,
    sample: Vec<usize>,
    /// Per pair: (t, k), its rows' range and its index among the pairs with a
    /// (`usize::MAX` when none of its rows is a ball).
    pairs: Vec<(usize, usize)>,
    range: Vec<(usize, usize)>,
    aux: Vec<usize>,
    /// Per pair with a, the pair.
    with_aux: Vec<usize>,
    /// Per row, its box centre (and 1 for the bias) `[R, db]` and radius `[R, d]`.
    x: Array2<f64>,
    r: Array2<f64>,
    /// Per local sample, its rows.
    members: Vec<Vec<usize>>,
    /// Per class, the pairs whose rows read its weights, in order, with the sign they
    /// read them with (−1 for the pair's label, +1 for the other class)...
    touches: Vec<Vec<(usize, f64)>>,
    /// ...and whether the first of two threads takes its weights in Cᵀ λ (the rows
    /// shared out evenly).
    first_thread: Vec<bool>,
    q: Vec<f64>,
    b: Vec<f64>,
}

/// Offsets of the blocks of x: γ, g, ξ, a.
struct XAt {
    g: usize,
    xi: usize,
    a: usize,
    len: usize,
}

/// Offsets of the blocks of s and z: |γ| ≤ g (two), ξ ≥ 0, |d| ≤ a (two), margins.
struct SAt {
    m: usize,
    p4: usize,
    p5: usize,
    c: usize,
    len: usize,
}

impl Program {
    /// The program over `rows` (in the order `order` gives, grouped by pair).
    fn new(p: &CertifiedProblem, rows: &[(usize, usize)], order: &[usize]) -> Self {
        let (k, d) = p.weights.dim();
        let db = d + usize::from(p.repair_bias);
        let mut pair_of = vec![usize::MAX; k * k];
        let mut pairs = Vec::new();
        let mut range: Vec<(usize, usize)> = Vec::new();
        let mut pair = Vec::with_capacity(order.len());
        let mut local = vec![usize::MAX; p.labels.len()];
        let mut members: Vec<Vec<usize>> = Vec::new();
        let mut sample = Vec::with_capacity(order.len());
        let mut samples = Vec::new();
        for (i, &o) in order.iter().enumerate() {
            let (s, c) = rows[o];
            let t = p.labels[s];
            if pair_of[t * k + c] == usize::MAX {
                pair_of[t * k + c] = pairs.len();
                pairs.push((t, c));
                range.push((i, i));
            }
            let at = pair_of[t * k + c];
            range[at].1 = i + 1;
            pair.push(at);
            if local[s] == usize::MAX {
                local[s] = members.len();
                members.push(Vec::new());
                samples.push(s);
            }
            members[local[s]].push(i);
            sample.push(local[s]);
        }
        let rr = order.len();
        let x = Array2::from_shape_fn(
            (rr, db),
            |(i, j)| {
                if j < d {
                    p.centre[[rows[order[i]].0, j]]
                } else {
                    1.0
                }
            },
        );
        let r = Array2::from_shape_fn((rr, d), |(i, j)| p.radius[[rows[order[i]].0, j]]);
        let mut aux = vec![usize::MAX; pairs.len()];
        let mut with_aux = Vec::new();
        for (at, &(lo, hi)) in range.iter().enumerate() {
            if (lo..hi).any(|i| r.row(i).iter().any(|&v| v != 0.0)) {
                aux[at] = with_aux.len();
                with_aux.push(at);
            }
        }
        let mut touches = vec![Vec::new(); k];
        for (at, &(t, c)) in pairs.iter().enumerate() {
            touches[t].push((at, -1.0));
            touches[c].push((at, 1.0));
        }
        // The classes to the thread with fewer rows so far, the busiest first.
        let load = |c: usize| -> usize { touches[c].iter().map(|&(at, _)| range[at].1 - range[at].0).sum() };
        let mut by_load: Vec<usize> = (0..k).collect();
        by_load.sort_by_key(|&c| (std::cmp::Reverse(load(c)), c));
        let mut first_thread = vec![false; k];
        let mut shares = [0usize; 2];
        for c in by_load {
            let to = usize::from(shares[1] < shares[0]);
            first_thread[c] = to == 0;
            shares[to] += load(c);
        }
        let mut program = Self {
            k,
            d,
            db,
            pair,
            sample,
            pairs,
            range,
            aux,
            with_aux,
            x,
            r,
            members,
            touches,
            first_thread,
            q: Vec::new(),
            b: Vec::new(),
        };
        let (xa, sa) = (program.x_at(), program.s_at());
        let mut q = vec![0.0; xa.len];
        q[xa.g..xa.xi].fill(1.0);
        for (v, &s) in q[xa.xi..xa.a].iter_mut().zip(&samples) {
            *v = p.price[s];
        }
        let mut b = vec![0.0; sa.len];
        for (ap, &at) in program.with_aux.iter().enumerate() {
            let (t, c) = program.pairs[at];
            for j in 0..d {
                let d0 = p.weights[[t, j]] - p.weights[[c, j]];
                b[sa.p4 + ap * d + j] = -d0;
                b[sa.p5 + ap * d + j] = d0;
            }
        }
        let score = |s: usize, c: usize| p.centre.row(s).dot(&p.weights.row(c)) + p.bias[c];
        for (i, &o) in order.iter().enumerate() {
            let (s, c) = rows[o];
            let t = p.labels[s];
            b[sa.c + i] = -(p.margin[s] - (score(s, t) - score(s, c)));
        }
        program.q = q;
        program.b = b;
        program
    }

    fn x_at(&self) -> XAt {
        let kd = self.k * self.db;
        let xi = 2 * kd;
        let a = xi + self.members.len();
        XAt {
            g: kd,
            xi,
            a,
            len: a + self.with_aux.len() * self.d,
        }
    }

    fn s_at(&self) -> SAt {
        let kd = self.k * self.db;
        let m = 2 * kd;
        let p4 = m + self.members.len();
        let p5 = p4 + self.with_aux.len() * self.d;
        let c = p5 + self.with_aux.len() * self.d;
        SAt {
            m,
            p4,
            p5,
            c,
            len: c + self.pair.len(),
        }
    }

    /// The non-zero coefficients of A.
    fn nonzeros(&self) -> usize {
        let kd = self.k * self.db;
        let rows: usize = (0..self.pair.len())
            .map(|i| {
                let xs = self.x.row(i).iter().filter(|&&v| v != 0.0).count();
                let rs = self.r.row(i).iter().filter(|&&v| v != 0.0).count();
                2 * xs + if self.aux[self.pair[i]] == usize::MAX { 0 } else { rs } + 1
            })
            .sum();
        4 * kd + self.members.len() + 6 * self.with_aux.len() * self.d + rows
    }

    /// C x: the margin rows' left sides, the rows split between two threads.
    fn margin(&self, x: &[f64]) -> Vec<f64> {
        let rows = self.pair.len();
        let mut out = vec![0.0; rows];
        if rows < PARALLEL_ROWS {
            self.margin_rows(x, 0, &mut out);
        } else {
            let half = rows / 2;
            let (first, second) = out.split_at_mut(half);
            std::thread::scope(|scope| {
                scope.spawn(|| self.margin_rows(x, half, second));
                self.margin_rows(x, 0, first);
            });
        }
        out
    }

    /// Rows `from..from + out.len()` of C x, into `out`.
    fn margin_rows(&self, x: &[f64], from: usize, out: &mut [f64]) {
        let (xa, d, db) = (self.x_at(), self.d, self.db);
        let (centres, radii) = (self.centres(), self.radii());
        for (v, i) in out.iter_mut().zip(from..) {
            let at = self.pair[i];
            let (t, c) = self.pairs[at];
            let (gt, gc) = (&x[t * db..(t + 1) * db], &x[c * db..(c + 1) * db]);
            *v = -dot_diff(&centres[i * db..(i + 1) * db], gt, gc) - x[xa.xi + self.sample[i]];
            let ap = self.aux[at];
            if ap != usize::MAX {
                *v += dot4(&radii[i * d..(i + 1) * d], &x[xa.a + ap * d..xa.a + (ap + 1) * d]);
            }
        }
    }

    /// The rows' box centres (and 1 for the bias), row-major `[R, db]`.
    fn centres(&self) -> &[f64] {
        self.x
            .as_slice()
            .unwrap_or_else(|| unreachable!("built in standard layout"))
    }

    /// The rows' box radii, row-major `[R, d]`.
    fn radii(&self) -> &[f64] {
        self.r
            .as_slice()
            .unwrap_or_else(|| unreachable!("built in standard layout"))
    }

    /// out += Cᵀ λ. The weights of each class take their rows' terms in the rows'
    /// order, as one pass over the rows would, but class by class, the classes (and
    /// the pairs' a) split between two threads.
    fn margin_t(&self, lambda: &[f64], out: &mut [f64]) {
        let (xa, d, db) = (self.x_at(), self.d, self.db);
        let (weights, rest) = out.split_at_mut(self.k * db);
        let (middle, aux) = rest.split_at_mut(xa.a - self.k * db);
        let xi = xa.xi - self.k * db;
        for (&l, &s) in lambda.iter().zip(&self.sample) {
            middle[xi + s] -= l;
        }
        let (centres, radii) = (self.centres(), self.radii());
        let class = |c: usize, o: &mut [f64]| {
            for &(at, sign) in &self.touches[c] {
                let (lo, hi) = self.range[at];
                for (i, &l) in lambda.iter().enumerate().take(hi).skip(lo) {
                    if l == 0.0 {
                        continue;
                    }
                    let sl = sign * l;
                    for (o, v) in o.iter_mut().zip(&centres[i * db..(i + 1) * db]) {
                        *o += sl * v;
                    }
                }
            }
        };
        let pairs_a = |aux: &mut [f64]| {
            for (a, &at) in aux.chunks_exact_mut(d).zip(&self.with_aux) {
                let (lo, hi) = self.range[at];
                for (i, &l) in lambda.iter().enumerate().take(hi).skip(lo) {
                    if l == 0.0 {
                        continue;
                    }
                    for (o, r) in a.iter_mut().zip(&radii[i * d..(i + 1) * d]) {
                        *o += l * r;
                    }
                }
            }
        };
        if lambda.len() < PARALLEL_ROWS {
            for (c, o) in weights.chunks_exact_mut(db).enumerate() {
                class(c, o);
            }
            pairs_a(aux);
            return;
        }
        let (mine, theirs): (Vec<_>, Vec<_>) = weights
            .chunks_exact_mut(db)
            .enumerate()
            .partition(|(c, _)| self.first_thread[*c]);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                for (c, o) in theirs {
                    class(c, o);
                }
            });
            for (c, o) in mine {
                class(c, o);
            }
            pairs_a(aux);
        });
    }

    /// A x.
    fn a_mul(&self, x: &[f64]) -> Vec<f64> {
        let mut out = self.a_mul_bounds(x);
        let c = self.s_at().c;
        out[c..].copy_from_slice(&self.margin(x));
        out
    }

    /// A x but for the margin rows, left 0.
    fn a_mul_bounds(&self, x: &[f64]) -> Vec<f64> {
        let (xa, sa, d, db) = (self.x_at(), self.s_at(), self.d, self.db);
        let kd = self.k * db;
        let mut out = vec![0.0; sa.len];
        for v in 0..kd {
            out[v] = x[v] - x[xa.g + v];
            out[kd + v] = -x[v] - x[xa.g + v];
        }
        for s in 0..self.members.len() {
            out[sa.m + s] = -x[xa.xi + s];
        }
        for (ap, &at) in self.with_aux.iter().enumerate() {
            let (t, c) = self.pairs[at];
            for j in 0..d {
                let diff = x[t * db + j] - x[c * db + j];
                let a = x[xa.a + ap * d + j];
                out[sa.p4 + ap * d + j] = diff - a;
                out[sa.p5 + ap * d + j] = -diff - a;
            }
        }
        out
    }

    /// Aᵀ z.
    fn at_mul(&self, z: &[f64]) -> Vec<f64> {
        let mut out = self.at_mul_bounds(z);
        self.margin_t(&z[self.s_at().c..], &mut out);
        out
    }

    /// Aᵀ z but for the margin rows' terms (z's entries up to them are read).
    fn at_mul_bounds(&self, z: &[f64]) -> Vec<f64> {
        let (xa, sa, d, db) = (self.x_at(), self.s_at(), self.d, self.db);
        let kd = self.k * db;
        let mut out = vec![0.0; xa.len];
        for v in 0..kd {
            out[v] = z[v] - z[kd + v];
            out[xa.g + v] = -z[v] - z[kd + v];
        }
        for s in 0..self.members.len() {
            out[xa.xi + s] = -z[sa.m + s];
        }
        for (ap, &at) in self.with_aux.iter().enumerate() {
            let (t, c) = self.pairs[at];
            for j in 0..d {
                let (z4, z5) = (z[sa.p4 + ap * d + j], z[sa.p5 + ap * d + j]);
                out[t * db + j] += z4 - z5;
                out[c * db + j] -= z4 - z5;
                out[xa.a + ap * d + j] = -z4 - z5;
            }
        }
        out
    }
}

/// H⁻¹ and the factor of S for one Newton step.
struct Step<'a> {
    program: &'a Program,
    /// Per feature, M_j⁻¹ (K × K, row-major).
    minv: Vec<f64>,
    /// (w₂ − w₁)/(w₁ + w₂) and w₁ + w₂ per weight.
    sig_g: Vec<f64>,
    hg: Vec<f64>,
    /// (w₅ − w₄)/(w₄ + w₅) and w₄ + w₅ per pair with a and feature.
    sig_a: Vec<f64>,
    da: Vec<f64>,
    /// ξ's weight.
    w3: Vec<f64>,
    /// The Cholesky factor of S.
    factor: Mat<f64>,
}

/// Inverts the symmetric positive definite `m` (K × K, row-major) in place, by its
/// Cholesky factor; false when it is not positive definite.
fn invert_spd(m: &mut [f64], k: usize) -> bool {
    let mut l = vec![0.0; k * k];
    for i in 0..k {
        for j in 0..=i {
            let sum: f64 = m[i * k + j] - (0..j).map(|h| l[i * k + h] * l[j * k + h]).sum::<f64>();
            if i == j {
                if sum <= 0.0 || !sum.is_finite() {
                    return false;
                }
                l[i * k + i] = sum.sqrt();
            } else {
                l[i * k + j] = sum / l[j * k + j];
            }
        }
    }
    // L⁻¹, lower triangular, then M⁻¹ = L⁻ᵀ L⁻¹.
    let mut li = vec![0.0; k * k];
    for c in 0..k {
        li[c * k + c] = 1.0 / l[c * k + c];
        for i in c + 1..k {
            let sum: f64 = (c..i).map(|h| l[i * k + h] * li[h * k + c]).sum();
            li[i * k + c] = -sum / l[i * k + i];
        }
    }
    for i in 0..k {
        for j in 0..=i {
            let v: f64 = (i..k).map(|h| li[h * k + i] * li[h * k + j]).sum();
            m[i * k + j] = v;
            m[j * k + i] = v;
        }
    }
    true
}

impl<'a> Step<'a> {
    /// H and S at the scaling w = z/s; `None` when S cannot be factored.
    fn new(program: &'a Program, w: &[f64], par: Par) -> Option<Self> {
        let (sa, k, d, db) = (program.s_at(), program.k, program.d, program.db);
        let kd = k * db;
        let sig_g: Vec<f64> = (0..kd).map(|v| (w[kd + v] - w[v]) / (w[v] + w[kd + v])).collect();
        let hg: Vec<f64> = (0..kd).map(|v| w[v] + w[kd + v]).collect();
        let na = program.with_aux.len() * d;
        let da: Vec<f64> = (0..na).map(|i| w[sa.p4 + i] + w[sa.p5 + i]).collect();
        let sig_a: Vec<f64> = (0..na).map(|i| (w[sa.p5 + i] - w[sa.p4 + i]) / da[i]).collect();
        let w3: Vec<f64> = w[sa.m..sa.p4].iter().map(|v| v.max(FLOOR)).collect();
        let mut minv = vec![0.0; db * k * k];
        for j in 0..db {
            let m = &mut minv[j * k * k..(j + 1) * k * k];
            for c in 0..k {
                let v = c * db + j;
                m[c * k + c] = (4.0 * w[v] * w[kd + v] / hg[v]).max(FLOOR);
            }
            if j < d {
                for (ap, &at) in program.with_aux.iter().enumerate() {
                    let (t, c) = program.pairs[at];
                    let i = ap * d + j;
                    let phi = 4.0 * w[sa.p4 + i] * w[sa.p5 + i] / da[i];
                    m[t * k + t] += phi;
                    m[c * k + c] += phi;
                    m[t * k + c] -= phi;
                    m[c * k + t] -= phi;
                }
            }
            if !invert_spd(m, k) {
                return None;
            }
        }
        let rr = program.pair.len();
        // α per row and feature, row-major.
        let mut alpha: Vec<f64> = program.x.iter().copied().collect();
        for (i, row) in alpha.chunks_exact_mut(db).enumerate() {
            let ap = program.aux[program.pair[i]];
            if ap != usize::MAX {
                let sig = &sig_a[ap * d..(ap + 1) * d];
                for ((a, s), r) in row.iter_mut().zip(sig).zip(program.r.row(i)) {
                    *a += s * r;
                }
            }
        }
        // M⁻¹ by entry, then feature: each entry's values over the features contiguous.
        let mut by_entry = vec![0.0; k * k * db];
        for (j, inv) in minv.chunks_exact(k * k).enumerate() {
            for (e, &v) in inv.iter().enumerate() {
                by_entry[e * db + j] = v;
            }
        }
        let entry = |u: usize, v: usize| &by_entry[(u * k + v) * db..(u * k + v + 1) * db];
        let inv_root: Vec<f64> = da.iter().map(|v| 1.0 / v.sqrt()).collect();
        let radii = program.radii();
        // The rows of pair p against those of every pair up to p, into `band` (the
        // rows of S from `first` on): block (p, q) is A_p diag(Δ_pᵀ M_j⁻¹ Δ_q) A_qᵀ,
        // the scaling applied to pair p's rows, plus a's own term within the pair.
        let pair_rows = |p: usize, band: &mut faer::MatMut<'_, f64>, first: usize| {
            let (lo, hi) = program.range[p];
            let (t, c) = program.pairs[p];
            let n = hi - lo;
            let mut m = vec![0.0; db];
            let mut scaled = vec![0.0; n * db];
            let mut out = Vec::new();
            for q in 0..=p {
                let (qlo, qhi) = program.range[q];
                let (t2, c2) = program.pairs[q];
                let (tt, tc, ct, cc) = (entry(t, t2), entry(t, c2), entry(c, t2), entry(c, c2));
                for (j, mj) in m.iter_mut().enumerate() {
                    *mj = tt[j] - tc[j] - ct[j] + cc[j];
                }
                for (out, row) in scaled
                    .chunks_exact_mut(db)
                    .zip(alpha[lo * db..hi * db].chunks_exact(db))
                {
                    for ((o, a), mj) in out.iter_mut().zip(row).zip(&m) {
                        *o = a * mj;
                    }
                }
                out.resize(n * (qhi - qlo), 0.0);
                gram::products(&scaled, &alpha[qlo * db..qhi * db], db, &mut out);
                if q == p && program.aux[p] != usize::MAX {
                    // a's own term: Σ_j r r′ / (w₄ + w₅).
                    let ap = program.aux[p];
                    let root = &inv_root[ap * d..(ap + 1) * d];
                    let rs: Vec<f64> = radii[lo * d..hi * d]
                        .chunks_exact(d)
                        .flat_map(|r| r.iter().zip(root).map(|(r, s)| r * s))
                        .collect();
                    let mut own = vec![0.0; n * n];
                    gram::products(&rs, &rs, d, &mut own);
                    out.iter_mut().zip(&own).for_each(|(o, v)| *o += v);
                }
                for (i, row) in out.chunks_exact(qhi - qlo).enumerate() {
                    for (h, &v) in row.iter().enumerate() {
                        band[(lo + i - first, qlo + h)] = v;
                    }
                }
            }
        };
        let mut s = Mat::<f64>::zeros(rr, rr);
        // The pairs split between two threads at the pair boundary nearest half the
        // work (pair p's is its rows times the rows up to its end).
        let work: Vec<usize> = program.range.iter().map(|&(lo, hi)| (hi - lo) * hi).collect();
        let total: usize = work.iter().sum();
        let mut split = 0;
        let mut sum = 0;
        while split < work.len() && 2 * (sum + work[split]) <= total {
            sum += work[split];
            split += 1;
        }
        let at = program.range.get(split).map_or(rr, |r| r.0);
        if rr < PARALLEL_ROWS {
            let mut all = s.as_mut();
            for p in 0..program.range.len() {
                pair_rows(p, &mut all, 0);
            }
        } else {
            let (mut top, mut bottom) = s.as_mut().split_at_row_mut(at);
            std::thread::scope(|scope| {
                scope.spawn(|| {
                    for p in split..program.range.len() {
                        pair_rows(p, &mut bottom, at);
                    }
                });
                for p in 0..split {
                    pair_rows(p, &mut top, 0);
                }
            });
        }
        for (local, rows) in program.members.iter().enumerate() {
            for &i in rows {
                for &h in rows.iter().filter(|&&h| h <= i) {
                    s[(i, h)] += 1.0 / w3[local];
                }
            }
        }
        for i in 0..rr {
            s[(i, i)] += 1.0 / w[sa.c + i];
        }
        // No regularization: S is positive definite (W⁻¹ is), and its pivots span many
        // orders of magnitude (the slack rows' W⁻¹ grows as the binding rows' falls), so a
        // threshold relative to the largest would replace the binding rows' own pivots.
        let mut mem = MemBuffer::new(cholesky_in_place_scratch::<f64>(rr, par, Default::default()));
        cholesky_in_place(
            s.as_mut(),
            LltRegularization::default(),
            par,
            MemStack::new(&mut mem),
            Default::default(),
        )
        .ok()?;
        Some(Self {
            program,
            minv,
            sig_g,
            hg,
            sig_a,
            da,
            w3,
            factor: s,
        })
    }

    /// H⁻¹ r.
    fn h_inv(&self, rhs: &[f64]) -> Vec<f64> {
        let program = self.program;
        let (xa, k, d, db) = (program.x_at(), program.k, program.d, program.db);
        let mut out = vec![0.0; xa.len];
        let mut v = vec![0.0; k];
        for j in 0..db {
            for (c, vc) in v.iter_mut().enumerate() {
                let i = c * db + j;
                *vc = rhs[i] - self.sig_g[i] * rhs[xa.g + i];
            }
            if j < d {
                for (ap, &at) in program.with_aux.iter().enumerate() {
                    let (t, c) = program.pairs[at];
                    let e = self.sig_a[ap * d + j] * rhs[xa.a + ap * d + j];
                    v[t] -= e;
                    v[c] += e;
                }
            }
            let m = &self.minv[j * k * k..(j + 1) * k * k];
            for c in 0..k {
                let gamma: f64 = m[c * k..(c + 1) * k].iter().zip(&v).map(|(a, b)| a * b).sum();
                let i = c * db + j;
                out[i] = gamma;
                out[xa.g + i] = rhs[xa.g + i] / self.hg[i] - self.sig_g[i] * gamma;
            }
            if j < d {
                for (ap, &at) in program.with_aux.iter().enumerate() {
                    let (t, c) = program.pairs[at];
                    let i = ap * d + j;
                    let diff = out[t * db + j] - out[c * db + j];
                    out[xa.a + i] = rhs[xa.a + i] / self.da[i] - self.sig_a[i] * diff;
                }
            }
        }
        for (s, w) in self.w3.iter().enumerate() {
            out[xa.xi + s] = rhs[xa.xi + s] / w;
        }
        out
    }

    /// Solves the augmented system [H Cᵀ; C −W⁻¹] (Δx, Δy) = (r₁, r₂), where Δy is the
    /// margin rows' dual step, and refines the solution with its residual until that
    /// stops falling: the elimination subtracts terms of the order of H⁻¹, which grows
    /// without bound for the weights that change (one side of |γ| ≤ g is slack).
    fn solve(&self, r1: &[f64], r2: &[f64], w: &[f64], par: Par) -> (Vec<f64>, Vec<f64>) {
        let program = self.program;
        let c0 = program.s_at().c;
        // The residual of (Δx, Δy), given Cᵀ Δy.
        let residual = |dx: &[f64], dy: &[f64], ct_dy: &[f64]| -> (Vec<f64>, Vec<f64>, f64) {
            let mut av = program.a_mul(dx);
            let cdx = av.split_off(c0);
            let wav: Vec<f64> = av.iter().zip(w).map(|(a, w)| a * w).collect();
            let n1 = program.at_mul_bounds(&wav);
            let e1: Vec<f64> = (r1.iter().zip(&n1).zip(ct_dy)).map(|((r, n), c)| r - (n + c)).collect();
            let e2: Vec<f64> = (0..dy.len()).map(|i| r2[i] - cdx[i] + dy[i] / w[c0 + i]).collect();
            let size = inf_norm(&e1).max(inf_norm(&e2));
            (e1, e2, size)
        };
        let scale = inf_norm(r1).max(inf_norm(r2)).max(f64::MIN_POSITIVE);
        let sum = |a: &[f64], b: &[f64]| -> Vec<f64> { a.iter().zip(b).map(|(a, b)| a + b).collect() };
        let (mut dx, mut dy, mut ct_dy) = self.eliminate(r1, r2, par);
        let (mut e1, mut e2, mut size) = residual(&dx, &dy, &ct_dy);
        for _ in 0..REFINE {
            if size <= REFINED * scale {
                break;
            }
            let (cx, cy, ct_cy) = self.eliminate(&e1, &e2, par);
            let (nx, ny, ct_ny) = (sum(&dx, &cx), sum(&dy, &cy), sum(&ct_dy, &ct_cy));
            let (f1, f2, next) = residual(&nx, &ny, &ct_ny);
            if next >= size {
                break;
            }
            (dx, dy, ct_dy, e1, e2, size) = (nx, ny, ct_ny, f1, f2, next);
        }
        (dx, dy)
    }

    /// The augmented system solved by elimination: Δy = S⁻¹ (C H⁻¹ r₁ − r₂),
    /// Δx = H⁻¹ (r₁ − Cᵀ Δy); Cᵀ Δy as well, which the residual reuses.
    fn eliminate(&self, r1: &[f64], r2: &[f64], par: Par) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let u = self.h_inv(r1);
        let cu = self.program.margin(&u);
        let mut dy = Mat::<f64>::from_fn(cu.len(), 1, |i, _| cu[i] - r2[i]);
        solve_lower_triangular_in_place(self.factor.as_ref(), dy.as_mut(), par);
        solve_upper_triangular_in_place(self.factor.transpose(), dy.as_mut(), par);
        let dy: Vec<f64> = (0..cu.len()).map(|i| dy[(i, 0)]).collect();
        let mut ct_dy = vec![0.0; r1.len()];
        self.program.margin_t(&dy, &mut ct_dy);
        let rest: Vec<f64> = r1.iter().zip(&ct_dy).map(|(r, c)| r - c).collect();
        (self.h_inv(&rest), dy, ct_dy)
    }
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

/// Σ v_j (a_j − b_j) in four interleaved partial sums, as [`dot4`] sums its products
/// (a single running sum would wait on each addition).
fn dot_diff(v: &[f64], a: &[f64], b: &[f64]) -> f64 {
    let (vc, ac, bc) = (v.chunks_exact(LANES), a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f64 = (vc.remainder().iter().zip(ac.remainder()).zip(bc.remainder()))
        .map(|((v, a), b)| v * (a - b))
        .sum();
    let mut acc = [0.0f64; LANES];
    for ((v, a), b) in vc.zip(ac).zip(bc) {
        for l in 0..LANES {
            acc[l] += v[l] * (a[l] - b[l]);
        }
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::repair::certified::program::solve_restricted;
    use crate::repair::certified::tests::random_problem;
    use crate::repair::certified::{worst_margins, CertifiedSettings};

    #[test]
    fn the_restricted_optimum_is_clarabels() {
        for seed in 0..6 {
            let (n, points, d, k) = (10, 10, 12, 4);
            let [w, bias, centre, radius] = random_problem(seed, (n, points, d, k));
            let labels: Vec<usize> = (0..n + points).map(|s| (s * 7 + seed as usize) % k).collect();
            // Balls want 0.3, points 0.1; balls' slack is dearer.
            let margin: Vec<f64> = (0..n + points).map(|s| if s < n { 0.3 } else { 0.1 }).collect();
            let price: Vec<f64> = (0..n + points).map(|s| if s < n { 4.0 } else { 1.0 }).collect();
            let p = CertifiedProblem {
                weights: w.view(),
                bias: bias.row(0),
                centre: centre.view(),
                radius: radius.view(),
                labels: &labels,
                margin: &margin,
                price: &price,
                repair_bias: seed % 2 == 1,
            };
            // Every row of the balls, and every other row of the points (some pairs
            // then have no ball).
            let labels_of = &labels;
            let rows: Vec<(usize, usize)> = (0..n + points)
                .flat_map(|s| (0..k).filter(move |&c| c != labels_of[s]).map(move |c| (s, c)))
                .filter(|&(s, c)| s < n || (s + c) % 2 == 0)
                .collect();
            let ours = Solver::new(&p, &rows).run(1.0, 200);
            let (theirs, _) = solve_restricted(&p, &rows, &vec![true; k * d], &CertifiedSettings::default());
            assert_eq!(ours.status, Status::Solved, "seed {seed}");
            // Stopped at a thousand times the tolerances and resumed, the method goes on
            // from where it stopped: the same iterates as without the stop.
            let mut resumed = Solver::new(&p, &rows);
            let loose = resumed.run(1e3, 200);
            let tight = resumed.run(1.0, 200);
            assert_eq!(
                (loose.status, tight.status),
                (Status::Solved, Status::Solved),
                "seed {seed}"
            );
            assert!(loose.iterations < tight.iterations, "seed {seed}");
            assert_eq!(
                (tight.iterations, tight.objective.to_bits()),
                (ours.iterations, ours.objective.to_bits()),
                "seed {seed}"
            );
            assert!(theirs.status.usable(), "seed {seed}");
            assert!(
                (ours.objective - theirs.objective).abs() <= 1e-6 * (1.0 + theirs.objective),
                "seed {seed}: {} against clarabel's {}",
                ours.objective,
                theirs.objective
            );
            // The objective is what the weights cost: Σ|γ| and the rows' shortfalls.
            let worst = worst_margins(&p, ours.weights.view(), ours.bias.view());
            let mut short = vec![0.0f64; n + points];
            for &(s, c) in &rows {
                short[s] = short[s].max(margin[s] - worst[[s, c]]);
            }
            let change: f64 = (&ours.weights - &w)
                .iter()
                .chain((&ours.bias - &bias.row(0)).iter())
                .map(|v| v.abs())
                .sum();
            let cost = change + short.iter().zip(&price).map(|(x, c)| x * c).sum::<f64>();
            assert!(
                (cost - ours.objective).abs() <= 1e-6 * (1.0 + cost),
                "seed {seed}: the weights cost {cost}, the program says {}",
                ours.objective
            );
            // One dual per row, in the rows' order, none negative, and some bind.
            assert_eq!(ours.y.len(), rows.len());
            assert!(ours.y.iter().all(|&y| y >= 0.0) && ours.y.iter().any(|&y| y > 1e-6));
            let (variables, constraints, nonzeros) = ours.size;
            assert!(variables > 2 * k * d && constraints > rows.len() && nonzeros > constraints);
        }
    }

    #[test]
    fn s_is_the_margin_rows_schur_complement() {
        // Enough rows that S is built on two threads.
        let (n, points, d, k) = (60, 40, 9, 5);
        let [w, bias, centre, radius] = random_problem(11, (n, points, d, k));
        let labels: Vec<usize> = (0..n + points).map(|s| (s * 3) % k).collect();
        let margin = vec![0.2; n + points];
        let price = vec![2.0; n + points];
        let p = CertifiedProblem {
            weights: w.view(),
            bias: bias.row(0),
            centre: centre.view(),
            radius: radius.view(),
            labels: &labels,
            margin: &margin,
            price: &price,
            repair_bias: true,
        };
        let labels_of = &labels;
        let rows: Vec<(usize, usize)> = (0..n + points)
            .flat_map(|s| (0..k).filter(move |&c| c != labels_of[s]).map(move |c| (s, c)))
            .collect();
        let rr = rows.len();
        assert!(rr >= PARALLEL_ROWS);
        let solver = Solver::new(&p, &rows);
        let program = &solver.program;
        let scaling: Vec<f64> = solver.z.iter().zip(&solver.s).map(|(z, s)| z / s).collect();
        let step = Step::new(program, &scaling, Par::Seq).unwrap();
        // S = C H⁻¹ Cᵀ + W⁻¹ over the margin rows, column by column from its definition.
        let c0 = program.s_at().c;
        let mut dense = vec![0.0; rr * rr];
        for h in 0..rr {
            let mut e = vec![0.0; rr];
            e[h] = 1.0;
            let mut ct = vec![0.0; program.x_at().len];
            program.margin_t(&e, &mut ct);
            for (i, v) in program.margin(&step.h_inv(&ct)).into_iter().enumerate() {
                dense[i * rr + h] = v + if i == h { 1.0 / scaling[c0 + i] } else { 0.0 };
            }
        }
        let factor = &step.factor;
        for i in 0..rr {
            for h in 0..=i {
                let got: f64 = (0..=h).map(|t| factor[(i, t)] * factor[(h, t)]).sum();
                let want = dense[i * rr + h];
                let scale = (dense[i * rr + i] * dense[h * rr + h]).sqrt();
                assert!((got - want).abs() <= 1e-9 * scale, "({i}, {h}): {got} against {want}");
            }
        }
    }

    #[test]
    fn a_small_spd_matrix_is_inverted() {
        let mut m = vec![4.0, 1.0, 0.5, 1.0, 3.0, 0.2, 0.5, 0.2, 2.0];
        let a = m.clone();
        assert!(invert_spd(&mut m, 3));
        for i in 0..3 {
            for j in 0..3 {
                let v: f64 = (0..3).map(|h| a[i * 3 + h] * m[h * 3 + j]).sum();
                assert!((v - f64::from(u8::from(i == j))).abs() < 1e-12, "({i}, {j}): {v}");
            }
        }
        let mut not = vec![1.0, 2.0, 2.0, 1.0];
        assert!(!invert_spd(&mut not, 2));
    }
}
