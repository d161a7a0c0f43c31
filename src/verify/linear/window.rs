//! Where convolutions' and poolings' windows sit over their inputs: the taps of each
//! output, and the tables the backward steps read.

/// Where a convolution's or a pooling's windows sit over `[C, H, W]`.
#[derive(Debug, Clone, Hash)]
pub(super) struct Window {
    /// Input `[C, H, W]`.
    pub(super) input: [usize; 3],
    /// Output `[M, OH, OW]`.
    pub(super) output: [usize; 3],
    pub(super) kernel: [usize; 2],
    pub(super) stride: [usize; 2],
    pub(super) dilation: [usize; 2],
    /// Top and left padding (bottom and right only shape the output).
    pub(super) pad: [usize; 2],
}

impl Window {
    /// The input row or column that kernel tap `k` of output position `o` reads on
    /// `axis` (0: rows, 1: columns), or `None` in the padding.
    pub(super) fn at(&self, axis: usize, o: usize, k: usize) -> Option<usize> {
        let i = (o * self.stride[axis] + k * self.dilation[axis]).wrapping_sub(self.pad[axis]);
        (i < self.input[axis + 1]).then_some(i)
    }
}

/// A 2-D convolution `y = W ⋆ x + b` over `[C, H, W]`.
#[derive(Debug, Clone)]
pub(super) struct Conv {
    /// `[M, C / group, KH, KW]`, flat.
    pub(super) w: Vec<f64>,
    /// `[M]`.
    pub(super) b: Vec<f64>,
    pub(super) window: Window,
    pub(super) group: usize,
    /// Per output, where its kernel's first tap lands: the input index, channel, row
    /// and column, or `None` when some tap falls in the padding.
    pub(super) firsts: Vec<Option<[usize; 4]>>,
    /// The input index of each kernel row's first tap relative to the kernel's first
    /// tap, rows in the order of [`Self::taps`] (channel, then row).
    pub(super) rows: Vec<usize>,
}

impl Conv {
    /// The convolution of weights `w` `[M, C / group, KH, KW]` and bias `b` `[M]` over
    /// `window`.
    pub(super) fn new(w: Vec<f64>, b: Vec<f64>, window: Window, group: usize) -> Self {
        let mut conv = Self {
            w,
            b,
            window,
            group,
            firsts: Vec::new(),
            rows: Vec::new(),
        };
        let firsts = (0..conv.window.output.iter().product())
            .map(|o| conv.interior(o))
            .collect();
        conv.firsts = firsts;
        let [c, h, w] = conv.window.input;
        let (kh, dy) = (conv.window.kernel[0], conv.window.dilation[0]);
        conv.rows = (0..c / group)
            .flat_map(|ci| (0..kh).map(move |ky| (ci * h + ky * dy) * w))
            .collect();
        conv
    }

    /// The output side of a convolution or pooling over `size` input positions.
    pub(super) fn out_size(size: usize, kernel: usize, stride: usize, dilation: usize, pads: usize) -> Option<usize> {
        let span = dilation.checked_mul(kernel.checked_sub(1)?)?.checked_add(1)?;
        let padded = size.checked_add(pads)?;
        (padded >= span && stride > 0).then(|| (padded - span) / stride + 1)
    }

    /// Terms in each output's sum (the fan-in, bias excluded).
    pub(super) fn fan_in(&self) -> usize {
        self.window.input[0] / self.group * self.window.kernel[0] * self.window.kernel[1]
    }

    /// For every kernel tap and output row, the run of output positions it joins:
    /// calls `f(weight index, first input index, first output index, length)`, the
    /// input index stepping by the column stride and the output index by one.
    pub(super) fn each_run(&self, mut f: impl FnMut(usize, usize, usize, usize)) {
        let [c, h, w] = self.window.input;
        let [m, oh, ow] = self.window.output;
        let [kh, kw] = self.window.kernel;
        let (cg, mg) = (c / self.group, m / self.group);
        let (sx, dx, px) = (self.window.stride[1], self.window.dilation[1], self.window.pad[1]);
        for om in 0..m {
            let g = om / mg;
            for ci in 0..cg {
                let ic = g * cg + ci;
                for ky in 0..kh {
                    for kx in 0..kw {
                        let wi = ((om * cg + ci) * kh + ky) * kw + kx;
                        // The output columns whose tap kx lands inside the image.
                        // (first·sx ≥ px − kx·dx, so the subtraction cannot wrap.)
                        let first = px.saturating_sub(kx * dx).div_ceil(sx);
                        let ix0 = first * sx + kx * dx - px;
                        if ix0 >= w || first >= ow {
                            continue;
                        }
                        let len = ((w - 1 - ix0) / sx + 1).min(ow - first);
                        for oy in 0..oh {
                            let Some(iy) = self.window.at(0, oy, ky) else {
                                continue;
                            };
                            f(wi, (ic * h + iy) * w + ix0, (om * oh + oy) * ow + first, len);
                        }
                    }
                }
            }
        }
    }
}

impl Conv {
    /// Calls `f(input index, weight index)` for each tap of output `o`'s kernel that
    /// lands inside the input (the non-zeros of row `o` of `W`).
    pub(super) fn taps(&self, o: usize, mut f: impl FnMut(usize, usize)) {
        let [c, h, w] = self.window.input;
        let [m, oh, ow] = self.window.output;
        let [kh, kw] = self.window.kernel;
        let (cg, mg) = (c / self.group, m / self.group);
        let (om, rest) = (o / (oh * ow), o % (oh * ow));
        let (oy, ox) = (rest / ow, rest % ow);
        let g = om / mg;
        for ci in 0..cg {
            let ic = g * cg + ci;
            for ky in 0..kh {
                let Some(iy) = self.window.at(0, oy, ky) else {
                    continue;
                };
                let wrow = ((om * cg + ci) * kh + ky) * kw;
                for kx in 0..kw {
                    if let Some(ix) = self.window.at(1, ox, kx) {
                        f((ic * h + iy) * w + ix, wrow + kx);
                    }
                }
            }
        }
    }

    /// The input index, channel, row and column of output `o`'s first tap when every
    /// tap of its kernel lands inside the input (no padding).
    pub(super) fn interior(&self, o: usize) -> Option<[usize; 4]> {
        let [c, h, w] = self.window.input;
        let [m, oh, ow] = self.window.output;
        let [kh, kw] = self.window.kernel;
        let (om, rest) = (o / (oh * ow), o % (oh * ow));
        let (oy, ox) = (rest / ow, rest % ow);
        let iy = (oy * self.window.stride[0]).checked_sub(self.window.pad[0])?;
        let ix = (ox * self.window.stride[1]).checked_sub(self.window.pad[1])?;
        let inside = iy + (kh - 1) * self.window.dilation[0] < h && ix + (kw - 1) * self.window.dilation[1] < w;
        let channel = om / (m / self.group) * (c / self.group);
        inside.then_some([(channel * h + iy) * w + ix, channel, iy, ix])
    }

    /// `Wᵀ λ`, output by output, skipping the zeros of `λ`.
    #[cfg(test)]
    pub(super) fn transpose(&self, lambda: &[f64]) -> Vec<f64> {
        let mut out = vec![0.0; self.window.input.iter().product()];
        for (o, &l) in lambda.iter().enumerate().filter(|&(_, &l)| l != 0.0) {
            self.taps(o, |i, wi| out[i] += self.w[wi] * l);
        }
        out
    }
}

/// A max pooling over `[C, H, W]` (padding never wins a maximum).
#[derive(Debug, Clone)]
pub(super) struct MaxPool {
    pub(super) window: Window,
}

impl MaxPool {
    /// The input indices of output `o`'s window.
    pub(super) fn window(&self, o: usize, out: &mut Vec<usize>) {
        out.clear();
        let [_, h, w] = self.window.input;
        let [_, oh, ow] = self.window.output;
        let (c, rest) = (o / (oh * ow), o % (oh * ow));
        let (oy, ox) = (rest / ow, rest % ow);
        for ky in 0..self.window.kernel[0] {
            let Some(iy) = self.window.at(0, oy, ky) else {
                continue;
            };
            for kx in 0..self.window.kernel[1] {
                if let Some(ix) = self.window.at(1, ox, kx) {
                    out.push((c * h + iy) * w + ix);
                }
            }
        }
    }

    pub(super) fn outputs(&self) -> usize {
        self.window.output.iter().product()
    }
}
