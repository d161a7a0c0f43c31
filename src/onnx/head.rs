//! Where a hybrid's head sits in its ONNX graph: reading the head Gemm's weights and
//! bias, and writing repaired ones back in place, so the repaired model keeps every
//! name and shape.
//!
//! The head is the Gemm that computes the classifier's output (through a trailing
//! Softmax, LogSoftmax or Identity). In the linear hybrid (LH) it reads the extractor's
//! `features`; in the kernel hybrid (KH) it reads the Nyström features φ, the output of
//! `MatMul(Exp(…), P)`. Either way the head is linear in what it reads, so the repair
//! LPs apply to both, with the features taken at the head's input tensor.

use ndarray::{Array1, Array2};

use super::graph::{int_attr, node_label, Index};
use super::proto::{GraphProto, NodeProto};
use super::surgery::{set_metadata, FEATURES};
use super::{tensor, ModelProto, OnnxError};
use crate::head::HeadKind;
use crate::svm::LinearSvm;

/// The `Gemm(x, W, b, transB=1)` that ends a hybrid.
#[derive(Debug, Clone)]
pub struct HeadSite {
    /// Linear or kernel hybrid.
    pub kind: HeadKind,
    /// The tensor the Gemm reads: `features` (LH) or the Nyström features (KH).
    pub input: String,
    /// Name of the weight initializer.
    pub weight_name: String,
    /// Name of the bias initializer.
    pub bias_name: String,
    /// `[k, d]`.
    pub weights: Array2<f32>,
    /// `[k]`.
    pub bias: Array1<f32>,
}

fn not_a_head(reason: impl Into<String>) -> OnnxError {
    OnnxError::Graph(format!(
        "no linear head to repair: {} (repair works on hybrids written by `nnmend fit`)",
        reason.into()
    ))
}

fn float_attr(node: &NodeProto, name: &str) -> f32 {
    node.attribute
        .iter()
        .find(|a| a.name() == name)
        .and_then(|a| a.f)
        .unwrap_or(1.0)
}

/// The node computing `tensor`, if any.
fn producer<'a>(graph: &'a GraphProto, index: &Index, tensor: &str) -> Option<&'a NodeProto> {
    index.producer(tensor).map(|i| &graph.node[i])
}

/// Finds the hybrid's head: the Gemm computing the first graph output (through a
/// trailing Softmax, LogSoftmax or Identity), reading either `features` (a linear
/// hybrid) or a Nyström map's `MatMul(Exp(…), P)` (a kernel hybrid).
pub fn find(model: &ModelProto) -> Result<HeadSite, OnnxError> {
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| OnnxError::Graph("the model holds no graph".into()))?;
    let index = Index::new(graph)?;
    let output = graph
        .output
        .first()
        .ok_or_else(|| not_a_head("the graph has no output"))?
        .name();
    let mut node =
        producer(graph, &index, output).ok_or_else(|| not_a_head(format!("no node computes the output '{output}'")))?;
    while matches!(node.op_type(), "Softmax" | "LogSoftmax" | "Identity") {
        let next = node.input.first().and_then(|t| producer(graph, &index, t));
        node = next.ok_or_else(|| not_a_head(format!("nothing feeds '{}'", node_label(node))))?;
    }
    if node.op_type() != "Gemm" {
        return Err(not_a_head(format!(
            "the output '{output}' comes from '{}' ({}), not from a Gemm",
            node_label(node),
            node.op_type()
        )));
    }
    let gemm = node;
    let input = gemm.input.first().cloned().unwrap_or_default();
    let is_kernel_map = || {
        producer(graph, &index, &input).is_some_and(|p| {
            p.op_type() == "MatMul"
                && p.input
                    .first()
                    .and_then(|t| producer(graph, &index, t))
                    .map(|e| e.op_type())
                    == Some("Exp")
        })
    };
    let kind = if input == FEATURES {
        HeadKind::Linear
    } else if is_kernel_map() {
        HeadKind::Kernel
    } else {
        return Err(not_a_head(format!(
            "the Gemm '{}' reads '{input}', neither the extractor's '{FEATURES}' (a linear hybrid) nor a \
             Nyström map's MatMul(Exp(…), P) (a kernel hybrid)",
            node_label(gemm)
        )));
    };
    let label = node_label(gemm);
    if int_attr(gemm, "transA").unwrap_or(0) != 0 || int_attr(gemm, "transB").unwrap_or(0) != 1 {
        return Err(not_a_head(format!(
            "Gemm '{label}' is not x·Wᵀ + b (transA = 0, transB = 1)"
        )));
    }
    if float_attr(gemm, "alpha") != 1.0 || float_attr(gemm, "beta") != 1.0 {
        return Err(not_a_head(format!("Gemm '{label}' scales its terms (alpha/beta ≠ 1)")));
    }
    let (w_name, b_name) = match gemm.input.as_slice() {
        [_, w, b] => (w.clone(), b.clone()),
        _ => return Err(not_a_head(format!("Gemm '{label}' has no bias input"))),
    };
    let w = index
        .initializer(&w_name)
        .ok_or_else(|| not_a_head(format!("the weights '{w_name}' are not an initializer")))?;
    let b = index
        .initializer(&b_name)
        .ok_or_else(|| not_a_head(format!("the bias '{b_name}' is not an initializer")))?;
    let weights = tensor::to_f32(w)?
        .into_dimensionality::<ndarray::Ix2>()
        .map_err(|_| not_a_head(format!("the weights '{w_name}' are not a matrix")))?;
    let bias = tensor::to_f32(b)?
        .into_dimensionality::<ndarray::Ix1>()
        .map_err(|_| not_a_head(format!("the bias '{b_name}' is not a vector")))?;
    if bias.len() != weights.nrows() {
        return Err(not_a_head(format!(
            "{} bias values for {} classes",
            bias.len(),
            weights.nrows()
        )));
    }
    Ok(HeadSite {
        kind,
        input,
        weight_name: w_name,
        bias_name: b_name,
        weights,
        bias,
    })
}

impl HeadSite {
    /// The head's linear part as the model holds it.
    pub fn linear(&self) -> LinearSvm {
        LinearSvm {
            weights: self.weights.clone(),
            bias: self.bias.clone(),
        }
    }
}

/// A copy of `model` whose head (at `head`) holds `weights` and `bias`, with
/// `provenance` in its `metadata_props`.
pub fn replace(
    model: &ModelProto,
    head: &HeadSite,
    weights: &Array2<f32>,
    bias: &Array1<f32>,
    provenance: &[(&str, String)],
) -> Result<ModelProto, OnnxError> {
    if weights.dim() != head.weights.dim() || bias.len() != head.bias.len() {
        return Err(OnnxError::Tensor {
            name: head.weight_name.clone(),
            reason: format!(
                "repaired head {:?} does not match {:?}",
                weights.dim(),
                head.weights.dim()
            ),
        });
    }
    let mut out = model.clone();
    let g = out
        .graph
        .as_mut()
        .ok_or_else(|| OnnxError::Graph("the model holds no graph".into()))?;
    let (k, d) = weights.dim();
    let w: Vec<f32> = weights.iter().copied().collect();
    for t in g.initializer.iter_mut() {
        if t.name() == head.weight_name {
            *t = tensor::from_f32(&head.weight_name, &[k, d], &w);
        } else if t.name() == head.bias_name {
            *t = tensor::from_f32(&head.bias_name, &[k], &bias.to_vec());
        }
    }
    for (key, value) in provenance {
        set_metadata(&mut out, key, value);
    }
    Ok(out)
}
