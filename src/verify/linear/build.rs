//! The layers of a chain from the ONNX nodes of an extractor.

use crate::onnx::grad::builder::{attr_float, attr_int, attr_ints, attr_string};
use crate::onnx::grad::unsupported;
use crate::onnx::graph::{node_label, Index};
use crate::onnx::proto::NodeProto;
use crate::onnx::tensor;
use crate::onnx::OnnxError;

use super::layers::Layer;
use super::window::{Conv, MaxPool, Window};

/// The int-list attribute `name` as `usize`s, or `default`.
fn usizes(node: &NodeProto, name: &str, default: Vec<usize>) -> Result<Vec<usize>, OnnxError> {
    match attr_ints(node, name)? {
        None => Ok(default),
        Some(v) => v
            .iter()
            .map(|&x| usize::try_from(x).map_err(|_| unsupported(node, format!("attribute '{name}' is negative"))))
            .collect(),
    }
}

fn constant_f64(index: &Index, node: &NodeProto, name: &str) -> Result<ndarray::ArrayD<f64>, OnnxError> {
    let t = index
        .constant(name)
        .ok_or_else(|| unsupported(node, format!("input '{name}' is not a constant")))?;
    tensor::to_f64(t)
}

/// A constant broadcast (numpy rules) against the batched `[1, …shape]`, flat.
fn broadcast(node: &NodeProto, c: &ndarray::ArrayD<f64>, shape: &[usize]) -> Result<Vec<f64>, OnnxError> {
    let mut full = vec![1usize];
    full.extend_from_slice(shape);
    c.broadcast(ndarray::IxDyn(&full))
        .map(|b| b.iter().copied().collect())
        .ok_or_else(|| {
            unsupported(
                node,
                format!("a constant of shape {:?} does not broadcast to {full:?}", c.shape()),
            )
        })
}

/// The windows of a Conv (`channels` outputs) or a pooling (as many as it reads) with
/// `kernel` over input `[C, H, W]`, from the node's strides, dilations and pads.
fn spatial(
    node: &NodeProto,
    shape: &[usize],
    kernel: [usize; 2],
    channels: Option<usize>,
) -> Result<Window, OnnxError> {
    let [_, h, w] = shape else {
        return Err(unsupported(node, format!("the input is {shape:?}, not [C, H, W]")));
    };
    let auto = attr_string(node, "auto_pad", "NOTSET")?;
    if auto != "NOTSET" && auto != "VALID" {
        return Err(unsupported(
            node,
            format!("auto_pad = {auto} has no linear-bounds rule"),
        ));
    }
    if attr_int(node, "ceil_mode", 0)? != 0 {
        return Err(unsupported(node, "ceil_mode = 1 has no linear-bounds rule"));
    }
    let strides = usizes(node, "strides", vec![1, 1])?;
    let dil = usizes(node, "dilations", vec![1, 1])?;
    let pads = if auto == "VALID" {
        vec![0; 4]
    } else {
        usizes(node, "pads", vec![0; 4])?
    };
    let (&[sh, sw], &[dh, dw], &[pt, pl, pb, pr]) = (strides.as_slice(), dil.as_slice(), pads.as_slice()) else {
        return Err(unsupported(
            node,
            "only 2-D strides, dilations and pads have a linear-bounds rule",
        ));
    };
    let oh = Conv::out_size(*h, kernel[0], sh, dh, pt + pb);
    let ow = Conv::out_size(*w, kernel[1], sw, dw, pl + pr);
    let (Some(oh), Some(ow)) = (oh, ow) else {
        return Err(unsupported(node, "the window does not fit the input"));
    };
    Ok(Window {
        input: [shape[0], *h, *w],
        output: [channels.unwrap_or(shape[0]), oh, ow],
        kernel,
        stride: [sh, sw],
        dilation: [dh, dw],
        pad: [pt, pl],
    })
}

/// The layer of `node`, reading `data` of shape `shape` (updated to its output's), or
/// `None` for an op that only relabels the shape.
pub(super) fn layer(
    node: &NodeProto,
    index: &Index,
    data: &str,
    shape: &mut Vec<usize>,
    roundoff: f64,
) -> Result<Option<Layer>, OnnxError> {
    let size: usize = shape.iter().product();
    let data_at = node.input.iter().position(|i| i == data).unwrap_or(0);
    let other = || {
        node.input
            .iter()
            .enumerate()
            .find(|(k, i)| *k != data_at && !i.is_empty())
            .map(|(_, i)| i.as_str())
    };
    Ok(Some(match node.op_type() {
        "Identity" | "Dropout" => return Ok(None),
        "Flatten" => {
            if attr_int(node, "axis", 1)? != 1 {
                return Err(unsupported(node, "only Flatten with axis = 1 has a linear-bounds rule"));
            }
            *shape = vec![size];
            return Ok(None);
        }
        "Reshape" => {
            let target = index
                .constant(other().unwrap_or(""))
                .ok_or_else(|| unsupported(node, "the target shape is not a constant"))
                .and_then(tensor::to_i64)?;
            let target: Vec<i64> = target.iter().copied().collect();
            let rest = target.get(1..).unwrap_or_default();
            let mut dims: Vec<usize> = Vec::with_capacity(rest.len());
            let mut free = None;
            for (k, &t) in rest.iter().enumerate() {
                match t {
                    -1 => free = Some(k),
                    0 => dims.push(shape.get(k).copied().unwrap_or(0)),
                    t => dims.push(usize::try_from(t).map_err(|_| unsupported(node, "a negative target dimension"))?),
                }
                if t == -1 {
                    dims.push(1);
                }
            }
            let known: usize = dims.iter().product();
            if let Some(k) = free {
                if known == 0 || size % known != 0 {
                    return Err(unsupported(node, format!("cannot reshape {shape:?} to {target:?}")));
                }
                dims[k] = size / known;
            }
            if dims.iter().product::<usize>() != size || target.first().is_some_and(|&b| b > 1) {
                return Err(unsupported(
                    node,
                    format!("cannot reshape {shape:?} to {target:?} with the batch first"),
                ));
            }
            *shape = dims;
            return Ok(None);
        }
        "Relu" => Layer::Relu,
        "Conv" => {
            let w = constant_f64(index, node, other().unwrap_or(""))?;
            let &[m, cg, kh, kw] = w.shape() else {
                return Err(unsupported(node, "only 2-D convolutions have a linear-bounds rule"));
            };
            let group = usize::try_from(attr_int(node, "group", 1)?).unwrap_or(0);
            if group == 0 || shape.len() != 3 || shape[0] != cg * group || m % group != 0 {
                return Err(unsupported(
                    node,
                    format!("weights {:?} do not fit input {shape:?}", w.shape()),
                ));
            }
            let window = spatial(node, shape, [kh, kw], Some(m))?;
            let b = match node.input.get(2).filter(|b| !b.is_empty()) {
                Some(b) => constant_f64(index, node, b)?.iter().copied().collect(),
                None => vec![0.0; m],
            };
            if b.len() != m {
                return Err(unsupported(node, "the bias does not match the output channels"));
            }
            *shape = window.output.to_vec();
            Layer::Conv(Conv::new(w.iter().copied().collect(), b, window, group))
        }
        "MaxPool" => {
            let k = usizes(node, "kernel_shape", vec![])?;
            let &[kh, kw] = k.as_slice() else {
                return Err(unsupported(node, "only 2-D max pooling has a linear-bounds rule"));
            };
            let window = spatial(node, shape, [kh, kw], None)?;
            *shape = window.output.to_vec();
            Layer::MaxPool(MaxPool { window })
        }
        "AveragePool" | "GlobalAveragePool" => {
            let [c, h, w] = shape.as_slice() else {
                return Err(unsupported(node, format!("the input is {shape:?}, not [C, H, W]")));
            };
            let (c, h, w) = (*c, *h, *w);
            let window = if node.op_type() == "GlobalAveragePool" {
                Window {
                    input: [c, h, w],
                    output: [c, 1, 1],
                    kernel: [h, w],
                    stride: [1, 1],
                    dilation: [1, 1],
                    pad: [0, 0],
                }
            } else {
                let k = usizes(node, "kernel_shape", vec![])?;
                let &[kh, kw] = k.as_slice() else {
                    return Err(unsupported(node, "only 2-D average pooling has a linear-bounds rule"));
                };
                let window = spatial(node, shape, [kh, kw], None)?;
                let pads = usizes(node, "pads", vec![0; 4])?;
                if window.dilation != [1, 1] || pads.iter().any(|&p| p != 0) {
                    return Err(unsupported(
                        node,
                        "average pooling with padding or dilation has no linear-bounds rule",
                    ));
                }
                window
            };
            let taps = window.kernel[0] * window.kernel[1];
            *shape = window.output.to_vec();
            Layer::Conv(Conv::new(vec![1.0 / taps as f64; c * taps], vec![0.0; c], window, c))
        }
        "Gemm" | "MatMul" => {
            let gemm = node.op_type() == "Gemm";
            if data_at != 0 || shape.len() != 1 || (gemm && attr_int(node, "transA", 0)? != 0) {
                return Err(unsupported(
                    node,
                    format!("only flat features times constant weights have a linear-bounds rule (input {shape:?})"),
                ));
            }
            let b = constant_f64(index, node, node.input.get(1).map(String::as_str).unwrap_or(""))?;
            let &[r, c] = b.shape() else {
                return Err(unsupported(node, "the weights are not a matrix"));
            };
            let trans = gemm && attr_int(node, "transB", 0)? != 0;
            let (inputs, outs) = if trans { (c, r) } else { (r, c) };
            if inputs != size {
                return Err(unsupported(
                    node,
                    format!("weights {:?} do not fit {size} inputs", b.shape()),
                ));
            }
            let alpha = if gemm {
                f64::from(attr_float(node, "alpha", 1.0)?)
            } else {
                1.0
            };
            let beta = if gemm {
                f64::from(attr_float(node, "beta", 1.0)?)
            } else {
                1.0
            };
            let mut w = vec![0.0; outs * inputs];
            for o in 0..outs {
                for i in 0..inputs {
                    w[o * inputs + i] = alpha * if trans { b[[o, i]] } else { b[[i, o]] };
                }
            }
            let bias = match node.input.get(2).filter(|c| gemm && !c.is_empty()) {
                Some(c) => broadcast(node, &constant_f64(index, node, c)?, &[outs])?
                    .into_iter()
                    .map(|v| beta * v)
                    .collect(),
                None => vec![0.0; outs],
            };
            *shape = vec![outs];
            Layer::Dense { w, b: bias, inputs }
        }
        "BatchNormalization" => {
            let get = |k: usize| -> Result<Vec<f64>, OnnxError> {
                Ok(
                    constant_f64(index, node, node.input.get(k).map(String::as_str).unwrap_or(""))?
                        .iter()
                        .copied()
                        .collect(),
                )
            };
            let (s, b, mu, var) = (get(1)?, get(2)?, get(3)?, get(4)?);
            let eps = f64::from(attr_float(node, "epsilon", 1e-5)?);
            let c = shape.first().copied().unwrap_or(0);
            if [&s, &b, &mu, &var].iter().any(|v| v.len() != c) {
                return Err(unsupported(node, format!("parameters do not match {c} channels")));
            }
            let per = size / c.max(1);
            let scale: Vec<f64> = (0..size).map(|i| s[i / per] / (var[i / per] + eps).sqrt()).collect();
            let shift: Vec<f64> = (0..size).map(|i| b[i / per] - mu[i / per] * scale[i]).collect();
            Layer::Elementwise {
                scale,
                shift,
                rounding: 16.0 * roundoff,
            }
        }
        op @ ("Add" | "Sub" | "Mul" | "Div") => {
            let c = broadcast(node, &constant_f64(index, node, other().unwrap_or(""))?, shape)?;
            let (scale, shift) = match (op, data_at) {
                ("Add", _) => (vec![1.0; size], c),
                ("Sub", 0) => (vec![1.0; size], c.iter().map(|v| -v).collect()),
                ("Sub", _) => (vec![-1.0; size], c),
                ("Mul", _) => (c, vec![0.0; size]),
                ("Div", 0) => (c.iter().map(|v| 1.0 / v).collect(), vec![0.0; size]),
                _ => {
                    return Err(unsupported(
                        node,
                        "a constant divided by the features has no linear-bounds rule",
                    ))
                }
            };
            Layer::Elementwise {
                scale,
                shift,
                rounding: 4.0 * roundoff,
            }
        }
        _ => {
            return Err(unsupported(
                node,
                format!("linear bounds have no rule for this op ({})", node_label(node)),
            ))
        }
    }))
}
