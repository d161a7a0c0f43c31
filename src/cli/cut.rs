//! `nnmend cut MODEL -o OUT.onnx [--at TENSOR]`: writes the feature extractor.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use nnmend::doc::CutDoc;

use super::{load_model, print_doc, save_model, warn_cut, EngineArgs, Global};

/// Arguments of `nnmend cut`.
#[derive(Debug, Args)]
pub struct CutArgs {
    /// The ONNX classifier.
    model: PathBuf,
    /// Where to write the extractor.
    #[arg(short, long, value_name = "OUT.onnx")]
    output: PathBuf,
    /// Cut at this tensor instead of the last pooling output.
    #[arg(long, value_name = "TENSOR")]
    at: Option<String>,
    /// Print one JSON document instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    engine: EngineArgs,
}

/// Runs `nnmend cut`.
pub fn cut(args: CutArgs, g: &Global) -> Result<ExitCode> {
    g.refuse_overwrite(&args.output, &[&args.model])?;
    let model = load_model(&args.model)?;
    let engine = args.engine.engine()?;
    let (info, extractor) = nnmend::inspect::cut(&model, engine.as_ref(), args.at.as_deref())
        .with_context(|| format!("cutting {}", args.model.display()))?;
    if let Some(w) = &info.cut.warning {
        warn_cut(w);
    }
    save_model(&extractor, &args.output)?;
    let doc = CutDoc {
        output: args.output,
        cut: info.cut,
        input: info.input,
    };
    print_doc(&doc, args.json, |d, out| d.write_text(out))?;
    Ok(ExitCode::SUCCESS)
}
