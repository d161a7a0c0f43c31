//! `fit --json`.

use std::io::Write;
use std::path::PathBuf;

use serde::Serialize;

use crate::features::Accuracy;
use crate::head::HeadKind;
use crate::hybrid::{FitSettings, Fitted};
use crate::onnx::Cut;
use crate::svm::{FitReport, Selection, Solver, SolverChoice, SvmParams};

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
    /// The solver that produced its weights: `primal` or `dual`.
    pub solver: Solver,
    /// Iterations of that solver: passes over the data (dual), Newton iterations
    /// (primal).
    pub iterations: usize,
    /// Whether the stopping rule was met.
    pub converged: bool,
    /// What `violation` measures: `projected_gradient_spread` (dual) or
    /// `relative_gradient_norm` (primal, ‖∇f‖ / ‖∇f(0)‖).
    pub measure: &'static str,
    /// The stopping measure at the returned weights.
    pub violation: f64,
    /// What `violation` is compared with.
    pub threshold: f64,
    /// Primal objective.
    pub primal: f64,
    /// Dual objective (for the primal solver, at the dual point its weights map to).
    pub dual: f64,
    /// The duality gap, `primal - dual`.
    pub gap: f64,
    /// Samples with α > 0.
    pub support_vectors: usize,
    /// Conjugate-gradient iterations of the primal solver.
    pub cg_iterations: usize,
    /// Dual passes before the automatic choice handed over to the primal (`null`
    /// when one solver ran alone).
    pub switched_after: Option<usize>,
}

/// The SVM's fit.
#[derive(Debug, Clone, Serialize)]
pub struct SvmDoc {
    /// C of the written head (the chosen one with `--c auto`).
    pub c: f64,
    /// The loss.
    pub loss: String,
    /// The solver asked for: `auto`, `primal` or `dual`.
    pub solver_choice: &'static str,
    /// The solver that ran: `primal`, `dual`, or `mixed` when the automatic choice
    /// handed some classes over to the primal.
    pub solver: &'static str,
    /// Σ of the classes' primal objectives.
    pub objective: f64,
    /// Whether every class converged.
    pub converged: bool,
    /// The largest duality gap.
    pub max_gap: f64,
    /// The largest relative gradient norm ‖∇f‖ / ‖∇f(0)‖ over the classes the primal
    /// solved (`null` when none).
    pub max_relative_gradient: Option<f64>,
    /// Whether the features were standardised (folded into the written Gemm).
    pub standardised: bool,
    /// Features constant over the training set, with `standardised`.
    pub constant_features: Option<usize>,
    /// The search for C with `--c auto`: the chosen C, the split and the validation
    /// curve (`null` otherwise).
    pub c_selection: Option<Selection>,
    /// Seconds (with `--c auto`, the search included).
    pub seconds: f64,
    /// Per class.
    pub classes: Vec<SvmClassDoc>,
}

impl SvmDoc {
    /// The document of a fit with `params` that reported `r`.
    pub fn new(params: &SvmParams, r: &FitReport) -> Self {
        Self {
            c: r.c,
            loss: format!("{:?}", params.loss),
            solver_choice: match params.solver {
                SolverChoice::Auto => "auto",
                SolverChoice::Primal => "primal",
                SolverChoice::Dual => "dual",
            },
            solver: r.solver().map_or("mixed", Solver::name),
            objective: r.objective(),
            converged: r.converged(),
            max_gap: r.max_gap(),
            max_relative_gradient: r.max_relative_gradient(),
            standardised: r.scaling.is_some(),
            constant_features: r.scaling.as_ref().map(|s| s.constant_features),
            c_selection: r.selection.clone(),
            seconds: r.seconds,
            classes: r
                .classes
                .iter()
                .map(|c| SvmClassDoc {
                    class: c.class,
                    solver: c.solver,
                    iterations: c.iterations,
                    converged: c.converged,
                    measure: c.solver.measure(),
                    violation: c.violation,
                    threshold: c.threshold,
                    primal: c.primal,
                    dual: c.dual,
                    gap: c.gap(),
                    support_vectors: c.support_vectors,
                    cg_iterations: c.cg_iterations,
                    switched_after: c.switched_after,
                })
                .collect(),
        }
    }
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
            svm: SvmDoc::new(&settings.svm, r),
        }
    }

    /// The document as text.
    pub fn write_text(&self, out: &mut impl Write) -> std::io::Result<()> {
        writeln!(
            out,
            "cut at {} ({}), D = {}",
            self.cut.tensor, self.cut.op, self.cut.feature_dim
        )?;
        if let Some(k) = &self.kernel {
            writeln!(
                out,
                "RBF kernel head: {} landmarks, gamma {}, {} Nyström features",
                k.landmarks, k.gamma, k.dim
            )?;
        }
        let svm = &self.svm;
        if let Some(sel) = &svm.c_selection {
            let held = if sel.holdout.is_some() {
                "held-out"
            } else {
                "validation"
            };
            writeln!(
                out,
                "C chosen on {} {held} images ({} fitted):",
                sel.n_validation, sel.n_fit
            )?;
            for p in &sel.curve {
                let mark = if p.c == sel.chosen { "  <- chosen" } else { "" };
                writeln!(
                    out,
                    "  C = {:<8} validation accuracy {:.4}{mark}",
                    p.c, p.validation_accuracy
                )?;
            }
        }
        writeln!(
            out,
            "features of {} images in {:.2} s; SVM (C = {}{}, {} solver) fitted in {:.2} s, objective {:.6}, {}",
            self.n_train,
            self.extract_seconds,
            svm.c,
            if svm.standardised { ", standardised" } else { "" },
            if svm.solver == "mixed" {
                "primal and dual"
            } else {
                svm.solver
            },
            svm.seconds,
            svm.objective,
            if svm.converged { "converged" } else { "NOT converged" }
        )?;
        writeln!(out, "train accuracy {:.4}", self.train_accuracy)?;
        if let Some(t) = &self.test {
            writeln!(out, "test accuracy  {:.4} ({}/{})", t.accuracy, t.correct, t.n)?;
        }
        writeln!(out, "wrote {}", self.output.display())
    }
}
