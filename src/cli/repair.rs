//! `nnmend repair HYBRID --adv ADV.npz --train DATA -o REPAIRED.onnx`: repair a hybrid's
//! linear head so that its adversarial examples get their clean decision values back,
//! changing the weights as little as possible (the seed paper's LP, solved with
//! clarabel), and write the repaired drop-in model. Linear (LH) and kernel (KH)
//! hybrids alike: the LP acts on whatever the head Gemm reads.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use serde_json::json;

use nnmend::data::{self, Dataset, Split};
use nnmend::hybrid::evaluate;
use nnmend::repair::head::{self, HeadKind};
use nnmend::repair::margin::MarginSettings;
use nnmend::repair::{repair_hybrid, ClassSettings, HybridSettings, Instance, MarginOptions, Status};

use super::{load_model, print_json, save_model, usage, warn, DataArgs, EngineArgs, Global};

/// Which hybrid the repair expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum HeadArg {
    /// Whatever the model is: a Gemm reading `features` (linear) or a Nyström map (kernel).
    Auto,
    /// A linear hybrid (`fit --head linear`).
    Linear,
    /// A kernel hybrid (`fit --head kernel`).
    Kernel,
}

/// The repair formulation.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(super) enum Mode {
    /// The seed paper's: adversarial decision values pulled back to the clean ones.
    Paper,
    /// Every repair sample classified right with `--margin`, while a preservation
    /// set of clean training images stays right (classes coupled).
    Margin,
}

/// Feature selection.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Select {
    /// Only features whose clean and adversarial values differ by a Wilcoxon
    /// signed-rank test (p below `--p`) change.
    Wilcoxon,
}

fn non_negative(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|_| format!("'{s}' is not a number"))?;
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(format!("{v} is not a finite number ≥ 0"))
    }
}

/// Arguments of `nnmend repair`.
#[derive(Debug, Args)]
pub struct RepairArgs {
    /// The hybrid to repair (written by `nnmend fit`).
    hybrid: PathBuf,
    /// The repair samples: an `attack -o` file; its successful rows are used.
    #[arg(long, value_name = "ADV.npz")]
    adv: PathBuf,
    /// The data the attack ran on (its `index` column points into it).
    #[arg(long, value_name = "DATA")]
    train: PathBuf,
    /// Where to write the repaired model.
    #[arg(short, long, value_name = "REPAIRED.onnx")]
    output: PathBuf,
    /// The formulation.
    #[arg(long, value_enum, default_value_t = Mode::Paper)]
    mode: Mode,
    /// The hybrid's head: read from the model (auto), or the kind it must be.
    #[arg(long, value_enum, default_value_t = HeadArg::Auto)]
    head: HeadArg,
    /// Use only the first N repair samples (successful rows of `--adv`).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    samples: Option<u64>,
    /// Margin mode: the margin (score of the label minus the best other) wanted for
    /// every repair sample.
    #[arg(long, default_value_t = 1.0, value_parser = non_negative, allow_negative_numbers = true)]
    margin: f64,
    /// Margin mode: price of a unit of a repair sample's shortfall.
    #[arg(long, default_value_t = 1.0, value_parser = non_negative, allow_negative_numbers = true)]
    slack_price: f64,
    /// Margin mode: price of a unit of a preservation sample's loss of margin.
    #[arg(long, default_value_t = 10.0, value_parser = non_negative, allow_negative_numbers = true)]
    keep_price: f64,
    /// Margin mode: N images of `--train`, evenly spaced through it, join the
    /// preservation set (with the repair samples' clean originals).
    #[arg(long, value_name = "N", default_value_t = 1000)]
    preserve: usize,
    /// Restrict the change to the features an attack moves.
    #[arg(long, value_enum)]
    select: Option<Select>,
    /// The p-value threshold of `--select wilcoxon`.
    #[arg(long, default_value_t = 0.1, requires = "select")]
    p: f64,
    /// Let the bias change too.
    #[arg(long)]
    repair_bias: bool,
    /// clarabel's iteration limit per LP solve; a solve that reaches it stalls, and a
    /// stalled repair writes no model.
    #[arg(long, value_name = "N", default_value_t = nnmend::repair::DEFAULT_MAX_ITER,
          value_parser = clap::value_parser!(u32).range(1..))]
    lp_max_iter: u32,
    /// Clean test data: report the accuracy change (drawdown).
    #[arg(long, value_name = "DATA")]
    test: Option<PathBuf>,
    /// Held-out adversarial examples (an `attack -o` file): report the share fixed.
    #[arg(long, value_name = "ADV.npz")]
    adv_test: Option<PathBuf>,
    /// Write the LP instance as JSON (features, per-class residuals).
    #[arg(long, value_name = "FILE")]
    dump_lp: Option<PathBuf>,
    /// Print one JSON document instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    data_args: DataArgs,
    #[command(flatten)]
    engine: EngineArgs,
}

/// The successful rows of an `attack -o` file, and their `index` column.
fn adversarial_rows(path: &Path) -> Result<(Dataset, Vec<i64>)> {
    let ds = data::load(path, &Default::default()).with_context(|| format!("reading {}", path.display()))?;
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut npz = ndarray_npy::NpzReader::new(file).with_context(|| format!("{}: not an .npz", path.display()))?;
    let index: ndarray::Array1<i64> = npz.by_name("index").with_context(|| {
        format!(
            "{}: no int64 'index' column (write it with `nnmend attack -o`)",
            path.display()
        )
    })?;
    let success: Option<ndarray::Array1<bool>> = npz.by_name("success").ok();
    if index.len() != ds.len() {
        anyhow::bail!("{}: {} images but {} indices", path.display(), ds.len(), index.len());
    }
    let keep: Vec<usize> = (0..ds.len())
        .filter(|&i| success.as_ref().is_none_or(|s| s.get(i).copied().unwrap_or(false)))
        .collect();
    let rows = ds
        .select(&keep)
        .with_context(|| format!("{}: rows out of range", path.display()))?;
    Ok((rows, keep.iter().map(|&i| index[i]).collect()))
}

/// A repair whose LP was not solved writes nothing: its weights are whatever the
/// solver held when it stopped. One solved to reduced accuracy is written, with a
/// warning.
fn check_status(r: &nnmend::repair::Repair, args: &RepairArgs) -> Result<()> {
    let worst_class = r
        .classes
        .iter()
        .enumerate()
        .find(|(_, c)| c.status == r.status)
        .map_or(String::new(), |(k, _)| format!(" (class {k} first)"));
    match r.status {
        Status::Solved => Ok(()),
        Status::AlmostSolved => {
            warn(&format!(
                "the repair LP was solved to reduced accuracy only{worst_class}; the model is written, but check \
                 its efficacy and drawdown"
            ));
            Ok(())
        }
        Status::Stalled | Status::Infeasible => anyhow::bail!(
            "the repair LP ended {:?}{worst_class} after clarabel's iteration limit (--lp-max-iter {}) or on \
             numerical trouble; no model written to {}. Try a higher --lp-max-iter, fewer repair samples \
             (--samples N), fewer weights (--select wilcoxon){}; `--dump-lp FILE` with `nnmend lp FILE` \
             re-solves the instance on its own",
            r.status,
            args.lp_max_iter,
            args.output.display(),
            if matches!(args.mode, Mode::Paper) {
                ", or --mode margin"
            } else {
                ""
            }
        ),
    }
}

/// Runs `nnmend repair`.
pub fn repair(args: RepairArgs, g: &Global) -> Result<ExitCode> {
    let mut inputs: Vec<&Path> = vec![&args.hybrid, &args.adv, &args.train];
    inputs.extend(args.test.as_deref());
    inputs.extend(args.adv_test.as_deref());
    g.refuse_overwrite(&args.output, &inputs)?;
    if let Some(dump) = &args.dump_lp {
        g.refuse_overwrite(dump, &inputs)?;
    }
    let hybrid = load_model(&args.hybrid)?;
    let found = head::find(&hybrid).with_context(|| format!("{}", args.hybrid.display()))?;
    let wanted = match args.head {
        HeadArg::Auto => None,
        HeadArg::Linear => Some(HeadKind::Linear),
        HeadArg::Kernel => Some(HeadKind::Kernel),
    };
    if let Some(wanted) = wanted.filter(|&w| w != found.kind) {
        usage!(
            "--head {} was given, but {} is a {} hybrid (its head Gemm reads '{}'); use --head {} or --head auto",
            wanted.name(),
            args.hybrid.display(),
            found.kind.name(),
            found.input,
            found.kind.name()
        );
    }
    let (mut adv, mut index) = adversarial_rows(&args.adv)?;
    if adv.is_empty() {
        anyhow::bail!(
            "{}: no row has success = true, so there is no adversarial example to repair. Attack with a \
             larger --eps, with --method pgd (stronger than FGSM), or on more images (--limit), then repair \
             with that file",
            args.adv.display()
        );
    }
    if let Some(n) = args.samples {
        let n = usize::try_from(n).unwrap_or(usize::MAX).min(adv.len());
        let first: Vec<usize> = (0..n).collect();
        adv = adv
            .select(&first)
            .with_context(|| format!("{}: rows out of range", args.adv.display()))?;
        index.truncate(n);
    }
    let clean = args.data_args.load(&args.train, Split::Train)?;
    let engine = args.engine.engine()?;
    let feed = args.data_args.feed(&args.engine);
    let settings = HybridSettings {
        margin: matches!(args.mode, Mode::Margin).then_some(MarginOptions {
            margin: args.margin,
            slack_price: args.slack_price,
            keep_price: args.keep_price,
            solve: MarginSettings {
                solver_max_iter: args.lp_max_iter,
                ..Default::default()
            },
        }),
        preserve: args.preserve,
        select: args.select.map(|_| args.p),
        class: ClassSettings {
            repair_bias: args.repair_bias,
            solver_max_iter: args.lp_max_iter,
            ..Default::default()
        },
        threads: feed.threads,
    };
    let done = repair_hybrid(&hybrid, &adv, &index, &clean, engine.as_ref(), &feed, &settings)
        .with_context(|| format!("repairing {}", args.hybrid.display()))?;
    if let Some(dump) = &args.dump_lp {
        let rows = |x: &ndarray::Array2<f64>| x.rows().into_iter().map(|row| row.to_vec()).collect::<Vec<_>>();
        let doc = match &done.instance {
            Instance::Paper { x, residuals } => json!({
                "mode": "paper",
                "repair_bias": args.repair_bias,
                "x": rows(x),
                "classes": residuals.columns().into_iter().map(|c| json!({"r": c.to_vec()})).collect::<Vec<_>>(),
            }),
            Instance::Margin {
                x,
                scores,
                labels,
                margin,
                price,
            } => json!({
                "mode": "margin",
                "repair_bias": args.repair_bias,
                "x": rows(x),
                "scores": rows(scores),
                "labels": labels,
                "margin": margin,
                "price": price,
            }),
        };
        nnmend::atomic::write_with(
            dump,
            |source| nnmend::Error::Write {
                path: dump.clone(),
                source,
            },
            |file| {
                serde_json::to_writer(std::io::BufWriter::new(file), &doc).map_err(|e| nnmend::Error::Write {
                    path: dump.clone(),
                    source: std::io::Error::other(e),
                })
            },
        )?;
    }
    check_status(&done.repair, &args)?;
    save_model(&done.model, &args.output)?;
    let drawdown = match &args.test {
        Some(path) => {
            let test = args.data_args.load(path, Split::Test)?;
            let (before, _) = evaluate(&hybrid, &test, engine.as_ref(), &feed)?;
            let (after, _) = evaluate(&done.model, &test, engine.as_ref(), &feed)?;
            Some((before.accuracy - after.accuracy, before.accuracy, after.accuracy))
        }
        None => None,
    };
    let generalisation = match &args.adv_test {
        Some(path) => {
            let (held_out, _) = adversarial_rows(path)?;
            if held_out.is_empty() {
                None
            } else {
                let (after, _) = evaluate(&done.model, &held_out, engine.as_ref(), &feed)?;
                Some((after.accuracy, held_out.len()))
            }
        }
        None => None,
    };
    let r = &done.repair;
    if args.json {
        print_json(&json!({
            "status": r.status,
            "objective": r.objective,
            "seconds": r.seconds,
            "lp": done.lp,
            "change": {"l1": r.l1, "linf": r.linf},
            "efficacy": done.efficacy,
            "efficacy_before": done.efficacy_before,
            "drawdown": drawdown.map(|d| d.0),
            "accuracy": drawdown.map(|d| json!({"before": d.1, "after": d.2})),
            "generalisation": generalisation.map(|g| g.0),
            "held_out": generalisation.map(|g| g.1),
            "samples": done.samples,
            "unfixed": done.unfixed,
            "features": {"changeable": done.changeable, "total": done.feature_dim},
            "mode": if r.margin.is_some() { "margin" } else { "paper" },
            "head": done.head,
            "margin": r.margin.as_ref().map(|m| json!({
                "margin": args.margin, "slack_price": args.slack_price, "keep_price": args.keep_price,
                "preserve": args.preserve, "iterations": m.iterations, "rounds": m.rounds,
                "active_constraints": m.active, "gap": m.gap,
                "short_repair_samples": m.xi.iter().take(done.samples).filter(|v| **v > 1e-6).count(),
                "short_preservation_samples": m.xi.iter().skip(done.samples).filter(|v| **v > 1e-6).count(),
            })),
            "classes": r.classes.iter().map(|c| json!({
                "status": c.status, "objective": c.objective, "iterations": c.iterations,
                "rounds": c.rounds, "columns": c.columns, "dual_violation": c.dual_violation, "gap": c.gap,
                "largest_slack": c.delta.iter().cloned().fold(0.0, f64::max), "seconds": c.seconds,
            })).collect::<Vec<_>>(),
            "engine": args.engine.describe(),
            "output": args.output,
        }))?;
    } else {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "{:?}: objective {:.6}, |ΔW|₁ {:.4}, |ΔW|∞ {:.4}, {} samples, efficacy {:.4} (was {:.4}), {:.1} s",
            r.status, r.objective, r.l1, r.linf, done.samples, done.efficacy, done.efficacy_before, r.seconds
        )?;
        if let Some((dd, before, after)) = drawdown {
            writeln!(out, "clean accuracy {before:.4} -> {after:.4} (drawdown {dd:.4})")?;
        }
        if let Some((g, n)) = generalisation {
            writeln!(out, "held-out adversarials fixed: {g:.4} of {n}")?;
        }
        writeln!(out, "wrote {}", args.output.display())?;
    }
    Ok(ExitCode::SUCCESS)
}
