//! `nnmend inspect MODEL [--json]`: graph summary, detected cut, feature shape, head.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

use super::{load_model, print_doc, warn_cut, EngineArgs};

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
    print_doc(&info, args.json, |d, out| d.write_text(&args.model, out))?;
    Ok(ExitCode::SUCCESS)
}
