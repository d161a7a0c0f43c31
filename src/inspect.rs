//! A summary of a classifier: its input and layout, the detected cut, the feature
//! shape there (measured by running the extractor once), and the head to be replaced.

use ndarray::ArrayD;

use crate::engine::Engine;
use crate::error::Result;
use crate::features::layout_of;
use crate::onnx::cut::CutRule;
use crate::onnx::graph::dims;
use crate::onnx::surgery::extractor;
use crate::onnx::tensor::element_count;
use crate::onnx::{find_cut, Cut, ModelProto, OnnxError};

/// The `input` part of an inspection.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InputSummary {
    /// The data input's name.
    pub name: String,
    /// Its declared shape (symbols as strings).
    pub shape: Vec<String>,
    /// `nchw`, `nhwc` or `flat`.
    pub layout: String,
}

/// The `cut` part of an inspection.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CutSummary {
    /// The cut tensor.
    pub tensor: String,
    /// The node producing it.
    pub node: String,
    /// That node's op.
    pub op: String,
    /// The cut tensor's shape without the batch.
    pub feature_shape: Vec<usize>,
    /// Its flattened size D.
    pub feature_dim: usize,
    /// Whether the default rule fell back from the last pooling output (see
    /// [`Cut::fallback`]).
    pub fallback: bool,
    /// The rule that chose the cut.
    pub rule: CutRule,
    /// A warning, when there is one.
    pub warning: Option<String>,
}

/// The `head` part of an inspection.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HeadSummary {
    /// Ops of the head's nodes, in order.
    pub nodes: Vec<String>,
    /// Parameters the head holds.
    pub params: usize,
}

/// What `nnmend inspect` reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Inspection {
    /// The data input.
    pub input: InputSummary,
    /// The cut.
    pub cut: CutSummary,
    /// The head past the cut.
    pub head: HeadSummary,
    /// All parameters (initializer elements) of the model.
    pub params: usize,
    /// Nodes in the graph.
    pub nodes: usize,
    /// The ai.onnx opset.
    pub opset: i64,
    /// The producer named in the file.
    pub producer: String,
}

impl Inspection {
    /// The text `inspect` prints of the model read from `path`: one aligned line each
    /// for the model, its producer, input, cut, cut rule, features and head.
    pub fn write_text(&self, path: &std::path::Path, out: &mut impl std::io::Write) -> std::io::Result<()> {
        let (input, cut) = (&self.input, &self.cut);
        writeln!(out, "model     {}", path.display())?;
        writeln!(
            out,
            "producer  {} (opset {}), {} nodes, {} parameters",
            self.producer, self.opset, self.nodes, self.params
        )?;
        writeln!(
            out,
            "input     {} [{}] ({})",
            input.name,
            input.shape.join(", "),
            input.layout
        )?;
        let fallback = if cut.fallback { " [fallback]" } else { "" };
        writeln!(out, "cut       {} = {} ({}){fallback}", cut.tensor, cut.node, cut.op)?;
        writeln!(out, "rule      {}", cut.rule.describe())?;
        writeln!(out, "features  {:?} -> D = {}", cut.feature_shape, cut.feature_dim)?;
        writeln!(
            out,
            "head      {} ({} parameters)",
            self.head.nodes.join(" -> "),
            self.head.params
        )
    }
}

/// Inspects `model`, running its extractor once on zeros to measure the feature shape.
pub fn inspect(model: &ModelProto, engine: &dyn Engine, at: Option<&str>) -> Result<Inspection> {
    summarise(model, engine, &find_cut(model, at)?)
}

/// The feature extractor of `model` (output `features` [N, D] with D declared), and the
/// inspection that located its cut.
pub fn cut(model: &ModelProto, engine: &dyn Engine, at: Option<&str>) -> Result<(Inspection, ModelProto)> {
    let cut = find_cut(model, at)?;
    let info = summarise(model, engine, &cut)?;
    let extractor = extractor(model, &cut, Some(info.cut.feature_dim))?;
    Ok((info, extractor))
}

fn summarise(model: &ModelProto, engine: &dyn Engine, cut: &Cut) -> Result<Inspection> {
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| OnnxError::Graph("the model holds no graph".into()))?;
    let input_vi = graph.input.iter().find(|v| v.name() == cut.input);
    let shape: Vec<String> = input_vi
        .and_then(dims)
        .map(|d| d.iter().map(ToString::to_string).collect())
        .unwrap_or_default();

    // The extractor with the unflattened cut tensor as its output.
    let mut probe = extractor(model, cut, None)?;
    if let Some(g) = probe.graph.as_mut() {
        // The Flatten's input is the cut tensor, under the name the extractor gave it
        // (a cut tensor already called `features` moves aside).
        let flattened = g.node.pop().and_then(|n| n.input.first().cloned());
        g.output = vec![crate::onnx::proto::ValueInfoProto {
            name: Some(flattened.unwrap_or_else(|| cut.tensor.clone())),
            ..Default::default()
        }];
    }
    let session = engine.prepare(&probe)?;
    let sample = session.sample_shape().to_vec();
    let layout = layout_of(&sample)?;
    let mut zeros_shape = vec![1];
    zeros_shape.extend(&sample);
    let outs = session.run(ArrayD::<f32>::zeros(zeros_shape).view())?;
    let feature_shape: Vec<usize> = outs.first().map(|o| o.shape()[1..].to_vec()).unwrap_or_default();
    let params = graph.initializer.iter().map(element_count).sum::<Result<usize, _>>()?;
    Ok(Inspection {
        input: InputSummary {
            name: cut.input.clone(),
            shape,
            layout: format!("{layout:?}").to_lowercase(),
        },
        cut: CutSummary {
            feature_dim: feature_shape.iter().product(),
            feature_shape,
            fallback: cut.fallback(),
            rule: cut.rule,
            warning: cut.warning.clone(),
            tensor: cut.tensor.clone(),
            node: cut.node.clone(),
            op: cut.op.clone(),
        },
        head: HeadSummary {
            nodes: cut.head.iter().map(|(_, op)| op.clone()).collect(),
            params: cut.head_params,
        },
        params,
        nodes: graph.node.len(),
        opset: crate::onnx::surgery::opset(model),
        producer: model.producer_name().to_string(),
    })
}
