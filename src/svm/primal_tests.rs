//! Unit tests of the primal solver as [`fit`] runs it, of the automatic choice between
//! the solvers, and of [`train`]'s search for C and standardisation.

use super::*;
use ndarray::{array, Array2};

type TestResult = Result<(), SvmError>;

/// Three overlapping blobs of non-negative, uncentred features (like CNN activations).
fn blobs(n: usize, d: usize, seed: u64) -> (Array2<f32>, Vec<usize>) {
    super::tests::blobs_with(n, d, seed, 1.0, |_, v| v.max(0.0) + 0.5)
}

fn with(solver: SolverChoice, c: f64, tol: f64) -> SvmParams {
    SvmParams {
        c,
        tol,
        max_iter: 100_000,
        seed: 3,
        solver,
        ..SvmParams::default()
    }
}

#[test]
fn the_primal_solves_the_symmetric_pair_in_closed_form() -> TestResult {
    // By symmetry b = 0 and w = (t, 0) minimising ½t² + 2C(1 − t)²: t = 4C / (1 + 4C).
    let x = array![[1.0f32, 0.0], [-1.0, 0.0]];
    for c in [0.1, 1.0, 5.0] {
        let (m, r) = fit(x.view(), &[0, 1], 2, &with(SolverChoice::Primal, c, 1e-12))?;
        let t = 4.0 * c / (1.0 + 4.0 * c);
        assert!((f64::from(m.weights[[0, 0]]) - t).abs() < 1e-6, "C={c}: {m:?}");
        assert!(f64::from(m.bias[0]).abs() < 1e-6);
        let optimum = 0.5 * t * t + 2.0 * c * (1.0 - t) * (1.0 - t);
        assert!((r.objective() - 2.0 * optimum).abs() < 1e-9, "{r:?}");
        assert_eq!(r.solver(), Some(Solver::Primal));
        assert!(r.converged() && r.max_gap() < 1e-9);
    }
    Ok(())
}

/// Both solvers, run tight, reach the same optimum; the primal's certificate (its
/// gap at the mapped dual point) closes and its stopping measure is below threshold.
#[test]
fn primal_and_dual_reach_the_same_optimum() -> TestResult {
    let (x, y) = blobs(600, 8, 1);
    for c in [0.05, 1.0] {
        let (_, dual) = fit(x.view(), &y, 3, &with(SolverChoice::Dual, c, 1e-10))?;
        for precondition in [false, true] {
            let options = FitOptions {
                precondition,
                ..FitOptions::default()
            };
            let (_, primal) = fit_with(x.view(), &y, 3, &with(SolverChoice::Primal, c, 1e-7), &options)?;
            assert!(primal.converged(), "{primal:?}");
            for (p, d) in primal.classes.iter().zip(&dual.classes) {
                assert_eq!(p.solver, Solver::Primal);
                assert!(p.violation <= p.threshold, "{p:?}");
                let rel = (p.primal - d.primal).abs() / d.primal;
                assert!(
                    rel < 1e-8,
                    "C={c}, class {}: {} vs {} ({rel:.1e})",
                    p.class,
                    p.primal,
                    d.primal
                );
                assert!(p.gap() > -1e-8 && p.gap() < 1e-6 * p.primal, "{p:?}");
                assert!(p.cg_iterations >= p.iterations && p.support_vectors > 0);
            }
        }
    }
    Ok(())
}

#[test]
fn the_automatic_choice_follows_loss_and_shape() {
    let p = |solver, loss, max_iter| SvmParams {
        solver,
        loss,
        max_iter,
        ..SvmParams::default()
    };
    let auto = p(SolverChoice::Auto, Loss::SquaredHinge, 1000);
    assert_eq!(Plan::of(&auto, 2 * 11, 10), Plan::Primal);
    assert_eq!(Plan::of(&auto, 2 * 11 - 1, 10), Plan::DualThenPrimal(STALL_PASSES));
    let short = p(SolverChoice::Auto, Loss::SquaredHinge, STALL_PASSES);
    assert_eq!(Plan::of(&short, 5, 10), Plan::Dual, "no passes left to hand over");
    let hinge = p(SolverChoice::Auto, Loss::Hinge, 1000);
    assert_eq!(Plan::of(&hinge, 1000, 10), Plan::Dual);
    assert_eq!(
        Plan::of(&p(SolverChoice::Dual, Loss::SquaredHinge, 1000), 1000, 10),
        Plan::Dual
    );
    assert_eq!(
        Plan::of(&p(SolverChoice::Primal, Loss::SquaredHinge, 1000), 5, 10),
        Plan::Primal
    );
}

#[test]
fn the_automatic_choice_runs_the_primal_when_samples_abound() -> TestResult {
    let (x, y) = blobs(300, 6, 2);
    let (_, r) = fit(x.view(), &y, 3, &SvmParams::default())?;
    assert_eq!(r.solver(), Some(Solver::Primal));
    assert!(r.converged());
    assert!(r
        .classes
        .iter()
        .all(|c| c.switched_after.is_none() && c.newton_steps == 0));
    // The hinge loss stays in the dual.
    let hinge = SvmParams {
        loss: Loss::Hinge,
        ..SvmParams::default()
    };
    let (_, r) = fit(x.view(), &y, 3, &hinge)?;
    assert_eq!(r.solver(), Some(Solver::Dual));
    Ok(())
}

#[test]
fn the_primal_with_the_hinge_loss_is_refused() {
    let (x, y) = blobs(30, 4, 3);
    let p = SvmParams {
        loss: Loss::Hinge,
        solver: SolverChoice::Primal,
        ..SvmParams::default()
    };
    assert_eq!(fit(x.view(), &y, 3, &p), Err(SvmError::PrimalHinge));
    assert!(SvmError::PrimalHinge.to_string().contains("squared hinge"));
}

#[test]
fn the_primal_gives_the_same_weights_for_any_thread_count_and_storage() -> TestResult {
    let (x, y) = blobs(240, 7, 4);
    let p = with(SolverChoice::Primal, 1.0, 1e-6);
    let (a, _) = fit_with(
        x.view(),
        &y,
        3,
        &p,
        &FitOptions {
            threads: Some(1),
            ..FitOptions::default()
        },
    )?;
    let (b, _) = fit_with(
        x.view(),
        &y,
        3,
        &p,
        &FitOptions {
            threads: Some(3),
            ..FitOptions::default()
        },
    )?;
    assert_eq!(a, b);
    let dense = FitOptions {
        storage: Some(Storage::Dense),
        ..FitOptions::default()
    };
    let sparse = FitOptions {
        storage: Some(Storage::Sparse),
        ..FitOptions::default()
    };
    let (c, rc) = fit_with(x.view(), &y, 3, &p, &dense)?;
    let (d, rd) = fit_with(x.view(), &y, 3, &p, &sparse)?;
    assert!((rc.objective() - rd.objective()).abs() < 1e-8 * rc.objective());
    for (u, v) in c.weights.iter().zip(&d.weights) {
        assert!((u - v).abs() < 1e-4);
    }
    Ok(())
}

#[test]
fn a_warm_start_at_the_optimum_needs_almost_no_work() -> TestResult {
    let (x, y) = blobs(300, 6, 5);
    let p = with(SolverChoice::Primal, 0.5, 1e-6);
    let (cold, cold_report) = fit(x.view(), &y, 3, &p)?;
    let (_, warm) = fit_from(x.view(), &y, 3, &p, &FitOptions::default(), Some(&cold))?;
    assert!(warm.converged());
    for (w, c) in warm.classes.iter().zip(&cold_report.classes) {
        assert!(w.iterations <= 1 && w.iterations < c.iterations, "{w:?} vs {c:?}");
    }
    // A start of another shape is not used.
    let other = LinearSvm {
        weights: Array2::zeros((2, 6)),
        bias: Array1::zeros(2),
    };
    let (_, r) = fit_from(x.view(), &y, 3, &p, &FitOptions::default(), Some(&other))?;
    assert_eq!(r.classes[0].iterations, cold_report.classes[0].iterations);
    Ok(())
}

#[test]
fn the_primal_reports_hitting_its_iteration_limit() -> TestResult {
    let (x, y) = blobs(300, 6, 6);
    let p = SvmParams {
        max_iter: 1,
        ..with(SolverChoice::Primal, 1.0, 1e-12)
    };
    let (_, r) = fit(x.view(), &y, 3, &p)?;
    assert!(!r.converged());
    for c in &r.classes {
        assert!(c.iterations == 1 && c.violation > c.threshold, "{c:?}");
    }
    assert!(r.worst_violation().is_some_and(|c| c.violation > c.threshold));
    assert!(r.max_relative_gradient().is_some_and(|g| g > 0.0));
    Ok(())
}

#[test]
fn the_search_picks_the_best_validated_c_and_refits_on_everything() -> TestResult {
    let (x, y) = blobs(450, 9, 7);
    let p = with(SolverChoice::Auto, 1.0, 1e-6);
    let grid = vec![10.0, 0.001, 0.1, 1.0];
    let tuning = Tuning {
        search: Some(CSearch { grid, holdout: 0.2 }),
        scale: false,
    };
    let (model, r) = train(x.view(), &y, 3, &p, &tuning)?;
    let sel = r.selection.as_ref().ok_or(SvmError::EmptyGrid)?;
    let cs: Vec<f64> = sel.curve.iter().map(|g| g.c).collect();
    assert_eq!(cs, vec![0.001, 0.1, 1.0, 10.0], "searched in increasing order");
    assert_eq!((sel.n_validation, sel.n_fit), (90, 360));
    let best = sel.curve.iter().map(|g| g.validation_accuracy).fold(0.0, f64::max);
    let first_best = sel.curve.iter().find(|g| g.validation_accuracy == best).map(|g| g.c);
    assert_eq!(Some(sel.chosen), first_best, "{sel:?}");
    assert_eq!(r.c, sel.chosen);
    assert!(sel
        .curve
        .iter()
        .all(|g| g.converged && g.solver == Some(Solver::Primal)));
    // The final head is the fit on all the rows at the chosen C.
    let direct = SvmParams { c: sel.chosen, ..p };
    let (again, direct_report) = fit(x.view(), &y, 3, &direct)?;
    assert!((r.objective() - direct_report.objective()).abs() < 1e-6 * direct_report.objective());
    for (u, v) in model.weights.iter().zip(&again.weights) {
        assert!((u - v).abs() < 1e-3, "{u} vs {v}");
    }
    Ok(())
}

#[test]
fn a_search_without_validation_rows_is_refused() {
    let x = array![[0.0f32, 1.0], [1.0, 0.0]];
    let tuning = Tuning {
        search: Some(CSearch::default()),
        scale: false,
    };
    let r = train(x.view(), &[0, 1], 2, &SvmParams::default(), &tuning);
    assert!(matches!(r, Err(SvmError::NoValidation { samples: 2, .. })), "{r:?}");
}

/// With `scale`, the head acts on the raw features exactly as the SVM fitted on the
/// standardised ones acts on those, and a feature constant in training gets no weight.
#[test]
fn standardised_training_folds_back_into_the_head() -> TestResult {
    let (mut x, y) = blobs(300, 6, 8);
    x.column_mut(2).fill(7.0);
    x.column_mut(4).mapv_inplace(|v| 100.0 * v);
    let p = with(SolverChoice::Primal, 0.3, 1e-10);
    let tuning = Tuning {
        search: None,
        scale: true,
    };
    let (folded, r) = train(x.view(), &y, 3, &p, &tuning)?;
    assert_eq!(r.scaling, Some(ScalingReport { constant_features: 1 }));
    let s = Standardizer::fit(x.view());
    let z = s.apply(x.view());
    let (inner, inner_report) = fit(z.view(), &y, 3, &p)?;
    assert!((r.objective() - inner_report.objective()).abs() < 1e-9 * r.objective());
    let want = inner.decision(z.view());
    let got = folded.decision(x.view());
    for (a, b) in want.iter().zip(&got) {
        assert!((a - b).abs() < 1e-3, "{a} vs {b}");
    }
    assert!(folded.weights.column(2).iter().all(|&w| w == 0.0));
    Ok(())
}

/// Validation rows given apart: every candidate is fitted on all the training rows and
/// scored on them; the chosen one is the head as it is (no refit), standardised with the
/// training rows' statistics.
#[test]
fn the_search_on_given_validation_rows_keeps_the_chosen_candidate() -> TestResult {
    let (x, y) = blobs(300, 9, 7);
    let (xv, yv) = blobs(120, 9, 11);
    let p = with(SolverChoice::Auto, 1.0, 1e-6);
    let tuning = Tuning {
        search: Some(CSearch {
            grid: vec![10.0, 0.001, 0.1, 1.0],
            holdout: 0.2,
        }),
        scale: true,
    };
    let v = Validation { x: xv.view(), y: &yv };
    let (model, r) = train_validated(x.view(), &y, v, 3, &p, &tuning)?;
    let sel = r.selection.as_ref().ok_or(SvmError::EmptyGrid)?;
    assert_eq!(sel.holdout, None);
    assert_eq!((sel.n_fit, sel.n_validation), (300, 120));
    let cs: Vec<f64> = sel.curve.iter().map(|g| g.c).collect();
    assert_eq!(cs, vec![0.001, 0.1, 1.0, 10.0]);
    let best = sel.curve.iter().map(|g| g.validation_accuracy).fold(0.0, f64::max);
    let first_best = sel.curve.iter().find(|g| g.validation_accuracy == best).map(|g| g.c);
    assert_eq!(Some(sel.chosen), first_best, "{sel:?}");
    assert_eq!(r.c, sel.chosen);
    // The head scores on the validation rows what the search said it does.
    let right = model.predict(xv.view()).iter().zip(&yv).filter(|(a, b)| a == b).count();
    assert!(
        (right as f64 / 120.0 - best).abs() <= 1.0 / 120.0,
        "{right} against {best}"
    );
    // And it is the fit on all the training rows at the chosen C.
    let direct = Tuning {
        search: None,
        scale: true,
    };
    let chosen = SvmParams { c: sel.chosen, ..p };
    let (_, direct_report) = train(x.view(), &y, 3, &chosen, &direct)?;
    assert!((r.objective() - direct_report.objective()).abs() < 1e-6 * direct_report.objective());
    Ok(())
}

#[test]
fn unusable_validation_rows_are_refused() {
    let (x, y) = blobs(60, 4, 1);
    let tuning = Tuning {
        search: Some(CSearch::default()),
        scale: false,
    };
    let p = SvmParams::default();
    let given = |xv: &Array2<f32>, yv: &[usize], tuning: &Tuning| {
        train_validated(x.view(), &y, Validation { x: xv.view(), y: yv }, 3, &p, tuning)
    };
    let r = given(&Array2::zeros((5, 3)), &[0; 5], &tuning);
    assert!(
        matches!(&r, Err(SvmError::Validation(e)) if **e == SvmError::Width { features: 3, expected: 4 }),
        "{r:?}"
    );
    let rows = Array2::<f32>::zeros((2, 4));
    let r = given(&rows, &[0, 7], &tuning);
    assert!(
        matches!(&r, Err(SvmError::Validation(e)) if matches!(**e, SvmError::LabelOutOfRange { sample: 1, label: 7, .. })),
        "{r:?}"
    );
    let no_search = Tuning {
        search: None,
        scale: false,
    };
    let r = given(&rows, &[0, 1], &no_search);
    assert!(matches!(r, Err(SvmError::ValidationWithoutSearch)), "{r:?}");
}
