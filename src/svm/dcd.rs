//! Binary L2-regularised linear SVM solved by dual coordinate descent with
//! shrinking (Hsieh, Chang, Lin, Keerthi and Sundararajan 2008, "A Dual
//! Coordinate Descent Method for Large-scale Linear SVM", Algorithm 3).
//!
//! With labels y_i ∈ {−1, +1} and augmented samples x_i ← [x_i, 1] (so the
//! last weight is the bias and is regularised), the primal problem is
//! min_w ½‖w‖² + C Σ_i ξ(w; x_i, y_i) with ξ = max(0, 1 − y_i wᵀx_i) (hinge)
//! or ξ = max(0, 1 − y_i wᵀx_i)² (squared hinge). Its dual is
//! min_α f(α) = ½ αᵀQ̄α − eᵀα subject to 0 ≤ α_i ≤ U, where Q̄ = Q + D,
//! Q_ij = y_i y_j x_iᵀx_j, and U = C, D_ii = 0 for the hinge loss or U = ∞,
//! D_ii = 1/(2C) for the squared hinge. The primal solution is
//! w = Σ_i y_i α_i x_i, which the solver maintains incrementally so that the
//! partial derivative G = ∇_i f(α) = y_i wᵀx_i − 1 + D_ii α_i costs one
//! sparse or dense dot product. Each coordinate step minimises f exactly
//! along α_i: α_i ← min(max(α_i − G/Q̄_ii, 0), U), then w += Δα_i y_i x_i.
//! The projected gradient PG_i is G clipped to the feasible direction
//! (min(G, 0) at α_i = 0, max(G, 0) at α_i = U, G otherwise); the solver
//! stops once max_i PG_i − min_i PG_i < tol over all samples. Both extremes
//! are taken together with 0: at the optimum every PG_i is 0 (there is no
//! equality constraint, the bias being part of w), and this keeps a set of
//! equal non-zero PG_i from passing the test.
//!
//! Shrinking (the paper's Algorithm 3): a variable at a bound whose gradient
//! points out of the box by more than the extreme projected gradients
//! M̄ = max PG, m̄ = min PG of the previous pass is dropped from the active
//! set; when the active set alone satisfies the stopping rule, the full set
//! is restored (M̄ = ∞, m̄ = −∞) and checked by one more pass before stopping.
//!
//! Acceleration (an addition to the paper): coordinate descent converges
//! linearly at a rate set by the conditioning of Q̄, which is poor for
//! non-negative, uncentred features such as CNN activations; there it can
//! need thousands of passes over the few hundred support vectors. Every few
//! passes, once the set F of free variables (inside the box, or at a bound
//! with the gradient pointing inside) has stopped changing, the solver takes
//! one Newton step on the subspace F: f restricted to F is the quadratic
//! ½ δᵀQ̄_FFδ + g_Fᵀδ, minimised by Q̄_FF δ = −g_F (dense Gram matrix of the
//! augmented rows, Cholesky), with variables that would leave the box pinned
//! at their bound and the rest re-solved. The step is projected onto the box
//! and halved until the exact change of f is negative, so f never increases,
//! α stays feasible and the stopping rule is unchanged; the steps are paid
//! out of the work done by the passes, so they cannot more than roughly
//! double the cost when they do not help.

use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::newton::{Accelerator, DualState, NEWTON_CHECK_EVERY};
use super::rows::Rows;
use super::{BinarySolution, Loss, Solver};

/// Settings of one binary solve, shared by all one-vs-rest subproblems.
pub(crate) struct Settings<'a> {
    /// Loss function (fixes U and D_ii).
    pub(crate) loss: Loss,
    /// Regularisation constant C > 0.
    pub(crate) c: f64,
    /// Stopping tolerance on max PG − min PG.
    pub(crate) tol: f64,
    /// Maximum number of outer passes.
    pub(crate) max_iter: usize,
    /// Q̄_ii = ‖x_i‖² + 1 + D_ii, computed once for all classes.
    pub(crate) q_diag: &'a [f64],
    /// Whether to interleave subspace Newton steps (false: plain
    /// Algorithm 3, kept for tests and comparisons).
    pub(crate) newton: bool,
}

impl Settings<'_> {
    /// Upper bound U on each α_i and diagonal shift D_ii of the dual.
    pub(crate) fn bound_and_shift(loss: Loss, c: f64) -> (f64, f64) {
        match loss {
            Loss::Hinge => (c, 0.0),
            Loss::SquaredHinge => (f64::INFINITY, 0.5 / c),
        }
    }
}

/// Projected gradient of coordinate `i` given its gradient and value.
fn projected(g: f64, alpha: f64, upper: f64) -> f64 {
    if alpha <= 0.0 {
        g.min(0.0)
    } else if alpha >= upper {
        g.max(0.0)
    } else {
        g
    }
}

/// Solves the binary problem whose labels are `positive(i) ? +1 : −1`.
///
/// `rng` drives the per-pass random order of the coordinates (random order
/// makes coordinate descent converge much faster than a cyclic sweep).
pub(crate) fn solve<R: Rows>(
    rows: &R,
    positive: &dyn Fn(usize) -> bool,
    s: &Settings<'_>,
    rng: &mut ChaCha8Rng,
) -> BinarySolution {
    let n = rows.n();
    let d = rows.d();
    let (upper, shift) = Settings::bound_and_shift(s.loss, s.c);
    // Labels as ±1 once, instead of re-deriving them in the inner loop.
    let y: Vec<f64> = (0..n).map(|i| if positive(i) { 1.0 } else { -1.0 }).collect();
    let mut alpha = vec![0.0f64; n];
    let mut w = vec![0.0f64; d + 1];
    // Gradient of each variable at its last visit, for choosing the Newton
    // subspace without an extra pass.
    let mut grad = vec![0.0f64; n];
    let mut active: Vec<usize> = (0..n).collect();
    let mut active_len = n;
    // Bounds from the previous pass used to shrink; ±∞ disables shrinking.
    let mut m_bar_hi = f64::INFINITY;
    let mut m_bar_lo = f64::NEG_INFINITY;
    let mut iterations = 0;
    let mut converged = false;
    let mut accel = Accelerator::default();

    while iterations < s.max_iter {
        iterations += 1;
        active[..active_len].shuffle(rng);
        // Starting the extremes at 0 (instead of ∓∞) makes the test
        // max PG − min PG < tol also bound every |PG_i|: with only equal,
        // non-zero projected gradients (e.g. two samples after one pass) the
        // bare spread would be 0 although α is not optimal.
        let mut pg_hi = 0.0f64;
        let mut pg_lo = 0.0f64;
        let mut work = 0.0f64;
        let mut k = 0;
        while k < active_len {
            let i = active[k];
            let yi = y[i];
            let a = alpha[i];
            let g = yi * (rows.dot(i, &w) + w[d]) - 1.0 + shift * a;
            work += rows.cost(i);
            grad[i] = g;
            let pg = if a <= 0.0 {
                if g > m_bar_hi {
                    // At the lower bound with a gradient pushing further
                    // out than any free variable moved last pass: very
                    // likely to stay at 0, so stop visiting it.
                    active_len -= 1;
                    active.swap(k, active_len);
                    continue;
                }
                g.min(0.0)
            } else if a >= upper {
                if g < m_bar_lo {
                    active_len -= 1;
                    active.swap(k, active_len);
                    continue;
                }
                g.max(0.0)
            } else {
                g
            };
            pg_hi = pg_hi.max(pg);
            pg_lo = pg_lo.min(pg);
            if pg != 0.0 {
                let new = (a - g / s.q_diag[i]).clamp(0.0, upper);
                let delta = (new - a) * yi;
                alpha[i] = new;
                rows.axpy(i, delta, &mut w);
                w[d] += delta;
                work += rows.cost(i);
            }
            k += 1;
        }
        // An empty active set leaves the spread at 0, which counts as
        // satisfied, so the full set is restored rather than looping on
        // nothing.
        if pg_hi - pg_lo < s.tol {
            if active_len == n {
                converged = true;
                break;
            }
            // The shrunk problem is solved; restore every variable and do a
            // full unshrunk pass, since shrinking may have been wrong.
            active_len = n;
            m_bar_hi = f64::INFINITY;
            m_bar_lo = f64::NEG_INFINITY;
            continue;
        }
        m_bar_hi = if pg_hi > 0.0 { pg_hi } else { f64::INFINITY };
        m_bar_lo = if pg_lo < 0.0 { pg_lo } else { f64::NEG_INFINITY };
        if s.newton {
            accel.credit += work;
            if iterations % NEWTON_CHECK_EVERY == 0 && active_len < n / 2 {
                let mut state = DualState {
                    rows,
                    y: &y,
                    alpha: &mut alpha,
                    w: &mut w,
                    shift,
                    upper,
                };
                accel.consider(&mut state, &active[..active_len], &grad);
            }
        }
    }

    // Final statistics over all samples at the returned α (one extra pass):
    // the violation, primal and dual values certify the solution quality.
    let mut pg_hi = 0.0f64;
    let mut pg_lo = 0.0f64;
    let mut loss_sum = 0.0;
    let mut alpha_sum = 0.0;
    let mut alpha_sq = 0.0;
    let mut support_vectors = 0;
    for i in 0..n {
        let margin = y[i] * (rows.dot(i, &w) + w[d]);
        let a = alpha[i];
        let pg = projected(margin - 1.0 + shift * a, a, upper);
        pg_hi = pg_hi.max(pg);
        pg_lo = pg_lo.min(pg);
        let xi = (1.0 - margin).max(0.0);
        loss_sum += match s.loss {
            Loss::Hinge => xi,
            Loss::SquaredHinge => xi * xi,
        };
        alpha_sum += a;
        alpha_sq += a * a;
        if a > 0.0 {
            support_vectors += 1;
        }
    }
    let w_sq: f64 = w.iter().map(|v| v * v).sum();
    let primal = 0.5 * w_sq + s.c * loss_sum;
    let dual = alpha_sum - 0.5 * w_sq - 0.5 * shift * alpha_sq;
    BinarySolution {
        w,
        solver: Solver::Dual,
        iterations,
        converged,
        violation: pg_hi - pg_lo,
        threshold: s.tol,
        primal,
        dual,
        support_vectors,
        newton_steps: accel.steps,
        cg_iterations: 0,
        switched_after: None,
    }
}
