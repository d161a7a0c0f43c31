//! Interval bounds and certification, checked against an independent float64
//! implementation of IBP (`tools/reference/ibp_reference.py`, each op evaluated by
//! onnx's reference evaluator), against the forward model at points of the ball, and
//! through `nnmend certify` as a user runs it.
//!
//! Tolerances: without the rounding margin, nnmend's f32 bounds agree with the float64
//! ones to 1e-5 of the bounded tensor's scale (the largest magnitude of its reference
//! bounds), a few hundred times the f32 rounding of these small graphs; a wrong rule
//! (a missing |W|, a swapped end, a misplaced window) is off by the box's own width.
//! With the margin they must contain the reference's exactly, and stay within 1e-3 of
//! the scale of them.

use std::path::{Path, PathBuf};

use ndarray::{Array2, ArrayD, IxDyn};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use nnmend::attack::{forward_and_shapes, protocol::Protocol};
use nnmend::data::{self, Layout, LoadOptions, Preprocess, Split};
use nnmend::engine::tract::Tract;
use nnmend::engine::{Engine, Session};
use nnmend::features::Feed;
use nnmend::onnx::bounds::{self, Margin};
use nnmend::onnx::grad::Normalization;
use nnmend::onnx::{self, head, ModelProto};
use nnmend::verify::{self, linear, Settings};

use crate::common::{fixture, json, nnmend, ok, python, run, s, tempdir, write_npy};

fn identity() -> Normalization {
    Normalization {
        mean: vec![0.0],
        std: vec![1.0],
        dims: vec![],
    }
}

fn load(path: &Path) -> ModelProto {
    onnx::load(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .model
}

/// The bounds graph of a whole classifier (up to its logits), prepared in tract, and
/// its pixel-space forward graph.
fn prepared(model: &ModelProto, margin: Margin) -> (Box<dyn Session>, Box<dyn Session>) {
    let (fwd, shapes) = forward_and_shapes(model, &Tract, &identity()).unwrap();
    let g = bounds::build(&fwd, &shapes, margin).unwrap();
    (Tract.prepare(&g).unwrap(), Tract.prepare(&fwd.model).unwrap())
}

/// `[value, lower, upper]`, each `[n, D]`.
fn run_bounds(session: &dyn Session, x: &ArrayD<f32>, eps: f32) -> [Array2<f32>; 3] {
    let n = x.shape()[0];
    let e = ArrayD::from_elem(IxDyn(&[1]), eps);
    let outs = session.run_many(&[x.view(), e.view()]).unwrap();
    assert_eq!(outs.len(), 3);
    let mut it = outs.into_iter().map(|o| {
        let d = o.len() / n;
        o.into_shape_with_order((n, d)).unwrap()
    });
    [it.next().unwrap(), it.next().unwrap(), it.next().unwrap()]
}

fn random_pixels(sample: &[usize], n: usize, seed: u64) -> ArrayD<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let dims: Vec<usize> = std::iter::once(n).chain(sample.iter().copied()).collect();
    ArrayD::from_shape_simple_fn(IxDyn(&dims), || rng.random::<f32>())
}

fn read64(path: &Path) -> Array2<f64> {
    ndarray_npy::read_npy(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// One run of the reference.
struct Job {
    model: PathBuf,
    x: ArrayD<f32>,
    eps: f32,
    tensor: Option<String>,
    mean: Vec<f32>,
    std: Vec<f32>,
    labels: Option<Vec<i64>>,
}

/// The reference's value, lower and upper bounds (and certified flags when labels
/// were given) for each job, from one run of the script.
/// The reference's `[value, lower, upper]` and certified flags.
type Reference = ([Array2<f64>; 3], Option<Vec<bool>>);

fn reference(jobs: &[Job]) -> Vec<Reference> {
    let dir = tempdir();
    let mut list = Vec::new();
    for (k, j) in jobs.iter().enumerate() {
        let x = dir.path().join(format!("x{k}.npy"));
        write_npy(&x, &j.x);
        let mut entry = serde_json::json!({
            "model": j.model, "x": x, "eps": j.eps, "out": dir.path().join(format!("out{k}")),
            "tensor": j.tensor, "mean": j.mean, "std": j.std,
        });
        if let Some(labels) = &j.labels {
            let y = dir.path().join(format!("y{k}.npy"));
            ndarray_npy::write_npy(&y, &ndarray::Array1::from(labels.clone())).unwrap();
            entry["labels"] = serde_json::json!(y);
        }
        list.push(entry);
    }
    let jobs_file = dir.path().join("jobs.json");
    std::fs::write(&jobs_file, serde_json::to_string(&list).unwrap()).unwrap();
    let mut cmd = python("ibp_reference.py");
    cmd.arg("--jobs").arg(&jobs_file);
    ok(cmd);
    (0..jobs.len())
        .map(|k| {
            let out = dir.path().join(format!("out{k}"));
            let b = [
                read64(&out.join("value.npy")),
                read64(&out.join("lower.npy")),
                read64(&out.join("upper.npy")),
            ];
            let cert = jobs[k].labels.as_ref().map(|_| {
                let c: ndarray::Array1<f64> = ndarray_npy::read_npy(out.join("certified.npy")).unwrap();
                c.iter().map(|&v| v > 0.5).collect()
            });
            (b, cert)
        })
        .collect()
}

/// Checks nnmend's bounds without margin (`tight`) and with it (`sound`) against the
/// reference's `[value, lower, upper]`.
fn compare(what: &str, tight: &[Array2<f32>; 3], sound: &[Array2<f32>; 3], reference: &[Array2<f64>; 3]) {
    let scale = reference[1..]
        .iter()
        .flat_map(|a| a.iter())
        .fold(0.0f64, |m, v| m.max(v.abs()))
        .max(1e-6);
    for (k, name) in ["value", "lower", "upper"].iter().enumerate() {
        assert_eq!(tight[k].dim(), reference[k].dim(), "{what}: {name} shape");
        for ((idx, &t), &r) in tight[k].indexed_iter().zip(reference[k].iter()) {
            let err = (f64::from(t) - r).abs();
            assert!(
                err <= 1e-5 * scale,
                "{what}: {name}{idx:?} = {t} without margin, reference {r} (scale {scale})"
            );
        }
    }
    for ((idx, &l), &r) in sound[1].indexed_iter().zip(reference[1].iter()) {
        assert!(
            f64::from(l) <= r,
            "{what}: lower{idx:?} = {l} above the reference's {r}"
        );
        assert!(
            r - f64::from(l) <= 1e-3 * scale,
            "{what}: lower{idx:?} = {l} far below {r}"
        );
    }
    for ((idx, &u), &r) in sound[2].indexed_iter().zip(reference[2].iter()) {
        assert!(
            f64::from(u) >= r,
            "{what}: upper{idx:?} = {u} below the reference's {r}"
        );
        assert!(
            f64::from(u) - r <= 1e-3 * scale,
            "{what}: upper{idx:?} = {u} far above {r}"
        );
    }
}

/// Small classifiers covering every op with a rule: convolutions with pads, strides
/// and groups, each pooling, BatchNormalization, Pad, Concat, Split, Slice, Gather,
/// broadcasting arithmetic, activations, Gemm and MatMul, shape ops. (Negative pads
/// and a Concat with a batch-1 constant are left out: tract cannot run those models
/// even forward; see `grad::TRACT_CANNOT_RUN`.)
const OPS: &[&str] = &[
    "conv_basic",
    "conv_stride2_pad",
    "conv_groups",
    "conv_same_upper",
    "conv_bias_none",
    "maxpool_3x3_s2_pad",
    "maxpool_ceil",
    "maxpool_two_outputs",
    "avgpool_pad_exclude",
    "avgpool_pad_include",
    "avgpool_ceil",
    "avgpool_opset9_pad",
    "global_avgpool",
    "global_maxpool",
    "reduce_mean_spatial",
    "reduce_mean_opset18",
    "reduce_max_spatial",
    "reduce_sum_spatial",
    "relu",
    "relu_opset8",
    "leaky_relu",
    "sigmoid",
    "tanh",
    "clip_opset13",
    "neg",
    "gemm_trans",
    "gemm_transA",
    "matmul_const",
    "add_broadcast",
    "mul_broadcast_active",
    "sub_both",
    "div_const",
    "batchnorm",
    "flatten_reshape",
    "reshape_zero",
    "transpose_nhwc",
    "squeeze_unsqueeze",
    "identity_dropout",
    "pad_constant",
    "pad_opset9",
    "concat_channels",
    "split_channels",
    "slice_crop",
    "slice_steps",
    "gather_distinct",
    "expand_rows",
];

#[test]
fn bounds_match_the_float64_reference_on_every_op() {
    let eps = 0.05;
    let mut cases = Vec::new();
    let mut jobs = Vec::new();
    for (k, name) in OPS.iter().enumerate() {
        let path = fixture(&format!("grad/{name}.onnx"));
        let model = load(&path);
        let (tight, forward) = prepared(&model, Margin::NONE);
        let (sound, _) = prepared(&model, Margin::default());
        let x = random_pixels(forward.sample_shape(), 3, k as u64);
        cases.push((
            name,
            run_bounds(tight.as_ref(), &x, eps),
            run_bounds(sound.as_ref(), &x, eps),
        ));
        jobs.push(Job {
            model: path,
            x,
            eps,
            tensor: None,
            mean: vec![],
            std: vec![],
            labels: None,
        });
    }
    for ((name, tight, sound), (r, _)) in cases.iter().zip(reference(&jobs)) {
        compare(name, tight, sound, &r);
    }
}

#[test]
fn points_of_the_ball_stay_inside_the_bounds() {
    for (k, name) in OPS.iter().enumerate() {
        let model = load(&fixture(&format!("grad/{name}.onnx")));
        let (sound, forward) = prepared(&model, Margin::default());
        let eps = 0.1;
        let x = random_pixels(forward.sample_shape(), 2, 100 + k as u64);
        let [_, lower, upper] = run_bounds(sound.as_ref(), &x, eps);
        let mut rng = ChaCha8Rng::seed_from_u64(k as u64);
        for trial in 0..12 {
            // Corners of the ball (each pixel at x ± ε) and points inside, clipped.
            let corner = trial % 2 == 0;
            let xp = x.mapv(|v| {
                let t: f32 = if corner {
                    if rng.random::<bool>() {
                        1.0
                    } else {
                        -1.0
                    }
                } else {
                    rng.random_range(-1.0..=1.0)
                };
                (v + t * eps).clamp(0.0, 1.0)
            });
            let z = forward.run(xp.view()).unwrap().remove(0);
            let z = z.into_shape_with_order((2, lower.ncols())).unwrap();
            for ((idx, &v), (&l, &u)) in z.indexed_iter().zip(lower.iter().zip(upper.iter())) {
                assert!(l <= v && v <= u, "{name}: {idx:?}: {v} outside [{l}, {u}]");
            }
        }
    }
}

#[test]
fn a_zero_radius_gives_the_value_itself() {
    for (k, name) in OPS.iter().enumerate() {
        let model = load(&fixture(&format!("grad/{name}.onnx")));
        let (tight, forward) = prepared(&model, Margin::NONE);
        let (sound, _) = prepared(&model, Margin::default());
        let x = random_pixels(forward.sample_shape(), 2, 200 + k as u64);
        let z = forward.run(x.view()).unwrap().remove(0);
        // Without the margin every op runs on the point itself: the same values, up to
        // the engine's own choices (tract folds a BatchNormalization into the Conv
        // before it in one graph and not in the other).
        let [value, lower, upper] = run_bounds(tight.as_ref(), &x, 0.0);
        let z = z.into_shape_with_order(value.dim()).unwrap();
        assert_eq!(value, z, "{name}: the value output is the forward model's");
        let scale = z.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
        for ((idx, &v), (&l, &u)) in z.indexed_iter().zip(lower.iter().zip(upper.iter())) {
            assert!(
                (l - v).abs() <= 1e-6 * scale && (u - v).abs() <= 1e-6 * scale,
                "{name}: {idx:?}: [{l}, {u}] at ε = 0 without margin, value {v}"
            );
        }
        // With it, a box as narrow as the rounding it covers.
        let [_, lower, upper] = run_bounds(sound.as_ref(), &x, 0.0);
        for ((idx, &v), (&l, &u)) in z.indexed_iter().zip(lower.iter().zip(upper.iter())) {
            assert!(l <= v && v <= u, "{name}: {idx:?}: {v} outside [{l}, {u}]");
            assert!(u - l <= 1e-3 * scale, "{name}: {idx:?}: [{l}, {u}] is wide at ε = 0");
        }
    }
}

#[test]
fn ops_without_a_rule_are_refused_by_name() {
    for (name, op) in [
        ("unsupported_op", "Sin"),
        ("softmax_mid", "Softmax"),
        ("matmul_both_active", "MatMul"),
        ("div_both", "Div"),
        ("prelu_channels", "PRelu"),
    ] {
        let model = load(&fixture(&format!("grad/{name}.onnx")));
        let (fwd, shapes) = forward_and_shapes(&model, &Tract, &identity()).unwrap();
        let err = bounds::build(&fwd, &shapes, Margin::default()).unwrap_err().to_string();
        assert!(err.contains(&format!("({op})")), "{name}: {err}");
        assert!(err.starts_with("node '"), "{name}: {err}");
    }
}

/// A hybrid fitted by `nnmend fit` on a few hundred MNIST images.
fn hybrid(dir: &Path, kernel: bool) -> PathBuf {
    let out = dir.join(if kernel { "kh.onnx" } else { "lh.onnx" });
    let mut cmd = nnmend();
    cmd.args([
        "fit",
        s(&fixture("tiny_cnn.onnx")),
        "--train",
        s(&fixture("mnist-small")),
    ])
    .args(["--limit", "300", "--threads", "1", "-o", s(&out)]);
    if kernel {
        cmd.args(["--head", "kernel", "--landmarks", "30"]);
    }
    ok(cmd);
    out
}

/// The first `n` training images of the fixture, the balls of `repair --certify --balls n`
/// with `--limit n`.
fn train_images(n: usize) -> data::Dataset {
    data::load(
        &fixture("mnist-small"),
        &LoadOptions {
            split: Split::Train,
            limit: Some(n),
        },
    )
    .unwrap()
}

fn test_images(n: usize) -> data::Dataset {
    data::load(
        &fixture("mnist-small-test.npz"),
        &LoadOptions {
            split: Split::Test,
            limit: Some(n),
        },
    )
    .unwrap()
}

#[test]
fn hybrid_feature_bounds_and_certified_counts_match_the_reference() {
    let dir = tempdir();
    let ds = test_images(40);
    let pixels = Preprocess {
        mean: vec![],
        std: vec![],
        layout: Layout::Nchw,
    }
    .batch(&ds, 0..ds.len())
    .unwrap();
    let feed = Feed {
        batch: 16,
        mean: vec![0.1],
        std: vec![0.9],
        threads: 2,
        ..Feed::default()
    };
    let all_eps = [0.002f32, 0.01];
    for kernel in [false, true] {
        let path = hybrid(dir.path(), kernel);
        let model = load(&path);
        let site = head::find(&model).unwrap();
        let mut jobs = Vec::new();
        let mut ours = Vec::new();
        for &eps in &all_eps {
            let tight = verify::feature_bounds(&model, &Tract, &ds, eps, &feed, Margin::NONE).unwrap();
            let sound = verify::feature_bounds(&model, &Tract, &ds, eps, &feed, Margin::default()).unwrap();
            ours.push((tight, sound));
            jobs.push(Job {
                model: path.clone(),
                x: pixels.clone(),
                eps,
                tensor: Some(site.input.clone()),
                mean: feed.mean.clone(),
                std: feed.std.clone(),
                labels: Some(ds.labels.clone()),
            });
        }
        let settings = Settings {
            eps: all_eps.to_vec(),
            pgd_limit: 0,
            protocol: Protocol::default(),
            margin: Margin::default(),
            linear: false,
            refine: false,
            boxes: None,
        };
        let cert = verify::certify(&model, &Tract, &ds, &settings, &feed).unwrap();
        let refs = reference(&jobs);
        for (((eps, (tight, sound)), (r, flags)), certified) in
            all_eps.iter().zip(&ours).zip(&refs).zip(&cert.certified)
        {
            let what = format!(
                "{} at ε = {eps}",
                if kernel { "kernel hybrid" } else { "linear hybrid" }
            );
            let t = [tight.value.clone(), tight.lower.clone(), tight.upper.clone()];
            let s = [sound.value.clone(), sound.lower.clone(), sound.upper.clone()];
            compare(&what, &t, &s, r);
            let flags = flags.as_ref().unwrap();
            assert_eq!(certified, flags, "{what}: certified images differ from the reference's");
        }
        if !kernel {
            // The linear hybrid certifies some images at the small radius, not all.
            let small = cert.results[0].certified;
            assert!(small > 0 && small < ds.len(), "{small} certified at ε = 0.002");
        }
        for r in &cert.results {
            assert!(r.certified_accuracy <= r.clean_accuracy);
        }
    }
}

#[test]
fn certify_json_reports_certified_clean_and_pgd_accuracy() {
    let dir = tempdir();
    let model = hybrid(dir.path(), false);
    let out = run(&[
        "certify",
        s(&model),
        "--data",
        s(&fixture("mnist-small-test.npz")),
        "--eps",
        "0,0.01,0.05",
        "--limit",
        "60",
        "--pgd-limit",
        "20",
        "--threads",
        "2",
        "--json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let doc = json(&out);
    assert_eq!(doc["method"], "ibp+linear");
    assert!(doc["linear_note"].is_null(), "{doc}");
    assert_eq!(doc["head"], "linear");
    assert_eq!(doc["certified_but_broken"], 0);
    let results = doc["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    let mut last = f64::INFINITY;
    for (r, eps) in results.iter().zip([0.0, 0.01, 0.05]) {
        assert_eq!(r["eps"].as_f64().unwrap() as f32, eps as f32);
        assert_eq!(r["n"], 60);
        let clean = r["clean_accuracy"].as_f64().unwrap();
        let certified = r["certified_accuracy"].as_f64().unwrap();
        let pgd = &r["pgd"];
        assert_eq!(pgd["n"], 20);
        assert_eq!(pgd["certified_but_broken"], 0);
        // Certified images are a subset of those PGD leaves standing.
        let robust = (pgd["robust_accuracy"].as_f64().unwrap() * 20.0).round() as u64;
        assert!(pgd["certified"].as_u64().unwrap() <= robust, "{r}");
        assert_eq!(r["pgd_accuracy"], pgd["robust_accuracy"]);
        assert!(certified <= clean && certified <= last, "{r}");
        last = certified;
        if eps == 0.0 {
            assert_eq!(certified, clean, "every image classified right is certified at ε = 0");
        }
        // The linear bounds certify at least what the interval bounds do, and PGD's
        // check counts the images either certified.
        let linear = r["linear"]["certified_accuracy"].as_f64().unwrap();
        assert!(linear >= certified && linear <= clean, "{r}");
        assert!(pgd["certified"].as_u64().unwrap() as f64 <= linear * 60.0, "{r}");
    }
    assert!(last < results[0]["certified_accuracy"].as_f64().unwrap());
    // Not a hybrid: refused, naming what is missing.
    let out = run(&[
        "certify",
        s(&fixture("tiny_mlp.onnx")),
        "--data",
        s(&fixture("mnist-small-test.npz")),
        "--eps",
        "0.01",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no linear head"));
}

#[test]
fn certify_vnnlib_writes_properties_an_independent_reader_accepts() {
    let dir = tempdir();
    let model = hybrid(dir.path(), false);
    let ds = test_images(4);
    let x = Preprocess {
        mean: vec![],
        std: vec![],
        layout: Layout::Nchw,
    }
    .batch(&ds, 0..ds.len())
    .unwrap();
    let (xp, yp) = (dir.path().join("x.npy"), dir.path().join("y.npy"));
    write_npy(&xp, &x);
    ndarray_npy::write_npy(&yp, &ndarray::Array1::from(ds.labels.clone())).unwrap();
    let props = dir.path().join("props");
    let args = |out: &Path| {
        vec![
            "certify".to_string(),
            s(&model).to_string(),
            "--data".into(),
            s(&fixture("mnist-small-test.npz")).to_string(),
            "--limit".into(),
            "4".into(),
            "--eps".into(),
            "0.01,0.3".into(),
            "--pgd-limit".into(),
            "0".into(),
            "--mean".into(),
            "0.1".into(),
            "--std".into(),
            "0.9".into(),
            "--vnnlib".into(),
            s(out).to_string(),
        ]
    };
    let out = nnmend().args(args(&props)).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut cmd = python("vnnlib_check.py");
    cmd.arg(&props)
        .arg(&model)
        .arg(&xp)
        .arg(&yp)
        .arg("0.01,0.3")
        .args(["--mean", "0.1", "--std", "0.9"]);
    let summary: serde_json::Value = serde_json::from_slice(&ok(cmd).stdout).unwrap();
    assert_eq!(summary["checked"], 8);
    // A folder that already holds files is not written over.
    let out = nnmend().args(args(&props)).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
}

#[test]
fn certified_repair_certifies_its_balls_as_certify_and_the_reference_check_them() {
    let dir = tempdir();
    let model = hybrid(dir.path(), false);
    let repaired = dir.path().join("certified.onnx");
    let eps = 0.03f32;
    // The balls are all 40 training images (`--balls` takes them in a seeded order).
    let common = ["--limit", "40", "--threads", "2"];
    let out = run(&[
        &["repair", s(&model), "--certify", "0.03", "--balls", "40"],
        &["--train", s(&fixture("mnist-small")), "-o", s(&repaired), "--json"][..],
        &common[..],
    ]
    .concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let doc = json(&out);
    assert_eq!(doc["mode"], "certified");
    assert_eq!(doc["balls"], 40);
    assert_eq!(doc["status"], "solved");
    let before = doc["certified_before"].as_u64().unwrap();
    let after = doc["certified_after"].as_u64().unwrap();
    assert!(
        before < 20,
        "{before} of 40 balls certified before: the radius is too small to test"
    );
    assert!(doc["lp"]["columns"].as_u64().unwrap() > 0);
    // Each round's program and solve, the last the one whose weights were written.
    let history = doc["lp"]["history"].as_array().unwrap();
    assert_eq!(history.len() as u64, doc["lp"]["rounds"].as_u64().unwrap());
    let last = history.last().unwrap();
    assert_eq!(
        (&last["rows"], &last["columns"]),
        (&doc["lp"]["rows"], &doc["lp"]["columns"])
    );
    assert!(last["constraints"].as_u64().unwrap() > last["rows"].as_u64().unwrap());
    // Its optimum is the program's: nothing was left to enter.
    let (optimum, objective) = (
        last["objective"].as_f64().unwrap(),
        doc["lp"]["objective"].as_f64().unwrap(),
    );
    assert!(
        (optimum - objective).abs() <= 1e-5 * (1.0 + objective),
        "{optimum} against {objective}"
    );
    assert_eq!(after, 40, "{doc}");
    assert_eq!(doc["efficacy"], 1.0);
    assert!(doc["change"]["l1"].as_f64().unwrap() > 0.0);
    // nnmend's interior-point method solved every round, every weight free.
    assert!(history.iter().all(|r| r["solver"] == "ipm"), "{doc}");
    // The last round took the program before it, solved to a thousand times the
    // tolerances, on to the tolerances.
    assert_eq!(last["resumed"], true, "{doc}");
    assert_eq!(history[history.len() - 2]["rows"], last["rows"], "{doc}");
    assert_eq!(history[0]["resumed"], false, "{doc}");
    assert_eq!(last["columns"].as_u64(), doc["features"].as_u64().map(|d| 10 * d));
    // clarabel, generating the weights, reaches the same optimum.
    let out = run(&[
        &[
            "repair",
            s(&model),
            "--certify",
            "0.03",
            "--balls",
            "40",
            "--lp-solver",
            "clarabel",
        ],
        &[
            "--train",
            s(&fixture("mnist-small")),
            "-o",
            s(&dir.path().join("clarabel.onnx")),
            "--json",
        ][..],
        &common[..],
    ]
    .concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let other = json(&out);
    let theirs = other["lp"]["objective"].as_f64().unwrap();
    assert!(
        (theirs - objective).abs() <= 1e-5 * (1.0 + objective),
        "clarabel's {theirs} against {objective}"
    );
    let rounds = other["lp"]["history"].as_array().unwrap();
    assert!(rounds.iter().all(|r| r["solver"] == "clarabel"), "{other}");
    assert!(other["lp"]["columns"].as_u64() < last["columns"].as_u64());
    // A ball's shortfall is priced 10 by default, a repair sample's 1; preserved
    // images (10,000 by default: here all 40) keep their margins up to 2.
    assert_eq!(doc["ball_price"], 10.0);
    assert_eq!(
        (doc["preserved"].as_u64(), doc["keep_margin"].as_f64()),
        (Some(40), Some(2.0))
    );

    // `certify` finds the same, and PGD breaks none of them.
    let out = run(&[
        &[
            "certify",
            s(&repaired),
            "--data",
            s(&fixture("mnist-small")),
            "--eps",
            "0.03",
        ],
        &["--split", "train", "--pgd-limit", "20", "--json"][..],
        &common[..],
    ]
    .concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cert = json(&out);
    assert_eq!(cert["results"][0]["certified"], 40);
    assert_eq!(cert["certified_but_broken"], 0);

    // So does the float64 reference, computed from IBP's definitions.
    let ds = train_images(40);
    let pixels = Preprocess {
        mean: vec![],
        std: vec![],
        layout: Layout::Nchw,
    }
    .batch(&ds, 0..ds.len())
    .unwrap();
    let site = head::find(&load(&repaired)).unwrap();
    let refs = reference(&[Job {
        model: repaired.clone(),
        x: pixels,
        eps,
        tensor: Some(site.input.clone()),
        mean: vec![0.0],
        std: vec![1.0],
        labels: Some(ds.labels.clone()),
    }]);
    let flags = refs[0].1.as_ref().unwrap();
    assert!(flags.iter().all(|&c| c), "the reference certifies {flags:?}");

    // A certified repair is a repair of its own: no rounds.
    let out = run(&[
        &["repair", s(&model), "--certify", "0.03", "--rounds", "2"],
        &[
            "--train",
            s(&fixture("mnist-small")),
            "-o",
            s(&dir.path().join("no.onnx")),
        ][..],
        &common[..],
    ]
    .concat());
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--rounds"));
    assert!(!dir.path().join("no.onnx").exists());
}

/// Pixels `[n, 1, 28, 28]` and labels of the first `n` test images, as `.npy` files.
fn image_files(dir: &Path, ds: &data::Dataset) -> (PathBuf, PathBuf) {
    let x = Preprocess {
        mean: vec![],
        std: vec![],
        layout: Layout::Nchw,
    }
    .batch(ds, 0..ds.len())
    .unwrap();
    let (xp, yp) = (dir.join("x.npy"), dir.join("y.npy"));
    write_npy(&xp, &x);
    ndarray_npy::write_npy(&yp, &ndarray::Array1::from(ds.labels.clone())).unwrap();
    (xp, yp)
}

#[test]
fn linear_margin_bounds_equal_the_float64_reference_and_certify_more_than_intervals() {
    let dir = tempdir();
    let path = hybrid(dir.path(), false);
    let model = load(&path);
    let site = head::find(&model).unwrap();
    let ds = test_images(30);
    let (xp, yp) = image_files(dir.path(), &ds);
    // The reference's CROWN takes a second or more per image: the first 8 images.
    let few_dir = dir.path().join("few");
    std::fs::create_dir(&few_dir).unwrap();
    let (few_x, few_y) = image_files(&few_dir, &ds.take(8));
    let (mean, std) = (0.1f32, 0.9f32);
    let exact = |roundoff: f64| {
        let chain = linear::Chain::new(
            &model,
            &site.input,
            ds.image_shape(),
            Layout::Nchw,
            &[mean],
            &[std],
            roundoff,
        )
        .unwrap();
        linear::LinearBounder::new(chain, &site, roundoff).unwrap()
    };
    let pixels = ds.pixels.to_f32(0..ds.len());
    let mut gained = 0;
    // CROWN-IBP at three radii; CROWN (the boxes in between refined too) at two.
    for (refine, eps) in [
        (false, 0.002f32),
        (false, 0.01),
        (false, 0.03),
        (true, 0.01),
        (true, 0.03),
    ] {
        let (tight, sound) = (exact(0.0).refined(refine), exact(bounds::F32_ROUNDOFF).refined(refine));
        let out = dir.path().join(format!("crown{eps}_{refine}.npy"));
        let mut cmd = python("crown_reference.py");
        let (x_file, y_file) = if refine { (&few_x, &few_y) } else { (&xp, &yp) };
        cmd.arg(&path).arg(x_file).arg(y_file).arg(eps.to_string()).arg(&out);
        cmd.args(["--mean", &mean.to_string(), "--std", &std.to_string()]);
        if refine {
            cmd.arg("--refine");
        }
        ok(cmd);
        let reference: ndarray::Array1<f64> = ndarray_npy::read_npy(&out).unwrap();
        let feed = Feed {
            mean: vec![mean],
            std: vec![std],
            threads: 1,
            ..Feed::default()
        };
        let boxes = verify::feature_bounds(&model, &Tract, &ds, eps, &feed, Margin::default()).unwrap();
        for i in 0..reference.len() {
            let x = ndarray::ArrayView1::from(pixels.index_axis(ndarray::Axis(0), i).to_slice().unwrap());
            let label = ds.labels[i] as usize;
            let ours = tight.worst_margin(x, label, f64::from(eps)).unwrap();
            let r = reference[i];
            assert!(
                (ours - r).abs() <= 1e-6 * (1.0 + r.abs()),
                "image {i} at ε = {eps} (refined: {refine}): {ours} against {r}"
            );
            // With the f32 allowance: a little lower, never higher; and `certifies` agrees.
            let with = sound.worst_margin(x, label, f64::from(eps)).unwrap();
            assert!(
                with < ours && with > ours - 1e-3 * (1.0 + ours.abs()),
                "{with} against {ours}"
            );
            assert_eq!(sound.certifies(x, label, f64::from(eps)), with > 0.0);
            let interval = verify::worst_margin(
                &site,
                boxes.lower.row(i),
                boxes.upper.row(i),
                label,
                bounds::F32_ROUNDOFF,
            )
            .unwrap();
            assert!(
                with >= interval - 1e-4 * (1.0 + interval.abs()),
                "{with} below the interval {interval}"
            );
            gained += usize::from(with > 0.0 && interval <= 0.0);
        }
    }
    assert!(
        gained > 0,
        "the linear bounds certified no image the interval bounds did not"
    );
}

#[test]
fn a_kernel_hybrid_is_certified_by_intervals_with_a_note() {
    let dir = tempdir();
    let model = hybrid(dir.path(), true);
    let out = run(&[
        "certify",
        s(&model),
        "--data",
        s(&fixture("mnist-small-test.npz")),
        "--eps",
        "0.002",
        "--limit",
        "10",
        "--pgd-limit",
        "0",
        "--json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let doc = json(&out);
    assert_eq!(doc["method"], "ibp");
    assert!(doc["linear_note"].as_str().unwrap().contains("kernel"), "{doc}");
    assert!(doc["results"][0]["linear"].is_null(), "{doc}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("interval bounds only"), "{stderr}");
}

#[test]
fn a_certified_repair_on_crown_boxes_is_certified_by_certify_crown_and_the_reference() {
    let dir = tempdir();
    let model = hybrid(dir.path(), false);
    let repaired = dir.path().join("crown.onnx");
    let eps = "0.045";
    let common = ["--limit", "40", "--threads", "2"];
    let out = run(&[
        &[
            "repair",
            s(&model),
            "--certify",
            eps,
            "--balls",
            "40",
            "--certify-bounds",
            "crown",
        ],
        // Every ball's shortfall priced above what the weights cost to fix it.
        &["--slack-price", "10"][..],
        &["--train", s(&fixture("mnist-small")), "-o", s(&repaired), "--json"][..],
        &common[..],
    ]
    .concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let doc = json(&out);
    assert_eq!(doc["method"], "crown");
    let before = doc["certified_before"].as_u64().unwrap();
    assert!(
        before < 20,
        "{before} of 40 balls certified before: the radius is too small to test"
    );
    assert_eq!(doc["certified_after"], 40, "{doc}");

    // `certify --bounds crown` finds the same; the interval bounds alone find fewer.
    let out = run(&[
        &[
            "certify",
            s(&repaired),
            "--data",
            s(&fixture("mnist-small")),
            "--eps",
            eps,
        ],
        &["--split", "train", "--pgd-limit", "20", "--bounds", "crown", "--json"][..],
        &common[..],
    ]
    .concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cert = json(&out);
    assert_eq!(cert["method"], "ibp+crown");
    assert_eq!(cert["results"][0]["linear"]["certified"], 40, "{cert}");
    assert!(cert["results"][0]["certified"].as_u64().unwrap() < 40, "{cert}");
    assert_eq!(cert["certified_but_broken"], 0);

    // The float64 reference's CROWN margins are positive on the balls it has time for.
    let ds = train_images(40);
    let (xp, yp) = image_files(dir.path(), &ds.take(10));
    let margins = dir.path().join("margins.npy");
    let mut cmd = python("crown_reference.py");
    cmd.arg(&repaired)
        .arg(&xp)
        .arg(&yp)
        .arg(eps)
        .arg(&margins)
        .arg("--refine");
    ok(cmd);
    let m: ndarray::Array1<f64> = ndarray_npy::read_npy(&margins).unwrap();
    assert!(m.iter().all(|&v| v > 0.0), "the reference's worst margins: {m}");
}
