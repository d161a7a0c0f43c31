//! `nnmend features MODEL --data DATA -o FEATURES.npz`: runs the extractor over a data
//! set and writes `features` (f32 [N, D]) and `labels` (i64 [N]), so that a large job
//! can be split into shards and the head fitted elsewhere.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use nnmend::data::Split;
use nnmend::doc::{CutRef, FeaturesDoc};
use nnmend::hybrid::extract;

use super::{load_model, print_doc, warn_cut, DataArgs, EngineArgs, Global};

/// Arguments of `nnmend features`.
#[derive(Debug, Args)]
pub struct FeaturesArgs {
    /// The ONNX classifier to cut.
    model: PathBuf,
    /// The images (IDX folder, CIFAR binary folder, image folder or .npz).
    #[arg(long, value_name = "DATA")]
    data: PathBuf,
    /// Where to write the features.
    #[arg(short, long, value_name = "FEATURES.npz")]
    output: PathBuf,
    /// Cut at this tensor instead of the last pooling output.
    #[arg(long, value_name = "TENSOR")]
    at: Option<String>,
    /// Print one JSON document instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    data_args: DataArgs,
    #[command(flatten)]
    engine: EngineArgs,
}

/// Runs `nnmend features`.
pub fn features(args: FeaturesArgs, g: &Global) -> Result<ExitCode> {
    g.refuse_overwrite(&args.output, &[&args.model, &args.data])?;
    let model = load_model(&args.model)?;
    let ds = args.data_args.load(&args.data, Split::Train)?;
    let (engine, feed) = args.engine.open(&args.data_args)?;
    let (cut, features, seconds) = extract(&model, &ds, engine.as_ref(), args.at.as_deref(), &feed)
        .with_context(|| format!("extracting features of {}", args.model.display()))?;
    if let Some(w) = &cut.warning {
        warn_cut(w);
    }
    nnmend::features::write_features(&args.output, &features, &ds.labels)?;
    let doc = FeaturesDoc {
        output: args.output,
        n: features.nrows(),
        feature_dim: features.ncols(),
        cut: CutRef {
            fallback: cut.fallback(),
            rule: cut.rule,
            tensor: cut.tensor,
            op: cut.op,
        },
        seconds,
        engine: engine.describe(),
    };
    print_doc(&doc, args.json, |d, out| d.write_text(out))?;
    Ok(ExitCode::SUCCESS)
}
