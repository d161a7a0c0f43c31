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
use crate::onnx::ModelProto;

const NAME: &str = "tract";

/// tract's version (pinned in Cargo.toml; a test keeps the two equal).
pub const VERSION: &str = "0.23.9";

/// The tract engine.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tract;

struct TractSession {
    plan: std::sync::Arc<TypedRunnableModel>,
    samples: Vec<Vec<usize>>,
    batched: Vec<bool>,
    names: Vec<String>,
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

    fn describe(&self) -> serde_json::Value {
        serde_json::json!({"name": NAME, "version": VERSION})
    }

    fn prepare(&self, model: &ModelProto) -> Result<Box<dyn Session>, EngineError> {
        let super::Inputs {
            model,
            names,
            samples,
            batched,
        } = super::inputs_of(model, NAME)?;
        let bytes = model.encode_to_vec();
        // tract asserts on some malformed graphs (an output nothing produces, for one)
        // instead of returning an error; such a panic becomes the error here.
        let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> Result<_, EngineError> {
            let mut inference = tract_onnx::onnx()
                .with_ignore_output_shapes(true)
                .with_ignore_value_info(true)
                .model_for_read(&mut bytes.as_slice())
                .map_err(prepare_err)?;
            let n = inference.sym("N");
            for (slot, (sample, &has_batch)) in samples.iter().zip(&batched).enumerate() {
                let mut fact_dims: Vec<TDim> = if has_batch { vec![n.clone().into()] } else { Vec::new() };
                fact_dims.extend(sample.iter().map(|&d| TDim::from(d)));
                inference = inference
                    .with_input_fact(slot, f32::fact(ShapeFact::from_dims(fact_dims)).into())
                    .map_err(prepare_err)?;
            }
            let plan = inference
                .into_optimized()
                .and_then(|m| m.into_runnable())
                .map_err(prepare_err)?;
            Ok(plan)
        }))
        .map_err(|p| prepare_err(format!("tract failed inside ({})", panic_message(&p))))?;
        let plan = built?;
        Ok(Box::new(TractSession {
            plan,
            samples,
            batched,
            names,
        }))
    }
}

/// The text a panic carried, when it was a string.
fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into())
}

impl Session for TractSession {
    fn run_many(&self, inputs: &[ArrayViewD<f32>]) -> Result<Vec<ArrayD<f32>>, EngineError> {
        let batch = super::check_batch(&self.names, &self.samples, &self.batched, inputs)?;
        let run_err = |e: anyhow::Error| EngineError::Run {
            engine: NAME,
            batch,
            reason: format!("{e:#}"),
        };
        let feed: TVec<TValue> = inputs.iter().map(|x| Tensor::from(x.to_owned()).into()).collect();
        // tract asserts on some valid but unusual graphs (negative Pad widths, for
        // one); a panic there must reach the user as an error, not abort the run.
        let plan = &self.plan;
        let outputs = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| plan.run(feed)))
            .map_err(|p| EngineError::Run {
                engine: NAME,
                batch,
                reason: format!("tract failed inside ({})", panic_message(&p)),
            })?
            .map_err(run_err)?;
        outputs
            .iter()
            .map(|o| o.to_plain_array_view::<f32>().map(|v| v.to_owned()).map_err(run_err))
            .collect()
    }

    fn sample_shape(&self) -> &[usize] {
        &self.samples[0]
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_version_is_the_pinned_one() {
        let manifest = include_str!("../../Cargo.toml");
        assert!(
            manifest.contains(&format!("tract-onnx = {{ version = \"={}\"", super::VERSION)),
            "Cargo.toml pins another tract"
        );
    }
}
