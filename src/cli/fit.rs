//! `nnmend fit MODEL --train DATA -o HYBRID.onnx [--head linear|kernel]`: fits the
//! linear SVM head on the extractor's features (LH), or on their Nyström RBF features
//! (KH, `--head kernel`), and writes the hybrid.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};

use nnmend::data::Split;
use nnmend::doc::FitDoc;
use nnmend::hybrid::{evaluate, fit as fit_hybrid, FitSettings};
use nnmend::svm::{Loss, NystromSettings, SvmParams};

use super::{load_model, positive, print_json, save_model, usage, warn, DataArgs, EngineArgs, Global};

/// The head fitted on the features.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum HeadArg {
    /// A linear SVM on the extractor's features (the paper's LH).
    Linear,
    /// A linear SVM on the Nyström features of an RBF kernel (the paper's KH).
    Kernel,
}

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
    /// Seed of the solver's sample order (and of the landmark draw with --head kernel).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The head: a linear SVM on the features, or on their RBF-kernel Nyström features.
    #[arg(long, value_enum, default_value_t = HeadArg::Linear)]
    head: HeadArg,
    /// With --head kernel: landmarks of the Nyström map (at most the number of
    /// training images) [default: 1000].
    #[arg(long, value_name = "M", value_parser = clap::value_parser!(u64).range(1..))]
    landmarks: Option<u64>,
    /// With --head kernel: the RBF width γ > 0 [default: 1 / (D · Var(features)),
    /// scikit-learn's "scale"].
    #[arg(long, value_name = "G", value_parser = positive, allow_negative_numbers = true)]
    gamma: Option<f32>,
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
    if args.head == HeadArg::Linear && (args.landmarks.is_some() || args.gamma.is_some()) {
        usage!("--landmarks and --gamma shape the kernel head: use them with --head kernel");
    }
    let mut inputs = vec![args.model.as_path(), args.train.as_path()];
    inputs.extend(args.test.as_deref());
    g.refuse_overwrite(&args.output, &inputs)?;
    let model = load_model(&args.model)?;
    let train = args.data.load(&args.train, Split::Train)?;
    let test = args.test.as_ref().map(|t| args.data.load(t, Split::Test)).transpose()?;
    let (engine, feed) = args.engine.open(&args.data)?;
    let kernel = (args.head == HeadArg::Kernel).then(|| NystromSettings {
        landmarks: args.landmarks.map_or(NystromSettings::default().landmarks, |m| {
            usize::try_from(m).unwrap_or(usize::MAX)
        }),
        gamma: args.gamma,
        seed: args.seed,
    });
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
        kernel: kernel.clone(),
    };
    let fitted = fit_hybrid(&model, &train, engine.as_ref(), &settings)
        .with_context(|| format!("fitting a hybrid of {}", args.model.display()))?;
    if let (Some(asked), Some(map)) = (&kernel, &fitted.head.map) {
        if map.nystrom.landmarks() < asked.landmarks {
            warn(&format!(
                "{} landmarks asked for, but {} holds {} training images: all of them are landmarks",
                asked.landmarks,
                args.train.display(),
                fitted.n_train
            ));
        }
    }
    if let Some(w) = &fitted.cut.warning {
        warn(w);
    }
    if !fitted.missing_classes.is_empty() {
        warn(&format!(
            "{}: no training image of class(es) {:?}; the hybrid will never predict them (with an image \
             folder, --limit N keeps the first classes only)",
            args.train.display(),
            fitted.missing_classes
        ));
    }
    let r = &fitted.report;
    if !r.converged() {
        warn(&format!(
            "the SVM solver stopped at --max-iter {} before reaching --tol {} (largest violation left: {:.3e}); \
             the head is usable but not optimal: raise --max-iter, or lower --c for features that are far from \
             linearly separable",
            args.max_iter,
            args.tol,
            r.classes.iter().map(|c| c.violation).fold(0.0, f64::max)
        ));
    }
    let test_acc = match &test {
        Some(ds) => Some(evaluate(&fitted.model, ds, engine.as_ref(), &feed)?.0),
        None => None,
    };
    save_model(&fitted.model, &args.output)?;
    if args.json {
        print_json(&FitDoc::new(
            &fitted,
            &settings,
            args.output,
            test_acc,
            engine.describe(),
        ))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "cut at {} ({}), D = {}",
        fitted.cut.tensor, fitted.cut.op, fitted.feature_dim
    )?;
    if let Some(map) = &fitted.head.map {
        writeln!(
            out,
            "RBF kernel head: {} landmarks, gamma {}, {} Nyström features",
            map.nystrom.landmarks(),
            map.nystrom.gamma(),
            map.nystrom.dim()
        )?;
    }
    writeln!(
        out,
        "features of {} images in {:.2} s; SVM (C = {}) fitted in {:.2} s, objective {:.6}, {}",
        fitted.n_train,
        fitted.extract_seconds,
        args.c,
        r.seconds,
        r.objective(),
        if r.converged() { "converged" } else { "NOT converged" }
    )?;
    writeln!(out, "train accuracy {:.4}", fitted.train_accuracy)?;
    if let Some(t) = &test_acc {
        writeln!(out, "test accuracy  {:.4} ({}/{})", t.accuracy, t.correct, t.n)?;
    }
    writeln!(out, "wrote {}", args.output.display())?;
    Ok(ExitCode::SUCCESS)
}
