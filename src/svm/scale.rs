//! Feature standardisation for the linear SVM, folded back into the weights.
//!
//! Each feature j is centred and scaled by its training mean μ_j and standard deviation
//! σ_j (population form, over the training rows): x'_j = (x_j − μ_j) / s_j, with
//! s_j = σ_j, or s_j = 1 for a feature that is constant over the training set (σ_j = 0
//! up to rounding), which is then 0 in every training row and gets no weight. A linear
//! model on x' is a linear model on x:
//!
//! w'ᵀx' + b' = Σ_j (w'_j / s_j) x_j + (b' − Σ_j w'_j μ_j / s_j),
//!
//! so the written head stays one Gemm on the features as the extractor gives them. The
//! SVM's regularisation, bias included, acts on (w', b'): standardising changes the
//! problem, not only its conditioning.

use ndarray::{Array1, Array2, ArrayView2, Axis};

use super::LinearSvm;

/// A feature whose standard deviation is at most this fraction of its magnitude
/// (max(|μ|, 1)) is taken as constant: f32 features that differ only by rounding
/// would otherwise be blown up to unit variance.
const CONSTANT: f64 = 1e-7;

/// Per-feature means and scales of a training set.
#[derive(Debug, Clone, PartialEq)]
pub struct Standardizer {
    mean: Vec<f64>,
    scale: Vec<f64>,
    constant: usize,
}

impl Standardizer {
    /// The means and standard deviations of the columns of `x` (two passes in f64).
    /// An empty `x` gives the identity.
    pub fn fit(x: ArrayView2<f32>) -> Self {
        let (n, d) = x.dim();
        let mut mean = vec![0.0f64; d];
        let mut var = vec![0.0f64; d];
        if n > 0 {
            for row in x.axis_iter(Axis(0)) {
                for (m, &v) in mean.iter_mut().zip(row) {
                    *m += f64::from(v);
                }
            }
            for m in &mut mean {
                *m /= n as f64;
            }
            for row in x.axis_iter(Axis(0)) {
                for ((s, &m), &v) in var.iter_mut().zip(&mean).zip(row) {
                    let t = f64::from(v) - m;
                    *s += t * t;
                }
            }
        }
        let mut constant = 0;
        let scale = var
            .iter()
            .zip(&mean)
            .map(|(&v, &m)| {
                let sd = (v / n.max(1) as f64).sqrt();
                if sd <= CONSTANT * m.abs().max(1.0) {
                    constant += 1;
                    1.0
                } else {
                    sd
                }
            })
            .collect();
        Self { mean, scale, constant }
    }

    /// Number of features.
    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// Features taken as constant (scaled by 1, so 0 after centring).
    pub fn constant_features(&self) -> usize {
        self.constant
    }

    /// (x − μ) / s, row by row, as f32.
    ///
    /// # Panics
    /// If `x.ncols()` differs from [`Standardizer::dim`].
    pub fn apply(&self, x: ArrayView2<f32>) -> Array2<f32> {
        assert_eq!(x.ncols(), self.dim(), "standardiser of {} features", self.dim());
        let mut out = x.to_owned();
        for mut row in out.axis_iter_mut(Axis(0)) {
            for ((v, &m), &s) in row.iter_mut().zip(&self.mean).zip(&self.scale) {
                *v = ((f64::from(*v) - m) / s) as f32;
            }
        }
        out
    }

    /// The model on the original features equal to `svm` on the standardised ones.
    ///
    /// # Panics
    /// If `svm` does not have [`Standardizer::dim`] features.
    pub fn fold(&self, svm: &LinearSvm) -> LinearSvm {
        assert_eq!(svm.n_features(), self.dim(), "standardiser of {} features", self.dim());
        let mut weights = Array2::<f32>::zeros(svm.weights.dim());
        let mut bias = Array1::<f32>::zeros(svm.n_classes());
        for (k, row) in svm.weights.outer_iter().enumerate() {
            let mut shift = 0.0f64;
            for (j, &w) in row.iter().enumerate() {
                let w = f64::from(w) / self.scale[j];
                weights[[k, j]] = w as f32;
                shift += w * self.mean[j];
            }
            bias[k] = (f64::from(svm.bias[k]) - shift) as f32;
        }
        LinearSvm { weights, bias }
    }
}

#[cfg(test)]
mod tests {
    use ndarray::array;

    use super::*;

    #[test]
    fn standardised_columns_have_zero_mean_and_unit_variance() {
        let x = array![[1.0f32, 5.0, 0.0], [3.0, 5.0, 10.0], [5.0, 5.0, -4.0]];
        let s = Standardizer::fit(x.view());
        assert_eq!(s.constant_features(), 1);
        let z = s.apply(x.view());
        for j in 0..3 {
            let col = z.column(j);
            let mean = col.iter().map(|&v| f64::from(v)).sum::<f64>() / 3.0;
            let var = col.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / 3.0;
            assert!(mean.abs() < 1e-6, "column {j}: mean {mean}");
            let want = if j == 1 { 0.0 } else { 1.0 };
            assert!((var - want).abs() < 1e-6, "column {j}: variance {var}");
        }
    }

    #[test]
    fn folding_gives_the_same_scores_on_the_raw_features() {
        let x = array![[1.0f32, 5.0, 0.0], [3.0, 5.0, 10.0], [5.0, 5.0, -4.0], [2.0, 5.0, 1.0]];
        let s = Standardizer::fit(x.view());
        let svm = LinearSvm {
            weights: array![[0.5f32, 2.0, -1.0], [-0.25, 0.0, 0.75]],
            bias: array![0.1f32, -0.3],
        };
        let want = svm.decision(s.apply(x.view()).view());
        let got = s.fold(&svm).decision(x.view());
        for (a, b) in want.iter().zip(&got) {
            assert!((a - b).abs() < 1e-5, "{want} vs {got}");
        }
    }
}
