//! Repairing the linear head of a hybrid by convex optimisation.
//!
//! The hybrid's last layer is `z = W f + b` on the extractor's features f. Given
//! repair samples (the features of adversarial images) and the decision values they
//! should have, the repair changes W (and, if asked, b) as little as possible in L1,
//! paying for what it cannot fix with slack. In the kernel hybrid f is the Nyström
//! feature vector φ the head reads, so the same programs repair it. [`paper`] is the
//! seed paper's formulation, separable by class and solved class by class with
//! clarabel.

pub mod head;
pub mod margin;
pub mod paper;
pub mod wilcoxon;

use std::time::Instant;

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis};

use crate::error::{Error, Result};
pub use paper::{ClassSettings, ClassSolution, Status, DEFAULT_MAX_ITER};

/// A repaired head and how it was found.
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

/// The paper's repair for every class: `weights` `[k, d]` and `bias` `[k]` of the head,
/// `features` `[S, d]` of the repair samples, `targets` `[S, k]` their wanted decision
/// values. With `allowed`, only those features' weights may change (the Wilcoxon
/// selection, [`wilcoxon::select`]). The classes are independent and run on
/// `threads` threads.
pub fn paper(
    weights: ArrayView2<f32>,
    bias: ArrayView1<f32>,
    features: ArrayView2<f32>,
    targets: ArrayView2<f32>,
    allowed: Option<&[usize]>,
    settings: &ClassSettings,
    threads: usize,
) -> Result<Repair> {
    let (k, d) = weights.dim();
    let s = features.nrows();
    if features.ncols() != d || bias.len() != k || targets.dim() != (s, k) {
        return Err(Error::Mismatch(format!(
            "head [{k}, {d}] with bias of {}, features {:?} and targets {:?} do not fit together",
            bias.len(),
            features.dim(),
            targets.dim()
        )));
    }
    if let Some((i, _)) = features.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(Error::Mismatch(format!(
            "repair sample {}: feature {} is not finite",
            i / d.max(1),
            i % d.max(1)
        )));
    }
    let started = Instant::now();
    let x = features.mapv(f64::from);
    let w = weights.mapv(f64::from);
    let scores = x.dot(&w.t()) + &bias.mapv(f64::from);
    let residuals = targets.mapv(f64::from) - &scores;
    let columns: Vec<usize> = match allowed {
        Some(cols) => {
            if let Some(bad) = cols.iter().find(|&&j| j >= d) {
                return Err(Error::Mismatch(format!(
                    "feature {bad} is out of range for {d} features"
                )));
            }
            cols.to_vec()
        }
        None => (0..d).collect(),
    };
    let x = if allowed.is_some() {
        x.select(Axis(1), &columns)
    } else {
        x
    };
    let classes = solve_classes(x.view(), residuals.view(), settings, threads)?;
    let mut new_w = weights.to_owned();
    let mut new_b = bias.to_owned();
    let (mut l1, mut linf) = (0.0f64, 0.0f64);
    let mut classes = classes;
    for (i, c) in classes.iter_mut().enumerate() {
        // Back from the allowed columns to all d features.
        let mut full = vec![0.0; d];
        for (&j, g) in columns.iter().zip(&c.gamma) {
            full[j] = *g;
        }
        c.gamma = full;
        for (j, g) in c.gamma.iter().enumerate() {
            new_w[[i, j]] += *g as f32;
            l1 += g.abs();
            linf = linf.max(g.abs());
        }
        new_b[i] += c.beta as f32;
        l1 += c.beta.abs();
        linf = linf.max(c.beta.abs());
    }
    let status = Status::worst(classes.iter().map(|c| c.status));
    Ok(Repair {
        weights: new_w,
        bias: new_b,
        objective: classes.iter().map(|c| c.objective).sum(),
        classes,
        margin: None,
        status,
        l1,
        linf,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Solves the paper's program for every class: `x` `[S, d]` the repair samples'
/// (changeable) features, `residuals` `[S, k]`. The classes are independent and run on
/// `threads` threads.
pub fn solve_classes(
    x: ArrayView2<f64>,
    residuals: ArrayView2<f64>,
    settings: &ClassSettings,
    threads: usize,
) -> Result<Vec<ClassSolution>> {
    let k = residuals.ncols();
    if residuals.nrows() != x.nrows() {
        return Err(Error::Mismatch(format!(
            "{} repair samples but {} rows of residuals",
            x.nrows(),
            residuals.nrows()
        )));
    }
    let workers = threads.clamp(1, k.max(1));
    // The cores left over by the class workers go to each solve's factorisation.
    let mut settings = *settings;
    if settings.solver_threads == 0 {
        settings.solver_threads = u32::try_from((threads / workers).max(1)).unwrap_or(1);
    }
    let settings = &settings;
    Ok(crate::parallel::map_indices(k, workers, |i| {
        paper::solve_class(x, residuals.index_axis(Axis(1), i), settings)
    }))
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
    /// The solve.
    pub solve: margin::MarginSettings,
}

impl Default for MarginOptions {
    fn default() -> Self {
        Self {
            margin: 1.0,
            slack_price: 1.0,
            keep_price: 10.0,
            solve: margin::MarginSettings::default(),
        }
    }
}

/// What [`repair_hybrid`] needs besides the model and the data.
#[derive(Debug, Clone)]
pub struct HybridSettings {
    /// The margin formulation with these parameters; the paper's without.
    pub margin: Option<MarginOptions>,
    /// Wilcoxon selection: only features with p below this change.
    pub select: Option<f64>,
    /// The per-class solve.
    pub class: ClassSettings,
    /// Threads for the classes.
    pub threads: usize,
    /// Margin mode: this many training images, evenly spaced through the data, join
    /// the preservation set (with the repair samples' clean originals).
    pub preserve: usize,
}

/// A repaired hybrid and the figures of its repair.
#[derive(Debug, Clone)]
pub struct HybridRepair {
    /// The repaired model: the hybrid with its head's weights (and bias) replaced.
    pub model: crate::onnx::ModelProto,
    /// Linear or kernel hybrid.
    pub head: head::HeadKind,
    /// The LP's solution.
    pub repair: Repair,
    /// Repair samples used.
    pub samples: usize,
    /// Features the repair could change.
    pub changeable: usize,
    /// Features in all.
    pub feature_dim: usize,
    /// Share of repair samples the hybrid classified correctly before the repair.
    pub efficacy_before: f64,
    /// Share of repair samples classified correctly after it.
    pub efficacy: f64,
    /// The repair samples still misclassified after it, by their `index` (their
    /// image's position in the data the attack ran on).
    pub unfixed: Vec<i64>,
    /// The LP's size.
    pub lp: LpSize,
    /// The LP's data for `--dump-lp`.
    pub instance: Instance,
}

/// A repair LP's data, as `--dump-lp` writes it.
#[derive(Debug, Clone)]
pub enum Instance {
    /// The paper's: the repair samples' changeable features `[S, d']` and the
    /// residuals `[S, k]`.
    Paper {
        /// `[S, d']`.
        x: Array2<f64>,
        /// `[S, k]`.
        residuals: Array2<f64>,
    },
    /// The margin program: changeable features `[N, d']` (a last column of ones when
    /// the bias changes), current scores `[N, k]`, labels, wanted margins and slack
    /// prices, repair samples first.
    Margin {
        /// `[N, d']`.
        x: Array2<f64>,
        /// `[N, k]`.
        scores: Array2<f64>,
        /// `[N]`.
        labels: Vec<usize>,
        /// Wanted margin per sample.
        margin: Vec<f64>,
        /// Slack price per sample.
        price: Vec<f64>,
    },
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

fn accuracy(scores: &Array2<f64>, labels: &[i64]) -> f64 {
    if labels.is_empty() {
        return 0.0;
    }
    correct(scores, labels).iter().filter(|&&c| c).count() as f64 / labels.len() as f64
}

/// Repairs `hybrid` (a linear or kernel hybrid written by `nnmend fit`, see
/// [`head::find`]) with the paper's formulation (or the margin one): the repair
/// samples are the rows of `adversarial` (their clean originals are the images of
/// `clean` at `index`), and each should get the decision values the hybrid gives its
/// clean original.
pub fn repair_hybrid(
    hybrid: &crate::onnx::ModelProto,
    adversarial: &crate::data::Dataset,
    index: &[i64],
    clean: &crate::data::Dataset,
    engine: &dyn crate::engine::Engine,
    feed: &crate::features::Feed,
    settings: &HybridSettings,
) -> Result<HybridRepair> {
    let head = head::find(hybrid)?;
    if index.len() != adversarial.len() {
        return Err(Error::Mismatch(format!(
            "{} repair samples but {} indices",
            adversarial.len(),
            index.len()
        )));
    }
    if adversarial.is_empty() {
        return Err(Error::Mismatch(
            "no repair samples: the attack found no adversarial example to repair (no row of the file has \
             success = true). Attack with a larger --eps, with --method pgd (stronger than FGSM), or on more \
             images (--limit), then repair with that file"
                .into(),
        ));
    }
    let mut rows = Vec::with_capacity(index.len());
    for (r, &i) in index.iter().enumerate() {
        let at = usize::try_from(i).ok().filter(|&i| i < clean.len()).ok_or_else(|| {
            Error::Mismatch(format!(
                "repair sample {r} comes from image {i}, but {} holds {} images: is it the data the attack ran on?",
                clean.source.display(),
                clean.len()
            ))
        })?;
        if clean.labels[at] != adversarial.labels[r] {
            return Err(Error::Mismatch(format!(
                "repair sample {r} has label {}, but image {at} of {} has label {}: is it the data the attack ran on?",
                adversarial.labels[r],
                clean.source.display(),
                clean.labels[at]
            )));
        }
        rows.push(at);
    }
    let originals = clean
        .select(&rows)
        .ok_or_else(|| Error::Mismatch("an index is out of range".into()))?;
    // The repair features are what the head reads: `features` in a linear hybrid,
    // the Nyström features in a kernel hybrid.
    let cut = crate::onnx::find_cut(hybrid, Some(&head.input))?;
    let extractor = crate::onnx::surgery::extractor(hybrid, &cut, None)?;
    let session = engine.prepare(&extractor)?;
    let f_adv = crate::features::collect(session.as_ref(), adversarial, feed, 0, "features")?;
    let f_clean = crate::features::collect(session.as_ref(), &originals, feed, 0, "features")?;
    let (k, d) = head.weights.dim();
    if f_adv.ncols() != d {
        return Err(Error::Mismatch(format!(
            "the extractor gives {} features, the head takes {d}",
            f_adv.ncols()
        )));
    }
    let w = head.weights.mapv(f64::from);
    let b = head.bias.mapv(f64::from);
    let clean64 = f_clean.mapv(f64::from);
    let adv64 = f_adv.mapv(f64::from);
    let targets = clean64.dot(&w.t()) + &b;
    let allowed = settings
        .select
        .map(|p| wilcoxon::select(clean64.view(), adv64.view(), p));
    let changeable = allowed.as_ref().map_or(d, Vec::len);
    let s = adversarial.len();
    let cols: Vec<usize> = allowed.clone().unwrap_or_else(|| (0..d).collect());
    let nnz_of = |f: &Array2<f64>| {
        cols.iter()
            .map(|&j| f.column(j).iter().filter(|v| **v != 0.0).count())
            .sum::<usize>()
    };
    let bias = usize::from(settings.class.repair_bias);
    let before = adv64.dot(&w.t()) + &b;
    let (repair, lp, instance) =
        match &settings.margin {
            None => {
                let repair = paper(
                    head.weights.view(),
                    head.bias.view(),
                    f_adv.view(),
                    targets.mapv(|v| v as f32).view(),
                    allowed.as_deref(),
                    &settings.class,
                    settings.threads,
                )?;
                let nnz_per_class = nnz_of(&adv64);
                let lp = LpSize {
                    variables: k * (2 * changeable + s + 2 * bias),
                    constraints: k * 2 * s,
                    nonzeros: k * (4 * nnz_per_class + 2 * s + 4 * s * bias),
                };
                let residuals = &targets - &before;
                let used = adv64.select(Axis(1), &cols);
                (repair, lp, Instance::Paper { x: used, residuals })
            }
            Some(options) => {
                // The preservation set: the repair samples' clean originals, then
                // `preserve` images evenly spaced through the training data (image
                // folders are sorted by class, so the first N would be one class).
                let count = settings.preserve.min(clean.len());
                let keep_rows: Vec<usize> = (0..count).map(|i| i * clean.len() / count.max(1)).collect();
                let kept = clean
                    .select(&keep_rows)
                    .ok_or_else(|| Error::Mismatch("a preservation index is out of range".into()))?;
                let f_kept = crate::features::collect(session.as_ref(), &kept, feed, 0, "features")?.mapv(f64::from);
                let mut x_all = ndarray::concatenate(Axis(0), &[adv64.view(), clean64.view(), f_kept.view()])
                    .map_err(|e| Error::Mismatch(format!("stacking the repair and preservation samples: {e}")))?;
                let scores = x_all.dot(&w.t()) + &b;
                let mut labels: Vec<usize> = Vec::with_capacity(x_all.nrows());
                for &l in adversarial.labels.iter().chain(&originals.labels).chain(&kept.labels) {
                    labels.push(usize::try_from(l).ok().filter(|&l| l < k).ok_or_else(|| {
                        Error::Mismatch(format!("label {l} is out of range for a head of {k} classes"))
                    })?);
                }
                let n_keep = x_all.nrows() - s;
                let keep: Vec<bool> = (0..x_all.nrows()).map(|i| i >= s).collect();
                let wanted = margin::wanted_margins(scores.view(), &labels, &keep, options.margin);
                let price: Vec<f64> = keep
                    .iter()
                    .map(|&kept| if kept { options.keep_price } else { options.slack_price })
                    .collect();
                if allowed.is_some() {
                    x_all = x_all.select(Axis(1), &cols);
                }
                if settings.class.repair_bias {
                    x_all
                        .push_column(Array1::ones(x_all.nrows()).view())
                        .map_err(|e| Error::Mismatch(format!("adding the bias column: {e}")))?;
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
                let solution = margin::solve(&problem, &solve);
                let mut new_w = head.weights.to_owned();
                let mut new_b = head.bias.to_owned();
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
                let n = s + n_keep;
                let nnz = x_all.iter().filter(|v| **v != 0.0).count();
                let lp = LpSize {
                    variables: 2 * k * (changeable + bias) + n,
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
                let instance = Instance::Margin {
                    x: x_all,
                    scores,
                    labels,
                    margin: wanted,
                    price,
                };
                (repair, lp, instance)
            }
        };
    let after = adv64.dot(&repair.weights.mapv(f64::from).t()) + &repair.bias.mapv(f64::from);
    let mode = if settings.margin.is_some() { "margin" } else { "paper" };
    let provenance = [
        ("nnmend.repair.mode", mode.to_string()),
        ("nnmend.repair.head", head.kind.name().to_string()),
        ("nnmend.repair.samples", s.to_string()),
        ("nnmend.repair.objective", format!("{}", repair.objective)),
        ("nnmend.repair.status", format!("{:?}", repair.status).to_lowercase()),
        ("nnmend.repair.bias", settings.class.repair_bias.to_string()),
        (
            "nnmend.repair.select",
            settings.select.map_or("none".into(), |p| format!("wilcoxon p < {p}")),
        ),
    ];
    let model = head::replace(hybrid, &head, &repair.weights, &repair.bias, &provenance)?;
    Ok(HybridRepair {
        model,
        head: head.kind,
        samples: s,
        changeable,
        feature_dim: d,
        efficacy_before: accuracy(&before, &adversarial.labels),
        efficacy: accuracy(&after, &adversarial.labels),
        unfixed: correct(&after, &adversarial.labels)
            .iter()
            .zip(index)
            .filter(|(&c, _)| !c)
            .map(|(_, &i)| i)
            .collect(),
        lp,
        instance,
        repair,
    })
}
