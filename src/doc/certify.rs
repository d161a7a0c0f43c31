//! `certify --json`.

use std::path::PathBuf;

use serde::Serialize;

use crate::attack::protocol::Protocol;
use crate::head::HeadKind;
use crate::onnx::bounds::Margin;
use crate::verify::{Certification, EpsCertificate};

/// The rounding margin of the bounds, as reported.
#[derive(Debug, Clone, Serialize)]
pub struct MarginDoc {
    /// Unit roundoff of the engine's arithmetic.
    pub roundoff: f64,
    /// Relative error allowed to Exp, Sigmoid and Tanh.
    pub transcendental: f64,
    /// Absolute widening per op.
    pub absolute: f64,
}

impl From<Margin> for MarginDoc {
    fn from(m: Margin) -> Self {
        Self {
            roundoff: m.roundoff,
            transcendental: m.transcendental,
            absolute: m.absolute,
        }
    }
}

/// `certify --json`: one entry per ε in `results`.
#[derive(Debug, Clone, Serialize)]
pub struct CertifyDoc {
    /// The hybrid certified.
    pub model: PathBuf,
    /// The images.
    pub data: PathBuf,
    /// The engine.
    pub engine: serde_json::Value,
    /// How the bounds were computed: `ibp` (interval bound propagation), or
    /// `ibp+linear` when a linear hybrid's margins were also back-substituted (each
    /// result's `linear`), `ibp+crown` when the boxes in between were too.
    pub method: &'static str,
    /// Why the linear bounds were not computed, when they were asked for.
    pub linear_note: Option<String>,
    /// Linear or kernel hybrid.
    pub head: HeadKind,
    /// Width of the features the head reads.
    pub features: usize,
    /// The rounding margin of the bounds.
    pub margin: MarginDoc,
    /// The PGD protocol run beside the certificates (`null` with `--pgd-limit 0`).
    pub protocol: Option<Protocol>,
    /// One entry per ε.
    pub results: Vec<EpsCertificate>,
    /// Certified images PGD broke, over every ε: must be 0.
    pub certified_but_broken: usize,
    /// The VNN-LIB folder written, if any.
    pub vnnlib: Option<PathBuf>,
    /// Seconds in all.
    pub seconds: f64,
}

impl CertifyDoc {
    /// The document of `certification`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        model: PathBuf,
        data: PathBuf,
        engine: serde_json::Value,
        certification: &Certification,
        margin: Margin,
        protocol: Option<Protocol>,
        vnnlib: Option<PathBuf>,
        seconds: f64,
    ) -> Self {
        Self {
            model,
            data,
            engine,
            method: match (certification.certified_linear.is_empty(), certification.refined) {
                (true, _) => "ibp",
                (false, false) => "ibp+linear",
                (false, true) => "ibp+crown",
            },
            linear_note: certification.linear_note.clone(),
            head: certification.kind,
            features: certification.features,
            margin: margin.into(),
            protocol,
            results: certification.results.clone(),
            certified_but_broken: certification.certified_but_broken(),
            vnnlib,
            seconds,
        }
    }

    /// The text `certify` prints: one line per ε.
    pub fn write_text(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        writeln!(
            out,
            "eps      n      clean    certified  linear   pgd (n)          width     seconds"
        )?;
        for r in &self.results {
            let pgd = match &r.pgd {
                Some(p) => format!("{:.4} ({})", p.robust_accuracy, p.n),
                None => "-".into(),
            };
            let linear = r
                .linear
                .as_ref()
                .map_or("-     ".into(), |l| format!("{:.4}", l.certified_accuracy));
            let seconds = r.seconds + r.linear.as_ref().map_or(0.0, |l| l.seconds);
            writeln!(
                out,
                "{:<8} {:<6} {:.4}   {:.4}     {linear}   {:<16} {:<9.4} {seconds:.1}",
                r.eps, r.n, r.clean_accuracy, r.certified_accuracy, pgd, r.mean_width
            )?;
        }
        Ok(())
    }
}
