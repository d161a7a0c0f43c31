//! ONNX models: the protobuf messages, loading and saving (external data included),
//! graph queries, the cut at the last pooling layer, and the surgery that turns a
//! classifier into a feature extractor and a feature extractor into a hybrid.
//!
//! The messages in [`proto`] are written from the ONNX IR spec, so decoding and
//! re-encoding a model keeps every field. Everything else works on those messages
//! directly: a model nnmend writes is the model it read, minus the nodes it cut away,
//! plus the nodes it added.

pub mod bounds;
pub mod check;
pub mod constant;
pub mod cut;
pub mod grad;
pub mod graph;
pub mod head;
pub mod io;
pub mod proto;
pub mod surgery;
pub mod tensor;

pub use cut::{find_cut, Cut};
pub use io::{load, load_model, save, LoadedModel};
pub use proto::ModelProto;

use std::path::PathBuf;

/// What can go wrong while reading, querying or rewriting an ONNX model.
///
/// Every message names the file, node, tensor or entry at fault.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    /// The file could not be read or written.
    #[error("{path}")]
    Io {
        /// The file at fault.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An output that would replace one of the command's inputs.
    #[error("{}: is also an input ({}); refusing to overwrite it", .output.display(), .input.display())]
    SameFile {
        /// The output.
        output: PathBuf,
        /// The input it names.
        input: PathBuf,
    },
    /// The file is larger than protobuf allows one message to be.
    #[error(
        "{path}: {size} bytes, over protobuf's 2 GiB limit for one message; a model this large must \
         keep its weights as external data (onnx.save_model(..., save_as_external_data=True))"
    )]
    TooLarge {
        /// The file at fault.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
    },
    /// The model decodes but is not well formed (see [`check`]).
    #[error("{path}: {error}")]
    Invalid {
        /// The file at fault.
        path: PathBuf,
        /// What the check found (not a `source`: the message already holds it).
        error: Box<OnnxError>,
    },
    /// An opset version that no ONNX release defines.
    #[error("opset_import: domain '{domain}' version {version}: {reason}")]
    Opset {
        /// The domain (`ai.onnx (default)` for the default one).
        domain: String,
        /// The version the file asks for.
        version: i64,
        /// Why it is refused.
        reason: String,
    },
    /// The bytes are not an ONNX model.
    #[error("{path}: not a valid ONNX model: {reason}")]
    Decode {
        /// The file at fault.
        path: PathBuf,
        /// What the protobuf decoder said.
        reason: String,
    },
    /// An external-data entry is malformed or points outside the model's folder.
    #[error("{path}: tensor '{tensor}': external data: {reason}")]
    ExternalData {
        /// The model file.
        path: PathBuf,
        /// The initializer whose data lives outside.
        tensor: String,
        /// What is wrong with its entry.
        reason: String,
    },
    /// The graph is structurally broken (a cycle, a tensor nobody produces, …).
    #[error("graph: {0}")]
    Graph(String),
    /// The model cannot be cut into a convolutional feature extractor.
    #[error("cannot cut this model: {0}")]
    NoExtractor(String),
    /// No tensor is the cut by nnmend's rules, but one named by the user may be.
    #[error("cannot cut this model: {0}")]
    NoAutomaticCut(String),
    /// A tensor named by the user does not exist in the graph.
    #[error("tensor '{name}' is not in the graph{hint}")]
    UnknownTensor {
        /// The requested name.
        name: String,
        /// A suggestion, if a similar name exists.
        hint: String,
    },
    /// A tensor holds data of a type or shape nnmend cannot use here.
    #[error("tensor '{name}': {reason}")]
    Tensor {
        /// The tensor at fault.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A node nnmend cannot handle here (an op outside the supported set, an attribute
    /// it cannot honour).
    #[error("node '{node}' ({op}): {reason}")]
    Node {
        /// The node's name.
        node: String,
        /// Its op type.
        op: String,
        /// What is wrong.
        reason: String,
    },
    /// The model's input cannot be used (several data inputs, unknown layout, …).
    #[error("input '{name}': {reason}")]
    Input {
        /// The input at fault.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
}
