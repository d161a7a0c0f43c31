//! Read-only feature rows for the linear SVM solvers: dense row-major f32 or compressed
//! sparse rows, both widened to f64 as they are used, so that the solvers accumulate in
//! f64 while the features take half the memory (and half the memory traffic) of f64.
//! The solvers are generic over [`Rows`], so the dense and sparse inner loops are
//! monomorphised without a per-row dispatch.

use ndarray::{ArrayView2, Axis};

/// Read-only access to the (non-augmented) feature rows the solver needs.
///
/// The solver is generic over this so that the dense and sparse inner loops
/// are monomorphised, without a per-row dispatch.
pub(crate) trait Rows: Sync {
    /// Number of samples.
    fn n(&self) -> usize;
    /// Number of features (without the bias feature).
    fn d(&self) -> usize;
    /// `wᵀx_i` over the first `d` entries of `w`, accumulated in f64.
    fn dot(&self, i: usize, w: &[f64]) -> f64;
    /// `w += a · x_i` over the first `d` entries of `w`.
    fn axpy(&self, i: usize, a: f64, w: &mut [f64]);
    /// `w += a · x_i` and `q += b · x_i²` (elementwise) over the first `d` entries, in
    /// one read of the row: the primal solver's gradient and Hessian diagonal.
    fn axpy_sq(&self, i: usize, a: f64, b: f64, w: &mut [f64], q: &mut [f64]);
    /// Cost of one dot product or axpy with row `i`, in units of one
    /// gathered sparse multiply-add (the unit of the Newton cost model).
    fn cost(&self, i: usize) -> f64;
    /// `‖x_i‖²` in f64.
    fn sq_norm(&self, i: usize) -> f64 {
        let mut acc = 0.0;
        self.for_each_nonzero(i, &mut |_, v| acc += v * v);
        acc
    }
    /// Calls `f(feature, value)` for each stored entry of row `i`.
    fn for_each_nonzero(&self, i: usize, f: &mut dyn FnMut(usize, f64));
}

/// Row-major dense storage, kept as f32 to halve memory traffic; every value
/// is widened to f64 as it is used.
pub(crate) struct DenseRows<'a> {
    pub(crate) data: &'a [f32],
    pub(crate) n: usize,
    pub(crate) d: usize,
}

impl DenseRows<'_> {
    fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.d..(i + 1) * self.d]
    }
}

/// Number of independent accumulators in the dense dot product: separate
/// partial sums break the floating-point dependency chain so the loop can be
/// pipelined and vectorised (the compiler may not reassociate a single sum).
const LANES: usize = 8;

impl Rows for DenseRows<'_> {
    fn n(&self) -> usize {
        self.n
    }
    fn d(&self) -> usize {
        self.d
    }
    fn cost(&self, _i: usize) -> f64 {
        // Streamed dense entries are cheaper than gathered sparse ones; the
        // break-even density of the two storages measures the ratio.
        self.d as f64 * super::SPARSE_DENSITY
    }
    fn dot(&self, i: usize, w: &[f64]) -> f64 {
        let x = self.row(i);
        let w = &w[..self.d];
        let mut acc = [0.0f64; LANES];
        let xc = x.chunks_exact(LANES);
        let wc = w.chunks_exact(LANES);
        let tail: f64 = xc
            .remainder()
            .iter()
            .zip(wc.remainder())
            .map(|(&a, &b)| f64::from(a) * b)
            .sum();
        for (xa, wa) in xc.zip(wc) {
            for k in 0..LANES {
                acc[k] += f64::from(xa[k]) * wa[k];
            }
        }
        acc.iter().sum::<f64>() + tail
    }
    fn axpy(&self, i: usize, a: f64, w: &mut [f64]) {
        let x = self.row(i);
        for (wj, &xj) in w[..self.d].iter_mut().zip(x) {
            *wj += a * f64::from(xj);
        }
    }
    fn axpy_sq(&self, i: usize, a: f64, b: f64, w: &mut [f64], q: &mut [f64]) {
        let x = self.row(i);
        for ((wj, qj), &xj) in w[..self.d].iter_mut().zip(&mut q[..self.d]).zip(x) {
            let v = f64::from(xj);
            *wj += a * v;
            *qj += b * v * v;
        }
    }
    fn for_each_nonzero(&self, i: usize, f: &mut dyn FnMut(usize, f64)) {
        for (j, &v) in self.row(i).iter().enumerate() {
            f(j, f64::from(v));
        }
    }
}

/// Compressed sparse row storage (only non-zero entries), used when the
/// features are sparse enough that skipping zeros beats dense streaming, as
/// for ReLU activations or raw image pixels.
pub(crate) struct SparseRows {
    /// Row `i` occupies `entries[indptr[i]..indptr[i + 1]]`.
    pub(crate) indptr: Vec<usize>,
    /// (feature index, value) pairs; interleaved so that a row is a single
    /// contiguous stream, and u32 indices to halve the index traffic.
    pub(crate) entries: Vec<(u32, f32)>,
    pub(crate) d: usize,
}

impl SparseRows {
    fn row(&self, i: usize) -> &[(u32, f32)] {
        &self.entries[self.indptr[i]..self.indptr[i + 1]]
    }
}

impl Rows for SparseRows {
    fn n(&self) -> usize {
        self.indptr.len() - 1
    }
    fn d(&self) -> usize {
        self.d
    }
    fn cost(&self, i: usize) -> f64 {
        (self.indptr[i + 1] - self.indptr[i]) as f64
    }
    fn dot(&self, i: usize, w: &[f64]) -> f64 {
        let row = self.row(i);
        // Independent partial sums shorten the latency chain of the
        // gathered multiply-adds (the compiler may not reassociate them).
        let mut acc = [0.0f64; 4];
        let quads = row.chunks_exact(4);
        let tail: f64 = quads
            .remainder()
            .iter()
            .map(|&(j, v)| f64::from(v) * w[j as usize])
            .sum();
        for q in quads {
            for k in 0..4 {
                acc[k] += f64::from(q[k].1) * w[q[k].0 as usize];
            }
        }
        (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
    }
    fn axpy(&self, i: usize, a: f64, w: &mut [f64]) {
        for &(j, v) in self.row(i) {
            w[j as usize] += a * f64::from(v);
        }
    }
    fn axpy_sq(&self, i: usize, a: f64, b: f64, w: &mut [f64], q: &mut [f64]) {
        for &(j, v) in self.row(i) {
            let v = f64::from(v);
            w[j as usize] += a * v;
            q[j as usize] += b * v * v;
        }
    }
    fn for_each_nonzero(&self, i: usize, f: &mut dyn FnMut(usize, f64)) {
        for &(j, v) in self.row(i) {
            f(j as usize, f64::from(v));
        }
    }
}

/// Copies the non-zero entries of `x` into compressed sparse rows.
pub(super) fn to_sparse(x: ArrayView2<f32>, nnz: usize) -> SparseRows {
    let mut indptr = Vec::with_capacity(x.nrows() + 1);
    let mut entries = Vec::with_capacity(nnz);
    indptr.push(0);
    for row in x.axis_iter(Axis(0)) {
        for (j, &v) in row.iter().enumerate() {
            if v != 0.0 {
                // Lossless: sparse storage is only chosen when every
                // feature index fits in u32.
                entries.push((j as u32, v));
            }
        }
        indptr.push(entries.len());
    }
    SparseRows {
        indptr,
        entries,
        d: x.ncols(),
    }
}
