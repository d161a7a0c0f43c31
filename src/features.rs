//! Running a prepared model over a whole data set in batches, collecting one output
//! as rows: the extractor's features, or a classifier's logits.

use ndarray::{Array2, ArrayViewMut2, Axis, Slice};

use crate::data::{Dataset, Layout, Preprocess};
use crate::engine::Session;
use crate::error::{Error, Result};

/// How data is fed to a model.
#[derive(Debug, Clone)]
pub struct Feed {
    /// Images per run.
    pub batch: usize,
    /// Per-channel mean subtracted after scaling to [0, 1] (empty: none).
    pub mean: Vec<f32>,
    /// Per-channel standard deviation divided by (empty: none).
    pub std: Vec<f32>,
    /// Whether to draw a progress bar.
    pub progress: bool,
    /// Worker threads running batches side by side (each its own engine state).
    pub threads: usize,
}

impl Default for Feed {
    fn default() -> Self {
        Self {
            batch: 64,
            mean: Vec::new(),
            std: Vec::new(),
            progress: false,
            threads: std::thread::available_parallelism().map_or(1, usize::from),
        }
    }
}

/// A model and a data set that do not fit together, or a model whose outputs do not
/// behave.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// A model input that is not an image.
    #[error(
        "cannot tell the layout of a model input of shape [N, {}]: expected [N, C, H, W] or [N, H, W, C] with 1 \
         or 3 channels, or [N, D]",
        .0.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")
    )]
    Layout(Vec<usize>),
    /// Images of another shape than the model takes.
    #[error("{}: images are {}x{}x{} (C x H x W), but the model takes samples of shape {sample:?}", .data.display(), .image[0], .image[1], .image[2])]
    Images {
        /// The data set.
        data: std::path::PathBuf,
        /// Its image shape `[C, H, W]`.
        image: [usize; 3],
        /// The model's sample shape.
        sample: Vec<usize>,
    },
    /// A model output missing or shaped otherwise than a batch of rows.
    #[error("{0}")]
    Output(String),
    /// A broken invariant (a bug).
    #[error("internal error: {0}")]
    Invariant(&'static str),
}

/// The layout of a model input, read from its shape without the batch:
/// `[C, H, W]` with C ∈ {1, 3} is NCHW, `[H, W, C]` is NHWC, `[D]` is flat.
pub fn layout_of(sample_shape: &[usize]) -> Result<Layout> {
    match sample_shape {
        [c, _, _] if *c == 1 || *c == 3 => Ok(Layout::Nchw),
        [_, _, c] if *c == 1 || *c == 3 => Ok(Layout::Nhwc),
        [_] => Ok(Layout::Flat),
        other => Err(FeedError::Layout(other.to_vec()).into()),
    }
}

/// The layout of a model input and the image shape `[C, H, W]` it takes (a flat input
/// of D values is taken as one channel of 1 × D).
pub fn image_shape_of(sample_shape: &[usize]) -> Result<(Layout, [usize; 3])> {
    let layout = layout_of(sample_shape)?;
    let image = match (layout, sample_shape) {
        (Layout::Nhwc, [h, w, c]) | (Layout::Nchw, [c, h, w]) => [*c, *h, *w],
        (_, [d]) => [1, 1, *d],
        (_, other) => return Err(FeedError::Layout(other.to_vec()).into()),
    };
    Ok((layout, image))
}

/// The preprocessing that turns `ds` into inputs of a model whose per-sample input
/// shape is `sample_shape`, after checking that the images fit it.
pub fn preprocess_for(ds: &Dataset, sample_shape: &[usize], feed: &Feed) -> Result<Preprocess> {
    let layout = layout_of(sample_shape)?;
    let [c, h, w] = ds.image_shape();
    let expected: Vec<usize> = match layout {
        Layout::Nchw => vec![c, h, w],
        Layout::Nhwc => vec![h, w, c],
        Layout::Flat => vec![c * h * w],
    };
    if expected != sample_shape {
        return Err(FeedError::Images {
            data: ds.source.clone(),
            image: [c, h, w],
            sample: sample_shape.to_vec(),
        }
        .into());
    }
    Ok(Preprocess {
        mean: feed.mean.clone(),
        std: feed.std.clone(),
        layout,
    })
}

/// Runs `session` over every image of `ds` and stacks output `output` (flattened per
/// sample) into an `[N, D]` matrix.
///
/// After a first batch, the rest are shared out among `feed.threads` workers in
/// contiguous shards whose boundaries fall on batch boundaries, so every batch, and
/// hence every value, is the same whatever the number of threads.
pub fn collect(session: &dyn Session, ds: &Dataset, feed: &Feed, output: usize, label: &str) -> Result<Array2<f32>> {
    let pre = preprocess_for(ds, session.sample_shape(), feed)?;
    let n = ds.len();
    if n == 0 {
        return Ok(Array2::zeros((0, 0)));
    }
    let batch = feed.batch.max(1);
    let bar = crate::progress::bar(n as u64, label, feed.progress);
    // The first batch tells the output width, so the result is allocated once and the
    // workers write their rows straight into it.
    let first = run_batch(session, ds, &pre, 0..batch.min(n), output)?;
    let d = first.ncols();
    let mut rows = Array2::zeros((n, d));
    rows.slice_axis_mut(Axis(0), Slice::from(0..first.nrows()))
        .assign(&first);
    bar.inc(first.nrows() as u64);
    let rest = n - first.nrows();
    let batches = rest.div_ceil(batch);
    let workers = feed.threads.clamp(1, batches.max(1));
    let per_worker = batches.div_ceil(workers) * batch;
    let results: Vec<Result<()>> = std::thread::scope(|scope| {
        let mut handles = Vec::new();
        let mut remaining = rows.slice_axis_mut(Axis(0), Slice::from(first.nrows()..));
        let mut start = first.nrows();
        while start < n {
            let len = per_worker.min(n - start);
            let (shard, tail) = remaining.split_at(Axis(0), len);
            remaining = tail;
            let (pre, bar) = (&pre, &bar);
            let range = start..start + len;
            handles.push(scope.spawn(move || fill(session, ds, pre, range, batch, output, shard, bar)));
            start += len;
        }
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(FeedError::Invariant("a feature worker panicked").into()))
            })
            .collect()
    });
    bar.finish_and_clear();
    results.into_iter().collect::<Result<Vec<()>>>()?;
    Ok(rows)
}

/// Runs one batch (images `range`) and returns output `output` as `[b, D]` rows.
fn run_batch(
    session: &dyn Session,
    ds: &Dataset,
    pre: &Preprocess,
    range: std::ops::Range<usize>,
    output: usize,
) -> Result<Array2<f32>> {
    let b = range.len();
    let x = pre.batch(ds, range)?;
    let mut outs = session.run(x.view())?;
    if output >= outs.len() {
        return Err(FeedError::Output(format!(
            "the model returned {} outputs, output {output} was asked for",
            outs.len()
        ))
        .into());
    }
    let out = outs.swap_remove(output);
    if out.shape().first() != Some(&b) {
        return Err(FeedError::Output(format!(
            "the model returned output of shape {:?} for a batch of {b}",
            out.shape()
        ))
        .into());
    }
    let d = out.len() / b;
    Ok(out
        .into_shape_with_order((b, d))
        .map_err(|e| FeedError::Output(format!("output of a batch of {b}: {e}")))?)
}

/// One worker's part of [`collect`]: the images in `range`, batch by batch, written
/// into `rows`.
#[allow(clippy::too_many_arguments)]
fn fill(
    session: &dyn Session,
    ds: &Dataset,
    pre: &Preprocess,
    range: std::ops::Range<usize>,
    batch: usize,
    output: usize,
    mut rows: ArrayViewMut2<f32>,
    bar: &indicatif::ProgressBar,
) -> Result<()> {
    let mut start = range.start;
    while start < range.end {
        let end = (start + batch).min(range.end);
        let out = run_batch(session, ds, pre, start..end, output)?;
        if out.ncols() != rows.ncols() {
            return Err(FeedError::Output(format!(
                "output width changed from {} to {} between batches",
                rows.ncols(),
                out.ncols()
            ))
            .into());
        }
        let at = start - range.start;
        rows.slice_axis_mut(Axis(0), Slice::from(at..at + out.nrows()))
            .assign(&out);
        bar.inc(out.nrows() as u64);
        start = end;
    }
    Ok(())
}

/// Index of the largest value in each row (ties go to the lowest index).
pub fn argmax_rows(scores: &Array2<f32>) -> Vec<usize> {
    scores
        .axis_iter(Axis(0))
        .map(|row| {
            row.iter()
                .enumerate()
                .fold(
                    (0, f32::NEG_INFINITY),
                    |(bi, bv), (i, &v)| if v > bv { (i, v) } else { (bi, bv) },
                )
                .0
        })
        .collect()
}

/// How many predictions are right.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Accuracy {
    /// Images evaluated.
    pub n: usize,
    /// Correctly classified images.
    pub correct: usize,
    /// `correct / n` (0 for no image).
    pub accuracy: f64,
}

impl Accuracy {
    /// The accuracy of `predicted` classes against `labels`, row for row.
    pub fn of(predicted: &[usize], labels: &[i64]) -> Self {
        let correct = predicted.iter().zip(labels).filter(|(&p, &l)| p as i64 == l).count();
        let n = labels.len();
        Self {
            n,
            correct,
            accuracy: if n == 0 { 0.0 } else { correct as f64 / n as f64 },
        }
    }
}

/// Writes `features` `[N, D]` and `labels` `[N]` to an `.npz` (keys `features`, `labels`),
/// atomically.
pub fn write_features(path: &std::path::Path, features: &Array2<f32>, labels: &[i64]) -> Result<()> {
    let io = |source| Error::Write {
        path: path.to_path_buf(),
        source,
    };
    let npz = |e: ndarray_npy::WriteNpzError| io(std::io::Error::other(e));
    crate::atomic::write_with(path, io, |file| {
        let mut writer = ndarray_npy::NpzWriter::new_compressed(std::io::BufWriter::new(file));
        writer.add_array("features", features).map_err(npz)?;
        writer
            .add_array("labels", &ndarray::Array1::from(labels.to_vec()))
            .map_err(npz)?;
        writer
            .finish()
            .map_err(npz)?
            .into_inner()
            .map_err(|e| io(e.into_error()))?;
        Ok(())
    })
}
