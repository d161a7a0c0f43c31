//! One Newton step of the method: H⁻¹ by features, S over the margin rows formed and
//! factored, and the augmented system solved by elimination and refined.

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt::factor::{cholesky_in_place, cholesky_in_place_scratch, LltRegularization};
use faer::linalg::triangular_solve::{solve_lower_triangular_in_place, solve_upper_triangular_in_place};
use faer::{Mat, Par};

use super::program::Program;
use super::{gram, FLOOR, PARALLEL_ROWS, REFINE, REFINED};
use crate::repair::ipm::inf_norm;

/// H⁻¹ and the factor of S for one Newton step.
pub(super) struct Step<'a> {
    pub(super) program: &'a Program,
    /// Per feature, M_j⁻¹ (K × K, row-major).
    pub(super) minv: Vec<f64>,
    /// (w₂ − w₁)/(w₁ + w₂) and w₁ + w₂ per weight.
    pub(super) sig_g: Vec<f64>,
    pub(super) hg: Vec<f64>,
    /// (w₅ − w₄)/(w₄ + w₅) and w₄ + w₅ per pair with a and feature.
    pub(super) sig_a: Vec<f64>,
    pub(super) da: Vec<f64>,
    /// ξ's weight.
    pub(super) w3: Vec<f64>,
    /// The Cholesky factor of S.
    pub(super) factor: Mat<f64>,
}

/// Inverts the symmetric positive definite `m` (K × K, row-major) in place, by its
/// Cholesky factor; false when it is not positive definite.
pub(super) fn invert_spd(m: &mut [f64], k: usize) -> bool {
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

/// S's Gram part, C H⁻¹ Cᵀ but for ξ's terms (the lower half of each block row, the
/// diagonal blocks whole): between the rows of pairs p and q, A_p diag(Δ_pᵀ M_j⁻¹ Δ_q)
/// A_qᵀ with A's rows `alpha` (row-major `[R, db]`), plus a's own term within a pair
/// (`da`: w₄ + w₅ per pair with a and feature); `minv` is M_j⁻¹ per feature.
fn form_s(program: &Program, alpha: &[f64], minv: &[f64], da: &[f64]) -> Mat<f64> {
    let (k, d, db) = (program.k, program.d, program.db);
    let rr = program.pair.len();
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
    if rr < PARALLEL_ROWS {
        let mut all = s.as_mut();
        for p in 0..program.range.len() {
            pair_rows(p, &mut all, 0);
        }
    } else {
        // The pairs split between two threads at the pair boundary nearest half the
        // work (pair p's is its rows times the rows up to its end).
        let work: Vec<usize> = program.range.iter().map(|&(lo, hi)| (hi - lo) * hi).collect();
        let total: usize = work.iter().sum();
        let (mut split, mut sum) = (0, 0);
        while split < work.len() && 2 * (sum + work[split]) <= total {
            sum += work[split];
            split += 1;
        }
        let at = program.range.get(split).map_or(rr, |r| r.0);
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
    s
}

impl<'a> Step<'a> {
    /// H and S at the scaling w = z/s; `None` when S cannot be factored.
    pub(super) fn new(program: &'a Program, w: &[f64], par: Par) -> Option<Self> {
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
        let mut s = form_s(program, &alpha, &minv, &da);
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
    pub(super) fn h_inv(&self, rhs: &[f64]) -> Vec<f64> {
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
    pub(super) fn solve(&self, r1: &[f64], r2: &[f64], w: &[f64], par: Par) -> (Vec<f64>, Vec<f64>) {
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
    pub(super) fn eliminate(&self, r1: &[f64], r2: &[f64], par: Par) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
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
