//! The experiment's report: what `nnmend run` writes. [`run`] holds every number and
//! renders it as JSON for machines and Markdown tables for people; [`plot`] draws the
//! figures (accuracy against ε, grids of adversarial examples) as SVG and PNG.

pub mod plot;
pub mod run;
