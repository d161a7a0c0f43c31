//! The ONNX Runtime engine (feature `ort`; CUDA with feature `cuda`).
//!
//! ONNX Runtime (1.22 or later) is loaded at run time from its shared library, found
//! in this order:
//! the file `ORT_DYLIB_PATH` names; the `onnxruntime/capi/libonnxruntime.so.*` of the
//! Python `onnxruntime` or `onnxruntime-gpu` package that `python3` imports; otherwise
//! an error says how to get one. One library and one ONNX Runtime environment serve the
//! whole process.
//!
//! `ort::Session::run` needs exclusive access, so a prepared model holds a small pool
//! of sessions, one per worker thread, each with its own intra-op threads. The CUDA
//! execution provider is registered with `error_on_failure`: when it cannot be used,
//! preparing the model fails instead of silently running on the CPU.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ndarray::{ArrayD, ArrayViewD};
use prost::Message;

use super::{Engine, EngineError, Session};
use crate::onnx::ModelProto;

/// How to run ONNX Runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrtOptions {
    /// `Some(device)` for the CUDA execution provider on that GPU, `None` for the CPU.
    pub cuda: Option<i32>,
    /// Intra-op threads of each session.
    pub intra_threads: usize,
    /// Sessions per prepared model (one per worker thread that runs it).
    pub sessions: usize,
}

impl Default for OrtOptions {
    fn default() -> Self {
        Self {
            cuda: None,
            intra_threads: 1,
            sessions: 1,
        }
    }
}

/// The ONNX Runtime engine.
#[derive(Debug)]
pub struct Ort {
    options: OrtOptions,
    name: &'static str,
}

/// The library in use and its version.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Runtime {
    /// The shared library loaded.
    pub library: PathBuf,
    /// ONNX Runtime's version, as the library reports it.
    pub version: String,
}

struct Loaded {
    runtime: Runtime,
    env: ort::environment::Environment,
}

static LOADED: OnceLock<Result<Loaded, String>> = OnceLock::new();

const HOW: &str = "set ORT_DYLIB_PATH to ONNX Runtime's shared library (libonnxruntime.so.<version>), \
                   or install it with `python3 -m pip install onnxruntime` (`onnxruntime-gpu` for CUDA)";

/// The Python whose onnxruntime package holds the library: `NNMEND_PYTHON`; else the
/// `python3` beside this executable, as in the virtual environment that `pip install
/// nnmend[ort]` put nnmend into (so that it works without activating it); else
/// `python3` on PATH.
fn python() -> String {
    if let Ok(p) = std::env::var("NNMEND_PYTHON") {
        return p;
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join("python3")))
        .filter(|p| p.is_file())
        .map_or_else(|| "python3".into(), |p| p.display().to_string())
}

/// Where ONNX Runtime's shared library is: `ORT_DYLIB_PATH`, else the Python package's.
pub fn find_library() -> Result<PathBuf, EngineError> {
    locate().map_err(EngineError::Library)
}

fn locate() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            return Err(format!("ORT_DYLIB_PATH is {}, which is not a file; {HOW}", p.display()));
        }
        return Ok(p);
    }
    let python = python();
    let dir = std::process::Command::new(&python)
        .args([
            "-c",
            "import os, onnxruntime; print(os.path.join(os.path.dirname(onnxruntime.__file__), 'capi'))",
        ])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    if let Some(lib) = dir.as_deref().and_then(library_in) {
        return Ok(lib);
    }
    Err(format!(
        "the shared library was not found (ORT_DYLIB_PATH is unset and `{python}` has no onnxruntime package); {HOW}"
    ))
}

/// The newest `libonnxruntime.so.*` (or `.dylib`) in `dir`.
fn library_in(dir: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with("libonnxruntime.so") || (name.starts_with("libonnxruntime.") && name.ends_with(".dylib"))
        })
        .collect();
    found.sort();
    found.pop()
}

fn load() -> Result<&'static Loaded, EngineError> {
    let loaded = LOADED.get_or_init(|| {
        let library = locate()?;
        let builder = ort::init_from(&library).map_err(|e| format!("loading {}: {e}", library.display()))?;
        let env = builder
            .with_name("nnmend")
            .build()
            .map_err(|e| format!("{}: creating the ONNX Runtime environment: {e}", library.display()))?;
        let version = version_of(ort::info(), &library);
        Ok(Loaded {
            runtime: Runtime { library, version },
            env,
        })
    });
    loaded.as_ref().map_err(|e| EngineError::Library(e.clone()))
}

/// The version in the build-info string ("git-branch=rel-1.32.0, …"), else from the
/// library's file name.
fn version_of(info: &str, library: &Path) -> String {
    let from_info = info
        .split(|c: char| c == ',' || c.is_whitespace())
        .find_map(|part| part.strip_prefix("git-branch=rel-"))
        .map(str::to_string);
    from_info
        .or_else(|| {
            let name = library.file_name()?.to_str()?;
            name.strip_prefix("libonnxruntime.so.").map(str::to_string)
        })
        .unwrap_or_else(|| "unknown".into())
}

/// The ONNX Runtime library in use, loading it if need be.
pub fn runtime() -> Result<Runtime, EngineError> {
    Ok(load()?.runtime.clone())
}

impl Ort {
    /// An ONNX Runtime engine; loads the library now, so a missing or unusable one is
    /// reported before any work.
    pub fn new(options: OrtOptions) -> Result<Self, EngineError> {
        load()?;
        let name = if options.cuda.is_some() { "ort-cuda" } else { "ort" };
        #[cfg(not(feature = "cuda"))]
        if options.cuda.is_some() {
            return Err(EngineError::NotCompiled("ort-cuda"));
        }
        Ok(Self { options, name })
    }
}

struct OrtSession {
    pool: Vec<Mutex<ort::session::Session>>,
    next: std::sync::atomic::AtomicUsize,
    samples: Vec<Vec<usize>>,
    batched: Vec<bool>,
    names: Vec<String>,
    name: &'static str,
}

impl Engine for Ort {
    fn name(&self) -> &'static str {
        self.name
    }

    fn describe(&self) -> serde_json::Value {
        match runtime() {
            Ok(r) => serde_json::json!({"name": "onnxruntime", "version": r.version, "library": r.library}),
            Err(e) => serde_json::json!({"name": "onnxruntime", "error": e.to_string()}),
        }
    }

    fn prepare(&self, model: &ModelProto) -> Result<Box<dyn Session>, EngineError> {
        let name = self.name;
        let loaded = load()?;
        let super::Inputs {
            model,
            names,
            samples,
            batched,
        } = super::inputs_of(model, name)?;
        let bytes = model.encode_to_vec();
        let mut pool = Vec::with_capacity(self.options.sessions.max(1));
        for _ in 0..self.options.sessions.max(1) {
            pool.push(Mutex::new(self.session(&loaded.env, &bytes)?));
        }
        Ok(Box::new(OrtSession {
            pool,
            next: std::sync::atomic::AtomicUsize::new(0),
            samples,
            batched,
            names,
            name,
        }))
    }
}

impl Ort {
    fn session(&self, env: &ort::environment::Environment, bytes: &[u8]) -> Result<ort::session::Session, EngineError> {
        let name = self.name;
        let err = |e: ort::Error| EngineError::Prepare {
            engine: name,
            reason: e.to_string(),
        };
        let mut builder = ort::session::Session::builder(env)
            .map_err(err)?
            .with_intra_threads(self.options.intra_threads.max(1))
            .map_err(|e| err(e.into()))?
            .with_inter_threads(1)
            .map_err(|e| err(e.into()))?;
        #[cfg(feature = "cuda")]
        if let Some(device) = self.options.cuda {
            let cuda = ort::ep::CUDA::default()
                .with_device_id(device)
                .build()
                .error_on_failure();
            builder = builder
                .with_execution_providers([cuda])
                .map_err(|e| EngineError::Prepare {
                    engine: name,
                    reason: format!("the CUDA execution provider could not be used on GPU {device}: {e}"),
                })?;
        }
        builder.commit_from_memory(bytes).map_err(err)
    }
}

impl Session for OrtSession {
    fn run_many(&self, inputs: &[ArrayViewD<f32>]) -> Result<Vec<ArrayD<f32>>, EngineError> {
        let batch = super::check_batch(&self.names, &self.samples, &self.batched, inputs)?;
        let name = self.name;
        let run_err = |e: &dyn std::fmt::Display| EngineError::Run {
            engine: name,
            batch,
            reason: e.to_string(),
        };
        let owned: Vec<_> = inputs.iter().map(|x| x.as_standard_layout()).collect();
        let mut values = Vec::with_capacity(owned.len());
        for x in &owned {
            let t = ort::value::TensorRef::from_array_view(x.view()).map_err(|e| run_err(&e))?;
            values.push(ort::session::SessionInputValue::from(t));
        }
        // Any free session; otherwise wait on one, spreading the waits around.
        let start = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let n = self.pool.len();
        let mut guard = (0..n)
            .find_map(|k| self.pool[(start + k) % n].try_lock().ok())
            .map_or_else(|| self.pool[start % n].lock(), Ok)
            .map_err(|_| run_err(&"a session was poisoned by an earlier failure"))?;
        let outputs = guard.run(values.as_slice()).map_err(|e| run_err(&e))?;
        let mut result = Vec::with_capacity(outputs.len());
        for (_, value) in outputs.iter() {
            let a = value.try_extract_array::<f32>().map_err(|e| run_err(&e))?;
            result.push(a.to_owned());
        }
        Ok(result)
    }

    fn sample_shape(&self) -> &[usize] {
        &self.samples[0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_comes_from_the_build_info_or_the_file_name() {
        let lib = Path::new("/x/libonnxruntime.so.1.31.2");
        assert_eq!(
            version_of("ORT Build Info: git-branch=rel-1.32.0, git-commit-id=abc", lib),
            "1.32.0"
        );
        assert_eq!(version_of("ORT Build Info: git-branch=main", lib), "1.31.2");
        assert_eq!(version_of("", Path::new("/x/other.so")), "unknown");
    }
}
