//! `nnmend grad MODEL -o GRAD.onnx`: write a model's gradient graph, which any ONNX
//! engine can run: inputs `pixels` and `target`, outputs `logits`, `loss`, `grad`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use nnmend::attack::{gradient_model, normalization, Loss};
use nnmend::features::{image_shape_of, Feed};
use nnmend::onnx::grad::Normalization;

use super::{load_model, save_model, EngineArgs, Global};

/// Arguments of `nnmend grad`.
#[derive(Debug, Args)]
pub struct GradArgs {
    /// The ONNX classifier (original network or hybrid).
    model: PathBuf,
    /// Where to write the gradient graph.
    #[arg(short, long, value_name = "OUT.onnx")]
    output: PathBuf,
    /// The loss to differentiate.
    #[arg(long, value_enum, default_value_t = Loss::Ce)]
    loss: Loss,
    /// Per-channel mean the model expects subtracted from [0, 1] pixels (comma-separated).
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
    mean: Vec<f32>,
    /// Per-channel standard deviation the model expects pixels divided by (comma-separated).
    #[arg(long, value_delimiter = ',')]
    std: Vec<f32>,
    #[command(flatten)]
    engine: EngineArgs,
}

/// Runs `nnmend grad`.
pub fn grad(args: GradArgs, g: &Global) -> Result<ExitCode> {
    g.refuse_overwrite(&args.output, &[&args.model])?;
    let model = load_model(&args.model)?;
    let engine = args.engine.engine()?;
    let norm = if args.mean.is_empty() && args.std.is_empty() {
        Normalization {
            mean: vec![0.0],
            std: vec![1.0],
            dims: vec![],
        }
    } else {
        let sample = engine.prepare(&model)?.sample_shape().to_vec();
        let (layout, image) = image_shape_of(&sample)?;
        let feed = Feed {
            mean: args.mean,
            std: args.std,
            ..Feed::default()
        };
        normalization(layout, image, &feed)?
    };
    let graph = gradient_model(&model, engine.as_ref(), &norm, args.loss)?;
    save_model(&graph, &args.output)?;
    Ok(ExitCode::SUCCESS)
}
