//! Adversarial training of a hybrid's linear head on its frozen extractor.
//!
//! The robust counterpart of the margin repair asks that every point of the ε-ball
//! around each pool image be classified right with a margin:
//!
//! ```text
//! min over (W, b) of  Σ_i max_{‖x' − x_i‖∞ ≤ ε} Σ_{j ≠ y_i} max(0, m + z_j(x') − z_{y_i}(x'))
//! ```
//!
//! with `z = W f(x') + b` on the frozen features `f`. For fixed inner points the sum is
//! convex in the head, so a (sub)gradient taken at the inner maximiser is a subgradient
//! of the whole (Danskin): the inner maximum is approximated by PGD against the current
//! head, and the outer minimum by Adam on minibatches of the pool. An epoch attacks
//! every pool image once. A point repair adds the adversarial examples found against
//! one head as constraints; here each minibatch is attacked against the head it is
//! about to change, so many cheap rounds replace a few expensive ones.
//!
//! The gradients come from one graph with the head as an input
//! ([`crate::onnx::grad::backward_head`]). Minibatches are cut into sub-batches of a
//! fixed size, spread over the threads, so the result does not depend on the thread
//! count.

use std::time::Instant;

use ndarray::{s, Array1, Array2, ArrayD, ArrayView2, Axis};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::attack::{pgd, HeadTarget};
use crate::data::Dataset;
use crate::error::Result;
use crate::features::argmax_rows;
use crate::onnx::grad::Loss;
use crate::svm::LinearSvm;

use super::{class_indices, RepairError};

/// Images per engine run; a minibatch is cut into these whatever the thread count.
const SUB_BATCH: usize = 32;

/// How the head is trained.
#[derive(Debug, Clone)]
pub struct TrainSettings {
    /// Passes over the pool (0: no training).
    pub epochs: usize,
    /// Pool images per update.
    pub batch: usize,
    /// PGD iterations of each minibatch's attack (a random start, steps of 2.5·ε/N).
    pub steps: usize,
    /// The radius.
    pub eps: f32,
    /// Adam's step, as a fraction of the root mean square of the head's weights.
    pub learning_rate: f64,
    /// The margin the hinge asks for, in the head's decision units.
    pub margin: f64,
    /// Weight of the hinge on the clean pool images beside that on their attacks.
    pub clean_weight: f64,
    /// Weight of the hinge on the fixed repair samples, per sample, beside that on the
    /// attacked pool images.
    pub fixed_weight: f64,
    /// Seeds the pool's order and the random starts.
    pub seed: u64,
}

impl Default for TrainSettings {
    fn default() -> Self {
        Self {
            epochs: 0,
            batch: 128,
            steps: 7,
            eps: 0.0,
            learning_rate: 0.048,
            margin: 1.0,
            clean_weight: 1.0,
            fixed_weight: 1.0,
            seed: 0,
        }
    }
}

/// One pass over the pool.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Epoch {
    /// 1, 2, …
    pub epoch: usize,
    /// Share of the pool images that every PGD iterate of this epoch's attack left
    /// classified right (each against the head of its minibatch).
    pub pool_robust_accuracy: f64,
    /// Mean hinge loss of the attacked images, before each update.
    pub loss: f64,
    /// Seconds.
    pub seconds: f64,
}

/// A trained head.
#[derive(Debug, Clone)]
pub struct Trained {
    /// The head's linear part after the last epoch.
    pub linear: LinearSvm,
    /// Every epoch.
    pub epochs: Vec<Epoch>,
    /// The last epoch's attacks: the features of each pool image's last PGD iterate
    /// `[n, D]`, in pool order.
    pub attacked: Array2<f32>,
}

/// Adam on the head's weights and bias, as one flat vector.
struct Adam {
    m: Vec<f64>,
    v: Vec<f64>,
    t: i32,
    step: f64,
}

impl Adam {
    const BETA1: f64 = 0.9;
    const BETA2: f64 = 0.999;
    const EPSILON: f64 = 1e-8;

    fn new(len: usize, step: f64) -> Self {
        Self {
            m: vec![0.0; len],
            v: vec![0.0; len],
            t: 0,
            step,
        }
    }

    fn update(&mut self, params: &mut [f64], grad: &[f64]) {
        self.t += 1;
        let c1 = 1.0 - Self::BETA1.powi(self.t);
        let c2 = 1.0 - Self::BETA2.powi(self.t);
        for (((p, &g), m), v) in params.iter_mut().zip(grad).zip(&mut self.m).zip(&mut self.v) {
            *m = Self::BETA1 * *m + (1.0 - Self::BETA1) * g;
            *v = Self::BETA2 * *v + (1.0 - Self::BETA2) * g * g;
            *p -= self.step * (*m / c1) / ((*v / c2).sqrt() + Self::EPSILON);
        }
    }
}

/// The hinge `Σ_{j≠y} max(0, m + z_j − z_y)` of each row and its coefficients: the
/// gradient of the rows' summed hinge with respect to the scores, `[b, K]`.
fn hinge(scores: &Array2<f64>, labels: &[usize], margin: f64) -> (f64, Array2<f64>) {
    let mut coef = Array2::zeros(scores.raw_dim());
    let mut total = 0.0;
    for (i, (row, &y)) in scores.rows().into_iter().zip(labels).enumerate() {
        for (j, &z) in row.iter().enumerate() {
            let h = margin + z - row[y];
            if j != y && h > 0.0 {
                total += h;
                coef[[i, j]] += 1.0;
                coef[[i, y]] -= 1.0;
            }
        }
    }
    (total, coef)
}

/// What the attack of one sub-batch returns: the features of its last iterates, and
/// whether any iterate was misclassified.
type Attacked = (Array2<f32>, Vec<bool>);

/// The head as the gradient graph reads it: `Wᵀ` `[D, K]` and `b`.
struct HeadInputs {
    wt: Array2<f32>,
    bias: Array1<f32>,
}

/// PGD on the target's loss (no early stop: the last iterate counts) on one sub-batch.
fn attack(
    target: &HeadTarget,
    head: &HeadInputs,
    clean: &ArrayD<f32>,
    labels: &[usize],
    rows: &[usize],
    settings: &TrainSettings,
    epoch: usize,
) -> Result<Attacked> {
    let eps = settings.eps;
    let mut x = clean.clone();
    for (mut xi, &row) in x.outer_iter_mut().zip(rows) {
        let mut rng = ChaCha8Rng::seed_from_u64(settings.seed);
        rng.set_stream(((epoch as u64) << 32) | row as u64);
        xi.mapv_inplace(|v| (v + rng.random_range(-eps..=eps)).clamp(0.0, 1.0));
    }
    let mut target_rows = Array2::<f32>::zeros((labels.len(), target.classes));
    for (i, &y) in labels.iter().enumerate() {
        target_rows[[i, y]] = 1.0;
    }
    let mut broken = vec![false; labels.len()];
    let alpha = 2.5 * eps / settings.steps.max(1) as f32;
    // Cross-entropy is ascended, the margin descended.
    let direction = if target.loss == Loss::Margin { -1.0 } else { 1.0 };
    let all = vec![true; labels.len()];
    for _ in 0..settings.steps {
        let g = target.gradient(x.view(), &target_rows, &head.wt, &head.bias)?;
        for ((b, p), &y) in broken.iter_mut().zip(argmax_rows(&g.logits)).zip(labels) {
            *b |= p != y;
        }
        let moved = x.view_mut();
        pgd::step(moved, clean.view(), g.grad.view(), &all, alpha, eps, direction);
    }
    let features = target.features(x.view())?;
    let scores = features.dot(&head.wt) + &head.bias;
    for ((b, p), &y) in broken.iter_mut().zip(argmax_rows(&scores)).zip(labels) {
        *b |= p != y;
    }
    Ok((features, broken))
}

/// Attacks the pool rows `rows` (in sub-batches spread over `threads`) against `head`.
#[allow(clippy::too_many_arguments)]
fn attack_rows(
    target: &HeadTarget,
    head: &HeadInputs,
    pixels: &ArrayD<f32>,
    labels: &[usize],
    rows: &[usize],
    settings: &TrainSettings,
    epoch: usize,
    threads: usize,
) -> Result<Attacked> {
    let chunks: Vec<&[usize]> = rows.chunks(SUB_BATCH).collect();
    let threads = threads.clamp(1, chunks.len().max(1));
    let results: Vec<Result<Vec<(usize, Attacked)>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let chunks = &chunks;
                scope.spawn(move || {
                    let mut out = Vec::new();
                    for (c, chunk) in chunks.iter().enumerate().skip(t).step_by(threads) {
                        let clean = pixels.select(Axis(0), chunk);
                        let ys: Vec<usize> = chunk.iter().map(|&r| labels[r]).collect();
                        out.push((c, attack(target, head, &clean, &ys, chunk, settings, epoch)?));
                    }
                    Ok(out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(RepairError::Shape("an attack worker panicked".into()).into()))
            })
            .collect()
    });
    let mut parts: Vec<(usize, Attacked)> = Vec::with_capacity(chunks.len());
    for r in results {
        parts.extend(r?);
    }
    parts.sort_by_key(|(c, _)| *c);
    let mut features = Array2::zeros((rows.len(), target.features));
    let mut broken = Vec::with_capacity(rows.len());
    let mut at = 0;
    for (_, (f, b)) in parts {
        features.slice_mut(s![at..at + f.nrows(), ..]).assign(&f);
        at += f.nrows();
        broken.extend(b);
    }
    Ok((features, broken))
}

/// Repair samples held fixed through the training: their features and labels. Each
/// minibatch carries its share of them, so that every epoch sees each once.
#[derive(Debug, Clone, Copy)]
pub struct Fixed<'a> {
    /// `[S, D]`.
    pub features: ndarray::ArrayView2<'a, f32>,
    /// `[S]`.
    pub labels: &'a [i64],
}

/// Trains `linear` (the head's linear part, reading what `target` extracts) against
/// PGD on the images of `pool`, whose clean features are `clean` `[n, D]`,
/// `settings.epochs` passes, on `threads` threads, with the hinge of the `fixed` repair
/// samples beside that of the attacked pool.
pub fn train(
    target: &HeadTarget,
    pool: &Dataset,
    clean: ArrayView2<f32>,
    linear: &LinearSvm,
    fixed: Fixed,
    settings: &TrainSettings,
    threads: usize,
) -> Result<Trained> {
    let (k, d) = linear.weights.dim();
    if target.classes != k || target.features != d {
        return Err(RepairError::Shape(format!(
            "the head reads {d} features into {k} classes, the extractor gives {} features for {} classes",
            target.features, target.classes
        ))
        .into());
    }
    let labels = class_indices(&pool.labels, k)?;
    let fixed_labels = class_indices(fixed.labels, k)?;
    let n = pool.len();
    if fixed.features.dim() != (fixed_labels.len(), d) || clean.dim() != (n, d) {
        return Err(
            RepairError::Shape("the fixed repair samples or the pool's features do not match the head".into()).into(),
        );
    }
    let fixed_features = fixed.features.mapv(f64::from);
    let clean = clean.mapv(f64::from);
    let pixels = target.pixels.batch(pool, 0..n)?;

    // Parameters: W row-major, then b.
    let mut params: Vec<f64> = linear
        .weights
        .iter()
        .chain(&linear.bias)
        .map(|&v| f64::from(v))
        .collect();
    let rms = (linear.weights.iter().map(|&w| f64::from(w).powi(2)).sum::<f64>() / (k * d).max(1) as f64).sqrt();
    let mut adam = Adam::new(params.len(), settings.learning_rate * rms.max(f64::MIN_POSITIVE));
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(settings.seed);
    let mut epochs = Vec::with_capacity(settings.epochs);
    let mut attacked = Array2::<f32>::zeros((n, d));
    for epoch in 1..=settings.epochs {
        let started = Instant::now();
        order.shuffle(&mut rng);
        let (mut robust, mut loss_sum) = (0usize, 0.0);
        let mut fixed_order: Vec<usize> = (0..fixed_labels.len()).collect();
        fixed_order.shuffle(&mut rng);
        let batches = n.div_ceil(settings.batch.max(1)).max(1);
        for (batch, rows) in order.chunks(settings.batch.max(1)).enumerate() {
            let share = {
                let s = fixed_order.len();
                &fixed_order[batch * s / batches..(batch + 1) * s / batches]
            };
            let w = Array2::from_shape_vec((k, d), params[..k * d].to_vec())
                .map_err(|e| RepairError::Shape(e.to_string()))?;
            let head = HeadInputs {
                wt: w.t().as_standard_layout().mapv(|v| v as f32),
                bias: params[k * d..].iter().map(|&v| v as f32).collect(),
            };
            let threads = threads.max(1);
            let (features, broken) = attack_rows(target, &head, &pixels, &labels, rows, settings, epoch, threads)?;
            robust += broken.iter().filter(|&&b| !b).count();
            if epoch == settings.epochs {
                for (f, &r) in features.rows().into_iter().zip(rows) {
                    attacked.row_mut(r).assign(&f);
                }
            }
            let ys: Vec<usize> = rows.iter().map(|&r| labels[r]).collect();
            let bias64 = Array1::from(params[k * d..].to_vec());
            // Σ over blocks of weight · hinge, per pool image of the minibatch.
            let mut gw = Array2::<f64>::zeros((k, d));
            let mut gb = Array1::<f64>::zeros(k);
            let mut add = |f: &Array2<f64>, ys: &[usize], weight: f64| -> f64 {
                let (loss, coef) = hinge(&(f.dot(&w.t()) + &bias64), ys, settings.margin);
                let scale = weight / rows.len() as f64;
                gw.scaled_add(scale, &coef.t().dot(f));
                gb.scaled_add(scale, &coef.sum_axis(Axis(0)));
                loss
            };
            loss_sum += add(&features.mapv(f64::from), &ys, 1.0);
            if settings.clean_weight > 0.0 {
                add(&clean.select(Axis(0), rows), &ys, settings.clean_weight);
            }
            if !share.is_empty() {
                let fy: Vec<usize> = share.iter().map(|&i| fixed_labels[i]).collect();
                add(&fixed_features.select(Axis(0), share), &fy, settings.fixed_weight);
            }
            let grad: Vec<f64> = gw.iter().chain(gb.iter()).copied().collect();
            adam.update(&mut params, &grad);
        }
        epochs.push(Epoch {
            epoch,
            pool_robust_accuracy: robust as f64 / n.max(1) as f64,
            loss: loss_sum / n.max(1) as f64,
            seconds: started.elapsed().as_secs_f64(),
        });
    }
    let weights = Array2::from_shape_vec((k, d), params[..k * d].iter().map(|&v| v as f32).collect())
        .map_err(|e| RepairError::Shape(e.to_string()))?;
    let bias = params[k * d..].iter().map(|&v| v as f32).collect();
    Ok(Trained {
        linear: LinearSvm { weights, bias },
        epochs,
        attacked,
    })
}

#[cfg(test)]
mod tests {
    use ndarray::array;

    #[test]
    fn the_hinge_counts_each_rival_within_the_margin() {
        // Row 0: label 0 leads class 1 by 0.5 (inside margin 1) and class 2 by 3.
        // Row 1: label 2 trails class 0 by 1.
        let scores = array![[2.0, 1.5, -1.0], [1.0, 0.0, 0.0]];
        let (loss, coef) = super::hinge(&scores, &[0, 2], 1.0);
        assert!((loss - (0.5 + 2.0 + 1.0)).abs() < 1e-12);
        assert_eq!(coef, array![[-1.0, 1.0, 0.0], [1.0, 1.0, -2.0]]);
    }

    #[test]
    fn adam_moves_each_parameter_by_about_its_step_at_first() {
        let mut adam = super::Adam::new(2, 0.1);
        let mut p = vec![1.0, -1.0];
        adam.update(&mut p, &[3.0, -0.001]);
        assert!((p[0] - 0.9).abs() < 1e-6 && (p[1] + 0.9).abs() < 1e-3, "{p:?}");
    }
}
