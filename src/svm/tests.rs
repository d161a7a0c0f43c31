//! Unit tests of the linear SVM: known optima, the dual's certificate, determinism.

use super::*;
use ndarray::{array, Array2};
use rand::Rng;

type TestResult = Result<(), SvmError>;

/// Three overlapping blobs in `d` dimensions: feature `j` of class `j % 3` is centred
/// on `centre`, the others on 0, each spread uniformly over ±1 and then passed to
/// `place` (with the generator, for a further draw).
pub(super) fn blobs_with(
    n: usize,
    d: usize,
    seed: u64,
    centre: f32,
    mut place: impl FnMut(&mut ChaCha8Rng, f32) -> f32,
) -> (Array2<f32>, Vec<usize>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut x = Array2::<f32>::zeros((n, d));
    let mut y = Vec::with_capacity(n);
    for i in 0..n {
        let class = i % 3;
        for j in 0..d {
            let c = if j % 3 == class { centre } else { 0.0 };
            let v: f32 = c + rng.random_range(-1.0..1.0);
            x[[i, j]] = place(&mut rng, v);
        }
        y.push(class);
    }
    (x, y)
}

/// Three overlapping uniform blobs in `d` dimensions, with some zeros so
/// that sparse and dense storage both see realistic rows.
fn blobs(n: usize, d: usize, seed: u64) -> (Array2<f32>, Vec<usize>) {
    blobs_with(n, d, seed, 1.5, |rng, v| if rng.random_bool(0.3) { 0.0 } else { v })
}

/// Dual coordinate descent with these settings (the primal has tests of its own).
fn params(loss: Loss, c: f64, tol: f64) -> SvmParams {
    SvmParams {
        c,
        loss,
        tol,
        max_iter: 100_000,
        seed: 7,
        solver: SolverChoice::Dual,
        threads: None,
    }
}

fn threads(n: usize) -> FitOptions {
    FitOptions {
        threads: Some(n),
        ..FitOptions::default()
    }
}

fn stored(storage: Storage) -> FitOptions {
    FitOptions {
        storage: Some(storage),
        ..FitOptions::default()
    }
}

fn close(a: f32, b: f64, tol: f64) -> bool {
    (f64::from(a) - b).abs() <= tol
}

#[test]
fn defaults_match_documentation() {
    let p = SvmParams::default();
    assert_eq!(p.c, 1.0);
    assert_eq!(p.loss, Loss::SquaredHinge);
    assert_eq!(p.tol, 1e-4);
    assert_eq!(p.max_iter, 1000);
    assert_eq!(p.seed, 0);
    assert_eq!(p.solver, SolverChoice::Auto);
}

/// x = (1, 0) in class 0 and (−1, 0) in class 1. With the hinge loss
/// and C large enough this is the hard-margin SVM, whose solution by
/// symmetry is w = (±1, 0), b = 0 with both dual variables at 1/2.
#[test]
fn symmetric_pair_hinge_matches_hard_margin() -> TestResult {
    let x = array![[1.0f32, 0.0], [-1.0, 0.0]];
    let (m, r) = fit(x.view(), &[0, 1], 2, &params(Loss::Hinge, 10.0, 1e-9))?;
    assert_eq!(m.weights.dim(), (2, 2));
    for (k, sign) in [(0, 1.0), (1, -1.0)] {
        assert!(close(m.weights[[k, 0]], sign, 1e-6), "{m:?}");
        assert!(close(m.weights[[k, 1]], 0.0, 1e-6));
        assert!(close(m.bias[k], 0.0, 1e-6));
        let c = &r.classes[k];
        assert!(c.converged);
        assert!((c.primal - 0.5).abs() < 1e-9 && (c.dual - 0.5).abs() < 1e-9);
        assert_eq!(c.support_vectors, 2);
    }
    assert_eq!(m.predict(x.view()), vec![0, 1]);
    Ok(())
}

/// Same pair with the squared hinge: by symmetry b = 0 and w = (t, 0)
/// minimising ½t² + 2C(1 − t)², i.e. t = 4C / (1 + 4C).
#[test]
fn symmetric_pair_squared_hinge_closed_form() -> TestResult {
    let x = array![[1.0f32, 0.0], [-1.0, 0.0]];
    for c in [0.1, 1.0, 5.0] {
        let (m, r) = fit(x.view(), &[0, 1], 2, &params(Loss::SquaredHinge, c, 1e-10))?;
        let t = 4.0 * c / (1.0 + 4.0 * c);
        assert!(close(m.weights[[0, 0]], t, 1e-6), "C={c}: {m:?}");
        assert!(close(m.weights[[1, 0]], -t, 1e-6));
        assert!(close(m.bias[0], 0.0, 1e-6) && close(m.bias[1], 0.0, 1e-6));
        let optimum = 0.5 * t * t + 2.0 * c * (1.0 - t) * (1.0 - t);
        assert!((r.objective() - 2.0 * optimum).abs() < 1e-9);
        assert!(r.max_gap() < 1e-9);
    }
    Ok(())
}

/// 1-D points 0 (class 1) and 2 (class 0). The hard-margin problem with
/// the augmented, regularised bias, min ½(w² + b²) s.t. 2w + b ≥ 1 and
/// −b ≥ 1, has the solution w = 1, b = −1 (dual α = (0.5, 1.5)), which
/// exercises the bias coordinate.
#[test]
fn asymmetric_pair_uses_the_bias() -> TestResult {
    let x = array![[2.0f32], [0.0]];
    let (m, r) = fit(x.view(), &[0, 1], 2, &params(Loss::Hinge, 10.0, 1e-10))?;
    assert!(close(m.weights[[0, 0]], 1.0, 1e-6), "{m:?} {r:?}");
    assert!(close(m.bias[0], -1.0, 1e-6));
    assert!(close(m.weights[[1, 0]], -1.0, 1e-6));
    assert!(close(m.bias[1], 1.0, 1e-6));
    assert!((r.classes[0].primal - 1.0).abs() < 1e-9);
    Ok(())
}

/// Gradient of the primal objective at the returned (f32) weights,
/// recomputed independently in f64 from the definition.
fn primal_gradient(m: &LinearSvm, x: &Array2<f32>, y: &[usize], k: usize, p: &SvmParams) -> Vec<f64> {
    let d = x.ncols();
    let w: Vec<f64> = m.weights.row(k).iter().map(|&v| f64::from(v)).collect();
    let b = f64::from(m.bias[k]);
    let mut g: Vec<f64> = w.iter().copied().chain([b]).collect();
    for (row, &label) in x.outer_iter().zip(y) {
        let yi = if label == k { 1.0 } else { -1.0 };
        let score: f64 = row.iter().zip(&w).map(|(&a, b)| f64::from(a) * b).sum::<f64>() + b;
        let slack = 1.0 - yi * score;
        if slack > 0.0 {
            let coef = match p.loss {
                Loss::SquaredHinge => -2.0 * p.c * slack * yi,
                Loss::Hinge => -p.c * yi,
            };
            for j in 0..d {
                g[j] += coef * f64::from(row[j]);
            }
            g[d] += coef;
        }
    }
    g
}

#[test]
fn squared_hinge_converges_with_small_gap_and_zero_gradient() -> TestResult {
    let (x, y) = blobs(300, 6, 1);
    let p = params(Loss::SquaredHinge, 0.5, 1e-7);
    let (m, r) = fit(x.view(), &y, 3, &p)?;
    assert!(r.converged());
    for c in &r.classes {
        assert!(c.violation < 1e-6, "{c:?}");
        let gap = c.primal - c.dual;
        // Weak duality holds up to rounding; strong duality at the optimum.
        assert!(gap > -1e-9 && gap < 1e-6 * c.primal.max(1.0), "{c:?}");
        // The squared hinge primal is differentiable: KKT means ∇P = 0.
        let g = primal_gradient(&m, &x, &y, c.class, &p);
        let norm = g.iter().fold(0.0f64, |a, v| a.max(v.abs()));
        assert!(norm < 1e-3, "class {}: |grad| = {norm}", c.class);
    }
    Ok(())
}

#[test]
fn hinge_converges_with_small_gap() -> TestResult {
    let (x, y) = blobs(300, 6, 2);
    let p = params(Loss::Hinge, 0.5, 1e-7);
    let (m, r) = fit(x.view(), &y, 3, &p)?;
    assert!(r.converged());
    for c in &r.classes {
        let gap = c.primal - c.dual;
        assert!(gap > -1e-9 && gap < 1e-5 * c.primal.max(1.0), "{c:?}");
        assert!(c.support_vectors > 0);
    }
    // The primal of the f32-rounded weights stays at the reported optimum.
    let scores = m.decision(x.view());
    for c in &r.classes {
        let w = m.weights.row(c.class);
        let b = f64::from(m.bias[c.class]);
        let reg = 0.5 * (w.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() + b * b);
        let hinge: f64 = y
            .iter()
            .enumerate()
            .map(|(i, &l)| {
                let yi = if l == c.class { 1.0 } else { -1.0 };
                (1.0 - yi * f64::from(scores[[i, c.class]])).max(0.0)
            })
            .sum();
        let primal = reg + p.c * hinge;
        assert!((primal - c.primal).abs() < 1e-4 * c.primal, "{primal} vs {c:?}");
    }
    Ok(())
}

#[test]
fn one_vs_rest_three_classes() -> TestResult {
    let (mut x, y) = blobs(300, 9, 3);
    // Move the blobs apart so that they are linearly separable.
    for (mut row, &class) in x.outer_iter_mut().zip(&y) {
        row[class] += 3.0;
    }
    let (m, r) = fit(x.view(), &y, 3, &SvmParams::default())?;
    assert_eq!(m.weights.dim(), (3, 9));
    assert_eq!(m.bias.len(), 3);
    assert_eq!(m.n_classes(), 3);
    assert_eq!(m.n_features(), 9);
    assert_eq!(r.classes.len(), 3);
    assert!(r.classes.iter().enumerate().all(|(k, c)| c.class == k));
    let pred = m.predict(x.view());
    let correct = pred.iter().zip(&y).filter(|(a, b)| a == b).count();
    assert_eq!(correct, 300);
    let scores = m.decision(x.view());
    assert_eq!(scores.dim(), (300, 3));
    Ok(())
}

/// Non-negative, uncentred features (like CNN activations) make Q̄
/// ill-conditioned; the subspace Newton steps must kick in and reach the
/// same optimum as plain coordinate descent, in fewer passes.
#[test]
fn newton_acceleration_reaches_the_plain_optimum() -> TestResult {
    let (mut x, y) = blobs(1200, 12, 9);
    x.mapv_inplace(|v| v.abs() + 2.0);
    for loss in [Loss::SquaredHinge, Loss::Hinge] {
        let p = SvmParams {
            max_iter: 1_000_000,
            ..params(loss, 1.0, 1e-6)
        };
        let plain = FitOptions {
            newton: false,
            ..FitOptions::default()
        };
        let (_, slow) = fit_with(x.view(), &y, 3, &p, &plain)?;
        let (_, fast) = fit_with(x.view(), &y, 3, &p, &FitOptions::default())?;
        assert!(slow.converged() && fast.converged());
        let steps: usize = fast.classes.iter().map(|c| c.newton_steps).sum();
        let passes = |r: &FitReport| r.classes.iter().map(|c| c.iterations).sum::<usize>();
        assert!(steps > 0, "{fast:?}");
        assert!(passes(&fast) < passes(&slow));
        for (a, b) in fast.classes.iter().zip(&slow.classes) {
            assert!((a.primal - b.primal).abs() <= 1e-6 * b.primal, "{a:?} vs {b:?}");
            assert!(a.primal - a.dual < 1e-6 * a.primal);
        }
    }
    Ok(())
}

#[test]
fn same_seed_gives_identical_weights_for_any_thread_count() -> TestResult {
    let (x, y) = blobs(200, 7, 4);
    let p = SvmParams {
        seed: 42,
        ..SvmParams::default()
    };
    let (a, _) = fit(x.view(), &y, 3, &p)?;
    let (b, _) = fit(x.view(), &y, 3, &p)?;
    let (c, _) = fit_with(x.view(), &y, 3, &p, &threads(1))?;
    let (d, _) = fit_with(x.view(), &y, 3, &p, &threads(3))?;
    assert_eq!(a, b);
    assert_eq!(a, c);
    assert_eq!(a, d);
    Ok(())
}

#[test]
fn dense_and_sparse_storage_agree() -> TestResult {
    let (x, y) = blobs(200, 7, 5);
    let p = params(Loss::SquaredHinge, 1.0, 1e-8);
    let (a, ra) = fit_with(x.view(), &y, 3, &p, &stored(Storage::Dense))?;
    let (b, rb) = fit_with(x.view(), &y, 3, &p, &stored(Storage::Sparse))?;
    assert!((ra.objective() - rb.objective()).abs() < 1e-6 * ra.objective());
    for (u, v) in a.weights.iter().zip(&b.weights) {
        assert!((u - v).abs() < 1e-4);
    }
    Ok(())
}

#[test]
fn non_contiguous_input_matches_contiguous() -> TestResult {
    let (x, y) = blobs(120, 5, 6);
    let xt = x.t().to_owned();
    let p = SvmParams::default();
    for storage in [Storage::Dense, Storage::Sparse] {
        let (a, _) = fit_with(x.view(), &y, 3, &p, &stored(storage))?;
        let (b, _) = fit_with(xt.t(), &y, 3, &p, &stored(storage))?;
        assert_eq!(a, b);
    }
    Ok(())
}

#[test]
fn hitting_max_iter_is_reported_not_an_error() -> TestResult {
    let (x, y) = blobs(200, 7, 7);
    let p = SvmParams {
        max_iter: 2,
        tol: 1e-12,
        solver: SolverChoice::Dual,
        ..SvmParams::default()
    };
    let (_, r) = fit(x.view(), &y, 3, &p)?;
    assert!(!r.converged());
    assert!(r.classes.iter().all(|c| c.iterations == 2 && c.violation > 1e-12));
    Ok(())
}

#[test]
fn class_without_samples_gets_a_hyperplane() -> TestResult {
    let (x, y) = blobs(90, 4, 8);
    let (m, r) = fit(x.view(), &y, 4, &SvmParams::default())?;
    assert_eq!(m.weights.nrows(), 4);
    assert!(r.converged());
    assert!(m.decision(x.view()).column(3).iter().all(|&s| s < 0.0));
    Ok(())
}

#[test]
fn predict_breaks_ties_towards_the_lowest_class() {
    let m = LinearSvm {
        weights: Array2::zeros((3, 2)),
        bias: array![0.5, 1.0, 1.0],
    };
    assert_eq!(m.predict(array![[1.0f32, 2.0]].view()), vec![1]);
    let nan = LinearSvm {
        weights: Array2::zeros((2, 1)),
        bias: array![f32::NAN, 0.0],
    };
    assert_eq!(nan.predict(array![[1.0f32]].view()), vec![1]);
}

#[test]
fn bad_input_is_rejected() {
    let x = array![[0.0f32, 1.0], [1.0, 0.0]];
    let p = SvmParams::default();
    assert_eq!(
        fit(Array2::<f32>::zeros((0, 2)).view(), &[], 2, &p),
        Err(SvmError::Empty)
    );
    assert_eq!(
        fit(x.view(), &[0], 2, &p),
        Err(SvmError::LengthMismatch { samples: 2, labels: 1 })
    );
    assert_eq!(
        fit(x.view(), &[0, 2], 2, &p),
        Err(SvmError::LabelOutOfRange {
            sample: 1,
            label: 2,
            n_classes: 2
        })
    );
    let mut bad = x.clone();
    bad[[1, 0]] = f32::INFINITY;
    assert!(matches!(
        fit(bad.view(), &[0, 1], 2, &p),
        Err(SvmError::NonFinite {
            sample: 1,
            feature: 0,
            ..
        })
    ));
    bad[[1, 0]] = f32::NAN;
    assert!(matches!(
        fit(bad.view(), &[0, 1], 2, &p),
        Err(SvmError::NonFinite { sample: 1, .. })
    ));
    for c in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let p = SvmParams {
            c,
            ..SvmParams::default()
        };
        assert!(matches!(fit(x.view(), &[0, 1], 2, &p), Err(SvmError::InvalidC(_))));
    }
    let msg = SvmError::NonFinite {
        sample: 3,
        feature: 5,
        value: f32::NAN,
    }
    .to_string();
    assert!(msg.contains('3') && msg.contains('5'), "{msg}");
}
