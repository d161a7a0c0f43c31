//! Conversions between ONNX `TensorProto`s and ndarray arrays.
//!
//! A tensor's values live either in the typed repeated fields (`float_data`,
//! `int64_data`, …) or little-endian in `raw_data`; both are read. Only the element
//! types that surgery needs are converted (floats for weights, integers for shapes).

use ndarray::{ArrayD, IxDyn};

use super::proto::TensorProto;
use super::OnnxError;

/// ONNX `TensorProto.DataType.FLOAT`.
pub const FLOAT: i32 = 1;
/// ONNX `TensorProto.DataType.INT32`.
pub const INT32: i32 = 6;
/// ONNX `TensorProto.DataType.INT64`.
pub const INT64: i32 = 7;
/// ONNX `TensorProto.DataType.DOUBLE`.
pub const DOUBLE: i32 = 11;

fn bad(t: &TensorProto, reason: impl Into<String>) -> OnnxError {
    OnnxError::Tensor {
        name: t.name().to_string(),
        reason: reason.into(),
    }
}

/// The tensor's shape, refusing negative dimensions.
pub fn shape(t: &TensorProto) -> Result<Vec<usize>, OnnxError> {
    t.dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| bad(t, format!("negative dimension {d}"))))
        .collect()
}

/// Number of elements the dims call for.
pub fn element_count(t: &TensorProto) -> Result<usize, OnnxError> {
    shape(t)?
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad(t, "element count overflows"))
}

fn from_raw<const N: usize, T>(t: &TensorProto, raw: &[u8], conv: impl Fn([u8; N]) -> T) -> Result<Vec<T>, OnnxError> {
    // The dims are the file's word: their element count fits in usize, but its size
    // in bytes may not.
    let n = element_count(t)?;
    let want = n
        .checked_mul(N)
        .ok_or_else(|| bad(t, format!("dims {:?} call for more bytes than memory holds", t.dims)))?;
    if raw.len() != want {
        return Err(bad(
            t,
            format!("raw_data holds {} bytes, dims call for {want}", raw.len()),
        ));
    }
    Ok(raw
        .chunks_exact(N)
        .map(|c| {
            let mut b = [0u8; N];
            b.copy_from_slice(c);
            conv(b)
        })
        .collect())
}

fn shaped<T>(t: &TensorProto, values: Vec<T>) -> Result<ArrayD<T>, OnnxError> {
    let dims = shape(t)?;
    let n = values.len();
    ArrayD::from_shape_vec(IxDyn(&dims), values)
        .map_err(|_| bad(t, format!("holds {n} values, dims {:?} call for another count", t.dims)))
}

/// The tensor's values as f32 (FLOAT or DOUBLE tensors).
pub fn to_f32(t: &TensorProto) -> Result<ArrayD<f32>, OnnxError> {
    let values = match (t.data_type(), t.raw_data.as_deref()) {
        (FLOAT, Some(raw)) => from_raw(t, raw, f32::from_le_bytes)?,
        (FLOAT, None) => t.float_data.clone(),
        (DOUBLE, Some(raw)) => from_raw(t, raw, f64::from_le_bytes)?
            .into_iter()
            .map(|v| v as f32)
            .collect(),
        (DOUBLE, None) => t.double_data.iter().map(|&v| v as f32).collect(),
        (other, _) => return Err(bad(t, format!("expected a float tensor, found data type {other}"))),
    };
    shaped(t, values)
}

/// The tensor's values as f64 (FLOAT or DOUBLE tensors), a double's digits kept.
pub fn to_f64(t: &TensorProto) -> Result<ArrayD<f64>, OnnxError> {
    let values = match (t.data_type(), t.raw_data.as_deref()) {
        (DOUBLE, Some(raw)) => from_raw(t, raw, f64::from_le_bytes)?,
        (DOUBLE, None) => t.double_data.clone(),
        (FLOAT, _) => return Ok(to_f32(t)?.mapv(f64::from)),
        (other, _) => return Err(bad(t, format!("expected a float tensor, found data type {other}"))),
    };
    shaped(t, values)
}

/// The tensor's values as i64 (INT64 or INT32 tensors).
pub fn to_i64(t: &TensorProto) -> Result<ArrayD<i64>, OnnxError> {
    let values = match (t.data_type(), t.raw_data.as_deref()) {
        (INT64, Some(raw)) => from_raw(t, raw, i64::from_le_bytes)?,
        (INT64, None) => t.int64_data.clone(),
        (INT32, Some(raw)) => from_raw(t, raw, i32::from_le_bytes)?
            .into_iter()
            .map(i64::from)
            .collect(),
        (INT32, None) => t.int32_data.iter().map(|&v| i64::from(v)).collect(),
        (other, _) => return Err(bad(t, format!("expected an integer tensor, found data type {other}"))),
    };
    shaped(t, values)
}

/// A tensor of type `data_type` named `name` with shape `dims`, its values the
/// little-endian bytes `raw`.
fn from_raw_bytes(name: &str, dims: &[usize], data_type: i32, raw: Vec<u8>) -> TensorProto {
    TensorProto {
        name: Some(name.to_string()),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: Some(data_type),
        raw_data: Some(raw),
        ..Default::default()
    }
}

/// A FLOAT tensor named `name` holding `values` (row-major) with shape `dims`.
pub fn from_f32(name: &str, dims: &[usize], values: &[f32]) -> TensorProto {
    from_raw_bytes(name, dims, FLOAT, values.iter().flat_map(|v| v.to_le_bytes()).collect())
}

/// An INT64 tensor named `name` holding `values` with shape `dims`.
pub fn from_i64(name: &str, dims: &[usize], values: &[i64]) -> TensorProto {
    from_raw_bytes(name, dims, INT64, values.iter().flat_map(|v| v.to_le_bytes()).collect())
}

/// A DOUBLE tensor named `name` holding `values` with shape `dims`.
pub fn from_f64(name: &str, dims: &[usize], values: &[f64]) -> TensorProto {
    from_raw_bytes(
        name,
        dims,
        DOUBLE,
        values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    )
}

/// An INT32 tensor named `name` holding `values` with shape `dims`.
pub fn from_i32(name: &str, dims: &[usize], values: &[i32]) -> TensorProto {
    from_raw_bytes(name, dims, INT32, values.iter().flat_map(|v| v.to_le_bytes()).collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn raw_data_whose_byte_count_overflows_is_refused() {
        // 2^62 floats are 2^64 bytes, which wrapped to 0 and matched an empty
        // raw_data (an overflow panic with debug assertions on).
        for data_type in [FLOAT, DOUBLE] {
            let t = TensorProto {
                name: Some("w".into()),
                dims: vec![1 << 62],
                data_type: Some(data_type),
                raw_data: Some(Vec::new()),
                ..Default::default()
            };
            let err = to_f32(&t).unwrap_err().to_string();
            assert!(
                err.contains("tensor 'w'") && err.contains("more bytes than memory holds"),
                "{err}"
            );
        }
        let t = TensorProto {
            dims: vec![1 << 61, 2],
            data_type: Some(INT64),
            raw_data: Some(Vec::new()),
            ..Default::default()
        };
        assert!(to_i64(&t).is_err());
    }
}
