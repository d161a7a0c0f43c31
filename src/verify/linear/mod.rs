//! Linear bounds on a linear hybrid's margins over L∞ balls: the head's margin
//! `(w_y − w_j)·f + b_y − b_j` back-substituted through the extractor to the pixels
//! (CROWN; Zhang et al., *Efficient Neural Network Robustness Certification with
//! General Activation Functions*, 2018), with interval bounds (IBP) for every layer
//! in between, as in CROWN-IBP.
//!
//! The extractor must be a chain from the pixels to the features (each node reads one
//! tensor of the path, the rest constants) of Conv, Gemm, MatMul, BatchNormalization,
//! Add, Sub, Mul and Div by constants, Relu, MaxPool, AveragePool without padding,
//! GlobalAveragePool, Flatten, Reshape, Identity and Dropout, on channels-first or
//! flat images. Another op is refused, naming the node; `certify` then reports the
//! interval bounds alone.
//!
//! Backward through a layer whose input lies in `[l, u]`, for a lower bound of `λ·y`:
//!
//! - affine `y = W x + b`: `λ ← Wᵀλ`, constant `+= λ·b`;
//! - Relu, an input that can change sign: where `λ ≥ 0`, `relu(z) ≥ α z` with `α = 1`
//!   when `u > −l`, else 0; where `λ < 0`, the chord `relu(z) ≤ u (z − l) / (u − l)`;
//! - MaxPool: where `λ ≥ 0`, `max ≥ x_k` for the input `k` with the largest lower
//!   bound; where `λ < 0`, `max = x_k` when that input's lower bound reaches every other
//!   input's upper bound, else `max ≤ max(u)`, a constant.
//!
//! At the pixels the bound is `constant + Σ min(λ_p lo_p, λ_p hi_p)` over the ball
//! clipped to `[0, 1]`. Everything is computed in f64, for exact arithmetic. The
//! deployed model computes in f32, so each feature also carries a bound `E_i` on how
//! far the engine's value can be from the exact one anywhere in the ball (the forward
//! error of each layer, `γ_{n+2}` of the magnitude of its `n` terms for a sum, four
//! units of roundoff for an element-wise op, propagated through the layers after it),
//! and the margin's bound is lowered by `Σ |d_i| E_i` and by the head's own rounding,
//! as [`super::worst_margin`] lowers it. The bound used is the larger of this one and
//! the interval bound's: both are sound.

mod layers;
#[cfg(test)]
mod tests;

use ndarray::ArrayView1;

use crate::data::Layout;
use crate::onnx::grad::builder::{attr_float, attr_int, attr_ints, attr_string};
use crate::onnx::grad::unsupported;
use crate::onnx::graph::{node_label, Index};
use crate::onnx::head::HeadSite;
use crate::onnx::proto::{ModelProto, NodeProto};
use crate::onnx::tensor;
use crate::onnx::OnnxError;

use layers::{Boxed, Conv, Layer, MaxPool, Window};

/// The extractor as a chain of f64 layers, from pixels in `[0, 1]` to the features.
#[derive(Debug, Clone)]
pub struct Chain {
    layers: Vec<Layer>,
    pixels: usize,
    features: usize,
}

/// Relative error bound of an f32 sum of `n` terms, `γ_n`, for unit roundoff `u`.
fn gamma(u: f64, n: usize) -> f64 {
    let nu = n as f64 * u;
    if nu >= 1.0 {
        f64::INFINITY
    } else {
        nu / (1.0 - nu)
    }
}

fn graph_error(reason: String) -> OnnxError {
    OnnxError::Graph(reason)
}

impl Chain {
    /// The chain of `model` from its pixels (images `[C, H, W]` in `layout`, the feed's
    /// `mean` and `std` applied first) to `tensor`, with `roundoff` the engine's unit
    /// roundoff.
    pub fn new(
        model: &ModelProto,
        tensor: &str,
        image: [usize; 3],
        layout: Layout,
        mean: &[f32],
        std: &[f32],
        roundoff: f64,
    ) -> Result<Self, OnnxError> {
        let graph = model
            .graph
            .as_ref()
            .ok_or_else(|| graph_error("the model holds no graph".into()))?;
        let index = Index::new(graph)?;
        let inputs = index.data_inputs();
        let [input] = inputs.as_slice() else {
            return Err(graph_error(format!(
                "linear bounds need a model with one data input; it has {}",
                inputs.len()
            )));
        };
        // The path, walked back from the tensor to the input.
        let mut path = Vec::new();
        let mut at = tensor.to_string();
        while at != input.name() {
            let node = index.producer(&at).map(|i| &graph.node[i]).ok_or_else(|| {
                graph_error(format!(
                    "tensor '{at}' is neither produced by a node nor the model's input"
                ))
            })?;
            let data: Vec<&String> = node
                .input
                .iter()
                .filter(|i| !i.is_empty() && index.constant(i).is_none())
                .collect();
            let [one] = data.as_slice() else {
                return Err(unsupported(
                    node,
                    format!(
                        "linear bounds need a chain of ops each reading one non-constant tensor; it reads {}",
                        data.len()
                    ),
                ));
            };
            path.push(node);
            at = (*one).clone();
        }
        path.reverse();

        let [c, h, w] = image;
        let mut shape = match layout {
            Layout::Nchw => vec![c, h, w],
            Layout::Flat => vec![c * h * w],
            Layout::Nhwc => {
                return Err(graph_error(
                    "linear bounds take channels-first or flat images, not channels-last".into(),
                ))
            }
        };
        let mut layers = Vec::new();
        if !mean.is_empty() || !std.is_empty() {
            let per = h * w;
            let channel = |v: &[f32], k: usize, default: f64| match v.len() {
                0 => default,
                1 => f64::from(v[0]),
                _ => f64::from(v[k.min(v.len() - 1)]),
            };
            let scale: Vec<f64> = (0..c * per).map(|i| 1.0 / channel(std, i / per, 1.0)).collect();
            let shift: Vec<f64> = (0..c * per)
                .map(|i| -channel(mean, i / per, 0.0) / channel(std, i / per, 1.0))
                .collect();
            layers.push(Layer::Elementwise {
                scale,
                shift,
                rounding: 4.0 * roundoff,
            });
        }
        let mut data = input.name().to_string();
        for node in path {
            if let Some(layer) = layer(node, &index, &data, &mut shape, roundoff)? {
                layers.push(layer);
            }
            data = node.output.first().cloned().unwrap_or_default();
        }
        Ok(Self {
            layers,
            pixels: c * h * w,
            features: shape.iter().product(),
        })
    }

    /// Width of the features.
    pub fn features(&self) -> usize {
        self.features
    }

    /// Boxes of every layer's input, and of the features last, over the ball
    /// `[lo, hi]` of pixels. With `refine`, the output of each affine layer that feeds
    /// a Relu after another Relu or MaxPool is tightened, neuron by neuron where its
    /// interval box straddles zero, by back-substitution to the pixels (CROWN).
    fn boxes(&self, lo: Vec<f64>, hi: Vec<f64>, roundoff: f64, refine: bool) -> Vec<Boxed> {
        let n = lo.len();
        let mut all = vec![Boxed {
            lower: lo,
            upper: hi,
            error: vec![0.0; n],
        }];
        let g = |k: usize| gamma(roundoff, k);
        let mut nonlinear = false;
        for (t, layer) in self.layers.iter().enumerate() {
            let mut next = layer.forward(all.last().unwrap_or_else(|| unreachable!()), &g);
            let feeds_relu = matches!(self.layers.get(t + 1), Some(Layer::Relu));
            if refine && nonlinear && feeds_relu && layer.affine() {
                let width = next.lower.len();
                for k in 0..width {
                    if next.lower[k] >= 0.0 || next.upper[k] <= 0.0 {
                        continue;
                    }
                    let mut unit = vec![0.0; width];
                    unit[k] = 1.0;
                    let below = self.substitute(t, unit.clone(), &all);
                    unit[k] = -1.0;
                    let above = -self.substitute(t, unit, &all);
                    let slack = layers::F64_SLACK * (below.abs().max(above.abs()));
                    next.lower[k] = next.lower[k].max(below - slack);
                    next.upper[k] = next.upper[k].min(above + slack);
                }
            }
            nonlinear |= !layer.affine();
            all.push(next);
        }
        // The features themselves, every one of them: their boxes are what a head's
        // interval bound (and a certified repair's program) reads.
        let last = self.layers.len();
        if refine && nonlinear && last > 0 {
            let width = all[last].lower.len();
            for k in 0..width {
                let mut unit = vec![0.0; width];
                unit[k] = 1.0;
                let below = self.substitute(last - 1, unit.clone(), &all[..last]);
                unit[k] = -1.0;
                let above = -self.substitute(last - 1, unit, &all[..last]);
                let slack = layers::F64_SLACK * (below.abs().max(above.abs()));
                let f = &mut all[last];
                f.lower[k] = f.lower[k].max(below - slack);
                f.upper[k] = f.upper[k].min(above + slack);
            }
        }
        all
    }

    /// A lower bound of `lambda · y` over the ball, `y` the output of layer `last`,
    /// by back-substitution through layers `last` down to the first, whose input
    /// boxes are `boxes`.
    fn substitute(&self, last: usize, mut lambda: Vec<f64>, boxes: &[Boxed]) -> f64 {
        let mut constant = 0.0;
        for t in (0..=last).rev() {
            lambda = self.layers[t].backward(&lambda, &boxes[t], &mut constant);
        }
        let px = &boxes[0];
        constant
            + lambda
                .iter()
                .zip(px.lower.iter().zip(&px.upper))
                .map(|(&l, (&a, &b))| (l * a).min(l * b))
                .sum::<f64>()
    }
}

/// Linear bounds of a linear hybrid's head margins.
#[derive(Debug, Clone)]
pub struct LinearBounder {
    chain: Chain,
    /// `[K, D]`, row-major.
    weights: Vec<f64>,
    bias: Vec<f64>,
    roundoff: f64,
    refine: bool,
}

impl LinearBounder {
    /// The bounder of `chain` followed by `head`.
    pub fn new(chain: Chain, head: &HeadSite, roundoff: f64) -> Result<Self, OnnxError> {
        let (_, d) = head.weights.dim();
        if d != chain.features {
            return Err(graph_error(format!(
                "the chain to '{}' gives {} features but the head reads {d}",
                head.input, chain.features
            )));
        }
        Ok(Self {
            chain,
            weights: head.weights.iter().map(|&v| f64::from(v)).collect(),
            bias: head.bias.iter().map(|&v| f64::from(v)).collect(),
            roundoff,
            refine: false,
        })
    }

    /// Tightens the boxes of the layers in between by back-substitution too (CROWN
    /// rather than CROWN-IBP): tighter, and slower by one back-substitution per
    /// unstable neuron and side.
    pub fn refined(mut self, refine: bool) -> Self {
        self.refine = refine;
        self
    }

    /// The worst, over the classes `j ≠ label`, of a sound lower bound on the margin
    /// `z_label − z_j` the engine computes anywhere in the ε-ball (clipped to `[0, 1]`)
    /// around `pixels` (`[C·H·W]`, in `[0, 1]`): positive when the whole ball is
    /// classified `label`. `None` for a label out of range or pixels of the wrong size.
    pub fn worst_margin(&self, pixels: ArrayView1<f32>, label: usize, eps: f64) -> Option<f64> {
        self.margin_until(pixels, label, eps, f64::NEG_INFINITY)
    }

    /// Boxes `[lower, upper]` `[D]` that hold the features as the engine computes them
    /// (in f32) anywhere in the ε-ball around `pixels`: the exact features' bounds
    /// (back-substituted feature by feature when refined) widened by their f32 error.
    /// `None` for pixels of the wrong size.
    pub fn feature_box(&self, pixels: ArrayView1<f32>, eps: f64) -> Option<(Vec<f64>, Vec<f64>)> {
        if pixels.len() != self.chain.pixels {
            return None;
        }
        let lo: Vec<f64> = pixels.iter().map(|&p| (f64::from(p) - eps).max(0.0)).collect();
        let hi: Vec<f64> = pixels.iter().map(|&p| (f64::from(p) + eps).min(1.0)).collect();
        let boxes = self.chain.boxes(lo, hi, self.roundoff, self.refine);
        let f = boxes.last()?;
        let lower = f.lower.iter().zip(&f.error).map(|(l, e)| l - e).collect();
        let upper = f.upper.iter().zip(&f.error).map(|(u, e)| u + e).collect();
        Some((lower, upper))
    }

    /// Whether the whole ε-ball around `pixels` is classified `label`: [`Self::worst_margin`]
    /// is positive. Stops at the first class whose bound is not.
    pub fn certifies(&self, pixels: ArrayView1<f32>, label: usize, eps: f64) -> bool {
        self.margin_until(pixels, label, eps, 0.0).is_some_and(|m| m > 0.0)
    }

    /// The worst margin's bound, the classes taken from the weakest interval bound up;
    /// returns as soon as one class's bound is at most `stop`.
    fn margin_until(&self, pixels: ArrayView1<f32>, label: usize, eps: f64, stop: f64) -> Option<f64> {
        let k = self.bias.len();
        let d = self.chain.features;
        if label >= k || pixels.len() != self.chain.pixels {
            return None;
        }
        let lo: Vec<f64> = pixels.iter().map(|&p| (f64::from(p) - eps).max(0.0)).collect();
        let hi: Vec<f64> = pixels.iter().map(|&p| (f64::from(p) + eps).min(1.0)).collect();
        let boxes = self.chain.boxes(lo, hi, self.roundoff, self.refine);
        let features = boxes.last()?;
        let head_gamma = gamma(self.roundoff, d + 2);
        let wy = &self.weights[label * d..(label + 1) * d];
        // Per class: the interval bound and what rounding can take away (the features'
        // f32 error and the head's own).
        let mut classes: Vec<(usize, f64, f64)> = (0..k)
            .filter(|&j| j != label)
            .map(|j| {
                let wj = &self.weights[j * d..(j + 1) * d];
                let mut allowance = head_gamma * (self.bias[label].abs() + self.bias[j].abs());
                let mut interval = self.bias[label] - self.bias[j];
                for i in 0..d {
                    let (l, u, e) = (features.lower[i], features.upper[i], features.error[i]);
                    let di = wy[i] - wj[i];
                    allowance += di.abs() * e + head_gamma * (wy[i].abs() + wj[i].abs()) * (l.abs().max(u.abs()) + e);
                    interval += (di * l).min(di * u);
                }
                (j, interval, allowance)
            })
            .collect();
        classes.sort_by(|a, b| (a.1 - a.2).total_cmp(&(b.1 - b.2)));
        let mut worst = f64::INFINITY;
        for (j, interval, allowance) in classes {
            let wj = &self.weights[j * d..(j + 1) * d];
            let lambda: Vec<f64> = wy.iter().zip(wj).map(|(a, b)| a - b).collect();
            let linear = self.bias[label] - self.bias[j]
                + match self.chain.layers.len() {
                    0 => lambda
                        .iter()
                        .zip(boxes[0].lower.iter().zip(&boxes[0].upper))
                        .map(|(&l, (&a, &b))| (l * a).min(l * b))
                        .sum::<f64>(),
                    n => self.chain.substitute(n - 1, lambda, &boxes),
                };
            worst = worst.min(linear.max(interval) - allowance);
            if worst <= stop {
                break;
            }
        }
        Some(worst)
    }
}

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
fn layer(
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
            Layer::Conv(Conv {
                w: w.iter().copied().collect(),
                b,
                window,
                group,
            })
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
            Layer::Conv(Conv {
                w: vec![1.0 / taps as f64; c * taps],
                b: vec![0.0; c],
                window,
                group: c,
            })
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
