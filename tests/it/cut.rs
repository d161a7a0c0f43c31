//! The cut: found on every shared model and fixture, and the extractor's features equal
//! onnxruntime's values at the cut tensor of the original graph.

use ndarray::{Array, IxDyn};
use rand::{Rng, SeedableRng};

use super::common::*;
use nnmend::engine::{tract::Tract, Engine};
use nnmend::onnx::cut::CutRule;
use nnmend::onnx::graph::{node_inputs, Index};
use nnmend::onnx::{find_cut, load, surgery, OnnxError};

/// Random images in [0, 1] in the model's own input layout.
fn random_input(sample_shape: &[usize], n: usize, seed: u64) -> Array<f32, IxDyn> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut shape = vec![n];
    shape.extend(sample_shape);
    Array::from_shape_simple_fn(IxDyn(&shape), || rng.random::<f32>())
}

/// Extractor features from tract against onnxruntime's value of the cut tensor; returns
/// the cut tensor and whether the cut is a fallback.
pub fn check_features_against_onnxruntime(path: &std::path::Path, at: Option<&str>) -> (String, bool) {
    let model = load(path).unwrap().model;
    let cut = find_cut(&model, at).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let extractor = surgery::extractor(&model, &cut, None).unwrap();
    let session = Tract
        .prepare(&extractor)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let x = random_input(session.sample_shape(), 4, 7);
    let ours = session.run(x.view()).unwrap().remove(0);
    let d = ours.len() / 4;
    let ours = ours.into_shape_with_order((4, d)).unwrap();

    let tmp = tempdir();
    let input = tmp.path().join("x.npy");
    let output = tmp.path().join("y.npy");
    write_npy(&input, &x);
    let mut cmd = python("ort_tensor.py");
    cmd.arg(path).arg(&cut.tensor).arg(&input).arg(&output);
    ok(cmd);
    let theirs = read_npy2(&output);
    let diff = max_abs_diff(&ours, &theirs);
    assert!(
        diff <= 1e-4,
        "{}: features differ from onnxruntime by {diff}",
        path.display()
    );
    let fallback = cut.fallback();
    (cut.tensor, fallback)
}

#[test]
fn features_equal_onnxruntime_at_the_cut_on_every_shared_model() {
    let Some(shared) = shared() else { return };
    for path in shared.models() {
        let (tensor, fallback) = check_features_against_onnxruntime(&path, None);
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        // The resnet has no pooling layer: the cut falls back to the tensor entering Flatten.
        assert_eq!(fallback, name.contains("resnet"), "{name}: cut at {tensor}");
    }
}

#[test]
fn features_equal_onnxruntime_at_the_cut_on_the_fixtures() {
    for name in ["tiny_cnn.onnx", "tiny_cnn_softmax.onnx", "mnist_paper.onnx"] {
        let (_, fallback) = check_features_against_onnxruntime(&fixture(name), None);
        assert!(!fallback, "{name}");
    }
}

#[test]
fn cuts_at_the_last_pooling_node() {
    for name in ["tiny_cnn.onnx", "mnist_paper.onnx"] {
        let model = load(&fixture(name)).unwrap().model;
        let cut = find_cut(&model, None).unwrap();
        assert_eq!(cut.rule, CutRule::LastPooling, "{name}");
        assert_eq!(cut.op, "MaxPool", "{name}");
        // The head is what follows the last pool: flatten and two dense layers at most.
        assert!(
            cut.head.iter().any(|(_, op)| op == "Gemm" || op == "MatMul"),
            "{name}: {:?}",
            cut.head
        );
        assert!(cut.head.iter().all(|(_, op)| op != "Conv"), "{name}: {:?}", cut.head);
    }
}

/// The cuts `tools/reference/crosscheck.py` found with its own reading of the graph (the
/// last pooling node, in topological order, that the first output depends on), keyed by
/// model path as the script names them; `null` where it found no pooling node.
fn recorded_cuts() -> serde_json::Map<String, serde_json::Value> {
    let path = fixture("reference/cuts.json");
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    doc.as_object().unwrap().clone()
}

/// nnmend's cut of the model at `path` against the one recorded for it.
fn check_recorded_cut(path: &std::path::Path, recorded: &serde_json::Value) {
    let name = path.display();
    let model = load(path).unwrap().model;
    match (recorded.is_null(), find_cut(&model, None)) {
        // No pooling node and no convolution: refused.
        (true, Err(err)) => assert!(matches!(err, OnnxError::NoExtractor(_)), "{name}: {err}"),
        // No pooling node: nnmend falls back to the tensor entering the dense head.
        (true, Ok(cut)) => assert!(cut.fallback(), "{name}: cut at {} by {:?}", cut.tensor, cut.rule),
        // A pooling node, in a model nnmend refuses for its two data inputs.
        (false, Err(err)) => assert!(err.to_string().contains("data inputs"), "{name}: {err}"),
        (false, Ok(cut)) => {
            assert_eq!(cut.rule, CutRule::LastPooling, "{name}");
            assert_eq!(cut.tensor, recorded["tensor"], "{name}: tensor");
            assert_eq!(cut.node, recorded["node"], "{name}: node");
            assert_eq!(cut.op, recorded["op"], "{name}: op");
            // Where onnx's shape inference gave the cut tensor fixed sizes, the features
            // tract measures have them.
            let inferred: Option<Vec<usize>> = recorded["inferred_shape"]
                .as_array()
                .and_then(|dims| dims[1..].iter().map(|d| d.as_u64().map(|d| d as usize)).collect());
            if let Some(dims) = inferred {
                let seen = nnmend::inspect::inspect(&model, &Tract, None).unwrap();
                assert_eq!(seen.cut.feature_shape, dims, "{name}: feature shape");
            }
        }
    }
}

#[test]
fn cuts_equal_the_recorded_ones_on_the_fixtures() {
    let cuts = recorded_cuts();
    let mut checked = 0;
    for (key, recorded) in &cuts {
        if let Some(rel) = key.strip_prefix("fixtures/") {
            check_recorded_cut(&fixture(rel), recorded);
            checked += 1;
        }
    }
    assert!(checked >= 5, "only {checked} fixture cuts recorded: {:?}", cuts.keys());
}

#[test]
fn cuts_equal_the_recorded_ones_on_the_shared_models() {
    let Some(shared) = shared() else { return };
    let cuts = recorded_cuts();
    // Every shared model has its recorded cut, the average-pooling one among them.
    for path in shared.models() {
        let key = format!("../shared/models/{}", path.file_name().unwrap().to_string_lossy());
        let recorded = cuts.get(&key).unwrap_or_else(|| panic!("no cut recorded for {key}"));
        check_recorded_cut(&path, recorded);
    }
    assert!(
        cuts.values().any(|c| c["op"] == "AveragePool"),
        "no average-pooling cut recorded"
    );
}

#[test]
fn the_at_option_overrides_the_cut() {
    let model = load(&fixture("mnist_paper.onnx")).unwrap().model;
    let graph = model.graph.as_ref().unwrap();
    let first_pool = graph.node.iter().find(|n| n.op_type() == "MaxPool").unwrap().output[0].clone();
    let cut = find_cut(&model, Some(&first_pool)).unwrap();
    assert_eq!(cut.rule, CutRule::User);
    assert_eq!(cut.tensor, first_pool);
    check_features_against_onnxruntime(&fixture("mnist_paper.onnx"), Some(&first_pool));
}

#[test]
fn nodes_out_of_order_are_sorted() {
    let Some(shared) = shared() else { return };
    let model = load(&shared.path("models/keras2onnx_mnist_small.onnx")).unwrap().model;
    let graph = model.graph.as_ref().unwrap();
    let index = Index::new(graph).unwrap();
    let as_stored: Vec<usize> = (0..graph.node.len()).collect();
    assert_ne!(index.order, as_stored, "this model's nodes are stored out of order");
    let mut ready: std::collections::HashSet<&str> = graph.input.iter().map(|v| v.name()).collect();
    ready.extend(graph.initializer.iter().map(|t| t.name()));
    for &i in &index.order {
        for name in node_inputs(&graph.node[i]) {
            assert!(ready.contains(name), "node {i} runs before its input {name} exists");
        }
        ready.extend(graph.node[i].output.iter().map(String::as_str));
    }
}

#[test]
fn refuses_models_without_a_convolutional_extractor() {
    let mlp = load(&fixture("tiny_mlp.onnx")).unwrap().model;
    let err = find_cut(&mlp, None).unwrap_err();
    assert!(matches!(err, OnnxError::NoExtractor(_)), "{err}");
    assert!(err.to_string().contains("MLP"), "{err}");

    let two = load(&fixture("tiny_two_inputs.onnx")).unwrap().model;
    let err = find_cut(&two, None).unwrap_err().to_string();
    assert!(err.contains("2 data inputs"), "{err}");
}

#[test]
fn an_unknown_at_tensor_is_named() {
    let model = load(&fixture("tiny_cnn.onnx")).unwrap().model;
    let err = find_cut(&model, Some("no_such_tensor")).unwrap_err();
    assert!(matches!(err, OnnxError::UnknownTensor { .. }), "{err}");
    assert!(err.to_string().contains("no_such_tensor"), "{err}");
}

#[test]
fn fixed_batch_models_run_in_batches() {
    let Some(shared) = shared() else { return };
    // Both VNN-COMP models are exported with a batch of exactly 1.
    for name in [
        "models/pytorch16_mnist_avgpool.onnx",
        "models/pytorch18_cifar_resnet2b.onnx",
    ] {
        let model = load(&shared.path(name)).unwrap().model;
        let session = Tract.prepare(&model).unwrap();
        let x = random_input(session.sample_shape(), 5, 1);
        let y = session.run(x.view()).unwrap().remove(0);
        assert_eq!(y.shape(), &[5, 10], "{name}");
    }
}
