//! `nnmend attack MODEL --data DATA --eps E1,E2,…`: FGSM or PGD at each ε; writes the
//! adversarial images as .npz with `-o` and reports clean and robust accuracy.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

use nnmend::attack::{self, AdversarialFile, Loss, Method, Settings, Target};
use nnmend::data::Split;
use nnmend::doc::AttackDoc;

use super::{load_model, print_doc, unit_interval, DataArgs, EngineArgs, Global};

/// Arguments of `nnmend attack`.
#[derive(Debug, Args)]
pub struct AttackArgs {
    /// The ONNX classifier to attack (original network, hybrid or repaired hybrid).
    model: PathBuf,
    /// Images to attack (IDX folder, CIFAR binary folder, image folder or .npz).
    #[arg(long, value_name = "DATA")]
    data: PathBuf,
    /// Radii in [0, 1] pixel space (comma-separated).
    #[arg(long, value_name = "E1,E2,…", value_delimiter = ',', required = true, value_parser = unit_interval)]
    eps: Vec<f32>,
    /// The attack.
    #[arg(long, value_enum, default_value_t = Method::Fgsm)]
    method: Method,
    /// PGD iterations.
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u64).range(1..))]
    steps: u64,
    /// PGD step size as a multiple of ε [default: 2.5 / steps].
    #[arg(long, value_name = "RATIO")]
    step_ratio: Option<f32>,
    /// Start PGD at a uniformly random point of the ε-ball.
    #[arg(long)]
    random_start: bool,
    /// PGD: keep stepping after an image is misclassified and keep the last iterate
    /// (the textbook algorithm; slower, and never stronger).
    #[arg(long)]
    keep_going: bool,
    /// Seed of PGD's random start.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The loss the attack follows: up the cross-entropy, or down the margin.
    #[arg(long, value_enum, default_value_t = Loss::Ce)]
    loss: Loss,
    /// Write the attacked images to this .npz (keys x, index, y, eps, success).
    #[arg(short, long, value_name = "ADV.npz")]
    output: Option<PathBuf>,
    /// Write only the successful adversarial examples.
    #[arg(long, requires = "output")]
    only_successful: bool,
    /// Print one JSON document instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    data_args: DataArgs,
    #[command(flatten)]
    engine: EngineArgs,
}

/// Runs `nnmend attack`.
pub fn attack(args: AttackArgs, g: &Global) -> Result<ExitCode> {
    if let Some(out) = &args.output {
        g.refuse_overwrite(out, &[&args.model, &args.data])?;
    }
    let model = load_model(&args.model)?;
    let ds = args.data_args.load(&args.data, Split::Test)?;
    let (engine, feed) = args.engine.open(&args.data_args)?;
    let target = Target::new(&model, engine.as_ref(), &ds, &feed, args.loss)
        .with_context(|| format!("building the gradient graph of {}", args.model.display()))?;
    let settings = Settings {
        method: args.method,
        eps: args.eps.clone(),
        steps: args.steps as usize,
        step_ratio: args.step_ratio.unwrap_or(attack::step_ratio(args.steps as usize)),
        random_start: args.random_start,
        early_stop: !args.keep_going,
        seed: args.seed,
        feed,
    };
    let outcome = attack::run(&target, &ds, &settings)?;
    if let Some(out) = &args.output {
        AdversarialFile::new(&outcome, &ds, args.only_successful)?.save(out)?;
    }
    let paths = (args.model, args.data, args.output);
    let doc = AttackDoc::new(&settings, args.loss, &outcome, paths, engine.describe());
    print_doc(&doc, args.json, |d, out| d.write_text(out))?;
    Ok(ExitCode::SUCCESS)
}
