//! The repair LP: the optimum against scipy's HiGHS on generated instances, every
//! constraint satisfied, and the certificate of optimality for the full problem.

use ndarray::{Array1, Array2};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use nnmend::repair::margin::MarginSolver;
use nnmend::repair::{self, paper, ClassSettings, Status};

use crate::common::*;

/// Non-negative features (like ReLU/pool outputs, many zeros) and residuals.
fn instance(s: usize, d: usize, seed: u64) -> (Array2<f64>, Array1<f64>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let x = Array2::from_shape_fn((s, d), |_| {
        if rng.random_bool(0.4) {
            0.0
        } else {
            rng.random_range(0.0..3.0)
        }
    });
    let r = Array1::from_shape_fn(s, |_| rng.random_range(-4.0..4.0));
    (x, r)
}

fn highs(x: &Array2<f64>, r: &Array1<f64>, bias: bool) -> f64 {
    let dir = tempdir();
    let path = dir.path().join("lp.json");
    let rows: Vec<Vec<f64>> = x.rows().into_iter().map(|row| row.to_vec()).collect();
    let doc = serde_json::json!({"x": rows, "r": r.to_vec(), "repair_bias": bias});
    std::fs::write(&path, doc.to_string()).unwrap();
    highs_objective(&path)
}

fn check_feasible(x: &Array2<f64>, r: &Array1<f64>, sol: &paper::ClassSolution) {
    let g = Array1::from(sol.gamma.clone());
    for (s, row) in x.rows().into_iter().enumerate() {
        let e = row.dot(&g) + sol.beta - r[s];
        assert!(sol.delta[s] >= -1e-7, "δ_{s} = {} is negative", sol.delta[s]);
        assert!(
            e.abs() <= sol.delta[s] + 1e-6,
            "sample {s}: |error| {} > δ {}",
            e.abs(),
            sol.delta[s]
        );
    }
}

#[test]
fn the_optimum_equals_highs() {
    for (s, d, seed, bias) in [
        (5, 12, 1, false),
        (20, 60, 2, false),
        (20, 60, 3, true),
        (40, 400, 4, false),
    ] {
        let (x, r) = instance(s, d, seed);
        let settings = ClassSettings {
            repair_bias: bias,
            batch: 8,
            give_way: false,
            ..Default::default()
        };
        let sol = paper::solve_class(x.view(), r.view(), &settings);
        assert_eq!(sol.status, Status::Solved, "S={s} d={d}");
        let reference = highs(&x, &r, bias);
        assert!(
            (sol.objective - reference).abs() <= 1e-6 * reference.abs().max(1.0),
            "S={s} d={d} bias={bias}: nnmend {} against HiGHS {reference}",
            sol.objective
        );
        check_feasible(&x, &r, &sol);
        assert!(sol.dual_violation <= 1e-6, "no certificate: {}", sol.dual_violation);
        assert!(sol.gap <= 1e-6, "certified gap {}", sol.gap);
        if d > 4 * s {
            // Column generation kept the restricted problem small.
            assert!(sol.columns < d, "all {d} columns were needed");
        }
    }
}

#[test]
fn column_generation_and_the_whole_problem_reach_the_highs_optimum() {
    let (x, r) = instance(30, 200, 9);
    let cg = paper::solve_class(
        x.view(),
        r.view(),
        &ClassSettings {
            generation_ratio: 1,
            give_way: false,
            ..Default::default()
        },
    );
    assert!(
        cg.rounds > 1 && cg.columns < 200,
        "{} rounds, {} columns",
        cg.rounds,
        cg.columns
    );
    let whole = paper::solve_class(
        x.view(),
        r.view(),
        &ClassSettings {
            max_rounds: 0,
            ..Default::default()
        },
    );
    assert_eq!(whole.columns, 200);
    let reference = highs(&x, &r, false);
    for (what, sol) in [("column generation", &cg), ("the whole problem", &whole)] {
        assert_eq!(sol.status, Status::Solved, "{what}");
        assert!(
            (sol.objective - reference).abs() <= 1e-6 * reference.max(1.0),
            "{what}: nnmend {} against HiGHS {reference}",
            sol.objective
        );
    }
}

#[test]
fn a_head_is_repaired_class_by_class() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let (k, d, s) = (4, 50, 12);
    let w = Array2::from_shape_fn((k, d), |_| rng.random_range(-0.5f32..0.5));
    let b = Array1::from_shape_fn(k, |_| rng.random_range(-0.5f32..0.5));
    let f = Array2::from_shape_fn((s, d), |_| rng.random_range(0.0f32..2.0));
    let targets = Array2::from_shape_fn((s, k), |_| rng.random_range(-2.0f32..2.0));
    let one = repair::paper::repair(
        w.view(),
        b.view(),
        f.view(),
        targets.view(),
        None,
        &ClassSettings::default(),
        1,
    )
    .unwrap();
    let two = repair::paper::repair(
        w.view(),
        b.view(),
        f.view(),
        targets.view(),
        None,
        &ClassSettings::default(),
        2,
    )
    .unwrap();
    assert_eq!(one.weights, two.weights, "threads changed the repair");
    assert_eq!(one.status, Status::Solved);
    // Class i's LP is the paper's on the residuals targets − (f·wᵢ + bᵢ): its optimum
    // is HiGHS's, and the whole repair's objective is their sum.
    let x = f.mapv(f64::from);
    let before = x.dot(&w.mapv(f64::from).t()) + &b.mapv(f64::from);
    let residuals = targets.mapv(f64::from) - &before;
    let mut total = 0.0;
    for (i, c) in one.classes.iter().enumerate() {
        let reference = highs(&x, &residuals.column(i).to_owned(), false);
        assert!(
            (c.objective - reference).abs() <= 1e-6 * reference.max(1.0),
            "class {i}: nnmend {} against HiGHS {reference}",
            c.objective
        );
        total += reference;
    }
    assert!(
        (one.objective - total).abs() <= 1e-6 * total.max(1.0),
        "{} against {total}",
        one.objective
    );
    // The new head's remaining errors are the slacks.
    let z = f.mapv(f64::from).dot(&one.weights.mapv(f64::from).t()) + &one.bias.mapv(f64::from);
    for (i, c) in one.classes.iter().enumerate() {
        for s_ in 0..s {
            let e = (z[[s_, i]] - f64::from(targets[[s_, i]])).abs();
            assert!(
                e <= c.delta[s_] + 1e-4,
                "class {i} sample {s_}: error {e}, δ {}",
                c.delta[s_]
            );
        }
    }
    let mismatch = repair::paper::repair(
        w.view(),
        b.view(),
        f.view(),
        targets.t(),
        None,
        &ClassSettings::default(),
        1,
    );
    assert!(mismatch.is_err());
    // Only the allowed features change, and the fit can only get worse with fewer.
    let allowed = [3, 7, 20];
    let some = repair::paper::repair(
        w.view(),
        b.view(),
        f.view(),
        targets.view(),
        Some(&allowed),
        &ClassSettings::default(),
        2,
    )
    .unwrap();
    for i in 0..k {
        for j in 0..d {
            if !allowed.contains(&j) {
                assert_eq!(some.weights[[i, j]], w[[i, j]], "feature {j} changed");
            }
        }
    }
    assert!(some.objective >= one.objective - 1e-6);
    let bad = repair::paper::repair(
        w.view(),
        b.view(),
        f.view(),
        targets.view(),
        Some(&[d]),
        &ClassSettings::default(),
        1,
    );
    assert!(bad.is_err());
}

#[test]
fn wilcoxon_p_values_match_scipy() {
    use nnmend::repair::wilcoxon::signed_rank;
    let text = std::fs::read_to_string(fixture("reference/wilcoxon.json")).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases = doc["cases"].as_array().unwrap();
    assert!(cases.len() >= 15);
    let floats =
        |v: &serde_json::Value| -> Vec<f64> { v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect() };
    for c in cases {
        let name = c["name"].as_str().unwrap();
        let test = signed_rank(&floats(&c["x"]), &floats(&c["y"]));
        let (stat, p) = (c["statistic"].as_f64().unwrap(), c["pvalue"].as_f64().unwrap());
        assert_eq!(test.statistic, stat, "{name}: statistic");
        assert!(
            (test.pvalue - p).abs() <= 1e-6,
            "{name}: p = {} against scipy's {p} ({:?})",
            test.pvalue,
            test.method
        );
    }
}

#[test]
fn wilcoxon_selects_the_features_an_attack_moves() {
    use nnmend::repair::wilcoxon::select;
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let clean = Array2::from_shape_fn((60, 6), |_| rng.random_range(0.0..1.0));
    let mut adv = clean.clone();
    // Features 1 and 4 shift under attack; the others only jitter symmetrically.
    for (s, mut row) in adv.rows_mut().into_iter().enumerate() {
        row[1] += 0.3 + 0.01 * s as f64;
        row[4] -= 0.2;
        row[2] += if s % 2 == 0 { 0.05 } else { -0.05 };
    }
    assert_eq!(select(clean.view(), adv.view(), 0.1), vec![1, 4]);
}

/// Fits the linear hybrid of `tiny_cnn.onnx` on the first 600 fixture training images.
fn fit_tiny_hybrid(out: &std::path::Path) {
    let (model, data) = (fixture("tiny_cnn.onnx"), fixture("mnist-small"));
    json(&run(&[
        "fit",
        s(&model),
        "--train",
        s(&data),
        "--limit",
        "600",
        "-o",
        s(out),
        "--json",
    ]));
}

/// fit → attack (training images) → repair, as a user runs them.
#[test]
fn repair_writes_a_drop_in_model_and_the_json_contract() {
    let tmp = tempdir();
    let p = |name: &str| tmp.path().join(name);
    let data = fixture("mnist-small");
    fit_tiny_hybrid(&p("lh.onnx"));
    json(&run(&[
        "attack",
        s(&p("lh.onnx")),
        "--data",
        s(&data),
        "--split",
        "train",
        "--limit",
        "300",
        "--eps",
        "0.1",
        "-o",
        s(&p("adv.npz")),
        "--json",
    ]));
    json(&run(&[
        "attack",
        s(&p("lh.onnx")),
        "--data",
        s(&data),
        "--limit",
        "200",
        "--eps",
        "0.1",
        "-o",
        s(&p("held.npz")),
        "--only-successful",
        "--json",
    ]));
    let before = std::fs::read(p("lh.onnx")).unwrap();
    let v = json(&run(&[
        "repair",
        s(&p("lh.onnx")),
        "--adv",
        s(&p("adv.npz")),
        "--train",
        s(&data),
        "-o",
        s(&p("rlh.onnx")),
        "--test",
        s(&data),
        "--adv-test",
        s(&p("held.npz")),
        "--dump-lp",
        s(&p("lp.json")),
        "--mode",
        "paper",
        "--pgd-limit",
        "0",
        "--json",
    ]));
    for key in [
        "status",
        "objective",
        "seconds",
        "efficacy",
        "drawdown",
        "generalisation",
    ] {
        assert!(v.get(key).is_some(), "{key}: {v}");
    }
    for key in ["variables", "constraints", "nonzeros"] {
        assert!(v["lp"][key].as_u64().unwrap() > 0, "lp.{key}");
    }
    assert!(v["change"]["l1"].as_f64().unwrap() > 0.0 && v["change"]["linf"].as_f64().unwrap() > 0.0);
    // clarabel ends some degenerate classes at reduced accuracy; the optimum is checked
    // against HiGHS below either way.
    assert!(
        v["status"] == "solved" || v["status"] == "almost_solved",
        "{}",
        v["status"]
    );
    assert!(
        v["samples"].as_u64().unwrap() > 0,
        "the attack found nothing to repair: {v}"
    );
    // Every repair sample was misclassified before; the paper's LP (which pays for what
    // it cannot fix with slack, so 100% is not promised) fixes most of them.
    assert_eq!(v["efficacy_before"], 0.0, "{v}");
    assert!(v["efficacy"].as_f64().unwrap() >= 0.8, "{v}");
    // The samples it could not fix are listed, and account for the rest.
    let unfixed = v["unfixed"].as_array().unwrap().len() as f64;
    let samples = v["samples"].as_f64().unwrap();
    assert!(
        (1.0 - unfixed / samples - v["efficacy"].as_f64().unwrap()).abs() < 1e-12,
        "{v}"
    );
    assert!(v["drawdown"].is_number() && v["generalisation"].is_number());
    // The same instance, solved by HiGHS.
    let (ours, theirs) = (v["objective"].as_f64().unwrap(), highs_objective(&p("lp.json")));
    assert!(
        (ours - theirs).abs() <= 1e-6 * theirs.max(1.0),
        "nnmend {ours} against HiGHS {theirs}"
    );
    let paper_highs = theirs;
    // A drop-in replacement that onnxruntime loads, with its provenance; the input is
    // untouched.
    assert_eq!(before, std::fs::read(p("lh.onnx")).unwrap());
    let x = p("x.npy");
    write_npy(&x, &ndarray::Array4::<f32>::zeros((2, 1, 28, 28)));
    let mut cmd = python("ort_run.py");
    cmd.arg("--check").arg(p("rlh.onnx")).arg(&x).arg(p("y.npy"));
    ok(cmd);
    let repaired = nnmend::onnx::load(&p("rlh.onnx")).unwrap().model;
    let original = nnmend::onnx::load(&p("lh.onnx")).unwrap().model;
    let (g1, g0) = (repaired.graph.as_ref().unwrap(), original.graph.as_ref().unwrap());
    assert_eq!(g1.input, g0.input);
    assert_eq!(g1.output, g0.output);
    assert!(repaired
        .metadata_props
        .iter()
        .any(|e| e.key() == "nnmend.repair.mode" && e.value() == "paper"));

    // Margin mode on the same samples (the first 40), with 300 preservation images.
    let m = json(&run(&[
        "repair",
        s(&p("lh.onnx")),
        "--adv",
        s(&p("adv.npz")),
        "--train",
        s(&data),
        "-o",
        s(&p("rlh_m.onnx")),
        "--mode",
        "margin",
        "--samples",
        "40",
        "--preserve",
        "300",
        "--test",
        s(&data),
        "--pgd-limit",
        "30",
        "--dump-lp",
        s(&p("lp_m.json")),
        "--json",
    ]));
    assert_eq!(m["mode"], "margin", "{m}");
    // The robust accuracy before and after, on the first 30 test images at the
    // attack's radius.
    for side in ["before", "after"] {
        let r = &m["robustness"][side];
        assert_eq!(r["n"], 30, "{m}");
        assert!(
            r["robust_accuracy"].as_f64().unwrap() <= r["clean_accuracy"].as_f64().unwrap(),
            "{m}"
        );
    }
    assert_eq!(m["status"], "solved", "{m}");
    assert!(m["samples"].as_u64().unwrap() <= 40);
    let short = m["margin"]["short_repair_samples"].as_u64().unwrap() as f64;
    // A sample with no slack has its margin of 1, so it is classified right.
    assert!(
        m["efficacy"].as_f64().unwrap() >= 1.0 - short / m["samples"].as_f64().unwrap() - 1e-12,
        "{m}"
    );
    assert!(m["margin"]["gap"].as_f64().unwrap() <= 1e-6, "{m}");
    let (ours, theirs) = (m["objective"].as_f64().unwrap(), highs_objective(&p("lp_m.json")));
    assert!(
        (ours - theirs).abs() <= 1e-6 * theirs.max(1.0),
        "margin: nnmend {ours} against HiGHS {theirs}"
    );
    let repaired = nnmend::onnx::load(&p("rlh_m.onnx")).unwrap().model;
    assert!(repaired
        .metadata_props
        .iter()
        .any(|e| e.key() == "nnmend.repair.mode" && e.value() == "margin"));
    // `nnmend lp` re-solves the paper-mode dump to HiGHS's optimum for it.
    let lp = json(&run(&["lp", s(&p("lp.json")), "--json"]));
    assert!(
        (lp["objective"].as_f64().unwrap() - paper_highs).abs() <= 1e-6 * paper_highs.max(1.0),
        "nnmend lp {lp} against HiGHS {paper_highs}"
    );
}

#[test]
fn repair_refuses_what_it_cannot_repair() {
    let tmp = tempdir();
    let data = fixture("mnist-small");
    let original = fixture("tiny_cnn.onnx");
    let adv = tmp.path().join("adv.npz");
    json(&run(&[
        "attack",
        s(&original),
        "--data",
        s(&data),
        "--split",
        "train",
        "--limit",
        "64",
        "--eps",
        "0.2",
        "-o",
        s(&adv),
        "--json",
    ]));
    let out = tmp.path().join("r.onnx");
    // Not a hybrid: no head on `features`.
    fails_with(
        &run(&[
            "repair",
            s(&original),
            "--adv",
            s(&adv),
            "--train",
            s(&data),
            "-o",
            s(&out),
        ]),
        1,
        "no linear head to repair",
    );
    assert!(!out.exists());
    // The wrong data for the indices: the labels give it away.
    let hybrid = tmp.path().join("lh.onnx");
    json(&run(&[
        "fit",
        s(&original),
        "--train",
        s(&data),
        "--limit",
        "300",
        "-o",
        s(&hybrid),
        "--json",
    ]));
    fails_with(
        &run(&[
            "repair",
            s(&hybrid),
            "--adv",
            s(&adv),
            "--train",
            s(&data),
            "--split",
            "test",
            "-o",
            s(&out),
        ]),
        1,
        "is it the data the attack ran on?",
    );
    assert!(!out.exists());
    // A negative or non-finite margin or price is a usage error.
    for (flag, value) in [("--margin", "-1"), ("--keep-price", "nan"), ("--slack-price", "inf")] {
        fails_with(
            &run(&[
                "repair",
                s(&hybrid),
                "--adv",
                s(&adv),
                "--train",
                s(&data),
                "-o",
                s(&out),
                "--mode",
                "margin",
                flag,
                value,
            ]),
            2,
            "is not a finite number ≥ 0",
        );
        assert!(!out.exists());
    }
}

/// x, scores, labels, wanted margins, prices.
type MarginInstance = (Array2<f64>, Array2<f64>, Vec<usize>, Vec<f64>, Vec<f64>);

/// A margin-mode instance: `repair` samples that the current scores get wrong or
/// barely right, then `keep` clean samples with their own margins.
fn margin_instance(repair: usize, keep: usize, k: usize, d: usize, seed: u64) -> MarginInstance {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = repair + keep;
    let (x, _) = instance(n, d, seed);
    let labels: Vec<usize> = (0..n).map(|_| rng.random_range(0..k)).collect();
    let mut scores = Array2::from_shape_fn((n, k), |_| rng.random_range(-1.0..1.0));
    for (s, &t) in labels.iter().enumerate().skip(repair) {
        // Clean samples are mostly right, by varying margins.
        scores[[s, t]] += rng.random_range(-0.2..2.5);
    }
    let kept: Vec<bool> = (0..n).map(|s| s >= repair).collect();
    let margin = repair::margin::wanted_margins(scores.view(), &labels, &kept, 1.0);
    let price: Vec<f64> = kept.iter().map(|&c| if c { 10.0 } else { 1.0 }).collect();
    (x, scores, labels, margin, price)
}

fn margin_highs(x: &Array2<f64>, scores: &Array2<f64>, labels: &[usize], margin: &[f64], price: &[f64]) -> f64 {
    let dir = tempdir();
    let path = dir.path().join("margin.json");
    let rows = |a: &Array2<f64>| a.rows().into_iter().map(|r| r.to_vec()).collect::<Vec<_>>();
    let doc = serde_json::json!({"mode": "margin", "x": rows(x), "scores": rows(scores),
        "labels": labels, "margin": margin, "price": price});
    std::fs::write(&path, doc.to_string()).unwrap();
    highs_objective(&path)
}

#[test]
fn the_margin_optimum_equals_highs_and_keeps_every_constraint() {
    for (repair_n, keep, k, d, seed) in [(6, 10, 3, 8, 21), (15, 40, 4, 20, 22), (30, 120, 10, 40, 23)] {
        let (x, scores, labels, margin, price) = margin_instance(repair_n, keep, k, d, seed);
        let problem = repair::margin::MarginProblem {
            x: x.view(),
            scores: scores.view(),
            labels: &labels,
            margin: &margin,
            price: &price,
        };
        let reference = margin_highs(&x, &scores, &labels, &margin, &price);
        for solver in [MarginSolver::Ipm, MarginSolver::Clarabel] {
            let settings = repair::margin::MarginSettings {
                solver,
                ..Default::default()
            };
            let sol = repair::margin::solve(&problem, &settings);
            assert_eq!(
                sol.status,
                Status::Solved,
                "{solver:?} N={} k={k} d={d}",
                repair_n + keep
            );
            assert!(
                (sol.objective - reference).abs() <= 1e-6 * reference.abs().max(1.0),
                "{solver:?} k={k} d={d}: nnmend {} against HiGHS {reference}",
                sol.objective
            );
            assert!(sol.gap <= 1e-6, "{solver:?}: certified gap {}", sol.gap);
            assert!(sol.xi.iter().all(|&v| v >= 0.0));
            assert!(
                repair::margin::satisfied(&problem, &sol.gamma, &sol.xi, 1e-6),
                "{solver:?}: a constraint is violated"
            );
            // Generation kept the active set below all N·(k − 1) pairs.
            assert!(sol.active < (repair_n + keep) * (k - 1), "{} active pairs", sol.active);
        }
    }
}

#[test]
fn a_feasible_margin_repair_fixes_every_sample() {
    // Fewer samples than features: any margins can be met, and at a high enough price
    // for slack the optimum meets them all.
    let (x, scores, labels, margin, _) = margin_instance(12, 8, 4, 40, 31);
    let price = vec![1e3; labels.len()];
    let problem = repair::margin::MarginProblem {
        x: x.view(),
        scores: scores.view(),
        labels: &labels,
        margin: &margin,
        price: &price,
    };
    let sol = repair::margin::solve(&problem, &Default::default());
    assert_eq!(sol.status, Status::Solved);
    assert!(sol.xi.iter().all(|&v| v <= 1e-6), "slack left: {:?}", sol.xi);
    let after = &scores + &x.dot(&sol.gamma.t());
    let now = repair::margin::margins(after.view(), &labels);
    for (s, (&m, &want)) in now.iter().zip(&margin).enumerate() {
        assert!(m >= want - 1e-6, "sample {s}: margin {m} < {want}");
        assert!(m > 0.0, "sample {s} is misclassified");
    }
}

/// PGD-5 (ε = 0.1) adversarial examples of the first 150 fixture training images
/// against `lh`, the successful ones only, into `out`.
fn pgd_repair_samples(lh: &std::path::Path, out: &std::path::Path) {
    json(&run(&[
        "attack",
        s(lh),
        "--data",
        s(&fixture("mnist-small")),
        "--split",
        "train",
        "--limit",
        "150",
        "--eps",
        "0.1",
        "--method",
        "pgd",
        "--steps",
        "5",
        "-o",
        s(out),
        "--only-successful",
        "--json",
    ]));
}

/// onnxruntime's scores of `model` on the images of the attack file `adv`, with the
/// file's labels and indices.
fn onnxruntime_scores(model: &std::path::Path, adv: &std::path::Path) -> (Array2<f32>, Array1<i64>, Array1<i64>) {
    let dir = tempdir();
    let mut npz = ndarray_npy::NpzReader::new(std::fs::File::open(adv).unwrap()).unwrap();
    let x: ndarray::Array4<f32> = npz.by_name("x").unwrap();
    let y: Array1<i64> = npz.by_name("y").unwrap();
    let index: Array1<i64> = npz.by_name("index").unwrap();
    write_npy(&dir.path().join("x.npy"), &x);
    let mut cmd = python("ort_run.py");
    cmd.arg(model)
        .arg(dir.path().join("x.npy"))
        .arg(dir.path().join("scores.npy"));
    ok(cmd);
    (read_npy2(&dir.path().join("scores.npy")), y, index)
}

#[test]
fn a_round_loop_is_checked_round_by_round() {
    // Three rounds of margin repair on the fixtures: every round's LP, as dumped, has
    // HiGHS's optimum, and the model written misclassifies in onnxruntime only round
    // 0's samples that the JSON lists as unfixed.
    let tmp = tempdir();
    let p = |name: &str| tmp.path().join(name);
    let data = fixture("mnist-small");
    fit_tiny_hybrid(&p("lh.onnx"));
    pgd_repair_samples(&p("lh.onnx"), &p("adv.npz"));
    let v = json(&run(&[
        "repair",
        s(&p("lh.onnx")),
        "--adv",
        s(&p("adv.npz")),
        "--train",
        s(&data),
        "--limit",
        "600",
        "--preserve",
        "200",
        "--rounds",
        "3",
        "--pool",
        "150",
        "--round-steps",
        "5",
        "--dump-lp",
        s(&p("lp.json")),
        "-o",
        s(&p("rlh.onnx")),
        "--json",
    ]));
    let rounds = v["rounds"].as_array().unwrap();
    assert!(rounds.len() >= 2, "the loop stopped after round 0: {v}");
    for round in rounds {
        let k = round["round"].as_u64().unwrap();
        let ours = round["objective"].as_f64().unwrap();
        let theirs = highs_objective(&p(&format!("lp.round{k}.json")));
        assert!(
            (ours - theirs).abs() <= 1e-6 * theirs.abs().max(1.0),
            "round {k}: nnmend {ours} against HiGHS {theirs}"
        );
        assert_eq!(round["status"], "solved", "round {k}");
    }
    assert!(p("lp.json").exists(), "the chosen round's dump");
    // onnxruntime on round 0's samples, with the chosen model.
    let (scores, y, index) = onnxruntime_scores(&p("rlh.onnx"), &p("adv.npz"));
    let unfixed: Vec<i64> = v["unfixed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_i64().unwrap())
        .collect();
    let mut wrong = 0;
    for (row, (&label, &at)) in scores.rows().into_iter().zip(y.iter().zip(&index)) {
        let best = (0..row.len()).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap();
        if best as i64 != label {
            wrong += 1;
            assert!(
                unfixed.contains(&at),
                "image {at} is misclassified in onnxruntime but not listed as unfixed"
            );
        }
    }
    assert!(
        wrong * 10 <= y.len(),
        "{wrong} of {} round-0 samples misclassified",
        y.len()
    );
}

#[test]
fn head_training_before_the_lp_makes_the_hybrid_harder_to_attack() {
    // fit → PGD samples → repair with adversarial training of the head first: the
    // training's pool robustness grows epoch by epoch, the LP after it still fixes
    // the repair samples (checked in onnxruntime), and the written model resists the
    // robustness protocol on test images better than the hybrid did.
    let tmp = tempdir();
    let p = |name: &str| tmp.path().join(name);
    let data = fixture("mnist-small");
    fit_tiny_hybrid(&p("lh.onnx"));
    pgd_repair_samples(&p("lh.onnx"), &p("adv.npz"));
    let v = json(&run(&[
        "repair",
        s(&p("lh.onnx")),
        "--adv",
        s(&p("adv.npz")),
        "--train",
        s(&data),
        "--limit",
        "600",
        "--preserve",
        "200",
        "--pool",
        "300",
        "--epochs",
        "4",
        "--train-steps",
        "3",
        "--test",
        s(&data),
        "--pgd-limit",
        "100",
        "-o",
        s(&p("rlh.onnx")),
        "--json",
    ]));
    let epochs = v["training"].as_array().unwrap();
    assert_eq!(epochs.len(), 4, "{v}");
    let robust = |e: &serde_json::Value| e["pool_robust_accuracy"].as_f64().unwrap();
    assert!(
        robust(&epochs[3]) > robust(&epochs[0]),
        "training did not help the pool: {epochs:?}"
    );
    assert_eq!(v["status"], "solved");
    assert!(v["efficacy"].as_f64().unwrap() >= 0.99, "{v}");
    let before = v["robustness"]["before"]["robust_accuracy"].as_f64().unwrap();
    let after = v["robustness"]["after"]["robust_accuracy"].as_f64().unwrap();
    assert!(after > before + 0.05, "robust accuracy {before} -> {after}");
    assert!(v["repair_seconds"].as_f64().unwrap() >= v["seconds"].as_f64().unwrap());
    // onnxruntime classifies the repair samples as the JSON says.
    let (scores, y, _) = onnxruntime_scores(&p("rlh.onnx"), &p("adv.npz"));
    let right = scores
        .rows()
        .into_iter()
        .zip(&y)
        .filter(|(row, &label)| (0..row.len()).max_by(|&a, &b| row[a].total_cmp(&row[b])) == Some(label as usize))
        .count();
    let efficacy = right as f64 / y.len() as f64;
    assert!(
        (efficacy - v["efficacy"].as_f64().unwrap()).abs() < 1e-9,
        "onnxruntime {efficacy} against the JSON's {}",
        v["efficacy"]
    );
}
