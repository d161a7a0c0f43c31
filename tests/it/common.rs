//! Paths to fixtures and shared data, the binary, and the Python cross-check scripts.
//!
//! Tests that read the shared folder (`../shared`: the full datasets and third-party
//! models) start with `let Some(shared) = shared() else { return };`, so that they are
//! skipped, saying so on stderr, where it is missing; CI sets `NNMEND_REQUIRE_SHARED=1`
//! to make a missing folder a failure.

use std::io::Write;
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

/// The shared data folder (datasets and third-party models): `NNMEND_SHARED` when set,
/// else `../shared` beside the project.
pub fn shared_root() -> PathBuf {
    std::env::var_os("NNMEND_SHARED").map_or_else(|| root().join("..").join("shared"), PathBuf::from)
}

/// The shared data folder, for a test that needs it.
pub struct Shared(PathBuf);

impl Shared {
    /// A file or folder inside it; one that is missing there fails the test.
    pub fn path(&self, rel: &str) -> PathBuf {
        let p = self.0.join(rel);
        assert!(
            p.exists(),
            "{} is missing from the shared folder {}",
            rel,
            self.0.display()
        );
        p
    }

    /// Every third-party model in its `models/`, sorted by name.
    pub fn models(&self) -> Vec<PathBuf> {
        let dir = self.path("models");
        let mut models: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "onnx"))
            .collect();
        models.sort();
        assert!(!models.is_empty(), "no models in {}", dir.display());
        models
    }
}

/// The shared folder, or `None` when it is missing: the calling test then says on
/// stderr that it is skipped and returns (`let Some(shared) = shared() else { return };`).
/// With `NNMEND_REQUIRE_SHARED=1` (as in CI) a missing folder fails the test instead.
pub fn shared() -> Option<Shared> {
    let dir = shared_root();
    if dir.is_dir() {
        return Some(Shared(dir));
    }
    let test = std::thread::current().name().unwrap_or("this test").to_string();
    let required = std::env::var("NNMEND_REQUIRE_SHARED").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "{test} needs the shared folder, which is missing ({} is not a folder) while NNMEND_REQUIRE_SHARED=1",
        dir.display()
    );
    // Written to the stream itself, past the test harness's capture, so the skip shows.
    let _ = writeln!(
        std::io::stderr(),
        "skipped: ../shared is missing ({} is not a folder): {test}",
        dir.display()
    );
    None
}

/// The Python that runs the cross-check scripts: `NNMEND_PYTHON` (`tools/test.sh` sets
/// it to its virtual environment's), else `python3`.
pub fn python_bin() -> String {
    std::env::var("NNMEND_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// A cross-check script of `tools/reference/` (onnx, onnxruntime, scikit-learn, scipy),
/// ready to take its arguments.
pub fn python(script: &str) -> Command {
    let mut cmd = Command::new(python_bin());
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

/// The optimum scipy's HiGHS finds for an LP instance written as `repair --dump-lp`
/// writes it (`tools/reference/lp_reference.py`).
pub fn highs_objective(instance: &Path) -> f64 {
    let mut cmd = python("lp_reference.py");
    cmd.arg(instance);
    let out: serde_json::Value = serde_json::from_slice(&ok(cmd).stdout).unwrap();
    out["objective"].as_f64().unwrap()
}

/// The path of the `nnmend` binary under test: `NNMEND_BIN`, else the one cargo built.
pub fn nnmend_path() -> PathBuf {
    std::env::var_os("NNMEND_BIN").map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_nnmend")), PathBuf::from)
}

/// The `nnmend` binary.
pub fn nnmend() -> Command {
    Command::new(nnmend_path())
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
