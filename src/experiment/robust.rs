//! The experiment's robust accuracies: every model attacked itself under one strong,
//! fixed protocol ([`crate::attack::protocol`]) on the first test images, and the
//! transfer of NN's and LH's adversarial examples to KH, so that a kernel head whose
//! gradients mislead the attack cannot pass for a robust one.

use ndarray::Axis;

use crate::attack::protocol::{self, Measured, Protocol};
use crate::data::{Dataset, Layout};
use crate::engine::{Engine, Session};
use crate::error::Result;
use crate::features::{collect, Accuracy, Feed};
use crate::head::Head;
use crate::onnx::ModelProto;

/// The protocol, and how many test images it attacks.
#[derive(Debug, Clone)]
pub struct Robust {
    /// The attack.
    pub protocol: Protocol,
    /// The first this many test images are attacked.
    pub limit: usize,
}

impl Robust {
    /// Measures `model` on the first test images at each of `eps`.
    pub(super) fn measure(
        &self,
        model: &ModelProto,
        engine: &dyn Engine,
        test: &Dataset,
        eps: &[f32],
        feed: &Feed,
    ) -> Result<Vec<Measured>> {
        protocol::measure(model, engine, &test.take(self.limit), eps, &self.protocol, feed)
    }
}

/// The accuracy of `head` (on the features of `extractor`) on the first test images
/// with the images `measured` flipped replaced by their adversarial examples; `clean`
/// holds its predictions on the clean test images.
pub(super) fn transfer(
    measured: &Measured,
    (test, layout): (&Dataset, Layout),
    clean: &[usize],
    (extractor, head): (&dyn Session, &Head),
    feed: &Feed,
) -> Result<Accuracy> {
    let n = measured.broken.len();
    let rows: Vec<usize> = (0..n).filter(|&i| measured.broken[i]).collect();
    let mut predicted = clean[..n.min(clean.len())].to_vec();
    if !rows.is_empty() {
        let images = measured.images.select(Axis(0), &rows);
        let labels = rows.iter().map(|&i| test.labels[i]).collect();
        let ds = Dataset::from_layout(images, layout, labels, test)?;
        let features = collect(extractor, &ds, feed, 0, "transfer")?;
        for (&i, p) in rows.iter().zip(head.predict(features.view())) {
            predicted[i] = p;
        }
    }
    Ok(Accuracy::of(&predicted, &test.labels[..n]))
}
