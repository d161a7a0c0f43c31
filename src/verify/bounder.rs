//! Interval bounds of a tensor over L∞ balls, run as an interval graph in the engine,
//! and the head's exact worst margin over a feature box.

use ndarray::{Array2, ArrayD, ArrayView1, Axis};

use super::VerifyError;
use crate::attack::{forward_and_shapes, normalization};
use crate::data::{Dataset, Preprocess};
use crate::engine::{Engine, Session};
use crate::error::Result;
use crate::features::{layout_of, preprocess_for, Feed};
use crate::onnx::bounds::{self, Margin};
use crate::onnx::graph::Dim;
use crate::onnx::head::{self, HeadSite};
use crate::onnx::surgery::{tensor_value_info, BATCH};
use crate::onnx::tensor::FLOAT;
use crate::onnx::{ModelProto, OnnxError};

/// Bounds of one tensor over the balls around a batch of images.
#[derive(Debug, Clone)]
pub struct Bounds {
    /// The tensor at the images themselves, `[n, D]`.
    pub value: Array2<f32>,
    /// Lower bounds, `[n, D]`.
    pub lower: Array2<f32>,
    /// Upper bounds, `[n, D]`.
    pub upper: Array2<f32>,
}

/// The interval graph of `model` up to `tensor` (inputs `pixels` and `eps`, outputs
/// `value`, `lower`, `upper`; see [`crate::onnx::bounds`]) for images like those of
/// `ds`, with `feed`'s normalisation inside. `engine` measures the shapes the
/// transform needs.
pub fn bounds_model(
    model: &ModelProto,
    tensor: &str,
    engine: &dyn Engine,
    ds: &Dataset,
    feed: &Feed,
    margin: Margin,
) -> Result<ModelProto> {
    let sample = engine.prepare(model)?.sample_shape().to_vec();
    let layout = layout_of(&sample)?;
    preprocess_for(ds, &sample, &Feed::default())?;
    let norm = normalization(layout, ds.image_shape(), feed)?;
    let mut truncated = model.clone();
    let g = truncated
        .graph
        .as_mut()
        .ok_or_else(|| OnnxError::Graph("the model holds no graph".into()))?;
    let produced = g.node.iter().any(|n| n.output.iter().any(|o| o == tensor));
    if !produced {
        return Err(OnnxError::UnknownTensor {
            name: tensor.to_string(),
            hint: String::new(),
        }
        .into());
    }
    g.output = vec![tensor_value_info(
        tensor,
        FLOAT,
        &[Dim::Param(BATCH.into()), Dim::Unknown],
    )];
    let (fwd, shapes) = forward_and_shapes(&truncated, engine, &norm)?;
    Ok(bounds::build(&fwd, &shapes, margin)?)
}

/// An interval graph prepared in an engine, with the preprocessing of its pixels.
pub struct Bounder {
    session: Box<dyn Session>,
    pixels: Preprocess,
}

impl std::fmt::Debug for Bounder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bounder").finish_non_exhaustive()
    }
}

impl Bounder {
    /// Prepares `graph`, an interval graph built by [`bounds_model`], in `engine` for
    /// images like those of `ds`.
    pub fn new(graph: &ModelProto, engine: &dyn Engine, ds: &Dataset) -> Result<Self> {
        let session = engine.prepare(graph)?;
        let pixels = preprocess_for(ds, session.sample_shape(), &Feed::default())?;
        Ok(Self { session, pixels })
    }

    /// Bounds over the ε-balls (clipped to `[0, 1]`) around the images of `ds`, run in
    /// batches of `feed.batch` on `feed.threads` workers.
    pub fn bounds(&self, ds: &Dataset, eps: f32, feed: &Feed) -> Result<Bounds> {
        if !(0.0..=1.0).contains(&eps) {
            return Err(VerifyError::Eps(eps).into());
        }
        let n = ds.len();
        let batch = feed.batch.max(1);
        let ranges: Vec<std::ops::Range<usize>> = (0..n).step_by(batch).map(|s| s..(s + batch).min(n)).collect();
        let parts = crate::parallel::map_indices(ranges.len(), feed.threads, |i| self.run(ds, ranges[i].clone(), eps));
        let mut value = Vec::new();
        let mut lower = Vec::new();
        let mut upper = Vec::new();
        for part in parts {
            let [v, l, u] = part?;
            value.push(v);
            lower.push(l);
            upper.push(u);
        }
        let stack = |rows: Vec<Array2<f32>>| -> Result<Array2<f32>> {
            if rows.is_empty() {
                return Ok(Array2::zeros((0, 0)));
            }
            let views: Vec<_> = rows.iter().map(|r| r.view()).collect();
            ndarray::concatenate(Axis(0), &views).map_err(|_| VerifyError::Output("rows of unequal width").into())
        };
        Ok(Bounds {
            value: stack(value)?,
            lower: stack(lower)?,
            upper: stack(upper)?,
        })
    }

    fn run(&self, ds: &Dataset, range: std::ops::Range<usize>, eps: f32) -> Result<[Array2<f32>; 3]> {
        let b = range.len();
        let x = self.pixels.batch(ds, range)?;
        let e = ArrayD::from_elem(vec![1], eps);
        let outs = self.session.run_many(&[x.view(), e.view()])?;
        let mut it = outs.into_iter().map(|o| {
            let d = o.len().checked_div(b).unwrap_or(0);
            o.into_shape_with_order((b, d))
                .map_err(|_| VerifyError::Output("a bound is not one row per image"))
        });
        let mut next = || it.next().unwrap_or(Err(VerifyError::Output("an output is missing")));
        Ok([next()?, next()?, next()?])
    }
}

/// Bounds of the features a hybrid's head reads over the ε-balls around the images of
/// `ds`: `features` for a linear hybrid, the Nyström features for a kernel hybrid.
pub fn feature_bounds(
    model: &ModelProto,
    engine: &dyn Engine,
    ds: &Dataset,
    eps: f32,
    feed: &Feed,
    margin: Margin,
) -> Result<Bounds> {
    let head = head::find(model)?;
    let graph = bounds_model(model, &head.input, engine, ds, feed, margin)?;
    Bounder::new(&graph, engine, ds)?.bounds(ds, eps, feed)
}

/// The head's worst margin for `label` over the box `[lower, upper]` minus the f32
/// rounding of the head itself (with unit roundoff `u`): positive when every point of
/// the box is classified `label`. `None` when the label is out of range.
pub fn worst_margin(
    head: &HeadSite,
    lower: ArrayView1<f32>,
    upper: ArrayView1<f32>,
    label: usize,
    roundoff: f64,
) -> Option<f64> {
    let (k, d) = head.weights.dim();
    if label >= k || lower.len() != d || upper.len() != d {
        return None;
    }
    let wy = head.weights.row(label);
    let gamma = super::linear::gamma(roundoff, d + 2);
    let mut worst = f64::INFINITY;
    for j in (0..k).filter(|&j| j != label) {
        let wj = head.weights.row(j);
        let mut sum = f64::from(head.bias[label]) - f64::from(head.bias[j]);
        let mut size = f64::from(head.bias[label]).abs() + f64::from(head.bias[j]).abs();
        for i in 0..d {
            let (a, b) = (f64::from(wy[i]), f64::from(wj[i]));
            let (l, u) = (f64::from(lower[i]), f64::from(upper[i]));
            let di = a - b;
            sum += (di * l).min(di * u);
            size += (a.abs() + b.abs()) * l.abs().max(u.abs());
        }
        worst = worst.min(sum - gamma * size);
    }
    Some(worst)
}
