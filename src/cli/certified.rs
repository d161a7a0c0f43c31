//! `nnmend repair HYBRID --certify E --train DATA -o OUT`: a certified repair. The
//! head changes, as little as possible in L1, so that every point of each ball is
//! classified right over its feature box; the written model is then checked as
//! `nnmend certify` checks it.

use std::process::ExitCode;

use anyhow::{Context, Result};

use nnmend::data::Split;
use nnmend::doc::CertifiedRepairDoc;
use nnmend::onnx::bounds::Margin;
use nnmend::onnx::ModelProto;
use nnmend::repair::certified::{
    assess_certified, balls, repair_certified, CertifiedRepairSettings, CertifiedSettings,
};
use nnmend::repair::hybrid::read_samples;
use nnmend::repair::Status;

use super::gate::verdict;
use super::repair::{CertifyBounds, Mode, RepairArgs};
use super::{print_doc, save_model, usage, warn};

/// The worst margin a certified repair asks of each ball by default: small, since the
/// boxes are wide and any positive margin certifies; it covers the head's own f32
/// rounding, which `certify` subtracts.
pub(super) const CERTIFY_MARGIN: f64 = 0.1;

/// The price of a unit of a ball's shortfall by default: high enough that a ball
/// stays uncertified only when certifying it costs far more than the others did
/// (chosen on a validation split, docs/RESULTS.md).
const BALL_PRICE: f64 = 10.0;

/// Training images a certified repair preserves by default: ten times a margin
/// repair's, since its change is larger and reaches more unseen images; on the
/// validation split they lowered the drawdown at the price of three to four times the LP
/// (docs/RESULTS.md).
const CERTIFY_PRESERVE: usize = 10_000;

/// The margin a preserved image keeps by default (its own when smaller): the gap
/// between the label's score and another's that a one-vs-rest SVM's hinges ask of its
/// training images (+1 against −1), so that the repair does not wear down what the fit
/// left. On the validation split, with 10,000 preserved images, 2 lost fewer unseen
/// images than 0.1 or 1, and 3 no fewer (docs/RESULTS.md).
const KEEP_MARGIN: f64 = 2.0;

/// Runs `nnmend repair --certify E`, for `hybrid` read from `args.hybrid`.
pub(super) fn repair(args: &RepairArgs, hybrid: &ModelProto, eps: f32) -> Result<ExitCode> {
    if args.repair.rounds > 1 || matches!(args.repair.mode, Mode::Paper) {
        usage!("--certify is a repair of its own: it takes neither --rounds nor --mode paper");
    }
    let clean = args.data_args.load(&args.train, Split::Train)?;
    let samples = args.samples.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    let adv = args.adv.as_deref().map(|p| read_samples(p, samples)).transpose()?;
    let ds = balls(adv.as_ref(), &clean, args.balls, args.seed)?;
    let (engine, feed) = args.engine.open(&args.data_args)?;
    let settings = CertifiedRepairSettings {
        eps,
        margin: args.repair.margin.unwrap_or(CERTIFY_MARGIN),
        ball_price: args.repair.slack_price.unwrap_or(BALL_PRICE),
        keep_price: args.repair.keep_price,
        keep_margin: args.keep_margin.unwrap_or(KEEP_MARGIN),
        preserve: args.repair.preserve.unwrap_or(CERTIFY_PRESERVE),
        repair_bias: args.repair.repair_bias,
        bounds: Margin::default(),
        crown: args.certify_bounds == CertifyBounds::Crown,
        solve: CertifiedSettings {
            max_iter: args.repair.lp_max_iter,
            threads: u32::try_from(feed.threads.max(1)).unwrap_or(1),
            ..CertifiedSettings::default()
        },
    };
    let done = repair_certified(hybrid, &ds, &clean, engine.as_ref(), &feed, &settings)
        .with_context(|| format!("repairing {}", args.hybrid.display()))?;
    match done.solution.status {
        Status::Solved => {}
        Status::AlmostSolved => warn("the certified repair's LP was solved to reduced accuracy only; the model is written, but check its certificates"),
        status => anyhow::bail!(
            "the certified repair's LP ended {status:?} (clarabel's iteration limit, --lp-max-iter {}, or numerical \
             trouble); no model written to {}. Try fewer balls, a smaller --certify radius or a higher --lp-max-iter",
            args.repair.lp_max_iter,
            args.output.display()
        ),
    }
    save_model(&done.model, &args.output)?;
    let test = args.data_args.load_test(args.test.as_deref())?;
    let measured = test
        .map(|t| {
            assess_certified(
                hybrid,
                &done.model,
                &t,
                args.pgd_limit,
                engine.as_ref(),
                &feed,
                &settings,
            )
        })
        .transpose()?;
    let doc = CertifiedRepairDoc::new(
        &done,
        &settings,
        measured,
        engine.describe(),
        args.output.clone(),
        &args.gates.gates(),
    );
    print_doc(&doc, args.json, |d, out| d.write_text(out))?;
    Ok(verdict(&doc.gates))
}
