//! `nnmend certify MODEL --data DATA --eps E1,E2,…`: certified accuracy of a hybrid
//! over L∞ balls (interval bounds through the extractor, the head's exact worst
//! margin over the feature box; for a linear hybrid also the margins back-substituted
//! to the pixels), beside clean accuracy and PGD's robust accuracy.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;

use nnmend::attack::protocol::Protocol;
use nnmend::data::Split;
use nnmend::doc::CertifyDoc;
use nnmend::onnx::bounds::Margin;
use nnmend::verify::{self, Settings};

use super::{load_model, print_doc, unit_interval, warn, DataArgs, EngineArgs, Global};

/// The bounds `certify` computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum BoundsArg {
    /// Interval bounds of the features (IBP).
    Interval,
    /// The interval bounds, and for a linear hybrid the head's margins bounded by
    /// back-substitution through the extractor (CROWN-IBP), which certify more.
    Linear,
    /// As `linear`, with the boxes of the layers in between also tightened by
    /// back-substitution (CROWN): tighter, and slower by one back-substitution per
    /// neuron whose box straddles zero (small networks).
    Crown,
}

/// Arguments of `nnmend certify`.
#[derive(Debug, Args)]
pub struct CertifyArgs {
    /// The hybrid to certify (written by `nnmend fit` or `nnmend repair`).
    model: PathBuf,
    /// Images whose balls are certified (IDX folder, CIFAR binary folder, image folder or .npz).
    #[arg(long, value_name = "DATA")]
    data: PathBuf,
    /// Radii in [0, 1] pixel space (comma-separated).
    #[arg(long, value_name = "E1,E2,…", value_delimiter = ',', required = true, value_parser = unit_interval)]
    eps: Vec<f32>,
    /// Attack the first N images with the PGD protocol (40 steps, CE and margin
    /// losses, 3 random restarts each) and check that no certified image falls; 0: no PGD.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pgd_limit: usize,
    /// The bounds that certify (an image counts when any of those computed does).
    #[arg(long, value_enum, default_value_t = BoundsArg::Linear)]
    bounds: BoundsArg,
    /// Also write, into this new folder, the model with the normalisation inside
    /// (`model.onnx`), one VNN-LIB property per image and radius (the clipped input box
    /// and the negation of "the label wins") and `instances.csv`, for other verifiers.
    #[arg(long, value_name = "DIR")]
    vnnlib: Option<PathBuf>,
    /// Seed of PGD's random starts.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print one JSON document instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    data_args: DataArgs,
    #[command(flatten)]
    engine: EngineArgs,
}

/// Runs `nnmend certify`.
pub fn certify(args: CertifyArgs, g: &Global) -> Result<ExitCode> {
    let started = Instant::now();
    if let Some(dir) = &args.vnnlib {
        g.refuse_overwrite(dir, &[&args.model, &args.data])?;
    }
    let model = load_model(&args.model)?;
    let ds = args.data_args.load(&args.data, Split::Test)?;
    let (engine, feed) = args.engine.open(&args.data_args)?;
    let settings = Settings {
        eps: args.eps.clone(),
        pgd_limit: args.pgd_limit,
        protocol: Protocol {
            seed: args.seed,
            ..Protocol::default()
        },
        margin: Margin::default(),
        linear: args.bounds != BoundsArg::Interval,
        refine: args.bounds == BoundsArg::Crown,
        boxes: None,
    };
    let certification = verify::certify(&model, engine.as_ref(), &ds, &settings, &feed)
        .with_context(|| format!("certifying {}", args.model.display()))?;
    let broken = certification.certified_but_broken();
    if let Some(note) = &certification.linear_note {
        warn(&format!("interval bounds only: {note}"));
    }
    if let Some(dir) = &args.vnnlib {
        let n = verify::vnnlib::write(dir, &model, engine.as_ref(), &ds, &args.eps, &feed)
            .with_context(|| format!("writing VNN-LIB properties to {}", dir.display()))?;
        eprintln!(
            "wrote {n} VNN-LIB properties and {} to {}",
            verify::vnnlib::MODEL,
            dir.display()
        );
    }
    let doc = CertifyDoc::new(
        args.model.clone(),
        args.data.clone(),
        engine.describe(),
        &certification,
        settings.margin,
        (settings.pgd_limit > 0).then(|| settings.protocol.clone()),
        args.vnnlib.clone(),
        started.elapsed().as_secs_f64(),
    );
    print_doc(&doc, args.json, |d, out| d.write_text(out))?;
    if broken > 0 {
        bail!(
            "SOUNDNESS BUG: PGD broke {broken} image(s) that the bounds certified; the bounds of {} are \
             wrong (please report this with the model and data)",
            args.model.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
