//! Hostile inputs, run through the binary as a CI pipeline would run it: models and
//! data built to break a loader (path traversal, sizes that lie, cycles, zip bombs,
//! NaN), numerical dead ends, overwrites and Ctrl-C. Each test asserts the exit code,
//! that the message names the file, node, field or sample at fault, and that nothing
//! in the case's folder was created or changed.
//!
//! With `NNMEND_HOSTILE_DIR` set, each case keeps its files in a folder of that name
//! and writes `cases.jsonl` (its command lines and exit codes), which
//! `tools/bench/hostile_memory.py` replays to measure peak memory.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use flate2::write::DeflateEncoder;
use flate2::Compression;
use ndarray::{Array, Array1, Array4};
use ndarray_npy::NpzWriter;
use prost::Message;

use super::common::*;
use nnmend::onnx::proto::{
    attribute_proto::AttributeType, tensor_proto::DataLocation, AttributeProto, ModelProto, OperatorSetIdProto,
    StringStringEntryProto,
};

/// One hostile case: its folder, and the command that must be refused.
struct Case {
    name: &'static str,
    dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

/// A file's length, modification time and (under 64 MiB) contents.
type FileState = (u64, Option<std::time::SystemTime>, Option<Vec<u8>>);

/// Length, modification time and (for files under 64 MiB) contents of every file
/// under a folder, links included, to show that a refused command changed nothing.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, FileState> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.is_dir() {
                stack.push(p);
                continue;
            }
            let small = meta.is_file() && meta.len() < 64 << 20;
            let content = small.then(|| std::fs::read(&p).unwrap());
            out.insert(p, (meta.len(), meta.modified().ok(), content));
        }
    }
    out
}

impl Case {
    fn new(name: &'static str) -> Case {
        match std::env::var_os("NNMEND_HOSTILE_DIR") {
            Some(root) => {
                let dir = PathBuf::from(root).join(name);
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::create_dir_all(&dir).unwrap();
                Case { name, dir, _tmp: None }
            }
            None => {
                let tmp = tempdir();
                Case {
                    name,
                    dir: tmp.path().to_path_buf(),
                    _tmp: Some(tmp),
                }
            }
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        let p = self.dir.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        p
    }

    /// Runs nnmend with `args`; asserts the exit code, that stderr holds every one of
    /// `needles`, and that no file in the case's folder appeared or changed.
    fn refused(&self, args: &[&str], code: i32, needles: &[&str]) -> String {
        let before = snapshot(&self.dir);
        let out = run(args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        for needle in needles {
            fails_with(&out, code, needle);
        }
        assert_eq!(
            snapshot(&self.dir),
            before,
            "{}: files were created or changed; stderr: {stderr}",
            self.name
        );
        if self._tmp.is_none() {
            // One line per command of the case, for tools/bench/hostile_memory.py.
            let line = serde_json::json!({"name": self.name, "args": args, "code": code});
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join("cases.jsonl"))
                .unwrap();
            writeln!(f, "{line}").unwrap();
        }
        stderr
    }

    /// The tiny CNN, changed by `edit`, saved as `rel` in the case's folder.
    fn model(&self, rel: &str, edit: impl FnOnce(&mut ModelProto)) -> PathBuf {
        let mut m = nnmend::onnx::io::load_raw(&fixture("tiny_cnn.onnx")).unwrap();
        edit(&mut m);
        let p = self.path(rel);
        std::fs::write(&p, m.encode_to_vec()).unwrap();
        p
    }
}

fn entry(k: &str, v: &str) -> StringStringEntryProto {
    StringStringEntryProto {
        key: Some(k.into()),
        value: Some(v.into()),
    }
}

/// Moves the first initializer's bytes out to `location` (written by the caller),
/// at `offset`, `length` bytes; returns the initializer's name.
fn externalise(m: &mut ModelProto, location: &str, offset: u64, length: u64) -> String {
    let t = &mut m.graph.as_mut().unwrap().initializer[0];
    t.raw_data = None;
    t.float_data.clear();
    t.external_data = vec![
        entry("location", location),
        entry("offset", &offset.to_string()),
        entry("length", &length.to_string()),
    ];
    t.set_data_location(DataLocation::External);
    t.name().to_string()
}

/// The bytes of the tiny CNN's first initializer.
fn first_weights() -> Vec<u8> {
    let m = nnmend::onnx::io::load_raw(&fixture("tiny_cnn.onnx")).unwrap();
    let t = &m.graph.unwrap().initializer[0];
    nnmend::onnx::tensor::to_f32(t)
        .unwrap()
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect()
}

// ----- hostile models -----

#[test]
fn external_data_with_an_absolute_location_is_refused() {
    let case = Case::new("external_absolute");
    let data = case.path("data.bin");
    let bytes = first_weights();
    std::fs::write(&data, &bytes).unwrap();
    let mut name = String::new();
    let model = case.model("m.onnx", |m| name = externalise(m, s(&data), 0, bytes.len() as u64));
    let out = case.path("cut.onnx");
    case.refused(
        &["cut", s(&model), "-o", s(&out)],
        1,
        &[s(&model), &format!("tensor '{name}'"), "absolute paths are not allowed"],
    );
}

#[test]
fn external_data_with_dotdot_is_refused() {
    let case = Case::new("external_dotdot");
    let bytes = first_weights();
    std::fs::write(case.path("outside/data.bin"), &bytes).unwrap();
    let mut name = String::new();
    let model = case.model("model/m.onnx", |m| {
        name = externalise(m, "../outside/data.bin", 0, bytes.len() as u64)
    });
    let out = case.path("model/cut.onnx");
    case.refused(
        &["cut", s(&model), "-o", s(&out)],
        1,
        &[
            s(&model),
            &format!("tensor '{name}'"),
            "'..' would leave the model's folder",
        ],
    );
}

#[test]
#[cfg(unix)]
fn external_data_through_a_symlink_out_of_the_folder_is_refused() {
    let case = Case::new("external_symlink");
    let bytes = first_weights();
    let target = case.path("outside/data.bin");
    std::fs::write(&target, &bytes).unwrap();
    std::os::unix::fs::symlink(&target, case.path("model/data.bin")).unwrap();
    let mut name = String::new();
    let model = case.model("model/m.onnx", |m| {
        name = externalise(m, "data.bin", 0, bytes.len() as u64)
    });
    let out = case.path("model/cut.onnx");
    case.refused(
        &["inspect", s(&model)],
        1,
        &[s(&model), &format!("tensor '{name}'"), "outside the model's folder"],
    );
    case.refused(&["cut", s(&model), "-o", s(&out)], 1, &["outside the model's folder"]);
}

#[test]
fn external_data_past_the_end_of_its_file_is_refused() {
    let case = Case::new("external_past_end");
    let bytes = first_weights();
    std::fs::write(case.path("data.bin"), &bytes).unwrap();
    let mut name = String::new();
    let n = bytes.len() as u64;
    let model = case.model("m.onnx", |m| name = externalise(m, "data.bin", n, n));
    let out = case.path("cut.onnx");
    case.refused(
        &["cut", s(&model), "-o", s(&out)],
        1,
        &[&format!("tensor '{name}'"), "runs past the end", "data.bin"],
    );
}

#[test]
fn external_data_whose_dims_call_for_more_than_its_length_is_refused() {
    let case = Case::new("external_dims_vs_length");
    let bytes = first_weights();
    // A sparse 4 GiB data file: its length is "present", but the dims, not the file,
    // decide how much is read, and they disagree with the entry's length.
    let data = std::fs::File::create(case.path("data.bin")).unwrap();
    data.set_len(4 << 30).unwrap();
    let mut name = String::new();
    let model = case.model("m.onnx", |m| {
        name = externalise(m, "data.bin", 0, bytes.len() as u64);
        m.graph.as_mut().unwrap().initializer[0].dims = vec![1 << 20, 1 << 20];
    });
    let out = case.path("cut.onnx");
    case.refused(
        &["cut", s(&model), "-o", s(&out)],
        1,
        &[
            &format!("tensor '{name}'"),
            "dims [1048576, 1048576] call for 4398046511104 bytes",
        ],
    );
}

#[test]
fn tensor_dims_larger_than_its_bytes_are_refused() {
    let case = Case::new("tensor_dims_vs_bytes");
    let mut name = String::new();
    let model = case.model("m.onnx", |m| {
        let t = &mut m.graph.as_mut().unwrap().initializer[0];
        t.dims = vec![1_000_000, 1_000_000];
        name = t.name().to_string();
    });
    let out = case.path("hybrid.onnx");
    let data = fixture("mnist-small");
    case.refused(
        &["fit", s(&model), "--train", s(&data), "-o", s(&out)],
        1,
        &[s(&model), &format!("tensor '{name}'"), "call for 4000000000000 bytes"],
    );
}

#[test]
fn tensor_dims_that_overflow_are_refused() {
    let case = Case::new("tensor_dims_overflow");
    let mut name = String::new();
    let model = case.model("m.onnx", |m| {
        let t = &mut m.graph.as_mut().unwrap().initializer[0];
        t.dims = vec![i64::MAX, i64::MAX, 4];
        name = t.name().to_string();
    });
    let out = case.path("cut.onnx");
    case.refused(
        &["cut", s(&model), "-o", s(&out)],
        1,
        &[&format!("tensor '{name}'"), "multiply past 2^64"],
    );
    let model = case.model("negative.onnx", |m| {
        m.graph.as_mut().unwrap().initializer[1].dims = vec![-3]
    });
    case.refused(&["inspect", s(&model)], 1, &["negative dimension"]);
}

#[test]
fn a_graph_cycle_is_refused() {
    let case = Case::new("graph_cycle");
    let model = case.model("m.onnx", |m| {
        // The first Relu now reads the second MaxPool's output, which depends on it.
        let g = m.graph.as_mut().unwrap();
        g.node[1].input[0] = g.node[5].output[0].clone();
    });
    let out = case.path("cut.onnx");
    case.refused(
        &["cut", s(&model), "-o", s(&out)],
        1,
        &[s(&model), "cycle", "can never run"],
    );
}

#[test]
fn a_node_input_that_nothing_produces_is_refused() {
    let case = Case::new("dangling_input");
    let model = case.model("m.onnx", |m| {
        m.graph.as_mut().unwrap().node[1].input[0] = "ghost".into()
    });
    let out = case.path("cut.onnx");
    case.refused(
        &["cut", s(&model), "-o", s(&out)],
        1,
        &[s(&model), "node '/net/net.1/Relu'", "tensor 'ghost'"],
    );
}

#[test]
fn duplicate_output_names_are_refused() {
    let case = Case::new("duplicate_output");
    let model = case.model("m.onnx", |m| {
        let g = m.graph.as_mut().unwrap();
        g.node[4].output[0] = g.node[1].output[0].clone();
    });
    let out = case.path("cut.onnx");
    case.refused(
        &["cut", s(&model), "-o", s(&out)],
        1,
        &[s(&model), "'/net/net.1/Relu_output_0' is produced by both"],
    );
    // A node writing over a graph input is a duplicate too.
    let model = case.model("shadow.onnx", |m| {
        let g = m.graph.as_mut().unwrap();
        g.node[1].output[0] = "input".into();
        g.node[2].input[0] = "input".into();
    });
    case.refused(
        &["inspect", s(&model)],
        1,
        &["writes tensor 'input', which is already a graph input"],
    );
}

#[test]
fn attributes_of_the_wrong_type_are_refused() {
    let case = Case::new("attribute_type");
    let model = case.model("float_strides.onnx", |m| {
        let conv = &mut m.graph.as_mut().unwrap().node[0];
        let a = conv.attribute.iter_mut().find(|a| a.name() == "strides").unwrap();
        *a = AttributeProto {
            name: Some("strides".into()),
            r#type: Some(AttributeType::Float as i32),
            f: Some(1.0),
            ..Default::default()
        };
    });
    let out = case.path("cut.onnx");
    case.refused(
        &["cut", s(&model), "-o", s(&out)],
        1,
        &[
            s(&model),
            "node '/net/net.0/Conv' (Conv)",
            "attribute 'strides' must be INTS",
            "FLOAT",
        ],
    );
    let model = case.model("string_kernel.onnx", |m| {
        let pool = &mut m.graph.as_mut().unwrap().node[2];
        let a = pool.attribute.iter_mut().find(|a| a.name() == "kernel_shape").unwrap();
        *a = AttributeProto {
            name: Some("kernel_shape".into()),
            r#type: Some(AttributeType::String as i32),
            s: Some(b"2x2".to_vec()),
            ..Default::default()
        };
    });
    case.refused(
        &["inspect", s(&model)],
        1,
        &[
            "node '/net/net.2/MaxPool' (MaxPool)",
            "attribute 'kernel_shape' must be INTS",
            "STRING",
        ],
    );
    // Declared INTS but holding a float: the payload is checked too.
    let model = case.model("lying_type.onnx", |m| {
        let conv = &mut m.graph.as_mut().unwrap().node[0];
        let a = conv.attribute.iter_mut().find(|a| a.name() == "dilations").unwrap();
        a.ints.clear();
        a.f = Some(2.0);
    });
    case.refused(&["inspect", s(&model)], 1, &["attribute 'dilations'", "holds FLOAT"]);
}

#[test]
fn absurd_opset_versions_are_refused() {
    let case = Case::new("absurd_opset");
    for (rel, version) in [("huge.onnx", 10_000), ("zero.onnx", 0), ("negative.onnx", -5)] {
        let model = case.model(rel, |m| {
            m.opset_import = vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(version),
            }]
        });
        let out = case.path("cut.onnx");
        case.refused(
            &["cut", s(&model), "-o", s(&out)],
            1,
            &[s(&model), &format!("domain 'ai.onnx (default)' version {version}")],
        );
    }
}

#[test]
fn a_model_over_the_protobuf_limit_is_refused_before_reading() {
    let case = Case::new("over_2gb");
    // Sparse: 3 GiB long, no disk used. Reading it would take 3 GiB of memory.
    let model = case.path("big.onnx");
    std::fs::File::create(&model).unwrap().set_len(3 << 30).unwrap();
    let out = case.path("cut.onnx");
    case.refused(
        &["cut", s(&model), "-o", s(&out)],
        1,
        &[
            s(&model),
            "3221225472 bytes, over protobuf's 2 GiB limit",
            "external data",
        ],
    );
}

// ----- hostile data -----

/// An IDX directory whose images header claims `n` images of `rows` x `cols`.
fn idx_dir(case: &Case, n: u32, rows: u32, cols: u32, have: usize) -> PathBuf {
    let dir = case.path("idx/x").parent().unwrap().to_path_buf();
    let mut img = Vec::new();
    for w in [0x0803u32, n, rows, cols] {
        img.extend(w.to_be_bytes());
    }
    img.extend(vec![0u8; have * (rows * cols) as usize]);
    std::fs::write(dir.join("train-images-idx3-ubyte"), img).unwrap();
    let mut lab = Vec::new();
    for w in [0x0801u32, n] {
        lab.extend(w.to_be_bytes());
    }
    lab.extend((0..have).map(|i| (i % 10) as u8));
    std::fs::write(dir.join("train-labels-idx1-ubyte"), lab).unwrap();
    dir
}

#[test]
fn an_idx_header_claiming_a_trillion_pixels_is_refused_before_allocating() {
    let case = Case::new("idx_trillion");
    // 10⁶ images of 1000x1000: 10¹² bytes claimed, 3 images present.
    let dir = idx_dir(&case, 1_000_000, 1000, 1000, 3);
    let out = case.path("hybrid.onnx");
    let model = fixture("tiny_cnn.onnx");
    case.refused(
        &["fit", s(&model), "--train", s(&dir), "-o", s(&out)],
        1,
        &[
            "train-images-idx3-ubyte",
            "IDX header says 1000000 images of 1000x1000",
            "3000000 bytes",
        ],
    );
    // Gzipped, the data's length is unknown until inflated; the header is checked
    // against the most the compressed file can inflate to.
    let raw = std::fs::read(dir.join("train-images-idx3-ubyte")).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), Compression::best());
    gz.write_all(&raw).unwrap();
    std::fs::write(dir.join("train-images-idx3-ubyte"), gz.finish().unwrap()).unwrap();
    case.refused(
        &["fit", s(&model), "--train", s(&dir), "-o", s(&out)],
        1,
        &[
            "train-images-idx3-ubyte",
            "(1000000000000 bytes), but a gzip file of",
            "inflates to at most 1032",
        ],
    );
    // The most a u32 count allows, of 28x28: refused the same way.
    let dir = idx_dir(&case, u32::MAX, 28, 28, 2);
    case.refused(
        &["eval", s(&model), "--data", s(&dir), "--split", "train"],
        1,
        &["IDX header says 4294967295 images of 28x28"],
    );
}

#[test]
fn a_cifar_file_that_is_not_whole_records_is_refused() {
    let case = Case::new("cifar_partial_record");
    std::fs::write(case.path("cifar/data_batch_1.bin"), vec![1u8; 3073 * 2 + 100]).unwrap();
    let dir = case.dir.join("cifar");
    let out = case.path("hybrid.onnx");
    let model = fixture("tiny_cnn.onnx");
    case.refused(
        &["fit", s(&model), "--train", s(&dir), "-o", s(&out)],
        1,
        &[
            "data_batch_1.bin",
            "length 6246 bytes is not a multiple of the CIFAR-10 record size 3073",
        ],
    );
}

/// Writes an NPZ with arrays `x` and `y` (any element types ndarray-npy writes).
fn npz<A, B, DA, DB>(path: &Path, x: &ndarray::Array<A, DA>, y: &ndarray::Array<B, DB>)
where
    A: ndarray_npy::WritableElement,
    B: ndarray_npy::WritableElement,
    DA: ndarray::Dimension,
    DB: ndarray::Dimension,
{
    let mut w = NpzWriter::new_compressed(std::fs::File::create(path).unwrap());
    w.add_array("x", x).unwrap();
    w.add_array("y", y).unwrap();
    w.finish().unwrap();
}

#[test]
fn npz_with_the_wrong_dtype_or_shape_is_refused() {
    let case = Case::new("npz_dtype_shape");
    let model = fixture("tiny_cnn.onnx");
    let labels = Array1::from_elem(4, 1i64);
    let p = case.path("int16.npz");
    npz(&p, &Array::from_elem((4, 1, 28, 28), 3i16), &labels);
    case.refused(&["eval", s(&model), "--data", s(&p)], 1, &[s(&p), "x.npy", "dtype <i2"]);
    let p = case.path("shape5.npz");
    npz(&p, &Array::from_elem((4, 5, 5, 5), 0.5f32), &labels);
    case.refused(
        &["eval", s(&model), "--data", s(&p)],
        1,
        &["x.npy", "x has shape [4, 5, 5, 5]", "neither axis 1 nor axis 3"],
    );
    let p = case.path("labels2d.npz");
    npz(
        &p,
        &Array::from_elem((4, 1, 28, 28), 0.5f32),
        &Array::from_elem((4, 2), 1i64),
    );
    case.refused(
        &["eval", s(&model), "--data", s(&p)],
        1,
        &["y.npy", "labels have shape [4, 2]"],
    );
    let p = case.path("float_labels.npz");
    npz(
        &p,
        &Array::from_elem((4, 1, 28, 28), 0.5f32),
        &Array1::from_elem(4, 1.0f32),
    );
    case.refused(
        &["eval", s(&model), "--data", s(&p)],
        1,
        &["y.npy", "expected an integer type"],
    );
    // Images that do not fit the model's input.
    let p = case.path("wrong_size.npz");
    npz(&p, &Array::from_elem((4, 1, 30, 30), 0.5f32), &labels);
    case.refused(&["eval", s(&model), "--data", s(&p)], 1, &["1x30x30"]);
}

/// A zip archive of one entry `x.npy` holding `payload` deflated, whose directories
/// declare `declared` bytes uncompressed (zip32, so under 4 GiB).
fn zip_with_declared_size(path: &Path, payload: &[u8], declared: u32) {
    let mut enc = DeflateEncoder::new(Vec::new(), Compression::best());
    enc.write_all(payload).unwrap();
    let data = enc.finish().unwrap();
    let mut crc = flate2::Crc::new();
    crc.update(payload);
    let name = b"x.npy";
    let mut z = Vec::new();
    let fixed = |z: &mut Vec<u8>| {
        z.extend(20u16.to_le_bytes()); // version needed
        z.extend(0u16.to_le_bytes()); // flags
        z.extend(8u16.to_le_bytes()); // deflate
        z.extend([0u8; 4]); // time, date
        z.extend(crc.sum().to_le_bytes());
        z.extend((data.len() as u32).to_le_bytes());
        z.extend(declared.to_le_bytes());
        z.extend((name.len() as u16).to_le_bytes());
        z.extend(0u16.to_le_bytes()); // extra
    };
    z.extend(b"PK\x03\x04");
    fixed(&mut z);
    z.extend(name);
    z.extend(&data);
    let dir_at = z.len();
    z.extend(b"PK\x01\x02");
    z.extend(20u16.to_le_bytes()); // version made by
    fixed(&mut z);
    z.extend([0u8; 10]); // comment length, disk, internal and external attributes
    z.extend(0u32.to_le_bytes()); // local header offset
    z.extend(name);
    let dir_len = z.len() - dir_at;
    z.extend(b"PK\x05\x06");
    z.extend([0u8; 4]);
    z.extend(1u16.to_le_bytes());
    z.extend(1u16.to_le_bytes());
    z.extend((dir_len as u32).to_le_bytes());
    z.extend((dir_at as u32).to_le_bytes());
    z.extend(0u16.to_le_bytes());
    std::fs::write(path, z).unwrap();
}

/// A `.npy` header for a uint8 array of `shape`, padded as NumPy pads it.
fn npy_header(shape: &str) -> Vec<u8> {
    let mut dict = format!("{{'descr': '|u1', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + dict.len() + 1) % 64 != 0 {
        dict.push(' ');
    }
    dict.push('\n');
    let mut h = b"\x93NUMPY\x01\x00".to_vec();
    h.extend((dict.len() as u16).to_le_bytes());
    h.extend(dict.as_bytes());
    h
}

#[test]
fn an_npz_zip_bomb_is_refused_before_inflating() {
    let case = Case::new("npz_zip_bomb");
    let model = fixture("tiny_cnn.onnx");
    // Declares 3.9 GB of images from a few kilobytes: more than deflate can produce.
    let p = case.path("declares.npz");
    let mut payload = npy_header("(5000000, 1, 28, 28)");
    payload.extend(vec![0u8; 1 << 20]);
    zip_with_declared_size(&p, &payload, 3_920_000_128);
    assert!(std::fs::metadata(&p).unwrap().len() < 64 << 10);
    case.refused(
        &["eval", s(&model), "--data", s(&p)],
        1,
        &[s(&p), "x.npy", "declares 3920000128 bytes uncompressed", "zip bomb"],
    );
    // Keeps to deflate's limit (300 MiB of zeros from ~300 KB): refused by its ratio.
    let p = case.path("inflates.npz");
    let n = (300 << 20) / 784;
    let mut payload = npy_header(&format!("({n}, 1, 28, 28)"));
    payload.resize(payload.len() + n * 784, 0);
    zip_with_declared_size(&p, &payload, payload.len() as u32);
    assert!(std::fs::metadata(&p).unwrap().len() < 1 << 20);
    case.refused(&["eval", s(&model), "--data", s(&p)], 1, &["x.npy", "likely zip bomb"]);
}

/// A PNG of `w` x `h` with `channels` (1 or 3) channels.
fn png(path: &Path, w: u32, h: u32, channels: u8) {
    let img: image::DynamicImage = if channels == 1 {
        image::DynamicImage::ImageLuma8(image::GrayImage::new(w, h))
    } else {
        image::DynamicImage::ImageRgb8(image::RgbImage::new(w, h))
    };
    img.save(path).unwrap();
}

#[test]
fn images_of_the_wrong_size_or_channels_are_refused_naming_the_file() {
    let case = Case::new("image_folder_mismatch");
    let model = fixture("tiny_cnn.onnx");
    png(&case.path("mixed/a/1.png"), 28, 28, 1);
    png(&case.path("mixed/b/2.png"), 28, 28, 1);
    png(&case.path("mixed/b/3.png"), 32, 28, 1);
    let dir = case.dir.join("mixed");
    case.refused(
        &["eval", s(&model), "--data", s(&dir)],
        1,
        &[
            "b/3.png",
            "image is 32x28 with 1 channel(s)",
            "a/1.png",
            "all images must match",
        ],
    );
    png(&case.path("rgb/a/1.png"), 28, 28, 1);
    png(&case.path("rgb/b/2.png"), 28, 28, 3);
    let dir = case.dir.join("rgb");
    case.refused(
        &["eval", s(&model), "--data", s(&dir)],
        1,
        &["b/2.png", "with 3 channel(s)"],
    );
    // All alike, but not what the model takes: no silent resize.
    png(&case.path("big/a/1.png"), 32, 32, 3);
    png(&case.path("big/b/2.png"), 32, 32, 3);
    let dir = case.dir.join("big");
    case.refused(&["eval", s(&model), "--data", s(&dir)], 1, &["3x32x32"]);
}

#[test]
fn labels_out_of_range_for_the_model_are_refused_naming_the_sample() {
    let case = Case::new("label_out_of_range");
    let model = fixture("tiny_cnn.onnx");
    let mut y = Array1::from_elem(6, 1i64);
    y[4] = 12;
    let p = case.path("labels.npz");
    npz(&p, &Array::from_elem((6, 1, 28, 28), 0.5f32), &y);
    let needles = [s(&p), "sample 4 has label 12, but the model has 10 classes"];
    case.refused(&["eval", s(&model), "--data", s(&p)], 1, &needles);
    let out = case.path("hybrid.onnx");
    case.refused(&["fit", s(&model), "--train", s(&p), "-o", s(&out)], 1, &needles);
    let adv = case.path("adv.npz");
    case.refused(
        &["attack", s(&model), "--data", s(&p), "--eps", "0.1", "-o", s(&adv)],
        1,
        &["sample 4 has label 12"],
    );
    // A label of 10⁹ must not size anything.
    y[4] = 1_000_000_000;
    let p = case.path("huge_label.npz");
    npz(&p, &Array::from_elem((6, 1, 28, 28), 0.5f32), &y);
    case.refused(
        &["fit", s(&model), "--train", s(&p), "-o", s(&out)],
        1,
        &["sample 4 has label 1000000000"],
    );
}

#[test]
fn nan_or_inf_pixels_are_reported_with_the_sample() {
    let case = Case::new("nan_pixels");
    let model = fixture("tiny_cnn.onnx");
    let y = Array1::from_shape_fn(6, |i| (i % 10) as i64);
    for (rel, value, word) in [("nan.npz", f32::NAN, "NaN"), ("inf.npz", f32::INFINITY, "inf")] {
        let mut x = Array4::from_elem((6, 1, 28, 28), 0.5f32);
        x[[3, 0, 7, 9]] = value;
        let p = case.path(rel);
        npz(&p, &x, &y);
        let out = case.path("hybrid.onnx");
        case.refused(
            &["fit", s(&model), "--train", s(&p), "-o", s(&out)],
            1,
            &[s(&p), &format!("sample 3 has pixel value {word}")],
        );
    }
}

// ----- numerical trouble -----

/// A hybrid of the tiny CNN on 300 MNIST images and an FGSM file against it, in `dir`.
fn hybrid_and_attack(dir: &Path) -> (PathBuf, PathBuf) {
    let data = fixture("mnist-small");
    let hybrid = dir.join("lh.onnx");
    let adv = dir.join("adv.npz");
    let model = fixture("tiny_cnn.onnx");
    ok({
        let mut c = nnmend();
        c.args([
            "fit",
            s(&model),
            "--train",
            s(&data),
            "--limit",
            "300",
            "-o",
            s(&hybrid),
        ]);
        c
    });
    ok({
        let mut c = nnmend();
        c.args(["attack", s(&hybrid), "--data", s(&data), "--split", "train"]);
        c.args(["--limit", "100", "--eps", "0.1", "-o", s(&adv)]);
        c
    });
    (hybrid, adv)
}

#[test]
fn a_stalled_repair_lp_writes_no_model_and_gives_advice() {
    let case = Case::new("repair_stalled");
    let (hybrid, adv) = hybrid_and_attack(&case.dir);
    let data = fixture("mnist-small");
    let out = case.path("rlh.onnx");
    for mode in ["paper", "margin"] {
        case.refused(
            &[
                "repair",
                s(&hybrid),
                "--adv",
                s(&adv),
                "--train",
                s(&data),
                "--mode",
                mode,
                "--lp-max-iter",
                "1",
                "-o",
                s(&out),
            ],
            1,
            &[
                "the repair LP ended Stalled",
                "--lp-max-iter 1",
                "no model written to",
                "--select wilcoxon",
            ],
        );
    }
}

#[test]
fn repair_with_no_adversarial_examples_gives_advice() {
    let case = Case::new("repair_no_adversarials");
    let (hybrid, _) = hybrid_and_attack(&case.dir);
    let data = fixture("mnist-small");
    // ε = 0 changes nothing: no row succeeds.
    let adv = case.path("none.npz");
    ok({
        let mut c = nnmend();
        c.args(["attack", s(&hybrid), "--data", s(&data), "--split", "train"]);
        c.args(["--limit", "20", "--eps", "0", "-o", s(&adv)]);
        c
    });
    let out = case.path("rlh.onnx");
    case.refused(
        &[
            "repair",
            s(&hybrid),
            "--adv",
            s(&adv),
            "--train",
            s(&data),
            "-o",
            s(&out),
        ],
        1,
        &[s(&adv), "no row has success = true", "larger --eps", "--method pgd"],
    );
}

#[test]
fn a_degenerate_svm_on_all_zero_features_is_refused_with_advice() {
    let case = Case::new("svm_zero_features");
    // Zero weights and biases in both Convs: every feature of every image is 0.
    let model = case.model("dead.onnx", |m| {
        let g = m.graph.as_mut().unwrap();
        for t in g.initializer.iter_mut().take(4) {
            let n = t.dims.iter().product::<i64>() as usize;
            t.raw_data = Some(vec![0u8; 4 * n]);
            t.float_data.clear();
        }
    });
    let data = fixture("mnist-small");
    let out = case.path("hybrid.onnx");
    case.refused(
        &["fit", s(&model), "--train", s(&data), "--limit", "50", "-o", s(&out)],
        1,
        &["the same features", "all zero", "nothing to separate", "--mean/--std"],
    );
}

// ----- no data lost -----

#[test]
fn an_output_equal_to_an_input_is_refused_without_force() {
    let case = Case::new("overwrite_refused");
    let model = case.path("m.onnx");
    std::fs::copy(fixture("tiny_cnn.onnx"), &model).unwrap();
    let data = fixture("mnist-small");
    let npz = case.path("test.npz");
    std::fs::copy(fixture("mnist-small-test.npz"), &npz).unwrap();
    let msg = [s(&model), "is also an input", "--force"];
    case.refused(&["cut", s(&model), "-o", s(&model)], 2, &msg);
    case.refused(&["grad", s(&model), "-o", s(&model)], 2, &msg);
    case.refused(&["fit", s(&model), "--train", s(&data), "-o", s(&model)], 2, &msg);
    case.refused(
        &["attack", s(&model), "--data", s(&npz), "--eps", "0.1", "-o", s(&npz)],
        2,
        &["test.npz", "is also an input"],
    );
    case.refused(
        &["features", s(&model), "--data", s(&npz), "-o", s(&npz)],
        2,
        &["is also an input"],
    );
    // A hard link is the same file under another name.
    let link = case.path("link.onnx");
    std::fs::hard_link(&model, &link).unwrap();
    case.refused(
        &["cut", s(&model), "-o", s(&link)],
        2,
        &["link.onnx", "is also an input"],
    );
    // A bad option value is a usage error too.
    let out = case.path("lh.onnx");
    case.refused(
        &["fit", s(&model), "--train", s(&data), "--c", "0", "-o", s(&out)],
        2,
        &["--c must be a positive number, got 0"],
    );
}

#[test]
fn force_lets_an_output_replace_its_input() {
    let tmp = tempdir();
    let before = std::fs::read(fixture("tiny_cnn.onnx")).unwrap();
    // Global, so before or after the subcommand.
    for (i, force) in [["--force", "cut"], ["cut", "--force"]].iter().enumerate() {
        let model = tmp.path().join(format!("m{i}.onnx"));
        std::fs::write(&model, &before).unwrap();
        let mut args = force.to_vec();
        args.extend([s(&model), "-o", s(&model)]);
        let out = run(&args);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_ne!(
            std::fs::read(&model).unwrap(),
            before,
            "the extractor replaced the classifier"
        );
        let v = json(&run(&["inspect", s(&model), "--json"]));
        assert!(v["cut"]["feature_dim"].as_u64().unwrap() > 0);
    }
    assert_eq!(listing(tmp.path()), ["m0.onnx", "m1.onnx"], "no temporary file left");
}

/// The files in `dir`, by name.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Starts `nnmend args`, waits until `ready` holds for the lines it has written on
/// stderr so far and the files in `out_dir` (or fails if the process ends first, or
/// after two minutes), sends SIGINT and returns the exit code and the whole of stderr.
fn interrupt(args: &[&str], out_dir: &Path, ready: impl Fn(&[String], &[String]) -> bool) -> (Option<i32>, String) {
    let mut child = nnmend()
        .args(args)
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // stderr is read on its own thread, so the child never blocks on a full pipe.
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let reader = {
        let lines = lines.clone();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        })
    };
    let seen = || lines.lock().unwrap().clone();
    let started = Instant::now();
    while !ready(&seen(), &listing(out_dir)) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the command ended before it could be interrupted; stderr: {:?}",
            seen()
        );
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "never ready; stderr: {:?}",
            seen()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let pid = child.id().to_string();
    let killed = Command::new("kill").args(["-INT", &pid]).status().unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    reader.join().unwrap();
    (status.code(), seen().join("\n"))
}

#[test]
fn ctrl_c_during_work_exits_130_and_leaves_nothing() {
    let out_dir = tempdir();
    let data = fixture("mnist-small");
    let model = fixture("mnist_paper.onnx");
    let out = out_dir.path().join("exp");
    // PGD on 500 test images at three radii runs for far longer than a signal takes.
    let args = [
        "run",
        s(&model),
        "--train",
        s(&data),
        "--test",
        s(&data),
        "--train-limit",
        "200",
        "--no-kernel",
        "--attack",
        "pgd",
        "--eps",
        "0.1,0.2,0.3",
        "--out",
        s(&out),
    ];
    // Interrupted once run says on stderr that the attack on NN has begun.
    let (code, stderr) = interrupt(&args, out_dir.path(), |lines, _| {
        lines.iter().any(|l| l.contains("attacking NN"))
    });
    assert_eq!(code, Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert_eq!(listing(out_dir.path()), Vec::<String>::new());
}

#[test]
fn ctrl_c_while_an_output_is_written_removes_the_temporary_file() {
    let out_dir = tempdir();
    let Some(shared) = shared() else { return };
    let data = shared.path("datasets/mnist");
    let model = fixture("mnist_paper.onnx");
    let features = out_dir.path().join("features.npz");
    // 30,000 rows of 800 features compress for long enough to be caught mid-write.
    let args = [
        "features",
        s(&model),
        "--data",
        s(&data),
        "--split",
        "train",
        "--limit",
        "30000",
        "-o",
        s(&features),
    ];
    let (code, stderr) = interrupt(&args, out_dir.path(), |_, names| {
        names.iter().any(|n| n.starts_with(".nnmend-") && n.ends_with(".tmp"))
    });
    assert_eq!(code, Some(130), "{stderr}");
    assert_eq!(listing(out_dir.path()), Vec::<String>::new(), "{stderr}");
}
