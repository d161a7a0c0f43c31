//! The primal trust-region Newton method (TRON) for the squared-hinge linear SVM, as
//! LIBLINEAR's `-s 2` (Lin, Weng & Keerthi, *Trust region Newton method for large-scale
//! logistic regression*, JMLR 2008; the L2-loss SVM form is in Hsieh et al. 2008 and
//! the LIBLINEAR paper, Fan et al. 2008).
//!
//! With the bias folded into an augmented feature, x̃_i = [x_i, 1] and w̃ = [w, b],
//! exactly as the dual solver does it, one binary problem is
//!
//! f(w̃) = ½‖w̃‖² + C Σ_i max(0, 1 − y_i w̃ᵀx̃_i)²,
//!
//! so the bias is regularised like any weight (LIBLINEAR with bias term 1, scikit-learn's
//! `LinearSVC(intercept_scaling=1)`). f is convex and once differentiable; with the
//! active set I = {i : y_i w̃ᵀx̃_i < 1},
//!
//! ∇f(w̃) = w̃ + 2C Σ_{i∈I} (w̃ᵀx̃_i − y_i) x̃_i,   H v = v + 2C Σ_{i∈I} (x̃_iᵀv) x̃_i,
//!
//! H being the generalised Hessian (Mangasarian 2002). H is never formed: each product
//! costs two passes over the active rows (a dot product and an axpy per row, the row
//! still in cache for the second).
//!
//! Each outer iteration approximately minimises the quadratic model
//! q(s) = ∇fᵀs + ½ sᵀHs inside the trust region ‖s‖_M ≤ Δ by Steihaug's conjugate
//! gradients: CG runs on M^{-½} H M^{-½} and stops when its residual falls to
//! 0.1 ‖M^{-½}∇f‖, on the boundary, or along a direction of non-positive curvature.
//! M is the identity, as in the TRON paper, or optionally the diagonal of H (Hsia,
//! Chiang & Lin 2018; see `FitOptions::precondition` for why it is not the default). The step is accepted
//! when the actual reduction of f is at least η₀ times the predicted one, and Δ is
//! updated by the rules of Lin & Moré (1999) that the TRON paper states (η₀ = 10⁻⁴,
//! η₁ = 0.25, η₂ = 0.75; σ₁ = 0.25, σ₂ = 0.5, σ₃ = 4).
//!
//! The stopping rule is LIBLINEAR's: ‖∇f(w̃)‖ ≤ ε · max(min(#pos, #neg), 1) / n ·
//! ‖∇f(0)‖, ε being the solver's `tol` (scikit-learn's `LinearSVC(dual=False, tol=ε)`).
//! The solver reports ‖∇f‖ / ‖∇f(0)‖ and the threshold it was compared with, and also
//! the dual objective at α_i = 2C max(0, 1 − y_i w̃ᵀx̃_i) (the KKT map from the primal to
//! the dual), so that primal − dual bounds the suboptimality as it does for the dual
//! solver. Features are stored as f32; margins, gradients, directions and every sum are
//! f64.

use super::newton::dot4 as dot;
use super::rows::Rows;
use super::{BinarySolution, Solver};

/// Acceptance threshold of a step: actual over predicted reduction.
const ETA0: f64 = 1e-4;
/// Below this ratio Δ shrinks.
const ETA1: f64 = 0.25;
/// Above this ratio Δ may grow.
const ETA2: f64 = 0.75;
/// Smallest shrink factor of Δ.
const SIGMA1: f64 = 0.25;
/// Shrink factor of Δ after a poor step.
const SIGMA2: f64 = 0.5;
/// Largest growth factor of Δ.
const SIGMA3: f64 = 4.0;
/// CG stops once its residual is this fraction of the (preconditioned) gradient: an
/// inexact Newton step with a constant forcing term, as in the TRON paper.
const CG_FORCING: f64 = 0.1;

/// Settings of one primal solve.
pub(crate) struct PrimalSettings {
    /// Regularisation constant C > 0.
    pub(crate) c: f64,
    /// ε of the stopping rule ‖∇f‖ ≤ ε · max(min(#pos, #neg), 1) / n · ‖∇f(0)‖.
    pub(crate) eps: f64,
    /// Most Newton (outer) iterations.
    pub(crate) max_iter: usize,
    /// Precondition the CG iterations by diag(H) (false: plain CG, for comparisons).
    pub(crate) precondition: bool,
}

/// One binary problem: the rows, their ±1 labels and C.
pub(crate) struct Problem<'a, R> {
    pub(crate) rows: &'a R,
    pub(crate) y: &'a [f64],
    pub(crate) c: f64,
}

impl<R: Rows> Problem<'_, R> {
    /// f(w̃), writing the margins z_i = w̃ᵀx̃_i into `z`.
    pub(crate) fn value(&self, w: &[f64], z: &mut [f64]) -> f64 {
        let d = self.rows.d();
        let mut loss = 0.0;
        for (i, (zi, &yi)) in z.iter_mut().zip(self.y).enumerate() {
            *zi = self.rows.dot(i, w) + w[d];
            let xi = 1.0 - yi * *zi;
            if xi > 0.0 {
                loss += xi * xi;
            }
        }
        0.5 * dot(w, w) + self.c * loss
    }

    /// ∇f(w̃) into `g` and the active set I into `active`, from the margins `z` of
    /// [`Problem::value`] at the same w̃; with `diag`, also the diagonal of H.
    pub(crate) fn gradient(
        &self,
        w: &[f64],
        z: &[f64],
        active: &mut Vec<usize>,
        g: &mut [f64],
        diag: Option<&mut [f64]>,
    ) {
        let d = self.rows.d();
        let two_c = 2.0 * self.c;
        g.copy_from_slice(w);
        active.clear();
        active.extend((0..z.len()).filter(|&i| self.y[i] * z[i] < 1.0));
        match diag {
            Some(h) => {
                h.fill(1.0);
                for &i in active.iter() {
                    let coef = two_c * (z[i] - self.y[i]);
                    self.rows.axpy_sq(i, coef, two_c, g, h);
                    g[d] += coef;
                }
                h[d] += two_c * active.len() as f64;
            }
            None => {
                for &i in active.iter() {
                    let coef = two_c * (z[i] - self.y[i]);
                    self.rows.axpy(i, coef, g);
                    g[d] += coef;
                }
            }
        }
    }

    /// H v over the active set, into `out`.
    pub(crate) fn hessian_times(&self, active: &[usize], v: &[f64], out: &mut [f64]) {
        let d = self.rows.d();
        let two_c = 2.0 * self.c;
        out.copy_from_slice(v);
        for &i in active {
            let t = two_c * (self.rows.dot(i, v) + v[d]);
            self.rows.axpy(i, t, out);
            out[d] += t;
        }
    }
}

/// `y += a x`.
fn axpy(a: f64, x: &[f64], y: &mut [f64]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
}

/// The τ ≥ 0 with ‖s + τp‖ = Δ, for ‖s‖ ≤ Δ, in the form that avoids cancellation.
fn to_boundary(s: &[f64], p: &[f64], delta: f64) -> f64 {
    let sp = dot(s, p);
    let pp = dot(p, p);
    let ss = dot(s, s);
    if pp <= 0.0 {
        return 0.0;
    }
    let gap = (delta * delta - ss).max(0.0);
    let rad = (sp * sp + pp * gap).sqrt();
    if sp >= 0.0 {
        gap / (sp + rad)
    } else {
        (rad - sp) / pp
    }
}

/// A step of the trust-region subproblem.
struct Step {
    /// The step s in the original coordinates.
    s: Vec<f64>,
    /// ∇fᵀs.
    gs: f64,
    /// sᵀr, r = −∇f − Hs the final residual: q(s) = ½(∇fᵀs − sᵀr).
    sr: f64,
    /// ‖s‖_M.
    norm: f64,
    /// CG iterations (Hessian products).
    iterations: usize,
}

/// Steihaug's truncated conjugate gradients on min q(s) s.t. ‖s‖_M ≤ Δ, run in the
/// coordinates ŝ = M^{½}s where the region is a ball: `scale` holds M^{-½}.
fn trust_cg<R: Rows>(problem: &Problem<'_, R>, active: &[usize], g: &[f64], scale: &[f64], delta: f64) -> Step {
    let m = g.len();
    let g_hat: Vec<f64> = g.iter().zip(scale).map(|(a, b)| a * b).collect();
    let mut s_hat = vec![0.0f64; m];
    let mut r: Vec<f64> = g_hat.iter().map(|v| -v).collect();
    let mut p = r.clone();
    let mut v = vec![0.0f64; m];
    let mut hv = vec![0.0f64; m];
    let mut rr = dot(&r, &r);
    let stop = CG_FORCING * rr.sqrt();
    let mut iterations = 0;
    // In exact arithmetic CG ends within m iterations; the cap guards rounding.
    while iterations < m && rr.sqrt() > stop {
        iterations += 1;
        for ((vi, pi), si) in v.iter_mut().zip(&p).zip(scale) {
            *vi = pi * si;
        }
        problem.hessian_times(active, &v, &mut hv);
        for (hi, si) in hv.iter_mut().zip(scale) {
            *hi *= si;
        }
        let curvature = dot(&p, &hv);
        // H ⪰ I, so curvature is positive unless rounding says otherwise; either way a
        // non-positive value means: go to the boundary along p.
        let alpha = if curvature > 0.0 { rr / curvature } else { f64::INFINITY };
        let mut next = s_hat.clone();
        let boundary = if alpha.is_finite() {
            axpy(alpha, &p, &mut next);
            dot(&next, &next) > delta * delta
        } else {
            true
        };
        if boundary {
            let tau = to_boundary(&s_hat, &p, delta);
            axpy(tau, &p, &mut s_hat);
            axpy(-tau, &hv, &mut r);
            break;
        }
        s_hat = next;
        axpy(-alpha, &hv, &mut r);
        let rr_next = dot(&r, &r);
        let beta = rr_next / rr;
        for (pi, ri) in p.iter_mut().zip(&r) {
            *pi = ri + beta * *pi;
        }
        rr = rr_next;
    }
    Step {
        s: s_hat.iter().zip(scale).map(|(a, b)| a * b).collect(),
        gs: dot(&g_hat, &s_hat),
        sr: dot(&s_hat, &r),
        norm: dot(&s_hat, &s_hat).sqrt(),
        iterations,
    }
}

/// Solves the binary problem whose labels are `positive(i) ? +1 : −1`, starting from
/// `start` (augmented `[w, b]`, length d + 1) or from 0.
pub(crate) fn solve<R: Rows>(
    rows: &R,
    positive: &dyn Fn(usize) -> bool,
    s: &PrimalSettings,
    start: Option<&[f64]>,
) -> BinarySolution {
    let n = rows.n();
    let d = rows.d();
    let y: Vec<f64> = (0..n).map(|i| if positive(i) { 1.0 } else { -1.0 }).collect();
    let problem = Problem { rows, y: &y, c: s.c };
    let n_pos = y.iter().filter(|&&v| v > 0.0).count();
    let threshold = s.eps * (n_pos.min(n - n_pos).max(1) as f64) / n as f64;

    // ‖∇f(0)‖: at w̃ = 0 every sample is active with margin 0.
    let mut g0 = vec![0.0f64; d + 1];
    for (i, &yi) in y.iter().enumerate() {
        rows.axpy(i, -2.0 * s.c * yi, &mut g0);
        g0[d] -= 2.0 * s.c * yi;
    }
    let g0_norm = dot(&g0, &g0).sqrt();

    let mut w = match start {
        Some(w0) if w0.len() == d + 1 => w0.to_vec(),
        _ => vec![0.0f64; d + 1],
    };
    let mut z = vec![0.0f64; n];
    let mut z_new = vec![0.0f64; n];
    let mut g = vec![0.0f64; d + 1];
    let mut h = vec![0.0f64; d + 1];
    let mut active = Vec::with_capacity(n);
    let mut f = problem.value(&w, &mut z);
    problem.gradient(&w, &z, &mut active, &mut g, s.precondition.then_some(&mut h[..]));
    let relative = |g: &[f64]| {
        let norm = dot(g, g).sqrt();
        if g0_norm > 0.0 {
            norm / g0_norm
        } else {
            norm
        }
    };
    let mut scale = vec![1.0f64; d + 1];
    let update_scale = |scale: &mut [f64], h: &[f64]| {
        for (si, &hi) in scale.iter_mut().zip(h) {
            *si = 1.0 / hi.sqrt();
        }
    };
    if s.precondition {
        update_scale(&mut scale, &h);
    }
    let mut delta = g.iter().zip(&scale).map(|(a, b)| (a * b).powi(2)).sum::<f64>().sqrt();
    let mut converged = relative(&g) <= threshold;
    let mut iterations = 0;
    let mut cg_iterations = 0;
    let mut w_new = vec![0.0f64; d + 1];
    while !converged && iterations < s.max_iter {
        iterations += 1;
        let step = trust_cg(&problem, &active, &g, &scale, delta);
        cg_iterations += step.iterations;
        for ((wn, wi), si) in w_new.iter_mut().zip(&w).zip(&step.s) {
            *wn = wi + si;
        }
        let f_new = problem.value(&w_new, &mut z_new);
        let actual = f - f_new;
        let predicted = -0.5 * (step.gs - step.sr);
        if iterations == 1 {
            delta = delta.min(step.norm);
        }
        // The minimiser of the quadratic through f, ∇fᵀs and f_new along s, as a
        // multiple of the step: the size the region is rescaled to.
        let curve = f_new - f - step.gs;
        let alpha = if curve <= 0.0 {
            SIGMA3
        } else {
            SIGMA1.max(-0.5 * step.gs / curve)
        };
        delta = if actual < ETA0 * predicted {
            (alpha * step.norm).min(SIGMA2 * delta)
        } else if actual < ETA1 * predicted {
            (SIGMA1 * delta).max((alpha * step.norm).min(SIGMA2 * delta))
        } else if actual < ETA2 * predicted {
            (SIGMA1 * delta).max((alpha * step.norm).min(SIGMA3 * delta))
        } else {
            delta.max((alpha * step.norm).min(SIGMA3 * delta))
        };
        if actual > ETA0 * predicted {
            std::mem::swap(&mut w, &mut w_new);
            std::mem::swap(&mut z, &mut z_new);
            f = f_new;
            problem.gradient(&w, &z, &mut active, &mut g, s.precondition.then_some(&mut h[..]));
            if s.precondition {
                update_scale(&mut scale, &h);
            }
            converged = relative(&g) <= threshold;
        }
        // Rounding ends progress: the model predicts nothing, or neither it nor f
        // moves measurably.
        let tiny = 1e-12 * f.abs();
        if predicted <= 0.0 || (actual.abs() <= tiny && predicted.abs() <= tiny) {
            break;
        }
    }

    // The dual point α_i = 2C ξ_i(w̃): then Σ y_i α_i x̃_i = w̃ − ∇f(w̃).
    let (mut alpha_sum, mut alpha_sq, mut support_vectors) = (0.0, 0.0, 0);
    for (&zi, &yi) in z.iter().zip(&y) {
        let xi = 1.0 - yi * zi;
        if xi > 0.0 {
            let a = 2.0 * s.c * xi;
            alpha_sum += a;
            alpha_sq += a * a;
            support_vectors += 1;
        }
    }
    let u: Vec<f64> = w.iter().zip(&g).map(|(a, b)| a - b).collect();
    let dual = alpha_sum - 0.5 * dot(&u, &u) - 0.25 / s.c * alpha_sq;
    BinarySolution {
        violation: relative(&g),
        w,
        solver: Solver::Primal,
        iterations,
        converged,
        threshold,
        primal: f,
        dual,
        support_vectors,
        newton_steps: 0,
        cg_iterations,
        switched_after: None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::svm::rows::DenseRows;

    /// Uncentred, overlapping two-class data with an exact copy of a row of each
    /// class, so that some margins sit exactly where the derivative jumps.
    fn data(n: usize, d: usize, seed: u64) -> (Vec<f32>, Vec<f64>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let x: Vec<f32> = (0..n * d).map(|_| rng.random_range(0.0..2.0f32)).collect();
        let y: Vec<f64> = (0..n)
            .map(|i| if (i % 3 == 0) ^ rng.random_bool(0.1) { 1.0 } else { -1.0 })
            .collect();
        (x, y)
    }

    fn random_vec(m: usize, scale: f64, seed: u64) -> Vec<f64> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..m).map(|_| scale * rng.random_range(-1.0..1.0)).collect()
    }

    /// f's gradient at `w`, the active samples and diag(H) there.
    fn gradient_at<R: Rows>(problem: &Problem<R>, w: &[f64]) -> (Vec<f64>, Vec<usize>, Vec<f64>) {
        let mut z = vec![0.0; problem.y.len()];
        problem.value(w, &mut z);
        let mut active = Vec::new();
        let mut g = vec![0.0; w.len()];
        let mut h = vec![0.0; w.len()];
        problem.gradient(w, &z, &mut active, &mut g, Some(&mut h));
        (g, active, h)
    }

    /// The gradient agrees with central differences of f: f is C¹ and piecewise
    /// quadratic, so the central difference is exact up to rounding away from the
    /// kinks, which a random point avoids.
    #[test]
    fn gradient_matches_finite_differences_of_the_objective() {
        let (n, d) = (60, 7);
        let (x, y) = data(n, d, 1);
        let rows = DenseRows { data: &x, n, d };
        let problem = Problem {
            rows: &rows,
            y: &y,
            c: 0.7,
        };
        let w = random_vec(d + 1, 0.4, 2);
        let (g, mut active, _) = gradient_at(&problem, &w);
        let mut z = vec![0.0; n];
        assert!(!active.is_empty() && active.len() < n, "{} active", active.len());
        let step = 1e-6;
        for j in 0..=d {
            let mut plus = w.clone();
            let mut minus = w.clone();
            plus[j] += step;
            minus[j] -= step;
            let fd = (problem.value(&plus, &mut z) - problem.value(&minus, &mut z)) / (2.0 * step);
            assert!(
                (fd - g[j]).abs() <= 1e-6 * (1.0 + g[j].abs()),
                "∂f/∂w_{j}: {fd} vs {}",
                g[j]
            );
        }
        // The gradient without the diagonal is the same vector.
        let mut g2 = vec![0.0; d + 1];
        problem.value(&w, &mut z);
        problem.gradient(&w, &z, &mut active, &mut g2, None);
        assert_eq!(g, g2);
    }

    /// H v agrees with the difference quotient of the gradient along v (exact while
    /// the step keeps every margin on its side of 1), and diag(H) with H e_j.
    #[test]
    fn hessian_products_match_finite_differences_of_the_gradient() {
        let (n, d) = (60, 7);
        let (x, y) = data(n, d, 3);
        let rows = DenseRows { data: &x, n, d };
        let problem = Problem {
            rows: &rows,
            y: &y,
            c: 1.3,
        };
        let w = random_vec(d + 1, 0.3, 4);
        let v = random_vec(d + 1, 1.0, 5);
        let (g, active, diag) = gradient_at(&problem, &w);
        let step = 1e-7;
        let shifted: Vec<f64> = w.iter().zip(&v).map(|(a, b)| a + step * b).collect();
        let (g_step, active_step, _) = gradient_at(&problem, &shifted);
        assert_eq!(active, active_step, "the step must not cross a kink");
        let mut hv = vec![0.0; d + 1];
        problem.hessian_times(&active, &v, &mut hv);
        for j in 0..=d {
            let fd = (g_step[j] - g[j]) / step;
            assert!(
                (fd - hv[j]).abs() <= 1e-5 * (1.0 + hv[j].abs()),
                "(Hv)_{j}: {fd} vs {}",
                hv[j]
            );
        }
        for j in 0..=d {
            let mut e = vec![0.0; d + 1];
            e[j] = 1.0;
            problem.hessian_times(&active, &e, &mut hv);
            assert!(
                (hv[j] - diag[j]).abs() <= 1e-9 * diag[j],
                "H_{j}{j}: {} vs {}",
                hv[j],
                diag[j]
            );
        }
    }

    /// The trust-region step stays in the region and decreases the model; without a
    /// binding region it is the Newton step to CG's tolerance.
    #[test]
    fn cg_respects_the_region_and_decreases_the_model() {
        let (n, d) = (80, 6);
        let (x, y) = data(n, d, 6);
        let rows = DenseRows { data: &x, n, d };
        let problem = Problem {
            rows: &rows,
            y: &y,
            c: 2.0,
        };
        let w = random_vec(d + 1, 0.2, 7);
        let (g, active, h) = gradient_at(&problem, &w);
        let scale: Vec<f64> = h.iter().map(|v| 1.0 / v.sqrt()).collect();
        for delta in [1e-3, 1e-1, 1e3] {
            let step = trust_cg(&problem, &active, &g, &scale, delta);
            assert!(step.norm <= delta * (1.0 + 1e-9), "Δ = {delta}: ‖s‖_M = {}", step.norm);
            let mut hs = vec![0.0; d + 1];
            problem.hessian_times(&active, &step.s, &mut hs);
            let model = dot(&g, &step.s) + 0.5 * dot(&step.s, &hs);
            assert!(model < 0.0, "Δ = {delta}: q(s) = {model}");
            // The recorded sᵀr gives the same model value.
            let recorded = 0.5 * (step.gs - step.sr);
            assert!((model - recorded).abs() <= 1e-8 * model.abs(), "{model} vs {recorded}");
            if delta > 1e2 {
                let r: Vec<f64> = g.iter().zip(&hs).map(|(a, b)| -a - b).collect();
                let r_hat = r.iter().zip(&scale).map(|(a, b)| (a * b).powi(2)).sum::<f64>().sqrt();
                let g_hat = g.iter().zip(&scale).map(|(a, b)| (a * b).powi(2)).sum::<f64>().sqrt();
                assert!(r_hat <= CG_FORCING * g_hat * (1.0 + 1e-6), "{r_hat} vs {g_hat}");
            }
        }
    }

    #[test]
    fn to_boundary_lands_on_the_sphere() {
        let s = [0.3, -0.2, 0.1];
        for p in [[1.0, 0.5, -0.25], [-1.0, 0.0, 0.3]] {
            let tau = to_boundary(&s, &p, 2.0);
            let end: Vec<f64> = s.iter().zip(&p).map(|(a, b)| a + tau * b).collect();
            assert!(tau > 0.0 && (dot(&end, &end).sqrt() - 2.0).abs() < 1e-12);
        }
    }
}
