//! Choosing C on a validation split of the training set, or on validation rows given
//! apart.
//!
//! A stratified share of each class (`holdout`, drawn with the fit's seed) is set
//! aside; the SVM is fitted on the rest at every C of a grid, in increasing order, each
//! fit starting from the previous one's weights when the primal solver runs (C grows
//! slowly from one to the next, so the optimum moves little); the C with the best
//! accuracy on the held-out rows wins, ties going to the smaller C (the stronger
//! regularisation, and the faster fit). The caller then refits on the whole training
//! set at that C. This is how LinearSVC is usually tuned, with one split instead of k
//! folds: the features of a CNN's training set are plentiful, and each fit is the
//! expensive part.
//!
//! Validation rows given apart ([`Validation`]: images the network was not trained on,
//! say) replace the split: the candidates are fitted on the whole training set and
//! scored on them, and the chosen candidate is the final fit. A split of the training
//! set scores the candidates on images the network has learnt, where a head reads more
//! accurate than it is, and with augmented copies (an image and its mirror) in the
//! training set it can hold out an image whose copy is fitted on.

use std::time::Instant;

use ndarray::{Array2, ArrayView2, Axis};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::scale::Standardizer;
use super::{fit_from, FitOptions, FitReport, LinearSvm, Solver, SvmError, SvmParams};

/// How C is searched.
#[derive(Debug, Clone, PartialEq)]
pub struct CSearch {
    /// The candidates, each positive and finite (searched in increasing order).
    pub grid: Vec<f64>,
    /// Share of each class held out for validation, in (0, 1).
    pub holdout: f64,
}

impl Default for CSearch {
    /// The grid 0.001, 0.01, 0.1, 1, 10 with a fifth of each class held out.
    fn default() -> Self {
        Self {
            grid: vec![0.001, 0.01, 0.1, 1.0, 10.0],
            holdout: 0.2,
        }
    }
}

/// Validation rows given apart from the training set: features (as many columns as
/// the training set's) and labels.
#[derive(Debug, Clone, Copy)]
pub struct Validation<'a> {
    /// One row per validation sample.
    pub x: ArrayView2<'a, f32>,
    /// Their labels.
    pub y: &'a [usize],
}

/// One C of the search.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GridPoint {
    /// The candidate.
    pub c: f64,
    /// Accuracy on the held-out rows.
    pub validation_accuracy: f64,
    /// Accuracy on the rows it was fitted on.
    pub train_accuracy: f64,
    /// Σ of the classes' primal objectives.
    pub objective: f64,
    /// Whether every class met its stopping rule.
    pub converged: bool,
    /// The solver of every class, or `None` when they differ.
    pub solver: Option<Solver>,
    /// Seconds of this fit.
    pub seconds: f64,
}

/// The outcome of a search for C.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Selection {
    /// The C with the best validation accuracy (the smallest of equals).
    pub chosen: f64,
    /// Share of each class held out, or `None` when the candidates were scored on
    /// validation rows given apart.
    pub holdout: Option<f64>,
    /// Rows the candidates were fitted on.
    pub n_fit: usize,
    /// Rows held out.
    pub n_validation: usize,
    /// One point per candidate, in increasing C.
    pub curve: Vec<GridPoint>,
}

/// Checks a search's settings before any work.
pub(crate) fn check(search: &CSearch) -> Result<(), SvmError> {
    check_grid(&search.grid)?;
    if !(search.holdout > 0.0 && search.holdout < 1.0) {
        return Err(SvmError::InvalidHoldout(search.holdout));
    }
    Ok(())
}

/// Checks a grid of candidates: not empty, each positive and finite.
fn check_grid(grid: &[f64]) -> Result<(), SvmError> {
    if grid.is_empty() {
        return Err(SvmError::EmptyGrid);
    }
    if let Some(&c) = grid.iter().find(|c| !(**c > 0.0 && c.is_finite())) {
        return Err(SvmError::InvalidC(c));
    }
    Ok(())
}

/// Checks validation rows given apart against a training set of `dim` features.
pub(crate) fn check_validation(v: &Validation<'_>, dim: usize, n_classes: usize) -> Result<(), SvmError> {
    let wrap = |e| SvmError::Validation(Box::new(e));
    if v.x.ncols() != dim {
        return Err(wrap(SvmError::Width {
            features: v.x.ncols(),
            expected: dim,
        }));
    }
    super::check_rows(v.x, v.y, n_classes).map_err(wrap)?;
    Ok(())
}

/// Row indices of the fitting and validation parts: from each class with at least two
/// samples, round(holdout · count) of them (at least one, never all), drawn with
/// `seed`; a class with one sample stays in the fitting part.
pub(crate) fn split(y: &[usize], n_classes: usize, holdout: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut by_class = vec![Vec::new(); n_classes];
    for (i, &label) in y.iter().enumerate() {
        if let Some(members) = by_class.get_mut(label) {
            members.push(i);
        }
    }
    // A stream of its own, apart from the solvers' (seed, class) streams.
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[16..24].copy_from_slice(b"holdout\0");
    let mut rng = ChaCha8Rng::from_seed(key);
    let (mut fit, mut validation) = (Vec::new(), Vec::new());
    for mut members in by_class {
        members.shuffle(&mut rng);
        let count = members.len();
        let held = if count < 2 {
            0
        } else {
            ((holdout * count as f64).round() as usize).clamp(1, count - 1)
        };
        validation.extend_from_slice(&members[..held]);
        fit.extend_from_slice(&members[held..]);
    }
    fit.sort_unstable();
    validation.sort_unstable();
    (fit, validation)
}

fn rows(x: ArrayView2<f32>, index: &[usize]) -> Array2<f32> {
    x.select(Axis(0), index)
}

fn accuracy(svm: &LinearSvm, x: ArrayView2<f32>, y: &[usize]) -> f64 {
    let predicted = svm.predict(x);
    let correct = predicted.iter().zip(y).filter(|(p, l)| p == l).count();
    correct as f64 / y.len().max(1) as f64
}

/// Searches C over `search.grid` on a split of (`x`, `y`), standardising with the
/// fitting part's statistics when `scale`. Returns the selection and the weights of
/// the chosen C (on the standardised features when `scale`), a starting point for the
/// final fit.
pub(crate) fn search(
    x: ArrayView2<f32>,
    y: &[usize],
    n_classes: usize,
    params: &SvmParams,
    search: &CSearch,
    scale: bool,
    options: &FitOptions,
) -> Result<(Selection, LinearSvm), SvmError> {
    check(search)?;
    let (fit_rows, held) = split(y, n_classes, search.holdout, params.seed);
    if held.is_empty() {
        return Err(SvmError::NoValidation {
            samples: y.len(),
            holdout: search.holdout,
        });
    }
    let (mut x_fit, mut x_val) = (rows(x, &fit_rows), rows(x, &held));
    if scale {
        let standardizer = Standardizer::fit(x_fit.view());
        x_fit = standardizer.apply(x_fit.view());
        x_val = standardizer.apply(x_val.view());
    }
    let y_fit: Vec<usize> = fit_rows.iter().map(|&i| y[i]).collect();
    let y_val: Vec<usize> = held.iter().map(|&i| y[i]).collect();
    let validation = Validation {
        x: x_val.view(),
        y: &y_val,
    };
    let (mut selection, svm, _) = search_given(
        x_fit.view(),
        &y_fit,
        validation,
        n_classes,
        params,
        &search.grid,
        options,
    )?;
    selection.holdout = Some(search.holdout);
    Ok((selection, svm))
}

/// Searches C over `grid`: fits (`x`, `y`) at every C in increasing order, each primal
/// fit starting from the one before, and scores each on `validation` (both as the SVM
/// reads them: standardised already when that is asked for); the best accuracy wins,
/// the smaller C of equals. Returns the selection (`holdout` `None`), and the chosen
/// candidate's weights and report.
pub(crate) fn search_given(
    x: ArrayView2<f32>,
    y: &[usize],
    validation: Validation<'_>,
    n_classes: usize,
    params: &SvmParams,
    grid: &[f64],
    options: &FitOptions,
) -> Result<(Selection, LinearSvm, FitReport), SvmError> {
    check_grid(grid)?;
    let mut grid = grid.to_vec();
    grid.sort_by(f64::total_cmp);
    grid.dedup();
    let mut curve = Vec::with_capacity(grid.len());
    let mut best: Option<(f64, usize, LinearSvm, FitReport)> = None;
    let mut previous: Option<LinearSvm> = None;
    for (at, &c) in grid.iter().enumerate() {
        let started = Instant::now();
        let candidate = SvmParams { c, ..params.clone() };
        let (svm, report) = fit_from(x, y, n_classes, &candidate, options, previous.as_ref())?;
        let validation_accuracy = accuracy(&svm, validation.x, validation.y);
        curve.push(GridPoint {
            c,
            validation_accuracy,
            train_accuracy: accuracy(&svm, x, y),
            objective: report.objective(),
            converged: report.converged(),
            solver: report.solver(),
            seconds: started.elapsed().as_secs_f64(),
        });
        if best.as_ref().is_none_or(|(acc, ..)| validation_accuracy > *acc) {
            best = Some((validation_accuracy, at, svm.clone(), report));
        }
        previous = Some(svm);
    }
    let Some((_, at, svm, report)) = best else {
        return Err(SvmError::EmptyGrid);
    };
    let selection = Selection {
        chosen: grid[at],
        holdout: None,
        n_fit: y.len(),
        n_validation: validation.y.len(),
        curve,
    };
    Ok((selection, svm, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_split_is_stratified_seeded_and_complete() {
        let y: Vec<usize> = (0..103)
            .map(|i| {
                if i < 80 {
                    0
                } else if i < 100 {
                    1
                } else {
                    2
                }
            })
            .collect();
        let (fit, held) = split(&y, 4, 0.2, 5);
        let count = |idx: &[usize], k: usize| idx.iter().filter(|&&i| y[i] == k).count();
        assert_eq!((count(&held, 0), count(&held, 1), count(&held, 2)), (16, 4, 1));
        assert_eq!(fit.len() + held.len(), y.len());
        let mut all: Vec<usize> = fit.iter().chain(&held).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..103).collect::<Vec<_>>());
        assert_eq!(split(&y, 4, 0.2, 5), (fit.clone(), held.clone()));
        assert_ne!(split(&y, 4, 0.2, 6).1, held, "another seed, another draw");
        // One sample of a class stays in the fitting part.
        let (fit, held) = split(&[0, 0, 1], 2, 0.5, 0);
        assert!(fit.contains(&2) && held.len() == 1);
    }

    #[test]
    fn bad_settings_are_refused() {
        let bad = |grid: Vec<f64>, holdout| check(&CSearch { grid, holdout });
        assert_eq!(bad(vec![], 0.2), Err(SvmError::EmptyGrid));
        assert_eq!(bad(vec![1.0, -1.0], 0.2), Err(SvmError::InvalidC(-1.0)));
        assert!(matches!(bad(vec![f64::NAN], 0.2), Err(SvmError::InvalidC(_))));
        for h in [0.0, 1.0, -0.1, f64::NAN] {
            assert!(matches!(bad(vec![1.0], h), Err(SvmError::InvalidHoldout(_))));
        }
        assert_eq!(bad(vec![1.0], 0.5), Ok(()));
    }
}
