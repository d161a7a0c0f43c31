//! The kernel hybrid (KH): `fit --head kernel` writes a model that passes the ONNX
//! checker and runs in onnxruntime with nnmend's predictions; its Nyström features
//! equal a numpy evaluation of the formula from the model's own initializers; the
//! library's map and SVM give the model's scores; and `repair` fixes a KH in both
//! modes, at the optimum HiGHS finds for the dumped LP.

use ndarray::{Array1, Array2, Array4, Axis};

use nnmend::data::{self, LoadOptions, Split};
use nnmend::engine::{tract::Tract, Engine};
use nnmend::features::{argmax_rows, collect, Feed};
use nnmend::hybrid::{evaluate, extract, fit_on_features, fit_on_features_validated, FitSettings};
use nnmend::onnx::surgery::KERNEL_FEATURES;
use nnmend::svm::{CSearch, NystromSettings, Tuning};

use crate::common::*;

fn mnist(split: Split, limit: Option<usize>) -> data::Dataset {
    data::load(&fixture("mnist-small"), &LoadOptions { split, limit }).unwrap()
}

fn meta(model: &nnmend::onnx::ModelProto, key: &str) -> String {
    model
        .metadata_props
        .iter()
        .find(|e| e.key() == key)
        .unwrap_or_else(|| panic!("no {key} in metadata_props"))
        .value()
        .to_string()
}

/// onnxruntime's value of `tensor` (flattened per sample) on the images in `x`.
fn ort_tensor(model: &std::path::Path, tensor: &str, x: &std::path::Path, dir: &std::path::Path) -> Array2<f32> {
    let out = dir.join(format!("{}.npy", tensor.replace('/', "_")));
    let mut cmd = python("ort_tensor.py");
    cmd.arg(model).arg(tensor).arg(x).arg(&out);
    ok(cmd);
    read_npy2(&out)
}

fn max_rel_diff(a: &Array2<f32>, b: &Array2<f32>) -> f32 {
    let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1.0);
    max_abs_diff(a, b) / scale
}

#[test]
fn fit_head_kernel_runs_in_onnxruntime_with_nnmends_predictions() {
    let tmp = tempdir();
    let p = |name: &str| tmp.path().join(name);
    let model = fixture("mnist_paper.onnx");
    let data = fixture("mnist-small");
    let v = json(&run(&[
        "fit",
        s(&model),
        "--train",
        s(&data),
        "--limit",
        "600",
        "--test",
        s(&data),
        "--head",
        "kernel",
        "--landmarks",
        "200",
        "--seed",
        "4",
        "-o",
        s(&p("kh.onnx")),
        "--json",
    ]));
    assert_eq!(v["head"], "kernel", "{v}");
    assert_eq!(v["kernel"]["landmarks"], 200, "{v}");
    let gamma = v["kernel"]["gamma"].as_f64().unwrap();
    assert!(gamma > 0.0 && gamma.is_finite(), "{v}");
    let dim = v["kernel"]["dim"].as_u64().unwrap();
    assert!(dim > 100 && dim <= 200, "{v}");
    // Well above chance (10%) and as good as a linear head on these 600 images.
    let test_accuracy = v["test"]["accuracy"].as_f64().unwrap();
    assert!(test_accuracy > 0.9, "{v}");

    let kh = nnmend::onnx::load(&p("kh.onnx")).unwrap().model;
    assert_eq!(meta(&kh, "nnmend.head"), "kernel-svm-nystrom");
    assert_eq!(meta(&kh, "nnmend.kernel.landmarks"), "200");
    assert_eq!(
        meta(&kh, "nnmend.kernel.gamma").parse::<f64>().unwrap() as f32,
        gamma as f32
    );

    // onnxruntime (after the full checker) predicts what nnmend predicts, on every
    // test image, and the logits agree.
    let test = mnist(Split::Test, None);
    let x = p("x.npy");
    // The same 500 test images as float32 [500, 1, 28, 28] in [0, 1]: MNIST-NN's input.
    let mut npz = ndarray_npy::NpzReader::new(std::fs::File::open(fixture("mnist-small-test.npz")).unwrap()).unwrap();
    let images: Array4<f32> = npz.by_name("x").unwrap();
    assert_eq!(images.shape()[0], test.len());
    write_npy(&x, &images);
    let mut cmd = python("ort_run.py");
    cmd.arg("--check").arg(p("kh.onnx")).arg(&x).arg(p("y.npy"));
    ok(cmd);
    let theirs = read_npy2(&p("y.npy"));
    let session = Tract.prepare(&kh).unwrap();
    let ours = collect(session.as_ref(), &test, &Feed::default(), 0, "").unwrap();
    assert!(max_rel_diff(&ours, &theirs) <= 1e-4, "logits differ");
    let (acc, predicted) = evaluate(&kh, &test, &Tract, &Feed::default()).unwrap();
    assert_eq!(predicted, argmax_rows(&theirs), "on the {} test images", test.len());
    assert!((acc.accuracy - test_accuracy).abs() < 1e-12);

    // φ in onnxruntime equals numpy's evaluation of the formula from the initializers,
    // on onnxruntime's own extractor features.
    let features = ort_tensor(&p("kh.onnx"), "features", &x, tmp.path());
    let phi = ort_tensor(&p("kh.onnx"), KERNEL_FEATURES, &x, tmp.path());
    assert_eq!(phi.ncols() as u64, dim);
    write_npy(&p("f.npy"), &features);
    let mut cmd = python("nystrom_reference.py");
    cmd.arg(p("kh.onnx")).arg(p("f.npy")).arg(p("phi_ref.npy"));
    ok(cmd);
    let reference = read_npy2(&p("phi_ref.npy"));
    assert!(
        max_rel_diff(&phi, &reference) <= 1e-4,
        "φ differs from numpy's by {}",
        max_abs_diff(&phi, &reference)
    );
}

#[test]
fn fitting_on_precomputed_features_gives_the_same_hybrids_and_the_models_scores() {
    let original = nnmend::onnx::load(&fixture("mnist_paper.onnx")).unwrap().model;
    let train = mnist(Split::Train, Some(400));
    let test = mnist(Split::Test, Some(200));
    let settings = FitSettings::default();
    let (cut, features, _) = extract(&original, &train, &Tract, None, &settings.feed).unwrap();

    // The linear hybrid from precomputed features is the one `fit` writes.
    let linear = fit_on_features(&original, &cut, features.view(), &train, &settings).unwrap();
    let direct = nnmend::hybrid::fit(&original, &train, &Tract, &settings).unwrap();
    assert_eq!(linear.head, direct.head);
    assert_eq!(linear.model.graph, direct.model.graph);

    // One extraction serves the kernel head too; the library's map and SVM give the
    // scores the written model gives.
    let nystrom = NystromSettings {
        landmarks: 150,
        gamma: None,
        seed: 1,
    };
    let with_kernel = FitSettings {
        kernel: Some(nystrom),
        ..settings.clone()
    };
    let kernel = fit_on_features(&original, &cut, features.view(), &train, &with_kernel).unwrap();
    let map = &kernel.head.map.as_ref().unwrap().nystrom;
    assert_eq!(map.landmarks(), 150);
    assert!(kernel.report.converged());
    assert!(kernel.train_accuracy > 0.9, "{}", kernel.train_accuracy);
    let (_, test_features, _) = extract(&original, &test, &Tract, None, &settings.feed).unwrap();
    let scores = kernel.head.decision(test_features.view());
    let session = Tract.prepare(&kernel.model).unwrap();
    let from_model = collect(session.as_ref(), &test, &Feed::default(), 0, "").unwrap();
    assert!(max_rel_diff(&scores, &from_model) <= 1e-5, "scores differ");
    assert_eq!(argmax_rows(&scores), argmax_rows(&from_model));

    // The same seed draws the same landmarks; rows and images must agree in number.
    let again = fit_on_features(&original, &cut, features.view(), &train, &with_kernel).unwrap();
    assert_eq!(again.head, kernel.head);
    let short = features.slice(ndarray::s![..10, ..]);
    let err = fit_on_features(&original, &cut, short, &train, &with_kernel).unwrap_err();
    assert!(err.to_string().contains("10 feature rows for 400"), "{err}");

    // Validation images given apart: on features, the head `fit_validated` writes; their
    // rows must match their images too, and the error names their file.
    let searched = FitSettings {
        tuning: Tuning {
            search: Some(CSearch {
                grid: vec![0.01, 1.0],
                ..CSearch::default()
            }),
            scale: true,
        },
        ..settings.clone()
    };
    let on_features = fit_on_features_validated(
        &original,
        &cut,
        features.view(),
        &train,
        test_features.view(),
        &test,
        &searched,
    )
    .unwrap();
    let from_images = nnmend::hybrid::fit_validated(&original, &train, &test, &Tract, &searched).unwrap();
    assert_eq!(on_features.head, from_images.head);
    assert_eq!(on_features.model.graph, from_images.model.graph);
    let selection = on_features.report.selection.as_ref().unwrap();
    assert_eq!((selection.holdout, selection.n_validation), (None, 200));
    let short = test_features.slice(ndarray::s![..10, ..]);
    let err = fit_on_features_validated(&original, &cut, features.view(), &train, short, &test, &searched)
        .unwrap_err()
        .to_string();
    assert!(err.contains("10 feature rows for 200"), "{err}");
    assert!(err.contains(test.source.to_str().unwrap()), "{err}");
}

/// The successful rows of an `attack -o` file: images, labels and `index`.
fn successful(path: &std::path::Path) -> (Array4<f32>, Vec<i64>, Vec<i64>) {
    let mut npz = ndarray_npy::NpzReader::new(std::fs::File::open(path).unwrap()).unwrap();
    let x: Array4<f32> = npz.by_name("x").unwrap();
    let y: Array1<i64> = npz.by_name("y").unwrap();
    let index: Array1<i64> = npz.by_name("index").unwrap();
    let success: Array1<bool> = npz.by_name("success").unwrap();
    let rows: Vec<usize> = (0..x.shape()[0]).filter(|&i| success[i]).collect();
    (
        x.select(Axis(0), &rows),
        rows.iter().map(|&i| y[i]).collect(),
        rows.iter().map(|&i| index[i]).collect(),
    )
}

#[test]
fn repair_fixes_a_kernel_hybrid_in_both_modes() {
    let tmp = tempdir();
    let p = |name: &str| tmp.path().join(name);
    let model = fixture("mnist_paper.onnx");
    let data = fixture("mnist-small");
    json(&run(&[
        "fit",
        s(&model),
        "--train",
        s(&data),
        "--limit",
        "600",
        "--head",
        "kernel",
        "--landmarks",
        "200",
        "-o",
        s(&p("kh.onnx")),
        "--json",
    ]));
    json(&run(&[
        "attack",
        s(&p("kh.onnx")),
        "--data",
        s(&data),
        "--split",
        "train",
        "--limit",
        "400",
        "--eps",
        "0.1",
        "-o",
        s(&p("adv.npz")),
        "--json",
    ]));
    let (images, labels, index) = successful(&p("adv.npz"));
    assert!(
        labels.len() >= 5,
        "the attack on KH found only {} examples",
        labels.len()
    );
    write_npy(&p("adv_x.npy"), &images);

    for mode in ["paper", "margin"] {
        let out = p(&format!("rkh_{mode}.onnx"));
        let dump = p(&format!("lp_{mode}.json"));
        let v = json(&run(&[
            "repair",
            s(&p("kh.onnx")),
            "--adv",
            s(&p("adv.npz")),
            "--train",
            s(&data),
            "--mode",
            mode,
            // The LP on the hybrid's own head (the training before it has its own tests).
            "--epochs",
            "0",
            "--preserve",
            "300",
            "--head",
            "kernel",
            "-o",
            s(&out),
            "--test",
            s(&data),
            "--dump-lp",
            s(&dump),
            "--json",
        ]));
        assert_eq!(v["head"], "kernel", "{mode}: {v}");
        assert_eq!(v["mode"], mode, "{v}");
        assert_eq!(v["status"], "solved", "{mode}: {v}");
        assert_eq!(v["samples"].as_u64().unwrap() as usize, labels.len(), "{v}");
        assert_eq!(v["efficacy_before"], 0.0, "{mode}: {v}");
        assert!(v["efficacy"].as_f64().unwrap() >= 0.8, "{mode}: {v}");
        assert!(v["drawdown"].as_f64().unwrap() <= 0.05, "{mode}: {v}");
        // The dumped LP re-solves to the same optimum with HiGHS.
        let (ours, theirs) = (v["objective"].as_f64().unwrap(), highs_objective(&dump));
        assert!(
            (ours - theirs).abs() <= 1e-6 * theirs.max(1.0),
            "{mode}: nnmend {ours} against HiGHS {theirs}"
        );
        // onnxruntime loads the repaired model and classifies every repair sample the
        // repair reports fixed correctly.
        let mut cmd = python("ort_run.py");
        cmd.arg("--check").arg(&out).arg(p("adv_x.npy")).arg(p("adv_y.npy"));
        ok(cmd);
        let predicted = argmax_rows(&read_npy2(&p("adv_y.npy")));
        let unfixed: Vec<i64> = v["unfixed"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u.as_i64().unwrap())
            .collect();
        for ((&pred, &label), i) in predicted.iter().zip(&labels).zip(&index) {
            assert_eq!(
                pred as i64 == label,
                !unfixed.contains(i),
                "{mode}: image {i} (label {label}) predicted {pred} in onnxruntime, unfixed {unfixed:?}"
            );
        }
        let repaired = nnmend::onnx::load(&out).unwrap().model;
        assert_eq!(meta(&repaired, "nnmend.repair.head"), "kernel");
        assert_eq!(meta(&repaired, "nnmend.head"), "kernel-svm-nystrom");
    }

    // A head kind that does not match the model is a usage error naming the file.
    let out = run(&[
        "repair",
        s(&p("kh.onnx")),
        "--adv",
        s(&p("adv.npz")),
        "--train",
        s(&data),
        "--head",
        "linear",
        "-o",
        s(&p("never.onnx")),
    ]);
    fails_with(&out, 2, "kh.onnx is a kernel hybrid");
    assert!(!p("never.onnx").exists());
}

#[test]
fn kernel_options_without_the_kernel_head_are_usage_errors() {
    let tmp = tempdir();
    let model = fixture("mnist_paper.onnx");
    let data = fixture("mnist-small");
    let out = tmp.path().join("h.onnx");
    let r = run(&["fit", s(&model), "--train", s(&data), "--gamma", "0.1", "-o", s(&out)]);
    fails_with(&r, 2, "--head kernel");
    for bad in ["0", "-1", "nan", "inf"] {
        let r = run(&[
            "fit",
            s(&model),
            "--train",
            s(&data),
            "--head",
            "kernel",
            "--gamma",
            bad,
            "-o",
            s(&out),
        ]);
        fails_with(&r, 2, "--gamma");
    }
    let r = run(&[
        "fit",
        s(&model),
        "--train",
        s(&data),
        "--head",
        "kernel",
        "--landmarks",
        "0",
        "-o",
        s(&out),
    ]);
    fails_with(&r, 2, "--landmarks");
    assert!(!out.exists());
}
