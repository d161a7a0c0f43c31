//! `nnmend run MODEL --train DATA --test DATA --eps E1,E2,… --out DIR`: the seed
//! paper's whole experiment (fit LH, attack, repair, evaluate every model on every
//! test set at every ε), with its report, figures and repaired models written to DIR.
//!
//! DIR appears whole or not at all: everything is written into a temporary folder
//! beside it (removed on failure or Ctrl-C), which is renamed to DIR at the end.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

use nnmend::attack::protocol::Protocol;
use nnmend::attack::{self, Loss, Method};
use nnmend::data::Split;
use nnmend::doc::RunDoc;
use nnmend::experiment::{self, Inputs, Robust, Settings};
use nnmend::hybrid::FitSettings;
use nnmend::report::{folder, ReportError};
use nnmend::svm::{NystromSettings, SvmParams};

use super::fit::SvmArgs;
use super::gate::{verdict, GateArgs};
use super::repair::RepairOptions;
use super::{load_model, print_doc, unit_interval, usage, warn, warn_cut, DataArgs, EngineArgs, Global};

/// Arguments of `nnmend run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The ONNX classifier (NN).
    model: PathBuf,
    /// Training data: LH is fitted on it and the repair samples are made from it.
    #[arg(long, value_name = "DATA")]
    train: PathBuf,
    /// Test data: every model is measured on it and on its adversarial versions.
    #[arg(long, value_name = "DATA")]
    test: PathBuf,
    /// Radii in [0, 1] pixel space (comma-separated).
    #[arg(long, value_name = "E1,E2,…", value_delimiter = ',', required = true, value_parser = unit_interval)]
    eps: Vec<f32>,
    /// The folder to write (it must not exist, unless --force).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// The attack.
    #[arg(long, value_enum, default_value_t = Method::Fgsm)]
    attack: Method,
    /// PGD iterations.
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u64).range(1..))]
    steps: u64,
    /// Start PGD at a uniformly random point of the ε-ball.
    #[arg(long)]
    random_start: bool,
    /// The loss the attacks follow.
    #[arg(long, value_enum, default_value_t = Loss::Ce)]
    loss: Loss,
    /// Repair samples per ε: adversarial examples of LH made from training images
    /// (1 is the paper's setting; more repair more).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    repair_samples: u64,
    #[command(flatten)]
    repair: RepairOptions,
    #[command(flatten)]
    gates: GateArgs,
    /// KH's Nyström landmarks (training images whose features span its kernel map).
    #[arg(long, value_name = "M", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    landmarks: u64,
    /// KH's RBF width γ [default: scikit-learn's "scale", 1 / (D · Var(features))].
    #[arg(long, value_name = "G", value_parser = super::positive)]
    gamma: Option<f32>,
    /// Leave the kernel hybrid (KH) out.
    #[arg(long, conflicts_with_all = ["landmarks", "gamma"])]
    no_kernel: bool,
    #[command(flatten)]
    svm: SvmArgs,
    /// Seed of everything random (attack starts, the choice of repair samples, the SVM's order).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Use only the first N training images [default: --limit].
    #[arg(long, value_name = "N")]
    train_limit: Option<usize>,
    /// Use only the first N test images [default: --limit].
    #[arg(long, value_name = "N")]
    test_limit: Option<usize>,
    /// Test images whose robust accuracy is measured for every model at every ε:
    /// PGD-40 from 3 random starts, cross-entropy and margin loss, against each model
    /// itself (0: none).
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pgd_limit: usize,
    /// Test images in the example grid.
    #[arg(long, value_name = "N", default_value_t = 6)]
    examples: usize,
    /// No phase lines on stderr.
    #[arg(long)]
    quiet: bool,
    /// Also print report.json on stdout.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    data_args: DataArgs,
    #[command(flatten)]
    engine: EngineArgs,
}

/// Runs `nnmend run`.
pub fn run(args: RunArgs, g: &Global) -> Result<ExitCode> {
    let mut inputs = vec![args.model.as_path(), args.train.as_path(), args.test.as_path()];
    inputs.extend(args.svm.validation.as_deref());
    match folder::check(&args.out, &inputs, g.force) {
        Err(e @ ReportError::Exists(_)) => usage!("{e}; choose another --out, or pass --force to replace it"),
        Err(ReportError::HoldsInput { out, input }) => usage!(
            "{}: --force would delete the input {} inside it",
            out.display(),
            input.display()
        ),
        Err(e @ ReportError::NotAFolder(_)) => usage!("{e}"),
        other => other?,
    }
    args.gates.refuse_unmeasured_robustness(args.pgd_limit)?;
    let tuning = args.svm.tuning()?;
    let model = load_model(&args.model)?;
    let validation = args.svm.load_validation(&args.data_args)?;
    let mut train = args.data_args.load(&args.train, Split::Train)?;
    let mut test = args.data_args.load(&args.test, Split::Test)?;
    if let Some(n) = args.train_limit {
        train = train.take(n);
    }
    if let Some(n) = args.test_limit {
        test = test.take(n);
    }
    let (engine, feed) = args.engine.open(&args.data_args)?;
    let settings = Settings {
        eps: args.eps.clone(),
        attack: attack::Settings {
            method: args.attack,
            steps: args.steps as usize,
            step_ratio: attack::step_ratio(args.steps as usize),
            random_start: args.random_start,
            seed: args.seed,
            feed: feed.clone(),
            ..Default::default()
        },
        loss: args.loss,
        fit: FitSettings {
            at: None,
            svm: SvmParams {
                c: args.svm.c(),
                seed: args.seed,
                solver: args.svm.solver(),
                ..Default::default()
            },
            tuning,
            feed: feed.clone(),
            kernel: None,
        },
        kernel: (!args.no_kernel).then(|| NystromSettings {
            landmarks: usize::try_from(args.landmarks).unwrap_or(usize::MAX),
            gamma: args.gamma,
            seed: args.seed,
        }),
        repair_samples: usize::try_from(args.repair_samples).unwrap_or(usize::MAX),
        repair: args.repair.settings(feed.threads, nnmend::head::HeadKind::Linear),
        rounds: args.repair.rounds(0.0, args.seed, &feed),
        protocol: (args.pgd_limit > 0).then(|| Robust {
            protocol: Protocol {
                seed: args.seed,
                ..Protocol::default()
            },
            limit: args.pgd_limit,
        }),
        seed: args.seed,
        examples: args.examples,
        log: !args.quiet,
        gates: args.gates.gates(),
    };
    let inputs = Inputs {
        model: &model,
        path: &args.model,
        train: &train,
        test: &test,
        validation: validation.as_ref(),
    };
    let outcome = experiment::run(&inputs, engine.as_ref(), &settings)
        .with_context(|| format!("running the experiment on {}", args.model.display()))?;
    if let Some(w) = &outcome.report.cut.warning {
        warn_cut(w);
    }
    for r in &outcome.report.repairs {
        match r.status {
            Some(nnmend::repair::Status::Solved) => {}
            Some(status) if r.used => warn(&format!(
                "the repair LP at ε = {} ended {status:?} (solved to reduced accuracy): RLH uses its solution",
                r.eps
            )),
            Some(status) => warn(&format!(
                "the repair LP at ε = {} ended {status:?}: RLH is LH unchanged there (more --repair-samples \
                 or --mode margin may help)",
                r.eps
            )),
            None => warn(&format!(
                "no training image could be flipped at ε = {}: RLH is LH unchanged there",
                r.eps
            )),
        }
    }
    folder::write(&outcome, &args.out)?;
    let doc = RunDoc {
        report: &outcome.report,
        out: args.out.clone(),
    };
    print_doc(&doc, args.json, |d, out| d.write_text(out))?;
    Ok(verdict(&outcome.report.gates))
}
