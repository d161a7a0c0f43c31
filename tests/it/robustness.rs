//! Corrupted models never crash nnmend: random byte damage to a real model gives
//! either a working model or an error, from decoding through cutting to running.

use rand::{Rng, SeedableRng};

use super::common::*;
use nnmend::engine::{tract::Tract, Engine};
use nnmend::onnx::{find_cut, io::decode, surgery};

/// How far a damaged model got before it was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Reached {
    Nothing,
    Decoded,
    Cut,
    Extracted,
    Prepared,
    Ran,
}

#[test]
fn damaged_models_give_errors_not_panics() {
    let original = std::fs::read(fixture("tiny_cnn.onnx")).unwrap();
    let path = std::path::Path::new("damaged.onnx");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let mut reached = std::collections::BTreeMap::new();
    for _ in 0..300 {
        let mut bytes = original.clone();
        for _ in 0..rng.random_range(1..4) {
            let at = rng.random_range(0..bytes.len());
            bytes[at] = rng.random();
        }
        let outcome = std::panic::catch_unwind(|| {
            let Ok(model) = decode(path, &bytes) else {
                return Reached::Nothing;
            };
            let Ok(cut) = find_cut(&model, None) else {
                return Reached::Decoded;
            };
            let Ok(extractor) = surgery::extractor(&model, &cut, None) else {
                return Reached::Cut;
            };
            let Ok(session) = Tract.prepare(&extractor) else {
                return Reached::Extracted;
            };
            let mut shape = vec![2];
            shape.extend(session.sample_shape());
            match session.run(ndarray::ArrayD::<f32>::zeros(shape).view()) {
                Ok(_) => Reached::Ran,
                Err(_) => Reached::Prepared,
            }
        });
        let Ok(stage) = outcome else {
            panic!("a damaged model made nnmend panic")
        };
        *reached.entry(stage).or_insert(0) += 1;
    }
    // The damage reached every stage: some models fail to decode, some decode but are
    // refused later, and some run. A stage no damaged model reaches would be untested.
    for stage in [Reached::Nothing, Reached::Decoded, Reached::Ran] {
        assert!(
            reached.contains_key(&stage),
            "no damaged model stopped at {stage:?}: {reached:?}"
        );
    }
    let past_decoding: usize = reached.range(Reached::Decoded..).map(|(_, n)| n).sum();
    assert!(
        past_decoding >= 30,
        "only {past_decoding} of 300 damaged models decoded: {reached:?}"
    );
}

/// `tiny_cnn.onnx` with element `at` of its first initializer read by a `op` node set
/// to `value`, saved in `dir`; returns the path and the initializer's name.
fn poisoned(dir: &std::path::Path, op: &str, value: f32, at: usize) -> (std::path::PathBuf, String) {
    let mut model = nnmend::onnx::load(&fixture("tiny_cnn.onnx")).unwrap().model;
    let graph = model.graph.as_mut().unwrap();
    let node = graph.node.iter().find(|n| n.op_type() == op).unwrap().clone();
    let init = graph
        .initializer
        .iter_mut()
        .find(|t| node.input.iter().any(|i| i == t.name()))
        .unwrap();
    let name = init.name().to_string();
    let mut values = nnmend::onnx::tensor::to_f32(init).unwrap();
    values.as_slice_mut().unwrap()[at] = value;
    let dims: Vec<usize> = values.shape().to_vec();
    *init = nnmend::onnx::tensor::from_f32(&name, &dims, values.as_slice().unwrap());
    let path = dir.join(format!("poisoned_{op}.onnx"));
    nnmend::onnx::save(&model, &path).unwrap();
    (path, name)
}

#[test]
fn nan_or_infinite_weights_are_refused_with_the_initializer_named() {
    let tmp = tempdir();
    let data = fixture("mnist-small");
    for (op, value, at, word) in [("Conv", f32::NAN, 3, "NaN"), ("Gemm", f32::INFINITY, 17, "inf")] {
        let (model, name) = poisoned(tmp.path(), op, value, at);
        let out = tmp.path().join("lh.onnx");
        for args in [
            vec!["fit", s(&model), "--train", s(&data), "--limit", "50", "-o", s(&out)],
            vec!["eval", s(&model), "--data", s(&data), "--limit", "50"],
        ] {
            let done = run(&args);
            fails_with(&done, 1, &format!("initializer '{name}'"));
            let stderr = String::from_utf8_lossy(&done.stderr);
            assert!(
                stderr.contains(&format!("element {at} of")) && stderr.contains(word) && stderr.contains(op),
                "{stderr}"
            );
            assert!(stderr.contains(s(&model)), "the file is not named: {stderr}");
            assert!(!out.exists());
        }
    }
}
