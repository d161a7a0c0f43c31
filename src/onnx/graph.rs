//! Graph queries: who produces and consumes each tensor, a topological order,
//! which inputs are data and which are constants, and the dimensions of a value.
//!
//! Exporters do not all write nodes in topological order (keras2onnx does not), so
//! every walk here goes through [`Index::order`], never through `graph.node` as stored.
//! Initializers that are also listed as graph inputs are constants (IR < 4 required
//! listing them), not inputs to feed. Constants are read through [`Index::constant`],
//! which also follows the `Identity`, `Constant`, `Cast` and `Reshape` nodes exporters
//! write around them (see [`super::constant`]).

use std::cell::OnceCell;
use std::collections::{HashMap, HashSet, VecDeque};

use super::constant::{self, Constants};
use super::proto::{
    tensor_shape_proto::dimension, type_proto, GraphProto, ModelProto, NodeProto, TensorProto, ValueInfoProto,
};
use super::OnnxError;

/// One dimension of a value's declared shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    /// A fixed size.
    Fixed(i64),
    /// A named symbolic size (`dim_param`), such as `batch_size`.
    Param(String),
    /// No size given.
    Unknown,
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::Fixed(v) => write!(f, "{v}"),
            Dim::Param(p) => write!(f, "{p}"),
            Dim::Unknown => write!(f, "?"),
        }
    }
}

/// The declared shape of a value, if it has one.
pub fn dims(vi: &ValueInfoProto) -> Option<Vec<Dim>> {
    let Some(type_proto::Value::TensorType(t)) = vi.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
        return None;
    };
    let shape = t.shape.as_ref()?;
    Some(
        shape
            .dim
            .iter()
            .map(|d| match &d.value {
                Some(dimension::Value::DimValue(v)) => Dim::Fixed(*v),
                Some(dimension::Value::DimParam(p)) => Dim::Param(p.clone()),
                None => Dim::Unknown,
            })
            .collect(),
    )
}

/// The declared element type of a value (an ONNX `DataType` code), if any.
pub fn elem_type(vi: &ValueInfoProto) -> Option<i32> {
    match vi.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(type_proto::Value::TensorType(t)) => t.elem_type,
        _ => None,
    }
}

/// The tensors a node reads, including names its subgraphs (If, Loop, Scan bodies)
/// take from the enclosing scope, since those order the node just like real inputs.
pub fn node_inputs(node: &NodeProto) -> Vec<&str> {
    let mut names: Vec<&str> = node
        .input
        .iter()
        .map(String::as_str)
        .filter(|s| !s.is_empty())
        .collect();
    for attr in &node.attribute {
        for g in attr.g.iter().chain(attr.graphs.iter()) {
            names.extend(free_names(g));
        }
    }
    names
}

/// Names a subgraph reads but neither defines nor receives as input.
fn free_names(g: &GraphProto) -> Vec<&str> {
    let mut defined: HashSet<&str> = g.input.iter().map(|v| v.name()).collect();
    defined.extend(g.initializer.iter().map(|t| t.name()));
    for n in &g.node {
        defined.extend(n.output.iter().map(String::as_str));
    }
    let mut free = Vec::new();
    for n in &g.node {
        for name in node_inputs(n) {
            if !defined.contains(name) {
                free.push(name);
            }
        }
    }
    free
}

/// The graph of `model`, or an error when it holds none.
pub fn graph_of(model: &ModelProto) -> Result<&GraphProto, OnnxError> {
    model
        .graph
        .as_ref()
        .ok_or_else(|| OnnxError::Graph("the model holds no graph".into()))
}

/// The graph of `model`, mutably, or an error when it holds none.
pub fn graph_of_mut(model: &mut ModelProto) -> Result<&mut GraphProto, OnnxError> {
    model
        .graph
        .as_mut()
        .ok_or_else(|| OnnxError::Graph("the model holds no graph".into()))
}

/// Lookup tables over one graph, built once.
#[derive(Debug)]
pub struct Index<'g> {
    /// The graph indexed.
    pub graph: &'g GraphProto,
    /// Node positions (in `graph.node`) in a topological order.
    pub order: Vec<usize>,
    producer: HashMap<&'g str, usize>,
    consumers: HashMap<&'g str, Vec<usize>>,
    initializers: HashMap<&'g str, &'g TensorProto>,
    /// Folded on first use: most callers never ask for a constant.
    constants: OnceCell<Constants<'g>>,
}

impl<'g> Index<'g> {
    /// Indexes `graph`, sorting its nodes topologically. Fails on a cycle, on a tensor
    /// produced twice, or on an input that nothing provides, naming the node.
    pub fn new(graph: &'g GraphProto) -> Result<Self, OnnxError> {
        let mut initializers: HashMap<&str, &TensorProto> = HashMap::new();
        for t in &graph.initializer {
            initializers.insert(t.name(), t);
        }
        let mut producer: HashMap<&str, usize> = HashMap::new();
        for (i, node) in graph.node.iter().enumerate() {
            for out in node.output.iter().filter(|o| !o.is_empty()) {
                if let Some(prev) = producer.insert(out.as_str(), i) {
                    return Err(OnnxError::Graph(format!(
                        "tensor '{out}' is produced by both node '{}' and node '{}'",
                        node_label(&graph.node[prev]),
                        node_label(node)
                    )));
                }
            }
        }
        let mut available: HashSet<&str> = graph.input.iter().map(|v| v.name()).collect();
        available.extend(initializers.keys().copied());
        available.extend(
            graph
                .sparse_initializer
                .iter()
                .filter_map(|s| s.values.as_ref())
                .map(|t| t.name()),
        );

        let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut pending = vec![0usize; graph.node.len()];
        for (i, node) in graph.node.iter().enumerate() {
            for name in node_inputs(node) {
                consumers.entry(name).or_default().push(i);
                if producer.contains_key(name) {
                    pending[i] += 1;
                } else if !available.contains(name) {
                    return Err(OnnxError::Graph(format!(
                        "node '{}' ({}) reads tensor '{name}', which no node, input or initializer provides",
                        node_label(node),
                        node.op_type()
                    )));
                }
            }
        }
        // Kahn's algorithm; the queue starts in file order so that an already sorted
        // graph keeps its order exactly.
        let mut queue: VecDeque<usize> = (0..graph.node.len()).filter(|&i| pending[i] == 0).collect();
        let mut order = Vec::with_capacity(graph.node.len());
        while let Some(i) = queue.pop_front() {
            order.push(i);
            for out in graph.node[i].output.iter().filter(|o| !o.is_empty()) {
                for &c in consumers.get(out.as_str()).map(Vec::as_slice).unwrap_or_default() {
                    pending[c] -= 1;
                    if pending[c] == 0 {
                        queue.push_back(c);
                    }
                }
            }
        }
        if order.len() != graph.node.len() {
            let stuck = (0..graph.node.len())
                .find(|&i| pending[i] > 0)
                .map(|i| node_label(&graph.node[i]));
            return Err(OnnxError::Graph(format!(
                "the nodes form a cycle (node '{}' can never run)",
                stuck.unwrap_or_default()
            )));
        }
        Ok(Self {
            graph,
            order,
            producer,
            consumers,
            initializers,
            constants: OnceCell::new(),
        })
    }

    /// The node that produces `tensor`, if any.
    pub fn producer(&self, tensor: &str) -> Option<usize> {
        self.producer.get(tensor).copied()
    }

    /// The nodes that read `tensor`.
    pub fn consumers(&self, tensor: &str) -> &[usize] {
        self.consumers.get(tensor).map(Vec::as_slice).unwrap_or_default()
    }

    /// The initializer named `name`, if any.
    pub fn initializer(&self, name: &str) -> Option<&'g TensorProto> {
        self.initializers.get(name).copied()
    }

    /// The initializer behind `tensor`, following Identity nodes back (PyTorch feeds a
    /// parameter that several modules share to all but one through an Identity).
    pub fn source_initializer(&self, tensor: &str) -> Option<&'g TensorProto> {
        if let Some(t) = self.initializer(tensor) {
            return Some(t);
        }
        let node = &self.graph.node[self.producer(tensor)?];
        match (node.op_type(), node.input.first()) {
            ("Identity", Some(source)) => self.source_initializer(source),
            _ => None,
        }
    }

    /// The constant value of `tensor`, however it arrives: an initializer (listed as a
    /// graph input or not), a Constant node, or an Identity, Cast or Reshape of
    /// constants, folded once for the whole graph.
    pub fn constant(&self, tensor: &str) -> Option<&TensorProto> {
        self.constants
            .get_or_init(|| constant::fold(self.graph, &self.order))
            .get(tensor)
            .map(|t| t.as_ref())
    }

    /// Graph inputs that are fed at run time: those not backed by an initializer.
    pub fn data_inputs(&self) -> Vec<&'g ValueInfoProto> {
        self.graph
            .input
            .iter()
            .filter(|v| !self.initializers.contains_key(v.name()))
            .collect()
    }

    /// Whether `tensor` exists in the graph (as an input, initializer or node output).
    pub fn has_tensor(&self, tensor: &str) -> bool {
        self.producer.contains_key(tensor)
            || self.initializers.contains_key(tensor)
            || self.graph.input.iter().any(|v| v.name() == tensor)
    }

    /// Every node needed to compute `targets`, in topological order.
    pub fn ancestors(&self, targets: &[&str]) -> Vec<usize> {
        let mut needed = vec![false; self.graph.node.len()];
        let mut stack: Vec<&str> = targets.to_vec();
        while let Some(t) = stack.pop() {
            if let Some(p) = self.producer(t) {
                if !needed[p] {
                    needed[p] = true;
                    stack.extend(node_inputs(&self.graph.node[p]));
                }
            }
        }
        self.order.iter().copied().filter(|&i| needed[i]).collect()
    }

    /// Whether the values of `target` depend on the values of `source` along a path
    /// that avoids `blocked`: used to check that a cut tensor separates the input from
    /// the output. Paths through [`DIMENSION_OPS`] carry only `source`'s dimensions, so
    /// they do not count: PyTorch's dynamo exporter reads every symbolic size (the
    /// batch of a flattening Reshape among them) from the input.
    pub fn reaches_avoiding(&self, source: &str, target: &str, blocked: &str) -> bool {
        self.downstream(source, Some(blocked)).contains(target)
    }

    /// The tensors whose values depend on those of `source` (itself included), along
    /// paths that avoid `blocked` and [`DIMENSION_OPS`].
    pub fn downstream<'a>(&'a self, source: &'a str, blocked: Option<&str>) -> HashSet<&'a str> {
        let mut seen: HashSet<&str> = HashSet::new();
        let mut stack = vec![source];
        while let Some(t) = stack.pop() {
            if Some(t) == blocked || !seen.insert(t) {
                continue;
            }
            for &c in self.consumers(t) {
                let node = &self.graph.node[c];
                if DIMENSION_OPS.contains(&node.op_type()) {
                    continue;
                }
                stack.extend(node.output.iter().map(String::as_str).filter(|o| !o.is_empty()));
            }
        }
        seen
    }

    /// The rank of every tensor whose rank can be told without running the graph:
    /// declared shapes, constants, and what the common ops of a CNN make of their
    /// inputs' ranks (a convolution's output has its kernel's rank, an activation its
    /// input's, a reduction fewer axes when it drops them, …), in one pass in
    /// topological order. Tensors left out are of unknown rank.
    pub fn ranks(&self) -> HashMap<&'g str, usize> {
        let mut ranks: HashMap<&str, usize> = HashMap::new();
        for t in &self.graph.initializer {
            ranks.insert(t.name(), t.dims.len());
        }
        for v in self
            .graph
            .input
            .iter()
            .chain(&self.graph.value_info)
            .chain(&self.graph.output)
        {
            if let Some(d) = dims(v) {
                ranks.insert(v.name(), d.len());
            }
        }
        for &i in &self.order {
            let node = &self.graph.node[i];
            let Some(out) = node.output.first().filter(|o| !o.is_empty()) else {
                continue;
            };
            if ranks.contains_key(out.as_str()) {
                continue;
            }
            if let Some(t) = self.constant(out) {
                ranks.insert(out.as_str(), t.dims.len());
                continue;
            }
            if let Some(r) = self.rank_of_output(node, &ranks) {
                ranks.insert(out.as_str(), r);
            }
        }
        ranks
    }

    /// The rank of `node`'s first output, given the ranks known so far.
    fn rank_of_output(&self, node: &NodeProto, ranks: &HashMap<&str, usize>) -> Option<usize> {
        let rank = |k: usize| node.input.get(k).and_then(|t| ranks.get(t.as_str())).copied();
        let op = node.op_type();
        if RANK_PRESERVING.contains(&op) {
            return rank(0);
        }
        if BROADCASTING.contains(&op) {
            // The largest rank among the inputs, once all are known.
            return (0..node.input.len())
                .map(rank)
                .collect::<Option<Vec<_>>>()?
                .into_iter()
                .max();
        }
        match op {
            "Concat" => (0..node.input.len()).find_map(rank),
            "Conv" | "ConvTranspose" | "ConvInteger" => rank(1).or_else(|| rank(0)),
            "QLinearConv" => rank(3).or_else(|| rank(0)),
            "Flatten" | "Gemm" => Some(2),
            "Shape" => Some(1),
            "Size" => Some(0),
            "Reshape" => self
                .constant(node.input.get(1)?)
                .and_then(|t| t.dims.first().copied())
                .and_then(|d| usize::try_from(d).ok()),
            "Unsqueeze" | "Squeeze" => {
                let n = self.axes(node)?.len();
                if op == "Unsqueeze" {
                    Some(rank(0)? + n)
                } else {
                    rank(0)?.checked_sub(n)
                }
            }
            op if op.starts_with("Reduce") => {
                let r = rank(0)?;
                let keepdims = int_attr(node, "keepdims").unwrap_or(1) != 0;
                match self.axes(node) {
                    _ if keepdims => Some(r),
                    Some(axes) if !axes.is_empty() => {
                        let distinct: HashSet<i64> =
                            axes.iter().map(|&a| if a < 0 { a + r as i64 } else { a }).collect();
                        r.checked_sub(distinct.len())
                    }
                    _ if int_attr(node, "noop_with_empty_axes").unwrap_or(0) != 0 => Some(r),
                    _ => Some(0),
                }
            }
            _ => None,
        }
    }

    /// The `axes` of a reduction, Squeeze or Unsqueeze: an attribute up to the opset
    /// where it became the constant second input (13 for ReduceSum, Squeeze and
    /// Unsqueeze, 18 for the other reductions). `None` when absent or not constant.
    pub fn axes(&self, node: &NodeProto) -> Option<Vec<i64>> {
        if let Some(a) = node.attribute.iter().find(|a| a.name() == "axes") {
            return Some(a.ints.clone());
        }
        let t = self.constant(node.input.get(1).filter(|s| !s.is_empty())?)?;
        super::tensor::to_i64(t).ok().map(|v| v.iter().copied().collect())
    }

    /// Names of the graph's tensors close to `name`, for "did you mean" hints.
    pub fn similar(&self, name: &str) -> Option<&'g str> {
        let lower = name.to_lowercase();
        self.graph
            .node
            .iter()
            .flat_map(|n| n.output.iter())
            .map(String::as_str)
            .find(|o| {
                let o = o.to_lowercase();
                !o.is_empty() && (o.contains(&lower) || lower.contains(&o))
            })
    }
}

/// Ops whose output depends on their input's dimensions only, never on its values.
pub const DIMENSION_OPS: &[&str] = &["Shape", "Size"];

/// Ops whose output has the rank of their first input (the others, if any, are
/// parameters: pads, scales, bounds, statistics).
const RANK_PRESERVING: &[&str] = &[
    "Abs",
    "AveragePool",
    "BatchNormalization",
    "Cast",
    "Celu",
    "Clip",
    "DepthToSpace",
    "Dropout",
    "Elu",
    "Erf",
    "Exp",
    "Gelu",
    "GlobalAveragePool",
    "GlobalLpPool",
    "GlobalMaxPool",
    "HardSigmoid",
    "HardSwish",
    "Identity",
    "InstanceNormalization",
    "LRN",
    "LeakyRelu",
    "Log",
    "LogSoftmax",
    "LpNormalization",
    "LpPool",
    "MaxPool",
    "Mish",
    "Neg",
    "Pad",
    "Reciprocal",
    "Relu",
    "Resize",
    "Selu",
    "Sigmoid",
    "Softmax",
    "Softplus",
    "Softsign",
    "SpaceToDepth",
    "Sqrt",
    "Tanh",
    "Transpose",
    "Upsample",
];

/// Ops that broadcast their inputs against each other.
const BROADCASTING: &[&str] = &["Add", "Div", "Max", "Mean", "Min", "Mul", "Pow", "PRelu", "Sub", "Sum"];

/// The integer attribute `name` of `node`, when present.
pub(crate) fn int_attr(node: &NodeProto, name: &str) -> Option<i64> {
    node.attribute.iter().find(|a| a.name() == name).and_then(|a| a.i)
}

/// A node's name, or a stand-in built from its first output when it has none.
pub fn node_label(node: &NodeProto) -> String {
    if !node.name().is_empty() {
        node.name().to_string()
    } else {
        format!(
            "<{} -> {}>",
            node.op_type(),
            node.output.first().map(String::as_str).unwrap_or("")
        )
    }
}

/// Ops whose initializer inputs are learned weights: an infinite value there is a
/// broken model, not a deliberate constant.
const WEIGHT_OPS: &[&str] = &["Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization"];

/// Refuses a model whose float initializers hold NaN anywhere, or ±Inf in the weights
/// of a Conv, ConvTranspose, Gemm, MatMul or BatchNormalization, naming the
/// initializer, the element and a node that reads it.
pub fn check_finite_weights(model: &ModelProto) -> Result<(), OnnxError> {
    let Some(graph) = model.graph.as_ref() else {
        return Ok(());
    };
    for init in &graph.initializer {
        if !matches!(init.data_type(), super::tensor::FLOAT | super::tensor::DOUBLE) {
            continue;
        }
        let values = super::tensor::to_f32(init)?;
        let Some((at, v)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) else {
            continue;
        };
        let readers: Vec<&NodeProto> = graph
            .node
            .iter()
            .filter(|n| n.input.iter().any(|i| i == init.name()))
            .collect();
        let weight_reader = readers.iter().find(|n| WEIGHT_OPS.contains(&n.op_type()));
        if !v.is_nan() && weight_reader.is_none() {
            continue;
        }
        let reader = weight_reader.or(readers.first()).map_or(String::new(), |n| {
            format!(" (read by node '{}' ({}))", node_label(n), n.op_type())
        });
        let total = values.len();
        return Err(OnnxError::Graph(format!(
            "initializer '{}'{reader}: element {at} of {total} is {v}; the model's weights are broken \
             (a diverged training run or a damaged export)",
            init.name()
        )));
    }
    Ok(())
}
