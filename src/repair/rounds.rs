//! Attack-in-the-loop repair: a repair that a fresh attack cannot undo as easily.
//!
//! Round 0 repairs the head with the adversarial examples given (or, when none are,
//! with those an attack on the hybrid finds in the pool). Each round then attacks the
//! repaired model on the *pool* (training images the loop may attack), adds the
//! adversarial examples that succeed to the repair samples (keeping the earlier ones,
//! with their clean originals in the preservation set) and solves again, from the
//! original head. The margin program's active set is carried from one round to the
//! next: clarabel cannot warm-start its iterates, but most constraints that bound one
//! round bound the next. The loop stops after the rounds asked for, or once the pool's
//! robust accuracy stops improving; the round whose model was most robust on the pool
//! is the result.
//!
//! With [`RoundSettings::train`] epochs, the head is first trained against PGD on the
//! pool ([`super::adversarial`]), and the rounds then repair the trained head: its
//! LPs change it as little as possible so that the repair samples are classified right
//! and the preserved images keep their margins.

use std::time::Instant;

use ndarray::{concatenate, Array2, Axis};

use crate::attack::{self, HeadTarget, Loss, Target};
use crate::data::Dataset;
use crate::engine::Engine;
use crate::error::Result;
use crate::features::Feed;
use crate::onnx::head::HeadSite;
use crate::onnx::surgery::extractor;
use crate::onnx::{find_cut, ModelProto};
use crate::svm::LinearSvm;

use super::adversarial::{self, Epoch, TrainSettings};
use super::{repair_head_from, HeadRepair, LpSize, RepairError, Samples, Settings, Status};

/// How the loop runs.
#[derive(Debug, Clone)]
pub struct RoundSettings {
    /// Rounds in all, round 0 included (1 is a single repair).
    pub rounds: usize,
    /// Training images in the pool the rounds attack (drawn with the attack's seed).
    pub pool: usize,
    /// The attack run on the pool after each round (its `eps`: the repair's radius).
    pub attack: attack::Settings,
    /// The loss it follows.
    pub loss: Loss,
    /// The loop stops when a round's pool robust accuracy gains less than this over
    /// the best round before it.
    pub min_gain: f64,
    /// Keep every round's LP instance ([`Outcome::instances`]), to be written out.
    pub keep_instances: bool,
    /// Adversarial training of the head on the pool before the rounds (none with 0
    /// epochs).
    pub train: TrainSettings,
}

impl RoundSettings {
    /// A single repair: no loop, no attack.
    pub fn single() -> Self {
        Self {
            rounds: 1,
            pool: 0,
            attack: attack::Settings::default(),
            loss: Loss::Ce,
            min_gain: 0.0,
            keep_instances: false,
            train: TrainSettings::default(),
        }
    }
}

/// One round of the loop.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Round {
    /// 0, 1, …
    pub round: usize,
    /// Repair samples in this round's program (every round's so far).
    pub samples: usize,
    /// Repair samples this round added.
    pub new_samples: usize,
    /// How the LP ended.
    pub status: Status,
    /// Its optimum.
    pub objective: f64,
    /// Share of all the repair samples so far classified right after this round.
    pub efficacy: f64,
    /// Share of the pool classified right and not flipped by the attack, after this
    /// round (`null` when there is no pool to attack).
    pub pool_robust_accuracy: Option<f64>,
    /// The LP's size.
    pub lp: LpSize,
    /// Constraints in the margin program's final active set.
    pub active_constraints: Option<usize>,
    /// Seconds in the solver.
    pub lp_seconds: f64,
    /// Seconds attacking the pool.
    pub attack_seconds: f64,
}

/// What the loop produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The chosen round's repair (its `unfixed` are rows of all the repair samples).
    pub fix: HeadRepair,
    /// Each repair sample's image index in the training data (the chosen round's).
    pub index: Vec<i64>,
    /// The chosen round's model.
    pub model: ModelProto,
    /// Every round.
    pub rounds: Vec<Round>,
    /// The round chosen: the one most robust on the pool (the earliest of equals);
    /// when no round's LP solved, the first, whose status says so.
    pub chosen: usize,
    /// The pool's robust accuracy before any repair, when the loop attacked the hybrid
    /// itself for round 0's samples.
    pub pool_before: Option<f64>,
    /// Every round's LP instance, in order, when [`RoundSettings::keep_instances`].
    pub instances: Vec<super::Instance>,
    /// The adversarial training's epochs, when the head was trained first.
    pub epochs: Vec<Epoch>,
}

/// The repair samples so far, as what the head's linear part reads.
struct Pile {
    adversarial: Array2<f32>,
    originals: Array2<f32>,
    labels: Vec<i64>,
    index: Vec<i64>,
}

/// Repair samples joining the pile: their adversarial images, those images and their
/// originals as the linear part reads them, and the originals' training indices.
struct Batch {
    images: Dataset,
    adversarial: Array2<f32>,
    originals: Array2<f32>,
    index: Vec<i64>,
}

impl Pile {
    fn push(&mut self, batch: &Batch) -> Result<(), RepairError> {
        let stack = |a: &Array2<f32>, b: &Array2<f32>| {
            concatenate(Axis(0), &[a.view(), b.view()])
                .map_err(|e| RepairError::Shape(format!("adding repair samples: {e}")))
        };
        self.adversarial = stack(&self.adversarial, &batch.adversarial)?;
        self.originals = stack(&self.originals, &batch.originals)?;
        self.labels.extend_from_slice(&batch.images.labels);
        self.index.extend_from_slice(&batch.index);
        Ok(())
    }

    fn len(&self) -> usize {
        self.labels.len()
    }
}

/// What the loop works on.
pub struct Loop<'a> {
    /// The hybrid being repaired (the model every round's head is written into).
    pub hybrid: &'a ModelProto,
    /// Where its head sits.
    pub site: &'a HeadSite,
    /// Its head's linear part, before any repair.
    pub linear: &'a LinearSvm,
    /// What the linear part reads, for a set of images: the extractor's features, or
    /// the Nyström features.
    pub reads: &'a (dyn Fn(&Dataset) -> Result<Array2<f32>> + Sync),
    /// The engine that runs the attacks.
    pub engine: &'a dyn Engine,
    /// How images are fed.
    pub feed: &'a Feed,
    /// The pool: training images the loop may attack, with their training indices
    /// (none: one repair, no attack).
    pub pool: Option<(&'a Dataset, &'a [i64])>,
    /// The preserved training images, as the linear part reads them, and their labels.
    pub preserve: (&'a Array2<f32>, &'a [i64]),
    /// The repair's formulation.
    pub settings: &'a Settings,
}

/// Remaps a margin program's active pairs after `added` repair samples joined the
/// `before` there were: rows are repair samples, then their originals, then the
/// preserved samples.
fn remap(pairs: &[(usize, usize)], before: usize, added: usize) -> Vec<(usize, usize)> {
    pairs
        .iter()
        .map(|&(s, c)| {
            let row = if s < before {
                s
            } else if s < 2 * before {
                s + added
            } else {
                s + 2 * added
            };
            (row, c)
        })
        .collect()
}

impl Loop<'_> {
    /// Attacks `model` on the pool: the pool's robust accuracy, and the successful
    /// adversarial examples as the next repair samples.
    fn attack(
        &self,
        model: &ModelProto,
        rounds: &RoundSettings,
        pool_features: &Array2<f32>,
    ) -> Result<Option<(f64, Batch)>> {
        let Some((pool, pool_index)) = self.pool else {
            return Ok(None);
        };
        let target = Target::new(model, self.engine, pool, self.feed, rounds.loss)?;
        let outcome = attack::run(&target, pool, &rounds.attack)?;
        let (Some(result), Some(adv)) = (outcome.results.first(), outcome.adversarial.first()) else {
            return Err(RepairError::Shape("the pool attack returned nothing".into()).into());
        };
        let rows: Vec<usize> = (0..pool.len()).filter(|&i| adv.success[i]).collect();
        let images = adv.images.select(Axis(0), &rows);
        let labels = rows.iter().map(|&i| pool.labels[i]).collect();
        let images = Dataset::from_layout(images, target.layout, labels, pool)?;
        let batch = Batch {
            adversarial: (self.reads)(&images)?,
            images,
            originals: pool_features.select(Axis(0), &rows),
            index: rows.iter().map(|&i| pool_index[i]).collect(),
        };
        Ok(Some((result.robust_accuracy, batch)))
    }

    /// Runs the loop from the repair samples `initial`: adversarial images, their clean
    /// originals, and those originals' training indices. With none, round 0's samples
    /// come from an attack on the hybrid itself (which needs a pool).
    pub fn run(&self, initial: Option<(&Dataset, &Dataset, &[i64])>, rounds: &RoundSettings) -> Result<Outcome> {
        let pool_features = match self.pool {
            Some((pool, _)) => (self.reads)(pool)?,
            None => Array2::zeros((0, self.linear.n_features())),
        };
        let initial = match initial {
            Some((images, originals, index)) => Some(Batch {
                images: images.clone(),
                adversarial: (self.reads)(images)?,
                originals: (self.reads)(originals)?,
                index: index.to_vec(),
            }),
            None => None,
        };
        let trained = self.train(&rounds.train, &pool_features, initial.as_ref())?;
        let (looped, preserved);
        let (this, guards) = match &trained {
            Some(t) => {
                // The LPs keep the margins of the trained head's own adversarial
                // examples that it classifies right (guards), so that fixing the
                // repair samples does not undo the training.
                let Some((pool, _)) = self.pool else {
                    return Err(RepairError::Shape("training without a pool".into()).into());
                };
                let stack = |a: ndarray::ArrayView2<f32>, b: ndarray::ArrayView2<f32>| {
                    concatenate(Axis(0), &[a, b]).map_err(|e| RepairError::Shape(e.to_string()))
                };
                let right: Vec<usize> = t
                    .linear
                    .predict(t.attacked.view())
                    .iter()
                    .zip(&pool.labels)
                    .enumerate()
                    .filter(|(_, (&p, &y))| p as i64 == y)
                    .map(|(i, _)| i)
                    .collect();
                let guards = t.attacked.select(Axis(0), &right);
                let labels: Vec<i64> = self
                    .preserve
                    .1
                    .iter()
                    .copied()
                    .chain(right.iter().map(|&i| pool.labels[i]))
                    .collect();
                preserved = (stack(self.preserve.0.view(), guards.view())?, labels);
                looped = Loop {
                    linear: &t.linear,
                    preserve: (&preserved.0, &preserved.1),
                    ..*self
                };
                (&looped, right.len())
            }
            None => (self, 0),
        };
        let mut outcome = this.rounds(initial, rounds, &pool_features, guards)?;
        if let Some(t) = trained {
            // The change the user sees is from the hybrid's head, training included.
            outcome.fix.measure_change_from(self.linear);
            outcome.epochs = t.epochs;
        }
        Ok(outcome)
    }

    /// Trains the head against PGD on the pool (whose features are `pool_features`),
    /// with the repair samples of `initial` held fixed, when epochs are asked for.
    fn train(
        &self,
        settings: &TrainSettings,
        pool_features: &Array2<f32>,
        initial: Option<&Batch>,
    ) -> Result<Option<adversarial::Trained>> {
        let Some((pool, _)) = self.pool.filter(|_| settings.epochs > 0) else {
            return Ok(None);
        };
        let cut = find_cut(self.hybrid, Some(&self.site.input))?;
        let model = extractor(self.hybrid, &cut, None)?;
        let target = HeadTarget::new(&model, self.engine, pool, self.feed, Loss::Ce, self.linear.n_classes())?;
        let none = Array2::zeros((0, self.linear.n_features()));
        let fixed = match initial {
            Some(batch) => adversarial::Fixed {
                features: batch.adversarial.view(),
                labels: &batch.images.labels,
            },
            None => adversarial::Fixed {
                features: none.view(),
                labels: &[],
            },
        };
        let trained = adversarial::train(
            &target,
            pool,
            pool_features.view(),
            self.linear,
            fixed,
            settings,
            self.feed.threads,
        )?;
        Ok(Some(trained))
    }

    /// The rounds, from the repair samples `initial` (none: attack the hybrid for
    /// them), with the last `guards` preserved rows priced as guards.
    fn rounds(
        &self,
        initial: Option<Batch>,
        rounds: &RoundSettings,
        pool_features: &Array2<f32>,
        guards: usize,
    ) -> Result<Outcome> {
        let d = self.linear.n_features();
        let mut pile = Pile {
            adversarial: Array2::zeros((0, d)),
            originals: Array2::zeros((0, d)),
            labels: Vec::new(),
            index: Vec::new(),
        };
        let mut pool_before = None;
        let mut attack_seconds = 0.0;
        let mut pending = match initial {
            Some(batch) => batch,
            None => {
                let started = Instant::now();
                let (accuracy, batch) = self
                    .attack(self.hybrid, rounds, pool_features)?
                    .ok_or(RepairError::NoSamples)?;
                pool_before = Some(accuracy);
                attack_seconds = started.elapsed().as_secs_f64();
                batch
            }
        };
        let mut history: Vec<Round> = Vec::new();
        let mut best: Option<(f64, HeadRepair, ModelProto, usize, Vec<i64>)> = None;
        let mut warm: Vec<(usize, usize)> = Vec::new();
        let mut instances = Vec::new();
        let last = rounds.rounds.max(1) - 1;
        for round in 0..=last {
            if pending.images.is_empty() && round > 0 {
                break;
            }
            let before = pile.len();
            let added = pending.images.len();
            pile.push(&pending)?;
            let samples = Samples {
                adversarial: pile.adversarial.view(),
                labels: &pile.labels,
                originals: pile.originals.view(),
                preserve: self.preserve.0.view(),
                preserve_labels: self.preserve.1,
                guards,
            };
            let fix = repair_head_from(self.linear, &samples, self.settings, &remap(&warm, before, added))?;
            if let Some(m) = &fix.repair.margin {
                warm.clone_from(&m.pairs);
            }
            if rounds.keep_instances {
                instances.push(fix.instance.clone());
            }
            let model = super::hybrid::write(self.hybrid, self.site, self.settings, &fix)?;
            let usable = fix.repair.status.usable();
            // The last round is attacked too, to report how robust it is; a single
            // repair (no pool) is not.
            let started = Instant::now();
            let attacked = if usable {
                self.attack(&model, rounds, pool_features)?
            } else {
                None
            };
            history.push(Round {
                round,
                samples: pile.len(),
                new_samples: added,
                status: fix.repair.status,
                objective: fix.repair.objective,
                efficacy: fix.efficacy,
                pool_robust_accuracy: attacked.as_ref().map(|a| a.0),
                lp: fix.lp,
                active_constraints: fix.repair.margin.as_ref().map(|m| m.active),
                lp_seconds: fix.repair.seconds,
                attack_seconds: attack_seconds + started.elapsed().as_secs_f64(),
            });
            attack_seconds = 0.0;
            let accuracy = attacked.as_ref().map_or(f64::NEG_INFINITY, |a| a.0);
            let previous = best.as_ref().filter(|b| b.1.repair.status.usable()).map(|b| b.0);
            // An unusable round is kept only while there is nothing better, so that
            // the caller sees how its LP ended.
            if best.is_none() || (usable && previous.is_none_or(|p| accuracy > p)) {
                best = Some((accuracy, fix, model, round, pile.index.clone()));
            }
            let stalled = previous.is_some_and(|p| accuracy < p + rounds.min_gain);
            match attacked {
                Some((_, next)) if usable && !stalled && round < last => pending = next,
                _ => break,
            }
        }
        match best {
            Some((_, fix, model, chosen, index)) => Ok(Outcome {
                fix,
                index,
                model,
                rounds: history,
                chosen,
                pool_before,
                instances,
                epochs: Vec::new(),
            }),
            None => Err(RepairError::NoSamples.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn active_pairs_follow_their_rows_when_samples_join() {
        // Two repair samples (rows 0, 1), their originals (2, 3), one preserved (4);
        // three samples join: originals move to 5, 6 and the preserved one to 10.
        let pairs = [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)];
        assert_eq!(
            super::remap(&pairs, 2, 3),
            vec![(0, 1), (1, 2), (5, 3), (6, 4), (10, 5)]
        );
    }
}
