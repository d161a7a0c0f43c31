#![allow(clippy::unwrap_used)]

use ndarray::{Array1, Array2};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::layers::{Boxed, Layer};
use super::window::{Conv, MaxPool, Window};
use std::sync::Arc;

use super::{BoxCache, Chain, LinearBounder};
use crate::head::HeadKind;
use crate::onnx::head::HeadSite;

fn random(rng: &mut StdRng, n: usize, scale: f64) -> Vec<f64> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

/// Pixels `[2, 6, 6]` → Conv 3×3 (4 channels) → Relu → MaxPool 2×2 → Dense 16 → Relu
/// → features 16, with random weights; and with `relu: false` the affine layers alone.
fn chain(rng: &mut StdRng, nonlinear: bool) -> Chain {
    let window = |input: [usize; 3], output: [usize; 3], k: usize, stride: usize| Window {
        input,
        output,
        kernel: [k, k],
        stride: [stride; 2],
        dilation: [1, 1],
        pad: [0, 0],
    };
    let conv = Conv::new(
        random(rng, 4 * 2 * 9, 0.5),
        random(rng, 4, 0.2),
        window([2, 6, 6], [4, 4, 4], 3, 1),
        1,
    );
    let mut layers = vec![
        Layer::Elementwise {
            scale: random(rng, 72, 2.0),
            shift: random(rng, 72, 0.5),
            rounding: 0.0,
        },
        Layer::Conv(conv),
    ];
    if nonlinear {
        layers.push(Layer::Relu);
        layers.push(Layer::MaxPool(MaxPool {
            window: window([4, 4, 4], [4, 2, 2], 2, 2),
        }));
        layers.push(Layer::Dense {
            w: random(rng, 16 * 16, 0.5),
            b: random(rng, 16, 0.2),
            inputs: 16,
        });
        layers.push(Layer::Relu);
    } else {
        layers.push(Layer::Dense {
            w: random(rng, 16 * 64, 0.5),
            b: random(rng, 16, 0.2),
            inputs: 64,
        });
    }
    Chain::from_layers(layers, 72, 16)
}

fn head(rng: &mut StdRng, d: usize) -> HeadSite {
    HeadSite {
        kind: HeadKind::Linear,
        input: "features".into(),
        weight_name: "w".into(),
        bias_name: "b".into(),
        weights: Array2::from_shape_fn((3, d), |_| rng.random_range(-1.0f32..1.0)),
        bias: Array1::from_shape_fn(3, |_| rng.random_range(-0.2f32..0.2)),
    }
}

/// The chain's features at one point, in f64.
fn features(chain: &Chain, x: &[f64]) -> Vec<f64> {
    let mut b = Boxed {
        lower: x.to_vec(),
        upper: x.to_vec(),
        error: vec![0.0; x.len()],
        picks: Vec::new(),
    };
    for layer in &chain.layers {
        b = layer.forward(&b, &|_| 0.0);
    }
    b.lower.iter().zip(&b.upper).map(|(l, u)| 0.5 * (l + u)).collect()
}

fn worst_margin_at(h: &HeadSite, f: &[f64], label: usize) -> f64 {
    let score = |k: usize| -> f64 {
        f64::from(h.bias[k])
            + h.weights
                .row(k)
                .iter()
                .zip(f)
                .map(|(&w, &v)| f64::from(w) * v)
                .sum::<f64>()
    };
    (0..3)
        .filter(|&j| j != label)
        .map(|j| score(label) - score(j))
        .fold(f64::INFINITY, f64::min)
}

#[test]
fn the_bound_holds_at_every_point_of_the_ball_tried() {
    let mut rng = StdRng::seed_from_u64(7);
    for trial in 0..20 {
        let c = chain(&mut rng, true);
        let h = head(&mut rng, 16);
        let b = LinearBounder::new(c.clone(), &h, 0.0).unwrap().refined(trial % 2 == 1);
        let x: Vec<f32> = (0..72).map(|_| rng.random_range(0.0f32..1.0)).collect();
        let eps = [0.01, 0.05, 0.2][trial % 3];
        for label in 0..3 {
            let bound = b.worst_margin(Array1::from(x.clone()).view(), label, eps).unwrap();
            for _ in 0..200 {
                // Corners and inner points of the clipped ball.
                let p: Vec<f64> = x
                    .iter()
                    .map(|&v| {
                        let (lo, hi) = ((f64::from(v) - eps).max(0.0), (f64::from(v) + eps).min(1.0));
                        if rng.random_bool(0.5) {
                            if rng.random_bool(0.5) {
                                lo
                            } else {
                                hi
                            }
                        } else {
                            rng.random_range(lo..=hi)
                        }
                    })
                    .collect();
                let m = worst_margin_at(&h, &features(&c, &p), label);
                assert!(
                    m >= bound - 1e-9,
                    "trial {trial}, label {label}: margin {m} below the bound {bound}"
                );
            }
        }
    }
}

#[test]
fn an_affine_chain_is_bounded_exactly() {
    let mut rng = StdRng::seed_from_u64(3);
    let c = chain(&mut rng, false);
    let h = head(&mut rng, 16);
    let b = LinearBounder::new(c.clone(), &h, 0.0).unwrap();
    let x: Vec<f32> = (0..72).map(|_| rng.random_range(0.0f32..1.0)).collect();
    let eps = 0.1;
    // The margin over j is affine in the pixels, so its minimum is at the corner that
    // each pixel's coefficient picks: found here by differences, not by the bounder.
    for label in 0..3 {
        let mut exact = f64::INFINITY;
        for j in (0..3).filter(|&j| j != label) {
            let margin = |p: &[f64]| {
                let f = features(&c, p);
                let s = |k: usize| {
                    f64::from(h.bias[k])
                        + h.weights
                            .row(k)
                            .iter()
                            .zip(&f)
                            .map(|(&w, &v)| f64::from(w) * v)
                            .sum::<f64>()
                };
                s(label) - s(j)
            };
            let centre: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
            let mut corner = centre.clone();
            for i in 0..72 {
                let mut up = centre.clone();
                up[i] += 1e-3;
                let slope = margin(&up) - margin(&centre);
                let (lo, hi) = ((centre[i] - eps).max(0.0), (centre[i] + eps).min(1.0));
                corner[i] = if slope >= 0.0 { lo } else { hi };
            }
            exact = exact.min(margin(&corner));
        }
        let bound = b.worst_margin(Array1::from(x.clone()).view(), label, eps).unwrap();
        assert!(
            (bound - exact).abs() <= 1e-8 * (1.0 + exact.abs()),
            "label {label}: {bound} against {exact}"
        );
    }
}

#[test]
fn the_linear_bound_is_at_least_the_interval_bound_and_rounding_lowers_it() {
    let mut rng = StdRng::seed_from_u64(11);
    let c = chain(&mut rng, true);
    let h = head(&mut rng, 16);
    let exact = LinearBounder::new(c.clone(), &h, 0.0).unwrap();
    let f32_engine = LinearBounder::new(c.clone(), &h, crate::onnx::bounds::F32_ROUNDOFF).unwrap();
    let x: Vec<f32> = (0..72).map(|_| rng.random_range(0.0f32..1.0)).collect();
    let x = Array1::from(x);
    let mut tighter = 0;
    for eps in [0.0, 0.01, 0.1] {
        let boxes = c.boxes(
            x.iter().map(|&p| (f64::from(p) - eps).max(0.0)).collect(),
            x.iter().map(|&p| (f64::from(p) + eps).min(1.0)).collect(),
            0.0,
            false,
        );
        let f = boxes.last().unwrap();
        let lower = f.lower.iter().map(|&v| v as f32).collect::<Array1<f32>>();
        let upper = f.upper.iter().map(|&v| v as f32).collect::<Array1<f32>>();
        for label in 0..3 {
            let linear = exact.worst_margin(x.view(), label, eps).unwrap();
            let interval = crate::verify::worst_margin(&h, lower.view(), upper.view(), label, 0.0).unwrap();
            assert!(
                linear >= interval - 1e-5 * (1.0 + interval.abs()),
                "{linear} < {interval}"
            );
            tighter += usize::from(linear > interval + 1e-3 * (1.0 + interval.abs()));
            let rounded = f32_engine.worst_margin(x.view(), label, eps).unwrap();
            assert!(
                rounded < linear && rounded > linear - 1e-3 * (1.0 + linear.abs()),
                "{rounded} vs {linear}"
            );
        }
    }
    assert!(tighter > 0, "back-substitution never beat the interval bound");
}

#[test]
fn labels_and_pixels_out_of_range_give_none() {
    let mut rng = StdRng::seed_from_u64(5);
    let c = chain(&mut rng, true);
    let h = head(&mut rng, 16);
    let b = LinearBounder::new(c, &h, 0.0).unwrap();
    assert!(b.worst_margin(Array1::zeros(72).view(), 3, 0.1).is_none());
    assert!(b.worst_margin(Array1::zeros(71).view(), 0, 0.1).is_none());
    let wrong = head(&mut rng, 15);
    assert!(LinearBounder::new(chain(&mut rng, true), &wrong, 0.0).is_err());
}

#[test]
fn refined_boxes_lie_inside_the_interval_boxes_and_tighten_some() {
    let mut rng = StdRng::seed_from_u64(13);
    let c = chain(&mut rng, true);
    let x: Vec<f64> = (0..72).map(|_| rng.random_range(0.0..1.0)).collect();
    let eps = 0.05;
    let lo: Vec<f64> = x.iter().map(|&p| (p - eps).max(0.0)).collect();
    let hi: Vec<f64> = x.iter().map(|&p| (p + eps).min(1.0)).collect();
    let plain = c.boxes(lo.clone(), hi.clone(), 0.0, false);
    let refined = c.boxes(lo, hi, 0.0, true);
    let mut tighter = 0;
    for (p, r) in plain.iter().zip(&refined) {
        for k in 0..p.lower.len() {
            assert!(r.lower[k] >= p.lower[k] - 1e-12 && r.upper[k] <= p.upper[k] + 1e-12);
            tighter += usize::from(r.upper[k] - r.lower[k] < 0.99 * (p.upper[k] - p.lower[k]));
        }
    }
    assert!(tighter > 0, "no box was tightened");
    // Points of the ball stay inside the refined boxes of the features.
    let f = refined.last().unwrap();
    for _ in 0..500 {
        let p: Vec<f64> = x
            .iter()
            .map(|&v| rng.random_range((v - eps).max(0.0)..=(v + eps).min(1.0)))
            .collect();
        for (k, v) in features(&c, &p).iter().enumerate() {
            assert!(
                *v >= f.lower[k] - 1e-9 && *v <= f.upper[k] + 1e-9,
                "feature {k}: {v} outside"
            );
        }
    }
}

#[test]
fn a_box_cache_serves_other_heads_on_the_same_chain_only() {
    let mut rng = StdRng::seed_from_u64(17);
    let c = chain(&mut rng, true);
    let other = chain(&mut rng, true);
    let (h1, h2) = (head(&mut rng, 16), head(&mut rng, 16));
    let images: Vec<Array1<f32>> = (0..4)
        .map(|_| (0..72).map(|_| rng.random_range(0.0f32..1.0)).collect())
        .collect();
    let cache = Arc::new(BoxCache::default());
    let eps = 0.03;
    for h in [&h1, &h2] {
        let plain = LinearBounder::new(c.clone(), h, 1e-7).unwrap().refined(true);
        let cached = plain.clone().cached(Some(Arc::clone(&cache)));
        for x in &images {
            for label in 0..3 {
                let (a, b) = (
                    plain.worst_margin(x.view(), label, eps),
                    cached.worst_margin(x.view(), label, eps),
                );
                assert_eq!(a.map(f64::to_bits), b.map(f64::to_bits), "label {label}");
            }
            assert_eq!(plain.feature_box(x.view(), eps), cached.feature_box(x.view(), eps));
        }
        // The second head reads the first one's boxes: nothing new is kept.
        assert_eq!(cache.len(), images.len());
    }
    // Another radius, or another extractor, misses.
    let cached = LinearBounder::new(c, &h1, 1e-7)
        .unwrap()
        .refined(true)
        .cached(Some(Arc::clone(&cache)));
    cached.worst_margin(images[0].view(), 0, 2.0 * eps);
    assert_eq!(cache.len(), images.len() + 1);
    let plain = LinearBounder::new(other, &h1, 1e-7).unwrap().refined(true);
    let cached = plain.clone().cached(Some(Arc::clone(&cache)));
    assert_eq!(
        plain.worst_margin(images[0].view(), 0, eps).map(f64::to_bits),
        cached.worst_margin(images[0].view(), 0, eps).map(f64::to_bits)
    );
    assert_eq!(cache.len(), images.len() + 2);
}

/// The chain's boxes (exact arithmetic) over the ε-ball around `x`, clipped to [0, 1].
fn ball_boxes(c: &Chain, x: &[f64], eps: f64, refine: bool) -> Vec<Boxed> {
    c.boxes(
        x.iter().map(|&p| (p - eps).max(0.0)).collect(),
        x.iter().map(|&p| (p + eps).min(1.0)).collect(),
        0.0,
        refine,
    )
}

/// One backward step of `layer` over the box `x` on random coefficients over its
/// `width` outputs (both signs, a fraction `density` of them non-zero) equals the dense
/// step to the bit, coefficients and constant; `scratch` is the one the steps before
/// used, as in a back-substitution.
fn step_matches_dense(
    layer: &Layer,
    x: &Boxed,
    width: usize,
    density: f64,
    (rng, scratch): (&mut StdRng, &mut super::scratch::Scratch),
    case: &str,
) {
    let dense: Vec<f64> = (0..width)
        .map(|_| {
            if rng.random_bool(density) {
                rng.random_range(-1.0..1.0)
            } else {
                0.0
            }
        })
        .collect();
    let given: Vec<(usize, f64)> = dense.iter().copied().enumerate().filter(|&(_, l)| l != 0.0).collect();
    let (mut a, mut b) = (0.25, 0.25);
    let want = layer.backward_dense(&dense, x, &mut a);
    let mut sparse = Vec::new();
    layer.backward(&given, x, &mut b, scratch, &mut sparse);
    let want: Vec<(usize, f64)> = want.into_iter().enumerate().filter(|&(_, l)| l != 0.0).collect();
    assert_eq!(sparse, want, "{case}");
    assert_eq!(a.to_bits(), b.to_bits(), "{case}: constant");
}

#[test]
fn sparse_back_substitution_steps_equal_the_dense_ones_to_the_bit() {
    let mut rng = StdRng::seed_from_u64(17);
    let c = chain(&mut rng, true);
    let x: Vec<f64> = (0..72).map(|_| rng.random_range(0.0..1.0)).collect();
    let boxes = ball_boxes(&c, &x, 0.1, false);
    let mut scratch = super::scratch::Scratch::default();
    for (t, layer) in c.layers.iter().enumerate() {
        let width = boxes[t + 1].lower.len();
        for density in [0.05, 0.5, 1.0] {
            let case = format!("layer {t}, density {density}");
            step_matches_dense(layer, &boxes[t], width, density, (&mut rng, &mut scratch), &case);
        }
    }
}

/// The window of a convolution with `m` output channels over `input`, with the same
/// stride, dilation and padding (on every side) on both axes.
fn conv_window(
    input: [usize; 3],
    m: usize,
    kernel: [usize; 2],
    (stride, dilation, pad): (usize, usize, usize),
) -> Window {
    let side = |size: usize, k: usize| Conv::out_size(size, k, stride, dilation, 2 * pad).unwrap();
    Window {
        input,
        output: [m, side(input[1], kernel[0]), side(input[2], kernel[1])],
        kernel,
        stride: [stride; 2],
        dilation: [dilation; 2],
        pad: [pad; 2],
    }
}

#[test]
fn the_runs_of_a_convolution_are_its_taps_with_padding_stride_and_dilation() {
    for (stride, dilation, pad) in [(1, 1, 0), (2, 1, 1), (1, 2, 2), (3, 2, 1), (2, 1, 3)] {
        let (input, kernel) = ([2usize, 7usize, 6usize], [3usize, 2usize]);
        let window = conv_window(input, 4, kernel, (stride, dilation, pad));
        let output = window.output;
        let conv = Conv::new(vec![0.0; 4 * kernel[0] * kernel[1]], vec![0.0; 4], window, 2);
        let mut runs = Vec::new();
        conv.each_run(|wi, i0, o0, len| runs.extend((0..len).map(|t| (wi, i0 + t * stride, o0 + t))));
        // Every tap, enumerated from the definition.
        let mut taps = Vec::new();
        let [c, h, w] = input;
        let [m, oh, ow] = output;
        for om in 0..m {
            let g = om / (m / 2);
            for ci in 0..c / 2 {
                for ky in 0..kernel[0] {
                    for kx in 0..kernel[1] {
                        for oy in 0..oh {
                            for ox in 0..ow {
                                let iy = (oy * stride + ky * dilation) as isize - pad as isize;
                                let ix = (ox * stride + kx * dilation) as isize - pad as isize;
                                if (0..h as isize).contains(&iy) && (0..w as isize).contains(&ix) {
                                    let wi = ((om * (c / 2) + ci) * kernel[0] + ky) * kernel[1] + kx;
                                    let i = ((g * (c / 2) + ci) * h + iy as usize) * w + ix as usize;
                                    taps.push((wi, i, (om * oh + oy) * ow + ox));
                                }
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(runs, taps, "stride {stride}, dilation {dilation}, pad {pad}");
    }
}

#[test]
fn a_convolutions_step_back_equals_the_dense_one_with_padding_stride_dilation_and_groups() {
    let mut rng = StdRng::seed_from_u64(5);
    let mut scratch = super::scratch::Scratch::default();
    for (stride, dilation, pad) in [(1, 1, 0), (2, 1, 1), (1, 2, 2), (3, 2, 1), (2, 1, 3), (1, 1, 1)] {
        let (input, kernel) = ([4usize, 9usize, 8usize], [3usize, 2usize]);
        let window = conv_window(input, 6, kernel, (stride, dilation, pad));
        let output = window.output;
        let w = random(&mut rng, 6 * 2 * kernel[0] * kernel[1], 1.0);
        let layer = Layer::Conv(Conv::new(w, random(&mut rng, 6, 0.2), window, 2));
        let n: usize = input.iter().product();
        let x = Boxed {
            lower: vec![0.0; n],
            upper: vec![1.0; n],
            error: vec![0.0; n],
            picks: Vec::new(),
        };
        for density in [0.1, 1.0] {
            let case = format!("stride {stride}, dilation {dilation}, pad {pad}, density {density}");
            let width = output.iter().product();
            step_matches_dense(&layer, &x, width, density, (&mut rng, &mut scratch), &case);
        }
    }
}

#[test]
fn features_bounded_through_kept_substitutions_are_as_tight_as_fresh_ones() {
    let mut rng = StdRng::seed_from_u64(23);
    for _ in 0..8 {
        let c = chain(&mut rng, true);
        let x: Vec<f64> = (0..72).map(|_| rng.random_range(0.0..1.0)).collect();
        let boxes = ball_boxes(&c, &x, 0.05, true);
        let last = c.layers.len();
        // Each feature's substitution again, with nothing kept from the others.
        for k in 0..boxes[last].lower.len() {
            let mut fresh = super::Substitution::default();
            let below = c.substitute(last - 1, &[(k, 1.0)], &boxes[..last], &mut fresh);
            let above = -c.substitute(last - 1, &[(k, -1.0)], &boxes[..last], &mut fresh);
            let slack = super::layers::F64_SLACK * below.abs().max(above.abs()) + 1e-12;
            assert!(boxes[last].lower[k] >= below - slack, "feature {k}");
            assert!(boxes[last].upper[k] <= above + slack, "feature {k}");
        }
    }
}
