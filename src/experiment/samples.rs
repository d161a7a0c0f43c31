//! The experiment's adversarial data: repair samples made from training images, the
//! adversarial test sets as what differs from the clean one, and the example grid.

use ndarray::{Array2, ArrayD, Axis};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::attack::{self, Adversarial, Target};
use crate::data::{to_nchw, Dataset, Layout};
use crate::engine::Session;
use crate::error::Result;
use crate::features::{argmax_rows, collect, Feed};

use super::{Example, ExperimentError};

/// Predictions of a prepared classifier on every image of `ds`.
pub(super) fn predict(session: &dyn Session, ds: &Dataset, feed: &Feed, label: &str) -> Result<Vec<usize>> {
    if ds.is_empty() {
        return Ok(Vec::new());
    }
    Ok(argmax_rows(&collect(session, ds, feed, 0, label)?))
}

/// The rows an attack flipped.
pub(super) fn successes(adv: &Adversarial) -> Vec<usize> {
    adv.success
        .iter()
        .enumerate()
        .filter(|(_, &s)| s)
        .map(|(i, _)| i)
        .collect()
}

/// An adversarial test set as what differs from the clean one: the rows replaced by
/// adversarial examples, with their extractor features and NN's predictions.
pub(super) struct Replaced {
    /// The rows replaced.
    pub replaced: Vec<usize>,
    /// `[replaced, D]` extractor features of the adversarial examples.
    pub features: Array2<f32>,
    /// NN's prediction for each adversarial example.
    pub nn: Vec<usize>,
}

impl Replaced {
    /// The test set with the images `adv`'s attack flipped replaced by its adversarial
    /// examples: features and NN's predictions are computed for those rows only.
    pub(super) fn new(
        adv: &Adversarial,
        (test, dim): (&Dataset, usize),
        layout: Layout,
        (extractor, nn): (&dyn Session, &dyn Session),
        feed: &Feed,
        label: &str,
    ) -> Result<Self> {
        let replaced = successes(adv);
        if replaced.is_empty() {
            return Ok(Self {
                replaced,
                features: Array2::zeros((0, dim)),
                nn: Vec::new(),
            });
        }
        let images = adv.images.select(Axis(0), &replaced);
        let labels = replaced.iter().map(|&i| test.labels[i]).collect();
        let ds = Dataset::from_layout(images, layout, labels, test)?;
        Ok(Self {
            features: collect(extractor, &ds, feed, 0, label)?,
            nn: predict(nn, &ds, feed, label)?,
            replaced,
        })
    }

    /// Predictions on the whole set: `clean` (on the clean test set) with the
    /// replaced rows' predictions `rows` put in.
    pub(super) fn merge(&self, clean: &[usize], rows: &[usize]) -> Vec<usize> {
        let mut out = clean.to_vec();
        for (&i, &p) in self.replaced.iter().zip(rows) {
            out[i] = p;
        }
        out
    }
}

/// Per ε, up to `wanted` adversarial examples of the target made from training images,
/// with those images' indices. The training images are tried in a seeded random
/// order, in chunks that grow fourfold, each attacked only at the radii still short of
/// samples.
pub(super) fn repair_samples(
    target: &Target,
    train: &Dataset,
    settings: &attack::Settings,
    wanted: usize,
    seed: u64,
) -> Result<Vec<(Dataset, Vec<i64>)>> {
    let n = train.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let k = settings.eps.len();
    let mut images: Vec<Vec<ArrayD<f32>>> = vec![Vec::new(); k];
    let mut index: Vec<Vec<i64>> = vec![Vec::new(); k];
    let (mut start, mut chunk) = (0, wanted.saturating_mul(4).max(256));
    while start < n {
        let short: Vec<usize> = (0..k).filter(|&e| index[e].len() < wanted).collect();
        if short.is_empty() {
            break;
        }
        let end = n.min(start.saturating_add(chunk));
        let pool = train
            .select(&order[start..end])
            .ok_or(ExperimentError::Invariant("a training index is out of range"))?;
        let mut s = settings.clone();
        s.eps = short.iter().map(|&e| settings.eps[e]).collect();
        let outcome = attack::run(target, &pool, &s)?;
        for (&e, adv) in short.iter().zip(&outcome.adversarial) {
            for r in successes(adv).into_iter().take(wanted - index[e].len()) {
                images[e].push(adv.images.index_axis(Axis(0), r).to_owned());
                index[e].push(order[start + r] as i64);
            }
        }
        start = end;
        chunk = chunk.saturating_mul(4);
    }
    let mut out = Vec::with_capacity(k);
    for (imgs, idx) in images.into_iter().zip(index) {
        let mut dims = vec![imgs.len()];
        dims.extend(target.pixels_shape(train));
        let views: Vec<_> = imgs.iter().map(|a| a.view().insert_axis(Axis(0))).collect();
        let stacked = if views.is_empty() {
            ArrayD::zeros(dims)
        } else {
            ndarray::concatenate(Axis(0), &views)
                .map_err(|_| ExperimentError::Invariant("repair samples differ in shape"))?
        };
        let labels = idx.iter().map(|&i| train.labels[i as usize]).collect();
        out.push((Dataset::from_layout(stacked, target.layout, labels, train)?, idx));
    }
    Ok(out)
}

/// Up to `count` test images that NN's attack flips at the largest ε (or any, if it
/// flips fewer), clean and attacked at every ε.
pub(super) fn examples(
    test: &Dataset,
    outcome: &attack::Outcome,
    nn_test: &[usize],
    layout: Layout,
    count: usize,
) -> Vec<Example> {
    let Some(last) = outcome.adversarial.last() else {
        return Vec::new();
    };
    let mut rows: Vec<usize> = successes(last).into_iter().take(count).collect();
    for i in 0..test.len() {
        if rows.len() >= count {
            break;
        }
        if !rows.contains(&i) {
            rows.push(i);
        }
    }
    rows.into_iter()
        .filter_map(|i| {
            let clean = test.pixels.to_f32(i..i + 1).index_axis(Axis(0), 0).to_owned();
            let mut images = vec![clean];
            let mut predicted = vec![*nn_test.get(i)?];
            for adv in &outcome.adversarial {
                let one = adv.images.select(Axis(0), &[i]);
                let nchw = to_nchw(one.view(), layout, test.image_shape()).ok()?;
                images.push(nchw.index_axis(Axis(0), 0).to_owned());
                predicted.push(*adv.predicted.get(i)?);
            }
            Some(Example {
                index: i,
                label: test.labels[i],
                images,
                predicted,
            })
        })
        .collect()
}
