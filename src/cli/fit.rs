//! `nnmend fit MODEL --train DATA -o HYBRID.onnx [--head linear|kernel]`: fits the
//! linear SVM head on the extractor's features (LH), or on their Nyström RBF features
//! (KH, `--head kernel`), and writes the hybrid.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

use nnmend::data::{Dataset, Split};
use nnmend::doc::FitDoc;
use nnmend::head::HeadKind;
use nnmend::hybrid::{evaluate, fit as fit_hybrid, fit_validated, FitSettings};
use nnmend::svm::{CSearch, Loss, NystromSettings, SolverChoice, SvmParams, Tuning};

use super::{load_model, positive, print_doc, save_model, usage, warn, warn_cut, DataArgs, EngineArgs, Global};

/// C as the command line gives it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CArg {
    /// This C.
    Value(f64),
    /// Chosen on a validation split.
    Auto,
}

fn parse_c(s: &str) -> Result<CArg, String> {
    if s.trim().eq_ignore_ascii_case("auto") {
        return Ok(CArg::Auto);
    }
    match s.trim().parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(CArg::Value(v)),
        _ => Err(format!(
            "--c must be a positive number, got {s} (or 'auto' to choose C on a validation split)"
        )),
    }
}

/// Parses one candidate of --c-grid.
fn grid_value(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("every C of --c-grid must be a positive number, got {s}")),
    }
}

/// Parses the held-out share, in (0, 1).
fn holdout(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v > 0.0 && v < 1.0 => Ok(v),
        _ => Err(format!(
            "--holdout must be a share between 0 and 1 (exclusive), got {s}"
        )),
    }
}

/// The SVM options `fit` and `run` share: C or its choice, standardisation, solver.
#[derive(Debug, Args)]
pub struct SvmArgs {
    /// SVM regularisation constant C > 0, or `auto`: chosen over --c-grid on a
    /// validation split of the training images, then refitted on all of them (or, with
    /// --validation, on images given apart).
    #[arg(long, value_name = "C|auto", default_value = "1", value_parser = parse_c)]
    c: CArg,
    /// With --c auto: the candidates, comma-separated [default: 0.001,0.01,0.1,1,10].
    #[arg(long, value_name = "C1,C2,…", value_delimiter = ',', value_parser = grid_value)]
    c_grid: Option<Vec<f64>>,
    /// With --c auto: the share of each class held out for validation [default: 0.2].
    #[arg(long, value_name = "F", value_parser = holdout)]
    holdout: Option<f64>,
    /// With --c auto: score the candidates on these images (held out of the network's
    /// training, say) instead of on a share of the training images; each candidate is
    /// fitted on all the training images and the chosen one is the head.
    #[arg(long, value_name = "DATA")]
    pub validation: Option<PathBuf>,
    /// Standardise what the SVM reads (mean 0, variance 1 per feature over the
    /// training images); folded into the written Gemm, so the hybrid reads the
    /// features as they are.
    #[arg(long)]
    scale: bool,
    /// The SVM solver.
    #[arg(long, value_enum, default_value_t = SolverChoice::Auto)]
    solver: SolverChoice,
}

impl SvmArgs {
    /// C for the SVM's parameters (with `auto`, a placeholder the search replaces).
    pub fn c(&self) -> f64 {
        match self.c {
            CArg::Value(c) => c,
            CArg::Auto => 1.0,
        }
    }

    /// The solver asked for.
    pub fn solver(&self) -> SolverChoice {
        self.solver
    }

    /// The images of `--validation`, when given.
    pub fn load_validation(&self, data: &DataArgs) -> Result<Option<Dataset>> {
        self.validation
            .as_deref()
            .map(|p| data.load(p, Split::Train))
            .transpose()
    }

    /// The search for C and the standardisation; refuses search options without
    /// `--c auto`, and `--validation` with `--holdout`.
    pub fn tuning(&self) -> Result<Tuning> {
        let search = match self.c {
            CArg::Auto => {
                let default = CSearch::default();
                Some(CSearch {
                    grid: self.c_grid.clone().unwrap_or(default.grid),
                    holdout: self.holdout.unwrap_or(default.holdout),
                })
            }
            CArg::Value(_) => {
                if self.c_grid.is_some() || self.holdout.is_some() {
                    usage!("--c-grid and --holdout shape the search for C: use them with --c auto");
                }
                None
            }
        };
        if self.validation.is_some() {
            if search.is_none() {
                usage!("--validation scores the candidates of the search for C: use it with --c auto");
            }
            if self.holdout.is_some() {
                usage!("--validation replaces the held-out share of the training images: drop --holdout");
            }
        }
        Ok(Tuning {
            search,
            scale: self.scale,
        })
    }
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
    #[command(flatten)]
    svm: SvmArgs,
    /// SVM loss.
    #[arg(long, value_enum, default_value_t = Loss::SquaredHinge)]
    loss: Loss,
    /// Stopping tolerance ε: the dual's projected-gradient spread; for the primal,
    /// ‖∇f‖ ≤ ε · max(min(#pos, #neg), 1) / n · ‖∇f(0)‖ (as LinearSVC's tol).
    #[arg(long, default_value_t = 1e-4)]
    tol: f64,
    /// Most passes over the data (dual) or Newton iterations (primal) per class.
    #[arg(long, default_value_t = 1000)]
    max_iter: usize,
    /// Seed of the solver's sample order (and of the landmark draw with --head kernel).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The head: a linear SVM on the features, or on their RBF-kernel Nyström features.
    #[arg(long, value_enum, default_value_t = HeadKind::Linear)]
    head: HeadKind,
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
    if args.svm.solver == SolverChoice::Primal && args.loss == Loss::Hinge {
        usage!("--solver primal needs --loss squared-hinge: the hinge loss is solved in the dual");
    }
    let tuning = args.svm.tuning()?;
    if args.head == HeadKind::Linear && (args.landmarks.is_some() || args.gamma.is_some()) {
        usage!("--landmarks and --gamma shape the kernel head: use them with --head kernel");
    }
    let mut inputs = vec![args.model.as_path(), args.train.as_path()];
    inputs.extend(args.test.as_deref());
    inputs.extend(args.svm.validation.as_deref());
    g.refuse_overwrite(&args.output, &inputs)?;
    let model = load_model(&args.model)?;
    let train = args.data.load(&args.train, Split::Train)?;
    let test = args.data.load_test(args.test.as_deref())?;
    let validation = args.svm.load_validation(&args.data)?;
    let (engine, feed) = args.engine.open(&args.data)?;
    let kernel = (args.head == HeadKind::Kernel).then(|| NystromSettings {
        landmarks: args.landmarks.map_or(NystromSettings::default().landmarks, |m| {
            usize::try_from(m).unwrap_or(usize::MAX)
        }),
        gamma: args.gamma,
        seed: args.seed,
    });
    let settings = FitSettings {
        at: args.at.clone(),
        svm: SvmParams {
            c: args.svm.c(),
            loss: args.loss,
            tol: args.tol,
            max_iter: args.max_iter,
            seed: args.seed,
            solver: args.svm.solver(),
            threads: None,
        },
        tuning,
        feed: feed.clone(),
        kernel: kernel.clone(),
    };
    let fitted = match &validation {
        Some(v) => fit_validated(&model, &train, v, engine.as_ref(), &settings),
        None => fit_hybrid(&model, &train, engine.as_ref(), &settings),
    }
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
        warn_cut(w);
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
    if let Some(worst) = r.worst_violation().filter(|_| !r.converged()) {
        let advice = if worst.solver == nnmend::svm::Solver::Dual && args.loss != Loss::Hinge {
            "raise --max-iter, try --solver primal, or lower --c"
        } else {
            "raise --max-iter, or lower --c"
        };
        warn(&format!(
            "the SVM's {} solver stopped at --max-iter {} before reaching --tol {} (class {}: {} {:.3e} against \
             {:.3e}); the head is usable but not optimal: {advice} for features that are far from linearly separable",
            worst.solver.name(),
            args.max_iter,
            args.tol,
            worst.class,
            worst.solver.measure().replace('_', " "),
            worst.violation,
            worst.threshold,
        ));
    }
    let test_acc = match &test {
        Some(ds) => Some(evaluate(&fitted.model, ds, engine.as_ref(), &feed)?.0),
        None => None,
    };
    save_model(&fitted.model, &args.output)?;
    let doc = FitDoc::new(&fitted, &settings, args.output, test_acc, engine.describe());
    print_doc(&doc, args.json, |d, out| d.write_text(out))?;
    Ok(ExitCode::SUCCESS)
}
