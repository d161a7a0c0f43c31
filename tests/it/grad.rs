//! Gradient graphs: every supported op and every model the tests know, checked
//! against central finite differences; MNIST-NN checked against PyTorch autograd; the
//! written graphs checked in onnxruntime.
//!
//! Finite differences run the pixel-space forward graph in f32 (tract has no f64
//! convolution) and take the loss in f64 from its logits. With a step h = 10⁻², the
//! f32 rounding of the logits (about 10⁻⁶ relative after a few layers) gives an error
//! of about 10⁻⁶·|z|/h ≈ 10⁻⁴ for logits of size 1–10, and the truncation error of a
//! smooth op is O(h²) ≈ 10⁻⁴ too; the test allows 2·10⁻² of the sample's largest
//! gradient entry plus that noise. A wrong rule (a missing factor, a flipped kernel,
//! a misplaced window) is off by the gradient's own size. The labels are chosen
//! wrong on purpose so that the cross-entropy gradient is large, not buried in
//! rounding. Piecewise-linear ops (ReLU, MaxPool, Clip) have kinks; see [`check`]
//! for how coordinates next to one are handled.

use ndarray::{Array2, ArrayD, ArrayView1, Axis, IxDyn};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use nnmend::attack::{forward_and_shapes, gradient_model, Loss};
use nnmend::engine::tract::Tract;
use nnmend::engine::{Engine, Session};
use nnmend::onnx::grad::{self, Normalization};
use nnmend::onnx::proto::{attribute_proto::AttributeType, NodeProto};
use nnmend::onnx::{self, ModelProto};

use crate::common::{fixture, ok, python, shared, tempdir, write_npy};

fn identity() -> Normalization {
    Normalization {
        mean: vec![0.0],
        std: vec![1.0],
        dims: vec![],
    }
}

fn load(path: &std::path::Path) -> ModelProto {
    onnx::load(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .model
}

struct Graphs {
    forward: Box<dyn Session>,
    grad: Box<dyn Session>,
    sample: Vec<usize>,
}

fn graphs(model: &ModelProto, norm: &Normalization, loss: Loss) -> Graphs {
    let fwd = grad::forward(model, norm).unwrap();
    let forward = Tract.prepare(&fwd.model).unwrap();
    let g = gradient_model(model, &Tract, norm, loss).unwrap();
    let grad = Tract.prepare(&g).unwrap();
    let sample = forward.sample_shape().to_vec();
    Graphs { forward, grad, sample }
}

fn loss_f64(z: ArrayView1<f32>, label: usize, loss: Loss) -> f64 {
    let z: Vec<f64> = z.iter().map(|&v| f64::from(v)).collect();
    match loss {
        Loss::Ce => {
            let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln() - z[label]
        }
        Loss::Margin => {
            let best = z
                .iter()
                .enumerate()
                .filter(|(k, _)| *k != label)
                .map(|(_, v)| *v)
                .fold(f64::NEG_INFINITY, f64::max);
            z[label] - best
        }
    }
}

fn one_hot(labels: &[usize], classes: usize) -> Array2<f32> {
    let mut t = Array2::zeros((labels.len(), classes));
    for (i, &l) in labels.iter().enumerate() {
        t[[i, l]] = 1.0;
    }
    t
}

fn logits(s: &dyn Session, x: &ArrayD<f32>) -> Array2<f32> {
    let z = s.run(x.view()).unwrap().remove(0);
    let n = z.shape()[0];
    let k = z.len() / n;
    z.into_shape_with_order((n, k)).unwrap()
}

#[derive(Debug, Default)]
struct Report {
    checked: usize,
    skipped: usize,
}

/// One-sample loss differences along coordinates: for each coordinate, the central,
/// right and left difference quotients with step `h` (the steps actually taken in
/// f32), and the loss at the sample itself.
fn differences(
    g: &Graphs,
    xb: &ndarray::Array1<f32>,
    label: usize,
    loss: Loss,
    coords: &[usize],
    h: f32,
) -> Vec<[f64; 3]> {
    let d = xb.len();
    let mut rows = Array2::<f32>::zeros((1 + 2 * coords.len(), d));
    rows.row_mut(0).assign(xb);
    for (k, &i) in coords.iter().enumerate() {
        let mut up = xb.clone();
        up[i] += h;
        let mut down = xb.clone();
        down[i] -= h;
        rows.row_mut(1 + 2 * k).assign(&up);
        rows.row_mut(2 + 2 * k).assign(&down);
    }
    let mut shape = vec![rows.nrows()];
    shape.extend(&g.sample);
    let batch = rows.clone().into_shape_with_order(IxDyn(&shape)).unwrap();
    let mut losses = Vec::with_capacity(rows.nrows());
    for chunk in batch.axis_chunks_iter(Axis(0), 256) {
        let z = logits(g.forward.as_ref(), &chunk.to_owned());
        losses.extend(z.axis_iter(Axis(0)).map(|r| loss_f64(r, label, loss)));
    }
    coords
        .iter()
        .enumerate()
        .map(|(k, &i)| {
            let up = f64::from(rows[[1 + 2 * k, i]]) - f64::from(xb[i]);
            let down = f64::from(xb[i]) - f64::from(rows[[2 + 2 * k, i]]);
            let (lp, lm) = (losses[1 + 2 * k], losses[2 + 2 * k]);
            [(lp - lm) / (up + down), (lp - losses[0]) / up, (losses[0] - lm) / down]
        })
        .collect()
}

/// Checks the gradient graph of `g` at the batch `x` against central differences on
/// `coords` (all coordinates when `None`), with labels that the model gets wrong.
/// A coordinate that fails at h = 10⁻² is retried at h = 10⁻³ (a kink closer than
/// 10⁻² but not 10⁻³); if it still fails in a piecewise-linear model, the one-sided
/// difference away from the kink must match, or, with kinks on both sides, it counts
/// as skipped.
fn check(g: &Graphs, x: &ArrayD<f32>, loss: Loss, coords: Option<&[usize]>, smooth: bool, what: &str) -> Report {
    let z0 = logits(g.forward.as_ref(), x);
    let classes = z0.ncols();
    // The least likely class: a large, informative cross-entropy gradient.
    let labels: Vec<usize> = z0
        .axis_iter(Axis(0))
        .map(|row| {
            row.iter()
                .enumerate()
                .fold(
                    (0, f32::INFINITY),
                    |(bi, bv), (i, &v)| if v < bv { (i, v) } else { (bi, bv) },
                )
                .0
        })
        .collect();
    let t = one_hot(&labels, classes);
    let outs = g.grad.run_many(&[x.view(), t.view().into_dyn()]).unwrap();
    let (zg, lg, gr) = (&outs[0], &outs[1], &outs[2]);
    assert_eq!(gr.shape(), x.shape(), "{what}: gradient shape");
    let d: usize = g.sample.iter().product();
    let all: Vec<usize> = (0..d).collect();
    let coords = coords.unwrap_or(&all);
    let mut report = Report::default();
    for b in 0..x.shape()[0] {
        let zb = zg
            .index_axis(Axis(0), b)
            .to_owned()
            .into_shape_with_order(classes)
            .unwrap();
        let l0 = loss_f64(zb.view(), labels[b], loss);
        assert!(
            (f64::from(lg[b]) - l0).abs() <= 1e-4 * (1.0 + l0.abs()),
            "{what}: the graph's loss {} differs from {l0}",
            lg[b]
        );
        let xb = x.index_axis(Axis(0), b).to_owned().into_shape_with_order(d).unwrap();
        let gb: Vec<f64> = gr.index_axis(Axis(0), b).iter().map(|&v| f64::from(v)).collect();
        let scale = gb.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let zmax = f64::from(zb.iter().fold(0.0f32, |m, v| m.max(v.abs())));
        let tol = |h: f32| 2e-2 * scale + 1e-6 * (1.0 + zmax) / f64::from(h);
        let coarse = differences(g, &xb, labels[b], loss, coords, 1e-2);
        let retry: Vec<usize> = coords
            .iter()
            .zip(&coarse)
            .filter(|(&i, q)| (q[0] - gb[i]).abs() > tol(1e-2))
            .map(|(&i, _)| i)
            .collect();
        report.checked += coords.len() - retry.len();
        let fine = differences(g, &xb, labels[b], loss, &retry, 1e-3);
        for (&i, q) in retry.iter().zip(&fine) {
            let tol = tol(1e-3);
            let err = (q[0] - gb[i]).abs();
            let one_sided = (q[1] - gb[i]).abs().min((q[2] - gb[i]).abs());
            if err <= tol || (!smooth && one_sided <= tol) {
                report.checked += 1;
            } else if !smooth && (q[1] - q[2]).abs() > tol {
                report.skipped += 1;
            } else {
                panic!(
                    "{what}: sample {b}, coordinate {i}: finite difference {:.6e} (right {:.6e}, left {:.6e}, h = 1e-3), graph {:.6e} (largest entry {scale:.3e})",
                    q[0], q[1], q[2], gb[i]
                );
            }
        }
    }
    assert!(
        report.skipped * 10 <= report.checked + report.skipped,
        "{what}: {} of {} coordinates sat between kinks",
        report.skipped,
        report.checked + report.skipped
    );
    report
}

fn uniform(shape: &[usize], seed: u64) -> ArrayD<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    ArrayD::from_shape_fn(IxDyn(shape), |_| rng.random_range(0.05f32..0.95))
}

fn batch_of(g: &Graphs, n: usize, seed: u64) -> ArrayD<f32> {
    let mut shape = vec![n];
    shape.extend(&g.sample);
    uniform(&shape, seed)
}

/// A random subset of `k` of the `d` coordinates.
fn some_coords(d: usize, k: usize, seed: u64) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut all: Vec<usize> = (0..d).collect();
    for i in 0..k.min(d) {
        let j = rng.random_range(i..d);
        all.swap(i, j);
    }
    all.truncate(k.min(d));
    all
}

#[derive(Debug, serde::Deserialize)]
struct Case {
    name: String,
    smooth: bool,
    ops: Vec<String>,
    #[serde(default)]
    batch: Option<usize>,
    #[serde(default)]
    unsupported: Option<String>,
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(fixture("grad/cases.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn every_op_case_matches_finite_differences() {
    let mut done = Vec::new();
    for case in cases().into_iter().filter(|c| c.unsupported.is_none()) {
        let model = load(&fixture(&format!("grad/{}.onnx", case.name)));
        if TRACT_CANNOT_RUN.contains(&case.name.as_str()) {
            continue;
        }
        for loss in [Loss::Ce, Loss::Margin] {
            let g = graphs(&model, &identity(), loss);
            let x = batch_of(&g, case.batch.unwrap_or(2), 7);
            let r = check(&g, &x, loss, None, case.smooth && loss == Loss::Ce, &case.name);
            assert!(r.checked > 0, "{}: nothing checked", case.name);
        }
        done.push(case.name);
    }
    assert!(done.len() >= 90, "only {} cases ran", done.len());
}

/// The ops whose gradient graphs are also run in onnxruntime case by case.
const CHECKED_IN_ORT: &[&str] = &[
    "ReduceSum",
    "ReduceMean",
    "ReduceMax",
    "HardSigmoid",
    "HardSwish",
    "Elu",
    "Selu",
    "Softplus",
    "PRelu",
    "Erf",
    "Sqrt",
    "Pow",
    "LayerNormalization",
    "Split",
    "Slice",
    "Gather",
    "Expand",
    "Resize",
];

/// The gradient graphs of the cases with the reductions, Resize, the activations of
/// MobileNet-v3, EfficientNet and ConvNeXt, LayerNormalization and the ops that pick
/// elements (all checked against finite differences in tract by the test above), and
/// of `constants_routed` (weights through Identity, Constant, Cast and Reshape), pass
/// the ONNX checker and give the same values in onnxruntime; the smooth ones match
/// onnxruntime's own finite differences too.
#[test]
fn gradient_graphs_of_the_cases_run_in_onnxruntime_with_the_same_values() {
    let dir = tempdir();
    let chosen: Vec<Case> = cases()
        .into_iter()
        .filter(|c| c.unsupported.is_none() && !TRACT_CANNOT_RUN.contains(&c.name.as_str()))
        .filter(|c| c.name == "constants_routed" || c.ops.iter().any(|op| CHECKED_IN_ORT.contains(&op.as_str())))
        .collect();
    assert_eq!(
        chosen.len(),
        41,
        "{:?}",
        chosen.iter().map(|c| &c.name).collect::<Vec<_>>()
    );
    for case in chosen {
        let model = load(&fixture(&format!("grad/{}.onnx", case.name)));
        let graph = gradient_model(&model, &Tract, &identity(), Loss::Ce).unwrap();
        let out = dir.path().join("grad.onnx");
        onnx::save(&graph, &out).unwrap();
        let session = Tract.prepare(&graph).unwrap();
        let mut shape = vec![2];
        shape.extend(session.sample_shape());
        let x = uniform(&shape, 3);
        let t = one_hot(&[0, 2], 3);
        let ours = session.run_many(&[x.view(), t.view().into_dyn()]).unwrap();
        let (px, pt) = (dir.path().join("x.npy"), dir.path().join("t.npy"));
        write_npy(&px, &x);
        write_npy(&pt, &t);
        let mut cmd = python("ort_grad.py");
        if case.smooth {
            cmd.arg("--fd");
        }
        cmd.arg(&out).arg(&px).arg(&pt).arg(dir.path().join("ort"));
        let stdout = ok(cmd).stdout;
        let theirs: ArrayD<f32> = ndarray_npy::read_npy(dir.path().join("ort_grad.npy")).unwrap();
        let scale = theirs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let diff = theirs
            .iter()
            .zip(ours[2].iter())
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            scale > 0.0 && diff <= 1e-5 * (1.0 + scale),
            "{}: tract and onnxruntime differ by {diff} (largest entry {scale})",
            case.name
        );
        if case.smooth {
            let report: serde_json::Value = serde_json::from_slice(&stdout).unwrap();
            let (err, scale) = (report["max_error"].as_f64().unwrap(), report["scale"].as_f64().unwrap());
            assert!(scale > 0.0 && err <= 2e-2 * scale + 1e-3, "{}: {report}", case.name);
        }
    }
}

/// The error `grad::backward` gives for the fixture `name` once `tamper` has changed
/// its first node whose op starts with `op`, with the shapes measured on the untouched
/// model (so that node's own rule is what refuses it).
fn tampered_error(name: &str, op: &str, tamper: Tamper) -> String {
    let model = load(&fixture(&format!("grad/{name}.onnx")));
    let (mut fwd, shapes) = forward_and_shapes(&model, &Tract, &identity()).unwrap();
    let graph = fwd.model.graph.as_mut().unwrap();
    tamper(graph.node.iter_mut().find(|n| n.op_type().starts_with(op)).unwrap());
    grad::backward(&fwd, &shapes, Loss::Ce).unwrap_err().to_string()
}

/// A change that breaks a node.
type Tamper = fn(&mut NodeProto);

/// Where a reduction keeps its `axes` attribute.
fn axes_attribute(n: &NodeProto) -> usize {
    n.attribute.iter().position(|a| a.name() == "axes").unwrap()
}

#[test]
fn reductions_that_cannot_be_differentiated_are_refused_with_their_node() {
    let cases: [(&str, Tamper, &str); 4] = [
        (
            "reduce_mean_channels",
            |n| {
                let k = axes_attribute(n);
                n.attribute[k].ints = vec![0, 1];
            },
            "reducing over the batch axis cannot be differentiated",
        ),
        (
            "reduce_max_spatial",
            |n| {
                let k = axes_attribute(n);
                n.attribute[k].set_type(AttributeType::Floats);
                n.attribute[k].floats = vec![2.0, 3.0];
                n.attribute[k].ints.clear();
            },
            "attribute 'axes' should be a list of integers",
        ),
        (
            "reduce_mean_spatial",
            |n| {
                let k = axes_attribute(n);
                n.attribute.remove(k);
            },
            "it reduces every axis, the batch among them",
        ),
        (
            "reduce_max_opset18",
            |n| n.input[1] = grad::PIXELS.to_string(),
            "its axes must be a constant",
        ),
    ];
    for (name, tamper, needle) in cases {
        let err = tampered_error(name, "Reduce", tamper);
        assert!(err.starts_with("node 'Reduce"), "{name}: {err}");
        assert!(err.contains(needle), "{name}: {err}");
    }
}

/// Sets the integer attribute `name` of `n`.
fn set_int(n: &mut NodeProto, name: &str, v: i64) {
    let a = n.attribute.iter_mut().find(|a| a.name() == name).unwrap();
    a.i = Some(v);
}

#[test]
fn what_the_new_rules_cannot_differentiate_is_refused_with_its_node() {
    let cases: [(&str, &str, Tamper, &str); 9] = [
        (
            "prelu_channels",
            "PRelu",
            |n| n.input[1] = grad::PIXELS.to_string(),
            "its slope depends on the input",
        ),
        (
            "pow_square",
            "Pow",
            |n| n.input[1] = grad::PIXELS.to_string(),
            "its exponent depends on the input",
        ),
        (
            "layer_norm_last",
            "LayerNormalization",
            |n| n.input[1] = grad::PIXELS.to_string(),
            "its scale depends on the input",
        ),
        (
            "layer_norm_last",
            "LayerNormalization",
            |n| set_int(n, "axis", 0),
            "normalising over the batch axis",
        ),
        (
            "split_channels",
            "Split",
            |n| set_int(n, "axis", 0),
            "splitting the batch axis",
        ),
        (
            "gather_distinct",
            "Gather",
            |n| set_int(n, "axis", 0),
            "gathering along the batch axis",
        ),
        (
            "gather_distinct",
            "Gather",
            |n| n.input[1] = grad::PIXELS.to_string(),
            "its indices ('pixels') must be a constant",
        ),
        (
            "slice_crop",
            "Slice",
            |n| n.input[1] = grad::PIXELS.to_string(),
            "its starts must be a constant",
        ),
        (
            // Rows 0..5 of the batch of 5 the shapes were measured with: a slice all
            // the same, which another batch size would make a different one.
            "slice_opset9",
            "Slice",
            |n| {
                for (name, v) in [("starts", [0, 2]), ("ends", [5, 6]), ("axes", [0, 3])] {
                    n.attribute.iter_mut().find(|a| a.name() == name).unwrap().ints = v.to_vec();
                }
            },
            "slicing the batch axis cannot be differentiated",
        ),
    ];
    for (name, op, tamper, needle) in cases {
        let err = tampered_error(name, op, tamper);
        assert!(err.starts_with(&format!("node '{op}_")), "{name}: {err}");
        assert!(
            err.contains(&format!("({op})")) && err.contains(needle),
            "{name}: {err}"
        );
    }
}

/// Sets the string attribute `name` of `n`, adding it when absent.
fn set_string(n: &mut NodeProto, name: &str, v: &str) {
    match n.attribute.iter_mut().find(|a| a.name() == name) {
        Some(a) => a.s = Some(v.as_bytes().to_vec()),
        None => {
            let mut a = nnmend::onnx::proto::AttributeProto {
                name: Some(name.to_string()),
                s: Some(v.as_bytes().to_vec()),
                ..Default::default()
            };
            a.set_type(AttributeType::String);
            n.attribute.push(a);
        }
    }
}

#[test]
fn resizes_that_cannot_be_differentiated_are_refused_with_their_node() {
    let cases: [(&str, Tamper, &str); 6] = [
        (
            "resize_linear_half_pixel",
            |n| set_string(n, "mode", "cubic"),
            "mode 'cubic' cannot be differentiated",
        ),
        (
            "resize_linear_align_corners",
            |n| set_string(n, "coordinate_transformation_mode", "tf_crop_and_resize"),
            "coordinate_transformation_mode 'tf_crop_and_resize' cannot be differentiated",
        ),
        (
            "resize_nearest_pytorch",
            |n| set_string(n, "nearest_mode", "round_half_even"),
            "nearest_mode 'round_half_even' is not an ONNX mode",
        ),
        (
            "resize_nearest_pytorch",
            |n| n.input[2] = grad::PIXELS.to_string(),
            "its scales ('pixels') must be a constant",
        ),
        (
            // Driven by sizes (the scales' tensor moved to that slot) under a policy
            // that rescales them.
            "resize_nearest_pytorch",
            |n| {
                let scales = std::mem::take(&mut n.input[2]);
                n.input.push(scales);
                set_string(n, "keep_aspect_ratio_policy", "not_larger");
            },
            "keep_aspect_ratio_policy 'not_larger' cannot be differentiated",
        ),
        (
            // The scales of W (4 → 8) read as those of the batch.
            "resize_axes_opset18",
            |n| n.attribute.iter_mut().find(|a| a.name() == "axes").unwrap().ints = vec![0, 2],
            "resizing the batch axis cannot be differentiated",
        ),
    ];
    for (name, tamper, needle) in cases {
        let err = tampered_error(name, "Resize", tamper);
        assert!(err.starts_with("node 'Resize_"), "{name}: {err}");
        assert!(err.contains("(Resize)") && err.contains(needle), "{name}: {err}");
    }
}

/// The architecture-pattern fixtures: ReduceMean global pooling, a flatten whose
/// target is computed from Shape (whose integer path carries no gradient), and the
/// MobileNet-v3, DenseNet and ConvNeXt patterns (HardSigmoid and HardSwish in a
/// squeeze-excitation block, BatchNormalization whose parameters pass through
/// Identity nodes, a decomposed LayerNorm with GELU's Erf), the Resize nodes of
/// `F.interpolate` (nearest, bilinear with and without align_corners), the
/// SqueezeNet-like tail, and ShuffleNet-v2's channel split and shuffle (Slice bounds
/// computed from Shape).
#[test]
fn pattern_fixtures_match_finite_differences() {
    for name in [
        "patterns/reducemean_gemm.onnx",
        "patterns/reducemean_keepdims_flatten.onnx",
        "patterns/view_flatten.onnx",
        "patterns/view_flatten_input_batch.onnx",
        "patterns/squeeze_excite_hardswish.onnx",
        "patterns/batchnorm_identity.onnx",
        "patterns/layernorm_head.onnx",
        "patterns/upsample_skip.onnx",
        "patterns/squeezenet_tail.onnx",
        "patterns/channel_shuffle.onnx",
    ] {
        let model = load(&fixture(name));
        let g = graphs(&model, &identity(), Loss::Ce);
        let x = batch_of(&g, 2, 19);
        let d: usize = g.sample.iter().product();
        check(&g, &x, Loss::Ce, Some(&some_coords(d, 96, 7)), false, name);
    }
}

/// Cases tract 0.23.9 cannot run even forward: it asserts on negative Pad widths, a
/// Concat with a batch-1 constant cannot take the symbolic batch nnmend gives every
/// model, and a Resize driven by `sizes` (constant, or computed from the tensor's Shape
/// as PyTorch writes `F.interpolate(size=...)`) leaves that batch symbol unresolved.
const TRACT_CANNOT_RUN: &[&str] = &[
    "pad_negative",
    "concat_with_const",
    "resize_sizes_opset18",
    "resize_sizes_shape",
];

#[test]
fn models_tract_cannot_run_fail_cleanly_and_their_graphs_check_in_onnxruntime() {
    let dir = tempdir();
    for name in TRACT_CANNOT_RUN {
        let path = fixture(&format!("grad/{name}.onnx"));
        let model = load(&path);
        let err = match Tract.prepare(&model) {
            Ok(s) => {
                let mut shape = vec![1];
                shape.extend(s.sample_shape());
                s.run(uniform(&shape, 1).view()).unwrap_err().to_string()
            }
            Err(e) => e.to_string(),
        };
        assert!(err.starts_with("tract:"), "{name}: {err}");
    }
    // The negative-pad rule and the Resize rule driven by sizes, with the shapes
    // measured by onnxruntime instead.
    for (name, sample) in [
        ("pad_negative", [2, 7, 7]),
        ("resize_sizes_opset18", [2, 5, 4]),
        ("resize_sizes_shape", [2, 5, 4]),
    ] {
        let model = load(&fixture(&format!("grad/{name}.onnx")));
        let fwd = grad::forward(&model, &identity()).unwrap();
        let probe = dir.path().join("probe.onnx");
        onnx::save(&fwd.probe(), &probe).unwrap();
        let mut cmd = python("ort_shapes.py");
        cmd.arg(&probe).arg(grad::PROBE_BATCH.to_string());
        let shapes: std::collections::HashMap<String, Vec<usize>> = serde_json::from_slice(&ok(cmd).stdout).unwrap();
        let graph = grad::backward(&fwd, &shapes, Loss::Ce).unwrap();
        let out = dir.path().join("grad.onnx");
        onnx::save(&graph, &out).unwrap();
        let mut shape = vec![2];
        shape.extend(sample);
        let x = uniform(&shape, 3);
        let t = one_hot(&[0, 2], 3);
        let (px, pt) = (dir.path().join("x.npy"), dir.path().join("t.npy"));
        write_npy(&px, &x);
        write_npy(&pt, &t);
        let mut cmd = python("ort_grad.py");
        cmd.arg("--fd").arg(&out).arg(&px).arg(&pt).arg(dir.path().join("ort"));
        let report: serde_json::Value = serde_json::from_slice(&ok(cmd).stdout).unwrap();
        let (err, scale) = (report["max_error"].as_f64().unwrap(), report["scale"].as_f64().unwrap());
        assert!(scale > 0.0 && err <= 2e-2 * scale + 1e-3, "{name}: {report}");
    }
}

#[test]
fn an_unsupported_op_is_named_with_its_node() {
    for case in cases().into_iter().filter(|c| c.unsupported.is_some()) {
        let op = case.unsupported.unwrap();
        let model = load(&fixture(&format!("grad/{}.onnx", case.name)));
        let err = gradient_model(&model, &Tract, &identity(), Loss::Ce).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("({op})")) && msg.contains("cannot differentiate"),
            "{msg}"
        );
        assert!(msg.starts_with("node '"), "{msg}");
    }
}

#[test]
fn fixture_models_match_finite_differences() {
    for name in ["mnist_paper.onnx", "tiny_cnn.onnx", "tiny_cnn_softmax.onnx"] {
        let model = load(&fixture(name));
        let g = graphs(&model, &identity(), Loss::Ce);
        let x = batch_of(&g, 2, 11);
        let d: usize = g.sample.iter().product();
        check(&g, &x, Loss::Ce, Some(&some_coords(d, 96, 3)), false, name);
    }
}

/// The kernel hybrid's Nyström map (Mul, MatMul, Add, Relu, Exp) differentiates too:
/// the attacks run against KH.
#[test]
fn a_kernel_hybrid_matches_finite_differences() {
    let original = load(&fixture("tiny_cnn.onnx"));
    let train = nnmend::data::load(
        &fixture("mnist-small"),
        &nnmend::data::LoadOptions {
            split: nnmend::data::Split::Train,
            limit: Some(300),
        },
    )
    .unwrap();
    let nystrom = nnmend::svm::NystromSettings {
        landmarks: 50,
        ..Default::default()
    };
    let settings = nnmend::hybrid::FitSettings {
        kernel: Some(nystrom),
        ..Default::default()
    };
    let kh = nnmend::hybrid::fit(&original, &train, &Tract, &settings).unwrap().model;
    let g = graphs(&kh, &identity(), Loss::Ce);
    let x = batch_of(&g, 2, 13);
    let d: usize = g.sample.iter().product();
    check(&g, &x, Loss::Ce, Some(&some_coords(d, 96, 5)), false, "kernel hybrid");
}

#[test]
fn shared_models_match_finite_differences() {
    let Some(shared) = shared() else { return };
    let cases: [(&str, Vec<f32>, Vec<f32>); 4] = [
        ("keras2onnx_mnist_small.onnx", vec![], vec![]),
        ("pytorch16_mnist_avgpool.onnx", vec![], vec![]),
        ("pytorch25_mnist_cnn.onnx", vec![0.1307], vec![0.3081]),
        (
            "pytorch18_cifar_resnet2b.onnx",
            vec![0.4914, 0.4822, 0.4465],
            vec![0.2470, 0.2435, 0.2616],
        ),
    ];
    for (name, mean, std) in cases {
        let model = load(&shared.path(&format!("models/{name}")));
        let plain = Tract.prepare(&model).unwrap();
        let sample = plain.sample_shape().to_vec();
        let (layout, image) = nnmend::features::image_shape_of(&sample).unwrap();
        let feed = nnmend::features::Feed {
            mean,
            std,
            ..Default::default()
        };
        let norm = nnmend::attack::normalization(layout, image, &feed).unwrap();
        let g = graphs(&model, &norm, Loss::Ce);
        let x = batch_of(&g, 2, 5);
        let d: usize = g.sample.iter().product();
        check(&g, &x, Loss::Ce, Some(&some_coords(d, 64, 9)), false, name);
    }
}

#[test]
fn mnist_nn_gradients_match_pytorch_autograd() {
    let model = load(&fixture("mnist_paper.onnx"));
    let reference = fixture("reference/grad_mnist_paper.npz");
    let mut npz = ndarray_npy::NpzReader::new(std::fs::File::open(&reference).unwrap()).unwrap();
    let x: ArrayD<f32> = npz.by_name("x").unwrap();
    let y: ndarray::Array1<i64> = npz.by_name("y").unwrap();
    let labels: Vec<usize> = y.iter().map(|&v| v as usize).collect();
    for (loss, key, loss_key) in [
        (Loss::Ce, "grad_ce", "loss_ce"),
        (Loss::Margin, "grad_margin", "loss_margin"),
    ] {
        let want: ArrayD<f32> = npz.by_name(key).unwrap();
        let want_loss: ndarray::Array1<f32> = npz.by_name(loss_key).unwrap();
        let g = graphs(&model, &identity(), loss);
        let t = one_hot(&labels, 10);
        let outs = g.grad.run_many(&[x.view(), t.view().into_dyn()]).unwrap();
        let got = &outs[2];
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let diff = got
            .iter()
            .zip(want.iter())
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        // The bound is 1e-4; the gradients themselves are that small for the
        // cross-entropy of confident images, so the bound relative to them matters more.
        assert!(diff <= 1e-4, "{key}: max |Δ| = {diff}");
        assert!(
            diff <= 1e-6 + 1e-3 * scale,
            "{key}: max |Δ| = {diff}, largest entry {scale}"
        );
        let ldiff = outs[1]
            .iter()
            .zip(want_loss.iter())
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(ldiff <= 1e-4, "{loss_key}: max |Δ| = {ldiff}");
    }
}

#[test]
fn the_written_gradient_graph_runs_in_onnxruntime_with_the_same_values() {
    let dir = tempdir();
    let cases = [
        ("mnist_paper.onnx", vec![], vec![]),
        ("grad/every_op.onnx", vec![], vec![]),
        ("grad/maxpool_opset9.onnx", vec![], vec![]),
    ];
    for (name, mean, std) in cases {
        let path = fixture(name);
        let out = dir.path().join("grad.onnx");
        let mut cmd = crate::common::nnmend();
        cmd.arg("grad").arg(&path).arg("-o").arg(&out);
        for (flag, v) in [("--mean", &mean), ("--std", &std)] {
            if !v.is_empty() {
                cmd.arg(flag)
                    .arg(v.iter().map(f32::to_string).collect::<Vec<_>>().join(","));
            }
        }
        ok(cmd);
        let model = load(&out);
        let session = Tract.prepare(&model).unwrap();
        let x = {
            let mut shape = vec![3];
            shape.extend(session.sample_shape());
            uniform(&shape, 1)
        };
        let fwd_logits = logits(Tract.prepare(&load(&path)).unwrap().as_ref(), &x);
        let classes = fwd_logits.ncols();
        let t = one_hot(&[0, 1, 2 % classes], classes);
        let ours = session.run_many(&[x.view(), t.view().into_dyn()]).unwrap();
        let (px, pt) = (dir.path().join("x.npy"), dir.path().join("t.npy"));
        write_npy(&px, &x);
        write_npy(&pt, &t);
        let prefix = dir.path().join("ort");
        let mut cmd = python("ort_grad.py");
        cmd.arg(&out).arg(&px).arg(&pt).arg(&prefix);
        ok(cmd);
        for (k, key) in ["logits", "loss", "grad"].iter().enumerate() {
            let theirs: ArrayD<f32> = ndarray_npy::read_npy(dir.path().join(format!("ort_{key}.npy"))).unwrap();
            assert_eq!(theirs.shape(), ours[k].shape(), "{name} {key}");
            let scale = theirs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let diff = theirs
                .iter()
                .zip(ours[k].iter())
                .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                diff <= 1e-5 * (1.0 + scale),
                "{name} {key}: tract and onnxruntime differ by {diff}"
            );
        }
        // The graph's logits are the model's own (any trailing softmax dropped).
        let diff = ours[0]
            .iter()
            .zip(fwd_logits.iter())
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            diff <= 1e-5 || name.contains("softmax"),
            "{name}: logits differ by {diff}"
        );
    }
}

#[test]
fn a_samples_gradient_is_the_same_alone_as_in_a_batch() {
    let model = load(&fixture("mnist_paper.onnx"));
    let g = graphs(&model, &identity(), Loss::Ce);
    let x = batch_of(&g, 5, 2);
    let t = one_hot(&[1, 2, 3, 4, 5], 10);
    let all = g.grad.run_many(&[x.view(), t.view().into_dyn()]).unwrap();
    for b in [0, 3] {
        let xb = x.slice_axis(Axis(0), (b..b + 1).into()).to_owned();
        let tb = t.slice_axis(Axis(0), (b..b + 1).into()).to_owned();
        let one = g.grad.run_many(&[xb.view(), tb.view().into_dyn()]).unwrap();
        let diff = one[2]
            .iter()
            .zip(all[2].index_axis(Axis(0), b).iter())
            .fold(0.0f32, |m, (a, c)| m.max((a - c).abs()));
        assert!(diff <= 1e-7, "sample {b}: batch and single runs differ by {diff}");
    }
}
