//! Finding where to cut a classifier into a feature extractor and a head.
//!
//! Following Guidotti & Leofante (2020), the cut is the output of the last pooling
//! layer: everything before it is a fixed convolutional feature extractor, everything
//! after it is the fully connected head that the linear SVM replaces. "Last" means last
//! in topological order among the nodes the classifier output depends on, and the cut
//! tensor must separate the input from the output (every path goes through it), so
//! that the extractor alone determines the head's input.
//!
//! Global pooling comes in several spellings: GlobalAveragePool and GlobalMaxPool, an
//! AveragePool or MaxPool whose window covers the map, and (torchvision's MNASNet and
//! ShuffleNet-v2, `x.mean([2, 3])`) a ReduceMean or ReduceMax over exactly the two
//! spatial axes of a rank-4 NCHW tensor. A reduction over the channels, or over one
//! spatial axis only, is not pooling. A flatten written as a Reshape whose target is
//! computed from the tensor's Shape (PyTorch's `x.view(x.size(0), -1)` with a dynamic
//! batch) is a flatten like any other: paths through Shape carry dimensions, not
//! values, so they neither break the separation nor belong to the head.
//!
//! A cut must leave the head something to replace: a node with weights (a
//! convolution, a Gemm, or a MatMul with a constant operand; see [`weighted_input`]).
//! The rules, in order ([`CutRule`]):
//! 1. **Last pooling**, when a node with weights follows it.
//! 2. **Entering the last weighted node**, when none does. SqueezeNet ends in
//!    Conv1x1 → ReLU → global average pooling, so its pooled tensor already holds the
//!    class scores. The cut moves, with a warning, to the tensor entering the last node
//!    with weights (the classifier's Conv), and the features are that whole C×H×W map.
//!    That is the sensible place: a linear head on the map can express every
//!    Conv1x1-then-average head (the Conv's weights repeated at each position, divided
//!    by H·W) and more, so the SVM loses nothing the original head's linear part had;
//!    only the ReLU between the Conv and the average, which no linear head reproduces,
//!    is replaced. The price is a larger D.
//! 3. **Flatten→dense head**, without any pooling: the tensor entering a Flatten, or a
//!    Reshape to rank 2, whose output a Gemm or a MatMul with a constant operand reads
//!    (through Identity, Dropout or Cast at most), with a warning.
//! 4. Otherwise the model is refused, with a message that names `--at`: a transformer
//!    (ViT) pools nothing, and its patch embedding is reshaped into tokens, not
//!    flattened into a dense layer, so no rule can tell where its features are.
//!
//! `--at TENSOR` overrides all of them.

use std::collections::{HashMap, HashSet};

use super::graph::{dims, graph_of, node_label, Dim, Index, DIMENSION_OPS};
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

/// Dense ops: a flatten→dense head ends in one of them.
pub const DENSE_OPS: &[&str] = &["Gemm", "MatMul", "MatMulInteger", "QLinearMatMul"];

/// The data input of `node` when it is a node with weights, `None` otherwise. A node
/// has weights when it is a convolution ([`CONV_OPS`]) whose kernel is a constant, or a
/// dense op ([`DENSE_OPS`]) with a constant operand; its data input is then the other
/// operand. Constants are recognised however they arrive ([`Index::constant`]).
pub fn weighted_input<'n>(node: &'n NodeProto, index: &Index) -> Option<&'n str> {
    let constant = |k: usize| {
        node.input
            .get(k)
            .is_some_and(|t| !t.is_empty() && index.constant(t).is_some())
    };
    let input = |k: usize| node.input.get(k).map(String::as_str).filter(|t| !t.is_empty());
    // (data, weights) positions: QLinear ops put scales and zero points between them.
    let (a, b) = match node.op_type() {
        "Conv" | "ConvTranspose" | "ConvInteger" => return input(0).filter(|_| constant(1)),
        "QLinearConv" => return input(0).filter(|_| constant(3)),
        "Gemm" | "MatMul" | "MatMulInteger" => (0, 1),
        "QLinearMatMul" => (0, 3),
        _ => return None,
    };
    match (constant(a), constant(b)) {
        (false, true) => input(a),
        (true, false) => input(b),
        _ => None,
    }
}

/// How the cut was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CutRule {
    /// The output of the last pooling node (global pooling in any spelling, see
    /// [`is_pooling`]), when a node with weights follows it.
    LastPooling,
    /// No node with weights follows the last pooling node: the tensor entering the
    /// last node with weights (SqueezeNet's classifier Conv).
    EnteringWeightedNode,
    /// No pooling node: the tensor entering the flatten→dense head.
    FlattenFallback,
    /// Chosen by the user with `--at`.
    User,
}

impl CutRule {
    /// The rule in words, as `inspect` prints it.
    pub fn describe(self) -> &'static str {
        match self {
            CutRule::LastPooling => "last pooling",
            CutRule::EnteringWeightedNode => "entering the last weighted node",
            CutRule::FlattenFallback => "flatten→dense head",
            CutRule::User => "--at given",
        }
    }
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
    /// Whether the default rule fell back from the last pooling output: the cut is
    /// the tensor entering the last weighted node or the flatten→dense head.
    pub fn fallback(&self) -> bool {
        matches!(self.rule, CutRule::FlattenFallback | CutRule::EnteringWeightedNode)
    }
}

/// What the rules ask of one graph.
struct Finder<'a, 'g> {
    index: &'a Index<'g>,
    nodes: &'g [NodeProto],
    /// The nodes the output depends on, in topological order.
    on_path: Vec<usize>,
    ranks: HashMap<&'g str, usize>,
    input: &'a str,
    output: &'a str,
}

impl Finder<'_, '_> {
    /// Whether every path from the input to the output goes through `tensor`.
    fn separates(&self, tensor: &str) -> bool {
        tensor != self.input && !self.index.reaches_avoiding(self.input, self.output, tensor)
    }

    /// Whether a convolution computes part of `tensor`.
    fn has_conv_before(&self, tensor: &str) -> bool {
        self.index
            .ancestors(&[tensor])
            .iter()
            .any(|&i| CONV_OPS.contains(&self.nodes[i].op_type()))
    }

    /// Whether `tensor` can be the cut: it separates, and a convolution computes it.
    fn can_cut(&self, tensor: &str) -> bool {
        self.separates(tensor) && self.has_conv_before(tensor)
    }

    /// The head past `tensor`: the nodes on the path that compute on its values. The
    /// shape arithmetic beside it (a dynamic flatten's Shape → Gather → Concat, its
    /// constants) is not part of it.
    fn head(&self, tensor: &str) -> Vec<usize> {
        let after = self.index.downstream(tensor, None);
        self.on_path
            .iter()
            .copied()
            .filter(|&i| {
                let n = &self.nodes[i];
                !DIMENSION_OPS.contains(&n.op_type()) && n.input.iter().any(|t| after.contains(t.as_str()))
            })
            .collect()
    }

    /// The output of the last pooling node that can be the cut, with that node.
    fn last_pooling(&self) -> Option<(&str, &NodeProto)> {
        self.on_path
            .iter()
            .rev()
            .map(|&i| &self.nodes[i])
            .filter(|n| is_pooling(n, self.index, &self.ranks))
            .filter_map(|n| Some((n.output.first()?.as_str(), n)))
            .find(|(t, _)| self.can_cut(t))
    }

    /// The tensor entering the last node with weights that can be the cut, with that node.
    fn entering_last_weighted(&self) -> Option<(&str, &NodeProto)> {
        self.on_path
            .iter()
            .rev()
            .map(|&i| &self.nodes[i])
            .filter_map(|n| Some((weighted_input(n, self.index)?, n)))
            .find(|(t, _)| self.can_cut(t))
    }

    /// Whether the head past `tensor` holds a node with weights.
    fn head_has_weights(&self, tensor: &str) -> bool {
        self.head(tensor)
            .iter()
            .any(|&i| weighted_input(&self.nodes[i], self.index).is_some())
    }

    /// Whether `node` flattens into a dense layer: a Flatten, or a Reshape to rank 2
    /// (or of a rank that cannot be told), whose output a dense op reads as its data
    /// input, through Identity, Dropout or Cast at most.
    fn flattens_into_dense(&self, node: &NodeProto) -> bool {
        let Some(out) = node.output.first() else {
            return false;
        };
        match node.op_type() {
            "Flatten" => {}
            "Reshape" if self.ranks.get(out.as_str()).is_none_or(|&r| r == 2) => {}
            _ => return false,
        }
        let mut frontier = vec![out.as_str()];
        while let Some(t) = frontier.pop() {
            for &c in self.index.consumers(t) {
                let consumer = &self.nodes[c];
                if DENSE_OPS.contains(&consumer.op_type()) && weighted_input(consumer, self.index) == Some(t) {
                    return true;
                }
                if matches!(consumer.op_type(), "Identity" | "Dropout" | "Cast") {
                    frontier.extend(consumer.output.first().map(String::as_str));
                }
            }
        }
        false
    }

    /// The tensor entering the flatten→dense head, after the last convolution.
    fn entering_flatten(&self) -> Option<&str> {
        let last_conv = self
            .on_path
            .iter()
            .rposition(|&i| CONV_OPS.contains(&self.nodes[i].op_type()))
            .unwrap_or(0);
        self.on_path[last_conv..]
            .iter()
            .map(|&i| &self.nodes[i])
            .filter(|n| self.flattens_into_dense(n))
            .filter_map(|n| n.input.first().map(String::as_str))
            .find(|t| self.can_cut(t))
    }

    /// The default rules, in order (see the module docs): the cut tensor, the rule
    /// that chose it, and the warning that comes with a fallback.
    fn choose(&self) -> Result<(String, CutRule, Option<String>), OnnxError> {
        if let Some((pooled, pool)) = self.last_pooling() {
            if self.head_has_weights(pooled) {
                return Ok((pooled.to_string(), CutRule::LastPooling, None));
            }
            let pool = format!("'{}' ({})", node_label(pool), pool.op_type());
            return match self.entering_last_weighted() {
                Some((t, node)) => {
                    let warning = format!(
                        "no node with weights follows the last pooling layer {pool}, so a head cut there would \
                         have no parameters; cutting at '{t}', the tensor entering '{}' ({}), the last node with \
                         weights: the features are that whole tensor, flattened",
                        node_label(node),
                        node.op_type()
                    );
                    Ok((t.to_string(), CutRule::EnteringWeightedNode, Some(warning)))
                }
                None => Err(OnnxError::NoAutomaticCut(format!(
                    "no node with weights follows the last pooling layer {pool}, and no tensor entering a node \
                     with weights separates input '{}' from output '{}' after a convolution",
                    self.input, self.output
                ))),
            };
        }
        match self.entering_flatten() {
            Some(t) => {
                let warning = format!(
                    "no pooling layer separates the input from the output; cutting at '{t}', the tensor entering \
                     the flatten→dense head"
                );
                Ok((t.to_string(), CutRule::FlattenFallback, Some(warning)))
            }
            None => Err(OnnxError::NoAutomaticCut(format!(
                "found neither a pooling layer nor a flatten→dense head between input '{}' and output '{}' (a \
                 transformer's tokens, say, are neither pooled nor flattened into a dense layer)",
                self.input, self.output
            ))),
        }
    }
}

/// Chooses the cut of `model`: the tensor `at` if given, else by the rules of the
/// module docs (the last pooling output, the tensor entering the last weighted node,
/// the tensor entering the flatten→dense head).
pub fn find_cut(model: &ModelProto, at: Option<&str>) -> Result<Cut, OnnxError> {
    let graph = graph_of(model)?;
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
    let nodes = &graph.node;
    let finder = Finder {
        index: &index,
        nodes,
        on_path: index.ancestors(&[&output]),
        ranks: index.ranks(),
        input: &input,
        output: &output,
    };

    if !finder.on_path.iter().any(|&i| CONV_OPS.contains(&nodes[i].op_type())) {
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
        if !finder.separates(at) {
            return Err(OnnxError::NoExtractor(format!(
                "tensor '{at}' does not separate input '{input}' from output '{output}': some path avoids it, \
                 so features taken there would not determine the output"
            )));
        }
        (at.to_string(), CutRule::User, None)
    } else {
        finder.choose()?
    };

    let (node, op) = match index.producer(&tensor) {
        Some(p) => (node_label(&nodes[p]), nodes[p].op_type().to_string()),
        None => (String::new(), String::new()),
    };
    let head_idx = finder.head(&tensor);
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
