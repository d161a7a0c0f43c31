//! Bytes as an `.onnx` file: what `nnmend inspect`/`cut` do to a model before any
//! engine runs it. `onnx::load` (protobuf decode, external data resolved inside the
//! model's folder), the weight check the CLI runs after loading, the graph index
//! (duplicate producers, missing tensors, cycles, topological order), the cut and
//! the extractor surgery. The engine (tract) is not run: it is a separate library
//! with its own fuzzing, and running it would make each input a thousand times slower.
#![no_main]

#[path = "common.rs"]
mod common;

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use nnmend::onnx::{self, graph::Index};

/// The scratch folder, holding the model and a small external-data file that a
/// model's `location` entries can name (`weights.bin`), made once per process.
fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = common::base().clone();
        let weights: Vec<u8> = (0..64u32).flat_map(|i| (i as f32 * 0.5).to_le_bytes()).collect();
        std::fs::write(dir.join("weights.bin"), weights).unwrap();
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let path = dir().join("model.onnx");
    std::fs::write(&path, data).unwrap();
    let Ok(loaded) = onnx::load(&path) else {
        return;
    };
    let model = loaded.model;
    let _ = onnx::graph::check_finite_weights(&model);
    if let Some(graph) = model.graph.as_ref() {
        if let Ok(index) = Index::new(graph) {
            let _ = index.data_inputs();
            if let Some(out) = graph.output.first() {
                let _ = index.ancestors(&[out.name()]);
            }
        }
    }
    if let Ok(cut) = onnx::find_cut(&model, None) {
        let _ = onnx::surgery::extractor(&model, &cut, None);
        let _ = onnx::surgery::extractor(&model, &cut, Some(16));
    }
    let _ = onnx::surgery::opset(&model);
});
