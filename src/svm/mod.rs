//! Multiclass linear support vector machine, one-vs-rest, trained by dual
//! coordinate descent with shrinking (Hsieh et al. 2008, Algorithm 3; the
//! method behind LIBLINEAR and scikit-learn's `LinearSVC(dual=True)`) or, for the
//! squared hinge, by a primal trust-region Newton method (TRON, LIBLINEAR's `-s 2`
//! and `LinearSVC(dual=False)`).
//!
//! For each class k the samples get labels y_i = +1 if they belong to k and
//! −1 otherwise, and an independent binary problem is solved. Each sample is
//! augmented with a constant feature, x_i ← [x_i, 1], so the bias is the last
//! weight and is regularised together with w, exactly like LIBLINEAR and
//! `LinearSVC(intercept_scaling=1)`; both solvers treat it so. The primal problem is
//! min_w ½‖w‖² + C Σ_i ξ(w; x_i, y_i), with the hinge loss
//! ξ = max(0, 1 − y_i wᵀx_i) or the squared hinge ξ = max(0, 1 − y_i wᵀx_i)².
//! The dual solver works on min_α ½ αᵀQ̄α − eᵀα subject to 0 ≤ α_i ≤ U,
//! with Q̄ = Q + D, Q_ij = y_i y_j x_iᵀx_j, and U = C, D_ii = 0 (hinge) or
//! U = ∞, D_ii = 1/(2C) (squared hinge); w = Σ_i y_i α_i x_i. Every class
//! reports its primal value P(w) and dual value D(α) = eᵀα − ½αᵀQ̄α (as a
//! maximisation), whose difference P − D ≥ 0 bounds the suboptimality; the primal
//! solver reports D at the dual point its weights map to, α_i = 2C ξ_i.
//!
//! The dual's coordinate descent (with shrinking, accelerated by occasional Newton
//! steps on the free variables once they are identified) stops when
//! max PG − min PG < tol over all samples. The primal (module `tron`) minimises P
//! directly with conjugate-gradient Newton steps over the samples inside the margin,
//! and stops at LIBLINEAR's rule ‖∇P‖ ≤ tol · max(min(#pos, #neg), 1) / n · ‖∇P(0)‖.
//! [`SolverChoice::Auto`] runs the primal for the squared hinge when the samples
//! outnumber the features twice over (there the dual has many free variables and, on uncentred
//! features such as CNN activations, converges slowly), and otherwise the dual,
//! handing over to the primal, from the dual's weights, when it has not converged
//! after [`STALL_PASSES`] passes. The hinge loss has no primal Newton method: it is
//! always solved in the dual.
//!
//! [`train`] adds what a user tunes around a fit: the choice of C on a validation
//! split (module `select`) and the standardisation of the features, folded back into
//! the weights (module `scale`).
//!
//! The classes are independent, so they are solved concurrently on
//! `std::thread::available_parallelism()` worker threads; each class draws
//! its coordinate order from its own ChaCha8 stream seeded by
//! (seed, class), so results do not depend on the thread count or schedule.

mod dcd;
mod error;
pub mod kernel;
mod newton;
mod report;
mod rows;
pub mod scale;
pub mod select;
mod train;
mod tron;

use std::time::Instant;

use ndarray::{Array1, Array2, ArrayView2, Axis};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

pub use error::SvmError;
pub use kernel::{KernelError, Nystrom, NystromSettings};
/// Four-lane dot product, shared with the certified repair's interior-point method.
pub(crate) use newton::dot4;
pub use report::{ClassReport, FitReport, ScalingReport, Solver};
pub use scale::Standardizer;
pub use select::{CSearch, GridPoint, Selection, Validation};
pub use train::{train, train_validated, Tuning};

use dcd::Settings;
use rows::{to_sparse, DenseRows, Rows};
use tron::PrimalSettings;

/// Loss applied to the margin violation 1 − y wᵀx of each sample (`fit --loss`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Loss {
    /// max(0, 1 − y·f)², as LIBLINEAR's and scikit-learn's default.
    #[default]
    SquaredHinge,
    /// max(0, 1 − y·f).
    Hinge,
}

/// Hyper-parameters of [`fit`].
#[derive(Debug, Clone, PartialEq)]
pub struct SvmParams {
    /// Inverse regularisation strength C > 0 (larger fits the data harder).
    pub c: f64,
    /// Loss function.
    pub loss: Loss,
    /// Stopping tolerance (same meaning and default, 1e-4, as LinearSVC's `tol`).
    /// Dual: a class is converged once the spread max PG − min PG of the projected
    /// gradient over all samples is below `tol`. Primal: once
    /// ‖∇P‖ ≤ tol · max(min(#pos, #neg), 1) / n · ‖∇P(0)‖.
    pub tol: f64,
    /// Most iterations per class: passes over the (active) samples for the dual,
    /// Newton iterations for the primal.
    pub max_iter: usize,
    /// Seed of the dual's per-pass random coordinate order (and of the validation
    /// split of [`train`]).
    pub seed: u64,
    /// The solver.
    pub solver: SolverChoice,
    /// Worker threads solving classes side by side; `None`: one per core. The
    /// results do not depend on it.
    pub threads: Option<usize>,
}

/// Which solver [`fit`] runs (`fit --solver`). `Auto`, for the squared hinge, hands
/// over from the dual after [`STALL_PASSES`] passes when `max_iter` allows more, and
/// runs the primal from the start when n ≥ [`PRIMAL_RATIO`]·(d + 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SolverChoice {
    /// The primal for the squared hinge when there are at least twice as many
    /// training images as features; otherwise the dual, handing over to the primal
    /// when it stalls.
    #[default]
    Auto,
    /// Trust-region Newton on the primal (squared hinge only), as LinearSVC(dual=False).
    Primal,
    /// Coordinate descent on the dual, as LinearSVC(dual=True).
    Dual,
}

/// [`SolverChoice::Auto`] runs the primal for the squared hinge when there are at least
/// this many samples per augmented feature. With fewer, the dual usually converges
/// as fast and much closer to the optimum (on nearly separable classes the primal's
/// gradient rule stops early); with more, the dual has too many free variables and
/// stalls on uncentred features, where the primal's cost per iteration stays that of
/// a few passes over the samples inside the margin.
pub const PRIMAL_RATIO: usize = 2;

/// Passes after which [`SolverChoice::Auto`] judges the dual stalled and hands the
/// problem over to the primal. Where the dual suits a problem it has usually
/// converged by then; where it has not, the primal, started from the dual's weights,
/// finishes in a few Newton iterations.
pub const STALL_PASSES: usize = 50;

/// How a class is solved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    Dual,
    Primal,
    /// The dual for up to this many passes, then the primal if it has not converged.
    DualThenPrimal(usize),
}

impl Plan {
    fn of(params: &SvmParams, n: usize, d: usize) -> Self {
        match (params.solver, params.loss) {
            (SolverChoice::Dual, _) | (_, Loss::Hinge) => Plan::Dual,
            (SolverChoice::Primal, Loss::SquaredHinge) => Plan::Primal,
            (SolverChoice::Auto, Loss::SquaredHinge) if n >= PRIMAL_RATIO * (d + 1) => Plan::Primal,
            (SolverChoice::Auto, Loss::SquaredHinge) if params.max_iter > STALL_PASSES => {
                Plan::DualThenPrimal(STALL_PASSES)
            }
            (SolverChoice::Auto, Loss::SquaredHinge) => Plan::Dual,
        }
    }
}

impl Default for SvmParams {
    fn default() -> Self {
        Self {
            c: 1.0,
            loss: Loss::SquaredHinge,
            tol: 1e-4,
            max_iter: 1000,
            seed: 0,
            solver: SolverChoice::Auto,
            threads: None,
        }
    }
}

/// A fitted one-vs-rest linear classifier: score_k(x) = W_k · x + b_k.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearSvm {
    /// Weight matrix, one row per class: shape `[k, d]`.
    pub weights: Array2<f32>,
    /// Bias per class: shape `[k]`.
    pub bias: Array1<f32>,
}

impl LinearSvm {
    /// Number of classes k.
    pub fn n_classes(&self) -> usize {
        self.weights.nrows()
    }

    /// Number of input features d.
    pub fn n_features(&self) -> usize {
        self.weights.ncols()
    }

    /// Decision values x Wᵀ + b, shape `[n, k]`.
    ///
    /// # Panics
    /// If `x.ncols()` differs from [`LinearSvm::n_features`] (shape error of
    /// the matrix product).
    pub fn decision(&self, x: ArrayView2<f32>) -> Array2<f32> {
        x.dot(&self.weights.t()) + &self.bias
    }

    /// Predicted class per row: the argmax of [`LinearSvm::decision`], ties
    /// going to the lowest class index (NaN scores never win).
    ///
    /// # Panics
    /// If `x.ncols()` differs from [`LinearSvm::n_features`].
    pub fn predict(&self, x: ArrayView2<f32>) -> Vec<usize> {
        let scores = self.decision(x);
        scores
            .outer_iter()
            .map(|row| {
                let mut best = 0;
                for (k, &v) in row.iter().enumerate() {
                    // Strict comparison keeps the first of equal maxima.
                    if v > row[best] || (row[best].is_nan() && !v.is_nan()) {
                        best = k;
                    }
                }
                best
            })
            .collect()
    }
}

/// Outcome of one binary solve, by either solver.
pub(crate) struct BinarySolution {
    /// Augmented weights `[w, b]`, length d + 1.
    pub(crate) w: Vec<f64>,
    /// The solver that produced `w`.
    pub(crate) solver: Solver,
    /// Passes (dual) or Newton iterations (primal).
    pub(crate) iterations: usize,
    /// Whether the solver's stopping rule was met (for the dual: on the full,
    /// unshrunk set).
    pub(crate) converged: bool,
    /// The stopping measure at the returned w ([`ClassReport::violation`]).
    pub(crate) violation: f64,
    /// What `violation` is compared with.
    pub(crate) threshold: f64,
    /// Primal objective ½‖w‖² + C Σ ξ_i at the returned w.
    pub(crate) primal: f64,
    /// Dual objective (maximisation form) at the returned or mapped α.
    pub(crate) dual: f64,
    /// Number of samples with α_i > 0.
    pub(crate) support_vectors: usize,
    /// Subspace Newton steps of the dual.
    pub(crate) newton_steps: usize,
    /// Conjugate-gradient iterations of the primal.
    pub(crate) cg_iterations: usize,
    /// Dual passes before the primal took over.
    pub(crate) switched_after: Option<usize>,
}

/// Feature storage used by the solver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Storage {
    /// Dense row-major f32.
    Dense,
    /// Compressed sparse rows.
    Sparse,
}

/// Fraction of non-zero features below which sparse rows are used. A sparse
/// entry costs 8 bytes (value + index) and a gather, a dense one 4 bytes and
/// a streamed multiply: measured per pass, sparse was 2× faster on MNIST
/// pixels (19 % non-zero) and on par on CNN features (36 % non-zero).
const SPARSE_DENSITY: f64 = 0.35;

/// Fits one linear SVM per class (one-vs-rest) on rows `x` with labels `y`.
///
/// Always returns `n_classes` hyperplanes, also for two classes, so the head
/// has one output per class. Reaching `params.max_iter` is not an error:
/// the class is reported with `converged == false`.
///
/// # Errors
/// [`SvmError`] for an empty set, mismatched lengths, a label
/// `>= n_classes`, a non-finite feature, C not positive and finite, or the primal
/// solver asked for with the hinge loss.
pub fn fit(
    x: ArrayView2<f32>,
    y: &[usize],
    n_classes: usize,
    params: &SvmParams,
) -> Result<(LinearSvm, FitReport), SvmError> {
    fit_from(x, y, n_classes, params, &FitOptions::default(), None)
}

/// Internal knobs of [`fit`] (for tests and benchmarks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FitOptions {
    /// Feature storage; `None` chooses by density.
    pub(crate) storage: Option<Storage>,
    /// Worker threads, overriding `SvmParams::threads`.
    pub(crate) threads: Option<usize>,
    /// Subspace Newton acceleration of the dual (false: plain Algorithm 3).
    pub(crate) newton: bool,
    /// Diagonal preconditioning of the primal's conjugate gradients. Off by default:
    /// on synthetic CNN-like features (non-negative, uncentred, 10 classes) it cut the
    /// CG iterations ninefold where the feature scales spread over orders of
    /// magnitude, but took up to twice as many elsewhere, and there stopped (at the
    /// same gradient rule) at objectives 5–40 % further from the optimum than the
    /// plain method, which stops where LIBLINEAR's does.
    pub(crate) precondition: bool,
}

impl Default for FitOptions {
    fn default() -> Self {
        Self {
            storage: None,
            threads: None,
            newton: true,
            precondition: false,
        }
    }
}

/// [`fit`] with internal options (storage, thread count, Newton
/// acceleration) set explicitly, for tests.
#[cfg(test)]
pub(crate) fn fit_with(
    x: ArrayView2<f32>,
    y: &[usize],
    n_classes: usize,
    params: &SvmParams,
    options: &FitOptions,
) -> Result<(LinearSvm, FitReport), SvmError> {
    fit_from(x, y, n_classes, params, options, None)
}

/// Refuses what [`fit`] cannot fit; returns the number of non-zero features.
fn check_input(x: ArrayView2<f32>, y: &[usize], n_classes: usize, params: &SvmParams) -> Result<usize, SvmError> {
    if !(params.c > 0.0 && params.c.is_finite()) {
        return Err(SvmError::InvalidC(params.c));
    }
    if params.solver == SolverChoice::Primal && params.loss == Loss::Hinge {
        return Err(SvmError::PrimalHinge);
    }
    check_rows(x, y, n_classes)
}

/// Checks feature rows and their labels: some rows, one label per row, each below
/// `n_classes`, every feature finite. Returns the number of non-zero features.
fn check_rows(x: ArrayView2<f32>, y: &[usize], n_classes: usize) -> Result<usize, SvmError> {
    let n = x.nrows();
    if n == 0 {
        return Err(SvmError::Empty);
    }
    if y.len() != n {
        return Err(SvmError::LengthMismatch {
            samples: n,
            labels: y.len(),
        });
    }
    if let Some((sample, &label)) = y.iter().enumerate().find(|(_, &l)| l >= n_classes) {
        return Err(SvmError::LabelOutOfRange {
            sample,
            label,
            n_classes,
        });
    }
    let mut nnz = 0usize;
    for (sample, row) in x.axis_iter(Axis(0)).enumerate() {
        for (feature, &value) in row.iter().enumerate() {
            if !value.is_finite() {
                return Err(SvmError::NonFinite { sample, feature, value });
            }
            nnz += usize::from(value != 0.0);
        }
    }
    Ok(nnz)
}

/// [`fit_with`] from `start`: a model of the same shape whose weights the primal
/// solver starts from (the dual always starts from α = 0; a start of another shape
/// is not used).
pub(crate) fn fit_from(
    x: ArrayView2<f32>,
    y: &[usize],
    n_classes: usize,
    params: &SvmParams,
    options: &FitOptions,
    start: Option<&LinearSvm>,
) -> Result<(LinearSvm, FitReport), SvmError> {
    let started = Instant::now();
    let nnz = check_input(x, y, n_classes, params)?;
    let (n, d) = x.dim();
    // Sparse rows store u32 feature indices, so they need d ≤ 2³².
    let sparse_possible = u32::try_from(d).is_ok();
    let density = nnz as f64 / (n as f64 * d.max(1) as f64);
    let storage = match options.storage {
        _ if !sparse_possible => Storage::Dense,
        Some(forced) => forced,
        None if density < SPARSE_DENSITY => Storage::Sparse,
        None => Storage::Dense,
    };
    let threads = options
        .threads
        .or(params.threads)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |p| p.get()))
        .clamp(1, n_classes.max(1));
    let start = start.filter(|s| s.weights.dim() == (n_classes, d) && s.bias.len() == n_classes);
    let job = Job {
        y,
        n_classes,
        params,
        options,
        threads,
        start,
    };

    let solutions = match storage {
        Storage::Dense => {
            // Contiguous row-major data lets each row be one slice; a copy
            // is made only if the view is not already laid out that way.
            let owned = x.as_standard_layout();
            let copy: Vec<f32>;
            let data = match owned.as_slice() {
                Some(s) => s,
                None => {
                    copy = owned.iter().copied().collect();
                    &copy
                }
            };
            solve_all(&DenseRows { data, n, d }, &job)
        }
        Storage::Sparse => solve_all(&to_sparse(x, nnz), &job),
    };

    let mut weights = Array2::<f32>::zeros((n_classes, d));
    let mut bias = Array1::<f32>::zeros(n_classes);
    let mut classes = Vec::with_capacity(n_classes);
    for (class, sol) in solutions.into_iter().enumerate() {
        for (dst, &src) in weights.row_mut(class).iter_mut().zip(&sol.w[..d]) {
            *dst = src as f32;
        }
        bias[class] = sol.w[d] as f32;
        classes.push(ClassReport {
            class,
            solver: sol.solver,
            iterations: sol.iterations,
            converged: sol.converged,
            violation: sol.violation,
            threshold: sol.threshold,
            primal: sol.primal,
            dual: sol.dual,
            support_vectors: sol.support_vectors,
            newton_steps: sol.newton_steps,
            cg_iterations: sol.cg_iterations,
            switched_after: sol.switched_after,
        });
    }
    let report = FitReport {
        classes,
        seconds: started.elapsed().as_secs_f64(),
        c: params.c,
        selection: None,
        scaling: None,
    };
    Ok((LinearSvm { weights, bias }, report))
}

/// The coordinate-order generator of one class: a ChaCha8 stream whose key
/// holds the user seed and the class index, so each class is reproducible
/// on its own.
fn class_rng(seed: u64, class: usize) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&(class as u64).to_le_bytes());
    ChaCha8Rng::from_seed(key)
}

/// What every one-vs-rest problem of a fit shares.
struct Job<'a> {
    y: &'a [usize],
    n_classes: usize,
    params: &'a SvmParams,
    options: &'a FitOptions,
    threads: usize,
    start: Option<&'a LinearSvm>,
}

/// Solves every one-vs-rest problem, spreading classes over `threads`
/// workers that pull the next class from a shared counter (classes differ in
/// difficulty, so static splitting would leave workers idle).
fn solve_all<R: Rows>(rows: &R, job: &Job<'_>) -> Vec<BinarySolution> {
    let params = job.params;
    let plan = Plan::of(params, rows.n(), rows.d());
    let (_, shift) = Settings::bound_and_shift(params.loss, params.c);
    // Q̄_ii depends only on the sample, C and the loss: compute it once (the primal
    // alone does not need it).
    let q_diag: Vec<f64> = match plan {
        Plan::Primal => Vec::new(),
        _ => (0..rows.n()).map(|i| rows.sq_norm(i) + 1.0 + shift).collect(),
    };
    let dual = |max_iter| Settings {
        loss: params.loss,
        c: params.c,
        tol: params.tol,
        max_iter,
        q_diag: &q_diag,
        newton: job.options.newton,
    };
    let primal = PrimalSettings {
        c: params.c,
        eps: params.tol,
        max_iter: params.max_iter,
        precondition: job.options.precondition,
    };
    let start = |class: usize| {
        job.start.map(|s| {
            let mut w: Vec<f64> = s.weights.row(class).iter().map(|&v| f64::from(v)).collect();
            w.push(f64::from(s.bias[class]));
            w
        })
    };
    let y = job.y;
    let solve_class = |class: usize| {
        let positive = |i: usize| y[i] == class;
        match plan {
            Plan::Primal => tron::solve(rows, &positive, &primal, start(class).as_deref()),
            Plan::Dual => dcd::solve(
                rows,
                &positive,
                &dual(params.max_iter),
                &mut class_rng(params.seed, class),
            ),
            Plan::DualThenPrimal(passes) => {
                let first = dcd::solve(rows, &positive, &dual(passes), &mut class_rng(params.seed, class));
                if first.converged {
                    return first;
                }
                let mut then = tron::solve(rows, &positive, &primal, Some(&first.w));
                then.switched_after = Some(first.iterations);
                then
            }
        }
    };
    crate::parallel::map_indices(job.n_classes, job.threads, solve_class)
}

#[cfg(test)]
mod primal_tests;
#[cfg(test)]
mod tests;
