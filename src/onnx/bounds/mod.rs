//! Interval bounds as ONNX graphs.
//!
//! From a network `f` and a tensor `t` on its path, this builds a graph with inputs
//! `pixels` `[N, …]` (in `[0, 1]`, the feed's normalisation inside the graph) and `eps`
//! `[1]`, and outputs `lower` and `upper` that enclose `t(x')` for every `x'` with
//! `‖x' − x‖∞ ≤ ε` and `0 ≤ x' ≤ 1`, beside `t(x)` itself (output `value`). This is
//! interval bound propagation (IBP; Gowal et al., *On the Effectiveness of Interval
//! Bound Propagation for Training Verifiably Robust Models*, 2018): every tensor on the
//! path gets a box `[l, u]`, and each op maps its inputs' boxes to a box around every
//! value it can take on them:
//!
//! - a linear op `y = W x + b` with a constant `W` (Conv, Gemm, MatMul), on the centre
//!   `c = (l + u)/2` and radius `r = (u − l)/2`: `c' = W c + b`, `r' = |W| r`;
//! - an op that is non-decreasing in each input (Relu, LeakyRelu with α ≥ 0, MaxPool,
//!   AveragePool, the global and Reduce poolings, Exp, Sigmoid, Tanh, Add, and every
//!   op that only moves, copies or selects values: Flatten, Reshape, Transpose, Pad,
//!   Concat, Slice, …): the op itself on the lower ends and on the upper ends;
//! - Sub: `[l₁ − u₂, u₁ − l₂]`; Neg: `[−u, −l]`;
//! - a product, a quotient by a constant and BatchNormalization (an affine map per
//!   channel): the smallest and largest of the op at the corners; a square `x · x`:
//!   `[max(l, −u, 0)², max(l², u²)]`;
//! - a kernel hybrid's squared distances `‖f − l_j‖²`, written as
//!   `‖f‖² − 2 f·l_j + ‖l_j‖²`, are recognised and bounded as the sum of squared
//!   distances they are (`kernel.rs`), not term by term.
//!
//! An op without a rule is refused, naming the node.
//!
//! # Rounding
//!
//! The engines compute in f32, rounding to nearest. A box computed that way can miss
//! the exact one by a few units in the last place per op, and a sum of `n` products
//! by up to `γₙ = n·u / (1 − n·u)` of the sum of the terms' magnitudes (Higham,
//! *Accuracy and Stability of Numerical Algorithms*, §3.1; any summation order, fused
//! multiply–adds included), with `u = 2⁻²⁴`. So each op that rounds widens its box
//! by `ρ·M + α` on either side:
//!
//! - linear ops: `M = |W| (|c| + r) + |b|`, computed in the graph, and
//!   `ρ = γ_{n+2} + 4u`, `n` the op's fan-in (the `+2` and `4u` cover the roundings of
//!   `c`, `r`, `c' ± r'` and of the widening itself);
//! - sums of a window (AveragePool, ReduceMean, ReduceSum): the op on `max(|l|, |u|)`,
//!   `ρ = γ_{k+1} + 4u` for `k` terms;
//! - one rounding (Add, Sub, products, quotients, LeakyRelu): `M = max(|l'|, |u'|)`,
//!   `ρ = 4u` (at least one unit in the last place of either end, so the widening
//!   survives its own rounding);
//! - BatchNormalization: `M = |s| (max(|l|, |u|) + |μ|) + |β|`, `ρ = 16u`;
//! - the squared distances of a kernel hybrid’s Nyström map: see `kernel.rs`;
//! - Exp, Sigmoid, Tanh: `M = max(|l'|, |u'|)`, `ρ` = [`Margin::transcendental`]
//!   (1e-6, about 17 units in the last place: the engines' vectorised exponentials are
//!   accurate to a few);
//!
//! and `α` = [`Margin::absolute`] (1e-30) stands for results flushed to zero. Ops that
//! only move or select values (Relu, MaxPool, Reshape, Pad, …) are exact and widen
//! nothing. The margins assume true f32 arithmetic: math modes that round the
//! operands of products to fewer bits (TF32 on recent NVIDIA GPUs) or fast
//! convolution algorithms (Winograd, FFT) can err by more.

mod kernel;
mod rules;

use std::collections::{HashMap, HashSet};

use super::grad::builder::Builder;
use super::grad::{unsupported, Forward, FWD, PIXELS};
use super::graph::{graph_of, graph_of_mut, Dim, Index};
use super::proto::{ModelProto, NodeProto, TensorProto};
use super::surgery::{opset, tensor_value_info, BATCH};
use super::tensor::{self, FLOAT};
use super::OnnxError;

/// Name of the bounds graph's radius input, `[1]`, in `[0, 1]` pixel units.
pub const EPS: &str = "eps";
/// Name of the lower-bound output, shaped like the bounded tensor.
pub const LOWER: &str = "lower";
/// Name of the upper-bound output.
pub const UPPER: &str = "upper";
/// Name of the output holding the bounded tensor's value at `x` itself.
pub const VALUE: &str = "value";

/// The unit roundoff of f32, `2⁻²⁴`.
pub const F32_ROUNDOFF: f64 = 1.0 / 16_777_216.0;

/// How much each op's box is widened to cover the engine's rounding (see the module
/// docs for where each figure applies).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Margin {
    /// The unit roundoff `u` of the engine's arithmetic [default: 2⁻²⁴, f32].
    pub roundoff: f64,
    /// The relative error of Exp, Sigmoid and Tanh [default: 1e-6].
    pub transcendental: f64,
    /// Added to every widening [default: 1e-30].
    pub absolute: f64,
}

impl Default for Margin {
    fn default() -> Self {
        Self {
            roundoff: F32_ROUNDOFF,
            transcendental: 1e-6,
            absolute: 1e-30,
        }
    }
}

impl Margin {
    /// No widening: the bounds of exact arithmetic, as far as f32 computes them (for
    /// comparing with a reference computed in higher precision; not sound).
    pub const NONE: Margin = Margin {
        roundoff: 0.0,
        transcendental: 0.0,
        absolute: 0.0,
    };

    /// `γ_n = n·u / (1 − n·u)`, the relative error bound of a sum of `n` terms.
    pub(crate) fn gamma(&self, n: usize) -> f64 {
        let nu = n as f64 * self.roundoff;
        if nu >= 1.0 {
            f64::INFINITY
        } else {
            nu / (1.0 - nu)
        }
    }

    /// `ρ` of a linear op of fan-in `n`.
    fn linear(&self, n: usize) -> f64 {
        self.gamma(n + 2) + 4.0 * self.roundoff
    }

    /// `ρ` of an op that rounds once.
    fn once(&self) -> f64 {
        4.0 * self.roundoff
    }
}

/// A box: the names of the lower and upper ends.
#[derive(Debug, Clone)]
pub(crate) struct Box2 {
    pub l: String,
    pub u: String,
}

/// What the rules see: the builder, the measured shapes, the constants, the boxes so
/// far and the margin.
pub(crate) struct Ctx<'a> {
    pub b: Builder,
    shapes: &'a HashMap<String, Vec<usize>>,
    constants: HashMap<String, TensorProto>,
    boxes: HashMap<String, Box2>,
    active: HashSet<String>,
    pub margin: Margin,
}

impl Ctx<'_> {
    /// The box of input `k` of `node`, when that input depends on the pixels.
    pub fn input_box(&self, node: &NodeProto, k: usize) -> Option<Box2> {
        node.input.get(k).and_then(|t| self.boxes.get(t)).cloned()
    }

    /// Whether input `k` of `node` depends on the pixels.
    pub fn is_active(&self, node: &NodeProto, k: usize) -> bool {
        node.input.get(k).is_some_and(|t| self.boxes.contains_key(t))
    }

    /// The static shape of `tensor` (measured on a batch of [`super::grad::PROBE_BATCH`]).
    pub fn shape(&self, node: &NodeProto, tensor: &str) -> Result<Vec<usize>, OnnxError> {
        super::grad::static_shape(self.shapes, &self.constants, node, tensor)
    }

    /// The constant value of input `k` of `node`, or an error naming it.
    pub fn const_f32(&self, node: &NodeProto, k: usize, what: &str) -> Result<ndarray::ArrayD<f32>, OnnxError> {
        let t = node
            .input
            .get(k)
            .filter(|s| !s.is_empty())
            .and_then(|s| self.constants.get(s))
            .ok_or_else(|| unsupported(node, format!("its {what} must be a constant to bound it")))?;
        tensor::to_f32(t)
    }

    /// A new constant holding `|v|`.
    pub fn abs_const(&mut self, v: &ndarray::ArrayD<f32>) -> String {
        let values: Vec<f32> = v.iter().map(|x| x.abs()).collect();
        self.b.f32s("abs", v.shape(), &values)
    }

    /// A copy of `node` whose inputs are renamed by `pick` (inputs it leaves alone keep
    /// their names) and whose outputs get fresh names, which it returns.
    pub fn copy(&mut self, node: &NodeProto, pick: impl Fn(usize, &str) -> Option<String>, tag: &str) -> Vec<String> {
        let mut n = node.clone();
        for (k, s) in n.input.iter_mut().enumerate() {
            if let Some(new) = pick(k, s) {
                *s = new;
            }
        }
        let outs: Vec<String> = node
            .output
            .iter()
            .map(|o| {
                if o.is_empty() {
                    String::new()
                } else {
                    self.b.fresh(&format!("{tag}_{}", node.op_type().to_ascii_lowercase()))
                }
            })
            .collect();
        n.name = Some(format!(
            "{}/{}",
            outs.first().map_or("", String::as_str),
            node.op_type()
        ));
        n.output = outs.clone();
        self.b.nodes.push(n);
        outs
    }

    /// `max(|l|, |u|)`.
    pub fn magnitude(&mut self, bx: &Box2) -> String {
        let al = self.b.op("Abs", &[&bx.l], vec![]);
        let au = self.b.op("Abs", &[&bx.u], vec![]);
        self.b.op("Max", &[&al, &au], vec![])
    }

    /// `[l − δ, u + δ]` with `δ = ρ·M + α`; `M` defaults to `max(|l|, |u|)`. Nothing
    /// is emitted when the margin is zero.
    pub fn widen(&mut self, bx: Box2, magnitude: Option<String>, rho: f64) -> Box2 {
        if rho == 0.0 && self.margin.absolute == 0.0 {
            return bx;
        }
        let m = match magnitude {
            Some(m) => m,
            None => self.magnitude(&bx),
        };
        let rho = self.b.scalar(rho as f32);
        let scaled = self.b.mul(&m, &rho);
        let alpha = self.b.scalar(self.margin.absolute as f32);
        let delta = self.b.op("Add", &[&scaled, &alpha], vec![]);
        Box2 {
            l: self.b.op("Sub", &[&bx.l, &delta], vec![]),
            u: self.b.op("Add", &[&bx.u, &delta], vec![]),
        }
    }

    /// The elementwise minimum and maximum of `values`: a box.
    pub fn hull(&mut self, values: &[String]) -> Box2 {
        let refs: Vec<&str> = values.iter().map(String::as_str).collect();
        Box2 {
            l: self.b.op("Min", &refs, vec![]),
            u: self.b.op("Max", &refs, vec![]),
        }
    }

    /// Centre and radius of a box.
    pub fn centre_radius(&mut self, bx: &Box2) -> (String, String) {
        let half = self.b.scalar(0.5);
        let s = self.b.op("Add", &[&bx.l, &bx.u], vec![]);
        let c = self.b.mul(&s, &half);
        let d = self.b.op("Sub", &[&bx.u, &bx.l], vec![]);
        let r = self.b.mul(&d, &half);
        (c, r)
    }
}

/// Appends interval bounds of the forward graph's output to it. `shapes` holds the
/// shape of every tensor in [`Forward::active`], measured on a batch of
/// [`super::grad::PROBE_BATCH`]. The result has inputs [`PIXELS`] and [`EPS`] and
/// outputs [`VALUE`], [`LOWER`] and [`UPPER`].
pub fn build(fwd: &Forward, shapes: &HashMap<String, Vec<usize>>, margin: Margin) -> Result<ModelProto, OnnxError> {
    let mut model = fwd.model.clone();
    let opset = opset(&model);
    if opset < 8 {
        return Err(OnnxError::Graph(format!(
            "interval bounds need opset 8 or later (Min and Max with broadcasting); the model imports opset {opset}"
        )));
    }
    let graph = graph_of(&model)?;
    let index = Index::new(graph)?;
    let constants = fwd.constants(graph, &index, shapes);
    let mut ctx = Ctx {
        b: Builder::new(opset, "ibp/"),
        shapes,
        constants,
        boxes: HashMap::new(),
        active: fwd.active.iter().cloned().collect(),
        margin,
    };
    let input = input_box(&mut ctx);
    ctx.boxes.insert(PIXELS.to_string(), input);
    for &i in &fwd.path {
        let node = &graph.node[i];
        for (k, t) in node.input.iter().enumerate() {
            if ctx.active.contains(t) && !ctx.boxes.contains_key(t) {
                return Err(unsupported(
                    node,
                    format!(
                        "its input {k} ('{}') depends on the input but has no bounds",
                        t.trim_start_matches(FWD)
                    ),
                ));
            }
        }
        let mut outs = rules::apply(&mut ctx, node)?;
        if let Some(tight) = kernel::squared_distances(&mut ctx, graph, &index, node)? {
            outs = vec![Some(tight)];
        }
        for (o, bx) in node.output.iter().zip(outs) {
            if let Some(bx) = bx {
                if ctx.active.contains(o) {
                    ctx.boxes.insert(o.clone(), bx);
                }
            }
        }
    }
    let out = ctx
        .boxes
        .get(&fwd.logits)
        .cloned()
        .ok_or_else(|| OnnxError::Graph(format!("no bounds reached '{}'", fwd.logits.trim_start_matches(FWD))))?;
    ctx.b.op_into("Identity", &[&out.l], LOWER, vec![]);
    ctx.b.op_into("Identity", &[&out.u], UPPER, vec![]);

    let g = graph_of_mut(&mut model)?;
    // The forward graph's Identity to `logits` becomes the value output.
    for n in g.node.iter_mut() {
        if n.output.first().map(String::as_str) == Some(super::grad::LOGITS) {
            n.output = vec![VALUE.to_string()];
            n.name = Some(format!("{VALUE}/Identity"));
        }
    }
    g.input.push(tensor_value_info(EPS, FLOAT, &[Dim::Fixed(1)]));
    let out_dims: Vec<Dim> = match shapes.get(&fwd.logits) {
        Some(s) => std::iter::once(Dim::Param(BATCH.into()))
            .chain(s.iter().skip(1).map(|&d| Dim::Fixed(d as i64)))
            .collect(),
        None => vec![Dim::Param(BATCH.into()), Dim::Unknown],
    };
    g.output = [VALUE, LOWER, UPPER]
        .iter()
        .map(|n| tensor_value_info(n, FLOAT, &out_dims))
        .collect();
    g.name = Some(format!("{}_bounds", g.name().trim_end_matches("_gradient")));
    g.node.extend(ctx.b.nodes);
    g.initializer.extend(ctx.b.initializers);
    super::grad::declare_initializers(&mut model);
    Ok(model)
}

/// The pixel box `[max(x − ε, 0), min(x + ε, 1)]`, widened for the rounding of `x ± ε`
/// before the clip (the clip itself is exact).
fn input_box(ctx: &mut Ctx) -> Box2 {
    let raw = Box2 {
        l: ctx.b.op("Sub", &[PIXELS, EPS], vec![]),
        u: ctx.b.op("Add", &[PIXELS, EPS], vec![]),
    };
    let once = ctx.margin.once();
    let wide = ctx.widen(raw, None, once);
    let zero = ctx.b.scalar(0.0);
    let one = ctx.b.scalar(1.0);
    Box2 {
        l: ctx.b.op("Max", &[&wide.l, &zero], vec![]),
        u: ctx.b.op("Min", &[&wide.u, &one], vec![]),
    }
}
