//! The certified program's worst margins, its solutions by both solvers, and rows
//! and weights generated against the whole program.

#![allow(clippy::unwrap_used)]

use ndarray::{array, Array2};

use super::*;

/// Worst margins by enumerating the box's corners (small d only).
fn corners(w: &Array2<f64>, b: &[f64], lo: &[f64], hi: &[f64], t: usize, c: usize) -> f64 {
    let d = lo.len();
    (0..1usize << d)
        .map(|mask| {
            (0..d)
                .map(|j| {
                    let f = if mask >> j & 1 == 1 { hi[j] } else { lo[j] };
                    (w[[t, j]] - w[[c, j]]) * f
                })
                .sum::<f64>()
                + b[t]
                - b[c]
        })
        .fold(f64::INFINITY, f64::min)
}

#[test]
fn the_worst_margin_is_the_worst_corner() {
    let w = array![[1.0, -2.0, 0.5], [0.3, 0.1, -1.0], [-0.4, 0.9, 0.2]];
    let b = array![0.1, -0.2, 0.3];
    let lo = array![[0.0, 0.5, -1.0]];
    let hi = array![[1.0, 0.7, 2.0]];
    let centre = (&lo + &hi) / 2.0;
    let radius = (&hi - &lo) / 2.0;
    let p = CertifiedProblem {
        weights: w.view(),
        bias: b.view(),
        centre: centre.view(),
        radius: radius.view(),
        labels: &[0],
        margin: &[0.0],
        price: &[1.0],
        repair_bias: false,
    };
    let worst = worst_margins(&p, w.view(), b.view());
    for c in 1..3 {
        let expected = corners(
            &w,
            b.as_slice().unwrap(),
            lo.as_slice().unwrap(),
            hi.as_slice().unwrap(),
            0,
            c,
        );
        assert!((worst[[0, c]] - expected).abs() < 1e-12, "class {c}");
    }
}

#[test]
fn a_repair_certifies_its_balls_and_keeps_its_points() {
    // Three classes in two features; ball 0 around (0.6, 0.5) labelled 0 overlaps
    // the boundary of the head x₀ − x₁ for class 0 against 1.
    let w = array![[1.0, -1.0], [-1.0, 1.0], [0.0, 0.0]];
    let b = array![0.0, 0.0, -0.5];
    let centre = array![[0.6, 0.5], [0.9, 0.1], [0.1, 0.9]];
    let radius = array![[0.2, 0.2], [0.0, 0.0], [0.0, 0.0]];
    let p = CertifiedProblem {
        labels: &[0, 0, 1],
        margin: &[0.1; 3],
        price: &[10.0; 3],
        repair_bias: true,
        weights: w.view(),
        bias: b.view(),
        centre: centre.view(),
        radius: radius.view(),
    };
    let before = worst_margins(&p, w.view(), b.view());
    assert!(before[[0, 1]] < 0.0, "the ball is not certified before");
    let sol = solve(&p, &CertifiedSettings::default());
    assert_eq!(sol.status, Status::Solved);
    let after = worst_margins(&p, sol.weights.view(), sol.bias.view());
    for s in 0..3 {
        for c in (0..3).filter(|&c| c != p.labels[s]) {
            assert!(
                after[[s, c]] >= p.margin[s] - 1e-6,
                "sample {s} class {c}: {}",
                after[[s, c]]
            );
            let lo: Vec<f64> = (0..2).map(|j| centre[[s, j]] - radius[[s, j]]).collect();
            let hi: Vec<f64> = (0..2).map(|j| centre[[s, j]] + radius[[s, j]]).collect();
            let exact = corners(&sol.weights, sol.bias.as_slice().unwrap(), &lo, &hi, p.labels[s], c);
            assert!((after[[s, c]] - exact).abs() < 1e-9);
        }
    }
    assert!(sol.shortfall.iter().all(|&x| x < 1e-6));
    let change: f64 = (&sol.weights - &w)
        .iter()
        .chain((&sol.bias - &b).iter())
        .map(|v| v.abs())
        .sum();
    assert!((sol.objective - change).abs() < 1e-6);
    assert!(change > 0.0);
}

/// The problem over [`random_problem`]'s weights, bias (its one row), centres and radii.
pub(super) fn problem_of<'a>(
    [w, bias, centre, radius]: &'a [Array2<f64>; 4],
    labels: &'a [usize],
    margin: &'a [f64],
    price: &'a [f64],
    repair_bias: bool,
) -> CertifiedProblem<'a> {
    CertifiedProblem {
        weights: w.view(),
        bias: bias.row(0),
        centre: centre.view(),
        radius: radius.view(),
        labels,
        margin,
        price,
        repair_bias,
    }
}

/// A seeded problem of `n` balls and `points` points in `d` features, `k` classes.
pub(super) fn random_problem(seed: u64, (n, points, d, k): (usize, usize, usize, usize)) -> [Array2<f64>; 4] {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let w = Array2::from_shape_fn((k, d), |_| rng.random_range(-1.0..1.0));
    let bias = Array2::from_shape_fn((1, k), |_| rng.random_range(-0.1..0.1));
    let centre = Array2::from_shape_fn((n + points, d), |_| rng.random_range(0.0..1.0));
    let radius = Array2::from_shape_fn((n + points, d), |(s, j)| {
        if s < n && j % 3 != 0 {
            rng.random_range(0.0..0.05)
        } else {
            0.0
        }
    });
    [w, bias, centre, radius]
}

#[test]
fn balls_already_certified_leave_the_head_as_it_is() {
    let w = array![[1.0, -1.0], [-1.0, 1.0]];
    let b = array![0.0, 0.0];
    let centre = array![[0.9, 0.1], [0.1, 0.9]];
    let radius = array![[0.05, 0.05], [0.0, 0.0]];
    let p = CertifiedProblem {
        weights: w.view(),
        bias: b.view(),
        centre: centre.view(),
        radius: radius.view(),
        labels: &[0, 1],
        margin: &[0.1, 0.1],
        price: &[10.0, 10.0],
        repair_bias: true,
    };
    for solver in [MarginSolver::Ipm, MarginSolver::Clarabel] {
        let sol = solve(
            &p,
            &CertifiedSettings {
                solver,
                ..CertifiedSettings::default()
            },
        );
        assert_eq!(sol.status, Status::Solved, "{solver:?}");
        assert_eq!((sol.rounds, sol.rows), (1, 0), "{solver:?}");
        assert!(sol.objective.abs() < 1e-9, "{solver:?}: {}", sol.objective);
        assert!((&sol.weights - &w).iter().all(|v| v.abs() < 1e-9), "{solver:?}");
    }
}

#[test]
fn a_program_the_interior_point_method_cannot_finish_goes_to_clarabel() {
    let (n, points, d, k) = (12, 8, 10, 4);
    let arrays = random_problem(7, (n, points, d, k));
    let labels: Vec<usize> = (0..n + points).map(|s| s % k).collect();
    let (margin, price) = (vec![0.2; n + points], vec![2.0; n + points]);
    let p = problem_of(&arrays, &labels, &margin, &price, false);
    // Three iterations are too few for either solver: the interior-point method
    // gives up on the first round's program, the solve starts again with clarabel,
    // which stalls too, and the repair ends there, the head unchanged.
    let sol = solve(
        &p,
        &CertifiedSettings {
            max_iter: 3,
            ..CertifiedSettings::default()
        },
    );
    assert_eq!(sol.status, Status::Stalled);
    let solvers: Vec<MarginSolver> = sol.history.iter().map(|r| r.solver).collect();
    assert_eq!(solvers, [MarginSolver::Ipm, MarginSolver::Clarabel]);
    assert_eq!(sol.rounds, 2);
    assert_eq!(sol.history[0].iterations, 3);
    assert!(sol.history[0].objective.is_nan());
    assert_eq!(sol.iterations, sol.history.iter().map(|r| r.iterations).sum::<u32>());
    assert_eq!((&sol.weights, &sol.bias), (&p.weights.to_owned(), &p.bias.to_owned()));
}

#[test]
fn generating_the_weights_reaches_the_whole_programs_optimum() {
    for seed in 0..4 {
        let (n, points, d, k) = (12, 8, 10, 4);
        let [w, bias, centre, radius] = random_problem(seed, (n, points, d, k));
        let b = bias.row(0);
        let labels: Vec<usize> = (0..n + points).map(|s| s % k).collect();
        let probe = CertifiedProblem {
            weights: w.view(),
            bias: b,
            centre: centre.view(),
            radius: radius.view(),
            labels: &labels,
            margin: &vec![0.0; n + points],
            price: &vec![1.0; n + points],
            repair_bias: seed % 2 == 0,
        };
        // Points keep what margin they have (up to 0.2); balls want 0.2.
        let now = worst_margins(&probe, w.view(), b);
        let margin: Vec<f64> = (0..n + points)
            .map(|s| {
                let own = (0..k)
                    .filter(|&c| c != labels[s])
                    .map(|c| now[[s, c]])
                    .fold(f64::INFINITY, f64::min);
                if s < n {
                    0.2
                } else {
                    own.min(0.2)
                }
            })
            .collect();
        let price: Vec<f64> = (0..n + points).map(|s| if s < n { 2.0 } else { 5.0 }).collect();
        let p = CertifiedProblem {
            margin: &margin,
            price: &price,
            ..probe
        };
        let clarabel = CertifiedSettings {
            solver: MarginSolver::Clarabel,
            ..CertifiedSettings::default()
        };
        let generated = solve(&p, &clarabel);
        let whole = solve_with(&p, &clarabel, &vec![true; k * d]);
        // Keeping every row and weight that joined reaches the same optimum.
        let keeping = CertifiedSettings {
            drop_rows: false,
            drop_columns: false,
            ..clarabel
        };
        let kept = solve(&p, &keeping);
        // nnmend's interior-point method, every weight free, with and without rows
        // leaving.
        let structured = solve(&p, &CertifiedSettings::default());
        let structured_kept = solve(
            &p,
            &CertifiedSettings {
                drop_rows: false,
                ..CertifiedSettings::default()
            },
        );
        // Every round to the tolerances: no round resumes the last one's solve.
        let structured_tight = solve(
            &p,
            &CertifiedSettings {
                loose: 1.0,
                ..CertifiedSettings::default()
            },
        );
        assert!(structured_tight.history.iter().all(|r| !r.resumed), "seed {seed}");
        // Loose rounds: the last one takes the program before it on to the tolerances.
        for loose in [&structured, &structured_kept] {
            let h = &loose.history;
            assert!(h.last().unwrap().resumed, "seed {seed}");
            assert!(
                h.len() >= 2 && h[h.len() - 2].rows == h[h.len() - 1].rows,
                "seed {seed}"
            );
        }
        assert_eq!(whole.status, Status::Solved, "seed {seed}");
        for solved in [
            &kept,
            &generated,
            &whole,
            &structured,
            &structured_kept,
            &structured_tight,
        ] {
            // One entry per round, the last the program solved last.
            let h = &solved.history;
            assert_eq!(h.len(), solved.rounds, "seed {seed}");
            assert_eq!(h.iter().map(|r| r.iterations).sum::<u32>(), solved.iterations);
            let last = h.last().unwrap();
            assert_eq!((last.rows, last.columns), (solved.rows, solved.columns), "seed {seed}");
            assert!(last.constraints >= last.rows && last.variables >= 2 * last.columns);
            assert!(h.iter().all(|r| r.seconds >= 0.0 && r.nonzeros > 0));
            // The last restricted optimum is the whole program's.
            assert!(
                (last.objective - solved.objective).abs() <= 1e-5 * (1.0 + solved.objective),
                "seed {seed}: {} against {}",
                last.objective,
                solved.objective
            );
        }
        for solved in [&kept, &generated, &structured, &structured_kept, &structured_tight] {
            assert_eq!(solved.status, Status::Solved, "seed {seed}");
            assert!(
                (solved.objective - whole.objective).abs() <= 1e-5 * (1.0 + whole.objective),
                "seed {seed}: {} against {}",
                solved.objective,
                whole.objective
            );
        }
        for solved in [&structured, &structured_kept] {
            assert_eq!(solved.columns, k * d, "seed {seed}: the weights were generated");
        }
        assert!(generated.columns < k * d, "seed {seed}: every weight was generated");
        assert!(whole.objective > 0.0, "seed {seed}: nothing to repair");
    }
}
