//! A classifier made ready for attacks: its gradient graph and its pixel-space forward
//! graph, both prepared in one engine.

use std::collections::HashMap;

use ndarray::{Array1, Array2, ArrayD, ArrayViewD, Axis, Ix1, Ix2};

use crate::data::{Dataset, Layout, Preprocess};
use crate::engine::{Engine, Session};
use crate::error::Result;

use super::AttackError;
use crate::features::{layout_of, preprocess_for, Feed};
use crate::onnx::grad::{self, Loss, Normalization, PROBE_BATCH};
use crate::onnx::{ModelProto, OnnxError};

/// The normalisation `(x − mean) / std` of `feed`, shaped to broadcast over one sample
/// of a model whose inputs are laid out as `layout`, for images of shape `[C, H, W]`.
pub fn normalization(layout: Layout, image: [usize; 3], feed: &Feed) -> Result<Normalization> {
    let [c, h, w] = image;
    let spread = |name: &'static str, v: &[f32], default: f32| -> Result<Vec<f32>> {
        match v.len() {
            0 => Ok(vec![default; c]),
            1 => Ok(vec![v[0]; c]),
            k if k == c => Ok(v.to_vec()),
            k => Err(AttackError::Channels {
                name,
                values: k,
                channels: c,
            }
            .into()),
        }
    };
    let mean = spread("the mean", &feed.mean, 0.0)?;
    let std = spread("the std", &feed.std, 1.0)?;
    if let Some(bad) = std.iter().find(|s| !s.is_finite() || **s == 0.0) {
        return Err(AttackError::Std(*bad).into());
    }
    if let Some(bad) = mean.iter().find(|m| !m.is_finite()) {
        return Err(AttackError::Mean(*bad).into());
    }
    Ok(match layout {
        Layout::Nchw => Normalization {
            mean,
            std,
            dims: vec![c, 1, 1],
        },
        Layout::Nhwc => Normalization {
            mean,
            std,
            dims: vec![c],
        },
        Layout::Flat => {
            let per = h * w;
            Normalization {
                mean: mean.iter().flat_map(|&m| std::iter::repeat_n(m, per)).collect(),
                std: std.iter().flat_map(|&s| std::iter::repeat_n(s, per)).collect(),
                dims: vec![c * per],
            }
        }
    })
}

/// The gradient graph of `model` (see [`crate::onnx::grad`]): inputs `pixels` and
/// `target`, outputs `logits`, `loss` and `grad`. `engine` measures the shapes the
/// transform needs, on one batch of zeros.
pub fn gradient_model(model: &ModelProto, engine: &dyn Engine, norm: &Normalization, loss: Loss) -> Result<ModelProto> {
    let (fwd, shapes) = forward_and_shapes(model, engine, norm)?;
    Ok(grad::backward(&fwd, &shapes, loss)?)
}

/// The forward graph of `model` and the shape of each of its active tensors, measured
/// by `engine` on one batch of zeros: what [`grad::backward`] needs.
pub fn forward_and_shapes(
    model: &ModelProto,
    engine: &dyn Engine,
    norm: &Normalization,
) -> Result<(grad::Forward, HashMap<String, Vec<usize>>)> {
    let fwd = grad::forward(model, norm)?;
    let probe = engine.prepare(&fwd.probe())?;
    let mut dims = vec![PROBE_BATCH];
    dims.extend(probe.sample_shape());
    let zeros = ArrayD::<f32>::zeros(dims);
    let outs = probe.run(zeros.view())?;
    let shapes = fwd
        .active
        .iter()
        .cloned()
        .zip(outs.iter().map(|o| o.shape().to_vec()))
        .collect();
    Ok((fwd, shapes))
}

/// A model's gradient graph and pixel-space forward graph, prepared in one engine.
struct Prepared {
    grad: Box<dyn Session>,
    forward: Box<dyn Session>,
    /// Width of the forward graph's output (classes, or features).
    width: usize,
    layout: Layout,
    pixels: Preprocess,
}

impl Prepared {
    /// Prepares `model` for images like those of `ds`, with `feed`'s normalisation
    /// inside; `backward` turns the forward graph and its measured shapes into the
    /// gradient graph.
    fn new(
        model: &ModelProto,
        engine: &dyn Engine,
        ds: &Dataset,
        feed: &Feed,
        backward: impl FnOnce(&grad::Forward, &HashMap<String, Vec<usize>>) -> Result<ModelProto, OnnxError>,
    ) -> Result<Self> {
        let plain = engine.prepare(model)?;
        let sample = plain.sample_shape().to_vec();
        drop(plain);
        let layout = layout_of(&sample)?;
        let pixels = preprocess_for(ds, &sample, &Feed::default())?;
        let norm = normalization(layout, ds.image_shape(), feed)?;
        let (fwd, shapes) = forward_and_shapes(model, engine, &norm)?;
        let graph = backward(&fwd, &shapes)?;
        let forward = engine.prepare(&fwd.model)?;
        let grad = engine.prepare(&graph)?;
        let probe = ArrayD::<f32>::zeros([1].iter().chain(&sample).copied().collect::<Vec<_>>());
        let width = forward.run(probe.view())?.first().map_or(0, |z| z.len());
        Ok(Self {
            grad,
            forward,
            width,
            layout,
            pixels,
        })
    }
}

/// A model prepared for attacks.
pub struct Target {
    grad: Box<dyn Session>,
    forward: Box<dyn Session>,
    /// Number of classes (width of the logits).
    pub classes: usize,
    /// The input layout of the model.
    pub layout: Layout,
    /// The loss the gradients are of.
    pub loss: Loss,
    /// How images become the model's pixel inputs (layout only, no normalisation).
    pub pixels: Preprocess,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("classes", &self.classes)
            .field("layout", &self.layout)
            .field("loss", &self.loss)
            .finish_non_exhaustive()
    }
}

/// What one gradient run returns for a batch.
#[derive(Debug, Clone)]
pub struct Gradient {
    /// `[b, K]`.
    pub logits: Array2<f32>,
    /// `[b]`.
    pub loss: Array1<f32>,
    /// `∂loss/∂pixels`, shaped like the pixels.
    pub grad: ArrayD<f32>,
}

impl Gradient {
    /// The outputs of a gradient graph (logits, loss, gradient), checked against the
    /// pixels' `shape`.
    fn read(outs: Vec<ArrayD<f32>>, shape: &[usize]) -> Result<Self> {
        let mut outs = outs.into_iter();
        let bad = AttackError::Output;
        let logits = outs
            .next()
            .and_then(|z| z.into_dimensionality::<Ix2>().ok())
            .ok_or_else(|| bad("logits"))?;
        let loss = outs
            .next()
            .and_then(|l| l.into_dimensionality::<Ix1>().ok())
            .ok_or_else(|| bad("loss"))?;
        let grad = outs.next().ok_or_else(|| bad("grad"))?;
        if grad.shape() != shape || logits.nrows() != grad.len_of(Axis(0)) {
            return Err(bad("grad").into());
        }
        Ok(Self { logits, loss, grad })
    }
}

impl Target {
    /// Builds and prepares the gradient and forward graphs of `model` for images like
    /// those of `ds`, with `feed`'s normalisation inside the graphs.
    pub fn new(model: &ModelProto, engine: &dyn Engine, ds: &Dataset, feed: &Feed, loss: Loss) -> Result<Self> {
        let p = Prepared::new(model, engine, ds, feed, |fwd, shapes| grad::backward(fwd, shapes, loss))?;
        if p.width < 2 {
            return Err(AttackError::Classes(p.width).into());
        }
        Ok(Self {
            grad: p.grad,
            forward: p.forward,
            classes: p.width,
            layout: p.layout,
            loss,
            pixels: p.pixels,
        })
    }

    /// One-hot targets for `labels`, checking each against the class count.
    pub fn one_hot(&self, labels: &[i64], first: usize) -> Result<Array2<f32>> {
        let mut t = Array2::zeros((labels.len(), self.classes));
        for (i, &l) in labels.iter().enumerate() {
            let k = usize::try_from(l)
                .ok()
                .filter(|&k| k < self.classes)
                .ok_or(AttackError::Label {
                    sample: first + i,
                    label: l,
                    classes: self.classes,
                })?;
            t[[i, k]] = 1.0;
        }
        Ok(t)
    }

    /// Logits, loss and input gradient for a batch of pixels and one-hot targets.
    pub fn gradient(&self, pixels: ArrayViewD<f32>, target: &Array2<f32>) -> Result<Gradient> {
        let target = target.view().into_dyn();
        let shape = pixels.shape().to_vec();
        let outs = self.grad.run_many(&[pixels, target])?;
        Gradient::read(outs, &shape)
    }

    /// Logits `[b, K]` for a batch of pixels.
    pub fn logits(&self, pixels: ArrayViewD<f32>) -> Result<Array2<f32>> {
        let b = pixels.shape().first().copied().unwrap_or(0);
        let z = self
            .forward
            .run(pixels)?
            .into_iter()
            .next()
            .ok_or(AttackError::Output("logits"))?;
        let k = z.len().checked_div(b).unwrap_or(0);
        Ok(z.into_shape_with_order((b, k))
            .map_err(|_| AttackError::Output("logits"))?)
    }
}

/// A feature extractor made ready for attacks on a linear head given at each call
/// (the head a training loop is changing): the gradient graph of
/// [`grad::backward_head`] and the extractor's pixel-space forward graph.
pub struct HeadTarget {
    grad: Box<dyn Session>,
    forward: Box<dyn Session>,
    /// Number of classes of the heads.
    pub classes: usize,
    /// Width of the features.
    pub features: usize,
    /// The loss the gradients are of.
    pub loss: Loss,
    /// How images become the extractor's pixel inputs (layout only, no normalisation).
    pub pixels: Preprocess,
}

impl std::fmt::Debug for HeadTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeadTarget")
            .field("classes", &self.classes)
            .field("features", &self.features)
            .field("loss", &self.loss)
            .finish_non_exhaustive()
    }
}

impl HeadTarget {
    /// Prepares `extractor` (one output, the features `[N, D]`) for heads of `classes`
    /// classes, for images like those of `ds`, with `feed`'s normalisation inside.
    pub fn new(
        extractor: &ModelProto,
        engine: &dyn Engine,
        ds: &Dataset,
        feed: &Feed,
        loss: Loss,
        classes: usize,
    ) -> Result<Self> {
        if classes < 2 {
            return Err(AttackError::Classes(classes).into());
        }
        let p = Prepared::new(extractor, engine, ds, feed, |fwd, shapes| {
            grad::backward_head(fwd, shapes, loss, classes)
        })?;
        Ok(Self {
            grad: p.grad,
            forward: p.forward,
            classes,
            features: p.width,
            loss,
            pixels: p.pixels,
        })
    }

    /// Scores, loss and input gradient for a batch of pixels and one-hot targets, with
    /// the head `z = f·wt + bias` (`wt` `[D, K]`).
    pub fn gradient(
        &self,
        pixels: ArrayViewD<f32>,
        target: &Array2<f32>,
        wt: &Array2<f32>,
        bias: &Array1<f32>,
    ) -> Result<Gradient> {
        let shape = pixels.shape().to_vec();
        let inputs = [
            pixels,
            target.view().into_dyn(),
            wt.view().into_dyn(),
            bias.view().into_dyn(),
        ];
        let outs = self.grad.run_many(&inputs)?;
        Gradient::read(outs, &shape)
    }

    /// The features `[b, D]` of a batch of pixels.
    pub fn features(&self, pixels: ArrayViewD<f32>) -> Result<Array2<f32>> {
        let b = pixels.shape().first().copied().unwrap_or(0);
        let f = self
            .forward
            .run(pixels)?
            .into_iter()
            .next()
            .ok_or(AttackError::Output("features"))?;
        Ok(f.into_shape_with_order((b, self.features))
            .map_err(|_| AttackError::Output("features"))?)
    }
}
