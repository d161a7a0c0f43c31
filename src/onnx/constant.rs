//! The value of every tensor that depends on no input, however the exporter spelled it.
//!
//! A weight is not always an initializer read directly. PyTorch writes a parameter
//! that several modules share (or that equals another one) once and feeds the others
//! through `Identity` nodes; older exporters write `Constant` nodes; some cast or
//! reshape a constant before using it; models of IR < 4 list every initializer as a
//! graph input too. [`fold`] follows all of these once, in topological order, so that
//! every question about a constant (a BatchNormalization's scale, a Reshape's target,
//! a Pad's widths, an exponent, the shape of a bias) has one answer.
//!
//! Folded: initializers, `Constant` (`value`, `value_float(s)`, `value_int(s)`), and
//! `Identity`, `Cast` (between FLOAT, DOUBLE, INT32 and INT64) and `Reshape` of
//! constants. Anything else, even of constants, is left to run.

use std::borrow::Cow;
use std::collections::HashMap;

use super::graph::int_attr;
use super::proto::{GraphProto, NodeProto, TensorProto};
use super::tensor::{self, DOUBLE, FLOAT, INT32, INT64};

/// Constant values by tensor name.
pub type Constants<'g> = HashMap<&'g str, Cow<'g, TensorProto>>;

/// The constant value of every tensor of `graph` that has one: its initializers, then
/// the outputs of the nodes at `order` (a topological order) that [`fold`] can compute
/// from constants alone.
pub fn fold<'g>(graph: &'g GraphProto, order: &[usize]) -> Constants<'g> {
    let mut values: Constants<'g> = graph.initializer.iter().map(|t| (t.name(), Cow::Borrowed(t))).collect();
    for &i in order {
        let node = &graph.node[i];
        let Some(out) = node.output.first().filter(|o| !o.is_empty()) else {
            continue;
        };
        if let Some(v) = fold_node(node, &values) {
            values.insert(out.as_str(), v);
        }
    }
    values
}

/// The value of `node`'s first output, when its inputs are constants it can fold.
fn fold_node<'g>(node: &'g NodeProto, values: &Constants<'g>) -> Option<Cow<'g, TensorProto>> {
    let arg = |k: usize| node.input.get(k).and_then(|s| values.get(s.as_str()));
    let out = node.output.first().map(String::as_str).unwrap_or_default();
    match node.op_type() {
        "Constant" => constant_node(node, out),
        "Identity" => arg(0).cloned(),
        "Cast" => {
            let to = i32::try_from(int_attr(node, "to")?).ok()?;
            let x = arg(0)?;
            if x.data_type() == to {
                return Some(x.clone());
            }
            cast(x, to, out).map(Cow::Owned)
        }
        "Reshape" => {
            let x = arg(0)?;
            let target = tensor::to_i64(arg(1)?).ok()?;
            let allow_zero = int_attr(node, "allowzero").unwrap_or(0) != 0;
            let dims = reshaped(&x.dims, target.as_slice()?, allow_zero)?;
            let mut t = x.clone().into_owned();
            t.name = Some(out.to_string());
            t.dims = dims;
            Some(Cow::Owned(t))
        }
        _ => None,
    }
}

/// A `Constant` node's value, from whichever of its attributes holds a number.
fn constant_node<'g>(node: &'g NodeProto, out: &str) -> Option<Cow<'g, TensorProto>> {
    let attr = node.attribute.first()?;
    match attr.name() {
        "value" => attr.t.as_ref().map(Cow::Borrowed),
        "value_float" => Some(Cow::Owned(tensor::from_f32(out, &[], &[attr.f?]))),
        "value_floats" => Some(Cow::Owned(tensor::from_f32(out, &[attr.floats.len()], &attr.floats))),
        "value_int" => Some(Cow::Owned(tensor::from_i64(out, &[], &[attr.i?]))),
        "value_ints" => Some(Cow::Owned(tensor::from_i64(out, &[attr.ints.len()], &attr.ints))),
        _ => None,
    }
}

/// `x` converted to the data type `to`; `None` for a type outside FLOAT, DOUBLE,
/// INT32 and INT64. Floats become integers by truncation toward zero, as numpy does.
fn cast(x: &TensorProto, to: i32, name: &str) -> Option<TensorProto> {
    let dims = tensor::shape(x).ok()?;
    let floats: Vec<f64> = match x.data_type() {
        FLOAT | DOUBLE => tensor::to_f64(x).ok()?.iter().copied().collect(),
        INT32 | INT64 => tensor::to_i64(x).ok()?.iter().map(|&v| v as f64).collect(),
        _ => return None,
    };
    let ints = || -> Option<Vec<i64>> {
        match x.data_type() {
            INT32 | INT64 => Some(tensor::to_i64(x).ok()?.iter().copied().collect()),
            _ => Some(floats.iter().map(|&v| v as i64).collect()),
        }
    };
    Some(match to {
        FLOAT => tensor::from_f32(name, &dims, &floats.iter().map(|&v| v as f32).collect::<Vec<_>>()),
        DOUBLE => tensor::from_f64(name, &dims, &floats),
        INT64 => tensor::from_i64(name, &dims, &ints()?),
        INT32 => tensor::from_i32(name, &dims, &ints()?.iter().map(|&v| v as i32).collect::<Vec<_>>()),
        _ => return None,
    })
}

/// The dims a Reshape to `target` gives a tensor of dims `dims` (0 copies the input's
/// dimension unless `allow_zero`, one −1 takes what is left); `None` when they do not
/// fit.
fn reshaped(dims: &[i64], target: &[i64], allow_zero: bool) -> Option<Vec<i64>> {
    // Dims come from the file: negative ones, or a count past i64, fold to nothing.
    let product = |v: &[i64]| {
        v.iter()
            .try_fold(1i64, |acc, &d| if d < 0 { None } else { acc.checked_mul(d) })
    };
    let count = product(dims)?;
    let mut out: Vec<i64> = target
        .iter()
        .enumerate()
        .map(|(i, &d)| match d {
            0 if !allow_zero => dims.get(i).copied(),
            d if d >= -1 => Some(d),
            _ => None,
        })
        .collect::<Option<_>>()?;
    let free: Vec<usize> = (0..out.len()).filter(|&i| out[i] == -1).collect();
    match free.as_slice() {
        [] => {}
        [k] => {
            out[*k] = 1;
            let known = product(&out)?;
            if known == 0 || count % known != 0 {
                return None;
            }
            out[*k] = count / known;
        }
        _ => return None,
    }
    (product(&out)? == count).then_some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::onnx::graph::Index;
    use crate::onnx::proto::AttributeProto;

    fn attr(name: &str) -> AttributeProto {
        AttributeProto {
            name: Some(name.into()),
            ..Default::default()
        }
    }

    fn attr_int(name: &str, v: i64) -> AttributeProto {
        AttributeProto {
            i: Some(v),
            ..attr(name)
        }
    }

    fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
        AttributeProto {
            ints: v.to_vec(),
            ..attr(name)
        }
    }

    fn attr_float(name: &str, v: f32) -> AttributeProto {
        AttributeProto {
            f: Some(v),
            ..attr(name)
        }
    }

    fn attr_tensor(name: &str, t: TensorProto) -> AttributeProto {
        AttributeProto {
            t: Some(t),
            ..attr(name)
        }
    }

    fn node(op: &str, inputs: &[&str], output: &str) -> NodeProto {
        NodeProto {
            op_type: Some(op.into()),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.to_string()],
            ..Default::default()
        }
    }

    #[test]
    fn reshape_targets_follow_the_onnx_rules() {
        assert_eq!(reshaped(&[2, 3, 4], &[0, -1], false), Some(vec![2, 12]));
        assert_eq!(reshaped(&[2, 3, 4], &[-1], false), Some(vec![24]));
        assert_eq!(reshaped(&[2, 3, 4], &[4, 0, 2], false), Some(vec![4, 3, 2]));
        assert_eq!(reshaped(&[0, 3], &[0, 3], true), Some(vec![0, 3]));
        assert_eq!(reshaped(&[2, 3, 4], &[5, -1], false), None);
        assert_eq!(reshaped(&[2, 3, 4], &[-1, -1], false), None);
        assert_eq!(reshaped(&[2, 3, 4], &[-2, 12], false), None);
        assert_eq!(reshaped(&[2, 3, 4], &[7], false), None);
        assert_eq!(reshaped(&[1 << 62, 4], &[-1], false), None);
        assert_eq!(reshaped(&[-2, 3], &[-1], false), None);
        assert_eq!(reshaped(&[2, 3], &[1 << 62, 1 << 62, -1], false), None);
    }

    #[test]
    fn constants_arrive_through_identity_constant_cast_and_reshape() {
        let w = tensor::from_f64("w", &[2, 2], &[1.5, -2.5, 3.0, 4.0]);
        let graph = GraphProto {
            initializer: vec![w, tensor::from_i64("target", &[1], &[-1])],
            node: vec![
                node("Identity", &["w"], "a"),
                node("Identity", &["a"], "b"),
                {
                    let mut n = node("Cast", &["b"], "c");
                    n.attribute.push(attr_int("to", i64::from(FLOAT)));
                    n
                },
                node("Reshape", &["c", "target"], "d"),
                {
                    let mut n = node("Cast", &["d"], "e");
                    n.attribute.push(attr_int("to", i64::from(INT32)));
                    n
                },
                {
                    let mut n = node("Constant", &[], "k");
                    n.attribute.push(attr_ints("value_ints", &[3, 4]));
                    n
                },
                {
                    let mut n = node("Constant", &[], "s");
                    n.attribute.push(attr_float("value_float", 0.5));
                    n
                },
                {
                    let mut n = node("Constant", &[], "t");
                    n.attribute
                        .push(attr_tensor("value", tensor::from_f32("", &[1], &[7.0])));
                    n
                },
                node("Relu", &["d"], "r"),
                node("Identity", &["x"], "data"),
            ],
            input: vec![crate::onnx::surgery::tensor_value_info("x", FLOAT, &[])],
            ..Default::default()
        };
        let index = Index::new(&graph).unwrap();
        let b = index.constant("b").unwrap();
        assert_eq!(b.data_type(), DOUBLE);
        assert_eq!(tensor::to_f64(b).unwrap().as_slice().unwrap(), &[1.5, -2.5, 3.0, 4.0]);
        let d = index.constant("d").unwrap();
        assert_eq!((d.data_type(), d.dims.as_slice()), (FLOAT, &[4][..]));
        assert_eq!(tensor::to_f32(d).unwrap().as_slice().unwrap(), &[1.5, -2.5, 3.0, 4.0]);
        let e = index.constant("e").unwrap();
        assert_eq!(e.data_type(), INT32);
        assert_eq!(tensor::to_i64(e).unwrap().as_slice().unwrap(), &[1, -2, 3, 4]);
        assert_eq!(
            tensor::to_i64(index.constant("k").unwrap())
                .unwrap()
                .as_slice()
                .unwrap(),
            &[3, 4]
        );
        assert_eq!(
            tensor::to_f32(index.constant("s").unwrap()).unwrap().shape(),
            &[] as &[usize]
        );
        assert_eq!(
            tensor::to_f32(index.constant("t").unwrap())
                .unwrap()
                .as_slice()
                .unwrap(),
            &[7.0]
        );
        // A node of constants nnmend does not fold, and anything fed by the input, is not one.
        assert!(index.constant("r").is_none());
        assert!(index.constant("data").is_none());
        assert!(index.constant("x").is_none());
    }
}
