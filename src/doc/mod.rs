//! The `--json` documents the commands print, as types: each command prints exactly one
//! of these on stdout. The keys scripts rely on are the CLI contract
//! (`../shared/docs/ARCHITECTURE.md`); more may be added, none renamed. Accuracies and
//! rates are fractions in `[0, 1]`, times are seconds. `inspect --json` prints
//! [`crate::inspect::Inspection`].

mod certified;
mod certify;
mod fit;
mod repair;

use std::path::PathBuf;

use serde::Serialize;

use crate::attack::{EpsResult, Loss, Method};
use crate::features::Accuracy;
use crate::repair::instance::{Instance, Solved};
use crate::repair::{ClassSolution, Status};

pub use certified::CertifiedRepairDoc;
pub use certify::{CertifyDoc, MarginDoc as BoundsMarginDoc};
pub use fit::{FitDoc, KernelDoc, SvmClassDoc, SvmDoc};
pub use repair::{BeforeAfter, ChangeDoc, MarginDoc, RepairDoc};

/// One model of `eval --json`.
#[derive(Debug, Clone, Serialize)]
pub struct EvalRow {
    /// The model file.
    pub path: PathBuf,
    /// Images evaluated.
    pub n: usize,
    /// Correctly classified.
    pub correct: usize,
    /// `correct / n`.
    pub accuracy: f64,
}

impl EvalRow {
    /// The row of `path` with `accuracy`.
    pub fn new(path: PathBuf, accuracy: Accuracy) -> Self {
        Self {
            path,
            n: accuracy.n,
            correct: accuracy.correct,
            accuracy: accuracy.accuracy,
        }
    }
}

/// `eval --json`.
#[derive(Debug, Clone, Serialize)]
pub struct EvalDoc {
    /// One entry per model, in argument order.
    pub models: Vec<EvalRow>,
    /// The gate, when given.
    pub min_accuracy: Option<f64>,
    /// Whether every model passed the gate.
    pub passed: bool,
    /// The gate judged on each model, in argument order (empty without it).
    pub gates: Vec<crate::gate::Check>,
    /// The engine.
    pub engine: serde_json::Value,
}

impl EvalDoc {
    /// The text `eval` prints: one line per model.
    pub fn write_text(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        for r in &self.models {
            writeln!(out, "{:.4}  {}/{}  {}", r.accuracy, r.correct, r.n, r.path.display())?;
        }
        Ok(())
    }
}

/// `--version --json`: the build, and with `--backend`, the engine found.
#[derive(Debug, Clone, Serialize)]
pub struct VersionDoc {
    /// The build.
    #[serde(flatten)]
    pub provenance: crate::provenance::Provenance,
    /// The engine's description (`name`, `version`, `library` for ONNX Runtime).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine: Option<serde_json::Value>,
}

impl VersionDoc {
    /// The text `--version` prints: the provenance, then `NAME: VERSION (LIBRARY)` of
    /// the engine.
    pub fn write_text(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        write!(out, "{}", self.provenance.text())?;
        let Some(engine) = &self.engine else {
            return Ok(());
        };
        let field = |key: &str| engine.get(key).and_then(|v| v.as_str());
        let (name, version) = (
            field("name").unwrap_or("unknown"),
            field("version").unwrap_or("unknown"),
        );
        match field("library") {
            Some(library) => writeln!(out, "{name}: {version} ({library})"),
            None => writeln!(out, "{name}: {version}"),
        }
    }
}

/// `run --json`: the experiment's report, and the folder it was written to.
#[derive(Debug, Clone, Serialize)]
pub struct RunDoc<'a> {
    /// The report, as `report.json` holds it.
    #[serde(flatten)]
    pub report: &'a crate::experiment::Report,
    /// The output folder.
    pub out: PathBuf,
}

impl RunDoc<'_> {
    /// The text `run` prints: the report's summary, then where it was written.
    pub fn write_text(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        self.report.write_text(out)?;
        writeln!(out, "wrote {}", self.out.display())
    }
}

/// `attack --json`.
#[derive(Debug, Clone, Serialize)]
pub struct AttackDoc {
    /// The model attacked.
    pub model: PathBuf,
    /// The data attacked.
    pub data: PathBuf,
    /// The engine.
    pub engine: serde_json::Value,
    /// FGSM or PGD.
    pub method: Method,
    /// The loss followed.
    pub loss: Loss,
    /// PGD's iterations.
    pub steps: Option<usize>,
    /// PGD's step over ε.
    pub step_ratio: Option<f32>,
    /// Whether PGD started at a random point.
    pub random_start: bool,
    /// Whether PGD stops an image at its first misclassified iterate.
    pub early_stop: Option<bool>,
    /// The seed.
    pub seed: u64,
    /// One entry per ε.
    pub results: Vec<EpsResult>,
    /// Seconds of the clean pass.
    pub clean_seconds: f64,
    /// Seconds in all.
    pub seconds: f64,
    /// The attack file written, if any.
    pub output: Option<PathBuf>,
}

impl AttackDoc {
    /// The document of an attack run with `settings` following `loss` on `model`'s
    /// images in `data`, with its attack file `output` if written.
    pub fn new(
        settings: &crate::attack::Settings,
        loss: Loss,
        outcome: &crate::attack::Outcome,
        (model, data, output): (PathBuf, PathBuf, Option<PathBuf>),
        engine: serde_json::Value,
    ) -> Self {
        let pgd = settings.method == Method::Pgd;
        Self {
            model,
            data,
            engine,
            method: settings.method,
            loss,
            steps: pgd.then_some(settings.steps),
            step_ratio: pgd.then_some(settings.step_ratio),
            random_start: settings.random_start,
            early_stop: pgd.then_some(settings.early_stop),
            seed: settings.seed,
            results: outcome.results.clone(),
            clean_seconds: outcome.clean_seconds,
            seconds: outcome.seconds,
            output,
        }
    }

    /// The text `attack` prints: clean and robust accuracy, success rate and time per ε.
    pub fn write_text(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        writeln!(out, "eps      clean    robust   success  seconds")?;
        for r in &self.results {
            writeln!(
                out,
                "{:<8} {:.4}   {:.4}   {:.4}   {:.1}",
                r.eps, r.clean_accuracy, r.robust_accuracy, r.success_rate, r.seconds
            )?;
        }
        Ok(())
    }
}

/// `cut --json`: the extractor written, where the model was cut and its input.
#[derive(Debug, Clone, Serialize)]
pub struct CutDoc {
    /// The extractor file.
    pub output: PathBuf,
    /// The cut.
    pub cut: crate::inspect::CutSummary,
    /// The model's data input.
    pub input: crate::inspect::InputSummary,
}

impl CutDoc {
    /// The text `cut` prints: the file, its input and the feature size.
    pub fn write_text(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        writeln!(
            out,
            "wrote {}: {} -> features [N, {}] (cut at {})",
            self.output.display(),
            self.input.name,
            self.cut.feature_dim,
            self.cut.tensor
        )
    }
}

/// `features --json`: the features written and where the model was cut.
#[derive(Debug, Clone, Serialize)]
pub struct FeaturesDoc {
    /// The features file.
    pub output: PathBuf,
    /// Images.
    pub n: usize,
    /// Features per image.
    pub feature_dim: usize,
    /// The cut.
    pub cut: CutRef,
    /// Seconds of the extraction.
    pub seconds: f64,
    /// The engine.
    pub engine: serde_json::Value,
}

impl FeaturesDoc {
    /// The text `features` prints: the file, the matrix's size, the cut and the time.
    pub fn write_text(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        writeln!(
            out,
            "wrote {}: {} x {} features (cut at {}) in {:.2} s",
            self.output.display(),
            self.n,
            self.feature_dim,
            self.cut.tensor,
            self.seconds
        )
    }
}

/// A cut, briefly.
#[derive(Debug, Clone, Serialize)]
pub struct CutRef {
    /// The tensor the extractor ends at.
    pub tensor: String,
    /// The op that computes it.
    pub op: String,
    /// Whether the cut fell back from the last pooling layer.
    pub fallback: bool,
    /// The rule that chose the cut.
    pub rule: crate::onnx::cut::CutRule,
}

/// One class of a paper-mode LP in `lp --json` and `repair --json`.
#[derive(Debug, Clone, Serialize)]
pub struct LpClassDoc {
    /// How its solve ended.
    pub status: Status,
    /// Its optimum.
    pub objective: f64,
    /// clarabel's iterations.
    pub iterations: u32,
    /// Column-generation rounds.
    pub rounds: usize,
    /// Features in the final restricted problem.
    pub columns: usize,
    /// The certified relative gap.
    pub gap: f64,
    /// max_j (|X_jᵀ π| − 1) (`repair` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dual_violation: Option<f64>,
    /// The largest remaining slack (`repair` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub largest_slack: Option<f64>,
    /// Seconds.
    pub seconds: f64,
}

impl LpClassDoc {
    /// The figures of `c`; `detail` adds the dual violation and the largest slack.
    pub fn new(c: &ClassSolution, detail: bool) -> Self {
        Self {
            status: c.status,
            objective: c.objective,
            iterations: c.iterations,
            rounds: c.rounds,
            columns: c.columns,
            gap: c.gap,
            dual_violation: detail.then_some(c.dual_violation),
            largest_slack: detail.then(|| c.delta.iter().copied().fold(0.0, f64::max)),
            seconds: c.seconds,
        }
    }
}

/// `lp --json`.
#[derive(Debug, Clone, Serialize)]
pub struct LpDoc {
    /// `paper` or `margin`.
    pub mode: &'static str,
    /// The worst status.
    pub status: Status,
    /// The optimum.
    pub objective: f64,
    /// Seconds of the solve.
    pub seconds: f64,
    /// Rows of `x`.
    pub samples: usize,
    /// Columns of `x`.
    pub features: usize,
    /// The certified gap.
    pub gap: f64,
    /// Threads used.
    pub threads: usize,
    /// Paper mode: one entry per class.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub classes: Vec<LpClassDoc>,
    /// Margin mode: constraint-generation rounds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rounds: Option<usize>,
    /// Margin mode: clarabel's iterations.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iterations: Option<u32>,
    /// Margin mode: constraints in the final active set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active_constraints: Option<usize>,
    /// The head's classes.
    #[serde(skip)]
    pub head_classes: usize,
}

impl LpDoc {
    /// The document of `instance`, solved as `solved` in `seconds` on `threads` threads.
    pub fn new(instance: &Instance, solved: &Solved, seconds: f64, threads: usize) -> Self {
        let (samples, features) = instance.x.dim();
        let mut doc = Self {
            mode: instance.mode(),
            head_classes: instance.classes(),
            status: solved.status(),
            objective: solved.objective(),
            seconds,
            samples,
            features,
            gap: solved.gap(),
            threads,
            classes: Vec::new(),
            rounds: None,
            iterations: None,
            active_constraints: None,
        };
        match solved {
            Solved::Paper(classes) => doc.classes = classes.iter().map(|c| LpClassDoc::new(c, false)).collect(),
            Solved::Margin(m) => {
                doc.rounds = Some(m.rounds);
                doc.iterations = Some(m.iterations);
                doc.active_constraints = Some(m.active);
            }
        }
        doc
    }

    /// The text `lp` prints: status, optimum, gap, size and time on one line.
    pub fn write_text(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        writeln!(
            out,
            "{:?}: objective {:.6} (certified gap {:.1e}), {} samples x {} features x {} classes, {:.2} s",
            self.status, self.objective, self.gap, self.samples, self.features, self.head_classes, self.seconds
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The keys `doc` serialises to.
    fn keys(doc: &impl Serialize) -> Vec<String> {
        serde_json::to_value(doc)
            .unwrap()
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    }

    fn has(doc: &impl Serialize, contract: &[&str]) {
        let keys = keys(doc);
        for key in contract {
            assert!(keys.iter().any(|k| k == key), "'{key}' missing from {keys:?}");
        }
    }

    #[test]
    fn eval_and_attack_documents_keep_the_contract_keys() {
        let row = EvalRow::new("m.onnx".into(), Accuracy::of(&[1, 0], &[1, 1]));
        has(&row, &["path", "n", "correct", "accuracy"]);
        assert_eq!(serde_json::to_value(&row).unwrap()["accuracy"], 0.5);
        let eval = EvalDoc {
            models: vec![row],
            min_accuracy: None,
            passed: true,
            gates: Vec::new(),
            engine: serde_json::Value::Null,
        };
        has(&eval, &["models"]);
        let result = EpsResult {
            eps: 0.1,
            n: 4,
            clean_accuracy: 1.0,
            robust_accuracy: 0.5,
            success_rate: 0.5,
            clean_correct: 4,
            robust_correct: 2,
            successes: 2,
            seconds: 0.0,
        };
        has(
            &result,
            &["eps", "n", "clean_accuracy", "robust_accuracy", "success_rate"],
        );
        let attack = AttackDoc {
            model: "m.onnx".into(),
            data: "d".into(),
            engine: serde_json::Value::Null,
            method: Method::Fgsm,
            loss: Loss::Ce,
            steps: None,
            step_ratio: None,
            random_start: false,
            early_stop: None,
            seed: 0,
            results: vec![result],
            clean_seconds: 0.0,
            seconds: 0.0,
            output: None,
        };
        has(&attack, &["results"]);
    }

    #[test]
    fn version_and_lp_documents_keep_the_contract_keys_and_their_text() {
        let mut version = VersionDoc {
            provenance: crate::provenance::Provenance::current(),
            engine: None,
        };
        has(&version, &["version", "commit", "features", "tract"]);
        assert!(!keys(&version).contains(&"engine".to_string()));
        version.engine = Some(serde_json::json!({"name": "onnxruntime", "version": "1.2", "library": "/x.so"}));
        has(&version, &["version", "engine"]);
        let mut text = Vec::new();
        version.write_text(&mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.starts_with(&format!("nnmend {}\n", crate::provenance::VERSION)),
            "{text}"
        );
        assert!(text.ends_with("onnxruntime: 1.2 (/x.so)\n"), "{text}");

        // Two samples, one feature, three classes: a paper-mode LP.
        let x = ndarray::array![[1.0], [2.0]];
        let residuals = ndarray::array![[0.5, 0.0, -0.5], [1.0, 0.0, 0.0]];
        let instance = Instance::paper(x, residuals, false);
        let (solved, seconds) = instance.solve(1, Default::default()).unwrap();
        let doc = LpDoc::new(&instance, &solved, seconds, 1);
        has(
            &doc,
            &[
                "mode",
                "status",
                "objective",
                "seconds",
                "samples",
                "features",
                "gap",
                "classes",
            ],
        );
        assert!(!keys(&doc).contains(&"head_classes".to_string()));
        let mut text = Vec::new();
        doc.write_text(&mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains("2 samples x 1 features x 3 classes"), "{text}");
    }
}
