//! Reading the forward graph's nodes and emitting the nodes of a gradient graph.
//!
//! [`Builder`] hands out fresh tensor names under a prefix, keeps the new nodes and
//! constants, and hides the opset differences of the few ops whose signature changed
//! (ReduceSum and ReduceMax moved `axes` from an attribute to an input, Slice and Pad
//! moved their bounds the same way), so a gradient graph keeps the model's own opset.

use super::super::proto::{attribute_proto::AttributeType, AttributeProto, NodeProto, TensorProto};
use super::super::tensor;
use super::super::OnnxError;
use super::{unsupported, Ctx, PROBE_BATCH};

/// An integer attribute.
pub fn int(name: &str, v: i64) -> AttributeProto {
    let mut a = AttributeProto {
        name: Some(name.to_string()),
        i: Some(v),
        ..Default::default()
    };
    a.set_type(AttributeType::Int);
    a
}

/// An integer-list attribute.
pub fn ints(name: &str, v: &[i64]) -> AttributeProto {
    let mut a = AttributeProto {
        name: Some(name.to_string()),
        ints: v.to_vec(),
        ..Default::default()
    };
    a.set_type(AttributeType::Ints);
    a
}

/// A float attribute.
pub fn float(name: &str, v: f32) -> AttributeProto {
    let mut a = AttributeProto {
        name: Some(name.to_string()),
        f: Some(v),
        ..Default::default()
    };
    a.set_type(AttributeType::Float);
    a
}

/// A tensor attribute.
pub fn tensor_attr(name: &str, t: TensorProto) -> AttributeProto {
    let mut a = AttributeProto {
        name: Some(name.to_string()),
        t: Some(t),
        ..Default::default()
    };
    a.set_type(AttributeType::Tensor);
    a
}

// Reading a node of the forward graph: its attributes, inputs and outputs.

fn attr<'a>(node: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    node.attribute.iter().find(|a| a.name() == name)
}

fn wrong_type(node: &NodeProto, name: &str, want: &str) -> OnnxError {
    unsupported(node, format!("attribute '{name}' should be {want}"))
}

fn type_is(a: &AttributeProto, t: AttributeType) -> bool {
    a.r#type.is_none() || a.r#type() == t
}

/// An integer attribute, or `default` when absent.
pub fn attr_int(node: &NodeProto, name: &str, default: i64) -> Result<i64, OnnxError> {
    match attr(node, name) {
        None => Ok(default),
        Some(a) if type_is(a, AttributeType::Int) => a.i.ok_or_else(|| wrong_type(node, name, "an integer")),
        Some(_) => Err(wrong_type(node, name, "an integer")),
    }
}

/// An integer-list attribute, when present.
pub fn attr_ints(node: &NodeProto, name: &str) -> Result<Option<Vec<i64>>, OnnxError> {
    match attr(node, name) {
        None => Ok(None),
        Some(a) if type_is(a, AttributeType::Ints) => Ok(Some(a.ints.clone())),
        Some(_) => Err(wrong_type(node, name, "a list of integers")),
    }
}

/// A float attribute, or `default` when absent.
pub fn attr_float(node: &NodeProto, name: &str, default: f32) -> Result<f32, OnnxError> {
    match attr(node, name) {
        None => Ok(default),
        Some(a) if type_is(a, AttributeType::Float) => a.f.ok_or_else(|| wrong_type(node, name, "a float")),
        Some(_) => Err(wrong_type(node, name, "a float")),
    }
}

/// A string attribute, or `default` when absent.
pub fn attr_string(node: &NodeProto, name: &str, default: &str) -> Result<String, OnnxError> {
    match attr(node, name) {
        None => Ok(default.to_string()),
        Some(a) if type_is(a, AttributeType::String) => {
            a.s.as_ref()
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .ok_or_else(|| wrong_type(node, name, "a string"))
        }
        Some(_) => Err(wrong_type(node, name, "a string")),
    }
}

/// Input `k` of `node`, or "" when it has fewer (a missing shape then says so).
pub fn input(node: &NodeProto, k: usize) -> &str {
    node.input.get(k).map(String::as_str).unwrap_or("")
}

/// The first output of `node`, or "".
pub fn output(node: &NodeProto) -> &str {
    node.output.first().map(String::as_str).unwrap_or("")
}

/// The shape of a tensor on the path as a Reshape target with a free batch: the
/// measured batch goes back to `-1`. Fails when the batch is not on axis 0.
pub fn batched(ctx: &Ctx, node: &NodeProto, tensor: &str) -> Result<Vec<i64>, OnnxError> {
    let shape = ctx.shape(node, tensor)?;
    if shape.first() != Some(&PROBE_BATCH) {
        return Err(unsupported(
            node,
            format!("the batch is not on axis 0 of '{}' (shape {shape:?})", tensor),
        ));
    }
    let mut out = vec![-1];
    out.extend(shape[1..].iter().map(|&d| d as i64));
    Ok(out)
}

/// The static shapes of `node`'s first input and of its output, which must have the
/// same rank.
pub fn same_rank(ctx: &Ctx, node: &NodeProto) -> Result<(Vec<usize>, Vec<usize>), OnnxError> {
    let xs = ctx.shape(node, input(node, 0))?;
    let ys = ctx.shape(node, output(node))?;
    if ys.len() != xs.len() {
        let message = format!("its input has rank {}, its output rank {}", xs.len(), ys.len());
        return Err(unsupported(node, message));
    }
    Ok((xs, ys))
}

/// Normalises a possibly negative axis for a tensor of rank `rank`.
pub fn axis(node: &NodeProto, a: i64, rank: usize) -> Result<usize, OnnxError> {
    let r = rank as i64;
    let a = if a < 0 { a + r } else { a };
    if (0..r).contains(&a) {
        Ok(a as usize)
    } else {
        Err(unsupported(node, format!("axis {a} is out of range for rank {rank}")))
    }
}

/// New nodes and constants of a gradient graph.
#[derive(Debug)]
pub struct Builder {
    /// The ai.onnx opset the graph imports.
    pub opset: i64,
    prefix: &'static str,
    counter: usize,
    /// Nodes emitted so far, in order.
    pub nodes: Vec<NodeProto>,
    /// Constants emitted so far.
    pub initializers: Vec<TensorProto>,
}

impl Builder {
    /// A builder naming its tensors `{prefix}{hint}_{n}`.
    pub fn new(opset: i64, prefix: &'static str) -> Self {
        Self {
            opset,
            prefix,
            counter: 0,
            nodes: Vec::new(),
            initializers: Vec::new(),
        }
    }

    /// A tensor name used nowhere else.
    pub fn fresh(&mut self, hint: &str) -> String {
        self.counter += 1;
        format!("{}{hint}_{}", self.prefix, self.counter)
    }

    /// Emits `op(inputs)` with one output and returns that output's name.
    pub fn op(&mut self, op: &str, inputs: &[&str], attribute: Vec<AttributeProto>) -> String {
        let out = self.fresh(&op.to_ascii_lowercase());
        self.op_into(op, inputs, &out, attribute);
        out
    }

    /// Emits `op(inputs)` writing to the given output name.
    pub fn op_into(&mut self, op: &str, inputs: &[&str], output: &str, attribute: Vec<AttributeProto>) {
        self.nodes.push(NodeProto {
            op_type: Some(op.to_string()),
            name: Some(format!("{output}/{op}")),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.to_string()],
            attribute,
            ..Default::default()
        });
    }

    /// A FLOAT constant.
    pub fn f32s(&mut self, hint: &str, dims: &[usize], values: &[f32]) -> String {
        let name = self.fresh(hint);
        self.initializers.push(tensor::from_f32(&name, dims, values));
        name
    }

    /// A FLOAT scalar constant.
    pub fn scalar(&mut self, v: f32) -> String {
        self.f32s("c", &[], &[v])
    }

    /// An INT64 constant.
    pub fn i64s(&mut self, hint: &str, dims: &[usize], values: &[i64]) -> String {
        let name = self.fresh(hint);
        self.initializers.push(tensor::from_i64(&name, dims, values));
        name
    }

    /// `a * b`.
    pub fn mul(&mut self, a: &str, b: &str) -> String {
        self.op("Mul", &[a, b], vec![])
    }

    /// `Reshape(x, shape)` with a constant target (0 copies the input's dimension).
    pub fn reshape(&mut self, x: &str, shape: &[i64]) -> String {
        let s = self.i64s("shape", &[shape.len()], shape);
        self.op("Reshape", &[x, &s], vec![])
    }

    /// `Cast(x, to=FLOAT)`.
    pub fn cast_float(&mut self, x: &str) -> String {
        self.op("Cast", &[x], vec![int("to", i64::from(tensor::FLOAT))])
    }

    fn reduce(&mut self, op: &str, since: i64, x: &str, axes: &[i64], keepdims: bool) -> String {
        let keep = int("keepdims", i64::from(keepdims));
        if self.opset >= since {
            let a = self.i64s("axes", &[axes.len()], axes);
            self.op(op, &[x, &a], vec![keep])
        } else {
            self.op(op, &[x], vec![ints("axes", axes), keep])
        }
    }

    /// `ReduceSum` over `axes`.
    pub fn reduce_sum(&mut self, x: &str, axes: &[i64], keepdims: bool) -> String {
        self.reduce("ReduceSum", 13, x, axes, keepdims)
    }

    /// `ReduceMean` over `axes`.
    pub fn reduce_mean(&mut self, x: &str, axes: &[i64], keepdims: bool) -> String {
        self.reduce("ReduceMean", 18, x, axes, keepdims)
    }

    /// `ReduceMax` over `axes`.
    pub fn reduce_max(&mut self, x: &str, axes: &[i64], keepdims: bool) -> String {
        self.reduce("ReduceMax", 18, x, axes, keepdims)
    }

    /// `Slice(x)` keeping `starts[i]..ends[i]` along `axes[i]`.
    pub fn slice(&mut self, x: &str, starts: &[i64], ends: &[i64], axes: &[i64]) -> String {
        if self.opset >= 10 {
            let s = self.i64s("starts", &[starts.len()], starts);
            let e = self.i64s("ends", &[ends.len()], ends);
            let a = self.i64s("axes", &[axes.len()], axes);
            self.op("Slice", &[x, &s, &e, &a], vec![])
        } else {
            self.op(
                "Slice",
                &[x],
                vec![ints("starts", starts), ints("ends", ends), ints("axes", axes)],
            )
        }
    }

    /// `Slice(x)` with steps (opset 10 and later).
    pub fn slice_steps(&mut self, x: &str, starts: &[i64], ends: &[i64], axes: &[i64], steps: &[i64]) -> String {
        let s = self.i64s("starts", &[starts.len()], starts);
        let e = self.i64s("ends", &[ends.len()], ends);
        let a = self.i64s("axes", &[axes.len()], axes);
        let t = self.i64s("steps", &[steps.len()], steps);
        self.op("Slice", &[x, &s, &e, &a, &t], vec![])
    }

    /// Constant-mode `Pad(x)` with ONNX-ordered `pads` (all begins, then all ends).
    pub fn pad(&mut self, x: &str, pads: &[i64], value: f32) -> String {
        if self.opset >= 11 {
            let p = self.i64s("pads", &[pads.len()], pads);
            let v = self.scalar(value);
            self.op("Pad", &[x, &p, &v], vec![])
        } else {
            self.op("Pad", &[x], vec![ints("pads", pads), float("value", value)])
        }
    }

    /// Float zeros shaped like `x`, whatever its batch: `ConstantOfShape(Shape(x))`
    /// (`x · 0` before opset 9, which has no ConstantOfShape).
    pub fn zeros_like(&mut self, x: &str) -> String {
        if self.opset < 9 {
            let zero = self.scalar(0.0);
            return self.mul(x, &zero);
        }
        let shape = self.op("Shape", &[x], vec![]);
        let zero = tensor::from_f32("", &[1], &[0.0]);
        self.op("ConstantOfShape", &[&shape], vec![tensor_attr("value", zero)])
    }

    /// The sum of `terms` (one Add chain; a single term is returned as is).
    pub fn sum(&mut self, terms: &[String]) -> String {
        let mut acc = terms[0].clone();
        for t in &terms[1..] {
            acc = self.op("Add", &[&acc, t], vec![]);
        }
        acc
    }
}
