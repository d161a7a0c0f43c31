//! The layers of a chain in f64: forward on boxes (with the engine's f32 rounding
//! error carried beside them) and backward on linear coefficients.
//!
//! Tensors are flat, row-major `[C, H, W]` (or `[D]`) without the batch axis.

use super::scratch::{Coefficients, Scratch};
use super::window::{Conv, MaxPool};

impl MaxPool {
    /// The relaxation of every output over the input box `x`.
    pub(super) fn picks(&self, x: &Boxed) -> Vec<Option<Pick>> {
        let mut window = Vec::new();
        (0..self.outputs())
            .map(|o| {
                self.window(o, &mut window);
                pick(&window, x)
            })
            .collect()
    }
}

/// One layer of a chain.
#[derive(Debug, Clone)]
pub(super) enum Layer {
    /// `y = scale ∘ x + shift`, element by element (normalisation, BatchNormalization,
    /// Add, Sub, Mul and Div by constants); `rounding` is its relative f32 error.
    Elementwise {
        scale: Vec<f64>,
        shift: Vec<f64>,
        rounding: f64,
    },
    Conv(Conv),
    /// `y = W x + b`, `W` `[out, in]`, flat.
    Dense {
        w: Vec<f64>,
        b: Vec<f64>,
        inputs: usize,
    },
    Relu,
    MaxPool(MaxPool),
}

impl Layer {
    /// Feeds every parameter of the layer (the bits of its numbers) to `h`.
    pub fn hash_into(&self, h: &mut impl std::hash::Hasher) {
        use std::hash::Hash;
        fn bits(v: &[f64], h: &mut impl std::hash::Hasher) {
            v.len().hash(h);
            for x in v {
                x.to_bits().hash(h);
            }
        }
        match self {
            Layer::Elementwise { scale, shift, rounding } => {
                0u8.hash(h);
                bits(scale, h);
                bits(shift, h);
                rounding.to_bits().hash(h);
            }
            Layer::Conv(c) => {
                1u8.hash(h);
                bits(&c.w, h);
                bits(&c.b, h);
                c.window.hash(h);
                c.group.hash(h);
            }
            Layer::Dense { w, b, inputs } => {
                2u8.hash(h);
                bits(w, h);
                bits(b, h);
                inputs.hash(h);
            }
            Layer::Relu => 3u8.hash(h),
            Layer::MaxPool(m) => {
                4u8.hash(h);
                m.window.hash(h);
            }
        }
    }
}

/// A box `[lower, upper]` and a bound on how far the engine's f32 value of each element
/// can be from its exact value anywhere in the ball.
#[derive(Debug, Clone, Default)]
pub(super) struct Boxed {
    pub lower: Vec<f64>,
    pub upper: Vec<f64>,
    pub error: Vec<f64>,
    /// When the box feeds a max pooling, the pooling's relaxation of each output over
    /// it (empty otherwise, or not yet worked out: then found per use).
    pub picks: Vec<Option<Pick>>,
}

/// A max pooling's relaxation of one output, fixed by the box of its window: the input
/// that takes the output's coefficient, whether that input's lower bound reaches every
/// other input's upper bound, and the window's largest upper bound.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pick {
    best: usize,
    dominant: bool,
    top: f64,
}

/// Relative slack on every linear layer's box, for the f64 arithmetic that computes it.
pub(super) const F64_SLACK: f64 = 1e-12;

/// Values closer than this, relatively, count as equal when a relaxation is chosen, so
/// that the choice does not hang on the order of a sum's rounding (either choice is
/// sound).
const TIE: f64 = 1e-9;

impl Layer {
    /// Whether the layer is affine (its output's bounds can be refined by
    /// back-substitution).
    pub fn affine(&self) -> bool {
        matches!(self, Layer::Elementwise { .. } | Layer::Conv(_) | Layer::Dense { .. })
    }

    /// The layer on a box: interval bounds of the exact values, and the f32 error.
    /// `gamma(n)` is the relative error bound of an `n`-term f32 sum.
    pub fn forward(&self, x: &Boxed, gamma: &dyn Fn(usize) -> f64) -> Boxed {
        match self {
            Layer::Relu => Boxed {
                lower: x.lower.iter().map(|v| v.max(0.0)).collect(),
                upper: x.upper.iter().map(|v| v.max(0.0)).collect(),
                error: x.error.clone(),
                picks: Vec::new(),
            },
            Layer::MaxPool(p) => {
                let n = p.outputs();
                let mut out = Boxed {
                    lower: vec![f64::NEG_INFINITY; n],
                    upper: vec![f64::NEG_INFINITY; n],
                    error: vec![0.0; n],
                    picks: Vec::new(),
                };
                let mut window = Vec::new();
                for o in 0..n {
                    p.window(o, &mut window);
                    for &i in &window {
                        out.lower[o] = out.lower[o].max(x.lower[i]);
                        out.upper[o] = out.upper[o].max(x.upper[i]);
                        out.error[o] = out.error[o].max(x.error[i]);
                    }
                }
                out
            }
            Layer::Elementwise { scale, shift, rounding } => {
                let n = x.lower.len();
                let mut out = Boxed {
                    lower: vec![0.0; n],
                    upper: vec![0.0; n],
                    error: vec![0.0; n],
                    picks: Vec::new(),
                };
                for i in 0..n {
                    let (a, b) = (scale[i] * x.lower[i] + shift[i], scale[i] * x.upper[i] + shift[i]);
                    let size = scale[i].abs() * (x.lower[i].abs().max(x.upper[i].abs()) + x.error[i]) + shift[i].abs();
                    let slack = F64_SLACK * size;
                    out.lower[i] = a.min(b) - slack;
                    out.upper[i] = a.max(b) + slack;
                    out.error[i] = scale[i].abs() * x.error[i] + rounding * size;
                }
                out
            }
            Layer::Conv(c) => {
                let rho = gamma(c.fan_in() + 2);
                let mut mid = vec![0.0; c.window.output.iter().product()];
                let mut rad = mid.clone();
                let mut err = mid.clone();
                let mut size = mid.clone();
                // Per input: the box's centre and half-width, and the magnitude the
                // rounding error scales with.
                let centre: Vec<f64> = x.lower.iter().zip(&x.upper).map(|(l, u)| 0.5 * (l + u)).collect();
                let half: Vec<f64> = x.lower.iter().zip(&x.upper).map(|(l, u)| 0.5 * (u - l)).collect();
                let magnitude: Vec<f64> = (0..x.lower.len())
                    .map(|i| x.lower[i].abs().max(x.upper[i].abs()) + x.error[i])
                    .collect();
                let step = c.window.stride[1];
                c.each_run(|wi, i0, o0, len| {
                    let (wv, aw) = (c.w[wi], c.w[wi].abs());
                    if step == 1 {
                        // A contiguous run: slices of one length, which the compiler
                        // can vectorise.
                        let (m, r) = (&mut mid[o0..o0 + len], &mut rad[o0..o0 + len]);
                        let (e, z) = (&mut err[o0..o0 + len], &mut size[o0..o0 + len]);
                        let (cv, hv) = (&centre[i0..i0 + len], &half[i0..i0 + len]);
                        let (ev, gv) = (&x.error[i0..i0 + len], &magnitude[i0..i0 + len]);
                        for t in 0..len {
                            m[t] += wv * cv[t];
                            r[t] += aw * hv[t];
                            e[t] += aw * ev[t];
                            z[t] += aw * gv[t];
                        }
                    } else {
                        for t in 0..len {
                            let (i, o) = (i0 + t * step, o0 + t);
                            mid[o] += wv * centre[i];
                            rad[o] += aw * half[i];
                            err[o] += aw * x.error[i];
                            size[o] += aw * magnitude[i];
                        }
                    }
                });
                let per = c.window.output[1] * c.window.output[2];
                affine_box(mid, rad, err, size, |o| c.b[o / per], rho)
            }
            Layer::Dense { w, b, inputs } => {
                let rho = gamma(inputs + 2);
                let outs = b.len();
                let (mut mid, mut rad, mut err, mut size) =
                    (vec![0.0; outs], vec![0.0; outs], vec![0.0; outs], vec![0.0; outs]);
                for o in 0..outs {
                    let row = &w[o * inputs..(o + 1) * inputs];
                    for (i, &wv) in row.iter().enumerate() {
                        let aw = wv.abs();
                        mid[o] += wv * 0.5 * (x.lower[i] + x.upper[i]);
                        rad[o] += aw * 0.5 * (x.upper[i] - x.lower[i]);
                        err[o] += aw * x.error[i];
                        size[o] += aw * (x.lower[i].abs().max(x.upper[i].abs()) + x.error[i]);
                    }
                }
                affine_box(mid, rad, err, size, |o| b[o], rho)
            }
        }
    }

    /// One step of back-substitution for a lower bound of `λ·y`: given the non-zero
    /// coefficients `lambda` on this layer's output and the box `x` of its input,
    /// writes the coefficients on the input to `out` and adds the constant to
    /// `constant` (the relaxations of the module's documentation).
    pub fn backward(
        &self,
        lambda: &[(usize, f64)],
        x: &Boxed,
        constant: &mut f64,
        scratch: &mut Scratch,
        out: &mut Coefficients,
    ) {
        let inputs = x.lower.len();
        out.clear();
        match self {
            Layer::Relu => {
                for &(i, l) in lambda {
                    let v = relu_back(l, x.lower[i], x.upper[i], constant);
                    if v != 0.0 {
                        out.push((i, v));
                    }
                }
            }
            Layer::MaxPool(p) => {
                scratch.room(inputs);
                let mut window = std::mem::take(&mut scratch.window);
                for &(o, l) in lambda {
                    let pick = match x.picks.get(o) {
                        Some(&pick) => pick,
                        None => {
                            p.window(o, &mut window);
                            pick(&window, x)
                        }
                    };
                    if let Some(best) = pool_back(l, pick, constant) {
                        scratch.add(best, l);
                    }
                }
                scratch.window = window;
                scratch.drain(out);
            }
            Layer::Elementwise { scale, shift, .. } => {
                // Each affine layer's terms are summed before they join the constant.
                *constant += lambda.iter().map(|&(i, l)| l * shift[i]).sum::<f64>();
                for &(i, l) in lambda {
                    let v = l * scale[i];
                    if v != 0.0 {
                        out.push((i, v));
                    }
                }
            }
            Layer::Conv(c) => {
                scratch.room(inputs);
                let per = c.window.output[1] * c.window.output[2];
                *constant += lambda.iter().map(|&(o, l)| l * c.b[o / per]).sum::<f64>();
                // Kernels that lie inside the input take their taps row by row from
                // the table of the rows' offsets: the same taps as `taps`, and each
                // input takes its terms in the order of the outputs, as there.
                let fan = c.fan_in();
                let [ci, h, w] = c.window.input;
                let ([kh, kw], [dy, dx]) = (c.window.kernel, c.window.dilation);
                let extent = [(ci / c.group).saturating_sub(1), (kh - 1) * dy, (kw - 1) * dx];
                for &(o, l) in lambda {
                    match c.firsts[o] {
                        Some([first, channel, y, x]) => {
                            scratch.cover([channel, y, x], [channel + extent[0], y + extent[1], x + extent[2]]);
                            let kernel = &c.w[o / per * fan..(o / per + 1) * fan];
                            for (&row, taps) in c.rows.iter().zip(kernel.chunks_exact(kw)) {
                                let at = first + row;
                                if dx == 1 {
                                    for (a, &wv) in scratch.acc[at..at + kw].iter_mut().zip(taps) {
                                        *a += wv * l;
                                    }
                                } else {
                                    for (kx, &wv) in taps.iter().enumerate() {
                                        scratch.acc[at + kx * dx] += wv * l;
                                    }
                                }
                            }
                        }
                        None => c.taps(o, |i, wi| {
                            let at = [i / (h * w), i / w % h, i % w];
                            scratch.cover(at, at);
                            scratch.add_raw(i, c.w[wi] * l);
                        }),
                    }
                }
                scratch.drain_block(c.window.input, out);
            }
            Layer::Dense { w, b, inputs } => {
                scratch.room(*inputs);
                *constant += lambda.iter().map(|&(o, l)| l * b[o]).sum::<f64>();
                for &(o, l) in lambda {
                    for (i, &wv) in w[o * inputs..(o + 1) * inputs].iter().enumerate() {
                        scratch.add(i, wv * l);
                    }
                }
                scratch.drain(out);
            }
        }
    }

    /// [`Self::backward`] on dense coefficients, with the same relaxations: the
    /// reference the sparse steps' bookkeeping is tested against.
    #[cfg(test)]
    pub fn backward_dense(&self, lambda: &[f64], x: &Boxed, constant: &mut f64) -> Vec<f64> {
        match self {
            Layer::Relu => lambda
                .iter()
                .zip(x.lower.iter().zip(&x.upper))
                .map(|(&l, (&lo, &hi))| relu_back(l, lo, hi, constant))
                .collect(),
            Layer::MaxPool(p) => {
                let mut out = vec![0.0; x.lower.len()];
                let mut window = Vec::new();
                for (o, &l) in lambda.iter().enumerate() {
                    if l == 0.0 {
                        continue;
                    }
                    p.window(o, &mut window);
                    if let Some(best) = pool_back(l, pick(&window, x), constant) {
                        out[best] += l;
                    }
                }
                out
            }
            Layer::Elementwise { scale, shift, .. } => {
                *constant += lambda.iter().zip(shift).map(|(l, s)| l * s).sum::<f64>();
                lambda.iter().zip(scale).map(|(l, s)| l * s).collect()
            }
            Layer::Conv(c) => {
                let per = c.window.output[1] * c.window.output[2];
                *constant += lambda.iter().enumerate().map(|(o, l)| l * c.b[o / per]).sum::<f64>();
                c.transpose(lambda)
            }
            Layer::Dense { w, b, inputs } => {
                *constant += lambda.iter().zip(b).map(|(l, b)| l * b).sum::<f64>();
                let mut out = vec![0.0; *inputs];
                for (o, &l) in lambda.iter().enumerate() {
                    if l != 0.0 {
                        for (acc, &wv) in out.iter_mut().zip(&w[o * inputs..(o + 1) * inputs]) {
                            *acc += wv * l;
                        }
                    }
                }
                out
            }
        }
    }
}

/// The coefficient on a Relu's input, for `l` on its output and the input in
/// `[lo, hi]`; the relaxation's constant joins `constant`.
fn relu_back(l: f64, lo: f64, hi: f64, constant: &mut f64) -> f64 {
    if hi <= 0.0 {
        0.0
    } else if lo >= 0.0 {
        l
    } else if l >= 0.0 {
        // relu(z) ≥ α z with α ∈ {0, 1}: the one nearer the relu on the box (0 on a
        // tie, up to the rounding of the box).
        if hi + lo > TIE * (hi - lo) {
            l
        } else {
            0.0
        }
    } else {
        // relu(z) ≤ s (z − lo), the chord.
        let s = hi / (hi - lo);
        *constant -= l * s * lo;
        l * s
    }
}

/// The relaxation of a max pooling's output over the inputs `window` of the box `x`:
/// the first input whose lower bound is the largest, up to the rounding of the box
/// (max ≥ it, and any input would do), and max = it when its lower bound reaches every
/// other input's upper bound. `None` for an empty window.
fn pick(window: &[usize], x: &Boxed) -> Option<Pick> {
    let top = window.iter().map(|&i| x.lower[i]).fold(f64::NEG_INFINITY, f64::max);
    let &best = window.iter().find(|&&i| x.lower[i] >= top - TIE * top.abs())?;
    Some(Pick {
        best,
        dominant: window.iter().all(|&i| i == best || x.upper[i] <= x.lower[best]),
        top: window.iter().map(|&i| x.upper[i]).fold(f64::NEG_INFINITY, f64::max),
    })
}

/// The input of a max pooling's output that takes the coefficient `l` on it, or `None`
/// when the bound is a constant (added to `constant`) or the window empty.
fn pool_back(l: f64, pick: Option<Pick>, constant: &mut f64) -> Option<usize> {
    let pick = pick?;
    if l > 0.0 || pick.dominant {
        Some(pick.best)
    } else {
        *constant += l * pick.top;
        None
    }
}

/// The box of an affine layer from its centre, radius, propagated error and the
/// magnitude of its terms, before the bias.
fn affine_box(
    mid: Vec<f64>,
    rad: Vec<f64>,
    err: Vec<f64>,
    size: Vec<f64>,
    bias: impl Fn(usize) -> f64,
    rho: f64,
) -> Boxed {
    let n = mid.len();
    let mut out = Boxed {
        lower: Vec::with_capacity(n),
        upper: Vec::with_capacity(n),
        error: Vec::with_capacity(n),
        picks: Vec::new(),
    };
    for o in 0..n {
        let b = bias(o);
        let total = size[o] + b.abs();
        let r = rad[o] + F64_SLACK * total;
        out.lower.push(mid[o] + b - r);
        out.upper.push(mid[o] + b + r);
        out.error.push(err[o] + rho * total);
    }
    out
}
