//! `nnmend eval MODEL... --data DATA`: accuracy of each model, in argument order.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use nnmend::data::Split;
use nnmend::doc::{EvalDoc, EvalRow};
use nnmend::gate::{parse_bound, Gate, Quantity};
use nnmend::hybrid::evaluate;

use super::gate::verdict;
use super::{load_model, print_doc, DataArgs, EngineArgs};

/// Arguments of `nnmend eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The ONNX models to evaluate.
    #[arg(required = true)]
    models: Vec<PathBuf>,
    /// Data to evaluate on (IDX folder, CIFAR binary folder, image folder or .npz).
    #[arg(long, value_name = "DATA")]
    data: PathBuf,
    /// Fail with exit code 3 when any model's accuracy is below this fraction.
    #[arg(long, value_name = "FRACTION", value_parser = parse_bound)]
    min_accuracy: Option<f64>,
    /// Print one JSON document instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    data_args: DataArgs,
    #[command(flatten)]
    engine: EngineArgs,
}

/// Runs `nnmend eval`.
pub fn eval(args: EvalArgs) -> Result<ExitCode> {
    let ds = args.data_args.load(&args.data, Split::Test)?;
    let (engine, feed) = args.engine.open(&args.data_args)?;
    let gate = args.min_accuracy.map(|bound| Gate {
        quantity: Quantity::Accuracy,
        bound,
    });
    let mut rows = Vec::new();
    let mut checks = Vec::new();
    for path in &args.models {
        let model = load_model(path)?;
        let (acc, _) =
            evaluate(&model, &ds, engine.as_ref(), &feed).with_context(|| format!("evaluating {}", path.display()))?;
        if let Some(gate) = &gate {
            checks.push(gate.check([(acc.accuracy, Some(format!("for {}", path.display())))]));
        }
        rows.push(EvalRow::new(path.clone(), acc));
    }
    let doc = EvalDoc {
        models: rows,
        min_accuracy: args.min_accuracy,
        passed: checks.iter().all(|c| c.passed),
        gates: checks,
        engine: engine.describe(),
    };
    print_doc(&doc, args.json, |d, out| d.write_text(out))?;
    Ok(verdict(&doc.gates))
}
