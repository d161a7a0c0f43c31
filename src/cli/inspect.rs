//! `nnmend inspect MODEL [--json]`: graph summary, detected cut, feature shape, head.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

use super::{load_model, print_json, warn_cut, EngineArgs};

/// Arguments of `nnmend inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The ONNX classifier.
    model: PathBuf,
    /// Cut at this tensor instead of the last pooling output.
    #[arg(long, value_name = "TENSOR")]
    at: Option<String>,
    /// Print one JSON document instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    engine: EngineArgs,
}

/// Runs `nnmend inspect`.
pub fn inspect(args: InspectArgs) -> Result<ExitCode> {
    let model = load_model(&args.model)?;
    let engine = args.engine.engine()?;
    let info = nnmend::inspect::inspect(&model, engine.as_ref(), args.at.as_deref())
        .with_context(|| format!("inspecting {}", args.model.display()))?;
    if let Some(w) = &info.cut.warning {
        warn_cut(w);
    }
    if args.json {
        print_json(&serde_json::to_value(&info)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "model     {}", args.model.display())?;
    writeln!(
        out,
        "producer  {} (opset {}), {} nodes, {} parameters",
        info.producer, info.opset, info.nodes, info.params
    )?;
    writeln!(
        out,
        "input     {} [{}] ({})",
        info.input.name,
        info.input.shape.join(", "),
        info.input.layout
    )?;
    writeln!(
        out,
        "cut       {} = {} ({}){}",
        info.cut.tensor,
        info.cut.node,
        info.cut.op,
        if info.cut.fallback { " [fallback]" } else { "" }
    )?;
    writeln!(out, "rule      {}", info.cut.rule.describe())?;
    writeln!(
        out,
        "features  {:?} -> D = {}",
        info.cut.feature_shape, info.cut.feature_dim
    )?;
    writeln!(
        out,
        "head      {} ({} parameters)",
        info.head.nodes.join(" -> "),
        info.head.params
    )?;
    Ok(ExitCode::SUCCESS)
}
