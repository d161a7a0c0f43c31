//! Running a prepared model over a whole data set in batches, collecting one output
//! as rows: the extractor's features, or a classifier's logits.

use ndarray::{s, Array2, Axis};

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
}

impl Default for Feed {
    fn default() -> Self {
        Self {
            batch: 64,
            mean: Vec::new(),
            std: Vec::new(),
            progress: false,
        }
    }
}

/// The layout of a model input, read from its shape without the batch:
/// `[C, H, W]` with C ∈ {1, 3} is NCHW, `[H, W, C]` is NHWC, `[D]` is flat.
pub fn layout_of(sample_shape: &[usize]) -> Result<Layout> {
    match sample_shape {
        [c, _, _] if *c == 1 || *c == 3 => Ok(Layout::Nchw),
        [_, _, c] if *c == 1 || *c == 3 => Ok(Layout::Nhwc),
        [_] => Ok(Layout::Flat),
        other => Err(Error::Mismatch(format!(
            "cannot tell the layout of a model input of shape [N, {}]: expected [N, C, H, W] or [N, H, W, C] \
             with 1 or 3 channels, or [N, D]",
            other.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")
        ))),
    }
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
        return Err(Error::Mismatch(format!(
            "{}: images are {c}x{h}x{w} (C x H x W), but the model takes samples of shape {:?}",
            ds.source.display(),
            sample_shape
        )));
    }
    Ok(Preprocess {
        mean: feed.mean.clone(),
        std: feed.std.clone(),
        layout,
    })
}

/// Runs `session` over every image of `ds` and stacks output `output` (flattened per
/// sample) into an `[N, D]` matrix.
pub fn collect(session: &dyn Session, ds: &Dataset, feed: &Feed, output: usize, label: &str) -> Result<Array2<f32>> {
    let pre = preprocess_for(ds, session.sample_shape(), feed)?;
    let n = ds.len();
    let batch = feed.batch.max(1);
    let bar = crate::progress::bar(n as u64, label, feed.progress);
    let mut rows: Option<Array2<f32>> = None;
    let mut start = 0;
    while start < n {
        let end = (start + batch).min(n);
        let x = pre.batch(ds, start..end)?;
        let outs = session.run(x.view())?;
        let out = outs.get(output).ok_or_else(|| {
            Error::Mismatch(format!(
                "the model returned {} outputs, output {output} was asked for",
                outs.len()
            ))
        })?;
        let b = end - start;
        if out.shape().first() != Some(&b) {
            return Err(Error::Mismatch(format!(
                "the model returned output of shape {:?} for a batch of {b}",
                out.shape()
            )));
        }
        let d = out.len() / b.max(1);
        let flat = out
            .to_shape((b, d))
            .map_err(|e| Error::Mismatch(format!("output of shape {:?}: {e}", out.shape())))?;
        let all = rows.get_or_insert_with(|| Array2::zeros((n, d)));
        if all.ncols() != d {
            return Err(Error::Mismatch(format!(
                "output width changed from {} to {d} between batches",
                all.ncols()
            )));
        }
        all.slice_mut(s![start..end, ..]).assign(&flat);
        bar.inc(b as u64);
        start = end;
    }
    bar.finish_and_clear();
    Ok(rows.unwrap_or_else(|| Array2::zeros((0, 0))))
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

/// Writes `features` [N, D] and `labels` [N] to an `.npz` (keys `features`, `labels`),
/// atomically.
pub fn write_features(path: &std::path::Path, features: &Array2<f32>, labels: &[i64]) -> Result<()> {
    let io = |e: std::io::Error| Error::Mismatch(format!("{}: {e}", path.display()));
    let npz = |e: ndarray_npy::WriteNpzError| Error::Mismatch(format!("{}: {e}", path.display()));
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    let mut writer = ndarray_npy::NpzWriter::new_compressed(tmp.as_file());
    writer.add_array("features", features).map_err(npz)?;
    writer
        .add_array("labels", &ndarray::Array1::from(labels.to_vec()))
        .map_err(npz)?;
    writer.finish().map_err(npz)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}
