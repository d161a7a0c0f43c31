//! External data: tensors stored beside the model are read back, and locations that
//! would leave the model's folder are refused with the tensor and entry named.

use super::common::*;
use nnmend::onnx::proto::{tensor_proto::DataLocation, StringStringEntryProto};
use nnmend::onnx::tensor::to_f32;
use nnmend::onnx::{io::load_raw, load, save, ModelProto};

fn entry(k: &str, v: &str) -> StringStringEntryProto {
    StringStringEntryProto {
        key: Some(k.into()),
        value: Some(v.into()),
    }
}

/// The tiny model with every float initializer moved into `data.bin` at `location`.
fn externalised(location: &str, dir: &std::path::Path) -> (ModelProto, ModelProto) {
    let original = load_raw(&fixture("tiny_cnn.onnx")).unwrap();
    let mut model = original.clone();
    let mut blob = Vec::new();
    for t in model.graph.as_mut().unwrap().initializer.iter_mut() {
        let values = to_f32(t).unwrap();
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        // Offsets aligned as the ONNX external-data writer aligns them.
        while blob.len() % 64 != 0 {
            blob.push(0);
        }
        let offset = blob.len();
        blob.extend(&bytes);
        t.raw_data = None;
        t.float_data.clear();
        t.external_data = vec![
            entry("location", location),
            entry("offset", &offset.to_string()),
            entry("length", &bytes.len().to_string()),
        ];
        t.set_data_location(DataLocation::External);
    }
    std::fs::write(dir.join("data.bin"), &blob).unwrap();
    (original, model)
}

#[test]
fn external_data_is_read_back() {
    let tmp = tempdir();
    let (original, model) = externalised("data.bin", tmp.path());
    let path = tmp.path().join("m.onnx");
    save(&model, &path).unwrap();
    let loaded = load(&path).unwrap();
    assert_eq!(
        loaded.external_tensors,
        original.graph.as_ref().unwrap().initializer.len()
    );
    let (a, b) = (original.graph.as_ref().unwrap(), loaded.model.graph.as_ref().unwrap());
    for (x, y) in a.initializer.iter().zip(&b.initializer) {
        assert_eq!(to_f32(x).unwrap(), to_f32(y).unwrap(), "{}", x.name());
        assert!(y.external_data.is_empty());
    }
    // And the CLI runs such a model.
    let out = nnmend().args(["inspect", path.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn locations_leaving_the_folder_are_refused() {
    let tmp = tempdir();
    let inner = tmp.path().join("model");
    std::fs::create_dir(&inner).unwrap();
    let (_, model) = externalised("../data.bin", tmp.path());
    let path = inner.join("m.onnx");
    save(&model, &path).unwrap();
    let err = load(&path).unwrap_err().to_string();
    assert!(err.contains("'..'") && err.contains("m.onnx"), "{err}");

    let (_, model) = externalised("/etc/passwd", tmp.path());
    save(&model, &path).unwrap();
    let err = load(&path).unwrap_err().to_string();
    assert!(err.contains("absolute"), "{err}");

    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(tmp.path().join("data.bin"), inner.join("link.bin")).unwrap();
        let (_, model) = externalised("link.bin", tmp.path());
        save(&model, &path).unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(err.contains("outside the model's folder"), "{err}");
    }
}

#[test]
fn a_length_past_the_end_is_refused() {
    let tmp = tempdir();
    let (_, mut model) = externalised("data.bin", tmp.path());
    let t = &mut model.graph.as_mut().unwrap().initializer[0];
    let name = t.name().to_string();
    t.external_data[2] = entry("length", "999999999");
    let path = tmp.path().join("m.onnx");
    save(&model, &path).unwrap();
    let err = load(&path).unwrap_err().to_string();
    assert!(err.contains(&name) && err.contains("past the end"), "{err}");
}
