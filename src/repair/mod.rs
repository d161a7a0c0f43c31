//! Repairing the head of a hybrid by convex optimisation.
//!
//! The hybrid's last layer is `z = W f + b` on what its head reads: the extractor's
//! features in the linear hybrid, the Nyström features s·φ in the kernel hybrid
//! ([`crate::head`]). Given repair samples (the features of adversarial images), the
//! repair changes W (and, if asked, b) as little as possible in L1, paying for what it
//! cannot fix with slack. Two formulations: [`paper`], the seed paper's (each sample
//! should get the decision values of its clean original; separable by class), and
//! [`margin`] (each sample classified right with a margin while a preservation set
//! keeps its margins; the classes coupled).
//!
//! [`repair_head`] works on features, for callers that already hold them (the
//! experiment); [`repair_hybrid`] reads the head out of an ONNX hybrid, extracts the
//! features with an engine and writes the repaired model. [`Instance`] is the LP's
//! data as `repair --dump-lp` writes it and `nnmend lp` solves it.

pub mod adversarial;
pub mod certified;
mod error;
pub mod hybrid;
pub mod instance;
mod ipm;
pub mod margin;
pub mod paper;
pub mod rounds;
pub mod wilcoxon;

use ndarray::{Array1, Array2, ArrayView2, Axis};

use crate::head::HeadKind;
use crate::svm::LinearSvm;
pub use error::RepairError;
pub use hybrid::{assess, repair_hybrid, Assessment, Checks, HybridRepair};
pub use instance::Instance;
pub use paper::{solve_classes, ClassSettings, ClassSolution, Status, DEFAULT_MAX_ITER};

/// A repaired head's weights and how the LP that found them ended.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Repair {
    /// The repaired weights `[k, d]`.
    #[serde(skip)]
    pub weights: Array2<f32>,
    /// The repaired bias `[k]`.
    #[serde(skip)]
    pub bias: Array1<f32>,
    /// One solution per class (paper mode).
    pub classes: Vec<ClassSolution>,
    /// The coupled solution (margin mode).
    pub margin: Option<margin::MarginSolution>,
    /// The total objective, Σ over classes.
    pub objective: f64,
    /// The worst status over the classes.
    pub status: Status,
    /// Σ|ΔW| + Σ|Δb|.
    pub l1: f64,
    /// max |ΔW|, |Δb|.
    pub linf: f64,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// The size of the whole LP (all classes), as a solver would see it.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct LpSize {
    /// γ⁺, γ⁻ per changeable feature and class, δ per sample and class (β± with the bias).
    pub variables: usize,
    /// Two inequalities per sample and class (bounds not counted).
    pub constraints: usize,
    /// Non-zero coefficients of those inequalities.
    pub nonzeros: usize,
}

/// The margin formulation's parameters ([`margin`]).
#[derive(Debug, Clone, Copy)]
pub struct MarginOptions {
    /// The margin every repair sample should be classified with.
    pub margin: f64,
    /// Price of a unit of slack of a repair sample.
    pub slack_price: f64,
    /// Price of a unit of slack of a preservation sample (higher: keeping clean
    /// samples right comes first).
    pub keep_price: f64,
    /// Price of a unit of a guard's loss of margin ([`Samples::guards`]; lower than
    /// `slack_price`, so that fixing a repair sample comes before a guard's margin).
    pub guard_price: f64,
    /// The solve.
    pub solve: margin::MarginSettings,
}

impl Default for MarginOptions {
    fn default() -> Self {
        Self {
            margin: 1.0,
            slack_price: 1.0,
            keep_price: 10.0,
            guard_price: 0.5,
            solve: margin::MarginSettings::default(),
        }
    }
}

/// The margin a kernel hybrid's repair samples get after its training, with no guards:
/// on the validation split, the LP after a kernel head's training cost robust accuracy
/// whatever it was asked, least with a small margin and without guards, which also keep
/// its LP small (docs/RESULTS.md).
pub const KERNEL_MARGIN: f64 = 0.2;

/// Training images a margin repair preserves by default.
pub const PRESERVE: usize = 1000;

/// Epochs of head training before a margin repair's LP by default, chosen on a
/// validation split (docs/RESULTS.md); the paper's LP repairs the head as it is.
pub const TRAIN_EPOCHS: usize = 10;

impl MarginOptions {
    /// The defaults for a head of kind `head`: those of [`Default`] for a linear head;
    /// for a kernel head, margin [`KERNEL_MARGIN`] and no guards.
    pub fn for_head(head: HeadKind) -> Self {
        match head {
            HeadKind::Linear => Self::default(),
            HeadKind::Kernel => Self {
                margin: KERNEL_MARGIN,
                guard_price: 0.0,
                ..Self::default()
            },
        }
    }
}

/// How a head is repaired.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The margin formulation with these parameters; the paper's without.
    pub margin: Option<MarginOptions>,
    /// Wilcoxon selection: only features with p below this change.
    pub select: Option<f64>,
    /// The per-class solve.
    pub class: ClassSettings,
    /// Threads for the classes.
    pub threads: usize,
    /// Margin mode: this many training images, evenly spaced through the data
    /// ([`preservation_rows`]), join the preservation set (with the repair samples'
    /// clean originals).
    pub preserve: usize,
}

impl Settings {
    /// The margin formulation's defaults for a head of kind `head`
    /// ([`MarginOptions::for_head`], [`PRESERVE`] preserved images), on `threads`
    /// threads.
    pub fn margin(head: HeadKind, threads: usize) -> Self {
        Self {
            margin: Some(MarginOptions::for_head(head)),
            ..Self::paper(threads)
        }
    }

    /// The seed paper's formulation on `threads` threads.
    pub fn paper(threads: usize) -> Self {
        Self {
            margin: None,
            select: None,
            class: ClassSettings::default(),
            threads,
            preserve: PRESERVE,
        }
    }

    /// `paper` or `margin`.
    pub fn mode(&self) -> &'static str {
        if self.margin.is_some() {
            "margin"
        } else {
            "paper"
        }
    }
}

/// The rows of a repair, as features the head's linear part reads.
#[derive(Debug, Clone, Copy)]
pub struct Samples<'a> {
    /// The repair samples (adversarial examples) `[S, d]`.
    pub adversarial: ArrayView2<'a, f32>,
    /// Their labels `[S]`.
    pub labels: &'a [i64],
    /// Their clean originals `[S, d]`.
    pub originals: ArrayView2<'a, f32>,
    /// Margin mode: the preserved training images `[P, d]` (empty in paper mode).
    pub preserve: ArrayView2<'a, f32>,
    /// Their labels `[P]`.
    pub preserve_labels: &'a [i64],
    /// How many of the last preserved rows are guards: adversarial examples that the
    /// head already classifies right, whose margins are kept at
    /// [`MarginOptions::guard_price`] rather than at `keep_price`.
    pub guards: usize,
}

/// A repaired head and the figures of its repair.
#[derive(Debug, Clone)]
pub struct HeadRepair {
    /// The repaired linear part.
    pub linear: LinearSvm,
    /// The LP's solution.
    pub repair: Repair,
    /// Repair samples used.
    pub samples: usize,
    /// Features the repair could change.
    pub changeable: usize,
    /// Features in all.
    pub feature_dim: usize,
    /// Share of repair samples the head classified correctly before the repair.
    pub efficacy_before: f64,
    /// Share of repair samples classified correctly after it.
    pub efficacy: f64,
    /// The repair samples (rows of [`Samples::adversarial`]) still misclassified.
    pub unfixed: Vec<usize>,
    /// The LP's size.
    pub lp: LpSize,
    /// The LP's data, as `--dump-lp` writes it.
    pub instance: Instance,
}

impl HeadRepair {
    /// Measures the change ([`Repair::l1`], [`Repair::linf`]) from `original` rather
    /// than from the head the LP started from (they differ when the head was trained
    /// before the LP).
    pub fn measure_change_from(&mut self, original: &LinearSvm) {
        (self.repair.l1, self.repair.linf) = change(&self.linear, original);
    }
}

/// Σ|ΔW| + Σ|Δb| and max(|ΔW|, |Δb|) from `original` to `changed`.
pub fn change(changed: &LinearSvm, original: &LinearSvm) -> (f64, f64) {
    (&changed.weights - &original.weights)
        .into_iter()
        .chain(&changed.bias - &original.bias)
        .map(|g| f64::from(g).abs())
        .fold((0.0, 0.0), |(s, m): (f64, f64), g| (s + g, m.max(g)))
}

/// `count` rows evenly spaced through `n` (image folders are sorted by class, so the
/// first `count` would be one class): the training images a margin repair preserves.
pub fn preservation_rows(n: usize, count: usize) -> Vec<usize> {
    let count = count.min(n);
    (0..count).map(|i| i * n / count.max(1)).collect()
}

/// Whether each row's largest score is at its label (ties go to the lowest class, as
/// in [`crate::features::argmax_rows`]).
fn correct(scores: &Array2<f64>, labels: &[i64]) -> Vec<bool> {
    scores
        .rows()
        .into_iter()
        .zip(labels)
        .map(|(row, &l)| {
            let best = row.iter().enumerate().fold(
                (0, f64::NEG_INFINITY),
                |(bi, bv), (i, &v)| if v > bv { (i, v) } else { (bi, bv) },
            );
            best.0 as i64 == l
        })
        .collect()
}

fn share(flags: &[bool]) -> f64 {
    if flags.is_empty() {
        return 0.0;
    }
    flags.iter().filter(|&&c| c).count() as f64 / flags.len() as f64
}

/// Labels as class indices of a head with `k` classes.
pub(super) fn class_indices(labels: &[i64], k: usize) -> Result<Vec<usize>, RepairError> {
    labels
        .iter()
        .map(|&l| {
            usize::try_from(l)
                .ok()
                .filter(|&l| l < k)
                .ok_or(RepairError::Label { label: l, classes: k })
        })
        .collect()
}

/// Repairs the linear part `linear` of a head with `samples`, in the formulation
/// `settings` chooses: the paper's (each repair sample should get the decision values
/// the head gives its clean original) or the margin one.
pub fn repair_head(linear: &LinearSvm, samples: &Samples, settings: &Settings) -> Result<HeadRepair, RepairError> {
    repair_head_from(linear, samples, settings, &[])
}

/// [`repair_head`], with the margin program's active set started from `warm` (pairs
/// (row, class) of the program: repair samples, then their originals, then the
/// preserved samples; see [`margin::solve_from`]).
pub fn repair_head_from(
    linear: &LinearSvm,
    samples: &Samples,
    settings: &Settings,
    warm: &[(usize, usize)],
) -> Result<HeadRepair, RepairError> {
    let (k, d) = linear.weights.dim();
    let s = samples.adversarial.nrows();
    if s == 0 {
        return Err(RepairError::NoSamples);
    }
    let shapes_fit = samples.adversarial.ncols() == d
        && samples.originals.dim() == (s, d)
        && samples.labels.len() == s
        && samples.preserve.nrows() == samples.preserve_labels.len()
        && (samples.preserve.nrows() == 0 || samples.preserve.ncols() == d);
    if !shapes_fit {
        return Err(RepairError::Shape(format!(
            "a head of [{k}, {d}] with repair samples {:?} ({} labels), originals {:?} and preserved samples {:?} \
             ({} labels)",
            samples.adversarial.dim(),
            samples.labels.len(),
            samples.originals.dim(),
            samples.preserve.dim(),
            samples.preserve_labels.len()
        )));
    }
    let w = linear.weights.mapv(f64::from);
    let b = linear.bias.mapv(f64::from);
    let clean64 = samples.originals.mapv(f64::from);
    let adv64 = samples.adversarial.mapv(f64::from);
    let targets = clean64.dot(&w.t()) + &b;
    let allowed = settings
        .select
        .map(|p| wilcoxon::select(clean64.view(), adv64.view(), p));
    let changeable = allowed.as_ref().map_or(d, Vec::len);
    let cols: Vec<usize> = allowed.clone().unwrap_or_else(|| (0..d).collect());
    let bias = usize::from(settings.class.repair_bias);
    let before = adv64.dot(&w.t()) + &b;
    let (repair, lp, instance) = match &settings.margin {
        None => {
            let repair = paper::repair(
                linear.weights.view(),
                linear.bias.view(),
                samples.adversarial,
                targets.mapv(|v| v as f32).view(),
                allowed.as_deref(),
                &settings.class,
                settings.threads,
            )?;
            let nnz_per_class: usize = cols
                .iter()
                .map(|&j| adv64.column(j).iter().filter(|v| **v != 0.0).count())
                .sum();
            let lp = LpSize {
                variables: k * (2 * changeable + s + 2 * bias),
                constraints: k * 2 * s,
                nonzeros: k * (4 * nnz_per_class + 2 * s + 4 * s * bias),
            };
            let residuals = &targets - &before;
            let instance = Instance::paper(adv64.select(Axis(1), &cols), residuals, settings.class.repair_bias);
            (repair, lp, instance)
        }
        Some(options) => margin_repair(
            linear,
            samples,
            (settings, options, warm),
            (adv64.view(), clean64.view()),
            &cols,
        )?,
    };
    let after = adv64.dot(&repair.weights.mapv(f64::from).t()) + &repair.bias.mapv(f64::from);
    let fixed = correct(&after, samples.labels);
    Ok(HeadRepair {
        linear: LinearSvm {
            weights: repair.weights.clone(),
            bias: repair.bias.clone(),
        },
        samples: s,
        changeable,
        feature_dim: d,
        efficacy_before: share(&correct(&before, samples.labels)),
        efficacy: share(&fixed),
        unfixed: fixed.iter().enumerate().filter(|(_, &c)| !c).map(|(i, _)| i).collect(),
        lp,
        instance,
        repair,
    })
}

/// The margin program of [`repair_head`]: repair samples first, then their clean
/// originals and the preserved images, restricted to the columns `cols`.
fn margin_repair(
    linear: &LinearSvm,
    samples: &Samples,
    (settings, options, warm): (&Settings, &MarginOptions, &[(usize, usize)]),
    (adv64, clean64): (ArrayView2<f64>, ArrayView2<f64>),
    cols: &[usize],
) -> Result<(Repair, LpSize, Instance), RepairError> {
    let (k, d) = linear.weights.dim();
    let s = adv64.nrows();
    let kept = samples.preserve.mapv(f64::from);
    let mut x_all = ndarray::concatenate(Axis(0), &[adv64, clean64, kept.view()])
        .map_err(|e| RepairError::Shape(format!("stacking the repair and preservation samples: {e}")))?;
    let scores = x_all.dot(&linear.weights.mapv(f64::from).t()) + &linear.bias.mapv(f64::from);
    let all_labels: Vec<i64> = samples
        .labels
        .iter()
        .chain(samples.labels)
        .chain(samples.preserve_labels)
        .copied()
        .collect();
    let labels = class_indices(&all_labels, k)?;
    let n = x_all.nrows();
    let keep: Vec<bool> = (0..n).map(|i| i >= s).collect();
    let wanted = margin::wanted_margins(scores.view(), &labels, &keep, options.margin);
    let guards_from = n - samples.guards.min(samples.preserve.nrows());
    let price: Vec<f64> = keep
        .iter()
        .enumerate()
        .map(|(i, &kept)| {
            if !kept {
                options.slack_price
            } else if i < guards_from {
                options.keep_price
            } else {
                options.guard_price
            }
        })
        .collect();
    if cols.len() < d {
        x_all = x_all.select(Axis(1), cols);
    }
    if settings.class.repair_bias {
        x_all
            .push_column(Array1::ones(n).view())
            .map_err(|e| RepairError::Shape(format!("adding the bias column: {e}")))?;
    }
    let problem = margin::MarginProblem {
        x: x_all.view(),
        scores: scores.view(),
        labels: &labels,
        margin: &wanted,
        price: &price,
    };
    let mut solve = options.solve;
    if solve.solver_threads == 0 {
        solve.solver_threads = u32::try_from(settings.threads.max(1)).unwrap_or(1);
    }
    let solution = margin::solve_from(&problem, &solve, warm);
    let mut new_w = linear.weights.clone();
    let mut new_b = linear.bias.clone();
    let (mut l1, mut linf) = (0.0f64, 0.0f64);
    for c in 0..k {
        for (i, &j) in cols.iter().enumerate() {
            let g = solution.gamma[[c, i]];
            new_w[[c, j]] += g as f32;
            l1 += g.abs();
            linf = linf.max(g.abs());
        }
        if settings.class.repair_bias {
            let g = solution.gamma[[c, cols.len()]];
            new_b[c] += g as f32;
            l1 += g.abs();
            linf = linf.max(g.abs());
        }
    }
    let bias = usize::from(settings.class.repair_bias);
    let nnz = x_all.iter().filter(|v| **v != 0.0).count();
    let lp = LpSize {
        variables: 2 * k * (cols.len() + bias) + n,
        constraints: n * (k - 1),
        nonzeros: 2 * nnz * (k - 1) + n * (k - 1),
    };
    let repair = Repair {
        weights: new_w,
        bias: new_b,
        classes: Vec::new(),
        objective: solution.objective,
        status: solution.status,
        l1,
        linf,
        seconds: solution.seconds,
        margin: Some(solution),
    };
    let instance = Instance::margin(x_all, scores, labels, wanted, price, settings.class.repair_bias);
    Ok((repair, lp, instance))
}
