//! Decode → encode loses nothing: the Python `onnx` package parses the re-encoded model
//! as equal to the original, for every fixture and every shared third-party model.

use prost::Message;

use super::common::*;
use nnmend::onnx::io::{decode, load_raw};

/// The committed fixture models.
fn fixture_models() -> Vec<std::path::PathBuf> {
    let dir = root().join("fixtures");
    let mut fixtures: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "onnx"))
        .collect();
    fixtures.sort();
    assert!(
        fixtures.len() >= 4,
        "expected the committed fixture models in {}",
        dir.display()
    );
    fixtures
}

/// Each model decodes and re-encodes to a model that Python's `onnx` finds equal.
fn reencoded_models_equal_their_originals(models: &[std::path::PathBuf]) {
    let tmp = tempdir();
    for (i, path) in models.iter().enumerate() {
        let model = load_raw(path).unwrap();
        let bytes = model.encode_to_vec();
        assert_eq!(decode(path, &bytes).unwrap(), model, "{}", path.display());
        let out = tmp.path().join(format!("{i}.onnx"));
        std::fs::write(&out, &bytes).unwrap();
        let mut cmd = python("onnx_equal.py");
        cmd.arg(path).arg(&out);
        ok(cmd);
    }
}

#[test]
fn reencoded_fixtures_equal_their_originals_in_python_onnx() {
    reencoded_models_equal_their_originals(&fixture_models());
}

#[test]
fn reencoded_shared_models_equal_their_originals_in_python_onnx() {
    let Some(shared) = shared() else { return };
    reencoded_models_equal_their_originals(&shared.models());
}

#[test]
fn shared_models_reencode_byte_for_byte() {
    let Some(shared) = shared() else { return };
    // Their exporters write fields in field-number order, as prost does.
    for path in shared.models() {
        let original = std::fs::read(&path).unwrap();
        assert_eq!(load_raw(&path).unwrap().encode_to_vec(), original, "{}", path.display());
    }
}

#[test]
fn the_everything_fixture_survives_a_second_round_trip_unchanged() {
    // tools/fixtures/make_proto_fixture.py sets every message and field of the IR. prost writes a
    // oneof at its own tag, so bytes may move within a TypeProto, but once re-encoded,
    // the encoding is stable.
    let path = fixture("proto_everything.onnx");
    let once = load_raw(&path).unwrap().encode_to_vec();
    let twice = decode(&path, &once).unwrap().encode_to_vec();
    assert_eq!(once, twice);
    assert_eq!(once.len(), std::fs::read(&path).unwrap().len());
}

#[test]
fn garbage_is_refused_with_the_file_named() {
    let tmp = tempdir();
    let path = tmp.path().join("garbage.onnx");
    std::fs::write(&path, b"\xff\xff\xff\xffnot a model at all").unwrap();
    let err = load_raw(&path).unwrap_err().to_string();
    assert!(
        err.contains("garbage.onnx") && err.contains("not a valid ONNX model"),
        "{err}"
    );
}
