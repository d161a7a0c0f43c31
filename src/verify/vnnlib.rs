//! VNN-LIB properties of the certification question, for other verifiers.
//!
//! For each image `x` with label `y` and each radius ε, a property in the convention of
//! the VNN-COMP benchmarks: the inputs `X_i` (the model's input, flattened in its own
//! layout) in the box `[max(x − ε, 0), min(x + ε, 1)]`, and the outputs `Y_j`
//! satisfying the negation of "class y wins", `∨_{j ≠ y} Y_j ≥ Y_y`, which a verifier
//! proves robust by showing it unsatisfiable. The box is in pixel space, so the model
//! written beside the properties carries the feed's normalisation inside it
//! (`(x − mean) / std` in front of the original input). Each bound is rounded outward
//! to an f32 and printed with the shortest decimal that reads back as that same value
//! in f64 (so exactly the f32, whichever precision a verifier reads it in).
//! The folder also gets `instances.csv` (`model,property,timeout` per line).

use std::fmt::Write as _;
use std::path::Path;

use crate::data::Dataset;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::features::{image_shape_of, preprocess_for, Feed};
use crate::onnx::grad::Normalization;
use crate::onnx::proto::{ModelProto, NodeProto};
use crate::onnx::tensor;
use crate::onnx::OnnxError;

/// Name of the model written beside the properties.
pub const MODEL: &str = "model.onnx";

/// `value` rounded down (`down`) or up to an f32 that bounds it.
fn outward(value: f64, down: bool) -> f32 {
    let v = value as f32;
    let off = if down {
        f64::from(v) > value
    } else {
        f64::from(v) < value
    };
    if off {
        step(v, !down)
    } else {
        v
    }
}

/// The next f32 above (`up`) or below `v` (finite `v`; others are returned as they are).
fn step(v: f32, up: bool) -> f32 {
    if !v.is_finite() {
        return v;
    }
    if v == 0.0 {
        let tiny = f32::from_bits(1);
        return if up { tiny } else { -tiny };
    }
    let bits = v.to_bits();
    // Away from zero means a larger magnitude, so one more in the bits.
    if (v > 0.0) == up {
        f32::from_bits(bits + 1)
    } else {
        f32::from_bits(bits - 1)
    }
}

/// The text of one property: the box around `pixels` (flattened, in `[0, 1]`) and the
/// negated win of `label` among `classes` outputs.
pub fn property(pixels: &[f32], eps: f32, label: usize, classes: usize, comment: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "; {comment}");
    for i in 0..pixels.len() {
        let _ = writeln!(s, "(declare-const X_{i} Real)");
    }
    for j in 0..classes {
        let _ = writeln!(s, "(declare-const Y_{j} Real)");
    }
    for (i, &p) in pixels.iter().enumerate() {
        let (x, e) = (f64::from(p), f64::from(eps));
        let lo = outward((x - e).max(0.0), true).max(0.0);
        let hi = outward((x + e).min(1.0), false).min(1.0);
        // The f32 as an f64 in its shortest round-trip form: exact whether read as f32 or f64.
        let (lo, hi) = (f64::from(lo), f64::from(hi));
        let _ = writeln!(s, "(assert (>= X_{i} {lo:?}))");
        let _ = writeln!(s, "(assert (<= X_{i} {hi:?}))");
    }
    let _ = writeln!(s, "(assert (or");
    for j in (0..classes).filter(|&j| j != label) {
        let _ = writeln!(s, "    (and (>= Y_{j} Y_{label}))");
    }
    let _ = writeln!(s, "))");
    s
}

/// `model` with `(x − mean) / std` in front of its input (itself when the
/// normalisation is the identity).
pub fn with_normalization(model: &ModelProto, norm: &Normalization) -> Result<ModelProto> {
    let identity = norm.mean.iter().all(|&m| m == 0.0) && norm.std.iter().all(|&s| s == 1.0);
    let mut out = model.clone();
    if identity {
        return Ok(out);
    }
    let g = out
        .graph
        .as_mut()
        .ok_or_else(|| OnnxError::Graph("the model holds no graph".into()))?;
    let inits: std::collections::HashSet<String> = g.initializer.iter().map(|t| t.name().to_string()).collect();
    let input = g
        .input
        .iter()
        .find(|v| !inits.contains(v.name()))
        .map(|v| v.name().to_string())
        .ok_or_else(|| OnnxError::Graph("the model has no data input".into()))?;
    let inner = format!("{input}_nnmend_normalised");
    for n in g.node.iter_mut() {
        for s in n.input.iter_mut().filter(|s| **s == input) {
            *s = inner.clone();
        }
    }
    let (mean, std, centred) = (
        format!("{input}_nnmend_mean"),
        format!("{input}_nnmend_std"),
        format!("{input}_nnmend_centred"),
    );
    g.initializer.push(tensor::from_f32(&mean, &norm.dims, &norm.mean));
    g.initializer.push(tensor::from_f32(&std, &norm.dims, &norm.std));
    let node = |op: &str, inputs: [&str; 2], output: &str| NodeProto {
        op_type: Some(op.to_string()),
        name: Some(format!("{output}/{op}")),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.to_string()],
        ..Default::default()
    };
    let front = [
        node("Sub", [&input, &mean], &centred),
        node("Div", [&centred, &std], &inner),
    ];
    g.node.splice(0..0, front);
    Ok(out)
}

/// Writes the hybrid `model` (with `feed`'s normalisation inside), one property per
/// image of `ds` and radius, and `instances.csv` into the folder `dir`, which must not
/// exist or be empty; written in a temporary folder and renamed into place. Returns
/// the number of properties.
pub fn write(
    dir: &Path,
    model: &ModelProto,
    engine: &dyn Engine,
    ds: &Dataset,
    eps: &[f32],
    feed: &Feed,
) -> Result<usize> {
    let classes = crate::onnx::head::find(model)?.weights.nrows();
    ds.check_labels(classes)?;
    let sample = engine.prepare(model)?.sample_shape().to_vec();
    let sample = sample.as_slice();
    let write_err = |path: &Path, source: std::io::Error| Error::Write {
        path: path.to_path_buf(),
        source,
    };
    if dir.exists() && std::fs::read_dir(dir).map_err(|e| write_err(dir, e))?.next().is_some() {
        return Err(write_err(
            dir,
            std::io::Error::new(std::io::ErrorKind::AlreadyExists, "the folder exists and is not empty"),
        ));
    }
    let pre = preprocess_for(ds, sample, &Feed::default())?;
    let (layout, image) = image_shape_of(sample)?;
    let norm = crate::attack::normalization(layout, image, feed)?;
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let tmp = crate::atomic::TempFolder::new_in(&parent).map_err(|e| write_err(dir, e))?;
    crate::onnx::save(&with_normalization(model, &norm)?, &tmp.path().join(MODEL))?;
    let mut instances = String::new();
    let mut count = 0;
    let batch = feed.batch.max(1);
    for start in (0..ds.len()).step_by(batch) {
        let end = (start + batch).min(ds.len());
        let x = pre.batch(ds, start..end)?;
        let per = x.len() / (end - start).max(1);
        let flat = x.as_standard_layout();
        let values = flat.as_slice().unwrap_or_default();
        for (k, i) in (start..end).enumerate() {
            let label = usize::try_from(ds.labels[i]).unwrap_or(usize::MAX);
            for &e in eps {
                let name = format!("image{i}_eps{e}.vnnlib");
                let comment = format!("image {i} of {}, label {label}, eps {e}", ds.source.display());
                let text = property(&values[k * per..(k + 1) * per], e, label, classes, &comment);
                let path = tmp.path().join(&name);
                std::fs::write(&path, text).map_err(|err| write_err(&path, err))?;
                let _ = writeln!(instances, "{MODEL},{name},60");
                count += 1;
            }
        }
    }
    let csv = tmp.path().join("instances.csv");
    std::fs::write(&csv, instances).map_err(|e| write_err(&csv, e))?;
    if dir.exists() {
        std::fs::remove_dir(dir).map_err(|e| write_err(dir, e))?;
    }
    tmp.persist(dir).map_err(|e| write_err(dir, e))?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outward_rounding_brackets_the_value_by_one_step() {
        for &x in &[0.1f64, 0.3, 1.0 / 3.0, 0.9860784, 1e-9, -0.2, 0.5] {
            let lo = outward(x, true);
            let hi = outward(x, false);
            assert!(f64::from(lo) <= x && x <= f64::from(hi), "{x}: [{lo}, {hi}]");
            assert!(
                f64::from(step(lo, true)) > x || f64::from(lo) == x,
                "{x}: {lo} is not the f32 below"
            );
            assert!(
                f64::from(step(hi, false)) < x || f64::from(hi) == x,
                "{x}: {hi} is not the f32 above"
            );
        }
        assert_eq!(outward(0.5, true), 0.5);
        assert_eq!(step(0.0, true), f32::from_bits(1));
        assert_eq!(step(1.0, false), 1.0f32 - f32::EPSILON / 2.0);
    }

    #[test]
    fn a_property_bounds_every_input_and_negates_the_win() {
        let text = property(&[0.0, 0.5, 1.0], 0.25, 1, 3, "test");
        assert!(text.contains("(assert (>= X_0 0.0))"));
        assert!(text.contains("(assert (<= X_0 0.25))"));
        assert!(text.contains("(assert (>= X_1 0.25))"));
        assert!(text.contains("(assert (<= X_2 1.0))"));
        assert!(text.contains("(and (>= Y_0 Y_1))") && text.contains("(and (>= Y_2 Y_1))"));
        assert!(!text.contains("(>= Y_1 Y_1)"));
    }
}
