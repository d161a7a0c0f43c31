//! The experiment's repair of a hybrid's head, on features from the experiment's own
//! extractor (never going back through ONNX): what every ε shares (where the head sits
//! in the hybrid's graph, the preserved training images' features, the pool) is made
//! once; each ε's repair is an attack-in-the-loop repair ([`crate::repair::rounds`]),
//! a single LP when one round is asked for.

use ndarray::Array2;

use crate::data::Dataset;
use crate::engine::{Engine, Session};
use crate::error::Result;
use crate::features::{collect, Feed};
use crate::head::Head;
use crate::onnx::head::{self as onnx_head, HeadSite};
use crate::onnx::ModelProto;
use crate::repair::hybrid::{originals, pool};
use crate::repair::rounds::{self, Loop, RoundSettings};
use crate::repair::{self, preservation_rows};

use super::ExperimentError;

/// Repairs one hybrid's head, ε after ε.
pub(super) struct Repairer<'a> {
    hybrid: &'a ModelProto,
    head: &'a Head,
    site: HeadSite,
    train: &'a Dataset,
    extractor: &'a dyn Session,
    engine: &'a dyn Engine,
    feed: &'a Feed,
    settings: &'a repair::Settings,
    /// The preserved training images as the head's linear part reads them.
    preserve: (Array2<f32>, Vec<i64>),
    /// The pool the rounds attack, when there are rounds.
    pool: Option<(Dataset, Vec<i64>)>,
}

impl<'a> Repairer<'a> {
    /// Prepares the repair of `hybrid`, whose head is `head`, with training data
    /// `train` (features by `extractor`), for loops like `rounds`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        hybrid: &'a ModelProto,
        head: &'a Head,
        train: &'a Dataset,
        extractor: &'a dyn Session,
        engine: &'a dyn Engine,
        feed: &'a Feed,
        settings: &'a repair::Settings,
        rounds: &RoundSettings,
    ) -> Result<Self> {
        let site = onnx_head::find(hybrid)?;
        let preserve = match settings.margin {
            Some(_) => {
                let rows = preservation_rows(train.len(), settings.preserve);
                let kept = train
                    .select(&rows)
                    .ok_or(ExperimentError::Invariant("a preservation index is out of range"))?;
                let features = collect(extractor, &kept, feed, 0, "features")?;
                (head.inputs(features.view()).into_owned(), kept.labels)
            }
            None => (Array2::zeros((0, site.weights.ncols())), Vec::new()),
        };
        let pool = if rounds.rounds > 1 || rounds.train.epochs > 0 {
            Some(pool(train, rounds.pool, rounds.attack.seed)?)
        } else {
            None
        };
        Ok(Self {
            hybrid,
            head,
            site,
            train,
            extractor,
            engine,
            feed,
            settings,
            preserve,
            pool,
        })
    }

    /// Repairs the head with the adversarial training images `adversarial`, whose
    /// clean originals are the training images at `index`, in a loop like `rounds`.
    pub(super) fn repair(
        &self,
        adversarial: &Dataset,
        index: &[i64],
        rounds: &RoundSettings,
    ) -> Result<rounds::Outcome> {
        let rows = originals(index, &adversarial.labels, self.train)?;
        let originals = self
            .train
            .select(&rows)
            .ok_or(ExperimentError::Invariant("a repair sample's index is out of range"))?;
        let reads = |ds: &Dataset| -> Result<Array2<f32>> {
            let features = collect(self.extractor, ds, self.feed, 0, "features")?;
            Ok(self.head.inputs(features.view()).into_owned())
        };
        let looped = Loop {
            hybrid: self.hybrid,
            site: &self.site,
            linear: &self.head.linear,
            reads: &reads,
            engine: self.engine,
            feed: self.feed,
            pool: self.pool.as_ref().map(|(p, i)| (p, i.as_slice())),
            preserve: (&self.preserve.0, &self.preserve.1),
            settings: self.settings,
        };
        looped.run(Some((adversarial, &originals, index)), rounds)
    }
}
