//! Finding where to cut a classifier into a feature extractor and a head.
//!
//! Following Guidotti & Leofante (2020), the cut is the output of the last pooling
//! layer: everything before it is a fixed convolutional feature extractor, everything
//! after it is the fully connected head that the linear SVM replaces. "Last" means last
//! in topological order among the nodes the classifier output depends on, and the cut
//! tensor must separate the input from the output (every path goes through it), so
//! that the extractor alone determines the head's input. Without any pooling node, the
//! cut falls back to the tensor entering the flatten→dense head, with a warning.
//!
//! Global pooling comes in several spellings: GlobalAveragePool and GlobalMaxPool, an
//! AveragePool or MaxPool whose window covers the map, and (torchvision's MNASNet and
//! ShuffleNet-v2, `x.mean([2, 3])`) a ReduceMean or ReduceMax over exactly the two
//! spatial axes of a rank-4 NCHW tensor. A reduction over the channels, or over one
//! spatial axis only, is not pooling. A flatten written as a Reshape whose target is
//! computed from the tensor's Shape (PyTorch's `x.view(x.size(0), -1)` with a dynamic
//! batch) is a flatten like any other: paths through Shape carry dimensions, not
//! values, so they neither break the separation nor belong to the head.

use std::collections::{HashMap, HashSet};

use super::graph::{dims, node_label, Dim, Index, DIMENSION_OPS};
use super::proto::{ModelProto, NodeProto};
use super::tensor::element_count;
use super::OnnxError;

/// Pooling ops whose output may be the cut.
pub const POOLING_OPS: &[&str] = &[
    "MaxPool",
    "AveragePool",
    "GlobalMaxPool",
    "GlobalAveragePool",
    "LpPool",
    "GlobalLpPool",
];

/// Reductions that pool globally when they reduce exactly the spatial axes of NCHW.
pub const REDUCE_POOLING_OPS: &[&str] = &["ReduceMean", "ReduceMax"];

/// Whether `node` pools: one of [`POOLING_OPS`], or one of [`REDUCE_POOLING_OPS`] over
/// exactly axes 2 and 3 (or −2 and −1) of a rank-4 input, with `keepdims` 0 or 1 and
/// `axes` an attribute or a constant input. `ranks` comes from [`Index::ranks`]; a
/// reduction whose input rank or axes cannot be told is not taken for pooling.
pub fn is_pooling(node: &NodeProto, index: &Index, ranks: &HashMap<&str, usize>) -> bool {
    let op = node.op_type();
    if POOLING_OPS.contains(&op) {
        return true;
    }
    if !REDUCE_POOLING_OPS.contains(&op) {
        return false;
    }
    let rank = node.input.first().and_then(|x| ranks.get(x.as_str()));
    let (Some(&4), Some(axes)) = (rank, index.axes(node)) else {
        return false;
    };
    let mut axes: Vec<i64> = axes.iter().map(|&a| if a < 0 { a + 4 } else { a }).collect();
    axes.sort_unstable();
    axes == [2, 3]
}

/// Ops that make a network convolutional.
pub const CONV_OPS: &[&str] = &["Conv", "ConvInteger", "QLinearConv", "ConvTranspose"];

/// How the cut was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CutRule {
    /// The output of the last pooling node (global pooling in any spelling, see
    /// [`is_pooling`]).
    LastPooling,
    /// No pooling node: the tensor entering the flatten→dense head.
    FlattenFallback,
    /// Chosen by the user with `--at`.
    User,
}

/// Where a classifier is cut, and what lies on either side.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Cut {
    /// The tensor at the cut; the extractor's features are its flattening.
    pub tensor: String,
    /// The node producing it.
    pub node: String,
    /// That node's op.
    pub op: String,
    /// How the cut was chosen.
    pub rule: CutRule,
    /// The single data input of the model.
    pub input: String,
    /// The classifier output (the graph's first output).
    pub output: String,
    /// The op of the node producing the output (to carry a trailing Softmax over).
    pub output_op: String,
    /// The head being replaced: (node name, op) in topological order.
    pub head: Vec<(String, String)>,
    /// Parameters (initializer elements) the head reads, directly or through Identity
    /// nodes; an initializer shared with the extractor counts too.
    pub head_params: usize,
    /// A warning for the user, when the cut is a fallback.
    pub warning: Option<String>,
}

impl Cut {
    /// Whether the cut is not the output of a pooling node.
    pub fn fallback(&self) -> bool {
        self.rule == CutRule::FlattenFallback
    }
}

/// Chooses the cut of `model`: the tensor `at` if given, else the last pooling output,
/// else the tensor entering the flatten→dense head.
pub fn find_cut(model: &ModelProto, at: Option<&str>) -> Result<Cut, OnnxError> {
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| OnnxError::Graph("the model holds no graph".into()))?;
    let index = Index::new(graph)?;
    let inputs = index.data_inputs();
    let input = match inputs.as_slice() {
        [one] => one.name().to_string(),
        [] => return Err(OnnxError::NoExtractor("the graph has no data input".into())),
        many => {
            let names: Vec<&str> = many.iter().map(|v| v.name()).collect();
            return Err(OnnxError::NoExtractor(format!(
                "the graph has {} data inputs ({}); nnmend repairs image classifiers with a single input",
                names.len(),
                names.join(", ")
            )));
        }
    };
    let out_vi = graph
        .output
        .first()
        .ok_or_else(|| OnnxError::NoExtractor("the graph has no output".into()))?;
    let output = out_vi.name().to_string();
    if let Some(d) = dims(out_vi) {
        if d.len() != 2 || matches!(d[1], Dim::Fixed(k) if k < 2) {
            let shown: Vec<String> = d.iter().map(Dim::to_string).collect();
            return Err(OnnxError::NoExtractor(format!(
                "output '{output}' has shape [{}], but a classifier outputs [batch, classes]",
                shown.join(", ")
            )));
        }
    }
    let Some(out_node) = index.producer(&output) else {
        return Err(OnnxError::NoExtractor(format!(
            "output '{output}' is not computed by any node"
        )));
    };
    let on_path = index.ancestors(&[&output]);
    let ranks = index.ranks();
    let nodes = &graph.node;
    let has_conv_before = |tensor: &str| {
        index
            .ancestors(&[tensor])
            .iter()
            .any(|&i| CONV_OPS.contains(&nodes[i].op_type()))
    };
    let separates = |tensor: &str| tensor != input && !index.reaches_avoiding(&input, &output, tensor);

    if !on_path.iter().any(|&i| CONV_OPS.contains(&nodes[i].op_type())) {
        return Err(OnnxError::NoExtractor(format!(
            "no convolution on the path from input '{input}' to output '{output}': this looks like an MLP, \
             and nnmend needs a convolutional feature extractor to cut"
        )));
    }

    let (tensor, rule, warning) = if let Some(at) = at {
        if !index.has_tensor(at) {
            let hint = index
                .similar(at)
                .map(|s| format!("; did you mean '{s}'?"))
                .unwrap_or_default();
            return Err(OnnxError::UnknownTensor {
                name: at.to_string(),
                hint,
            });
        }
        if at == output {
            return Err(OnnxError::NoExtractor(format!(
                "'{at}' is the classifier output itself; cut before the head"
            )));
        }
        if !separates(at) {
            return Err(OnnxError::NoExtractor(format!(
                "tensor '{at}' does not separate input '{input}' from output '{output}': some path avoids it, \
                 so features taken there would not determine the output"
            )));
        }
        (at.to_string(), CutRule::User, None)
    } else if let Some(t) = on_path
        .iter()
        .rev()
        .map(|&i| &nodes[i])
        .filter(|n| is_pooling(n, &index, &ranks))
        .filter_map(|n| n.output.first())
        .find(|t| separates(t) && has_conv_before(t))
    {
        (t.clone(), CutRule::LastPooling, None)
    } else {
        let last_conv = on_path
            .iter()
            .rposition(|&i| CONV_OPS.contains(&nodes[i].op_type()))
            .unwrap_or(0);
        let entering_head = on_path[last_conv..]
            .iter()
            .map(|&i| &nodes[i])
            .filter(|n| matches!(n.op_type(), "Flatten" | "Reshape"))
            .filter_map(|n| n.input.first())
            .find(|t| separates(t) && has_conv_before(t));
        match entering_head {
            Some(t) => {
                let warning = format!(
                    "no pooling layer separates the input from the output; cutting at '{t}', the tensor entering \
                     the flatten→dense head (use --at to choose another tensor)"
                );
                (t.clone(), CutRule::FlattenFallback, Some(warning))
            }
            None => {
                return Err(OnnxError::NoExtractor(format!(
                    "found neither a pooling layer nor a flatten→dense head between input '{input}' and output \
                     '{output}'; name the cut tensor with --at"
                )))
            }
        }
    };

    let (node, op) = match index.producer(&tensor) {
        Some(p) => (node_label(&nodes[p]), nodes[p].op_type().to_string()),
        None => (String::new(), String::new()),
    };
    // The head is what computes on the cut's values; the shape arithmetic beside it
    // (a dynamic flatten's Shape → Gather → Concat, its constants) is not.
    let after = index.downstream(&tensor, None);
    let head_idx: Vec<usize> = on_path
        .iter()
        .copied()
        .filter(|&i| {
            let n = &nodes[i];
            !DIMENSION_OPS.contains(&n.op_type()) && n.input.iter().any(|t| after.contains(t.as_str()))
        })
        .collect();
    let mut seen = HashSet::new();
    let mut head_params = 0;
    for &i in &head_idx {
        for name in &nodes[i].input {
            if let Some(t) = index.source_initializer(name) {
                if seen.insert(t.name()) {
                    head_params += element_count(t)?;
                }
            }
        }
    }
    Ok(Cut {
        tensor,
        node,
        op,
        rule,
        input,
        output,
        output_op: nodes[out_node].op_type().to_string(),
        head: head_idx
            .iter()
            .map(|&i| (node_label(&nodes[i]), nodes[i].op_type().to_string()))
            .collect(),
        head_params,
        warning,
    })
}
