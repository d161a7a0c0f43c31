//! Model surgery: cutting a classifier into a feature extractor, appending a linear
//! head to make the hybrid, and relaxing a fixed batch of 1 to a symbolic batch.
//!
//! The extractor keeps exactly the nodes and initializers its cut tensor needs, then
//! flattens that tensor into `features` [N, D]. The hybrid follows it with
//! `Gemm(features, W, b, transB=1)` (y = x Wᵀ + b), and, when the original classifier
//! ended in Softmax or LogSoftmax, the same op again, so it is a drop-in replacement:
//! same input name, type and shape, same output name.
//!
//! The kernel hybrid ([`kernel_hybrid`]) puts the Nyström map of an RBF kernel
//! between `features` and the Gemm, in ops every opset has:
//!
//! ```text
//! sq   = MatMul(Mul(f, f), ones[D, 1])                 ‖f‖²      [N, 1]
//! d²   = Relu(Add(Add(sq, Mul(MatMul(f, Lᵀ), −2)), ‖l‖²))         [N, m]
//! φ    = MatMul(Exp(Mul(d², −γ)), P)                  `nnmend_kernel_features` [N, r]
//! ```
//!
//! (`MatMul` with a ones column, not `ReduceSum`, whose `axes` moved from attribute to
//! input at opset 13; before opset 7, whose `Add`/`Mul` broadcast only a trailing
//! suffix and only with `broadcast=1`, the ones matrix is [D, m] so that `sq` needs no
//! broadcast.) [`crate::svm::Nystrom`] computes the same thing in the same order.

use std::collections::HashSet;

use ndarray::{ArrayView1, ArrayView2};

use super::cut::Cut;
use super::graph::{dims, elem_type, graph_of, node_inputs, Dim, Index};
use super::proto::{
    attribute_proto::AttributeType, tensor_shape_proto, type_proto, AttributeProto, GraphProto, ModelProto, NodeProto,
    StringStringEntryProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use super::tensor::{self, FLOAT};
use super::OnnxError;

/// Name of the extractor's output.
pub const FEATURES: &str = "features";
/// Name of the kernel hybrid's Nyström features φ, the input of its Gemm.
pub const KERNEL_FEATURES: &str = "nnmend_kernel_features";
/// Initializer names of the kernel hybrid's map (`tools/reference/nystrom_reference.py` reads them).
pub const KERNEL_LANDMARKS_T: &str = "nnmend_kernel_landmarks_t";
/// ‖l_j‖² per landmark, [m].
pub const KERNEL_LANDMARK_NORMS: &str = "nnmend_kernel_landmark_norms";
/// −γ, [1].
pub const KERNEL_NEG_GAMMA: &str = "nnmend_kernel_neg_gamma";
/// The projection P = K_mm^{−1/2}, [m, r].
pub const KERNEL_PROJECTION: &str = "nnmend_kernel_projection";
/// Symbol used for a relaxed batch dimension.
pub const BATCH: &str = "N";

/// The ai.onnx opset the model imports (0 when none is listed).
pub fn opset(model: &ModelProto) -> i64 {
    model
        .opset_import
        .iter()
        .find(|o| o.domain().is_empty() || o.domain() == "ai.onnx")
        .map(|o| o.version())
        .unwrap_or(0)
}

/// Sets (or replaces) one `metadata_props` entry.
pub fn set_metadata(model: &mut ModelProto, key: &str, value: &str) {
    model.metadata_props.retain(|e| e.key() != key);
    model.metadata_props.push(StringStringEntryProto {
        key: Some(key.to_string()),
        value: Some(value.to_string()),
    });
}

/// A value_info for a FLOAT tensor named `name` with the given dims.
pub fn tensor_value_info(name: &str, elem: i32, shape: &[Dim]) -> ValueInfoProto {
    let dim = shape
        .iter()
        .map(|d| tensor_shape_proto::Dimension {
            value: match d {
                Dim::Fixed(v) => Some(tensor_shape_proto::dimension::Value::DimValue(*v)),
                Dim::Param(p) => Some(tensor_shape_proto::dimension::Value::DimParam(p.clone())),
                Dim::Unknown => None,
            },
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(elem),
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn int_attr(name: &str, v: i64) -> AttributeProto {
    let mut a = AttributeProto {
        name: Some(name.to_string()),
        i: Some(v),
        ..Default::default()
    };
    a.set_type(AttributeType::Int);
    a
}

fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str], attribute: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        op_type: Some(op.to_string()),
        name: Some(name.to_string()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        attribute,
        ..Default::default()
    }
}

/// A name not yet used by any tensor or node of `graph`, starting from `base`.
fn fresh(graph: &GraphProto, base: &str) -> String {
    let mut used: HashSet<&str> = graph.input.iter().chain(&graph.output).map(|v| v.name()).collect();
    used.extend(graph.initializer.iter().map(|t| t.name()));
    for n in &graph.node {
        used.insert(n.name());
        used.extend(n.output.iter().map(String::as_str));
        used.extend(n.input.iter().map(String::as_str));
    }
    if !used.contains(base) {
        return base.to_string();
    }
    (1..)
        .map(|i| format!("{base}_{i}"))
        .find(|c| !used.contains(c.as_str()))
        .unwrap_or_default()
}

fn nodes_produce(graph: &GraphProto, tensor: &str) -> bool {
    graph.node.iter().any(|n| n.output.iter().any(|o| o == tensor))
}

/// Renames every use of tensor `from` to `to` in `graph`.
fn rename_tensor(graph: &mut GraphProto, from: &str, to: &str) {
    for n in graph.node.iter_mut() {
        for s in n.input.iter_mut().chain(n.output.iter_mut()) {
            if s == from {
                *s = to.to_string();
            }
        }
    }
    for v in graph.value_info.iter_mut().chain(graph.output.iter_mut()) {
        if v.name() == from {
            v.name = Some(to.to_string());
        }
    }
}

/// The feature extractor of `model`: the nodes computing `cut.tensor`, then
/// `Flatten(axis=1)` into the output `features` [N, D]. `feature_dim` is D when known.
pub fn extractor(model: &ModelProto, cut: &Cut, feature_dim: Option<usize>) -> Result<ModelProto, OnnxError> {
    let graph = graph_of(model)?;
    let index = Index::new(graph)?;
    let keep = index.ancestors(&[&cut.tensor]);
    let nodes: Vec<NodeProto> = keep.iter().map(|&i| graph.node[i].clone()).collect();
    let mut used: HashSet<String> = nodes.iter().flat_map(node_inputs).map(str::to_string).collect();
    used.insert(cut.tensor.clone());
    let initializer = graph
        .initializer
        .iter()
        .filter(|t| used.contains(t.name()))
        .cloned()
        .collect();
    let sparse_initializer = graph
        .sparse_initializer
        .iter()
        .filter(|s| s.values.as_ref().is_some_and(|t| used.contains(t.name())))
        .cloned()
        .collect();
    // Inputs: the data input, plus the initializers old IRs list as inputs too.
    let input = graph
        .input
        .iter()
        .filter(|v| v.name() == cut.input || (used.contains(v.name()) && index.initializer(v.name()).is_some()))
        .cloned()
        .collect();
    let value_info = graph
        .value_info
        .iter()
        .filter(|v| used.contains(v.name()))
        .cloned()
        .collect();
    let mut g = GraphProto {
        name: Some(format!("{}_extractor", graph.name())),
        node: nodes,
        initializer,
        sparse_initializer,
        input,
        value_info,
        doc_string: graph.doc_string.clone(),
        metadata_props: graph.metadata_props.clone(),
        ..Default::default()
    };
    // The output must be called `features`; an inner tensor of that name moves aside.
    let mut cut_tensor = cut.tensor.clone();
    if used.contains(FEATURES) || nodes_produce(&g, FEATURES) {
        let renamed = fresh(&g, &format!("{FEATURES}_inner"));
        rename_tensor(&mut g, FEATURES, &renamed);
        if cut_tensor == FEATURES {
            cut_tensor = renamed;
        }
    }
    let flatten_name = fresh(&g, "nnmend_flatten");
    g.node.push(node(
        "Flatten",
        &flatten_name,
        &[&cut_tensor],
        &[FEATURES],
        vec![int_attr("axis", 1)],
    ));
    let batch = batch_dim(graph, &cut.input);
    let d = feature_dim.map(|d| Dim::Fixed(d as i64)).unwrap_or(Dim::Unknown);
    let elem = graph
        .input
        .iter()
        .find(|v| v.name() == cut.input)
        .and_then(elem_type)
        .unwrap_or(FLOAT);
    g.output.push(tensor_value_info(FEATURES, elem, &[batch, d]));
    let mut out = ModelProto {
        graph: Some(g),
        ..model.clone()
    };
    out.training_info.clear();
    relax_batch(&mut out, &cut.input)?;
    Ok(out)
}

/// The hybrid: the extractor of `model` at `cut`, then `Gemm(features, W, b, transB=1)`
/// with `weights` `[k, D]` and `bias` `[k]`, then the original's trailing Softmax or
/// LogSoftmax if it had one. The output keeps the original output's name.
pub fn hybrid(
    model: &ModelProto,
    cut: &Cut,
    weights: ArrayView2<f32>,
    bias: ArrayView1<f32>,
) -> Result<ModelProto, OnnxError> {
    with_head(model, cut, None, weights, bias)
}

/// A Nyström map of an RBF kernel, as [`kernel_hybrid`] writes it into a graph.
#[derive(Debug, Clone, Copy)]
pub struct KernelMap<'a> {
    /// The landmarks L `[m, D]`.
    pub landmarks: ArrayView2<'a, f32>,
    /// ‖l_j‖² `[m]`.
    pub landmark_norms: ArrayView1<'a, f32>,
    /// The RBF width γ > 0.
    pub gamma: f32,
    /// The projection P `[m, r]`.
    pub projection: ArrayView2<'a, f32>,
}

/// The kernel hybrid: the extractor of `model` at `cut`, the Nyström map `map` into
/// `nnmend_kernel_features` [N, r] (see the module docs), then
/// `Gemm(φ, W, b, transB=1)` with `weights` `[k, r]` and `bias` `[k]`, then the
/// original's trailing Softmax or LogSoftmax if it had one.
pub fn kernel_hybrid(
    model: &ModelProto,
    cut: &Cut,
    map: &KernelMap<'_>,
    weights: ArrayView2<f32>,
    bias: ArrayView1<f32>,
) -> Result<ModelProto, OnnxError> {
    let (m, r) = map.projection.dim();
    let bad = |name: &str, reason: String| OnnxError::Tensor {
        name: name.into(),
        reason,
    };
    if map.landmarks.nrows() != m || map.landmark_norms.len() != m {
        return Err(bad(
            KERNEL_PROJECTION,
            format!(
                "{m} rows, but {} landmarks and {} norms",
                map.landmarks.nrows(),
                map.landmark_norms.len()
            ),
        ));
    }
    if weights.ncols() != r {
        return Err(bad(
            "weights",
            format!("{} columns for {r} kernel features", weights.ncols()),
        ));
    }
    if !(map.gamma.is_finite() && map.gamma > 0.0) {
        return Err(bad(
            KERNEL_NEG_GAMMA,
            format!("gamma {} is not finite and > 0", map.gamma),
        ));
    }
    with_head(model, cut, Some(map), weights, bias)
}

/// Appends the Nyström map to `g`, reading `features` [N, D]; returns φ's name.
fn push_kernel_map(g: &mut GraphProto, map: &KernelMap<'_>, opset: i64) -> String {
    let (m, d) = map.landmarks.dim();
    let r = map.projection.ncols();
    // Before opset 7 Add and Mul broadcast only a trailing suffix, when told to.
    let legacy = opset < 7;
    let broadcast = || {
        if legacy {
            vec![int_attr("broadcast", 1)]
        } else {
            Vec::new()
        }
    };
    let ones_cols = if legacy { m } else { 1 };
    let ones = fresh(g, "nnmend_kernel_ones");
    g.initializer
        .push(tensor::from_f32(&ones, &[d, ones_cols], &vec![1.0; d * ones_cols]));
    let lt = fresh(g, KERNEL_LANDMARKS_T);
    let lt_values: Vec<f32> = map.landmarks.t().iter().copied().collect();
    g.initializer.push(tensor::from_f32(&lt, &[d, m], &lt_values));
    let norms = fresh(g, KERNEL_LANDMARK_NORMS);
    g.initializer
        .push(tensor::from_f32(&norms, &[m], &map.landmark_norms.to_vec()));
    let minus_two = fresh(g, "nnmend_kernel_minus_two");
    g.initializer.push(tensor::from_f32(&minus_two, &[1], &[-2.0]));
    let neg_gamma = fresh(g, KERNEL_NEG_GAMMA);
    g.initializer.push(tensor::from_f32(&neg_gamma, &[1], &[-map.gamma]));
    let projection = fresh(g, KERNEL_PROJECTION);
    let p_values: Vec<f32> = map.projection.iter().copied().collect();
    g.initializer.push(tensor::from_f32(&projection, &[m, r], &p_values));
    let step = |g: &mut GraphProto, op: &str, inputs: &[&str], base: &str, attrs: Vec<AttributeProto>| {
        let out = fresh(g, base);
        let node_name = fresh(g, &format!("{base}_node"));
        g.node.push(node(op, &node_name, inputs, &[&out], attrs));
        out
    };
    let f2 = step(g, "Mul", &[FEATURES, FEATURES], "nnmend_kernel_f2", Vec::new());
    let sq = step(g, "MatMul", &[&f2, &ones], "nnmend_kernel_sq", Vec::new());
    let cross = step(g, "MatMul", &[FEATURES, &lt], "nnmend_kernel_cross", Vec::new());
    let cross2 = step(g, "Mul", &[&cross, &minus_two], "nnmend_kernel_cross2", broadcast());
    // sq is [N, 1] from opset 7 (numpy broadcasting) and [N, m] before.
    let partial = step(g, "Add", &[&sq, &cross2], "nnmend_kernel_partial", Vec::new());
    let d2 = step(g, "Add", &[&partial, &norms], "nnmend_kernel_d2", broadcast());
    let clipped = step(g, "Relu", &[&d2], "nnmend_kernel_d2_clipped", Vec::new());
    let scaled = step(g, "Mul", &[&clipped, &neg_gamma], "nnmend_kernel_scaled", broadcast());
    let k = step(g, "Exp", &[&scaled], "nnmend_kernel_k", Vec::new());
    step(g, "MatMul", &[&k, &projection], KERNEL_FEATURES, Vec::new())
}

/// The extractor of `model` at `cut`, an optional kernel map, the Gemm head, and the
/// original's trailing Softmax.
fn with_head(
    model: &ModelProto,
    cut: &Cut,
    kernel: Option<&KernelMap<'_>>,
    weights: ArrayView2<f32>,
    bias: ArrayView1<f32>,
) -> Result<ModelProto, OnnxError> {
    let (k, d) = weights.dim();
    if bias.len() != k {
        return Err(OnnxError::Tensor {
            name: "bias".into(),
            reason: format!("{} values for {k} classes", bias.len()),
        });
    }
    let feature_dim = kernel.map_or(d, |map| map.landmarks.ncols());
    let mut out = extractor(model, cut, Some(feature_dim))?;
    let original = graph_of(model)?;
    let original_index = Index::new(original)?;
    let softmax = trailing_softmax(original, &original_index, &cut.output);
    let opset = opset(model);
    let g = out
        .graph
        .as_mut()
        .ok_or_else(|| OnnxError::Graph("the extractor holds no graph".into()))?;
    g.output.clear();
    let head_input = match kernel {
        Some(map) => push_kernel_map(g, map, opset),
        None => FEATURES.to_string(),
    };
    let w_name = fresh(g, "nnmend_head_weight");
    let b_name = fresh(g, "nnmend_head_bias");
    let w: Vec<f32> = weights.iter().copied().collect();
    g.initializer.push(tensor::from_f32(&w_name, &[k, d], &w));
    g.initializer.push(tensor::from_f32(&b_name, &[k], &bias.to_vec()));
    let logits = match softmax {
        Some(_) => fresh(g, "nnmend_logits"),
        None => cut.output.clone(),
    };
    let mut attrs = vec![int_attr("transB", 1)];
    if opset < 7 {
        // Gemm before opset 7 broadcasts C only when told to.
        attrs.push(int_attr("broadcast", 1));
    }
    let gemm_name = fresh(g, "nnmend_head");
    g.node.push(node(
        "Gemm",
        &gemm_name,
        &[&head_input, &w_name, &b_name],
        &[&logits],
        attrs,
    ));
    if let Some(mut sm) = softmax {
        sm.input = vec![logits.clone()];
        sm.output = vec![cut.output.clone()];
        sm.name = Some(fresh(g, sm.name()));
        g.node.push(sm);
    }
    let out_vi = original.output.iter().find(|v| v.name() == cut.output);
    let elem = out_vi.and_then(elem_type).unwrap_or(FLOAT);
    let batch = batch_dim(original, &cut.input);
    g.output
        .push(tensor_value_info(&cut.output, elem, &[batch, Dim::Fixed(k as i64)]));
    Ok(out)
}

/// The Softmax or LogSoftmax that computes `output`, looking through Identity nodes
/// (keras2onnx ends its graphs in Softmax → Identity).
fn trailing_softmax(graph: &GraphProto, index: &Index, output: &str) -> Option<NodeProto> {
    let mut node = &graph.node[index.producer(output)?];
    while node.op_type() == "Identity" {
        node = &graph.node[index.producer(node.input.first()?)?];
    }
    matches!(node.op_type(), "Softmax" | "LogSoftmax").then(|| node.clone())
}

/// The batch dimension to declare: the input's own symbol, or `N` for a fixed batch.
fn batch_dim(graph: &GraphProto, input: &str) -> Dim {
    match graph
        .input
        .iter()
        .find(|v| v.name() == input)
        .and_then(dims)
        .and_then(|d| d.into_iter().next())
    {
        Some(Dim::Param(p)) => Dim::Param(p),
        _ => Dim::Param(BATCH.into()),
    }
}

/// Makes a fixed batch dimension of `input` symbolic, so that batches run. Exporters
/// that froze the batch at 1 also froze it in Reshape targets and value_info; those
/// Reshape targets get -1 (or 0) in place of the 1, and the frozen value_info entries
/// are dropped. Returns whether anything changed.
pub fn relax_batch(model: &mut ModelProto, input: &str) -> Result<bool, OnnxError> {
    let Some(graph) = model.graph.as_mut() else {
        return Ok(false);
    };
    let Some(vi) = graph.input.iter_mut().find(|v| v.name() == input) else {
        return Err(OnnxError::Input {
            name: input.to_string(),
            reason: "not a graph input".into(),
        });
    };
    let Some(d0) = dims(vi).and_then(|d| d.into_iter().next()) else {
        return Ok(false);
    };
    if !matches!(d0, Dim::Fixed(1)) {
        return Ok(false);
    }
    set_dim0(vi, BATCH);
    for out in graph.output.iter_mut() {
        if matches!(dims(out).and_then(|d| d.into_iter().next()), Some(Dim::Fixed(1))) {
            set_dim0(out, BATCH);
        }
    }
    graph
        .value_info
        .retain(|v| !matches!(dims(v).and_then(|d| d.into_iter().next()), Some(Dim::Fixed(1))));
    // Reshape targets that hard-code the batch of 1.
    let mut new_inits = Vec::new();
    let mut edits = Vec::new();
    {
        let index = Index::new(graph)?;
        for (i, n) in graph.node.iter().enumerate() {
            if n.op_type() != "Reshape" || n.input.len() < 2 {
                continue;
            }
            let Some(t) = index.constant(&n.input[1]) else { continue };
            let target = tensor::to_i64(t)?;
            let mut values: Vec<i64> = target.iter().copied().collect();
            if values.first() != Some(&1) {
                continue;
            }
            values[0] = if values.contains(&-1) { 0 } else { -1 };
            edits.push((i, values));
        }
    }
    for (i, values) in edits {
        let name = fresh(graph, &format!("{}_batched", graph.node[i].input[1]));
        new_inits.push(tensor::from_i64(&name, &[values.len()], &values));
        graph.node[i].input[1] = name;
    }
    graph.initializer.extend(new_inits);
    Ok(true)
}

fn set_dim0(vi: &mut ValueInfoProto, symbol: &str) {
    if let Some(type_proto::Value::TensorType(t)) = vi.r#type.as_mut().and_then(|t| t.value.as_mut()) {
        if let Some(d) = t.shape.as_mut().and_then(|s| s.dim.first_mut()) {
            d.value = Some(tensor_shape_proto::dimension::Value::DimParam(symbol.to_string()));
        }
    }
}
