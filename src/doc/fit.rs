//! `fit --json`.

use std::path::PathBuf;

use serde::Serialize;

use crate::features::Accuracy;
use crate::head::HeadKind;
use crate::hybrid::{FitSettings, Fitted};
use crate::onnx::Cut;

/// The kernel head's Nyström map.
#[derive(Debug, Clone, Serialize)]
pub struct KernelDoc {
    /// `rbf`.
    pub kernel: &'static str,
    /// Landmarks used.
    pub landmarks: usize,
    /// The RBF width γ.
    pub gamma: f32,
    /// Nyström features.
    pub dim: usize,
    /// The landmark draw's seed.
    pub seed: u64,
    /// Seconds of the map's fit.
    pub map_seconds: f64,
}

/// Where the model was cut.
#[derive(Debug, Clone, Serialize)]
pub struct CutDoc {
    /// The tensor the extractor ends at.
    pub tensor: String,
    /// The node computing it.
    pub node: String,
    /// That node's op.
    pub op: String,
    /// Whether the cut fell back from the last pooling layer.
    pub fallback: bool,
    /// The rule that chose the cut.
    pub rule: crate::onnx::cut::CutRule,
    /// Features D.
    pub feature_dim: usize,
}

impl CutDoc {
    fn new(cut: &Cut, feature_dim: usize) -> Self {
        Self {
            tensor: cut.tensor.clone(),
            node: cut.node.clone(),
            op: cut.op.clone(),
            fallback: cut.fallback(),
            rule: cut.rule,
            feature_dim,
        }
    }
}

/// One class of the SVM.
#[derive(Debug, Clone, Serialize)]
pub struct SvmClassDoc {
    /// The class.
    pub class: usize,
    /// Passes over the data.
    pub iterations: usize,
    /// Whether the stopping rule was met.
    pub converged: bool,
    /// The final projected-gradient spread.
    pub violation: f64,
    /// Primal objective.
    pub primal: f64,
    /// Dual objective.
    pub dual: f64,
    /// Samples with α > 0.
    pub support_vectors: usize,
}

/// The SVM's fit.
#[derive(Debug, Clone, Serialize)]
pub struct SvmDoc {
    /// C.
    pub c: f64,
    /// The loss.
    pub loss: String,
    /// Σ of the classes' primal objectives.
    pub objective: f64,
    /// Whether every class converged.
    pub converged: bool,
    /// The largest duality gap.
    pub max_gap: f64,
    /// Seconds.
    pub seconds: f64,
    /// Per class.
    pub classes: Vec<SvmClassDoc>,
}

/// `fit --json`.
#[derive(Debug, Clone, Serialize)]
pub struct FitDoc {
    /// The engine.
    pub engine: serde_json::Value,
    /// The hybrid written.
    pub output: PathBuf,
    /// Linear or kernel.
    pub head: HeadKind,
    /// The kernel head's map (`null` for a linear head).
    pub kernel: Option<KernelDoc>,
    /// Where the model was cut.
    pub cut: CutDoc,
    /// Training images.
    pub n_train: usize,
    /// Accuracy on them.
    pub train_accuracy: f64,
    /// Accuracy on `--test`, when given.
    pub test: Option<Accuracy>,
    /// Seconds of the extraction.
    pub extract_seconds: f64,
    /// The SVM.
    pub svm: SvmDoc,
}

impl FitDoc {
    /// The document of `fitted`, fitted with `settings`.
    pub fn new(
        fitted: &Fitted,
        settings: &FitSettings,
        output: PathBuf,
        test: Option<Accuracy>,
        engine: serde_json::Value,
    ) -> Self {
        let r = &fitted.report;
        Self {
            engine,
            output,
            head: fitted.head.kind(),
            kernel: fitted.head.map.as_ref().map(|k| KernelDoc {
                kernel: "rbf",
                landmarks: k.nystrom.landmarks(),
                gamma: k.nystrom.gamma(),
                dim: k.nystrom.dim(),
                seed: settings.kernel.as_ref().map_or(0, |s| s.seed),
                map_seconds: fitted.map_seconds,
            }),
            cut: CutDoc::new(&fitted.cut, fitted.feature_dim),
            n_train: fitted.n_train,
            train_accuracy: fitted.train_accuracy,
            test,
            extract_seconds: fitted.extract_seconds,
            svm: SvmDoc {
                c: settings.svm.c,
                loss: format!("{:?}", settings.svm.loss),
                objective: r.objective(),
                converged: r.converged(),
                max_gap: r.max_gap(),
                seconds: r.seconds,
                classes: r
                    .classes
                    .iter()
                    .map(|c| SvmClassDoc {
                        class: c.class,
                        iterations: c.iterations,
                        converged: c.converged,
                        violation: c.violation,
                        primal: c.primal,
                        dual: c.dual,
                        support_vectors: c.support_vectors,
                    })
                    .collect(),
            },
        }
    }
}
