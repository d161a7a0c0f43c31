//! Subspace Newton steps that accelerate the dual coordinate descent of [`super::dcd`].
//!
//! Coordinate descent converges linearly at a rate set by the conditioning of Q̄, which
//! is poor for non-negative, uncentred features such as CNN activations. Every few
//! passes, once the set F of free variables (inside the box, or at a bound with the
//! gradient pointing inside) has stopped changing, one Newton step on F minimises the
//! dual restricted to F: Q̄_FF δ = −g_F (dense Gram matrix of the augmented rows,
//! Cholesky), with variables that would leave the box pinned at their bound and the
//! rest re-solved. The step is projected onto the box and halved until the exact change
//! of the dual is negative, so it never increases and α stays feasible.

use super::rows::Rows;

/// Passes between two looks at the Newton subspace; the free set must also
/// be nearly unchanged between two looks, i.e. over this many passes.
pub(super) const NEWTON_CHECK_EVERY: usize = 10;
/// A Newton step needs the free set to differ from the previous look by at
/// most 1/NEWTON_STABLE_FRACTION of its size: before coordinate descent has
/// roughly identified which variables are free, the step would mostly be
/// clipped by the bounds and wasted.
const NEWTON_STABLE_FRACTION: usize = 20;
/// Largest free set for which a Newton step is attempted: the step forms
/// the m×m Gram matrix (8m² bytes) and factorises it (m³/3 flops).
const NEWTON_MAX_FREE: usize = 2048;
/// Rounds of bound pinning and re-solving inside one Newton step.
const ACTIVE_SET_ROUNDS: usize = 5;
/// Halvings tried in the projected backtracking search of a Newton step.
const BACKTRACK_STEPS: usize = 20;

/// Cost model in units of one gathered multiply-add of coordinate descent
/// (measured about 2 ns on the development machine): per flop, the Gram
/// matrix product (blocked GEMM) runs about 20× and the Cholesky loops about
/// 5× faster than the gathered row updates.
fn gram_cost(m: usize, d: usize) -> f64 {
    (m as f64).powi(2) * (d + 1) as f64 / 20.0
}

/// Cost of factorising an m×m matrix, same units as [`gram_cost`].
fn cholesky_cost(m: usize) -> f64 {
    (m as f64).powi(3) / 15.0
}

/// The mutable dual state a Newton step works on.
pub(super) struct DualState<'a, R> {
    pub(super) rows: &'a R,
    pub(super) y: &'a [f64],
    pub(super) alpha: &'a mut [f64],
    pub(super) w: &'a mut [f64],
    pub(super) shift: f64,
    pub(super) upper: f64,
}

/// Decides when to take subspace Newton steps.
///
/// Coordinate descent converges linearly with a rate set by the
/// conditioning of Q̄; on uncentred, non-negative features (CNN activations)
/// it can need thousands of passes over the few hundred support vectors.
/// Once the free set is identified, one Newton step on it finishes the job.
/// The steps are paid for out of a work credit earned by coordinate-descent
/// passes, so they cost at most about as much as the passes themselves when
/// they do not help (e.g. large free sets of raw pixels).
#[derive(Default)]
pub(super) struct Accelerator {
    /// Free set at the previous look (sorted).
    prev_free: Vec<usize>,
    /// Coordinate-descent work done minus Newton work spent.
    pub(super) credit: f64,
    /// Steps taken.
    pub(super) steps: usize,
}

impl Accelerator {
    pub(super) fn consider<R: Rows>(&mut self, st: &mut DualState<'_, R>, active: &[usize], grad: &[f64]) {
        // Free variables: strictly inside the box, or at a bound with the
        // gradient pointing inside (they want to move).
        let mut free: Vec<usize> = active
            .iter()
            .copied()
            .filter(|&i| {
                let a = st.alpha[i];
                if a <= 0.0 {
                    grad[i] < 0.0
                } else if a >= st.upper {
                    grad[i] > 0.0
                } else {
                    true
                }
            })
            .collect();
        free.sort_unstable();
        let m = free.len();
        let stable = sym_diff(&free, &self.prev_free) * NEWTON_STABLE_FRACTION <= m;
        let affordable = self.credit >= gram_cost(m, st.rows.d()) + 2.0 * cholesky_cost(m);
        if m > 0 && m <= NEWTON_MAX_FREE && stable && affordable {
            self.credit -= newton_step(st, &free);
            self.steps += 1;
        }
        self.prev_free = free;
    }
}

/// Dot product of two equally long slices with four partial sums.
pub(crate) fn dot4(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0.0f64; 4];
    let ac = a.chunks_exact(4);
    let bc = b.chunks_exact(4);
    let tail: f64 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for k in 0..4 {
            acc[k] += x[k] * y[k];
        }
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

/// Solves Q x = b for a symmetric positive (semi-)definite m×m matrix `q`
/// (row-major, overwritten by its Cholesky factor L, Q = L Lᵀ). A pivot that
/// is not clearly positive (singular Q, possible for the hinge loss where
/// D = 0) is floored at a tiny multiple of the original diagonal, i.e. a
/// small ridge on that direction; the caller verifies the resulting step
/// exactly, so this only has to produce a good candidate.
fn cholesky_solve(q: &mut [f64], m: usize, b: &[f64]) -> Vec<f64> {
    for i in 0..m {
        let (head, tail) = q.split_at_mut(i * m);
        let row_i = &mut tail[..m];
        for j in 0..i {
            let row_j = &head[j * m..j * m + m];
            let s = dot4(&row_i[..j], &row_j[..j]);
            row_i[j] = (row_i[j] - s) / row_j[j];
        }
        let floor = 1e-12 * row_i[i].abs().max(f64::MIN_POSITIVE);
        let s = dot4(&row_i[..i], &row_i[..i]);
        row_i[i] = (row_i[i] - s).max(floor).sqrt();
    }
    // Forward substitution L z = b, then back substitution Lᵀ x = z.
    let mut x = b.to_vec();
    for i in 0..m {
        let row = &q[i * m..i * m + m];
        x[i] = (x[i] - dot4(&row[..i], &x[..i])) / row[i];
    }
    for i in (0..m).rev() {
        x[i] /= q[i * m + i];
        let xi = x[i];
        for (xk, lik) in x[..i].iter_mut().zip(&q[i * m..i * m + i]) {
            *xk -= lik * xi;
        }
    }
    x
}

/// One safeguarded Newton step on the dual restricted to `free`, all other
/// variables held fixed. On that subspace f is the quadratic
/// ½ δᵀQ̄_FFδ + gᵀδ + const, whose minimiser solves Q̄_FF δ = −g (dense Gram
/// matrix of the augmented rows, Cholesky). Variables that this step would
/// push out of the box are pinned at the bound and the others re-solved
/// (a few active-set rounds, reusing the Gram matrix). The result is then
/// projected onto the box and halved until the exact change of f is
/// negative, so f never increases and α stays feasible: the coordinate
/// descent convergence argument is untouched. Returns the work spent, in
/// the units of [`gram_cost`].
fn newton_step<R: Rows>(st: &mut DualState<'_, R>, free: &[usize]) -> f64 {
    let rows = st.rows;
    let y = st.y;
    let m = free.len();
    let d = rows.d();
    let row_work: f64 = free.iter().map(|&i| rows.cost(i)).sum();
    let mut spent = gram_cost(m, d) + row_work;
    let g: Vec<f64> = free
        .iter()
        .map(|&i| y[i] * (rows.dot(i, st.w) + st.w[d]) - 1.0 + st.shift * st.alpha[i])
        .collect();
    // Rows y_i [x_i, 1] of the free samples, densified for a GEMM.
    let mut a = ndarray::Array2::<f64>::zeros((m, d + 1));
    for (mut row, &i) in a.outer_iter_mut().zip(free) {
        let yi = y[i];
        rows.for_each_nonzero(i, &mut |j, v| row[j] = yi * v);
        row[d] = yi;
    }
    let mut gram = a.dot(&a.t());
    for k in 0..m {
        gram[[k, k]] += st.shift;
    }
    let mut delta = vec![0.0f64; m];
    let mut pinned = vec![false; m];
    for _ in 0..ACTIVE_SET_ROUNDS {
        let keep: Vec<usize> = (0..m).filter(|&k| !pinned[k]).collect();
        let mk = keep.len();
        if mk == 0 {
            break;
        }
        // Reduced system Q_KK δ_K = −g_K − Q_KP δ_P (pinned moves known).
        let mut q = vec![0.0f64; mk * mk];
        let mut rhs = vec![0.0f64; mk];
        for (r, &kr) in keep.iter().enumerate() {
            let row = gram.row(kr);
            for (c, &kc) in keep.iter().enumerate() {
                q[r * mk + c] = row[kc];
            }
            let pinned_push: f64 = (0..m).filter(|&k| pinned[k]).map(|k| row[k] * delta[k]).sum();
            rhs[r] = -g[kr] - pinned_push;
        }
        let sol = cholesky_solve(&mut q, mk, &rhs);
        spent += cholesky_cost(mk);
        let mut newly_pinned = false;
        for (&k, &v) in keep.iter().zip(&sol) {
            let ak = st.alpha[free[k]];
            let target = (ak + v).clamp(0.0, st.upper);
            if target != ak + v {
                pinned[k] = true;
                newly_pinned = true;
            }
            delta[k] = target - ak;
        }
        if !newly_pinned {
            break;
        }
    }
    // Projected backtracking: δ_t = clip(α + tδ) − α is accepted once
    // Δf = gᵀδ_t + ½‖u‖² + ½ D ‖δ_t‖² < 0, with u = Σ y_i δ_t,i x_i the
    // change of w (exact for the quadratic f: ½‖w + u‖² − ½‖w‖² = wᵀu + ½‖u‖²
    // and wᵀu is part of gᵀδ_t).
    let mut t = 1.0;
    let mut step = vec![0.0f64; m];
    let mut u = vec![0.0f64; d + 1];
    for _ in 0..BACKTRACK_STEPS {
        for ((sk, &dk), &i) in step.iter_mut().zip(&delta).zip(free) {
            let ak = st.alpha[i];
            *sk = (ak + t * dk).clamp(0.0, st.upper) - ak;
        }
        u.fill(0.0);
        for (&i, &sk) in free.iter().zip(&step) {
            rows.axpy(i, y[i] * sk, &mut u);
            u[d] += y[i] * sk;
        }
        spent += row_work;
        let change = dot4(&g, &step) + 0.5 * dot4(&u, &u) + 0.5 * st.shift * dot4(&step, &step);
        if change < 0.0 {
            for (&i, &sk) in free.iter().zip(&step) {
                st.alpha[i] += sk;
            }
            for (wj, uj) in st.w.iter_mut().zip(&u) {
                *wj += uj;
            }
            break;
        }
        t *= 0.5;
    }
    spent
}

/// Size of the symmetric difference of two sorted index lists.
fn sym_diff(a: &[usize], b: &[usize]) -> usize {
    let (mut i, mut j, mut out) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => {
                out += 1;
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out += 1;
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                i += 1;
                j += 1;
            }
        }
    }
    out + (a.len() - i) + (b.len() - j)
}
