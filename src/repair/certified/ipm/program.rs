//! The restricted program's data, grouped by class pair, and its products: A x, Aᵀ z
//! and those by the margin rows alone.

use ndarray::Array2;

use super::{CertifiedProblem, PARALLEL_ROWS};
use crate::svm::dot4;

/// The program over a set of rows, grouped by class pair.
pub(super) struct Program {
    pub(super) k: usize,
    pub(super) d: usize,
    /// Features with a weight change: d, and the bias as feature d.
    pub(super) db: usize,
    /// Per row (in the program's order): its pair and its sample's local index.
    pub(super) pair: Vec<usize>,
    pub(super) sample: Vec<usize>,
    /// Per pair: (t, k), its rows' range and its index among the pairs with a
    /// (`usize::MAX` when none of its rows is a ball).
    pub(super) pairs: Vec<(usize, usize)>,
    pub(super) range: Vec<(usize, usize)>,
    pub(super) aux: Vec<usize>,
    /// Per pair with a, the pair.
    pub(super) with_aux: Vec<usize>,
    /// Per row, its box centre (and 1 for the bias) `[R, db]` and radius `[R, d]`.
    pub(super) x: Array2<f64>,
    pub(super) r: Array2<f64>,
    /// Per local sample, its rows.
    pub(super) members: Vec<Vec<usize>>,
    /// Per class, the pairs whose rows read its weights, in order, with the sign they
    /// read them with (−1 for the pair's label, +1 for the other class)...
    pub(super) touches: Vec<Vec<(usize, f64)>>,
    /// ...and whether the first of two threads takes its weights in Cᵀ λ (the rows
    /// shared out evenly).
    pub(super) first_thread: Vec<bool>,
    pub(super) q: Vec<f64>,
    pub(super) b: Vec<f64>,
}

/// Offsets of the blocks of x: γ, g, ξ, a.
pub(super) struct XAt {
    pub(super) g: usize,
    pub(super) xi: usize,
    pub(super) a: usize,
    pub(super) len: usize,
}

/// Offsets of the blocks of s and z: |γ| ≤ g (two), ξ ≥ 0, |d| ≤ a (two), margins.
pub(super) struct SAt {
    pub(super) m: usize,
    pub(super) p4: usize,
    pub(super) p5: usize,
    pub(super) c: usize,
    pub(super) len: usize,
}

impl Program {
    /// The program over `rows` (in the order `order` gives, grouped by pair).
    pub(super) fn new(p: &CertifiedProblem, rows: &[(usize, usize)], order: &[usize]) -> Self {
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

    pub(super) fn x_at(&self) -> XAt {
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

    pub(super) fn s_at(&self) -> SAt {
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
    pub(super) fn nonzeros(&self) -> usize {
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
    pub(super) fn margin(&self, x: &[f64]) -> Vec<f64> {
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
    pub(super) fn margin_rows(&self, x: &[f64], from: usize, out: &mut [f64]) {
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
    pub(super) fn centres(&self) -> &[f64] {
        self.x
            .as_slice()
            .unwrap_or_else(|| unreachable!("built in standard layout"))
    }

    /// The rows' box radii, row-major `[R, d]`.
    pub(super) fn radii(&self) -> &[f64] {
        self.r
            .as_slice()
            .unwrap_or_else(|| unreachable!("built in standard layout"))
    }

    /// out += Cᵀ λ. The weights of each class take their rows' terms in the rows'
    /// order, as one pass over the rows would, but class by class, the classes (and
    /// the pairs' a) split between two threads.
    pub(super) fn margin_t(&self, lambda: &[f64], out: &mut [f64]) {
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
    pub(super) fn a_mul(&self, x: &[f64]) -> Vec<f64> {
        let mut out = self.a_mul_bounds(x);
        let c = self.s_at().c;
        out[c..].copy_from_slice(&self.margin(x));
        out
    }

    /// A x but for the margin rows, left 0.
    pub(super) fn a_mul_bounds(&self, x: &[f64]) -> Vec<f64> {
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
    pub(super) fn at_mul(&self, z: &[f64]) -> Vec<f64> {
        let mut out = self.at_mul_bounds(z);
        self.margin_t(&z[self.s_at().c..], &mut out);
        out
    }

    /// Aᵀ z but for the margin rows' terms (z's entries up to them are read).
    pub(super) fn at_mul_bounds(&self, z: &[f64]) -> Vec<f64> {
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

/// The partial sums of [`dot_diff`].
const LANES: usize = 4;

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
