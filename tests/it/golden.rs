//! The quick start's experiment in the seed paper's setting (`--mode paper --attack
//! fgsm`, one repair round, no robust accuracy: pinned so that later changes of the
//! defaults do not move it) against the record in
//! `fixtures/reference/run_quickstart_paper.json`: every number the record holds of
//! `report.json` (timings, versions and the engine aside; keys added since may be
//! there too) and every model's weights, bit for bit. The record was made before the
//! experiment, report and CLI layers were rewritten; a change that moves any of its
//! numbers fails here.
//!
//! `NNMEND_RECORD_GOLDEN=1` rewrites the record from the binary under test (only for a
//! change meant to move the numbers, stated in its commit).

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::common::*;

const RECORD: &str = "reference/run_quickstart_paper.json";

/// Keys whose values are not results: how long things took and what ran them.
const NOT_RESULTS: [&str; 4] = ["timings", "versions", "engine", "seconds"];

/// `value` without the [`NOT_RESULTS`] keys, at any depth.
fn results(value: &serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => map
            .iter()
            .filter(|(k, _)| !NOT_RESULTS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), results(v)))
            .collect::<serde_json::Map<_, _>>()
            .into(),
        serde_json::Value::Array(items) => items.iter().map(results).collect::<Vec<_>>().into(),
        other => other.clone(),
    }
}

/// Asserts that every key of `want`, at any depth, is in `got` with the same value
/// (`got` may hold more keys); `at` names the place for the message.
fn holds(got: &serde_json::Value, want: &serde_json::Value, at: &str) {
    match (got, want) {
        (serde_json::Value::Object(g), serde_json::Value::Object(w)) => {
            for (key, value) in w {
                let inner = format!("{at}.{key}");
                holds(g.get(key).unwrap_or(&serde_json::Value::Null), value, &inner);
            }
        }
        (serde_json::Value::Array(g), serde_json::Value::Array(w)) => {
            assert_eq!(g.len(), w.len(), "{at} has {} entries, the record {}", g.len(), w.len());
            for (i, (g, w)) in g.iter().zip(w).enumerate() {
                holds(g, w, &format!("{at}[{i}]"));
            }
        }
        _ => assert_eq!(got, want, "{at} differs from the record"),
    }
}

/// SHA-256 over a model's initializers in name order: name, dims and f32 values.
fn weights_digest(path: &Path) -> String {
    let model = nnmend::onnx::load(path).unwrap().model;
    let mut tensors = model.graph.unwrap().initializer;
    tensors.sort_by(|a, b| a.name().cmp(b.name()));
    let mut hash = Sha256::new();
    for t in &tensors {
        hash.update(t.name().as_bytes());
        for d in &t.dims {
            hash.update(d.to_le_bytes());
        }
        let values = nnmend::onnx::tensor::to_f32(t).unwrap();
        for v in values.iter() {
            hash.update(v.to_bits().to_le_bytes());
        }
    }
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn the_quick_start_in_paper_mode_matches_its_record() {
    let tmp = tempdir();
    let out = tmp.path().join("run");
    let status = nnmend()
        .current_dir(root())
        .args([
            "run",
            "fixtures/mnist_paper.onnx",
            "--train",
            "fixtures/mnist-small",
            "--test",
            "fixtures/mnist-small",
            "--eps",
            "0.05,0.1,0.15,0.2",
            "--repair-samples",
            "5",
            "--mode",
            "paper",
            "--attack",
            "fgsm",
            "--rounds",
            "1",
            "--pgd-limit",
            "0",
            // The record's heads came from the dual solver.
            "--solver",
            "dual",
            "--threads",
            "2",
            "--quiet",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let mut models = serde_json::Map::new();
    let mut files: Vec<_> = std::fs::read_dir(out.join("models"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    for f in files {
        models.insert(f.clone(), weights_digest(&out.join("models").join(&f)).into());
    }
    let got = serde_json::json!({"report": results(&report), "weights": models});
    let path = root().join("fixtures").join(RECORD);
    if std::env::var_os("NNMEND_RECORD_GOLDEN").is_some() {
        std::fs::write(&path, serde_json::to_string_pretty(&got).unwrap() + "\n").unwrap();
        return;
    }
    let want: serde_json::Value = serde_json::from_slice(&std::fs::read(fixture(RECORD)).unwrap()).unwrap();
    assert_eq!(got["weights"], want["weights"], "model weights differ from the record");
    holds(&got["report"], &want["report"], "report.json");
}
