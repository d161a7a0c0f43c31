//! The Nyström approximation of the RBF kernel, the feature map of the kernel hybrid
//! (KH in Guidotti & Leofante, 2020, whose head is an RBF-kernel SVM).
//!
//! An exact RBF SVM costs O(n²) kernel evaluations, out of reach for 60,000 MNIST
//! images. The Nyström method (Williams & Seeger, 2001) approximates the kernel
//! k(x, y) = exp(−γ‖x − y‖²) through m landmarks L = {l_1 … l_m}, drawn from the
//! training features without replacement:
//!
//!   k(x, y) ≈ k(x, L) K_mm⁺ k(L, y),   K_mm = [k(l_i, l_j)],
//!
//! which is the inner product φ(x)·φ(y) of the explicit features
//!
//!   φ(x) = k(x, L) · P,   P = K_mm^{−1/2} = Q_r Λ_r^{−1/2},
//!
//! where K_mm = Q Λ Qᵀ is the symmetric eigendecomposition (faer's
//! `self_adjoint_eigen`) and Q_r, Λ_r keep the eigenpairs with λ > λ_max · m · ε_f32.
//! The kernel values are computed in f32 (as the ONNX graph computes them), so
//! directions of K_mm below that level are rounding noise; dropping them makes P the
//! square root of the pseudo-inverse, and φ has r ≤ m components. scikit-learn's
//! `Nystroem` instead clamps eigenvalues at 1e-12 and keeps all m; the two agree on the
//! directions f32 can resolve. A linear SVM on φ(x) is then the approximate RBF SVM.
//!
//! The kernel is evaluated exactly as the exported ONNX graph evaluates it
//! ([`crate::onnx::surgery::kernel_hybrid`]), in f32 and in the same order:
//!
//!   d²(x, l_j) = max(0, (‖x‖² + (−2)·x·l_j) + ‖l_j‖²),   k = exp(d² · (−γ)),
//!
//! with ‖l_j‖² stored, so nnmend's predictions equal ONNX Runtime's (the `max(0, ·)`
//! clips the small negative values that cancellation can leave, as scikit-learn does).
//!
//! γ defaults to scikit-learn's `gamma="scale"` of `SVC`: 1 / (D · Var(X)), with the
//! variance over every element of the training features X [n, D] (and γ = 1 when that
//! variance is 0, as scikit-learn does). Asking for more landmarks than samples uses
//! every sample as a landmark ([`Nystrom::landmarks`] says how many were used).

use faer::{Mat, Side};
use ndarray::{Array1, Array2, ArrayView2, Axis};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Settings of [`Nystrom::fit`].
#[derive(Debug, Clone, PartialEq)]
pub struct NystromSettings {
    /// Number of landmarks m (capped at the number of samples). Default 1000.
    pub landmarks: usize,
    /// The RBF width γ > 0; `None` is scikit-learn's `"scale"`, 1 / (D · Var(X)).
    pub gamma: Option<f32>,
    /// Seed of the landmark draw (ChaCha8).
    pub seed: u64,
}

impl Default for NystromSettings {
    fn default() -> Self {
        Self {
            landmarks: 1000,
            gamma: None,
            seed: 0,
        }
    }
}

/// Invalid input to [`Nystrom::fit`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum KernelError {
    /// No training samples, or samples with no feature.
    #[error("the Nyström map needs samples with at least one feature, got [{samples}, {features}]")]
    Empty {
        /// Rows of the data.
        samples: usize,
        /// Columns of the data.
        features: usize,
    },
    /// Zero landmarks were asked for.
    #[error("the Nyström map needs at least one landmark")]
    NoLandmarks,
    /// A feature value is NaN or infinite.
    #[error("sample {sample}: feature {feature} is {value}, not finite")]
    NonFinite {
        /// Row of the offending value.
        sample: usize,
        /// Column of the offending value.
        feature: usize,
        /// The value.
        value: f32,
    },
    /// γ is not a finite number > 0 (given, or computed from the data).
    #[error("the RBF width gamma must be a finite number > 0, got {0}")]
    Gamma(f32),
    /// The eigendecomposition of K_mm failed.
    #[error("the eigendecomposition of the {landmarks}×{landmarks} landmark kernel failed: {reason}")]
    Eigen {
        /// m.
        landmarks: usize,
        /// faer's message.
        reason: String,
    },
    /// K_mm has no eigenvalue above the rounding level (cannot happen with a finite γ,
    /// whose K_mm has ones on its diagonal, but checked rather than assumed).
    #[error("the landmark kernel has no eigenvalue above {tolerance:e}")]
    Degenerate {
        /// The cut-off.
        tolerance: f64,
    },
}

/// A fitted Nyström map φ(x) = k(x, L) · P.
#[derive(Debug, Clone, PartialEq)]
pub struct Nystrom {
    landmarks: Array2<f32>,
    landmark_norms: Array1<f32>,
    indices: Vec<usize>,
    gamma: f32,
    projection: Array2<f32>,
}

/// scikit-learn's `gamma="scale"`: 1 / (D · Var(X)), or 1 for constant data.
fn scale_gamma(x: ArrayView2<f32>) -> f32 {
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = x.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / n;
    if var == 0.0 {
        1.0
    } else {
        (1.0 / (x.ncols() as f64 * var)) as f32
    }
}

/// Row-wise ‖x_i‖², summed in f32 in column order.
fn squared_norms(x: ArrayView2<f32>) -> Array1<f32> {
    x.map_axis(Axis(1), |row| row.iter().fold(0.0f32, |acc, &v| acc + v * v))
}

/// k(x_i, l_j) in f32, in the ONNX graph's order of operations.
fn rbf(x: ArrayView2<f32>, landmarks: ArrayView2<f32>, landmark_norms: &Array1<f32>, gamma: f32) -> Array2<f32> {
    let sq = squared_norms(x);
    let mut k = x.dot(&landmarks.t());
    let neg_gamma = -gamma;
    for (mut row, &s) in k.outer_iter_mut().zip(&sq) {
        for (v, &l) in row.iter_mut().zip(landmark_norms) {
            let d2 = (s + *v * -2.0f32) + l;
            *v = (d2.max(0.0) * neg_gamma).exp();
        }
    }
    k
}

impl Nystrom {
    /// Draws min(m, n) landmarks from the rows of `x` [n, D] (without replacement,
    /// ChaCha8 seeded by `settings.seed`, so the same data and seed give the same map)
    /// and computes the projection K_mm^{−1/2}.
    pub fn fit(x: ArrayView2<f32>, settings: &NystromSettings) -> Result<Self, KernelError> {
        let (n, d) = x.dim();
        if n == 0 || d == 0 {
            return Err(KernelError::Empty {
                samples: n,
                features: d,
            });
        }
        if settings.landmarks == 0 {
            return Err(KernelError::NoLandmarks);
        }
        if let Some((i, &value)) = x.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(KernelError::NonFinite {
                sample: i / d,
                feature: i % d,
                value,
            });
        }
        let gamma = settings.gamma.unwrap_or_else(|| scale_gamma(x));
        if !(gamma.is_finite() && gamma > 0.0) {
            return Err(KernelError::Gamma(gamma));
        }
        let m = settings.landmarks.min(n);
        let mut rng = ChaCha8Rng::seed_from_u64(settings.seed);
        let mut indices = rand::seq::index::sample(&mut rng, n, m).into_vec();
        // Landmarks in data order: the draw decides which, not how they are listed.
        indices.sort_unstable();
        let landmarks = x.select(Axis(0), &indices);
        let landmark_norms = squared_norms(landmarks.view());
        let kmm = rbf(landmarks.view(), landmarks.view(), &landmark_norms, gamma);
        // f32 rounding leaves K_mm a hair off symmetric; its symmetric part is what is meant.
        let sym = Mat::<f64>::from_fn(m, m, |i, j| 0.5 * (f64::from(kmm[[i, j]]) + f64::from(kmm[[j, i]])));
        let evd = sym.self_adjoint_eigen(Side::Lower).map_err(|e| KernelError::Eigen {
            landmarks: m,
            reason: format!("{e:?}"),
        })?;
        let values = evd.S().column_vector();
        let vectors = evd.U();
        let largest = (0..m).map(|i| values[i]).fold(0.0f64, f64::max);
        let tolerance = largest * m as f64 * f64::from(f32::EPSILON);
        let kept: Vec<usize> = (0..m).filter(|&i| values[i] > tolerance).collect();
        if kept.is_empty() {
            return Err(KernelError::Degenerate { tolerance });
        }
        // Largest eigenvalue first, so φ's leading components carry most of the kernel.
        let projection = Array2::from_shape_fn((m, kept.len()), |(i, c)| {
            let e = kept[kept.len() - 1 - c];
            (vectors[(i, e)] / values[e].sqrt()) as f32
        });
        Ok(Self {
            landmarks,
            landmark_norms,
            indices,
            gamma,
            projection,
        })
    }

    /// φ(x) = k(x, L) · P for the rows of `x` [N, D]: shape [N, dim()].
    ///
    /// # Panics
    /// If `x.ncols()` differs from the landmarks' D (shape error of the matrix
    /// product); callers check the width first.
    pub fn transform(&self, x: ArrayView2<f32>) -> Array2<f32> {
        self.kernel(x).dot(&self.projection)
    }

    /// k(x, L) for the rows of `x` [N, D]: shape [N, m], before the projection.
    ///
    /// # Panics
    /// As [`Nystrom::transform`].
    pub fn kernel(&self, x: ArrayView2<f32>) -> Array2<f32> {
        rbf(x, self.landmarks.view(), &self.landmark_norms, self.gamma)
    }

    /// Dimension of φ: the eigenpairs of K_mm kept (≤ m).
    pub fn dim(&self) -> usize {
        self.projection.ncols()
    }

    /// The RBF width γ in use.
    pub fn gamma(&self) -> f32 {
        self.gamma
    }

    /// Number of landmarks m actually used.
    pub fn landmarks(&self) -> usize {
        self.landmarks.nrows()
    }

    /// Input width D.
    pub fn input_dim(&self) -> usize {
        self.landmarks.ncols()
    }

    /// The landmarks L [m, D].
    pub fn landmark_matrix(&self) -> ArrayView2<'_, f32> {
        self.landmarks.view()
    }

    /// The rows of the training data the landmarks are (ascending).
    pub fn landmark_indices(&self) -> &[usize] {
        &self.indices
    }

    /// ‖l_j‖² [m], as the ONNX graph stores them.
    pub fn landmark_norms(&self) -> ndarray::ArrayView1<'_, f32> {
        self.landmark_norms.view()
    }

    /// The projection P = K_mm^{−1/2} restricted to the kept eigenpairs, [m, dim()].
    pub fn projection(&self) -> ArrayView2<'_, f32> {
        self.projection.view()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rand::Rng;

    fn data(n: usize, d: usize, seed: u64) -> Array2<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        Array2::from_shape_fn((n, d), |_| rng.random_range(0.0f32..1.0))
    }

    #[test]
    fn transform_matches_the_formula_computed_naively() {
        let x = data(30, 5, 1);
        let map = Nystrom::fit(
            x.view(),
            &NystromSettings {
                landmarks: 6,
                gamma: Some(0.7),
                seed: 3,
            },
        )
        .unwrap();
        assert_eq!(map.landmarks(), 6);
        let q = data(4, 5, 2);
        let phi = map.transform(q.view());
        let l = map.landmark_matrix();
        let p = map.projection();
        for i in 0..q.nrows() {
            for c in 0..map.dim() {
                let mut want = 0.0f64;
                for j in 0..l.nrows() {
                    let d2: f64 = (0..5)
                        .map(|t| (f64::from(q[[i, t]]) - f64::from(l[[j, t]])).powi(2))
                        .sum();
                    want += (-0.7 * d2).exp() * f64::from(p[[j, c]]);
                }
                assert!(
                    (f64::from(phi[[i, c]]) - want).abs() <= 1e-5 * want.abs().max(1.0),
                    "φ[{i}, {c}] = {} against {want}",
                    phi[[i, c]]
                );
            }
        }
        // The landmarks are rows of the data.
        for (r, &i) in map.landmark_indices().iter().enumerate() {
            assert_eq!(l.row(r), x.row(i));
        }
    }

    #[test]
    fn the_map_reproduces_the_landmark_kernel() {
        // Few landmarks far apart: K_mm is well conditioned, every eigenpair is kept,
        // and φ(L)·φ(L)ᵀ = K_mm K_mm⁻¹ K_mm = K_mm.
        let x = data(200, 8, 4);
        let map = Nystrom::fit(
            x.view(),
            &NystromSettings {
                landmarks: 10,
                gamma: None,
                seed: 9,
            },
        )
        .unwrap();
        assert_eq!(map.dim(), 10);
        let l = map.landmark_matrix().to_owned();
        let phi = map.transform(l.view());
        let approx = phi.dot(&phi.t());
        let exact = map.kernel(l.view());
        for ((i, j), &v) in approx.indexed_iter() {
            assert!(
                (v - exact[[i, j]]).abs() <= 1e-4,
                "[{i}, {j}]: {v} against {}",
                exact[[i, j]]
            );
        }
        // γ = "scale": 1 / (D · Var(X)).
        let mean = x.iter().map(|&v| f64::from(v)).sum::<f64>() / x.len() as f64;
        let var = x.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / x.len() as f64;
        assert!((f64::from(map.gamma()) - 1.0 / (8.0 * var)).abs() <= 1e-6 / var);
    }

    #[test]
    fn the_seed_decides_the_landmarks() {
        let x = data(100, 4, 5);
        let settings = |seed| NystromSettings {
            landmarks: 12,
            gamma: None,
            seed,
        };
        let a = Nystrom::fit(x.view(), &settings(1)).unwrap();
        let b = Nystrom::fit(x.view(), &settings(1)).unwrap();
        let c = Nystrom::fit(x.view(), &settings(2)).unwrap();
        assert_eq!(a, b);
        assert_ne!(a.landmark_indices(), c.landmark_indices());
    }

    #[test]
    fn bad_input_is_refused_with_its_place() {
        let mut x = data(10, 3, 6);
        let ok = NystromSettings::default();
        assert_eq!(
            Nystrom::fit(x.slice(ndarray::s![..0, ..]), &ok),
            Err(KernelError::Empty {
                samples: 0,
                features: 3
            })
        );
        let none = NystromSettings {
            landmarks: 0,
            ..Default::default()
        };
        assert_eq!(Nystrom::fit(x.view(), &none), Err(KernelError::NoLandmarks));
        for g in [0.0, -1.0, f32::NAN, f32::INFINITY] {
            let bad = NystromSettings {
                gamma: Some(g),
                ..Default::default()
            };
            assert!(matches!(Nystrom::fit(x.view(), &bad), Err(KernelError::Gamma(_))));
        }
        // More landmarks than samples: every sample is one.
        assert_eq!(Nystrom::fit(x.view(), &ok).unwrap().landmarks(), 10);
        x[[7, 2]] = f32::NAN;
        let err = Nystrom::fit(x.view(), &ok).unwrap_err();
        assert!(
            matches!(
                err,
                KernelError::NonFinite {
                    sample: 7,
                    feature: 2,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("sample 7: feature 2"), "{err}");
    }

    #[test]
    fn duplicate_landmarks_drop_the_null_directions() {
        // Every sample the same: K_mm is all ones, rank 1; one component is kept.
        let x = Array2::<f32>::ones((5, 2));
        let map = Nystrom::fit(x.view(), &NystromSettings::default()).unwrap();
        assert_eq!(map.gamma(), 1.0);
        assert_eq!(map.dim(), 1);
        let phi = map.transform(x.view());
        let gram = phi.dot(&phi.t());
        assert!(gram.iter().all(|&v| (v - 1.0).abs() <= 1e-5), "{gram}");
    }
}
