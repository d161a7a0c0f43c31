//! The box of each op's outputs from the boxes of its inputs (the rules the module
//! docs list), emitted as nodes.

use super::super::grad::builder::{attr_float, attr_int, attr_ints, float};
use super::super::grad::unsupported;
use super::super::proto::NodeProto;
use super::super::OnnxError;
use super::{Box2, Ctx};

/// Ops that only move, copy or select values, or are non-decreasing in every input
/// without rounding: the op on the lower ends and on the upper ends is exact.
const MONOTONE_EXACT: &[&str] = &[
    "Identity",
    "Flatten",
    "Reshape",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Concat",
    "Pad",
    "Slice",
    "Split",
    "Gather",
    "Expand",
    "Tile",
    "DepthToSpace",
    "SpaceToDepth",
    "MaxPool",
    "GlobalMaxPool",
    "ReduceMax",
    "ReduceMin",
    "Relu",
    "Clip",
    "Max",
    "Min",
];

/// Non-decreasing ops whose results round like a transcendental function.
const MONOTONE_TRANSCENDENTAL: &[&str] = &["Exp", "Sigmoid", "Tanh"];

/// The boxes of `node`'s outputs (`None` for an output that carries no values to
/// bound, such as MaxPool's indices).
pub(super) fn apply(ctx: &mut Ctx, node: &NodeProto) -> Result<Vec<Option<Box2>>, OnnxError> {
    let op = node.op_type();
    if op == "Gather" && ctx.is_active(node, 1) {
        return Err(unsupported(node, "its indices depend on the input"));
    }
    match op {
        "Dropout" => Ok(first_only(ctx, node)),
        "MaxPool" if node.output.len() > 1 => Ok(first_only(ctx, node)),
        _ if MONOTONE_EXACT.contains(&op) => Ok(monotone(ctx, node).into_iter().map(Some).collect()),
        _ if MONOTONE_TRANSCENDENTAL.contains(&op) => {
            let rho = ctx.margin.transcendental;
            Ok(monotone(ctx, node)
                .into_iter()
                .map(|bx| Some(ctx.widen(bx, None, rho)))
                .collect())
        }
        "LeakyRelu" => {
            if attr_float(node, "alpha", 0.01)? < 0.0 {
                return Err(unsupported(node, "a negative slope is not monotone"));
            }
            rounded_monotone(ctx, node)
        }
        "Add" => rounded_monotone(ctx, node),
        "Cast" => {
            if attr_int(node, "to", 1)? != i64::from(super::super::tensor::FLOAT) {
                return Err(unsupported(node, "only casts to float keep the values bounded"));
            }
            Ok(monotone(ctx, node).into_iter().map(Some).collect())
        }
        "Neg" => {
            let x = need(ctx, node, 0)?;
            let l = ctx.b.op("Neg", &[&x.u], vec![]);
            let u = ctx.b.op("Neg", &[&x.l], vec![]);
            Ok(vec![Some(Box2 { l, u })])
        }
        "Sub" => sub(ctx, node),
        "Mul" => mul(ctx, node),
        "Div" => div(ctx, node),
        "Conv" | "Gemm" | "MatMul" => linear(ctx, node),
        "BatchNormalization" => batch_norm(ctx, node),
        "AveragePool" | "GlobalAveragePool" | "ReduceMean" | "ReduceSum" => window_sum(ctx, node),
        _ => Err(unsupported(node, "interval bounds have no rule for this op")),
    }
}

/// The box of input `k`, which must depend on the input.
fn need(ctx: &Ctx, node: &NodeProto, k: usize) -> Result<Box2, OnnxError> {
    ctx.input_box(node, k)
        .ok_or_else(|| unsupported(node, format!("input {k} is not bounded")))
}

/// The op on the lower ends and on the upper ends; inputs that do not depend on the
/// pixels are shared.
fn monotone(ctx: &mut Ctx, node: &NodeProto) -> Vec<Box2> {
    let boxes: Vec<Option<Box2>> = (0..node.input.len()).map(|k| ctx.input_box(node, k)).collect();
    let ls = ctx.copy(node, |k, _| boxes[k].as_ref().map(|b| b.l.clone()), "lo");
    let us = ctx.copy(node, |k, _| boxes[k].as_ref().map(|b| b.u.clone()), "up");
    ls.into_iter().zip(us).map(|(l, u)| Box2 { l, u }).collect()
}

/// [`monotone`], widened for one rounding per result.
fn rounded_monotone(ctx: &mut Ctx, node: &NodeProto) -> Result<Vec<Option<Box2>>, OnnxError> {
    let rho = ctx.margin.once();
    Ok(monotone(ctx, node)
        .into_iter()
        .map(|bx| Some(ctx.widen(bx, None, rho)))
        .collect())
}

/// An op of which only the first output is bounded (Dropout's mask and MaxPool's
/// indices are not values: a node reading them finds no box and is refused).
fn first_only(ctx: &mut Ctx, node: &NodeProto) -> Vec<Option<Box2>> {
    let mut single = node.clone();
    single.output.truncate(1);
    let mut out: Vec<Option<Box2>> = monotone(ctx, &single).into_iter().map(Some).collect();
    out.resize(node.output.len(), None);
    out
}

/// `a − b`: `[l_a − u_b, u_a − l_b]`.
fn sub(ctx: &mut Ctx, node: &NodeProto) -> Result<Vec<Option<Box2>>, OnnxError> {
    let a = end_pair(ctx, node, 0);
    let b = end_pair(ctx, node, 1);
    let l = ctx.b.op("Sub", &[&a.l, &b.u], vec![]);
    let u = ctx.b.op("Sub", &[&a.u, &b.l], vec![]);
    let rho = ctx.margin.once();
    Ok(vec![Some(ctx.widen(Box2 { l, u }, None, rho))])
}

/// Input `k` as a box: its own, or a point box for a constant.
fn end_pair(ctx: &Ctx, node: &NodeProto, k: usize) -> Box2 {
    ctx.input_box(node, k).unwrap_or_else(|| {
        let name = node.input.get(k).cloned().unwrap_or_default();
        Box2 {
            l: name.clone(),
            u: name,
        }
    })
}

/// `a · b`: the hull of the four corner products; a square `x · x` is
/// `[max(l, −u, 0)², max(l², u²)]`.
fn mul(ctx: &mut Ctx, node: &NodeProto) -> Result<Vec<Option<Box2>>, OnnxError> {
    let rho = ctx.margin.once();
    if node.input.len() == 2 && node.input[0] == node.input[1] {
        let x = need(ctx, node, 0)?;
        let zero = ctx.b.scalar(0.0);
        let neg_u = ctx.b.op("Neg", &[&x.u], vec![]);
        let nearest = ctx.b.op("Max", &[&x.l, &neg_u, &zero], vec![]);
        let l = ctx.b.mul(&nearest, &nearest);
        let ll = ctx.b.mul(&x.l, &x.l);
        let uu = ctx.b.mul(&x.u, &x.u);
        let u = ctx.b.op("Max", &[&ll, &uu], vec![]);
        return Ok(vec![Some(ctx.widen(Box2 { l, u }, None, rho))]);
    }
    let a = end_pair(ctx, node, 0);
    let b = end_pair(ctx, node, 1);
    let mut corners = Vec::new();
    for x in [&a.l, &a.u] {
        for y in [&b.l, &b.u] {
            corners.push(ctx.b.mul(x, y));
        }
    }
    corners.dedup();
    let bx = ctx.hull(&corners);
    Ok(vec![Some(ctx.widen(bx, None, rho))])
}

/// `a / k` with a constant `k`: the hull of the two ends divided.
fn div(ctx: &mut Ctx, node: &NodeProto) -> Result<Vec<Option<Box2>>, OnnxError> {
    if ctx.is_active(node, 1) {
        return Err(unsupported(node, "a divisor that depends on the input is not bounded"));
    }
    let k = ctx.const_f32(node, 1, "divisor")?;
    if k.iter().any(|v| *v == 0.0 || !v.is_finite()) {
        return Err(unsupported(node, "its divisor holds a zero or a non-finite value"));
    }
    let a = need(ctx, node, 0)?;
    let l = ctx.b.op("Div", &[&a.l, &node.input[1]], vec![]);
    let u = ctx.b.op("Div", &[&a.u, &node.input[1]], vec![]);
    let bx = ctx.hull(&[l, u]);
    let rho = ctx.margin.once();
    Ok(vec![Some(ctx.widen(bx, None, rho))])
}

/// Conv, Gemm and MatMul with a constant weight: `c' = W c + b`, `r' = |W| r`, widened
/// by `ρ (|W| (|c| + r) + |b|)`.
fn linear(ctx: &mut Ctx, node: &NodeProto) -> Result<Vec<Option<Box2>>, OnnxError> {
    let op = node.op_type();
    // Which input is the data, which the weight, and the fan-in.
    let (data, weight) = match op {
        "MatMul" if !ctx.is_active(node, 0) => (1, 0),
        _ => (0, 1),
    };
    if ctx.is_active(node, weight) {
        return Err(unsupported(
            node,
            "both of its operands depend on the input (only a constant weight is bounded)",
        ));
    }
    if op == "Gemm" && ctx.is_active(node, 2) {
        return Err(unsupported(node, "its C input depends on the input"));
    }
    if op == "Conv" && ctx.is_active(node, 2) {
        return Err(unsupported(node, "its bias depends on the input"));
    }
    let w = ctx.const_f32(node, weight, "weight")?;
    let ws = w.shape().to_vec();
    let fan_in = match op {
        "Conv" => ws.iter().skip(1).product::<usize>(),
        "Gemm" => {
            let trans_b = attr_int(node, "transB", 0)? != 0;
            *ws.get(usize::from(!trans_b)).unwrap_or(&0)
        }
        _ if weight == 1 => match ws.len() {
            0 => 1,
            1 => ws[0],
            r => ws[r - 2],
        },
        _ => *ws.last().unwrap_or(&1),
    };
    let x = need(ctx, node, data)?;
    let (c, r) = ctx.centre_radius(&x);
    let abs_w = ctx.abs_const(&w);
    let value = ctx.copy(node, |k, _| (k == data).then(|| c.clone()), "ctr");
    let value = value.into_iter().next().unwrap_or_default();
    // |c| + r, and the ops with |W| (no bias for the radius, |b| for the magnitude).
    let abs_c = ctx.b.op("Abs", &[&c], vec![]);
    let mag_in = ctx.b.op("Add", &[&abs_c, &r], vec![]);
    let (radius, magnitude) = match op {
        "Conv" => {
            let abs_b = match node.input.get(2).filter(|s| !s.is_empty()) {
                Some(_) => Some(ctx.const_f32(node, 2, "bias").map(|b| ctx.abs_const(&b))?),
                None => None,
            };
            let rad = conv_like(ctx, node, &r, &abs_w, None);
            let mag = conv_like(ctx, node, &mag_in, &abs_w, abs_b.as_deref());
            (rad, mag)
        }
        "Gemm" => {
            let alpha = attr_float(node, "alpha", 1.0)?.abs();
            let beta = attr_float(node, "beta", 1.0)?.abs();
            let zero = ctx.b.f32s("zero", &[1], &[0.0]);
            let abs_c_in = match node.input.get(2).filter(|s| !s.is_empty()) {
                Some(_) => ctx.const_f32(node, 2, "C").map(|b| ctx.abs_const(&b))?,
                None => zero.clone(),
            };
            let mut attrs: Vec<_> = node
                .attribute
                .iter()
                .filter(|a| a.name() == "transA" || a.name() == "transB")
                .cloned()
                .collect();
            attrs.push(float("alpha", alpha));
            let mut rad_attrs = attrs.clone();
            rad_attrs.push(float("beta", 0.0));
            let rad = ctx.b.op("Gemm", &[&r, &abs_w, &zero], rad_attrs);
            attrs.push(float("beta", beta));
            let mag = ctx.b.op("Gemm", &[&mag_in, &abs_w, &abs_c_in], attrs);
            (rad, mag)
        }
        _ => {
            let pair = |a: &str| {
                if data == 0 {
                    [a.to_string(), abs_w.clone()]
                } else {
                    [abs_w.clone(), a.to_string()]
                }
            };
            let [a0, a1] = pair(&r);
            let rad = ctx.b.op("MatMul", &[&a0, &a1], vec![]);
            let [m0, m1] = pair(&mag_in);
            let mag = ctx.b.op("MatMul", &[&m0, &m1], vec![]);
            (rad, mag)
        }
    };
    let l = ctx.b.op("Sub", &[&value, &radius], vec![]);
    let u = ctx.b.op("Add", &[&value, &radius], vec![]);
    let rho = ctx.margin.linear(fan_in);
    Ok(vec![Some(ctx.widen(Box2 { l, u }, Some(magnitude), rho))])
}

fn first(v: Vec<String>) -> String {
    v.into_iter().next().unwrap_or_default()
}

/// A copy of the Conv `node` on `data` with weight `w` and bias `b` (none: no bias).
fn conv_like(ctx: &mut Ctx, node: &NodeProto, data: &str, w: &str, b: Option<&str>) -> String {
    let mut n = node.clone();
    n.input = vec![data.to_string(), w.to_string()];
    n.input.extend(b.map(str::to_string));
    first(ctx.copy(&n, |_, _| None, "abs"))
}

/// BatchNormalization in inference form, an affine map per channel: the hull of the
/// map at both ends, widened by `16u (|s| (max(|l|, |u|) + |μ|) + |β|)`.
fn batch_norm(ctx: &mut Ctx, node: &NodeProto) -> Result<Vec<Option<Box2>>, OnnxError> {
    if attr_int(node, "training_mode", 0)? != 0 {
        return Err(unsupported(
            node,
            "training mode normalises by the batch's own statistics",
        ));
    }
    if (1..node.input.len()).any(|k| ctx.is_active(node, k)) {
        return Err(unsupported(node, "its parameters depend on the input"));
    }
    let x = need(ctx, node, 0)?;
    let mut single = node.clone();
    single.output.truncate(1);
    let at_l = first(ctx.copy(&single, |k, _| (k == 0).then(|| x.l.clone()), "bn"));
    let at_u = first(ctx.copy(&single, |k, _| (k == 0).then(|| x.u.clone()), "bn"));
    let bx = ctx.hull(&[at_l, at_u]);
    let scale = ctx.const_f32(node, 1, "scale")?;
    let bias = ctx.const_f32(node, 2, "bias")?;
    let mean = ctx.const_f32(node, 3, "mean")?;
    let abs_scale = ctx.abs_const(&scale);
    let abs_bias = ctx.abs_const(&bias);
    let neg_abs_mean: Vec<f32> = mean.iter().map(|m| -m.abs()).collect();
    let neg_abs_mean = ctx.b.f32s("neg_abs_mean", mean.shape(), &neg_abs_mean);
    let m_in = ctx.magnitude(&x);
    let magnitude = first(ctx.copy(
        &single,
        |k, _| match k {
            0 => Some(m_in.clone()),
            1 => Some(abs_scale.clone()),
            2 => Some(abs_bias.clone()),
            3 => Some(neg_abs_mean.clone()),
            _ => None,
        },
        "bnmag",
    ));
    let rho = 16.0 * ctx.margin.roundoff;
    Ok(vec![Some(ctx.widen(bx, Some(magnitude), rho))])
}

/// AveragePool, GlobalAveragePool, ReduceMean and ReduceSum: non-decreasing, each
/// result a sum of `k` terms with non-negative weights, widened by
/// `(γ_{k+1} + 4u)·op(max(|l|, |u|))`.
fn window_sum(ctx: &mut Ctx, node: &NodeProto) -> Result<Vec<Option<Box2>>, OnnxError> {
    let x = need(ctx, node, 0)?;
    let terms = match node.op_type() {
        "AveragePool" => attr_ints(node, "kernel_shape")?
            .ok_or_else(|| unsupported(node, "it has no kernel_shape"))?
            .iter()
            .map(|&k| k.max(1) as usize)
            .product::<usize>(),
        _ => {
            let input = node.input.first().cloned().unwrap_or_default();
            let output = node.output.first().cloned().unwrap_or_default();
            let a: usize = ctx.shape(node, &input)?.iter().product();
            let b: usize = ctx.shape(node, &output)?.iter().product();
            a.checked_div(b).unwrap_or(1).max(1)
        }
    };
    let bx = monotone(ctx, node).into_iter().next().unwrap_or(x.clone());
    let m_in = ctx.magnitude(&x);
    let magnitude = first(ctx.copy(node, |k, _| (k == 0).then(|| m_in.clone()), "winmag"));
    let rho = ctx.margin.gamma(terms + 1) + 4.0 * ctx.margin.roundoff;
    Ok(vec![Some(ctx.widen(bx, Some(magnitude), rho))])
}
