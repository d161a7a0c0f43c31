//! `nnmend run`: the whole experiment on the paper's MNIST-NN and a fixture subset.

use std::path::Path;

use ndarray::{Array1, Array4, Axis};

use crate::common::*;

const MODELS: [&str; 4] = ["NN", "LH", "KH", "RLH"];
const SETS: [&str; 4] = ["Data", "NADV", "HADV", "RHADV"];
const EPS: [f64; 2] = [0.1, 0.2];

fn run_experiment(out: &Path, threads: &str) -> std::process::Output {
    let data = fixture("mnist-small");
    run(&[
        "run",
        s(&fixture("mnist_paper.onnx")),
        "--train",
        s(&data),
        "--test",
        s(&data),
        "--train-limit",
        "1000",
        "--test-limit",
        "200",
        "--eps",
        "0.1,0.2",
        "--repair-samples",
        "3",
        "--landmarks",
        "200",
        "--pgd-limit",
        "40",
        "--threads",
        threads,
        "--out",
        s(out),
    ])
}

fn report(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap()
}

fn cell<'a>(report: &'a serde_json::Value, model: &str, set: &str, eps: f64) -> &'a serde_json::Value {
    report["cells"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["model"] == model && c["test_set"] == set && (c["eps"].as_f64().unwrap() - eps).abs() < 1e-6)
        .unwrap_or_else(|| panic!("no cell {model} × {set} × {eps}"))
}

/// Correct predictions of `model` in onnxruntime on the first `n` fixture test images.
fn ort_correct(model: &Path, tmp: &Path, n: usize) -> usize {
    let file = std::fs::File::open(fixture("mnist-small-test.npz")).unwrap();
    let mut npz = ndarray_npy::NpzReader::new(file).unwrap();
    let x: Array4<f32> = npz.by_name("x").unwrap();
    let y: Array1<i64> = npz.by_name("y").unwrap();
    let input = tmp.join("x.npy");
    write_npy(&input, &x.slice_axis(Axis(0), (0..n).into()).to_owned());
    let output = tmp.join("logits.npy");
    let mut cmd = python("ort_run.py");
    cmd.args([s(model), s(&input), s(&output)]);
    ok(cmd);
    let logits = read_npy2(&output);
    logits
        .rows()
        .into_iter()
        .zip(y.iter())
        .filter(|(row, &label)| {
            let best = row.iter().enumerate().fold(
                (0, f32::NEG_INFINITY),
                |(bi, bv), (i, &v)| if v > bv { (i, v) } else { (bi, bv) },
            );
            best.0 as i64 == label
        })
        .count()
}

#[test]
fn run_reports_every_cell_writes_drop_in_models_and_repeats_itself() {
    let tmp = tempdir();
    let out = tmp.path().join("exp");
    let first = run_experiment(&out, "2");
    assert!(
        first.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&first.stderr)
    );
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(
        stderr.contains("attacking LH on the test set"),
        "no progress on stderr: {stderr}"
    );
    let r = report(&out);

    // Every model × test set × ε, each a share of the 200 test images.
    for m in MODELS {
        for set in SETS {
            for e in EPS {
                let c = cell(&r, m, set, e);
                let acc = c["accuracy"].as_f64().unwrap();
                assert!((0.0..=1.0).contains(&acc), "{c}");
                assert_eq!(c["n"], 200);
                assert_eq!(c["correct"].as_u64().unwrap() as f64 / 200.0, acc);
            }
        }
    }
    // The attacks replace images: each adversarial set is at most as easy for the
    // model it was made against as the clean set.
    for e in EPS {
        let data = |m| cell(&r, m, "Data", e)["accuracy"].as_f64().unwrap();
        assert!(cell(&r, "NN", "NADV", e)["accuracy"].as_f64().unwrap() < data("NN"));
        assert!(cell(&r, "LH", "HADV", e)["accuracy"].as_f64().unwrap() < data("LH"));
        assert!(cell(&r, "RLH", "RHADV", e)["accuracy"].as_f64().unwrap() <= data("RLH"));
    }
    // Every repair is an LP solved to optimality that fixes its samples.
    let repairs = r["repairs"].as_array().unwrap();
    assert_eq!(repairs.len(), 2);
    for rep in repairs {
        assert_eq!(rep["samples"], 3, "{rep}");
        assert_eq!(rep["status"], "solved", "{rep}");
        assert_eq!(rep["efficacy"], 1.0, "{rep}");
        assert!(rep["lp"]["variables"].as_u64().unwrap() > 0);
    }
    // Every model's robust accuracy at every ε, on the first 40 test images, never above
    // its clean accuracy there; and KH on NN's and LH's adversarial examples.
    let robustness = r["robustness"].as_array().unwrap();
    for m in MODELS {
        for e in EPS {
            let f = robustness
                .iter()
                .find(|f| f["model"] == m && (f["eps"].as_f64().unwrap() - e).abs() < 1e-6)
                .unwrap_or_else(|| panic!("no robust accuracy of {m} at {e}"));
            assert_eq!(f["n"], 40, "{f}");
            assert!(
                f["robust_accuracy"].as_f64().unwrap() <= f["clean_accuracy"].as_f64().unwrap(),
                "{f}"
            );
        }
    }
    assert_eq!(r["transfer"].as_array().unwrap().len(), 4, "{}", r["transfer"]);
    assert!(r["timings"]["total"].as_f64().unwrap() > 0.0);
    assert!(r["versions"]["nnmend"].is_string());
    let build = json(&run(&["--version", "--json"]));
    for key in ["version", "commit", "features", "tract"] {
        assert_eq!(r["provenance"][key], build[key], "report.json's provenance.{key}");
    }

    // The written models are drop-in ONNX: onnxruntime scores them on the clean test
    // images exactly as the report does.
    for (m, file) in [
        ("LH", "models/LH.onnx"),
        ("KH", "models/KH.onnx"),
        ("RLH", "models/RLH_eps0.1.onnx"),
    ] {
        let correct = ort_correct(&out.join(file), tmp.path(), 200);
        assert_eq!(
            correct as u64,
            cell(&r, m, "Data", 0.1)["correct"].as_u64().unwrap(),
            "{m}"
        );
    }
    let nn = ort_correct(&fixture("mnist_paper.onnx"), tmp.path(), 200);
    assert_eq!(nn as u64, cell(&r, "NN", "Data", 0.1)["correct"].as_u64().unwrap());

    // The figures decode, at their size, and report.md shows them.
    for set in SETS {
        let png = image::open(out.join(format!("accuracy_{set}.png"))).unwrap();
        assert_eq!((png.width(), png.height()), (800, 500));
        let svg = std::fs::read_to_string(out.join(format!("accuracy_{set}.svg"))).unwrap();
        for label in ["0.1", "0.2", "NN", "LH", "KH", "RLH", "Accuracy (%)", set] {
            assert!(svg.contains(label), "accuracy_{set}.svg lacks {label}");
        }
    }
    let grid = image::open(out.join("examples.png")).unwrap();
    assert!(grid.width() > 3 * 28 && grid.height() > 6 * 28);

    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("![") && md.contains("examples.png") && md.contains("accuracy_RHADV.png"));
    for heading in [
        "## Accuracy on NADV",
        "## Accuracy on HADV",
        "## Accuracy on RHADV",
        "## Repair",
        "## Robust accuracy",
    ] {
        assert!(md.contains(heading), "report.md lacks {heading}");
    }

    // Same seed, other thread count: the same numbers and byte-identical models.
    let again = tmp.path().join("again");
    let second = run_experiment(&again, "1");
    assert!(
        second.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&second.stderr)
    );
    let r2 = report(&again);
    assert_eq!(r["cells"], r2["cells"]);
    let objectives = |r: &serde_json::Value| {
        r["repairs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["objective"].clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(objectives(&r), objectives(&r2));
    for file in [
        "models/LH.onnx",
        "models/KH.onnx",
        "models/RLH_eps0.1.onnx",
        "models/RLH_eps0.2.onnx",
        "examples.png",
    ] {
        assert_eq!(
            std::fs::read(out.join(file)).unwrap(),
            std::fs::read(again.join(file)).unwrap(),
            "{file} differs between runs"
        );
    }

    // An existing folder is never replaced without --force, and nothing is left beside it.
    let before = std::fs::read(out.join("report.json")).unwrap();
    let refused = run_experiment(&out, "2");
    fails_with(&refused, 2, "already exists");
    assert_eq!(std::fs::read(out.join("report.json")).unwrap(), before);
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".nnmend"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

/// `run --c auto --validation DATA`: the heads' C is scored on the images given apart,
/// which the report names; the written LH scores on them what its search said.
#[test]
fn run_chooses_c_on_validation_images_given_apart() {
    let tmp = tempdir();
    let model = fixture("mnist_paper.onnx");
    let data = fixture("mnist-small");
    let validation = fixture("mnist-small-test.npz");
    let out = tmp.path().join("out");
    let base = [
        "run",
        s(&model),
        "--train",
        s(&data),
        "--test",
        s(&data),
        "--train-limit",
        "400",
        "--test-limit",
        "50",
        "--eps",
        "0.1",
        "--pgd-limit",
        "0",
        "--examples",
        "0",
        "--landmarks",
        "100",
        "--c-grid",
        "0.001,0.1,10",
        "--validation",
        s(&validation),
    ];
    let done = run(&[&base[..], &["--c", "auto", "--out", s(&out)]].concat());
    assert!(
        done.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&done.stderr)
    );
    let r = report(&out);
    assert_eq!(r["validation"]["n"], 500);
    assert_eq!(r["validation"]["source"], s(&validation));
    assert_eq!(r["settings"]["svm"]["holdout"], serde_json::Value::Null);
    assert!(
        r["timings"]["features.validation"].as_f64().is_some(),
        "{}",
        r["timings"]
    );
    for m in ["LH", "KH"] {
        let sel = &r["fits"][m]["c_selection"];
        assert_eq!(sel["holdout"], serde_json::Value::Null, "{m}");
        assert_eq!(
            (sel["n_fit"].as_u64(), sel["n_validation"].as_u64()),
            (Some(400), Some(500))
        );
        assert_eq!(r["fits"][m]["c"], sel["chosen"], "{m}");
    }
    let sel = &r["fits"]["LH"]["c_selection"];
    let chosen = sel["chosen"].as_f64().unwrap();
    let at = sel["curve"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["c"].as_f64() == Some(chosen))
        .unwrap();
    let acc = at["validation_accuracy"].as_f64().unwrap();
    let scored = json(&run(&[
        "eval",
        s(&out.join("models/LH.onnx")),
        "--data",
        s(&validation),
        "--json",
    ]));
    let correct = scored["models"][0]["correct"].as_u64().unwrap() as f64;
    assert!((correct - 500.0 * acc).abs() <= 1.0, "{correct} of 500 against {acc}");
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("Validation set (the choice of C)"), "{md}");
    assert!(md.contains("chosen on 500 validation images"), "{md}");

    // Without a search there is nothing for the images to score.
    let other = tmp.path().join("other");
    let refused = run(&[&base[..], &["--out", s(&other)]].concat());
    fails_with(&refused, 2, "--c auto");
    assert!(!other.exists());
}
