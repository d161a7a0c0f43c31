//! The attack file, `nnmend attack -o ADV.npz`: a documented contract that `repair
//! --adv` and scripts read. One row per image and ε: `x` (float32 attacked images in
//! `[0, 1]` pixel space, before any mean/std, in the model's input layout), `index`
//! (int64, the image's index in the data set attacked), `y` (int64 labels), `eps`
//! (float32) and `success` (bool: the clean image was right and the attacked one is
//! wrong). It reads back as a data set too (`eval --data ADV.npz`).
//!
//! It is read through [`crate::data::load_attack`], the hardened NPZ reader, so a
//! hostile file is refused before anything is allocated from its claims.

use std::path::Path;

use ndarray::{concatenate, ArrayD, Axis};

use crate::data::{load_attack, write_npz, Dataset, NpzArrays};
use crate::error::Result;

use super::{AttackError, Outcome};

/// The rows of an attack file.
#[derive(Debug, Clone)]
pub struct AdversarialFile {
    /// The attacked images, one row per image and ε.
    pub x: ArrayD<f32>,
    /// Each row's image index in the data set attacked.
    pub index: Vec<i64>,
    /// Each row's label.
    pub y: Vec<i64>,
    /// Each row's radius.
    pub eps: Vec<f32>,
    /// Whether each row is a successful adversarial example.
    pub success: Vec<bool>,
}

impl AdversarialFile {
    /// The rows of `outcome` (an attack on `ds`), ε by ε; with `only_successful`, only
    /// the successful adversarial examples.
    pub fn new(outcome: &Outcome, ds: &Dataset, only_successful: bool) -> Result<Self> {
        let mut xs: Vec<ArrayD<f32>> = Vec::new();
        let (mut index, mut y, mut eps, mut success) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for adv in &outcome.adversarial {
            let keep: Vec<usize> = (0..ds.len()).filter(|&i| !only_successful || adv.success[i]).collect();
            xs.push(adv.images.select(Axis(0), &keep));
            for &i in &keep {
                index.push(i as i64);
                y.push(ds.labels[i]);
                eps.push(adv.eps);
                success.push(adv.success[i]);
            }
        }
        let views: Vec<_> = xs.iter().map(|a| a.view()).collect();
        let x = concatenate(Axis(0), &views).map_err(|_| AttackError::Invariant("attacked images differ in shape"))?;
        Ok(Self {
            x,
            index,
            y,
            eps,
            success,
        })
    }

    /// Writes the file to `path`, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let arrays = NpzArrays {
            index: Some(&self.index),
            eps: Some(&self.eps),
            success: Some(&self.success),
            ..NpzArrays::new(self.x.view(), &self.y)
        };
        Ok(write_npz(path, &arrays)?)
    }
}

/// The successful rows of an attack file.
#[derive(Debug, Clone)]
pub struct Successful {
    /// Their images, as a data set.
    pub images: Dataset,
    /// Each row's image index in the data set attacked.
    pub index: Vec<i64>,
    /// Each row's radius (empty when the file has no `eps`).
    pub eps: Vec<f32>,
}

impl Successful {
    /// The first `n` rows.
    pub fn take(mut self, n: usize) -> Self {
        self.images = self.images.take(n);
        self.index.truncate(n);
        self.eps.truncate(n);
        self
    }

    /// The radius of every row, when they share one.
    pub fn radius(&self) -> Option<f32> {
        let first = *self.eps.first()?;
        self.eps.iter().all(|&e| e == first).then_some(first)
    }
}

/// The successful rows of the attack file at `path` (every row, when it has no
/// `success` array).
pub fn read_successful(path: &Path) -> Result<Successful> {
    let (ds, columns) = load_attack(path)?;
    let keep: Vec<usize> = match &columns.success {
        Some(success) => (0..ds.len()).filter(|&i| success[i]).collect(),
        None => (0..ds.len()).collect(),
    };
    let images = ds
        .select(&keep)
        .ok_or(AttackError::Invariant("an attack file's row is out of range"))?;
    Ok(Successful {
        images,
        index: keep.iter().map(|&i| columns.index[i]).collect(),
        eps: columns
            .eps
            .map_or_else(Vec::new, |e| keep.iter().map(|&i| e[i]).collect()),
    })
}
