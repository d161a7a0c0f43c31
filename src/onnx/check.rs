//! Checks that a decoded model is well formed before anything else touches it, because
//! a model file is untrusted input: opset versions that exist, tensors whose dims
//! agree with the bytes they hold (checked with overflow-safe arithmetic, so that no
//! later step allocates what a header merely claims), a graph without cycles, dangling
//! inputs or tensors written twice, and attributes of the ONNX operators nnmend reads
//! given with the type the operator defines (Conv `strides` as a list of integers, not
//! a float). Each failure names the node, tensor, attribute or opset entry at fault.

use std::collections::HashSet;

use super::graph::{node_label, Index};
use super::proto::{attribute_proto::AttributeType, AttributeProto, ModelProto, NodeProto, TensorProto};
use super::OnnxError;

/// The largest opset version accepted for the ONNX domains. ONNX releases define
/// versions 1 to the mid-20s; anything far above is a damaged or hostile file.
pub const MAX_OPSET: i64 = 64;

/// Runs every check on `model`.
pub fn model(model: &ModelProto) -> Result<(), OnnxError> {
    opsets(model)?;
    let Some(graph) = model.graph.as_ref() else {
        return Ok(());
    };
    for t in &graph.initializer {
        tensor_size(t)?;
    }
    for node in &graph.node {
        attributes(node)?;
    }
    // A node output that shadows a graph input or an initializer is a tensor written
    // twice, just as two nodes writing one name are (checked first: such a graph
    // often reads as a cycle too, which would hide the cause).
    let inputs: HashSet<&str> = graph.input.iter().map(|v| v.name()).collect();
    let initializers: HashSet<&str> = graph.initializer.iter().map(|t| t.name()).collect();
    for node in &graph.node {
        for out in node.output.iter().filter(|o| !o.is_empty()) {
            let shadows_input = inputs.contains(out.as_str());
            if shadows_input || initializers.contains(out.as_str()) {
                return Err(OnnxError::Graph(format!(
                    "node '{}' ({}) writes tensor '{out}', which is already a graph {}",
                    node_label(node),
                    node.op_type(),
                    if shadows_input { "input" } else { "initializer" }
                )));
            }
        }
    }
    // Cycles, inputs nothing provides, tensors two nodes write.
    Index::new(graph)?;
    Ok(())
}

/// Refuses opset versions below 1, and above [`MAX_OPSET`] for the ONNX domains.
fn opsets(model: &ModelProto) -> Result<(), OnnxError> {
    for op in &model.opset_import {
        let domain = op.domain.as_deref().unwrap_or("");
        let version = op.version.unwrap_or(0);
        let onnx_domain = matches!(domain, "" | "ai.onnx" | "ai.onnx.ml");
        if version < 1 || (onnx_domain && version > MAX_OPSET) {
            let shown = if domain.is_empty() { "ai.onnx (default)" } else { domain };
            return Err(OnnxError::Opset {
                domain: shown.to_string(),
                version,
                reason: if version < 1 {
                    "versions start at 1".into()
                } else {
                    format!("no ONNX release defines it (nnmend accepts 1 to {MAX_OPSET})")
                },
            });
        }
    }
    Ok(())
}

/// Bytes per element of an ONNX data type, in `raw_data`; `None` for strings,
/// sub-byte types (packed two to a byte) and unknown codes.
pub fn element_size(data_type: i32) -> Option<u64> {
    Some(match data_type {
        2 | 3 | 9 | 17..=20 => 1,
        4 | 5 | 10 | 16 => 2,
        1 | 6 | 12 => 4,
        7 | 11 | 13 | 14 => 8,
        15 => 16,
        _ => return None,
    })
}

/// The bytes the tensor's dims call for in `raw_data` (for types of whole bytes), in
/// overflow-checked arithmetic. Fails on a negative dim or a product past `u64`.
pub fn declared_bytes(t: &TensorProto) -> Result<Option<u64>, OnnxError> {
    let bad = |reason: String| OnnxError::Tensor {
        name: t.name().to_string(),
        reason,
    };
    let mut count: u64 = 1;
    for &d in &t.dims {
        let d = u64::try_from(d).map_err(|_| bad(format!("dims {:?} hold a negative dimension", t.dims)))?;
        count = count
            .checked_mul(d)
            .ok_or_else(|| bad(format!("dims {:?} multiply past 2^64 elements", t.dims)))?;
    }
    match element_size(t.data_type()) {
        Some(size) => count
            .checked_mul(size)
            .map(Some)
            .ok_or_else(|| bad(format!("dims {:?} call for more than 2^64 bytes", t.dims))),
        None => Ok(None),
    }
}

/// Checks that the tensor holds exactly the data its dims call for.
fn tensor_size(t: &TensorProto) -> Result<(), OnnxError> {
    let Some(bytes) = declared_bytes(t)? else {
        return Ok(());
    };
    let external = super::proto::tensor_proto::DataLocation::External as i32;
    if !t.external_data.is_empty() || t.data_location == Some(external) {
        // Checked against the external file when it is read.
        return Ok(());
    }
    let elements = bytes / element_size(t.data_type()).unwrap_or(1);
    let (present, unit) = match t.raw_data.as_ref() {
        Some(raw) => (raw.len() as u64, bytes),
        None => {
            let typed = match t.data_type() {
                1 => t.float_data.len(),
                14 => t.float_data.len() / 2,
                7 => t.int64_data.len(),
                11 => t.double_data.len(),
                15 => t.double_data.len() / 2,
                12 | 13 => t.uint64_data.len(),
                _ => t.int32_data.len(),
            };
            (typed as u64, elements)
        }
    };
    if present != unit {
        let what = if t.raw_data.is_some() { "bytes" } else { "values" };
        return Err(OnnxError::Tensor {
            name: t.name().to_string(),
            reason: format!(
                "dims {:?} call for {unit} {what} of data type {}, but the tensor holds {present}",
                t.dims,
                t.data_type()
            ),
        });
    }
    Ok(())
}

/// The type an attribute of a default-domain operator must have, where nnmend knows it.
fn expected_type(op: &str, name: &str) -> Option<AttributeType> {
    use AttributeType::*;
    let spatial = matches!(
        op,
        "Conv" | "ConvTranspose" | "MaxPool" | "AveragePool" | "LpPool" | "MaxUnpool"
    );
    Some(match name {
        "strides" | "pads" | "dilations" | "kernel_shape" | "output_padding" | "output_shape" if spatial => Ints,
        "group" | "ceil_mode" | "count_include_pad" | "storage_order" if spatial => Int,
        "auto_pad" if spatial => String,
        "perm" if op == "Transpose" => Ints,
        "axis" if matches!(op, "Flatten" | "Softmax" | "LogSoftmax" | "Concat" | "Gather") => Int,
        "transA" | "transB" if op == "Gemm" => Int,
        "alpha" | "beta" if op == "Gemm" => Float,
        "alpha" if matches!(op, "LeakyRelu" | "Elu") => Float,
        "epsilon" | "momentum" if op == "BatchNormalization" => Float,
        "value" if op == "Constant" => Tensor,
        "to" if op == "Cast" => Int,
        _ => return None,
    })
}

/// The type an attribute's payload shows, for files that leave `type` unset.
fn payload_type(a: &AttributeProto) -> Option<AttributeType> {
    use AttributeType::*;
    Some(if a.f.is_some() {
        Float
    } else if a.i.is_some() {
        Int
    } else if a.s.is_some() {
        String
    } else if a.t.is_some() {
        Tensor
    } else if a.g.is_some() {
        Graph
    } else if !a.floats.is_empty() {
        Floats
    } else if !a.ints.is_empty() {
        Ints
    } else if !a.strings.is_empty() {
        Strings
    } else {
        return None;
    })
}

/// Checks the node's attributes against the types its operator defines.
fn attributes(node: &NodeProto) -> Result<(), OnnxError> {
    let default_domain = matches!(node.domain(), "" | "ai.onnx");
    for a in &node.attribute {
        if let Some(t) = a.t.as_ref() {
            tensor_size(t).map_err(|e| node_error(node, format!("attribute '{}': {e}", a.name())))?;
        }
        if !default_domain {
            continue;
        }
        let Some(want) = expected_type(node.op_type(), a.name()) else {
            continue;
        };
        let declared = a
            .r#type
            .and_then(|t| AttributeType::try_from(t).ok())
            .filter(|t| *t != AttributeType::Undefined);
        let Some(got) = declared.or_else(|| payload_type(a)) else {
            // An empty list is a valid INTS value (`pads: []`).
            if want == AttributeType::Ints {
                continue;
            }
            return Err(node_error(node, format!("attribute '{}' holds no value", a.name())));
        };
        let payload = payload_type(a);
        let payload_agrees = payload.is_none_or(|p| p == got);
        if got != want || !payload_agrees {
            let holds = payload.map_or("nothing".to_string(), |p| p.as_str_name().to_string());
            return Err(node_error(
                node,
                format!(
                    "attribute '{}' must be {} but is declared {} and holds {holds}",
                    a.name(),
                    want.as_str_name(),
                    got.as_str_name()
                ),
            ));
        }
    }
    Ok(())
}

fn node_error(node: &NodeProto, reason: String) -> OnnxError {
    OnnxError::Node {
        node: node_label(node),
        op: node.op_type().to_string(),
        reason,
    }
}
