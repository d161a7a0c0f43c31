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

mod build;
mod layers;
mod scratch;
#[cfg(test)]
mod tests;
mod window;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use ndarray::ArrayView1;

use crate::data::Layout;
use crate::onnx::bounds::Margin;
use crate::onnx::grad::unsupported;
use crate::onnx::graph::{graph_of, Index};
use crate::onnx::head::HeadSite;
use crate::onnx::proto::ModelProto;
use crate::onnx::OnnxError;

use layers::{Boxed, Layer};

/// The extractor as a chain of f64 layers, from pixels in `[0, 1]` to the features.
#[derive(Debug, Clone)]
pub struct Chain {
    layers: Vec<Layer>,
    pixels: usize,
    features: usize,
    /// A hash of every layer's parameters, which keys the chain's boxes in a [`BoxCache`].
    signature: u64,
}

/// Relative error bound of an f32 sum of `n` terms, `γ_n`, for unit roundoff `u`.
pub(super) fn gamma(u: f64, n: usize) -> f64 {
    Margin {
        roundoff: u,
        ..Margin::NONE
    }
    .gamma(n)
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
        let graph = graph_of(model)?;
        let index = Index::new(graph)?;
        let inputs = index.data_inputs();
        let [input] = inputs.as_slice() else {
            return Err(OnnxError::Graph(format!(
                "linear bounds need a model with one data input; it has {}",
                inputs.len()
            )));
        };
        // The path, walked back from the tensor to the input.
        let mut path = Vec::new();
        let mut at = tensor.to_string();
        while at != input.name() {
            let node = index.producer(&at).map(|i| &graph.node[i]).ok_or_else(|| {
                OnnxError::Graph(format!(
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
                return Err(OnnxError::Graph(
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
            if let Some(layer) = build::layer(node, &index, &data, &mut shape, roundoff)? {
                layers.push(layer);
            }
            data = node.output.first().cloned().unwrap_or_default();
        }
        Ok(Self::from_layers(layers, c * h * w, shape.iter().product()))
    }

    /// The chain of `layers` from `pixels` inputs to `features` outputs, signed.
    fn from_layers(layers: Vec<Layer>, pixels: usize, features: usize) -> Self {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        for layer in &layers {
            layer.hash_into(&mut hasher);
        }
        Self {
            layers,
            pixels,
            features,
            signature: std::hash::Hasher::finish(&hasher),
        }
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
            picks: Vec::new(),
        }];
        let g = |k: usize| gamma(roundoff, k);
        let mut nonlinear = false;
        let mut work = Substitution::default();
        for (t, layer) in self.layers.iter().enumerate() {
            let input = all.last_mut().unwrap_or_else(|| unreachable!());
            if let Layer::MaxPool(p) = layer {
                // The box is final: later refinements tighten later layers only.
                input.picks = p.picks(input);
            }
            let mut next = layer.forward(input, &g);
            let feeds_relu = matches!(self.layers.get(t + 1), Some(Layer::Relu));
            if refine && nonlinear && feeds_relu && layer.affine() {
                for k in 0..next.lower.len() {
                    if next.lower[k] >= 0.0 || next.upper[k] <= 0.0 {
                        continue;
                    }
                    self.tighten(t, k, &all, &mut next, &mut work);
                }
            }
            nonlinear |= !layer.affine();
            all.push(next);
        }
        // The features themselves, every one of them: their boxes are what a head's
        // interval bound (and a certified repair's program) reads.
        let last = self.layers.len();
        if refine && nonlinear && last > 0 {
            let mut features = all.pop().unwrap_or_else(|| unreachable!());
            for k in 0..features.lower.len() {
                self.tighten(last - 1, k, &all, &mut features, &mut work);
            }
            all.push(features);
        }
        all
    }

    /// Tightens element `k` of `out`, the box of layer `t`'s output, by
    /// back-substitution of `±y_k` through the boxes `boxes` of the layers up to `t`.
    /// Both substitutions are kept in `work`, for later ones that come down to `±y_k`.
    fn tighten(&self, t: usize, k: usize, boxes: &[Boxed], out: &mut Boxed, work: &mut Substitution) {
        let up = self.substitute(t, &[(k, 1.0)], boxes, work);
        let down = self.substitute(t, &[(k, -1.0)], boxes, work);
        if work.known.len() <= t {
            work.known.resize(t + 1, Vec::new());
        }
        let known = &mut work.known[t];
        if known.len() < out.lower.len() {
            known.resize(out.lower.len(), [f64::NAN; 2]);
        }
        known[k] = [up, down];
        let (below, above) = (up, -down);
        let slack = layers::F64_SLACK * (below.abs().max(above.abs()));
        out.lower[k] = out.lower[k].max(below - slack);
        out.upper[k] = out.upper[k].min(above + slack);
    }

    /// A lower bound of `lambda · y` over the ball, `y` the output of layer `last` and
    /// `lambda` its non-zero coefficients in increasing index order, by
    /// back-substitution through layers `last` down to the first, whose input boxes
    /// are `boxes`.
    fn substitute(&self, last: usize, lambda: &[(usize, f64)], boxes: &[Boxed], work: &mut Substitution) -> f64 {
        let mut constant = 0.0;
        work.from.clear();
        work.from.extend_from_slice(lambda);
        for t in (0..=last).rev() {
            // One coefficient c on a neuron already substituted: the rest is c times
            // that substitution (every relaxation below depends on the signs of the
            // coefficients only, and the steps are linear in them).
            if let [(k, c)] = work.from[..] {
                let known = work.known.get(t).and_then(|v| v.get(k)).map_or(
                    f64::NAN,
                    |&[up, down]| {
                        if c > 0.0 {
                            up
                        } else {
                            down
                        }
                    },
                );
                if !known.is_nan() {
                    return constant + c.abs() * known;
                }
            }
            self.layers[t].backward(&work.from, &boxes[t], &mut constant, &mut work.scratch, &mut work.to);
            std::mem::swap(&mut work.from, &mut work.to);
        }
        let px = &boxes[0];
        constant
            + work
                .from
                .iter()
                .map(|&(i, l)| (l * px.lower[i]).min(l * px.upper[i]))
                .sum::<f64>()
    }
}

/// The buffers of back-substitutions, reused from one to the next, and the results of
/// those of single neurons: per layer and output, the lower bounds of `y_k` and of
/// `−y_k` (NaN where not substituted).
#[derive(Debug, Default)]
struct Substitution {
    known: Vec<Vec<[f64; 2]>>,
    from: scratch::Coefficients,
    to: scratch::Coefficients,
    scratch: scratch::Scratch,
}

/// The boxes of balls, kept across bounders of one extractor. They depend on the
/// extractor and the ball, not on the head, so a certified repair computes them once for
/// its program and for the checks of the hybrid before and after. An entry is keyed by
/// the chain's signature (a hash of every layer's parameters), the roundoff, whether
/// the boxes were refined, the radius and the pixels: a cache handed to the bounder of
/// another extractor only misses.
#[derive(Debug, Default)]
pub struct BoxCache {
    entries: Mutex<HashMap<BoxKey, Arc<Vec<Boxed>>>>,
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct BoxKey {
    chain: u64,
    roundoff: u64,
    refine: bool,
    eps: u64,
    pixels: Vec<u32>,
}

impl BoxCache {
    /// Balls whose boxes are kept.
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Whether no box is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
    cache: Option<Arc<BoxCache>>,
}

impl LinearBounder {
    /// The bounder of `chain` followed by `head`.
    pub fn new(chain: Chain, head: &HeadSite, roundoff: f64) -> Result<Self, OnnxError> {
        let (_, d) = head.weights.dim();
        if d != chain.features {
            return Err(OnnxError::Graph(format!(
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
            cache: None,
        })
    }

    /// Tightens the boxes of the layers in between by back-substitution too (CROWN
    /// rather than CROWN-IBP): tighter, and slower by one back-substitution per
    /// unstable neuron and side.
    pub fn refined(mut self, refine: bool) -> Self {
        self.refine = refine;
        self
    }

    /// Keeps the boxes of the balls it bounds in `cache`, and reads them from there.
    pub fn cached(mut self, cache: Option<Arc<BoxCache>>) -> Self {
        self.cache = cache;
        self
    }

    /// Boxes of every layer's input and of the features over the ε-ball around
    /// `pixels` (of the right size), from the cache when it holds them.
    fn boxes(&self, pixels: ArrayView1<f32>, eps: f64) -> Arc<Vec<Boxed>> {
        let compute = || {
            let lo: Vec<f64> = pixels.iter().map(|&p| (f64::from(p) - eps).max(0.0)).collect();
            let hi: Vec<f64> = pixels.iter().map(|&p| (f64::from(p) + eps).min(1.0)).collect();
            Arc::new(self.chain.boxes(lo, hi, self.roundoff, self.refine))
        };
        let Some(cache) = &self.cache else {
            return compute();
        };
        let key = BoxKey {
            chain: self.chain.signature,
            roundoff: self.roundoff.to_bits(),
            refine: self.refine,
            eps: eps.to_bits(),
            pixels: pixels.iter().map(|p| p.to_bits()).collect(),
        };
        if let Some(hit) = cache.entries.lock().unwrap_or_else(PoisonError::into_inner).get(&key) {
            return Arc::clone(hit);
        }
        // Computed outside the lock, so that the workers do not wait on each other.
        let boxes = compute();
        cache
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, Arc::clone(&boxes));
        boxes
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
        let boxes = self.boxes(pixels, eps);
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
    /// returns as soon as one class's bound is at most `stop`. With a finite `stop`,
    /// a class whose interval bound clears it is not back-substituted: the bound
    /// returned is then the interval bound's, lower than the linear one can be, and
    /// on the same side of `stop`.
    fn margin_until(&self, pixels: ArrayView1<f32>, label: usize, eps: f64, stop: f64) -> Option<f64> {
        let k = self.bias.len();
        let d = self.chain.features;
        if label >= k || pixels.len() != self.chain.pixels {
            return None;
        }
        let boxes = self.boxes(pixels, eps);
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
        let mut work = Substitution::default();
        for (j, interval, allowance) in classes {
            if interval - allowance > stop && stop > f64::NEG_INFINITY {
                // The interval bound alone clears `stop` (the classes after this one
                // do too): no back-substitution can change the answer.
                worst = worst.min(interval - allowance);
                continue;
            }
            let wj = &self.weights[j * d..(j + 1) * d];
            let lambda: Vec<(usize, f64)> = wy
                .iter()
                .zip(wj)
                .map(|(a, b)| a - b)
                .enumerate()
                .filter(|&(_, l)| l != 0.0)
                .collect();
            let linear = self.bias[label] - self.bias[j]
                + match self.chain.layers.len() {
                    0 => lambda
                        .iter()
                        .map(|&(i, l)| (l * boxes[0].lower[i]).min(l * boxes[0].upper[i]))
                        .sum::<f64>(),
                    n => self.chain.substitute(n - 1, &lambda, &boxes, &mut work),
                };
            worst = worst.min(linear.max(interval) - allowance);
            if worst <= stop {
                break;
            }
        }
        Some(worst)
    }
}
