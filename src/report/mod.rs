//! The experiment's report: what `nnmend run` writes for people to read next to the
//! JSON for machines. [`plot`] draws the figures (accuracy against ε, grids of
//! adversarial examples) as SVG and PNG.

pub mod plot;
