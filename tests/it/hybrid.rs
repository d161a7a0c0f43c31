//! The hybrid written by `fit` is a drop-in replacement: it passes the ONNX checker,
//! runs in onnxruntime with the same logits (≤ 1e-4) and argmax as nnmend's own eval,
//! and keeps the original's input, output name, trailing Softmax and metadata.

use super::common::*;
use nnmend::data::{self, LoadOptions, Split};
use nnmend::engine::{tract::Tract, Engine};
use nnmend::features::{argmax_rows, collect, Feed};
use nnmend::hybrid::{evaluate, fit, FitSettings};
use nnmend::onnx::graph::{dims, elem_type, Dim};
use nnmend::onnx::{load, save, ModelProto};

fn train() -> data::Dataset {
    data::load(
        &fixture("mnist-small"),
        &LoadOptions {
            split: Split::Train,
            limit: Some(600),
        },
    )
    .unwrap()
}

fn test_set() -> data::Dataset {
    data::load(
        &fixture("mnist-small"),
        &LoadOptions {
            split: Split::Test,
            limit: None,
        },
    )
    .unwrap()
}

fn fitted(name: &str) -> (ModelProto, ModelProto) {
    let original = load(&fixture(name)).unwrap().model;
    let outcome = fit(&original, &train(), &Tract, &FitSettings::default()).unwrap();
    assert!(outcome.report.converged(), "{name}: SVM did not converge");
    (original, outcome.model)
}

/// Runs `model` in onnxruntime (after the full ONNX checker) on the test images, in
/// batches of exactly `batch` images when given.
fn onnxruntime_logits_in(model: &ModelProto, ds: &data::Dataset, batch: Option<usize>) -> ndarray::Array2<f32> {
    let tmp = tempdir();
    let path = tmp.path().join("hybrid.onnx");
    save(model, &path).unwrap();
    let session = Tract.prepare(model).unwrap();
    let pre = nnmend::features::preprocess_for(ds, session.sample_shape(), &Feed::default()).unwrap();
    let x = pre.batch(ds, 0..ds.len()).unwrap();
    let input = tmp.path().join("x.npy");
    let output = tmp.path().join("y.npy");
    write_npy(&input, &x);
    let mut cmd = python("ort_run.py");
    cmd.arg("--check");
    if let Some(batch) = batch {
        cmd.arg("--batch").arg(batch.to_string());
    }
    cmd.arg(&path).arg(&input).arg(&output);
    ok(cmd);
    read_npy2(&output)
}

/// Runs `model` in onnxruntime (after the full ONNX checker) on the test images.
fn onnxruntime_logits(model: &ModelProto, ds: &data::Dataset) -> ndarray::Array2<f32> {
    onnxruntime_logits_in(model, ds, None)
}

#[test]
fn the_hybrid_runs_in_onnxruntime_with_the_same_logits_and_predictions() {
    let ds = test_set();
    for name in ["tiny_cnn.onnx", "mnist_paper.onnx"] {
        let (_, hybrid) = fitted(name);
        let ours = collect(Tract.prepare(&hybrid).unwrap().as_ref(), &ds, &Feed::default(), 0, "").unwrap();
        let theirs = onnxruntime_logits(&hybrid, &ds);
        let diff = max_abs_diff(&ours, &theirs);
        assert!(diff <= 1e-4, "{name}: logits differ by {diff}");
        let (acc, predicted) = evaluate(&hybrid, &ds, &Tract, &Feed::default()).unwrap();
        assert_eq!(
            predicted,
            argmax_rows(&theirs),
            "{name}: on every one of the {} test images",
            ds.len()
        );
        assert!(acc.accuracy > 0.9, "{name}: hybrid accuracy {}", acc.accuracy);
    }
}

#[test]
fn the_hybrid_is_a_drop_in_replacement() {
    let (original, hybrid) = fitted("tiny_cnn_softmax.onnx");
    let (og, hg) = (original.graph.as_ref().unwrap(), hybrid.graph.as_ref().unwrap());
    let (oi, hi) = (&og.input[0], &hg.input[0]);
    assert_eq!(oi.name(), hi.name());
    assert_eq!(elem_type(oi), elem_type(hi));
    assert_eq!(dims(oi).unwrap()[1..], dims(hi).unwrap()[1..]);
    assert!(matches!(dims(hi).unwrap()[0], Dim::Param(_)), "batch must stay dynamic");
    assert_eq!(hg.output.len(), 1);
    assert_eq!(hg.output[0].name(), og.output[0].name());
    let last = hg.node.last().unwrap();
    assert_eq!(last.op_type(), "Softmax", "a trailing Softmax is kept");
    let gemm = &hg.node[hg.node.len() - 2];
    assert_eq!(gemm.op_type(), "Gemm");
    assert_eq!(
        original.opset_import, hybrid.opset_import,
        "the original opset suffices"
    );
    let keys: Vec<&str> = hybrid.metadata_props.iter().map(|e| e.key()).collect();
    for key in ["nnmend.version", "nnmend.svm.c", "nnmend.train.fingerprint"] {
        assert!(keys.contains(&key), "missing provenance {key}: {keys:?}");
    }
    // Probabilities sum to one, as the original's did.
    let probs = onnxruntime_logits(&hybrid, &test_set());
    for row in probs.rows() {
        assert!((row.sum() - 1.0).abs() < 1e-4);
    }
}

#[test]
fn fixed_batch_models_get_a_dynamic_batch_hybrid() {
    let Some(shared) = shared() else { return };
    let original = load(&shared.path("models/pytorch16_mnist_avgpool.onnx")).unwrap().model;
    let batch = |m: &ModelProto| dims(&m.graph.as_ref().unwrap().input[0]).unwrap()[0].clone();
    assert_eq!(
        batch(&original),
        Dim::Fixed(1),
        "the original takes one image at a time"
    );
    let outcome = fit(&original, &train(), &Tract, &FitSettings::default()).unwrap();
    assert!(
        matches!(batch(&outcome.model), Dim::Param(_)),
        "the hybrid's batch is fixed"
    );
    // onnxruntime runs the hybrid seven images at a time, as it would refuse to run a
    // model whose batch is fixed.
    let ds = test_set().take(49);
    let theirs = onnxruntime_logits_in(&outcome.model, &ds, Some(7));
    let ours = collect(
        Tract.prepare(&outcome.model).unwrap().as_ref(),
        &ds,
        &Feed::default(),
        0,
        "",
    )
    .unwrap();
    assert!(max_abs_diff(&ours, &theirs) <= 1e-4);
}

#[test]
fn extraction_gives_the_same_features_on_any_number_of_threads() {
    let model = load(&fixture("tiny_cnn.onnx")).unwrap().model;
    let ds = test_set().take(203);
    let feed = |threads| Feed {
        batch: 16,
        threads,
        ..Feed::default()
    };
    let (_, one, _) = nnmend::hybrid::extract(&model, &ds, &Tract, None, &feed(1)).unwrap();
    for threads in [2, 3, 64] {
        let (_, many, _) = nnmend::hybrid::extract(&model, &ds, &Tract, None, &feed(threads)).unwrap();
        assert_eq!(one, many, "{threads} threads");
    }
    assert_eq!(one.nrows(), 203);
}

#[test]
fn a_softmax_behind_identity_nodes_is_kept() {
    let Some(shared) = shared() else { return };
    // keras2onnx writes Softmax → Identity at the end, and its nodes out of order.
    let original = load(&shared.path("models/keras2onnx_mnist_small.onnx")).unwrap().model;
    let outcome = fit(&original, &train(), &Tract, &FitSettings::default()).unwrap();
    let g = outcome.model.graph.as_ref().unwrap();
    let ops: Vec<&str> = g.node.iter().rev().take(2).map(|n| n.op_type()).collect();
    assert_eq!(ops, ["Softmax", "Gemm"]);
    assert_eq!(g.output[0].name(), original.graph.as_ref().unwrap().output[0].name());
    let probs = onnxruntime_logits(&outcome.model, &test_set().take(20));
    for row in probs.rows() {
        assert!((row.sum() - 1.0).abs() < 1e-4);
    }
}

/// `--scale`: the SVM is fitted on standardised features and the standardisation is
/// folded into the Gemm. The written hybrid, run in onnxruntime on the test images,
/// gives the scores of that SVM on the test features standardised with the training
/// statistics, computed here apart from the hybrid; and it is still extractor + Gemm.
#[test]
fn a_standardised_head_is_folded_into_the_gemm_and_runs_in_onnxruntime() {
    use nnmend::svm::{self, Standardizer, Tuning};
    let original = load(&fixture("tiny_cnn.onnx")).unwrap().model;
    let train = train();
    let settings = FitSettings {
        tuning: Tuning {
            search: None,
            scale: true,
        },
        ..FitSettings::default()
    };
    let outcome = fit(&original, &train, &Tract, &settings).unwrap();
    assert!(outcome.report.converged());
    assert!(outcome.report.scaling.is_some());
    let g = outcome.model.graph.as_ref().unwrap();
    assert_eq!(g.node.last().unwrap().op_type(), "Gemm");
    let keys: Vec<&str> = outcome.model.metadata_props.iter().map(|e| e.key()).collect();
    assert!(keys.contains(&"nnmend.svm.standardised"), "{keys:?}");

    let feed = Feed::default();
    let (_, f_train, _) = nnmend::hybrid::extract(&original, &train, &Tract, None, &feed).unwrap();
    let ds = test_set().take(100);
    let (_, f_test, _) = nnmend::hybrid::extract(&original, &ds, &Tract, None, &feed).unwrap();
    let standardizer = Standardizer::fit(f_train.view());
    let labels: Vec<usize> = train.labels.iter().map(|&l| l as usize).collect();
    let (inner, _) = svm::fit(standardizer.apply(f_train.view()).view(), &labels, 10, &settings.svm).unwrap();
    let want = inner.decision(standardizer.apply(f_test.view()).view());
    let theirs = onnxruntime_logits(&outcome.model, &ds);
    let diff = max_abs_diff(&want, &theirs);
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(
        diff <= 1e-4 * scale.max(1.0),
        "onnxruntime differs by {diff} (scores up to {scale})"
    );
    assert_eq!(argmax_rows(&want), argmax_rows(&theirs));
}
