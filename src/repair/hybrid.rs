//! Repairing a hybrid written as ONNX: its head is read out of the graph
//! ([`crate::onnx::head`]), the features it reads are extracted with an engine (the
//! extractor's `features` in a linear hybrid, the Nyström features in a kernel hybrid),
//! [`super::repair_head`] repairs it, and the repaired weights are written back in
//! place, with the repair's provenance in `metadata_props`.

use std::path::Path;

use crate::attack::file::{read_successful, Successful};
use crate::attack::protocol::{self, Protocol, Robustness};
use crate::data::Dataset;
use crate::engine::Engine;
use crate::error::Result;
use crate::features::{collect, Feed};
use crate::head::HeadKind;
use crate::hybrid::evaluate;
use crate::onnx::head::{self, HeadSite};
use crate::onnx::surgery::extractor;
use crate::onnx::{find_cut, ModelProto};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::rounds::{Loop, Round, RoundSettings};
use super::{preservation_rows, HeadRepair, RepairError, Settings};

/// A repaired hybrid and the figures of its repair.
#[derive(Debug, Clone)]
pub struct HybridRepair {
    /// The repaired model: the hybrid with its head's weights (and bias) replaced.
    pub model: ModelProto,
    /// Linear or kernel hybrid.
    pub head: HeadKind,
    /// The repair of its head (the chosen round's).
    pub fix: HeadRepair,
    /// The repair samples still misclassified after it, by their `index` (their
    /// image's position in the data the attack ran on).
    pub unfixed: Vec<i64>,
    /// Every round of the loop (one, for a single repair).
    pub rounds: Vec<Round>,
    /// The round whose model this is.
    pub chosen: usize,
    /// Every round's LP instance, when the loop was asked to keep them.
    pub instances: Vec<super::Instance>,
    /// The adversarial training's epochs, when the head was trained before the LPs.
    pub epochs: Vec<super::adversarial::Epoch>,
    /// Seconds for the whole repair: features, training, every round's LP and attack.
    pub seconds: f64,
}

/// Reads the repair samples: the successful rows of the attack file at `path` (the
/// `attack -o` format), the first `limit` of them when given. A file with none is an
/// error that names it.
pub fn read_samples(path: &Path, limit: Option<usize>) -> Result<Successful> {
    let adv = read_successful(path)?;
    if adv.images.is_empty() {
        return Err(RepairError::NoSuccess(path.to_path_buf()).into());
    }
    Ok(match limit {
        Some(n) => adv.take(n),
        None => adv,
    })
}

/// The rows of `clean` that the repair samples came from, checked: each `index` must
/// point into `clean` and carry the sample's label.
pub fn originals(index: &[i64], labels: &[i64], clean: &Dataset) -> Result<Vec<usize>, RepairError> {
    let data = || clean.source.display().to_string();
    index
        .iter()
        .zip(labels)
        .enumerate()
        .map(|(sample, (&i, &label))| {
            let at = usize::try_from(i)
                .ok()
                .filter(|&i| i < clean.len())
                .ok_or_else(|| RepairError::Index {
                    sample,
                    index: i,
                    data: data(),
                    len: clean.len(),
                })?;
            if clean.labels[at] != label {
                return Err(RepairError::Original {
                    sample,
                    label,
                    index: at,
                    data: data(),
                    original: clean.labels[at],
                });
            }
            Ok(at)
        })
        .collect()
}

/// The `metadata_props` a repaired model records: how it was repaired, and by which
/// nnmend (the fit's `nnmend.version` and `nnmend.commit` stay as they were).
pub fn provenance(settings: &Settings, kind: HeadKind, fix: &HeadRepair) -> Vec<(&'static str, String)> {
    vec![
        ("nnmend.repair.mode", settings.mode().to_string()),
        ("nnmend.repair.head", kind.name().to_string()),
        ("nnmend.repair.samples", fix.samples.to_string()),
        ("nnmend.repair.objective", format!("{}", fix.repair.objective)),
        (
            "nnmend.repair.status",
            format!("{:?}", fix.repair.status).to_lowercase(),
        ),
        ("nnmend.repair.bias", settings.class.repair_bias.to_string()),
        (
            "nnmend.repair.select",
            settings.select.map_or("none".into(), |p| format!("wilcoxon p < {p}")),
        ),
        ("nnmend.repair.version", crate::provenance::VERSION.to_string()),
        ("nnmend.repair.commit", crate::provenance::COMMIT.to_string()),
    ]
}

/// `hybrid` with the repaired head of `fix` written in at `site`, and its provenance.
pub fn write(hybrid: &ModelProto, site: &HeadSite, settings: &Settings, fix: &HeadRepair) -> Result<ModelProto> {
    let provenance = provenance(settings, site.kind, fix);
    Ok(head::replace(
        hybrid,
        site,
        &fix.linear.weights,
        &fix.linear.bias,
        &provenance,
    )?)
}

/// The pool of an attack-in-the-loop repair: `count` images of `clean` in a seeded
/// random order, with their indices.
pub fn pool(clean: &Dataset, count: usize, seed: u64) -> Result<(Dataset, Vec<i64>)> {
    let mut rows: Vec<usize> = (0..clean.len()).collect();
    rows.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    rows.truncate(count.min(clean.len()));
    let pool = clean
        .select(&rows)
        .ok_or_else(|| RepairError::Shape("a pool index is out of range".into()))?;
    Ok((pool, rows.iter().map(|&r| r as i64).collect()))
}

/// Repairs `hybrid` (a linear or kernel hybrid written by `nnmend fit`, see
/// [`head::find`]): the repair samples are the images of `adversarial`, whose clean
/// originals are the images of `clean` at `index`. In margin mode,
/// `settings.preserve` images of `clean` ([`preservation_rows`]) join the preservation
/// set. With `rounds.rounds` above 1, the repair is attacked in a loop on `pool`
/// images of `clean` ([`super::rounds`]).
#[allow(clippy::too_many_arguments)]
pub fn repair_hybrid(
    hybrid: &ModelProto,
    adversarial: &Dataset,
    index: &[i64],
    clean: &Dataset,
    engine: &dyn Engine,
    feed: &Feed,
    settings: &Settings,
    rounds: &RoundSettings,
) -> Result<HybridRepair> {
    let started = std::time::Instant::now();
    let site = head::find(hybrid)?;
    if index.len() != adversarial.len() {
        return Err(RepairError::Shape(format!(
            "{} repair samples but {} indices",
            adversarial.len(),
            index.len()
        ))
        .into());
    }
    if adversarial.is_empty() {
        return Err(RepairError::NoSamples.into());
    }
    let rows = originals(index, &adversarial.labels, clean)?;
    let pick = |rows: &[usize]| {
        clean
            .select(rows)
            .ok_or_else(|| RepairError::Shape("an index is out of range".into()))
    };
    let originals = pick(&rows)?;
    // The repair features are what the head reads: `features` in a linear hybrid,
    // the Nyström features in a kernel hybrid.
    let cut = find_cut(hybrid, Some(&site.input))?;
    let session = engine.prepare(&extractor(hybrid, &cut, None)?)?;
    let reads = |ds: &Dataset| collect(session.as_ref(), ds, feed, 0, "features");
    let (f_kept, kept_labels) = match settings.margin {
        Some(_) => {
            let kept = pick(&preservation_rows(clean.len(), settings.preserve))?;
            (reads(&kept)?, kept.labels)
        }
        None => (ndarray::Array2::zeros((0, site.weights.ncols())), Vec::new()),
    };
    let pool = if rounds.rounds > 1 || rounds.train.epochs > 0 {
        Some(pool(clean, rounds.pool, rounds.attack.seed)?)
    } else {
        None
    };
    let linear = site.linear();
    let looped = Loop {
        hybrid,
        site: &site,
        linear: &linear,
        reads: &reads,
        engine,
        feed,
        pool: pool.as_ref().map(|(p, i)| (p, i.as_slice())),
        preserve: (&f_kept, &kept_labels),
        settings,
    };
    let outcome = looped.run(Some((adversarial, &originals, index)), rounds)?;
    if outcome.fix.linear.n_features() != site.weights.ncols() {
        return Err(RepairError::Shape("the extractor and the head disagree on the features".into()).into());
    }
    Ok(HybridRepair {
        model: outcome.model,
        head: site.kind,
        unfixed: outcome.fix.unfixed.iter().map(|&r| outcome.index[r]).collect(),
        fix: outcome.fix,
        rounds: outcome.rounds,
        chosen: outcome.chosen,
        instances: outcome.instances,
        epochs: outcome.epochs,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// What a repaired model is checked on beyond its repair samples.
#[derive(Debug, Clone, Copy, Default)]
pub struct Checks<'a> {
    /// Clean test images: the accuracy before and after.
    pub test: Option<&'a Dataset>,
    /// The robust accuracy before and after at this radius, under `protocol`, on the
    /// first `limit` test images (`--test` needed; a limit of 0 measures nothing).
    pub robust: Option<(f32, usize)>,
    /// The protocol of the robust accuracy (its seed included).
    pub protocol: Option<&'a Protocol>,
    /// Held-out adversarial examples: the share the repaired model classifies right.
    pub held_out: Option<&'a Dataset>,
}

/// What was measured of a repair beyond the repair itself ([`assess`]).
#[derive(Debug, Clone, Default)]
pub struct Assessment {
    /// Clean accuracy before and after.
    pub accuracy: Option<(f64, f64)>,
    /// Share of the held-out adversarial examples fixed, and how many there were.
    pub generalisation: Option<(f64, usize)>,
    /// PGD robust accuracy on the test images before and after.
    pub robustness: Option<(Robustness, Robustness)>,
}

/// Measures `before` (the hybrid) and `after` (its repair) on what `checks` names.
pub fn assess(
    before: &ModelProto,
    after: &ModelProto,
    checks: &Checks,
    engine: &dyn Engine,
    feed: &Feed,
) -> Result<Assessment> {
    let mut facts = Assessment::default();
    if let Some(test) = checks.test {
        facts.accuracy = Some((
            evaluate(before, test, engine, feed)?.0.accuracy,
            evaluate(after, test, engine, feed)?.0.accuracy,
        ));
        if let Some((eps, limit)) = checks.robust.filter(|&(_, limit)| limit > 0) {
            let first = test.take(limit);
            let default = Protocol::default();
            let protocol = checks.protocol.unwrap_or(&default);
            let robust = |model| -> Result<Option<Robustness>> {
                let measured = protocol::measure(model, engine, &first, &[eps], protocol, feed)?;
                Ok(measured.into_iter().next().map(|m| m.robustness))
            };
            facts.robustness = robust(before)?.zip(robust(after)?);
        }
    }
    if let Some(held_out) = checks.held_out.filter(|h| !h.is_empty()) {
        let fixed = evaluate(after, held_out, engine, feed)?.0.accuracy;
        facts.generalisation = Some((fixed, held_out.len()));
    }
    Ok(facts)
}
