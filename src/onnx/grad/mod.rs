//! Input gradients as ONNX graphs.
//!
//! From a classifier `z = f(x)` this builds a graph that returns the logits `z`, a
//! per-sample loss `L(z, t)` and its gradient `∂L/∂x` with respect to the *pixels*, so
//! that any engine (tract, ONNX Runtime on a CPU or a GPU) can run the attacks. The
//! transform is reverse-mode differentiation done once, on the graph: every forward
//! node on the path from the input to the logits gets the nodes of its
//! vector–Jacobian product, emitted in reverse topological order, and contributions
//! to a tensor read by several nodes are summed.
//!
//! Two steps, because the backward nodes need static shapes:
//! 1. [`forward`] copies the classifier up to its logits (a trailing Softmax or
//!    LogSoftmax is dropped), puts the pixel normalisation `(x − mean) / std` in front
//!    of it, and lists the tensors that depend on the pixels.
//! 2. The caller measures those tensors' shapes (one run of a batch of two), and
//!    [`backward`] appends the loss and the gradient nodes.
//!
//! Losses, on logits `z` and a one-hot target `t`:
//! - cross-entropy `L = logsumexp(z) − z·t`, with `∂L/∂z = softmax(z) − t`;
//! - margin `L = z_y − max_{k≠y} z_k`, with `∂L/∂z = t − onehot(argmax_{k≠y} z_k)`.
//!
//! Gradients at kinks follow PyTorch's conventions: ReLU′(0) = 0, and MaxPool sends
//! the gradient to the first maximum of its window (GlobalMaxPool and ReduceMax to
//! the first maximum of what they reduce).

mod activation;
pub(crate) mod builder;
mod dimensions;
mod norm;
mod reduce;
mod resize;
mod rules;
mod select;
mod spatial;

use std::collections::{HashMap, HashSet};

use super::graph::{dims, elem_type, graph_of, graph_of_mut, node_label, Dim, Index};
use super::proto::{GraphProto, ModelProto, NodeProto, TensorProto};
use super::surgery::{opset, relax_batch, tensor_value_info, BATCH};
use super::tensor::{self, FLOAT};
use super::OnnxError;
use builder::Builder;

/// Name of the gradient graph's pixel input, `[N, …]` in `[0, 1]`.
pub const PIXELS: &str = "pixels";
/// Name of the gradient graph's one-hot target input, `[N, K]`.
pub const TARGET: &str = "target";
/// Name of the logits output, `[N, K]`.
pub const LOGITS: &str = "logits";
/// Name of the per-sample loss output, `[N]`.
pub const LOSS: &str = "loss";
/// Name of the gradient output, `∂loss/∂pixels`, shaped like the pixels.
pub const GRAD: &str = "grad";
/// Name of the head-weights input of a graph from [`backward_head`], `[D, K]` (the
/// transpose of a Gemm's `W`).
pub const HEAD_WEIGHTS: &str = "head_weights";
/// Name of the head-bias input of a graph from [`backward_head`], `[K]`.
pub const HEAD_BIAS: &str = "head_bias";

/// The batch size at which [`backward`] expects the shapes to have been measured; any
/// size works, one that no other axis is likely to have makes a misplaced batch visible.
pub const PROBE_BATCH: usize = 5;

pub(crate) const FWD: &str = "fwd/";

/// The loss whose input gradient the graph computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Loss {
    /// Cross-entropy of the softmax of the logits against the label (ascend it to attack).
    #[default]
    Ce,
    /// Logit of the label minus the best other logit (descend it to attack).
    Margin,
}

/// The pixel normalisation that sits in front of the model: `(x − mean) / std`, with
/// `mean` and `std` shaped `dims` so that they broadcast against one sample (`[C, 1, 1]`
/// for NCHW, `[C]` for NHWC, `[]` for a flat input).
#[derive(Debug, Clone, PartialEq)]
pub struct Normalization {
    /// Per-channel means.
    pub mean: Vec<f32>,
    /// Per-channel standard deviations.
    pub std: Vec<f32>,
    /// The broadcast shape of `mean` and `std`.
    pub dims: Vec<usize>,
}

impl Normalization {
    fn is_identity(&self) -> bool {
        self.mean.iter().all(|&m| m == 0.0) && self.std.iter().all(|&s| s == 1.0)
    }
}

/// A classifier rewritten to take pixels and return its logits, ready for [`backward`].
#[derive(Debug, Clone)]
pub struct Forward {
    /// Input [`PIXELS`], output [`LOGITS`].
    pub model: ModelProto,
    /// The float tensors that depend on the pixels (the pixels included), in
    /// topological order: the tensors whose shapes [`backward`] needs.
    pub active: Vec<String>,
    /// The tensor of the classifier's output (in the forward graph's names).
    pub(crate) logits: String,
    /// Positions in `model.graph.node` of the nodes on the path, in topological order.
    pub(crate) path: Vec<usize>,
}

/// Ops whose outputs carry no gradient (integer or boolean results).
const NO_GRADIENT: &[&str] = &[
    "Shape",
    "Size",
    "ArgMax",
    "ArgMin",
    "Equal",
    "Greater",
    "GreaterOrEqual",
    "Less",
    "LessOrEqual",
    "Not",
    "And",
    "Or",
    "Xor",
    "IsNaN",
    "IsInf",
    "NonZero",
];

/// Ops that end a classifier after its logits and are dropped.
const TRAILING: &[&str] = &["Identity", "Softmax", "LogSoftmax", "Dropout"];

fn renamed(name: &str) -> String {
    if name.is_empty() {
        String::new()
    } else {
        format!("{FWD}{name}")
    }
}

/// The error for a node the transform cannot differentiate.
pub(crate) fn unsupported(node: &NodeProto, reason: impl Into<String>) -> OnnxError {
    OnnxError::Node {
        node: node_label(node).trim_start_matches(FWD).to_string(),
        op: node.op_type().to_string(),
        reason: reason.into(),
    }
}

/// Step 1: the classifier's path from the pixels to its logits, normalisation in front.
pub fn forward(model: &ModelProto, norm: &Normalization) -> Result<Forward, OnnxError> {
    let mut model = model.clone();
    let graph = graph_of(&model)?;
    let index = Index::new(graph)?;
    let input = match index.data_inputs().as_slice() {
        [one] => (*one).clone(),
        other => {
            return Err(OnnxError::Input {
                name: other.iter().map(|v| v.name()).collect::<Vec<_>>().join(", "),
                reason: format!("a gradient graph needs exactly one data input, found {}", other.len()),
            })
        }
    };
    if elem_type(&input) != Some(FLOAT) {
        return Err(OnnxError::Input {
            name: input.name().to_string(),
            reason: "only float32 inputs can be differentiated".into(),
        });
    }
    let output = match graph.output.as_slice() {
        [one] => one.name().to_string(),
        other => {
            return Err(OnnxError::Graph(format!(
                "a gradient graph needs a model with one output (its class scores), found {}",
                other.len()
            )))
        }
    };
    relax_batch(&mut model, input.name())?;
    let graph = graph_of(&model)?;
    let index = Index::new(graph)?;
    let mut logits = output;
    while let Some(p) = index.producer(&logits) {
        let node = &graph.node[p];
        if !TRAILING.contains(&node.op_type()) {
            break;
        }
        logits = node.input.first().cloned().unwrap_or_default();
    }

    let mut g = GraphProto {
        name: Some(format!("{}_gradient", graph.name())),
        ..Default::default()
    };
    let mut input_dims = dims(&input).unwrap_or_default();
    if let Some(d0) = input_dims.first_mut() {
        *d0 = Dim::Param(BATCH.into());
    }
    g.input.push(tensor_value_info(PIXELS, FLOAT, &input_dims));
    let fwd_input = renamed(input.name());
    let mut path = Vec::new();
    if norm.is_identity() {
        g.node.push(plain("Identity", &[PIXELS], &fwd_input));
    } else {
        let m = format!("{FWD}nnmend_mean");
        let s = format!("{FWD}nnmend_std");
        g.initializer.push(tensor::from_f32(&m, &norm.dims, &norm.mean));
        g.initializer.push(tensor::from_f32(&s, &norm.dims, &norm.std));
        let centred = format!("{FWD}nnmend_centred");
        g.node.push(plain("Sub", &[PIXELS, &m], &centred));
        g.node.push(plain("Div", &[&centred, &s], &fwd_input));
        path.push(0);
    }
    path.push(g.node.len() - 1);

    let mut active: HashSet<String> = HashSet::from([PIXELS.to_string(), fwd_input.clone()]);
    if !norm.is_identity() {
        active.insert(format!("{FWD}nnmend_centred"));
    }
    let mut active_order = vec![PIXELS.to_string()];
    if !norm.is_identity() {
        active_order.push(format!("{FWD}nnmend_centred"));
    }
    active_order.push(fwd_input.clone());
    let mut used_inits: HashSet<&str> = HashSet::new();
    for i in index.ancestors(&[logits.as_str()]) {
        let node = &graph.node[i];
        if node.attribute.iter().any(|a| a.g.is_some() || !a.graphs.is_empty()) {
            return Err(unsupported(
                node,
                "control flow (a subgraph attribute) cannot be differentiated",
            ));
        }
        let mut copy = node.clone();
        copy.name = Some(renamed(&node_label(node)));
        for s in copy.input.iter_mut().chain(copy.output.iter_mut()) {
            *s = renamed(s);
        }
        for s in &node.input {
            if index.initializer(s).is_some() {
                used_inits.insert(s.as_str());
            }
        }
        let reads_active = copy.input.iter().any(|s| active.contains(s));
        if reads_active && !NO_GRADIENT.contains(&node.op_type()) {
            let outs: &[String] = match node.op_type() {
                // Their second outputs are indices and masks.
                "MaxPool" | "Dropout" => &copy.output[..1.min(copy.output.len())],
                _ => &copy.output,
            };
            for o in outs.iter().filter(|o| !o.is_empty()) {
                active.insert(o.clone());
                active_order.push(o.clone());
            }
            path.push(g.node.len());
        }
        g.node.push(copy);
    }
    let fwd_logits = renamed(&logits);
    if !active.contains(&fwd_logits) {
        return Err(OnnxError::Graph(format!(
            "the class scores '{logits}' do not depend on the input '{}'",
            input.name()
        )));
    }
    for t in &graph.initializer {
        if used_inits.contains(t.name()) {
            let mut t = t.clone();
            t.name = Some(renamed(t.name()));
            g.initializer.push(t);
        }
    }
    g.node.push(plain("Identity", &[&fwd_logits], LOGITS));
    g.output.push(tensor_value_info(
        LOGITS,
        FLOAT,
        &[Dim::Param(BATCH.into()), Dim::Unknown],
    ));

    let out = ModelProto {
        ir_version: model.ir_version,
        opset_import: model.opset_import.clone(),
        producer_name: Some("nnmend".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        functions: model.functions.clone(),
        graph: Some(g),
        ..Default::default()
    };
    let mut out = out;
    declare_initializers(&mut out);
    Ok(Forward {
        model: out,
        active: active_order,
        logits: fwd_logits,
        path,
    })
}

/// Before IR version 4 every initializer also had to be a graph input.
pub(crate) fn declare_initializers(model: &mut ModelProto) {
    if model.ir_version() >= 4 {
        return;
    }
    if let Some(g) = model.graph.as_mut() {
        let listed: HashSet<String> = g.input.iter().map(|v| v.name().to_string()).collect();
        let missing: Vec<_> = g
            .initializer
            .iter()
            .filter(|t| !listed.contains(t.name()))
            .map(|t| {
                let d: Vec<Dim> = t.dims.iter().map(|&v| Dim::Fixed(v)).collect();
                tensor_value_info(t.name(), t.data_type(), &d)
            })
            .collect();
        g.input.extend(missing);
    }
}

fn plain(op: &str, inputs: &[&str], output: &str) -> NodeProto {
    NodeProto {
        op_type: Some(op.into()),
        name: Some(format!("{output}/{op}")),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.to_string()],
        ..Default::default()
    }
}

impl Forward {
    /// The forward model with every active tensor also exposed as an output, for
    /// measuring their shapes.
    pub fn probe(&self) -> ModelProto {
        let mut m = self.model.clone();
        if let Some(g) = m.graph.as_mut() {
            g.output.clear();
            for t in &self.active {
                // Type only: an empty shape would declare a scalar.
                let mut vi = tensor_value_info(t, FLOAT, &[]);
                if let Some(super::proto::type_proto::Value::TensorType(tt)) =
                    vi.r#type.as_mut().and_then(|ty| ty.value.as_mut())
                {
                    tt.shape = None;
                }
                g.output.push(vi);
            }
        }
        m
    }
}

/// What the backward rules see: shapes, constants, the tensors on the path and the
/// builder.
pub(crate) struct Ctx<'a> {
    pub b: Builder,
    shapes: &'a HashMap<String, Vec<usize>>,
    constants: HashMap<String, TensorProto>,
    active: &'a HashSet<&'a str>,
}

impl Ctx<'_> {
    /// Whether `tensor` depends on the pixels: only such inputs need a gradient.
    pub fn is_active(&self, tensor: &str) -> bool {
        self.active.contains(tensor)
    }

    /// The static shape of `tensor` (batch of two for the tensors on the path).
    pub fn shape(&self, node: &NodeProto, tensor: &str) -> Result<Vec<usize>, OnnxError> {
        static_shape(self.shapes, &self.constants, node, tensor)
    }

    /// The constant value of `tensor`, when it has one, however it arrives (an
    /// initializer, a Constant node, an Identity, Cast or Reshape of constants: see
    /// [`Index::constant`]; or integer arithmetic on the static dimensions of a tensor
    /// on the path: see [`dimensions`]).
    pub fn constant(&self, tensor: &str) -> Option<&TensorProto> {
        self.constants.get(tensor)
    }

    /// The constant value of `tensor` as f32, or an error naming the node and input.
    pub fn const_f32(&self, node: &NodeProto, tensor: &str, what: &str) -> Result<ndarray::ArrayD<f32>, OnnxError> {
        let t = self
            .constant(tensor)
            .ok_or_else(|| unsupported(node, format!("its {what} must be a constant to differentiate it")))?;
        tensor::to_f32(t)
    }

    /// The constant value of `tensor` as i64.
    pub fn const_i64(&self, node: &NodeProto, tensor: &str, what: &str) -> Result<Vec<i64>, OnnxError> {
        let t = self
            .constant(tensor)
            .ok_or_else(|| unsupported(node, format!("its {what} must be a constant to differentiate it")))?;
        Ok(tensor::to_i64(t)?.iter().copied().collect())
    }

    /// The opset in force.
    pub fn opset(&self) -> i64 {
        self.b.opset
    }
}

/// The static shape of `tensor`: measured (`shapes`), or that of a constant; an error
/// naming `node` when neither knows it. The gradient and the bound rules share it.
pub(crate) fn static_shape(
    shapes: &HashMap<String, Vec<usize>>,
    constants: &HashMap<String, TensorProto>,
    node: &NodeProto,
    tensor: &str,
) -> Result<Vec<usize>, OnnxError> {
    if let Some(s) = shapes.get(tensor) {
        return Ok(s.clone());
    }
    if let Some(t) = constants.get(tensor) {
        return tensor::shape(t);
    }
    let name = tensor.trim_start_matches(FWD);
    Err(unsupported(node, format!("the shape of '{name}' is not known")))
}

/// Step 2: appends the loss and `∂loss/∂pixels` to the forward graph. `shapes` holds the
/// shape of every tensor in [`Forward::active`], measured on a batch of two.
pub fn backward(fwd: &Forward, shapes: &HashMap<String, Vec<usize>>, loss: Loss) -> Result<ModelProto, OnnxError> {
    backward_with(fwd, shapes, loss, None)
}

/// Step 2 for a feature extractor whose linear head is given at run time: the forward
/// graph's output is the features `f` `[N, D]`, and the graph appends the scores
/// `z = f·Wᵀ + b` (the inputs [`HEAD_WEIGHTS`] `Wᵀ` `[D, classes]` and [`HEAD_BIAS`]
/// `b`), the loss on them, and `∂loss/∂pixels`. Training a head against an attack that
/// follows it then needs one graph, not one per head.
pub fn backward_head(
    fwd: &Forward,
    shapes: &HashMap<String, Vec<usize>>,
    loss: Loss,
    classes: usize,
) -> Result<ModelProto, OnnxError> {
    backward_with(fwd, shapes, loss, Some(classes))
}

fn backward_with(
    fwd: &Forward,
    shapes: &HashMap<String, Vec<usize>>,
    loss: Loss,
    head: Option<usize>,
) -> Result<ModelProto, OnnxError> {
    let mut model = fwd.model.clone();
    let graph = graph_of(&model)?;
    let index = Index::new(graph)?;
    let constants = fwd.constants(graph, &index, shapes);
    let active: HashSet<&str> = fwd.active.iter().map(String::as_str).collect();
    let mut ctx = Ctx {
        b: Builder::new(opset(&model), "bwd/"),
        shapes,
        constants,
        active: &active,
    };
    let logits_shape = shapes
        .get(&fwd.logits)
        .ok_or_else(|| OnnxError::Graph("the logits' shape was not measured".into()))?;
    let width = match logits_shape.as_slice() {
        [_, k] => *k,
        other => {
            return Err(OnnxError::Graph(format!(
                "the {} must be [batch, {}], found shape {other:?}",
                if head.is_some() { "features" } else { "class scores" },
                if head.is_some() { "features" } else { "classes" },
            )))
        }
    };
    let (classes, dz) = match head {
        None => (width, loss_nodes(&mut ctx.b, &fwd.logits, width, loss)),
        Some(classes) => {
            let product = ctx.b.op("MatMul", &[&fwd.logits, HEAD_WEIGHTS], vec![]);
            let scores = ctx.b.op("Add", &[&product, HEAD_BIAS], vec![]);
            let ds = loss_nodes(&mut ctx.b, &scores, classes, loss);
            ctx.b.op_into("Identity", &[&scores], LOGITS, vec![]);
            let w = ctx
                .b
                .op("Transpose", &[HEAD_WEIGHTS], vec![builder::ints("perm", &[1, 0])]);
            (classes, ctx.b.op("MatMul", &[&ds, &w], vec![]))
        }
    };

    let mut grads: HashMap<String, Vec<String>> = HashMap::from([(fwd.logits.clone(), vec![dz])]);
    for &i in fwd.path.iter().rev() {
        let node = &graph.node[i];
        let mut dys = Vec::with_capacity(node.output.len());
        for o in &node.output {
            dys.push(match grads.remove(o) {
                Some(terms) => Some(ctx.b.sum(&terms)),
                None => None,
            });
        }
        if dys.iter().all(Option::is_none) {
            continue;
        }
        let dxs = rules::backward(&mut ctx, node, &dys)?;
        for (k, x) in node.input.iter().enumerate() {
            if !active.contains(x.as_str()) {
                continue;
            }
            match dxs.get(k).cloned().flatten() {
                Some(dx) => grads.entry(x.clone()).or_default().push(dx),
                None => {
                    return Err(unsupported(
                        node,
                        format!(
                            "the gradient through its input {k} ('{}') is not supported",
                            x.trim_start_matches(FWD)
                        ),
                    ))
                }
            }
        }
    }
    let terms = grads
        .remove(PIXELS)
        .ok_or_else(|| OnnxError::Graph("no gradient reached the input".into()))?;
    let total = ctx.b.sum(&terms);
    ctx.b.op_into("Identity", &[&total], GRAD, vec![]);

    let g = graph_of_mut(&mut model)?;
    let batch = Dim::Param(BATCH.into());
    g.input.push(tensor_value_info(
        TARGET,
        FLOAT,
        &[batch.clone(), Dim::Fixed(classes as i64)],
    ));
    if head.is_some() {
        // The forward graph's Identity to LOGITS gives way to the scores' own.
        g.node.retain(|n| n.output.first().map(String::as_str) != Some(LOGITS));
        g.input.push(tensor_value_info(
            HEAD_WEIGHTS,
            FLOAT,
            &[Dim::Fixed(width as i64), Dim::Fixed(classes as i64)],
        ));
        g.input
            .push(tensor_value_info(HEAD_BIAS, FLOAT, &[Dim::Fixed(classes as i64)]));
    }
    let pixel_dims = g.input.first().and_then(dims).unwrap_or_default();
    g.output = vec![
        tensor_value_info(LOGITS, FLOAT, &[batch.clone(), Dim::Fixed(classes as i64)]),
        tensor_value_info(LOSS, FLOAT, &[batch]),
        tensor_value_info(GRAD, FLOAT, &pixel_dims),
    ];
    g.node.extend(ctx.b.nodes);
    g.initializer.extend(ctx.b.initializers);
    declare_initializers(&mut model);
    Ok(model)
}

/// Emits the per-sample loss (output [`LOSS`]) and returns `∂loss/∂z`.
fn loss_nodes(b: &mut Builder, z: &str, classes: usize, loss: Loss) -> String {
    match loss {
        Loss::Ce => {
            let ls = b.op("LogSoftmax", &[z], vec![builder::int("axis", 1)]);
            let picked = b.mul(TARGET, &ls);
            let neg = b.reduce_sum(&picked, &[1], false);
            b.op_into("Neg", &[&neg], LOSS, vec![]);
            let p = b.op("Exp", &[&ls], vec![]);
            b.op("Sub", &[&p, TARGET], vec![])
        }
        Loss::Margin => {
            // Push the label's own logit far down so the max/argmax pick the best other.
            let big = b.scalar(1.0e30);
            let lowered = b.mul(TARGET, &big);
            let others = b.op("Sub", &[z, &lowered], vec![]);
            let best = b.reduce_max(&others, &[1], false);
            let picked = b.mul(TARGET, z);
            let own = b.reduce_sum(&picked, &[1], false);
            b.op_into("Sub", &[&own, &best], LOSS, vec![]);
            let arg = b.op(
                "ArgMax",
                &[&others],
                vec![builder::int("axis", 1), builder::int("keepdims", 1)],
            );
            let range: Vec<i64> = (0..classes as i64).collect();
            let ks = b.i64s("classes", &[1, classes], &range);
            let eq = b.op("Equal", &[&arg, &ks], vec![]);
            let rival = b.cast_float(&eq);
            b.op("Sub", &[TARGET, &rival], vec![])
        }
    }
}
