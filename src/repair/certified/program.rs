//! The restricted certified program, built for clarabel, and the pricing of the
//! weights it leaves out.

use clarabel::algebra::CscMatrix;
use clarabel::solver::SupportedConeT::NonnegativeConeT;
use ndarray::{Array1, Array2};

use super::{CertifiedProblem, CertifiedSettings};
use crate::repair::paper::{clarabel_lp, Ldl};
use crate::repair::Status;

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

/// The restricted program's solution.
pub(super) struct Restricted {
    pub(super) weights: Array2<f64>,
    pub(super) bias: Array1<f64>,
    pub(super) status: Status,
    pub(super) iterations: u32,
    /// Its optimum (NaN when unsolved).
    pub(super) objective: f64,
    /// clarabel's dual of every row, laid out as [`Layout`] says.
    pub(super) z: Vec<f64>,
}

/// Where the rows of a restricted program sit.
pub(super) struct Layout {
    /// Per class pair `t·K + c`, its index among the pairs with auxiliary vectors.
    pair_of: Vec<usize>,
    /// Per pair, per feature: the index of its auxiliary variable's first row
    /// (`usize::MAX` when the feature is fixed for that pair).
    pair_rows: Vec<Vec<usize>>,
    /// The first margin row; margin row `i` is `rows[i]`.
    pub(super) margin0: usize,
    /// The program's variables, constraints and non-zero coefficients.
    pub(super) variables: usize,
    pub(super) constraints: usize,
    pub(super) nonzeros: usize,
}

impl Layout {
    /// The layout of a program solved by [`super::ipm`]: its duals are the margin
    /// rows' alone, and it has no fixed weights to price.
    pub(super) fn margins_only((variables, constraints, nonzeros): (usize, usize, usize)) -> Self {
        Self {
            pair_of: Vec::new(),
            pair_rows: Vec::new(),
            margin0: 0,
            variables,
            constraints,
            nonzeros,
        }
    }
}

/// Whether feature `j` can change for the pair `(t, c)`: either class's weight can.
fn free(working: &[bool], d: usize, t: usize, c: usize, j: usize) -> bool {
    working[t * d + j] || working[c * d + j]
}

/// Solves the program restricted to `rows` (sample, class) and to the weights
/// `working` (`[K·d]`, row-major) with clarabel. A feature fixed for a pair keeps its
/// exact term `|d⁰|·r` on the right-hand side.
pub(super) fn solve_restricted(
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
    let nonzeros = entries.len();
    let a = csc(row, vars, entries);
    let cones = [NonnegativeConeT(row)];
    let layout = Layout {
        pair_of,
        pair_rows,
        margin0,
        variables: vars,
        constraints: row,
        nonzeros,
    };
    let unchanged = |status, iterations| Restricted {
        weights: p.weights.to_owned(),
        bias: p.bias.to_owned(),
        status,
        iterations,
        objective: f64::NAN,
        z: vec![0.0; row],
    };
    // qdldl, not faer's supernodal LDLᵀ that clarabel picks for most of these
    // programs: the dense margin rows couple every feature, and on them qdldl took a
    // half to a third of the time for the same iterates (docs/BENCHMARKS.md).
    let Some((sol, status)) = clarabel_lp(&q, &a, &b, &cones, settings.threads, settings.max_iter, Ldl::Qdldl) else {
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
            objective: sol.obj_val,
            z: sol.z,
        },
        layout,
    )
}

/// The weights outside `working` whose change would lower the objective, priced
/// with the restricted program's duals: moving weight (c, j) by δ in either direction
/// changes the Lagrangian by δ·(1 + Σ_rows z·∂row), where a fixed feature's term
/// `|d|·r` moves with the sign of `d⁰` (or grows either way at `d⁰ = 0`).
pub(super) fn entering_columns(
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
