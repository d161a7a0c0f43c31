//! Architecture patterns from torchvision-style models (`fixtures/patterns/`): global
//! pooling written as ReduceMean over H and W (MNASNet, ShuffleNet-v2), a flatten
//! written as Shape → Gather → Unsqueeze → Concat → Reshape (`x.view(x.size(0), -1)`),
//! and the exports of MobileNet-v3 (HardSigmoid, and HardSwish as x·HardSigmoid(x), in
//! a squeeze-excitation block), DenseNet (BatchNormalization parameters through
//! Identity nodes) and ConvNeXt (a decomposed LayerNorm head whose parameters arrive
//! through Identity nodes, GELU written with Erf), and a decoder's upsampling with
//! `F.interpolate` (Resize, nearest and bilinear). The cut lands where it should,
//! `fit` writes a hybrid that onnxruntime runs with nnmend's predictions, and PGD
//! raises every image's loss through each of them. A SqueezeNet-like tail, whose
//! classifier Conv comes before the last pooling, is cut at that Conv's input, and a
//! tiny vision transformer, which pools nothing, is refused with a pointer to `--at`.

use ndarray::{Array4, ArrayD};
use rand::{Rng, SeedableRng};

use super::common::*;
use super::cut::check_features_against_onnxruntime;
use nnmend::attack::{self, Loss, Method, Settings, Target};
use nnmend::data::{Dataset, Pixels};
use nnmend::engine::{tract::Tract, Engine};
use nnmend::features::{argmax_rows, collect, Feed};
use nnmend::hybrid::{evaluate, fit, FitSettings};
use nnmend::onnx::cut::CutRule;
use nnmend::onnx::{find_cut, load, save, ModelProto, OnnxError};

/// The two MNASNet/ShuffleNet-like fixtures, whose global pooling is a ReduceMean.
const REDUCE_MEAN: &[&str] = &[
    "patterns/reducemean_gemm.onnx",
    "patterns/reducemean_keepdims_flatten.onnx",
];
/// The two fixtures that flatten with `view`, the batch read from the features and from the input.
const VIEW_FLATTEN: &[&str] = &["patterns/view_flatten.onnx", "patterns/view_flatten_input_batch.onnx"];
/// SqueezeNet-1.1's ending: Conv1x1 → Relu → global average pooling, no weights after it.
const SQUEEZENET: &str = "patterns/squeezenet_tail.onnx";
/// A vision transformer in miniature: a patch-embedding Conv, then tokens; no pooling.
const TINY_VIT: &str = "patterns/tiny_vit.onnx";

/// A fixture built from the pieces of a torchvision architecture, and what its cut
/// must find.
struct Architecture {
    rel: &'static str,
    /// The global pooling node the cut lands on.
    node: &'static str,
    /// The head's ops, in order.
    head: &'static [&'static str],
    /// The head's parameters, those that arrive through Identity nodes included.
    head_params: usize,
    /// The feature dimension at the cut.
    features: usize,
}

const ARCHITECTURES: &[Architecture] = &[
    Architecture {
        rel: "patterns/squeeze_excite_hardswish.onnx",
        node: "/avgpool/GlobalAveragePool",
        head: &["Flatten", "Gemm", "HardSigmoid", "Mul", "Gemm"],
        head_params: 24 * 32 + 32 + 32 * 4 + 4,
        features: 24,
    },
    Architecture {
        rel: "patterns/batchnorm_identity.onnx",
        node: "/GlobalAveragePool",
        head: &["Flatten", "Gemm"],
        head_params: 8 * 4 + 4,
        features: 8,
    },
    Architecture {
        rel: "patterns/layernorm_head.onnx",
        node: "/avgpool/GlobalAveragePool",
        head: &[
            "Transpose",
            "ReduceMean",
            "Sub",
            "Pow",
            "ReduceMean",
            "Add",
            "Sqrt",
            "Div",
            "Mul",
            "Add",
            "Transpose",
            "Flatten",
            "Gemm",
        ],
        head_params: 16 + 16 + 16 * 4 + 4,
        features: 16,
    },
    Architecture {
        rel: "patterns/channel_shuffle.onnx",
        node: "/avgpool/GlobalAveragePool",
        head: &["Flatten", "Gemm"],
        head_params: 16 * 4 + 4,
        features: 16,
    },
    Architecture {
        rel: "patterns/upsample_skip.onnx",
        node: "/GlobalAveragePool",
        head: &["Flatten", "Gemm"],
        head_params: 8 * 4 + 4,
        features: 8,
    },
];

/// The feature dimension at the cut of the pattern fixture `rel`.
fn feature_dim(rel: &str) -> usize {
    match ARCHITECTURES.iter().find(|a| a.rel == rel) {
        Some(a) => a.features,
        None if rel.contains("view") => 128,
        None if rel == SQUEEZENET => 16 * 3 * 3,
        None => 16,
    }
}

fn model(rel: &str) -> ModelProto {
    load(&fixture(rel)).unwrap().model
}

fn ops(head: &[(String, String)]) -> Vec<&str> {
    head.iter().map(|(_, op)| op.as_str()).collect()
}

/// `n` random images shaped for `model`, labelled 0, 1, …, classes − 1 in turn.
fn random_images(model: &ModelProto, n: usize, classes: i64, seed: u64) -> Dataset {
    let session = Tract.prepare(model).unwrap();
    let [c, h, w] = <[usize; 3]>::try_from(session.sample_shape()).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    Dataset {
        pixels: Pixels::F32(Array4::from_shape_simple_fn((n, c, h, w), || rng.random::<f32>())),
        labels: (0..n as i64).map(|i| i % classes).collect(),
        classes: None,
        source: "random".into(),
    }
}

#[test]
fn global_pooling_written_as_reduce_mean_makes_the_cut() {
    for &rel in REDUCE_MEAN {
        let cut = find_cut(&model(rel), None).unwrap();
        assert_eq!(cut.rule, CutRule::LastPooling, "{rel}");
        assert_eq!(
            (cut.op.as_str(), cut.node.as_str()),
            ("ReduceMean", "/ReduceMean"),
            "{rel}"
        );
        assert!(cut.warning.is_none(), "{rel}: {:?}", cut.warning);
        // Only the classifier is left: ShuffleNet's earlier MaxPool is not the cut.
        let want: &[&str] = if rel.contains("flatten") {
            &["Flatten", "Gemm"]
        } else {
            &["Gemm"]
        };
        assert_eq!(ops(&cut.head), want, "{rel}");
        assert_eq!(cut.head_params, 16 * 4 + 4, "{rel}");
        let (tensor, fallback) = check_features_against_onnxruntime(&fixture(rel), None);
        assert_eq!((tensor.as_str(), fallback), ("/ReduceMean_output_0", false), "{rel}");
    }
}

#[test]
fn mobilenet_densenet_convnext_and_upsampling_patterns_are_cut_at_their_last_pooling() {
    for a in ARCHITECTURES {
        let cut = find_cut(&model(a.rel), None).unwrap_or_else(|e| panic!("{}: {e}", a.rel));
        assert_eq!(cut.rule, CutRule::LastPooling, "{}", a.rel);
        assert_eq!(
            (cut.op.as_str(), cut.node.as_str()),
            ("GlobalAveragePool", a.node),
            "{}",
            a.rel
        );
        assert!(cut.warning.is_none(), "{}: {:?}", a.rel, cut.warning);
        assert_eq!(ops(&cut.head), a.head, "{}", a.rel);
        assert_eq!(cut.head_params, a.head_params, "{}", a.rel);
        let (tensor, fallback) = check_features_against_onnxruntime(&fixture(a.rel), None);
        assert_eq!(tensor, format!("{}_output_0", a.node), "{}", a.rel);
        assert!(!fallback, "{}", a.rel);
    }
}

#[test]
fn reductions_pool_only_over_exactly_the_spatial_axes() {
    // The gradient fixtures: Conv, then one reduction, then Flatten → Gemm.
    for (name, pools) in [
        ("reduce_mean_spatial", true),   // axes [2, 3], keepdims 0, attribute
        ("reduce_mean_opset18", true),   // axes [-2, -1], keepdims 1, constant input
        ("reduce_max_spatial", true),    // axes [2, 3]
        ("reduce_mean_channels", false), // axes [1]
        ("reduce_mean_one_axis", false), // axes [-1]
        ("reduce_max_opset18", false),   // axes [3, 1]
    ] {
        let cut = find_cut(&model(&format!("grad/{name}.onnx")), None).unwrap();
        assert!(
            cut.op.starts_with("Reduce"),
            "{name}: cut at {} ({})",
            cut.tensor,
            cut.op
        );
        let want = if pools {
            CutRule::LastPooling
        } else {
            CutRule::FlattenFallback
        };
        assert_eq!(cut.rule, want, "{name}");
        assert_eq!(cut.warning.is_some(), !pools, "{name}");
    }
}

#[test]
fn a_flatten_written_as_a_dynamic_reshape_is_a_flatten() {
    for &rel in VIEW_FLATTEN {
        let m = model(rel);
        let cut = find_cut(&m, None).unwrap_or_else(|e| panic!("{rel}: {e}"));
        assert_eq!(cut.rule, CutRule::FlattenFallback, "{rel}");
        let graph = m.graph.as_ref().unwrap();
        let reshape = graph.node.iter().find(|n| n.op_type() == "Reshape").unwrap();
        assert_eq!(cut.tensor, reshape.input[0], "{rel}");
        assert_eq!(cut.op, "Relu", "{rel}");
        // The shape arithmetic beside the features is neither head nor parameters.
        assert_eq!(ops(&cut.head), ["Reshape", "Gemm"], "{rel}");
        assert_eq!(cut.head_params, 128 * 4 + 4, "{rel}");
        let (_, fallback) = check_features_against_onnxruntime(&fixture(rel), None);
        assert!(fallback, "{rel}");
    }
}

#[test]
fn inspect_json_names_the_reduce_mean_cut() {
    for (rel, head, shape) in [
        ("patterns/reducemean_gemm.onnx", vec!["Gemm"], vec![16]),
        (
            "patterns/reducemean_keepdims_flatten.onnx",
            vec!["Flatten", "Gemm"],
            vec![16, 1, 1],
        ),
    ] {
        let v = json(&run(&["inspect", s(&fixture(rel)), "--json"]));
        assert_eq!(v["cut"]["op"], "ReduceMean", "{rel}: {v}");
        assert_eq!(v["cut"]["node"], "/ReduceMean", "{rel}: {v}");
        assert_eq!(v["cut"]["fallback"], false, "{rel}: {v}");
        assert_eq!(v["cut"]["feature_dim"], 16, "{rel}: {v}");
        assert_eq!(v["cut"]["feature_shape"], serde_json::json!(shape), "{rel}: {v}");
        assert_eq!(v["head"]["nodes"], serde_json::json!(head), "{rel}: {v}");
    }
    let v = json(&run(&["inspect", s(&fixture(VIEW_FLATTEN[1])), "--json"]));
    assert_eq!(v["cut"]["fallback"], true, "{v}");
    assert_eq!(v["cut"]["feature_dim"], 128, "{v}");
    assert_eq!(v["head"]["nodes"], serde_json::json!(["Reshape", "Gemm"]), "{v}");
}

#[test]
fn a_pooling_with_no_weights_after_it_moves_the_cut_to_the_last_weighted_nodes_input() {
    let m = model(SQUEEZENET);
    let cut = find_cut(&m, None).unwrap();
    assert_eq!(cut.rule, CutRule::EnteringWeightedNode);
    assert!(cut.fallback());
    // The classifier Conv is the graph's last Conv; the cut is what enters it (the
    // last Fire module's Concat), not the class scores the pooling averages.
    let graph = m.graph.as_ref().unwrap();
    let classifier = graph.node.iter().rev().find(|n| n.op_type() == "Conv").unwrap();
    assert_eq!(cut.tensor, classifier.input[0]);
    assert_eq!(cut.op, "Concat");
    assert_eq!(ops(&cut.head), ["Conv", "Relu", "GlobalAveragePool", "Flatten"]);
    assert_eq!(cut.head_params, 16 * 4 + 4);
    let warning = cut.warning.as_deref().unwrap();
    for needle in ["GlobalAveragePool", classifier.name(), "no parameters"] {
        assert!(warning.contains(needle), "'{needle}' missing from: {warning}");
    }
    // The library names no command-line flag; the CLI adds the `--at` hint.
    assert!(!warning.contains("--at"), "{warning}");
    let (tensor, fallback) = check_features_against_onnxruntime(&fixture(SQUEEZENET), None);
    assert_eq!((tensor, fallback), (cut.tensor, true));
}

#[test]
fn inspect_says_which_rule_chose_the_cut() {
    let v = json(&run(&["inspect", s(&fixture(SQUEEZENET)), "--json"]));
    assert_eq!(v["cut"]["rule"], "entering_weighted_node", "{v}");
    assert_eq!(v["cut"]["fallback"], true, "{v}");
    assert_eq!(v["cut"]["op"], "Concat", "{v}");
    assert_eq!(v["cut"]["feature_shape"], serde_json::json!([16, 3, 3]), "{v}");
    assert_eq!(v["cut"]["feature_dim"], 144, "{v}");
    assert!(
        v["cut"]["warning"]
            .as_str()
            .unwrap()
            .contains("the last node with weights"),
        "{v}"
    );
    assert_eq!(
        v["head"]["nodes"],
        serde_json::json!(["Conv", "Relu", "GlobalAveragePool", "Flatten"]),
        "{v}"
    );
    assert_eq!(v["head"]["params"], 68, "{v}");

    let text = run(&["inspect", s(&fixture(SQUEEZENET))]);
    assert!(text.status.success());
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(stdout.contains("rule      entering the last weighted node"), "{stdout}");
    let stderr = String::from_utf8_lossy(&text.stderr);
    assert!(stderr.starts_with("warning: no node with weights follows"), "{stderr}");
    assert!(stderr.trim_end().ends_with("(--at TENSOR cuts elsewhere)"), "{stderr}");

    for (rel, rule, words) in [
        (REDUCE_MEAN[0], "last_pooling", "last pooling"),
        (VIEW_FLATTEN[0], "flatten_fallback", "flatten→dense head"),
    ] {
        let v = json(&run(&["inspect", s(&fixture(rel)), "--json"]));
        assert_eq!(v["cut"]["rule"], rule, "{rel}: {v}");
        let text = run(&["inspect", s(&fixture(rel))]);
        let stdout = String::from_utf8_lossy(&text.stdout);
        assert!(stdout.contains(&format!("rule      {words}\n")), "{rel}: {stdout}");
    }
    // The pooling itself, named by the user: a head with no parameters, as asked.
    let pooled = "/classifier/classifier.3/GlobalAveragePool_output_0";
    let v = json(&run(&["inspect", s(&fixture(SQUEEZENET)), "--at", pooled, "--json"]));
    assert_eq!(v["cut"]["rule"], "user", "{v}");
    assert_eq!(v["cut"]["fallback"], false, "{v}");
    assert_eq!(v["cut"]["feature_dim"], 4, "{v}");
    assert_eq!(v["head"]["params"], 0, "{v}");
}

#[test]
fn a_transformer_without_pooling_is_refused_with_a_pointer_to_at() {
    let m = model(TINY_VIT);
    // The library says what is wrong; the command line adds the option that cures it.
    let err = find_cut(&m, None).unwrap_err();
    assert!(matches!(err, OnnxError::NoAutomaticCut(_)), "{err}");
    assert!(
        err.to_string()
            .contains("neither a pooling layer nor a flatten→dense head"),
        "{err}"
    );
    let tmp = tempdir();
    let out = tmp.path().join("cut.onnx");
    fails_with(&run(&["inspect", s(&fixture(TINY_VIT))]), 1, "--at");
    fails_with(&run(&["cut", s(&fixture(TINY_VIT)), "-o", s(&out)]), 1, "--at");
    assert!(!out.exists());

    // Named with --at, the class token after the last LayerNorm (the classifier
    // Gemm's input) is a cut like any other.
    let graph = m.graph.as_ref().unwrap();
    let classifier = graph.node.iter().find(|n| n.op_type() == "Gemm").unwrap();
    let token = &classifier.input[0];
    let v = json(&run(&[
        "cut",
        s(&fixture(TINY_VIT)),
        "-o",
        s(&out),
        "--at",
        token,
        "--json",
    ]));
    assert_eq!(v["cut"]["rule"], "user", "{v}");
    assert_eq!(v["cut"]["feature_dim"], 16, "{v}");
    let cut = find_cut(&m, Some(token)).unwrap();
    assert_eq!(ops(&cut.head), ["Gemm"]);
    let (tensor, fallback) = check_features_against_onnxruntime(&fixture(TINY_VIT), Some(token));
    assert_eq!((tensor.as_str(), fallback), (token.as_str(), false));
}

#[test]
fn the_hybrid_of_each_pattern_runs_in_onnxruntime_with_nnmends_predictions() {
    let tmp = tempdir();
    let architectures = ARCHITECTURES.iter().map(|a| a.rel);
    let others = REDUCE_MEAN.iter().chain(VIEW_FLATTEN).chain(&[SQUEEZENET]);
    for rel in others.copied().chain(architectures) {
        let original = model(rel);
        let train = random_images(&original, 48, 4, 1);
        let fitted = fit(&original, &train, &Tract, &FitSettings::default()).unwrap();
        assert_eq!(fitted.feature_dim, feature_dim(rel), "{rel}");
        let test = random_images(&original, 24, 4, 2);
        let (_, predicted) = evaluate(&fitted.model, &test, &Tract, &Feed::default()).unwrap();
        let ours = collect(
            Tract.prepare(&fitted.model).unwrap().as_ref(),
            &test,
            &Feed::default(),
            0,
            "",
        )
        .unwrap();

        let path = tmp.path().join("hybrid.onnx");
        save(&fitted.model, &path).unwrap();
        let (input, output) = (tmp.path().join("x.npy"), tmp.path().join("y.npy"));
        write_npy(&input, &test.pixels.to_f32(0..test.len()));
        let mut cmd = python("ort_run.py");
        cmd.arg("--check").arg(&path).arg(&input).arg(&output);
        ok(cmd);
        let theirs = read_npy2(&output);
        let diff = max_abs_diff(&ours, &theirs);
        assert!(diff <= 1e-4, "{rel}: logits differ from onnxruntime by {diff}");
        assert_eq!(argmax_rows(&theirs), predicted, "{rel}: predictions differ");
    }
}

/// The cross-entropy of each row of `logits` against its label.
fn cross_entropy(logits: &ndarray::Array2<f32>, labels: &[i64]) -> Vec<f64> {
    logits
        .outer_iter()
        .zip(labels)
        .map(|(z, &y)| {
            let m = z.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let sum: f64 = z.iter().map(|&v| f64::from(v - m).exp()).sum();
            f64::from(m) + sum.ln() - f64::from(z[y as usize])
        })
        .collect()
}

#[test]
fn pgd_raises_every_images_loss_through_each_pattern() {
    for rel in REDUCE_MEAN.iter().copied().chain(ARCHITECTURES.iter().map(|a| a.rel)) {
        let m = model(rel);
        let mut ds = random_images(&m, 16, 4, 3);
        let feed = Feed {
            batch: 8,
            threads: 1,
            ..Feed::default()
        };
        // Labelled with the model's own predictions, so every image is there to attack.
        let (_, own) = evaluate(&m, &ds, &Tract, &feed).unwrap();
        ds.labels = own.iter().map(|&p| p as i64).collect();
        let target = Target::new(&m, &Tract, &ds, &feed, Loss::Ce).unwrap();
        // No random start: whatever moves the images is the gradient through the
        // pattern (the ReduceMean, the HardSigmoids, the routed BatchNorms, the LayerNorms).
        let settings = Settings {
            method: Method::Pgd,
            eps: vec![0.0, 0.1],
            steps: 10,
            step_ratio: 0.25,
            random_start: false,
            early_stop: true,
            seed: 7,
            feed,
        };
        let outcome = attack::run(&target, &ds, &settings).unwrap();
        assert_eq!(outcome.results[0].clean_correct, ds.len(), "{rel}");
        assert_eq!(outcome.results[0].successes, 0, "{rel}: ε = 0 changed a prediction");
        let clean = target.pixels.batch(&ds, 0..ds.len()).unwrap();
        let adv = &outcome.adversarial[1];
        for (a, c) in adv.images.iter().zip(clean.iter()) {
            assert!(
                (0.0..=1.0).contains(a) && (a - c).abs() <= 0.1 + 1e-6,
                "{rel}: {c} → {a}"
            );
        }
        // Random weights averaged over the map barely depend on the image, so few
        // predictions flip; but every image's loss must have gone up.
        let before = cross_entropy(&target.logits(clean.view()).unwrap(), &ds.labels);
        let after = cross_entropy(&target.logits(adv.images.view()).unwrap(), &ds.labels);
        for (i, (b, a)) in before.iter().zip(&after).enumerate() {
            assert!(a > b, "{rel}: image {i}: PGD took the loss from {b} to {a}");
        }
    }
}

#[test]
fn the_attack_command_runs_pgd_on_a_reduce_mean_model() {
    let tmp = tempdir();
    let m = model(REDUCE_MEAN[0]);
    let ds = random_images(&m, 8, 4, 4);
    let x: ArrayD<f32> = ds.pixels.to_f32(0..ds.len()).into_dyn();
    let data = tmp.path().join("data.npz");
    nnmend::data::write_npz(&data, &nnmend::data::NpzArrays::new(x.view(), &ds.labels)).unwrap();
    let v = json(&run(&[
        "attack",
        s(&fixture(REDUCE_MEAN[0])),
        "--data",
        s(&data),
        "--eps",
        "0.1",
        "--method",
        "pgd",
        "--json",
    ]));
    assert_eq!(v["results"][0]["n"], 8, "{v}");
    assert!(
        v["results"][0]["robust_accuracy"].as_f64().unwrap() <= v["results"][0]["clean_accuracy"].as_f64().unwrap()
    );
}
