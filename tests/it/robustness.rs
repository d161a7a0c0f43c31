//! Corrupted models never crash nnmend: random byte damage to a real model gives
//! either a working model or an error, from decoding through cutting to running.

use rand::{Rng, SeedableRng};

use super::common::*;
use nnmend::engine::{tract::Tract, Engine};
use nnmend::onnx::{find_cut, io::decode, surgery};

#[test]
fn damaged_models_give_errors_not_panics() {
    let original = std::fs::read(fixture("tiny_cnn.onnx")).unwrap();
    let path = std::path::Path::new("damaged.onnx");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let mut decoded = 0;
    for _ in 0..300 {
        let mut bytes = original.clone();
        for _ in 0..rng.random_range(1..4) {
            let at = rng.random_range(0..bytes.len());
            bytes[at] = rng.random();
        }
        let outcome = std::panic::catch_unwind(|| {
            let Ok(model) = decode(path, &bytes) else { return };
            let Ok(cut) = find_cut(&model, None) else { return };
            let Ok(extractor) = surgery::extractor(&model, &cut, None) else {
                return;
            };
            if let Ok(session) = Tract.prepare(&extractor) {
                let mut shape = vec![2];
                shape.extend(session.sample_shape());
                let _ = session.run(ndarray::ArrayD::<f32>::zeros(shape).view());
            }
        });
        assert!(outcome.is_ok(), "a damaged model made nnmend panic");
        decoded += 1;
    }
    assert_eq!(decoded, 300);
}
