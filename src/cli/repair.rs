//! `nnmend repair HYBRID --adv ADV.npz --train DATA -o REPAIRED.onnx`: repair a hybrid's
//! linear head so that its adversarial examples get their clean decision values back,
//! changing the weights as little as possible (the seed paper's LP, solved with
//! clarabel), and write the repaired drop-in model. Linear (LH) and kernel (KH)
//! hybrids alike: the LP acts on whatever the head Gemm reads.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};

use nnmend::attack::file::read_successful;
use nnmend::attack::protocol::Protocol;
use nnmend::attack::{self, Loss, Method};
use nnmend::data::Split;
use nnmend::doc::RepairDoc;
use nnmend::features::Feed;
use nnmend::gate::Quantity;
use nnmend::head::HeadKind;
use nnmend::onnx::head;
use nnmend::repair::adversarial::TrainSettings;
use nnmend::repair::hybrid::read_samples;
use nnmend::repair::margin::MarginSolver;
use nnmend::repair::rounds::RoundSettings;
use nnmend::repair::{assess, repair_hybrid, Checks, MarginOptions, Settings, Status, TRAIN_EPOCHS};

use super::gate::{verdict, GateArgs};
use super::{load_model, non_negative, print_doc, save_model, usage, warn, DataArgs, EngineArgs, Global};

/// The feature boxes of a certified repair (`--certify-bounds`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(super) enum CertifyBounds {
    /// Interval bounds (IBP), as `certify --bounds interval`.
    Interval,
    /// CROWN: each feature's bounds back-substituted through the extractor, the layers
    /// in between tightened the same way (a linear hybrid only), as `certify --bounds
    /// crown` checks them: tighter boxes, so a cheaper repair, at a larger radius.
    Crown,
}

/// Which hybrid the repair expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum HeadArg {
    /// Whatever the model is: a Gemm reading `features` (linear) or a Nyström map (kernel).
    Auto,
    /// A linear hybrid (`fit --head linear`).
    Linear,
    /// A kernel hybrid (`fit --head kernel`).
    Kernel,
}

/// The repair formulation.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(super) enum Mode {
    /// The seed paper's: adversarial decision values pulled back to the clean ones.
    Paper,
    /// Every repair sample classified right with `--margin`, while a preservation
    /// set of clean training images stays right (classes coupled).
    Margin,
}

/// Feature selection.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Select {
    /// Only features whose clean and adversarial values differ by a Wilcoxon
    /// signed-rank test (p below `--p`) change.
    Wilcoxon,
}

/// How a head is repaired: the options `repair` and `run` share.
#[derive(Debug, Args)]
pub(super) struct RepairOptions {
    /// The formulation.
    #[arg(long, value_enum, default_value_t = Mode::Margin)]
    pub mode: Mode,
    /// Margin mode: the margin (score of the label minus the best other) wanted for
    /// every repair sample [default: 1 for a linear hybrid, 0.2 for a kernel hybrid].
    #[arg(long, value_parser = non_negative, allow_negative_numbers = true)]
    pub margin: Option<f64>,
    /// Margin mode: price of a unit of a repair sample's shortfall; a certified
    /// repair: of a ball's [default: 1, and 10 for a ball].
    #[arg(long, value_parser = non_negative, allow_negative_numbers = true)]
    pub slack_price: Option<f64>,
    /// Margin mode: price of a unit of a preservation sample's loss of margin.
    #[arg(long, default_value_t = MarginOptions::default().keep_price, value_parser = non_negative,
          allow_negative_numbers = true)]
    pub keep_price: f64,
    /// Margin mode, after head training: price of a unit of a guard's loss of margin
    /// (the pool's adversarial examples that the trained head classifies right)
    /// [default: 0.5 for a linear hybrid, 0 (no guards) for a kernel hybrid].
    #[arg(long, value_parser = non_negative, allow_negative_numbers = true)]
    pub guard_price: Option<f64>,
    /// Margin mode and a certified repair: N training images, evenly spaced through
    /// them, join the preservation set (with the repair samples' clean originals)
    /// [default: 1000; 10000 in a certified repair].
    #[arg(long, value_name = "N")]
    pub preserve: Option<usize>,
    /// Restrict the change to the features an attack moves.
    #[arg(long, value_enum)]
    select: Option<Select>,
    /// The p-value threshold of `--select wilcoxon`.
    #[arg(long, default_value_t = 0.1, requires = "select")]
    p: f64,
    /// Let the bias change too.
    #[arg(long)]
    pub repair_bias: bool,
    /// Margin mode and --certify: the solver of the LPs (the structured interior-point
    /// method, or clarabel's general one).
    #[arg(long, value_enum, default_value_t = MarginSolver::Ipm)]
    pub lp_solver: MarginSolver,
    /// The LP solver's iteration limit per solve; a solve that reaches it stalls, and a
    /// stalled repair writes no model.
    #[arg(long, value_name = "N", default_value_t = nnmend::repair::DEFAULT_MAX_ITER,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub lp_max_iter: u32,
    /// Attack-in-the-loop repair: rounds in all, the first included; each later round
    /// attacks the repaired model on the pool and repairs again with what it finds.
    #[arg(long, value_name = "K", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub rounds: u64,
    /// Training images the rounds attack (a seeded random choice).
    #[arg(long, value_name = "N", default_value_t = 2000)]
    pub pool: usize,
    /// PGD iterations of the rounds' attacks (a random start, steps of 2.5·ε/N).
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub round_steps: u64,
    /// Before the LPs, train the head against PGD on the pool for N passes (0: none):
    /// each minibatch is attacked against the head it then updates [default: 10 in
    /// margin mode, else 0].
    #[arg(long, value_name = "N")]
    pub epochs: Option<usize>,
    /// PGD iterations of the training's attacks (a random start, steps of 2.5·ε/N).
    #[arg(long, value_name = "N", default_value_t = 7, value_parser = clap::value_parser!(u64).range(1..))]
    pub train_steps: u64,
    /// The training's step (Adam), as a fraction of the root mean square of the head's
    /// weights.
    #[arg(long, value_name = "R", default_value_t = 0.048, value_parser = non_negative)]
    pub learning_rate: f64,
    /// Weight of the hinge on the clean pool images beside that on their attacks.
    #[arg(long, value_name = "W", default_value_t = 1.0, value_parser = non_negative)]
    pub clean_weight: f64,
    /// Weight of the hinge on the repair samples (`--adv`), per sample, beside that
    /// on the attacked pool images.
    #[arg(long, value_name = "W", default_value_t = 1.0, value_parser = non_negative)]
    pub fixed_weight: f64,
}

impl RepairOptions {
    /// The repair's settings for a head of kind `head`, with `threads` threads.
    pub fn settings(&self, threads: usize, head: HeadKind) -> Settings {
        let mut s = match self.mode {
            Mode::Margin => Settings::margin(head, threads),
            Mode::Paper => Settings::paper(threads),
        };
        if let Some(m) = &mut s.margin {
            m.margin = self.margin.unwrap_or(m.margin);
            m.slack_price = self.slack_price.unwrap_or(m.slack_price);
            m.keep_price = self.keep_price;
            m.guard_price = self.guard_price.unwrap_or(m.guard_price);
            (m.solve.solver_max_iter, m.solve.solver) = (self.lp_max_iter, self.lp_solver);
        }
        s.preserve = self.preserve.unwrap_or(s.preserve);
        s.select = self.select.map(|_| self.p);
        (s.class.repair_bias, s.class.solver_max_iter) = (self.repair_bias, self.lp_max_iter);
        s
    }

    /// The training's epochs: as given, or the default (in margin mode; the paper's LP
    /// repairs the head as it is).
    pub fn epochs(&self) -> usize {
        self.epochs.unwrap_or(match self.mode {
            Mode::Margin => TRAIN_EPOCHS,
            Mode::Paper => 0,
        })
    }

    /// The loop's settings at radius `eps`.
    pub fn rounds(&self, eps: f32, seed: u64, feed: &Feed) -> RoundSettings {
        let steps = self.round_steps as usize;
        RoundSettings {
            rounds: usize::try_from(self.rounds).unwrap_or(usize::MAX),
            pool: self.pool,
            attack: attack::Settings {
                method: Method::Pgd,
                eps: vec![eps],
                steps,
                step_ratio: attack::step_ratio(steps),
                random_start: true,
                early_stop: true,
                seed,
                feed: feed.clone(),
            },
            loss: Loss::Ce,
            min_gain: 0.005,
            keep_instances: false,
            train: TrainSettings {
                epochs: self.epochs(),
                steps: usize::try_from(self.train_steps).unwrap_or(usize::MAX),
                eps,
                learning_rate: self.learning_rate,
                clean_weight: self.clean_weight,
                fixed_weight: self.fixed_weight,
                seed,
                ..TrainSettings::default()
            },
        }
    }
}

/// Arguments of `nnmend repair`.
#[derive(Debug, Args)]
pub struct RepairArgs {
    /// The hybrid to repair (written by `nnmend fit`).
    pub(super) hybrid: PathBuf,
    /// The repair samples: an `attack -o` file; its successful rows are used.
    #[arg(long, value_name = "ADV.npz", required_unless_present = "certify")]
    pub(super) adv: Option<PathBuf>,
    /// The data the attack ran on (its `index` column points into it).
    #[arg(long, value_name = "DATA")]
    pub(super) train: PathBuf,
    /// Where to write the repaired model.
    #[arg(short, long, value_name = "REPAIRED.onnx")]
    pub(super) output: PathBuf,
    /// The hybrid's head: read from the model (auto), or the kind it must be.
    #[arg(long, value_enum, default_value_t = HeadArg::Auto)]
    head: HeadArg,
    /// Use only the first N repair samples (successful rows of `--adv`).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub(super) samples: Option<u64>,
    /// Certified repair: every point of the L∞ ball of radius E (clipped to [0, 1])
    /// around each ball's image is to be classified right with `--margin` [default
    /// 0.1 here] over the ball's feature box (interval bounds through the extractor),
    /// checked afterwards as `nnmend certify` checks. The balls are the clean originals
    /// of `--adv`'s repair samples, or without `--adv`, `--balls` training images.
    #[arg(long, value_name = "E", value_parser = super::unit_interval,
          conflicts_with_all = ["epochs", "select", "dump_lp", "adv_test", "eps"])]
    pub(super) certify: Option<f32>,
    /// Certified repair without `--adv`: how many training images (a seeded random
    /// choice) give the balls.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1000,
        requires = "certify",
        conflicts_with = "adv"
    )]
    pub(super) balls: usize,
    /// Certified repair: the margin each preserved image keeps, or its own when that is
    /// smaller [default: 2].
    #[arg(long, value_name = "M", value_parser = non_negative, allow_negative_numbers = true,
          requires = "certify")]
    pub(super) keep_margin: Option<f64>,
    /// Certified repair: the feature boxes, and the check afterwards.
    #[arg(long, value_enum, default_value_t = CertifyBounds::Interval, requires = "certify")]
    pub(super) certify_bounds: CertifyBounds,
    #[command(flatten)]
    pub(super) repair: RepairOptions,
    /// The radius of the rounds' attacks and of the robust accuracy [default: the
    /// `eps` of `--adv`'s rows, when they share one].
    #[arg(long, value_parser = super::unit_interval)]
    eps: Option<f32>,
    /// Seed of the pool's choice and of the attacks' random starts.
    #[arg(long, default_value_t = 0)]
    pub(super) seed: u64,
    /// Clean test data: report the accuracy change (drawdown) and the PGD robust
    /// accuracy before and after (see --pgd-limit).
    #[arg(long, value_name = "DATA")]
    pub(super) test: Option<PathBuf>,
    /// Test images whose robust accuracy is measured: PGD-40 from 3 random starts,
    /// cross-entropy and margin loss, against each model itself (0: none).
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub(super) pgd_limit: usize,
    /// Held-out adversarial examples (an `attack -o` file): report the share fixed.
    #[arg(long, value_name = "ADV.npz")]
    adv_test: Option<PathBuf>,
    /// Write the LP instance as JSON (features, per-class residuals); with --rounds,
    /// the chosen round's, and every round's as FILE's name with `.roundK` before its
    /// extension.
    #[arg(long, value_name = "FILE")]
    dump_lp: Option<PathBuf>,
    #[command(flatten)]
    pub(super) gates: GateArgs,
    /// Print one JSON document instead of text.
    #[arg(long)]
    pub(super) json: bool,
    #[command(flatten)]
    pub(super) data_args: DataArgs,
    #[command(flatten)]
    pub(super) engine: EngineArgs,
}

/// Refuses, before any work, a gate whose value this command line does not measure.
fn refuse_unmeasured_gates(args: &RepairArgs) -> Result<()> {
    for (quantity, what) in [
        (Quantity::Drawdown, "the drawdown"),
        (Quantity::RobustAccuracy, "the robust accuracy"),
    ] {
        if args.gates.has(quantity) && args.test.is_none() {
            usage!(
                "{} needs --test DATA: {what} is measured on the test images",
                quantity.flag()
            );
        }
    }
    if args.certify.is_some() && args.gates.has(Quantity::RobustAccuracy) {
        usage!(
            "{} is not measured by a certified repair (--certify): its efficacy is the share of balls certified",
            Quantity::RobustAccuracy.flag()
        );
    }
    args.gates.refuse_unmeasured_robustness(args.pgd_limit)
}

/// A repair whose LP was not solved writes nothing: its weights are whatever the
/// solver held when it stopped. One solved to reduced accuracy is written, with a
/// warning.
fn check_status(r: &nnmend::repair::Repair, args: &RepairArgs) -> Result<()> {
    let worst_class = r
        .classes
        .iter()
        .enumerate()
        .find(|(_, c)| c.status == r.status)
        .map_or(String::new(), |(k, _)| format!(" (class {k} first)"));
    match r.status {
        Status::Solved => Ok(()),
        Status::AlmostSolved => {
            warn(&format!(
                "the repair LP was solved to reduced accuracy only{worst_class}; the model is written, but check \
                 its efficacy and drawdown"
            ));
            Ok(())
        }
        Status::Stalled | Status::Infeasible => anyhow::bail!(
            "the repair LP ended {:?}{worst_class} after clarabel's iteration limit (--lp-max-iter {}) or on \
             numerical trouble; no model written to {}. Try a higher --lp-max-iter, fewer repair samples \
             (--samples N), fewer weights (--select wilcoxon){}; `--dump-lp FILE` with `nnmend lp FILE` \
             re-solves the instance on its own",
            r.status,
            args.repair.lp_max_iter,
            args.output.display(),
            if matches!(args.repair.mode, Mode::Paper) {
                ", or --mode margin"
            } else {
                ""
            }
        ),
    }
}

/// Where round `round`'s LP instance goes: `FILE.json` → `FILE.round2.json`.
fn round_dump(dump: &Path, round: usize) -> PathBuf {
    let stem = dump.file_stem().unwrap_or_default().to_string_lossy();
    let name = match dump.extension() {
        Some(ext) => format!("{stem}.round{round}.{}", ext.to_string_lossy()),
        None => format!("{stem}.round{round}"),
    };
    dump.with_file_name(name)
}

/// Runs `nnmend repair`.
pub fn repair(args: RepairArgs, g: &Global) -> Result<ExitCode> {
    let mut inputs: Vec<&Path> = vec![&args.hybrid, &args.train];
    inputs.extend(args.adv.as_deref());
    inputs.extend(args.test.as_deref());
    inputs.extend(args.adv_test.as_deref());
    g.refuse_overwrite(&args.output, &inputs)?;
    if let Some(dump) = &args.dump_lp {
        g.refuse_overwrite(dump, &inputs)?;
    }
    refuse_unmeasured_gates(&args)?;
    let hybrid = load_model(&args.hybrid)?;
    let found = head::find(&hybrid).with_context(|| format!("{}", args.hybrid.display()))?;
    let wanted = match args.head {
        HeadArg::Auto => None,
        HeadArg::Linear => Some(HeadKind::Linear),
        HeadArg::Kernel => Some(HeadKind::Kernel),
    };
    if let Some(wanted) = wanted.filter(|&w| w != found.kind) {
        usage!(
            "--head {} was given, but {} is a {} hybrid (its head Gemm reads '{}'); use --head {} or --head auto",
            wanted.name(),
            args.hybrid.display(),
            found.kind.name(),
            found.input,
            found.kind.name()
        );
    }
    if let Some(eps) = args.certify {
        return super::certified::repair(&args, &hybrid, eps);
    }
    let Some(adv_path) = args.adv.as_deref() else {
        usage!("repair needs --adv ADV.npz (the repair samples), or --certify E for a certified repair");
    };
    let adv = read_samples(adv_path, args.samples.map(|n| usize::try_from(n).unwrap_or(usize::MAX)))?;
    let eps = args.eps.or_else(|| adv.radius());
    let looped = args.repair.rounds > 1 || args.repair.epochs() > 0;
    if eps.is_none() && (looped || (args.test.is_some() && args.pgd_limit > 0)) {
        usage!(
            "{}: its rows have no single eps; give the radius of the head's training, the rounds' attacks and \
             the robust accuracy with --eps (or --epochs 0 --rounds 1 for a repair without attacks)",
            adv_path.display()
        );
    }
    let clean = args.data_args.load(&args.train, Split::Train)?;
    let (engine, feed) = args.engine.open(&args.data_args)?;
    let settings = args.repair.settings(feed.threads, found.kind);
    let mut rounds = match eps {
        Some(eps) if looped => args.repair.rounds(eps, args.seed, &feed),
        _ => RoundSettings::single(),
    };
    rounds.keep_instances = rounds.rounds > 1 && args.dump_lp.is_some();
    let done = repair_hybrid(
        &hybrid,
        &adv.images,
        &adv.index,
        &clean,
        engine.as_ref(),
        &feed,
        &settings,
        &rounds,
    )
    .with_context(|| format!("repairing {}", args.hybrid.display()))?;
    if let Some(dump) = &args.dump_lp {
        done.fix.instance.save(dump)?;
        for (round, instance) in done.instances.iter().enumerate() {
            instance.save(&round_dump(dump, round))?;
        }
    }
    check_status(&done.fix.repair, &args)?;
    save_model(&done.model, &args.output)?;
    let test = args.data_args.load_test(args.test.as_deref())?;
    let held_out = args.adv_test.as_deref().map(read_successful).transpose()?;
    let protocol = Protocol {
        seed: args.seed,
        ..Protocol::default()
    };
    let checks = Checks {
        test: test.as_ref(),
        robust: eps.map(|eps| (eps, args.pgd_limit)),
        protocol: Some(&protocol),
        held_out: held_out.as_ref().map(|h| &h.images),
    };
    let facts = assess(&hybrid, &done.model, &checks, engine.as_ref(), &feed)?;
    let doc = RepairDoc::new(
        &done,
        &settings,
        &facts,
        engine.describe(),
        args.output.clone(),
        &args.gates.gates(),
    );
    print_doc(&doc, args.json, |d, out| d.write_text(out))?;
    Ok(verdict(&doc.gates))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use clap::Parser;

    use nnmend::repair::KERNEL_MARGIN;

    use super::{HeadKind, RepairOptions, TRAIN_EPOCHS};

    #[derive(Debug, Parser)]
    struct Line {
        #[command(flatten)]
        repair: RepairOptions,
    }

    fn options(args: &[&str]) -> RepairOptions {
        Line::try_parse_from(std::iter::once("repair").chain(args.iter().copied()))
            .unwrap()
            .repair
    }

    #[test]
    fn the_defaults_depend_on_the_head_and_the_mode() {
        let o = options(&[]);
        assert_eq!(o.epochs(), TRAIN_EPOCHS);
        let linear = o.settings(1, HeadKind::Linear).margin.unwrap();
        assert_eq!((linear.margin, linear.guard_price), (1.0, 0.5));
        let kernel = o.settings(1, HeadKind::Kernel).margin.unwrap();
        assert_eq!((kernel.margin, kernel.guard_price), (KERNEL_MARGIN, 0.0));
        // What is given holds for either head.
        let o = options(&["--margin", "2", "--guard-price", "3", "--epochs", "4"]);
        for head in [HeadKind::Linear, HeadKind::Kernel] {
            let m = o.settings(1, head).margin.unwrap();
            assert_eq!((m.margin, m.guard_price, o.epochs()), (2.0, 3.0, 4));
        }
        let paper = options(&["--mode", "paper"]);
        assert_eq!(paper.epochs(), 0);
        assert!(paper.settings(1, HeadKind::Kernel).margin.is_none());
    }
}
