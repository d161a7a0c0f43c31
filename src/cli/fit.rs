//! `nnmend fit MODEL --train DATA -o HYBRID.onnx`: fits the linear SVM head on the
//! extractor's features and writes the hybrid.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use serde_json::json;

use nnmend::data::Split;
use nnmend::hybrid::{evaluate, fit as fit_hybrid, FitSettings};
use nnmend::svm::{Loss, SvmParams};

use super::{load_model, print_json, save_model, warn, DataArgs, EngineArgs, Global};

/// The SVM's loss.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum LossArg {
    /// max(0, 1 − y·f)², as LIBLINEAR's and scikit-learn's default.
    SquaredHinge,
    /// max(0, 1 − y·f).
    Hinge,
}

/// Arguments of `nnmend fit`.
#[derive(Debug, Args)]
pub struct FitArgs {
    /// The ONNX classifier to cut.
    model: PathBuf,
    /// Training data (IDX folder, CIFAR binary folder, image folder or .npz).
    #[arg(long, value_name = "DATA")]
    train: PathBuf,
    /// Also report the hybrid's accuracy on this data set.
    #[arg(long, value_name = "DATA")]
    test: Option<PathBuf>,
    /// Where to write the hybrid model.
    #[arg(short, long, value_name = "HYBRID.onnx")]
    output: PathBuf,
    /// Cut at this tensor instead of the last pooling output.
    #[arg(long, value_name = "TENSOR")]
    at: Option<String>,
    /// SVM regularisation constant C.
    #[arg(long, default_value_t = 1.0)]
    c: f64,
    /// SVM loss.
    #[arg(long, value_enum, default_value_t = LossArg::SquaredHinge)]
    loss: LossArg,
    /// Stopping tolerance on the dual's projected-gradient violation.
    #[arg(long, default_value_t = 1e-4)]
    tol: f64,
    /// Most passes over the data per class.
    #[arg(long, default_value_t = 1000)]
    max_iter: usize,
    /// Seed of the solver's sample order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print one JSON document instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    engine: EngineArgs,
}

/// Runs `nnmend fit`.
pub fn fit(args: FitArgs, g: &Global) -> Result<ExitCode> {
    if args.c <= 0.0 || !args.c.is_finite() {
        super::usage!("--c must be a positive number, got {}", args.c);
    }
    let mut inputs = vec![args.model.as_path(), args.train.as_path()];
    inputs.extend(args.test.as_deref());
    g.refuse_overwrite(&args.output, &inputs)?;
    let model = load_model(&args.model)?;
    let train = args.data.load(&args.train, Split::Train)?;
    let test = args.test.as_ref().map(|t| args.data.load(t, Split::Test)).transpose()?;
    let engine = args.engine.engine()?;
    let feed = args.data.feed(&args.engine);
    let settings = FitSettings {
        at: args.at.clone(),
        svm: SvmParams {
            c: args.c,
            loss: match args.loss {
                LossArg::SquaredHinge => Loss::SquaredHinge,
                LossArg::Hinge => Loss::Hinge,
            },
            tol: args.tol,
            max_iter: args.max_iter,
            seed: args.seed,
        },
        feed: feed.clone(),
    };
    let outcome = fit_hybrid(&model, &train, engine.as_ref(), &settings)
        .with_context(|| format!("fitting a hybrid of {}", args.model.display()))?;
    if let Some(w) = &outcome.cut.warning {
        warn(w);
    }
    if !outcome.missing_classes.is_empty() {
        warn(&format!(
            "{}: no training image of class(es) {:?}; the hybrid will never predict them (with an image \
             folder, --limit N keeps the first classes only)",
            args.train.display(),
            outcome.missing_classes
        ));
    }
    if !outcome.report.converged() {
        warn(&format!(
            "the SVM solver stopped at --max-iter {} before reaching --tol {} (largest violation left: {:.3e}); \
             the head is usable but not optimal: raise --max-iter, or lower --c for features that are far from \
             linearly separable",
            args.max_iter,
            args.tol,
            outcome.report.classes.iter().map(|c| c.violation).fold(0.0, f64::max)
        ));
    }
    let test_acc = match &test {
        Some(ds) => Some(evaluate(&outcome.model, ds, engine.as_ref(), &feed)?.0),
        None => None,
    };
    save_model(&outcome.model, &args.output)?;
    let r = &outcome.report;
    if args.json {
        print_json(&json!({
            "engine": args.engine.describe(),
            "output": args.output,
            "cut": {"tensor": outcome.cut.tensor, "node": outcome.cut.node, "op": outcome.cut.op,
                    "fallback": outcome.cut.fallback(), "feature_dim": outcome.feature_dim},
            "n_train": outcome.n_train,
            "train_accuracy": outcome.train_accuracy,
            "test": test_acc,
            "extract_seconds": outcome.extract_seconds,
            "svm": {
                "c": args.c,
                "loss": format!("{:?}", args.loss),
                "objective": r.objective(),
                "converged": r.converged(),
                "max_gap": r.max_gap(),
                "seconds": r.seconds,
                "classes": r.classes.iter().map(|c| json!({
                    "class": c.class, "iterations": c.iterations, "converged": c.converged,
                    "violation": c.violation, "primal": c.primal, "dual": c.dual,
                    "support_vectors": c.support_vectors,
                })).collect::<Vec<_>>(),
            },
        }))?;
    } else {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "cut at {} ({}), D = {}",
            outcome.cut.tensor, outcome.cut.op, outcome.feature_dim
        )?;
        writeln!(
            out,
            "features of {} images in {:.2} s; SVM (C = {}) fitted in {:.2} s, objective {:.6}, {}",
            outcome.n_train,
            outcome.extract_seconds,
            args.c,
            r.seconds,
            r.objective(),
            if r.converged() { "converged" } else { "NOT converged" }
        )?;
        writeln!(out, "train accuracy {:.4}", outcome.train_accuracy)?;
        if let Some(t) = &test_acc {
            writeln!(out, "test accuracy  {:.4} ({}/{})", t.accuracy, t.correct, t.n)?;
        }
        writeln!(out, "wrote {}", args.output.display())?;
    }
    Ok(ExitCode::SUCCESS)
}
