//! Paths to fixtures and shared data, the binary, and the Python cross-check scripts.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The project root: where this test binary was built, unless `NNMEND_ROOT` says
/// otherwise (the GPU check runs a test binary built elsewhere).
pub fn root() -> PathBuf {
    std::env::var_os("NNMEND_ROOT").map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
}

pub fn fixture(rel: &str) -> PathBuf {
    let p = root().join("fixtures").join(rel);
    assert!(
        p.exists(),
        "fixture {} is missing; fixtures/README.md names the script that makes it",
        p.display()
    );
    p
}

pub fn shared(rel: &str) -> PathBuf {
    let p = root().join("..").join("shared").join(rel);
    assert!(
        p.exists(),
        "{} is missing: the tests need ../shared beside the project",
        p.display()
    );
    p
}

/// Every third-party model in `../shared/models`.
pub fn shared_models() -> Vec<PathBuf> {
    let dir = shared("models");
    let mut models: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "onnx"))
        .collect();
    models.sort();
    assert!(!models.is_empty(), "no models in {}", dir.display());
    models
}

/// A cross-check script of `tools/reference/`, run by the Python `NNMEND_PYTHON` names
/// (else `python3`).
pub fn python(script: &str) -> Command {
    let py = std::env::var("NNMEND_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut cmd = Command::new(py);
    cmd.arg(root().join("tools").join("reference").join(script));
    cmd
}

/// Runs a command and fails the test with its stderr when it does not succeed.
pub fn ok(mut cmd: Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The `nnmend` binary.
pub fn nnmend() -> Command {
    Command::new(std::env::var_os("NNMEND_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_nnmend").into()))
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

pub fn read_npy2(path: &Path) -> ndarray::Array2<f32> {
    ndarray_npy::read_npy(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn write_npy<D: ndarray::Dimension>(path: &Path, a: &ndarray::Array<f32, D>) {
    ndarray_npy::write_npy(path, a).unwrap();
}

pub fn max_abs_diff(a: &ndarray::Array2<f32>, b: &ndarray::Array2<f32>) -> f32 {
    assert_eq!(a.shape(), b.shape(), "shapes differ");
    a.iter().zip(b.iter()).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Runs the binary with `args`.
pub fn run(args: &[&str]) -> Output {
    nnmend().args(args).output().unwrap()
}

/// The one JSON document a successful `--json` run printed.
pub fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON document ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Asserts the exit code and that stderr names `needle`, without a panic.
pub fn fails_with(out: &Output, code: i32, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {stderr}");
    assert!(stderr.contains(needle), "expected '{needle}' in: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// A path as `&str`.
pub fn s(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}
