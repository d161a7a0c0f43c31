//! A hybrid's head: what turns the extractor's features f into class scores.
//!
//! Two kinds, one type. The linear hybrid (LH) scores `z = W f + b`. The kernel hybrid
//! (KH) scores `z = W φ(f) + b`, φ the Nyström map of an RBF kernel
//! ([`crate::svm::kernel`]). Either way the last step is linear in what it reads, so a
//! [`Head`] is that linear part ([`Head::linear`]) and, for KH, the map in front of it;
//! the repair LPs act on the linear part and on [`Head::inputs`].
//!
//! A kernel head holds its linear part in the units the ONNX model is written in: the
//! graph computes s·φ and its Gemm holds W/s, s a power of two ([`export_scale`]). So
//! the head here, the head in the ONNX file and the head a repair changes are the same
//! numbers, and the scores are bit for bit those of W on φ.

use ndarray::{Array2, ArrayView2, CowArray, Ix2};

use crate::svm::{LinearSvm, Nystrom};

/// What a hybrid's head reads (`fit --head`, `repair --head`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum HeadKind {
    /// A linear SVM on the extractor's features (the paper's LH).
    Linear,
    /// A linear SVM on the Nyström features of an RBF kernel (the paper's KH).
    Kernel,
}

impl HeadKind {
    /// `linear` or `kernel`, as the command line spells it.
    pub fn name(self) -> &'static str {
        match self {
            HeadKind::Linear => "linear",
            HeadKind::Kernel => "kernel",
        }
    }
}

/// The Nyström map in front of a kernel head, and the unit s its output is written in.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelMap {
    /// φ(f) = k(f, L) · P.
    pub nystrom: Nystrom,
    /// The head reads s·φ.
    pub scale: f32,
}

/// A hybrid's head: an optional Nyström map, then a linear layer.
#[derive(Debug, Clone, PartialEq)]
pub struct Head {
    /// The Nyström map of a kernel head; `None` for a linear head.
    pub map: Option<KernelMap>,
    /// The linear part, `[k, d]` weights and `[k]` bias on [`Head::inputs`].
    pub linear: LinearSvm,
}

impl Head {
    /// The linear head `z = W f + b`.
    pub fn linear(svm: LinearSvm) -> Self {
        Self { map: None, linear: svm }
    }

    /// The kernel head `z = W φ(f) + b`, stored as W/s on s·φ ([`export_scale`]).
    pub fn kernel(nystrom: Nystrom, svm: LinearSvm) -> Self {
        let scale = export_scale(nystrom.dim());
        let linear = LinearSvm {
            weights: svm.weights.mapv(|v| v / scale),
            bias: svm.bias,
        };
        Self {
            map: Some(KernelMap { nystrom, scale }),
            linear,
        }
    }

    /// Linear or kernel.
    pub fn kind(&self) -> HeadKind {
        match self.map {
            None => HeadKind::Linear,
            Some(_) => HeadKind::Kernel,
        }
    }

    /// What the linear part reads for extractor features `features` `[N, D]`: the
    /// features themselves, or s·φ(features).
    pub fn inputs<'a>(&self, features: ArrayView2<'a, f32>) -> CowArray<'a, f32, Ix2> {
        match &self.map {
            None => features.into(),
            Some(map) => {
                let scale = map.scale;
                map.nystrom.transform(features).mapv_into(|v| v * scale).into()
            }
        }
    }

    /// Class scores `[N, k]` for extractor features `[N, D]`.
    pub fn decision(&self, features: ArrayView2<f32>) -> Array2<f32> {
        self.linear.decision(self.inputs(features).view())
    }

    /// The predicted class of each row of `features` (ties to the lowest class).
    pub fn predict(&self, features: ArrayView2<f32>) -> Vec<usize> {
        self.linear.predict(self.inputs(features).view())
    }

    /// The same map with another linear part (a repaired one).
    pub fn with_linear(&self, linear: LinearSvm) -> Self {
        Self {
            map: self.map.clone(),
            linear,
        }
    }
}

/// The unit in which a kernel head reads its Nyström features: the power of two
/// nearest √r for r features. φ·φ ≈ k(x, x) = 1, so φ's components are of order 1/√r;
/// the repair LPs price a unit of weight change like a unit of slack, and on features
/// that small every change costs more than the slack it saves (nothing would be
/// repaired). The graph computes s·φ with P·s and the Gemm holds W/s: a power of two
/// scales f32 values exactly, so the scores are bit for bit those of W on φ.
pub fn export_scale(r: usize) -> f32 {
    let exponent = (r.max(1) as f64).sqrt().log2().round();
    // r ≤ usize::MAX keeps the exponent below 33.
    2f32.powi(exponent as i32)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use ndarray::{array, Array1};

    use super::*;
    use crate::svm::NystromSettings;

    #[test]
    fn a_kernel_head_scores_exactly_as_w_on_phi() {
        let x = array![[0.1f32, 0.9, 0.3], [0.7, 0.2, 0.5], [0.4, 0.4, 0.8], [0.9, 0.1, 0.0]];
        let nystrom = Nystrom::fit(x.view(), &NystromSettings::default()).unwrap();
        let r = nystrom.dim();
        let svm = LinearSvm {
            weights: Array2::from_shape_fn((2, r), |(i, j)| 0.3 * i as f32 - 0.7 * j as f32 + 0.11),
            bias: Array1::from(vec![0.25f32, -0.5]),
        };
        let want = svm.decision(nystrom.transform(x.view()).view());
        let head = Head::kernel(nystrom, svm);
        assert_eq!(head.kind(), HeadKind::Kernel);
        assert_eq!(head.decision(x.view()), want);
    }

    #[test]
    fn export_scale_is_the_power_of_two_nearest_the_root() {
        assert_eq!(export_scale(1), 1.0);
        assert_eq!(export_scale(1000), 32.0);
        assert_eq!(export_scale(100), 8.0);
    }
}
