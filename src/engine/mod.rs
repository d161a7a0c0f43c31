//! Inference engines behind one small trait.
//!
//! nnmend hands an engine an in-memory ONNX model (an extractor, a hybrid, a gradient
//! graph later) and runs it on batches. tract is the embedded default and needs nothing
//! installed; ONNX Runtime comes behind the `ort` feature. Asking for a backend that
//! was not compiled in is an error that says so, rather than a missing option.

#[cfg(feature = "ort")]
pub mod ort;
pub mod tract;

use ndarray::{ArrayD, ArrayViewD};

use crate::onnx::graph::{dims, Dim, Index};
use crate::onnx::surgery::relax_batch;
use crate::onnx::ModelProto;

/// Which engine runs the models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// tract, on the CPU (embedded, the default).
    #[default]
    Tract,
    /// ONNX Runtime with its CPU execution provider.
    Ort,
    /// ONNX Runtime with its CUDA execution provider.
    OrtCuda,
}

/// What can go wrong while preparing or running a model.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The engine could not build a runnable plan from the model.
    #[error("{engine}: preparing the model: {reason}")]
    Prepare {
        /// The engine's name.
        engine: &'static str,
        /// The engine's own message, with its context chain.
        reason: String,
    },
    /// A run failed.
    #[error("{engine}: running a batch of {batch}: {reason}")]
    Run {
        /// The engine's name.
        engine: &'static str,
        /// The batch size that failed.
        batch: usize,
        /// The engine's own message.
        reason: String,
    },
    /// The backend was not compiled into this build.
    #[error("backend '{0}' is not available: nnmend was built without {support} support (rebuild with `--features {feature}`)",
        support = if *.0 == "ort-cuda" { "ONNX Runtime CUDA" } else { "ONNX Runtime" },
        feature = if *.0 == "ort-cuda" { "cuda" } else { "ort" })]
    NotCompiled(&'static str),
    /// ONNX Runtime's shared library is missing or unusable.
    #[error("ONNX Runtime: {0}")]
    Library(String),
    /// The model's input cannot be fed as given.
    #[error("input '{name}': {reason}")]
    Input {
        /// The model input.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

/// The data inputs of a model about to be prepared, and its graph with a fixed batch
/// of 1 relaxed to a symbolic batch.
pub(crate) struct Inputs {
    /// The model to hand to the engine.
    pub model: ModelProto,
    /// Input names, in graph order.
    pub names: Vec<String>,
    /// Each input's shape without the batch (its whole shape when unbatched).
    pub samples: Vec<Vec<usize>>,
    /// Whether each input has the batch as its first dimension: the first input does;
    /// a later one does unless its declared shape is wholly fixed (a parameter fed at
    /// run time, such as the head of [`crate::onnx::grad::backward_head`]).
    pub batched: Vec<bool>,
}

/// Reads the data inputs of `model`: each must have a declared shape whose only
/// symbolic dimension is the batch.
pub(crate) fn inputs_of(model: &ModelProto, engine: &'static str) -> Result<Inputs, EngineError> {
    let prepare_err = |reason: String| EngineError::Prepare { engine, reason };
    let mut model = model.clone();
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| prepare_err("the model holds no graph".into()))?;
    let index = Index::new(graph).map_err(|e| prepare_err(e.to_string()))?;
    let inputs: Vec<_> = index.data_inputs().into_iter().cloned().collect();
    let first = inputs
        .first()
        .ok_or_else(|| prepare_err("the model has no data input".into()))?
        .name()
        .to_string();
    let mut samples = Vec::with_capacity(inputs.len());
    let mut batched = Vec::with_capacity(inputs.len());
    for (k, input) in inputs.iter().enumerate() {
        let shape = dims(input).ok_or_else(|| EngineError::Input {
            name: input.name().to_string(),
            reason: "the model does not declare the input's shape".into(),
        })?;
        let has_batch = k == 0 || !matches!(shape.first(), Some(Dim::Fixed(_)));
        batched.push(has_batch);
        let mut sample = Vec::new();
        for (i, d) in shape.iter().enumerate().skip(usize::from(has_batch)) {
            match d {
                Dim::Fixed(v) if *v > 0 => sample.push(*v as usize),
                other => {
                    return Err(EngineError::Input {
                        name: input.name().to_string(),
                        reason: format!("dimension {i} is '{other}'; only the batch dimension may be symbolic"),
                    })
                }
            }
        }
        samples.push(sample);
    }
    let names = inputs.iter().map(|v| v.name().to_string()).collect();
    relax_batch(&mut model, &first).map_err(|e| prepare_err(e.to_string()))?;
    Ok(Inputs {
        model,
        names,
        samples,
        batched,
    })
}

/// Checks a batch against a model's inputs (count, shared batch size, sample shapes)
/// and returns the batch size.
pub(crate) fn check_batch(
    names: &[String],
    samples: &[Vec<usize>],
    batched: &[bool],
    inputs: &[ArrayViewD<f32>],
) -> Result<usize, EngineError> {
    let batch = inputs.first().and_then(|x| x.shape().first().copied()).unwrap_or(0);
    if inputs.len() != samples.len() {
        return Err(EngineError::Input {
            name: names.join(", "),
            reason: format!("the model takes {} inputs, got {}", samples.len(), inputs.len()),
        });
    }
    for (((x, sample), name), &has_batch) in inputs.iter().zip(samples).zip(names).zip(batched) {
        if !has_batch {
            if x.shape() != sample.as_slice() {
                return Err(EngineError::Input {
                    name: name.clone(),
                    reason: format!("got shape {:?}, the model takes {sample:?}", x.shape()),
                });
            }
            continue;
        }
        if x.shape().first() != Some(&batch) || x.shape().get(1..) != Some(sample.as_slice()) {
            return Err(EngineError::Input {
                name: name.clone(),
                reason: format!(
                    "got a batch of shape {:?}, the model takes [{batch}, {sample:?}]",
                    x.shape()
                ),
            });
        }
    }
    Ok(batch)
}

/// A model prepared for repeated batched runs.
pub trait Session: Send + Sync {
    /// Runs one batch of every data input, in the model's input order, and returns
    /// every output. All inputs share the batch size.
    fn run_many(&self, inputs: &[ArrayViewD<f32>]) -> Result<Vec<ArrayD<f32>>, EngineError>;
    /// Runs one batch (in the model's own input layout) of a single-input model.
    fn run(&self, input: ArrayViewD<f32>) -> Result<Vec<ArrayD<f32>>, EngineError> {
        self.run_many(&[input])
    }
    /// The first input's shape with the batch left out (`[C, H, W]`, `[H, W, C]`, `[D]`).
    fn sample_shape(&self) -> &[usize];
}

/// An inference engine.
pub trait Engine: Send + Sync {
    /// A short name for logs and reports.
    fn name(&self) -> &'static str;
    /// Prepares `model` (f32 data inputs, each batched on axis 0) for batched runs; a
    /// fixed batch of 1 on the first input is relaxed to a symbolic batch first.
    fn prepare(&self, model: &ModelProto) -> Result<Box<dyn Session>, EngineError>;
    /// The runtime in words, for reports: `{"name", "version"}`, and ONNX Runtime's
    /// library.
    fn describe(&self) -> serde_json::Value;
}

/// Settings an engine may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineOptions {
    /// Worker threads that may run one prepared model side by side.
    pub workers: usize,
    /// Threads inside one run (ONNX Runtime's intra-op threads; tract runs on one).
    pub intra_threads: usize,
    /// The GPU for `ort-cuda`.
    pub device: i32,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            workers: 1,
            intra_threads: 1,
            device: 0,
        }
    }
}

/// The engine for `backend`, with default options.
pub fn engine(backend: Backend) -> Result<Box<dyn Engine>, EngineError> {
    engine_with(backend, EngineOptions::default())
}

/// The engine for `backend`. The ONNX Runtime backends load their library here, so a
/// missing one is reported before any work.
pub fn engine_with(backend: Backend, options: EngineOptions) -> Result<Box<dyn Engine>, EngineError> {
    #[cfg(not(feature = "ort"))]
    let _ = options;
    match backend {
        Backend::Tract => Ok(Box::new(tract::Tract)),
        #[cfg(feature = "ort")]
        Backend::Ort | Backend::OrtCuda => Ok(Box::new(self::ort::Ort::new(self::ort::OrtOptions {
            cuda: (backend == Backend::OrtCuda).then_some(options.device),
            intra_threads: options.intra_threads,
            sessions: options.workers,
        })?)),
        #[cfg(not(feature = "ort"))]
        Backend::Ort => Err(EngineError::NotCompiled("ort")),
        #[cfg(not(feature = "ort"))]
        Backend::OrtCuda => Err(EngineError::NotCompiled("ort-cuda")),
    }
}
