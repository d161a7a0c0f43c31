//! Vector–Jacobian products of the element-wise, linear and shape ops.
//!
//! Each rule receives `dy = ∂L/∂y` for the node's first output and returns
//! `∂L/∂xᵢ` for each input it can differentiate (`None` for the others: weights,
//! shapes, indices). Broadcasting is undone by summing over the broadcast axes.
//! Convolution and pooling live in `spatial`, the reductions in `reduce`, Resize in
//! `resize`, the other activations in `activation`, LayerNormalization in `norm`, and
//! Split, Slice and Gather in `select`.

use super::super::proto::NodeProto;
use super::super::OnnxError;
use super::builder::{attr_float, attr_int, attr_ints, attr_string, axis, batched, input, output};
use super::{activation, norm, reduce, resize, select, spatial, unsupported, Ctx, FWD};

/// `∂L/∂xᵢ` for each input of a node, `None` where it has none.
pub(super) type Grads = Vec<Option<String>>;

/// Sums `g` (shaped `out`) down to the shape of `input`, undoing broadcasting.
pub(super) fn unbroadcast(
    ctx: &mut Ctx,
    node: &NodeProto,
    g: String,
    input: &str,
    out: &[usize],
) -> Result<String, OnnxError> {
    let ins = ctx.shape(node, input)?;
    if ins == out {
        return Ok(g);
    }
    if ins.len() > out.len() {
        return Err(unsupported(
            node,
            format!("input '{input}' has a higher rank than the output"),
        ));
    }
    let r = out.len() - ins.len();
    let mut axes: Vec<i64> = (0..r as i64).collect();
    for (i, &d) in ins.iter().enumerate() {
        if d == 1 && out[i + r] != 1 {
            axes.push((i + r) as i64);
        }
    }
    let mut s = if axes.is_empty() {
        g
    } else {
        ctx.b.reduce_sum(&g, &axes, true)
    };
    if r > 0 {
        let target: Vec<i64> = ins.iter().map(|&d| d as i64).collect();
        s = ctx.b.reshape(&s, &target);
    }
    Ok(s)
}

/// `∂L/∂x` for every input of `node`, given `dys`, the gradient reaching each of its
/// outputs (`None` where none does). Split is the one op whose later outputs carry
/// gradient; for the others (MaxPool's indices, LayerNormalization's statistics) a
/// gradient there is refused.
pub fn backward(ctx: &mut Ctx, node: &NodeProto, dys: &[Option<String>]) -> Result<Grads, OnnxError> {
    if node.op_type() == "Split" {
        return select::split(ctx, node, dys);
    }
    if let Some(k) = (1..dys.len()).find(|&k| dys[k].is_some()) {
        return Err(unsupported(
            node,
            format!(
                "the gradient through its output {k} ('{}') is not supported",
                node.output[k].trim_start_matches(FWD)
            ),
        ));
    }
    let dy = dys
        .first()
        .cloned()
        .flatten()
        .ok_or_else(|| unsupported(node, "no gradient reached its output"))?;
    let x = input(node, 0);
    let y = output(node);
    let one = |g: String| Ok(vec![Some(g)]);
    match node.op_type() {
        "Identity" | "Dropout" => one(dy),
        "Neg" => one(ctx.b.op("Neg", &[&dy], vec![])),
        // d exp(x) = exp(x) dx: the output is the derivative (the kernel hybrid's RBF).
        "Exp" => one(ctx.b.mul(&dy, y)),
        "Relu" if ctx.opset() >= 9 => {
            // y > 0 exactly where x > 0, and sign(y) is then 1: one op for the mask.
            let mask = ctx.b.op("Sign", &[y], vec![]);
            one(ctx.b.mul(&dy, &mask))
        }
        "Relu" => {
            let zero = ctx.b.scalar(0.0);
            let pos = ctx.b.op("Greater", &[x, &zero], vec![]);
            let mask = ctx.b.cast_float(&pos);
            one(ctx.b.mul(&dy, &mask))
        }
        "LeakyRelu" => {
            let alpha = attr_float(node, "alpha", 0.01)?;
            let zero = ctx.b.scalar(0.0);
            let pos = ctx.b.op("Greater", &[x, &zero], vec![]);
            let mask = ctx.b.cast_float(&pos);
            let rise = ctx.b.scalar(1.0 - alpha);
            let scaled = ctx.b.mul(&mask, &rise);
            let a = ctx.b.scalar(alpha);
            let slope = ctx.b.op("Add", &[&scaled, &a], vec![]);
            one(ctx.b.mul(&dy, &slope))
        }
        "Sigmoid" => {
            let onec = ctx.b.scalar(1.0);
            let rest = ctx.b.op("Sub", &[&onec, y], vec![]);
            let d = ctx.b.mul(y, &rest);
            one(ctx.b.mul(&dy, &d))
        }
        "Tanh" => {
            let onec = ctx.b.scalar(1.0);
            let sq = ctx.b.mul(y, y);
            let d = ctx.b.op("Sub", &[&onec, &sq], vec![]);
            one(ctx.b.mul(&dy, &d))
        }
        "Clip" => clip(ctx, node, &dy),
        "Add" | "Sub" | "Mul" | "Div" => binary(ctx, node, dy),
        "Gemm" => gemm(ctx, node, &dy),
        "MatMul" => matmul(ctx, node, dy),
        "BatchNormalization" => batch_norm(ctx, node, &dy),
        "Flatten" | "Reshape" | "Squeeze" | "Unsqueeze" => {
            let target = batched(ctx, node, x)?;
            let _ = batched(ctx, node, y)?;
            one(ctx.b.reshape(&dy, &target))
        }
        "Transpose" => {
            let rank = ctx.shape(node, x)?.len();
            let perm = attr_ints(node, "perm")?.unwrap_or_else(|| (0..rank as i64).rev().collect());
            let mut inverse = vec![0i64; perm.len()];
            for (i, &p) in perm.iter().enumerate() {
                let p = axis(node, p, rank)?;
                inverse[p] = i as i64;
            }
            one(ctx
                .b
                .op("Transpose", &[&dy], vec![super::builder::ints("perm", &inverse)]))
        }
        "Pad" => pad(ctx, node, &dy),
        "Concat" => concat(ctx, node, &dy),
        "Softmax" | "LogSoftmax" => softmax(ctx, node, &dy),
        "Conv" => spatial::conv(ctx, node, &dy),
        "MaxPool" => spatial::max_pool(ctx, node, &dy),
        "AveragePool" => spatial::average_pool(ctx, node, &dy),
        "GlobalAveragePool" => spatial::global_average_pool(ctx, node, &dy),
        "GlobalMaxPool" => spatial::global_max_pool(ctx, node, &dy),
        "ReduceSum" => reduce::reduce_sum_or_mean(ctx, node, &dy, false),
        "ReduceMean" => reduce::reduce_sum_or_mean(ctx, node, &dy, true),
        "ReduceMax" => reduce::reduce_max(ctx, node, &dy),
        "HardSigmoid" | "HardSwish" | "Elu" | "Selu" | "Softplus" | "PRelu" | "Erf" | "Sqrt" | "Pow" => {
            activation::backward(ctx, node, &dy)
        }
        "LayerNormalization" => norm::layer_norm(ctx, node, &dy),
        "Resize" => resize::resize(ctx, node, &dy),
        "Slice" => select::slice(ctx, node, &dy),
        "Gather" => select::gather(ctx, node, &dy),
        "Expand" => {
            let out = ctx.shape(node, y)?;
            one(unbroadcast(ctx, node, dy, x, &out)?)
        }
        other => Err(unsupported(
            node,
            format!(
                "nnmend cannot differentiate the op '{other}' (supported: {})",
                SUPPORTED.join(", ")
            ),
        )),
    }
}

/// The ops the gradient transform differentiates.
pub const SUPPORTED: &[&str] = &[
    "Add",
    "AveragePool",
    "BatchNormalization",
    "Clip",
    "Concat",
    "Conv",
    "Div",
    "Dropout",
    "Elu",
    "Erf",
    "Exp",
    "Expand",
    "Flatten",
    "Gather",
    "Gemm",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "HardSigmoid",
    "HardSwish",
    "Identity",
    "LayerNormalization",
    "LeakyRelu",
    "LogSoftmax",
    "MatMul",
    "MaxPool",
    "Mul",
    "Neg",
    "PRelu",
    "Pad",
    "Pow",
    "ReduceMax",
    "ReduceMean",
    "ReduceSum",
    "Relu",
    "Reshape",
    "Resize",
    "Selu",
    "Sigmoid",
    "Slice",
    "Softmax",
    "Softplus",
    "Split",
    "Sqrt",
    "Squeeze",
    "Sub",
    "Tanh",
    "Transpose",
    "Unsqueeze",
];

fn clip(ctx: &mut Ctx, node: &NodeProto, dy: &str) -> Result<Grads, OnnxError> {
    let x = input(node, 0);
    let (lo, hi) = if ctx.opset() < 11 {
        let lo = attr_float(node, "min", f32::MIN)?;
        let hi = attr_float(node, "max", f32::MAX)?;
        (Some(ctx.b.scalar(lo)), Some(ctx.b.scalar(hi)))
    } else {
        let bound = |k: usize, what: &str| -> Result<Option<String>, OnnxError> {
            let name = input(node, k);
            if name.is_empty() {
                return Ok(None);
            }
            ctx.const_f32(node, name, what)?;
            Ok(Some(name.to_string()))
        };
        (bound(1, "min")?, bound(2, "max")?)
    };
    let mut g = dy.to_string();
    if let Some(lo) = lo {
        let below = ctx.b.op("Less", &[x, &lo], vec![]);
        let inside = ctx.b.op("Not", &[&below], vec![]);
        let m = ctx.b.cast_float(&inside);
        g = ctx.b.mul(&g, &m);
    }
    if let Some(hi) = hi {
        let above = ctx.b.op("Greater", &[x, &hi], vec![]);
        let inside = ctx.b.op("Not", &[&above], vec![]);
        let m = ctx.b.cast_float(&inside);
        g = ctx.b.mul(&g, &m);
    }
    let mut out = vec![Some(g)];
    out.resize(node.input.len(), None);
    Ok(out)
}

fn binary(ctx: &mut Ctx, node: &NodeProto, dy: String) -> Result<Grads, OnnxError> {
    let (a, b, y) = (input(node, 0), input(node, 1), output(node));
    let out = ctx.shape(node, y)?;
    let (ga, gb) = match node.op_type() {
        "Add" => (dy.clone(), dy),
        "Sub" => {
            let neg = ctx.b.op("Neg", &[&dy], vec![]);
            (dy, neg)
        }
        "Mul" => {
            let ga = ctx.b.mul(&dy, b);
            let gb = ctx.b.mul(&dy, a);
            (ga, gb)
        }
        _ => {
            let ga = ctx.b.op("Div", &[&dy, b], vec![]);
            let q = ctx.b.op("Div", &[y, b], vec![]);
            let t = ctx.b.mul(&dy, &q);
            let gb = ctx.b.op("Neg", &[&t], vec![]);
            (ga, gb)
        }
    };
    // Only tensors on the path need their gradient; the others are left alone.
    let ga = if !ctx.is_active(a) {
        None
    } else {
        Some(unbroadcast(ctx, node, ga, a, &out)?)
    };
    let gb = if !ctx.is_active(b) {
        None
    } else {
        Some(unbroadcast(ctx, node, gb, b, &out)?)
    };
    Ok(vec![ga, gb])
}

fn gemm(ctx: &mut Ctx, node: &NodeProto, dy: &str) -> Result<Grads, OnnxError> {
    let alpha = attr_float(node, "alpha", 1.0)?;
    let trans_a = attr_int(node, "transA", 0)? != 0;
    let trans_b = attr_int(node, "transB", 0)? != 0;
    let b = ctx.const_f32(node, input(node, 1), "matrix B")?;
    let b = b
        .into_dimensionality::<ndarray::Ix2>()
        .map_err(|_| unsupported(node, "matrix B is not two-dimensional"))?;
    // op(B) is B or Bᵀ; the input gradient needs op(B)ᵀ (transA = 0) or op(B) (transA = 1).
    let op_b = if trans_b { b.t().to_owned() } else { b };
    let mut g = if trans_a {
        let (r, c) = op_b.dim();
        let m = ctx.b.f32s("gemm_b", &[r, c], &op_b.iter().copied().collect::<Vec<_>>());
        let dyt = ctx
            .b
            .op("Transpose", &[dy], vec![super::builder::ints("perm", &[1, 0])]);
        ctx.b.op("MatMul", &[&m, &dyt], vec![])
    } else {
        let t = op_b.t();
        let (r, c) = t.dim();
        let m = ctx.b.f32s("gemm_bt", &[r, c], &t.iter().copied().collect::<Vec<_>>());
        ctx.b.op("MatMul", &[dy, &m], vec![])
    };
    if alpha != 1.0 {
        let s = ctx.b.scalar(alpha);
        g = ctx.b.mul(&g, &s);
    }
    Ok(vec![Some(g), None, None])
}

fn swap_last(ctx: &mut Ctx, t: &str, rank: usize) -> String {
    let mut perm: Vec<i64> = (0..rank as i64).collect();
    perm.swap(rank - 1, rank - 2);
    ctx.b.op("Transpose", &[t], vec![super::builder::ints("perm", &perm)])
}

fn matmul(ctx: &mut Ctx, node: &NodeProto, dy: String) -> Result<Grads, OnnxError> {
    let (a, b, y) = (input(node, 0), input(node, 1), output(node));
    let out = ctx.shape(node, y)?;
    let ra = ctx.shape(node, a)?.len();
    let rb = ctx.shape(node, b)?.len();
    if ra < 2 || rb < 2 {
        return Err(unsupported(
            node,
            "a MatMul with a one-dimensional operand cannot be differentiated",
        ));
    }
    let ga = if !ctx.is_active(a) {
        None
    } else {
        let bt = swap_last(ctx, b, rb);
        let g = ctx.b.op("MatMul", &[&dy, &bt], vec![]);
        let mut full = out.clone();
        let len = full.len();
        full[len - 1] = ctx.shape(node, a)?[ra - 1];
        Some(unbroadcast(ctx, node, g, a, &full)?)
    };
    let gb = if !ctx.is_active(b) {
        None
    } else {
        let at = swap_last(ctx, a, ra);
        let g = ctx.b.op("MatMul", &[&at, &dy], vec![]);
        let mut full = out.clone();
        let len = full.len();
        full[len - 2] = ctx.shape(node, b)?[rb - 2];
        Some(unbroadcast(ctx, node, g, b, &full)?)
    };
    Ok(vec![ga, gb])
}

fn batch_norm(ctx: &mut Ctx, node: &NodeProto, dy: &str) -> Result<Grads, OnnxError> {
    if attr_int(node, "training_mode", 0)? != 0 {
        return Err(unsupported(
            node,
            "training-mode batch normalisation cannot be differentiated",
        ));
    }
    let eps = attr_float(node, "epsilon", 1e-5)?;
    let scale = ctx.const_f32(node, input(node, 1), "scale")?;
    let var = ctx.const_f32(node, input(node, 4), "variance")?;
    if scale.len() != var.len() {
        return Err(unsupported(node, "scale and variance differ in length"));
    }
    let rank = ctx.shape(node, input(node, 0))?.len();
    let factor: Vec<f32> = scale
        .iter()
        .zip(var.iter())
        .map(|(s, v)| s / (v + eps).sqrt())
        .collect();
    let mut dims = vec![factor.len()];
    dims.extend(std::iter::repeat_n(1, rank.saturating_sub(2)));
    let f = ctx.b.f32s("bn_scale", &dims, &factor);
    let mut out = vec![Some(ctx.b.mul(dy, &f))];
    out.resize(node.input.len(), None);
    Ok(out)
}

fn pad(ctx: &mut Ctx, node: &NodeProto, dy: &str) -> Result<Grads, OnnxError> {
    let mode = attr_string(node, "mode", "constant")?;
    if mode != "constant" {
        return Err(unsupported(
            node,
            format!("only constant padding can be differentiated, not '{mode}'"),
        ));
    }
    let outs = ctx.shape(node, output(node))?;
    let rank = outs.len();
    let raw = if ctx.opset() < 11 {
        attr_ints(node, "pads")?
            .or(attr_ints(node, "paddings")?)
            .ok_or_else(|| unsupported(node, "no pads given"))?
    } else {
        ctx.const_i64(node, input(node, 1), "pads")?
    };
    let axes: Vec<usize> = match node.input.get(3).filter(|s| !s.is_empty()) {
        Some(a) => ctx
            .const_i64(node, a, "axes")?
            .into_iter()
            .map(|v| axis(node, v, rank))
            .collect::<Result<_, _>>()?,
        None => (0..rank).collect(),
    };
    if raw.len() != 2 * axes.len() {
        return Err(unsupported(node, format!("{} pads for {} axes", raw.len(), axes.len())));
    }
    let mut begin = vec![0i64; rank];
    let mut end = vec![0i64; rank];
    for (i, &a) in axes.iter().enumerate() {
        begin[a] = raw[i];
        end[a] = raw[i + axes.len()];
    }
    if rank == 0 {
        return Err(unsupported(node, "padding a scalar"));
    }
    if begin[0] != 0 || end[0] != 0 {
        return Err(unsupported(node, "padding the batch axis cannot be differentiated"));
    }
    // Positive pads added values: cut them off. Negative pads cropped: put zeros back.
    let mut g = dy.to_string();
    let cut: Vec<usize> = (1..rank).filter(|&a| begin[a] > 0 || end[a] > 0).collect();
    if !cut.is_empty() {
        let starts: Vec<i64> = cut.iter().map(|&a| begin[a].max(0)).collect();
        let ends: Vec<i64> = cut.iter().map(|&a| outs[a] as i64 - end[a].max(0)).collect();
        let axes: Vec<i64> = cut.iter().map(|&a| a as i64).collect();
        g = ctx.b.slice(&g, &starts, &ends, &axes);
    }
    if (0..rank).any(|a| begin[a] < 0 || end[a] < 0) {
        let mut pads: Vec<i64> = begin.iter().map(|&p| (-p).max(0)).collect();
        pads.extend(end.iter().map(|&p| (-p).max(0)));
        g = ctx.b.pad(&g, &pads, 0.0);
    }
    let mut out = vec![Some(g)];
    out.resize(node.input.len(), None);
    Ok(out)
}

fn concat(ctx: &mut Ctx, node: &NodeProto, dy: &str) -> Result<Grads, OnnxError> {
    let rank = ctx.shape(node, output(node))?.len();
    let a = axis(node, attr_int(node, "axis", i64::MIN)?, rank)
        .map_err(|_| unsupported(node, "missing or out-of-range 'axis'"))?;
    if a == 0 {
        return Err(unsupported(
            node,
            "concatenating along the batch axis cannot be differentiated",
        ));
    }
    let mut offset = 0i64;
    let mut out = Vec::with_capacity(node.input.len());
    for x in &node.input {
        let len = *ctx
            .shape(node, x)?
            .get(a)
            .ok_or_else(|| unsupported(node, format!("input '{x}' has no axis {a}")))? as i64;
        out.push(if !ctx.is_active(x) {
            None
        } else {
            Some(ctx.b.slice(dy, &[offset], &[offset + len], &[a as i64]))
        });
        offset += len;
    }
    Ok(out)
}

fn softmax(ctx: &mut Ctx, node: &NodeProto, dy: &str) -> Result<Grads, OnnxError> {
    let y = output(node);
    let rank = ctx.shape(node, y)?.len();
    let default = if ctx.opset() < 13 { 1 } else { -1 };
    let a = axis(node, attr_int(node, "axis", default)?, rank)?;
    if ctx.opset() < 13 && a != rank - 1 {
        return Err(unsupported(
            node,
            "before opset 13 this op flattens the axes after 'axis'; only the last axis is supported",
        ));
    }
    let g = if node.op_type() == "Softmax" {
        // dx = y ⊙ (dy − Σ dy ⊙ y)
        let p = ctx.b.mul(dy, y);
        let s = ctx.b.reduce_sum(&p, &[a as i64], true);
        let d = ctx.b.op("Sub", &[dy, &s], vec![]);
        ctx.b.mul(y, &d)
    } else {
        // dx = dy − exp(y) ⊙ Σ dy
        let s = ctx.b.reduce_sum(dy, &[a as i64], true);
        let p = ctx.b.op("Exp", &[y], vec![]);
        let t = ctx.b.mul(&p, &s);
        ctx.b.op("Sub", &[dy, &t], vec![])
    };
    Ok(vec![Some(g)])
}
