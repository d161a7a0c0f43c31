//! Vector–Jacobian product of Resize, in modes `nearest` and `linear`.
//!
//! Both modes are linear in the data and separable. Along each resized axis, output
//! position `o` reads the input at the coordinate `c(o)` that
//! `coordinate_transformation_mode` gives, and takes
//! - **nearest:** the element at `c(o)` rounded as `nearest_mode` says;
//! - **linear:** `(1 − r)·x[⌊c⌋] + r·x[⌊c⌋ + 1]` with `r = c − ⌊c⌋`;
//!
//! with indices past either end clamped to it (ONNX repeats the edge). So
//! `y = x ×₁ M₁ ⋯ ×ₖ Mₖ`, one interpolation matrix `Mₐ` `[out, in]` per resized axis,
//! and `∂L/∂x = ∂L/∂y ×₁ M₁ᵀ ⋯ ×ₖ Mₖᵀ`: the adjoint of an interpolation is the
//! transposed interpolation, whatever the shapes. For a nearest upsample by an integer
//! factor it sums each block the factor copied (a sum-pool); for a downsample it
//! scatters back to the elements that were read, zeros to the others.
//!
//! The matrices are constants of the gradient graph, built from the measured shapes
//! (the batch axis is never resized, so they hold for any batch). The last axis is a
//! `MatMul(g, Mₐ)`, the one before it `MatMul(Mₐᵀ, g)` (MatMul broadcasts a matrix over
//! leading axes); any other axis is moved last by a Transpose and back. An axis whose
//! matrix is the identity is skipped.
//!
//! Coordinates follow the formulas of the ONNX spec in f32, as tract and onnxruntime
//! compute them, so that a coordinate exactly halfway between two elements rounds the
//! way the forward pass rounded it. With `scales`, an axis's scale is its entry; with
//! `sizes`, `out / in`. Supported: opset 11 and later; `nearest_mode`
//! `round_prefer_floor`, `round_prefer_ceil`, `floor`, `ceil`;
//! `coordinate_transformation_mode` `half_pixel`, `pytorch_half_pixel`,
//! `align_corners`, `asymmetric`, `tf_half_pixel_for_nn`, `half_pixel_symmetric`;
//! `axes` (opset 18). Refused, naming the node: `cubic`, `tf_crop_and_resize`,
//! `antialias`, `exclude_outside`, a `keep_aspect_ratio_policy` other than `stretch`,
//! scales that are not a constant, a resized batch, and opset 10's Resize.

use super::super::proto::NodeProto;
use super::super::tensor;
use super::super::OnnxError;
use super::builder::{attr_int, attr_ints, attr_string, axis, input, ints, same_rank};
use super::rules::Grads;
use super::{unsupported, Ctx, FWD};

/// How an output coordinate maps back to the input (`coordinate_transformation_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Coordinates {
    HalfPixel,
    PytorchHalfPixel,
    AlignCorners,
    Asymmetric,
    TfHalfPixelForNn,
    HalfPixelSymmetric,
}

impl Coordinates {
    fn parse(node: &NodeProto, s: &str) -> Result<Self, OnnxError> {
        Ok(match s {
            "half_pixel" => Coordinates::HalfPixel,
            "pytorch_half_pixel" => Coordinates::PytorchHalfPixel,
            "align_corners" => Coordinates::AlignCorners,
            "asymmetric" => Coordinates::Asymmetric,
            "tf_half_pixel_for_nn" => Coordinates::TfHalfPixelForNn,
            "half_pixel_symmetric" => Coordinates::HalfPixelSymmetric,
            other => {
                return Err(unsupported(
                    node,
                    format!("coordinate_transformation_mode '{other}' cannot be differentiated"),
                ))
            }
        })
    }

    /// The input coordinate that output position `o` reads, on an axis of `len_in`
    /// elements resized to `len_out` with scale `scale`.
    fn source(self, o: usize, scale: f32, len_in: usize, len_out: usize) -> f32 {
        let x = o as f32;
        match self {
            Coordinates::HalfPixel => (x + 0.5) / scale - 0.5,
            Coordinates::PytorchHalfPixel if len_out > 1 => (x + 0.5) / scale - 0.5,
            Coordinates::PytorchHalfPixel => -0.5,
            Coordinates::AlignCorners if len_out > 1 => x * (len_in as f32 - 1.0) / (len_out as f32 - 1.0),
            Coordinates::AlignCorners => 0.0,
            Coordinates::Asymmetric => x / scale,
            Coordinates::TfHalfPixelForNn => (x + 0.5) / scale,
            Coordinates::HalfPixelSymmetric => {
                let adjustment = len_out as f32 / (scale * len_in as f32);
                let offset = len_in as f32 / 2.0 * (1.0 - adjustment);
                offset + (x + 0.5) / scale - 0.5
            }
        }
    }
}

/// How a nearest-neighbour coordinate is rounded (`nearest_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rounding {
    PreferFloor,
    PreferCeil,
    Floor,
    Ceil,
}

impl Rounding {
    fn parse(node: &NodeProto, s: &str) -> Result<Self, OnnxError> {
        Ok(match s {
            "round_prefer_floor" => Rounding::PreferFloor,
            "round_prefer_ceil" => Rounding::PreferCeil,
            "floor" => Rounding::Floor,
            "ceil" => Rounding::Ceil,
            other => return Err(unsupported(node, format!("nearest_mode '{other}' is not an ONNX mode"))),
        })
    }

    fn round(self, c: f32) -> f32 {
        let (low, frac) = (c.floor(), c - c.floor());
        if frac == 0.0 {
            return c;
        }
        let up = match self {
            Rounding::PreferFloor => frac > 0.5,
            Rounding::PreferCeil => frac >= 0.5,
            Rounding::Floor => false,
            Rounding::Ceil => true,
        };
        if up {
            low + 1.0
        } else {
            low
        }
    }
}

/// Interpolation along one axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Nearest(Rounding),
    Linear,
}

/// The position `c` clamped to the elements `0 … len − 1` of an axis.
fn clamp(c: f32, len: usize) -> f32 {
    c.max(0.0).min(len as f32 - 1.0)
}

/// The interpolation matrix `[len_out, len_in]` (row-major) of one axis.
fn matrix(mode: Mode, coords: Coordinates, scale: f32, len_in: usize, len_out: usize) -> Vec<f32> {
    let mut m = vec![0.0f32; len_out * len_in];
    for o in 0..len_out {
        let c = coords.source(o, scale, len_in, len_out);
        let row = &mut m[o * len_in..(o + 1) * len_in];
        match mode {
            Mode::Nearest(rounding) => row[clamp(rounding.round(c), len_in) as usize] = 1.0,
            Mode::Linear => {
                let c = clamp(c, len_in);
                let low = c.floor();
                let r = c - low;
                let i = low as usize;
                row[i] += 1.0 - r;
                row[(i + 1).min(len_in - 1)] += r;
            }
        }
    }
    m
}

fn is_identity(m: &[f32], len_in: usize, len_out: usize) -> bool {
    len_in == len_out
        && m.iter()
            .enumerate()
            .all(|(k, &v)| v == if k / len_in == k % len_in { 1.0 } else { 0.0 })
}

/// The scale of every axis: from a constant `scales` input when it has entries, else
/// `out / in` (from `sizes`). `resized` lists the axes the scales or sizes describe.
fn scales(ctx: &Ctx, node: &NodeProto, resized: &[usize], xs: &[usize], ys: &[usize]) -> Result<Vec<f32>, OnnxError> {
    let mut per_axis: Vec<f32> = xs.iter().zip(ys).map(|(&i, &o)| o as f32 / i as f32).collect();
    let name = input(node, 2);
    let given = if name.is_empty() {
        None
    } else {
        let t = ctx.constant(name).ok_or_else(|| {
            unsupported(
                node,
                format!(
                    "its scales ('{}') must be a constant to differentiate it",
                    name.trim_start_matches(FWD)
                ),
            )
        })?;
        Some(tensor::to_f32(t)?)
    };
    match given {
        Some(s) if !s.is_empty() => {
            if s.len() != resized.len() {
                return Err(unsupported(
                    node,
                    format!("{} scales for {} resized axes", s.len(), resized.len()),
                ));
            }
            for (&a, &v) in resized.iter().zip(s.iter()) {
                if !(v.is_finite() && v > 0.0) {
                    return Err(unsupported(
                        node,
                        format!("scale {v} of axis {a} is not finite and > 0"),
                    ));
                }
                per_axis[a] = v;
            }
        }
        _ => {
            if input(node, 3).is_empty() {
                return Err(unsupported(node, "it has neither scales nor sizes"));
            }
            let policy = attr_string(node, "keep_aspect_ratio_policy", "stretch")?;
            if policy != "stretch" {
                return Err(unsupported(
                    node,
                    format!("keep_aspect_ratio_policy '{policy}' cannot be differentiated (only 'stretch')"),
                ));
            }
        }
    }
    Ok(per_axis)
}

pub(super) fn resize(ctx: &mut Ctx, node: &NodeProto, dy: &str) -> Result<Grads, OnnxError> {
    if ctx.opset() < 11 {
        return Err(unsupported(
            node,
            "Resize before opset 11 (no coordinate_transformation_mode) cannot be differentiated",
        ));
    }
    let mode = match attr_string(node, "mode", "nearest")?.as_str() {
        "nearest" => Mode::Nearest(Rounding::parse(
            node,
            &attr_string(node, "nearest_mode", "round_prefer_floor")?,
        )?),
        "linear" => Mode::Linear,
        other => {
            return Err(unsupported(
                node,
                format!("mode '{other}' cannot be differentiated (only 'nearest' and 'linear')"),
            ))
        }
    };
    let coords_name = attr_string(node, "coordinate_transformation_mode", "half_pixel")?;
    let coords = Coordinates::parse(node, &coords_name)?;
    for flag in ["antialias", "exclude_outside"] {
        if attr_int(node, flag, 0)? != 0 {
            return Err(unsupported(node, format!("{flag} = 1 cannot be differentiated")));
        }
    }
    let (xs, ys) = same_rank(ctx, node)?;
    let rank = xs.len();
    if xs.contains(&0) || ys.contains(&0) {
        return Err(unsupported(node, "it resizes an empty tensor"));
    }
    let resized = match attr_ints(node, "axes")? {
        Some(axes) => axes
            .iter()
            .map(|&a| axis(node, a, rank))
            .collect::<Result<Vec<_>, _>>()?,
        None => (0..rank).collect(),
    };
    let scale = scales(ctx, node, &resized, &xs, &ys)?;

    let mut g = dy.to_string();
    for a in 0..rank {
        let (len_in, len_out) = (xs[a], ys[a]);
        let m = matrix(mode, coords, scale[a], len_in, len_out);
        if is_identity(&m, len_in, len_out) {
            continue;
        }
        if a == 0 {
            return Err(unsupported(
                node,
                "resizing the batch axis cannot be differentiated per sample",
            ));
        }
        g = adjoint(ctx, g, &m, a, rank, len_in, len_out);
    }
    let mut out = vec![Some(g)];
    out.resize(node.input.len(), None);
    Ok(out)
}

/// `g ×ₐ Mᵀ`: axis `a` of `g` (of `len_out` elements) contracted with the matrix `m`
/// `[len_out, len_in]`.
fn adjoint(ctx: &mut Ctx, g: String, m: &[f32], a: usize, rank: usize, len_in: usize, len_out: usize) -> String {
    if a + 2 == rank {
        let mut transposed = vec![0.0f32; m.len()];
        for o in 0..len_out {
            for i in 0..len_in {
                transposed[i * len_out + o] = m[o * len_in + i];
            }
        }
        let mt = ctx.b.f32s("resize_adjoint", &[len_in, len_out], &transposed);
        return ctx.b.op("MatMul", &[&mt, &g], vec![]);
    }
    let c = ctx.b.f32s("resize_adjoint", &[len_out, len_in], m);
    if a + 1 == rank {
        return ctx.b.op("MatMul", &[&g, &c], vec![]);
    }
    // Axis a swapped with the last one, and back (the swap is its own inverse).
    let mut perm: Vec<i64> = (0..rank as i64).collect();
    perm.swap(a, rank - 1);
    let moved = ctx.b.op("Transpose", &[&g], vec![ints("perm", &perm)]);
    let product = ctx.b.op("MatMul", &[&moved, &c], vec![]);
    ctx.b.op("Transpose", &[&product], vec![ints("perm", &perm)])
}

#[cfg(test)]
mod tests {
    use super::{matrix, Coordinates, Mode, Rounding};

    fn rows(m: &[f32], len_in: usize) -> Vec<Vec<f32>> {
        m.chunks(len_in).map(<[f32]>::to_vec).collect()
    }

    /// The input element each output row of a nearest-neighbour matrix copies.
    fn picked(m: &[f32], len_in: usize) -> Vec<Option<usize>> {
        rows(m, len_in)
            .iter()
            .map(|r| r.iter().position(|&v| v == 1.0))
            .collect()
    }

    #[test]
    fn nearest_upsampling_by_two_copies_each_element_twice() {
        let m = matrix(Mode::Nearest(Rounding::Floor), Coordinates::Asymmetric, 2.0, 3, 6);
        assert_eq!(picked(&m, 3), [0, 0, 1, 1, 2, 2].map(Some));
    }

    #[test]
    fn halfway_coordinates_round_as_nearest_mode_says() {
        // half_pixel at scale 1.5: output 1 reads 0.5 exactly, output 4 reads 2.5.
        let pick = |r: Rounding| picked(&matrix(Mode::Nearest(r), Coordinates::HalfPixel, 1.5, 4, 6), 4);
        assert_eq!(pick(Rounding::PreferFloor), [0, 0, 1, 2, 2, 3].map(Some));
        assert_eq!(pick(Rounding::PreferCeil), [0, 1, 1, 2, 3, 3].map(Some));
    }

    #[test]
    fn linear_weights_follow_the_coordinate_and_clamp_at_the_edges() {
        // half_pixel upsampling 2 → 4: sources −0.25, 0.25, 0.75, 1.25.
        let m = matrix(Mode::Linear, Coordinates::HalfPixel, 2.0, 2, 4);
        assert_eq!(
            rows(&m, 2),
            [vec![1.0, 0.0], vec![0.75, 0.25], vec![0.25, 0.75], vec![0.0, 1.0]]
        );
        // align_corners 3 → 5: sources 0, 0.5, 1, 1.5, 2.
        let m = matrix(Mode::Linear, Coordinates::AlignCorners, 5.0 / 3.0, 3, 5);
        assert_eq!(rows(&m, 3)[1], [0.5, 0.5, 0.0]);
        assert_eq!(rows(&m, 3)[4], [0.0, 0.0, 1.0]);
        // Every row of an interpolation sums to one.
        let m = matrix(Mode::Linear, Coordinates::PytorchHalfPixel, 0.6, 5, 3);
        for r in rows(&m, 5) {
            assert!((r.iter().sum::<f32>() - 1.0).abs() < 1e-6, "{r:?}");
        }
    }
}
