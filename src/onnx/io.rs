//! Loading and saving ONNX files.
//!
//! Loading decodes the protobuf and then pulls external data (tensors stored beside the
//! model, as large exports and the dynamo exporter write them) into the tensors, so the
//! rest of nnmend sees one self-contained model. External locations are resolved
//! relative to the model's folder; absolute paths, `..` and links that leave the folder
//! are refused, because a model file is untrusted input.
//!
//! Saving is atomic: the bytes go to a temporary file in the target's folder, which is
//! then renamed over the target, so a crash never leaves half a model behind.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Component, Path, PathBuf};

use prost::Message;

use super::proto::{tensor_proto, ModelProto, TensorProto};
use super::OnnxError;

/// A model read from disk, with its external data already inlined.
#[derive(Debug, Clone)]
pub struct LoadedModel {
    /// The decoded model.
    pub model: ModelProto,
    /// Where it was read from.
    pub path: PathBuf,
    /// How many tensors had their data outside the `.onnx` file.
    pub external_tensors: usize,
}

/// Decodes a model without touching external data (byte-level round trips use this).
pub fn decode(path: &Path, bytes: &[u8]) -> Result<ModelProto, OnnxError> {
    let model = ModelProto::decode(bytes).map_err(|e| OnnxError::Decode {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    if model.graph.is_none() {
        return Err(OnnxError::Decode {
            path: path.to_path_buf(),
            reason: "the model holds no graph".into(),
        });
    }
    Ok(model)
}

/// Protobuf's limit on one message: an ONNX file above it cannot be valid (its weights
/// must be stored as external data), and reading it would only waste memory.
pub const MAX_PROTOBUF_BYTES: u64 = 2 << 30;

/// Reads and decodes `path` as it is, external-data references left in place. The
/// file's size is checked before it is read.
pub fn load_raw(path: &Path) -> Result<ModelProto, OnnxError> {
    let io = |source| OnnxError::Io {
        path: path.to_path_buf(),
        source,
    };
    let size = fs::metadata(path).map_err(io)?.len();
    if size > MAX_PROTOBUF_BYTES {
        return Err(OnnxError::TooLarge {
            path: path.to_path_buf(),
            size,
        });
    }
    let bytes = fs::read(path).map_err(io)?;
    decode(path, &bytes)
}

/// Reads a model for use: [`load`], then every float weight checked to be finite
/// ([`super::graph::check_finite_weights`]), so that NaN weights are refused naming the
/// initializer rather than turning every output into NaN.
pub fn load_model(path: &Path) -> Result<ModelProto, OnnxError> {
    let model = load(path)?.model;
    super::graph::check_finite_weights(&model).map_err(|e| OnnxError::Invalid {
        path: path.to_path_buf(),
        error: Box::new(e),
    })?;
    Ok(model)
}

/// Reads `path`, checks it (see [`super::check`]) and inlines every tensor stored as
/// external data, each checked against its dims before its bytes are read.
pub fn load(path: &Path) -> Result<LoadedModel, OnnxError> {
    let mut model = load_raw(path)?;
    super::check::model(&model).map_err(|e| OnnxError::Invalid {
        path: path.to_path_buf(),
        error: Box::new(e),
    })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut external_tensors = 0;
    if let Some(graph) = model.graph.as_mut() {
        for tensor in graph.initializer.iter_mut() {
            if inline_external(path, &dir, tensor)? {
                external_tensors += 1;
            }
        }
        for node in graph.node.iter_mut() {
            for attr in node.attribute.iter_mut() {
                if let Some(t) = attr.t.as_mut() {
                    if inline_external(path, &dir, t)? {
                        external_tensors += 1;
                    }
                }
            }
        }
    }
    Ok(LoadedModel {
        model,
        path: path.to_path_buf(),
        external_tensors,
    })
}

/// Encodes `model` and writes it to `path` atomically.
pub fn save(model: &ModelProto, path: &Path) -> Result<(), OnnxError> {
    write_atomic(path, &model.encode_to_vec())
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), OnnxError> {
    let io_err = |source| OnnxError::Io {
        path: path.to_path_buf(),
        source,
    };
    crate::atomic::write_with(path, io_err, |file| file.write_all(bytes).map_err(io_err))
}

/// Fails when `output` names the same file as one of `inputs` (the same path, a link
/// to it, or a hard link), so that no command overwrites what it reads.
pub fn ensure_distinct(output: &Path, inputs: &[&Path]) -> Result<(), OnnxError> {
    let out = fs::canonicalize(output).ok();
    for input in inputs {
        let same = match (&out, fs::canonicalize(input).ok()) {
            (Some(a), Some(b)) => *a == b || same_inode(a, &b),
            _ => output == *input,
        };
        if same {
            return Err(OnnxError::SameFile {
                output: output.to_path_buf(),
                input: input.to_path_buf(),
            });
        }
    }
    Ok(())
}

/// Whether two existing paths are hard links to one file.
#[cfg(unix)]
fn same_inode(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_inode(_: &Path, _: &Path) -> bool {
    false
}

const EXTERNAL: i32 = tensor_proto::DataLocation::External as i32;

/// Replaces an external-data reference by the bytes it points to. Returns whether the
/// tensor was external.
fn inline_external(model_path: &Path, dir: &Path, tensor: &mut TensorProto) -> Result<bool, OnnxError> {
    if tensor.data_location != Some(EXTERNAL) && tensor.external_data.is_empty() {
        return Ok(false);
    }
    let tensor_name = tensor.name().to_string();
    let fail = |reason: String| OnnxError::ExternalData {
        path: model_path.to_path_buf(),
        tensor: tensor_name.clone(),
        reason,
    };
    let mut location = None;
    let mut offset = 0u64;
    let mut length = None;
    for entry in &tensor.external_data {
        match entry.key() {
            "location" => location = Some(entry.value().to_string()),
            "offset" => {
                offset = entry
                    .value()
                    .parse()
                    .map_err(|_| fail(format!("offset '{}' is not a number", entry.value())))?
            }
            "length" => {
                length = Some(
                    entry
                        .value()
                        .parse::<u64>()
                        .map_err(|_| fail(format!("length '{}' is not a number", entry.value())))?,
                )
            }
            _ => {}
        }
    }
    let location = location.ok_or_else(|| fail("no 'location' entry".into()))?;
    let file = resolve_location(dir, &location).map_err(|r| fail(format!("location '{location}': {r}")))?;
    let mut f = fs::File::open(&file).map_err(|e| fail(format!("{}: {e}", file.display())))?;
    let size = f
        .metadata()
        .map_err(|e| fail(format!("{}: {e}", file.display())))?
        .len();
    let length = length.unwrap_or(size.saturating_sub(offset));
    if offset.checked_add(length).is_none_or(|end| end > size) {
        return Err(fail(format!(
            "offset {offset} + length {length} runs past the end of {} ({size} bytes)",
            file.display()
        )));
    }
    // The dims decide how much is read: a length that disagrees with them (or dims
    // that overflow) is refused before anything is allocated.
    let declared = super::check::declared_bytes(tensor).map_err(|e| fail(e.to_string()))?;
    if let Some(want) = declared.filter(|&want| want != length) {
        return Err(fail(format!(
            "dims {:?} call for {want} bytes but the entry gives length {length}",
            tensor.dims
        )));
    }
    let mut data = vec![0u8; usize::try_from(length).map_err(|_| fail("length too large".into()))?];
    f.seek(SeekFrom::Start(offset))
        .and_then(|_| f.read_exact(&mut data))
        .map_err(|e| fail(format!("{}: {e}", file.display())))?;
    tensor.raw_data = Some(data);
    tensor.external_data.clear();
    tensor.data_location = None;
    Ok(true)
}

/// Resolves an external-data location inside `dir`, refusing anything that would leave it.
fn resolve_location(dir: &Path, location: &str) -> Result<PathBuf, String> {
    let rel = Path::new(location);
    if rel.as_os_str().is_empty() {
        return Err("empty path".into());
    }
    for c in rel.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => return Err("'..' would leave the model's folder".into()),
            Component::RootDir | Component::Prefix(_) => {
                return Err("absolute paths are not allowed; it must be relative to the model's folder".into())
            }
        }
    }
    let base = fs::canonicalize(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let full = fs::canonicalize(base.join(rel)).map_err(|e| format!("{e}"))?;
    if !full.starts_with(&base) {
        return Err(format!(
            "resolves to {}, outside the model's folder {} (a link?)",
            full.display(),
            base.display()
        ));
    }
    Ok(full)
}
