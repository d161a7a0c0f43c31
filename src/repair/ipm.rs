//! A primal–dual interior-point method for the margin program's dual over an active
//! set of pairs, built on the program's structure.
//!
//! The dual (see [`super::margin`]) over r active pairs a = (s, k) is
//!
//! ```text
//! maximise hᵀy  subject to  −1 ≤ Mᵀy ≤ 1,  S y ≤ c,  y ≥ 0
//! ```
//!
//! with Mᵀ's column a holding x_s in the block of class t_s and −x_s in the block of
//! class k, and S summing a sample's pairs. Written as `min −hᵀy s.t. G y + u = g,
//! u ≥ 0`, each Newton step of Mehrotra's predictor–corrector method solves one system
//! with the r × r normal matrix
//!
//! ```text
//! N = Gᵀ diag(z/u) G = M diag(δ) Mᵀ + Sᵀ diag(δ_S) S + diag(δ_y)
//! ```
//!
//! whose first term only couples pairs that share a class: for every class c it is
//! B_c B_cᵀ, with B_c the rows ±x_s·√δ_c of the pairs touching c, a dense product that
//! runs at GEMM speed. N is factored by a dense Cholesky decomposition (faer), once per
//! iteration. A general sparse solver (clarabel) meets the same system as a sparse
//! LDLᵀ whose dense columns of x_s fill it in, and is one to two orders of magnitude
//! slower on it. The multipliers of the constraints |Mᵀy| ≤ 1 are the weight changes
//! γ = z⁺ − z⁻ and those of S y ≤ c the slacks ξ.

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt::factor::{cholesky_in_place, cholesky_in_place_scratch, LltRegularization};
use faer::linalg::matmul::triangular::{self, BlockStructure};
use faer::linalg::triangular_solve::{solve_lower_triangular_in_place, solve_upper_triangular_in_place};
use faer::{Accum, Mat, Par};
use ndarray::Array2;

use super::margin::MarginProblem;
use super::Status;

/// Converged when the relative residuals and gap are below this.
const TOL: f64 = 1e-8;
/// Iterations without a new best iterate before the method gives up: near the optimum
/// the normal equations lose precision and the residuals stop falling.
const PATIENCE: u32 = 5;
/// Good enough, when the iteration limit comes first.
const TOL_ALMOST: f64 = 1e-6;
/// Fraction of the step to the boundary taken.
const STEP: f64 = 0.99;

/// The restricted dual's solution.
pub(super) struct Solution {
    /// Weight changes `[K, d]`.
    pub gamma: Array2<f64>,
    /// Dual values, one per pair.
    pub y: Vec<f64>,
    /// How it ended.
    pub status: Status,
    /// Newton iterations.
    pub iterations: u32,
}

/// The operators of the restricted dual.
struct Dual {
    /// The rows x_s of the samples with a pair, `[n_a, d]`.
    x: Array2<f64>,
    /// Per pair: its sample's row in `x`, its label and its other class.
    pairs: Vec<(usize, usize, usize)>,
    /// Per pair, its row of S (a sample with a finite price), if any.
    row_of: Vec<Option<usize>>,
    /// Per row of S, its sample (in the problem's numbering).
    samples: Vec<usize>,
    /// Per row of S, its pairs.
    members: Vec<Vec<usize>>,
    /// Per class, the pairs that touch it, their sign (+1 for the label's class) and
    /// their sample's index among the class's distinct samples.
    touching: Vec<Vec<(usize, f64, usize)>>,
    /// Per class, its distinct samples (rows of `x`).
    distinct: Vec<Vec<usize>>,
    k: usize,
    d: usize,
}

impl Dual {
    fn new(p: &MarginProblem, pairs: &[(usize, usize)]) -> Self {
        let (n, d) = p.x.dim();
        let k = p.scores.ncols();
        let mut local = vec![None; n];
        let mut rows = Vec::new();
        let mut samples = Vec::new();
        let mut row_of = Vec::with_capacity(pairs.len());
        let mut compact = Vec::with_capacity(pairs.len());
        for &(s, other) in pairs {
            let i = *local[s].get_or_insert_with(|| {
                rows.push(s);
                rows.len() - 1
            });
            compact.push((i, p.labels[s], other));
        }
        let mut s_row = vec![None; rows.len()];
        for &(i, _, _) in &compact {
            let s = rows[i];
            let row = if p.price[s].is_finite() {
                Some(*s_row[i].get_or_insert_with(|| {
                    samples.push(s);
                    samples.len() - 1
                }))
            } else {
                None
            };
            row_of.push(row);
        }
        let mut members = vec![Vec::new(); samples.len()];
        for (a, row) in row_of.iter().enumerate() {
            if let Some(row) = row {
                members[*row].push(a);
            }
        }
        let mut touching = vec![Vec::new(); k];
        let mut distinct = vec![Vec::new(); k];
        let mut seen = vec![usize::MAX; rows.len() * k];
        for (a, &(i, t, other)) in compact.iter().enumerate() {
            for (c, sign) in [(t, 1.0), (other, -1.0)] {
                let slot = &mut seen[i * k + c];
                if *slot == usize::MAX {
                    *slot = distinct[c].len();
                    distinct[c].push(i);
                }
                touching[c].push((a, sign, *slot));
            }
        }
        let x = p.x.select(ndarray::Axis(0), &rows);
        Self {
            x,
            pairs: compact,
            row_of,
            samples,
            members,
            touching,
            distinct,
            k,
            d,
        }
    }

    /// Mᵀy, `[K·d]` in class-major order.
    fn mt(&self, y: &[f64]) -> Vec<f64> {
        let mut coef = Array2::<f64>::zeros((self.x.nrows(), self.k));
        for (&(i, t, other), &v) in self.pairs.iter().zip(y) {
            coef[[i, t]] += v;
            coef[[i, other]] -= v;
        }
        coef.t().dot(&self.x).into_raw_vec_and_offset().0
    }

    /// M u for u `[K·d]` in class-major order.
    fn m(&self, u: &[f64]) -> Vec<f64> {
        let ut = Array2::from_shape_fn((self.d, self.k), |(j, c)| u[c * self.d + j]);
        let xu = self.x.dot(&ut); // [n_a, K]
        self.pairs
            .iter()
            .map(|&(i, t, other)| xu[[i, t]] - xu[[i, other]])
            .collect()
    }

    /// S y.
    fn s(&self, y: &[f64]) -> Vec<f64> {
        let mut out = vec![0.0; self.samples.len()];
        for (row, &v) in self.row_of.iter().zip(y) {
            if let Some(row) = row {
                out[*row] += v;
            }
        }
        out
    }

    /// N = M diag(dw) Mᵀ + Sᵀ diag(ds) S + diag(dy), lower triangle. Per class, the
    /// Gram matrix of its distinct samples (lower triangle, one GEMM), scattered to
    /// the pairs with their signs.
    fn normal(&self, dw: &[f64], ds: &[f64], dy: &[f64], par: Par) -> Mat<f64> {
        let r = self.pairs.len();
        let mut n = Mat::<f64>::zeros(r, r);
        for c in 0..self.k {
            let (touching, distinct) = (&self.touching[c], &self.distinct[c]);
            if touching.is_empty() {
                continue;
            }
            let root: Vec<f64> = dw[c * self.d..(c + 1) * self.d].iter().map(|v| v.sqrt()).collect();
            let b = Mat::<f64>::from_fn(distinct.len(), self.d, |i, j| self.x[[distinct[i], j]] * root[j]);
            let mut g = Mat::<f64>::zeros(distinct.len(), distinct.len());
            triangular::matmul(
                g.as_mut(),
                BlockStructure::TriangularLower,
                Accum::Replace,
                b.as_ref(),
                BlockStructure::Rectangular,
                b.transpose(),
                BlockStructure::Rectangular,
                1.0,
                par,
            );
            for &(aj, sj, uj) in touching {
                for &(ai, si, ui) in touching.iter().filter(|t| t.0 >= aj) {
                    let v = if ui >= uj { g[(ui, uj)] } else { g[(uj, ui)] };
                    n[(ai, aj)] += si * sj * v;
                }
            }
        }
        for (row, members) in self.members.iter().enumerate() {
            for &aj in members {
                for &ai in members.iter().filter(|&&ai| ai >= aj) {
                    n[(ai, aj)] += ds[row];
                }
            }
        }
        for (a, &v) in dy.iter().enumerate() {
            n[(a, a)] += v;
        }
        n
    }
}

/// The constraint residual blocks (w⁺, w⁻, S, y), in the order of G's rows.
#[derive(Clone)]
struct Blocks {
    wp: Vec<f64>,
    wm: Vec<f64>,
    s: Vec<f64>,
    y: Vec<f64>,
}

impl Blocks {
    fn iter(&self) -> impl Iterator<Item = &f64> {
        self.wp.iter().chain(&self.wm).chain(&self.s).chain(&self.y)
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = &mut f64> {
        self.wp
            .iter_mut()
            .chain(self.wm.iter_mut())
            .chain(self.s.iter_mut())
            .chain(self.y.iter_mut())
    }

    fn zip_map(&self, other: &Blocks, f: impl Fn(f64, f64) -> f64) -> Blocks {
        let z = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(&a, &b)| f(a, b)).collect();
        Blocks {
            wp: z(&self.wp, &other.wp),
            wm: z(&self.wm, &other.wm),
            s: z(&self.s, &other.s),
            y: z(&self.y, &other.y),
        }
    }

    fn len(&self) -> usize {
        self.wp.len() + self.wm.len() + self.s.len() + self.y.len()
    }
}

impl Dual {
    /// G y.
    fn g(&self, y: &[f64]) -> Blocks {
        let mt = self.mt(y);
        Blocks {
            wm: mt.iter().map(|v| -v).collect(),
            wp: mt,
            s: self.s(y),
            y: y.iter().map(|v| -v).collect(),
        }
    }

    /// Gᵀ z.
    fn gt(&self, z: &Blocks) -> Vec<f64> {
        let diff: Vec<f64> = z.wp.iter().zip(&z.wm).map(|(a, b)| a - b).collect();
        let mut out = self.m(&diff);
        for (a, o) in out.iter_mut().enumerate() {
            if let Some(row) = self.row_of[a] {
                *o += z.s[row];
            }
            *o -= z.y[a];
        }
        out
    }
}

/// The iterate with the smallest residuals and gap so far.
struct Best {
    worst: f64,
    y: Vec<f64>,
    z: Blocks,
    at: u32,
}

/// Largest α ≤ 1 with v + α·dv ≥ 0 (also the certified program's method's).
pub(super) fn max_step<'a>(v: impl IntoIterator<Item = &'a f64>, dv: impl IntoIterator<Item = &'a f64>) -> f64 {
    v.into_iter()
        .zip(dv)
        .filter(|(_, &d)| d < 0.0)
        .fold(1.0f64, |alpha, (&v, &d)| alpha.min(-v / d))
}

/// The largest magnitude among `v`.
pub(super) fn inf_norm<'a>(v: impl IntoIterator<Item = &'a f64>) -> f64 {
    v.into_iter().fold(0.0f64, |m, x| m.max(x.abs()))
}

/// The parallelism of every solve, whatever the thread count asked for.
const THREADS: usize = 2;

/// Solves the restricted dual over `pairs` (none of them of a sample priced at 0).
pub(super) fn solve(p: &MarginProblem, pairs: &[(usize, usize)], max_iter: u32) -> Solution {
    let k = p.scores.ncols();
    let d = p.x.ncols();
    let r = pairs.len();
    // faer's parallel kernels split their sums by the thread count, which changes the
    // rounding; a fixed split keeps repairs byte-identical whatever `--threads` says.
    let par = Par::rayon(THREADS);
    let dual = Dual::new(p, pairs);
    let h: Vec<f64> = pairs
        .iter()
        .map(|&(s, other)| p.margin[s] - (p.scores[[s, p.labels[s]]] - p.scores[[s, other]]))
        .collect();
    let g = Blocks {
        wp: vec![1.0; k * d],
        wm: vec![1.0; k * d],
        s: dual.samples.iter().map(|&s| p.price[s]).collect(),
        y: vec![0.0; r],
    };
    let m = g.len() as f64;
    // Start at y = 0 with every slack and multiplier at least 1: infeasible only in
    // y ≥ 0, which the first steps repair.
    let mut y = vec![0.0; r];
    let mut u = g.zip_map(&g, |v, _| v.max(1.0));
    let mut z = g.zip_map(&g, |_, _| 1.0);
    let scale_g = 1.0 + inf_norm(g.iter());
    let scale_h = 1.0 + inf_norm(h.iter());
    let mut best: Option<Best> = None;
    let mut iterations = 0;
    loop {
        // Residuals: r_p = G y + u − g, r_d = Gᵀ z − h.
        let gy = dual.g(&y);
        let rp = gy.zip_map(&u, |a, b| a + b).zip_map(&g, |a, b| a - b);
        let rd: Vec<f64> = dual.gt(&z).iter().zip(&h).map(|(a, b)| a - b).collect();
        let gap_abs: f64 = u.iter().zip(z.iter()).map(|(a, b)| a * b).sum();
        let mu = gap_abs / m;
        let primal_obj: f64 = -h.iter().zip(&y).map(|(a, b)| a * b).sum::<f64>();
        let dual_obj: f64 = -g.iter().zip(z.iter()).map(|(a, b)| a * b).sum::<f64>();
        let pres = inf_norm(rp.iter()) / scale_g;
        let dres = inf_norm(rd.iter()) / scale_h;
        let gap = (primal_obj - dual_obj).abs() / (1.0 + primal_obj.abs());
        let worst = [pres, dres, gap]
            .into_iter()
            .fold(0.0f64, |m, v| if v.is_nan() { v } else { m.max(v) });
        if !worst.is_finite() {
            break;
        }
        if best.as_ref().is_none_or(|b: &Best| worst < b.worst) {
            best = Some(Best {
                worst,
                y: y.clone(),
                z: z.clone(),
                at: iterations,
            });
        }
        if worst <= TOL || best.as_ref().is_some_and(|b| iterations >= b.at + PATIENCE) || iterations >= max_iter {
            break;
        }
        iterations += 1;

        // Normal matrix with D = z/u.
        let dd = z.zip_map(&u, |a, b| a / b);
        let dw: Vec<f64> = dd.wp.iter().zip(&dd.wm).map(|(a, b)| a + b).collect();
        let mut nm = dual.normal(&dw, &dd.s, &dd.y, par);
        let max_diag = (0..r).fold(0.0f64, |acc, i| acc.max(nm[(i, i)]));
        let reg = LltRegularization {
            dynamic_regularization_delta: 1e-10 * max_diag.max(1.0),
            dynamic_regularization_epsilon: 1e-14 * max_diag.max(1.0),
        };
        let mut mem = MemBuffer::new(cholesky_in_place_scratch::<f64>(r, par, Default::default()));
        if cholesky_in_place(nm.as_mut(), reg, par, MemStack::new(&mut mem), Default::default()).is_err() {
            break;
        }
        let factor = nm;
        // One Newton direction for the complementarity target rc (u∘z = rc wanted).
        let direction = |rc: &Blocks| -> (Vec<f64>, Blocks, Blocks) {
            // rhs = −r_d − Gᵀ(D r_p − rc/u)
            let rc_u = rc.zip_map(&u, |a, b| a / b);
            let inner = dd.zip_map(&rp, |a, b| a * b).zip_map(&rc_u, |a, b| a - b);
            let gt = dual.gt(&inner);
            let mut rhs = Mat::<f64>::from_fn(r, 1, |i, _| -rd[i] - gt[i]);
            solve_lower_triangular_in_place(factor.as_ref(), rhs.as_mut(), par);
            solve_upper_triangular_in_place(factor.transpose(), rhs.as_mut(), par);
            let dy: Vec<f64> = (0..r).map(|i| rhs[(i, 0)]).collect();
            // Δz = D(G Δy + r_p) − rc/u;  Δu = −(rc + u∘Δz)/z.
            let gdy = dual.g(&dy);
            let dz = dd
                .zip_map(&gdy.zip_map(&rp, |a, b| a + b), |a, b| a * b)
                .zip_map(&rc_u, |a, b| a - b);
            let du = rc
                .zip_map(&u.zip_map(&dz, |a, b| a * b), |a, b| a + b)
                .zip_map(&z, |a, b| -a / b);
            (dy, du, dz)
        };
        // Predictor: the affine direction.
        let uz = u.zip_map(&z, |a, b| a * b);
        let (_, du_aff, dz_aff) = direction(&uz);
        let ap = max_step(u.iter(), du_aff.iter());
        let ad = max_step(z.iter(), dz_aff.iter());
        let mu_aff = u
            .zip_map(&du_aff, |a, b| a + ap * b)
            .iter()
            .zip(z.zip_map(&dz_aff, |a, b| a + ad * b).iter())
            .map(|(a, b)| a * b)
            .sum::<f64>()
            / m;
        let sigma = (mu_aff / mu).clamp(0.0, 1.0).powi(3);
        // Corrector: centring and the second-order term.
        let cross = du_aff.zip_map(&dz_aff, |a, b| a * b);
        let rc = uz.zip_map(&cross, |a, b| a + b - sigma * mu);
        let (dy, du, dz) = direction(&rc);
        let ap = (STEP * max_step(u.iter(), du.iter())).min(1.0);
        let ad = (STEP * max_step(z.iter(), dz.iter())).min(1.0);
        for (v, dv) in y.iter_mut().zip(&dy) {
            *v += ap * dv;
        }
        for (v, dv) in u.iter_mut().zip(du.iter()) {
            *v += ap * dv;
        }
        for (v, dv) in z.iter_mut().zip(dz.iter()) {
            *v += ad * dv;
        }
    }
    // The best iterate seen: the last one, unless precision ran out first.
    let Some(best) = best else {
        return Solution {
            gamma: Array2::zeros((k, d)),
            y: vec![0.0; r],
            status: Status::Stalled,
            iterations,
        };
    };
    let status = if best.worst <= TOL {
        Status::Solved
    } else if best.worst <= TOL_ALMOST {
        Status::AlmostSolved
    } else {
        Status::Stalled
    };
    let (y, z) = (best.y, best.z);
    let gamma = Array2::from_shape_fn((k, d), |(c, j)| z.wp[c * d + j] - z.wm[c * d + j]);
    Solution {
        gamma,
        y,
        status,
        iterations,
    }
}
