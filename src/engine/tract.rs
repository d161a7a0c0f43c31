//! The tract engine: pure Rust, on the CPU, the embedded default.
//!
//! The model is re-encoded and handed to tract-onnx, its input fact is pinned to
//! `[N, …]` with a symbolic batch `N`, and the optimized plan is kept for every run.
//! Declared output shapes and value_info are ignored: the surgery may have changed the
//! batch, and tract infers every shape from the input anyway.

use ndarray::{ArrayD, ArrayViewD};
use prost::Message;
use tract_onnx::prelude::*;

use super::{Engine, EngineError, Session};
use crate::onnx::graph::{dims, Dim, Index};
use crate::onnx::surgery::relax_batch;
use crate::onnx::ModelProto;

const NAME: &str = "tract";

/// The tract engine.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tract;

struct TractSession {
    plan: std::sync::Arc<TypedRunnableModel>,
    sample_shape: Vec<usize>,
}

fn prepare_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Prepare {
        engine: NAME,
        reason: format!("{e:#}"),
    }
}

impl Engine for Tract {
    fn name(&self) -> &'static str {
        NAME
    }

    fn prepare(&self, model: &ModelProto) -> Result<Box<dyn Session>, EngineError> {
        let mut model = model.clone();
        let graph = model
            .graph
            .as_ref()
            .ok_or_else(|| prepare_err("the model holds no graph"))?;
        let index = Index::new(graph).map_err(prepare_err)?;
        let input = match index.data_inputs().as_slice() {
            [one] => (*one).clone(),
            other => return Err(prepare_err(format!("expected one data input, found {}", other.len()))),
        };
        let shape = dims(&input).ok_or_else(|| EngineError::Input {
            name: input.name().to_string(),
            reason: "the model does not declare the input's shape".into(),
        })?;
        let mut sample_shape = Vec::new();
        for (i, d) in shape.iter().enumerate().skip(1) {
            match d {
                Dim::Fixed(v) if *v > 0 => sample_shape.push(*v as usize),
                other => {
                    return Err(EngineError::Input {
                        name: input.name().to_string(),
                        reason: format!("dimension {i} is '{other}'; only the batch dimension may be symbolic"),
                    })
                }
            }
        }
        relax_batch(&mut model, input.name()).map_err(prepare_err)?;
        let bytes = model.encode_to_vec();
        let inference = tract_onnx::onnx()
            .with_ignore_output_shapes(true)
            .with_ignore_value_info(true)
            .model_for_read(&mut bytes.as_slice())
            .map_err(prepare_err)?;
        let n = inference.sym("N");
        let mut fact_dims: Vec<TDim> = vec![n.into()];
        fact_dims.extend(sample_shape.iter().map(|&d| TDim::from(d)));
        let plan = inference
            .with_input_fact(0, f32::fact(ShapeFact::from_dims(fact_dims)).into())
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .map_err(prepare_err)?;
        Ok(Box::new(TractSession { plan, sample_shape }))
    }
}

impl Session for TractSession {
    fn run(&self, input: ArrayViewD<f32>) -> Result<Vec<ArrayD<f32>>, EngineError> {
        let batch = input.shape().first().copied().unwrap_or(0);
        let run_err = |e: anyhow::Error| EngineError::Run {
            engine: NAME,
            batch,
            reason: format!("{e:#}"),
        };
        if input.shape().get(1..) != Some(self.sample_shape.as_slice()) {
            return Err(EngineError::Input {
                name: "input".into(),
                reason: format!(
                    "got a batch of shape {:?}, the model takes [N, {:?}]",
                    input.shape(),
                    self.sample_shape
                ),
            });
        }
        let tensor: Tensor = input.to_owned().into();
        let outputs = self.plan.run(tvec!(tensor.into())).map_err(run_err)?;
        outputs
            .iter()
            .map(|o| o.to_plain_array_view::<f32>().map(|v| v.to_owned()).map_err(run_err))
            .collect()
    }

    fn sample_shape(&self) -> &[usize] {
        &self.sample_shape
    }
}
