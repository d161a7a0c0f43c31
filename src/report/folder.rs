//! The experiment's output folder, written whole or not at all: every file goes into a
//! temporary folder beside the target (listed in flight, so Ctrl-C removes it), which
//! is renamed into place at the end. An existing folder is moved aside first and
//! deleted once the new one is in place.
//!
//! ```text
//! DIR/report.json            every number (experiment::Report)
//! DIR/report.md              the same for people, with the figures
//! DIR/accuracy_<SET>.svg|png accuracy against ε per test set
//! DIR/examples.png           test images clean and attacked
//! DIR/models/LH.onnx, KH.onnx, RLH_eps<ε>.onnx
//! ```

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::experiment::{model_file, Outcome};

use super::{figures, markdown, ReportError};

/// Checks, before any work, that `out` can be written: it must not exist unless
/// `replace`, and even then it must be a folder holding none of `inputs`.
pub fn check(out: &Path, inputs: &[&Path], replace: bool) -> Result<(), ReportError> {
    if !out.exists() {
        return Ok(());
    }
    if !replace {
        return Err(ReportError::Exists(out.to_path_buf()));
    }
    if !out.is_dir() {
        return Err(ReportError::NotAFolder(out.to_path_buf()));
    }
    let root = std::fs::canonicalize(out).map_err(|source| ReportError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    for input in inputs {
        if std::fs::canonicalize(input).is_ok_and(|p| p.starts_with(&root)) {
            return Err(ReportError::HoldsInput {
                out: out.to_path_buf(),
                input: input.to_path_buf(),
            });
        }
    }
    Ok(())
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Write {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `outcome` (its report, figures and models) to the folder `out`, replacing
/// an existing one (see [`check`]).
pub fn write(outcome: &Outcome, out: &Path) -> Result<()> {
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let tmp = crate::atomic::TempFolder::new_in(parent).map_err(io(parent))?;
    let dir = tmp.path();
    let models = dir.join("models");
    std::fs::create_dir(&models).map_err(io(&models))?;
    crate::onnx::save(&outcome.lh, &dir.join("models/LH.onnx"))?;
    if let Some(kh) = &outcome.kh {
        crate::onnx::save(kh, &dir.join("models/KH.onnx"))?;
    }
    let figures = figures::write(outcome, dir).map_err(ReportError::from)?;
    for r in &outcome.repaired {
        crate::onnx::save(&r.model, &dir.join(model_file(r.eps)))?;
    }
    let json = serde_json::to_value(&outcome.report)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .map_err(|e| io(out)(std::io::Error::other(e)))?;
    let report_json = dir.join("report.json");
    std::fs::write(&report_json, format!("{json}\n")).map_err(io(&report_json))?;
    let title = format!(
        "nnmend run: {}",
        Path::new(&outcome.report.model)
            .file_name()
            .map_or("model".into(), |n| n.to_string_lossy())
    );
    let report_md = dir.join("report.md");
    std::fs::write(&report_md, markdown::markdown(&outcome.report, &title, &figures)).map_err(io(&report_md))?;

    // The folder is complete: swap it in.
    let old = if out.exists() {
        let holder = tempfile::Builder::new()
            .prefix(".nnmend-old-")
            .tempdir_in(parent)
            .map_err(|e| io(parent)(crate::atomic::plain(e)))?;
        let aside: PathBuf = holder.path().join("old");
        std::fs::rename(out, &aside).map_err(io(out))?;
        Some((holder, aside))
    } else {
        None
    };
    if let Err(e) = tmp.persist(out) {
        if let Some((_, aside)) = &old {
            let _ = std::fs::rename(aside, out);
        }
        return Err(io(out)(e));
    }
    // Dropping the holder deletes the old folder.
    drop(old);
    Ok(())
}
