//! Values computed from a tensor's dimensions, as exporters write them: PyTorch writes
//! `x.chunk(2, dim=1)` at a dynamic batch (ShuffleNet-v2's channel split) as a Slice
//! whose starts and ends are `Shape(x)[1] / 2`-style arithmetic. The gradient rules
//! (and the bound rules, through [`super::Forward::constants`]) need those as constants; the shapes of the tensors on the path are measured (on a
//! batch of two), so every such value that does not read the batch axis is a constant.

use std::collections::HashMap;

use super::super::graph::Index;
use super::super::proto::{GraphProto, NodeProto, TensorProto};
use super::super::tensor::{self, INT32, INT64};

/// One value of a folded tensor: the number, and whether it came from the batch axis
/// (measured as two, so not a constant of the model).
type Value = (i64, bool);

/// The values of the tensors computed from `shapes` by Shape, then Gather with
/// constant indices, Unsqueeze, Squeeze, Concat, Identity, Cast to an integer type and
/// integer Add, Sub, Mul and Div, as INT64 tensors. A value that reads the batch axis
/// is left out, and so is every tensor computed from one.
pub(super) fn fold(
    graph: &GraphProto,
    index: &Index,
    shapes: &HashMap<String, Vec<usize>>,
) -> HashMap<String, TensorProto> {
    let mut known: HashMap<&str, (Vec<usize>, Vec<Value>)> = HashMap::new();
    // Nodes in file order, repeated until nothing new folds (exporters write them in
    // order, so one pass usually does).
    loop {
        let mut changed = false;
        for node in &graph.node {
            let Some(out) = node.output.first().filter(|o| !o.is_empty()) else {
                continue;
            };
            if known.contains_key(out.as_str()) || index.constant(out).is_some() {
                continue;
            }
            if let Some(v) = fold_node(node, index, shapes, &known) {
                known.insert(out.as_str(), v);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    known
        .into_iter()
        .filter(|(_, (_, values))| values.iter().all(|&(_, batch)| !batch))
        .map(|(name, (dims, values))| {
            let plain: Vec<i64> = values.iter().map(|&(v, _)| v).collect();
            (name.to_string(), tensor::from_i64(name, &dims, &plain))
        })
        .collect()
}

/// The folded or constant integer value of `name`: its shape and values.
fn value(
    index: &Index,
    known: &HashMap<&str, (Vec<usize>, Vec<Value>)>,
    name: &str,
) -> Option<(Vec<usize>, Vec<Value>)> {
    if let Some(v) = known.get(name) {
        return Some(v.clone());
    }
    let t = index.constant(name)?;
    let a = tensor::to_i64(t).ok()?;
    Some((a.shape().to_vec(), a.iter().map(|&v| (v, false)).collect()))
}

fn fold_node(
    node: &NodeProto,
    index: &Index,
    shapes: &HashMap<String, Vec<usize>>,
    known: &HashMap<&str, (Vec<usize>, Vec<Value>)>,
) -> Option<(Vec<usize>, Vec<Value>)> {
    let arg = |k: usize| {
        node.input
            .get(k)
            .filter(|s| !s.is_empty())
            .and_then(|s| value(index, known, s))
    };
    let int_attr = |name: &str| {
        node.attribute
            .iter()
            .find(|a| a.name() == name)
            .map(|a| a.i.unwrap_or_default())
    };
    match node.op_type() {
        "Shape" => {
            // Opset 15's start and end attributes: not written by the exporters seen;
            // left unfolded rather than guessed.
            if int_attr("start").is_some() || int_attr("end").is_some() {
                return None;
            }
            let s = shapes.get(node.input.first()?)?;
            Some((
                vec![s.len()],
                s.iter().enumerate().map(|(i, &d)| (d as i64, i == 0)).collect(),
            ))
        }
        "Gather" => {
            let (dims, data) = arg(0)?;
            let (idims, indices) = arg(1)?;
            if dims.len() != 1 || int_attr("axis").unwrap_or(0) != 0 {
                return None;
            }
            let n = data.len() as i64;
            let picked = indices
                .iter()
                .map(|&(i, _)| {
                    let i = if i < 0 { i + n } else { i };
                    usize::try_from(i).ok().and_then(|i| data.get(i).copied())
                })
                .collect::<Option<Vec<_>>>()?;
            Some((idims, picked))
        }
        "Unsqueeze" | "Squeeze" => {
            let (dims, v) = arg(0)?;
            let count: usize = dims.iter().product();
            // Only the ranks the exporters use here: a scalar made [1], or [1] made a
            // scalar.
            match (node.op_type(), count) {
                ("Unsqueeze", 1) if dims.is_empty() => Some((vec![1], v)),
                ("Squeeze", 1) if dims == [1] => Some((vec![], v)),
                _ => None,
            }
        }
        "Identity" => arg(0),
        "Cast" => {
            let to = int_attr("to")?;
            (to == i64::from(INT64) || to == i64::from(INT32))
                .then(|| arg(0))
                .flatten()
        }
        "Concat" => {
            let mut values = Vec::new();
            for k in 0..node.input.len() {
                let (dims, v) = arg(k)?;
                if dims.len() != 1 {
                    return None;
                }
                values.extend(v);
            }
            Some((vec![values.len()], values))
        }
        "Add" | "Sub" | "Mul" | "Div" => {
            let (da, a) = arg(0)?;
            let (db, b) = arg(1)?;
            // Equal shapes, or one side a single value (broadcast).
            let (dims, n) = match (a.len(), b.len()) {
                (x, y) if x == y && da == db => (da.clone(), x),
                (1, y) if da.iter().product::<usize>() == 1 => (db.clone(), y),
                (x, 1) if db.iter().product::<usize>() == 1 => (da.clone(), x),
                _ => return None,
            };
            let at = |v: &[Value], i: usize| if v.len() == 1 { v[0] } else { v[i] };
            let op = node.op_type();
            let out = (0..n)
                .map(|i| {
                    let ((x, bx), (y, by)) = (at(&a, i), at(&b, i));
                    let r = match op {
                        "Add" => x.checked_add(y),
                        "Sub" => x.checked_sub(y),
                        "Mul" => x.checked_mul(y),
                        // ONNX's integer Div truncates towards zero, as Rust's does.
                        _ => x.checked_div(y),
                    }?;
                    Some((r, bx || by))
                })
                .collect::<Option<Vec<_>>>()?;
            Some((dims, out))
        }
        _ => None,
    }
}

impl super::Forward {
    /// The constants the rules may read, by tensor name: every input of a node on the
    /// path that is a constant however it arrives ([`Index::constant`]), and the
    /// integer values computed from the measured dimensions `shapes` of the path's
    /// tensors other than their batch ([`fold`]). `graph` is the forward model's.
    pub(crate) fn constants(
        &self,
        graph: &GraphProto,
        index: &Index,
        shapes: &HashMap<String, Vec<usize>>,
    ) -> HashMap<String, TensorProto> {
        let mut constants: HashMap<String, TensorProto> = HashMap::new();
        for &i in &self.path {
            for s in &graph.node[i].input {
                if let Some(t) = index.constant(s) {
                    constants.entry(s.clone()).or_insert_with(|| t.clone());
                }
            }
        }
        for (name, t) in fold(graph, index, shapes) {
            constants.entry(name).or_insert(t);
        }
        constants
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::super::proto::ValueInfoProto;
    use super::super::plain as node;
    use super::*;

    fn values(folded: &HashMap<String, TensorProto>, name: &str) -> Option<Vec<i64>> {
        folded
            .get(name)
            .map(|t| tensor::to_i64(t).unwrap().iter().copied().collect())
    }

    /// ShuffleNet's chunk bound `Shape(x)[1] / 2 · 1` folds; anything read from the
    /// batch axis (and what is computed from it) does not.
    #[test]
    fn channel_arithmetic_folds_and_the_batch_never_does() {
        let graph = GraphProto {
            input: vec![ValueInfoProto {
                name: Some("x".into()),
                ..Default::default()
            }],
            node: vec![
                node("Shape", &["x"], "shape"),
                node("Gather", &["shape", "one"], "channels"),
                node("Div", &["channels", "two"], "half"),
                node("Unsqueeze", &["half", "axes"], "half1"),
                node("Gather", &["shape", "zero"], "batch"),
                node("Mul", &["batch", "channels"], "mixed"),
                node("Gather", &["shape", "minus_one"], "width"),
                node("Concat", &["half1", "half1"], "both"),
            ],
            initializer: vec![
                tensor::from_i64("one", &[], &[1]),
                tensor::from_i64("zero", &[], &[0]),
                tensor::from_i64("minus_one", &[], &[-1]),
                tensor::from_i64("two", &[], &[2]),
                tensor::from_i64("axes", &[1], &[0]),
            ],
            ..Default::default()
        };
        let index = Index::new(&graph).unwrap();
        let shapes = HashMap::from([("x".to_string(), vec![2, 16, 5, 7])]);
        let folded = fold(&graph, &index, &shapes);
        assert_eq!(values(&folded, "channels"), Some(vec![16]));
        assert_eq!(values(&folded, "half"), Some(vec![8]));
        assert_eq!(values(&folded, "half1"), Some(vec![8]));
        assert_eq!(folded["half1"].dims, vec![1]);
        assert_eq!(values(&folded, "width"), Some(vec![7]));
        assert_eq!(values(&folded, "both"), Some(vec![8, 8]));
        for batch in ["shape", "batch", "mixed"] {
            assert!(!folded.contains_key(batch), "{batch} reads the batch");
        }
    }
}
