//! `nnmend run MODEL --train DATA --test DATA --eps E1,E2,… --out DIR`: the seed
//! paper's whole experiment (fit LH, attack, repair, evaluate every model on every
//! test set at every ε), with its report, figures and repaired models written to DIR.
//!
//! DIR appears whole or not at all: everything is written into a temporary folder
//! beside it (removed on failure or Ctrl-C), which is renamed to DIR at the end.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

use nnmend::attack::{self, Loss, Method};
use nnmend::data::Split;
use nnmend::experiment::{self, Outcome, Settings};
use nnmend::hybrid::FitSettings;
use nnmend::repair::{ClassSettings, HybridSettings, MarginOptions};
use nnmend::report::plot::{self, Cell, Chart, Series};
use nnmend::report::run::model_file;
use nnmend::svm::{NystromSettings, SvmParams};

use super::attack::unit_interval;
use super::repair::Mode;
use super::{load_model, print_json, usage, warn, DataArgs, EngineArgs, Global};

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
    /// The repair's formulation.
    #[arg(long, value_enum, default_value_t = Mode::Paper)]
    mode: Mode,
    /// Margin mode: training images kept right by the repair.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    preserve: usize,
    /// Let the repair change the bias too.
    #[arg(long)]
    repair_bias: bool,
    /// KH's Nyström landmarks (training images whose features span its kernel map).
    #[arg(long, value_name = "M", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    landmarks: u64,
    /// KH's RBF width γ [default: scikit-learn's "scale", 1 / (D · Var(features))].
    #[arg(long, value_name = "G", value_parser = super::positive)]
    gamma: Option<f32>,
    /// Leave the kernel hybrid (KH) out.
    #[arg(long, conflicts_with_all = ["landmarks", "gamma"])]
    no_kernel: bool,
    /// SVM regularisation constant C.
    #[arg(long, default_value_t = 1.0)]
    c: f64,
    /// Seed of everything random (attack starts, the choice of repair samples, the SVM's order).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Use only the first N training images [default: --limit].
    #[arg(long, value_name = "N")]
    train_limit: Option<usize>,
    /// Use only the first N test images [default: --limit].
    #[arg(long, value_name = "N")]
    test_limit: Option<usize>,
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

/// Refuses an output folder that exists (without `force`) or that holds an input.
fn check_out(out: &Path, inputs: &[&Path], force: bool) -> Result<()> {
    if out.exists() {
        if !force {
            usage!(
                "{}: already exists; choose another --out, or pass --force to replace it",
                out.display()
            );
        }
        if !out.is_dir() {
            usage!("{}: exists and is not a folder", out.display());
        }
        let root = std::fs::canonicalize(out).with_context(|| format!("{}", out.display()))?;
        for input in inputs {
            if let Ok(p) = std::fs::canonicalize(input) {
                if p.starts_with(&root) {
                    usage!(
                        "{}: --force would delete the input {} inside it",
                        out.display(),
                        input.display()
                    );
                }
            }
        }
    }
    Ok(())
}

/// Writes every output into a temporary folder beside `out`, then renames it to `out`.
fn write_outputs(outcome: &Outcome, args: &RunArgs) -> Result<()> {
    let parent = args
        .out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let tmp = nnmend::atomic::TempFolder::new_in(parent)
        .with_context(|| format!("creating a temporary folder in {}", parent.display()))?;
    let dir = tmp.path();
    std::fs::create_dir(dir.join("models")).with_context(|| format!("creating {}/models", dir.display()))?;
    nnmend::onnx::save(&outcome.lh, &dir.join("models/LH.onnx"))?;
    if let Some(kh) = &outcome.kh {
        nnmend::onnx::save(kh, &dir.join("models/KH.onnx"))?;
    }
    let figures = write_figures(outcome, dir)?;
    for r in &outcome.repaired {
        nnmend::onnx::save(&r.model, &dir.join(model_file(r.eps)))?;
    }
    let mut doc = serde_json::to_value(&outcome.report)?;
    if let Some(map) = doc.as_object_mut() {
        map.insert("model".into(), serde_json::json!(args.model));
        map.insert("engine".into(), args.engine.describe());
    }
    let json = serde_json::to_string_pretty(&doc)?;
    std::fs::write(dir.join("report.json"), format!("{json}\n")).context("writing report.json")?;
    let title = format!(
        "nnmend run: {}",
        args.model.file_name().map_or("model".into(), |n| n.to_string_lossy())
    );
    let md = outcome.report.markdown(&title, &figures);
    std::fs::write(dir.join("report.md"), md).context("writing report.md")?;

    // The folder is complete: swap it in.
    let old = if args.out.exists() {
        let old = tempfile::Builder::new()
            .prefix(".nnmend-old-")
            .tempdir_in(parent)
            .with_context(|| format!("creating a temporary folder in {}", parent.display()))?;
        let aside = old.path().join("old");
        std::fs::rename(&args.out, &aside).with_context(|| format!("moving the old {} aside", args.out.display()))?;
        Some((old, aside))
    } else {
        None
    };
    if let Err(e) = tmp.persist(&args.out) {
        if let Some((_, aside)) = &old {
            let _ = std::fs::rename(aside, &args.out);
        }
        return Err(e).with_context(|| format!("renaming the results to {}", args.out.display()));
    }
    // Dropping the holder deletes the old folder.
    drop(old);
    Ok(())
}

/// ε as the decimal the user typed (0.05, not 0.0500000007…, f32's nearest value).
fn decimal(e: f32) -> f64 {
    e.to_string().parse().unwrap_or(f64::from(e))
}

/// What each test set is, for the figures' titles.
fn describe(set: &str) -> &'static str {
    match set {
        "Data" => "the clean test images",
        "NADV" => "test images flipped by the attack on NN replaced",
        "HADV" => "test images flipped by the attack on LH replaced",
        _ => "test images flipped by the attack on RLH replaced",
    }
}

/// Draws the accuracy charts (one per test set, a line per model) and the example
/// grid into `dir`; returns their (caption, file) pairs for report.md.
fn write_figures(outcome: &Outcome, dir: &Path) -> Result<Vec<(String, String)>> {
    let report = &outcome.report;
    let eps = report.eps();
    let mut figures = Vec::new();
    for set in experiment::TEST_SETS {
        let series = report
            .models()
            .into_iter()
            .map(|m| Series {
                label: m.to_string(),
                points: eps
                    .iter()
                    .map(|&e| (decimal(e), report.accuracy(m, set, e).unwrap_or(f64::NAN)))
                    .collect(),
            })
            .collect();
        let chart = Chart {
            title: format!("Accuracy on {set} ({})", describe(set)),
            x_label: "ε (L∞ radius, pixels in [0, 1])".into(),
            y_label: "Accuracy".into(),
            x_ticks: eps.iter().map(|&e| decimal(e)).collect(),
            series,
            y_range: (0.0, 1.0),
        };
        let name = format!("accuracy_{set}");
        plot::write_chart(
            &chart,
            &dir.join(format!("{name}.svg")),
            &dir.join(format!("{name}.png")),
        )?;
        figures.push((chart.title, format!("{name}.png")));
    }
    if !outcome.examples.is_empty() {
        let mut headers = vec!["clean".to_string()];
        headers.extend(eps.iter().map(|e| format!("ε = {e}")));
        let rows: Vec<Vec<Cell>> = outcome
            .examples
            .iter()
            .map(|ex| {
                ex.images
                    .iter()
                    .zip(&ex.predicted)
                    .map(|(image, &p)| Cell {
                        image: image.clone(),
                        caption: format!("{} → {p}", ex.label),
                        wrong: p as i64 != ex.label,
                    })
                    .collect()
            })
            .collect();
        plot::write_grid(&headers, &rows, &dir.join("examples.png"))?;
        figures.push((
            "Test images and NN's adversarial examples at each ε (caption: label → NN's prediction; red: wrong)"
                .to_string(),
            "examples.png".to_string(),
        ));
    }
    Ok(figures)
}

/// Runs `nnmend run`.
pub fn run(args: RunArgs, g: &Global) -> Result<ExitCode> {
    check_out(&args.out, &[&args.model, &args.train, &args.test], g.force)?;
    let model = load_model(&args.model)?;
    let mut train = args.data_args.load(&args.train, Split::Train)?;
    let mut test = args.data_args.load(&args.test, Split::Test)?;
    if let Some(n) = args.train_limit {
        train = train.take(n);
    }
    if let Some(n) = args.test_limit {
        test = test.take(n);
    }
    let engine = args.engine.engine()?;
    let feed = args.data_args.feed(&args.engine);
    let settings = Settings {
        eps: args.eps.clone(),
        attack: attack::Settings {
            method: args.attack,
            steps: args.steps as usize,
            step_ratio: 2.5 / args.steps as f32,
            random_start: args.random_start,
            seed: args.seed,
            feed: feed.clone(),
            ..Default::default()
        },
        loss: args.loss,
        fit: FitSettings {
            at: None,
            svm: SvmParams {
                c: args.c,
                seed: args.seed,
                ..Default::default()
            },
            feed: feed.clone(),
        },
        kernel: (!args.no_kernel).then(|| NystromSettings {
            landmarks: usize::try_from(args.landmarks).unwrap_or(usize::MAX),
            gamma: args.gamma,
            seed: args.seed,
        }),
        repair_samples: usize::try_from(args.repair_samples).unwrap_or(usize::MAX),
        repair: HybridSettings {
            margin: matches!(args.mode, Mode::Margin).then(MarginOptions::default),
            select: None,
            class: ClassSettings {
                repair_bias: args.repair_bias,
                ..Default::default()
            },
            threads: feed.threads,
            preserve: args.preserve,
        },
        seed: args.seed,
        examples: args.examples,
        log: !args.quiet,
    };
    let outcome = experiment::run(&model, &train, &test, engine.as_ref(), &settings)
        .with_context(|| format!("running the experiment on {}", args.model.display()))?;
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
    write_outputs(&outcome, &args)?;
    if args.json {
        let mut doc = serde_json::to_value(&outcome.report)?;
        if let Some(map) = doc.as_object_mut() {
            map.insert("out".into(), serde_json::json!(args.out));
        }
        print_json(&doc)?;
    } else {
        let mut out = std::io::stdout().lock();
        let report = &outcome.report;
        writeln!(out, "eps      NN/Data  LH/Data  RLH/Data NN/NADV  LH/HADV  RLH/RHADV")?;
        for e in report.eps() {
            let a = |m: &str, s: &str| report.accuracy(m, s, e).map_or(f64::NAN, |v| 100.0 * v);
            writeln!(
                out,
                "{:<8} {:<8.2} {:<8.2} {:<8.2} {:<8.2} {:<8.2} {:.2}",
                e,
                a("NN", "Data"),
                a("LH", "Data"),
                a("RLH", "Data"),
                a("NN", "NADV"),
                a("LH", "HADV"),
                a("RLH", "RHADV")
            )?;
        }
        writeln!(out, "wrote {}", args.out.display())?;
    }
    Ok(ExitCode::SUCCESS)
}
