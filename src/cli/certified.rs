//! `nnmend repair HYBRID --certify E --train DATA -o OUT`: a certified repair. The
//! head changes, as little as possible in L1, so that every point of each ball is
//! classified right over its feature box; the written model is then checked as
//! `nnmend certify` checks it.

use std::process::ExitCode;

use anyhow::{Context, Result};

use nnmend::data::Split;
use nnmend::doc::CertifiedRepairDoc;
use nnmend::onnx::ModelProto;
use nnmend::repair::certified::{
    assess_certified, balls, repair_certified, CertifiedRepairSettings, CertifiedSettings,
};
use nnmend::repair::hybrid::read_samples;
use nnmend::repair::Status;

use super::gate::verdict;
use super::repair::{CertifyBounds, Mode, RepairArgs};
use super::{print_doc, save_model, usage, warn};

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
    let d = CertifiedRepairSettings::new(eps);
    let settings = CertifiedRepairSettings {
        margin: args.repair.margin.unwrap_or(d.margin),
        ball_price: args.repair.slack_price.unwrap_or(d.ball_price),
        keep_price: args.repair.keep_price,
        keep_margin: args.keep_margin.unwrap_or(d.keep_margin),
        preserve: args.repair.preserve.unwrap_or(d.preserve),
        repair_bias: args.repair.repair_bias,
        crown: args.certify_bounds == CertifyBounds::Crown,
        solve: CertifiedSettings {
            max_iter: args.repair.lp_max_iter,
            solver: args.repair.lp_solver,
            threads: u32::try_from(feed.threads.max(1)).unwrap_or(1),
            ..d.solve
        },
        ..d
    };
    let done = repair_certified(hybrid, &ds, &clean, engine.as_ref(), &feed, &settings)
        .with_context(|| format!("repairing {}", args.hybrid.display()))?;
    match done.solution.status {
        Status::Solved => {}
        Status::AlmostSolved => warn("the certified repair's LP was solved to reduced accuracy only; the model is written, but check its certificates"),
        status => anyhow::bail!(
            "the certified repair's LP ended {status:?} (the solvers' iteration limit, --lp-max-iter {}, or numerical \
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
