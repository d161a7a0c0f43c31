//! Turning dataset images into model inputs and back. Models differ in the
//! normalisation they were trained with (none, one mean/std for all
//! channels, or one per channel) and in the input layout they expect
//! (`[N,C,H,W]`, `[N,H,W,C]` or flattened `[N, C*H*W]`); [`Preprocess`]
//! applies both, and [`to_nchw`] undoes the layout for code that works on
//! images in pixel space.

use std::ops::Range;

use ndarray::{Array4, ArrayD, ArrayView4, ArrayViewD, Axis, Ix4};

use super::{DataError, Dataset};

/// The input layout a model expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// `[N, C, H, W]`, channels first (PyTorch, most ONNX CNNs).
    #[default]
    Nchw,
    /// `[N, H, W, C]`, channels last (Keras / TensorFlow exports).
    Nhwc,
    /// `[N, C*H*W]`, each image flattened in `C, H, W` order (MLPs).
    Flat,
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Layout::Nchw => "nchw",
            Layout::Nhwc => "nhwc",
            Layout::Flat => "flat",
        })
    }
}

impl std::str::FromStr for Layout {
    type Err = DataError;

    /// Parses `nchw`, `nhwc` or `flat`, in any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "nchw" => Ok(Layout::Nchw),
            "nhwc" => Ok(Layout::Nhwc),
            "flat" => Ok(Layout::Flat),
            _ => Err(DataError::Shape(format!(
                "unknown layout {s:?}; expected nchw, nhwc or flat"
            ))),
        }
    }
}

/// How to turn `[0, 1]` images into a model's input.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Preprocess {
    /// Subtracted per channel: empty for none, one value for all channels,
    /// or one per channel.
    pub mean: Vec<f32>,
    /// Divided by per channel after subtracting `mean`; same forms.
    pub std: Vec<f32>,
    /// Layout of the result.
    pub layout: Layout,
}

/// `values` spread over `channels`, or `None` when empty.
fn per_channel(name: &str, values: &[f32], channels: usize) -> Result<Option<Vec<f32>>, DataError> {
    match values.len() {
        0 => Ok(None),
        1 => Ok(Some(vec![values[0]; channels])),
        k if k == channels => Ok(Some(values.to_vec())),
        k => Err(DataError::Shape(format!(
            "{name} has {k} values but the images have {channels} channel(s); \
             give one value or one per channel"
        ))),
    }
}

impl Preprocess {
    /// Images `range` of `ds`, scaled to `[0, 1]`, then `(x - mean) / std`
    /// per channel, in the model layout: `Nchw` gives `[n, C, H, W]`, `Nhwc`
    /// `[n, H, W, C]`, `Flat` `[n, C*H*W]` (in `C, H, W` order).
    pub fn batch(&self, ds: &Dataset, range: Range<usize>) -> Result<ArrayD<f32>, DataError> {
        if range.start > range.end || range.end > ds.len() {
            return Err(DataError::Shape(format!(
                "{}: samples {range:?} asked for, but it holds {}",
                ds.source.display(),
                ds.len()
            )));
        }
        self.finish(ds.pixels.to_f32(range))
    }

    /// The same as [`batch`](Self::batch), for images already in `[0, 1]`
    /// given as `[n, C, H, W]` (as attacks that perturb pixel space hold
    /// them).
    pub fn apply(&self, x: ArrayView4<f32>) -> Result<ArrayD<f32>, DataError> {
        self.finish(x.as_standard_layout().into_owned())
    }

    /// Normalises `x` (`[n, C, H, W]`, standard layout) in place and
    /// arranges it in the model layout.
    fn finish(&self, mut x: Array4<f32>) -> Result<ArrayD<f32>, DataError> {
        let channels = x.dim().1;
        let mean = per_channel("mean", &self.mean, channels)?;
        let std = per_channel("std", &self.std, channels)?;
        if let Some(bad) = mean.iter().flatten().find(|v| !v.is_finite()) {
            return Err(DataError::Shape(format!("mean {bad} is not finite")));
        }
        if let Some(bad) = std.iter().flatten().find(|v| !v.is_finite() || **v == 0.0) {
            return Err(DataError::Shape(format!("std {bad} is not a finite non-zero number")));
        }
        if mean.is_some() || std.is_some() {
            for (c, mut plane) in x.axis_iter_mut(Axis(1)).enumerate() {
                let m = mean.as_ref().map_or(0.0, |m| m[c]);
                let s = std.as_ref().map_or(1.0, |s| s[c]);
                // (x - m) / s is monotone in x, so pixels in [0, 1] stay finite if
                // both ends do; a tiny std (1e-40) or a huge mean would feed Inf.
                if let Some(v) = [0.0f32, 1.0].map(|v| (v - m) / s).into_iter().find(|v| !v.is_finite()) {
                    return Err(DataError::Shape(format!(
                        "mean {m} and std {s} of channel {c} take pixel values in [0, 1] to {v}; \
                         the std is too small or the mean too large"
                    )));
                }
                // Division rather than multiplying by 1/s, to match the
                // training frameworks bit for bit.
                plane.mapv_inplace(|v| (v - m) / s);
            }
        }
        let (n, c, h, w) = x.dim();
        Ok(match self.layout {
            Layout::Nchw => x.into_dyn(),
            Layout::Nhwc => x
                .permuted_axes([0, 2, 3, 1])
                .as_standard_layout()
                .into_owned()
                .into_dyn(),
            Layout::Flat => x
                .into_shape_with_order((n, c * h * w))
                .map_err(|e| DataError::Shape(format!("cannot flatten images: {e}")))?
                .into_dyn(),
        })
    }
}

/// Converts a batch in `layout` (pixel space, no mean/std) back to
/// `[n, C, H, W]`, given the image shape `[C, H, W]`.
pub fn to_nchw(x: ArrayViewD<f32>, layout: Layout, shape: [usize; 3]) -> Result<Array4<f32>, DataError> {
    let [c, h, w] = shape;
    let got = x.shape().to_vec();
    let wrong = |expected: String| {
        DataError::Shape(format!(
            "a {layout} batch of {c}x{h}x{w} images must have shape {expected}, not {got:?}"
        ))
    };
    match layout {
        Layout::Nchw | Layout::Nhwc => {
            let inner = if layout == Layout::Nchw { [c, h, w] } else { [h, w, c] };
            if got.len() != 4 || got[1..] != inner {
                return Err(wrong(format!("[N, {}, {}, {}]", inner[0], inner[1], inner[2])));
            }
            let x4 = x
                .into_dimensionality::<Ix4>()
                .map_err(|_| wrong("4 dimensions".into()))?;
            let x4 = if layout == Layout::Nhwc {
                x4.permuted_axes([0, 3, 1, 2])
            } else {
                x4
            };
            Ok(x4.as_standard_layout().into_owned())
        }
        Layout::Flat => {
            let d = c * h * w;
            if got.len() != 2 || got[1] != d {
                return Err(wrong(format!("[N, {d}]")));
            }
            x.as_standard_layout()
                .into_owned()
                .into_shape_with_order((got[0], c, h, w))
                .map_err(|e| wrong(e.to_string()))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::super::Pixels;
    use super::*;
    use ndarray::{arr2, Array};
    use std::path::PathBuf;

    /// Two 2-channel 2x3 images; value = 1000*n + 100*c + 10*h + w, scaled
    /// into [0, 1] by 1/2000.
    fn raw() -> Array4<f32> {
        Array::from_shape_fn((2, 2, 2, 3), |(n, c, h, w)| {
            (1000 * n + 100 * c + 10 * h + w) as f32 / 2000.0
        })
    }

    fn code(v: f32) -> usize {
        (v * 2000.0).round() as usize
    }

    fn pp(mean: &[f32], std: &[f32], layout: Layout) -> Preprocess {
        Preprocess {
            mean: mean.to_vec(),
            std: std.to_vec(),
            layout,
        }
    }

    #[test]
    fn layouts_order_elements() {
        let x = raw();
        let nhwc = pp(&[], &[], Layout::Nhwc).apply(x.view()).unwrap();
        assert_eq!(nhwc.shape(), &[2, 2, 3, 2]);
        // [n, h, w, c]
        assert_eq!(code(nhwc[[1, 1, 2, 0]]), 1012);
        assert_eq!(code(nhwc[[0, 0, 1, 1]]), 101);
        let flat = pp(&[], &[], Layout::Flat).apply(x.view()).unwrap();
        assert_eq!(flat.shape(), &[2, 12]);
        let row: Vec<usize> = flat.index_axis(Axis(0), 1).iter().map(|&v| code(v)).collect();
        assert_eq!(
            row,
            vec![1000, 1001, 1002, 1010, 1011, 1012, 1100, 1101, 1102, 1110, 1111, 1112]
        );
        let nchw = pp(&[], &[], Layout::Nchw).apply(x.view()).unwrap();
        assert_eq!(nchw, x.clone().into_dyn());

        for layout in [Layout::Nchw, Layout::Nhwc, Layout::Flat] {
            let y = pp(&[], &[], layout).apply(x.view()).unwrap();
            assert_eq!(to_nchw(y.view(), layout, [2, 2, 3]).unwrap(), x);
            assert_eq!(layout.to_string().parse::<Layout>().unwrap(), layout);
        }
        // a transposed (non-standard) view gives the same result
        let fortran = x.t().as_standard_layout().into_owned();
        let back = fortran.t();
        assert!(!back.is_standard_layout());
        assert_eq!(pp(&[], &[], Layout::Flat).apply(back).unwrap(), flat);
    }

    #[test]
    fn mean_and_std_per_channel() {
        let x = raw();
        let out = pp(&[0.5, 0.25], &[2.0, 0.5], Layout::Nchw).apply(x.view()).unwrap();
        let v = x[[1, 1, 0, 2]];
        assert_eq!(out[[1, 1, 0, 2]], (v - 0.25) / 0.5);
        let v = x[[0, 0, 1, 1]];
        assert_eq!(out[[0, 0, 1, 1]], (v - 0.5) / 2.0);
        // one value for all channels; std alone
        let out = pp(&[0.1], &[], Layout::Flat).apply(x.view()).unwrap();
        assert_eq!(out[[1, 11]], x[[1, 1, 1, 2]] - 0.1);
        let out = pp(&[], &[4.0], Layout::Nhwc).apply(x.view()).unwrap();
        assert_eq!(out[[0, 1, 2, 1]], x[[0, 1, 1, 2]] / 4.0);
    }

    #[test]
    fn bad_parameters() {
        let x = raw();
        let e = pp(&[0.1, 0.2, 0.3], &[], Layout::Nchw).apply(x.view()).unwrap_err();
        assert!(e.to_string().contains("mean has 3 values"), "{e}");
        let e = pp(&[], &[1.0, 0.0], Layout::Nchw).apply(x.view()).unwrap_err();
        assert!(e.to_string().contains("std 0"), "{e}");
        let e = to_nchw(x.view().into_dyn(), Layout::Nhwc, [2, 2, 3]).unwrap_err();
        assert!(e.to_string().contains("[N, 2, 3, 2]"), "{e}");
        let e = to_nchw(arr2(&[[0.0f32; 5]]).view().into_dyn(), Layout::Flat, [1, 2, 3]).unwrap_err();
        assert!(e.to_string().contains("[N, 6]"), "{e}");
        assert!("chw".parse::<Layout>().is_err());
    }

    #[test]
    fn std_so_small_that_inputs_overflow_to_inf_is_refused() {
        // `--std 1e-40` passed the finite-and-non-zero check and fed the model Inf.
        let x = raw();
        let e = pp(&[], &[1e-40], Layout::Nchw).apply(x.view()).unwrap_err();
        assert!(
            e.to_string()
                .contains("of channel 0 take pixel values in [0, 1] to inf"),
            "{e}"
        );
        let e = pp(&[0.0, -3e38], &[1.0, 0.5], Layout::Flat)
            .apply(x.view())
            .unwrap_err();
        assert!(
            e.to_string().contains("channel 1") && e.to_string().contains("inf"),
            "{e}"
        );
        assert!(pp(&[0.5], &[1e-30], Layout::Nchw).apply(x.view()).is_ok());
    }

    #[test]
    fn batch_scales_bytes() {
        let ds = Dataset {
            pixels: Pixels::U8(Array::from_shape_fn((3, 1, 1, 2), |(n, _, _, w)| {
                (n * 100 + w * 55) as u8
            })),
            labels: vec![0, 1, 2],
            classes: None,
            source: PathBuf::from("mem"),
        };
        let b = pp(&[], &[], Layout::Flat).batch(&ds, 1..3).unwrap();
        assert_eq!(b.shape(), &[2, 2]);
        assert_eq!(b[[0, 0]], 100.0 / 255.0);
        assert_eq!(b[[1, 1]], 255.0 / 255.0);
        let e = pp(&[], &[], Layout::Flat).batch(&ds, 2..4).unwrap_err();
        assert!(e.to_string().contains("holds 3"), "{e}");
        let empty = pp(&[], &[], Layout::Nchw).batch(&ds, 1..1).unwrap();
        assert_eq!(empty.shape(), &[0, 1, 1, 2]);
    }
}
