//! Command-line arguments (clap derive, doc comments as help) and dispatch. Each
//! subcommand lives in its own file, resolves its arguments, calls one library
//! function and prints the result: JSON on stdout with `--json`, text otherwise;
//! progress and warnings on stderr.

mod attack;
mod certified;
mod certify;
mod cut;
mod eval;
mod features;
mod fit;
mod gate;
mod grad;
mod inspect;
mod lp;
mod repair;
mod run;
mod version;

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};

use nnmend::data::{self, Dataset, LoadOptions, Split};
use nnmend::engine::{self, Backend, Engine};
use nnmend::features::Feed;
use nnmend::onnx::{self, ModelProto};

/// Exit code of a runtime error.
pub const EXIT_ERROR: u8 = 1;
/// Exit code of a usage error: clap's own, a refused overwrite, a bad option value.
pub const EXIT_USAGE: u8 = 2;
/// Exit code of a gate (such as `--min-accuracy`) that failed.
pub const EXIT_GATE: u8 = 3;
/// Exit code of a run ended by SIGINT or SIGTERM (128 + SIGINT, as shells report it).
pub const EXIT_INTERRUPTED: i32 = 130;

/// A command line that asks for something nnmend will not do (exit code 2): an output
/// that would replace an input, an option value out of range.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Fails with a [`UsageError`].
macro_rules! usage {
    ($($arg:tt)*) => {
        return Err(anyhow::Error::new($crate::cli::UsageError(format!($($arg)*))))
    };
}
pub(crate) use usage;

/// Repair convolutional neural networks delivered as ONNX files.
#[derive(Debug, Parser)]
#[command(name = "nnmend", about, long_about = None, disable_version_flag = true, arg_required_else_help = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    global: Global,
    #[command(flatten)]
    version: version::VersionArgs,
}

/// Options every command takes.
#[derive(Debug, Clone, Copy, Args)]
pub struct Global {
    /// Let an output path name one of the command's inputs (the input is replaced,
    /// atomically, once the command has read it); refused otherwise (exit code 2).
    #[arg(long, global = true)]
    force: bool,
}

impl Global {
    /// Fails with a usage error, before any work is done, when `output` names one of
    /// the command's `inputs` and `--force` was not given.
    fn refuse_overwrite(&self, output: &Path, inputs: &[&Path]) -> Result<()> {
        if self.force {
            return Ok(());
        }
        match onnx::io::ensure_distinct(output, inputs) {
            Ok(()) => Ok(()),
            Err(e) => usage!("{e}; choose another output path, or pass --force to replace it"),
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Summarise a model: input, detected cut, feature shape, head.
    Inspect(inspect::InspectArgs),
    /// Write the feature extractor: the graph up to the cut, with output `features` [N, D].
    Cut(cut::CutArgs),
    /// Run the extractor over a data set and write the features and labels as .npz.
    Features(features::FeaturesArgs),
    /// Fit a linear SVM head on the extractor's features and write the hybrid model.
    Fit(fit::FitArgs),
    /// Measure the accuracy of one or more models on a data set.
    Eval(eval::EvalArgs),
    /// Attack a model with FGSM or PGD at one or more radii ε.
    Attack(attack::AttackArgs),
    /// Certified accuracy of a hybrid over L∞ balls, beside clean and PGD accuracy.
    Certify(certify::CertifyArgs),
    /// Write a model's gradient graph (logits, loss and ∂loss/∂pixels) as ONNX.
    Grad(grad::GradArgs),
    /// Repair a hybrid's head with its adversarial examples and write the repaired model.
    Repair(repair::RepairArgs),
    /// Solve a repair LP written by `repair --dump-lp` and report its optimum and time.
    Lp(lp::LpArgs),
    /// The whole experiment: fit, attack, repair, evaluate at every ε; report to a folder.
    Run(run::RunArgs),
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<ExitCode> {
    let g = &cli.global;
    let Some(command) = cli.command else {
        return version::version(&cli.version);
    };
    if cli.version.asked() {
        usage!("--version takes no command; run `nnmend --version` on its own");
    }
    match command {
        Command::Inspect(a) => inspect::inspect(a),
        Command::Cut(a) => cut::cut(a, g),
        Command::Features(a) => features::features(a, g),
        Command::Fit(a) => fit::fit(a, g),
        Command::Eval(a) => eval::eval(a),
        Command::Attack(a) => attack::attack(a, g),
        Command::Certify(a) => certify::certify(a, g),
        Command::Grad(a) => grad::grad(a, g),
        Command::Repair(a) => repair::repair(a, g),
        Command::Lp(a) => lp::lp(a),
        Command::Run(a) => run::run(a, g),
    }
}

/// What to try, for the errors whose cure is a command-line option: the library says
/// what is wrong, the command line names the option.
pub fn hint(err: &anyhow::Error) -> Option<&'static str> {
    use nnmend::attack::AttackError;
    use nnmend::hybrid::FitError;
    use nnmend::repair::RepairError;
    err.chain()
        .find_map(|cause| match cause.downcast_ref::<nnmend::Error>()? {
            nnmend::Error::Fit(FitError::Degenerate { .. }) => Some(
                "check --mean/--std against the model's training, and that the images are not blank (or cut \
             elsewhere with --at)",
            ),
            nnmend::Error::Fit(FitError::OneClass { .. }) => {
                Some("--limit N keeps the first images only: use all of the data, or an .npz of a shuffled subset")
            }
            nnmend::Error::Repair(RepairError::NoSamples | RepairError::NoSuccess(_)) => Some(
                "attack with a larger --eps, with --method pgd (stronger than FGSM), or on more images (--limit), \
             then repair with that file",
            ),
            nnmend::Error::Onnx(nnmend::onnx::OnnxError::NoAutomaticCut(_)) => {
                Some("name the tensor to cut at with --at TENSOR")
            }
            nnmend::Error::Attack(AttackError::Channels { .. }) => {
                Some("--mean and --std take one value, or one per channel")
            }
            _ => None,
        })
}

/// Which half of a data set to read.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum SplitArg {
    Train,
    Test,
}

/// Options for reading and feeding data, shared by the commands that take data.
#[derive(Debug, Args)]
struct DataArgs {
    /// Which half of an IDX, CIFAR-binary or train/test image-folder set to read
    /// [default: train for --train, test for --data/--test].
    #[arg(long, value_enum)]
    split: Option<SplitArg>,
    /// Use only the first N images.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Per-channel mean subtracted after scaling pixels to [0, 1] (comma-separated).
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
    mean: Vec<f32>,
    /// Per-channel standard deviation divided by after the mean (comma-separated).
    #[arg(long, value_delimiter = ',')]
    std: Vec<f32>,
}

/// Options for the inference engine.
#[derive(Debug, Args)]
struct EngineArgs {
    /// Inference engine.
    #[arg(long, value_enum, default_value_t = Backend::Tract)]
    backend: Backend,
    /// Images per engine run.
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    batch: u64,
    /// Threads running batches (and the SVM's classes) side by side [default: one per
    /// CPU core].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    threads: Option<u64>,
    /// ONNX Runtime's intra-op threads per run (ort backends; tract runs on one).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    intra_threads: u64,
    /// The GPU for `--backend ort-cuda`.
    #[arg(long, value_name = "N", default_value_t = 0)]
    device: i32,
}

impl EngineArgs {
    /// Worker threads: `--threads`, or one per core.
    fn workers(&self) -> usize {
        self.threads.map_or_else(|| Feed::default().threads, |t| t as usize)
    }

    fn engine(&self) -> Result<Box<dyn Engine>> {
        Ok(engine::engine_with(
            self.backend,
            engine::EngineOptions {
                workers: self.workers(),
                intra_threads: self.intra_threads as usize,
                device: self.device,
            },
        )?)
    }

    /// The engine, and how `data` feeds images to it.
    fn open(&self, data: &DataArgs) -> Result<(Box<dyn Engine>, Feed)> {
        Ok((self.engine()?, data.feed(self)))
    }
}

impl DataArgs {
    /// Loads `path`, with `default` as the split unless `--split` was given.
    fn load(&self, path: &Path, default: Split) -> Result<Dataset> {
        let split = match self.split {
            Some(SplitArg::Train) => Split::Train,
            Some(SplitArg::Test) => Split::Test,
            None => default,
        };
        let ds = data::load(
            path,
            &LoadOptions {
                split,
                limit: self.limit,
            },
        )
        // The reader's errors name the file.
        .context("reading data")?;
        if ds.is_empty() {
            anyhow::bail!("{}: no images to use", path.display());
        }
        Ok(ds)
    }

    /// Loads the test data at `path`, when one was given.
    fn load_test(&self, path: Option<&Path>) -> Result<Option<Dataset>> {
        path.map(|p| self.load(p, Split::Test)).transpose()
    }

    fn feed(&self, engine: &EngineArgs) -> Feed {
        Feed {
            batch: engine.batch as usize,
            mean: self.mean.clone(),
            std: self.std.clone(),
            progress: std::io::stderr().is_terminal(),
            threads: engine.workers(),
        }
    }
}

/// Loads a model, external data included, its weights checked to be finite.
fn load_model(path: &Path) -> Result<ModelProto> {
    Ok(onnx::load_model(path)?)
}

/// Saves `model` to `out` atomically.
fn save_model(model: &ModelProto, out: &Path) -> Result<()> {
    Ok(onnx::save(model, out)?)
}

/// Prints `doc` on stdout: as one JSON document with `json`, else as `text` writes it.
fn print_doc<D: serde::Serialize>(
    doc: &D,
    json: bool,
    text: impl FnOnce(&D, &mut std::io::StdoutLock<'static>) -> std::io::Result<()>,
) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, doc)?;
        writeln!(out)?;
    } else {
        text(doc, &mut out)?;
    }
    Ok(())
}

/// Parses a number in `[0, 1]`: a radius ε in pixel space.
fn unit_interval(s: &str) -> Result<f32, String> {
    let v: f32 = s.trim().parse().map_err(|_| format!("'{s}' is not a number"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!(
            "ε = {v} is outside [0, 1]; ε is measured in [0, 1] pixel space"
        ))
    }
}

/// Parses a finite number ≥ 0.
fn non_negative(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|_| format!("'{s}' is not a number"))?;
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(format!("{v} is not a finite number ≥ 0"))
    }
}

/// Parses a finite number > 0.
fn positive(s: &str) -> Result<f32, String> {
    let v: f32 = s.trim().parse().map_err(|_| format!("'{s}' is not a number"))?;
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(format!("{v} is not a finite number > 0"))
    }
}

/// Prints a warning on stderr.
fn warn(message: &str) {
    let _ = writeln!(std::io::stderr(), "warning: {message}");
}

/// Warns of how the cut was chosen, when the rules fell back.
fn warn_cut(message: &str) {
    warn(&format!("{message} (--at TENSOR cuts elsewhere)"));
}
